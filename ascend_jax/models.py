"""Loading runnable models (``ascend-jax run --model NAME``, ``ascend-jax models``).

A model is ``NAME.py`` or ``NAME.toml`` in a models folder: first the folders listed in
``$ASCEND_JAX_MODELS`` (separated by ``os.pathsep``), then the models shipped with the package
(the source tree's top-level ``models/`` folder, installed as the package ``ascend_jax_models``).
``NAME`` is a plain name (letters, digits, ``_``, ``-``); a file path (``../x/m.py``, ``/abs/m.py``)
is accepted only with ``allow_python`` (``--allow-python``), since a Python model runs its code.

A Python model defines ``build(seed: int = 0) -> CubeGroupProgram`` (or a comm ``TaskProgram``; comm
models with a variable ring take ``ranks``) and may define ``expected(program) -> {tensor name:
float64 array}``, its own numpy answer, which the numerics report checks next to the float64
reference interpreter. Its module docstring's first line (a TOML model's first comment line) is
the description ``ascend-jax models`` prints; listing never imports a model.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ascend_jax.errors import ConfigError
from ascend_jax.limits import did_you_mean

MODELS_ENV = "ASCEND_JAX_MODELS"
#: ``--ranks`` range of the ring comm models (``World`` takes up to 64 ranks; the tests check 2..8 and 16 against numpy).
RANKS_RANGE = (2, 64)
#: Largest number of elements a comm model's ``--model-arg count=N`` may give all ranks together:
#: ``count`` for a 2-rank send / receive, ``ranks x ranks x count`` for a ring (``count`` elements
#: per block, ``ranks`` blocks per rank); 2^24 fp32 elements = 64 MiB per buffer set.
MAX_COMM_ELEMENTS = 2**24
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
_SUFFIXES = (".py", ".toml")


def shipped_models_dir() -> Path | None:
    """The folder of the models shipped with the package, or None if it is missing."""
    spec = importlib.util.find_spec("ascend_jax_models")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            if Path(loc).is_dir():
                return Path(loc)
    source_tree = Path(__file__).resolve().parent.parent / "models"  # an editable install made before packaging
    return source_tree if source_tree.is_dir() else None


def model_dirs() -> list[Path]:
    """Folders searched for models, in order: ``$ASCEND_JAX_MODELS`` entries, then the shipped models."""
    dirs = [Path(d) for d in os.environ.get(MODELS_ENV, "").split(os.pathsep) if d]
    shipped = shipped_models_dir()
    if shipped is not None:
        dirs.append(shipped)
    return dirs


def _all_model_files() -> dict[str, list[Path]]:
    """Every model file of every folder (:func:`model_dirs` order), by name: more than one path
    means one file would shadow another."""
    found: dict[str, list[Path]] = {}
    for d in model_dirs():
        try:
            entries = sorted(d.iterdir())
        except OSError:
            continue
        for p in entries:
            ok = p.suffix in _SUFFIXES and _NAME.match(p.stem) and not p.stem.startswith("_") and p.is_file()
            if ok and p.resolve() not in [q.resolve() for q in found.setdefault(p.stem, [])]:
                found[p.stem].append(p)  # a folder listed twice (or a link to the same file) is one file
    return found


def _model_files() -> dict[str, Path]:
    return {name: paths[0] for name, paths in _all_model_files().items()}


def _shadowing(name: str, paths: list[Path]) -> ConfigError:
    """The error for a model name that more than one file defines."""
    shipped = shipped_models_dir()
    where = [f"{p} ({'shipped' if shipped is not None and p.parent == shipped else '$' + MODELS_ENV})" for p in paths]
    return ConfigError(
        "--model",
        name,
        f"is defined by {len(paths)} files: {' and '.join(where)}; the first would silently shadow the others",
        f"rename your file (e.g. my_{name}{paths[0].suffix}) or remove it from the folders in ${MODELS_ENV}, "
        "or run it by path with --allow-python",
    )


def available_models(*, kind: str | None = None) -> list[str]:
    """Names of every model ``--model`` accepts (without a path).

    ``kind``: ``"cube_group"`` keeps the models that build a cube-group program, ``"comm"`` the AI CPU
    comm models (each model is built once with its defaults to tell); ``None`` keeps every model.
    """
    names = sorted(_model_files())
    if kind is None:
        return names
    if kind not in ("cube_group", "comm"):
        raise ConfigError("kind", kind, "must be 'cube_group', 'comm' or None", "e.g. kind='cube_group'")
    from ascend_jax.cube_group.program import CubeGroupProgram

    cube = {n for n in names if isinstance(load_model(n)[0], CubeGroupProgram)}
    return [n for n in names if (n in cube) == (kind == "cube_group")]


def describe(path: Path) -> str:
    """One-line description of a model file, read without importing it."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""
    if path.suffix == ".py":
        try:
            doc = ast.get_docstring(ast.parse(text)) or ""
        except (SyntaxError, ValueError, RecursionError):
            return ""
        return _first_sentence(doc.split("\n\n")[0])
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return _first_sentence(" ".join(lines))


def _first_sentence(text: str) -> str:
    words = " ".join(text.split())
    head = words.split(". ")[0].rstrip(".")
    return head + "." if head else ""


def model_table() -> list[tuple[str, str, Path]]:
    """(name, description, path) of every model, sorted by name; a name that several files define
    (``--model`` refuses it) says so in its description."""
    rows = []
    for name, paths in sorted(_all_model_files().items()):
        desc = describe(paths[0])
        if len(paths) > 1:
            desc = f"[refused: also defined by {', '.join(str(p) for p in paths[1:])}] {desc}"
        rows.append((name, desc, paths[0]))
    return rows


def find_model(name: str, allow_python: bool = False) -> Path:
    """The file of model ``name``; a path only with ``allow_python``."""
    if not isinstance(name, str) or not name:
        raise ConfigError("--model", name, "must be a model name", "run `ascend-jax models` to list them")
    if _NAME.match(name):
        every = _all_model_files()
        files = {k: v[0] for k, v in every.items()}
        if len(every.get(name, [])) > 1:
            raise _shadowing(name, every[name])
        if name in files:
            return files[name]
        raise ConfigError(
            "--model",
            name,
            f"no such model; models: {sorted(files)}",
            (did_you_mean(name, files) + f"or add a folder holding {name}.py to ${MODELS_ENV}").strip(),
        )
    if not allow_python:
        raise ConfigError(
            "--model",
            name,
            "must be the name of a shipped model or of a file in a folder listed in $" + MODELS_ENV,
            "run `ascend-jax models`; a model given by path runs its code and needs --allow-python",
        )
    p = Path(name)
    if p.suffix not in _SUFFIXES or not p.is_file():
        raise ConfigError("--model", name, "must be an existing .py or .toml file", "check the path")
    return p


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def parse_model_args(items: list[str] | None) -> dict[str, str]:
    """``["NAME=VALUE", ...]`` (``--model-arg``) -> ``{NAME: VALUE}`` (values still text)."""
    out: dict[str, str] = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key.isidentifier():
            raise ConfigError("--model-arg", item, "must look like NAME=VALUE", "e.g. --model-arg merge=false")
        if key in out:
            raise ConfigError("--model-arg", item, f"{key} is given twice", "give each option once")
        out[key] = value.strip()
    return out


_KINDS = {bool: "true or false", int: "an integer", float: "a finite number", str: "text"}
_NONE_WORDS = ("none", "null")


def _option_kinds(default: Any, annotation: Any) -> list[type]:
    """The types a ``--model-arg`` value is tried as, in order: the default's type; for a ``None``
    default, the builtin types the annotation names (``int | None`` -> int), or else int, float,
    bool words and text."""
    if default is not None:
        return [type(default)]
    named = (
        re.findall(r"\b(bool|int|float|str)\b", str(annotation)) if annotation is not inspect.Parameter.empty else []
    )
    kinds = [{"bool": bool, "int": int, "float": float, "str": str}[n] for n in dict.fromkeys(named)]
    return kinds or [int, float, bool, str]


def _convert(text: str, kind: type) -> Any:
    """``text`` as ``kind``; ValueError if it is not one."""
    if kind is bool:
        if text.lower() not in _TRUE + _FALSE:
            raise ValueError(text)
        return text.lower() in _TRUE
    if kind is float:
        value = float(text)
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(text)
        return value
    return kind(text)


def _model_kwargs(path: Path, build: Callable, options: dict[str, str]) -> dict[str, Any]:
    """``options`` converted to the types of ``build``'s keyword defaults (bool, int, float, str); an
    option whose default is ``None`` takes ``none`` or a value of a type its annotation names (without
    an annotation: an integer, a number, true / false, else text)."""
    params = inspect.signature(build).parameters
    settable = {
        k: p
        for k, p in params.items()
        if k not in ("seed", "ranks") and p.default is not inspect.Parameter.empty
        and (p.default is None or isinstance(p.default, bool | int | float | str))
    }  # fmt: skip
    kwargs: dict[str, Any] = {}
    for key, text in options.items():
        if key not in settable:
            raise ConfigError(
                "--model-arg", f"{key}={text}", f"model {path.stem!r} has no option {key!r}; options: {sorted(settable)}",
                (did_you_mean(key, settable) + "run `ascend-jax models` and read the model's build()").strip(),
            )  # fmt: skip
        default = settable[key].default
        kinds = _option_kinds(default, settable[key].annotation)
        if default is None and text.lower() in _NONE_WORDS:
            kwargs[key] = None
            continue
        for kind in kinds:
            try:
                kwargs[key] = _convert(text, kind)
                break
            except ValueError:
                continue
        else:
            kind = " or ".join(_KINDS[k] for k in kinds) + (" or none" if default is None else "")
            example = str(default).lower() if isinstance(default, bool) else ("none" if default is None else default)
            raise ConfigError("--model-arg", f"{key}={text}", f"{key} must be {kind} (default {default!r})",
                              f"e.g. --model-arg {key}={example}")  # fmt: skip
    return kwargs


def load_model(
    name: str,
    *,
    seed: int = 0,
    max_steps: int | None = None,
    ranks: int | None = None,
    allow_python: bool = False,
    options: dict[str, str] | None = None,
    before_build: Callable[[int], None] | None = None,
) -> tuple[Any, Callable[[Any], dict[str, Any]] | None, Path]:
    """Returns (program, expected function or None, path) of model ``name``: a
    :class:`CubeGroupProgram`, or a comm :class:`ascend_jax.aicpu.world.TaskProgram` for models
    whose ``build`` takes ``ranks``. ``options`` (``--model-arg``): keyword arguments of the model's
    ``build`` as text, converted to the type of each one's default. ``before_build``: called with
    the model's ``work(seed, **options)`` (its estimated AIV ops) before ``build`` runs, if the model
    defines ``work`` (e.g. to refuse a run over a work budget before a long build)."""
    from ascend_jax.scenario import load_scenario  # here: listing models and the CLI's start need none of it

    path = find_model(name, allow_python)
    if path.suffix == ".toml":
        if ranks is not None:
            raise ConfigError(
                "--ranks", ranks, f"model {path.stem!r} is a cube-group scenario", "--ranks applies to ring comm models"
            )
        if options:
            key = next(iter(options))
            raise ConfigError("--model-arg", f"{key}={options[key]}", f"model {path.stem!r} is a TOML scenario "
                              "and takes no options", "edit the scenario file instead")  # fmt: skip
        return load_scenario(path, max_steps=max_steps, allow_python=allow_python), None, path
    spec = importlib.util.spec_from_file_location(f"ascend_jax_model_{path.stem.replace('-', '_')}", path)
    if spec is None or spec.loader is None:
        raise ConfigError("--model", name, f"{path} cannot be loaded as a Python module", "give a .py or .toml file")
    module = importlib.util.module_from_spec(spec)
    # registered before it runs, as an import would: dataclasses and pickling look the module up by name
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    if not callable(getattr(module, "build", None)):
        raise ConfigError("--model", name, f"{path} defines no build(seed) function", "add one")
    params = inspect.signature(module.build).parameters
    kwargs = _model_kwargs(path, module.build, options or {})
    if "count" in kwargs and isinstance(kwargs["count"], int):  # a comm model's elements per rank or block
        p = ranks if ranks is not None else params["ranks"].default if "ranks" in params else 1
        p = p if isinstance(p, int) and p > 0 else 1
        blocks = p * p if "ranks" in params else 1
        if not 1 <= kwargs["count"] <= MAX_COMM_ELEMENTS // blocks:
            size = f"{p} x {p} blocks of count elements" if blocks > 1 else "count elements"
            raise ConfigError(
                "--model-arg", f"count={kwargs['count']}",
                f"count must be in 1..{MAX_COMM_ELEMENTS // blocks} ({size} <= {MAX_COMM_ELEMENTS}, 64 MiB of fp32)",
                f"e.g. --model-arg count={params['count'].default}",
            )  # fmt: skip
    if before_build is not None and callable(getattr(module, "work", None)):
        before_build(int(module.work(seed, **kwargs)))
    if ranks is not None:
        if "ranks" not in params:
            raise ConfigError(
                "--ranks", ranks, f"model {path.stem!r} has a fixed number of ranks (or is a cube-group model)",
                "leave --ranks out; it applies to the ring comm models",
            )  # fmt: skip
        lo, hi = RANKS_RANGE
        if not lo <= ranks <= hi:
            raise ConfigError("--ranks", ranks, f"must be in {lo}..{hi}", f"give --ranks in {lo}..{hi}")
        program = module.build(seed, ranks=ranks, **kwargs)
    else:
        program = module.build(seed, **kwargs)
    if max_steps is not None:
        program = dataclasses.replace(program, max_steps=max_steps)
    return program, getattr(module, "expected", None), path

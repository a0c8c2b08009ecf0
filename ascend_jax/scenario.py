"""Scenario files (TOML, DESIGN.md contract) -> a validated :class:`CubeGroupProgram`.

Reading and validation happen in this order, each failure a :class:`ConfigError` (exit 2 in the CLI):

1. the file: a regular file of at most :data:`~ascend_jax.schema.MAX_SCENARIO_BYTES`, UTF-8, TOML;
2. the document against the pydantic schema (:mod:`ascend_jax.schema`: keys, strict types, ranges);
3. cross checks that need more than one table: message fields against the group's message type,
   ``python:`` callbacks (refused without ``allow_python``), data paths (``.npy``, chip ``.ini``;
   relative paths resolve against the scenario's folder and may not leave it), total GM size;
4. the builders (:class:`CubeGroupKernel`), which check geometry against the chip.

A scenario never runs code unless the caller passes ``allow_python=True`` (``--allow-python``), and
with ``import_callbacks=False`` (``ascend-jax check``) no user module is imported at all.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ascend_jax.cube_group.callbacks import BUILTIN_CALLBACKS, MATMUL_CALLBACKS, MatmulCallback, MergeCallback
from ascend_jax.cube_group.matmul import check_scenario_types
from ascend_jax.cube_group.program import CubeGroupKernel, CubeGroupProgram
from ascend_jax.cube_group.status import AivCall
from ascend_jax.errors import ConfigError
from ascend_jax.gm import DTYPE_ALIASES, DTYPES, GlobalMemory
from ascend_jax.message import MESSAGE_TYPES
from ascend_jax.schema import GM_LIMIT_BYTES, MAX_SCENARIO_BYTES, Scenario, did_you_mean, validate_document

DEFAULT_SCENARIO = "default"
#: Message fields that hold sizes or counts and so may not be negative.
_NON_NEGATIVE_FIELDS = {"tailM", "tailN", "tailK", "lastTailM", "mOrgShape", "nOrgShape", "kaOrgShape", "kbOrgShape"}


def read_document(path: str | Path, field: str = "scenario", limit: int = MAX_SCENARIO_BYTES) -> dict[str, Any]:
    """Reads a TOML file into a dict: a regular file, at most ``limit`` bytes, UTF-8, valid TOML."""
    p = Path(path)
    text = _read_text(p, field, limit)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(field, str(p), f"is not valid TOML ({e})", "fix the syntax at the position given") from None
    except RecursionError:
        raise ConfigError(field, str(p), "is nested too deeply to read", "flatten the tables") from None
    depth = _depth(doc)
    if depth > MAX_NESTING:
        raise ConfigError(field, str(p), f"nests tables or arrays {depth} levels deep; the limit is {MAX_NESTING}",
                          "flatten the tables (a scenario needs at most 4 levels)")  # fmt: skip
    return doc


#: Deepest nesting of tables and arrays a scenario may have (a real one has at most 4 levels).
MAX_NESTING = 32


def _depth(doc: Any) -> int:
    """Levels of nested tables and arrays in a parsed document (iterative: no recursion limit)."""
    deepest, todo = 0, [(doc, 1)]
    while todo:
        node, level = todo.pop()
        deepest = max(deepest, level)
        if level > MAX_NESTING:
            return level
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        todo.extend((c, level + 1) for c in children if isinstance(c, (dict, list)))
    return deepest


def _read_text(p: Path, field: str, limit: int) -> str:
    try:
        if not p.exists():
            raise ConfigError(field, str(p), "file not found", "check the path")
        if not p.is_file():
            raise ConfigError(field, str(p), "is not a regular file (a folder or a device)", "give a .toml file")
        size = p.stat().st_size
        if size > limit:
            raise ConfigError(field, str(p), f"is {size} bytes; the limit is {limit} bytes", "split the scenario")
        data = p.read_bytes()[: limit + 1]
    except OSError as e:
        raise ConfigError(field, str(p), f"cannot be read ({e.strerror or e})", "check its permissions") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(field, str(p), f"is not UTF-8 text (byte {e.start})", "save it as UTF-8") from None


def load_scenario(
    source: str | Path | Mapping[str, Any],
    *,
    max_steps: int | None = None,
    allow_python: bool = False,
    import_callbacks: bool = True,
    build: str | None = None,
) -> CubeGroupProgram:
    """Loads and validates a scenario from a TOML file path or an already parsed document.

    Args:
      source: path to a ``.toml`` file, or the parsed document (relative data paths then resolve
        against the working directory).
      max_steps: overrides the scenario's ``max_steps``.
      allow_python: let ``callback = "python:module:Class"`` import and run ``module``.
      import_callbacks: False validates ``python:`` callbacks by form only and never imports them
        (``ascend-jax check``); the program then carries a built-in stand-in.
      build: overrides the scenario's ``build`` (``"debug"`` or ``"release"``).
    """
    base_dir = None
    if isinstance(source, Mapping):
        doc = source
    else:
        path = Path(source)
        base_dir = path.parent
        doc = read_document(path)
    kernel = build_kernel(
        doc, max_steps, base_dir, allow_python=allow_python, import_callbacks=import_callbacks, build=build
    )
    return kernel.compile()


def builtin_scenario_path(name: str = DEFAULT_SCENARIO) -> Path:
    """Path of a scenario shipped with the package (``ascend_jax/scenarios/<name>.toml``)."""
    path = Path(str(resources.files("ascend_jax") / "scenarios" / f"{name}.toml"))
    if not path.exists():
        raise ConfigError("scenario", name, "no such built-in scenario", "give a scenario file instead")
    return path


def resolve_data_path(value: str, base_dir: Path | None, field: str, limit: int = GM_LIMIT_BYTES) -> Path:
    """A data file named in a scenario: relative paths resolve against ``base_dir`` (the scenario's
    folder) and may not leave it; the file must be a regular file of at most ``limit`` bytes."""
    raw = Path(value)
    if raw.is_absolute():
        raise ConfigError(
            field,
            value,
            "is an absolute path: data paths may not leave the scenario's folder",
            "put the file beside the scenario and name it relatively",
        )
    root = (base_dir if base_dir is not None else Path.cwd()).resolve()
    p = (root / raw).resolve()
    if not p.is_relative_to(root):
        raise ConfigError(field, value, "leaves the scenario's folder", "put the file beside the scenario")
    try:
        if not p.exists():
            raise ConfigError(
                field, value, f"file not found (looked at {str(p)!r})", "paths are relative to the scenario"
            )
        if not p.is_file():
            raise ConfigError(field, value, "is not a regular file", "give a file")
        if p.stat().st_size > limit:
            raise ConfigError(field, value, f"is larger than {limit} bytes (the limit)", "use a smaller file")
    except OSError as e:
        raise ConfigError(field, value, f"cannot be read ({e.strerror or e})", "check its permissions") from None
    return p


def load_npy(path: Path, shape: tuple[int, ...], dtype: np.dtype, field: str, shown: str | None = None) -> np.ndarray:
    """Reads a ``.npy`` file for a tensor of ``shape`` and ``dtype``, checking the header (format,
    shape, element kind) before reading any data; never unpickles. ``shown``: the path as the user wrote it."""
    fmt = np.lib.format
    shown = shown or str(path)
    try:
        with open(path, "rb") as f:
            try:
                version = fmt.read_magic(f)
            except ValueError:
                raise ConfigError(
                    field, shown, "is not a .npy file (an .npz or other format?)", "save with np.save"
                ) from None
            try:
                read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                file_shape, _, file_dtype = read_header(f)
            except (ValueError, SyntaxError) as e:
                raise ConfigError(field, shown, f"has an unreadable .npy header ({e})", "save with np.save") from None
            if file_dtype.names is not None or file_dtype.subdtype is not None or file_dtype.kind not in "biuf":
                raise ConfigError(
                    field,
                    f"{path.name} of dtype {file_dtype}",
                    "must hold plain bool, integer or float data (not complex, structured or objects)",
                    f"save an array of {dtype}",
                )
            if dtype.kind in "iu" and file_dtype.kind == "f":
                raise ConfigError(
                    field, f"{path.name} of dtype {file_dtype}", f"float data for a {dtype} tensor", "save integers"
                )
            if tuple(file_shape) != tuple(shape):
                raise ConfigError(field, f"{path.name} of shape {tuple(file_shape)}", f"must have shape {tuple(shape)}",
                                  "save an array of the tensor's shape, or change the tensor's shape")  # fmt: skip
            f.seek(0)
            data = np.load(f, allow_pickle=False)
    except ConfigError:
        raise
    except OSError as e:
        raise ConfigError(field, shown, f"cannot be read ({e.strerror or e})", "check the file") from None
    except ValueError as e:
        raise ConfigError(field, shown, f"cannot be loaded ({e})", "save it again with np.save") from None
    return np.asarray(data)


def _dtype(name: str) -> np.dtype:
    return DTYPES[DTYPE_ALIASES.get(name, name)]


def _gm_from_tensors(sc: Scenario, base_dir: Path | None, errors: list[ConfigError] | None = None) -> GlobalMemory:
    total = 0
    for t in sc.tensor:
        nbytes = int(np.prod(t.shape, dtype=object)) * _dtype(t.dtype).itemsize
        total += -(-max(nbytes, 1) // 512) * 512 + 512
        if total >= GM_LIMIT_BYTES:
            raise ConfigError(
                "tensor",
                f"{total} bytes up to {t.name!r}",
                f"GM tensors must fit in {GM_LIMIT_BYTES} bytes (int32 addresses)",
                "use smaller shapes",
            )
    gm = GlobalMemory()
    for i, t in enumerate(sc.tensor):
        with _collecting(errors):
            where = f"tensor[{i}]"
            init: Any = t.init if "init" in t.model_fields_set else None  # None: not given (GlobalMemory.alloc)
            if t.init.endswith(".npy"):
                path = resolve_data_path(t.init, base_dir, f"{where}.init")
                init = load_npy(path, tuple(t.shape), _dtype(t.dtype), f"{where}.init", t.init)
            gm.alloc(t.name, list(t.shape), t.dtype, init, t.seed, where)
    return gm


class _collecting:
    """``with _collecting(errors):`` appends a :class:`ConfigError` raised in the block to ``errors``
    and goes on after the block; with ``errors=None`` the error propagates (stop at the first)."""

    def __init__(self, errors: list[ConfigError] | None):
        self.errors = errors

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if self.errors is not None and isinstance(exc, ConfigError):
            self.errors.append(exc)
            return True
        return False


#: Most errors ``ascend-jax check`` lists (the count of the others is given).
MAX_LISTED_ERRORS = 20


def check_scenario(
    path: str | Path, limit: int = MAX_LISTED_ERRORS
) -> tuple[CubeGroupProgram | None, list[ConfigError], int]:
    """Validates a scenario file like :func:`load_scenario` with ``import_callbacks=False``, but
    collects every error instead of stopping at the first (``ascend-jax check``).

    Stages run in order and a stage with errors ends the check (later stages would only repeat
    them): the file; every key and type (all pydantic errors, one per field); the cross checks
    (callbacks, message fields, data paths, tensors); groups and barriers; each AIV's ops (its
    first error, every AIV); the whole kernel.

    Returns:
      ``(program or None, errors, total)``: the program when there is no error, at most ``limit``
      errors, and how many were found in all.
    """
    from pydantic import ValidationError

    from ascend_jax.schema import Scenario, config_errors

    p = Path(path)
    try:
        doc = read_document(p)
        if not isinstance(doc, Mapping):
            validate_document(doc)
        Scenario.model_validate(dict(doc))
    except ConfigError as e:
        return None, [e], 1
    except ValidationError as e:
        errors, total = config_errors(e, limit)
        return None, errors, total
    errors: list[ConfigError] = []
    kernel = build_kernel(doc, None, p.parent, import_callbacks=False, errors=errors)
    program = None
    if kernel is not None and not errors:
        with _collecting(errors):
            program = kernel.compile()
    return (program if not errors else None), errors[:limit], len(errors)


def _check_callback(spec: str, field: str, allow_python: bool) -> None:
    if spec.startswith("python:"):
        if not allow_python:
            raise ConfigError(
                field,
                spec,
                "a python: callback imports and runs code named by the scenario; refused by default",
                "pass --allow-python (allow_python=True) if you trust this file",
            )
        return
    if spec not in BUILTIN_CALLBACKS:
        raise ConfigError(
            field,
            spec,
            f"unknown callback; built-ins are {sorted(BUILTIN_CALLBACKS)}",
            (did_you_mean(spec, BUILTIN_CALLBACKS) + "or 'python:package.module:Class' with --allow-python").strip(),
        )


def _check_fields(fields: Mapping[str, Any], dtype: np.dtype, where: str) -> None:
    """Types of ``post`` fields against the message type (pack_message checks the ranges)."""
    names = list(dtype.names[1:])
    for name, value in fields.items():
        field = f"{where}.fields.{name}"
        if name not in names:
            raise ConfigError(
                field,
                value,
                f"not a payload field of the message type (fields: {names})",
                (did_you_mean(name, names) + "head is set by the post call's state / aiv_id").strip(),
            )
        kind = dtype.fields[name][0].kind
        if isinstance(value, str):
            if not (name.endswith("Addr") and kind == "u"):
                raise ConfigError(
                    field, value, "must be an integer; only address fields (…Addr) take 'tensor+byte_offset'",
                    "write the number without quotes",
                )  # fmt: skip
        elif isinstance(value, bool):
            if kind != "b":
                raise ConfigError(field, value, "must be an integer (true/false are not integers)", "write 0 or 1")
        elif isinstance(value, float) and kind != "f":
            raise ConfigError(field, value, "must be an integer", "write it without a fraction")
        elif name in _NON_NEGATIVE_FIELDS and value < 0:
            raise ConfigError(field, value, "must be >= 0 (a size in elements)", "write 0 or a positive size")


def build_kernel(
    doc: Mapping[str, Any],
    max_steps: int | None = None,
    base_dir: Path | None = None,
    *,
    allow_python: bool = False,
    import_callbacks: bool = True,
    build: str | None = None,
    errors: list[ConfigError] | None = None,
) -> CubeGroupKernel | None:
    """Builds (without compiling) the kernel a parsed scenario describes.

    ``[[tensor]]`` tables are allocated first, in order; ``.npy`` paths are relative to
    ``base_dir`` (the scenario's folder). Message fields may be written ``"tensor+byte_offset"``.
    ``errors``: None raises the first :class:`ConfigError`; a list collects them (see
    :func:`check_scenario`) and the result is None when a stage had errors.
    """
    sc = validate_document(doc)
    chip: str = sc.chip
    if chip.endswith(".ini"):
        with _collecting(errors):
            chip = str(resolve_data_path(chip, base_dir, "chip", limit=2**20))
    msg_types = {}
    for i, g in enumerate(sc.group):
        with _collecting(errors):
            _check_callback(g.callback, f"group[{i}].callback", allow_python or not import_callbacks)
        if g.matmul is not None:
            with _collecting(errors):
                check_scenario_types(g.matmul.model_dump(), f"group[{i}].matmul")
        msg_types[g.name] = MESSAGE_TYPES[
            g.message or ("CubeMatmulMsg" if g.callback in MATMUL_CALLBACKS else "CubeMsgBody")
        ]
    for i, a in enumerate(sc.aiv):
        for j, op in enumerate(a.ops):
            if op.op == AivCall.POST and op.fields and op.group in msg_types:
                with _collecting(errors):
                    _check_fields(op.fields, msg_types[op.group], f"aiv[{i}].ops[{j}]")
    gm = _gm_from_tensors(sc, base_dir, errors)  # data paths and .npy files: checked with the cross checks
    if errors:
        return None
    kernel = CubeGroupKernel(
        chip=chip,
        name=sc.name,
        max_steps=max_steps if max_steps is not None else sc.max_steps,
        max_received=sc.max_received,
        build=build if build is not None else sc.build,
        zero_workspace=sc.zero_workspace,
    )
    kernel.gm = gm
    for g in sc.group:
        callback: Any = g.callback
        if callback.startswith("python:") and not import_callbacks:
            callback = MatmulCallback() if g.matmul is not None else MergeCallback()  # stand-in, never imported
        with _collecting(errors):
            kernel.create_cube_res_group(
                g.name,
                g.block_start,
                g.block_size,
                g.msg_queue_size,
                callback,
                msg_types[g.name],
                matmul=None if g.matmul is None else g.matmul.model_dump(),
                tiling=None if g.tiling is None else g.tiling.model_dump(),
            )
    for b in sc.barrier:
        with _collecting(errors):
            kernel.group_barrier(b.name, b.arrive_size, b.wait_size)
    if errors:  # the AIVs' ops name these groups, barriers and tensors: their errors would repeat these
        return None
    seen: dict[int, int] = {}
    for i, a in enumerate(sc.aiv):
        with _collecting(errors):  # one error per AIV: its first
            if a.block_idx in seen:
                raise ConfigError(
                    f"aiv[{i}].block_idx", a.block_idx, f"already used by aiv[{seen[a.block_idx]}]", "merge their ops"
                )
            program = kernel.aiv(a.block_idx)
            seen[a.block_idx] = i
            try:
                for j, op in enumerate(a.ops):
                    program.location = f"aiv[{i}].ops[{j}]"
                    _apply(program, op)
            finally:
                program.location = None
    return None if errors else kernel


def _apply(program, op) -> None:
    kind = op.op
    if kind == "assign_queue":
        program.assign_queue(op.group, op.queue)
    elif kind == AivCall.POST:
        program.post(op.group, op.fields, op.state, op.aiv_id, op.pipe)
    elif kind == AivCall.FAKE:
        program.fake(op.group, op.pipe)
    elif kind == AivCall.QUIT:
        program.quit(op.group, op.pipe)
    elif kind == AivCall.WAIT:
        program.wait(op.group, op.offset, op.sync)
    elif kind == AivCall.DELAY:
        program.delay(op.cycles)
    elif kind == AivCall.ARRIVE:
        program.arrive(op.barrier, op.index)
    elif kind == AivCall.SYNC_ALL:
        program.sync_all(op.aiv_only)
    elif kind == "ub_buffer":
        program.vec.buffer(op.name, op.rows, op.cols, op.dtype)
    elif kind == AivCall.VECTOR:
        program.vec.apply(op.model_dump(exclude={"op"}))
    else:
        program.barrier_wait(op.barrier, op.index)

"""Loading runnable models (``ascend-jax run --model NAME``).

A model is ``NAME.py`` or ``NAME.toml`` in a models folder: ``$ASCEND_JAX_MODELS`` if set, then
``./models``, then the ``models/`` folder of the source checkout this package was installed from.
A Python model defines ``build(seed: int = 0) -> CubeGroupProgram`` and may define
``expected(program) -> {tensor name: float64 array}``, its own numpy answer, which the numerics
report checks next to the float64 reference interpreter.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ascend_jax.errors import ConfigError
from ascend_jax.scenario import load_scenario


def model_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("ASCEND_JAX_MODELS"):
        dirs.append(Path(os.environ["ASCEND_JAX_MODELS"]))
    dirs.append(Path.cwd() / "models")
    dirs.append(Path(__file__).resolve().parent.parent / "models")
    return dirs


def available_models() -> list[str]:
    names = set()
    for d in model_dirs():
        if d.is_dir():
            names.update(p.stem for p in d.iterdir() if p.suffix in (".py", ".toml") and not p.stem.startswith("_"))
    return sorted(names)


def find_model(name: str) -> Path:
    for d in model_dirs():
        for suffix in (".py", ".toml"):
            p = d / f"{name}{suffix}"
            if p.is_file():
                return p
    raise ConfigError("--model", name, f"no such model; models: {available_models()}")


def load_model(
    name: str, seed: int = 0, max_steps: int | None = None, ranks: int | None = None
) -> tuple[Any, Callable[[Any], dict[str, Any]] | None, Path]:
    """Returns (program, expected function or None, path) of model ``name``: a
    :class:`CubeGroupProgram`, or a comm :class:`ascend_jax.aicpu.world.TaskProgram` for models
    whose ``build`` takes ``ranks``."""
    path = find_model(name)
    if path.suffix == ".toml":
        return load_scenario(path, max_steps=max_steps), None, path
    spec = importlib.util.spec_from_file_location(f"ascend_jax_model_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "build"):
        raise ConfigError("--model", name, f"{path} defines no build(seed) function")
    import inspect

    params = inspect.signature(module.build).parameters
    if ranks is not None:
        if "ranks" not in params:
            raise ConfigError("--ranks", ranks, f"model {name!r} has a fixed number of ranks")
        if not 2 <= ranks <= 64:
            raise ConfigError("--ranks", ranks, "must be in 2..64")
        program = module.build(seed, ranks=ranks)
    else:
        program = module.build(seed)
    if max_steps is not None:
        import dataclasses

        program = dataclasses.replace(program, max_steps=max_steps)
    return program, getattr(module, "expected", None), path

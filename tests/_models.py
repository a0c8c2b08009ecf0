"""One loader for the tests: a model (``models/NAME.py``) or a benchmark helper as a module."""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def load(name: str, folder: str = "models") -> ModuleType:
    """``ROOT/folder/name.py`` as a module, registered in ``sys.modules`` before it runs (as an
    import would: dataclasses look their module up there), once per test process."""
    spec = importlib.util.spec_from_file_location(f"_{folder}_{name}", ROOT / folder / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod

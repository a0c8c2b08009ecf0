"""Shared helpers of the benchmark scripts: loading models, timing, machine facts, JSON and plots."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
#: where a benchmark writes without ``--out``: outside the source tree (benchmarks/results/ holds
#: only the figures someone chose to commit, written with ``--out benchmarks/results/NAME.json``)
SCRATCH = Path(tempfile.gettempdir()) / "ascend_jax_benchmarks"


def load_model_module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "models" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # before it runs, as an import would (dataclasses look the module up)
    spec.loader.exec_module(mod)
    return mod


def device_kind() -> str:
    return "gpu" if jax.default_backend() in ("gpu", "cuda", "rocm") else jax.default_backend()


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


class Timing(NamedTuple):
    """One measured call: wall seconds and CPU seconds (user + sys of the process, all threads)."""

    wall_s: float
    cpu_s: float


def cpu_s() -> float:
    """User + sys CPU seconds of this process so far (every thread)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def best_of(fn, repeats: int = 3) -> float:
    """Smallest wall time of ``repeats`` calls (the machine is shared and noisy)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def write(out: Path, payload: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {out}")


def pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install -e '.[bench]')")
        return None
    return plt

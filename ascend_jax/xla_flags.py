"""The one XLA setting the JAX engines ask for on a CPU: a lower LLVM loop-unroll threshold.

The engines' compiled loops hold hundreds of small kernels over ``[cores, lanes]`` arrays. With
few lanes (a sweep point, a test, a single run) each of these loops has a small fixed trip
count, and LLVM's default threshold unrolls it completely: measured on the attention_grad loop
at S = 2,048 with 8 lanes, 71 % of the LLVM IR came from kernels of at most 4,096 elements, a
192-element kernel grew from 163 lines to 2,220. ``-unroll-threshold=100`` (LLVM's default at
-O3 is 300) makes that IR 39 % smaller (3.56 -> 2.18 MB) and XLA's compile about a fifth cheaper
in wall and CPU time on a 2-core AMD EPYC (processes alternating with and without it), while the
protocol loop at 4,096 lanes, whose loops are long, compiles to nearly the same code (683 -> 665 kB
of IR). ``benchmarks/README.md`` ("Compile, session 13") has the measurements.

LLVM options are global to a process, and XLA reads them from ``XLA_FLAGS`` once, when JAX
starts its backend: JAX's per-function ``compiler_options`` cannot carry them. So
``import ascend_jax`` adds the option to ``XLA_FLAGS`` (:func:`prefer_fast_compile`), which
is before JAX's first computation when a script imports ascend_jax before it computes anything
with JAX (imported lazily, the engines would come too late: a benchmark that warmed JAX up first
ran without the option). It leaves the environment alone when:

- ``ASCEND_JAX_XLA_FLAGS=0`` (:data:`OPT_OUT_ENV`): the user keeps XLA's defaults;
- ``XLA_FLAGS`` already names ``xla_backend_extra_options``: the user's own LLVM options win;
- a GPU or TPU plugin for JAX is installed and ``JAX_PLATFORMS`` does not pin the CPU: the
  threshold was measured for CPU code only, and the option would reach that compiler too.

If JAX's backend has started already, the option has no effect in this process (JAX reads the
flags once); results never depend on it, only compile time.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from collections.abc import MutableMapping

from ascend_jax.errors import ConfigError

#: The LLVM option added to ``XLA_FLAGS`` (see the module's docstring for the measurement).
LLVM_OPTIONS = "-unroll-threshold=100"

#: Set to ``0`` to leave ``XLA_FLAGS`` as it is (``1`` or unset: add the option).
OPT_OUT_ENV = "ASCEND_JAX_XLA_FLAGS"

#: JAX's accelerator plugins (CUDA, ROCm, TPU): when one is installed the backend may not be the CPU.
GPU_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin", "libtpu")


def _gpu_possible(environ: MutableMapping[str, str]) -> bool:
    """Whether JAX may start on an accelerator: one of :data:`GPU_PLUGINS` is installed and
    ``JAX_PLATFORMS`` does not name the CPU alone."""
    if environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
        return False
    return any(importlib.util.find_spec(name) is not None for name in GPU_PLUGINS)


def _cli_process() -> bool:
    """Whether this process is the ``ascend-jax`` command (its console script), which checks
    :data:`OPT_OUT_ENV` itself before anything else."""
    argv = getattr(sys, "argv", None) or [""]
    return os.path.basename(str(argv[0])).startswith("ascend-jax")


def opted_in(environ: MutableMapping[str, str] | None = None) -> bool:
    """Whether :data:`OPT_OUT_ENV` lets :func:`prefer_fast_compile` add the option: unset, empty or
    ``1``; ``0`` opts out. Raises :class:`ascend_jax.errors.ConfigError` for any other value."""
    environ = os.environ if environ is None else environ
    raw = environ.get(OPT_OUT_ENV, "")
    if raw.strip() in ("", "1"):
        return True
    if raw.strip() == "0":
        return False
    raise ConfigError(OPT_OUT_ENV, raw, "must be 0 or 1", "set it to 0 to keep XLA's defaults, or unset it")


def prefer_fast_compile(environ: MutableMapping[str, str] | None = None) -> bool:
    """Adds :data:`LLVM_OPTIONS` to ``environ["XLA_FLAGS"]`` (default ``os.environ``) unless the
    user opted out, set LLVM options of their own, or an accelerator may run the engines. Returns whether
    it changed ``environ``. Imports nothing of JAX."""
    environ = os.environ if environ is None else environ
    try:
        if not opted_in(environ):
            return False
    except ConfigError as e:  # a library cannot exit: it warns and leaves XLA_FLAGS alone (the CLI exits 2)
        if not _cli_process():  # the CLI reports it itself, once, and exits 2
            warnings.warn(f"{e} (XLA_FLAGS left as it is)", stacklevel=2)
        return False
    flags = environ.get("XLA_FLAGS", "")
    if "xla_backend_extra_options" in flags or _gpu_possible(environ):
        return False
    environ["XLA_FLAGS"] = f"{flags} --xla_backend_extra_options={LLVM_OPTIONS}".strip()
    return True

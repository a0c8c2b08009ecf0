"""The str enums of a run's settings and the tuples of their values, with no heavy imports.

:class:`Schedule`, :class:`AtomicOrder`, :class:`Build` and :class:`Engine` are the one home of
these names: :class:`~ascend_jax.config.RunConfig` types its fields with them, the command line
takes its ``choices`` from the tuples below, and both engines check their ``schedule`` and
``atomic_order`` arguments against them. This module imports only the standard library, so the
reference interpreter and the argument parser can use it without loading pydantic or JAX.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable


class Schedule(enum.StrEnum):
    """Order in which ready cores step: ``lockstep`` (all at once), ``random`` (a seeded draw per
    step), ``timed`` (events in cycle order by the cost model; the JSON gets ``timing``)."""

    LOCKSTEP = "lockstep"
    RANDOM = "random"
    TIMED = "timed"


class AtomicOrder(enum.StrEnum):
    """Order in which one step's matmul results reach GM: ``fixed`` (AIC order) or ``random``
    (drawn per lane and step; the JAX engine only)."""

    FIXED = "fixed"
    RANDOM = "random"


class Build(enum.StrEnum):
    """Which asserts the kernel has (see :class:`~ascend_jax.cube_group.program.CubeGroupKernel`):
    ``cpu`` (the CPU twin), ``npu-debug`` (only ``ASCENDC_DEBUG_ASSERT``), ``release`` (none).
    The deprecated name ``debug`` is accepted as ``cpu``, with a ``BuildAliasWarning``."""

    CPU = "cpu"
    NPU_DEBUG = "npu-debug"
    RELEASE = "release"


class Engine(enum.StrEnum):
    """Which engine runs: ``auto`` (the reference interpreter for one lane of a deterministic
    schedule, else JAX; see :func:`ascend_jax.runner.resolve_engine`), ``jax`` or ``reference``."""

    AUTO = "auto"
    JAX = "jax"
    REFERENCE = "reference"


#: every schedule name, in declaration order
SCHEDULES: tuple[str, ...] = tuple(s.value for s in Schedule)
#: every atomic order name
ATOMIC_ORDERS: tuple[str, ...] = tuple(a.value for a in AtomicOrder)
#: every build name (``cpu`` first)
BUILDS: tuple[str, ...] = tuple(b.value for b in Build)
#: deprecated build names and the build each stands for (accepted with a ``BuildAliasWarning``)
BUILD_ALIASES: dict[str, str] = {"debug": Build.CPU.value}
#: every engine name (``auto`` first)
ENGINES: tuple[str, ...] = tuple(e.value for e in Engine)


def one_of(values: Iterable[str]) -> str:
    """The values as an error message lists them: ``'lockstep', 'random' or 'timed'``."""
    quoted = [repr(v) for v in values]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


__all__ = [
    "ATOMIC_ORDERS",
    "BUILDS",
    "BUILD_ALIASES",
    "ENGINES",
    "SCHEDULES",
    "AtomicOrder",
    "Build",
    "Engine",
    "Schedule",
    "one_of",
]

"""Cost model of the ``timed`` schedule: cycles per action, from a :class:`ChipSpec` plus
calibratable latencies.

Cycles (AI core clock, ``cube_freq``):

* AIV: ``AllocMessage`` (the poll that finds the slot FREE) ``alloc``; ``PostMessage`` ``post``;
  ``PostFakeMsg`` ``fake``; ``SetQuit`` ``quit``; ``Wait`` ``wait``; GroupBarrier calls ``barrier``;
  ``delay {cycles}`` its cycles (one step, exact up to 2**31 - 1: the engines add cycles as
  float32 pairs, :mod:`ascend_jax.cube_group.clock`).
* AIC: receiving a message and dispatching the callback ``dispatch``; receiving a QUIT ``poll``;
  ``FreeMessage`` ``free``; ``IterateAll``: ``mm_overhead`` + one cycle per cube fractal
  (ceil(m/16) * ceil(n/16) * ceil(k/K0), K0 = 16, or 32 for int8: [DtypeMKN]) + GM traffic
  (A, B and C bytes) / ``ddr_rate`` bytes per cycle, the sum (no overlap modelled).
* AIV vector ops (:mod:`ascend_jax.cube_group.vector`): a GM<->UB copy ``vec_issue`` + bytes /
  ``ddr_rate``; a compute op ``vec_issue`` + one cycle per ``vec_rate`` bytes of its widest operand.

The latencies are not published; the defaults are round placeholders to be calibrated against a
device profile. Every lane of a batch may carry its own :class:`CostModel` without recompiling.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ascend_jax.chips import ChipSpec, get_chip
from ascend_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class CostModel:
    """Cycles per action (see the module docstring); ``ddr_rate`` and ``vec_rate`` in bytes per cycle per core."""

    alloc: float = 40.0
    post: float = 120.0
    fake: float = 40.0
    quit: float = 40.0
    wait: float = 40.0
    barrier: float = 200.0
    dispatch: float = 80.0
    poll: float = 40.0
    free: float = 40.0
    mm_overhead: float = 300.0
    ddr_rate: float = 32.0
    vec_issue: float = 20.0
    vec_rate: float = 256.0
    freq_mhz: float = 1850.0

    FIELDS = (
        "alloc", "post", "fake", "quit", "wait", "barrier", "dispatch", "poll", "free", "mm_overhead", "ddr_rate",
        "vec_issue", "vec_rate", "freq_mhz",
    )  # fmt: skip

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, (int, float)) or v < 0 or (f.name in ("ddr_rate", "vec_rate", "freq_mhz") and v <= 0):
                raise ConfigError(f"cost.{f.name}", v, "must be a number >= 0 (ddr_rate, vec_rate, freq_mhz > 0)")

    @classmethod
    def for_chip(cls, chip: str | ChipSpec, **overrides: float) -> CostModel:
        c = get_chip(chip)
        return cls(**{"ddr_rate": c.rate("ddr_rate", 32.0), "freq_mhz": c.cube_freq_mhz, **overrides})

    def vector(self) -> np.ndarray:
        """float32 [len(FIELDS)] in :attr:`FIELDS` order (what the engine carries per lane; freq_mhz last)."""
        return np.array([getattr(self, k) for k in self.FIELDS], np.float32)


C = {name: i for i, name in enumerate(CostModel.FIELDS)}

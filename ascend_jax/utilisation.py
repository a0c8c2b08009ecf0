"""Load balance of a timed run: per-core time in µs and a utilisation summary.

Everything here is derived from the ``timing`` section of a result
(:func:`ascend_jax.cube_group.result.timing_report`), which both engines fill from the same
per-core counters under ``schedule="timed"`` (the JAX engine's ``aic_busy`` / ``aic_blocked`` /
``aiv_*_stall`` state, the reference interpreter's clocks), so the numbers are the same on both
and need no event recording. Cycles become µs at the cost model's ``freq_mhz``.

Per AIC: ``busy`` (its actions: receive and dispatch, matmuls, frees), ``blocked`` (spinning on a
slot before an action: waiting for a message or for a free's wait state) and ``idle`` (the rest
of the kernel: after its last action, its QUIT, until the last core finishes); the three add up
to the kernel time. ``utilisation`` is busy / kernel time.

Per AIV: the stall before ``AllocMessage`` (its slot not yet FREE: backpressure) and before waits
and barriers. AIV busy time is not among the timing counters; the trace and the report's Gantt
chart show it.

Summary over the AICs (busy time ``b_i``, ``n`` AICs, all AICs of the program, including those
that received no work):

* ``mean`` / ``min`` / ``max``: of the per-AIC utilisation;
* ``max_min_ratio``: ``max(b) / min(b)`` (None when an AIC was never busy);
* ``imbalance``: ``max(b) / mean(b) - 1``, the "percent imbalance" of parallel-performance
  tools: 0 when every AIC is equally busy, ``n - 1`` when one AIC does all the work.
  ``1 / (1 + imbalance)`` = mean / max busy is the AIC work's parallel efficiency: the busiest
  AIC's busy time shrinks by that factor if the same work were spread evenly.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from typing import Any


@dataclasses.dataclass(frozen=True)
class AicTime:
    """One AIC's kernel time split (µs) and ``utilisation`` = busy / kernel (0..1)."""

    busy_us: float
    blocked_us: float
    idle_us: float
    utilisation: float


@dataclasses.dataclass(frozen=True)
class AivStall:
    """One AIV's stalls (µs): before ``AllocMessage`` and before waits / barriers, and their sum."""

    alloc_stall_us: float
    wait_stall_us: float
    stall_us: float


@dataclasses.dataclass(frozen=True)
class Utilisation:
    """Load balance of one timed lane.

    Attributes:
      kernel_us: when the last core finished (µs).
      freq_mhz: the clock the cycles were converted at.
      aic: absolute AIC index -> :class:`AicTime`.
      aiv: ``block_idx`` -> :class:`AivStall` (AIVs with ops).
      mean, min, max: of the per-AIC utilisation (0..1).
      max_min_ratio: largest over smallest AIC busy time; None if some AIC was never busy.
      imbalance: ``max busy / mean busy - 1`` (0 balanced; ``n - 1`` all work on one of n AICs).
      busiest, least_busy: the AIC indices with the largest / smallest busy time (lowest index on ties).
      aiv_stall_mean_us, aiv_stall_max_us: over the AIVs' total stalls (0 without AIVs).
      most_stalled: the AIV with the largest total stall (None without AIVs).
    """

    kernel_us: float
    freq_mhz: float
    aic: dict[int, AicTime]
    aiv: dict[int, AivStall]
    mean: float
    min: float
    max: float
    max_min_ratio: float | None
    imbalance: float
    busiest: int | None
    least_busy: int | None
    aiv_stall_mean_us: float
    aiv_stall_max_us: float
    most_stalled: int | None

    def to_json(self) -> dict[str, Any]:
        """The result JSON's ``utilisation`` object (keys as strings, see docs/reference/result-json.md)."""
        return {
            "kernel_us": self.kernel_us,
            "aic": {str(c): dataclasses.asdict(t) for c, t in self.aic.items()},
            "aiv": {str(b): dataclasses.asdict(s) for b, s in self.aiv.items()},
            "summary": {
                "aics": len(self.aic),
                "mean": self.mean,
                "min": self.min,
                "max": self.max,
                "max_min_ratio": self.max_min_ratio,
                "imbalance": self.imbalance,
                "busiest": self.busiest,
                "least_busy": self.least_busy,
                "aiv_stall_mean_us": self.aiv_stall_mean_us,
                "aiv_stall_max_us": self.aiv_stall_max_us,
                "most_stalled": self.most_stalled,
            },
        }


def compute_utilisation(source: Any) -> Utilisation:
    """The load balance of one timed lane.

    Args:
      source: a :class:`ascend_jax.CubeGroupResult` of a ``schedule="timed"`` run (one lane; for a
        :class:`ascend_jax.BatchResult` pass ``res[i]``), or its ``timing`` dict.

    Raises:
      ValueError: the result has no timing (it was not run with ``schedule="timed"``).
    """
    if not isinstance(source, dict) and not hasattr(source, "timing") and hasattr(source, "__getitem__"):
        raise ValueError("utilisation describes one lane: pass res[i] of a batch, not the whole batch")
    timing = source if isinstance(source, dict) else getattr(source, "timing", None)
    if not timing:
        raise ValueError("utilisation needs a result of schedule='timed' (its 'timing' section); this one has none")
    freq = float(timing["freq_mhz"])
    kernel = float(timing["kernel_cycles"])

    def us(cycles: float) -> float:
        return float(cycles) / freq

    aic = {}
    busy = {}
    for core, t in sorted(timing["aic"].items(), key=lambda kv: int(kv[0])):
        c = int(core)
        busy[c] = float(t["busy_cycles"])
        aic[c] = AicTime(
            busy_us=us(t["busy_cycles"]),
            blocked_us=us(t["blocked_cycles"]),
            idle_us=us(t["idle_cycles"]),
            utilisation=busy[c] / kernel if kernel > 0 else 0.0,
        )
    aiv = {}
    for block, s in sorted(timing["aiv"].items(), key=lambda kv: int(kv[0])):
        a, w = float(s["alloc_stall_cycles"]), float(s["wait_stall_cycles"])
        aiv[int(block)] = AivStall(alloc_stall_us=us(a), wait_stall_us=us(w), stall_us=us(a + w))
    util = [t.utilisation for t in aic.values()]
    b = list(busy.values())
    mean_busy = _sum(b) / len(b) if b else 0.0
    stalls = {k: s.stall_us for k, s in aiv.items()}
    return Utilisation(
        kernel_us=us(kernel),
        freq_mhz=freq,
        aic=aic,
        aiv=aiv,
        mean=_sum(util) / len(util) if util else 0.0,
        min=min(util, default=0.0),
        max=max(util, default=0.0),
        max_min_ratio=max(b) / min(b) if b and min(b) > 0 else None,
        imbalance=max(b) / mean_busy - 1.0 if mean_busy > 0 else 0.0,
        busiest=max(busy, key=lambda c: (busy[c], -c)) if busy else None,
        least_busy=min(busy, key=lambda c: (busy[c], c)) if busy else None,
        aiv_stall_mean_us=_sum(stalls.values()) / len(stalls) if stalls else 0.0,
        aiv_stall_max_us=max(stalls.values(), default=0.0),
        most_stalled=max(stalls, key=lambda k: (stalls[k], -k)) if stalls else None,
    )


def summary_line(u: Utilisation) -> str:
    """One line of the terminal summary: AIC utilisation and imbalance, AIV stalls."""
    ratio = "inf (an AIC was never busy)" if u.max_min_ratio is None else f"{u.max_min_ratio:.3g}"
    line = (
        f"AIC utilisation (busy / kernel): mean {100 * u.mean:.1f}%, min {100 * u.min:.1f}% (aic{u.least_busy}), "
        f"max {100 * u.max:.1f}% (aic{u.busiest}); busy max/min {ratio}, imbalance {u.imbalance:.3f}"
    )
    if u.aiv:
        line += f"; AIV stall mean {u.aiv_stall_mean_us:.3f} us, max {u.aiv_stall_max_us:.3f} us (aiv{u.most_stalled})"
    return line


def _sum(values) -> float:
    """Floats added left to right, one rounding per addition: the same result on every Python.
    (Python 3.12's ``sum`` compensates its rounding, so a mean could differ in its last bit
    between 3.11 and 3.12, and so would the result JSON.)"""
    return functools.reduce(operator.add, values, 0.0)

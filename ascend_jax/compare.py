"""One tensor against its reference: the error metrics every numerics report prints (the cube-group
report in :mod:`ascend_jax.numerics`, the comm report in :mod:`ascend_jax.aicpu.models`). A leaf
module (numpy only), so the comm side does not load the cube-group engines to use it."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def rel_l2(sim: np.ndarray, ref: np.ndarray) -> float:
    """``||sim - ref||_2 / ||ref||_2`` in float64 (0 when both are zero, inf when only ``ref`` is)."""
    sim = sim.astype(np.float64)
    ref = ref.astype(np.float64)
    with np.errstate(all="ignore"):  # NaN / Inf are data here; the reports count them
        denom = float(np.linalg.norm(ref))
        diff = float(np.linalg.norm(sim - ref))
    return diff / denom if denom > 0 else (0.0 if diff == 0 else math.inf)


def compare(sim: np.ndarray, ref: np.ndarray, tolerance: float) -> dict[str, Any]:
    """Error metrics of one tensor against its reference, and whether they are ok.

    Args:
      sim: the simulated tensor, any shape and dtype (read as float64).
      ref: the reference, same shape (float64; NaN / Inf allowed).
      tolerance: the largest ok relative L2 error.

    Returns:
      ``rel_l2_error``, ``max_abs_error``, ``max_rel_error`` over the elements finite on both
      sides; ``nan`` / ``inf``: counts in ``sim``; ``tolerance``; ``ok``; ``nonfinite``: counts by
      position (``sim_nan_ref_finite``, ``sim_inf_ref_finite``, ``sim_finite_ref_nonfinite``,
      ``both_nan``, ``same_inf``: equal infinities, ``mismatched``: NaN against Inf or Inf of the
      other sign); ``reason``: why ``ok`` is what it is, in words.

    ``ok`` needs the error within tolerance, no NaN anywhere in ``sim`` (a NaN is never a checked
    value, even where the reference is NaN too), and every non-finite value of either side matched
    by the same infinity on the other. Matched infinities are left out of the norms, and the
    reason says so.
    """
    s = np.asarray(sim).astype(np.float64)
    r = np.asarray(ref).astype(np.float64)
    fin_s, fin_r = np.isfinite(s), np.isfinite(r)
    nan_s = np.isnan(s)
    counts = {
        "sim_nan_ref_finite": int((nan_s & fin_r).sum()),
        "sim_inf_ref_finite": int((np.isinf(s) & fin_r).sum()),
        "sim_finite_ref_nonfinite": int((fin_s & ~fin_r).sum()),
        "both_nan": int((nan_s & np.isnan(r)).sum()),
        "same_inf": int((np.isinf(s) & (s == r)).sum()),
    }
    counts["mismatched"] = int((~fin_s & ~fin_r).sum()) - counts["both_nan"] - counts["same_inf"]
    both = fin_s & fin_r
    sb, rb = s[both], r[both]
    err = rel_l2(sb, rb) if sb.size else 0.0
    diff = np.abs(sb - rb)
    nz = rb != 0
    words = {
        "sim_nan_ref_finite": "NaN where the float64 reference is finite",
        "sim_inf_ref_finite": "Inf where the float64 reference is finite",
        "sim_finite_ref_nonfinite": "finite values where the float64 reference is NaN or Inf",
        "both_nan": "NaN where the float64 reference is NaN too (a NaN is never a checked value)",
        "mismatched": "non-finite values where the reference has a different one (NaN against Inf, or +Inf against -Inf)",
    }  # fmt: skip
    bad = [f"{counts[k]} {w}" for k, w in words.items() if counts[k]]
    within = err <= tolerance
    if not within:
        bad.insert(0, f"rel L2 {err:.3g} > tolerance {tolerance:.3g}")
    notes = list(bad) or [f"rel L2 {err:.3g} <= tolerance {tolerance:.3g}"]
    if counts["same_inf"]:
        notes.append(f"{counts['same_inf']} Inf equal to the reference's, left out of the norms")
    if not both.all():
        notes.append(f"the norms cover the {int(both.sum())} of {s.size} elements finite on both sides")
    return {
        "rel_l2_error": err,
        "max_abs_error": float(diff.max()) if diff.size else 0.0,
        "max_rel_error": float((diff[nz] / np.abs(rb[nz])).max()) if nz.any() else 0.0,
        "nan": int(nan_s.sum()),
        "inf": int(np.isinf(s).sum()),
        "tolerance": tolerance,
        "ok": not bad,
        "nonfinite": counts,
        "reason": "; ".join(notes),
    }


__all__ = ["compare", "rel_l2"]

"""The one element-wise reduction of the comm engines (``HcommLocalReduceOnThread`` and the remote
reduce variants), written once for any array module.

Both engines call :func:`reduce_elements`: the reference with numpy arrays and a scalar ``op``, the
JAX engine with ``jax.numpy`` arrays and a per-queue ``op`` column, so the two cannot drift apart
(they once disagreed on NaN bits).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ascend_jax.aicpu.codes import HcclReduceOp, numpy_dtype


def reduce_elements(xp: Any, a: Any, b: Any, op: Any) -> Any:
    """``op(a, b)`` element-wise for arrays ``a`` (destination) and ``b`` (source) of one element type.

    Args:
      xp: the array module (``numpy`` or ``jax.numpy``).
      a, b: arrays of the same shape and dtype (the hardware rounds once per element to that type:
        floats are added in float32 and rounded back).
      op: ``HcclReduceOp`` value, a scalar or an array broadcastable against ``a`` (SUM, MAX, MIN).

    MAX / MIN keep ``a`` on ties (so -0 / +0 is deterministic); with floats, any NaN operand gives
    the canonical quiet NaN.
    """
    dt = np.dtype(a.dtype)
    summed = a + b if dt.kind in "iu" else (a.astype(xp.float32) + b.astype(xp.float32)).astype(dt)
    out = xp.where(
        op == HcclReduceOp.SUM,
        summed,
        xp.where(op == HcclReduceOp.MAX, xp.where(b > a, b, a), xp.where(b < a, b, a)),
    )
    if dt.kind not in "iu":
        nan = xp.isnan(a.astype(xp.float32)) | xp.isnan(b.astype(xp.float32))
        out = xp.where(nan, xp.asarray(np.array(np.nan, dt)), out)
    return out.astype(dt)


def reduce_bytes(dst: np.ndarray, src: np.ndarray, dtype: int, op: int) -> np.ndarray:
    """numpy: ``op(dst, src)`` on uint8 byte arrays holding elements of HcclDataType ``dtype``."""
    dt = numpy_dtype(dtype)
    with np.errstate(all="ignore"):  # arbitrary bytes may hold NaN / Inf, as on the device
        out = reduce_elements(np, dst.view(dt), src.view(dt), op)
    return np.ascontiguousarray(out).view(np.uint8)


__all__ = ["reduce_bytes", "reduce_elements"]

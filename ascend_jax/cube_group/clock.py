"""Cycle times of the ``timed`` schedule as two float32 words: exact far past float32's 2**24.

A time (or a sum of durations) is a pair ``(hi, lo)`` of float32 values whose sum is the number
of cycles: ``hi`` is that number rounded to float32 and ``lo`` the rest (normalised:
``hi == float32(hi + lo)``), so each number has one pair, equality is equality of both words and
order is ``hi``, then ``lo``. About 48 significant bits: a ``delay`` of 2**31 - 1 cycles after
other actions keeps every cycle (one float32 would round to a multiple of 256 there). Every number
that is a float32 value has ``lo == 0`` and ``hi`` that value, so the sums and comparisons of such
numbers are the float32 ones whenever float32 was exact.

The arithmetic is Knuth's and Dekker's error-free transformations, additions and subtractions
only (no product, so no fused multiply-add can change a result); the same functions serve numpy
scalars (the reference interpreter) and jax arrays (the engine), which therefore agree bit for
bit. Pairs are tuples ``(hi, lo)`` of equal shape.
"""

from __future__ import annotations

from typing import Any

import numpy as np

F32 = np.float32


def two_sum(a: Any, b: Any) -> tuple[Any, Any]:
    """``(s, e)`` with ``s = fl(a + b)`` and ``e = a + b - s`` exactly (float32 operands)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def fast_two_sum(a: Any, b: Any) -> tuple[Any, Any]:
    """As :func:`two_sum` where ``|a| >= |b|`` or ``a == 0``: the normalised pair of ``a + b``."""
    s = a + b
    return s, b - (s - a)


def add(x: tuple, y: tuple) -> tuple:
    """``x + y`` of two pairs, normalised: the high words' exact sum, the low words added to its
    error (exact while the low words' sum fits 24 bits, as it does for whole and 1/2**k cycles)."""
    s, e = two_sum(x[0], y[0])
    return fast_two_sum(s, e + (x[1] + y[1]))


def sub(x: tuple, y: tuple) -> tuple:
    """``x - y`` of two pairs, normalised."""
    return add(x, (-y[0], -y[1]))


def less(x: tuple, y: tuple) -> Any:
    """``x < y`` (normalised pairs)."""
    return (x[0] < y[0]) | ((x[0] == y[0]) & (x[1] < y[1]))


def equal(x: tuple, y: tuple) -> Any:
    """``x == y`` (normalised pairs)."""
    return (x[0] == y[0]) & (x[1] == y[1])


def of_int32(n: Any, xp: Any = np) -> tuple:
    """The pair of a whole number of cycles ``0 <= n < 2**31`` (int32): the high 15 bits and the low
    16 bits are each a float32 value, and their normalised sum is exact."""
    hi = (n & ~0xFFFF).astype(xp.float32) if hasattr(n, "astype") else F32(n & ~0xFFFF)
    lo = (n & 0xFFFF).astype(xp.float32) if hasattr(n, "astype") else F32(n & 0xFFFF)
    return fast_two_sum(hi, lo)


def to_float(x: tuple) -> Any:
    """The pair's value as float64 (numpy; exact: 48 significant bits fit float64's 53)."""
    return np.asarray(x[0], np.float64) + np.asarray(x[1], np.float64)


# -- jax arrays -------------------------------------------------------------------------------
def where(cond: Any, x: tuple, y: tuple) -> tuple:
    """Elementwise ``x if cond else y`` of two pairs (jax)."""
    import jax.numpy as jnp

    return jnp.where(cond, x[0], y[0]), jnp.where(cond, x[1], y[1])


def maximum(x: tuple, y: tuple) -> tuple:
    """Elementwise larger of two pairs (jax)."""
    return where(less(x, y), y, x)


def reduce_min(x: tuple, axis: int) -> tuple:
    """Smallest pair along ``axis`` (jax; ``+inf`` high words with low word 0 stand for none)."""
    import jax.numpy as jnp

    hi = x[0].min(axis=axis)
    lo = jnp.where(x[0] == jnp.expand_dims(hi, axis), x[1], jnp.inf).min(axis=axis)
    return hi, jnp.where(jnp.isfinite(lo), lo, 0.0).astype(x[1].dtype)


def reduce_max(x: tuple, axis: int) -> tuple:
    """Largest pair along ``axis`` (jax; ``-inf`` high words with low word 0 stand for none)."""
    import jax.numpy as jnp

    hi = x[0].max(axis=axis)
    lo = jnp.where(x[0] == jnp.expand_dims(hi, axis), x[1], -jnp.inf).max(axis=axis)
    return hi, jnp.where(jnp.isfinite(lo), lo, 0.0).astype(x[1].dtype)


# -- numpy scalars (the reference interpreter) ------------------------------------------------
class Cycles(tuple):
    """A pair as a value: ``+``, ``-``, order and ``float`` (numpy float32 words)."""

    __slots__ = ()

    def __new__(cls, hi: Any = 0, lo: Any = 0) -> Cycles:
        return super().__new__(cls, (F32(hi), F32(lo)))

    @classmethod
    def of(cls, x: Any) -> Cycles:
        """A float32 value (a duration of the cost model) or an int cycle count as a pair."""
        if isinstance(x, Cycles):
            return x
        if isinstance(x, (int, np.integer)):
            return cls(*of_int32(int(x)))
        return cls(F32(x), 0)

    def __add__(self, other: Any) -> Cycles:
        return Cycles(*add(self, Cycles.of(other)))

    def __sub__(self, other: Any) -> Cycles:
        return Cycles(*sub(self, Cycles.of(other)))

    def __lt__(self, other: Any) -> bool:
        return bool(less(self, Cycles.of(other)))

    def __gt__(self, other: Any) -> bool:
        return bool(less(Cycles.of(other), self))

    def __le__(self, other: Any) -> bool:
        return not self.__gt__(other)

    def __ge__(self, other: Any) -> bool:
        return not self.__lt__(other)

    def __eq__(self, other: Any) -> bool:
        return bool(equal(self, Cycles.of(other)))

    def __ne__(self, other: Any) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash((float(self[0]), float(self[1])))

    def __float__(self) -> float:
        return float(self[0]) + float(self[1])

    def __repr__(self) -> str:
        return f"Cycles({float(self)!r})"

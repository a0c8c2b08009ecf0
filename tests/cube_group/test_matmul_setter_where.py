"""The Matmul setters' numpy shortcut (``_numpy_scalar_where``, used by the reference instead of
``np.where`` on 0-d operands) gives what ``np.where`` gives: the same type (a new 0-d array), dtype
and value, over the operand dtypes the setters see (int32 fields, uint64 addresses, bools, the
int32 quantisation bits) and every promotion between them (uint64 with a signed type is float64),
with values at the edges of each type."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ascend_jax.cube_group.matmul import Matmul, MatmulType, TCubeTiling, _numpy_scalar_where

DTYPES = [np.bool_, np.int8, np.uint8, np.int32, np.uint32, np.int64, np.uint64, np.float32, np.float64]


def edge_values(dtype) -> list:
    if dtype is np.bool_:
        return [False, True]
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return sorted({info.min, info.min + 1, -1 if info.min < 0 else 0, 0, 1, 7, info.max - 1, info.max})
    info = np.finfo(dtype)
    return [-np.inf, float(info.min), -1.5, -0.0, 0.0, 2.0**-30, 3.25, float(info.max), np.inf, np.nan]


def operands(dtype):
    """Each edge value as a 0-d array and as a numpy scalar."""
    for v in edge_values(dtype):
        yield np.asarray(v, dtype)
        yield dtype(v)


def same(a, b) -> bool:
    return type(a) is type(b) and a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=True)


@pytest.mark.parametrize("old_dtype,value_dtype", list(itertools.product(DTYPES, DTYPES)))
def test_shortcut_equals_np_where(old_dtype, value_dtype):
    conds = [np.True_, np.False_, np.asarray(True), np.asarray(False)]
    keeps = [False, True, np.asarray(False), np.asarray(True)]
    with np.errstate(all="ignore"):
        for old, value in itertools.product(operands(old_dtype), operands(value_dtype)):
            for cond, keep in itertools.product(conds, keeps):
                got = _numpy_scalar_where(cond, old, value, keep)
                assert got is not None
                want_val, want_keep = np.where(cond, old, value), np.where(cond, keep, False)
                assert same(got[0], want_val), (cond, old, value, got[0], want_val)
                assert same(got[1], want_keep), (cond, keep, got[1], want_keep)
                assert got[0] is not old and got[0] is not value


@pytest.mark.parametrize(
    "cond,old,value,keep",
    [
        (np.True_, 5, np.int32(1), False),  # a Python number: its promotion depends on its value
        (np.True_, np.asarray(5, np.int32), 2**40, False),
        (np.True_, np.zeros(2, np.int32), np.int32(1), False),  # not 0-d
        (np.zeros(2, bool), np.int32(5), np.int32(1), False),
        (True, np.int32(5), np.int32(1), False),  # a Python bool condition
        (np.True_, np.int32(5), np.int32(1), 0),  # a keep flag that is not a bool
    ],
)
def test_shortcut_declines_other_cases(cond, old, value, keep):
    assert _numpy_scalar_where(cond, old, value, keep) is None


def test_setter_state_matches_np_where_path():
    """A Matmul driven through its setters with 0-d numpy arguments: the same state whichever path."""
    tiling = TCubeTiling(16, 16, 32, 32, 16, 16, 32, 16, 16, 16)
    mm_fast = Matmul(MatmulType(), tiling)

    class NoShortcut:  # numpy under another name: _set takes np.where
        def __getattr__(self, name):
            return getattr(np, name)

    mm_slow = Matmul(MatmulType(), tiling, xp=NoShortcut())
    for mm in (mm_fast, mm_slow):
        for i, run in enumerate([np.True_, np.False_, np.True_, np.False_]):
            mm.set_org_shape(np.int32(32 + i), np.int32(64), np.int32(16), when=run)
            mm.set_tail(np.int32(-1 if i == 2 else 8), np.int32(i), np.int32(16), when=run)
            mm.set_tensor_a(np.uint64(4096 + i), np.int32(i % 2), when=run)
            mm.set_tensor_b(np.uint64(8192), np.int32(1), when=run)
            mm.set_bias(np.uint64(i), when=run)
    (fv, fk), (sv, sk) = mm_fast.state_keep(), mm_slow.state_keep()
    for a, b in zip(fv + fk, sv + sk, strict=True):
        assert type(a) is type(b) and np.asarray(a).dtype == np.asarray(b).dtype and np.array_equal(a, b)

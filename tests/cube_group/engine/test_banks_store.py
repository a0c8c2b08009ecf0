"""C stores in chunks (``compute.store_passes`` / ``store_tiles``): a group whose tiles differ in
width writes each C row as windows of ``MatmulDims.chunk`` columns, so tiles of a narrow C (row
stride below the group's widest tile) still share one scatter; a lane with a tile whose own rows
overlap is stored row after row. Checked on the overlap test with per-tile widths, and end to end
against the ordered store, the byte form and the reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_access import _assert_same_arrays
from test_compute_store import T, W, assert_overlaps_sound
from test_compute_store import _kernel as _store_kernel

import ascend_jax as aj
from ascend_jax.cube_group import engine
from ascend_jax.cube_group.engine import EngineOptions, compute

P = 4
_overlaps = jax.jit(compute.window_overlaps)

_TILES = st.lists(
    st.tuples(
        st.integers(0, 120),
        st.integers(0, 5),
        st.sampled_from([0, 3, 8, 9, 12, 16]),
        st.sampled_from([4, 8, 12]),
        st.booleans(),
    ),
    min_size=P,
    max_size=P,
)


@settings(max_examples=300, deadline=None)
@given(_TILES, st.booleans())
def test_window_overlaps_with_a_width_per_tile(tiles, one_stride):
    """Never "disjoint" for tiles that share an index; exact when the strides agree and are at
    least both widths."""
    lo, rows, stride, width, live = (list(x) for x in zip(*tiles, strict=True))
    if one_stride:
        stride = [max(stride[0], *width)] * P
    args = (jnp.asarray(x, jnp.int32) for x in (lo, rows, stride, width))
    got = np.asarray(_overlaps(*args, jnp.asarray(live)))
    assert_overlaps_sound(got, tiles, lo, rows, stride, width, live)


def _narrow(atomic, n, stride):
    """A T x n tile whose rows lie ``stride`` elements apart."""
    return dict(isAtomic=atomic, tailN=n, nOrgShape=stride)


def _kernel(posts, aics=3):
    """``posts[q]`` the (row, col, atomic, n, stride) of each IterateAll AIV q posts (the chunked
    store test's kernel, :func:`test_compute_store._kernel`, with T x n tiles)."""
    return _store_kernel(posts, aics, shape=_narrow)


ORDERED = EngineOptions(batched_stores=False)
BYTES = EngineOptions(typed_banks=False)


def _check(programs):
    batched = aj.simulate(programs)
    _assert_same_arrays(batched, aj.simulate(programs, options=ORDERED))
    _assert_same_arrays(batched, aj.simulate(programs, options=BYTES))
    for i, p in enumerate(programs):
        ref = aj.run_reference(p)
        assert batched[i].outcome() == ref.outcome(), i
        np.testing.assert_allclose(batched[i].tensor("c"), ref.tensor("c"), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_narrow_and_wide_tiles_and_a_self_overlapping_one():
    """Lane 0: tiles 16 and 8 wide in a C of 32 columns, some at row stride 8 (below the widest
    tile: no static ``rows_disjoint``), written in 8-column chunks; lane 1: a tile 16 wide at row
    stride 8 (its rows overlap: the lane stores row after row) beside the same kind of tiles."""
    apart = [[(0, 0, 0, 16, W), (T, 0, 1, 8, 8)], [(0, T, 0, 8, W), (T, T, 1, 8, W)], [(2 * T, 0, 0, 8, 8)]]
    clash = [[(0, 0, 0, 16, 8), (T, 0, 1, 8, 8)], [(0, T, 1, 8, W), (T, T, 0, 16, 8)], [(2 * T, 0, 0, 8, 8)]]
    programs = [_kernel(apart), _kernel(clash)]
    dims = engine.prepare(programs).shape.matmuls[0][2]
    assert not dims.rows_disjoint and dims.chunk == 8 and dims.n == T
    _check(programs)


#: (row, col, atomic, n, stride) of one IterateAll, atomic tiles whose own rows overlap included
_POST = st.tuples(
    st.integers(0, 3 * T), st.sampled_from([0, 5, T]), st.integers(0, 1), st.sampled_from([8, 16]),
    st.sampled_from([8, 16, W]),
)  # fmt: skip


@pytest.mark.slow
def test_an_atomic_tile_whose_rows_overlap_adds_every_row():
    """An atomic T x 16 tile at row stride 8 (the kernel gives B and C that stride): the device adds each row it writes, so an element
    two rows cover gets both rows' values. Engine (typed banks, bytes, ordered) and reference
    against a float64 numpy loop, row after row, over C's initial values (tolerance: float32
    rounding of a sum of about 2 T products)."""
    program = _kernel([[(0, 0, 1, 16, 8)], [], []])
    ref = aj.run_reference(program)
    gm = program.gm  # the initial tensors, as the program holds them (GlobalMemory.read)
    a = gm.read("a").astype(np.float64)
    b = gm.read("b").astype(np.float64).reshape(-1)[np.arange(T)[:, None] * 8 + np.arange(16)]  # B's rows 8 apart too
    want = gm.read("c").astype(np.float64).reshape(-1).copy()
    for r, row in enumerate(a @ b):
        want[r * 8 : r * 8 + 16] += row
    np.testing.assert_allclose(ref.tensor("c").reshape(-1), want, rtol=1e-5, atol=1e-4)
    _check([program])


@pytest.mark.slow
@settings(max_examples=2, deadline=None)  # three compiles per example; the nightly profile runs more
@given(st.lists(st.lists(_POST, min_size=1, max_size=3), min_size=3, max_size=3))
def test_random_chunked_tiles_equal_ordered_bytes_and_reference(posts):
    _check([_kernel(posts)])


@pytest.mark.slow
def test_passes_wider_than_one_write():
    """Six AICs: a pass holds more tiles than one write of the store (:func:`compute.pass_width`),
    so it is written in several. Lane 0: six disjoint tiles in one step (one pass, two writes);
    lane 1: three atomic tiles on one region and three disjoint ones (a pass of four tiles, then
    two of one), and a narrow tile at a row stride below the widest. Equal to the ordered store,
    the byte form and the reference."""
    assert compute.pass_width(6) < 6
    disjoint = [[(r * T, c * T, 0, 16, W)] for r in range(3) for c in range(2)]
    atomic = [[(0, 0, 1, 16, W)]] * 3 + [[(T, 0, 0, 16, W)], [(2 * T, T, 0, 8, 8)], [(3 * T, 0, 0, 16, W)]]
    _check([_kernel(disjoint, aics=6), _kernel(atomic, aics=6)])

"""The compute phase's batched C store: when no two row windows a step writes overlap, each
group's tiles go out in one scatter; otherwise one AIC after the other in the documented order.
Checked on the overlap test itself (against sets of written indices) and end to end (batched
against the ordered store, array by array, and against the reference)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_access import _assert_same_arrays

import ascend_jax as aj
from ascend_jax import CUBE_MATMUL_MSG, CubeGroupKernel
from ascend_jax.cube_group import engine
from ascend_jax.cube_group.engine import EngineOptions, compute

P = 4  # tiles compared at once
WIDTH = 8  # indices a row window writes

_overlaps = jax.jit(compute.window_overlaps, static_argnums=3)


def assert_overlaps_sound(got, tiles, lo, rows, stride, width, live):
    """``got`` [P, P] (``window_overlaps``) against each tile's written indices, enumerated
    (``width[t]`` columns a row): symmetric, never "disjoint" for tiles that share an index, exact
    when the strides agree and are at least both widths."""
    sets = [
        {lo[t] + r * stride[t] + c for r in range(rows[t]) for c in range(width[t])} if live[t] else set()
        for t in range(len(lo))
    ]
    for i in range(len(lo)):
        for j in range(len(lo)):
            truth = i != j and bool(sets[i] & sets[j])
            assert got[i, j] == got[j, i]
            if truth:
                assert got[i, j], (i, j, tiles)
            if stride[i] == stride[j] and stride[i] >= max(width[i], width[j]):
                assert got[i, j] == truth, (i, j, tiles)


_TILES = st.lists(
    st.tuples(st.integers(0, 120), st.integers(0, 5), st.sampled_from([0, 3, 8, 9, 12, 16]), st.booleans()),
    min_size=P,
    max_size=P,
)


@settings(max_examples=300, deadline=None)
@given(_TILES, st.booleans())
def test_window_overlaps_is_exact_on_one_grid_and_never_misses(tiles, one_stride):
    """Never "disjoint" for tiles that share an index; exact when the strides agree and are at
    least the window width (the grid comparison), conservative otherwise."""
    lo, rows, stride, live = (list(x) for x in zip(*tiles, strict=True))
    if one_stride:
        stride = [max(stride[0], WIDTH)] * P
    got = np.asarray(_overlaps(*(jnp.asarray(x, jnp.int32) for x in (lo, rows, stride)), WIDTH, jnp.asarray(live)))
    assert_overlaps_sound(got, tiles, lo, rows, stride, [WIDTH] * P, live)


def test_window_overlaps_sees_windows_past_the_tile_and_interleaved_tiles():
    def one(lo, rows, stride, width=WIDTH):
        live = jnp.ones(len(lo), bool)
        return np.asarray(_overlaps(*(jnp.asarray(x, jnp.int32) for x in (lo, rows, stride)), width, live))

    # two 4-row tiles side by side in a 16-wide C: disjoint, though their index ranges interleave
    assert not one([0, 8], [4, 4], [16, 16]).any()
    # shifted by one column, the windows share indices
    assert one([0, 7], [4, 4], [16, 16])[0, 1]
    # the second tile's window wraps into the next row of the first one's grid
    assert one([0, 12], [2, 2], [16, 16])[0, 1]
    assert not one([0, 12], [1, 2], [16, 16])[0, 1]
    # strides that differ: compared by range, so interleaved tiles count as overlapping
    assert one([0, 8], [4, 4], [16, 32])[0, 1]


T = 16  # tile edge
W = 32  # C row width (two tiles side by side), the row stride of B and C


def _tail_m(atomic, tail_m):
    """A post's message fields past its addresses: a T x T (or tail_m x T) tile, rows W apart."""
    return dict(isAtomic=atomic, tailM=tail_m, nOrgShape=W)


def _kernel(posts, aics=3, shape=_tail_m):
    """``aics`` AICs, one queue per AIV; ``posts[q]`` the (row, col, *rest) of each IterateAll AIV
    q posts: a tile of C [4T, W] at (row, col), ``shape(*rest)`` its other message fields."""
    kern = CubeGroupKernel(name="batched-store")
    a = kern.alloc("a", (T, T), "float16", "random", 1)
    b = kern.alloc("b", (T, W), "float16", "random", 2)
    c = kern.alloc("c", (4 * T, W), "float32", "random", 3)
    tiling = dict(M=T, N=W, Ka=T, Kb=T, singleCoreM=T, singleCoreN=T, singleCoreK=T, baseM=16, baseN=16, baseK=16)
    mt = dict(a="float16", b="float16", c="float32", bias="float32")
    g = kern.create_cube_res_group("g", 0, 2 * aics, len(posts), "matmul", CUBE_MATMUL_MSG, matmul=mt, tiling=tiling)
    for q, msgs in enumerate(posts):
        aiv = kern.aiv(q)
        aiv.assign_queue(g, q)
        for row, col, *rest in msgs:
            fields = {"aAddr": a.addr, "bAddr": b.addr + 2 * col, "cAddr": c.addr + 4 * (row * W + col)}
            fields.update(kaOrgShape=T, kbOrgShape=T, **shape(*rest))
            aiv.post(g, fields)
        aiv.quit(g)
    return kern.compile()


#: the engine with every store in the documented order (no batched store)
ORDERED = EngineOptions(batched_stores=False)


def _ordered(programs, **kw):
    """The same run with every store in the documented order (no batched store)."""
    assert not engine.prepare(programs, options=ORDERED).shape.batched_stores
    return aj.simulate(programs, options=ORDERED, **kw)


def _check(programs, **kw):
    batched = aj.simulate(programs, **kw)
    _assert_same_arrays(batched, _ordered(programs, **kw))
    for i, p in enumerate(programs):
        ref = aj.run_reference(p)  # fixed order; random orders only round differently
        assert batched[i].outcome() == ref.outcome(), i
        if kw.get("atomic_order", "fixed") == "fixed":
            np.testing.assert_allclose(batched[i].tensor("c"), ref.tensor("c"), rtol=1e-5, atol=1e-5)
    return batched


@pytest.mark.slow
def test_disjoint_and_overlapping_steps_equal_the_ordered_store():
    """Lane 0: every step writes disjoint tiles (side by side and stacked); lane 1: AICs add
    into one tile in the same steps (split-K style atomics) and one plain store overlaps them."""
    apart = [[(0, 0, 0, 0), (T, 0, 1, 0)], [(0, T, 0, 0), (T, T, 1, 8)], [(2 * T, 0, 0, 0)]]
    clash = [[(0, 0, 1, 0), (4, 8, 1, 0)], [(0, 0, 1, 0), (0, 0, 1, 8)], [(0, 0, 1, 0), (3, 5, 0, 0)]]
    _check([_kernel(apart), _kernel(clash)])


_POST = st.tuples(st.integers(0, 3 * T), st.sampled_from([0, 5, T]), st.integers(0, 1), st.sampled_from([0, 8]))


@pytest.mark.slow
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(_POST, min_size=1, max_size=3), min_size=3, max_size=3), st.sampled_from(["fixed", "random"]))
def test_random_tiles_batched_equal_ordered(posts, atomic_order):
    """Random tile positions, atomics and tails on 3 AICs; two lanes with different seeds."""
    p = _kernel(posts)
    _check([p, p], atomic_order=atomic_order, seeds=3)


def test_store_passes_put_overlapping_tiles_in_their_order():
    """Two AICs on one tile and one beside it: the later of the two in the documented order
    goes one pass after the other, the third shares the first pass; one pass per AIC without
    batched stores."""
    apart = [[(0, 0, 0, 0)], [(0, T, 0, 0)], [(T, 0, 0, 0)]]
    p = _kernel(apart)
    c = p.gm.tensors["c"].addr
    d = {"c_addr": jnp.asarray([c, c + 4 * T, c], jnp.int32), "m": jnp.full(3, T, jnp.int32)}
    d["stride_c"] = jnp.full(3, W, jnp.int32)
    reqs = [(d, jnp.ones(3, bool))]
    key = jax.random.key_data(jax.random.key(0))
    prep = engine.prepare([p])
    shape, table = prep.shape, prep.tables.gm_tensors
    assert np.asarray(compute.store_passes(shape, table, key, reqs)[0]).tolist() == [0, 0, 1]
    for seed in range(6):
        shape = engine.prepare([p], atomic_order="random").shape
        key = jax.random.key_data(jax.random.key(seed))
        got = np.asarray(compute.store_passes(shape, table, key, reqs)[0])
        assert sorted([got[0], got[2]]) == [0, 1] and got[1] == 0, got
        order_key = jax.random.fold_in(jax.random.wrap_key_data(key), 0x5EED)  # as compute.store_passes
        order = np.asarray(jax.random.permutation(jax.random.fold_in(order_key, 0), 3)).tolist()
        assert (got[0] < got[2]) == (order.index(0) < order.index(2)), (got, order)
    shape = engine.prepare([p], options=ORDERED).shape
    assert np.asarray(compute.store_passes(shape, table, key, reqs)[0]).tolist() == [0, 1, 2]

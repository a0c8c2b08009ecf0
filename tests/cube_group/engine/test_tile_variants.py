"""Tile variants: a step whose matmul tiles all fit a smaller shape than the group's bound (n, k,
one layout for A and for B) runs its loads and dot at that shape. Checked against the same run at
the bound (``EngineOptions(tile_variants=False)``, array by array) and against the reference, on
steps that fit a variant and steps that mix shapes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ascend_jax as aj
from ascend_jax import CUBE_MATMUL_MSG, CubeGroupKernel
from ascend_jax.cube_group import engine
from ascend_jax.cube_group.engine import EngineOptions, compute
from ascend_jax.cube_group.engine.encode import MAX_TILE_VARIANTS
from ascend_jax.cube_group.engine.loop import clear_compiled

T = 16  # the smallest tile edge (baseK)
AT_BOUND = EngineOptions(tile_variants=False)


@pytest.fixture(autouse=True)
def _variants_for_small_tiles(monkeypatch):
    """These tiles are far below compute.VARIANTS_FROM: take the variants anyway. The threshold
    is read while tracing, so the engine's compiled loops are forgotten around the test: a loop
    traced earlier in this process for the same shapes would otherwise run without the variants."""
    clear_compiled()
    monkeypatch.setattr(compute, "VARIANTS_FROM", 0)
    yield
    clear_compiled()


def _kernel(posts: list[list[tuple[int, int, bool, bool]]]):
    """Three AICs, one queue per AIV; ``posts[q]``: each IterateAll's (n, k, trans_a, trans_b) of
    AIV q, a T x n tile of C = A[T, k] B[k, n] (A, B read as stored or transposed), each AIV
    writing its own rows of C."""
    kern = CubeGroupKernel(name="tile-variants")
    a = kern.alloc("a", (2 * T, 2 * T), "float16", "random", 1)
    b = kern.alloc("b", (2 * T, 2 * T), "float16", "random", 2)
    c = kern.alloc("c", (len(posts) * T, 2 * T), "float32", "zeros")
    tiling = dict(M=T, N=2 * T, Ka=2 * T, Kb=2 * T, singleCoreM=T, singleCoreN=2 * T, singleCoreK=2 * T,
                  baseM=16, baseN=16, baseK=16)  # fmt: skip
    mt = dict(a="float16", b="float16", c="float32", bias="float32")
    g = kern.create_cube_res_group("g", 0, 6, len(posts), "matmul", CUBE_MATMUL_MSG, matmul=mt, tiling=tiling)
    for q, msgs in enumerate(posts):
        aiv = kern.aiv(q)
        aiv.assign_queue(g, q)
        for n, k, ta, tb in msgs:
            fields = {"aAddr": a.addr, "bAddr": b.addr, "cAddr": c.addr + 4 * q * T * 2 * T, "tailM": T,
                      "tailN": n, "tailK": k, "mOrgShape": T, "nOrgShape": 2 * T, "kaOrgShape": 2 * T,
                      "kbOrgShape": 2 * T, "isTransA": ta, "isTransB": tb, "isAtomic": 1}  # fmt: skip
            aiv.post(g, fields)
        aiv.quit(g)
    return kern.compile()


def _check(programs):
    """Variants against the bound: every array equal but GM, whose C tensor may differ in float32
    rounding only (XLA's CPU dot may sum a chunk's K products in another order for another tile
    width: seen with AVX-512, where a [16, 16] and a [16, 32] dot of the same rows differed by
    2e-6); A and B unchanged. Then both against the reference."""
    fast, bound = aj.simulate(programs), aj.simulate(programs, options=AT_BOUND)
    assert fast.arrays.keys() == bound.arrays.keys()
    for key in fast.arrays:
        if key != "gm":
            np.testing.assert_array_equal(fast.arrays[key], bound.arrays[key], err_msg=key)
    for i, p in enumerate(programs):
        ref = aj.run_reference(p)
        assert fast[i].outcome() == bound[i].outcome() == ref.outcome(), i
        for name in ("a", "b"):
            np.testing.assert_array_equal(fast[i].tensor(name), bound[i].tensor(name), err_msg=name)
        for got in (fast[i], bound[i]):
            np.testing.assert_allclose(got.tensor("c"), ref.tensor("c"), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(fast[i].tensor("c"), bound[i].tensor("c"), rtol=1e-6, atol=1e-6)
    return fast


def test_variants_are_the_call_shapes_below_the_bound():
    """Shapes are the calls' own n and k (power-of-two buckets, whole baseK chunks) and layouts,
    smallest first, at most MAX_TILE_VARIANTS; none without the option."""
    narrow = (T, 2 * T, False, False)
    short = (2 * T, T, True, False)
    p = _kernel([[narrow, short], [narrow, short], [narrow, (2 * T, 2 * T, False, True)]])
    dims = engine.prepare([p]).shape.matmuls[0][2]
    assert (dims.n, dims.kp, dims.a_layout, dims.b_layout) == (2 * T, 2 * T, "both", "both")
    assert dims.variants == (
        (T, 2 * T, "plain", "plain"),
        (2 * T, T, "trans", "plain"),
        (2 * T, 2 * T, "plain", "trans"),
    )
    assert len(dims.variants) <= MAX_TILE_VARIANTS
    assert engine.prepare([p], options=AT_BOUND).shape.matmuls[0][2].variants == ()


def test_uniform_and_mixed_steps_equal_the_bound_and_the_reference():
    """Step 1: every AIC's tile fits the narrow variant; step 2: every one the short one; step 3:
    shapes differ across AICs (the bound); two lanes that differ in their second step."""
    narrow, short, full = (T, 2 * T, False, False), (2 * T, T, True, False), (2 * T, 2 * T, True, True)
    same = [[narrow, short, narrow], [narrow, short, full], [narrow, short, short]]
    other = [[narrow, narrow, narrow], [narrow, short, full], [narrow, full, short]]
    _check([_kernel(same), _kernel(other)])


_CALL = st.tuples(st.sampled_from([T, 2 * T]), st.sampled_from([T, 2 * T]), st.booleans(), st.booleans())


@pytest.mark.slow
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(_CALL, min_size=1, max_size=3), min_size=3, max_size=3))
def test_random_shapes_equal_the_bound(posts):
    _check([_kernel(posts)])

"""The packed slot grid (one word per queue row, a byte per depth) against the wide grid and the
reference: which batches use it, and that results are identical, field by field, either way."""

from __future__ import annotations

import dataclasses

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import ascend_jax as aj
from ascend_jax import Status
from ascend_jax.cube_group import engine
from ascend_jax.cube_group.engine import EngineOptions

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


#: the engine with the packed grid turned off
WIDE = EngineOptions(packed_grid=False)


def _both_grids(programs, **kw):
    """(packed run, wide run, packed flag) of one batch."""
    packed_shape = engine.prepare(programs).shape
    packed = aj.simulate(programs, **kw)
    assert not engine.prepare(programs, options=WIDE).shape.packed
    wide = aj.simulate(programs, options=WIDE, **kw)
    return packed, wide, packed_shape.packed


def _assert_same_arrays(a: aj.BatchResult, b: aj.BatchResult) -> None:
    assert a.arrays.keys() == b.arrays.keys()
    for key in a.arrays:
        np.testing.assert_array_equal(a.arrays[key], b.arrays[key], err_msg=key)


def _one_queue_kernel(posts: int, state=None, **kw) -> aj.CubeGroupProgram:
    """One AIC, one queue: ``posts`` messages (a custom head ``state`` on the first), then QUIT."""
    k = aj.CubeGroupKernel(max_steps=10 * posts + 100, **kw)
    g = k.create_cube_res_group("g", 0, 2, 1, callback="free")
    a = k.aiv(0)
    a.assign_queue(g, 0)
    for i in range(posts):
        a.post(g, state=state if i == 0 and state is not None else "VALID")
    a.quit(g)
    return k.compile()


def test_which_batches_use_the_packed_grid():
    assert engine.prepare(_one_queue_kernel(3)).shape.packed
    # 63 writes to one slot still pack (4 depths: 252 posts write each slot 63 times), 64 do not
    assert engine.prepare(_one_queue_kernel(4 * 63 - 1)).shape.packed
    assert not engine.prepare(_one_queue_kernel(4 * 63 + 1)).shape.packed
    # a head state outside the four CubeMsgState values needs the wide grid's 8 bits
    assert not engine.prepare(_one_queue_kernel(2, state=7)).shape.packed
    # a relaunch starts from the first launch's slots, whose write counts the tables do not know
    assert not engine.prepare(_one_queue_kernel(2, zero_workspace=False)).shape.packed
    # an AIV serving queues of two groups: no static queue row per AIV
    k = aj.CubeGroupKernel()
    g0, g1 = k.create_cube_res_group("g0", 0, 2, 1), k.create_cube_res_group("g1", 2, 2, 1)
    a = k.aiv(0)
    for g in (g0, g1):
        a.assign_queue(g, 0)
        a.post(g)
        a.quit(g)
    assert not engine.prepare(k.compile()).shape.packed


@pytest.mark.parametrize("posts", [4 * 63 - 1, 4 * 63 + 1])
def test_many_writes_per_slot_equal_the_reference(posts):
    """Around the 63-writes bound: every write count up to 63 maps to its version."""
    program = _one_queue_kernel(posts)
    packed, wide, was_packed = _both_grids(program)
    assert was_packed == (posts < 4 * 63)
    ref = aj.run_reference(program)
    assert ref.status == Status.OK
    for res in (packed, wide):
        assert res[0].to_json() == ref.to_json()
    _assert_same_arrays(packed, wide)


@st.composite
def programs(draw):
    """1-2 groups on disjoint AICs, each queue served by its own AIV (so the batch packs); posts,
    merges with skip counts, FAKEs, waits, delays and (usually) a QUIT per queue."""
    k = aj.CubeGroupKernel(max_steps=3000)
    aic, block = 0, 0
    for gi in range(draw(st.integers(1, 2))):
        a_num = draw(st.integers(1, 3))
        q = draw(st.integers(a_num, 3 * a_num).filter(lambda q, a=a_num: q - (a - 1) * (-(-q // a)) > 0))
        g = k.create_cube_res_group(f"g{gi}", 2 * aic, 2 * a_num, q, callback=draw(st.sampled_from(["merge", "free"])))
        aic += a_num
        for qi in range(q):
            aiv = k.aiv(block)
            block += 1
            aiv.assign_queue(g, qi)
            for _ in range(draw(st.integers(0, 6))):
                kind = draw(st.sampled_from(["post", "post", "merge", "fake", "delay"]))
                if kind == "post":
                    aiv.post(g)
                elif kind == "merge":
                    aiv.post(g, {"skipCnt": draw(st.integers(1, 3))})
                elif kind == "fake":
                    aiv.fake(g)
                else:
                    aiv.delay(draw(st.integers(1, 4)))
                    continue
                if draw(st.booleans()):
                    aiv.wait(g, sync=draw(st.booleans()))
            if draw(st.integers(0, 9)) > 0:
                aiv.quit(g)
    return k.compile()


@pytest.mark.slow
@SETTINGS
@given(programs(), st.sampled_from(["debug", "release"]), st.sampled_from(["lockstep", "timed", "random"]))
def test_packed_grid_equals_wide_grid_and_reference(program, build, schedule):
    program = dataclasses.replace(program, build=build)
    packed, wide, was_packed = _both_grids([program, program], schedule=schedule, seeds=[3, 4])
    assert was_packed
    _assert_same_arrays(packed, wide)
    if schedule != "random":  # the reference draws its own random interleaving
        ref = aj.run_reference(program, schedule=schedule, seed=3)
        assert packed[0].to_json() == ref.to_json()

"""Property tests: the JAX engine equals the reference interpreter on random programs.

Random kernels mix normal posts, merges (random skipCnt, some crossing the row), FAKEs, waits,
delays, missing quits and barriers, so they end ok, in deadlock or in a protocol error. Compared:
status, per-AIC received logs, final slot states, deadlock witnesses and errors; in lockstep the
step counts too.
"""

from __future__ import annotations

import dataclasses

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

import ascend_jax as aj
from ascend_jax import Status
from ascend_jax.cube_group import engine

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def geometries(draw):
    """1-2 groups on disjoint AICs with valid (A, Q); returns [(block_start, block_size, Q, callback)]."""
    n_groups = draw(st.integers(1, 2))
    out, aic = [], 0
    for _ in range(n_groups):
        a = draw(st.integers(1, 3))
        q = draw(st.integers(a, 3 * a).filter(lambda q, a=a: q - (a - 1) * (-(-q // a)) > 0))
        out.append((2 * aic, 2 * a, q, draw(st.sampled_from(["merge", "free"]))))
        aic += a
    return out


@st.composite
def programs(draw, geometry=None, with_barrier=None):
    geometry = geometry or draw(geometries())
    k = aj.CubeGroupKernel(max_steps=4000)
    groups = [k.create_cube_res_group(f"g{i}", *g) for i, g in enumerate(geometry)]
    n_aiv = max(g.msg_queue_size for g in groups)
    barrier = None
    if with_barrier if with_barrier is not None else draw(st.booleans()):
        barrier = k.group_barrier("b", 1, 1)
    # bind: AIV i serves queue i of every group that has one (so some AIVs serve two groups)
    aivs = [k.aiv(i) for i in range(n_aiv)]
    for g in groups:
        for q in range(g.msg_queue_size):
            aivs[q].assign_queue(g, q)
    for i, a in enumerate(aivs):
        todo = []
        for g in groups:
            if i >= g.msg_queue_size:
                continue
            for _ in range(draw(st.integers(0, 5))):
                kind = draw(st.sampled_from(["post", "post", "merge", "fake", "delay"]))
                todo.append((g, kind, draw(st.integers(1, 2)), draw(st.booleans())))
            if draw(st.integers(0, 9)) > 0:  # occasionally no QUIT (spec F1)
                todo.append((g, "quit", 0, False))
        if barrier is not None and i < 2:
            todo.insert(draw(st.integers(0, len(todo))), (None, "arrive" if i == 0 else "bwait", 0, False))
        for g, kind, n, wait in todo:
            if kind == "post":
                a.post(g)
            elif kind == "merge":
                a.post(g, {"skipCnt": n})
            elif kind == "fake":
                a.fake(g)
            elif kind == "delay":
                a.delay(n * 3)
                continue
            elif kind == "arrive":
                a.arrive(barrier, 0)
                continue
            elif kind == "bwait":
                a.barrier_wait(barrier, 0)
                continue
            else:
                a.quit(g)
                continue
            if wait:
                a.wait(g)
    return k.compile()


@pytest.mark.slow
@SETTINGS
@given(programs())
def test_jit_engine_equals_reference(program):
    ref = aj.run_reference(program)
    [eng] = aj.simulate(program)
    assert eng.outcome() == ref.outcome()
    assert eng.steps == ref.steps
    assert eng.to_json() == ref.to_json()


@pytest.mark.xdist_group("eager")  # one worker: eager runs share its per-op compiles
@pytest.mark.slow
@settings(max_examples=3, deadline=None)
@given(programs(geometry=[(0, 2, 2, "merge")], with_barrier=False))
def test_eager_engine_equals_reference(program):
    ref = aj.run_reference(program)
    [eng] = aj.simulate(program, jit=False)
    assert eng.outcome() == ref.outcome() and eng.steps == ref.steps


@pytest.mark.slow
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_vmapped_batch_of_different_lanes_equals_reference(data):
    geometry = data.draw(geometries())
    lanes = [data.draw(programs(geometry=geometry, with_barrier=False)) for _ in range(3)]
    results = aj.simulate(lanes)
    for program, eng in zip(lanes, results, strict=True):
        ref = aj.run_reference(program)
        assert eng.outcome() == ref.outcome()
        assert eng.steps == ref.steps


@pytest.mark.slow
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs(), st.integers(0, 2**16))
def test_random_schedules_do_not_change_results(program, seed):
    lock = aj.run_reference(program)
    randoms = aj.simulate([program] * 4, schedule="random", seeds=seed) + [
        aj.run_reference(program, schedule="random", seed=seed)
    ]
    if lock.status == Status.MAX_STEPS:  # the bound cuts each interleaving at a different point
        return
    for r in randoms:  # errors too: an erring AIC stops, the others run on until nothing can move
        assert r.outcome() == lock.outcome()


def test_jitted_run_traces_once_for_programs_of_one_shape():
    def make(skip: int, delay: int):
        k = aj.CubeGroupKernel()
        g = k.create_cube_res_group("g", 0, 2, 3)
        for q in range(3):
            a = k.aiv(q)
            a.assign_queue(g, q)
            a.delay(delay + q)
            if q == 0:
                a.post(g, {"skipCnt": skip})
            elif q <= skip:
                a.fake(g)
            else:
                a.post(g)
            a.wait(g)
            a.quit(g)
        return k.compile()

    aj.simulate(make(0, 1))
    before = engine.TRACE_COUNT["run"]
    results = (
        aj.simulate(make(2, 5)) + aj.simulate(make(1, 9)) + aj.simulate([make(0, 2), make(2, 3)] * 1, max_steps=500)
    )
    assert all(r.status == Status.OK for r in results)
    # one new trace at most: the two-lane batch has a new batch size; same-size calls reuse the cache
    assert engine.TRACE_COUNT["run"] - before <= 1
    aj.simulate(make(1, 4))
    assert engine.TRACE_COUNT["run"] - before <= 1


@pytest.mark.slow
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs())
def test_timed_schedule_equals_reference_and_keeps_results(program):
    ref_lock = aj.run_reference(program)
    timed = aj.simulate(program, schedule="timed")[0]
    ref = aj.run_reference(program, schedule="timed")
    assert timed.outcome() == ref.outcome()  # both engines agree exactly under the timed schedule
    assert timed.steps == ref.steps
    assert timed.timing == ref.timing
    if ref_lock.status != Status.MAX_STEPS:  # errors included (see above)
        assert ref.outcome() == ref_lock.outcome()


@pytest.mark.slow
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs())
def test_release_build_engine_equals_reference(program):
    """Release builds (asserts compiled out: skips past the row move the cursor as the device's
    arithmetic does, frees land wherever they point): both engines agree exactly."""
    program = dataclasses.replace(program, build="release")
    ref = aj.run_reference(program)
    [eng] = aj.simulate(program)
    assert eng.outcome() == ref.outcome(), (ref.to_json(), eng.to_json())
    assert eng.steps == ref.steps

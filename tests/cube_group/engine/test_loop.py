"""The jitted engine run op by op under ``jax.disable_jit()`` equals the compiled run and the reference.

``simulate(jit=False)`` (tests/cube_group/test_engine_equals_reference.py, tests/cube_group/test_matmul.py) has its own Python loop
over steps; here the default path runs instead, its ``jax.jit``, ``lax.while_loop`` and
``lax.cond`` executed eagerly, so the compiled program's semantics are checked without XLA's
fusion. Small lanes: every eager step dispatches each of the step's operations one by one.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from test_run import _merge_kernel

import ascend_jax as aj
from ascend_jax import Status


def _lanes() -> list[aj.CubeGroupProgram]:
    return [_merge_kernel(delay=2), _merge_kernel(skip=1), _merge_kernel(value=7)]


def _same(a: aj.CubeGroupResult, b: aj.CubeGroupResult) -> bool:
    return (
        a.to_json() == b.to_json()  # status, steps, received logs, slot states, blocked cores, error
        and a.outcome() == b.outcome()
        and a.wait_results == b.wait_results
        and np.array_equal(a.slot_aiv_id, b.slot_aiv_id)
        and np.array_equal(a.slot_msg, b.slot_msg)
    )


@pytest.mark.xdist_group("eager")  # one worker: eager runs share its per-op compiles
@pytest.mark.slow
def test_eager_lockstep_equals_jit_and_reference():
    lanes = _lanes()
    with jax.disable_jit():
        eager = aj.simulate(lanes)
    jitted = aj.simulate(lanes)
    assert eager.status.tolist() == [Status.OK, Status.DEADLOCK, Status.OK]
    for program, e, j in zip(lanes, eager, jitted, strict=True):
        ref = aj.run_reference(program, schedule="lockstep", seed=e.seed)
        assert _same(e, j)
        assert e.outcome() == ref.outcome() and e.steps == ref.steps
        assert e.to_json() == ref.to_json()


@pytest.mark.xdist_group("eager")  # one worker: eager runs share its per-op compiles
@pytest.mark.slow
def test_eager_random_schedule_draws_what_the_compiled_run_draws():
    lanes = _lanes()
    with jax.disable_jit():
        eager = aj.simulate(lanes, schedule="random", seeds=11)
    jitted = aj.simulate(lanes, schedule="random", seeds=11)
    lock = aj.simulate(lanes)
    assert eager.steps.tolist() == jitted.steps.tolist()
    assert (eager.steps > lock.steps).any()  # the draws really skipped some cores' turns
    for e, j, s in zip(eager, jitted, lock, strict=True):
        assert _same(e, j)
        assert e.outcome() == s.outcome()  # the schedule never changes what is received

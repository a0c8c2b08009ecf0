"""Shared test helpers: run a program in both engines and insist they agree."""

from __future__ import annotations

import jax
import pytest

from ascend_jax import CubeGroupProgram, run_reference, simulate

jax.config.update("jax_numpy_rank_promotion", "raise")


def run_both(program: CubeGroupProgram, **kw):
    """Runs the reference (lockstep) and the jitted JAX engine; asserts identical outcomes and steps."""
    ref = run_reference(program, **kw)
    [eng] = simulate(program, **({"max_steps": kw["max_steps"]} if "max_steps" in kw else {}))
    assert eng.outcome() == ref.outcome(), (ref.to_json(), eng.to_json())
    assert eng.steps == ref.steps
    assert eng.wait_results == ref.wait_results
    return ref


@pytest.fixture
def both():
    return run_both

"""Test helper shared by the comm test files: run a task program in both engines."""

from __future__ import annotations

import numpy as np

from ascend_jax.aicpu.engine import run_comm
from ascend_jax.aicpu.reference import run_comm_reference


def run_both(program):
    """Reference and JAX engine; they must agree on everything: outcome, steps, clocks and the
    timeline (task start and end times, so Hcomm calls recorded by kernels too)."""
    ref = run_comm_reference(program)
    eng = run_comm(program)
    assert eng.outcome() == ref.outcome()
    assert eng.steps == ref.steps
    np.testing.assert_array_equal(eng.clock, ref.clock)
    np.testing.assert_array_equal(eng.start, ref.start)
    np.testing.assert_array_equal(eng.end, ref.end)
    return eng

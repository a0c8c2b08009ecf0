"""The comm benchmark's plain sequential interpreter (``benchmarks/plain_comm.py``) equals the reference
interpreter: it is the baseline ``benchmarks/comm_throughput.py`` divides by, so it must run the same
task graph with the same steps. Status, steps, queue status / error / pc, lost records and every byte
of memory are compared, and the end time."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from test_launch import launch_programs
from test_ops import task_programs

from ascend_jax.aicpu import HcclCMDType, p2p_job, ring_job, run_comm_reference
from tests._models import load

plain = load("plain_comm", "benchmarks")


def agree(program):
    ref = run_comm_reference(program)
    out = plain.run_plain(plain.prepare(program), [m.copy() for m in program.memory])
    assert out.status == ref.status.label
    assert out.steps == ref.steps
    assert out.queue_status == ref.queue_status.tolist()
    assert out.queue_error == ref.queue_error.tolist()
    assert out.queue_pc == ref.queue_pc.tolist()
    assert out.lost == ref.lost.tolist()
    assert [m.tobytes() for m in out.memory] == [m.tobytes() for m in ref.memory]
    assert out.end_time == (float(np.max(ref.clock)) if ref.clock.size else 0.0)
    return out


@pytest.mark.parametrize("op", [HcclCMDType.ALLREDUCE, HcclCMDType.ALLGATHER, HcclCMDType.REDUCE_SCATTER])
@pytest.mark.parametrize("ranks", [2, 5])
def test_ring_collectives(op, ranks):
    assert agree(ring_job(int(op), ranks=ranks, count=24, seed=ranks)).status == "ok"


def test_p2p_and_its_timeout_pitfall():
    assert agree(p2p_job(64, seed=1)).status == "ok"
    assert agree(p2p_job(16, seed=2, both_send_first=True, timeout=3)).status == "error"


def test_a_plain_run_of_a_lane_with_other_data_matches_that_lanes_reference():
    a, b = (ring_job(int(HcclCMDType.ALLREDUCE), ranks=3, count=16, seed=s) for s in (0, 1))
    graph = plain.prepare(a)  # the graph of lane 0, the data of lane 1 (no kernel reads data)
    out = plain.run_plain(graph, [m.copy() for m in b.memory])
    assert [m.tobytes() for m in out.memory] == [m.tobytes() for m in run_comm_reference(b).memory]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(task_programs())
def test_random_task_programs(p):
    agree(p)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(launch_programs())
def test_random_programs_with_kernels(p):
    agree(p)

"""Batched comm runs: lanes that differ in message counts, data, cost parameters and timeouts run in
one batch, each lane equal to its own reference run; lanes of one structure share a compilation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ascend_jax.aicpu import CommCost, CommStatus, HcclCMDType, run_comm_batch, run_comm_reference
from ascend_jax.aicpu.engine import TRACES
from ascend_jax.aicpu.models import comm_numerics, p2p_job, ring_expected, ring_job
from ascend_jax.cli import main


def same(eng, ref):
    assert eng.outcome() == ref.outcome()
    assert eng.steps == ref.steps
    np.testing.assert_array_equal(eng.clock, ref.clock)
    np.testing.assert_array_equal(eng.start, ref.start)
    np.testing.assert_array_equal(eng.end, ref.end)


def test_allreduce_lanes_differ_in_count_data_cost_and_timeout():
    slow = CommCost(link_bw=10e9, copy_latency_s=5e-6)
    lanes = [
        ring_job(int(HcclCMDType.ALLREDUCE), ranks=4, count=16, seed=0),
        ring_job(int(HcclCMDType.ALLREDUCE), ranks=4, count=32, seed=1, cost=slow),
        ring_job(int(HcclCMDType.ALLREDUCE), ranks=4, count=24, seed=2, timeout=0),
        ring_job(int(HcclCMDType.ALLREDUCE), ranks=4, count=16, seed=3, cost=slow, timeout=60),
    ]
    results = run_comm_batch(lanes)
    times = []
    for p, r in zip(lanes, results, strict=True):
        same(r, run_comm_reference(p))
        assert r.status == CommStatus.OK
        assert all(e["ok"] for e in comm_numerics(r, ring_expected(p)).values())
        times.append(r.to_json(timeline=False)["time_s"])
    # bigger messages and a slower link take longer; the same structure otherwise
    assert times[1] > times[3] > times[0] and times[2] > times[0]


def test_lanes_of_one_structure_compile_once_and_a_second_batch_compiles_nothing():
    before = TRACES["count"]
    first = run_comm_batch([ring_job(int(HcclCMDType.ALLREDUCE), ranks=3, count=40, seed=s) for s in range(5)])
    assert TRACES["count"] - before == 1  # five lanes, one data schedule
    again = [
        ring_job(int(HcclCMDType.ALLREDUCE), ranks=3, count=40, seed=s) for s in range(100, 106)
    ]  # 5 and 6 lanes: one lane bucket (8)
    before = TRACES["count"]
    results = run_comm_batch(again)
    assert TRACES["count"] == before  # the same structure: the cached compilation
    for p, r in zip(again, results, strict=True):
        same(r, run_comm_reference(p))
    assert first[0].output("rank0.recvBuf").tolist() != results[0].output("rank0.recvBuf").tolist()


def test_p2p_lanes_differ_in_timeouts_and_fail_when_each_lane_expires():
    lanes = [p2p_job(64, seed=s, both_send_first=True, timeout=t) for s, t in ((0, 5), (1, 9), (2, 7))]
    results = run_comm_batch(lanes, chunk=2)  # two chunks of two lanes (the last one padded)
    for p, r, t in zip(lanes, results, (5, 9, 7), strict=True):
        same(r, run_comm_reference(p))
        assert r.rank_errors() == [107020, 107020]
        stream = next(i for i, q in enumerate(r.program.queues) if q.name == "rank0.stream0")
        assert float(r.clock[stream]) == pytest.approx(t, rel=1e-4)  # the host's done-wait expired at t s


def test_cli_comm_batch_lists_every_lane(capsys):
    assert main(["run", "--model", "allreduce", "--ranks", "3", "--batch", "6", "--seed", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [b["seed"] for b in out["batch"]] == [4, 5, 6, 7, 8, 9]
    assert all(b["status"] == "ok" and b["numerics_ok"] and b["rank_errors"] == [0, 0, 0] for b in out["batch"])
    assert out["status"] == "ok" and len(out["ranks"]) == 3
    calls = {(c["rank"], c["call"]) for c in out["host_calls"]}  # every host call with its return code
    assert (2, "aclrt_launch_kernel_with_config") in calls and all(c["ret"] == 0 for c in out["host_calls"])


def test_structure_engine_does_not_import_the_reference_and_the_docstring_example_runs():
    import ascend_jax.aicpu as aicpu
    import ascend_jax.aicpu.engine as engine

    src = Path(engine.__file__).read_text()
    assert "reference" not in [line.split()[1].split(".")[-1] for line in src.splitlines() if line.startswith("from ")]
    doc = aicpu.__doc__
    example = doc[doc.index("    import numpy") : doc.index("A real operator")]
    code = "\n".join(line[4:] for line in example.splitlines())
    scope: dict = {}
    exec(compile(code, "aicpu-docstring-example", "exec"), scope)  # asserts the copy's result itself
    assert scope["result"].output("dst").tolist() == list(range(16))


def test_one_acl_malloc_rule_for_gm_and_device_memory():
    from ascend_jax.aicpu.world import Memory
    from ascend_jax.gm import GlobalMemory

    gm, dev = GlobalMemory(), Memory()
    for i, n in enumerate((1, 31, 32, 33, 64, 100, 4096)):
        t = gm.alloc(f"t{i}", (n,), "int8")
        assert dev.malloc(n, f"t{i}") == t.addr
    assert dev.cursor == gm._cursor


def test_eager_engine_equals_jit():
    from ascend_jax.aicpu import World, run_comm

    # one rank, two streams: a copy and a record on one, a wait with a timeout on the other
    w = World(1)
    h = w.host(0)
    _, s = h.aclrt_create_stream()
    _, s2 = h.aclrt_create_stream()
    _, a = h.aclrt_malloc(16)
    _, b = h.aclrt_malloc(16)
    h.aclrt_memcpy_h2d(a, np.arange(16, dtype=np.uint8))
    _, n = h.aclrt_create_notify(0)
    h.aclrt_memcpy_async(b, 16, a, 16, s)
    h.aclrt_record_notify(n, s)
    h.aclrt_wait_and_reset_notify(n, s2, 3)
    p = w.program()
    eager, jitted = run_comm(p, jit=False), run_comm(p)
    same(eager, jitted)
    assert eager.status == CommStatus.OK and eager.memory[0][b - a :].tolist()[:16] == list(range(16))

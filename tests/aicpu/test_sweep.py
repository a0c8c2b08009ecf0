"""``ascend_jax.aicpu.sweep`` (ascend-jax sweep): in-place ring jobs, #wrong, the nccl-tests layout, and
integer overflow in the comm numerics."""

from __future__ import annotations

import re

import numpy as np
import pytest
from _comm import run_both

from ascend_jax.aicpu import CommCost, HcclCMDType, HcclDataType, comm_numerics, ring_expected, ring_job
from ascend_jax.aicpu.models import p2p_job
from ascend_jax.aicpu.sweep import average_busbw, nccl_lines, run_sweep, sizes, wrong_elements
from ascend_jax.aicpu.tasks import MEM_BASE


@pytest.mark.parametrize("op", [HcclCMDType.ALLREDUCE, HcclCMDType.ALLGATHER, HcclCMDType.REDUCE_SCATTER])
def test_in_place_ring_jobs_alias_their_buffers_and_match_numpy(op):
    p = ring_job(int(op), ranks=3, count=8, seed=1, in_place=True)
    r = run_both(p)
    assert all(e["ok"] for e in comm_numerics(r, ring_expected(p)).values())
    allocs = [name for _, _, name in p.allocs[0]]
    assert allocs.count("sendBuf") + allocs.count("recvBuf") == 1  # one buffer holds input and output


def test_in_place_p2p_receives_into_the_send_buffer():
    p = p2p_job(32, seed=4, in_place=True)
    r = run_both(p)
    np.testing.assert_array_equal(r.output("rank1.recvBuf"), p.world.inputs[0])


def test_wrong_elements_counts_a_corrupted_output_and_wrapped_int8_sums():
    p = ring_job(int(HcclCMDType.ALLREDUCE), ranks=4, count=4, seed=2)
    r = run_both(p)
    dt = np.dtype(np.float32)
    assert wrong_elements("allreduce", r, p.world.inputs, dt) == 0
    rank, addr, _, _ = p.outputs["rank2.recvBuf"]
    r.memory[rank] = r.memory[rank].copy()
    off = addr - MEM_BASE + 4 * 5
    r.memory[rank][off : off + 4] = np.float32(1e9).reshape(1).view(np.uint8)
    assert wrong_elements("allreduce", r, p.world.inputs, dt) == 1
    q = ring_job(int(HcclCMDType.ALLREDUCE), ranks=8, count=16, seed=3, dtype=int(HcclDataType.INT8))
    rq = run_both(q)
    assert wrong_elements("allreduce", rq, q.world.inputs, np.dtype(np.int8)) > 0
    report = comm_numerics(rq, ring_expected(q))["rank0.recvBuf"]
    assert report["ok"] is False and report["overflow"] > 0 and "wrapped around" in report["reason"]


def test_sweep_rows_and_the_nccl_layout():
    szs = sizes(256, 4096, 4, 4, 4)
    assert szs == [256, 1024, 4096]
    cost = CommCost(link_bw=25e9)
    rows = run_sweep("reduce_scatter", 4, szs, "float", cost)
    assert [r["size"] for r in rows] == szs and [r["count"] for r in rows] == [64, 256, 1024]
    for r in rows:
        for k in ("out_of_place", "in_place"):
            assert r[k]["wrong"] == 0 and r[k]["status"] == "ok" and r[k]["time_us"] > 0
            assert r[k]["busbw"] == pytest.approx(r[k]["algbw"] * 3 / 4)
    assert rows[-1]["out_of_place"]["time_us"] > rows[0]["out_of_place"]["time_us"]
    args = {"min_bytes": 256, "max_bytes": 4096, "factor": 4, "dtype": "float", "engine": "reference"}
    lines = nccl_lines(rows, "reduce_scatter", 4, args, cost)
    assert lines[0].startswith("#") and "SIMULATED" in lines[1] and "link 25 GB/s" in lines[3]
    assert "out-of-place" in lines[5] and "in-place" in lines[5]
    data = [ln for ln in lines if not ln.startswith("#")]
    assert len(data) == 3 and re.match(r"\s+256\s+64\s+float\s+sum\s+-1\s+[\d.]+", data[0])
    assert lines[-3] == "# Out of bounds values : 0 OK"
    assert lines[-2] == f"# Avg bus bandwidth    : {average_busbw(rows):.6g}"


def test_sweep_engines_agree():
    szs = sizes(128, 512, 2, 2, 4)
    a = run_sweep("allgather", 2, szs, "half", engine="reference")
    b = run_sweep("allgather", 2, szs, "half", engine="jax")
    assert a == b

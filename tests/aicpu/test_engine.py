"""The batched comm engine (ascend_jax/aicpu/engine.py, schedule.py): lanes grouped by task structure,
one control pass per group, data applied to every lane at once; each lane equal to its own reference
run, including lanes whose kernels read different bytes and so leave their group."""

from __future__ import annotations

import dataclasses

import hypothesis.strategies as hst
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from test_batch import same
from test_launch import launch, launch_programs, one_rank, param

from ascend_jax.aicpu import CommStatus, HcclCMDType, ring_job, run_comm_batch, run_comm_reference
from ascend_jax.aicpu.engine import apply_steps, structure_key
from ascend_jax.aicpu.schedule import DataOp


def _variants(p, seeds):
    """Lanes of ``p``'s structure whose memory differs: every allocated byte redrawn per seed."""
    out = []
    for s in seeds:
        rng = np.random.default_rng(s)
        memory = tuple(rng.integers(0, 255, m.size, np.uint8) for m in p.memory)
        out.append(dataclasses.replace(p, memory=memory))
    return out


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(launch_programs(), hst.lists(hst.integers(0, 10**6), min_size=1, max_size=5), hst.integers(1, 4))
def test_lanes_whose_kernels_read_different_bytes_equal_their_reference(p, seeds, chunk):
    lanes = _variants(p, seeds) + [p]
    results = run_comm_batch(lanes, chunk=chunk)
    for lane, r in zip(lanes, results, strict=True):
        same(r, run_comm_reference(lane))


def test_a_data_dependent_kernel_splits_the_group():
    # the kernel reads one byte and makes 1, 2 or 3 copies (and fails when the byte is a multiple of 7)
    w, h, s, (t,) = one_rank()
    _, buf = h.aclrt_malloc(256)
    h.aclrt_memcpy_h2d(buf, np.zeros(256, np.uint8))
    launch(h, s, "DataDependent", param(t, buf, buf + 192))
    p = w.program(max_steps=300)
    lanes = _variants(p, range(12))
    results = run_comm_batch(lanes)
    counts = set()
    for lane, r in zip(lanes, results, strict=True):
        same(r, run_comm_reference(lane))
        counts.add(sum(len(q.tasks) for q in r.program.queues))
    assert len({structure_key(lane) for lane in lanes}) == 1  # one group at the start...
    assert len(counts) > 1  # ...whose lanes ended with different task lists


def test_chunks_run_from_threads_give_the_results_of_one_thread(monkeypatch):
    """On a CPU the chunks of a group run at once from several threads (ascend_jax.workers); lanes
    that go apart at a pause are regrouped in the order one pass over the lanes gives."""
    from ascend_jax import workers

    w, h, s, (t,) = one_rank()
    _, buf = h.aclrt_malloc(256)
    h.aclrt_memcpy_h2d(buf, np.zeros(256, np.uint8))
    launch(h, s, "DataDependent", param(t, buf, buf + 192))
    lanes = _variants(w.program(max_steps=300), range(9))
    threaded = run_comm_batch(lanes, chunk=2)
    monkeypatch.setattr(workers, "count", lambda *a, **k: 1)
    alone = run_comm_batch(lanes, chunk=2)
    assert len({sum(len(q.tasks) for q in r.program.queues) for r in alone}) > 1  # lanes went apart
    for a, b in zip(threaded, alone, strict=True):
        same(a, b)
        assert [q.tasks for q in a.program.queues] == [q.tasks for q in b.program.queues]
        for m, n in zip(a.memory, b.memory, strict=True):
            np.testing.assert_array_equal(m, n)


def test_ring_batch_equals_reference_lane_by_lane_across_chunks():
    lanes = [ring_job(int(HcclCMDType.ALLREDUCE), ranks=4, count=24, seed=s) for s in range(7)]
    results = run_comm_batch(lanes, chunk=3)  # chunks of 3, 3 and 1 (padded to 1)
    for lane, r in zip(lanes, results, strict=True):
        same(r, run_comm_reference(lane))
        assert r.status == CommStatus.OK


def test_apply_steps_reads_the_step_start_and_writes_in_queue_order():
    # one step: a copy 0->8 and a copy 8->16 both read the start of the step; then two copies into 24
    # (the later one wins), at every word width
    mem = np.arange(2 * 32, dtype=np.uint8).reshape(2, 32)
    for n in (8, 4, 2, 1):
        steps = [
            (
                DataOp(False, 0, 0, 0, 8, n, 0, 0),
                DataOp(False, 0, 8, 0, 16, n, 0, 0),
                DataOp(False, 0, 0, 0, 24, n, 0, 0),
                DataOp(False, 0, 16, 0, 24, n, 0, 0),
            )
        ]
        out = apply_steps(steps, mem.copy(), 32, chunk=2)
        want = mem.copy()
        want[:, 8 : 8 + n] = mem[:, 0:n]
        want[:, 16 : 16 + n] = mem[:, 8 : 8 + n]
        want[:, 24 : 24 + n] = mem[:, 16 : 16 + n]
        np.testing.assert_array_equal(out, want)


@pytest.mark.slow
def test_reduce_at_every_word_width_equals_numpy():
    from ascend_jax.aicpu.codes import HcclDataType, HcclReduceOp
    from ascend_jax.aicpu.reduce import reduce_bytes

    rng = np.random.default_rng(0)
    for dtype, size in ((HcclDataType.FP32, 4), (HcclDataType.FP16, 2), (HcclDataType.INT8, 1)):
        for op in (HcclReduceOp.SUM, HcclReduceOp.MAX):
            # (bytes, offset, rank row, destination base): the last two make 6-byte blocks of
            # 2-byte words and 2-byte blocks, which a 4-byte element straddles
            for n, off, row, base in ((16, 0, 128, 64), (8, 4 if size <= 4 else 0, 128, 64),
                                      (size * 3, 2 * size, 128, 64), (12, 6, 120, 60), (size * 3, 2, 128, 64)):  # fmt: skip
                mem = rng.integers(0, 255, (3, row), np.uint8)
                if dtype != HcclDataType.INT8:  # finite values
                    vals = rng.standard_normal(12).astype({4: np.float32, 2: np.float16}[size])
                    mem[:, : 12 * size] = np.frombuffer(vals.tobytes(), np.uint8)
                    mem[:, base : base + 12 * size] = np.frombuffer(vals[::-1].tobytes(), np.uint8)
                steps = [(DataOp(True, 0, off, 0, base + off, n, int(dtype), int(op)),)]
                out = apply_steps(steps, mem.copy(), row, chunk=4)
                want = mem.copy()
                for lane in range(3):
                    dst = want[lane, base + off : base + off + n].copy()
                    want[lane, base + off : base + off + n] = reduce_bytes(
                        dst, mem[lane, off : off + n].copy(), dtype, op
                    )
                np.testing.assert_array_equal(out, want)


def test_memory_fault_and_hang_lanes_in_one_batch():
    # lanes of different structures in one call: each its own group
    from test_batch import p2p_job

    lanes = [ring_job(int(HcclCMDType.ALLGATHER), ranks=3, count=8, seed=1), p2p_job(16, seed=2, both_send_first=True)]
    lanes = [dataclasses.replace(lanes[0], max_steps=5), lanes[1]]
    results = run_comm_batch(lanes)
    assert results[0].status == CommStatus.MAX_STEPS
    for lane, r in zip(lanes, results, strict=True):
        same(r, run_comm_reference(lane))


def test_with_memory_lanes_share_the_graph_and_equal_their_reference():
    import pytest

    base = ring_job(int(HcclCMDType.REDUCE_SCATTER), ranks=3, count=12, seed=0)
    others = [ring_job(int(HcclCMDType.REDUCE_SCATTER), ranks=3, count=12, seed=s) for s in (1, 2)]
    lanes = [base.with_memory(o.memory) for o in others]
    assert lanes[0].queues is base.queues and lanes[0].world is base.world
    for lane, other, r in zip(lanes, others, run_comm_batch(lanes), strict=True):
        same(r, run_comm_reference(lane))
        assert [m.tobytes() for m in r.memory] == [m.tobytes() for m in run_comm_reference(other).memory]
    with pytest.raises(ValueError, match="sizes"):
        base.with_memory([m[:-1] for m in base.memory])


def test_blocks_find_repeated_rounds():
    from ascend_jax.aicpu.engine import _blocks

    a, b, c = ("a",), ("b",), ("c",)
    # a ring's reduce-scatter rounds (copy, reduce) x 3, then its gather rounds, then a last copy
    assert _blocks([c, a, b, a, b, a, b, c, c, c, a]) == [(0, 1, 1), (1, 2, 3), (7, 1, 3), (10, 1, 1)]
    assert _blocks([a]) == [(0, 1, 1)]
    assert _blocks([]) == []
    # the most steps covered wins: a period of 3 repeated twice over a period of 1 repeated twice
    assert _blocks([a, a, b, a, a, b]) == [(0, 3, 2)]


@hst.composite
def _repeated_steps(draw):
    """(steps, rank row): blocks of steps that repeat their tasks' kinds and lengths with other
    offsets (the loops of ``_apply``); windows overlap freely within and across steps, or, in
    steps whose tasks all have one length, the destinations may be drawn disjoint (the scatter
    path of ``_step_windows``)."""
    from ascend_jax.aicpu.codes import HcclDataType, HcclReduceOp

    row = 32
    kinds = [(False, 0, 0), (True, int(HcclDataType.INT32), int(HcclReduceOp.SUM)),
             (True, int(HcclDataType.INT8), int(HcclReduceOp.MAX))]  # fmt: skip
    steps = []
    for _ in range(draw(hst.integers(1, 4))):
        period = draw(hst.integers(1, 3))
        shapes = []
        for _ in range(period):
            t, same_n = draw(hst.integers(1, 4)), draw(hst.integers(0, 4))  # same_n: 1-4 bytes x 4 for all
            ops = [(draw(hst.sampled_from(kinds)), 4 * (same_n or draw(hst.integers(1, 4)))) for _ in range(t)]
            shapes.append((ops, bool(same_n) and draw(hst.booleans())))
        for _ in range(draw(hst.integers(1, 3))):
            for ops, disjoint in shapes:
                n = ops[0][1]
                slots = [(r, n * i) for r in (0, 1) for i in range(row // n)]
                free = draw(hst.permutations(slots))
                step = []
                for j, ((reduce, dtype, op), n) in enumerate(ops):
                    src = (draw(hst.integers(0, 1)), 4 * draw(hst.integers(0, (row - n) // 4)))
                    dst = free[j] if disjoint else (draw(hst.integers(0, 1)), 4 * draw(hst.integers(0, (row - n) // 4)))
                    step.append(DataOp(reduce, *src, *dst, n, dtype, op))
                steps.append(tuple(step))
    return steps, row


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_repeated_steps(), hst.integers(1, 3), hst.integers(0, 2**32 - 1))
def test_apply_steps_equals_replay_on_repeated_blocks(case, chunk, seed):
    from ascend_jax.aicpu.engine import replay_lane

    steps, row = case
    mem = np.random.default_rng(seed).integers(0, 255, (3, 2 * row), np.uint8)
    out = apply_steps(steps, mem.copy(), row, chunk=chunk)
    for lane in range(3):
        ranks = [mem[lane, :row].copy(), mem[lane, row:].copy()]
        replay_lane(steps, ranks)
        np.testing.assert_array_equal(out[lane], np.concatenate(ranks))

"""Building blocks of the comm models: the P2P job of the seed and the ring collectives, with their
float64 numpy answers, and the numerics report of a comm run."""

from __future__ import annotations

from typing import Any

import numpy as np

from ascend_jax.aicpu.codes import HcclCMDType, HcclDataType, HcclReduceOp, numpy_dtype
from ascend_jax.aicpu.collectives import CUSTOM_TIMEOUT, hccl_recv_custom, hccl_ring_custom, hccl_send_custom
from ascend_jax.aicpu.result import CommResult
from ascend_jax.aicpu.tasks import CommCost, TaskProgram
from ascend_jax.aicpu.world import World
from ascend_jax.compare import compare

#: Relative-L2 tolerance of comm outputs against float64 numpy: fp32 sums over p <= 64 ranks.
COMM_TOLERANCE = {"float32": 1e-6, "float16": 2e-3, "int32": 0.0}


def p2p_job(
    count: int = 1024,
    *,
    seed: int = 0,
    both_send_first: bool = False,
    in_place: bool = False,
    cost: CommCost | None = None,
    **opts: Any,
) -> TaskProgram:
    """The seed's 2-rank flow: rank 0 HcclSendCustom ``count`` fp32 to rank 1, rank 1
    HcclRecvCustom (receiver pulls); each host then synchronizes its stream.

    ``both_send_first``: each rank sends to the other, then receives (pitfall F7, a deadlock that
    ends in a notify-wait timeout). Other keyword options go to the send / recv calls
    (``op_info``, ``kernel_name``, ``comm_name_override``, ``timeout``). ``in_place``: each rank
    receives into its send buffer (nccl-tests' in-place send / receive); ``cost``: the cost model.
    """
    world = World(2, name="p2p_send_recv", cost=cost)
    world.init_comm("comm0")
    rng = np.random.default_rng(seed)
    data = [rng.standard_normal(count).astype(np.float32) for _ in range(2)]
    rets = {}
    for r in range(2):
        h = world.host(r)
        _, stream = h.aclrt_create_stream()
        _, send = h.aclrt_malloc(count * 4, "sendBuf")
        recv = send if in_place else h.aclrt_malloc(count * 4, "recvBuf")[1]
        h.aclrt_memcpy_h2d(send, data[r])
        peer = 1 - r
        calls = []
        if both_send_first:
            calls = [("send", send), ("recv", recv)]
        else:
            calls = [("send", send)] if r == 0 else [("recv", recv)]
        for kind, buf in calls:
            fn = hccl_send_custom if kind == "send" else hccl_recv_custom
            rets[(r, kind)] = fn(h, buf, count, int(HcclDataType.FP32), peer, "comm0", stream, **opts)
        h.aclrt_synchronize_stream(stream)
        world.mark_output(f"rank{r}.recvBuf", r, recv, int(HcclDataType.FP32), count)
    world.host_returns.update(rets)
    world.inputs.extend(data)
    return world.program()


def p2p_thread_job(count: int = 1024, *, seed: int = 0, timeout: int = 1836) -> TaskProgram:
    """The current hccl P2P example on 2 ranks (thread notifies between the stream and the AI CPU
    thread, :mod:`ascend_jax.aicpu.p2p_thread`): rank 0 sends ``count`` fp32, rank 1 receives them;
    each host then synchronizes its stream. Same outputs as :func:`p2p_job`."""
    from ascend_jax.aicpu.p2p_thread import hccl_recv_thread, hccl_send_thread

    world = World(2, name="p2p_thread_notify")
    world.init_comm("comm0")
    rng = np.random.default_rng(seed)
    data = [rng.standard_normal(count).astype(np.float32) for _ in range(2)]
    for r in range(2):
        h = world.host(r)
        _, stream = h.aclrt_create_stream()
        _, send = h.aclrt_malloc(count * 4, "sendBuf")
        _, recv = h.aclrt_malloc(count * 4, "recvBuf")
        h.aclrt_memcpy_h2d(send, data[r])
        if r == 0:
            ret = hccl_send_thread(h, send, count, int(HcclDataType.FP32), 1, "comm0", stream, timeout=timeout)
        else:
            ret = hccl_recv_thread(h, recv, count, int(HcclDataType.FP32), 0, "comm0", stream, timeout=timeout)
        world.host_returns[(r, "send" if r == 0 else "recv")] = ret
        h.aclrt_synchronize_stream(stream)
        world.mark_output(f"rank{r}.recvBuf", r, recv, int(HcclDataType.FP32), count)
    world.inputs.extend(data)
    return world.program()


def p2p_expected(program: TaskProgram) -> dict[str, np.ndarray]:
    data = program.world.inputs
    return {"rank1.recvBuf": data[0].astype(np.float64)}


def ring_job(
    op_type: int,
    *,
    ranks: int = 4,
    count: int = 256,
    seed: int = 0,
    dtype: int = int(HcclDataType.FP32),
    cost: CommCost | None = None,
    timeout: int = CUSTOM_TIMEOUT,
    in_place: bool = False,
) -> TaskProgram:
    """A ring collective over ``ranks`` ranks, ``count`` elements per block (fp32 sum by default).

    ``cost``: the cost model (link bandwidth and latency are its parameters); ``timeout``: seconds
    of the host's done-wait and of every device wait (0 = forever); ``in_place``: the output buffer
    is the input buffer (AllReduce), or one holds the other at the rank's block (AllGather: the input
    is block ``r`` of the output; ReduceScatter: the output is block ``r`` of the input), as
    nccl-tests' in-place runs."""
    name = {HcclCMDType.ALLGATHER: "allgather", HcclCMDType.REDUCE_SCATTER: "reduce_scatter",
            HcclCMDType.ALLREDUCE: "allreduce"}[HcclCMDType(op_type)]  # fmt: skip
    world = World(
        ranks,
        hccl_buffer_size=max(64, count * 8),
        name=f"{name}-p{ranks}",
        cost=cost or CommCost(),
        reduce_dtypes=(dtype,),
    )
    world.init_comm("comm0")
    rng = np.random.default_rng(seed)
    dt = numpy_dtype(dtype)
    in_count = count if op_type == HcclCMDType.ALLGATHER else ranks * count
    out_count = count if op_type == HcclCMDType.REDUCE_SCATTER else ranks * count
    inputs = []
    for r in range(ranks):
        h = world.host(r)
        _, stream = h.aclrt_create_stream()
        x = (rng.standard_normal(in_count) if dt.kind == "f" else rng.integers(-100, 100, in_count)).astype(dt)
        inputs.append(x)
        block = count * dt.itemsize
        if not in_place:
            _, send = h.aclrt_malloc(in_count * dt.itemsize, "sendBuf")
            _, recv = h.aclrt_malloc(out_count * dt.itemsize, "recvBuf")
        elif op_type == HcclCMDType.ALLGATHER:
            _, recv = h.aclrt_malloc(out_count * dt.itemsize, "recvBuf")
            send = recv + r * block
        else:
            _, send = h.aclrt_malloc(in_count * dt.itemsize, "sendBuf")
            recv = send + (r * block if op_type == HcclCMDType.REDUCE_SCATTER else 0)
        _, work = h.aclrt_malloc(ranks * count * dt.itemsize, "workBuf")
        h.aclrt_memcpy_h2d(send, x)
        ret = hccl_ring_custom(
            h, op_type, send, recv, work, count, dtype, int(HcclReduceOp.SUM), "comm0", stream, timeout=timeout
        )
        if ret:
            raise RuntimeError(f"rank {r}: host call failed with {ret}")
        h.aclrt_synchronize_stream(stream)
        world.mark_output(f"rank{r}.recvBuf", r, recv, dtype, out_count)
    world.inputs.extend(inputs)
    world.meta["op_type"] = int(op_type)
    return world.program()


def ring_expected(program: TaskProgram) -> dict[str, np.ndarray]:
    x = [a.astype(np.float64) for a in program.world.inputs]
    p = len(x)
    op = program.world.meta["op_type"]
    out = {}
    for r in range(p):
        if op == HcclCMDType.ALLGATHER:
            want = np.concatenate(x)
        else:
            total = np.sum(x, axis=0)
            n = len(total) // p
            want = total[r * n : (r + 1) * n] if op == HcclCMDType.REDUCE_SCATTER else total
        out[f"rank{r}.recvBuf"] = want
    return out


def comm_numerics(result: CommResult, expected: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Per output buffer: errors against the float64 numpy answer (and stores it in the result)."""
    report = {}
    for name, want in expected.items():
        sim = result.output(name)
        dt = sim.dtype.name if sim.dtype.kind != "V" else "bfloat16"
        tol = COMM_TOLERANCE.get(dt, 1e-2)
        entry = {"dtype": dt, **compare(sim, want, tol)}
        if sim.dtype.kind in "iu":  # an integer sum past the type's range wraps around on the device
            info = np.iinfo(sim.dtype)
            over = int(np.count_nonzero((want > info.max) | (want < info.min)))
            entry["overflow"] = over
            if over:
                entry["ok"] = False
                entry["reason"] = (
                    f"{over} of {want.size} elements of the exact answer lie outside {dt}'s range "
                    f"{info.min}..{info.max}: the integer sum wrapped around"
                )
        report[name] = entry
    result.numerics = report
    return report

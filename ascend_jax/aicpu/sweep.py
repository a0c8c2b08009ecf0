"""``ascend-jax sweep``: a simulated ring collective over message sizes, printed as nccl-tests prints it.

For every size from ``min_bytes`` to ``max_bytes`` (times ``factor``) the collective runs twice,
out of place (separate input and output buffers) and in place (nccl-tests' layout: AllReduce
writes its input buffer; AllGather's input is the rank's block of its output; ReduceScatter's
output is the rank's block of its input). A row gives, for each: ``time`` (simulated device time
of the operation, from the first stream task to the last, in us, from the cost model: no
measurement), ``algbw`` = size / time, ``busbw`` = algbw x the bus factor (AllReduce 2(p-1)/p,
AllGather and ReduceScatter (p-1)/p) in GB/s, and ``#wrong``, the output elements outside the
rounding bound of a float64 answer (a float sum of p values may differ from the exact sum by
(p - 1) units in the last place of the sum of magnitudes; copies and integer sums must be exact,
so an integer sum that wraps around counts as wrong).

``size`` is nccl-tests' size: bytes of the whole input of AllReduce and ReduceScatter, of the
whole output of AllGather, and of the message of a send / receive (``p2p_send_recv``: rank 0 sends,
rank 1 receives; bus factor 1; in place, each rank receives into its send buffer); ``count`` is
that in elements.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ascend_jax.aicpu.codes import HcclCMDType, HcclDataType, numpy_dtype
from ascend_jax.aicpu.result import CommResult, CommStatus
from ascend_jax.aicpu.tasks import CommCost

OPS = {
    "p2p_send_recv": HcclCMDType.SEND,
    "allreduce": HcclCMDType.ALLREDUCE,
    "allgather": HcclCMDType.ALLGATHER,
    "reduce_scatter": HcclCMDType.REDUCE_SCATTER,
}
#: nccl-tests' type names of the data types the ring kernels reduce.
DTYPES = {
    "float": HcclDataType.FP32,
    "half": HcclDataType.FP16,
    "bfloat16": HcclDataType.BFP16,
    "int32": HcclDataType.INT32,
    "int8": HcclDataType.INT8,
}
BUS_FACTOR = {
    "p2p_send_recv": lambda p: 1.0,
    "allreduce": lambda p: 2 * (p - 1) / p,
    "allgather": lambda p: (p - 1) / p,
    "reduce_scatter": lambda p: (p - 1) / p,
}


@dataclasses.dataclass(frozen=True)
class Result:
    """One run of a row: simulated time (us), bandwidths (GB/s), wrong elements, run status."""

    time_us: float
    algbw: float
    busbw: float
    wrong: int
    status: str


def sizes(min_bytes: int, max_bytes: int, factor: int, ranks: int, itemsize: int) -> list[int]:
    """The sizes of a sweep: ``min_bytes``, times ``factor`` up to ``max_bytes``, each rounded down to a
    whole element per rank (at least one)."""
    unit = ranks * itemsize
    out, size = [], min_bytes
    while size <= max_bytes:
        out.append(max(unit, size - size % unit))
        size *= factor
    return out


def wrong_elements(op: str, result: CommResult, inputs: list[np.ndarray], dtype: np.dtype) -> int:
    """Output elements of every rank outside the rounding bound of the float64 answer (see the
    module docstring); a run that did not end ``ok`` counts every output element as wrong."""
    if op == "p2p_send_recv":  # rank 1 receives rank 0's data, bit for bit
        sim = result.output("rank1.recvBuf")
        if result.status != CommStatus.OK:
            return sim.size
        return int(np.count_nonzero(sim.view(np.uint32) != inputs[0].view(np.uint32)))
    p = len(inputs)
    x = np.stack([a.astype(np.float64) for a in inputs])  # [p, n_in]
    wrong = 0
    for r in range(p):
        sim = result.output(f"rank{r}.recvBuf")
        if result.status != CommStatus.OK:
            wrong += sim.size
            continue
        got = sim.astype(np.float64)
        if op == "allgather":
            want, bound = x.reshape(-1), np.zeros(x.size)
        else:
            total, mag = x.sum(axis=0), np.abs(x).sum(axis=0)
            n = total.size // p
            if op == "reduce_scatter":
                total, mag = total[r * n : (r + 1) * n], mag[r * n : (r + 1) * n]
            eps = 0.0 if dtype.kind in "iu" else float(np.finfo(dtype).eps)
            want, bound = total, (p - 1) * eps * mag + (eps * np.abs(total))
        with np.errstate(invalid="ignore"):
            wrong += int(np.count_nonzero(~(np.abs(got - want) <= bound)))
    return wrong


def run_sweep(
    op: str,
    ranks: int,
    byte_sizes: list[int],
    dtype: str = "float",
    cost: CommCost | None = None,
    engine: str = "reference",
) -> list[dict[str, Any]]:
    """Runs every size out of place and in place; one row per size (see the module docstring).

    ``engine``: ``reference`` (one run after another; no compilation) or ``jax`` (every run a lane of
    one batched call)."""
    from ascend_jax.aicpu.models import p2p_job, ring_job  # the models import the host side

    dt = DTYPES[dtype]
    if op == "p2p_send_recv" and (dt != HcclDataType.FP32 or ranks != 2):
        raise ValueError("p2p_send_recv: 2 ranks and float only")
    itemsize = numpy_dtype(int(dt)).itemsize
    jobs = []
    for size in byte_sizes:
        count = size // (ranks * itemsize)  # elements of one rank's block
        for in_place in (False, True):
            if op == "p2p_send_recv":
                jobs.append(p2p_job(size // itemsize, seed=size, in_place=in_place, cost=cost))
            else:
                jobs.append(ring_job(int(OPS[op]), ranks=ranks, count=count, seed=size, dtype=int(dt), cost=cost,
                                     in_place=in_place))  # fmt: skip
    if engine == "jax":
        from ascend_jax.aicpu.engine import run_comm_batch

        results = run_comm_batch(jobs)
    else:
        from ascend_jax.aicpu.reference import run_comm_reference

        results = [run_comm_reference(j) for j in jobs]
    rows = []
    for i, size in enumerate(byte_sizes):
        row: dict[str, Any] = {"size": size, "count": size // itemsize, "type": dtype,
                               "redop": "none" if op == "allgather" else "sum", "root": -1}  # fmt: skip
        for key, job, res in (("out_of_place", jobs[2 * i], results[2 * i]), ("in_place", jobs[2 * i + 1],
                                                                              results[2 * i + 1])):  # fmt: skip
            time_s = float(np.nanmax(res.clock)) if res.clock.size else 0.0
            algbw = size / time_s / 1e9 if time_s > 0 else 0.0
            row[key] = dataclasses.asdict(
                Result(time_s * 1e6, algbw, algbw * BUS_FACTOR[op](ranks),
                       wrong_elements(op, res, job.world.inputs, numpy_dtype(int(dt))), res.status.label)
            )  # fmt: skip
        rows.append(row)
    return rows


def nccl_lines(rows: list[dict[str, Any]], op: str, ranks: int, args: dict[str, Any], cost: CommCost) -> list[str]:
    """The nccl-tests layout: header comments, one line per size with the out-of-place and in-place
    groups, the out-of-bounds line and the average bus bandwidth."""
    lines = [
        f"# ascend-jax sweep: simulated ring {op} on {ranks} ranks",
        "# time, algbw and busbw are SIMULATED device time from the cost model, not measurements",
        f"# minBytes {args['min_bytes']} maxBytes {args['max_bytes']} step: {args['factor']}(factor) "
        f"ranks: {ranks} dtype: {args['dtype']} engine: {args['engine']}",
        f"# cost model: link {cost.link_bw / 1e9:g} GB/s, local {cost.local_bw / 1e9:g} GB/s, reduce "
        f"{cost.reduce_bw / 1e9:g} GB/s, copy latency {cost.copy_latency_s * 1e6:g} us, notify "
        f"{cost.notify_s * 1e6:g} us, kernel launch {cost.kernel_s * 1e6:g} us",
        "#",
        f"#{'':>62}out-of-place{'':>23}in-place",
        f"#{'size':>11} {'count':>13} {'type':>9} {'redop':>7} {'root':>7} {'time':>8} {'algbw':>7} {'busbw':>7} "
        f"{'#wrong':>6} {'time':>8} {'algbw':>7} {'busbw':>7} {'#wrong':>6}",
        f"#{'(B)':>11} {'(elements)':>13} {'':>9} {'':>7} {'':>7} {'(us)':>8} {'(GB/s)':>7} {'(GB/s)':>7} "
        f"{'':>6} {'(us)':>8} {'(GB/s)':>7} {'(GB/s)':>7} {'':>6}",
    ]
    for r in rows:
        o, i = r["out_of_place"], r["in_place"]
        lines.append(
            f"{r['size']:>12} {r['count']:>13} {r['type']:>9} {r['redop']:>7} {r['root']:>7} "
            f"{o['time_us']:>8.2f} {o['algbw']:>7.2f} {o['busbw']:>7.2f} {o['wrong']:>6} "
            f"{i['time_us']:>8.2f} {i['algbw']:>7.2f} {i['busbw']:>7.2f} {i['wrong']:>6}"
        )
    wrong = sum(r["out_of_place"]["wrong"] + r["in_place"]["wrong"] for r in rows)
    lines.append(f"# Out of bounds values : {wrong} {'OK' if wrong == 0 else 'FAILED'}")
    lines.append(f"# Avg bus bandwidth    : {average_busbw(rows):.6g}")
    lines.append("#")
    return lines


def average_busbw(rows: list[dict[str, Any]]) -> float:
    """Mean of the out-of-place and in-place bus bandwidths over all sizes (nccl-tests' average), GB/s."""
    vals = [r[k]["busbw"] for r in rows for k in ("out_of_place", "in_place")]
    return float(np.mean(vals)) if vals else 0.0


__all__ = ["DTYPES", "OPS", "average_busbw", "nccl_lines", "run_sweep", "sizes", "wrong_elements"]

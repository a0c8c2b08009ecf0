"""nccl-tests style sweep of a simulated ring collective over message sizes.

Every size is one lane of one batched JAX run (``run_comm_batch``: lanes of one task structure,
padded to the largest size, one compilation). For each size it prints what ``all_reduce_perf``
users read: size (bytes), count (elements), type, redop, time (simulated us of one operation, from
the first host task to the last stream task), algbw = size / time and busbw = algbw x the
collective's bus factor (AllReduce 2(p-1)/p, AllGather and ReduceScatter (p-1)/p), in GB/s, and
whether the numerics match float64 numpy. The cost model's link bandwidth and latency are
parameters, so the same sweep answers "what if the link were twice as fast".

    python benchmarks/comm_sweep.py [--op allreduce] [--ranks 8] [--min-bytes 256] [--max-bytes 1048576]
        [--link-gbps 50] [--latency-us 2] [--json] [--out benchmarks/results/comm_sweep.json]

Sizes double from ``--min-bytes`` to ``--max-bytes`` (bytes of the whole buffer, nccl-tests'
"size": AllReduce and ReduceScatter input, AllGather output). With ``--out FILE.json`` the JSON
and a plot ``FILE.png`` (time and bus bandwidth against size) are written; nothing is written
without it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _common import device_kind, machine, pyplot, write

from ascend_jax.aicpu import (
    CommCost,
    CommStatus,
    HcclCMDType,
    HcclDataType,
    comm_numerics,
    ring_expected,
    ring_job,
    run_comm_batch,
)

OPS = {
    "allreduce": HcclCMDType.ALLREDUCE,
    "allgather": HcclCMDType.ALLGATHER,
    "reduce_scatter": HcclCMDType.REDUCE_SCATTER,
}
BUS_FACTOR = {
    "allreduce": lambda p: 2 * (p - 1) / p,
    "allgather": lambda p: (p - 1) / p,
    "reduce_scatter": lambda p: (p - 1) / p,
}
COLUMNS = ("size", "count", "type", "redop", "time", "algbw", "busbw", "numerics")


def sweep(op: str, ranks: int, sizes: list[int], cost: CommCost) -> tuple[list[dict], float]:
    """Runs every size as a lane; returns one row per size and the wall seconds of the batch."""
    itemsize = 4  # fp32
    lanes = []
    for size in sizes:
        block = size // (ranks * itemsize)  # elements per rank's block (size covers p blocks)
        lanes.append(ring_job(int(OPS[op]), ranks=ranks, count=block, seed=size, cost=cost))
    t0 = time.perf_counter()
    results = run_comm_batch(lanes)
    wall = time.perf_counter() - t0
    rows = []
    for size, p, r in zip(sizes, lanes, results, strict=True):
        time_s = r.to_json(timeline=False)["time_s"]
        ok = r.status == CommStatus.OK and all(e["ok"] for e in comm_numerics(r, ring_expected(p)).values())
        algbw = size / time_s / 1e9
        rows.append(
            {
                "size": size,
                "count": size // itemsize,
                "type": "float",
                "redop": "sum" if op != "allgather" else "none",
                "time_us": time_s * 1e6,
                "algbw_GBps": algbw,
                "busbw_GBps": algbw * BUS_FACTOR[op](ranks),
                "numerics_ok": bool(ok),
                "status": r.status.label,
                "steps": r.steps,
            }
        )
    return rows, wall


def table(rows: list[dict]) -> str:
    head = f"{'size':>12} {'count':>10} {'type':>6} {'redop':>6} {'time':>10} {'algbw':>8} {'busbw':>8} {'#wrong':>7}"
    unit = f"{'(B)':>12} {'(elements)':>10} {'':>6} {'':>6} {'(us)':>10} {'(GB/s)':>8} {'(GB/s)':>8} {'':>7}"
    lines = [head, unit]
    for r in rows:
        lines.append(
            f"{r['size']:>12} {r['count']:>10} {r['type']:>6} {r['redop']:>6} {r['time_us']:>10.2f} "
            f"{r['algbw_GBps']:>8.2f} {r['busbw_GBps']:>8.2f} {0 if r['numerics_ok'] else 'N/A':>7}"
        )
    return "\n".join(lines)


def plot(rows: list[dict], title: str, out: Path) -> None:
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    sizes = [r["size"] for r in rows]
    a.loglog(sizes, [r["time_us"] for r in rows], "o-")
    a.set_xlabel("size (bytes)")
    a.set_ylabel("time (simulated us)")
    a.set_title("time per operation")
    b.semilogx(sizes, [r["busbw_GBps"] for r in rows], "o-")
    b.set_xlabel("size (bytes)")
    b.set_ylabel("bus bandwidth (GB/s)")
    b.set_title("bus bandwidth")
    for ax in (a, b):
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--op", choices=sorted(OPS), default="allreduce")
    ap.add_argument("--ranks", type=int, default=8, help="ranks in the ring (2..8)")
    ap.add_argument("--min-bytes", type=int, default=256)
    ap.add_argument("--max-bytes", type=int, default=1024 * 1024)
    ap.add_argument("--link-gbps", type=float, default=50.0, help="link (HCCS) bandwidth, GB/s")
    ap.add_argument("--latency-us", type=float, default=2.0, help="fixed cost of every copy / transfer, us")
    ap.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    ap.add_argument("--out", help="write the JSON here and the plot next to it (.png)")
    args = ap.parse_args(argv)
    checks = [
        ("--ranks", args.ranks, 2 <= args.ranks <= 8, "must be in 2..8"),
        (
            "--min-bytes",
            args.min_bytes,
            args.min_bytes >= 4 * args.ranks,
            f"must be >= {4 * args.ranks} (one fp32 per rank)",
        ),
        ("--max-bytes", args.max_bytes, args.max_bytes >= args.min_bytes, "must be >= --min-bytes"),
        ("--link-gbps", args.link_gbps, args.link_gbps > 0, "must be > 0"),
        ("--latency-us", args.latency_us, args.latency_us >= 0, "must be >= 0"),
    ]
    for field, value, ok, rule in checks:
        if not ok:
            print(f"invalid argument: {field} = {value}: {rule}", file=sys.stderr)
            return 2
    sizes, size = [], args.min_bytes
    while size <= args.max_bytes:
        sizes.append(size - size % (4 * args.ranks))
        size *= 2
    cost = CommCost(link_bw=args.link_gbps * 1e9, copy_latency_s=args.latency_us * 1e-6)
    rows, wall = sweep(args.op, args.ranks, sizes, cost)
    payload = {
        "benchmark": "comm_sweep",
        "op": args.op,
        "ranks": args.ranks,
        "dtype": HcclDataType.FP32.name.lower(),
        "cost": {
            "link_bw_Bps": cost.link_bw,
            "copy_latency_s": cost.copy_latency_s,
            "local_bw_Bps": cost.local_bw,
            "reduce_bw_Bps": cost.reduce_bw,
            "notify_s": cost.notify_s,
            "kernel_s": cost.kernel_s,
        },
        "device": device_kind(),
        "lanes": len(rows),
        "wall_s": wall,
        "machine": machine(),
        "results": rows,
    }
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        print(f"# {args.op}, {args.ranks} ranks, fp32, link {args.link_gbps} GB/s, latency {args.latency_us} us "
              f"({len(rows)} sizes as lanes of one batched run, {wall:.1f} s on {device_kind()})")  # fmt: skip
        print(table(rows))
    if args.out:
        out = Path(args.out)
        write(out, payload)
        plot(rows, f"simulated ring {args.op}, {args.ranks} ranks, link {args.link_gbps} GB/s", out.with_suffix(".png"))
    return 0 if all(r["numerics_ok"] for r in rows) else 3


if __name__ == "__main__":
    sys.exit(main())

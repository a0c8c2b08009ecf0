"""Comm operations per second against batch size: plain Python, the reference and the JAX engine.

    python benchmarks/comm_throughput.py [--quick] [--ranks 8] [--out FILE]

Workload: the 8-rank ring allreduce (``ascend_jax.aicpu.ring_job``, fp32 sum) at 4 KiB and 32 KiB of
input per rank; lanes are seeds 0..B-1: one task graph (seed 0's) with each seed's data
(``TaskProgram.with_memory``), which is also what the plain baseline takes (the graph once, each
lane's memory). Engines, measured in one run on the same machine and the same programs:

* ``plain_python``: ``benchmarks/plain_comm.py``, the sequential interpreter a user would write
  (the task graph expanded once, then one lane after another). Its rate is measured once per size on
  ``--baseline-lanes`` lanes and used for every ratio.
* ``reference``: ``ascend_jax.aicpu.run_comm_reference`` (the oracle), lanes one after another;
  its rate is measured once per size on a few lanes.
* ``jax``: ``ascend_jax.aicpu.run_comm_batch`` on the whole batch, warm (``compile_s``: the first
  call minus a warm one).

Rows: ``{engine, device, batch, ranks, bytes, ops_per_s, tasks_per_s, compile_s, wall_s, cpu_s}``
(``bytes``: input bytes per rank; ``ops_per_s``: lanes (one collective each) per second;
``tasks_per_s``: executed tasks per second; ``wall_s`` / ``cpu_s``: wall and user + sys time of the
measured call). Building the programs is not timed. ``--out`` writes the JSON and a PNG beside it
(default: a folder under the system's temporary directory).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _common import SCRATCH, cpu_s, device_kind, machine, pyplot, write
from plain_comm import prepare, run_plain

from ascend_jax.aicpu import HcclCMDType, ring_job, run_comm_batch, run_comm_reference

QUICK = [1, 64, 1024]
FULL = [1, 64, 1024, 4096]
SIZES = [4096, 32768]


def timed(fn, repeats: int = 1):
    """(best wall s, its cpu s, last value) over ``repeats`` calls."""
    best, best_cpu, value = float("inf"), 0.0, None
    for _ in range(repeats):
        value = None  # the previous call's results are freed before the next call (3.5 GB at 4,096 x 32 KiB)
        c0, t0 = cpu_s(), time.perf_counter()
        value = fn()
        wall, cpu = time.perf_counter() - t0, cpu_s() - c0
        if wall < best:
            best, best_cpu = wall, cpu
    return best, best_cpu, value


def jobs(ranks: int, nbytes: int, lanes: int) -> list:
    count = nbytes // (4 * ranks)  # allreduce input: ranks blocks of count fp32 elements
    return [ring_job(int(HcclCMDType.ALLREDUCE), ranks=ranks, count=count, seed=s) for s in range(lanes)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"batches {QUICK} (default {FULL})")
    ap.add_argument("--ranks", type=int, default=8)
    ap.add_argument("--baseline-lanes", type=int, default=64)
    ap.add_argument("--out", type=Path, default=SCRATCH / "comm_throughput.json")
    args = ap.parse_args(argv)
    batches = QUICK if args.quick else FULL
    dev = device_kind()
    rows, ratios = [], []
    for nbytes in SIZES:
        built = jobs(args.ranks, nbytes, max(batches))
        progs = [built[0].with_memory(p.memory) for p in built]  # one task graph, each seed's data
        graph = prepare(progs[0])
        tasks = graph.tasks  # tasks per lane (every task of the ring runs once)

        def plain_lanes(n, progs=progs, graph=graph):
            for p in progs[:n]:
                run_plain(graph, [m.copy() for m in p.memory])

        n_base = min(args.baseline_lanes, len(progs))
        wall, cpu, _ = timed(lambda n=n_base: plain_lanes(n), 3)
        plain_rate = n_base / wall
        n_ref = min(8, len(progs))
        rwall, rcpu, _ = timed(lambda n=n_ref, progs=progs: [run_comm_reference(p) for p in progs[:n]], 1)
        ref_rate = n_ref / rwall
        for b in batches:
            rows.append({"engine": "plain_python", "device": "cpu", "batch": b, "ranks": args.ranks, "bytes": nbytes,
                         "ops_per_s": plain_rate, "tasks_per_s": plain_rate * tasks, "compile_s": 0.0,
                         "wall_s": wall, "cpu_s": cpu, "measured_lanes": n_base})  # fmt: skip
            rows.append({"engine": "reference", "device": "cpu", "batch": b, "ranks": args.ranks, "bytes": nbytes,
                         "ops_per_s": ref_rate, "tasks_per_s": ref_rate * tasks, "compile_s": 0.0,
                         "wall_s": rwall, "cpu_s": rcpu, "measured_lanes": n_ref})  # fmt: skip
        for b in batches:
            lanes = progs[:b]
            first = timed(lambda lanes=lanes: run_comm_batch(lanes), 1)[0]  # its results freed at once
            jwall, jcpu, res = timed(lambda lanes=lanes: run_comm_batch(lanes), 3 if b <= 1024 else 2)
            assert all(r.status.label == "ok" for r in res)
            ran = sum(int(r.queue_pc.sum()) for r in res[:1])
            assert ran == tasks
            del res  # nothing of this batch stays alive while the next one runs
            rate = b / jwall
            rows.append({"engine": "jax", "device": dev, "batch": b, "ranks": args.ranks, "bytes": nbytes,
                         "ops_per_s": rate, "tasks_per_s": rate * tasks, "compile_s": max(0.0, first - jwall),
                         "wall_s": jwall, "cpu_s": jcpu, "measured_lanes": b})  # fmt: skip
            ratios.append({"bytes": nbytes, "batch": b, "jax_over_plain": rate / plain_rate,
                           "jax_cpu_over_plain_cpu": (b / jcpu) / (n_base / cpu) if jcpu > 0 else None})  # fmt: skip
            print(f"{nbytes:>6} B/rank  batch {b:>5}: jax {rate:10.1f} ops/s (wall {jwall:.3f} s, cpu {jcpu:.3f} s, "
                  f"compile {max(0.0, first - jwall):.2f} s)  plain {plain_rate:8.1f}  reference {ref_rate:7.1f}  "
                  f"-> {rate / plain_rate:6.2f}x plain", flush=True)  # fmt: skip
    write(args.out, {"meta": {**machine(), "workload": f"ring allreduce, {args.ranks} ranks, fp32 sum",
                              "tasks_per_lane": tasks}, "ratios": ratios, "results": rows})  # fmt: skip
    plt = pyplot()
    if plt is not None:
        fig, axes = plt.subplots(1, len(SIZES), figsize=(5 * len(SIZES), 4))
        for ax, nbytes in zip(np.atleast_1d(axes), SIZES, strict=True):
            for eng in ("plain_python", "reference", "jax"):
                pts = [(r["batch"], r["ops_per_s"]) for r in rows if r["engine"] == eng and r["bytes"] == nbytes]
                ax.plot(*zip(*pts, strict=True), marker="o", label=eng)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("batch (lanes)")
            ax.set_ylabel("allreduces / s")
            ax.set_title(f"{args.ranks}-rank ring allreduce, {nbytes // 1024} KiB per rank")
            ax.legend()
        fig.tight_layout()
        fig.savefig(args.out.with_suffix(".png"))
        print(f"wrote {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

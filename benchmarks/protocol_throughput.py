"""Messages per second against batch size: reference interpreter vs the JAX engine.

Workload: the CubeGroupCustom sample's protocol without compute (``models/cube_group_sample.py``
with ``protocol_only=True``: 6 AICs, 48 queues, 126 received messages per lane: 48 single tasks,
6 merge leaders, 48 QUITs ... per lane as counted from the run). Every lane runs the same kernel.

* JAX: ``simulate`` end to end (encode, run, per-lane results), best of 3 after a warm-up call;
  ``compile_s`` is the lowering + compilation time of the batched loop, measured apart. The
  engine-only time (the compiled loop alone, no Python) is reported as ``engine_messages_per_s``.
* reference: lanes run one after another; measured for the batch sizes marked in ``REF_BATCHES``.

    python benchmarks/protocol_throughput.py [--quick] [--out FILE]

``--quick`` (under two minutes on a 2-core CPU) measures fewer batch sizes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
from _common import RESULTS, best_of, device_kind, load_model_module, machine, pyplot, write

from ascend_jax.cube_group import engine
from ascend_jax.cube_group.reference import run_reference

FULL = [1, 4, 16, 64, 256, 1024, 4096, 16384]
QUICK = [1, 16, 256, 1024, 4096]
REF_FULL = [1, 16, 64, 256]
REF_QUICK = [1, 16, 64]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(RESULTS / "protocol_throughput.json"))
    args = ap.parse_args()
    program = load_model_module("cube_group_sample").build(protocol_only=True)
    msgs = sum(len(v) for v in run_reference(program).received.values())
    print(f"{program.name}: {msgs} received messages per lane")
    dev = device_kind()
    rows = []
    for batch in REF_QUICK if args.quick else REF_FULL:
        t = best_of(lambda batch=batch: [run_reference(program) for _ in range(batch)], 2 if batch > 16 else 3)
        rows.append({"engine": "reference", "device": "cpu", "batch": batch, "messages_per_s": batch * msgs / t,
                     "wall_s": t, "compile_s": 0.0})  # fmt: skip
        print(f"reference batch {batch:6d}: {batch * msgs / t:12,.0f} msgs/s")
    for batch in QUICK if args.quick else FULL:
        lanes = [program] * batch
        shape, n_frees, tab, keys = engine.prepare(lanes, "lockstep", list(range(batch)))
        t0 = time.perf_counter()
        compiled = engine._run_batch.lower(shape, n_frees, tab, keys).compile()
        compile_s = time.perf_counter() - t0
        engine.simulate(lanes)  # warm-up (also fills the caches of the Python side)
        t_end = best_of(lambda lanes=lanes: engine.simulate(lanes), 3 if batch <= 4096 else 1)
        t_eng = best_of(lambda c=compiled, t=tab, k=keys: jax.block_until_ready(c(t, k)), 3)
        rows.append(
            {
                "engine": "jax",
                "device": dev,
                "batch": batch,
                "messages_per_s": batch * msgs / t_end,
                "engine_messages_per_s": batch * msgs / t_eng,
                "wall_s": t_end,
                "engine_s": t_eng,
                "compile_s": compile_s,
            }
        )
        print(
            f"jax {dev} batch {batch:6d}: {batch * msgs / t_end:12,.0f} msgs/s end to end, "
            f"{batch * msgs / t_eng:12,.0f} engine only, compile {compile_s:.2f} s"
        )
    ref = max(r["messages_per_s"] for r in rows if r["engine"] == "reference")
    best = max((r for r in rows if r["engine"] == "jax" and r["batch"] >= 1024), key=lambda r: r["messages_per_s"])
    summary = {
        "reference_messages_per_s": ref,
        "jax_best_batch_ge_1024": best["batch"],
        "ratio_end_to_end": best["messages_per_s"] / ref,
        "ratio_engine_only": best["engine_messages_per_s"] / ref,
    }
    print(summary)
    out = Path(args.out)
    write(out, {"meta": {**machine(), "workload": program.name, "messages_per_lane": msgs}, "summary": summary,
                "results": rows})  # fmt: skip
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, key, eng in (("reference", "messages_per_s", "reference"), ("jax end to end", "messages_per_s", "jax"),
                            ("jax engine only", "engine_messages_per_s", "jax")):  # fmt: skip
        pts = [(r["batch"], r[key]) for r in rows if r["engine"] == eng and key in r]
        ax.plot(*zip(*pts, strict=True), marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch (lanes)")
    ax.set_ylabel("received messages / s")
    ax.set_title(f"{program.name} on {dev} ({machine()['cpu_count']} cores)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print(f"wrote {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()

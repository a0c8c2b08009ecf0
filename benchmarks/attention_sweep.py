"""Attention backward swept over sequence length, head size, causality, block size and AIC count.

Each point is one ``models/attention_grad.py`` kernel (B = H = 1, S1 = S2 = S, float16, AIVs =
2 x AICs, seed 0) run in the JAX engine under ``schedule="timed"`` as one batch, one compilation
per shape: lane 0 uses the chip's default cost model, lane 1 the same with the per-core GM rate
doubled (``ddr_rate`` 64 B/cycle), which shows how much of the estimated time is GM traffic. Per
point: kernel µs and the AIC utilisation summary (:func:`ascend_jax.compute_utilisation`) per lane,
steps, the engine shape (AIVs, ops per AIV, UB bound, GM bytes), and the host time of each phase
measured apart: model build (Python), encode (``prepare``), compile (``compile_batch``), run (the
compiled loop alone) and readout. For S <= ``--check-up-to`` the relative L2 error of dQ, dK, dV
against the float64 backward (lane 0).

Grid (full): S in {512, 1024, 2048, 4096} x D in {64, 128} x causal or not, with 128 x 128
blocks on 24 AICs (the 910B1's all); plus, at S = 1024, D = 64, blocks {64, 128} x AICs
{8, 16, 24}, causal or not. ``--quick`` (under 2 minutes on 2 cores): S in {512, 1024} x D in
{64, 128} x causal or not, 128 x 128 blocks, 24 AICs.

    python benchmarks/attention_sweep.py [--quick] [--out benchmarks/results/attention_sweep.json]

Writes the JSON, prints a table and, when matplotlib is installed, writes a PNG next to the JSON.
The time figures are the cost model's (placeholders to be calibrated): read them as relative.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time
from pathlib import Path

import jax
import numpy as np
from _common import SCRATCH, load_model_module, machine, pyplot, write

import ascend_jax as aj
from ascend_jax import CostModel
from ascend_jax.cube_group.engine import BatchResult, compile_batch, gm_host, lane_major, prepare

LANES = ("default", "gm_rate_x2")


def grid(quick: bool) -> list[dict]:
    """The sweep's points: dicts of s, d, causal, block, aics."""
    seqs = (512, 1024) if quick else (512, 1024, 2048, 4096)
    points = [
        dict(s=s, d=d, causal=c, block=128, aics=24) for s, d, c in itertools.product(seqs, (64, 128), (False, True))
    ]
    if not quick:
        for block, aics, causal in itertools.product((64, 128), (8, 16, 24), (False, True)):
            pt = dict(s=1024, d=64, causal=causal, block=block, aics=aics)
            if pt not in points:
                points.append(pt)
    return points


def build(ag, pt: dict):
    """The kernel of one point and the vector slice rows it uses: the model's default, halved
    while the AIV's UB buffers do not fit the 192 KiB UB (D = 128, causal, 128 x 128 blocks: the
    keep-mask buffer tips 64 rows over)."""
    vec_rows = None
    while True:
        try:
            kw = dict(s1=pt["s"], s2=pt["s"], d=pt["d"], block_s1=pt["block"], block_s2=pt["block"],
                      causal=pt["causal"], aics=pt["aics"], aivs=2 * pt["aics"], vec_rows=vec_rows)  # fmt: skip
            p = ag.build(0, **kw)
        except aj.ConfigError as e:
            if "UB buffers take" not in e.rule:
                raise
            vec_rows = (vec_rows or min(pt["block"], ag.VEC_SLICE_ELEMS // pt["block"])) // 2
            continue
        rows = next(op.vec.rows for _, ops in p.aivs for op in ops if op.kind == "vector")
        return p, rows


def measure(ag, pt: dict, check_up_to: int) -> dict:
    t0 = time.perf_counter()
    p, vec_rows = build(ag, pt)
    t1 = time.perf_counter()
    base = CostModel.for_chip(p.chip)
    costs = [base, dataclasses.replace(base, ddr_rate=2 * base.ddr_rate)]
    prep = prepare([p, p], schedule="timed", costs=costs)
    t2 = time.perf_counter()
    fn, args = compile_batch(prep)
    t3 = time.perf_counter()
    final = jax.block_until_ready(fn(*args))
    t4 = time.perf_counter()
    res = BatchResult(prep.shape, prep.lanes, {k: np.asarray(v) for k, v in gm_host(prep.shape, args[0], lane_major(prep.shape, final), p.gm.size).items()}, prep.seeds,
                      prep.costs, "timed")  # fmt: skip
    lanes = {}
    for i, name in enumerate(LANES):
        r = res[i]
        assert r.status == aj.Status.OK, (pt, r.status)
        u = aj.compute_utilisation(r).to_json()["summary"]
        lanes[name] = {"kernel_us": aj.compute_utilisation(r).kernel_us, "utilisation": u}
    t5 = time.perf_counter()
    numerics = None
    if pt["s"] <= check_up_to:
        want = ag.expected(p)
        numerics = {}
        for n in ("dq", "dk", "dv"):
            got = res[0].tensor(n).astype(np.float64)
            numerics[n] = float(np.linalg.norm(got - want[n]) / np.linalg.norm(want[n]))
    shape = prep.shape
    blocks = (pt["s"] // pt["block"]) ** 2
    if pt["causal"]:
        n = pt["s"] // pt["block"]
        blocks = n * (n + 1) // 2
    return {
        **pt,
        "aivs": 2 * pt["aics"],
        "vec_rows": vec_rows,
        "blocks": blocks,
        "steps": int(res.steps[0]),
        "lanes": lanes,
        "rel_l2_error": numerics,
        "engine_shape": {
            "aivs": len(shape.aiv_blocks),
            "ops_per_aiv": max(len(ops) for _, ops in p.aivs),
            "ops_padded": shape.max_ops,
            "ub": list(shape.ub),
            "gm_bytes": shape.gm_size,
        },
        "host_s": {"build": t1 - t0, "encode": t2 - t1, "compile": t3 - t2, "run": t4 - t3, "readout": t5 - t4},
    }


def plot(rows: list[dict], path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    main = [r for r in rows if r["block"] == 128 and r["aics"] == 24]
    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(17, 4.8))
    for (d, causal), color in zip(itertools.product((64, 128), (False, True)), ("C0", "C1", "C2", "C3"), strict=True):
        sel = sorted((r for r in main if r["d"] == d and r["causal"] == causal), key=lambda r: r["s"])
        if not sel:
            continue
        s = [r["s"] for r in sel]
        label = f"D={d}, {'causal' if causal else 'full'}"
        ax.plot(s, [r["lanes"]["default"]["kernel_us"] for r in sel], "o-", color=color, label=label)
        ax.plot(s, [r["lanes"]["gm_rate_x2"]["kernel_us"] for r in sel], "x--", color=color, alpha=0.6)
        bx.plot(s, [100 * r["lanes"]["default"]["utilisation"]["mean"] for r in sel], "o-", color=color, label=label)
        bx.plot(s, [100 * r["lanes"]["gm_rate_x2"]["utilisation"]["mean"] for r in sel], "x--", color=color, alpha=0.6)
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    seqs = sorted({r["s"] for r in main})
    for axis in (ax, bx):
        axis.set_xscale("log", base=2)
        axis.set_xticks(seqs)
        axis.set_xticklabels([str(s) for s in seqs])
        axis.set_xlabel("sequence length S1 = S2")
        axis.legend(fontsize=8)
    ax.set_yscale("log")
    ax.set_yticks([10, 20, 50, 100, 200, 500, 1000])
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel("estimated kernel time (µs); dashed: GM rate x2")
    ax.set_title("128 x 128 blocks, 24 AICs, 48 AIVs")
    bx.set_ylabel("mean AIC utilisation, busy / kernel (%)")
    bx.set_ylim(0, 100)
    side = [r for r in rows if r["s"] == 1024 and r["d"] == 64]
    labels = sorted({(r["block"], r["aics"]) for r in side})
    x = np.arange(len(labels))
    for i, causal in enumerate((False, True)):
        vals = [next((r["lanes"]["default"]["kernel_us"] for r in side if (r["block"], r["aics"]) == lab
                      and r["causal"] == causal), 0.0) for lab in labels]  # fmt: skip
        cx.bar(x + (i - 0.5) * 0.38, vals, 0.38, label="causal" if causal else "full")
    cx.set_xticks(x)
    cx.set_xticklabels([f"block {b}\n{a} AICs" for b, a in labels], fontsize=8)
    cx.set_ylabel("estimated kernel time (µs)")
    cx.set_title("S = 1024, D = 64")
    cx.legend(fontsize=8)
    fig.suptitle("attention backward (float16, timed schedule, JAX engine)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="S in {512, 1024}, 128 x 128 blocks, 24 AICs only")
    ap.add_argument("--out", type=Path, default=SCRATCH / "attention_sweep.json")
    ap.add_argument("--check-up-to", type=int, default=2048, help="largest S whose numerics are checked (float64)")
    args = ap.parse_args()
    ag = load_model_module("attention_grad")
    rows = []
    t0 = time.perf_counter()
    print(f"{'S':>5} {'D':>4} {'causal':>6} {'block':>5} {'AICs':>4} {'kernel us':>10} {'GMx2 us':>9} "
          f"{'AIC util':>8} {'imbal':>6} {'steps':>6} {'compile s':>9} {'run s':>6}")  # fmt: skip
    for pt in grid(args.quick):
        r = measure(ag, pt, args.check_up_to)
        rows.append(r)
        d, g = r["lanes"]["default"], r["lanes"]["gm_rate_x2"]
        print(f"{r['s']:>5} {r['d']:>4} {str(r['causal']):>6} {r['block']:>5} {r['aics']:>4} {d['kernel_us']:>10.1f} "
              f"{g['kernel_us']:>9.1f} {100 * d['utilisation']['mean']:>7.1f}% {d['utilisation']['imbalance']:>6.3f} "
              f"{r['steps']:>6} {r['host_s']['compile']:>9.2f} {r['host_s']['run']:>6.2f}", flush=True)  # fmt: skip
    payload = {
        "benchmark": "attention_sweep",
        "quick": args.quick,
        "lanes": {"default": "the chip's CostModel", "gm_rate_x2": "the same with ddr_rate doubled"},
        "dtype": "float16",
        "total_s": time.perf_counter() - t0,
        "machine": machine(),
        "rows": rows,
    }
    write(args.out, payload)
    plot(rows, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()

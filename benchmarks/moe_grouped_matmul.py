"""MoE grouped matmul under the timed schedule: load balance and the effect of merging.

For each skew of the expert token counts (Zipf exponent 0, 1.2, 2), each task-to-AIC assignment
(``expert``: expert e on AIC e % 4; ``balanced``: equal contiguous runs of tiles) and merging off /
on, one run of ``models/moe_grouped_matmul.py`` (2,048 rows, 8 experts, hidden = ffn = 128, 64-row
tiles, 4 AICs x 4 queues, seed 0) in the reference interpreter under ``schedule="timed"`` (the
JAX engine gives the same timing: tests/models/test_moe_grouped_matmul.py): kernel µs, received VALID messages, FAKEs
posted, per-AIC busy µs, the utilisation summary and the relative L2 error of Y against float64.

    python benchmarks/moe_grouped_matmul.py [--out benchmarks/results/moe_grouped_matmul.json]

Writes the JSON, prints a table and, when matplotlib is installed, writes a PNG next to the JSON.
The time figures are the cost model's (placeholders to be calibrated), so read them as relative.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _common import SCRATCH, load_model_module, machine, pyplot, write

import ascend_jax as aj

SKEWS = (0.0, 1.2, 2.0)
ASSIGNS = ("expert", "balanced")


def measure(moe, skew: float, assign: str, merge: bool) -> dict:
    program = moe.build(0, skew=skew, assign=assign, merge=merge)
    t0 = time.perf_counter()
    r = aj.run_reference(program, schedule="timed")
    wall = time.perf_counter() - t0
    assert r.status == aj.Status.OK, r.status
    u = aj.compute_utilisation(r)
    want = moe.expected(program)["y"]
    got = r.tensor("y").astype(np.float64)
    counts = moe.draw_counts(0, 8, 2048, skew)
    lay = moe.plan(counts, 64, 4, 4, assign, merge)
    return {
        "skew": skew,
        "assign": assign,
        "merge": merge,
        "counts": counts,
        "tiles": len(lay.tiles),
        "valid_received": sum(s == "VALID" for log in r.received.values() for _, _, s in log),
        "fake_posted": lay.fakes,
        "kernel_us": u.kernel_us,
        "aic_busy_us": [t.busy_us for t in u.aic.values()],
        "utilisation": u.to_json()["summary"],
        "rel_l2_error": float(np.linalg.norm(got - want) / np.linalg.norm(want)),
        "steps": int(r.steps),
        "wall_s": wall,
    }


def plot(rows: list[dict], path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [f"skew {s:g}\n{a}" for s in SKEWS for a in ASSIGNS]
    x = np.arange(len(labels))
    for i, merge in enumerate((False, True)):
        sel = [next(r for r in rows if (r["skew"], r["assign"], r["merge"]) == (s, a, merge)) for s in SKEWS
               for a in ASSIGNS]  # fmt: skip
        name = "merging on" if merge else "merging off"
        ax.bar(x + (i - 0.5) * 0.38, [r["kernel_us"] for r in sel], 0.38, label=name)
        bx.bar(x + (i - 0.5) * 0.38, [100 * r["utilisation"]["mean"] for r in sel], 0.38, label=name)
    for axis, ylabel in ((ax, "estimated kernel time (µs)"), (bx, "mean AIC utilisation, busy / kernel (%)")):
        axis.set_xticks(x)
        axis.set_xticklabels(labels, fontsize=8)
        axis.set_xlabel("expert-count skew (Zipf exponent) and task-to-AIC assignment")
        axis.set_ylabel(ylabel)
        axis.legend(fontsize=8, loc="upper center", ncol=2)
    bx.set_ylim(0, 115)
    ax.set_ylim(0, max(r["kernel_us"] for r in rows) * 1.15)
    ax.set_title("MoE grouped matmul: kernel time")
    bx.set_title("MoE grouped matmul: AIC utilisation")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=SCRATCH / "moe_grouped_matmul.json")
    args = ap.parse_args()
    moe = load_model_module("moe_grouped_matmul")
    rows = [measure(moe, s, a, m) for s in SKEWS for a in ASSIGNS for m in (False, True)]
    head = f"{'skew':>4} {'assign':<8} {'merge':<5} {'kernel us':>9} {'VALID':>5} {'FAKE':>4} {'mean':>5} "
    print(head + f"{'min':>5} {'max':>5} {'imbal':>6} {'AIV stall us':>12} {'rel L2':>8}")
    for r in rows:
        u = r["utilisation"]
        print(f"{r['skew']:>4g} {r['assign']:<8} {'on' if r['merge'] else 'off':<5} {r['kernel_us']:>9.3f} "
              f"{r['valid_received']:>5} {r['fake_posted']:>4} {u['mean']:>5.3f} {u['min']:>5.3f} {u['max']:>5.3f} "
              f"{u['imbalance']:>6.3f} {u['aiv_stall_mean_us']:>12.3f} {r['rel_l2_error']:>8.2e}")  # fmt: skip
    payload = {
        "benchmark": "moe_grouped_matmul",
        "engine": "reference",
        "schedule": "timed",
        "cost_model": "ascend_jax.CostModel() defaults (910B1 clock, 1850 MHz)",
        "model": {
            "experts": 8,
            "tokens": 2048,
            "hidden": 128,
            "ffn": 128,
            "tile_m": 64,
            "aics": 4,
            "queues_per_aic": 4,
            "dtype": "float16",
            "seed": 0,
        },  # fmt: skip
        "machine": machine(),
        "results": rows,
    }
    write(args.out, payload)
    plot(rows, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()

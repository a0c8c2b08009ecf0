"""Attention backward under the timed schedule: load balance and the effect of merging.

For the causal and the full case, each task-to-queue assignment (``round_robin``: block t to
queue t % aivs; ``balanced``: equal contiguous runs of blocks per AIC) and three merge settings
(``off``; ``merge``: S, dP, dQ, dK of adjacent columns, no barrier; ``merge+dv``: dV too, behind a
GroupBarrier per run), one run of ``models/attention_grad.py`` in the reference interpreter under
``schedule="timed"``: kernel µs, per-AIC busy / blocked / idle µs, per-AIV stalls, the utilisation
summary, blocks per AIC and per queue, VALID messages received, FAKEs posted, barrier calls and
the relative L2 error of dQ, dK, dV against the float64 numpy backward. Three shapes: S1 = S2 =
512 (36 causal blocks over 8 queues: the round robin leaves 4 extra blocks on AICs 0 and 1), 1024
(136 causal blocks: 17 per queue either way) and 256 (10 causal blocks: AIC 0 gets 4 of them).

    python benchmarks/attention_balance.py [--out benchmarks/results/attention_balance.json]

Writes the JSON, prints a table and, when matplotlib is installed, writes a PNG next to the JSON
(per-AIC busy / blocked / idle and per-AIV stall of the four causal / full x round robin /
balanced runs at S = 512 without merging, and kernel time and VALID messages of every run).
The time figures are the cost model's (placeholders to be calibrated), so read them as relative.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _common import SCRATCH, load_model_module, machine, pyplot, write

import ascend_jax as aj

#: the group and block shape of every run
SHAPE = dict(batch=1, heads=1, d=64, block_s1=64, block_s2=64, aics=4, aivs=8, dtype="float16")
SEQS = (512, 1024, 256)
ASSIGNS = ("round_robin", "balanced")
#: merge settings: label -> (merge, merge_dv)
MERGES = {"off": (False, False), "merge": (True, False), "merge+dv": (True, True)}


def measure(ag, s: int, causal: bool, assign: str, merge: str) -> dict:
    m, mdv = MERGES[merge]
    program = ag.build(0, s1=s, s2=s, causal=causal, assign=assign, merge=m, merge_dv=mdv, **SHAPE)
    t0 = time.perf_counter()
    r = aj.run_reference(program, schedule="timed")
    wall = time.perf_counter() - t0
    assert r.status == aj.Status.OK, r.status
    u = aj.compute_utilisation(r)
    want = ag.expected(program)
    errors = {}
    for name in ("dq", "dk", "dv"):
        got = r.tensor(name).astype(np.float64)
        errors[name] = float(np.linalg.norm(got - want[name]) / np.linalg.norm(want[name]))
    n = s // SHAPE["block_s1"]
    lay = ag.plan(1, 1, n, n, causal, SHAPE["aics"], SHAPE["aivs"], assign, m, (64, 64), mdv)
    return {
        "s": s,
        "causal": causal,
        "assign": assign,
        "merge": merge,
        "blocks": len(lay.blocks),
        "blocks_per_aic": lay.blocks_per_aic(),
        "blocks_per_queue": [len(q) for q in lay.queues],
        "valid_received": sum(st == "VALID" for log in r.received.values() for _, _, st in log),
        "fake_posted": lay.fakes,
        "barrier_calls": sum(op.kind in ("arrive", "barrier_wait") for _, ops in program.aivs for op in ops),
        "kernel_us": u.kernel_us,
        "aic": {str(c): vars(t) for c, t in u.aic.items()},
        "aiv": {str(b): vars(st) for b, st in u.aiv.items()},
        "utilisation": u.to_json()["summary"],
        "rel_l2_error": errors,
        "tolerance": ag.TOLERANCE[SHAPE["dtype"]],
        "steps": int(r.steps),
        "wall_s": wall,
    }


def plot(rows: list[dict], path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    (ax, bx), (cx, dx) = axes
    s = SEQS[0]
    cases = [(c, a) for c in (True, False) for a in ASSIGNS]
    sel = [
        next(r for r in rows if (r["s"], r["causal"], r["assign"], r["merge"]) == (s, c, a, "off")) for c, a in cases
    ]
    names = [f"{'causal' if c else 'full'}\n{a.replace('_', ' ')}" for c, a in cases]
    n_aic = len(sel[0]["aic"])
    width = 0.8 / n_aic
    colours = {"busy_us": "tab:blue", "blocked_us": "tab:orange", "idle_us": "tab:gray"}
    for ci, r in enumerate(sel):
        for k in range(n_aic):
            t = r["aic"][str(k)]
            x = ci + (k - (n_aic - 1) / 2) * width
            bottom = 0.0
            for key, colour in colours.items():
                ax.bar(x, t[key], width * 0.9, bottom=bottom, color=colour,
                       label=key[:-3] if ci == 0 and k == 0 else None)  # fmt: skip
                bottom += t[key]
            ax.text(x, bottom, str(k), ha="center", va="bottom", fontsize=6)
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels(names, fontsize=8)
    ax.set_ylabel("µs (busy + blocked + idle = kernel time)")
    ax.set_title(f"per-AIC time split, S1 = S2 = {s}, 4 AICs x 2 queues (bar labels: AIC)")
    ax.legend(fontsize=8)
    ax.set_ylim(0, max(r["kernel_us"] for r in sel) * 1.08)
    n_aiv = len(sel[0]["aiv"])
    width = 0.8 / n_aiv
    for ci, r in enumerate(sel):
        for b in range(n_aiv):
            st = r["aiv"][str(b)]
            x = ci + (b - (n_aiv - 1) / 2) * width
            bx.bar(x, st["wait_stall_us"], width * 0.9, color="tab:red", label="wait stall" if ci == b == 0 else None)
            bx.bar(x, st["alloc_stall_us"], width * 0.9, bottom=st["wait_stall_us"], color="tab:purple",
                   label="AllocMessage stall" if ci == b == 0 else None)  # fmt: skip
    bx.set_xticks(range(len(cases)))
    bx.set_xticklabels(names, fontsize=8)
    bx.set_ylabel("µs")
    bx.set_title("per-AIV stall (AIVs 0..7 left to right)")
    bx.legend(fontsize=8)
    bx.set_ylim(0, max(st["stall_us"] for r in sel for st in r["aiv"].values()) * 1.1)
    for axis, seq in ((cx, SEQS[0]), (dx, SEQS[1])):
        groups = [(c, a) for c in (True, False) for a in ASSIGNS]
        x = np.arange(len(groups))
        for i, merge in enumerate(MERGES):
            vals = [next(r for r in rows if (r["s"], r["causal"], r["assign"], r["merge"]) == (seq, c, a, merge))
                    for c, a in groups]  # fmt: skip
            bars = axis.bar(
                x + (i - 1) * 0.27,
                [r["kernel_us"] for r in vals],
                0.27,
                label={"off": "no merging", "merge": "merge", "merge+dv": "merge + dV (barrier)"}[merge],
            )
            for bar, r in zip(bars, vals, strict=True):
                axis.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), str(r["valid_received"]),
                          ha="center", va="bottom", fontsize=6)  # fmt: skip
        axis.set_xticks(x)
        axis.set_xticklabels([f"{'causal' if c else 'full'}\n{a.replace('_', ' ')}" for c, a in groups], fontsize=8)
        axis.set_ylabel("estimated kernel time (µs)")
        axis.set_title(f"kernel time, S1 = S2 = {seq} (bar labels: VALID messages)")
        axis.legend(fontsize=8, loc="upper left")
        axis.set_ylim(0, max(r["kernel_us"] for r in rows if r["s"] == seq) * 1.2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=SCRATCH / "attention_balance.json")
    args = ap.parse_args()
    ag = load_model_module("attention_grad")
    rows = [measure(ag, s, c, a, m) for s in SEQS for c in (True, False) for a in ASSIGNS for m in MERGES]
    print(f"{'S':>5} {'case':<6} {'assign':<11} {'merge':<8} {'kernel us':>9} {'blocks/AIC':<16} {'VALID':>5} "
          f"{'FAKE':>4} {'mean':>5} {'min':>5} {'max':>5} {'imbal':>6} {'AIV stall us':>12} {'max rel L2':>10}")  # fmt: skip
    for r in rows:
        u = r["utilisation"]
        print(f"{r['s']:>5} {'causal' if r['causal'] else 'full':<6} {r['assign']:<11} {r['merge']:<8} "
              f"{r['kernel_us']:>9.3f} {str(r['blocks_per_aic']):<16} {r['valid_received']:>5} {r['fake_posted']:>4} "
              f"{u['mean']:>5.3f} {u['min']:>5.3f} {u['max']:>5.3f} {u['imbalance']:>6.3f} "
              f"{u['aiv_stall_mean_us']:>12.3f} {max(r['rel_l2_error'].values()):>10.2e}")  # fmt: skip
    payload = {
        "benchmark": "attention_balance",
        "engine": "reference",
        "schedule": "timed",
        "cost_model": "ascend_jax.CostModel() defaults (910B1 clock, 1850 MHz)",
        "model": {**SHAPE, "seed": 0, "s1 = s2": list(SEQS)},
        "machine": machine(),
        "results": rows,
    }
    write(args.out, payload)
    plot(rows, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()

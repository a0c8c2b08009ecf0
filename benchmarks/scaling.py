"""Cost against queues, AICs and messages per AIV (protocol only, ``merge`` callback).

Kernel family: A AICs (blockStart 0, blockSize 2A) serving Q queues, every AIV posts ``m`` VALID
messages then quits. Three sweeps around the sample's shape (A = 6, Q = 48, m = 2): Q, A (with
Q = 2A) and m. For each point: the JAX engine's compiled loop at ``--batch`` lanes (best of 3,
compile apart), the plain sequential interpreter (``plain_interpreter.py``) and the reference
interpreter (one lane, best of 3), as received messages per second, plus steps per run and the
per-lane state size. ``ratio`` is the JAX loop over the plain interpreter.

    python benchmarks/scaling.py [--batch 256] [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
from _common import SCRATCH, best_of, device_kind, machine, pyplot, write
from plain_interpreter import run_plain

from ascend_jax import CubeGroupKernel, run_reference
from ascend_jax.cube_group import engine


def kernel(aics: int, queues: int, msgs: int):
    k = CubeGroupKernel(chip="910B1", name=f"A{aics}-Q{queues}-m{msgs}")
    g = k.create_cube_res_group("g", 0, 2 * aics, queues, "merge")
    for q in range(queues):
        aiv = k.aiv(q)
        aiv.assign_queue(g, q)
        for _ in range(msgs):
            aiv.post(g, {"skipCnt": 0})
        aiv.quit(g)
    return k.compile()


def measure(program, batch: int) -> dict:
    ref = run_reference(program)
    msgs = sum(len(v) for v in ref.received.values())
    t_ref = best_of(lambda: run_reference(program), 3)
    t_plain = best_of(lambda: run_plain(program), 3)
    prep = engine.prepare([program] * batch, schedule="lockstep", seeds=list(range(batch)))
    t0 = time.perf_counter()
    compiled, args = engine.compile_batch(prep)
    compile_s = time.perf_counter() - t0
    t_eng = best_of(lambda: jax.block_until_ready(compiled(*args)), 3)
    return {
        "steps": ref.steps,
        "messages_per_lane": msgs,
        "plain_messages_per_s": msgs / t_plain,
        "reference_messages_per_s": msgs / t_ref,
        "jax_messages_per_s": batch * msgs / t_eng,
        "ratio": (batch * msgs / t_eng) / (msgs / t_plain),
        "jax_compile_s": compile_s,
        "lane_bytes": engine.lane_bytes(program),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(SCRATCH / "scaling.json"))
    args = ap.parse_args()
    sweeps = {
        "queues": [(6, q, 2) for q in ([6, 24, 48] if args.quick else [6, 12, 24, 36, 48])],
        "aics": [(a, 2 * a, 2) for a in ([1, 6, 24] if args.quick else [1, 2, 4, 8, 12, 24])],
        "messages_per_aiv": [(6, 48, m) for m in ([1, 4, 16] if args.quick else [1, 2, 4, 8, 16, 32])],
    }
    rows = []
    for sweep, points in sweeps.items():
        for a, q, m in points:
            r = {"sweep": sweep, "aics": a, "queues": q, "messages_per_aiv": m, **measure(kernel(a, q, m), args.batch)}
            rows.append(r)
            print(f"{sweep:17s} A={a:2d} Q={q:2d} m={m:2d}: steps {r['steps']:4d}  plain {r['plain_messages_per_s']:10,.0f}  ref {r['reference_messages_per_s']:10,.0f}"
                  f"  jax {r['jax_messages_per_s']:12,.0f} msgs/s  ratio {r['ratio']:6.1f}  lane {r['lane_bytes']} B")  # fmt: skip
    out = Path(args.out)
    write(out, {"meta": {**machine(), "device": device_kind(), "batch": args.batch}, "results": rows})
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, (sweep, key) in zip(
        axes, (("queues", "queues"), ("aics", "aics"), ("messages_per_aiv", "messages_per_aiv")), strict=True
    ):
        pts = [r for r in rows if r["sweep"] == sweep]
        xs = [r[key] for r in pts]
        ax.plot(xs, [r["jax_messages_per_s"] for r in pts], marker="o", label=f"jax, batch {args.batch}")
        ax.plot(xs, [r["plain_messages_per_s"] for r in pts], marker="^", label="plain Python")
        ax.plot(xs, [r["reference_messages_per_s"] for r in pts], marker="s", label="reference")
        ax.set_xlabel(key)
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("received messages / s")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print(f"wrote {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()

"""Compute overhead: the matmul-heavy sample model in the engine vs a plain batched jnp matmul of
exactly the same tiles.

Workload: ``models/cube_group_sample.py`` (6 AICs, 48 queues, 72 tiles of [64 x 128] x [128 x 64]
half -> float per lane: 48 single tasks and 6 merges of 4, the last of each merge 40 rows).
Baseline: one ``jit``-ted plain jnp matmul of the same 72 tiles per lane (every tile's rows
stacked into one 2-D product per baseK = 64 chunk, fp32 accumulation, the two chunks added in
order, as the engine does), on arrays already in memory. Ratios are measured in one run, compile excluded;
baseline and engine loop are timed alternately, best of 7 each (``simulate``: best of 3):

* ``ratio_engine``: the engine's compiled loop (protocol + GM gathers + compute + stores) / baseline;
* ``ratio_end_to_end``: ``simulate`` (encode + loop + per-lane results) / baseline.

    python benchmarks/compute_overhead.py [--lanes 1 8 32] [--out FILE]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from _common import SCRATCH, best_of, device_kind, load_model_module, machine, pyplot, write

from ascend_jax.cube_group import engine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lanes", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--out", default=str(SCRATCH / "compute_overhead.json"))
    args = ap.parse_args()
    mod = load_model_module("cube_group_sample")
    program = mod.build()
    a = program.gm.read("a")
    b = program.gm.read("b")
    m_rows = np.full(mod.TILES, mod.M)
    m_rows[mod.QUEUES + mod.MERGE - 1 :: mod.MERGE] = mod.LAST_TAIL_M  # the merged last tiles: 40 rows
    rows = []

    @jax.jit
    def plain(a, b):
        # the fastest plain form measured on XLA:CPU: every tile's rows stacked into one 2-D
        # product per baseK chunk (B is shared), inputs widened to fp32 (fp16 products are exact
        # there), the two chunk partials added in order; a 4-D einsum with fp16 inputs ran ~1.8x slower
        rows = a.reshape(-1, a.shape[-1]).astype(jnp.float32)
        b32 = b.astype(jnp.float32)
        out = rows[:, :64] @ b32[:64] + rows[:, 64:] @ b32[64:]
        return out.reshape(*a.shape[:-1], b.shape[-1])

    for lanes in args.lanes:
        tiles = jnp.asarray(np.concatenate([a] * lanes))
        bb = jnp.asarray(b)
        jax.block_until_ready(plain(tiles, bb))
        prep = engine.prepare([program] * lanes, schedule="lockstep", seeds=list(range(lanes)))
        compiled, dev_args = engine.compile_batch(prep)
        jax.block_until_ready(compiled(*dev_args))
        t_plain = t_eng = float("inf")
        for _ in range(7):  # alternated, best of each: both see the same load
            t_plain = min(t_plain, best_of(lambda t=tiles, b_=bb: jax.block_until_ready(plain(t, b_)), 1))
            t_eng = min(t_eng, best_of(lambda c=compiled, a=dev_args: jax.block_until_ready(c(*a)), 1))
        engine.simulate([program] * lanes)
        t_e2e = best_of(lambda n=lanes: engine.simulate([program] * n), 3)
        flops = 2 * lanes * int(m_rows.sum()) * mod.N * mod.K
        rows.append(
            {
                "lanes": lanes,
                "tiles": lanes * mod.TILES,
                "plain_s": t_plain,
                "engine_s": t_eng,
                "end_to_end_s": t_e2e,
                "ratio_engine": t_eng / t_plain,
                "ratio_end_to_end": t_e2e / t_plain,
                "engine_gflops": flops / t_eng / 1e9,
                "plain_gflops": 2 * lanes * mod.TILES * mod.M * mod.N * mod.K / t_plain / 1e9,
            }
        )
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in rows[-1].items()})
    out = Path(args.out)
    write(out, {"meta": {**machine(), "device": device_kind(), "workload": "cube_group_sample"}, "results": rows})
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [r["lanes"] for r in rows]
    ax.plot(xs, [r["ratio_engine"] for r in rows], marker="o", label="engine loop / plain matmul")
    ax.plot(xs, [r["ratio_end_to_end"] for r in rows], marker="s", label="simulate / plain matmul")
    ax.axhline(1.3, color="k", ls="--", lw=1, label="target 1.3x")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("lanes")
    ax.set_ylabel("time ratio")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print(f"wrote {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()

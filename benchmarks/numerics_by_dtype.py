"""Relative L2 error of the simulated Matmul per Atlas A2 dtype combination.

For each combination: 6 AICs (blockSize 12), 12 queues, every queue posts one [64 x 256] x
[256 x 64] task (baseK = 64, so four K chunks) with a bias, A/B/bias uniform in [-1, 1); the JAX
engine's C is compared with the float64 reference (numerics report). A second row per
combination uses atomic add: all 12 tasks add into one C tile.

    python benchmarks/numerics_by_dtype.py [--out benchmarks/results/numerics_by_dtype.json]

Writes the JSON and, when matplotlib is installed, a PNG next to it.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import jax

from ascend_jax import CUBE_MATMUL_MSG, CubeGroupKernel, numerics_report, simulate

COMBOS = [
    ("float16", "float32", "float32"),
    ("float16", "float16", "float16"),
    ("float16", "bfloat16", "float32"),
    ("bfloat16", "float32", "float32"),
    ("bfloat16", "bfloat16", "bfloat16"),
    ("bfloat16", "float16", "float32"),
    ("float32", "float32", "float32"),
    ("float32", "float16", "float32"),
    ("float32", "bfloat16", "float32"),
    ("int8", "int32", "int32"),
]
M, N, K, TASKS = 64, 64, 256, 12


def build(ab: str, c: str, bias: str, atomic: bool):
    kern = CubeGroupKernel(name=f"{ab}->{c}{' atomic' if atomic else ''}")
    a = kern.alloc("a", (TASKS, M, K), ab, "random", 1)
    b = kern.alloc("b", (TASKS, K, N), ab, "random", 2)
    cc = kern.alloc("c", (1 if atomic else TASKS, M, N), c)
    bias_t = kern.alloc("bias", (N,), bias, "random", 3)
    g = kern.create_cube_res_group(
        "g", 0, 12, TASKS, "matmul", CUBE_MATMUL_MSG,
        matmul=dict(a=ab, b=ab, c=c, bias=bias),
        tiling=dict(M=M, N=N, Ka=K, Kb=K, singleCoreM=M, singleCoreN=N, singleCoreK=K, baseM=64, baseN=64, baseK=64),
    )  # fmt: skip
    isz = a.dtype.itemsize
    for q in range(TASKS):
        aiv = kern.aiv(q)
        aiv.assign_queue(g, q)
        aiv.post(
            g,
            {
                "aAddr": a.addr + q * M * K * isz,
                "bAddr": b.addr + q * K * N * isz,
                "cAddr": cc.addr + (0 if atomic else q * M * N * cc.dtype.itemsize),
                "biasAddr": bias_t.addr,
                "isAtomic": int(atomic),
            },
        )
        aiv.quit(g)
    return kern.compile()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--out", default=str(Path(tempfile.gettempdir()) / "ascend_jax_benchmarks" / "numerics_by_dtype.json")
    )
    args = ap.parse_args()
    rows = []
    for ab, c, bias in COMBOS:
        for atomic in (False, True):
            p = build(ab, c, bias, atomic)
            t0 = time.perf_counter()
            r = simulate(p)[0]
            wall = time.perf_counter() - t0
            e = numerics_report(p, r)["c"]
            rows.append(
                {
                    "combination": f"{ab}x{ab}->{c}",
                    "bias": bias,
                    "atomic_add_of_12": atomic,
                    "status": r.status.label,
                    "rel_l2_error": e["rel_l2_error"],
                    "max_abs_error": e["max_abs_error"],
                    "tolerance": e["tolerance"],
                    "ok": e["ok"],
                    "wall_s": wall,
                }
            )
            print(
                f"{rows[-1]['combination']:28s} atomic={atomic!s:5s} rel_l2={e['rel_l2_error']:.3e} tol={e['tolerance']:.3e} ok={e['ok']}"
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.platform(), "processor": platform.processor(), "jax": jax.__version__,
            "backend": jax.default_backend(), "shape": {"M": M, "N": N, "K": K, "baseK": 64, "tasks": TASKS}}  # fmt: skip
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    print(f"wrote {out}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install -e '.[bench]')")
        return
    fig, ax = plt.subplots(figsize=(10, 4))
    labels = [f"{r['combination']}{' +atomic' if r['atomic_add_of_12'] else ''}" for r in rows]
    vals = [max(r["rel_l2_error"], 1e-12) for r in rows]
    ax.bar(range(len(rows)), vals, color=["tab:orange" if r["atomic_add_of_12"] else "tab:blue" for r in rows])
    ax.scatter(
        range(len(rows)), [max(r["tolerance"], 1e-12) for r in rows], marker="_", color="k", s=200, label="tolerance"
    )
    ax.set_yscale("log")
    ax.set_xticks(range(len(rows)), labels, rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("relative L2 error vs float64")
    ax.legend()
    fig.tight_layout()
    png = out.with_suffix(".png")
    fig.savefig(png, dpi=120)
    print(f"wrote {png}")


if __name__ == "__main__":
    main()

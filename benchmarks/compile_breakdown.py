"""Where the engine's compile time goes: tracing, lowering, XLA; the kernels and LLVM IR it makes.

    python benchmarks/compile_breakdown.py [--workload attention|protocol|both] [--rounds 3] [--out FILE]

Each round runs every workload in a fresh Python process (nothing traced or compiled before),
which times the three stages of the compiled loop's first compile, each in wall and CPU seconds
(user + sys of the process, every thread):

* ``trace``: ``jax.jit(...).trace(...)``, Python running the engine's step under ``jit`` and
  ``vmap`` into a jaxpr (``jaxpr_eqns``: its equations, sub-jaxprs included);
* ``lower``: the traced function to StableHLO (``stablehlo_bytes``: its text);
* ``compile``: XLA's compile of that module for this machine (HLO passes, fusion, LLVM).

A last process compiles each workload once more with XLA's dump on (into a temporary folder,
removed after) to count the loop module's kernels (``kernels``: LLVM modules XLA emitted) and the
bytes of their optimised LLVM IR (``llvm_ir_bytes``); its times are not used (the dump slows it).
Then two processes share a fresh JAX persistent compilation cache (``JAX_COMPILATION_CACHE_DIR``
in a temporary folder, ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0``, removed after): the
first fills it, the second's stages are ``from_cache`` (XLA's compile becomes loading the
executable; tracing and lowering stay), the compile per shape of a process that runs a shape
some earlier process compiled (``cache_bytes``: the folder's size).

Workloads: ``attention``, the target point of ``attention_throughput.py`` (``attention_grad``,
S = 2,048, D = 64, full mask, 128 x 128 blocks on 24 AICs, 8 lanes of one program); ``protocol``,
the default workload of ``protocol_throughput.py`` at 4,096 lanes. Each compiles the loop for
the chunk ``simulate`` runs (``engine.default_chunk``: on a 2-core CPU 4 and 2,048 lanes, one
chunk per thread). The issue's target is a
compile of at most 5 s per shape (trace + lower + compile). Writes JSON to ``--out`` (default:
under the system's temporary directory) with every round and the best of each stage.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = Path(tempfile.gettempdir()) / "ascend_jax_benchmarks" / "compile_breakdown.json"
WORKLOADS = ("attention", "protocol")
STAGES = ("trace", "lower", "compile")


def _prepared(workload: str):
    """(the engine's jitted loop, its arguments: static shape first) of ``workload``."""
    from ascend_jax.cube_group import engine

    if workload == "attention":
        from _common import load_model_module
        from attention_sweep import build

        program, _ = build(load_model_module("attention_grad"), dict(s=2048, d=64, causal=False, block=128, aics=24))
        lanes = 8
    else:
        from protocol_throughput import workload as protocol_workload

        program, lanes = protocol_workload(None), 4096
    prep = engine.prepare([program] * lanes, seeds=list(range(lanes)))
    return engine.loop_function(prep, engine.default_chunk(prep))  # the chunk simulate() compiles


def _eqns(jaxpr) -> int:
    """Equations of a jaxpr and of every jaxpr inside it."""
    from jax.extend.core import ClosedJaxpr, Jaxpr

    n = 0
    for eqn in jaxpr.eqns:
        n += 1
        for v in eqn.params.values():
            for sub in v if isinstance(v, (tuple, list)) else (v,):
                if isinstance(sub, ClosedJaxpr):
                    n += _eqns(sub.jaxpr)
                elif isinstance(sub, Jaxpr):
                    n += _eqns(sub)
    return n


def child(workload: str) -> dict:
    """One fresh process: the stages of ``workload``'s first compile."""
    sys.path.insert(0, str(HERE))
    import jax
    from _common import cpu_s

    import ascend_jax  # noqa: F401  (before the backend starts, which reads its XLA_FLAGS option)

    fn, args = _prepared(workload)
    jax.block_until_ready(jax.numpy.zeros(1) + 1)  # the backend's start is no stage
    out: dict = {"workload": workload}

    def stage(name: str, f):
        c0, t0 = cpu_s(), time.perf_counter()
        r = f()
        out[name] = {"wall_s": time.perf_counter() - t0, "cpu_s": cpu_s() - c0}
        return r

    traced = stage("trace", lambda: fn.trace(*args))
    lowered = stage("lower", traced.lower)
    stage("compile", lowered.compile)
    out["jaxpr_eqns"] = _eqns(traced.jaxpr.jaxpr)
    out["stablehlo_bytes"] = len(lowered.as_text())
    return out


def _run_child(workload: str, env: dict | None = None) -> dict:
    r = subprocess.run(
        [sys.executable, __file__, "--child", workload], capture_output=True, text=True, env=env, check=False
    )
    if r.returncode != 0:
        raise RuntimeError(f"the {workload} process failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def ir_size(workload: str) -> dict:
    """Kernels and optimised LLVM IR bytes of ``workload``'s loop module (XLA's dump)."""
    with tempfile.TemporaryDirectory(prefix="compile_breakdown_dump_") as d:
        env = dict(os.environ)
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_dump_to={d}").strip()
        _run_child(workload, env)
        lls = [p for p in Path(d).glob("*jit__run*ir-with-opt.ll")]
        return {"kernels": len(lls), "llvm_ir_bytes": sum(p.stat().st_size for p in lls)}


def from_cache(workload: str) -> dict:
    """The stages of a process whose loop is in JAX's persistent compilation cache (a fresh cache
    filled by one process first), and the cache's bytes."""
    with tempfile.TemporaryDirectory(prefix="compile_breakdown_cache_") as d:
        env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=d, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
        _run_child(workload, env)
        second = _run_child(workload, env)
        size = sum(p.stat().st_size for p in Path(d).rglob("*") if p.is_file())
    return {**{s: second[s] for s in STAGES}, "cache_bytes": size}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", choices=(*WORKLOADS, "both"), default="both")
    ap.add_argument("--rounds", type=int, default=3, help="fresh processes per workload (default 3)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help=f"JSON results (default {DEFAULT_OUT})")
    ap.add_argument("--child", choices=WORKLOADS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child)))
        return 0
    if args.rounds < 1:
        print(f"error: --rounds = {args.rounds}: must be at least 1; give e.g. --rounds 3", file=sys.stderr)
        return 2
    sys.path.insert(0, str(HERE))
    from _common import machine, write

    names = WORKLOADS if args.workload == "both" else (args.workload,)
    rounds = {w: [] for w in names}
    for r in range(args.rounds):  # alternating workloads, so a busy moment does not fall on one
        for w in names if r % 2 == 0 else names[::-1]:
            rounds[w].append(_run_child(w))
            row = rounds[w][-1]
            print(f"{w:9s} round {r + 1}: " + ", ".join(
                f"{s} {row[s]['wall_s']:.2f} s ({row[s]['cpu_s']:.2f} CPU)" for s in STAGES))  # fmt: skip
    results = {}
    for w in names:
        best = {s: min((x[s] for x in rounds[w]), key=lambda t: t["wall_s"]) for s in STAGES}
        total = sum(best[s]["wall_s"] for s in STAGES)
        results[w] = {
            "best": best,
            "total_wall_s": total,
            "total_cpu_s": sum(best[s]["cpu_s"] for s in STAGES),
            "jaxpr_eqns": rounds[w][0]["jaxpr_eqns"],
            "stablehlo_bytes": rounds[w][0]["stablehlo_bytes"],
            **ir_size(w),
            "from_cache": from_cache(w),
            "rounds": rounds[w],
        }
        x = results[w]
        c = x["from_cache"]
        print(f"{w}: best stages sum to {total:.2f} s wall ({x['total_cpu_s']:.2f} CPU); {x['jaxpr_eqns']:,} jaxpr "
              f"equations, {x['kernels']} kernels, {x['llvm_ir_bytes'] / 1e6:.2f} MB of LLVM IR; from JAX's "
              f"compilation cache: " + ", ".join(f"{s} {c[s]['wall_s']:.2f} s" for s in STAGES)
              + f" ({c['cache_bytes'] / 1e3:.0f} kB cached)")  # fmt: skip
    write(Path(args.out), {"meta": {**machine(), "rounds": args.rounds, "load_average": list(os.getloadavg()),
                                    "method": __doc__}, "results": results})  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

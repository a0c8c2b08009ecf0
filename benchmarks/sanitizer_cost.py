"""What the sanitizer costs: a sanitized run of every shipped cube-group model against the same run
without it (issue 23 asks for at most 2x).

Reference interpreter (one lane; the engine ``--engine auto`` picks for one lane): ``run_reference``
against ``sanitize(cache=False)`` (one observed run of the same schedule plus the four checks, every
call), under ``lockstep`` and ``timed``, best of ``--repeats`` wall times, CPU seconds of those calls
beside them.

With ``--jax``, the JAX engine too (the analysis always runs on the reference's event log): a
two-lane ``simulate`` against the same plus ``sanitize`` of its program, three ways:

* ``first_*``: both cold (JAX's compilation cache cleared, the report not cached), as every
  command-line run is (one call each);
* ``sanitized_*`` (the row's main figures): the compiled run repeated, the report cached, as a
  Python loop running one program again pays it;
* ``sweep_*``: the compiled run of the program with new data in one input tensor, sanitized: the
  report cache leaves tensor data out of its key (the observed run reads none), so a sweep over
  inputs hits;
* ``miss_*``: the compiled run with a report not cached (a program whose batch shape was compiled
  before but whose ops or layout were never sanitized).

    python benchmarks/sanitizer_cost.py [--repeats 5] [--jax] [--out benchmarks/results/sanitizer_cost.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import copy  # noqa: E402

import numpy as np  # noqa: E402
from _common import SCRATCH, cpu_s, machine, write  # noqa: E402

from ascend_jax import CubeGroupProgram, available_models, load_model, run_reference, sanitize  # noqa: E402


def data_variants(program: CubeGroupProgram, n: int) -> list[CubeGroupProgram]:
    """``n`` copies of ``program``, each with new values in its first tensor that has an init (plain
    copies for a program without one)."""
    name = next((t for t, given in program.gm.init_given.items() if given), None)
    out = []
    for i in range(n):
        v = copy.deepcopy(program)
        if name is not None:
            v.gm.write(name, np.random.default_rng(i).uniform(-1, 1, program.gm.tensors[name].shape))
        out.append(v)
    return out


def cube_models() -> list[str]:
    """The shipped cube-group models (the comm models are outside the sanitizer)."""
    return available_models(kind="cube_group")


def measure(fn, repeats: int) -> tuple[float, float]:
    """(best wall seconds, CPU seconds of that same call) over ``repeats`` calls, or more for a
    call under 10 ms (at least 0.2 s of calls: short runs are noisy on a shared machine)."""
    best = (float("inf"), 0.0)
    spent, n = 0.0, 0
    while n < repeats or spent < 0.2:
        n += 1
        c0, t0 = cpu_s(), time.perf_counter()
        fn()
        wall, cpu = time.perf_counter() - t0, cpu_s() - c0
        spent += wall
        best = min(best, (wall, cpu))
    return best


def row(name: str, engine: str, schedule: str, plain: tuple[float, float], sanitized: tuple[float, float], **extra):
    return {
        "model": name,
        "engine": engine,
        "schedule": schedule,
        "plain_wall_s": round(plain[0], 6),
        "plain_cpu_s": round(plain[1], 6),
        "sanitized_wall_s": round(sanitized[0], 6),
        "sanitized_cpu_s": round(sanitized[1], 6),
        "ratio_wall": round(sanitized[0] / plain[0], 3),
        **extra,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--jax", action="store_true", help="also the JAX engine (two lanes, random schedule)")
    ap.add_argument("--models", default=None, help="comma-separated subset of the cube-group models")
    ap.add_argument("--out", type=Path, default=SCRATCH / "sanitizer_cost.json")
    args = ap.parse_args(argv)
    names = args.models.split(",") if args.models else cube_models()
    rows = []
    for name in names:
        program = load_model(name)[0]
        assert isinstance(program, CubeGroupProgram), name
        for schedule in ("lockstep", "timed"):
            run_reference(program, schedule=schedule)  # warm caches (imports, numpy paths)
            sanitize(program, schedule=schedule)
            plain = measure(lambda p=program, s=schedule: run_reference(p, schedule=s), args.repeats)
            san = measure(lambda p=program, s=schedule: sanitize(p, schedule=s, cache=False), args.repeats)
            findings = len(sanitize(program, schedule=schedule).findings)
            rows.append(row(name, "reference", schedule, plain, san, findings=findings))
            print(f"{name:20s} reference {schedule:8s} plain {plain[0] * 1e3:8.2f} ms  "
                  f"sanitized {san[0] * 1e3:8.2f} ms  x{san[0] / plain[0]:.2f}")  # fmt: skip
        if args.jax:
            import jax

            from ascend_jax import simulate

            def jax_run(p=program):
                simulate([p, p], schedule="random", seeds=7)

            def jax_sanitized(p=program):
                simulate([p, p], schedule="random", seeds=7)
                sanitize(p, schedule="random", seed=7)

            variants = data_variants(program, 4)
            turn = iter(range(10**9))

            def jax_sweep(vs=variants, turn=turn):
                v = vs[next(turn) % len(vs)]
                simulate([v, v], schedule="random", seeds=7)
                sanitize(v, schedule="random", seed=7)

            def jax_sweep_plain(vs=variants, turn=turn):
                v = vs[next(turn) % len(vs)]
                simulate([v, v], schedule="random", seeds=7)

            def jax_miss(p=program):
                simulate([p, p], schedule="random", seeds=7)
                sanitize(p, schedule="random", seed=7, cache=False)

            cold = []
            for fn in (jax_miss, jax_run):  # each cold: compiled from scratch, not cached (the sanitized
                jax.clear_caches()  # one first: what the first call leaves warm favours the plain one)
                c0, t0 = cpu_s(), time.perf_counter()
                fn()
                cold.insert(0, (time.perf_counter() - t0, cpu_s() - c0))
            plain = measure(jax_run, args.repeats)  # compiled: the steady-state run
            san = measure(jax_sanitized, args.repeats)
            miss = measure(jax_miss, args.repeats)
            sweep_plain = measure(jax_sweep_plain, args.repeats)
            sweep = measure(jax_sweep, args.repeats)
            rows.append(
                row(
                    name,
                    "jax",
                    "random",
                    plain,
                    san,
                    lanes=2,
                    miss_wall_s=round(miss[0], 6),
                    miss_cpu_s=round(miss[1], 6),
                    ratio_miss_wall=round(miss[0] / plain[0], 3),
                    ratio_miss_cpu=round(miss[1] / plain[1], 3),
                    sweep_plain_wall_s=round(sweep_plain[0], 6),
                    sweep_plain_cpu_s=round(sweep_plain[1], 6),
                    sweep_wall_s=round(sweep[0], 6),
                    sweep_cpu_s=round(sweep[1], 6),
                    ratio_sweep_wall=round(sweep[0] / sweep_plain[0], 3),
                    first_plain_wall_s=round(cold[0][0], 3),
                    first_plain_cpu_s=round(cold[0][1], 3),
                    first_sanitized_wall_s=round(cold[1][0], 3),
                    first_sanitized_cpu_s=round(cold[1][1], 3),
                    ratio_first_wall=round(cold[1][0] / cold[0][0], 3),
                )  # fmt: skip
            )
            print(f"{name:20s} jax       random   plain {plain[0] * 1e3:8.2f} ms  sanitized {san[0] * 1e3:8.2f} ms  "
                  f"x{san[0] / plain[0]:.2f}; new data x{sweep[0] / sweep_plain[0]:.2f}; "
                  f"not cached x{miss[0] / plain[0]:.2f} (CPU x{miss[1] / plain[1]:.2f}); "
                  f"cold {cold[0][0]:.2f} s / {cold[1][0]:.2f} s")  # fmt: skip
    ratios = [max(r["ratio_wall"], r.get("ratio_first_wall", 0), r.get("ratio_sweep_wall", 0)) for r in rows]
    payload = {
        "benchmark": "sanitizer_cost",
        "machine": machine(),
        "repeats": args.repeats,
        "rows": rows,
        "max_ratio_wall": max(ratios),
        "max_ratio_miss_wall": max([r["ratio_miss_wall"] for r in rows if "ratio_miss_wall" in r], default=None),
        "note": "best of `repeats` wall times per row (more for calls under 10 ms; the machine is shared); "
        "cpu_s is the CPU time of that same call. Reference rows: sanitize(cache=False), every call analysed. "
        "JAX rows: the compiled two-lane run against the same plus sanitize of its program, the report cached "
        "(sanitized_*), the program with new data in an input (sweep_*: the cache key leaves data out), or not "
        "cached (miss_*), and both cold with JAX compilation included (first_*, one call each; the command "
        "line's case). max_ratio_wall: of the cached, new-data and cold ratios; max_ratio_miss_wall apart.",
    }
    write(args.out, payload)
    return payload


if __name__ == "__main__":
    main()

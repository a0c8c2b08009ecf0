"""The ``ascend-jax`` command.

``ascend-jax run [FILE.toml | --model NAME] [--json] [--engine jax|reference] [--batch N]
[--seed S] [--max-steps N] [--schedule lockstep|random] [--atomic-order fixed|random]
[--dump DIR]`` runs a scenario (the built-in default without FILE) or a model;
``ascend-jax check FILE.toml`` validates one without running it.

Programs with matmul groups get a numerics report (``"numerics"`` in the JSON): every tensor a
matmul wrote against the float64 reference, plus the model's own numpy answer when it has one.

Exit codes: 0 the run ended ok (every lane) and every numerics entry is ok; 3 a run ended in
deadlock, max_steps or a protocol error, or a numerics check failed; 2 the scenario is invalid
(the message names the field, value, rule and fix).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter

from ascend_jax.aicpu.tasks import TaskProgram
from ascend_jax.cube_group.engine import simulate
from ascend_jax.cube_group.reference import run_reference
from ascend_jax.cube_group.result import CubeGroupResult
from ascend_jax.cube_group.status import Status
from ascend_jax.errors import ConfigError
from ascend_jax.models import load_model
from ascend_jax.numerics import compare, numerics_report
from ascend_jax.scenario import builtin_scenario_path, load_scenario

EXIT_OK, EXIT_INVALID, EXIT_NOT_OK = 0, 2, 3


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ascend-jax", description="Simulate Ascend CubeResGroupHandle kernels in JAX.")
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a scenario (the built-in default if no file is given)")
    run.add_argument("file", nargs="?", help="scenario .toml file")
    run.add_argument("--json", action="store_true", help="print the result JSON (DESIGN.md contract)")
    run.add_argument("--engine", choices=["jax", "reference"], default="jax")
    run.add_argument("--batch", type=int, default=1, help="number of lanes (seeds seed..seed+N-1)")
    run.add_argument("--seed", type=int, default=0, help="seed of the first lane's random schedule")
    run.add_argument("--max-steps", type=int, default=None, help="override the scenario's max_steps")
    run.add_argument(
        "--schedule",
        choices=["lockstep", "random", "timed"],
        default="lockstep",
        help="timed: events in cycle order by the cost model; the JSON gets a 'timing' section",
    )
    run.add_argument("--model", help="run models/NAME.py or models/NAME.toml instead of a file")
    run.add_argument(
        "--atomic-order",
        choices=["fixed", "random"],
        default="fixed",
        help="order in which a step's matmul results reach GM (random: per lane and step)",
    )
    run.add_argument("--dump", metavar="DIR", help="write every GM tensor of lane 0 to DIR/<name>.npy")
    run.add_argument("--chunk", type=int, default=None, help="lanes per compiled call (default: by memory budget)")
    run.add_argument("--ranks", type=int, default=None, help="ranks of a comm model (ring collectives: 2..8)")
    check = sub.add_parser("check", help="validate a scenario without running it")
    check.add_argument("file")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "check":
            program = load_scenario(args.file)
            print(
                f"{args.file}: valid ({len(program.groups)} groups, {len(program.aivs)} AIVs, {len(program.aics)} AICs)"
            )
            return EXIT_OK
        if args.batch < 1:
            raise ConfigError("--batch", args.batch, "must be >= 1")
        if args.max_steps is not None and args.max_steps < 1:
            raise ConfigError("--max-steps", args.max_steps, "must be >= 1")
        expected = None
        if args.model:
            if args.file:
                raise ConfigError("--model", args.model, "give either a scenario file or --model, not both")
            program, expected, path = load_model(args.model, max_steps=args.max_steps, ranks=args.ranks)
            if isinstance(program, TaskProgram):
                return _run_comm(program, expected, args)
        else:
            path = args.file or builtin_scenario_path()
            program = load_scenario(path, max_steps=args.max_steps)
    except ConfigError as e:
        print(f"invalid scenario: {e}", file=sys.stderr)
        return EXIT_INVALID
    seeds = [args.seed + i for i in range(args.batch)]
    t0 = time.perf_counter()
    if args.engine == "reference":
        if args.atomic_order != "fixed":
            print("invalid scenario: --atomic-order random needs --engine jax", file=sys.stderr)
            return EXIT_INVALID
        results = [run_reference(program, args.schedule, s) for s in seeds]
    else:
        results = simulate([program] * args.batch, schedule=args.schedule, seeds=seeds, atomic_order=args.atomic_order)
    elapsed = time.perf_counter() - t0
    numerics_ok = True
    if any(m is not None for m in program.matmuls):
        report = numerics_report(program, results)
        if expected is not None:
            for name, want in expected(program).items():
                tol = report[name]["tolerance"] if name in report else 1e-5
                check = compare(results[0].tensor(name), want, tol)
                report.setdefault(name, {})["numpy_check"] = check
        numerics_ok = all(e.get("ok", True) and e.get("numpy_check", {}).get("ok", True) for e in report.values())
    if args.dump:
        program.gm.dump(args.dump, results[0].gm)
    if args.json:
        out = results[0].to_json()
        if args.batch > 1:
            first = results[0].outcome()
            out["batch"] = [
                {
                    "lane": i,
                    "seed": r_seed,
                    "status": r.status.label,
                    "steps": r.steps,
                    "same_as_lane0": r.outcome() == first,
                }
                for i, (r, r_seed) in enumerate(zip(results, seeds, strict=True))
            ]
        print(json.dumps(out, indent=2))
    else:
        _summary(results, str(path), args.engine, args.schedule, elapsed)
    ok = all(r.status == Status.OK for r in results) and numerics_ok
    return EXIT_OK if ok else EXIT_NOT_OK


def _run_comm(program: TaskProgram, expected, args: argparse.Namespace) -> int:
    """Runs a comm model (JAX engine or reference), prints JSON or a summary, returns the exit code."""
    if args.batch > 1:
        return _run_comm_batch(program, expected, args)
    from ascend_jax.aicpu.engine import run_comm
    from ascend_jax.aicpu.models import comm_numerics
    from ascend_jax.aicpu.reference import CommStatus, run_comm_reference

    t0 = time.perf_counter()
    result = run_comm_reference(program) if args.engine == "reference" else run_comm(program)
    elapsed = time.perf_counter() - t0
    report = comm_numerics(result, expected(program)) if expected else {}
    ok = result.status == CommStatus.OK and all(e["ok"] for e in report.values())
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        console = Console()
        colour = "green" if result.status == CommStatus.OK else "red"
        console.print(
            f"[bold]{program.name}[/bold]  engine={args.engine}  ranks={program.n_ranks}  "
            f"status=[{colour}]{result.status.label}[/{colour}]  steps={result.steps}  "
            f"simulated={result.to_json(timeline=False)['time_s'] * 1e6:.1f} us  wall={elapsed:.2f}s"
        )
        table = Table(title="queues")
        for col in ("queue", "status", "error", "tasks"):
            table.add_column(col)
        for entry in result.to_json(timeline=False)["ranks"]:
            for q in entry["queues"]:
                table.add_row(q["queue"], q["status"], str(q["error"]), f"{q['tasks_done']}/{q['tasks']}")
        console.print(table)
        for name, e in report.items():
            console.print(
                f"numerics {name}: rel L2 {e['rel_l2_error']:.3g} (tolerance {e['tolerance']:.3g}) ok={e['ok']}"
            )
        for h in result.hang:
            console.print(f"[red]stuck[/red] {h}")
    return EXIT_OK if ok else EXIT_NOT_OK


def _run_comm_batch(program: TaskProgram, expected, args: argparse.Namespace) -> int:
    """``--batch N`` on a comm model: lanes seed..seed+N-1 (one vmapped JAX run, or the reference per
    lane); lane 0's JSON plus a ``"batch"`` list with every lane's status; exit 0 only if all are ok."""
    from ascend_jax.aicpu import CommStatus, run_comm_batch, run_comm_reference
    from ascend_jax.aicpu.models import comm_numerics

    seeds = [args.seed + i for i in range(args.batch)]
    lanes = [program if s == 0 else load_model(args.model, s, args.max_steps, args.ranks)[0] for s in seeds]
    t0 = time.perf_counter()
    if args.engine == "reference":
        results = [run_comm_reference(p) for p in lanes]
    else:
        results = run_comm_batch(lanes, chunk=args.chunk or 256)
    elapsed = time.perf_counter() - t0
    rows = []
    for i, (p, r, s) in enumerate(zip(lanes, results, seeds, strict=True)):
        report = comm_numerics(r, expected(p)) if expected else {}
        ok = all(e["ok"] for e in report.values())
        rows.append({"lane": i, "seed": s, "status": r.status.label, "steps": r.steps,
                     "time_s": r.to_json(timeline=False)["time_s"], "rank_errors": r.rank_errors(),
                     "numerics_ok": ok})  # fmt: skip
    if args.json:
        out = results[0].to_json()
        out["batch"] = rows
        print(json.dumps(out, indent=2))
    else:
        counts = Counter(r["status"] for r in rows)
        bad = sum(not r["numerics_ok"] for r in rows)
        print(f"{program.name}: {len(rows)} lanes, engine={args.engine}, {dict(counts)}, "
              f"numerics failures {bad}, wall {elapsed:.2f}s")  # fmt: skip
    ok = all(r.status == CommStatus.OK for r in results) and all(r["numerics_ok"] for r in rows)
    return EXIT_OK if ok else EXIT_NOT_OK


def _summary(results: list[CubeGroupResult], path: str, engine: str, schedule: str, elapsed: float) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    r = results[0]
    colour = {"ok": "green", "deadlock": "red", "error": "red", "max_steps": "yellow"}[r.status.label]
    console.print(
        f"[bold]{r.program.name}[/bold] ({path})  engine={engine} schedule={schedule} lanes={len(results)}  "
        f"status=[{colour}]{r.status.label}[/{colour}]  steps={r.steps}  wall={elapsed:.2f}s"
    )
    if len(results) > 1:
        counts = Counter(x.status.label for x in results)
        same = sum(x.outcome() == r.outcome() for x in results)
        console.print(f"lanes: {dict(counts)}; {same}/{len(results)} with lane 0's received logs and slot states")
        failing = [x for x in results if x.status in (Status.DEADLOCK, Status.ERROR)]
        if failing:
            seeds = ", ".join(str(x.seed) for x in failing[:10]) + (" ..." if len(failing) > 10 else "")
            console.print(f"[red]{len(failing)} lanes ended in deadlock or error[/red]; replay one alone with "
                          f"--batch 1 --schedule {schedule} --seed S, S in: {seeds}")  # fmt: skip
    for gi, g in enumerate(r.program.groups):
        table = Table(
            title=f"group {g.name}: AICs {g.first_aic}..{g.first_aic + g.aic_num - 1}, Q={g.msg_queue_size}, P={g.aiv_per_aic}"
        )
        for col in ("AIC", "queues", "received", "VALID", "FAKE", "QUIT", "first messages (queue, depth, state)"):
            table.add_column(col)
        for k in range(g.aic_num):
            core = g.first_aic + k
            log = r.received.get(core, [])
            kinds = Counter(s for _, _, s in log)
            head = " ".join(f"({q},{d},{s})" for q, d, s in log[:4]) + (" ..." if len(log) > 4 else "")
            table.add_row(
                str(core),
                str(g.queues_of_aic(k)),
                str(len(log)),
                str(kinds["VALID"]),
                str(kinds["FAKE"]),
                str(kinds["QUIT"]),
                head,
            )
        console.print(table)
        states = Counter(s for row in r.slot_states(gi) for s in row)
        console.print(f"final slot states of {g.name}: {dict(states)}")
    if r.numerics:
        table = Table(title="numerics against the float64 reference")
        for col in ("tensor", "combination", "rel L2", "max abs", "NaN/Inf", "tolerance", "ok", "numpy check"):
            table.add_column(col)
        for name, e in r.numerics.items():
            check = e.get("numpy_check")
            table.add_row(
                name,
                e.get("combination", "-"),
                f"{e['rel_l2_error']:.3g}" if "rel_l2_error" in e else "-",
                f"{e['max_abs_error']:.3g}" if "max_abs_error" in e else "-",
                f"{e.get('nan', 0)}/{e.get('inf', 0)}",
                f"{e['tolerance']:.3g}" if "tolerance" in e else "-",
                str(e.get("ok", "-")),
                "-" if check is None else f"rel L2 {check['rel_l2_error']:.3g} ok={check['ok']}",
            )
        console.print(table)
    for b in r.blocked:
        console.print(f"[red]blocked[/red] {b}")
    if r.error:
        console.print(f"[red]error[/red] {r.error}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

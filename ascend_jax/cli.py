"""The ``ascend-jax`` command.

``ascend-jax run [FILE.toml | --model NAME] [--json] [--engine jax|reference] [--batch N]
[--seed S] [--max-steps N] [--schedule lockstep|random|timed] [--atomic-order fixed|random]
[--dump DIR] [--chunk N] [--ranks N] [--allow-python]`` runs a scenario (the built-in default
without FILE) or a model; ``ascend-jax check FILE.toml`` validates one without running it (and
without importing any user code); ``ascend-jax models`` lists the models; ``ascend-jax schema``
prints the JSON Schema of the scenario format; ``ascend-jax --version``.

Programs with matmul groups get a numerics report (``"numerics"`` in the JSON): every tensor a
matmul wrote against the float64 reference, plus the model's own numpy answer when it has one.

Exit codes: 0 the run ended ok (every lane) and every numerics entry is ok; 3 a run ended in
deadlock, max_steps or a protocol error, or a numerics check failed; 2 the input is invalid (the
message names the field, value, rule and fix; never a traceback, unless ``--debug``); 1 an internal
error (a bug: ``--debug`` shows its traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from ascend_jax.errors import ConfigError
from ascend_jax.models import RANKS_RANGE
from ascend_jax.schema import MAX_STEPS_LIMIT, SEED_MAX, StrictModel, config_error, scenario_json_schema

EXIT_OK, EXIT_INTERNAL, EXIT_INVALID, EXIT_NOT_OK = 0, 1, 2, 3
#: Most lanes one ``run`` accepts (lanes run in chunks; this bounds the per-lane result objects).
MAX_BATCH = 2**20
#: ``run`` flags that do not apply to comm models (given explicitly: exit 2).
COMM_UNSUPPORTED = ("schedule", "atomic_order", "dump", "devices")


def package_version() -> str:
    """``ascend_jax``'s version from the installed package metadata."""
    from ascend_jax import __version__

    return __version__


class RunArgs(StrictModel):
    """Numeric ``run`` arguments, validated like scenario keys (field names are the flags)."""

    batch: Annotated[int, Field(ge=1, le=MAX_BATCH)] = 1
    seed: Annotated[int, Field(ge=0, le=SEED_MAX)] = 0
    max_steps: Annotated[int, Field(ge=1, le=MAX_STEPS_LIMIT)] | None = None
    chunk: Annotated[int, Field(ge=1, le=MAX_BATCH)] | None = None
    ranks: Annotated[int, Field(ge=RANKS_RANGE[0], le=RANKS_RANGE[1])] | None = None
    devices: Annotated[int, Field(ge=1, le=4096)] | None = None

    @model_validator(mode="after")
    def _lane_seeds_fit(self) -> RunArgs:
        if self.seed + self.batch - 1 > SEED_MAX:
            raise PydanticCustomError(
                "seed_range",
                "lane seeds run from --seed to --seed + --batch - 1 = {last}, past {limit} (uint32)",
                {"last": self.seed + self.batch - 1, "limit": SEED_MAX},
            )
        return self


def _validate_run_args(args: argparse.Namespace) -> RunArgs:
    given = {k: getattr(args, k) for k in RunArgs.model_fields if getattr(args, k) is not None}
    try:
        return RunArgs.model_validate(given)
    except ValidationError as e:
        err = config_error(e)
        if err.field == "scenario":  # the lane-seed rule spans two flags
            raise ConfigError("--seed", args.seed, err.rule, "lower --seed or --batch") from None
        raise ConfigError("--" + err.field.replace("_", "-"), err.value, err.rule, err.fix) from None


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="ascend-jax", description="Simulate Ascend CubeResGroupHandle kernels and AI CPU comm operators in JAX."
    )
    ap.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    ap.add_argument("--debug", action="store_true", help="show the traceback of any error")
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a scenario (the built-in default if no file is given) or a model")
    run.add_argument("file", nargs="?", help="scenario .toml file")
    run.add_argument("--json", action="store_true", help="print the result JSON (DESIGN.md contract)")
    run.add_argument(
        "--engine",
        choices=["auto", "jax", "reference"],
        default=None,
        help="default auto: the reference interpreter for one lane of a deterministic schedule (no compile), "
        "else the JAX engine",
    )
    run.add_argument(
        "--devices", type=int, default=None, help="shard the lanes over this many local devices (default: all)"
    )
    run.add_argument("--batch", type=int, default=None, help=f"number of lanes, 1..{MAX_BATCH} (seeds seed..seed+N-1)")
    run.add_argument("--seed", type=int, default=None, help=f"seed of the first lane's random schedule, 0..{SEED_MAX}")
    run.add_argument(
        "--max-steps", type=int, default=None, help=f"override the scenario's max_steps, 1..{MAX_STEPS_LIMIT}"
    )
    run.add_argument(
        "--schedule",
        choices=["lockstep", "random", "timed"],
        default=None,
        help="default lockstep; timed: events in cycle order by the cost model; the JSON gets a 'timing' section",
    )
    run.add_argument("--model", help="run a shipped model (see `ascend-jax models`) or one in $ASCEND_JAX_MODELS")
    run.add_argument(
        "--atomic-order",
        choices=["fixed", "random"],
        default=None,
        help="order in which a step's matmul results reach GM (default fixed; random: per lane and step)",
    )
    run.add_argument("--dump", metavar="DIR", help="write every GM tensor of lane 0 to DIR/<name>.npy")
    run.add_argument("--chunk", type=int, default=None, help="lanes per compiled call (default: by memory budget)")
    run.add_argument(
        "--ranks", type=int, default=None, help=f"ranks of a ring comm model, {RANKS_RANGE[0]}..{RANKS_RANGE[1]}"
    )
    run.add_argument(
        "--allow-python",
        action="store_true",
        help="let the scenario's python: callbacks and --model file paths import and run code",
    )
    run.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    check = sub.add_parser("check", help="validate a scenario without running it (imports no user code)")
    check.add_argument("file")
    check.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    sub.add_parser("models", help="list the models --model accepts, with a one-line description")
    sub.add_parser("schema", help="print the JSON Schema of the scenario format (for TOML editors)")
    return ap


def printable(text: Any) -> str:
    """``text`` with control characters (terminal escapes, newlines) written as ``\\x1b``-style escapes."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in str(text))


def safe(text: Any) -> str:
    """``text`` for a rich console: :func:`printable`, with rich markup neutralised."""
    from rich.markup import escape

    return escape(printable(text))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    try:
        return _main(argv)
    except ConfigError as e:
        if debug:
            traceback.print_exc()
        print(f"invalid input: {printable(e)}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `ascend-jax schema | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_INTERNAL
    except Exception as e:  # noqa: BLE001 (the user sees a line, --debug the traceback)
        if debug:
            traceback.print_exc()
        print(
            f"internal error: {type(e).__name__}: {printable(e)} (a bug in ascend_jax; rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


def _main(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # argparse: usage errors (2, message printed), --help and --version (0)
        return e.code if isinstance(e.code, int) else EXIT_INVALID
    if args.command == "schema":
        print(json.dumps(scenario_json_schema(), indent=2))
        return EXIT_OK
    if args.command == "models":
        from ascend_jax.models import model_table

        for name, desc, _ in model_table():
            print(f"{name:<20} {printable(desc)}")
        return EXIT_OK
    if args.command == "check":
        from ascend_jax.scenario import load_scenario

        program = load_scenario(args.file, import_callbacks=False)
        print(
            f"{printable(args.file)}: valid ({len(program.groups)} groups, {len(program.aivs)} AIVs, {len(program.aics)} AICs)"
        )
        return EXIT_OK
    return _run(args)


def _prepare_dump(directory: str) -> Path:
    """Checks (before any run) that ``directory`` is, or can be made, a writable folder."""
    p = Path(directory)
    try:
        if p.exists() and not p.is_dir():
            raise ConfigError("--dump", directory, "exists and is not a folder", "give a folder (new or existing)")
        p.mkdir(parents=True, exist_ok=True)
        if not os.access(p, os.W_OK | os.X_OK):
            raise ConfigError("--dump", directory, "is not writable", "give a folder you can write to")
    except OSError as e:
        raise ConfigError(
            "--dump", directory, f"cannot be created ({e.strerror or e})", "give another folder"
        ) from None
    return p


def _dump(program, image, directory: Path) -> None:
    """Writes every GM tensor to ``directory/<name>.npy``, never outside ``directory``."""
    import numpy as np

    root = directory.resolve()
    for name in program.gm.tensors:
        target = directory / f"{name}.npy"
        if target.is_symlink() or target.resolve().parent != root:
            raise ConfigError("--dump", str(target), "would write outside the folder (a link or path)", "remove it")
        try:
            np.save(target, program.gm.read(name, image))
        except OSError as e:
            raise ConfigError(
                "--dump", str(target), f"cannot be written ({e.strerror or e})", "free space or permissions"
            ) from None


def _run(args: argparse.Namespace) -> int:
    from ascend_jax.aicpu.tasks import TaskProgram
    from ascend_jax.models import load_model
    from ascend_jax.scenario import builtin_scenario_path, load_scenario

    nums = _validate_run_args(args)
    expected = None
    if args.model:
        if args.file:
            raise ConfigError("--model", args.model, "give either a scenario file or --model, not both")
        program, expected, path = load_model(
            args.model, max_steps=nums.max_steps, ranks=nums.ranks, allow_python=args.allow_python
        )
        if isinstance(program, TaskProgram):
            given = [k for k in COMM_UNSUPPORTED if getattr(args, k) is not None]
            if given:
                flag = "--" + given[0].replace("_", "-")
                raise ConfigError(
                    flag, getattr(args, given[0]), f"does not apply to comm model {args.model!r}", f"leave {flag} out"
                )
            return _run_comm(program, expected, args)
    else:
        if nums.ranks is not None:
            raise ConfigError("--ranks", nums.ranks, "applies only to ring comm models", "leave --ranks out")
        path = args.file or builtin_scenario_path()
        program = load_scenario(path, max_steps=nums.max_steps, allow_python=args.allow_python)
    schedule = args.schedule or "lockstep"
    atomic_order = args.atomic_order or "fixed"
    engine = args.engine or "auto"
    if engine == "auto":  # one deterministic lane: the interpreter answers before JAX would compile
        jax_only = atomic_order != "fixed" or nums.chunk is not None or nums.devices is not None
        single = nums.batch == 1 and schedule != "random"  # random lanes replay only in the engine that drew them
        engine = "reference" if single and not jax_only else "jax"
    if engine == "reference" and atomic_order != "fixed":
        raise ConfigError("--atomic-order", atomic_order, "random needs --engine jax", "leave --engine out")
    for flag in ("chunk", "devices"):
        if engine == "reference" and getattr(nums, flag) is not None:
            raise ConfigError(f"--{flag}", getattr(nums, flag), "applies to --engine jax only", f"leave --{flag} out")
    dump_dir = _prepare_dump(args.dump) if args.dump else None
    return _run_cube(program, expected, path, nums, engine, schedule, atomic_order, dump_dir, args.json)


def _run_cube(program, expected, path, nums: RunArgs, engine, schedule, atomic_order, dump_dir, as_json) -> int:
    from ascend_jax.cube_group.engine import simulate
    from ascend_jax.cube_group.reference import run_reference
    from ascend_jax.cube_group.status import Status
    from ascend_jax.numerics import compare, numerics_report

    seeds = [nums.seed + i for i in range(nums.batch)]
    t0 = time.perf_counter()
    if engine == "reference":
        results = [run_reference(program, schedule, s) for s in seeds]
    else:
        enable_compilation_cache()
        if nums.devices is not None:
            import jax

            if nums.devices > len(jax.devices()):
                raise ConfigError(
                    "--devices", nums.devices, f"this machine has {len(jax.devices())} device(s)", "lower --devices"
                )
        kw: dict[str, Any] = {"chunk_size": nums.chunk, "devices": nums.devices, "progress": nums.batch > 1}
        results = simulate([program] * nums.batch, schedule=schedule, seeds=seeds, atomic_order=atomic_order, **kw)
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
    if dump_dir is not None:
        _dump(program, results[0].gm, dump_dir)
    if as_json:
        out = results[0].to_json()
        if nums.batch > 1:
            out["batch"] = results.batch_json()
        print(json.dumps(out, indent=2))
    else:
        _summary(results, str(path), engine, schedule, elapsed)
    statuses = results.status if hasattr(results, "status") else [r.status for r in results]
    ok = all(int(x) == Status.OK for x in statuses) and numerics_ok
    return EXIT_OK if ok else EXIT_NOT_OK


def _run_comm(program, expected, args: argparse.Namespace) -> int:
    """Runs a comm model (JAX engine or reference), prints JSON or a summary, returns the exit code."""
    if (args.batch or 1) > 1:
        return _run_comm_batch(program, expected, args)
    from ascend_jax.aicpu.engine import run_comm
    from ascend_jax.aicpu.models import comm_numerics
    from ascend_jax.aicpu.reference import CommStatus, run_comm_reference

    engine = "reference" if args.engine == "reference" else "jax"
    t0 = time.perf_counter()
    result = run_comm_reference(program) if engine == "reference" else run_comm(program)
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
            f"[bold]{safe(program.name)}[/bold]  engine={engine}  ranks={program.n_ranks}  "
            f"status=[{colour}]{result.status.label}[/{colour}]  steps={result.steps}  "
            f"simulated={result.to_json(timeline=False)['time_s'] * 1e6:.1f} us  wall={elapsed:.2f}s"
        )
        table = Table(title="queues")
        for col in ("queue", "status", "error", "tasks"):
            table.add_column(col)
        for entry in result.to_json(timeline=False)["ranks"]:
            for q in entry["queues"]:
                table.add_row(safe(q["queue"]), q["status"], str(q["error"]), f"{q['tasks_done']}/{q['tasks']}")
        console.print(table)
        for name, e in report.items():
            console.print(
                f"numerics {safe(name)}: rel L2 {e['rel_l2_error']:.3g} (tolerance {e['tolerance']:.3g}) ok={e['ok']}"
            )
        for h in result.hang:
            console.print(f"[red]stuck[/red] {safe(h)}")
    return EXIT_OK if ok else EXIT_NOT_OK


def _run_comm_batch(program, expected, args: argparse.Namespace) -> int:
    """``--batch N`` on a comm model: lanes seed..seed+N-1 (one vmapped JAX run, or the reference per
    lane); lane 0's JSON plus a ``"batch"`` list with every lane's status; exit 0 only if all are ok."""
    from ascend_jax.aicpu import CommStatus, run_comm_batch, run_comm_reference
    from ascend_jax.aicpu.models import comm_numerics
    from ascend_jax.models import load_model

    first = args.seed or 0
    seeds = [first + i for i in range(args.batch)]
    lanes = [
        program
        if s == 0
        else load_model(args.model, s, max_steps=args.max_steps, ranks=args.ranks, allow_python=args.allow_python)[0]
        for s in seeds
    ]
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
        engine = "reference" if args.engine == "reference" else "jax"
        print(f"{safe(program.name)}: {len(rows)} lanes, engine={engine}, {dict(counts)}, "
              f"numerics failures {bad}, wall {elapsed:.2f}s")  # fmt: skip
    ok = all(r.status == CommStatus.OK for r in results) and all(r["numerics_ok"] for r in rows)
    return EXIT_OK if ok else EXIT_NOT_OK


def enable_compilation_cache() -> None:
    """Turns on JAX's persistent compilation cache in a user cache folder, so that repeated CLI runs
    of one shape do not compile again (``ASCEND_JAX_CACHE_DIR`` overrides the folder; ``off`` disables)."""
    import os

    import jax

    folder = os.environ.get("ASCEND_JAX_CACHE_DIR")
    if folder == "off":
        return
    if not folder:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        folder = os.path.join(base, "ascend_jax", "jax")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return  # no writable cache folder: compile every time
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _summary(results, path: str, engine: str, schedule: str, elapsed: float) -> None:
    from rich.console import Console
    from rich.table import Table

    from ascend_jax.cube_group.status import Status

    console = Console()
    r = results[0]
    colour = {"ok": "green", "deadlock": "red", "error": "red", "max_steps": "yellow"}[r.status.label]
    console.print(
        f"[bold]{safe(r.program.name)}[/bold] ({safe(path)})  engine={engine} schedule={schedule} lanes={len(results)}  "
        f"status=[{colour}]{r.status.label}[/{colour}]  steps={r.steps}  wall={elapsed:.2f}s"
    )
    if len(results) > 1:  # a BatchResult: aggregates from its arrays, no per-lane objects
        same = int(results.same_as_lane0().sum())
        console.print(f"lanes: {results.status_counts()}; {same}/{len(results)} with lane 0's outcome")
        bad = (results.status == Status.DEADLOCK) | (results.status == Status.ERROR)
        failing = results.seeds[bad]
        if len(failing):
            seeds = ", ".join(str(x) for x in failing[:10]) + (" ..." if len(failing) > 10 else "")
            console.print(f"[red]{len(failing)} lanes ended in deadlock or error[/red]; replay one alone with "
                          f"--batch 1 --schedule {schedule} --seed S, S in: {seeds}")  # fmt: skip
    for gi, g in enumerate(r.program.groups):
        table = Table(
            title=f"group {safe(g.name)}: AICs {g.first_aic}..{g.first_aic + g.aic_num - 1}, Q={g.msg_queue_size}, P={g.aiv_per_aic}"
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
        console.print(f"final slot states of {safe(g.name)}: {dict(states)}")
    if r.numerics:
        table = Table(title="numerics against the float64 reference")
        for col in ("tensor", "combination", "rel L2", "max abs", "NaN/Inf", "tolerance", "ok", "numpy check"):
            table.add_column(col)
        for name, e in r.numerics.items():
            check = e.get("numpy_check")
            table.add_row(
                safe(name),
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
        console.print(f"[red]blocked[/red] {safe(b)}")
    if r.error:
        console.print(f"[red]error[/red] {safe(r.error)}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

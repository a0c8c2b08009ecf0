"""The ``ascend-jax`` command.

``ascend-jax run [FILE.toml | --model NAME] [--json] [--engine jax|reference] [--batch N]
[--seed S] [--max-steps N] [--schedule lockstep|random|timed] [--atomic-order fixed|random]
[--dump DIR] [--chunk N] [--ranks N] [--model-arg NAME=VALUE] [--allow-python]`` runs a scenario (the built-in default
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
import dataclasses
import functools
import json
import os
import sys
import threading
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

from ascend_jax.errors import ConfigError
from ascend_jax.limits import MAX_BATCH, MAX_STEPS_LIMIT, SEED_MAX
from ascend_jax.models import RANKS_RANGE

EXIT_OK, EXIT_INTERNAL, EXIT_INVALID, EXIT_NOT_OK = 0, 1, 2, 3
#: ``run`` flags that do not apply to comm models (given explicitly: exit 2).
COMM_UNSUPPORTED = ("schedule", "atomic_order", "dump", "devices", "trace_lane", "build")
#: Work budget of one ``run`` in the reference interpreter, AIV ops x lanes: about a minute at the
#: ~8,000 ops/s measured for attention_grad's matmul and vector ops on one CPU core (protocol-only
#: ops run ~20x faster). ``--allow-large`` lifts it.
REFERENCE_MAX_WORK = 500_000
#: Work budget in the JAX engine, AIV ops x lanes (lanes run side by side): 10x the README's
#: 16,384-lane example of the 384-op default scenario.
JAX_MAX_WORK = 2**26
#: Work budget of a comm ``run``, input elements x lanes (a batch builds every lane's buffers
#: first): 2^26 fp32 elements, 256 MiB.
COMM_MAX_WORK = 2**26
#: how to get the optional plotting dependency of ``--report``
INSTALL_PLOTS = "install matplotlib: pip install 'ascend_jax[bench]' (or pip install matplotlib)"


def package_version() -> str:
    """``ascend_jax``'s version from the installed package metadata."""
    from ascend_jax import __version__

    return __version__


@functools.cache
def run_args_model() -> type:
    """The pydantic model of the numeric ``run`` arguments, validated like scenario keys (field names
    are the flags). Built on first use, so that ``--version``, ``models`` and ``sweep`` never import
    pydantic."""
    from pydantic import Field, model_validator
    from pydantic_core import PydanticCustomError

    from ascend_jax.schema import StrictModel

    class RunArgs(StrictModel):
        """Numeric ``run`` arguments (``None``: not given)."""

        batch: Annotated[int, Field(ge=1, le=MAX_BATCH)] = 1
        seed: Annotated[int, Field(ge=0, le=SEED_MAX)] = 0
        max_steps: Annotated[int, Field(ge=1, le=MAX_STEPS_LIMIT)] | None = None
        chunk: Annotated[int, Field(ge=1, le=MAX_BATCH)] | None = None
        ranks: Annotated[int, Field(ge=RANKS_RANGE[0], le=RANKS_RANGE[1])] | None = None
        devices: Annotated[int, Field(ge=1, le=4096)] | None = None
        trace_lane: Annotated[int, Field(ge=0, le=MAX_BATCH - 1)] | None = None

        @model_validator(mode="after")
        def _lane_seeds_fit(self) -> RunArgs:
            if self.seed + self.batch - 1 > SEED_MAX:
                raise PydanticCustomError(
                    "seed_range",
                    "lane seeds run from --seed to --seed + --batch - 1 = {last}, past {limit} (uint32)",
                    {"last": self.seed + self.batch - 1, "limit": SEED_MAX},
                )
            return self

    return RunArgs


def _validate_run_args(args: argparse.Namespace) -> Any:
    from pydantic import ValidationError

    from ascend_jax.schema import config_error

    model = run_args_model()
    given = {k: getattr(args, k) for k in model.model_fields if getattr(args, k) is not None}
    try:
        return model.model_validate(given)
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
    run.add_argument(
        "--build",
        choices=["cpu", "npu-debug", "release", "debug"],
        default=None,
        help="override the scenario's build: cpu (CPU twin: every assert stops that AIC), npu-debug (only "
        "ASCENDC_DEBUG_ASSERT) or release (no assert; the JSON lists what the CPU twin would have hit in "
        "asserts_violated); debug is a deprecated alias of cpu",
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
    run.add_argument(
        "--trace",
        metavar="FILE.json",
        help="write a Chrome trace-event JSON (Perfetto, chrome://tracing) of the run (of one lane of a batch)",
    )
    run.add_argument(
        "--trace-lane", type=int, default=None, metavar="I", help="the lane --trace and --report show (default 0)"
    )
    run.add_argument(
        "--report",
        metavar="DIR",
        help="write PNG plots and DIR/report.md summarising the run (needs matplotlib: the 'bench' extra)",
    )
    run.add_argument("--chunk", type=int, default=None, help="lanes per compiled call (default: by memory budget)")
    run.add_argument(
        "--ranks", type=int, default=None, help=f"ranks of a ring comm model, {RANKS_RANGE[0]}..{RANKS_RANGE[1]}"
    )
    run.add_argument(
        "--model-arg",
        action="append",
        metavar="NAME=VALUE",
        help="an option of the model's build() (repeatable), e.g. --model-arg merge=false",
    )
    run.add_argument(
        "--allow-python",
        action="store_true",
        help="let the scenario's python: callbacks and --model file paths import and run code",
    )
    run.add_argument(
        "--allow-large",
        action="store_true",
        help=f"run even if the work estimate (AIV ops x lanes) is over the budget ({REFERENCE_MAX_WORK:,} in the "
        f"reference interpreter, {JAX_MAX_WORK:,} in the JAX engine)",
    )
    run.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    check = sub.add_parser("check", help="validate a scenario without running it (imports no user code)")
    check.add_argument("file")
    check.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    _sweep_parser(sub)
    sub.add_parser("models", help="list the models --model accepts, with a one-line description")
    sub.add_parser("schema", help="print the JSON Schema of the scenario format (for TOML editors)")
    return ap


#: ``sweep``'s ring collectives and point-to-point model (``ascend_jax.aicpu.sweep.OPS``).
SWEEP_MODELS = ("allreduce", "allgather", "reduce_scatter", "p2p_send_recv")
#: ``sweep``'s data types (``ascend_jax.aicpu.sweep.DTYPES``, nccl-tests' names).
SWEEP_DTYPES = ("float", "half", "bfloat16", "int32", "int8")
#: Largest ``sweep`` message size, bytes (-b / -e).
SWEEP_MAX_BYTES = 64 * 2**20
#: Largest ``sweep`` ranks x largest size, bytes: every rank's buffers together. A sweep holds about
#: 40 host bytes per simulated byte (measured: 8 ranks up to 16 MiB peaked at 5.2 GB in 45 s), so
#: this keeps one sweep near 2.5 GB of memory.
SWEEP_MAX_TOTAL_BYTES = 64 * 2**20
#: ``sweep`` rank counts: rings 2..64 (``World``'s limit), ``p2p_send_recv`` exactly 2.
SWEEP_RANKS = (2, 64)
_SIZE_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}


def _sweep_parser(sub) -> None:
    sw = sub.add_parser(
        "sweep",
        help="a simulated collective over message sizes, printed like nccl-tests (simulated time, not measured)",
        description="Runs a ring collective (or a send / receive) for every size from -b to -e (times -f), out of "
        "place and in place, and prints nccl-tests' table: size, count, type, redop, time, algbw, busbw, "
        "#wrong. Times are simulated device time from the comm cost model.",
    )
    sw.add_argument("--model", "-m", default="allreduce", help=f"one of {', '.join(SWEEP_MODELS)} (default allreduce)")
    sw.add_argument("-b", "--minbytes", default="1K", help="smallest size, bytes; suffixes K, M, G (default 1K)")
    sw.add_argument("-e", "--maxbytes", default="1M", help="largest size, bytes; suffixes K, M, G (default 1M)")
    sw.add_argument("-f", "--stepfactor", default="2", help="multiply the size by this factor, >= 2 (default 2)")
    sw.add_argument("-g", "--ranks", default=None, help="ranks: 2..64 for rings (default 8); p2p_send_recv: 2")
    sw.add_argument("--dtype", "-d", default="float", help=f"one of {', '.join(SWEEP_DTYPES)} (p2p: float)")
    sw.add_argument("--engine", default="reference", help="reference (default; no compile) or jax (one batch)")
    sw.add_argument("--json", action="store_true", help="print the sweep as JSON (rows, average busbw, cost model)")
    sw.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)


def parse_size(flag: str, text: str) -> int:
    """nccl-tests' size syntax: an integer number of bytes with an optional binary suffix K, M or G
    (``1K`` = 1024); raises :class:`ConfigError` naming ``flag`` otherwise."""
    t = str(text).strip().upper().removesuffix("B")
    digits, unit = (t[:-1], t[-1]) if t[-1:] in "KMG" and t[-1:] else (t, "")
    if not (digits.isascii() and digits.isdigit() and len(digits) <= 12):
        raise ConfigError(flag, text, "must be a whole number of bytes, optionally with K, M or G (x1024)",
                          "e.g. 8, 1K, 64M")  # fmt: skip
    value = int(digits) * _SIZE_UNITS[unit]
    if not 1 <= value <= SWEEP_MAX_BYTES:
        raise ConfigError(flag, text, f"must be 1 .. {SWEEP_MAX_BYTES} bytes (64M, the sweep's limit)",
                          "give a size in 1..64M")  # fmt: skip
    return value


def _whole(flag: str, text: str, lo: int, hi: int, fix: str) -> int:
    t = str(text).strip()
    if not (t.isascii() and t.isdigit() and len(t) <= 12) or not lo <= int(t) <= hi:
        raise ConfigError(flag, text, f"must be a whole number in {lo}..{hi}", fix)
    return int(t)


def _sweep(args: argparse.Namespace) -> int:
    """``ascend-jax sweep``: validates every flag, then runs :func:`ascend_jax.aicpu.sweep.run_sweep`
    size by size; prints nccl-tests' lines or the JSON; exit 3 if an element is wrong or a run failed."""
    from ascend_jax.limits import did_you_mean

    op = args.model
    if op not in SWEEP_MODELS:
        raise ConfigError("--model", op, f"sweep runs one of {list(SWEEP_MODELS)}",
                          (did_you_mean(op, SWEEP_MODELS) + "e.g. --model allreduce").strip())  # fmt: skip
    if args.dtype not in SWEEP_DTYPES:
        raise ConfigError("--dtype", args.dtype, f"must be one of {list(SWEEP_DTYPES)} (nccl-tests' names)",
                          (did_you_mean(args.dtype, SWEEP_DTYPES) + "e.g. --dtype float").strip())  # fmt: skip
    if args.engine not in ("reference", "jax"):
        raise ConfigError("--engine", args.engine, "must be reference or jax", "e.g. --engine reference")
    p2p = op == "p2p_send_recv"
    if p2p:
        ranks = _whole("-g", args.ranks or "2", 2, 2, "p2p_send_recv has 2 ranks: leave -g out")
        if args.dtype != "float":
            raise ConfigError("--dtype", args.dtype, "p2p_send_recv sends float data only", "leave --dtype out")
    else:
        ranks = _whole("-g", args.ranks or "8", *SWEEP_RANKS, f"give -g in {SWEEP_RANKS[0]}..{SWEEP_RANKS[1]}")
    lo, hi = parse_size("-b", args.minbytes), parse_size("-e", args.maxbytes)
    factor = _whole("-f", args.stepfactor, 2, 2**20, "e.g. -f 2 (each size twice the last)")
    if lo > hi:
        raise ConfigError("-b", args.minbytes, f"is above -e {args.maxbytes} ({lo} > {hi} bytes)",
                          "give -b <= -e")  # fmt: skip
    if ranks * hi > SWEEP_MAX_TOTAL_BYTES:
        raise ConfigError("-e", args.maxbytes, f"{ranks} ranks x {hi} bytes = {ranks * hi} bytes of simulated "
                          f"buffers is over the sweep's {SWEEP_MAX_TOTAL_BYTES} (about 40 host bytes each)",
                          f"lower -e to {SWEEP_MAX_TOTAL_BYTES // ranks} or -g")  # fmt: skip
    from ascend_jax.aicpu.codes import numpy_dtype
    from ascend_jax.aicpu.sweep import DTYPES, average_busbw, nccl_lines, run_sweep, sizes
    from ascend_jax.aicpu.tasks import CommCost

    itemsize = numpy_dtype(int(DTYPES[args.dtype])).itemsize
    byte_sizes = list(dict.fromkeys(sizes(lo, hi, factor, 1 if p2p else ranks, itemsize)))
    cost = CommCost()
    what = f"sweeping {op} on {ranks} ranks over {len(byte_sizes)} sizes ({args.engine} engine)"
    with _Activity(what, total=len(byte_sizes), unit="sizes") as act:
        if args.engine == "jax":
            rows = run_sweep(op, ranks, byte_sizes, args.dtype, cost, engine="jax")
            act.advance(len(byte_sizes))
        else:
            rows = []
            for size in byte_sizes:
                rows += run_sweep(op, ranks, [size], args.dtype, cost, engine="reference")
                act.advance()
    bad = sum(r[k]["wrong"] + (r[k]["status"] != "ok") for r in rows for k in ("out_of_place", "in_place"))
    if args.json:
        from ascend_jax.jsonsafe import dumps_strict

        doc = {"op": op, "ranks": ranks, "dtype": args.dtype, "engine": args.engine,
               "cost": dataclasses.asdict(cost), "rows": rows, "avg_busbw": average_busbw(rows)}  # fmt: skip
        print(dumps_strict(doc, indent=2))
    else:
        shown = {"min_bytes": lo, "max_bytes": hi, "factor": factor, "dtype": args.dtype, "engine": args.engine}
        for line in nccl_lines(rows, op, ranks, shown, cost):
            print(line)
    return EXIT_NOT_OK if bad else EXIT_OK


def printable(text: Any) -> str:
    """``text`` with control characters (terminal escapes, newlines) written as ``\\x1b``-style escapes."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in str(text))


def safe(text: Any) -> str:
    """``text`` for a rich console: :func:`printable`, with rich markup neutralised."""
    from rich.markup import escape

    return escape(printable(text))


def describe_error(e: ConfigError) -> str:
    """The printable message of ``e``; one raised without a fix gets a pointer to the rules."""
    text = printable(e)
    if not getattr(e, "fix", ""):
        text += f" (fix: change {printable(e.field)} to follow the rule; docs/reference lists the rules of every input)"
    return text


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    try:
        return _main(argv)
    except ConfigError as e:
        if debug:
            traceback.print_exc()
        print(f"invalid input: {describe_error(e)}", file=sys.stderr)
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
        from ascend_jax.schema import scenario_json_schema

        print(json.dumps(scenario_json_schema(), indent=2))
        return EXIT_OK
    if args.command == "sweep":
        return _sweep(args)
    if args.command == "models":
        from ascend_jax.models import model_table

        for name, desc, _ in model_table():
            print(f"{name:<20} {printable(desc)}")
        return EXIT_OK
    if args.command == "check":
        from ascend_jax.scenario import check_scenario

        program, errors, total = check_scenario(args.file)
        if errors:
            for e in errors:
                print(f"invalid input: {describe_error(e)}", file=sys.stderr)
            more = f" (the first {len(errors)} shown)" if total > len(errors) else ""
            print(f"{printable(args.file)}: {total} error{'s' if total > 1 else ''}{more}", file=sys.stderr)
            return EXIT_INVALID
        print(
            f"{printable(args.file)}: valid ({len(program.groups)} groups, {len(program.aivs)} AIVs, {len(program.aics)} AICs)"
        )
        return EXIT_OK
    return _run(args)


def _prepare_dump(directory: str) -> Path:
    """Checks (before any run) that ``directory`` is, or can be made, a writable folder."""
    return _prepare_folder("--dump", directory)


def _prepare_trace(path: str) -> Path:
    """Checks (before any run) that ``path`` names a file that can be written (its folder exists)."""
    if not path.strip():
        raise ConfigError("--trace", path, "is empty: no file would be written", "give a file name, e.g. trace.json")
    p = Path(path)
    if p.is_dir():
        raise ConfigError("--trace", path, "is a folder", "give a file name, e.g. trace.json")
    if p.is_symlink() or (p.exists() and not p.is_file()):
        raise ConfigError(
            "--trace", path, "exists and is not a plain file (a link or a device)", "give a new file name"
        )
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError("--trace", path, f"its folder {str(parent)!r} does not exist", "create the folder first")
    if not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise ConfigError("--trace", path, "is not writable", "give a file in a folder you can write to")
    return p


def _prepare_report(directory: str) -> Path:
    """Checks (before any run) that matplotlib is installed and ``directory`` is a writable folder."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError("--report", directory, "needs matplotlib, which is not installed", INSTALL_PLOTS) from None
    folder = _prepare_folder("--report", directory)
    from ascend_jax.report import check_report_folder

    check_report_folder(folder)  # a report file name that is a link: refused before any work
    return folder


def _prepare_folder(flag: str, directory: str) -> Path:
    if not directory.strip():
        raise ConfigError(flag, directory, "is empty: it names no folder", "give a folder, e.g. out/")
    p = Path(directory)
    try:
        if p.exists() and not p.is_dir():
            raise ConfigError(flag, directory, "exists and is not a folder", "give a folder (new or existing)")
        p.mkdir(parents=True, exist_ok=True)
        if not os.access(p, os.W_OK | os.X_OK):
            raise ConfigError(flag, directory, "is not writable", "give a folder you can write to")
    except OSError as e:
        raise ConfigError(flag, directory, f"cannot be created ({e.strerror or e})", "give another folder") from None
    return p


def _dump(program, image, directory: Path) -> None:
    """Writes every GM tensor to ``directory/<name>.npy``, never outside ``directory``.

    A bfloat16 tensor is written as float32 (every bfloat16 value is exactly a float32): numpy has
    no bfloat16, so ``np.load`` of a bfloat16 ``.npy`` gives raw 2-byte voids (``|V2``)."""
    import numpy as np

    root = directory.resolve()
    for name in program.gm.tensors:
        target = directory / f"{name}.npy"
        if target.is_symlink() or target.resolve().parent != root:
            raise ConfigError("--dump", str(target), "would write outside the folder (a link or path)", "remove it")
        data = program.gm.read(name, image)
        if data.dtype.name == "bfloat16":
            data = data.astype(np.float32)
        try:
            np.save(target, data)
        except OSError as e:
            raise ConfigError(
                "--dump", str(target), f"cannot be written ({e.strerror or e})", "free space or permissions"
            ) from None


def _run(args: argparse.Namespace) -> int:
    from ascend_jax.models import load_model, parse_model_args
    from ascend_jax.scenario import builtin_scenario_path, load_scenario

    nums = _validate_run_args(args)
    for flag in ("trace", "report", "dump"):  # an empty path would silently write nothing
        value = getattr(args, flag)
        if value is not None and not value.strip():
            if flag == "trace":
                _prepare_trace(value)
            _prepare_folder(f"--{flag}", value)
    expected = None
    engine, schedule, atomic_order = _pick_engine(args, nums)
    if args.model:
        if args.file:
            raise ConfigError("--model", args.model, "give either a scenario file or --model, not both",
                              "drop the file or --model")  # fmt: skip
        with _Activity(f"building model {args.model}", delay=2.0):
            program, expected, path = load_model(
                args.model,
                nums.seed,  # the model's generated inputs follow --seed
                max_steps=nums.max_steps,
                ranks=nums.ranks,
                allow_python=args.allow_python,
                options=parse_model_args(args.model_arg),
                before_build=lambda ops: _check_work(ops, nums.batch, engine, args.allow_large, "estimated by the "
                                                     "model's work()"),
            )  # fmt: skip
        # a comm program: a TaskProgram exists only if its module was loaded (a cube-group run never loads it)
        tasks = sys.modules.get("ascend_jax.aicpu.tasks")
        if tasks is not None and isinstance(program, tasks.TaskProgram):
            given = [k for k in COMM_UNSUPPORTED if getattr(args, k) is not None]
            if given:
                flag = "--" + given[0].replace("_", "-")
                raise ConfigError(
                    flag, getattr(args, given[0]), f"does not apply to comm model {args.model!r}", f"leave {flag} out"
                )
            if nums.batch > 1 and (args.trace or args.report):
                flag = "--trace" if args.trace else "--report"
                raise ConfigError(
                    flag, args.trace or args.report, "shows one comm run, not a --batch of them", "drop --batch"
                )
            elements = sum(int(x.size) for x in getattr(getattr(program, "world", None), "inputs", None) or [])
            if nums.batch * elements > COMM_MAX_WORK and not args.allow_large:
                raise ConfigError(
                    "work estimate", f"{elements:,} input elements x {nums.batch:,} lanes = {nums.batch * elements:,}",
                    f"is over the comm budget of {COMM_MAX_WORK:,} elements (every lane's buffers are built first)",
                    "pass --allow-large to run it anyway, or lower --batch or --model-arg count",
                )  # fmt: skip
            out = _Outputs(
                trace=_prepare_trace(args.trace) if args.trace else None,
                report=_prepare_report(args.report) if args.report else None,
            )
            return _run_comm(program, expected, args, out)
    else:
        if nums.ranks is not None:
            raise ConfigError("--ranks", nums.ranks, "applies only to ring comm models", "leave --ranks out")
        if args.model_arg:
            raise ConfigError("--model-arg", args.model_arg[0], "applies only to --model", "leave --model-arg out")
        path = args.file or builtin_scenario_path()
        program = load_scenario(path, max_steps=nums.max_steps, allow_python=args.allow_python)
    if args.build == "debug":  # deprecated alias (issue 24)
        print("note: --build debug is deprecated; it means --build cpu (the CPU twin)", file=sys.stderr)
    if args.build is not None:
        program = dataclasses.replace(program, build=args.build)
    _check_work(sum(len(ops) for _, ops in program.aivs), nums.batch, engine, args.allow_large, "counted")
    if engine == "reference" and atomic_order != "fixed":
        raise ConfigError("--atomic-order", atomic_order, "random needs --engine jax", "leave --engine out")
    for flag in ("chunk", "devices"):
        if engine == "reference" and getattr(nums, flag) is not None:
            raise ConfigError(f"--{flag}", getattr(nums, flag), "applies to --engine jax only", f"leave --{flag} out")
    if nums.trace_lane is not None:
        if not (args.trace or args.report):
            raise ConfigError("--trace-lane", nums.trace_lane, "chooses the lane of --trace or --report",
                              "add --trace FILE.json or --report DIR, or leave --trace-lane out")  # fmt: skip
        if nums.trace_lane >= nums.batch:
            raise ConfigError("--trace-lane", nums.trace_lane, f"must be a lane of the batch, 0..{nums.batch - 1}",
                              f"give a lane below --batch {nums.batch}")  # fmt: skip
    out = _Outputs(
        dump=_prepare_dump(args.dump) if args.dump else None,
        trace=_prepare_trace(args.trace) if args.trace else None,
        report=_prepare_report(args.report) if args.report else None,
        lane=nums.trace_lane or 0,
        as_json=args.json,
    )
    return _run_cube(program, expected, path, nums, engine, schedule, atomic_order, out)


def _pick_engine(args: argparse.Namespace, nums: Any) -> tuple[str, str, str]:
    """``(engine, schedule, atomic_order)`` of a cube-group run from the flags (``auto`` resolved)."""
    schedule = args.schedule or "lockstep"
    atomic_order = args.atomic_order or "fixed"
    engine = args.engine or "auto"
    if engine == "auto":  # one deterministic lane: the interpreter answers before JAX would compile
        jax_only = atomic_order != "fixed" or nums.chunk is not None or nums.devices is not None
        single = nums.batch == 1 and schedule != "random"  # random lanes replay only in the engine that drew them
        engine = "reference" if single and not jax_only else "jax"
    return engine, schedule, atomic_order


def _check_work(ops: int, lanes: int, engine: str, allow_large: bool, how: str) -> None:
    """Refuses (exit 2) a run whose work estimate, AIV ops x lanes, is over the engine's budget
    (:data:`REFERENCE_MAX_WORK`, :data:`JAX_MAX_WORK`) unless ``--allow-large``."""
    limit = REFERENCE_MAX_WORK if engine == "reference" else JAX_MAX_WORK
    work = ops * lanes
    if work > limit and not allow_large:
        raise ConfigError(
            "work estimate",
            f"{ops:,} AIV ops ({how}) x {lanes:,} lane{'s' if lanes > 1 else ''} = {work:,}",
            f"is over the {engine} engine's budget of {limit:,} op-lanes (a run this size may take many minutes)",
            "pass --allow-large to run it anyway, or shrink the run (smaller --model-arg sizes or --batch)",
        )


@dataclasses.dataclass
class _Outputs:
    """What ``run`` writes besides stdout: ``--dump``, ``--trace`` and ``--report`` (checked paths)."""

    dump: Path | None = None
    trace: Path | None = None
    report: Path | None = None
    lane: int = 0
    as_json: bool = False


class _Activity:
    """Tells stderr what a step that takes more than about a second is doing, with its progress.

    After ``delay`` seconds: on a terminal, a rich progress line (spinner, ``what``, and with a
    ``total`` a bar, units done / ``total``, elapsed and ETA) until the end; elsewhere (a pipe, a
    file) ``ascend-jax: <what> ...`` and every ``every`` seconds ``still <what> (done/total units,
    N s elapsed, ETA M s)``; at the end, if it said anything, ``<what>: done in N s``. The work
    calls :meth:`advance` per unit. stdout (``--json``) is never written. ``live=False`` keeps to
    the line on a terminal too (for work that draws its own rich progress bar: two would garble).
    """

    def __init__(self, what: str, delay: float = 1.0, every: float = 15.0, total: int | None = None,
                 unit: str = "lanes", live: bool = True):  # fmt: skip
        self.what, self.delay, self.every, self.live = what, delay, every, live
        self.total, self.unit, self.done = total, unit, 0
        self.said = False
        self._stop = threading.Event()
        self._t0 = 0.0

    def advance(self, n: int = 1) -> None:
        """``n`` more units done."""
        self.done += n

    def progress_text(self) -> str:
        """``done/total units, N s elapsed, ETA M s`` (without a total: the elapsed time)."""
        elapsed = time.perf_counter() - self._t0
        text = f"{elapsed:.0f} s elapsed"
        if self.total:
            text = f"{self.done}/{self.total} {self.unit}, " + text
            if 0 < self.done < self.total:
                text += f", ETA {elapsed / self.done * (self.total - self.done):.0f} s"
        return text

    def _say(self, text: str) -> None:
        print(f"ascend-jax: {text}", file=sys.stderr, flush=True)

    def _watch(self) -> None:
        if self._stop.wait(self.delay):
            return
        self.said = True
        if sys.stderr.isatty() and self.live:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn

            columns = [SpinnerColumn(), TextColumn(safe(self.what))]
            columns += [BarColumn()] if self.total else []
            with Progress(*columns, TextColumn("{task.fields[info]}"), console=Console(stderr=True)) as bar:
                task = bar.add_task("", total=self.total, info="")
                while not self._stop.wait(0.2):
                    bar.update(task, completed=self.done, info=self.progress_text())
                bar.update(task, completed=self.done, info=self.progress_text())
            return
        self._say(f"{self.what} ...")
        if sys.stderr.isatty():  # live=False: the work's own bar shows the progress
            return
        while not self._stop.wait(self.every):
            self._say(f"still {self.what} ({self.progress_text()})")

    def __enter__(self) -> _Activity:
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if self.said and exc[0] is None:
            self._say(f"{self.what}: done in {time.perf_counter() - self._t0:.1f} s")


def _run_cube(program, expected, path, nums, engine, schedule, atomic_order, out: _Outputs) -> int:
    from ascend_jax.cube_group.reference import run_reference
    from ascend_jax.cube_group.status import Status
    from ascend_jax.numerics import add_numpy_checks, numerics_report

    seeds = [nums.seed + i for i in range(nums.batch)]
    lanes = f"{nums.batch} lane{'s' if nums.batch > 1 else ''}"
    t0 = time.perf_counter()
    if engine == "reference":
        what = f"running {lanes} of {program.name} in the reference interpreter ({schedule})"
        with _Activity(what, delay=2.0, total=nums.batch if nums.batch > 1 else None) as act:
            results = []
            for s in seeds:
                results.append(run_reference(program, schedule, s))
                act.advance()
    else:
        from ascend_jax.cube_group.engine import simulate  # imports JAX: only when the JAX engine runs

        enable_compilation_cache()
        if nums.devices is not None:
            import jax

            if nums.devices > len(jax.devices()):
                raise ConfigError(
                    "--devices", nums.devices, f"this machine has {len(jax.devices())} device(s)", "lower --devices"
                )
        kw: dict[str, Any] = {"chunk_size": nums.chunk, "devices": nums.devices, "progress": True}
        what = f"compiling and running {lanes} of {program.name} in the JAX engine ({schedule})"
        with _Activity(what, delay=2.0, live=False):  # the engine draws its bar over chunks
            results = simulate([program] * nums.batch, schedule=schedule, seeds=seeds, atomic_order=atomic_order, **kw)
    elapsed = time.perf_counter() - t0
    numerics_ok = True
    from ascend_jax.cube_group.vector import has_vector_ops

    if any(m is not None for m in program.matmuls) or has_vector_ops(program):
        with _Activity("computing the float64 reference of the numerics report"):
            report = numerics_report(program, results)
        if expected is not None:  # the model's own numpy answer; its verdict and the replay's agree
            add_numpy_checks(report, program, results[0], expected)
        numerics_ok = all(e.get("ok", True) and e.get("numpy_check", {}).get("ok", True) for e in report.values())
    if out.dump is not None:
        _dump(program, results[0].gm, out.dump)
    if out.as_json:
        res_json = results[0].to_json()
        if nums.batch > 1:
            res_json["batch"] = results.batch_json() if hasattr(results, "batch_json") else _batch_json(results)
        _print_json(res_json)
    lines = _summary_lines(results, str(path), engine, schedule, atomic_order, elapsed)
    if not out.as_json:
        _emit(lines)
    if out.trace is not None or out.report is not None:
        _trace_and_report(program, results, seeds, engine, schedule, atomic_order, elapsed, lines, out)
    statuses = results.status if hasattr(results, "status") else [r.status for r in results]
    ok = all(int(x) == Status.OK for x in statuses) and numerics_ok
    return EXIT_OK if ok else EXIT_NOT_OK


def _trace_and_report(program, results, seeds, engine, schedule, atomic_order, elapsed, lines, out: _Outputs) -> None:
    """Re-runs lane ``out.lane`` in the reference interpreter with event recording and writes the
    trace and / or the report (see :mod:`ascend_jax.trace`)."""
    from ascend_jax.trace import cube_trace, lane_meta, record_cube, write_trace

    lane = out.lane
    with _Activity(f"recording lane {lane} in the reference interpreter for --trace / --report"):
        rec, events = record_cube(program, schedule, seeds[lane], draws=engine)
    run_lane = results[lane]
    meta: dict[str, Any] = {
        "lane": lane,
        "seed": seeds[lane],
        "recorded_by": "reference interpreter",
        "run_engine": engine,
        "run_status": run_lane.status.label,
        "run_steps": int(run_lane.steps),
    }
    meta.update(lane_meta(rec, run_lane, schedule, engine))
    if atomic_order == "random":
        meta["atomic_order"] = "the run used a random atomic order; this recording writes matmul results in AIC order"
    if out.trace is not None:
        write_trace(cube_trace(program, rec, events, schedule, meta), out.trace)
        _note(f"trace of lane {lane} written to {printable(out.trace)} (open it in https://ui.perfetto.dev)")
    if out.report is not None:
        from ascend_jax.report import write_cube_report

        with _Activity("drawing the report"):
            files = write_cube_report(out.report, program, results, lane, (rec, events), schedule, atomic_order,
                                      engine, elapsed, lines)  # fmt: skip
        _note(f"report written to {printable(out.report)}: {', '.join(files)}")


def _print_json(doc: dict[str, Any]) -> None:
    """Prints a result JSON of ``run`` with the package ``version`` added, as strict JSON: every
    non-finite float is ``null`` with a ``<key>_null_reason`` beside it (:mod:`ascend_jax.jsonsafe`)."""
    from ascend_jax.jsonsafe import dumps_strict

    print(dumps_strict({**doc, "version": package_version()}, indent=2))


def _note(text: str) -> None:
    print(f"ascend-jax: {text}", file=sys.stderr)


def _batch_json(results) -> list[dict[str, Any]]:
    """``batch_json`` of a list of per-lane results (reference engine with --batch)."""
    first = results[0].outcome()
    return [
        {
            "lane": i,
            "seed": r.seed,
            "status": r.status.label,
            "steps": int(r.steps),
            "same_as_lane0": r.outcome() == first,
        }
        for i, r in enumerate(results)
    ]


def _run_comm(program, expected, args: argparse.Namespace, out: _Outputs) -> int:
    """Runs a comm model (JAX engine or reference), prints JSON or a summary, returns the exit code."""
    if (args.batch or 1) > 1:
        return _run_comm_batch(program, expected, args)
    from ascend_jax.aicpu.models import comm_numerics
    from ascend_jax.aicpu.reference import CommStatus, run_comm_reference

    # auto (the default): one lane runs in the reference interpreter, as for cube groups (no compile)
    engine = "jax" if args.engine == "jax" else "reference"
    t0 = time.perf_counter()
    with _Activity(f"running comm model {program.name} ({program.n_ranks} ranks) in the {engine} engine"):
        if engine == "reference":
            result = run_comm_reference(program)
        else:
            from ascend_jax.aicpu.engine import run_comm  # imports JAX

            result = run_comm(program)
    elapsed = time.perf_counter() - t0
    report = comm_numerics(result, expected(program)) if expected else {}
    ok = result.status == CommStatus.OK and all(e["ok"] for e in report.values())
    summary = result.to_json(timeline=False)
    lines = [
        f"{printable(program.name)}  engine={engine}  ranks={program.n_ranks}  status={result.status.label}  "
        f"steps={result.steps}  simulated={summary['time_s'] * 1e6:.1f} us  wall={elapsed:.2f}s"
    ]
    rows = [  # the rank once, in its own column: queue names are rank<r>.<queue>
        [str(entry["rank"]), printable(str(q["queue"]).removeprefix(f"rank{entry['rank']}.")), q["kind"],
         q["status"], str(q["error"]), f"{q['tasks_done']}/{q['tasks']}"]
        for entry in summary["ranks"]
        for q in entry["queues"]
    ]  # fmt: skip
    lines += _table("queues", ["rank", "queue", "kind", "status", "error", "tasks"], rows)
    for name, e in report.items():
        lines.append(
            f"numerics {printable(name)}: rel L2 {e['rel_l2_error']:.3g} (tolerance {e['tolerance']:.3g}) ok={e['ok']}"
        )
    for lost in summary.get("lost_records", []):
        lines.append(f"notify {printable(lost['notify'])}: {lost['lost_records']} record(s) lost (the flag was set)")
    for h in result.hang:
        waits = f", waiting for notify {printable(h['waits_for'])}" if "waits_for" in h else ""
        lines.append(
            f"stuck: rank {h['rank']} queue {printable(h['queue'])} at task {h['task']} {printable(h['label'])}{waits}"
        )
    if args.json:
        _print_json(result.to_json())
    else:
        _emit(lines)
    if out.trace is not None:
        from ascend_jax.trace import comm_trace, write_trace

        write_trace(comm_trace(result, {"engine": engine}), out.trace)
        _note(f"trace written to {printable(out.trace)} (open it in https://ui.perfetto.dev)")
    if out.report is not None:
        from ascend_jax.report import write_comm_report

        files = write_comm_report(out.report, result, report, elapsed, lines)
        _note(f"report written to {printable(out.report)}: {', '.join(files)}")
    return EXIT_OK if ok else EXIT_NOT_OK


def _run_comm_batch(program, expected, args: argparse.Namespace) -> int:
    """``--batch N`` on a comm model: lanes seed..seed+N-1 (one vmapped JAX run, or the reference per
    lane); lane 0's JSON plus a ``"batch"`` list with every lane's status; exit 0 only if all are ok."""
    from ascend_jax.aicpu.models import comm_numerics
    from ascend_jax.aicpu.reference import CommStatus, run_comm_reference
    from ascend_jax.models import load_model, parse_model_args

    first = args.seed or 0
    seeds = [first + i for i in range(args.batch)]
    lanes = [
        program
        if s == first
        else load_model(
            args.model,
            s,
            max_steps=args.max_steps,
            ranks=args.ranks,
            allow_python=args.allow_python,
            options=parse_model_args(args.model_arg),
        )[0]
        for s in seeds
    ]
    t0 = time.perf_counter()
    if args.engine == "reference":
        results = [run_comm_reference(p) for p in lanes]
    else:
        from ascend_jax.aicpu.engine import run_comm_batch  # imports JAX

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
        _print_json(out)
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


def _emit(lines: list[str]) -> None:
    """Prints summary lines: coloured status words on a terminal, plain text otherwise (never
    wrapped or cut: the lines are as wide as their content)."""
    if not sys.stdout.isatty():
        for line in lines:
            print(line)
        return
    from rich.console import Console
    from rich.markup import escape

    console = Console(soft_wrap=True, highlight=False)
    colours = {"status=ok": "green", "status=deadlock": "red", "status=error": "red", "status=max_steps": "yellow"}
    for line in lines:
        text = escape(line)
        for word, colour in colours.items():
            text = text.replace(word, f"[{colour}]{word}[/{colour}]")
        console.print(text)


def _table(title: str, headers: list[str], rows: list[list[str]]) -> list[str]:
    """A table as plain-text lines, laid out by ``rich.table``: a title line, the header, a rule and
    one line per row, each column as wide as its widest cell (nothing cut or wrapped; cells are
    plain text, never markup)."""
    import io

    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
    for h in headers:
        table.add_column(Text(h), no_wrap=True, overflow="ignore")
    for r in rows:
        table.add_row(*(Text(c) for c in r))
    widest = sum(max([len(h)] + [len(r[i]) for r in rows]) + 3 for i, h in enumerate(headers)) + 8
    console = Console(file=io.StringIO(), width=widest, color_system=None, highlight=False, emoji=False)
    console.print(table)
    body = [line.rstrip() for line in console.file.getvalue().splitlines()]
    return [title, *(line for line in body if line.strip() or not line)]


def _stats(values) -> str:
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    return f"min {v.min():.6g}, mean {v.mean():.6g}, max {v.max():.6g}"


def _summary_lines(results, path: str, engine: str, schedule: str, atomic_order: str, elapsed: float) -> list[str]:
    """The terminal summary of a cube-group run, as plain-text lines (the report quotes them too)."""
    from ascend_jax.cube_group.status import Status
    from ascend_jax.report import describe_blocked, describe_error

    r = results[0]
    n = len(results)
    lines = [
        f"{printable(r.program.name)} ({printable(path)})  engine={engine} schedule={schedule} "
        f"atomic_order={atomic_order} lanes={n}  status={r.status.label}  steps={r.steps}  wall={elapsed:.2f}s"
    ]
    if n > 1:
        lines += _batch_lines(results, schedule)
        lines.append("lane 0:")
    if r.timing is not None:
        lines += _timing_lines(r)
    for gi, g in enumerate(r.program.groups):
        rows = []
        for k in range(g.aic_num):
            core = g.first_aic + k
            log = r.received.get(core, [])
            kinds = Counter(s for _, _, s in log)
            head = " ".join(f"({q},{d},{s})" for q, d, s in log[:4]) + (" ..." if len(log) > 4 else "")
            rows.append([str(core), str(g.queues_of_aic(k)), str(len(log))]
                        + [str(kinds[s]) for s in ("VALID", "FAKE", "QUIT")] + [head])  # fmt: skip
        title = (
            f"group {printable(g.name)}: AICs {g.first_aic}..{g.first_aic + g.aic_num - 1}, "
            f"Q={g.msg_queue_size}, P={g.aiv_per_aic}"
        )
        heads = ["AIC", "queues", "received", "VALID", "FAKE", "QUIT", "first messages (queue,depth,state)"]
        lines += _table(title, heads, rows)
        states = Counter(s for row in r.slot_states(gi) for s in row)
        lines.append(f"final slot states of {printable(g.name)}: " + ", ".join(f"{k} {v}" for k, v in states.items()))
    if r.numerics:
        rows = []
        for name, e in r.numerics.items():
            check = e.get("numpy_check")
            rows.append([
                printable(name),
                e.get("combination", "-"),
                f"{e['rel_l2_error']:.3g}" if "rel_l2_error" in e else "-",
                f"{e['max_abs_error']:.3g}" if "max_abs_error" in e else "-",
                f"{e.get('nan', 0)}/{e.get('inf', 0)}",
                f"{e['tolerance']:.3g}" if "tolerance" in e else "-",
                str(e.get("ok", "-")),
                "-" if check is None else f"rel L2 {check['rel_l2_error']:.3g} ok={check['ok']}",
                f"{e['lane_spread']:.3g}" if "lane_spread" in e else "-",
            ])  # fmt: skip
        heads = ["tensor", "combination", "rel L2", "max abs", "NaN/Inf", "tolerance", "ok", "numpy check",
                 "lane spread"]  # fmt: skip
        lines += _table("numerics against the float64 reference (lane 0)", heads, rows)
        lines += [f"numerics {printable(k)} not ok: {printable(e['reason'])}" for k, e in r.numerics.items()
                  if not e.get("ok", True) and "reason" in e]  # fmt: skip
        shares = next((e["reference_shares"] for e in r.numerics.values() if "reference_shares" in e), None)
        lines += [f"reference: {printable(shares)}"] if shares else []
        spread = {k: e["lane_spread"] for k, e in r.numerics.items() if "lane_spread" in e}
        if spread:
            worst = max(spread, key=spread.get)
            how = "a random atomic order" if atomic_order == "random" else "the lanes' schedules"
            lines.append(
                f"atomic-order spread: with {how}, lanes differ from lane 0 by up to {spread[worst]:.3g} "
                f"(relative L2, tensor {printable(worst)}) over {n} lanes"
                + ("; 0 means the result does not depend on the order" if spread[worst] == 0 else "")
            )
    if r.blocked:
        lines.append(f"deadlock: {len(r.blocked)} core(s) blocked:")
        lines += [f"  {printable(s)}" for s in describe_blocked(r)]
    if r.error:
        lines.append(f"error: {printable(describe_error(r.error))}")
    if r.status == Status.MAX_STEPS:
        lines.append(f"max_steps: the run stopped after {r.steps} steps; raise --max-steps if it was still progressing")
    return lines


def _batch_lines(results, schedule: str) -> list[str]:
    """Status counts, steps / kernel cycles across lanes and the lanes whose outcome differs from lane 0's."""
    import numpy as np

    from ascend_jax.cube_group.status import Status

    n = len(results)
    if hasattr(results, "same_as_lane0"):  # a BatchResult: aggregates from its arrays
        status, steps, seeds = results.status, results.steps, results.seeds
        same = results.same_as_lane0()
        cycles = results.kernel_cycles()
    else:
        status = np.array([int(r.status) for r in results])
        steps = np.array([r.steps for r in results])
        seeds = np.array([r.seed for r in results])
        same = np.array([r.outcome() == results[0].outcome() for r in results])
        cycles = np.array([r.timing["kernel_cycles"] for r in results]) if results[0].timing else None
    counts = Counter(Status(int(s)).label for s in status)
    lines = [
        "lanes: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + f"; steps {_stats(steps)}",
    ]
    if cycles is not None:
        lines.append(f"kernel cycles across lanes: {_stats(cycles)}")
    differ = np.flatnonzero(~same)
    lines.append(f"{n - len(differ)}/{n} lanes with lane 0's outcome (status, received logs, final slots, witness)")
    if len(differ):
        shown = ", ".join(f"{i} (seed {int(seeds[i])}, {Status(int(status[i])).label})" for i in differ[:10])
        lines.append(f"lanes that differ: {shown}" + (f" and {len(differ) - 10} more" if len(differ) > 10 else ""))
    bad = (status == Status.DEADLOCK) | (status == Status.ERROR)
    if bad.any():
        failing = ", ".join(str(int(x)) for x in seeds[bad][:10]) + (" ..." if bad.sum() > 10 else "")
        lines.append(f"{int(bad.sum())} lanes ended in deadlock or error; replay one alone with "
                     f"--batch 1 --schedule {schedule} --seed S, S in: {failing}")  # fmt: skip
    return lines


def _timing_lines(r) -> list[str]:
    """Kernel time and per-core busy / blocked / idle of a timed lane."""
    t = r.timing
    lines = [f"kernel: {t['kernel_cycles']:.0f} cycles = {t['kernel_us']:.3f} us at {t['freq_mhz']:g} MHz"]
    total = max(t["kernel_cycles"], 1e-9)
    rows = [
        [f"aic{core}"]
        + [f"{c[k]:.0f} ({100 * c[k] / total:.0f}%)" for k in ("busy_cycles", "blocked_cycles", "idle_cycles")]
        for core, c in t["aic"].items()
    ]
    lines += _table("AIC time (cycles, share of the kernel)", ["core", "busy", "blocked", "idle"], rows)
    from ascend_jax.utilisation import compute_utilisation, summary_line

    lines.append(summary_line(compute_utilisation(t)))
    if t["aiv"]:
        alloc = {b: v["alloc_stall_cycles"] for b, v in t["aiv"].items()}
        wait = {b: v["wait_stall_cycles"] for b, v in t["aiv"].items()}
        top = sorted(alloc, key=lambda b: -(alloc[b] + wait[b]))[:3]
        lines.append(
            f"AIV stalls (cycles): AllocMessage {_stats(list(alloc.values()))}; waits and barriers "
            f"{_stats(list(wait.values()))}; most stalled: "
            + ", ".join(f"aiv{b} ({alloc[b] + wait[b]:.0f})" for b in top)
        )
    return lines


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The ``ascend-jax`` command line: flags -> a :class:`~ascend_jax.config.RunConfig` plus output options.

Everything here runs before any program is loaded: argparse's tree, the numeric flags' checks
(their bounds come from :mod:`ascend_jax.config`), the ``sweep`` flags, and the output paths
(``--dump``, ``--trace``, ``--report``). A ``run`` flag that reaches an engine is one
:class:`~ascend_jax.config.RunConfig` field plus one ``add_argument`` here (and, if numeric, one
line in :func:`run_args_model`).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
from pathlib import Path
from typing import Annotated, Any

from ascend_jax.enums import ATOMIC_ORDERS, BUILD_ALIASES, BUILDS, ENGINES, SCHEDULES
from ascend_jax.errors import ConfigError
from ascend_jax.limits import MAX_BATCH, MAX_STEPS_LIMIT, SEED_MAX
from ascend_jax.models import RANKS_RANGE

#: ``run`` flags that do not apply to comm models (given explicitly: exit 2).
COMM_UNSUPPORTED = ("schedule", "atomic_order", "dump", "devices", "trace_lane", "build")
#: how to get the optional plotting dependency of ``--report``
INSTALL_PLOTS = "install matplotlib: pip install 'ascend_jax[bench]' (or pip install matplotlib)"

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


def package_version() -> str:
    """``ascend_jax``'s version from the installed package metadata."""
    from ascend_jax import __version__

    return __version__


def _parser() -> argparse.ArgumentParser:
    from ascend_jax.runner import JAX_MAX_WORK, REFERENCE_MAX_WORK  # light: no pydantic, no engine

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
        choices=ENGINES,
        default=None,
        help="default auto: the reference interpreter for one lane of a deterministic schedule (no compile), "
        "else the JAX engine",
    )
    run.add_argument(
        "--devices", type=int, default=None, help="shard the lanes over this many local devices (default: all)"
    )
    run.add_argument(
        "--build",
        choices=[*BUILDS, *BUILD_ALIASES],
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
        choices=SCHEDULES,
        default=None,
        help="default lockstep; timed: events in cycle order by the cost model; the JSON gets a 'timing' section",
    )
    run.add_argument("--model", help="run a shipped model (see `ascend-jax models`) or one in $ASCEND_JAX_MODELS")
    run.add_argument(
        "--atomic-order",
        choices=ATOMIC_ORDERS,
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
        default=None,  # a RunConfig field's flag is None when not given (see run_config)
        help=f"run even if the work estimate (AIV ops x lanes) is over the budget ({REFERENCE_MAX_WORK:,} in the "
        f"reference interpreter, {JAX_MAX_WORK:,} in the JAX engine)",
    )
    run.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    from ascend_jax.sanitizer.cli import add_arguments as add_sanitizer  # `sanitize`, `run --sanitize`

    add_sanitizer(sub, run)
    check = sub.add_parser("check", help="validate a scenario without running it (imports no user code)")
    check.add_argument("file")
    check.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    _sweep_parser(sub)
    sub.add_parser("models", help="list the models --model accepts, with a one-line description")
    sub.add_parser("schema", help="print the JSON Schema of the scenario format (for TOML editors)")
    return ap


# -- run: the numeric flags, the RunConfig, the output options -------------------------------------
@functools.cache
def run_args_model() -> type:
    """The pydantic model of the numeric ``run`` arguments, validated like scenario keys (field names
    are the flags; the engine settings' bounds are :mod:`ascend_jax.config`'s). Built on first use,
    so that ``--version``, ``models`` and ``sweep`` never import pydantic."""
    from pydantic import Field, model_validator

    from ascend_jax.config import Batch, Chunk, Devices, MaxSteps, Seed, check_lane_seeds
    from ascend_jax.schema import StrictModel

    class RunArgs(StrictModel):
        """Numeric ``run`` arguments (``None``: not given)."""

        batch: Batch = 1
        seed: Seed = 0
        max_steps: MaxSteps | None = None
        chunk: Chunk | None = None
        ranks: Annotated[int, Field(ge=RANKS_RANGE[0], le=RANKS_RANGE[1])] | None = None
        devices: Devices | None = None
        trace_lane: Annotated[int, Field(ge=0, le=MAX_BATCH - 1)] | None = None

        @model_validator(mode="after")
        def _lane_seeds_fit(self) -> RunArgs:
            check_lane_seeds(self.seed, self.batch, ("--seed", "--batch"))
            return self

    return RunArgs


def validate_run_args(args: argparse.Namespace) -> Any:
    """The checked numeric ``run`` flags (:func:`run_args_model`); a bad one raises
    :class:`ConfigError` naming the flag."""
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


def run_config(args: argparse.Namespace) -> Any:
    """The :class:`~ascend_jax.config.RunConfig` of the ``run`` flags: every field whose flag was
    given (``--atomic-order`` sets ``atomic_order``), so ``model_fields_set`` says which were.
    ``--build debug`` gives no warning here: the CLI prints its own note."""
    import warnings

    from ascend_jax.config import RunConfig
    from ascend_jax.cube_group.program import BuildAliasWarning

    # A field's flag has its name and is None when not given (so a False a flag gives is kept).
    given = {k: getattr(args, k, None) for k in RunConfig.model_fields}
    values = {k: v for k, v in given.items() if v is not None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BuildAliasWarning)
        return RunConfig(**values)


@dataclasses.dataclass
class Outputs:
    """What ``run`` writes besides stdout: ``--dump``, ``--trace`` and ``--report`` (checked paths)."""

    dump: Path | None = None
    trace: Path | None = None
    report: Path | None = None
    lane: int = 0
    as_json: bool = False


def check_empty_paths(args: argparse.Namespace) -> None:
    """An empty ``--trace``, ``--report`` or ``--dump`` would silently write nothing: refused first."""
    for flag in ("trace", "report", "dump"):
        value = getattr(args, flag)
        if value is not None and not value.strip():
            if flag == "trace":
                prepare_trace(value)
            prepare_folder(f"--{flag}", value)


def check_trace_lane(args: argparse.Namespace, nums: Any) -> None:
    """``--trace-lane`` needs ``--trace`` or ``--report`` and must be a lane of the batch."""
    if nums.trace_lane is not None:
        if not (args.trace or args.report):
            raise ConfigError("--trace-lane", nums.trace_lane, "chooses the lane of --trace or --report",
                              "add --trace FILE.json or --report DIR, or leave --trace-lane out")  # fmt: skip
        if nums.trace_lane >= nums.batch:
            raise ConfigError("--trace-lane", nums.trace_lane, f"must be a lane of the batch, 0..{nums.batch - 1}",
                              f"give a lane below --batch {nums.batch}")  # fmt: skip


def outputs(args: argparse.Namespace, nums: Any, dump: bool = True) -> Outputs:
    """The checked output paths of ``run`` (``dump=False``: a comm run, which has no ``--dump``)."""
    return Outputs(
        dump=prepare_folder("--dump", args.dump) if dump and args.dump else None,
        trace=prepare_trace(args.trace) if args.trace else None,
        report=prepare_report(args.report) if args.report else None,
        lane=nums.trace_lane or 0,
        as_json=args.json,
    )


def prepare_trace(path: str) -> Path:
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


def prepare_report(directory: str) -> Path:
    """Checks (before any run) that matplotlib is installed and ``directory`` is a writable folder."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError("--report", directory, "needs matplotlib, which is not installed", INSTALL_PLOTS) from None
    folder = prepare_folder("--report", directory)
    from ascend_jax.report import check_report_folder

    check_report_folder(folder)  # a report file name that is a link: refused before any work
    return folder


def prepare_folder(flag: str, directory: str) -> Path:
    """Checks (before any run) that ``directory`` is, or can be made, a writable folder."""
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


# -- sweep ------------------------------------------------------------------------------------------
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


@dataclasses.dataclass(frozen=True)
class SweepSettings:
    """The checked ``sweep`` flags: collective, ranks, sizes (bytes) and step factor."""

    op: str
    ranks: int
    lo: int
    hi: int
    factor: int
    dtype: str
    engine: str
    as_json: bool


def sweep_settings(args: argparse.Namespace) -> SweepSettings:
    """Checks every ``sweep`` flag (:class:`ConfigError` naming the first bad one)."""
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
    return SweepSettings(op, ranks, lo, hi, factor, args.dtype, args.engine, args.json)

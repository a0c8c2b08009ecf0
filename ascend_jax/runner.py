"""``ascend_jax.run(program, config)``: one entry point for every run, the CLI's and the API's.

It takes a cube-group program (:class:`~ascend_jax.cube_group.program.CubeGroupProgram`) or a comm
task program (:class:`~ascend_jax.aicpu.tasks.TaskProgram`) and a :class:`~ascend_jax.config.RunConfig`,
and does, in this order:

1. :func:`prepare` (no engine runs yet): resolves the ``auto`` engine (:func:`resolve_engine`),
   applies the ``build`` and ``max_steps`` overrides through the program's constructor (its own
   checks run), refuses a run over the work budget unless ``allow_large`` (:func:`check_work`), and
   refuses settings the chosen engine or program kind does not have.
2. :func:`execute`: calls the engine (``simulate`` / ``run_reference``, or the comm engine /
   reference) with keyword arguments, then the numerics report, and returns a :class:`RunResult`.

The CLI calls the two steps apart, so that its own output checks (``--trace``, ``--dump``) still
come before any run. Error messages name the CLI flag of a field (``--atomic-order`` for
``atomic_order``), word for word what ``ascend-jax run`` says.

(The module is ``runner``, not ``run``: a submodule named ``run`` would replace the function
``ascend_jax.run`` on the package as soon as anything imported it.)
"""

from __future__ import annotations

import dataclasses
import enum
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ascend_jax.errors import ConfigError

if TYPE_CHECKING:
    from ascend_jax.config import Engine, RunConfig

# ascend_jax.config (pydantic) is imported where a config is made or resolved: the CLI reads the
# budgets below for `--help` without it.

#: Work budget of one run in the reference interpreter, AIV ops x lanes: about a minute at the
#: ~8,000 ops/s measured for attention_grad's matmul and vector ops on one CPU core (protocol-only
#: ops run ~20x faster). ``allow_large`` lifts it.
REFERENCE_MAX_WORK = 500_000
#: Work budget in the JAX engine, AIV ops x lanes (lanes run side by side): 10x the README's
#: 16,384-lane example of the 384-op default scenario.
JAX_MAX_WORK = 2**26
#: Work budget of a comm run, input elements x lanes (a batch builds every lane's buffers first):
#: 2^26 fp32 elements, 256 MiB.
COMM_MAX_WORK = 2**26
#: RunConfig fields that do not apply to a comm program (refused when given explicitly).
COMM_UNSUPPORTED_FIELDS = ("schedule", "atomic_order", "devices", "build")


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def resolve_engine(config: RunConfig, comm: bool = False) -> Engine:
    """The engine ``config`` runs in: ``jax`` or ``reference`` as given; ``auto`` is the reference
    interpreter for one lane of a deterministic schedule (it answers before JAX would compile), else
    JAX. A random schedule's lanes replay only in the engine that drew them, and a random atomic
    order, ``chunk`` or ``devices`` exist only in JAX (for a comm program ``chunk`` only sizes a
    batch, so it does not choose)."""
    from ascend_jax.config import AtomicOrder, Engine, Schedule

    if config.engine != Engine.AUTO:
        return config.engine
    jax_only = not comm and (
        config.atomic_order != AtomicOrder.FIXED or config.chunk is not None or config.devices is not None
    )
    single = config.batch == 1 and config.schedule != Schedule.RANDOM
    return Engine.REFERENCE if single and not jax_only else Engine.JAX


def check_work(ops: int, lanes: int, engine: str, allow_large: bool, how: str) -> None:
    """Refuses (:class:`ConfigError`) a run whose work estimate, AIV ops x lanes, is over the
    engine's budget (:data:`REFERENCE_MAX_WORK`, :data:`JAX_MAX_WORK`) unless ``allow_large``."""
    limit = REFERENCE_MAX_WORK if engine == "reference" else JAX_MAX_WORK
    work = ops * lanes
    if work > limit and not allow_large:
        raise ConfigError(
            "work estimate",
            f"{ops:,} AIV ops ({how}) x {lanes:,} lane{'s' if lanes > 1 else ''} = {work:,}",
            f"is over the {engine} engine's budget of {limit:,} op-lanes (a run this size may take many minutes)",
            "pass --allow-large to run it anyway, or shrink the run (smaller --model-arg sizes or --batch)",
        )


def is_comm(program: Any) -> bool:
    """Whether ``program`` is a comm task program (its module is loaded only if one was built, so a
    cube-group run never imports the comm package)."""
    tasks = sys.modules.get("ascend_jax.aicpu.tasks")
    return tasks is not None and isinstance(program, tasks.TaskProgram)


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """A checked run, not started: what :func:`execute` runs.

    Attributes:
      program: the program, with the config's overrides applied.
      config: the settings as given.
      engine: the engine that runs (``auto`` resolved).
      lanes: a comm batch's programs, one per lane (lane 0 is ``program``), or a function that builds
        lane ``i``'s program from its seed (called by :func:`execute` for lanes 1..); ``(program,)``
        for a cube-group run.
      expected: the model's own float64 numpy answer (a function of the program), or None.
    """

    program: Any
    config: RunConfig
    engine: Engine
    lanes: tuple[Any, ...] | Callable[[int], Any]
    expected: Callable[[Any], dict[str, Any]] | None = None

    @property
    def comm(self) -> bool:
        """Whether this is a comm run."""
        return is_comm(self.program)


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What a run gave.

    Attributes:
      program: the program that ran (overrides applied; a comm batch's lane 0).
      config: the settings as given.
      engine: the engine that ran (``jax`` or ``reference``).
      seeds: every lane's seed.
      results: per lane: a :class:`~ascend_jax.cube_group.engine.BatchResult` (JAX engine) or a
        list of :class:`~ascend_jax.cube_group.result.CubeGroupResult` (reference), or a list of
        comm results.
      numerics: a cube-group run's numerics report (lane 0 against the float64 reference; None when
        the program has no matmul or vector op); a comm run's per-lane reports (a list).
      elapsed: seconds the engine took.
      lanes: a comm run's programs, one per lane.
    """

    program: Any
    config: RunConfig
    engine: Engine
    seeds: tuple[int, ...]
    results: Any
    numerics: Any
    elapsed: float
    lanes: tuple[Any, ...] = ()

    @property
    def comm(self) -> bool:
        """Whether this was a comm run."""
        return is_comm(self.program)

    @property
    def numerics_ok(self) -> bool:
        """Every numerics entry is ok (a comm batch: every lane's)."""
        if self.comm:
            return all(e["ok"] for report in self.numerics for e in report.values())
        if not self.numerics:
            return True
        return all(e.get("ok", True) and e.get("numpy_check", {}).get("ok", True) for e in self.numerics.values())

    @property
    def ok(self) -> bool:
        """Every lane ended ok and every numerics entry is ok (the CLI's exit 0)."""
        if self.comm:
            from ascend_jax.aicpu.reference import CommStatus

            return all(r.status == CommStatus.OK for r in self.results) and self.numerics_ok
        from ascend_jax.cube_group.status import Status

        statuses = self.results.status if hasattr(self.results, "status") else [r.status for r in self.results]
        return all(int(x) == Status.OK for x in statuses) and self.numerics_ok

    def batch_json(self) -> list[dict[str, Any]]:
        """One entry per lane (the result JSON's ``"batch"``)."""
        if self.comm:
            return [
                {"lane": i, "seed": s, "status": r.status.label, "steps": r.steps,
                 "time_s": r.to_json(timeline=False)["time_s"], "rank_errors": r.rank_errors(),
                 "numerics_ok": all(e["ok"] for e in report.values())}
                for i, (r, s, report) in enumerate(zip(self.results, self.seeds, self.numerics, strict=True))
            ]  # fmt: skip
        if hasattr(self.results, "batch_json"):
            return self.results.batch_json()
        first = self.results[0].outcome()
        return [
            {"lane": i, "seed": r.seed, "status": r.status.label, "steps": int(r.steps),
             "same_as_lane0": r.outcome() == first}
            for i, r in enumerate(self.results)
        ]  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        """The result JSON of lane 0 (with ``"batch"`` for several lanes and the package
        ``"version"``): what ``ascend-jax run --json`` prints, before non-finite floats are made
        strict (:func:`ascend_jax.jsonsafe.dumps_strict`)."""
        from ascend_jax import __version__

        doc = self.results[0].to_json()
        if len(self.seeds) > 1:
            doc["batch"] = self.batch_json()
        return {**doc, "version": __version__}


class _Quiet:
    """The default progress reporter: says nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __enter__(self) -> _Quiet:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def advance(self, n: int = 1) -> None:
        pass


def _overridden(program: Any, build: Any, max_steps: int | None) -> Any:
    """``program`` with another build and / or step bound; ``dataclasses.replace`` makes it again
    through its constructor, so its own checks (e.g. the build name's) run. The same object when
    nothing changes."""
    changes: dict[str, Any] = {}
    if build is not None:
        changes["build"] = str(build)
    if max_steps is not None and max_steps != program.max_steps:
        changes["max_steps"] = max_steps
    if not changes:
        return program
    return dataclasses.replace(program, **changes)


def prepare(
    program: Any,
    config: RunConfig | None = None,
    *,
    expected: Callable[[Any], dict[str, Any]] | None = None,
    lanes: Sequence[Any] | Callable[[int], Any] | None = None,
) -> RunPlan:
    """Checks a run of ``program`` under ``config`` without running it (see the module docstring).

    Args:
      program: a cube-group program or a comm task program.
      config: the settings (default ``RunConfig()``).
      expected: a model's float64 numpy answer, ``expected(program) -> {tensor: array}``; the
        numerics report then checks the run against it too.
      lanes: a comm batch's programs, one per lane, lane 0 first (a model builds each lane with its
        own seed), or a function ``seed -> program`` that builds lanes 1.. when the run starts;
        default: ``program`` in every lane.

    Raises:
      ConfigError: a setting does not apply, or the run is over its work budget.
    """
    from ascend_jax.config import AtomicOrder, Engine, RunConfig

    config = RunConfig() if config is None else config
    if is_comm(program):
        given = [k for k in COMM_UNSUPPORTED_FIELDS if k in config.model_fields_set]
        if given:
            flag, value = _flag(given[0]), getattr(config, given[0])
            raise ConfigError(flag, value.value if isinstance(value, enum.Enum) else value, f"does not apply to comm model {program.name!r}",
                              f"leave {flag} out")  # fmt: skip
        if lanes is None:
            lanes = (program,) * config.batch
        elif not callable(lanes):
            lanes = tuple(lanes)
            if len(lanes) != config.batch or lanes[0] is not program:
                raise ConfigError("lanes", f"{len(lanes)} programs", f"must be {config.batch} (batch), lane 0 the "
                                  "program", "pass one program per lane, or none")  # fmt: skip
        elements = sum(int(x.size) for x in getattr(getattr(program, "world", None), "inputs", None) or [])
        if config.batch * elements > COMM_MAX_WORK and not config.allow_large:
            raise ConfigError(
                "work estimate", f"{elements:,} input elements x {config.batch:,} lanes = {config.batch * elements:,}",
                f"is over the comm budget of {COMM_MAX_WORK:,} elements (every lane's buffers are built first)",
                "pass --allow-large to run it anyway, or lower --batch or --model-arg count",
            )  # fmt: skip
        return RunPlan(program, config, resolve_engine(config, comm=True), lanes, expected)
    if lanes is not None:
        raise ConfigError("lanes", type(lanes).__name__, "apply to comm programs only",
                          "give a cube-group program's lanes by --batch / seeds")  # fmt: skip
    engine = resolve_engine(config)
    program = _overridden(program, config.build, config.max_steps)
    check_work(sum(len(ops) for _, ops in program.aivs), config.batch, engine, config.allow_large, "counted")
    if engine == Engine.REFERENCE and config.atomic_order != AtomicOrder.FIXED:
        raise ConfigError("--atomic-order", config.atomic_order.value, "random needs --engine jax",
                          "leave --engine out")  # fmt: skip
    for field in ("chunk", "devices"):
        if engine == Engine.REFERENCE and getattr(config, field) is not None:
            raise ConfigError(_flag(field), getattr(config, field), "applies to --engine jax only",
                              f"leave {_flag(field)} out")  # fmt: skip
    return RunPlan(program, config, engine, (program,), expected)


def execute(plan: RunPlan, *, progress: Callable[..., Any] | None = None, compile_cache: bool = False) -> RunResult:
    """Runs a :class:`RunPlan` and computes its numerics report.

    Args:
      plan: from :func:`prepare`.
      progress: makes a progress reporter, ``progress(what, **options)``, a context manager with
        ``advance(n=1)`` (the CLI's spinner); given, the JAX engine also draws its chunk bar.
        Default: silent.
      compile_cache: turn on JAX's persistent compilation cache first (the CLI does).
    """
    if plan.comm:
        return _execute_comm(plan, progress or _Quiet)
    return _execute_cube(plan, progress, compile_cache)


def run(
    program: Any,
    config: RunConfig | None = None,
    *,
    expected: Callable[[Any], dict[str, Any]] | None = None,
    lanes: Sequence[Any] | Callable[[int], Any] | None = None,
    progress: Callable[..., Any] | None = None,
) -> RunResult:
    """Runs ``program`` (cube-group or comm) as ``config`` says: :func:`prepare`, then :func:`execute`.

    Example::

        import ascend_jax as aj

        program = aj.load_scenario(aj.builtin_scenario_path())
        res = aj.run(program, aj.RunConfig(batch=8, schedule="random"))
        res.ok, res.engine, res.to_json()["status"]

    Raises:
      ConfigError: a setting does not apply to this program or engine, or the run is over its
        work budget (``allow_large`` lifts it); the CLI exits 2 on the same errors.
    """
    return execute(prepare(program, config, expected=expected, lanes=lanes), progress=progress)


def _execute_cube(plan: RunPlan, progress: Callable[..., Any] | None, compile_cache: bool) -> RunResult:
    from ascend_jax.config import Engine
    from ascend_jax.cube_group.vector import has_vector_ops
    from ascend_jax.numerics import add_numpy_checks, numerics_report

    activity = progress or _Quiet
    program, config, engine = plan.program, plan.config, plan.engine
    seeds = config.seeds
    schedule = config.schedule.value
    lanes = f"{config.batch} lane{'s' if config.batch > 1 else ''}"
    t0 = time.perf_counter()
    if engine == Engine.REFERENCE:
        from ascend_jax.cube_group.reference import run_reference

        what = f"running {lanes} of {program.name} in the reference interpreter ({schedule})"
        with activity(what, delay=2.0, total=config.batch if config.batch > 1 else None) as act:
            results: Any = []
            for lane in range(config.batch):
                results.append(run_reference(program, **config.reference_options(lane)))
                act.advance()
    else:
        from ascend_jax.cube_group.engine import simulate  # imports JAX: only when the JAX engine runs

        if compile_cache:
            enable_compilation_cache()
        if config.devices is not None:
            import jax

            if config.devices > len(jax.devices()):
                raise ConfigError(
                    "--devices", config.devices, f"this machine has {len(jax.devices())} device(s)", "lower --devices"
                )
        what = f"compiling and running {lanes} of {program.name} in the JAX engine ({schedule})"
        with activity(what, delay=2.0, live=False):  # the engine draws its bar over chunks
            results = simulate([program] * config.batch, progress=progress is not None, **config.simulate_options())
    elapsed = time.perf_counter() - t0
    report = None
    if any(m is not None for m in program.matmuls) or has_vector_ops(program):
        with activity("computing the float64 reference of the numerics report"):
            report = numerics_report(program, results)
        if plan.expected is not None:  # the model's own numpy answer; its verdict and the replay's agree
            add_numpy_checks(report, program, results[0], plan.expected)
    return RunResult(program, config, engine, tuple(seeds), results, report, elapsed, (program,))


def _execute_comm(plan: RunPlan, activity: Callable[..., Any]) -> RunResult:
    from ascend_jax.aicpu.models import comm_numerics
    from ascend_jax.aicpu.reference import run_comm_reference
    from ascend_jax.config import Engine

    program, config, engine, lanes = plan.program, plan.config, plan.engine, plan.lanes
    if callable(lanes):  # a model builds each lane with its own seed
        lanes = (program, *(lanes(s) for s in config.seeds[1:]))
    max_steps = config.max_steps
    if max_steps is not None and all(p.max_steps == max_steps for p in lanes):
        max_steps = None  # already the programs' own bound (the CLI builds them with it)
    steps = {} if max_steps is None else {"max_steps": max_steps}
    t0 = time.perf_counter()
    if config.batch == 1:
        with activity(f"running comm model {program.name} ({program.n_ranks} ranks) in the {engine} engine"):
            if engine == Engine.REFERENCE:
                results = [run_comm_reference(program, **steps)]
            else:
                from ascend_jax.aicpu.engine import run_comm  # imports JAX

                results = [run_comm(program, **steps)]
    elif engine == Engine.REFERENCE:
        results = [run_comm_reference(p, **steps) for p in lanes]
    else:
        from ascend_jax.aicpu.engine import run_comm_batch  # imports JAX

        results = run_comm_batch(list(lanes), chunk=config.chunk or 256, **steps)
    elapsed = time.perf_counter() - t0
    reports = [comm_numerics(r, plan.expected(p)) if plan.expected else {} for p, r in zip(lanes, results, strict=True)]
    return RunResult(program, config, engine, tuple(config.seeds), results, reports, elapsed, lanes)


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


__all__ = [
    "COMM_MAX_WORK",
    "JAX_MAX_WORK",
    "REFERENCE_MAX_WORK",
    "RunPlan",
    "RunResult",
    "check_work",
    "enable_compilation_cache",
    "execute",
    "prepare",
    "resolve_engine",
    "run",
]

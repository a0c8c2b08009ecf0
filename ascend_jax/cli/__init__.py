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

The package is three parts: :mod:`~ascend_jax.cli.parser` (flags -> a
:class:`~ascend_jax.config.RunConfig` plus output options), :func:`ascend_jax.run` (the run, the
same as the Python API's) and :mod:`~ascend_jax.cli.render` (text, JSON, progress, files); this
module only glues them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from typing import Any

from ascend_jax.cli.parser import COMM_UNSUPPORTED, _parser, package_version  # noqa: F401 (_parser: tests)
from ascend_jax.cli.render import Activity, describe_error, printable, table
from ascend_jax.errors import ConfigError

EXIT_OK, EXIT_INTERNAL, EXIT_INVALID, EXIT_NOT_OK = 0, 1, 2, 3
#: the progress reporter and table layout under their former names (tests and scripts use them)
_Activity, _table = Activity, table


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
    from ascend_jax.xla_flags import opted_in

    opted_in()  # a bad ASCEND_JAX_XLA_FLAGS: exit 2 (the import only warned)
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
    if args.command == "sanitize":  # a run with the sanitizer (ascend_jax/sanitizer/cli.py)
        return _run(args)
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


def _run(args: argparse.Namespace) -> int:
    """``ascend-jax run``: flags -> RunConfig, the program, :func:`ascend_jax.runner.prepare`, the
    output checks, :func:`ascend_jax.runner.execute`, then the summary or JSON and the files."""
    from ascend_jax.cli import parser, render
    from ascend_jax.models import load_model, parse_model_args
    from ascend_jax.runner import check_work, execute, is_comm, prepare, resolve_engine
    from ascend_jax.sanitizer import cli as sanitizer
    from ascend_jax.scenario import builtin_scenario_path, load_scenario

    sanitizing = sanitizer.wanted(args)
    op_lines: dict = {}  # sanitizer: the model line of every op
    nums = parser.validate_run_args(args)
    config = parser.run_config(args)
    parser.check_empty_paths(args)
    expected = None
    engine = resolve_engine(config)
    if args.model:
        if args.file:
            raise ConfigError("--model", args.model, "give either a scenario file or --model, not both",
                              "drop the file or --model")  # fmt: skip
        options = parse_model_args(args.model_arg)

        def build(seed: int, before_build: Any = None) -> tuple[Any, Any, Any]:
            return load_model(args.model, seed=seed, max_steps=nums.max_steps, ranks=nums.ranks,
                              allow_python=args.allow_python, options=options, before_build=before_build)  # fmt: skip

        with Activity(f"building model {args.model}", delay=2.0), sanitizer.sources(args) as op_lines:
            program, expected, path = build(
                nums.seed,  # the model's generated inputs follow --seed
                lambda ops: check_work(ops, nums.batch, engine, args.allow_large, "estimated by the model's work()"),
            )
        if is_comm(program):
            sanitizer.refuse_comm(args)
            return _run_comm(program, expected, args, nums, config, lambda seed: build(seed)[0])
    else:
        if nums.ranks is not None:
            raise ConfigError("--ranks", nums.ranks, "applies only to ring comm models", "leave --ranks out")
        if args.model_arg:
            raise ConfigError("--model-arg", args.model_arg[0], "applies only to --model", "leave --model-arg out")
        path = args.file or builtin_scenario_path()
        program = load_scenario(path, max_steps=nums.max_steps, allow_python=args.allow_python)
    if args.build == "debug":  # deprecated alias (issue 24)
        print("note: --build debug is deprecated; it means --build cpu (the CPU twin)", file=sys.stderr)
    plan = prepare(program, config, expected=expected)
    parser.check_trace_lane(args, nums)
    out = parser.outputs(args, nums)
    res = execute(plan, progress=Activity, compile_cache=True)
    found = sanitizer.analyse(args, res, path, op_lines) if sanitizing else None
    if args.command == "sanitize":
        return sanitizer.emit_sanitize(args, res, found, path)
    if out.dump is not None:
        render.dump_tensors(res.program, res.results[0].gm, out.dump)
    if out.as_json:
        render.print_json(res.to_json() | ({"sanitizer": found.to_json()} if found else {}))
    lines = render.cube_lines(res, str(path))
    if not out.as_json:
        render.emit(lines)
        if found:
            print(found.text())
    if out.trace is not None or out.report is not None:
        render.trace_and_report(res, lines, out)
    return EXIT_OK if res.ok and not (found and found.found) else EXIT_NOT_OK


def _run_comm(program: Any, expected: Any, args: argparse.Namespace, nums: Any, config: Any, lane: Any) -> int:
    """A comm model: the flags it refuses, then one run (summary or JSON, ``--trace``, ``--report``)
    or ``--batch N`` lanes seed..seed+N-1 (lane 0's JSON plus a ``"batch"`` list; exit 0 only if
    every lane is ok)."""
    from ascend_jax.cli import parser, render
    from ascend_jax.runner import execute, prepare

    given = [k for k in COMM_UNSUPPORTED if getattr(args, k) is not None]
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise ConfigError(
            flag, getattr(args, given[0]), f"does not apply to comm model {args.model!r}", f"leave {flag} out"
        )
    if nums.batch > 1 and (args.trace or args.report):
        flag = "--trace" if args.trace else "--report"
        raise ConfigError(flag, args.trace or args.report, "shows one comm run, not a --batch of them", "drop --batch")
    plan = prepare(program, config, expected=expected, lanes=lane)
    out = parser.outputs(args, nums, dump=False)
    res = execute(plan, progress=Activity)
    if nums.batch > 1:
        if args.json:
            render.print_json(res.to_json())
        else:
            print(render.comm_batch_line(res))
        return EXIT_OK if res.ok else EXIT_NOT_OK
    lines = render.comm_lines(res)
    if args.json:
        render.print_json(res.to_json())
    else:
        render.emit(lines)
    render.comm_files(res, lines, out)
    return EXIT_OK if res.ok else EXIT_NOT_OK


def _sweep(args: argparse.Namespace) -> int:
    """``ascend-jax sweep``: checks every flag, then runs :func:`ascend_jax.aicpu.sweep.run_sweep`
    size by size; prints nccl-tests' lines or the JSON; exit 3 if an element is wrong or a run failed."""
    from ascend_jax.cli import parser, render

    settings = parser.sweep_settings(args)
    from ascend_jax.aicpu.codes import numpy_dtype
    from ascend_jax.aicpu.sweep import DTYPES, run_sweep, sizes
    from ascend_jax.aicpu.tasks import CommCost

    op, ranks = settings.op, settings.ranks
    itemsize = numpy_dtype(int(DTYPES[settings.dtype])).itemsize
    byte_sizes = list(dict.fromkeys(sizes(settings.lo, settings.hi, settings.factor, 1 if op == "p2p_send_recv"
                                          else ranks, itemsize)))  # fmt: skip
    cost = CommCost()
    what = f"sweeping {op} on {ranks} ranks over {len(byte_sizes)} sizes ({settings.engine} engine)"
    with Activity(what, total=len(byte_sizes), unit="sizes") as act:
        if settings.engine == "jax":
            rows = run_sweep(op, ranks, byte_sizes, settings.dtype, cost, engine="jax")
            act.advance(len(byte_sizes))
        else:
            rows = []
            for size in byte_sizes:
                rows += run_sweep(op, ranks, [size], settings.dtype, cost, engine="reference")
                act.advance()
    bad = sum(r[k]["wrong"] + (r[k]["status"] != "ok") for r in rows for k in ("out_of_place", "in_place"))
    render.sweep_output(settings, rows, cost)
    return EXIT_NOT_OK if bad else EXIT_OK

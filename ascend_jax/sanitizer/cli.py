"""``ascend-jax sanitize`` and ``ascend-jax run ... --sanitize``.

``sanitize`` takes every flag of ``run`` (it is the same run: the program is built, prepared and run
in the engine the flags pick) plus ``--tool`` and ``--uninit``, and prints the findings instead of
the run's summary (``--json``: ``{"scenario", "status", "sanitizer"}``). ``run --sanitize`` prints the
run's usual output and then the findings (``--json``: the result JSON with a ``"sanitizer"`` key).
Both exit 3 when anything is found.

How findings are obtained: always from one observed run of the program in the reference
interpreter, with the run's schedule and lane 0's seed. The JAX engine keeps no per-access history;
the findings do not depend on the schedule or seed (docs/model/sanitizer.md), and every lane of a
batch runs the same program, so the one analysis answers for every lane: a batch's ``"sanitizer"``
object lists each lane's finding count and the first lane with a finding.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ascend_jax.errors import ConfigError

TOOL_HELP = "racecheck,initcheck,synccheck,memcheck or all (default all)"


def add_arguments(sub: Any, run: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds the ``sanitize`` command (every ``run`` flag, plus ``--tool`` / ``--uninit``) and
    ``run --sanitize``. Call once ``run`` has all its flags."""
    san = sub.add_parser(
        "sanitize",
        parents=[run],
        conflict_handler="resolve",
        help="run a scenario or model and report races, uninitialised reads, unpaired syncs and bad accesses",
        description="Runs the program (same flags as run) and checks it with racecheck, initcheck, synccheck and "
        "memcheck on the reference interpreter's event log; exit 3 when anything is found.",
    )
    for p in (run, san):
        p.add_argument("--tool", default=None, metavar="TOOLS", help=f"with --sanitize / sanitize: {TOOL_HELP}")
        p.add_argument(
            "--uninit",
            action="append",
            metavar="TENSOR",
            help="initcheck: treat TENSOR as undefined at launch although it has an init, to see whether the "
            "kernel needs that init (tensors without init are undefined anyway; repeatable)",
        )
    run.add_argument(
        "--sanitize",
        action="store_true",
        help="also run the sanitizer (see `ascend-jax sanitize`); exit 3 on a finding",
    )
    return san


def wanted(args: argparse.Namespace) -> bool:
    """Whether this command sanitizes (``sanitize``, or ``run --sanitize``); checks the flags."""
    on = args.command == "sanitize" or bool(getattr(args, "sanitize", False))
    if not on:
        for flag in ("tool", "uninit"):
            if getattr(args, flag, None):
                raise ConfigError(f"--{flag}", getattr(args, flag), "applies only with --sanitize", "add --sanitize")
    else:
        from ascend_jax.sanitizer.api import parse_tools

        try:
            parse_tools(args.tool)
        except ConfigError as e:
            raise ConfigError("--tool", args.tool, e.rule, "e.g. --tool racecheck,initcheck, or all") from None
    return on


@contextlib.contextmanager
def sources(args: argparse.Namespace) -> Iterator[dict]:
    """Records the model lines of the ops built inside the block when sanitizing (else nothing)."""
    if args.command == "sanitize" or getattr(args, "sanitize", False):
        from ascend_jax.sanitizer.sources import capture_sources

        with capture_sources() as table:
            yield table
    else:
        yield {}


def refuse_comm(args: argparse.Namespace) -> None:
    """The sanitizer checks cube-group kernels; a comm model is refused (exit 2)."""
    if wanted(args):
        raise ConfigError(
            "--model",
            args.model,
            "is an AI CPU comm model: the sanitizer checks cube-group kernels (AIC / AIV GM accesses and their "
            "synchronisation)",
            "run it without --sanitize",
        )


class Outcome:
    """The analysis of one CLI run: the report and how it was obtained."""

    def __init__(self, report: Any, lanes: int, schedule: str, seed: int, engine: str):
        self.report = report
        self.lanes = lanes
        self.schedule, self.seed, self.engine = schedule, seed, engine

    @property
    def found(self) -> bool:
        return bool(self.report.findings)

    def to_json(self) -> dict[str, Any]:
        doc = self.report.to_json()
        if self.lanes > 1:
            n = len(self.report.findings)
            doc["lane_findings"] = [n] * self.lanes
            doc["first_finding_lane"] = 0 if n else None
        return doc

    def how(self) -> str:
        """One line: where the findings come from."""
        where = f"the reference interpreter's event log ({self.schedule}, seed {self.seed})"
        if self.engine != "reference":
            where += "; the JAX engine keeps no access log, and the findings do not depend on the schedule"
        if self.lanes > 1:
            where += f"; all {self.lanes} lanes run this program, so each has these findings"
        return f"sanitizer: analysed on {where}"

    def text(self) -> str:
        return f"{self.how()}\n{partial_note(self.report)}{self.report.render()}"


def partial_note(report: Any) -> str:
    """A line saying that a run cut short by ``max_steps`` was analysed only up to there."""
    status = getattr(getattr(report.observed, "status", None), "label", "")
    if status != "max_steps":
        return ""
    return (
        "sanitizer: the observed run stopped at max_steps, so only the accesses before that were analysed, "
        "and where a run stops depends on the schedule: raise --max-steps for a complete answer\n"
    )


def analyse(args: argparse.Namespace, res: Any, path: Any, lines: dict) -> Outcome | None:
    """Runs the sanitizer on the run's program (None when not sanitizing)."""
    if not wanted(args):
        return None
    from ascend_jax.sanitizer.api import parse_tools, sanitize
    from ascend_jax.sanitizer.sources import source_lookup

    program = res.program
    schedule = _name(res.config.schedule)
    seed = int(res.seeds[0]) if res.seeds else 0
    scenario = path if path is not None and str(path).endswith(".toml") else None  # a file, or a TOML model
    unknown = sorted(set(args.uninit or ()) - set(program.gm.tensors))
    if unknown:
        raise ConfigError("--uninit", unknown[0], f"no such tensor; tensors: {sorted(program.gm.tensors)}")
    report = sanitize(
        program,
        schedule=schedule,
        seed=seed,
        tools=parse_tools(args.tool),
        uninitialised=args.uninit or (),
        source_of=source_lookup(program, lines, scenario),
    )
    return Outcome(report, max(len(res.seeds), 1), schedule, seed, _name(res.engine))


def _name(value: Any) -> str:
    """A str enum's value (``Schedule.TIMED`` -> ``timed``)."""
    return str(getattr(value, "value", value))


def emit_sanitize(args: argparse.Namespace, res: Any, outcome: Outcome, path: Any) -> int:
    """The ``sanitize`` command's output and exit code (3 on a finding or a run that is not ok)."""
    doc = res.to_json()
    if args.json:
        print(json.dumps({"scenario": doc.get("scenario"), "status": doc.get("status"), "sanitizer": outcome.to_json()},
                         indent=2))  # fmt: skip
    else:
        name = args.model or (Path(str(path)).as_posix() if path is not None else "the built-in scenario")
        print(f"sanitize {name}: the run ended {doc.get('status')}")
        print(outcome.text())
    return 3 if outcome.found or not res.ok else 0

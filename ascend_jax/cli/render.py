"""What ``ascend-jax`` prints: summaries and tables, the result JSON, progress on stderr, and the
files ``run`` writes besides stdout (``--dump``, ``--trace``, ``--report``).

Nothing here decides how a run goes: :func:`ascend_jax.run` gives a
:class:`~ascend_jax.runner.RunResult` and the functions below turn it into text and files.
Summary lines are plain text, as wide as their content (never cut or wrapped); on a terminal the
status words are coloured.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ascend_jax.errors import ConfigError


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


def print_json(doc: dict[str, Any]) -> None:
    """Prints a result JSON (:meth:`~ascend_jax.runner.RunResult.to_json`, with the package
    ``version``) as strict JSON: every non-finite float is ``null`` with a ``<key>_null_reason``
    beside it (:mod:`ascend_jax.jsonsafe`)."""
    from ascend_jax.jsonsafe import dumps_strict

    print(dumps_strict(doc, indent=2))


def note(text: str) -> None:
    print(f"ascend-jax: {text}", file=sys.stderr)


class Activity:
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

    def __enter__(self) -> Activity:
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if self.said and exc[0] is None:
            self._say(f"{self.what}: done in {time.perf_counter() - self._t0:.1f} s")


def emit(lines: list[str]) -> None:
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


def table(title: str, headers: list[str], rows: list[list[str]]) -> list[str]:
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


def cube_lines(res: Any, path: str) -> list[str]:
    """The terminal summary of a cube-group :class:`~ascend_jax.runner.RunResult`."""
    config = res.config
    return summary_lines(res.results, path, res.engine.value, config.schedule.value, config.atomic_order.value,
                         res.elapsed)  # fmt: skip


def summary_lines(results, path: str, engine: str, schedule: str, atomic_order: str, elapsed: float) -> list[str]:
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
        lines += table(title, heads, rows)
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
        lines += table("numerics against the float64 reference (lane 0)", heads, rows)
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
    lines += table("AIC time (cycles, share of the kernel)", ["core", "busy", "blocked", "idle"], rows)
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


def dump_tensors(program, image, directory: Path) -> None:
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


def trace_and_report(res: Any, lines: list[str], out: Any) -> None:
    """Re-runs lane ``out.lane`` of a cube-group run in the reference interpreter with event
    recording and writes the trace and / or the report (see :mod:`ascend_jax.trace`)."""
    from ascend_jax.trace import cube_trace, lane_meta, record_cube, write_trace

    program, results, seeds, elapsed = res.program, res.results, res.seeds, res.elapsed
    engine, schedule, atomic_order = res.engine.value, res.config.schedule.value, res.config.atomic_order.value
    lane = out.lane
    with Activity(f"recording lane {lane} in the reference interpreter for --trace / --report"):
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
        note(f"trace of lane {lane} written to {printable(out.trace)} (open it in https://ui.perfetto.dev)")
    if out.report is not None:
        from ascend_jax.report import write_cube_report

        with Activity("drawing the report"):
            files = write_cube_report(out.report, program, results, lane, (rec, events), schedule, atomic_order,
                                      engine, elapsed, lines)  # fmt: skip
        note(f"report written to {printable(out.report)}: {', '.join(files)}")


def comm_lines(res: Any) -> list[str]:
    """The terminal summary of a one-lane comm :class:`~ascend_jax.runner.RunResult`: the status
    line, the queues table, numerics, lost notify records and where a hang stopped."""
    program, result, report = res.program, res.results[0], res.numerics[0]
    summary = result.to_json(timeline=False)
    lines = [
        f"{printable(program.name)}  engine={res.engine.value}  ranks={program.n_ranks}  status={result.status.label}  "
        f"steps={result.steps}  simulated={summary['time_s'] * 1e6:.1f} us  wall={res.elapsed:.2f}s"
    ]
    rows = [  # the rank once, in its own column: queue names are rank<r>.<queue>
        [str(entry["rank"]), printable(str(q["queue"]).removeprefix(f"rank{entry['rank']}.")), q["kind"],
         q["status"], str(q["error"]), f"{q['tasks_done']}/{q['tasks']}"]
        for entry in summary["ranks"]
        for q in entry["queues"]
    ]  # fmt: skip
    lines += table("queues", ["rank", "queue", "kind", "status", "error", "tasks"], rows)
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
    return lines


def comm_batch_line(res: Any) -> str:
    """The one-line summary of a comm batch: lanes, engine, status counts, numerics failures."""
    rows = res.batch_json()
    counts = Counter(r["status"] for r in rows)
    bad = sum(not r["numerics_ok"] for r in rows)
    return (f"{safe(res.program.name)}: {len(rows)} lanes, engine={res.engine.value}, {dict(counts)}, "
            f"numerics failures {bad}, wall {res.elapsed:.2f}s")  # fmt: skip


def comm_files(res: Any, lines: list[str], out: Any) -> None:
    """Writes a one-lane comm run's ``--trace`` and ``--report``."""
    if out.trace is not None:
        from ascend_jax.trace import comm_trace, write_trace

        write_trace(comm_trace(res.results[0], {"engine": res.engine.value}), out.trace)
        note(f"trace written to {printable(out.trace)} (open it in https://ui.perfetto.dev)")
    if out.report is not None:
        from ascend_jax.report import write_comm_report

        files = write_comm_report(out.report, res.results[0], res.numerics[0], res.elapsed, lines)
        note(f"report written to {printable(out.report)}: {', '.join(files)}")


def sweep_output(settings: Any, rows: list[dict[str, Any]], cost: Any) -> None:
    """Prints a sweep: nccl-tests' lines, or the JSON (rows, average busbw, cost model)."""
    import dataclasses

    from ascend_jax.aicpu.sweep import average_busbw, nccl_lines

    if settings.as_json:
        from ascend_jax.jsonsafe import dumps_strict

        doc = {"op": settings.op, "ranks": settings.ranks, "dtype": settings.dtype, "engine": settings.engine,
               "cost": dataclasses.asdict(cost), "rows": rows, "avg_busbw": average_busbw(rows)}  # fmt: skip
        print(dumps_strict(doc, indent=2))
    else:
        shown = {"min_bytes": settings.lo, "max_bytes": settings.hi, "factor": settings.factor,
                 "dtype": settings.dtype, "engine": settings.engine}  # fmt: skip
        for line in nccl_lines(rows, settings.op, settings.ranks, shown, cost):
            print(line)

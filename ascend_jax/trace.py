"""Chrome trace-event JSON of a run (the format Perfetto and ``chrome://tracing`` open).

Cube groups: one lane is re-run in the reference interpreter with event recording
(:class:`ascend_jax.cube_group.reference.ReferenceInterpreter`, ``events=[]``); both engines take
the same steps under ``lockstep`` and the same cycles under ``timed``, so the recording is the
lane's history. Under ``random`` the recording replays the JAX engine's own draws for the lane
(:class:`EngineDraws`, ``record_cube(..., draws="jax")``), so it is that lane's interleaving step
for step; the interpreter's own draw from the seed (``draws="reference"``) is the history of a
``--engine reference`` run. :func:`lane_meta` checks the recording against the run's lane (same
outcome, same steps) and says ``matches_run: false`` with the reason when they differ.

Layout: one process per group (``pid`` = group index + 1), one thread per core in it (AICs, then
AIVs; an AIV that posts into several groups has a track in each, and its delays and barriers go
to its first group), a complete (``X``) slice per action with its arguments, flow events (``s`` /
``f``) from the action that wrote a message's head (post, fake or quit) to the receive that read
it, and a counter (``C``) per queue: its non-FREE slots. Time: under ``timed`` cycles / MHz = µs;
otherwise 1 µs of the time axis is one engine step.

Comm models: one process per rank, one thread per stream or AI CPU thread, a slice per executed
task (seconds -> µs) and a flow from each notify record (or kernel completion) to the wait it
releases, derived from the timeline by the notify rule (a record sets the flag unless it is
already set, then it is lost; a wait clears it).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # annotations only: trace.py imports no engine at run time
    from ascend_jax.cube_group.program import CubeGroupProgram
    from ascend_jax.cube_group.result import CubeGroupResult

#: phases this module writes and :func:`check_trace` accepts
PHASES = {"X", "B", "E", "i", "I", "C", "s", "t", "f", "M"}
_AIC_TID, _AIV_TID = 1, 1001  # thread ids: AIC core c -> 1 + c, AIV block b -> 1001 + b


def record_cube(
    program,
    schedule: str,
    seed: int,
    max_steps: int | None = None,
    cost: Any = None,
    draws: str = "reference",
    aiv_blocks: tuple[int, ...] | None = None,
):
    """Runs one lane in the reference interpreter with event recording.

    ``draws`` (``random`` schedule only): ``"reference"`` lets the interpreter draw its own
    interleaving from ``seed`` (what ``--engine reference`` ran); ``"jax"`` replays the JAX engine's
    draws for a lane of that seed (:class:`EngineDraws`), so the recording is the lane the JAX engine
    ran, step for step. ``aiv_blocks``: the engine's AIV rows (the sorted block_idx of every program
    of the batch; default this program's), which fix the shape of its draws.

    Returns ``(result, events)``: the lane's :class:`CubeGroupResult` and the recorded event dicts
    (see ``EventRecorder.event`` in ``cube_group/reference/events.py``: ``core``, ``group``, ``name``, ``ts`` and ``dur`` in
    cycles under ``timed``, else steps, ``args``; receives add ``from``, the index of the event
    that wrote the head they read).
    """
    from ascend_jax.cube_group.reference import ReferenceInterpreter

    if draws not in ("reference", "jax"):
        raise ValueError(f"draws = {draws!r}: must be 'reference' or 'jax'")
    events: list[dict] = []
    if schedule == "random" and draws == "jax":
        interp = _scripted_interpreter(ReferenceInterpreter)(
            program, schedule=schedule, seed=seed, max_steps=max_steps, cost=cost, events=events
        )
        interp.script = EngineDraws(program, seed, aiv_blocks)
    else:
        interp = ReferenceInterpreter(
            program, schedule=schedule, seed=seed, max_steps=max_steps, cost=cost, events=events
        )
    return interp.run(), events


class EngineDraws:
    """The JAX engine's ``random``-schedule choices for one lane, step by step.

    The engine (``cube_group/engine/step.py``: ``step`` and ``_chosen``) starts from the key data
    ``[0, seed]`` and, every step the lane runs, splits its key in three: the next key, the AIVs'
    key and the AICs' key; an enabled core acts when its Bernoulli(1/2) draw over all ``V`` AIV rows
    (``aiv_blocks``) or all ``C`` AIC rows (every group's AICs in order) is true, delays always tick.
    This class computes the same draws with the same ``jax.random`` calls, in chunks of steps.
    """

    CHUNK = 256

    def __init__(self, program, seed: int, aiv_blocks: tuple[int, ...] | None = None):
        self.aiv_row = {b: i for i, b in enumerate(aiv_blocks or sorted(b for b, _ in program.aivs))}
        self.aic_row = {gk: i for i, gk in enumerate((gi, k) for gi, g in enumerate(program.groups)
                                                     for k in range(g.aic_num))}  # fmt: skip
        self.key = np.array([0, seed], np.uint32)
        self.aiv: np.ndarray = np.zeros((0, len(self.aiv_row)), bool)
        self.aic: np.ndarray = np.zeros((0, len(self.aic_row)), bool)

    def _extend(self, upto: int) -> None:
        import jax

        n = max(self.CHUNK, upto + 1 - len(self.aiv))
        v, c = len(self.aiv_row), len(self.aic_row)

        def one(key, _):
            raw = jax.random.key_data(jax.random.split(jax.random.wrap_key_data(key), 3))
            dv = jax.random.bernoulli(jax.random.wrap_key_data(raw[1]), 0.5, (v,))
            dc = jax.random.bernoulli(jax.random.wrap_key_data(raw[2]), 0.5, (c,))
            return raw[0], (dv, dc)

        key, (dv, dc) = jax.jit(lambda k: jax.lax.scan(one, k, None, length=n))(self.key)
        self.key = np.asarray(key)
        self.aiv = np.concatenate([self.aiv, np.asarray(dv)])
        self.aic = np.concatenate([self.aic, np.asarray(dc)])

    def acts(self, step: int, core: Any) -> bool:
        """Whether ``core`` (the interpreter's AIV or AIC) acts in engine step ``step`` (0-based)."""
        if step >= len(self.aiv):
            self._extend(step)
        if hasattr(core, "block_idx"):
            return bool(self.aiv[step, self.aiv_row[core.block_idx]])
        return bool(self.aic[step, self.aic_row[(core.group, core.k)]])


def _scripted_interpreter(base):
    """A :class:`ReferenceInterpreter` whose ``random`` choices come from ``self.script`` (an
    :class:`EngineDraws`) by step number instead of its own generator. Steps in which only delays
    tick draw nothing in the interpreter, but the engine's key advanced in each: the step counter
    counts them (``_more_steps``)."""

    class Scripted(base):
        script: EngineDraws
        _at = 0

        def step(self) -> bool:
            progressed = super().step()
            self._at += 1 + self._more_steps
            return progressed

        def _chosen(self, ready: list) -> list:
            return [c for c in ready if self.script.acts(self._at, c)]

    return Scripted


def lane_meta(recorded, run_lane, schedule: str, engine: str) -> dict[str, Any]:
    """The trace / report metadata that says whether the recording is the run's lane:
    ``matches_run`` (:func:`lane_match`), ``matches_run_reason`` and, under ``random``, how the
    recording's interleaving was drawn (``engine``: the engine that ran the batch; pass the same
    value as :func:`record_cube`'s ``draws``)."""
    ok, why = lane_match(recorded, run_lane, schedule)
    meta: dict[str, Any] = {"matches_run": ok, "matches_run_reason": why}
    if schedule == "random":
        meta["interleaving"] = (
            "the JAX engine's draws for this lane, replayed in the reference interpreter"
            if engine == "jax"
            else "the reference interpreter's draw from this seed, as the run drew it"
        )
    return meta


def lane_match(recorded, run_lane, schedule: str) -> tuple[bool, str]:
    """Whether a recording (``recorded``) is the history of the run's lane (``run_lane``): the same
    outcome (status, received logs, final slots, witness, error, asserts) and the same number of
    steps, under every schedule. Returns ``(matches, reason)``, the reason naming what differs."""
    diffs = []
    if recorded.status != run_lane.status:
        diffs.append(f"status {recorded.status.label} in the recording, {run_lane.status.label} in the run")
    elif recorded.outcome() != run_lane.outcome():
        diffs.append("the received logs, final slots, witness or error differ")
    if int(recorded.steps) != int(run_lane.steps):
        diffs.append(f"{int(recorded.steps)} steps in the recording, {int(run_lane.steps)} in the run")
    if not diffs:
        return True, f"same outcome and steps ({int(run_lane.steps)}) as the run's lane"
    why = "; ".join(diffs)
    if schedule == "random":
        why += " (the recording's random interleaving is not the lane's)"
    return False, why


def _home_groups(program) -> dict[int, int]:
    """block_idx -> the first group whose queue the AIV is bound to (where its delays and barriers go)."""
    home: dict[int, int] = {}
    for gi, b in sorted(program.queue_of):
        home.setdefault(b, gi)
    return home


def _tid(core: str) -> int:
    return (_AIC_TID if core.startswith("aic") else _AIV_TID) + int(core[3:])


def cube_trace(
    program: CubeGroupProgram, result: CubeGroupResult, events: list[dict], schedule: str, meta: dict | None = None
) -> dict:
    """The trace-event JSON object of one recorded cube-group lane.

    Args:
      program: the :class:`CubeGroupProgram` that ran.
      result: the recorded lane's :class:`CubeGroupResult` (its ``timing`` gives the clock).
      events: from :func:`record_cube`.
      schedule: the schedule recorded.
      meta: extra metadata (lane, seed, engine notes) for ``otherData``.
    """
    freq = float(result.timing["freq_mhz"]) if schedule == "timed" and result.timing else None
    scale = 1.0 / freq if freq else 1.0  # cycles -> µs, or 1 step -> 1 µs
    home = _home_groups(program)
    first = min(home.values(), default=0)
    out: list[dict] = []
    threads: dict[tuple[int, int], str] = {}

    def place(e: dict) -> tuple[int, int]:
        gi = e["group"]
        if gi is None:
            gi = home.get(int(e["core"][3:]), first) if e["core"].startswith("aiv") else first
        pid, tid = gi + 1, _tid(e["core"])
        threads.setdefault((pid, tid), e["core"])
        return pid, tid

    for gi, g in enumerate(program.groups):  # every AIC of a group has its track, even if idle
        for k in range(g.aic_num):
            threads[(gi + 1, _tid(f"aic{g.first_aic + k}"))] = f"aic{g.first_aic + k}"
    for (gi, b), _ in program.queue_of.items():
        threads[(gi + 1, _tid(f"aiv{b}"))] = f"aiv{b}"

    where: list[tuple[int, int, float] | None] = []  # per event: (pid, tid, flow binding time µs)
    for e in events:
        if e["name"] == "occupancy":
            where.append(None)
            continue
        pid, tid = place(e)
        ts, end = round(e["ts"] * scale, 6), round((e["ts"] + e["dur"]) * scale, 6)  # µs, exact to 1 ps
        dur = round(end - ts, 6)
        if e["name"] == "error":
            out.append({"name": "error", "ph": "i", "s": "t", "ts": ts, "pid": pid, "tid": tid, "args": e["args"]})
            where.append(None)
            continue
        cat = "blocked" if e["name"] == "blocked" else "action"
        out.append({"name": e["name"], "cat": cat, "ph": "X", "ts": ts, "dur": dur, "pid": pid, "tid": tid,
                    "args": e["args"]})  # fmt: skip
        where.append((pid, tid, ts + dur / 2))
    flow = 0
    for i, e in enumerate(events):
        if e["name"] != "receive" or e.get("from", -1) < 0 or where[e["from"]] is None:
            continue
        (spid, stid, sts), (fpid, ftid, fts) = where[e["from"]], where[i]
        flow += 1
        args = {"queue": e["args"]["queue"], "depth": e["args"]["depth"], "state": e["args"]["state"]}
        out.append({"name": "message", "cat": "message", "ph": "s", "id": flow, "ts": sts, "pid": spid,
                    "tid": stid, "args": args})  # fmt: skip
        out.append({"name": "message", "cat": "message", "ph": "f", "bp": "e", "id": flow, "ts": fts, "pid": fpid,
                    "tid": ftid, "args": args})  # fmt: skip
    for gi, g in enumerate(program.groups):  # occupancy counters start at 0 (zeroed workspace)
        for q in range(g.msg_queue_size):
            out.append(_counter(gi + 1, q, 0.0, 0))
    for e in events:
        if e["name"] == "occupancy":
            ts = round(e["ts"] * scale, 6)
            out.append(_counter(e["group"] + 1, e["args"]["queue"], ts, e["args"]["level"]))
    for gi, g in enumerate(program.groups):
        label = f"group {g.name} (AICs {g.first_aic}..{g.first_aic + g.aic_num - 1}, {g.msg_queue_size} queues)"
        out.append({"name": "process_name", "ph": "M", "pid": gi + 1, "args": {"name": label}})
        out.append({"name": "process_sort_index", "ph": "M", "pid": gi + 1, "args": {"sort_index": gi}})
    for (pid, tid), core in sorted(threads.items()):
        kind = "AIC" if core.startswith("aic") else "AIV"
        out.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": f"{core} ({kind})"}})
        out.append({"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid, "args": {"sort_index": tid}})
    unit = (
        f"cycles of the AI core clock converted to microseconds at {freq:g} MHz"
        if freq
        else "engine steps: 1 microsecond on the time axis is one step"
    )
    other = {
        "tool": "ascend_jax",
        "scenario": program.name,
        "schedule": schedule,
        "time_unit": unit,
        "status": result.status.label,
        "steps": int(result.steps),
        **(meta or {}),
    }
    return {"traceEvents": out, "displayTimeUnit": "ns" if freq else "ms", "otherData": other}


def queue_label(rank: int, name: str) -> str:
    """A comm queue's name without its rank prefix (``rank0.stream0`` on rank 0 -> ``stream0``), for
    rows already grouped or labelled by rank; a name without the prefix is kept whole."""
    prefix = f"rank{rank}."
    return name[len(prefix) :] if name.startswith(prefix) and len(name) > len(prefix) else name


def queue_row_label(rank: int, name: str) -> str:
    """One plot row's label, the rank said once: ``rank 0 stream0`` (not ``rank 0 rank0.stream0``)."""
    return f"rank {rank} {queue_label(rank, name)}"


def _counter(pid: int, queue: int, ts: float, level: int) -> dict:
    return {"name": f"queue {queue} occupancy", "ph": "C", "ts": ts, "pid": pid, "args": {"non-FREE slots": level}}


def comm_trace(result, meta: dict | None = None) -> dict:
    """The trace-event JSON object of a comm run (:class:`ascend_jax.aicpu.reference.CommResult`):
    tasks as slices (µs), record -> wait flows, one process per rank, one thread per queue."""
    from ascend_jax.aicpu.reference import QueueStatus, TaskKind  # where both aicpu layouts export them

    p = result.program
    out: list[dict] = []
    sets: list[tuple[float, int, int, int]] = []  # (end s, queue, task, notify): records
    waits: list[tuple[float, int, int, int]] = []  # (start s, queue, task, notify)
    mid: dict[tuple[int, int], float] = {}
    for q, qu in enumerate(p.queues):
        pid, tid = qu.rank + 1, q + 1
        failed = int(result.queue_status[q]) == QueueStatus.FAILED
        for i, t in enumerate(qu.tasks):
            start, end = float(result.start[q, i]), float(result.end[q, i])
            if math.isnan(start):
                continue
            kind = TaskKind(t.kind).name.lower()
            args: dict[str, Any] = {"kind": kind, "task": i}
            if t.notify is not None and not isinstance(t.notify, int | np.integer):
                pass
            elif int(t.notify) >= 0 and t.kind in (TaskKind.RECORD, TaskKind.WAIT, TaskKind.KERNEL):
                args["notify"] = p.notify_names[int(t.notify)]
            if t.kind in (TaskKind.COPY, TaskKind.REDUCE):
                args.update(src_rank=t.src_rank, dst_rank=t.dst_rank, nbytes=t.nbytes)
            if t.kind == TaskKind.WAIT and t.timeout:
                args["timeout_s"] = t.timeout
            failing = failed and i == int(result.queue_pc[q])
            if failing:
                args["error"] = int(result.queue_error[q])
            name = (t.label or kind) + (" (failed)" if failing else "")
            ts = round(start * 1e6, 6)
            dur = round(max(round(end * 1e6, 6) - ts, 0.0), 6)
            out.append({"name": name, "cat": kind, "ph": "X", "ts": ts, "dur": dur, "pid": pid, "tid": tid,
                        "args": args})  # fmt: skip
            mid[(q, i)] = ts + dur / 2
            if failing:
                continue
            if t.kind in (TaskKind.RECORD, TaskKind.KERNEL) and int(t.notify) >= 0:
                sets.append((end, q, i, int(t.notify)))
            elif t.kind == TaskKind.WAIT:
                waits.append((start, q, i, int(t.notify)))
    # the notify rule in time order: at one time, records set before waits consume (a wait that
    # starts when its flag was set was released by that record)
    flow, setter = 0, {}
    timeline = [(t, 0, q, i, n) for t, q, i, n in sets] + [(t, 1, q, i, n) for t, q, i, n in waits]
    for _, is_wait, q, i, n in sorted(timeline):
        if not is_wait:
            setter.setdefault(n, (q, i))  # a record on a set flag is lost
            continue
        src = setter.pop(n, None)
        if src is None:
            continue
        flow += 1
        for ph, (qq, ii) in (("s", src), ("f", (q, i))):
            e = {"name": "notify", "cat": "notify", "ph": ph, "id": flow, "ts": mid[(qq, ii)],
                 "pid": p.queues[qq].rank + 1, "tid": qq + 1, "args": {"notify": p.notify_names[n]}}  # fmt: skip
            if ph == "f":
                e["bp"] = "e"
            out.append(e)
    for r in range(p.n_ranks):
        out.append({"name": "process_name", "ph": "M", "pid": r + 1, "args": {"name": f"rank {r}"}})
        out.append({"name": "process_sort_index", "ph": "M", "pid": r + 1, "args": {"sort_index": r}})
    for q, qu in enumerate(p.queues):
        short = queue_label(qu.rank, qu.name)  # the process is "rank r": the thread says the rest
        name = short if qu.kind in short else f"{short} ({qu.kind})"
        out.append({"name": "thread_name", "ph": "M", "pid": qu.rank + 1, "tid": q + 1, "args": {"name": name}})
        out.append(
            {"name": "thread_sort_index", "ph": "M", "pid": qu.rank + 1, "tid": q + 1, "args": {"sort_index": q}}
        )
    other = {
        "tool": "ascend_jax",
        "scenario": p.name,
        "time_unit": "simulated seconds converted to microseconds",
        "status": result.status.label,
        "steps": int(result.steps),
        "flows": "notify record -> the wait it releases, derived from the timeline",
        **(meta or {}),
    }
    return {"traceEvents": out, "displayTimeUnit": "ns", "otherData": other}


def write_trace(trace: dict, path: str | Path) -> None:
    """Writes ``trace`` as compact JSON to ``path`` (that file only)."""
    Path(path).write_text(json.dumps(trace, separators=(",", ":"), allow_nan=False))


def count_events(trace: dict) -> dict[str, int]:
    """Slices per name, plus ``flows`` (s/f pairs), ``counter samples`` and ``instant`` events."""
    counts: dict[str, int] = defaultdict(int)
    for e in trace["traceEvents"]:
        ph = e["ph"]
        if ph == "X":
            counts[e["name"] if e.get("cat") in ("action", "blocked") else e.get("cat", e["name"])] += 1
        elif ph == "s":
            counts["flows"] += 1
        elif ph == "C":
            counts["counter samples"] += 1
        elif ph in ("i", "I"):
            counts["instant"] += 1
    return dict(counts)


def _num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


_REQUIRED = {
    "X": ("name", "ts", "dur", "pid", "tid"),
    "B": ("name", "ts", "pid", "tid"),
    "E": ("ts", "pid", "tid"),
    "i": ("name", "ts", "pid"),
    "I": ("name", "ts", "pid"),
    "C": ("name", "ts", "pid", "args"),
    "s": ("name", "cat", "id", "ts", "pid", "tid"),
    "t": ("name", "cat", "id", "ts", "pid", "tid"),
    "f": ("name", "cat", "id", "ts", "pid", "tid"),
    "M": ("name", "pid", "args"),
}


def check_trace(trace: Any) -> list[str]:
    """Problems of ``trace`` as a trace-event JSON object ([] when it is valid).

    Checks: the ``traceEvents`` list; a known ``ph`` and its required keys on every event; numeric,
    finite ``ts`` / ``dur`` (``dur`` >= 0); B/E balanced per thread; X slices of a thread nested
    (none overlaps another partially); numeric counter values; every flow id with one ``s`` and
    one ``f``, the ``f`` not before the ``s``, each bound inside an X slice of its thread.
    """
    if not isinstance(trace, dict) or not isinstance(trace.get("traceEvents"), list):
        return ["top level: a JSON object with a 'traceEvents' list"]
    problems: list[str] = []
    slices: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    open_b: dict[tuple, int] = defaultdict(int)
    flows: dict[Any, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for n, e in enumerate(trace["traceEvents"]):
        ph = e.get("ph") if isinstance(e, dict) else None
        if ph not in PHASES:
            problems.append(f"event {n}: unknown phase {ph!r}")
            continue
        missing = [k for k in _REQUIRED[ph] if k not in e]
        if missing:
            problems.append(f"event {n} ({ph}): missing {missing}")
            continue
        if ph != "M" and not _num(e["ts"]):
            problems.append(f"event {n} ({ph}): ts {e['ts']!r} is not a finite number")
            continue
        key = (e.get("pid"), e.get("tid"))
        if ph == "X":
            if not _num(e["dur"]) or e["dur"] < 0:
                problems.append(f"event {n} (X): dur {e['dur']!r} is not a number >= 0")
                continue
            slices[key].append((e["ts"], e["ts"] + e["dur"]))
        elif ph == "B":
            open_b[key] += 1
        elif ph == "E":
            open_b[key] -= 1
            if open_b[key] < 0:
                problems.append(f"event {n} (E): no open B slice on pid/tid {key}")
        elif ph == "C":
            if not isinstance(e["args"], dict) or not all(_num(v) for v in e["args"].values()):
                problems.append(f"event {n} (C): counter values must be numbers")
        elif ph in "stf":
            flows[(e["cat"], e["id"])][ph].append(e)
    for key, count in open_b.items():
        if count > 0:
            problems.append(f"pid/tid {key}: {count} B slices never end")
    for key, spans in slices.items():
        spans.sort(key=lambda s: (s[0], -s[1]))
        stack: list[float] = []
        for start, end in spans:
            while stack and stack[-1] <= start + 1e-9 * max(1.0, abs(start)):
                stack.pop()
            if stack and end > stack[-1] + 1e-9 * max(1.0, abs(end)):
                problems.append(f"pid/tid {key}: slice [{start}, {end}] overlaps its parent ending at {stack[-1]}")
                break
            stack.append(end)

    def inside(e: dict) -> bool:
        return any(s <= e["ts"] <= t for s, t in slices.get((e["pid"], e["tid"]), []))

    for fid, parts in flows.items():
        if len(parts["s"]) != 1 or len(parts["f"]) != 1:
            problems.append(f"flow {fid}: {len(parts['s'])} 's' and {len(parts['f'])} 'f' events (need 1 and 1)")
            continue
        s, f = parts["s"][0], parts["f"][0]
        if f["ts"] < s["ts"]:
            problems.append(f"flow {fid}: ends at {f['ts']} before it starts at {s['ts']}")
        for x in (s, f):
            if not inside(x):
                problems.append(f"flow {fid}: its '{x['ph']}' at {x['ts']} is inside no slice of pid/tid")
    return problems

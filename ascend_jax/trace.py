"""Chrome trace-event JSON of a run (the format Perfetto and ``chrome://tracing`` open).

Cube groups: one lane is re-run in the reference interpreter with event recording
(:class:`ascend_jax.cube_group.reference.ReferenceInterpreter`, ``events=[]``); both engines take
the same steps under ``lockstep`` and the same cycles under ``timed``, so the recording is the
lane's history. Under ``random`` the reference draws its own interleaving from the lane's seed (not
the JAX engine's): the outcome (received logs, final slots, witness) is the same by the schedule
rule of the model, the order of actions and the step count are the reference's; the trace's
metadata says so and carries the JAX lane's own status and steps.

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


def record_cube(program, schedule: str, seed: int, max_steps: int | None = None, cost: Any = None):
    """Runs one lane in the reference interpreter with event recording.

    Returns ``(result, events)``: the lane's :class:`CubeGroupResult` and the recorded event dicts
    (see ``ReferenceInterpreter._event``: ``core``, ``group``, ``name``, ``ts`` and ``dur`` in
    cycles under ``timed``, else steps, ``args``; receives add ``from``, the index of the event
    that wrote the head they read).
    """
    from ascend_jax.cube_group.reference import ReferenceInterpreter

    events: list[dict] = []
    interp = ReferenceInterpreter(program, schedule, seed, max_steps, cost=cost, events=events)
    return interp.run(), events


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
        name = f"{qu.name} ({qu.kind})"
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

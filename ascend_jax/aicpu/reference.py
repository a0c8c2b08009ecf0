"""Sequential reference interpreter of task programs (the oracle of the JAX engine) and the result.

Semantics of one step (both engines):

1. Every running queue looks at its head task, judged on the state at the start of the step:
   a RECORD, a KERNEL task, a COPY or a REDUCE is ready at ``clock``; a WAIT is ready when its
   notify is set, at ``max(clock, time the notify was set)``, and of several waiters on one set
   notify the lowest queue index wins (the others stay blocked). A WAIT with a timeout (> 0)
   whose notify is not set, or was set after its deadline (``clock + timeout``), fails with the
   wait-timeout error at the deadline. A KERNEL task with an error code, or a COPY / REDUCE
   touching bytes outside every allocation of its rank, fails its queue at ``clock``.
2. Ready tasks execute: ``start = clock`` (a WAIT: ``max(clock, time the notify was set)``),
   ``end = start + duration``. Waits clear their notify; then records set theirs (lowest queue
   first; a record on a notify that is still set is *lost* and counted). Copies and reductions
   read memory as it was at the start of the step and write in queue order. A queue whose last
   task executed is done; a failed queue runs nothing more.
3. Events are taken in simulated-time order: every candidate (an executable head task at its
   start time, a failing one at its failure time, a blocked WAIT with a timeout at its deadline)
   has a time, and a step performs only the candidates at the earliest time. So a record issued
   at 2 us and a wait that only starts at 1 s see each other in that order, whatever the number
   of tasks before them. If no queue has a candidate while some is unfinished, the run is a hang
   and stops with a report of every stuck queue, its task and its notify.

Times are float32 seconds, computed identically by both engines.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import numpy as np

from ascend_jax.aicpu.codes import SIZE_TABLE, HcclDataType, HcclReduceOp, numpy_dtype
from ascend_jax.aicpu.world import MEM_BASE, MEMORY_FAULT_ERROR, TaskKind, TaskProgram

F32 = np.float32


class QueueStatus(enum.IntEnum):
    RUNNING = 0
    DONE = 1
    FAILED = 2


class CommStatus(enum.IntEnum):
    RUNNING = 0
    OK = 1
    ERROR = 2
    HANG = 3
    MAX_STEPS = 4

    @property
    def label(self) -> str:
        return self.name.lower()


def reduce_bytes(dst: np.ndarray, src: np.ndarray, dtype: int, op: int) -> np.ndarray:
    """``op(dst, src)`` on byte arrays holding elements of ``dtype`` (numpy; the hardware rounds
    once per element to the element type). MAX / MIN keep ``dst`` on ties (so -0 / +0 is
    deterministic); a NaN operand gives the canonical quiet NaN."""
    dt = numpy_dtype(dtype)
    a = dst.view(dt)
    b = src.view(dt)
    with np.errstate(all="ignore"):  # arbitrary bytes may hold NaN / Inf, as on the device
        if op == HcclReduceOp.SUM:
            out = a + b if dt.kind in "iu" else (a.astype(np.float32) + b.astype(np.float32)).astype(dt)
        elif op == HcclReduceOp.MAX:
            out = np.where(b > a, b, a)
        else:
            out = np.where(b < a, b, a)
        if dt.kind not in "iu":  # any NaN operand gives the canonical quiet NaN (both engines)
            nan = np.isnan(a.astype(np.float32)) | np.isnan(b.astype(np.float32))
            out = np.where(nan, np.array(np.nan, dt), out).astype(dt)
    return np.ascontiguousarray(out).view(np.uint8)


@dataclasses.dataclass
class CommResult:
    """What a run produced: status, per-queue outcome, timeline, memory, and the report.

    Attributes:
      program: the program that ran.
      status: OK, ERROR (some queue failed), HANG, MAX_STEPS.
      steps: engine steps.
      queue_status, queue_error, queue_pc, clock: per queue.
      lost: per notify, records lost on an already-set flag.
      memory: final device memory of every rank.
      timeline: per queue, (start, end) of every executed task (NaN if it never ran).
      hang: on HANG, one entry per stuck queue.
    """

    program: TaskProgram
    status: CommStatus
    steps: int
    queue_status: np.ndarray
    queue_error: np.ndarray
    queue_pc: np.ndarray
    clock: np.ndarray
    lost: np.ndarray
    memory: list[np.ndarray]
    start: np.ndarray
    end: np.ndarray
    flags: np.ndarray
    hang: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    numerics: dict[str, Any] | None = None

    def outcome(self) -> tuple:
        """Everything both engines must agree on."""
        return (
            self.status,
            tuple(self.queue_status.tolist()),
            tuple(self.queue_error.tolist()),
            tuple(self.queue_pc.tolist()),
            tuple(self.lost.tolist()),
            tuple(self.flags.tolist()),
            tuple(m.tobytes() for m in self.memory),
            tuple(tuple(map(tuple, d)) for d in self.hang),
        )

    def sync_code(self, queue: int) -> int:
        """``aclrtSynchronizeStream`` of a stream: its error, 0 if done, -1 if it never finishes (hang)."""
        st = QueueStatus(int(self.queue_status[queue]))
        if st == QueueStatus.RUNNING:
            return -1
        return int(self.queue_error[queue])

    def fill_syncs(self) -> None:
        """Sets ``code`` of every :class:`StreamSync` the host programs received (-1: never returns)."""
        world = self.program.world
        for sync in getattr(world, "syncs", []):
            if sync.stream >= 0:
                sync.code = self.sync_code(sync.stream)

    def output(self, name: str) -> np.ndarray:
        """The final value of an output buffer the model marked."""
        rank, addr, dtype, count = self.program.outputs[name]
        n = count * SIZE_TABLE[dtype]
        raw = self.memory[rank][addr - MEM_BASE : addr - MEM_BASE + n]
        return raw.copy().view(numpy_dtype(dtype))

    def rank_errors(self) -> list[int]:
        """Per rank: the first non-zero ``aclrtSynchronizeStream`` code of its streams (0 if none)."""
        out = []
        for r in range(self.program.n_ranks):
            codes = [
                self.sync_code(q) for q, qu in enumerate(self.program.queues) if qu.rank == r and qu.kind == "stream"
            ]
            bad = [c for c in codes if c != 0]
            out.append(bad[0] if bad else 0)
        return out

    def to_json(self, timeline: bool = True) -> dict[str, Any]:
        p = self.program
        ranks = []
        errors = self.rank_errors()
        for r in range(p.n_ranks):
            qs = [
                {
                    "queue": qu.name,
                    "kind": qu.kind,
                    "status": QueueStatus(int(self.queue_status[q])).name.lower(),
                    "error": int(self.queue_error[q]),
                    "tasks_done": int(self.queue_pc[q]),
                    "tasks": len(qu.tasks),
                }
                for q, qu in enumerate(p.queues)
                if qu.rank == r
            ]
            ranks.append({"rank": r, "error": errors[r], "queues": qs})
        out: dict[str, Any] = {
            "scenario": p.name,
            "status": self.status.label,
            "steps": int(self.steps),
            "time_s": float(np.nanmax(self.clock)) if self.clock.size else 0.0,
            "ranks": ranks,
        }
        lost = [{"notify": p.notify_names[n], "lost_records": int(c)} for n, c in enumerate(self.lost) if c]
        if lost:
            out["lost_records"] = lost
        if self.hang:
            out["hang"] = self.hang
        if timeline:
            out["timeline"] = [
                {
                    "queue": qu.name,
                    "task": qu.tasks[i].label or TaskKind(qu.tasks[i].kind).name.lower(),
                    "start": float(self.start[q, i]),
                    "end": float(self.end[q, i]),
                }
                for q, qu in enumerate(p.queues)
                for i in range(len(qu.tasks))
                if not np.isnan(self.start[q, i])
            ]
        if self.numerics is not None:
            out["numerics"] = self.numerics
        return out


def hang_report(program: TaskProgram, status: np.ndarray, pc: np.ndarray) -> list[dict[str, Any]]:
    out = []
    for q, qu in enumerate(program.queues):
        if status[q] != QueueStatus.RUNNING:
            continue
        t = qu.tasks[int(pc[q])]
        entry = {"queue": qu.name, "rank": qu.rank, "task": int(pc[q]), "label": t.label}
        if t.kind == TaskKind.WAIT:
            entry["waits_for"] = program.notify_names[t.notify]
        out.append(entry)
    return out


class CommReference:
    """Runs a :class:`TaskProgram` one step at a time in plain Python / numpy."""

    def __init__(self, program: TaskProgram, max_steps: int | None = None):
        self.p = program
        self.max_steps = program.max_steps if max_steps is None else max_steps
        nq, nn = len(program.queues), len(program.notify_names)
        self.pc = np.zeros(nq, np.int64)
        self.status = np.array(
            [QueueStatus.DONE if not q.tasks else QueueStatus.RUNNING for q in program.queues], np.int64
        )
        self.error = np.zeros(nq, np.int64)
        self.clock = np.zeros(nq, F32)
        self.flag = np.zeros(nn, bool)
        self.flag_time = np.zeros(nn, F32)
        self.lost = np.zeros(nn, np.int64)
        self.mem = [m.copy() for m in program.memory]
        width = max((len(q.tasks) for q in program.queues), default=1)
        self.start = np.full((nq, width), np.nan, F32)
        self.end = np.full((nq, width), np.nan, F32)

    def _inside(self, rank: int, addr: int, n: int) -> bool:
        if n <= 0:
            return True
        return any(s <= addr and addr + n <= e for s, e, _ in self.p.allocs[rank])

    def step(self) -> tuple[bool, bool]:
        """One step; returns (progressed, hang)."""
        p = self.p
        heads = {}
        for q, qu in enumerate(p.queues):
            if self.status[q] == QueueStatus.RUNNING:
                heads[q] = qu.tasks[int(self.pc[q])]
        events = []  # (time, q, "exec" | error code)
        for q, t in heads.items():
            if t.kind == TaskKind.WAIT:
                deadline = F32(self.clock[q] + F32(t.timeout))
                if self.flag[t.notify]:
                    if t.timeout > 0 and self.flag_time[t.notify] > deadline:
                        events.append((deadline, q, p.wait_timeout_error))
                    else:
                        events.append((F32(max(self.clock[q], self.flag_time[t.notify])), q, "exec"))
                elif t.timeout > 0:
                    events.append((deadline, q, p.wait_timeout_error))
            elif t.kind == TaskKind.KERNEL and t.error:
                events.append((self.clock[q], q, t.error))
            elif t.kind in (TaskKind.COPY, TaskKind.REDUCE) and not (
                self._inside(t.src_rank, t.src_addr, t.nbytes) and self._inside(t.dst_rank, t.dst_addr, t.nbytes)
            ):
                events.append((self.clock[q], q, MEMORY_FAULT_ERROR))
            else:
                events.append((self.clock[q], q, "exec"))
        if not events:
            return False, bool(heads)
        tmin = min(e[0] for e in events)
        taken: set[int] = set()
        execute, fail, times = [], [], {}
        for at, q, what in sorted((e for e in events if e[0] == tmin), key=lambda e: e[1]):
            t = heads[q]
            if what != "exec":
                fail.append((q, what, at))
                continue
            if t.kind == TaskKind.WAIT:
                if t.notify in taken:
                    continue  # a lower queue took this notify
                taken.add(t.notify)
            execute.append(q)
            times[q] = at
        snapshot = [m.copy() for m in self.mem]
        ends = {}
        for q in execute:
            t = heads[q]
            start = F32(times[q])
            ends[q] = F32(start + F32(t.duration))
            self.start[q, self.pc[q]] = start
            self.end[q, self.pc[q]] = ends[q]
        for q in execute:  # waits consume first
            t = heads[q]
            if t.kind == TaskKind.WAIT:
                self.flag[t.notify] = False
        for q in execute:  # then records set, lowest queue first
            t = heads[q]
            if t.kind in (TaskKind.RECORD, TaskKind.KERNEL) and t.notify >= 0:
                if self.flag[t.notify]:
                    self.lost[t.notify] += 1
                else:
                    self.flag[t.notify] = True
                    self.flag_time[t.notify] = ends[q]
        for q in execute:  # data, reading the start-of-step memory, writing in queue order
            t = heads[q]
            if t.kind not in (TaskKind.COPY, TaskKind.REDUCE) or t.nbytes <= 0:
                continue
            so, do = t.src_addr - MEM_BASE, t.dst_addr - MEM_BASE
            data = snapshot[t.src_rank][so : so + t.nbytes]
            if t.kind == TaskKind.REDUCE:
                data = reduce_bytes(snapshot[t.dst_rank][do : do + t.nbytes].copy(), data.copy(), t.dtype, t.op)
            self.mem[t.dst_rank][do : do + t.nbytes] = data
        for q in execute:
            self.clock[q] = ends[q]
            self.pc[q] += 1
            if self.pc[q] >= len(p.queues[q].tasks):
                self.status[q] = QueueStatus.DONE
        for q, code, at in fail:
            self._fail(q, code, at)
        return True, False

    def _fail(self, q: int, code: int, at: Any) -> None:
        self.status[q] = QueueStatus.FAILED
        self.error[q] = code
        self.start[q, self.pc[q]] = at
        self.end[q, self.pc[q]] = at
        self.clock[q] = at

    def run(self) -> CommResult:
        steps, status, hang = 0, CommStatus.RUNNING, False
        while status == CommStatus.RUNNING:
            _, hang = self.step()
            steps += 1
            if hang:
                status = CommStatus.HANG
            elif not (self.status == QueueStatus.RUNNING).any():
                status = CommStatus.ERROR if (self.status == QueueStatus.FAILED).any() else CommStatus.OK
            elif steps >= self.max_steps:
                status = CommStatus.MAX_STEPS
        return CommResult(
            program=self.p,
            status=status,
            steps=steps,
            queue_status=self.status.copy(),
            queue_error=self.error.copy(),
            queue_pc=self.pc.copy(),
            clock=self.clock.copy(),
            lost=self.lost.copy(),
            memory=[m.copy() for m in self.mem],
            start=self.start,
            end=self.end,
            flags=self.flag.copy(),
            hang=hang_report(self.p, self.status, self.pc) if status == CommStatus.HANG else [],
        )


def run_comm_reference(program: TaskProgram, max_steps: int | None = None) -> CommResult:
    """Runs ``program`` in the reference interpreter and fills the hosts' ``StreamSync`` codes."""
    result = CommReference(program, max_steps).run()
    result.fill_syncs()
    return result


__all__ = ["CommReference", "CommResult", "CommStatus", "HcclDataType", "QueueStatus", "run_comm_reference"]

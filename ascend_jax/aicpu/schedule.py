"""The control pass of the batched comm engine: which task runs when, computed once per task
structure, with no device memory.

Whether a task executes, fails or waits, and at what simulated time, depends only on the tasks, the
notifies, the allocations and the cost parameters, never on the bytes in device memory (copies and
reductions move data but do not branch on it). So lanes of one task structure share one control
run: :class:`ControlPass` follows the step semantics documented in
:mod:`ascend_jax.aicpu.reference` (events in simulated-time order, lowest queue first on ties,
binary notifies, timeouts, memory faults, kernel pauses) and records, for every step, the data
tasks it executed as :class:`DataOp` tuples. The engine then applies those steps to the memory of
every lane at once (:mod:`ascend_jax.aicpu.engine`).

A kernel task whose function has not run yet stops the pass (:meth:`ControlPass.advance` returns
the pause); the engine runs the kernel through the device model over the memory as it is at that
point and resumes the pass. Times are float32 seconds with the reference's rounding, step for step.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ascend_jax.aicpu.device import DeviceModel
from ascend_jax.aicpu.result import CommStatus, QueueStatus
from ascend_jax.aicpu.tasks import MEM_BASE, MEMORY_FAULT_ERROR, TaskKind, TaskProgram

F32 = np.float32
_NAN = F32(np.nan)


class DataOp(NamedTuple):
    """One executed copy or reduction: ``nbytes`` bytes from ``src_rank`` at byte offset ``src_off``
    (from the first mapped address) to ``dst_rank`` at ``dst_off``; ``reduce`` with HcclDataType
    ``dtype`` and HcclReduceOp ``op`` (ignored for a copy)."""

    reduce: bool
    src_rank: int
    src_off: int
    dst_rank: int
    dst_off: int
    nbytes: int
    dtype: int
    op: int


#: One step's data tasks in queue order: they read the memory as it was at the start of the step and
#: write in this order.
DataStep = tuple[DataOp, ...]


class Pause(NamedTuple):
    """The pass stopped before kernel tasks whose functions must run now: ``(time s, queue)`` pairs
    in queue order."""

    kernels: tuple[tuple[F32, int], ...]


class ControlPass:
    """The control state of one run: program counters, queue status and error, clocks, notify flags,
    set times and lost records, the timeline, and the data steps taken since the last
    :meth:`take_steps`.

    Args:
      program: a private fork (kernels append to its queues).
      model: the device model that runs its kernels.
      max_steps: step bound of the run.
    """

    def __init__(self, program: TaskProgram, model: DeviceModel, max_steps: int):
        self.p = program
        self.model = model
        self.max_steps = max_steps
        nq, nn = len(program.queues), len(program.notify_names)
        self.pc = [0] * nq
        self.qstatus = [QueueStatus.DONE if not q.tasks else QueueStatus.RUNNING for q in program.queues]
        self.qerror = [0] * nq
        self.clock = [F32(0)] * nq
        self.flag = [False] * nn
        self.flag_time = [F32(0)] * nn
        self.lost = [0] * nn
        self.start: list[list[F32]] = [[] for _ in range(nq)]
        self.end: list[list[F32]] = [[] for _ in range(nq)]
        self.allocs = [[(s, e) for s, e, _ in al] for al in program.allocs]
        self.status = CommStatus.RUNNING
        self.steps = 0
        self.data: list[DataStep] = []

    # -- helpers ---------------------------------------------------------------------------------
    def _inside(self, rank: int, addr: int, n: int) -> bool:
        return n <= 0 or any(s <= addr and addr + n <= e for s, e in self.allocs[rank])

    def _set(self, times: list[list[F32]], q: int, i: int, value: F32) -> None:
        row = times[q]
        if len(row) <= i:
            row.extend([_NAN] * (i + 1 - len(row)))
        row[i] = value

    def reopen(self) -> None:
        """After kernels submitted tasks: a queue that had finished runs again."""
        for q, qu in enumerate(self.p.queues):
            if self.qstatus[q] == QueueStatus.DONE and self.pc[q] < len(qu.tasks):
                self.qstatus[q] = QueueStatus.RUNNING

    def take_steps(self) -> list[DataStep]:
        """The data steps recorded since the last call (steps without data are left out)."""
        out, self.data = self.data, []
        return out

    # -- the step ------------------------------------------------------------------------------
    def _step(self) -> Pause | bool:
        """One step; returns a :class:`Pause` (nothing changed), or whether it was a hang."""
        p = self.p
        queues = p.queues
        events = []  # (time, q, what): what is "exec", "pause" or an error code
        for q, qu in enumerate(queues):
            if self.qstatus[q] != QueueStatus.RUNNING:
                continue
            t = qu.tasks[self.pc[q]]
            nb = F32(t.not_before)
            ready = self.clock[q] if self.clock[q] >= nb else nb
            kind = t.kind
            if kind == TaskKind.WAIT:
                deadline = F32(ready + F32(t.timeout))
                if self.flag[t.notify]:
                    if t.timeout > 0 and self.flag_time[t.notify] > deadline:
                        events.append((deadline, q, p.wait_timeout_error))
                    else:
                        ft = self.flag_time[t.notify]
                        events.append((F32(ready if ready >= ft else ft), q, "exec"))
                elif t.timeout > 0:
                    events.append((deadline, q, p.wait_timeout_error))
            elif kind == TaskKind.KERNEL and t.launch >= 0:
                events.append((ready, q, "pause"))
            elif kind == TaskKind.KERNEL and t.error:
                events.append((F32(ready + F32(t.duration)), q, t.error))
            elif (kind == TaskKind.COPY or kind == TaskKind.REDUCE) and not (
                self._inside(t.src_rank, t.src_addr, t.nbytes) and self._inside(t.dst_rank, t.dst_addr, t.nbytes)
            ):
                events.append((ready, q, MEMORY_FAULT_ERROR))
            else:
                events.append((ready, q, "exec"))
        if not events:
            return any(s == QueueStatus.RUNNING for s in self.qstatus)
        tmin = min(e[0] for e in events)
        now = [e for e in events if e[0] == tmin]  # already in queue order
        pauses = tuple((at, q) for at, q, what in now if what == "pause")
        if pauses:
            return Pause(pauses)
        taken: set[int] = set()
        execute = []
        fail = []
        for at, q, what in now:
            t = queues[q].tasks[self.pc[q]]
            if what != "exec":
                fail.append((q, what, at))
                continue
            if t.kind == TaskKind.WAIT:
                if t.notify in taken:
                    continue  # a lower queue took this notify
                taken.add(t.notify)
            execute.append((q, t, at))
        ends = {}
        for q, t, at in execute:
            ends[q] = F32(at + F32(t.duration))
            self._set(self.start, q, self.pc[q], at)
            self._set(self.end, q, self.pc[q], ends[q])
        for _, t, _ in execute:  # waits consume first
            if t.kind == TaskKind.WAIT:
                self.flag[t.notify] = False
        for q, t, _ in execute:  # then records set, lowest queue first
            if (t.kind == TaskKind.RECORD or t.kind == TaskKind.KERNEL) and t.notify >= 0:
                if self.flag[t.notify]:
                    self.lost[t.notify] += 1
                else:
                    self.flag[t.notify] = True
                    self.flag_time[t.notify] = ends[q]
        ops = tuple(
            DataOp(
                t.kind == TaskKind.REDUCE,
                t.src_rank,
                t.src_addr - MEM_BASE,
                t.dst_rank,
                t.dst_addr - MEM_BASE,
                t.nbytes,
                t.dtype,
                t.op,
            )
            for _, t, _ in execute
            if (t.kind == TaskKind.COPY or t.kind == TaskKind.REDUCE) and t.nbytes > 0
        )
        if ops:
            self.data.append(ops)
        for q, _, _ in execute:
            self.clock[q] = ends[q]
            self.pc[q] += 1
            if self.pc[q] >= len(queues[q].tasks):
                self.qstatus[q] = QueueStatus.DONE
        for q, code, at in fail:
            self.qstatus[q] = QueueStatus.FAILED
            self.qerror[q] = int(code)
            self._set(self.start, q, self.pc[q], at)
            self._set(self.end, q, self.pc[q], at)
            self.clock[q] = at
        return False

    def advance(self) -> Pause | None:
        """Steps until the run ends (None) or a kernel must run first (the :class:`Pause`)."""
        while self.status == CommStatus.RUNNING:
            out = self._step()
            if isinstance(out, Pause):
                return out
            self.steps += 1
            if out:
                self.status = CommStatus.HANG
            elif QueueStatus.RUNNING not in self.qstatus:
                self.status = CommStatus.ERROR if QueueStatus.FAILED in self.qstatus else CommStatus.OK
            elif self.steps >= self.max_steps:
                self.status = CommStatus.MAX_STEPS
        return None

    def timeline(self) -> tuple[np.ndarray, np.ndarray]:
        """[Q, L] float32 start and end of every task (NaN: never ran), ``L`` the longest queue."""
        width = max((len(q.tasks) for q in self.p.queues), default=1)
        start = np.full((len(self.p.queues), width), np.nan, F32)
        end = np.full_like(start, np.nan)
        for q in range(len(self.p.queues)):
            start[q, : len(self.start[q])] = self.start[q]
            end[q, : len(self.end[q])] = self.end[q]
        return start, end


__all__ = ["ControlPass", "DataOp", "DataStep", "Pause"]

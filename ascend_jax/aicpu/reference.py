"""Sequential reference interpreter of task programs (the oracle of the JAX engine).

Semantics of one step (both engines):

1. Every running queue looks at its head task, judged on the state at the start of the step:
   it is *ready* at ``ready = max(clock, not_before)``. A RECORD, a NOP, a KERNEL task, a COPY or
   a REDUCE executes at ``ready``; a WAIT executes when its notify is set, at
   ``max(ready, time the notify was set)``, and of several waiters on one set
   notify the lowest queue index wins (the others stay blocked). A WAIT with a timeout (> 0)
   whose notify is not set, or was set after its deadline (``ready + timeout``), fails with the
   wait-timeout error at the deadline. A KERNEL task with an error code fails its queue at
   ``ready + duration``; a COPY / REDUCE touching bytes outside every allocation of its rank fails
   it at ``ready``.
2. Ready tasks execute: ``start = ready`` (a WAIT: ``max(ready, time the notify was set)``),
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
4. A KERNEL task whose function has not run yet (``launch >= 0``) is a *pause* event at ``ready``:
   when it is among the earliest events, the step does nothing but run those kernels (in queue
   order) through :class:`~ascend_jax.aicpu.device.DeviceModel` over the memory as it is, which
   fixes the task's error and duration and appends the submitted device-thread tasks; then the
   step is taken again. A pause is not a step.

Times are float32 seconds, computed identically by both engines.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ascend_jax.aicpu.device import DeviceModel
from ascend_jax.aicpu.reduce import reduce_bytes
from ascend_jax.aicpu.result import CommResult, CommStatus, QueueStatus, hang_report
from ascend_jax.aicpu.tasks import MEM_BASE, MEMORY_FAULT_ERROR, TaskKind, TaskProgram

F32 = np.float32


class CommReference:
    """Runs a :class:`TaskProgram` one step at a time in plain Python / numpy (on a private fork:
    kernels append to it; ``self.p`` is the program as it ran)."""

    def __init__(self, program: TaskProgram, *, max_steps: int | None = None):
        self.p = program.fork()
        self.model = DeviceModel(self.p)
        self.max_steps = program.max_steps if max_steps is None else max_steps
        nq, nn = len(self.p.queues), len(self.p.notify_names)
        self.pc = np.zeros(nq, np.int64)
        self.status = np.array([QueueStatus.DONE if not q.tasks else QueueStatus.RUNNING for q in self.p.queues])
        self.error = np.zeros(nq, np.int64)
        self.clock = np.zeros(nq, F32)
        self.flag = np.zeros(nn, bool)
        self.flag_time = np.zeros(nn, F32)
        self.lost = np.zeros(nn, np.int64)
        self.mem = [m.copy() for m in self.p.memory]
        self.start = np.full((nq, 0), np.nan, F32)
        self.end = np.full((nq, 0), np.nan, F32)
        self._grow()

    def _grow(self) -> None:
        """Timeline columns for every task; queues that got tasks after finishing run again."""
        width = max((len(q.tasks) for q in self.p.queues), default=1)
        if width > self.start.shape[1]:
            pad = np.full((len(self.p.queues), width - self.start.shape[1]), np.nan, F32)
            self.start = np.concatenate([self.start, pad], axis=1)
            self.end = np.concatenate([self.end, pad.copy()], axis=1)
        for q, qu in enumerate(self.p.queues):
            if self.status[q] == QueueStatus.DONE and self.pc[q] < len(qu.tasks):
                self.status[q] = QueueStatus.RUNNING

    def _inside(self, rank: int, addr: int, n: int) -> bool:
        if n <= 0:
            return True
        return any(s <= addr and addr + n <= e for s, e, _ in self.p.allocs[rank])

    def step(self) -> tuple[bool, bool]:
        """One step (after running the kernels the step reaches); returns (progressed, hang)."""
        p = self.p
        heads = {q: qu.tasks[int(self.pc[q])] for q, qu in enumerate(p.queues) if self.status[q] == QueueStatus.RUNNING}
        events = []  # (time, q, "exec" | "pause" | error code)
        for q, t in heads.items():
            ready = max(self.clock[q], F32(t.not_before))
            if t.kind == TaskKind.WAIT:
                deadline = F32(ready + F32(t.timeout))
                if self.flag[t.notify]:
                    if t.timeout > 0 and self.flag_time[t.notify] > deadline:
                        events.append((deadline, q, p.wait_timeout_error))
                    else:
                        events.append((F32(max(ready, self.flag_time[t.notify])), q, "exec"))
                elif t.timeout > 0:
                    events.append((deadline, q, p.wait_timeout_error))
            elif t.kind == TaskKind.KERNEL and t.launch >= 0:
                events.append((ready, q, "pause"))
            elif t.kind == TaskKind.KERNEL and t.error:
                events.append((F32(ready + F32(t.duration)), q, t.error))
            elif t.kind in (TaskKind.COPY, TaskKind.REDUCE) and not (
                self._inside(t.src_rank, t.src_addr, t.nbytes) and self._inside(t.dst_rank, t.dst_addr, t.nbytes)
            ):
                events.append((ready, q, MEMORY_FAULT_ERROR))
            else:
                events.append((ready, q, "exec"))
        if not events:
            return False, bool(heads)
        tmin = min(e[0] for e in events)
        now = sorted((e for e in events if e[0] == tmin), key=lambda e: e[1])
        if any(what == "pause" for _, _, what in now):
            for at, q, what in now:
                if what == "pause":
                    self.model.run_kernel(heads[q], at, self.mem)
            self._grow()
            return self.step()
        taken: set[int] = set()
        execute, fail, times = [], [], {}
        for at, q, what in now:
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
            queue_status=self.status.astype(np.int64),
            queue_error=self.error.copy(),
            queue_pc=self.pc.copy(),
            clock=self.clock.copy(),
            lost=self.lost.copy(),
            memory=[m.copy() for m in self.mem],
            start=self.start,
            end=self.end,
            flags=self.flag.copy(),
            hang=hang_report(self.p, self.status, self.pc) if status == CommStatus.HANG else [],
            device_calls=list(self.model.calls),
            kernel_log=list(self.model.log),
        )


def run_comm_reference(program: TaskProgram, *, max_steps: int | None = None) -> CommResult:
    """Runs ``program`` in the reference interpreter and fills the hosts' ``StreamSync`` codes."""
    result = CommReference(program, max_steps=max_steps).run()
    result.fill_syncs()
    return result


__all__ = ["CommReference", "run_comm_reference"]

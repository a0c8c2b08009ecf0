"""The baseline a user would write instead of the comm JAX engine: a plain sequential interpreter of a
comm task graph, one lane after another.

Pure Python with numpy only for the bytes (slices and one reduction call per task), written for
speed: the task graph is resolved once into tuples (:func:`prepare`), then :func:`run_plain` runs
one lane's memory through it with the step semantics of ``ascend_jax/aicpu/reference.py``
(``CommReference.step``): each step, every running queue's head task gets an event time (ready =
max(clock, not_before); a WAIT when its notify is set, a timed-out WAIT at its deadline, a failing
KERNEL at ready + duration, a COPY / REDUCE outside every allocation fails at ready); only the
events at the earliest time happen, lowest queue first; waits consume their notify, then records
set theirs (a record on a set notify is lost); copies and reductions read the memory as the step
found it and write in queue order.

The task graph is the one a run produces: a program's kernel launches are expanded once by a
reference run (:func:`prepare`), so this baseline does not run kernels per lane (the engines do);
that favours the baseline. Times are Python floats rounded to float32 after every addition, as the
engines compute them, so step counts agree exactly (``tests/benchmarks/test_plain_comm.py``).

    from plain_comm import prepare, run_plain
    graph = prepare(program)
    out = run_plain(graph, [m.copy() for m in program.memory])   # PlainCommResult(status="ok", ...)
"""

from __future__ import annotations

import dataclasses
import struct

import numpy as np

from ascend_jax.aicpu import MEM_BASE, MEMORY_FAULT_ERROR, TaskKind, TaskProgram, reduce_bytes, run_comm_reference

WAIT, RECORD, KERNEL, COPY, REDUCE = (int(TaskKind.WAIT), int(TaskKind.RECORD), int(TaskKind.KERNEL),
                                      int(TaskKind.COPY), int(TaskKind.REDUCE))  # fmt: skip
RUNNING, DONE, FAILED = 0, 1, 2
_F32 = struct.Struct("f")


def f32(x: float) -> float:
    """``x`` rounded to float32 (a float64 sum of two float32 values rounded once is the float32 sum)."""
    return _F32.unpack(_F32.pack(x))[0]


@dataclasses.dataclass(frozen=True)
class PlainGraph:
    """A task graph resolved to tuples: per queue ``(kind, notify, src_rank, src_off, dst_rank,
    dst_off, nbytes, dtype, op, error, timeout, duration, not_before, fault)`` (offsets from the first
    mapped byte; ``fault``: the copy touches bytes outside every allocation)."""

    queues: tuple[tuple[tuple, ...], ...]
    notifies: int
    wait_timeout_error: int
    max_steps: int
    tasks: int


@dataclasses.dataclass
class PlainCommResult:
    status: str
    steps: int
    queue_status: list[int]
    queue_error: list[int]
    queue_pc: list[int]
    lost: list[int]
    memory: list[np.ndarray]
    end_time: float


def prepare(program: TaskProgram) -> PlainGraph:
    """The program's task graph with its kernels expanded (one reference run) and resolved."""
    ran = run_comm_reference(program).program if program.pending() else program

    def inside(rank: int, addr: int, n: int) -> bool:
        return n <= 0 or any(s <= addr and addr + n <= e for s, e, _ in ran.allocs[rank])

    queues = []
    for q in ran.queues:
        rows = []
        for t in q.tasks:
            data = t.kind in (TaskKind.COPY, TaskKind.REDUCE)
            fault = data and not (inside(t.src_rank, t.src_addr, t.nbytes) and inside(t.dst_rank, t.dst_addr, t.nbytes))
            rows.append((int(t.kind), t.notify, t.src_rank, t.src_addr - MEM_BASE, t.dst_rank, t.dst_addr - MEM_BASE,
                         t.nbytes, t.dtype, t.op, t.error, f32(t.timeout), f32(t.duration), f32(t.not_before),
                         fault))  # fmt: skip
        queues.append(tuple(rows))
    return PlainGraph(tuple(queues), len(ran.notify_names), ran.wait_timeout_error, ran.max_steps,
                      sum(len(q) for q in queues))  # fmt: skip


def run_plain(g: PlainGraph, memory: list[np.ndarray]) -> PlainCommResult:
    """Runs one lane: ``memory`` (per rank, uint8, changed in place) through the graph."""
    queues = g.queues
    nq = len(queues)
    pc = [0] * nq
    status = [RUNNING if queues[q] else DONE for q in range(nq)]
    error = [0] * nq
    clock = [0.0] * nq
    flag = [False] * g.notifies
    flag_time = [0.0] * g.notifies
    lost = [0] * g.notifies
    steps, result = 0, "running"
    inf = float("inf")
    while result == "running":
        tmin, now = inf, []
        for q in range(nq):
            if status[q] != RUNNING:
                continue
            t = queues[q][pc[q]]
            kind = t[0]
            ready = clock[q] if clock[q] >= t[12] else t[12]
            if kind == WAIT:
                n = t[1]
                deadline = f32(ready + t[10])
                if flag[n]:
                    if t[10] > 0 and flag_time[n] > deadline:
                        at, what = deadline, g.wait_timeout_error
                    else:
                        at, what = (ready if ready >= flag_time[n] else flag_time[n]), 0
                elif t[10] > 0:
                    at, what = deadline, g.wait_timeout_error
                else:
                    continue
            elif kind == KERNEL and t[9]:
                at, what = f32(ready + t[11]), t[9]
            elif t[13]:
                at, what = ready, MEMORY_FAULT_ERROR
            else:
                at, what = ready, 0
            if at < tmin:
                tmin, now = at, [(q, t, what)]
            elif at == tmin:
                now.append((q, t, what))
        steps += 1
        if not now and RUNNING in status:
            result = "hang"
            break
        taken = set()
        ops = []
        for q, t, what in now:
            if what:
                status[q], error[q], clock[q] = FAILED, what, tmin
                continue
            kind = t[0]
            if kind == WAIT:
                if t[1] in taken:
                    continue
                taken.add(t[1])
                flag[t[1]] = False
            elif kind in (COPY, REDUCE) and t[6] > 0:
                ops.append(t)
            clock[q] = f32(tmin + t[11])
            pc[q] += 1
            if pc[q] >= len(queues[q]):
                status[q] = DONE
        for _, t, what in now:  # records after every wait of the step consumed
            if not what and (t[0] == RECORD or t[0] == KERNEL) and t[1] >= 0:
                if flag[t[1]]:
                    lost[t[1]] += 1
                else:
                    flag[t[1]] = True
                    flag_time[t[1]] = f32(tmin + t[11])
        if ops:  # values first (the memory as the step found it), then writes in queue order
            values = []
            for t in ops:
                src = memory[t[2]][t[3] : t[3] + t[6]]
                if t[0] == REDUCE:
                    src = reduce_bytes(memory[t[4]][t[5] : t[5] + t[6]].copy(), src, t[7], t[8])
                elif len(ops) > 1:
                    src = src.copy()
                values.append(src)
            for t, v in zip(ops, values, strict=True):
                memory[t[4]][t[5] : t[5] + t[6]] = v
        if RUNNING not in status:
            result = "error" if FAILED in status else "ok"
        elif steps >= g.max_steps:
            result = "max_steps"
    return PlainCommResult(result, steps, status, error, pc, lost, memory, max(clock) if clock else 0.0)


__all__ = ["PlainCommResult", "PlainGraph", "prepare", "run_plain"]

"""Result and status types of comm runs, shared by both engines (neither imports the other)."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import numpy as np

from ascend_jax.aicpu.codes import SIZE_TABLE, numpy_dtype
from ascend_jax.aicpu.tasks import MEM_BASE, TaskKind, TaskProgram


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
    PAUSED = 5  # internal: an engine stopped before a kernel task whose function must run now

    @property
    def label(self) -> str:
        return self.name.lower()


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
      device_calls: every Hcomm call the kernels made, ``(time s, rank, launch, call, return code)``.
      kernel_log: kernels that raised a Python exception (they fail with 507018).
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
    device_calls: list[tuple[float, int, int, str, int]] = dataclasses.field(default_factory=list)
    kernel_log: list[str] = dataclasses.field(default_factory=list)

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
            tuple(self.device_calls),
        )

    def sync_code(self, queue: int) -> int:
        """``aclrtSynchronizeStream`` of a stream: its error, 0 if done, -1 if it never finishes (hang)."""
        if int(self.queue_status[queue]) == QueueStatus.RUNNING:
            return -1
        return int(self.queue_error[queue])

    def fill_syncs(self) -> None:
        """Sets ``code`` of every :class:`StreamSync` the host programs received (-1: never returns)."""
        world = self.program.world
        for sync in [] if world is None else world.syncs:
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
        if p.world is not None and p.world.host_calls:
            out["host_calls"] = [{"rank": r, "call": c, "ret": ret} for r, c, ret in p.world.host_calls]
        lost = [{"notify": p.notify_names[n], "lost_records": int(c)} for n, c in enumerate(self.lost) if c]
        if lost:
            out["lost_records"] = lost
        if self.hang:
            out["hang"] = self.hang
        if self.kernel_log:
            out["kernel_log"] = self.kernel_log
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


__all__ = ["CommResult", "CommStatus", "QueueStatus", "hang_report"]

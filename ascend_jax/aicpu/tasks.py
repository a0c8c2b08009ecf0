"""The task format both engines run: task kinds, one task, one queue, a kernel launch record, the cost
model of the comm side, and the frozen :class:`TaskProgram` (spec §3, §12).

A queue is a user stream or a device thread: it executes its tasks in order. A task may not start
before its ``not_before`` time (seconds): tasks that a kernel submits at simulated time ``t`` carry
``t`` on the first of them, so a device thread never runs work before the kernel submitted it.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ascend_jax.aicpu.codes import AclError
from ascend_jax.gm import GM_BASE

#: First mapped device address of every rank (lower addresses, NULL included, are unmapped); the
#: same base as the cube-group GM.
MEM_BASE = GM_BASE
#: Notify-wait timeout error reported when a wait expires (spec §2.3: unconfirmed; configurable).
DEFAULT_WAIT_TIMEOUT_ERROR = int(AclError.RT_TASK_TIMEOUT)
#: Error of a kernel whose symbol is missing or which returned an ordinary non-zero value (spec §10 F2).
KERNEL_FAILURE_ERROR = int(AclError.RT_AICPU_EXCEPTION)
#: Error of an AI CPU kernel that runs longer than its ``ACL_RT_LAUNCH_KERNEL_ATTR_TIMEOUT``: the runtime
#: maps ``RT_ERROR_TSFW_AICPU_TIMEOUT`` to ``ACL_ERROR_RT_AICPU_TIMEOUT`` (hicann/runtime
#: ``src/runtime/core/src/common/errcode_manage.cc``, ``ErrorcodeManage::InitRtErrCodeMap``; spec §2.1, F14).
KERNEL_TIMEOUT_ERROR = int(AclError.RT_AICPU_TIMEOUT)
#: Error of a device copy outside every allocation of its rank (assumption).
MEMORY_FAULT_ERROR = int(AclError.RT_AICPU_EXCEPTION)
#: Kernel return values with their own stream code. 201 is the AI CPU ``KERNEL_STATUS_END_OF_SEQUENCE``
#: (CANN AI CPU kernel context ``common/status.h``); the runtime turns the task's end-of-sequence state
#: into ``RT_ERROR_END_OF_SEQUENCE`` / ``ACL_ERROR_RT_END_OF_SEQUENCE`` 507005 (hicann/runtime
#: ``rt_error_codes.h``; ``Stream::GetError`` maps ``TS_ERROR_END_OF_SEQUENCE``). 101 is the
#: scheduler's "task wait" flag, not an error to it, and the stream code it leads to is not public;
#: 1000..1099 pass through unchanged only for KFC kernels and are ordinary failures of an AI CPU
#: kernel (hicann/runtime ``ae_kernel_lib_aicpu.cc``, ``TransformKernelErrorCode``). Both stay at
#: the default 507018 here and can be overridden per world (``World(kernel_return_errors=...)``).
KERNEL_RETURN_ERRORS: Mapping[int, int] = {201: int(AclError.RT_END_OF_SEQUENCE)}


class TaskKind(enum.IntEnum):
    NOP = 0  # does nothing (a marker, e.g. where a kernel's submission starts)
    RECORD = 1  # set notify (lost if already set)
    WAIT = 2  # block until notify set, then clear it; timeout seconds (0 = forever)
    COPY = 3  # nbytes from (src_rank, src_addr) to (dst_rank, dst_addr)
    REDUCE = 4  # dst = op(dst, src), count elements of dtype
    KERNEL = 5  # AI CPU kernel task on a stream: runs launch ``launch`` when reached; error != 0 fails it


#: Integer fields of a task, in table order.
TASK_FIELDS = (
    "kind",
    "notify",
    "src_rank",
    "src_addr",
    "dst_rank",
    "dst_addr",
    "nbytes",
    "dtype",
    "op",
    "error",
    "launch",
)
#: Float fields of a task (seconds), in table order.
TASK_TIMES = ("timeout", "duration", "not_before")


@dataclasses.dataclass
class Task:
    """One queued task. ``notify`` may be symbolic until the program is frozen (channel records);
    ``launch`` >= 0 marks a kernel task whose function has not run yet (index into
    :attr:`TaskProgram.launches`)."""

    kind: TaskKind
    notify: Any = -1
    src_rank: int = 0
    src_addr: int = 0
    dst_rank: int = 0
    dst_addr: int = 0
    nbytes: int = 0
    dtype: int = 0
    op: int = 0
    error: int = 0
    launch: int = -1
    timeout: float = 0.0
    duration: float = 0.0
    not_before: float = 0.0
    label: str = ""


def local_copy(world_cost: Any, rank: int, src: int, dst: int, nbytes: int, label: str) -> Task:
    """A copy inside one rank's memory (``HcommLocalCopy``, ``aclrtMemcpyAsync``), timed by the cost model."""
    return Task(
        TaskKind.COPY,
        src_rank=rank,
        src_addr=src,
        dst_rank=rank,
        dst_addr=dst,
        nbytes=nbytes,
        duration=world_cost.copy_s(nbytes, False),
        label=label,
    )


@dataclasses.dataclass
class Queue:
    """A user stream or a device thread: an in-order task queue of one rank."""

    name: str
    rank: int
    kind: str  # "stream" | "thread"
    tasks: list[Task] = dataclasses.field(default_factory=list)
    notifies: list[int] = dataclasses.field(default_factory=list)  # thread notifies (global ids)


@dataclasses.dataclass(frozen=True)
class CommCost:
    """Durations of the comm cost model, all parameters (a sweep varies them per lane).

    Attributes:
      notify_s: notify record / wait task, seconds.
      kernel_s: AI CPU kernel task launch overhead, seconds.
      copy_latency_s: fixed cost of every copy or reduce task, seconds (the link latency).
      local_bw: local (SDMA) copy bandwidth, bytes/s.
      link_bw: inter-rank (HCCS) link bandwidth, bytes/s.
      reduce_bw: reduce throughput, bytes/s.
    """

    notify_s: float = 1e-6
    kernel_s: float = 20e-6
    copy_latency_s: float = 2e-6
    local_bw: float = 100e9
    link_bw: float = 50e9
    reduce_bw: float = 50e9

    def copy_s(self, nbytes: int, link: bool) -> float:
        """Duration of a copy of ``nbytes`` bytes, seconds (over the link or local)."""
        return self.copy_latency_s + nbytes / (self.link_bw if link else self.local_bw)

    def reduce_s(self, nbytes: int, link: bool = False) -> float:
        """Duration of a reduce over ``nbytes`` bytes (plus the link transfer for a remote reduce)."""
        return self.copy_latency_s + nbytes / self.reduce_bw + (nbytes / self.link_bw if link else 0.0)


@dataclasses.dataclass(frozen=True)
class KernelLaunch:
    """One ``aclrtLaunchKernelWithConfig``: what the device runs when the stream reaches the task.

    Attributes:
      rank, queue: the launching rank and its stream (queue index).
      name: kernel name (the op-info key); kernel_so / function_name: where the device looks for it.
      fn: the Python kernel, or None when ``kernel_so`` does not export ``function_name``.
      param: the copied argument blob (bytes); param_dtype: how the kernel sees it (None: raw bytes).
      timeout_s: ``ACL_RT_LAUNCH_KERNEL_ATTR_TIMEOUT`` (or ``..._US`` / 1e6) in seconds, 0 = none.
    """

    rank: int
    queue: int
    name: str
    kernel_so: str
    function_name: str
    fn: Callable[..., int] | None
    param: bytes
    param_dtype: Any
    timeout_s: float


@dataclasses.dataclass(frozen=True)
class TaskProgram:
    """Every queue's tasks, the notify table, the initial memory of every rank and the kernel
    launches still to run. Engines run a private copy (:meth:`fork`): kernels append to it.

    ``reduce_dtypes``: the element types the kernels may reduce (None: every hardware reduce type);
    the JAX engine traces only these and recompiles if a kernel reduces another one."""

    name: str
    n_ranks: int
    queues: tuple[Queue, ...]
    notify_names: tuple[str, ...]
    memory: tuple[np.ndarray, ...]
    allocs: tuple[tuple[tuple[int, int, str], ...], ...]
    max_steps: int
    outputs: Mapping[str, tuple[int, int, int, int]] = dataclasses.field(default_factory=dict)
    wait_timeout_error: int = DEFAULT_WAIT_TIMEOUT_ERROR
    launches: tuple[KernelLaunch, ...] = ()
    reduce_dtypes: tuple[int, ...] | None = None
    world: Any = dataclasses.field(default=None, compare=False)

    def fork(self) -> TaskProgram:
        """A copy whose queues have their own task lists (kernels append to them during a run)."""
        queues = tuple(dataclasses.replace(q, tasks=[dataclasses.replace(t) for t in q.tasks]) for q in self.queues)
        return dataclasses.replace(self, queues=queues)

    def with_memory(self, memory: tuple[np.ndarray, ...] | list[np.ndarray]) -> TaskProgram:
        """The same task graph with other initial device memory (per rank, uint8, the same sizes): a
        lane of a batch that shares this program's tasks, world and launches, so the batched engine
        groups it without comparing them again."""
        memory = tuple(np.asarray(m, np.uint8) for m in memory)
        if [m.shape for m in memory] != [m.shape for m in self.memory]:
            raise ValueError("with_memory: one uint8 array per rank, of the sizes of the program's memory")
        return dataclasses.replace(self, memory=memory)

    def pending(self) -> bool:
        """Whether some kernel task has not run its function yet."""
        return any(t.launch >= 0 for q in self.queues for t in q.tasks)


__all__ = [
    "CommCost",
    "KernelLaunch",
    "MEM_BASE",
    "Queue",
    "TASK_FIELDS",
    "TASK_TIMES",
    "Task",
    "TaskKind",
    "TaskProgram",
]

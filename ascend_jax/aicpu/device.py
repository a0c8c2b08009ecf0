"""The device side: the Hcomm C API a kernel calls (:class:`DeviceApi`) and the device model that
runs a launched kernel when its stream reaches the kernel task (:class:`DeviceModel`).

When an engine's earliest event is a kernel task whose function has not run, it pauses; the
device model runs the kernel's Python function with a copy of its argument blob and a view of
device memory *as it is at that simulated time*, at time ``t_start + kernel_s`` (plus whatever the
kernel spends, :meth:`DeviceApi.elapse`). Each Hcomm call only checks its arguments and writes a
task into the device thread's local buffer; ``HcommBatchModeEnd`` submits the buffers of the
threads registered in batch mode, and the submitted tasks may not start before the submission
time (spec §3.4). The engine then resumes with the kernel task's outcome (error code, duration).

Modelled on hicann/hcomm ``src/base_comm/primitives/api_c_adpt/aicpu_ts_primitives_c_adpt.cc``
(every data-plane call: ``AddThread`` then one task on the thread's stream) and
``src/base_comm/primitives/launch_context.cc`` (``LaunchContext::SetLaunchMode``,
``HandleEagerMode``, ``HandleClear``). The launch context is ``thread_local`` to the AI CPU OS
thread (``g_threadLaunchCtx``): here one per rank, outliving any single kernel.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from ascend_jax.aicpu.codes import REDUCE_DTYPES, REDUCE_OPS, SIZE_TABLE, HcclDataType, HcclReduceOp, HcclResult
from ascend_jax.aicpu.structs import from_bytes
from ascend_jax.aicpu.tasks import (
    KERNEL_FAILURE_ERROR,
    KERNEL_TIMEOUT_ERROR,
    MEM_BASE,
    Task,
    TaskKind,
    TaskProgram,
    local_copy,
)


@dataclasses.dataclass
class LaunchContext:
    """The Hcomm launch context of one AI CPU OS thread: batch mode on or off, and the device
    threads registered for the next ``HcommBatchModeEnd`` (in registration order)."""

    batch: bool = False
    registered: list[int] = dataclasses.field(default_factory=list)


def _logged(fn: Callable[..., int]) -> Callable[..., int]:
    """Logs ``(time, rank, launch, call, return code)`` of an Hcomm call in ``DeviceModel.calls``."""

    @functools.wraps(fn)
    def call(self: DeviceApi, *args: Any, **kwargs: Any) -> int:
        ret = fn(self, *args, **kwargs)
        self.model.calls.append((self.now, self.rank, self.launch, fn.__name__, int(ret)))
        return ret

    return call


class DeviceApi:
    """The Hcomm C API as one kernel execution sees it (spec §5). Every call returns an
    ``HcclResult`` reflecting argument checks only.

    Attributes:
      rank, launch: where the kernel runs and which launch it is.
      now: simulated time of the next call, seconds (kernel start + launch overhead + elapsed).
    """

    def __init__(self, model: DeviceModel, rank: int, launch: int, now: float, memory: np.ndarray):
        self.model = model
        self.world = model.world
        self.rank = rank
        self.launch = launch
        self.now = float(now)
        self.elapsed = 0.0
        self._memory = memory

    # -- helpers ---------------------------------------------------------------------------
    def read(self, addr: int, nbytes: int) -> bytes:
        """Device memory of this rank as it is now (e.g. the resource context the host copied)."""
        lo = addr - MEM_BASE
        if lo < 0 or lo + nbytes > self._memory.size:
            return bytes(nbytes)
        if nbytes > 0:
            self.model.reads.append((self.rank, lo, nbytes))
        return self._memory[lo : lo + nbytes].tobytes()

    def read_struct(self, addr: int, dtype: np.dtype) -> np.ndarray:
        return from_bytes(self.read(addr, np.dtype(dtype).itemsize), dtype)

    def read_array(self, addr: int, count: int, dtype: int) -> np.ndarray:
        """``count`` elements of HcclDataType ``dtype`` at ``addr`` as they are now."""
        from ascend_jax.aicpu.codes import numpy_dtype

        return np.frombuffer(self.read(addr, count * SIZE_TABLE[dtype]), numpy_dtype(dtype)).copy()

    def elapse(self, seconds: float) -> None:
        """The kernel spends ``seconds`` of AI CPU time (later calls happen that much later)."""
        self.now += float(seconds)
        self.elapsed += float(seconds)

    def _queue(self, thread: int) -> int | None:
        q = self.world.threads.get(thread)
        if q is None or self.world.queues[q].rank != self.rank:
            return None
        return q

    def _record(self, thread: int, task: Task) -> int:
        """Writes ``task`` into the thread's buffer; in batch mode the thread is registered for the
        next ``HcommBatchModeEnd`` (``AddThread``). Outside batch mode the call still succeeds, but
        nothing registers the thread, so the task is only submitted if a later batch registers it."""
        q = self._queue(thread)
        if q is None:
            return int(HcclResult.E_PTR)
        self.model.buffers.setdefault(q, []).append(task)
        ctx = self.model.contexts[self.rank]
        if ctx.batch and q not in ctx.registered:
            ctx.registered.append(q)
        return 0

    def _notify_task(self, kind: TaskKind, n: Any, label: str, timeout: float = 0.0) -> Task:
        return Task(kind, n, timeout=float(timeout), duration=self.world.cost.notify_s, label=label)

    # -- control -----------------------------------------------------------------------------
    @_logged
    def hcomm_acquire_comm(self, comm_id: str | bytes | None) -> int:
        """NULL or unknown name -> ``HCCL_E_PTR`` (hicann/hcomm
        ``src/base_comm/primitives/api_c_adpt/aicpu_ts_primitives_c_adpt.cc`` ``HcommAcquireComm``:
        ``CHK_PTR_NULL(commId)``, then on Atlas A2 ``AicpuGetCommbyGroup`` gives NULL)."""
        name = comm_id.decode() if isinstance(comm_id, bytes) else comm_id
        if not name or name not in self.world.comms[self.rank]:
            return int(HcclResult.E_PTR)
        return 0

    @_logged
    def hcomm_release_comm(self, comm_id: str | bytes | None) -> int:
        """NULL -> ``HCCL_E_PTR``, any name else 0 (``HcommReleaseComm``, same file)."""
        return int(HcclResult.E_PTR) if not comm_id else 0

    @_logged
    def hcomm_batch_mode_start(self, batch_tag: str | None = None) -> int:
        """Batch mode on; threads already registered and tasks already written stay
        (``LaunchContext::SetLaunchMode`` with BATCH only sets the mode)."""
        self.model.contexts[self.rank].batch = True
        return 0

    @_logged
    def hcomm_batch_mode_end(self, batch_tag: str | None = None) -> int:
        """Submits the buffered tasks of every registered thread (one doorbell each), then clears the
        registrations; returns 0 even without a Start (``HandleEagerMode`` + ``HandleClear``)."""
        ctx = self.model.contexts[self.rank]
        for q in ctx.registered:
            self.model.submit(q, self.now, self.launch)
        ctx.registered = []
        ctx.batch = False
        return 0

    # -- local operations --------------------------------------------------------------------
    @_logged
    def hcomm_local_copy_on_thread(self, thread: int, dst: int, src: int, length: int) -> int:
        """NULL ``dst`` or ``src``, then a NULL thread -> ``HCCL_E_PTR`` (``aicpu_ts_primitives_c_adpt.cc``
        ``HcommLocalCopyOnThread``: ``CHK_PTR_NULL`` in that order). The length is a ``uint64_t`` there;
        a negative one here is not decided by public sources: modelled as ``HCCL_E_PARA``."""
        if not dst or not src or self._queue(thread) is None:
            return int(HcclResult.E_PTR)
        if length < 0:
            return int(HcclResult.E_PARA)
        return self._record(
            thread,
            local_copy(self.world.cost, self.rank, src, dst, length, f"local copy {length} B"),
        )

    @staticmethod
    def _reduce_args_ok(dtype: int, op: int) -> bool:
        """Atlas A2/A3 hardware reduce: dtype x op of ``IsSupportReduce`` (aicpu_ts_primitives_c_adpt.cc)."""
        return dtype in [int(d) for d in REDUCE_DTYPES] and op in [int(o) for o in REDUCE_OPS]

    @_logged
    def hcomm_local_reduce_on_thread(self, thread: int, dst: int, src: int, count: int, dtype: int, op: int) -> int:
        """NULL ``dst`` / ``src`` / thread -> ``HCCL_E_PTR``, then (Atlas A2) a dtype x op outside
        ``IsSupportReduce`` -> ``HCCL_E_PARA`` (``HcommLocalReduceOnThread``, same file). A negative
        count (``uint64_t`` there): modelled as ``HCCL_E_PARA``."""
        if not dst or not src or self._queue(thread) is None:
            return int(HcclResult.E_PTR)
        if not self._reduce_args_ok(dtype, op) or count < 0:
            return int(HcclResult.E_PARA)
        n = count * SIZE_TABLE[dtype]
        return self._record(
            thread,
            Task(
                TaskKind.REDUCE,
                src_rank=self.rank,
                src_addr=src,
                dst_rank=self.rank,
                dst_addr=dst,
                nbytes=n,
                dtype=dtype,
                op=op,
                duration=self.world.cost.reduce_s(n),
                label=f"local reduce {HcclReduceOp(op).name} {count} x {HcclDataType(dtype).name}",
            ),
        )

    @_logged
    def hcomm_thread_notify_record_on_thread(self, thread: int, dst_thread: int, dst_notify_idx: int) -> int:
        """A NULL thread or destination thread, or a notify index outside ``[0, notifyNumPerThread)``
        -> ``HCCL_E_PTR`` (hicann/hcomm ``aicpu_ts_primitives_c_adpt.cc``
        ``HcommThreadNotifyRecordOnThread``: ``CHK_PTR_NULL`` on both threads, on the stream and on
        ``GetNotify``, which gives NULL out of range, ``threads/aicpu_ts_thread.cc``
        ``AicpuTsThread::GetNotify``). A non-NULL handle that is no thread is undefined in C: not
        decided by public sources; modelled as NULL."""
        dq = self.world.threads.get(dst_thread)
        if dq is None or self._queue(thread) is None:
            return int(HcclResult.E_PTR)
        notifies = self.world.queues[dq].notifies
        if not 0 <= dst_notify_idx < len(notifies):
            return int(HcclResult.E_PTR)
        n = notifies[dst_notify_idx]
        return self._record(thread, self._notify_task(TaskKind.RECORD, n, f"record {self.world.notify_names[n]}"))

    @_logged
    def hcomm_thread_notify_wait_on_thread(self, thread: int, notify_idx: int, timeout: float) -> int:
        """NULL thread or index out of range -> ``HCCL_E_PTR`` (``HcommThreadNotifyWaitOnThread``, same
        file and checks as the record)."""
        q = self._queue(thread)
        if q is None:
            return int(HcclResult.E_PTR)
        notifies = self.world.queues[q].notifies
        if not 0 <= notify_idx < len(notifies):
            return int(HcclResult.E_PTR)
        n = notifies[notify_idx]
        return self._record(thread, self._notify_task(TaskKind.WAIT, n, f"wait {self.world.notify_names[n]}", timeout))

    def _acl_notify_ok(self, notify_id: int) -> bool:
        return 0 <= notify_id < len(self.world.notify_names) and self.world.notify_rank[notify_id] == self.rank

    @_logged
    def hcomm_aclrt_notify_record_on_thread(self, thread: int, notify_id: int) -> int:
        """A NULL thread -> ``HCCL_E_PTR``. ``HcommAclrtNotifyRecordOnThread`` passes the notify id on
        unchecked (``aicpu_ts_primitives_c_adpt.cc``, then ``HcclLocalBareNotifyRecord``): what an id of
        no notify of this rank does is not decided by public sources; modelled as ``HCCL_E_PARA``."""
        if self._queue(thread) is None:
            return int(HcclResult.E_PTR)
        if not self._acl_notify_ok(notify_id):
            return int(HcclResult.E_PARA)
        label = f"record {self.world.notify_names[notify_id]}"
        return self._record(thread, self._notify_task(TaskKind.RECORD, notify_id, label))

    @_logged
    def hcomm_aclrt_notify_wait_on_thread(self, thread: int, notify_id: int, timeout: float) -> int:
        """As :meth:`hcomm_aclrt_notify_record_on_thread` (``HcommAclrtNotifyWaitOnThread``)."""
        if self._queue(thread) is None:
            return int(HcclResult.E_PTR)
        if not self._acl_notify_ok(notify_id):
            return int(HcclResult.E_PARA)
        label = f"wait {self.world.notify_names[notify_id]}"
        return self._record(thread, self._notify_task(TaskKind.WAIT, notify_id, label, timeout))

    # -- remote operations -------------------------------------------------------------------
    def _channel(self, channel: int) -> Any:
        ch = self.world.channels.get(channel)
        return ch if ch is not None and ch.rank == self.rank else None

    @_logged
    def hcomm_channel_notify_record_on_thread(self, thread: int, channel: int, remote_notify_idx: int) -> int:
        """Sets notify ``remote_notify_idx`` on the peer's side of ``channel``.

        A NULL channel -> ``HCCL_E_PTR`` (hicann/hcomm ``aicpu_ts_channel_helper.h``
        ``UnwrapChannelHandle``: handle 0), then a NULL thread -> ``HCCL_E_PTR``
        (``aicpu_ts_primitives_c_adpt.cc`` ``HcommChannelNotifyRecordOnThread``), then, on Atlas A2, an
        index outside ``[0, notifyNum)`` of the channel -> ``HCCL_E_INTERNAL`` (``HcclRemoteNotifyRecord``
        calls ``TransportP2p::Post``, which checks the index against the transport's ``notifyNum_``).
        A handle that is not 0 but no channel of this rank is undefined in C: modelled as NULL."""
        ch = self._channel(channel)
        if ch is None or self._queue(thread) is None:
            return int(HcclResult.E_PTR)
        if not 0 <= remote_notify_idx < len(ch.notifies):
            return int(HcclResult.E_INTERNAL)
        label = f"record rank{ch.peer}.ch->{ch.rank}.notify[{remote_notify_idx}]"
        return self._record(thread, self._notify_task(TaskKind.RECORD, ("peer", channel, remote_notify_idx), label))

    @_logged
    def hcomm_channel_notify_wait_on_thread(
        self, thread: int, channel: int, local_notify_idx: int, timeout: float
    ) -> int:
        """Waits on notify ``local_notify_idx`` of this side of ``channel``. Codes as the record:
        ``HCCL_E_PTR`` for a NULL channel or thread, ``HCCL_E_INTERNAL`` for an index outside
        ``[0, notifyNum)`` (``HcommChannelNotifyWaitOnThread`` -> ``HcclRemoteNotifyWait`` ->
        ``TransportP2p::Wait``)."""
        ch = self._channel(channel)
        if ch is None or self._queue(thread) is None:
            return int(HcclResult.E_PTR)
        if not 0 <= local_notify_idx < len(ch.notifies):
            return int(HcclResult.E_INTERNAL)
        n = ch.notifies[local_notify_idx]
        return self._record(thread, self._notify_task(TaskKind.WAIT, n, f"wait {self.world.notify_names[n]}", timeout))

    def _transfer(self, thread, channel, dst, src, nbytes, read: bool, dtype=0, op=-1) -> int:
        """``HcommReadOnThread`` / ``WriteOnThread`` / ``ReadReduceOnThread`` / ``WriteReduceOnThread``
        (``aicpu_ts_primitives_c_adpt.cc``): NULL ``dst`` or ``src``, a NULL channel
        (``UnwrapChannelHandle``) and a NULL thread are ``HCCL_E_PTR``; for the reduces, on Atlas A2, a
        dtype x op outside ``IsSupportReduce`` is then ``HCCL_E_PARA``. The length is unsigned there; a
        negative one here: modelled as ``HCCL_E_PARA``."""
        ch = self._channel(channel)
        if ch is None or not dst or not src or self._queue(thread) is None:
            return int(HcclResult.E_PTR)
        reduce = op >= 0
        if reduce and not self._reduce_args_ok(dtype, op):
            return int(HcclResult.E_PARA)
        if nbytes < 0:
            return int(HcclResult.E_PARA)
        src_rank, dst_rank = (ch.peer, self.rank) if read else (self.rank, ch.peer)
        what = ("read" if read else "write") + (" reduce" if reduce else "")
        cost = self.world.cost
        return self._record(
            thread,
            Task(
                TaskKind.REDUCE if reduce else TaskKind.COPY,
                src_rank=src_rank,
                src_addr=src,
                dst_rank=dst_rank,
                dst_addr=dst,
                nbytes=nbytes,
                dtype=dtype,
                op=max(op, 0),
                duration=cost.reduce_s(nbytes, True) if reduce else cost.copy_s(nbytes, True),
                label=f"{what} {nbytes} B rank{src_rank} -> rank{dst_rank}",
            ),
        )

    @_logged
    def hcomm_read_on_thread(self, thread: int, channel: int, dst: int, src: int, length: int) -> int:
        """One-sided get: peer memory ``src`` -> local ``dst``."""
        return self._transfer(thread, channel, dst, src, length, True)

    @_logged
    def hcomm_write_on_thread(self, thread: int, channel: int, dst: int, src: int, length: int) -> int:
        """One-sided put: local ``src`` -> peer memory ``dst``."""
        return self._transfer(thread, channel, dst, src, length, False)

    @_logged
    def hcomm_read_reduce_on_thread(self, thread, channel, dst, src, count, dtype, op) -> int:
        n = count * SIZE_TABLE[dtype] if 0 <= dtype < 255 else 0
        return self._transfer(thread, channel, dst, src, n, True, dtype, op)

    @_logged
    def hcomm_write_reduce_on_thread(self, thread, channel, dst, src, count, dtype, op) -> int:
        n = count * SIZE_TABLE[dtype] if 0 <= dtype < 255 else 0
        return self._transfer(thread, channel, dst, src, n, False, dtype, op)


class DeviceModel:
    """Runs the kernels of one run of a (forked) program and submits their tasks.

    Attributes:
      program: the run's private program; submitted tasks are appended to its thread queues.
      contexts: per rank, the AI CPU thread's :class:`LaunchContext`.
      buffers: per device-thread queue, tasks written but not submitted yet.
      calls: every Hcomm call as ``(time s, rank, launch, call, return code)``.
      log: one line per kernel that raised a Python exception.
      reads: every device-memory read of the kernels as ``(rank, byte offset, bytes)``: what a kernel's
        outcome can depend on besides its argument blob (the batched engine shares a kernel run among
        lanes whose bytes there are equal).
    """

    def __init__(self, program: TaskProgram):
        self.program = program
        self.world = program.world
        self.contexts = [LaunchContext() for _ in range(program.n_ranks)]
        self.buffers: dict[int, list[Task]] = {}
        self.calls: list[tuple[float, int, int, str, int]] = []
        self.log: list[str] = []
        self.reads: list[tuple[int, int, int]] = []

    def device_api(self, rank: int, now: float = 0.0, launch: int = -1) -> DeviceApi:
        """A :class:`DeviceApi` for ``rank`` at time ``now`` over the initial memory (for direct use)."""
        return DeviceApi(self, rank, launch, now, self.program.memory[rank])

    def submit(self, q: int, now: float, launch: int) -> None:
        """Moves thread ``q``'s buffered tasks to its queue; they may not start before ``now``."""
        tasks = self.buffers.pop(q, [])
        if not tasks:
            return
        marker = Task(TaskKind.NOP, not_before=now, label=f"start of kernel {launch}")
        queue = self.program.queues[q]
        for t in [marker, *tasks]:
            if isinstance(t.notify, tuple):  # ("peer", channel, idx): the peer side's notify id
                t.notify = self.world.channel_peer_notify(t.notify[1], t.notify[2])
            queue.tasks.append(t)

    def run_kernel(self, task: Task, start: float, memory: list[np.ndarray]) -> None:
        """Runs the kernel of kernel task ``task`` that starts at ``start`` seconds, over ``memory``
        (per rank, as it is then); sets the task's ``error`` and ``duration`` and clears ``launch``."""
        launch = self.program.launches[task.launch]
        cost = self.world.cost
        dev = DeviceApi(self, launch.rank, task.launch, start + cost.kernel_s, memory[launch.rank])
        error = 0
        if launch.fn is None:  # the .so does not export functionName: fails on the device (F2)
            error = KERNEL_FAILURE_ERROR
        else:
            param = from_bytes(launch.param, launch.param_dtype) if launch.param_dtype is not None else launch.param
            try:
                ret = int(launch.fn(dev, param))
            except Exception as e:  # a crashing kernel is an AI CPU exception on the device
                self.log.append(f"kernel {launch.name} (launch {task.launch}) raised {type(e).__name__}: {e}")
                ret = 1
            if ret != 0:
                # hicann/runtime src/aicpu_sched/aicpu_processer/ae_kernel_lib_aicpu.cc
                # TransformKernelErrorCode: 201 is end of sequence (the stream reports 507005); 101 is
                # the task-wait flag, no error to the scheduler, whose stream code is not decided by
                # public sources (modelled as 507018); 1000..1099 pass through only for KFC kernels
                # (ae_kernel_lib_aicpu_kfc.cpp), so for an AICPUKernel they fail like any other value
                error = self.world.kernel_return_errors.get(ret, KERNEL_FAILURE_ERROR)
        duration = cost.kernel_s + dev.elapsed
        if launch.timeout_s > 0 and duration > launch.timeout_s:
            error, duration = KERNEL_TIMEOUT_ERROR, launch.timeout_s
        task.error = int(error)
        task.duration = float(duration)
        task.launch = -1


__all__ = ["DeviceApi", "DeviceModel", "LaunchContext"]

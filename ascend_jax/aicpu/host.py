"""One rank's host thread: the ACL runtime calls of spec §2.1 and the HCCL control plane of §4.2.

Calls return the C return code first, then the out-parameters, e.g.
``ret, notify = host.aclrt_create_notify(0)``. Every call is logged in ``World.host_calls``.
Asynchronous calls (record, wait, kernel launch) only append a task to the stream.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ascend_jax.aicpu.codes import (
    ACL_NOTIFY_DEFAULT,
    ACL_NOTIFY_DEVICE_USE_ONLY,
    ACL_RT_LAUNCH_KERNEL_ATTR_TIMEOUT,
    ACL_RT_LAUNCH_KERNEL_ATTR_TIMEOUT_US,
    CHANNEL_ENGINES,
    CHANNEL_NOTIFY_NUM_MAX,
    CHANNEL_PROTOCOLS,
    CHANNEL_PROTOCOLS_AIV,
    AclError,
    CommEngine,
    HcclResult,
)
from ascend_jax.aicpu.opinfo import OpInfo, load_op_info, resolve_symbol
from ascend_jax.aicpu.resources import Channel, Comm, StreamSync
from ascend_jax.aicpu.structs import to_bytes
from ascend_jax.aicpu.tasks import KernelLaunch, Queue, Task, TaskKind, local_copy

if TYPE_CHECKING:
    from ascend_jax.aicpu.world import World

#: ``HCCL_RES_TAG_MAX_LEN``: longest engine-context tag (hicann/hcomm docs, HcclEngineCtxCreate).
HCCL_RES_TAG_MAX_LEN = 255
#: ``HCCL_THREAD_NOTIFY_MAX_NUM`` (hicann/hcomm ``src/base_comm/resources/comm_engine_res/threads/thread.h``).
HCCL_THREAD_NOTIFY_MAX_NUM = 65536
#: ``MAX_EXPORT_THREAD_NUM`` (hicann/hcomm ``thread_c_adpt.cc``).
MAX_EXPORT_THREAD_NUM = 40
#: Every ``CommEngine`` value (``IsValidCommEngine``, hicann/hcomm ``hccl_independent_common.h``).
_ENGINES = frozenset(int(e) for e in CommEngine)
_HOST_ENGINES = frozenset({int(CommEngine.CPU), int(CommEngine.CPU_TS), int(CommEngine.CCU)})


def _side(engine: int) -> str:
    """Which side a thread handle of ``engine`` lives on: ``"host"`` for CPU, CPU_TS and CCU (hcomm's
    ``ThreadExportToCommEngineCpu`` serves those), ``"aicpu"`` for the rest."""
    return "host" if int(engine) in _HOST_ENGINES else "aicpu"


def _logged(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Logs ``(rank, call, return code)`` of a host call in ``World.host_calls``."""

    @functools.wraps(fn)
    def call(self: HostApi, *args: Any, **kwargs: Any) -> Any:
        out = fn(self, *args, **kwargs)
        ret = out[0] if isinstance(out, tuple) else out.code if isinstance(out, StreamSync) else out
        self.world.host_calls.append((self.rank, fn.__name__, -1 if ret is None else int(ret)))
        return out

    return call


class _Args:
    """An ``aclrtArgsHandle``: the copied parameter blobs and whether it was finalized."""

    def __init__(self, func: int) -> None:
        self.func = func
        self.blobs: list[bytes] = []
        self.final = False


class HostApi:
    """One rank's host thread (spec §2.1, §4.2).

    Attributes:
      world, rank: where it runs.
      thread_local: this host thread's ``thread_local`` storage, for host libraries that keep
        per-thread state (the sample keeps its loaded binary and its two notifies there).
    """

    def __init__(self, world: World, rank: int):
        self.world = world
        self.rank = rank
        self.thread_local: dict[str, Any] = {}
        self._streams: dict[int, int] = {}  # handle -> queue
        self._notifies: dict[int, int] = {}  # handle -> global notify
        self._bins: dict[int, dict[str, OpInfo]] = {}
        self._funcs: dict[int, OpInfo] = {}
        self._args: dict[int, _Args] = {}
        # HCCL threads: the thread each communicator made of a stream (hcomm's ThreadMgr is per
        # communicator), and each queue's handle per side (hcomm's thread maps are process-wide)
        self._stream_threads: dict[tuple[str, int], int] = {}  # (comm, stream handle) -> thread
        self._side_handle: dict[tuple[int, str], int] = {}  # (queue, "host" | "aicpu") -> handle

    # -- memory ----------------------------------------------------------------------------
    @_logged
    def aclrt_malloc(self, size: int, label: str = "buffer") -> tuple[int, int]:
        if not isinstance(size, int) or size <= 0:
            return int(AclError.INVALID_PARAM), 0
        return 0, self.world.mem[self.rank].malloc(size, label)

    @_logged
    def aclrt_memcpy_h2d(self, dst: int, data: bytes | np.ndarray) -> int:
        """``aclrtMemcpy(..., ACL_MEMCPY_HOST_TO_DEVICE)`` (synchronous)."""
        raw = to_bytes(data) if isinstance(data, np.ndarray) else bytes(data)
        if not self.world.mem[self.rank].inside(dst, len(raw)):
            return int(AclError.INVALID_PARAM)
        self.world.mem[self.rank].write(dst, raw)
        return 0

    @_logged
    def aclrt_memcpy_async(self, dst: int, dest_max: int, src: int, count: int, stream: int) -> int:
        """``aclrtMemcpyAsync(..., ACL_MEMCPY_DEVICE_TO_DEVICE, stream)``: enqueues a copy of ``count``
        bytes on ``stream`` (asynchronous; a bad address fails the stream when the copy runs).
        NULL addresses or ``count > destMax`` -> 100000."""
        if not dst or not src or count < 0 or count > dest_max:
            return int(AclError.INVALID_PARAM)
        q = self._stream(stream)
        if q is None:
            return int(AclError.RT_STREAM_CONTEXT)
        q.tasks.append(local_copy(self.world.cost, self.rank, src, dst, count, f"memcpy async {count} B"))
        return 0

    # -- streams and notifies ----------------------------------------------------------------
    @_logged
    def aclrt_create_stream(self) -> tuple[int, int]:
        h = self.world.new_handle()
        self._streams[h] = self.world.new_queue(self.rank, "stream", f"rank{self.rank}.stream{len(self._streams)}")
        return 0, h

    @_logged
    def aclrt_create_notify(self, flag: int = ACL_NOTIFY_DEFAULT) -> tuple[int, int]:
        # flags other than default / device-use-only: RT_ERROR_INVALID_VALUE -> 107000 (hicann/runtime
        # src/runtime/api/api_c_event.cc; spec §2.1)
        if flag not in (ACL_NOTIFY_DEFAULT, ACL_NOTIFY_DEVICE_USE_ONLY):
            return int(AclError.RT_PARAM_INVALID), 0
        h = self.world.new_handle()
        self._notifies[h] = self.world.new_notify(self.rank, f"rank{self.rank}.aclNotify{len(self._notifies)}")
        return 0, h

    @_logged
    def aclrt_get_notify_id(self, notify: int) -> tuple[int, int]:
        if notify not in self._notifies:
            return int(AclError.INVALID_PARAM), 0
        return 0, self._notifies[notify]

    def _stream(self, stream: int) -> Queue | None:
        q = self._streams.get(stream)
        return None if q is None else self.world.queues[q]

    def _notify_task(self, kind: TaskKind, n: int, timeout: float = 0.0) -> Task:
        what = "record" if kind == TaskKind.RECORD else "wait"
        return Task(
            kind, n, timeout=timeout, duration=self.world.cost.notify_s, label=f"{what} {self.world.notify_names[n]}"
        )

    @_logged
    def aclrt_record_notify(self, notify: int, stream: int) -> int:
        # NULL notify -> 100000, stream of another context -> 107003 (hicann/runtime
        # src/acl/aclrt_impl/notify.cpp; spec §2.1)
        if notify not in self._notifies:
            return int(AclError.INVALID_PARAM)
        q = self._stream(stream)
        if q is None:
            return int(AclError.RT_STREAM_CONTEXT)
        q.tasks.append(self._notify_task(TaskKind.RECORD, self._notifies[notify]))
        return 0

    @_logged
    def aclrt_wait_and_reset_notify(self, notify: int, stream: int, timeout: int) -> int:
        """Timeout in seconds; 0 = forever (``UINT32_MAX`` = runtime default, also forever here)."""
        if notify not in self._notifies:
            return int(AclError.INVALID_PARAM)
        q = self._stream(stream)
        if q is None:
            return int(AclError.RT_STREAM_CONTEXT)
        t = 0.0 if timeout in (0, 2**32 - 1) else float(timeout)
        q.tasks.append(self._notify_task(TaskKind.WAIT, self._notifies[notify], t))
        return 0

    def aclrt_synchronize_stream(self, stream: int) -> StreamSync:
        """Returns a :class:`StreamSync` whose ``code`` the run fills in (the stream's error, 0 if none)."""
        q = self._streams.get(stream)
        sync = StreamSync(self.rank, -1 if q is None else q)
        if q is None:
            sync.code = int(AclError.RT_STREAM_CONTEXT)
        self.world.syncs.append(sync)
        return sync

    # -- kernels -------------------------------------------------------------------------------
    @_logged
    def aclrt_binary_load_from_file(self, path: Any, cpu_kernel_mode: int = 0) -> tuple[int, int]:
        """Registers the kernels of an op-info JSON (path or parsed document).

        Lenient like the runtime (:func:`ascend_jax.aicpu.opinfo.parse_op_info` lists what is skipped
        and what only warns); a file that cannot be read or does not parse as JSON returns 107000
        (hicann/runtime ``src/runtime/core/src/kernel/binary_loader.cc``,
        ``ParseJsonAndRegisterCpuKernel``: ``GetJsonObj`` fails, EE1012, then ``RT_ERROR_INVALID_VALUE``).
        A document that parses but registers nothing still loads; the kernel lookup fails later.
        """
        lib = load_op_info(path)
        if lib is None:
            return int(AclError.RT_PARAM_INVALID), 0
        h = self.world.new_handle()
        self._bins[h] = lib
        return 0, h

    @_logged
    def aclrt_binary_get_function(self, binary: int, kernel_name: str) -> tuple[int, int]:
        """Looks up the JSON top-level key ``kernel_name``; unknown -> 107000 (F1; hicann/runtime
        ``src/runtime/core/src/runtime.cc``, ``BinaryGetFunctionByName``)."""
        if binary not in self._bins or not kernel_name:
            return int(AclError.INVALID_PARAM), 0
        info = self._bins[binary].get(kernel_name)
        if info is None:
            return int(AclError.RT_PARAM_INVALID), 0
        h = self.world.new_handle()
        self._funcs[h] = info
        return 0, h

    @_logged
    def aclrt_kernel_args_init(self, func: int) -> tuple[int, int]:
        if func not in self._funcs:
            return int(AclError.INVALID_PARAM), 0
        h = self.world.new_handle()
        self._args[h] = _Args(func)
        return 0, h

    @_logged
    def aclrt_kernel_args_append(self, args: int, param: bytes | np.ndarray) -> tuple[int, int]:
        """Appends a *copy* of ``param`` (a struct value or bytes); later host changes do not reach the kernel."""
        a = self._args.get(args)
        raw = to_bytes(param) if isinstance(param, np.ndarray) else bytes(param or b"")
        if a is None or not raw or a.final:
            return int(AclError.INVALID_PARAM), 0
        a.blobs.append(raw)
        return 0, len(a.blobs) - 1

    @_logged
    def aclrt_kernel_args_finalize(self, args: int) -> int:
        a = self._args.get(args)
        if a is None:
            return int(AclError.INVALID_PARAM)
        a.final = True
        return 0

    @_logged
    def aclrt_launch_kernel_with_config(
        self,
        func: int,
        num_blocks: int,
        stream: int,
        cfg: Mapping[int, int] | None,
        args: int,
        reserve: Any = None,
        param_dtype: np.dtype | None = None,
    ) -> int:
        """Enqueues the AI CPU kernel task. ``cfg``: ``{ACL_RT_LAUNCH_KERNEL_ATTR_TIMEOUT: seconds}``
        (or ``..._TIMEOUT_US: microseconds``).

        The kernel function runs when the stream reaches the task (:mod:`ascend_jax.aicpu.device`);
        ``param_dtype`` is how the kernel sees its first argument (default: raw bytes).
        """
        # NULL func / args, numBlocks 0, reserve != NULL -> 100000 (hicann/runtime
        # src/acl/aclrt_impl/kernel.cpp, aclrtLaunchKernelWithConfigImpl; spec §2.1)
        info = self._funcs.get(func)
        a = self._args.get(args)
        if info is None or a is None or num_blocks == 0 or reserve is not None:
            return int(AclError.INVALID_PARAM)
        q = self._stream(stream)
        if q is None:
            return int(AclError.RT_STREAM_CONTEXT)
        cfg = dict(cfg or {})
        # both timeout attributes: RT_ERROR_INVALID_VALUE -> 107000 (hicann/runtime, runtime API error
        # decorator ApiErrorDecorator::CheckKernelLaunchCfg, "cannot be carried at the same time")
        if ACL_RT_LAUNCH_KERNEL_ATTR_TIMEOUT in cfg and ACL_RT_LAUNCH_KERNEL_ATTR_TIMEOUT_US in cfg:
            return int(AclError.RT_PARAM_INVALID)
        if ACL_RT_LAUNCH_KERNEL_ATTR_TIMEOUT_US in cfg:
            raw, scale, top = cfg[ACL_RT_LAUNCH_KERNEL_ATTR_TIMEOUT_US], 1e-6, 2**64 - 1
        else:
            raw, scale, top = cfg.get(ACL_RT_LAUNCH_KERNEL_ATTR_TIMEOUT, 0), 1.0, 0xFFFF  # uint16 seconds
        if not isinstance(raw, int) or not 0 <= raw <= top:
            return int(AclError.INVALID_PARAM)
        world = self.world
        launch = KernelLaunch(
            rank=self.rank,
            queue=self._streams[stream],
            name=info.name,
            kernel_so=info.kernel_so,
            function_name=info.function_name,
            fn=resolve_symbol(info.kernel_so, info.function_name),
            param=a.blobs[0] if a.blobs else b"",
            param_dtype=param_dtype,
            timeout_s=raw * scale,
        )
        world.launches.append(launch)
        q.tasks.append(
            Task(
                TaskKind.KERNEL,
                launch=len(world.launches) - 1,
                duration=world.cost.kernel_s,
                label=f"kernel {info.name} ({info.kernel_so}:{info.function_name})",
            )
        )
        return 0

    # -- HCCL control plane --------------------------------------------------------------------
    def _comm(self, comm: Any) -> Comm | None:
        """The communicator, or None. Every HCCL call here returns ``HCCL_E_PTR`` for None: NULL ``comm``
        is ``CHK_PTR_NULL(comm)`` in each of them (hicann/hcomm: ``HcclGetCommName`` in
        ``src/legacy/ascend910/framework/op_base/src/op_base.cc``; ``HcclGetRankId`` / ``HcclGetRankSize``
        in ``src/coll_communicator_mgr/api_c_adpt/coll_comm_rank_graph_a_adpt.cc``; the thread, context,
        channel and buffer calls in ``api_c_adpt/resource/``). A name no communicator has stands for a
        non-NULL handle that is no communicator, undefined in C: modelled as NULL."""
        name = comm.name if isinstance(comm, Comm) else comm
        return self.world.comms[self.rank].get(name)

    @_logged
    def hccl_get_comm_name(self, comm: Any) -> tuple[int, str]:
        c = self._comm(comm)
        return (int(HcclResult.E_PTR), "") if c is None else (0, c.name)

    @_logged
    def hccl_get_rank_id(self, comm: Any) -> tuple[int, int]:
        c = self._comm(comm)
        return (int(HcclResult.E_PTR), 0) if c is None else (0, c.rank)

    @_logged
    def hccl_get_rank_size(self, comm: Any) -> tuple[int, int]:
        c = self._comm(comm)
        return (int(HcclResult.E_PTR), 0) if c is None else (0, c.size)

    @_logged
    def hccl_engine_ctx_get(self, comm: Any, tag: str | None, engine: int) -> tuple[int, int, int]:
        """``HcclEngineCtxGet``. An unknown communicator -> ``HCCL_E_PTR``; a NULL tag is the reserved
        tag ``""``; a tag over 255 characters -> ``HCCL_E_PARA``; no context under (tag, engine) ->
        ``HCCL_E_PARA`` (hicann/hcomm ``src/coll_communicator_mgr/api_c_adpt/resource/engine_ctx_c_adpt.cc``
        ``HcclEngineCtxGet``, then on Atlas A2 ``src/base_comm/resources/comm_engine_res/engine_ctxs/
        independent_op_context_manager.cc`` ``ContextManager::GetCommEngineCtx``; the Ascend 950 path,
        ``EngineCtxs::GetCommEngineCtx``, returns ``HCCL_E_NOT_FOUND`` instead)."""
        c = self._comm(comm)
        if c is None:
            return int(HcclResult.E_PTR), 0, 0
        tag = tag or ""
        if len(tag) > HCCL_RES_TAG_MAX_LEN:
            return int(HcclResult.E_PARA), 0, 0
        if (tag, engine) not in c.ctx:
            return int(HcclResult.E_PARA), 0, 0
        addr, size = c.ctx[(tag, engine)]
        return 0, addr, size

    @_logged
    def hccl_engine_ctx_create(self, comm: Any, tag: str | None, engine: int, size: int) -> tuple[int, int]:
        """``HcclEngineCtxCreate``. An unknown communicator -> ``HCCL_E_PTR``; a NULL tag is the reserved
        tag ``""``; a tag over 255 characters, size 0, an engine outside ``CommEngine`` or a second
        context under the same (tag, engine) -> ``HCCL_E_PARA`` (same files as :meth:`hccl_engine_ctx_get`,
        ``HcclEngineCtxCreate`` and ``ContextManager::CreateCommEngineCtx``)."""
        c = self._comm(comm)
        if c is None:
            return int(HcclResult.E_PTR), 0
        tag = tag or ""
        if len(tag) > HCCL_RES_TAG_MAX_LEN or size <= 0 or engine not in _ENGINES or (tag, engine) in c.ctx:
            return int(HcclResult.E_PARA), 0
        addr = self.world.mem[self.rank].malloc(size, f"engine_ctx[{tag}]")
        c.ctx[(tag, engine)] = (addr, size)
        return 0, addr

    def _new_thread(self, queue: int, engine: int) -> int:
        """A new handle of ``queue`` usable on ``engine``; remembered as that queue's handle on its side."""
        h = self.world.new_handle()
        self.world.threads[h] = queue
        self.world.thread_engines[h] = int(engine)
        self._side_handle[(queue, _side(engine))] = h
        return h

    @_logged
    def hccl_thread_acquire(
        self, comm: Any, engine: int, thread_num: int, notify_num_per_thread: int
    ) -> tuple[int, list[int]]:
        """``HcclThreadAcquire``: ``thread_num`` new threads with ``notify_num_per_thread`` notifies each.

        An unknown communicator -> ``HCCL_E_PTR``; an engine outside ``CommEngine``, no thread, or
        65,536 notifies or more -> ``HCCL_E_PARA`` (hicann/hcomm
        ``src/coll_communicator_mgr/api_c_adpt/resource/thread_c_adpt.cc`` ``HcclThreadAcquire``:
        ``IsValidCommEngine``, ``threadNum == 0``, ``HCCL_THREAD_NOTIFY_MAX_NUM``). The per-comm notify
        quota (``ThreadMgr::CheckNotifyNum``, ``HCCL_E_UNAVAIL``) is not modelled."""
        c = self._comm(comm)
        if c is None:
            return int(HcclResult.E_PTR), []
        if engine not in _ENGINES or thread_num < 1 or not 0 <= notify_num_per_thread < HCCL_THREAD_NOTIFY_MAX_NUM:
            return int(HcclResult.E_PARA), []
        out = []
        for _ in range(thread_num):
            n = sum(q.kind == "thread" and q.rank == self.rank for q in self.world.queues)
            qi = self.world.new_queue(self.rank, "thread", f"rank{self.rank}.thread{n}", notify_num_per_thread)
            out.append(self._new_thread(qi, engine))
        return 0, out

    @_logged
    def hccl_thread_acquire_with_stream(self, comm: Any, engine: int, stream: int, notify_num: int) -> tuple[int, int]:
        """``HcclThreadAcquireWithStream``: the user stream as a host thread with notifies of its own
        (tasks recorded on the thread go on the stream, in order).

        As hicann/hcomm does (``src/coll_communicator_mgr/api_c_adpt/resource/thread_c_adpt.cc``
        ``HcclThreadAcquireWithStream``, then ``resource_mgr/local/my_rank/comm_engine/threads/
        thread_manager.cc`` ``ThreadMgr::HcclThreadAcquireWithStream`` and
        ``src/base_comm/primitives/api_c_adpt/hcomm_thread_c_adpt.cc`` ``HcommThreadAllocWithStream``):
        an unknown communicator or stream -> ``HCCL_E_PTR``; an engine outside ``CommEngine`` ->
        ``HCCL_E_PARA``. A stream this communicator already made a thread gives the same handle back,
        its notifies topped up to ``notify_num``, whatever the engine; a new one needs ``CPU`` or
        ``CPU_TS``, else ``HCCL_E_PARA`` (earlier hcomm also took ``CCU``). Another communicator makes
        its own thread of the same stream; here the two share the stream's notify list. 65,536
        notifies or more -> ``HCCL_E_PARA``: not decided by public sources (the call has no limit of
        its own), modelled as :meth:`hccl_thread_acquire`'s."""
        c = self._comm(comm)
        q = self._streams.get(stream)
        if c is None or q is None:
            return int(HcclResult.E_PTR), 0
        if engine not in _ENGINES or not 0 <= notify_num < HCCL_THREAD_NOTIFY_MAX_NUM:
            return int(HcclResult.E_PARA), 0
        queue = self.world.queues[q]
        h = self._stream_threads.get((c.name, stream))
        if h is None and engine not in (CommEngine.CPU, CommEngine.CPU_TS):
            return int(HcclResult.E_PARA), 0
        have = len(queue.notifies)
        more = max(0, notify_num - have) if h is not None else notify_num
        queue.notifies += [self.world.new_notify(self.rank, f"{queue.name}.notify[{have + i}]") for i in range(more)]
        if h is None:
            h = self._stream_threads[(c.name, stream)] = self._new_thread(q, int(CommEngine.CPU_TS))
        return 0, h

    @_logged
    def hccl_thread_export_to_comm_engine(
        self, comm: Any, thread_num: int, threads: list[int], engine: int
    ) -> tuple[int, list[int]]:
        """``HcclThreadExportToCommEngine``: handles of the same threads usable on ``engine`` (a host
        thread exported to ``AICPU_TS`` for a kernel, an AI CPU thread exported to ``CPU_TS`` for the
        host); a thread already exported to that side gives the same handle.

        As hicann/hcomm does (``thread_c_adpt.cc`` ``HcclThreadExportToCommEngine``, then
        ``thread_manager.cc`` ``ThreadMgr::HcclThreadExportToCommEngine`` and
        ``hcomm_thread_c_adpt.cc`` ``HcommThreadExportToCommEngine``): an unknown communicator ->
        ``HCCL_E_PTR``; no thread or more than 40, or an engine outside ``CommEngine`` ->
        ``HCCL_E_PARA``; ``AIV`` -> ``HCCL_E_PARA``. Towards the host (CPU, CPU_TS, CCU) each handle
        must be an AI CPU handle (``LookupD2HHandle``); towards the AI CPU any thread handle is looked
        up (``LookupThreadByHandle``, its AI CPU handle reused when there is one); a handle not found
        -> ``HCCL_E_NOT_FOUND``. Thread handles are process-wide there, so the communicator does not
        matter. (hcomm before its thread rework, up to August 2026, answered ``HCCL_E_PARA`` for an
        unknown handle, per communicator.)"""
        c = self._comm(comm)
        if c is None:
            return int(HcclResult.E_PTR), []
        if thread_num != len(threads) or not 1 <= thread_num <= MAX_EXPORT_THREAD_NUM:
            return int(HcclResult.E_PARA), []
        if engine not in _ENGINES or engine == CommEngine.AIV:
            return int(HcclResult.E_PARA), []
        out = []
        for t in threads:
            q = self.world.threads.get(t)
            if q is None or self.world.queues[q].rank != self.rank:
                return int(HcclResult.E_NOT_FOUND), []
            if _side(engine) == "host" and _side(self.world.thread_engines[t]) == "host":
                return int(HcclResult.E_NOT_FOUND), []  # a host handle is no key of the device-to-host map
            h = self._side_handle.get((q, _side(engine)))
            out.append(self._new_thread(q, engine) if h is None else h)
        return 0, out

    def _host_thread(self, thread: int) -> Queue | None:
        """The queue of a thread handle the host may use (``CPU_TS``, this rank), or None."""
        q = self.world.threads.get(thread)
        if q is None or _side(self.world.thread_engines.get(thread, -1)) != "host":
            return None
        queue = self.world.queues[q]
        return queue if queue.rank == self.rank else None

    @_logged
    def hcomm_thread_notify_record_on_thread(self, thread: int, dst_thread: int, dst_notify_idx: int) -> int:
        """Host side of ``HcommThreadNotifyRecordOnThread``: on the host thread's stream, a record of
        notify ``dst_notify_idx`` of ``dst_thread`` (a thread exported to the host).

        A NULL thread or an index outside ``[0, notifyNum)`` -> ``HCCL_E_PTR`` (hicann/hcomm
        ``src/base_comm/primitives/api_c_adpt/cpu_primitives_c_adpt.cc``
        ``HcommThreadNotifyRecordOnThread``: ``CHK_PTR_NULL`` on the thread, on its stream and on
        ``GetNotify``, which gives NULL for an index out of range, ``CpuTsThread::GetNotify``). A
        non-NULL handle that is no thread, or an AI CPU handle used on the host, is undefined in C
        (a pointer cast): not decided by public sources; modelled as ``HCCL_E_PTR``."""
        queue = self._host_thread(thread)
        dq = self.world.threads.get(dst_thread)
        if queue is None or dq is None:
            return int(HcclResult.E_PTR)
        notifies = self.world.queues[dq].notifies
        if not 0 <= dst_notify_idx < len(notifies):
            return int(HcclResult.E_PTR)
        queue.tasks.append(self._notify_task(TaskKind.RECORD, notifies[dst_notify_idx]))
        return 0

    @_logged
    def hcomm_thread_notify_wait_on_thread(self, thread: int, notify_idx: int, timeout: float) -> int:
        """Host side of ``HcommThreadNotifyWaitOnThread``: on the host thread's stream, a wait (``timeout``
        seconds, 0 = forever) for the thread's own notify ``notify_idx``. Codes as
        :meth:`hcomm_thread_notify_record_on_thread` (``cpu_primitives_c_adpt.cc``
        ``HcommThreadNotifyWaitOnThread``)."""
        queue = self._host_thread(thread)
        if queue is None or not 0 <= notify_idx < len(queue.notifies):
            return int(HcclResult.E_PTR)
        queue.tasks.append(self._notify_task(TaskKind.WAIT, queue.notifies[notify_idx], float(timeout)))
        return 0

    @_logged
    def hccl_channel_acquire(
        self, comm: Any, engine: int, remote_rank: int, protocol: int, notify_num: int
    ) -> tuple[int, int]:
        """``HcclChannelAcquire`` with one descriptor; channels are reused per (engine, peer, protocol).

        An unknown communicator -> ``HCCL_E_PTR`` (hicann/hcomm ``coll_comm_res_c_adpt.cc``
        ``CheckChannelResParams``). On Atlas A2 the descriptor then goes to
        ``channel_manager.cc`` ``ChannelManager::ChannelCommCreate``, whose ``CheckChannelParam``
        returns ``HCCL_E_PARA``, in this order, for more than ``NOTIFY_NUM_MAX`` (64) notifies, a remote
        rank equal to this one, a protocol the engine does not take (AIV: HCCS, HCCS_ONLY, SIO; the
        others also RoCE) and the ``CCU`` engine; a protocol outside ``CommProtocol`` is already
        ``HCCL_E_PARA`` in ``ProcessHcclChannelDesc``. Only then is an existing channel of the same key
        reused (``PrepareHandleArray``), with the notify count it was made with. A remote rank outside
        the communicator is not checked there (it goes on to the transport set-up): not decided by
        public sources, modelled as ``HCCL_E_PARA``; so is a negative notify count (``uint32_t`` there,
        so above 64)."""
        c = self._comm(comm)
        if c is None:
            return int(HcclResult.E_PTR), 0
        protocols = CHANNEL_PROTOCOLS_AIV if engine == int(CommEngine.AIV) else CHANNEL_PROTOCOLS
        if (
            not 0 <= notify_num <= CHANNEL_NOTIFY_NUM_MAX
            or remote_rank == self.rank
            or protocol not in {int(p) for p in protocols}
            or engine not in {int(e) for e in CHANNEL_ENGINES}
            or not 0 <= remote_rank < c.size
        ):
            return int(HcclResult.E_PARA), 0
        key = (engine, remote_rank, protocol)
        if key in c.channels:
            return 0, c.channels[key]
        h = self.world.new_handle()
        notifies = [
            self.world.new_notify(self.rank, f"rank{self.rank}.ch->{remote_rank}.notify[{i}]")
            for i in range(notify_num)
        ]
        self.world.channels[h] = Channel(h, self.rank, remote_rank, c.name, protocol, notifies)
        c.channels[key] = h
        return 0, h

    @_logged
    def hccl_get_hccl_buffer(self, comm: Any) -> tuple[int, int, int]:
        c = self._comm(comm)
        if c is None:
            return int(HcclResult.E_PTR), 0, 0
        if c.size == 1:
            return 0, 0, 0
        return 0, c.buffer_addr, c.buffer_size

    @_logged
    def hccl_channel_get_hccl_buffer(self, comm: Any, channel: int) -> tuple[int, int, int]:
        """``HcclChannelGetHcclBuffer``: the peer's HCCL buffer. An unknown communicator ->
        ``HCCL_E_PTR``; a channel the communicator does not have -> ``HCCL_E_PARA`` (hicann/hcomm
        ``src/coll_communicator_mgr/api_c_adpt/resource/channel_c_adpt.cc``, then
        ``resource_mgr/remote/rank_pairs/channel_manager.cc`` ``ChannelManager::IsChannelExist``)."""
        c = self._comm(comm)
        if c is None:
            return int(HcclResult.E_PTR), 0, 0
        ch = self.world.channels.get(channel)
        if ch is None or ch.rank != self.rank or ch.comm != c.name:
            return int(HcclResult.E_PARA), 0, 0
        peer = self.world.comms[ch.peer][c.name]
        return 0, peer.buffer_addr, peer.buffer_size


__all__ = ["HostApi"]

"""The simulated world of a custom AI CPU communication operator: ranks, host ACL API, HCCL control
plane, device-side Hcomm API, and the task program the engines run.

Model (spec §3, §12):

* Every rank has a device memory (byte-addressed, allocations like ``aclrtMalloc``), user streams
  and device threads. Streams and threads are in-order task queues (:class:`Queue`).
* Notifies (ACL notifies, thread notifies, channel notifies, and one internal "kernel started"
  gate per launch) are binary flags in one table: record sets, wait blocks until set and clears
  (a second record before the wait is lost).
* Host calls run in Python, in program order, and only *enqueue* tasks (``aclrtRecordNotify``,
  ``aclrtWaitAndResetNotify``, ``aclrtLaunchKernelWithConfig``) or create resources; their return
  codes are the synchronous checks of spec §2.1.
* A kernel launch resolves ``functionName`` in ``kernelSo`` and runs the Python kernel with a copy
  of its argument blob at once: its Hcomm calls only validate arguments and record tasks per
  device thread, which ``HcommBatchModeEnd`` appends to the thread queues behind the launch's gate
  (so they run only after the stream reached the kernel task). An unexported symbol or a non-zero
  return fails the stream at the kernel task with ``ACL_ERROR_RT_AICPU_EXCEPTION`` (507018).
* :meth:`World.program` freezes the queues into a :class:`TaskProgram` for the engines.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ascend_jax.aicpu.codes import (
    ACL_NOTIFY_DEFAULT,
    ACL_NOTIFY_DEVICE_USE_ONLY,
    ACL_RT_LAUNCH_KERNEL_ATTR_TIMEOUT,
    ACL_RT_LAUNCH_KERNEL_ATTR_TIMEOUT_US,
    REDUCE_DTYPES,
    REDUCE_OPS,
    SIZE_TABLE,
    AclError,
    CommEngine,
    HcclDataType,
    HcclReduceOp,
    HcclResult,
)
from ascend_jax.aicpu.opinfo import OpInfo, load_op_info, resolve_symbol
from ascend_jax.aicpu.structs import from_bytes, to_bytes
from ascend_jax.errors import ConfigError

#: First mapped device address of every rank (lower addresses, NULL included, are unmapped).
MEM_BASE = 0x10000
#: Notify-wait timeout error reported when a wait expires (spec §2.3: unconfirmed; configurable).
DEFAULT_WAIT_TIMEOUT_ERROR = int(AclError.RT_TASK_TIMEOUT)
#: Error of a kernel whose symbol is missing or which returned non-zero (spec §10 F2, §12).
KERNEL_FAILURE_ERROR = int(AclError.RT_AICPU_EXCEPTION)
#: Error of a device copy outside every allocation of its rank (assumption).
MEMORY_FAULT_ERROR = int(AclError.RT_AICPU_EXCEPTION)


class TaskKind(enum.IntEnum):
    NOP = 0
    RECORD = 1  # set notify (lost if already set)
    WAIT = 2  # block until notify set, then clear it; timeout seconds (0 = forever)
    COPY = 3  # nbytes from (src_rank, src_addr) to (dst_rank, dst_addr)
    REDUCE = 4  # dst = op(dst, src), count elements of dtype
    KERNEL = 5  # AI CPU kernel task on a stream: records its gate; error != 0 fails the stream


#: Integer fields of a task, in table order.
TASK_FIELDS = ("kind", "notify", "src_rank", "src_addr", "dst_rank", "dst_addr", "nbytes", "dtype", "op", "error")


@dataclasses.dataclass
class Task:
    """One queued task. ``notify`` may be symbolic until the program is frozen (channel records)."""

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
    timeout: float = 0.0
    duration: float = 0.0
    label: str = ""


@dataclasses.dataclass
class Queue:
    """A user stream or a device thread: an in-order task queue of one rank."""

    name: str
    rank: int
    kind: str  # "stream" | "thread"
    tasks: list[Task] = dataclasses.field(default_factory=list)
    notifies: list[int] = dataclasses.field(default_factory=list)  # thread notifies (global ids)


@dataclasses.dataclass
class Channel:
    """This rank's side of a channel to ``peer``: ``notifies`` are the notifies this side owns."""

    handle: int
    rank: int
    peer: int
    comm: str
    protocol: int
    notifies: list[int]


@dataclasses.dataclass(frozen=True)
class CommCost:
    """Durations in seconds (calibratable): notify record/wait latency, kernel task, copy latency and
    bandwidths (bytes/s) for local (SDMA) and link (HCCS) transfers, reduce throughput."""

    notify_s: float = 1e-6
    kernel_s: float = 20e-6
    copy_latency_s: float = 2e-6
    local_bw: float = 100e9
    link_bw: float = 50e9
    reduce_bw: float = 50e9


class _Memory:
    """One rank's device memory: allocations (start 64-aligned, ``ALIGN_UP(size, 32) + 32``) and bytes."""

    def __init__(self) -> None:
        self.cursor = MEM_BASE
        self.image = np.zeros(0, np.uint8)
        self.allocs: list[tuple[int, int, str]] = []

    def malloc(self, size: int, label: str) -> int:
        start = -(-self.cursor // 64) * 64
        self.cursor = start + (-(-size // 32) * 32 + 32)
        grown = np.zeros(self.cursor - MEM_BASE, np.uint8)
        grown[: self.image.size] = self.image
        self.image = grown
        self.allocs.append((start, start + size, label))
        return start

    def write(self, addr: int, data: bytes) -> None:
        lo = addr - MEM_BASE
        self.image[lo : lo + len(data)] = np.frombuffer(bytes(data), np.uint8)

    def read(self, addr: int, n: int) -> bytes:
        lo = addr - MEM_BASE
        return self.image[lo : lo + n].tobytes()

    def inside(self, addr: int, n: int) -> bool:
        return any(s <= addr and addr + n <= e for s, e, _ in self.allocs)


@dataclasses.dataclass
class Comm:
    """A communicator on one rank: name, rank, size, HCCL buffer, engine contexts by tag."""

    name: str
    rank: int
    size: int
    buffer_addr: int
    buffer_size: int
    ctx: dict = dataclasses.field(default_factory=dict)  # (tag, engine) -> (addr, size)
    channels: dict = dataclasses.field(default_factory=dict)  # (engine, peer, protocol) -> handle


@dataclasses.dataclass
class StreamSync:
    """What ``aclrtSynchronizeStream`` returns once the world has run (``code``; None before)."""

    rank: int
    stream: int
    code: int | None = None


class World:
    """All ranks of one simulated job.

    Args:
      ranks: number of ranks (devices), 1..64.
      hccl_buffer_size: bytes of every rank's HCCL buffer (``HcclGetHcclBuffer``; real default 400 MB,
        here small so that memory stays small).
      cost: task durations.
      wait_timeout_error: aclError a stream reports after a notify-wait timeout.
      name: job name in results.
    """

    def __init__(
        self,
        ranks: int = 2,
        hccl_buffer_size: int = 1 << 20,
        cost: CommCost | None = None,
        wait_timeout_error: int = DEFAULT_WAIT_TIMEOUT_ERROR,
        name: str = "comm-job",
    ):
        if not isinstance(ranks, int) or not 1 <= ranks <= 64:
            raise ConfigError("ranks", ranks, "must be an integer in 1..64")
        if not isinstance(hccl_buffer_size, int) or hccl_buffer_size < 64:
            raise ConfigError("hccl_buffer_size", hccl_buffer_size, "must be an integer >= 64 bytes")
        self.name = name
        self.n_ranks = ranks
        self.cost = cost or CommCost()
        self.wait_timeout_error = int(wait_timeout_error)
        self.hccl_buffer_size = hccl_buffer_size
        self.mem = [_Memory() for _ in range(ranks)]
        self.queues: list[Queue] = []
        self.notify_names: list[str] = []
        self.notify_rank: list[int] = []
        self.comms: list[dict[str, Comm]] = [{} for _ in range(ranks)]
        self.channels: dict[int, Channel] = {}
        self.syncs: list[StreamSync] = []
        self.threads: dict[int, int] = {}  # thread handle (opaque uint64) -> queue index
        self.outputs: dict[str, tuple[int, int, int, int]] = {}  # name -> (rank, addr, dtype, count)
        self.launches = 0
        self._handles = 0x1000
        self._hosts = [HostApi(self, r) for r in range(ranks)]

    # -- resources -------------------------------------------------------------------------
    def _handle(self) -> int:
        self._handles += 8
        return self._handles

    def new_notify(self, rank: int, name: str) -> int:
        self.notify_names.append(name)
        self.notify_rank.append(rank)
        return len(self.notify_names) - 1

    def new_queue(self, rank: int, kind: str, name: str, notify_num: int = 0) -> int:
        q = Queue(name, rank, kind)
        q.notifies = [self.new_notify(rank, f"{name}.notify[{i}]") for i in range(notify_num)]
        self.queues.append(q)
        return len(self.queues) - 1

    def host(self, rank: int) -> HostApi:
        """The host-side API of ``rank`` (ACL runtime + HCCL control plane)."""
        if not 0 <= rank < self.n_ranks:
            raise ConfigError("rank", rank, f"must be in 0..{self.n_ranks - 1}")
        return self._hosts[rank]

    def init_comm(self, name: str = "hccl_world_group") -> list[Comm]:
        """``HcclCommInitRootInfo`` on every rank: a communicator named ``name`` with an HCCL buffer each."""
        out = []
        for r in range(self.n_ranks):
            if name in self.comms[r]:
                raise ConfigError("comm", name, "already initialised")
            addr = self.mem[r].malloc(self.hccl_buffer_size, f"hccl_buffer[{name}]")
            self.comms[r][name] = Comm(name, r, self.n_ranks, addr, self.hccl_buffer_size)
            out.append(self.comms[r][name])
        return out

    def channel_peer_notify(self, channel: int, idx: int) -> int:
        """Global id of notify ``idx`` on the peer's side of ``channel`` (resolved when frozen)."""
        ch = self.channels[channel]
        peer = [c for c in self.channels.values() if c.rank == ch.peer and c.peer == ch.rank and c.comm == ch.comm]
        if not peer:
            raise ConfigError(
                f"rank {ch.rank} channel to rank {ch.peer}",
                f"comm {ch.comm!r}",
                f"rank {ch.peer} never called HcclChannelAcquire towards rank {ch.rank}; both ends must create the channel",
                "acquire the channel on both ranks",
            )
        other = peer[0]
        if idx >= len(other.notifies):
            raise ConfigError(
                f"rank {ch.rank} channel to rank {ch.peer}",
                idx,
                f"the peer side has only {len(other.notifies)} notifies (notifyNum)",
            )
        return other.notifies[idx]

    def mark_output(self, name: str, rank: int, addr: int, dtype: int, count: int) -> None:
        """Names a device buffer whose final value the result reports (numerics, ``tensor``)."""
        self.outputs[name] = (rank, addr, int(dtype), count)

    def program(self, max_steps: int = 100_000) -> TaskProgram:
        """Freezes every queue into a :class:`TaskProgram` (symbolic notifies resolved)."""
        queues = []
        for q in self.queues:
            tasks = []
            for t in q.tasks:
                if isinstance(t.notify, tuple):  # ("peer", channel, idx)
                    t = dataclasses.replace(t, notify=self.channel_peer_notify(t.notify[1], t.notify[2]))
                tasks.append(t)
            queues.append(dataclasses.replace(q, tasks=tasks))
        return TaskProgram(
            name=self.name,
            n_ranks=self.n_ranks,
            queues=tuple(queues),
            notify_names=tuple(self.notify_names),
            memory=tuple(m.image.copy() for m in self.mem),
            allocs=tuple(tuple(m.allocs) for m in self.mem),
            max_steps=max_steps,
            outputs=dict(self.outputs),
            wait_timeout_error=self.wait_timeout_error,
            world=self,
        )


@dataclasses.dataclass(frozen=True)
class TaskProgram:
    """Every queue's tasks, the notify table and the initial memory of every rank."""

    name: str
    n_ranks: int
    queues: tuple[Queue, ...]
    notify_names: tuple[str, ...]
    memory: tuple[np.ndarray, ...]
    allocs: tuple[tuple[tuple[int, int, str], ...], ...]
    max_steps: int
    outputs: Mapping[str, tuple[int, int, int, int]] = dataclasses.field(default_factory=dict)
    wait_timeout_error: int = DEFAULT_WAIT_TIMEOUT_ERROR
    world: Any = dataclasses.field(default=None, compare=False)


# -- host side ----------------------------------------------------------------------------------


@dataclasses.dataclass
class _Args:
    func: Any
    blobs: list[bytes] = dataclasses.field(default_factory=list)
    final: bool = False


class HostApi:
    """One rank's host thread: the ACL runtime calls of spec §2.1 and the HCCL control plane of §4.2.

    Calls return the C return code first, then the out-parameters, e.g.
    ``ret, notify = host.aclrt_create_notify(0)``.
    """

    def __init__(self, world: World, rank: int):
        self.world = world
        self.rank = rank
        self._streams: dict[int, int] = {}  # handle -> queue
        self._notifies: dict[int, int] = {}  # handle -> global notify
        self._bins: dict[int, dict[str, OpInfo]] = {}
        self._funcs: dict[int, OpInfo] = {}
        self._args: dict[int, _Args] = {}

    # -- memory ----------------------------------------------------------------------------
    def aclrt_malloc(self, size: int, label: str = "buffer") -> tuple[int, int]:
        if not isinstance(size, int) or size <= 0:
            return int(AclError.INVALID_PARAM), 0
        return 0, self.world.mem[self.rank].malloc(size, label)

    def aclrt_memcpy_h2d(self, dst: int, data: bytes | np.ndarray) -> int:
        """``aclrtMemcpy(..., ACL_MEMCPY_HOST_TO_DEVICE)`` (synchronous)."""
        raw = to_bytes(data) if isinstance(data, np.ndarray) else bytes(data)
        if not self.world.mem[self.rank].inside(dst, len(raw)):
            return int(AclError.INVALID_PARAM)
        self.world.mem[self.rank].write(dst, raw)
        return 0

    # -- streams and notifies ----------------------------------------------------------------
    def aclrt_create_stream(self) -> tuple[int, int]:
        h = self.world._handle()
        self._streams[h] = self.world.new_queue(self.rank, "stream", f"rank{self.rank}.stream{len(self._streams)}")
        return 0, h

    def aclrt_create_notify(self, flag: int = ACL_NOTIFY_DEFAULT) -> tuple[int, int]:
        if flag not in (ACL_NOTIFY_DEFAULT, ACL_NOTIFY_DEVICE_USE_ONLY):
            return int(AclError.RT_PARAM_INVALID), 0
        h = self.world._handle()
        self._notifies[h] = self.world.new_notify(self.rank, f"rank{self.rank}.aclNotify{len(self._notifies)}")
        return 0, h

    def aclrt_get_notify_id(self, notify: int) -> tuple[int, int]:
        if notify not in self._notifies:
            return int(AclError.INVALID_PARAM), 0
        return 0, self._notifies[notify]

    def _stream(self, stream: int) -> Queue | None:
        q = self._streams.get(stream)
        return None if q is None else self.world.queues[q]

    def aclrt_record_notify(self, notify: int, stream: int) -> int:
        if notify not in self._notifies:
            return int(AclError.INVALID_PARAM)
        q = self._stream(stream)
        if q is None:
            return int(AclError.RT_STREAM_CONTEXT)
        n = self._notifies[notify]
        q.tasks.append(
            Task(TaskKind.RECORD, n, duration=self.world.cost.notify_s, label=f"record {self.world.notify_names[n]}")
        )
        return 0

    def aclrt_wait_and_reset_notify(self, notify: int, stream: int, timeout: int) -> int:
        """Timeout in seconds; 0 = forever (``UINT32_MAX`` = runtime default, also forever here)."""
        if notify not in self._notifies:
            return int(AclError.INVALID_PARAM)
        q = self._stream(stream)
        if q is None:
            return int(AclError.RT_STREAM_CONTEXT)
        n = self._notifies[notify]
        t = 0.0 if timeout in (0, 2**32 - 1) else float(timeout)
        q.tasks.append(
            Task(
                TaskKind.WAIT,
                n,
                timeout=t,
                duration=self.world.cost.notify_s,
                label=f"wait {self.world.notify_names[n]}",
            )
        )
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
    def aclrt_binary_load_from_file(self, path: Any, cpu_kernel_mode: int = 0) -> tuple[int, int]:
        """Registers the kernels of an op-info JSON (path or parsed dict). Bad files -> 100003."""
        try:
            lib = load_op_info(path)
        except ConfigError:
            return int(AclError.INVALID_FILE), 0
        h = self.world._handle()
        self._bins[h] = lib
        return 0, h

    def aclrt_binary_get_function(self, binary: int, kernel_name: str) -> tuple[int, int]:
        """Looks up the JSON top-level key ``kernel_name``; unknown -> 107000 (F1)."""
        if binary not in self._bins or not kernel_name:
            return int(AclError.INVALID_PARAM), 0
        info = self._bins[binary].get(kernel_name)
        if info is None:
            return int(AclError.RT_PARAM_INVALID), 0
        h = self.world._handle()
        self._funcs[h] = info
        return 0, h

    def aclrt_kernel_args_init(self, func: int) -> tuple[int, int]:
        if func not in self._funcs:
            return int(AclError.INVALID_PARAM), 0
        h = self.world._handle()
        self._args[h] = _Args(func)
        return 0, h

    def aclrt_kernel_args_append(self, args: int, param: bytes | np.ndarray) -> tuple[int, int]:
        """Appends a *copy* of ``param`` (a struct value or bytes); later host changes do not reach the kernel."""
        a = self._args.get(args)
        raw = to_bytes(param) if isinstance(param, np.ndarray) else bytes(param or b"")
        if a is None or not raw or a.final:
            return int(AclError.INVALID_PARAM), 0
        a.blobs.append(raw)
        return 0, len(a.blobs) - 1

    def aclrt_kernel_args_finalize(self, args: int) -> int:
        a = self._args.get(args)
        if a is None:
            return int(AclError.INVALID_PARAM)
        a.final = True
        return 0

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
        """Enqueues the AI CPU kernel task. ``cfg``: ``{ACL_RT_LAUNCH_KERNEL_ATTR_TIMEOUT: seconds}``.

        The kernel runs now (see the module docstring); ``param_dtype`` is how the kernel sees its
        first argument (default: raw bytes).
        """
        info = self._funcs.get(func)
        a = self._args.get(args)
        if info is None or a is None or num_blocks == 0 or reserve is not None:
            return int(AclError.INVALID_PARAM)
        q = self._stream(stream)
        if q is None:
            return int(AclError.RT_STREAM_CONTEXT)
        cfg = dict(cfg or {})
        if ACL_RT_LAUNCH_KERNEL_ATTR_TIMEOUT in cfg and ACL_RT_LAUNCH_KERNEL_ATTR_TIMEOUT_US in cfg:
            return int(AclError.INVALID_PARAM)
        timeout = cfg.get(ACL_RT_LAUNCH_KERNEL_ATTR_TIMEOUT, 0)
        if not isinstance(timeout, int) or not 0 <= timeout <= 0xFFFF:
            return int(AclError.INVALID_PARAM)
        world = self.world
        launch = world.launches
        world.launches += 1
        gate = world.new_notify(self.rank, f"rank{self.rank}.kernel{launch}.start")
        error = 0
        fn = resolve_symbol(info.kernel_so, info.function_name)
        dev = DeviceApi(world, self.rank, gate, launch)
        if fn is None:  # the .so does not export functionName: fails on the device (F2)
            error = KERNEL_FAILURE_ERROR
        else:
            blob = a.blobs[0] if a.blobs else b""
            param = from_bytes(blob, param_dtype) if param_dtype is not None else blob
            ret = fn(dev, param)
            dev.finish()
            if ret != 0:
                error = KERNEL_FAILURE_ERROR
        q.tasks.append(
            Task(
                TaskKind.KERNEL,
                gate,
                error=error,
                duration=world.cost.kernel_s,
                label=f"kernel {info.name} ({info.kernel_so}:{info.function_name})",
            )
        )
        dev.kernel_return = error
        return 0

    # -- HCCL control plane --------------------------------------------------------------------
    def _comm(self, comm: Any) -> Comm | None:
        name = comm.name if isinstance(comm, Comm) else comm
        return self.world.comms[self.rank].get(name)

    def hccl_get_comm_name(self, comm: Any) -> tuple[int, str]:
        c = self._comm(comm)
        return (int(HcclResult.E_PTR), "") if c is None else (0, c.name)

    def hccl_get_rank_id(self, comm: Any) -> tuple[int, int]:
        c = self._comm(comm)
        return (int(HcclResult.E_PTR), 0) if c is None else (0, c.rank)

    def hccl_get_rank_size(self, comm: Any) -> tuple[int, int]:
        c = self._comm(comm)
        return (int(HcclResult.E_PTR), 0) if c is None else (0, c.size)

    def hccl_engine_ctx_get(self, comm: Any, tag: str, engine: int) -> tuple[int, int, int]:
        c = self._comm(comm)
        if c is None:
            return int(HcclResult.E_PTR), 0, 0
        if (tag, engine) not in c.ctx:
            return int(HcclResult.E_NOT_FOUND), 0, 0
        addr, size = c.ctx[(tag, engine)]
        return 0, addr, size

    def hccl_engine_ctx_create(self, comm: Any, tag: str, engine: int, size: int) -> tuple[int, int]:
        c = self._comm(comm)
        if c is None or not tag:
            return int(HcclResult.E_PTR), 0
        if len(tag) > 255 or size <= 0:
            return int(HcclResult.E_PARA), 0
        addr = self.world.mem[self.rank].malloc(size, f"engine_ctx[{tag}]")
        c.ctx[(tag, engine)] = (addr, size)
        return 0, addr

    def hccl_thread_acquire(
        self, comm: Any, engine: int, thread_num: int, notify_num_per_thread: int
    ) -> tuple[int, list[int]]:
        c = self._comm(comm)
        if c is None:
            return int(HcclResult.E_PTR), []
        if thread_num < 1 or not 0 <= notify_num_per_thread <= 65535:
            return int(HcclResult.E_PARA), []
        out = []
        for _ in range(thread_num):
            h = self.world._handle()
            name = f"rank{self.rank}.thread{sum(q.kind == 'thread' and q.rank == self.rank for q in self.world.queues)}"
            qi = self.world.new_queue(self.rank, "thread", name, notify_num_per_thread)
            self.world.threads[h] = qi
            out.append(h)
        return 0, out

    def hccl_channel_acquire(
        self, comm: Any, engine: int, remote_rank: int, protocol: int, notify_num: int
    ) -> tuple[int, int]:
        """``HcclChannelAcquire`` with one descriptor; channels are reused per (engine, peer, protocol)."""
        c = self._comm(comm)
        if c is None:
            return int(HcclResult.E_PTR), 0
        if not 0 <= remote_rank < c.size or remote_rank == self.rank or notify_num < 0:
            return int(HcclResult.E_PARA), 0
        key = (engine, remote_rank, protocol)
        if key in c.channels:
            return 0, c.channels[key]
        h = self.world._handle()
        notifies = [
            self.world.new_notify(self.rank, f"rank{self.rank}.ch->{remote_rank}.notify[{i}]")
            for i in range(notify_num)
        ]
        self.world.channels[h] = Channel(h, self.rank, remote_rank, c.name, protocol, notifies)
        c.channels[key] = h
        return 0, h

    def hccl_get_hccl_buffer(self, comm: Any) -> tuple[int, int, int]:
        c = self._comm(comm)
        if c is None:
            return int(HcclResult.E_PTR), 0, 0
        if c.size == 1:
            return 0, 0, 0
        return 0, c.buffer_addr, c.buffer_size

    def hccl_channel_get_hccl_buffer(self, comm: Any, channel: int) -> tuple[int, int, int]:
        c = self._comm(comm)
        ch = self.world.channels.get(channel)
        if c is None or ch is None or ch.rank != self.rank:
            return int(HcclResult.E_PTR), 0, 0
        peer = self.world.comms[ch.peer][c.name]
        return 0, peer.buffer_addr, peer.buffer_size


# -- device side --------------------------------------------------------------------------------


class DeviceApi:
    """The Hcomm C API as one kernel execution (one AI CPU OS thread) sees it (spec §5).

    Every call returns an ``HcclResult`` reflecting argument checks only; tasks are recorded per
    device thread while in batch mode and submitted by ``hcomm_batch_mode_end``. Data-plane calls
    outside batch mode return ``HCCL_E_NOT_SUPPORT`` (batch mode is mandatory on A2/A3).
    """

    def __init__(self, world: World, rank: int, gate: int, launch: int):
        self.world = world
        self.rank = rank
        self.gate = gate
        self.launch = launch
        self.batch: dict[int, list[Task]] | None = None
        self.gated: set[int] = set()
        self.acquired: set[str] = set()
        self.kernel_return = 0

    # -- helpers ---------------------------------------------------------------------------
    def read(self, addr: int, nbytes: int) -> bytes:
        """Device memory as it is now (e.g. the resource context the host copied)."""
        return self.world.mem[self.rank].read(addr, nbytes)

    def read_struct(self, addr: int, dtype: np.dtype) -> np.ndarray:
        return from_bytes(self.read(addr, np.dtype(dtype).itemsize), dtype)

    def _queue(self, thread: int) -> int | None:
        q = self.world.threads.get(thread)
        if q is None or self.world.queues[q].rank != self.rank:
            return None
        return q

    def _record(self, thread: int, task: Task) -> int:
        q = self._queue(thread)
        if q is None:
            return int(HcclResult.E_PTR)
        if self.batch is None:
            return int(HcclResult.E_NOT_SUPPORT)
        self.batch.setdefault(q, []).append(task)
        return 0

    def _copy_duration(self, nbytes: int, link: bool) -> float:
        c = self.world.cost
        return c.copy_latency_s + nbytes / (c.link_bw if link else c.local_bw)

    def finish(self) -> None:
        """End of the kernel function: an open batch is discarded (never submitted)."""
        self.batch = None

    # -- control -----------------------------------------------------------------------------
    def hcomm_acquire_comm(self, comm_id: str | bytes | None) -> int:
        name = comm_id.decode() if isinstance(comm_id, bytes) else comm_id
        if not name or name not in self.world.comms[self.rank]:
            return int(HcclResult.E_PTR)
        self.acquired.add(name)
        return 0

    def hcomm_release_comm(self, comm_id: str | bytes | None) -> int:
        name = comm_id.decode() if isinstance(comm_id, bytes) else comm_id
        if not name:
            return int(HcclResult.E_PTR)
        self.acquired.discard(name)
        return 0

    def hcomm_batch_mode_start(self, batch_tag: str | None = None) -> int:
        self.batch = {}
        return 0

    def hcomm_batch_mode_end(self, batch_tag: str | None = None) -> int:
        if self.batch is None:
            return int(HcclResult.E_INTERNAL)
        for q, tasks in self.batch.items():
            queue = self.world.queues[q]
            if q not in self.gated:  # the thread's work starts only once the kernel task ran
                queue.tasks.append(Task(TaskKind.WAIT, self.gate, label=f"start of kernel {self.launch}"))
                self.gated.add(q)
            queue.tasks.extend(tasks)
        self.batch = None
        return 0

    # -- local operations --------------------------------------------------------------------
    def hcomm_local_copy_on_thread(self, thread: int, dst: int, src: int, length: int) -> int:
        if not dst or not src:
            return int(HcclResult.E_PTR)
        if length < 0:
            return int(HcclResult.E_PARA)
        return self._record(
            thread,
            Task(
                TaskKind.COPY,
                src_rank=self.rank,
                src_addr=src,
                dst_rank=self.rank,
                dst_addr=dst,
                nbytes=length,
                duration=self._copy_duration(length, False),
                label=f"local copy {length} B",
            ),
        )

    def _reduce_args_ok(self, dtype: int, op: int) -> bool:
        return dtype in [int(d) for d in REDUCE_DTYPES] and op in [int(o) for o in REDUCE_OPS]

    def hcomm_local_reduce_on_thread(self, thread: int, dst: int, src: int, count: int, dtype: int, op: int) -> int:
        if not dst or not src:
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
                duration=self.world.cost.copy_latency_s + n / self.world.cost.reduce_bw,
                label=f"local reduce {HcclReduceOp(op).name} {count} x {HcclDataType(dtype).name}",
            ),
        )

    def hcomm_thread_notify_record_on_thread(self, thread: int, dst_thread: int, dst_notify_idx: int) -> int:
        dq = self.world.threads.get(dst_thread)
        if dq is None:
            return int(HcclResult.E_PTR)
        notifies = self.world.queues[dq].notifies
        if not 0 <= dst_notify_idx < len(notifies):
            return int(HcclResult.E_PARA)
        n = notifies[dst_notify_idx]
        return self._record(
            thread,
            Task(TaskKind.RECORD, n, duration=self.world.cost.notify_s, label=f"record {self.world.notify_names[n]}"),
        )

    def hcomm_thread_notify_wait_on_thread(self, thread: int, notify_idx: int, timeout: float) -> int:
        q = self._queue(thread)
        if q is None:
            return int(HcclResult.E_PTR)
        notifies = self.world.queues[q].notifies
        if not 0 <= notify_idx < len(notifies):
            return int(HcclResult.E_PARA)
        n = notifies[notify_idx]
        return self._record(
            thread,
            Task(
                TaskKind.WAIT,
                n,
                timeout=float(timeout),
                duration=self.world.cost.notify_s,
                label=f"wait {self.world.notify_names[n]}",
            ),
        )

    def hcomm_aclrt_notify_record_on_thread(self, thread: int, notify_id: int) -> int:
        if not 0 <= notify_id < len(self.world.notify_names) or self.world.notify_rank[notify_id] != self.rank:
            return int(HcclResult.E_PARA)
        return self._record(
            thread,
            Task(
                TaskKind.RECORD,
                notify_id,
                duration=self.world.cost.notify_s,
                label=f"record {self.world.notify_names[notify_id]}",
            ),
        )

    def hcomm_aclrt_notify_wait_on_thread(self, thread: int, notify_id: int, timeout: float) -> int:
        if not 0 <= notify_id < len(self.world.notify_names) or self.world.notify_rank[notify_id] != self.rank:
            return int(HcclResult.E_PARA)
        return self._record(
            thread,
            Task(
                TaskKind.WAIT, notify_id, timeout=float(timeout), duration=self.world.cost.notify_s,
                label=f"wait {self.world.notify_names[notify_id]}",
            ),
        )  # fmt: skip

    # -- remote operations -------------------------------------------------------------------
    def _channel(self, channel: int) -> Channel | None:
        ch = self.world.channels.get(channel)
        return ch if ch is not None and ch.rank == self.rank else None

    def hcomm_channel_notify_record_on_thread(self, thread: int, channel: int, remote_notify_idx: int) -> int:
        """Sets notify ``remote_notify_idx`` on the peer's side of ``channel``."""
        ch = self._channel(channel)
        if ch is None:
            return int(HcclResult.E_PTR)
        if remote_notify_idx < 0:
            return int(HcclResult.E_PARA)
        return self._record(
            thread,
            Task(
                TaskKind.RECORD,
                ("peer", channel, remote_notify_idx),
                duration=self.world.cost.notify_s,
                label=f"record rank{ch.peer}.ch->{ch.rank}.notify[{remote_notify_idx}]",
            ),
        )

    def hcomm_channel_notify_wait_on_thread(
        self, thread: int, channel: int, local_notify_idx: int, timeout: float
    ) -> int:
        """Waits on notify ``local_notify_idx`` of this side of ``channel``."""
        ch = self._channel(channel)
        if ch is None:
            return int(HcclResult.E_PTR)
        if not 0 <= local_notify_idx < len(ch.notifies):
            return int(HcclResult.E_PARA)
        n = ch.notifies[local_notify_idx]
        return self._record(
            thread,
            Task(
                TaskKind.WAIT,
                n,
                timeout=float(timeout),
                duration=self.world.cost.notify_s,
                label=f"wait {self.world.notify_names[n]}",
            ),
        )

    def _transfer(self, thread, channel, dst, src, nbytes, read: bool, dtype=0, op=-1, count=0) -> int:
        ch = self._channel(channel)
        if ch is None or not dst or not src:
            return int(HcclResult.E_PTR)
        if nbytes < 0:
            return int(HcclResult.E_PARA)
        reduce = op >= 0
        if reduce and not self._reduce_args_ok(dtype, op):
            return int(HcclResult.E_PARA)
        src_rank, dst_rank = (ch.peer, self.rank) if read else (self.rank, ch.peer)
        what = ("read" if read else "write") + (" reduce" if reduce else "")
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
                duration=self._copy_duration(nbytes, True),
                label=f"{what} {nbytes} B rank{src_rank} -> rank{dst_rank}",
            ),
        )

    def hcomm_read_on_thread(self, thread: int, channel: int, dst: int, src: int, length: int) -> int:
        """One-sided get: peer memory ``src`` -> local ``dst``."""
        return self._transfer(thread, channel, dst, src, length, True)

    def hcomm_write_on_thread(self, thread: int, channel: int, dst: int, src: int, length: int) -> int:
        """One-sided put: local ``src`` -> peer memory ``dst``."""
        return self._transfer(thread, channel, dst, src, length, False)

    def hcomm_read_reduce_on_thread(self, thread, channel, dst, src, count, dtype, op) -> int:
        return self._transfer(
            thread, channel, dst, src, count * SIZE_TABLE[dtype] if 0 <= dtype < 255 else 0, True, dtype, op
        )

    def hcomm_write_reduce_on_thread(self, thread, channel, dst, src, count, dtype, op) -> int:
        return self._transfer(
            thread, channel, dst, src, count * SIZE_TABLE[dtype] if 0 <= dtype < 255 else 0, False, dtype, op
        )


def run_hosts(world: World, hosts: Callable[[HostApi], Any] | list[Callable[[HostApi], Any]]) -> list[Any]:
    """Runs each rank's host function (one per rank, or one for all) in rank order."""
    fns = hosts if isinstance(hosts, list) else [hosts] * world.n_ranks
    if len(fns) != world.n_ranks:
        raise ConfigError("hosts", len(fns), f"needs one host function per rank ({world.n_ranks})")
    return [fn(world.host(r)) for r, fn in enumerate(fns)]


__all__ = ["CommEngine", "DeviceApi", "HostApi", "Task", "TaskKind", "TaskProgram", "World", "run_hosts"]

"""The simulated world of a custom AI CPU communication operator: ranks, their device memory,
communicators, queues and notifies, and the frozen task program (spec §3, §12).

* Every rank has a device memory (byte-addressed, placed by the ``aclrtMalloc`` rule of
  :func:`ascend_jax.gm.acl_malloc_place`), user streams and device threads (in-order queues).
* Notifies (ACL notifies, thread notifies, channel notifies) are binary flags in one table: a
  record sets, a wait blocks until set and clears (a second record before the wait is lost).
* The host side (:mod:`ascend_jax.aicpu.host`) runs in Python, in program order, and only enqueues
  stream tasks or creates resources. A kernel launch enqueues a kernel task; the kernel's Python
  function runs when its stream reaches that task (:mod:`ascend_jax.aicpu.device`), reads device
  memory as it is at that simulated time and submits device-thread tasks then.
* :meth:`World.program` freezes everything into a :class:`~ascend_jax.aicpu.tasks.TaskProgram`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ascend_jax.aicpu.host import HostApi
from ascend_jax.aicpu.resources import Channel, Comm, Memory, StreamSync
from ascend_jax.aicpu.tasks import (
    DEFAULT_WAIT_TIMEOUT_ERROR,
    KERNEL_RETURN_ERRORS,
    CommCost,
    KernelLaunch,
    Queue,
    TaskProgram,
)
from ascend_jax.errors import ConfigError


class World:
    """All ranks of one simulated job.

    Args:
      ranks: number of ranks (devices), 1..64.
      hccl_buffer_size: bytes of every rank's HCCL buffer (``HcclGetHcclBuffer``; real default 400 MB,
        here small so that memory stays small).
      cost: task durations (:class:`~ascend_jax.aicpu.tasks.CommCost`).
      wait_timeout_error: aclError a stream reports after a notify-wait timeout.
      kernel_return_errors: stream code per special kernel return value (default
        :data:`~ascend_jax.aicpu.tasks.KERNEL_RETURN_ERRORS`; other non-zero values give 507018).
      reduce_dtypes: HcclDataTypes the kernels may reduce, a hint for the JAX engine's shapes (None:
        every hardware reduce type; a kernel that reduces another type costs a recompilation).
      name: job name in results.

    Attributes:
      host_calls: every host API call as ``(rank, call name, return code)``, in call order.
      host_returns: return codes of the operator-level host calls a model makes (e.g.
        ``{(0, "send"): 0}``), for reports.
      inputs: per rank, the input data a model copied to the device (for numerics checks).
      meta: free-form model description (e.g. the collective's op type), for reports.
    """

    def __init__(
        self,
        ranks: int = 2,
        hccl_buffer_size: int = 1 << 20,
        cost: CommCost | None = None,
        wait_timeout_error: int = DEFAULT_WAIT_TIMEOUT_ERROR,
        kernel_return_errors: Mapping[int, int] | None = None,
        reduce_dtypes: tuple[int, ...] | None = None,
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
        self.kernel_return_errors = dict(KERNEL_RETURN_ERRORS if kernel_return_errors is None else kernel_return_errors)
        self.hccl_buffer_size = hccl_buffer_size
        self.reduce_dtypes = None if reduce_dtypes is None else tuple(int(d) for d in reduce_dtypes)
        self.mem = [Memory() for _ in range(ranks)]
        self.queues: list[Queue] = []
        self.notify_names: list[str] = []
        self.notify_rank: list[int] = []
        self.comms: list[dict[str, Comm]] = [{} for _ in range(ranks)]
        self.channels: dict[int, Channel] = {}
        self.syncs: list[StreamSync] = []
        self.threads: dict[int, int] = {}  # thread handle (opaque uint64) -> queue index
        self.thread_engines: dict[int, int] = {}  # thread handle -> the CommEngine it is usable on
        self.outputs: dict[str, tuple[int, int, int, int]] = {}  # name -> (rank, addr, dtype, count)
        self.launches: list[KernelLaunch] = []
        self.host_calls: list[tuple[int, str, int]] = []
        self.host_returns: dict[Any, int] = {}
        self.inputs: list[np.ndarray] = []
        self.meta: dict[str, Any] = {}
        self._handles = 0x1000
        self._hosts = [HostApi(self, r) for r in range(ranks)]

    # -- resources -------------------------------------------------------------------------
    def new_handle(self) -> int:
        """A fresh opaque handle (streams, notifies, threads, channels, binaries, ...)."""
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

    def host(self, rank: int) -> Any:
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
        """Global id of notify ``idx`` on the peer's side of ``channel``."""
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
        """Names a device buffer whose final value the result reports (numerics, ``output``)."""
        self.outputs[name] = (rank, addr, int(dtype), count)

    def program(self, max_steps: int = 100_000) -> TaskProgram:
        """Freezes the world into a :class:`TaskProgram` (kernel launches still to run when reached)."""
        return TaskProgram(
            name=self.name,
            n_ranks=self.n_ranks,
            queues=tuple(dataclasses.replace(q, tasks=list(q.tasks)) for q in self.queues),
            notify_names=tuple(self.notify_names),
            memory=tuple(m.image.copy() for m in self.mem),
            allocs=tuple(tuple(m.allocs) for m in self.mem),
            max_steps=max_steps,
            outputs=dict(self.outputs),
            wait_timeout_error=self.wait_timeout_error,
            launches=tuple(self.launches),
            reduce_dtypes=self.reduce_dtypes,
            world=self,
        )


def run_hosts(world: World, hosts: Callable[[Any], Any] | list[Callable[[Any], Any]]) -> list[Any]:
    """Runs each rank's host function (one per rank, or one for all) in rank order."""
    fns = hosts if isinstance(hosts, list) else [hosts] * world.n_ranks
    if len(fns) != world.n_ranks:
        raise ConfigError("hosts", len(fns), f"needs one host function per rank ({world.n_ranks})")
    return [fn(world.host(r)) for r, fn in enumerate(fns)]


__all__ = ["Channel", "Comm", "Memory", "StreamSync", "World", "run_hosts"]

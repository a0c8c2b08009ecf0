"""The resources of a simulated comm world that the host API creates and the world holds: one rank's
device memory, channel ends, communicators and stream synchronisations. A leaf module: the world
(:mod:`ascend_jax.aicpu.world`) and the host API (:mod:`ascend_jax.aicpu.host`) both import it,
and neither imports the other at module level."""

from __future__ import annotations

import dataclasses

import numpy as np

from ascend_jax.aicpu.tasks import MEM_BASE
from ascend_jax.gm import acl_malloc_place


class Memory:
    """One rank's device memory: allocations (``aclrtMalloc`` placement) and the byte image."""

    def __init__(self) -> None:
        self.cursor = MEM_BASE
        self.image = np.zeros(0, np.uint8)
        self.allocs: list[tuple[int, int, str]] = []

    def malloc(self, size: int, label: str) -> int:
        start, self.cursor = acl_malloc_place(self.cursor, size)
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
class Channel:
    """This rank's side of a channel to ``peer``: ``notifies`` are the notifies this side owns."""

    handle: int
    rank: int
    peer: int
    comm: str
    protocol: int
    notifies: list[int]


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


__all__ = ["Channel", "Comm", "Memory", "StreamSync"]

"""``AscendC::GroupBarrier`` (spec §8): AIV-to-AIV sync through counters in GM.

Layout: ``N = max(arrive_size, wait_size)`` copies of two counters, copy ``k`` at
``ws + 512 k`` (arrive counter A[k]) and ``ws + 64 + 512 k`` (wait counter W[k]), each a
``BarrierInfo`` (uint32 head + 60 B padding). ``Arrive`` and ``Wait`` atomically add 1 to every
copy of their counter; arriver ``i`` polls only W[i], waiter ``j`` only A[j].

Each core's barrier object keeps ``counter`` (starts at 1) and ``hasArrive``:

* ``Arrive(i)``: if counter > 1 spin until ``W[i] == (counter - 1) * wait_size``; add 1 to all A;
  ``counter += 1``; ``hasArrive = True``.
* ``Wait(j)``: ``r = counter - 1 if hasArrive else counter``; spin until ``A[j] >= r * arrive_size``;
  add 1 to all W; ``counter += 0 if hasArrive else 1``; ``hasArrive = False``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

BARRIER_STRIDE = 512  # bytes between counter copies (CACHE_LINE_LEN)
BARRIER_WAIT_OFFSET = 64  # W[k] sits 64 B after A[k] (BARRIER_SIZE)
BARRIER_MAX_AIV = 50  # UB blocks the constructor prepares: at most 50 copies
MAX_BARRIER_ROUNDS = 1_048_575  # documented limit on Arrive / Wait calls (2**20 - 1)


@dataclasses.dataclass(frozen=True)
class BarrierGeometry:
    """One GroupBarrier object shared by its arrive and wait groups.

    Attributes:
      name: barrier name.
      arrive_size: number of arriving AIVs.
      wait_size: number of waiting AIVs.
      base_addr: byte address of its workspace (512-aligned, zeroed).
      index: position among the kernel's barriers (engine numbering).
    """

    name: str
    arrive_size: int
    wait_size: int
    base_addr: int
    index: int

    @property
    def copies(self) -> int:
        """N = max(arrive_size, wait_size)."""
        return max(self.arrive_size, self.wait_size)

    @property
    def workspace_len(self) -> int:
        """``GetWorkspaceLen()``: N * 512 bytes."""
        return self.copies * BARRIER_STRIDE

    def arrive_addr(self, k: int) -> int:
        return self.base_addr + BARRIER_STRIDE * k

    def wait_addr(self, k: int) -> int:
        return self.base_addr + BARRIER_STRIDE * k + BARRIER_WAIT_OFFSET


@dataclasses.dataclass
class BarrierObject:
    """One core's ``GroupBarrier`` object: ``counter`` and ``hasArrive``."""

    geometry: BarrierGeometry
    counter: int = 1
    has_arrive: bool = False

    def arrive_threshold(self) -> int:
        """W value Arrive spins for, or -1 when the first round needs no wait."""
        return (self.counter - 1) * self.geometry.wait_size if self.counter > 1 else -1

    def after_arrive(self) -> None:
        self.counter += 1
        self.has_arrive = True

    def wait_threshold(self) -> int:
        """A value Wait spins for (``A[j] >= threshold``)."""
        rounds = self.counter - 1 if self.has_arrive else self.counter
        return rounds * self.geometry.arrive_size

    def after_wait(self) -> None:
        self.counter += 0 if self.has_arrive else 1
        self.has_arrive = False


def barrier_image(barriers: list[BarrierGeometry], arrive: np.ndarray, wait: np.ndarray) -> np.ndarray:
    """Byte image of all barrier workspaces, from ``arrive`` / ``wait`` [barriers, N] counters.

    Returns uint8 [bytes], byte 0 at ``barriers[0].base_addr``; counters little-endian uint32.
    """
    if not barriers:
        return np.zeros(0, np.uint8)
    base = barriers[0].base_addr
    end = barriers[-1].base_addr + barriers[-1].workspace_len
    image = np.zeros(end - base, np.uint8)
    for b in barriers:
        for k in range(b.copies):
            for addr, value in ((b.arrive_addr(k), arrive[b.index, k]), (b.wait_addr(k), wait[b.index, k])):
                image[addr - base : addr - base + 4] = np.frombuffer(np.uint32(value).tobytes(), np.uint8)
    return image

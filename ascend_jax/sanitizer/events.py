"""The sanitizer's event log: every GM and UB access of every core, and the synchronisation between cores.

One :class:`EventLog` records one run, in an order in which the run could have happened (the
reference interpreter's order: a receive is logged after the post it reads). Each core has a
vector clock; synchronisation is logged as

* ``publish(core, key)``: the core writes a synchronisation object that a later reader observes
  whole (a message slot: a post, a fake, a quit, a free). The object's clock becomes the core's.
* ``release(core, key)``: the core adds itself to an object that collects several cores (a
  GroupBarrier round, a SyncAll round). The object's clock becomes the join of all of them.
* ``acquire(core, key)``: the core observed the object (a receive, a ``Wait<true>``, an alloc, a
  barrier wait): its clock joins the object's.

A publish or release ends an epoch of its core (its own component goes up by one), so an access
``a`` of core ``i`` happens before a later access ``b`` of core ``j`` exactly when
``a.epoch <= b.vc[i]``. The keys name *versions* where the order of the run could matter: a slot
is published anew at each write (each slot has one writer at a time), a barrier or SyncAll key
carries its round. So the happens-before relation, and every finding computed from it, is the
same whatever interleaving produced the log.

Accesses are strided byte footprints: ``rows`` runs of ``width`` bytes, ``stride`` bytes apart,
from ``addr`` (a matmul operand, a vector copy; a transposed operand is stored as its transpose).
A tensor's ``init`` counts as a write before every core's first op (``TensorInfo.initialised``);
a tensor without one is undefined until a core writes it.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

#: Access kinds (``access`` in the findings JSON); atomics of one kind commute.
ACCESS_KINDS = ("read", "write", "atomic_add", "atomic_max", "atomic_min")
READ, WRITE = 0, 1
#: ``isAtomic`` of a matmul message (``SetAtomicAdd`` / max / min) -> access kind.
ATOMIC_KIND = {0: "write", 1: "atomic_add", 2: "atomic_max", 3: "atomic_min"}


@dataclasses.dataclass(frozen=True, slots=True)
class TensorInfo:
    """A GM tensor as the sanitizer sees it.

    Attributes:
      name, addr, nbytes, itemsize, shape: as :class:`ascend_jax.gm.Tensor` (bytes).
      initialised: its ``init`` is written before the kernel starts. False for a tensor
        allocated without ``init`` (the simulator zero-fills it, a device does not) and for one
        the caller marks (``sanitize(uninitialised=...)``).
      marked: undefined because the caller marked it, although it has an ``init``.
    """

    name: str
    addr: int
    nbytes: int
    itemsize: int
    shape: tuple[int, ...] = ()
    initialised: bool = True
    marked: bool = False

    @property
    def end(self) -> int:
        return self.addr + self.nbytes

    def cell(self, element: int) -> str:
        """``[r, c]`` (or ``[i]``) of a flat element index, for messages."""
        if len(self.shape) < 2:
            return f"[{element}]"
        idx = np.unravel_index(int(element), self.shape)
        return "[" + ", ".join(str(int(i)) for i in idx) + "]"


@dataclasses.dataclass(frozen=True, slots=True)
class Site:
    """One op of one core, as findings name it.

    Attributes:
      core: ``aiv3`` / ``aic1``.
      op_index: AIV: the op's index in its program; AIC: the index in its received log of the
        message whose callback ran the op (both independent of the schedule).
      op: short name (``load``, ``store``, ``matmul.A``, ``alloc``, ...).
      source: where the op was written (``models/x.py:123``, ``aiv[0].ops[3]``); for an AIC op,
        the post of the message that asked for it.
      origin: AIC ops: ``(AIV core, op index)`` of the post whose message ran it; else None.
      part: AIC matmul ops: which of the callback's IterateAlls (0 = the leader's, i = follower i).
    """

    core: str
    op_index: int
    op: str
    source: str = ""
    origin: tuple[str, int] | None = None
    part: int = 0


@dataclasses.dataclass(slots=True)
class Access:
    """One GM access: a strided byte footprint, with the core's clock when it happened."""

    site: Site
    kind: str
    tensor: str | None  # the tensor holding ``addr`` (None: outside every tensor)
    addr: int
    rows: int  # runs
    width: int  # bytes per run
    stride: int  # bytes between runs
    itemsize: int
    core: int  # index into EventLog.cores
    epoch: int
    vc: np.ndarray
    seq: int  # position among the log's accesses

    @property
    def lo(self) -> int:
        return self.addr

    @property
    def hi(self) -> int:
        """One past the last byte."""
        return self.addr + (self.rows - 1) * self.stride + self.width if self.rows > 0 else self.addr

    def runs(self) -> np.ndarray:
        """``[R, 2]`` (start, end) byte runs, sorted; runs that touch or overlap are one run."""
        if self.rows <= 1 or self.stride <= self.width:
            return np.array([[self.lo, self.hi]], np.int64)
        starts = self.addr + self.stride * np.arange(self.rows, dtype=np.int64)
        return np.stack([starts, starts + self.width], axis=1)


@dataclasses.dataclass(frozen=True, slots=True)
class UbAccess:
    """A vector op's read or write of a region (``rows x cols`` from the top-left) of a UB buffer."""

    site: Site
    buffer: str
    shape: tuple[int, int]
    rows: int
    cols: int
    write: bool


class EventLog:
    """The events of one run, with a vector clock per core (module docstring).

    Args:
      cores: every core that may appear (``aiv0``, ``aic0``, ...).
      tensors: the GM tensors (:class:`TensorInfo`).
    """

    def __init__(self, cores: Sequence[str], tensors: Iterable[TensorInfo] = ()):
        self.cores = list(cores)
        self.index = {c: i for i, c in enumerate(self.cores)}
        n = len(self.cores)
        self.vc = np.zeros((n, n), np.int64)
        self.vc[np.arange(n), np.arange(n)] = 1  # epoch 1: nothing of a core is known before it starts
        self.sync: dict[Any, np.ndarray] = {}
        self.tensors = {t.name: t for t in tensors}
        ordered = sorted(self.tensors.values(), key=lambda t: t.addr)
        self._starts = [t.addr for t in ordered]
        self._ordered = ordered
        self.accesses: list[Access] = []
        self.ub: list[UbAccess] = []
        self.notes: list[dict] = []  # facts the checks report as they are (memcheck: bad tiles)

    # -- synchronisation -------------------------------------------------------------------
    def publish(self, core: str, key: Any) -> None:
        """``core`` writes the object ``key`` whole: a later acquire sees this write only."""
        c = self.index[core]
        self.sync[key] = self.vc[c].copy()
        self.vc[c, c] += 1

    def release(self, core: str, key: Any) -> None:
        """``core`` adds itself to the object ``key`` (barrier and SyncAll rounds)."""
        c = self.index[core]
        old = self.sync.get(key)
        self.sync[key] = self.vc[c].copy() if old is None else np.maximum(old, self.vc[c])
        self.vc[c, c] += 1

    def acquire(self, core: str, key: Any) -> None:
        """``core`` observed ``key``: everything before its publishes / releases happens before
        everything ``core`` does next. An object nobody wrote (a zeroed slot) orders nothing."""
        clock = self.sync.get(key)
        if clock is not None:
            c = self.index[core]
            np.maximum(self.vc[c], clock, out=self.vc[c])

    def clock(self, core: str) -> np.ndarray:
        return self.vc[self.index[core]].copy()

    # -- accesses --------------------------------------------------------------------------
    def owner(self, addr: int) -> TensorInfo | None:
        """The tensor holding byte ``addr``, if any."""
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0 and addr < self._ordered[i].end:
            return self._ordered[i]
        return None

    def tensors_in(self, lo: int, hi: int) -> list[TensorInfo]:
        """Tensors that share a byte with ``[lo, hi)``."""
        return [t for t in self._ordered if t.addr < hi and lo < t.end]

    def access(
        self,
        core: str,
        site: Site,
        kind: str,
        addr: int,
        rows: int,
        width: int,
        stride: int,
        itemsize: int,
    ) -> Access | None:
        """Logs a GM access of ``rows`` runs of ``width`` bytes, ``stride`` bytes apart (an empty
        footprint is not an access: None)."""
        if rows <= 0 or width <= 0:
            return None
        if kind not in ACCESS_KINDS:
            raise ValueError(f"access kind {kind!r}: one of {ACCESS_KINDS}")
        c = self.index[core]
        t = self.owner(addr)
        a = Access(
            site, kind, None if t is None else t.name, int(addr), int(rows), int(width), int(stride), int(itemsize),
            c, int(self.vc[c, c]), self.vc[c].copy(), len(self.accesses),
        )  # fmt: skip
        self.accesses.append(a)
        return a

    def tile(
        self,
        core: str,
        site: Site,
        kind: str,
        addr: int,
        rows: int,
        cols: int,
        stride: int,
        itemsize: int,
        trans: bool = False,
    ) -> Access | None:
        """Logs a ``rows x cols`` tile (element (i, j) at element ``i * stride + j``, or
        ``j * stride + i`` when ``trans``), as a matmul operand or a vector copy reads it."""
        runs, per = (cols, rows) if trans else (rows, cols)
        return self.access(core, site, kind, addr, runs, per * itemsize, stride * itemsize, itemsize)

    def ub_access(self, site: Site, buffer: str, shape: tuple[int, int], rows: int, cols: int, write: bool) -> None:
        """Logs a vector op's read (``write`` False) or write of a UB buffer region (program order
        of one core: UB is private, so no clock is needed)."""
        self.ub.append(UbAccess(site, buffer, (int(shape[0]), int(shape[1])), int(rows), int(cols), bool(write)))

    def note(self, **fact: Any) -> None:
        self.notes.append(fact)


def happens_before(a: Access, b: Access) -> bool:
    """Whether ``a`` happens before ``b`` (``a`` logged first; same core: program order)."""
    if a.core == b.core:
        return a.seq < b.seq
    return a.seq < b.seq and a.epoch <= int(b.vc[a.core])


def overlap(a: Access, b: Access) -> tuple[int, int] | None:
    """``(lo, hi)`` bytes spanning where the two footprints share a byte, or None."""
    if not (a.lo < b.hi and b.lo < a.hi):
        return None
    ra, rb = a.runs(), b.runs()
    if len(ra) * len(rb) > 1 << 20:  # very tall tiles: compare the runs that meet the other's box
        ra = ra[(ra[:, 0] < b.hi) & (b.lo < ra[:, 1])]
        rb = rb[(rb[:, 0] < a.hi) & (a.lo < rb[:, 1])]
    lo = np.maximum(ra[:, None, 0], rb[None, :, 0])
    hi = np.minimum(ra[:, None, 1], rb[None, :, 1])
    hit = lo < hi
    if not hit.any():
        return None
    return int(lo[hit].min()), int(hi[hit].max())


def element_range(t: TensorInfo, lo: int, hi: int) -> list[int]:
    """``[first, last]`` element indices (flat, row-major) of the tensor's elements that bytes
    ``[lo, hi)`` touch, clipped to the tensor."""
    lo, hi = max(lo, t.addr), min(hi, t.end)
    return [(lo - t.addr) // t.itemsize, (hi - 1 - t.addr) // t.itemsize]

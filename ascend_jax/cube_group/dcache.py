"""The AIC's scalar data cache over message lines past the first 64 bytes (issue 10, item 4).

What the device does (asc-devkit ``impl/basic_api/dav_c220/core_mng/roc/
kernel_operator_cube_group_handle_impl.h``):

* ``__RcvMessage`` clean-and-invalidates (``dcci``, ``SINGLE_CACHE_LINE``) only the slot's first
  64-byte line before and while it polls the head; ``FreeMessage(msg)`` /
  ``FreeMessage(msg, waitState)`` (``__WriteGmStateByScalar``) touch the first line only as well.
  ``CreateCubeResGroup`` then hands the slot to ``Call`` with nothing else refreshed.
* So when ``Call`` reads a field that lies in line ``l >= 1`` (bytes ``64 l .. 64 l + 63``), the
  AIC's scalar D-cache answers from its copy of that line if it holds one: the bytes the slot
  held when this AIC last loaded the line, that is at its first read after the line was last
  invalidated (or ever). Only ``DataCacheCleanAndInvalid`` on that line, called by the callback
  itself, makes the next read go to GM. The seed's callback and the CubeGroupCustom sample's
  ``MyCallbackFunc::CubeGroupCallBack`` both do it on ``rcvMsg + 64 B`` before reading anything.

The model (both engines): per AIC and slot, each line ``l >= 1`` is either absent or holds the
bytes loaded at its last miss. A read of a field looks up every line the field covers (loading
the absent ones from the slot as it is now); ``handle.data_cache_clean_and_invalid(msg, l)``
drops line ``l``. Line 0 always reads the slot as it is (the framework has just refreshed it).
The AIC never writes a payload line, so a clean has nothing to write back. Not modelled: eviction
(a real cache may drop a line for capacity, and the next read is then fresh by chance; here a
line stays until invalidated, the worst case), and whether lines survive from one launch to the
next (each launch starts with an empty cache).

Two independent implementations of that one rule:

* :class:`AicLineCache` is the reference interpreter's: a literal per-AIC dictionary of 64-byte
  line snapshots, updated one message at a time in dispatch order.
* :func:`call_through_lines` is the JAX engine's, at encode time: the engine evaluates each
  group's callback once, vectorised over every slot version (``encode._evaluate_group``), so the
  stale bytes of version ``v`` must be a function of the slot's earlier versions. A callback's
  line accesses (reads and invalidates, in order) do not depend on message values (callbacks do
  not branch in Python on them), so one evaluation records them, and per line they say what the
  cache holds when a call starts: nothing (the call's first access is an invalidate, or the
  previous call ended with one), the line as loaded by the previous call on the slot (it
  invalidates and reads again), or the line as loaded by the first call ever on the slot (it
  reads and never invalidates). If any line can be stale the callback is evaluated a second
  time with those contents.

The encode-time chain assumes that the calls on a slot are exactly its versions that carry a
post (state neither FREE, FAKE nor QUIT) and that its owner AIC makes them. That is exact for a
FAKE (its payload is the previous version's, so whether the AIC called on it or merged it
changes no line it could have loaded), with one exception, and wrong when a version is freed
without a call. The known differences from the reference, all about callbacks that read a line
they do not invalidate first:

* an uncovered FAKE that is the first call on its slot loads its (zero or older) payload into a
  line that is never invalidated; the encode-time chain loads the next post's payload instead;
* a post the AIC never calls on (freed inside another message's callback with no wait, or by a
  release build's stray free, or a post left with state FREE) still counts as a call here;
* a release build's stray cursor that makes one AIC call on another AIC's slot uses the owner's
  cache here;
* a relaunch on an unzeroed workspace: a message left by the first launch that the AIC calls on
  is not in the chain.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ascend_jax.errors import ConfigError
from ascend_jax.message import CACHE_LINE_BYTES, FAKE, FREE, QUIT

#: a line that the cache does not hold (the next read loads it); -1 is already "zeroed payload"
MISS = -2


def message_lines(dtype: np.dtype) -> int:
    """Number of 64-byte D-cache lines of a message type (``sizeof(T) / 64``)."""
    return dtype.itemsize // CACHE_LINE_BYTES


def field_lines(dtype: np.dtype, name: str) -> range:
    """The lines that field ``name`` of message type ``dtype`` covers (most fields: one)."""
    ftype, offset = dtype.fields[name][:2]
    return range(offset // CACHE_LINE_BYTES, (offset + ftype.itemsize - 1) // CACHE_LINE_BYTES + 1)


@functools.lru_cache(maxsize=64)
def _layout(dtype: np.dtype) -> dict[str, tuple[range, np.dtype, int]]:
    """Per payload field of ``dtype`` (head excluded): (its lines, its type, its byte offset),
    computed once per message type for :class:`CachedMessage`'s reads."""
    return {name: (field_lines(dtype, name), *dtype.fields[name][:2]) for name in dtype.names or () if name != "head"}


def check_line(line: Any, lines: int) -> int:
    """Validates the ``line`` argument of ``data_cache_clean_and_invalid`` and returns it as an int.

    ``0 .. lines - 1`` are the message's own lines. ``lines`` itself is accepted and does nothing:
    it is the next slot's first line, which every reader refreshes before it looks at it (the
    official sample invalidates ``rcvMsg + 64 B`` with a 64-byte message, which lands there).
    """
    if isinstance(line, (bool, np.bool_)) or not isinstance(line, (int, np.integer)) or not 0 <= line <= lines:
        raise ConfigError(
            "callback: data_cache_clean_and_invalid(msg, line)",
            line,
            f"line must be a Python int in 0..{lines} (the message has {lines} 64-byte lines; {lines} is the "
            "next slot's head line, accepted as a no-op)",
            "pass the index of a 64-byte line of the received message, e.g. 1 for bytes 64..127",
        )
    return int(line)


class AicLineCache:
    """The reference interpreter's model: one AIC's D-cache copies of message lines ``>= 1``.

    ``lines[(slot, line)]`` is the 64 bytes the AIC loaded for that line of that slot (group slot
    numbering). :meth:`view` gives ``Call`` the message as this AIC reads it.
    """

    __slots__ = ("lines",)

    def __init__(self) -> None:
        self.lines: dict[tuple[int, int], bytes] = {}

    def view(self, slot: int, payload: np.ndarray) -> CachedMessage:
        """The fields of the message now in ``slot`` (``payload``: its 0-d struct array), read
        through this cache; pass the same object to the handle for its invalidates."""
        return CachedMessage(self, slot, payload)


class CachedMessage(Mapping):
    """One received message's payload fields, each read through :class:`AicLineCache` (reference)."""

    __slots__ = ("cache", "slot", "payload", "raw", "n_lines", "seen", "layout", "fresh")

    def __init__(self, cache: AicLineCache, slot: int, payload: np.ndarray):
        self.cache, self.slot, self.payload = cache, slot, payload
        self.raw: bytes | None = None  # the slot's bytes in GM now, head included (on first need)
        self.n_lines = message_lines(payload.dtype)
        self.seen: dict[str, Any] = {}  # field -> value read, until an invalidate
        self.layout = _layout(payload.dtype)
        # field of line 0 -> value read: line 0 is the slot as it is, and nothing writes the slot
        # while Call runs (its requests are performed after it returns), so a read stays valid
        self.fresh: dict[str, Any] = {}

    def _line(self, line: int) -> bytes:
        if self.raw is None:
            self.raw = self.payload.tobytes()
        if line == 0:  # refreshed by __RcvMessage just before Call
            return self.raw[:CACHE_LINE_BYTES]
        key = (self.slot, line)
        if key not in self.cache.lines:  # a miss: load the line from GM as it is now
            self.cache.lines[key] = self.raw[line * CACHE_LINE_BYTES : (line + 1) * CACHE_LINE_BYTES]
        return self.cache.lines[key]

    def __getitem__(self, name: str) -> Any:
        value = self.fresh.get(name, self)  # self: "not read yet" (no field value is this object)
        if value is not self:
            return value
        value = self.seen.get(name, self)
        if value is not self:
            return value
        entry = self.layout.get(name)
        if entry is None:
            raise KeyError(name)
        lines, ftype, offset = entry
        if lines[-1] == 0:  # the first line: the slot as it is
            value = self.fresh[name] = self.payload[name][()]
            return value
        held = b"".join(self._line(line) for line in lines)
        start = offset - lines[0] * CACHE_LINE_BYTES
        value = self.seen[name] = np.frombuffer(held[start : start + ftype.itemsize], ftype.base).reshape(ftype.shape)[
            ()
        ]
        return value

    def get(self, name: str, default: Any = None) -> Any:
        return self[name] if name in self.layout else default

    def invalidate(self, line: int) -> None:
        """``DataCacheCleanAndInvalid`` on line ``line`` of this slot."""
        self.cache.lines.pop((self.slot, line), None)
        self.seen.clear()

    def __contains__(self, name: object) -> bool:
        return name in self.layout

    def __iter__(self):
        return iter(self.payload.dtype.names[1:])

    def __len__(self) -> int:
        return len(self.payload.dtype.names) - 1


class VersionLines(Mapping):
    """The JAX engine's model, inside one vectorised evaluation: every version's fields as its AIC
    reads them, ``[n]`` per field.

    Args:
      dtype: the group's message type.
      table: ``[M]`` struct array of the group's posts (``result.message_table``).
      mid: ``[n]`` message id of each version's payload (-1: zeroed workspace).
      held: ``{line: [n] message id}``: what the cache holds for that line when the call starts
        (:data:`MISS`: nothing); lines not given start absent.

    Records the call's line accesses in ``events``: ``("read", line)`` / ``("inval", line)``.
    """

    def __init__(self, dtype: np.dtype, table: np.ndarray, mid: np.ndarray, held: dict[int, np.ndarray] | None = None):
        self.dtype, self.table, self.mid = dtype, table, mid
        self.n_lines = message_lines(dtype)
        # in-call content of each line >= 1: [n] message ids, MISS where the cache holds nothing;
        # None: nothing held for any version
        self.content: dict[int, np.ndarray | None] = dict.fromkeys(range(1, self.n_lines))
        for line, ids in (held or {}).items():
            self.content[line] = np.asarray(ids, np.int64).copy()
        self.events: list[tuple[str, int]] = []
        self._seen: dict[str, np.ndarray] = {}  # field -> value, until one of its lines is invalidated
        self._m = len(table)
        self._raw_rows: np.ndarray | None = None

    def _source(self, line: int) -> np.ndarray:
        """[n] message ids whose bytes this read of ``line`` sees; a miss loads the current one."""
        if line == 0:
            return self.mid
        self.events.append(("read", line))
        c = self.content[line]
        if c is None:  # nothing held anywhere: every version loads its own payload
            c = self.mid
        elif c is not self.mid:
            c = np.where(c == MISS, self.mid, c)
        self.content[line] = c
        return c

    def _raw(self) -> np.ndarray:
        """``[M + 1, itemsize]`` uint8: every post's bytes, then the zeroed payload."""
        if self._raw_rows is None:
            m, size = self._m, self.dtype.itemsize
            raw = self.table.view(np.uint8).reshape(m, size) if m else np.zeros((0, size), np.uint8)
            self._raw_rows = np.concatenate([raw, np.zeros((1, size), np.uint8)])
        return self._raw_rows

    def __getitem__(self, name: str) -> np.ndarray:
        if name == "head" or name not in self.dtype.names:
            raise KeyError(name)
        lines = field_lines(self.dtype, name)
        if name in self._seen:  # the same bytes as the last read (its lines are still held)
            for line in lines:
                if line:
                    self.events.append(("read", line))
            return self._seen[name]
        ftype, offset = self.dtype.fields[name][:2]
        sources = [(line, self._source(line)) for line in lines]
        n, size = len(self.mid), ftype.itemsize
        if all(src is self.mid for _, src in sources):  # the slot as it is: one column lookup
            rows = np.where(self.mid >= 0, self.mid, self._m)
            value = self._column(name)[rows]
        else:
            out = np.empty((n, size), np.uint8)
            for line, src in sources:
                lo = max(offset, line * CACHE_LINE_BYTES)
                hi = min(offset + size, (line + 1) * CACHE_LINE_BYTES)
                rows = np.where(src >= 0, src, self._m)
                out[:, lo - offset : hi - offset] = self._raw()[rows, lo:hi]
            value = out.view(ftype.base).reshape((n, *ftype.shape))
        self._seen[name] = value
        return value

    def _column(self, name: str) -> np.ndarray:
        """``[M + 1, ...]`` field ``name`` of every post, then of the zeroed payload."""
        col = self.table[name] if self._m else np.zeros((0, *self.dtype[name].shape), self.dtype[name].base)
        return np.concatenate([col, np.zeros((1, *col.shape[1:]), col.dtype)])

    def __contains__(self, name: object) -> bool:
        return name != "head" and name in self.dtype.names

    def invalidate(self, line: int) -> None:
        """``DataCacheCleanAndInvalid`` on line ``line`` of every version's slot."""
        if 1 <= line < self.n_lines:
            self.events.append(("inval", line))
            self.content[line] = None
            self._seen = {k: v for k, v in self._seen.items() if line not in field_lines(self.dtype, k)}

    def __iter__(self):
        return iter(self.dtype.names[1:])

    def __len__(self) -> int:
        return len(self.dtype.names) - 1


def held_at_call(events: list[tuple[str, int]], slot: np.ndarray, state: np.ndarray, mid: np.ndarray):
    """What the cache holds for each line when each version's call starts, from one call's line
    accesses ``events`` (the same for every call of the group).

    Args:
      slot, state, mid: ``[n]`` slot, head state and payload message id of the group's versions,
        in creation order (a slot's versions in the order its AIV wrote them).

    Returns ``{line: [n] message id or MISS}`` for the lines a call can read stale, or ``{}``.
    Per line, with the accesses of one call in order: if the first is an invalidate, or the last
    is (the previous call dropped the line), nothing is ever stale. Otherwise the line holds what
    the previous call on the slot loaded: its own payload if it invalidated the line in between,
    else what the first call on the slot loaded. The calls on a slot are taken to be its posts
    (see the module docstring for what that leaves out).
    """
    held: dict[int, np.ndarray] = {}
    per_line: dict[int, list[str]] = {}
    for kind, line in events:
        per_line.setdefault(line, []).append(kind)
    n = len(slot)
    for line, kinds in per_line.items():
        if kinds[0] != "read" or kinds[-1] != "read":
            continue
        called = (state != FREE) & (state != FAKE) & (state != QUIT)
        order = np.lexsort((np.arange(n), slot))  # by slot, then creation order
        s, c = slot[order], called[order]
        idx = np.arange(n)
        seg_start = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        start = np.repeat(seg_start, np.diff(np.r_[seg_start, n]))  # [n] first position of my slot
        if "inval" in kinds:  # the previous call on the slot reloaded the line: its payload
            last = np.maximum.accumulate(np.where(c, idx, -1))  # last call at or before i
            prev = np.r_[-1, last[:-1]]
            src = np.where(prev >= start, prev, -1)
        else:  # loaded once, by the first call on the slot, and never dropped
            first = np.minimum.reduceat(np.where(c, idx, n), seg_start) if n else np.zeros(0, np.int64)
            first = np.repeat(first, np.diff(np.r_[seg_start, n]))
            src = np.where(first < idx, first, -1)
        sorted_held = np.where(src >= 0, mid[order][np.maximum(src, 0)], MISS)
        held[line] = np.empty(n, np.int64)
        held[line][order] = sorted_held
    return held


def call_through_lines(
    call: Callable[[Mapping], Any], dtype: np.dtype, table: np.ndarray, versions: np.ndarray, ids: np.ndarray
) -> Any:
    """Runs ``call(fields)`` (one vectorised evaluation of a group's callback) with every version's
    fields as its AIC's D-cache returns them, and returns what ``call`` returned.

    Args:
      dtype, table: the group's message type and posts (see :class:`VersionLines`).
      versions: ``[N, 5]`` (slot, group, state, aiv_id, msg) of every version (``encode_ops``).
      ids: ``[n]`` the group's versions, in creation order.

    The same ``fields`` object must reach ``handle.data_cache_clean_and_invalid`` (pass it as the
    handle's ``dcache``). ``call`` runs twice when a line can be stale (see the module docstring).
    """
    mid = versions[ids, 4]
    fields = VersionLines(dtype, table, mid)
    out = call(fields)
    held = held_at_call(fields.events, versions[ids, 0], versions[ids, 2], mid)
    if not held:
        return out
    return call(VersionLines(dtype, table, mid, held))


__all__ = ["AicLineCache", "VersionLines", "call_through_lines", "check_line", "held_at_call", "message_lines"]

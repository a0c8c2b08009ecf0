"""Encodings of programs run before, reused while the program is unchanged.

A sweep or a benchmark calls :func:`~ascend_jax.cube_group.engine.simulate` again and again with
the same program objects; encoding one (:func:`~ascend_jax.cube_group.engine.encode.encode_program`,
then its :class:`EngineShape` and tables) costs milliseconds of Python, as much as a short batch
runs. :func:`encoded` keeps the encoding of a program object and hands it out again while that
object is alive and nothing in it has changed.

What can change in a program without changing its identity is known: a
:class:`~ascend_jax.cube_group.program.CubeGroupProgram` is a frozen dataclass of tuples and
frozen dataclasses (the ops, the geometry), and the rest is numpy arrays (message payloads),
mappings and lists (``queue_of``, tolerances), non-frozen dataclasses and the
:class:`~ascend_jax.gm.GlobalMemory`. The first encoding records those mutable parts with a copy
of their content (arrays by their dtype, shape and bytes; dicts and lists of plain values by
their ``repr``; anything else by :func:`~ascend_jax.cube_group.engine.encode.program_content`'s
walk); a later call compares them again before it reuses anything, which is a small part of a
full content walk (the ops are most of a program). A program holding anything that
cannot be compared by value (a user's callback object, a function) is never kept: its behaviour
may change with its state.

The downstream forms are kept with the encoding they come from: the shape of a batch of kept
programs (per schedule, atomic order and options) and each program's tables for that shape.
At most :data:`MAX_PROGRAMS` programs are kept (least recently used first out), and none whose
mutable arrays exceed :data:`MAX_BYTES` (their copies would double a large GM image).
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import threading
import weakref
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ascend_jax.cube_group.callbacks import _StatelessCallback
from ascend_jax.cube_group.engine.encode import _PLAIN, EncodedProgram, _walk, encode_program
from ascend_jax.cube_group.program import CubeGroupProgram
from ascend_jax.gm import GlobalMemory

#: programs whose encodings are kept (a batch of more distinct programs than this is not kept)
MAX_PROGRAMS = 16
#: most bytes of one program's mutable arrays (payloads, GM image) for it to be kept
MAX_BYTES = 64 * 2**20
#: shapes kept per program set (schedules, options)
MAX_SHAPES = 8

#: how often an encoding was computed and reused (for tests and benchmarks)
STATS = {"encoded": 0, "reused": 0}


@dataclasses.dataclass(eq=False)
class _Entry:
    ref: weakref.ref  # the program object
    serial: int  # tells entries apart in shape keys (an id may be reused)
    arrays: tuple[tuple[np.ndarray, Any, tuple, bytes], ...]  # mutable arrays: dtype, shape, bytes then
    plain: tuple[tuple[Any, str], ...]  # mappings and lists of plain values, and their repr then
    others: tuple[Any, ...]  # the other mutable parts (the GM, mutable dataclasses, ...)
    tokens: tuple[str, ...]  # their content then (program_content's tokens and array bytes)
    other_arrays: tuple[bytes, ...]
    replaced: CubeGroupProgram | None  # the program encoded where max_steps was replaced (else the object)
    encoded: EncodedProgram
    tables: dict = dataclasses.field(default_factory=dict)  # EngineShape -> Tables

    def unchanged(self) -> bool:
        """Whether every mutable part still holds what it held when the program was encoded."""
        if not all(a.dtype == d and a.shape == s and a.tobytes() == b for a, d, s, b in self.arrays):
            return False
        if not all(repr(x) == r for x, r in self.plain):
            return False
        tokens, arrays = _content(self.others)
        return tokens == self.tokens and all(a.tobytes() == b for a, b in zip(arrays, self.other_arrays, strict=True))


_ENTRIES: OrderedDict[tuple[int, int | None], _Entry] = OrderedDict()
_SHAPES: OrderedDict[tuple, Any] = OrderedDict()
_SERIAL = itertools.count()
_LOCK = threading.RLock()  # simulate may run in several threads; re-entered by a weakref callback


def _content(parts: Sequence[Any]) -> tuple[tuple[str, ...], tuple[np.ndarray, ...]]:
    tokens: list[str] = []
    arrays: list[np.ndarray] = []
    for x in parts:
        _walk(x, tokens, arrays, set())
    return tuple(tokens), tuple(arrays)


def _mutable_parts(x: Any, out: list[Any], seen: set[int]) -> bool:
    """Appends the parts of ``x`` that may change in place to ``out``; False if some part cannot be
    compared by value (then the program is not kept)."""
    t = type(x)
    if t in _PLAIN or isinstance(x, (enum.Enum, int, np.dtype, np.generic, _StatelessCallback)):
        return True  # immutable values; built-in callbacks hold no state
    if isinstance(x, (np.ndarray, GlobalMemory)):
        if isinstance(x, np.ndarray) and x.dtype.hasobject:
            return False  # Python objects: by identity
        out.append(x)
        return True
    if id(x) in seen:
        return True
    seen.add(id(x))
    if isinstance(x, tuple):
        return all(_mutable_parts(item, out, seen) for item in x)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        if not t.__dataclass_params__.frozen:
            out.append(x)  # its fields may be reassigned: compared whole (its content walked)
            return True
        return all(_mutable_parts(getattr(x, f.name), out, seen) for f in dataclasses.fields(x))
    if isinstance(x, (list, Mapping)):
        out.append(x)  # compared whole (its content walked)
        return True
    return False  # a user's object or a function: by identity only


def encoded(
    program: CubeGroupProgram, max_steps: int | None = None, keep: bool = True
) -> tuple[CubeGroupProgram, EncodedProgram, _Entry | None]:
    """The program to run (``program``, with ``max_steps`` replaced when given), its encoding, from
    the cache when this same object was encoded before and is unchanged since, and its cache
    entry (None: not kept; see :func:`shape_of`, :func:`tables_of`). ``keep``: keep a new
    encoding (a batch of more than :data:`MAX_PROGRAMS` distinct programs does not)."""
    with _LOCK:
        return _encoded(program, max_steps, keep)


def _encoded(
    program: CubeGroupProgram, max_steps: int | None, keep: bool
) -> tuple[CubeGroupProgram, EncodedProgram, _Entry | None]:
    key = (id(program), max_steps)
    entry = _ENTRIES.get(key)
    if entry is not None:
        if entry.ref() is program and entry.unchanged():
            _ENTRIES.move_to_end(key)
            STATS["reused"] += 1
            return entry.replaced or program, entry.encoded, entry
        _ENTRIES.pop(key, None)
    run = program if max_steps is None else dataclasses.replace(program, max_steps=max_steps)
    enc = encode_program(run)
    STATS["encoded"] += 1
    parts: list[Any] = []
    if keep and MAX_PROGRAMS > 0 and _mutable_parts(program, parts, set()):
        arrays = tuple((a, a.dtype, a.shape, a.tobytes()) for a in parts if isinstance(a, np.ndarray))
        plain = tuple((x, repr(x)) for x in parts if _is_plain(x))
        others = tuple(x for x in parts if not isinstance(x, np.ndarray) and not _is_plain(x))
        tokens, other_arrays = _content(others)
        by_value = not any(tok.startswith(("object ", "cycle ")) for tok in tokens)  # nothing by identity
        size = sum(len(x[3]) for x in arrays) + sum(a.nbytes for a in other_arrays)
        if by_value and size <= MAX_BYTES:
            ref = weakref.ref(program, lambda _, k=key: _forget(k))
            snap = tuple(a.tobytes() for a in other_arrays)
            replaced = None if run is program else run  # the entry must not keep the object alive
            entry = _ENTRIES[key] = _Entry(ref, next(_SERIAL), arrays, plain, others, tokens, snap, replaced, enc)
            while len(_ENTRIES) > MAX_PROGRAMS:
                _ENTRIES.popitem(last=False)
            return run, enc, entry
    return run, enc, None


def _is_plain(x: Any) -> bool:
    """Whether ``x`` is a dict or list of plain values (tuples of them too): its repr is its
    content, exactly (``1``, ``1.0`` and ``True`` print apart)."""
    if type(x) is dict:
        return all(_plain_value(k) and _plain_value(v) for k, v in x.items())
    return type(x) is list and all(_plain_value(v) for v in x)


def _plain_value(v: Any) -> bool:
    if type(v) is tuple:
        return all(_plain_value(x) for x in v)
    return type(v) in _PLAIN


def _forget(key: tuple[int, int | None]) -> None:
    with _LOCK:
        entry = _ENTRIES.get(key)
        if entry is not None and entry.ref() is None:
            _ENTRIES.pop(key, None)


def shape_of(entries: Sequence[_Entry] | None, key: tuple, make: Any):
    """``make()`` (an :class:`EngineShape`), kept per set of entries and ``key``."""
    if entries is None:
        return make()
    k = (tuple(e.serial for e in entries), *key)
    with _LOCK:
        hit = _SHAPES.get(k)
        if hit is None:
            hit = _SHAPES[k] = make()
            while len(_SHAPES) > MAX_SHAPES:
                _SHAPES.popitem(last=False)
        else:
            _SHAPES.move_to_end(k)
        return hit


def tables_of(entry: _Entry | None, shape: Any, make: Any):
    """``make()`` (a program's :class:`Tables` for ``shape``), kept with its entry."""
    if entry is None:
        return make()
    with _LOCK:
        hit = entry.tables.get(shape)
        if hit is None:
            if len(entry.tables) >= MAX_SHAPES:
                entry.tables.clear()
            hit = entry.tables[shape] = make()
        return hit


def clear() -> None:
    """Forgets every kept encoding."""
    with _LOCK:
        _ENTRIES.clear()
        _SHAPES.clear()

"""Where each AIV op was written: the Python model line, or the scenario file's op.

A program keeps, for each op, only ``where`` (``aiv[3].ops[2]``: the op's place, or the scenario
table it came from). To name the model line in a finding, :func:`capture_sources` records, while
a model builds its program, the first stack frame outside the ``ascend_jax`` package for every op
the builder appends (and its caller, when that is a helper in the same file). It wraps the
builder's one location hook (``AivProgram._where``) for the duration of the ``with`` block only.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ascend_jax
from ascend_jax.cube_group.program import AivProgram

_PACKAGE = str(Path(ascend_jax.__file__).resolve().parent) + os.sep


def _short(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def _caller() -> str:
    """``file:line`` of the innermost frame outside ascend_jax (with its same-file caller)."""
    f = sys._getframe(2)
    while f is not None and str(Path(f.f_code.co_filename).resolve()).startswith(_PACKAGE):
        f = f.f_back
    if f is None:
        return ""
    where = f"{_short(f.f_code.co_filename)}:{f.f_lineno}"
    up = f.f_back
    if up is not None and up.f_code.co_filename == f.f_code.co_filename and f.f_code.co_name != "build":
        where += f" ({f.f_code.co_name}, called from line {up.f_lineno})"
    return where


@contextlib.contextmanager
def capture_sources() -> Iterator[dict[tuple[int, int], str]]:
    """Records ``(block_idx, op index) -> "file:line"`` for the ops built inside the block."""
    table: dict[tuple[int, int], str] = {}
    original = AivProgram._where

    def _where(self: AivProgram) -> str:
        # the last call at a given length is the op that is then appended (a buffer declaration or
        # an assign_queue asks too, before it, at the same length)
        if self.location is None:
            table[(self.block_idx, len(self.ops))] = _caller()
        return original(self)

    AivProgram._where = _where
    try:
        yield table
    finally:
        AivProgram._where = original


_AIV_TABLE = re.compile(r"^\s*\[\[\s*aiv\s*\]\]")
_TABLE = re.compile(r"^\s*\[")
_OP = re.compile(r"\{\s*op\s*=")
_WHERE = re.compile(r"^aiv\[(\d+)\]\.ops\[(\d+)\]$")


def scenario_lines(path: str | Path) -> dict[tuple[int, int], int]:
    """``(i, j) -> line`` of op ``j`` of the ``i``-th ``[[aiv]]`` table of a scenario file (ops
    written as inline tables ``{ op = ... }``, as the scenario format has them); {} if unreadable."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return {}
    out: dict[tuple[int, int], int] = {}
    aiv, j, inside = -1, -1, False
    for n, line in enumerate(lines, 1):
        code = line.split("#", 1)[0]
        if _AIV_TABLE.match(code):
            aiv, j, inside = aiv + 1, -1, True
            continue
        if _TABLE.match(code) and "=" not in code.split("]", 1)[0]:
            inside = False  # another table
            continue
        if inside:
            for _ in _OP.finditer(code):
                j += 1
                out[(aiv, j)] = n
    return out


def source_lookup(
    program: Any, table: dict[tuple[int, int], str] | None = None, scenario: str | Path | None = None
) -> Callable[[int, int], str]:
    """``(block_idx, op index) -> str``: the captured model line; for a scenario file,
    ``file:line, aiv[i].ops[j]``; else the op's ``where``."""
    ops = dict(program.aivs)
    table = table or {}
    lines = scenario_lines(scenario) if scenario is not None else {}

    def source_of(b: int, i: int) -> str:
        line = table.get((b, i))
        if line:
            return line
        mine = ops.get(b, ())
        where = mine[i].where if 0 <= i < len(mine) else ""
        if scenario is None or not where:
            return where
        m = _WHERE.match(where)
        n = lines.get((int(m.group(1)), int(m.group(2)))) if m else None
        return f"{_short(str(scenario))}:{n}, {where}" if n else f"{_short(str(scenario))} {where}"

    return source_of

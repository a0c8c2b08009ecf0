"""The reference's arithmetic: matmul tiles and AIV vector ops, in numpy, on GM and UB.

Every GM access of a reference run goes through two functions of this module, so that a check of
GM traffic has one place to look:

* :func:`read_tile`: a core reads a ``rows x cols`` tile (row stride ``stride`` elements, read
  transposed when ``trans``) of elements of ``dtype`` at byte address ``addr``: matmul A, B and
  bias loads, vector ``load`` copies (GM -> UB).
* :func:`write_tile`: a core writes a tile at ``addr``, optionally merged with what GM holds
  there (matmul C with its atomic mode, vector ``store`` with ``atomic``).

``core`` names the core that performs the access (``aic6``, ``aiv3``). Message slots and barrier
counters are not GM bytes in the reference (``protocol.py`` keeps them as Python state).

Numerics (:class:`Gm`): ``hardware``: GM is the program's byte image and tiles are computed as
the cube unit does (:func:`ascend_jax.cube_group.matmul.hw_matmul`); ``exact``: every tensor has a
float64 shadow, matmuls and atomics are float64 without rounding, and tiles must be read with their
tensor's element type.

Record only (``Gm(..., arithmetic=False)``, the sanitizer's observed run): matmuls and vector ops
are checked (out-of-range operands still stop their AIC) but compute and move nothing, so GM and UB
keep their launch contents (and :attr:`Gm.written` stays empty). This is sound for the sanitizer
because no decision of a reference run depends on GM or UB data: which op runs next, the messages,
the matmul descriptors (built by the callbacks from message payloads, which are program constants,
not GM) and every address are fixed by the program; data only flows into GM and UB. A normal run
never takes this path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ascend_jax.cube_group.matmul import (
    check_operands,
    combine,
    empty_tile,
    exact_combine,
    exact_matmul,
    hw_matmul,
    np_store,
    np_tile,
)
from ascend_jax.cube_group.vector import KIND, UbBuffer, VectorOp
from ascend_jax.errors import ConfigError


class Gm:
    """GM of one run: the byte image (``hardware``) or a float64 shadow per tensor (``exact``).

    Attributes:
      numerics: ``"hardware"`` or ``"exact"``.
      image: [G] uint8, the program's GM bytes from ``GM_BASE`` (written in ``hardware`` numerics).
      shadow: tensor name -> float64 copy of its value (``exact`` numerics only, else empty).
      bounds: the program's tensor extents, [tensors, 2] int64 byte ranges.
      written: names of the tensors a matmul or a vector store wrote.
      arithmetic: False for a record-only run (module docstring): nothing is computed or stored,
        and ``written`` stays empty.
    """

    def __init__(self, program: Any, numerics: str, arithmetic: bool = True):
        self.layout = program.gm
        self.numerics = numerics
        self.arithmetic = arithmetic  # False: record only, skip the arithmetic (module docstring)
        self.exact = numerics == "exact"
        self.image = program.gm.image
        self.bounds = np.asarray(program.gm.bounds(), np.int64).reshape(-1, 2)
        self.shadow = {n: program.gm.read(n).astype(np.float64) for n in program.gm.tensors} if self.exact else {}
        self.written: set[str] = set()

    def exact_index(self, addr: int, rows: int, cols: int, stride: int, trans: bool, dtype: np.dtype):
        """``(tensor name, flat float64 shadow, element offsets [rows, cols])`` of a tile; the
        tile must be read with its tensor's element type, at an element offset."""
        t = self.layout.tensors[self.layout.owner(addr)]
        if t.dtype != dtype or (addr - t.addr) % dtype.itemsize:
            raise ConfigError(
                "numerics",
                self.layout.describe(addr),
                f"the float64 reference reads tiles with their tensor's type ({t.dtype}), not {dtype}, at element offsets",
            )
        r = np.arange(rows)[:, None]
        c = np.arange(cols)[None, :]
        off = (addr - t.addr) // dtype.itemsize + ((c * stride + r) if trans else (r * stride + c))
        return t.name, self.shadow[t.name].reshape(-1), off


# -- the GM access points ------------------------------------------------------------------------


def read_tile(
    gm: Gm, core: str, addr: int, rows: int, cols: int, stride: int, trans: bool, dtype: np.dtype
) -> np.ndarray:
    """GM read by ``core``: the [rows, cols] tile of ``dtype`` elements at byte ``addr`` (row
    stride ``stride`` elements; ``trans``: element (r, c) at ``c * stride + r``)."""
    if not gm.exact:
        return np_tile(gm.image, addr, rows, cols, stride, trans, dtype)
    _, flat, off = gm.exact_index(addr, rows, cols, stride, trans, dtype)
    return flat[off]


def write_tile(
    gm: Gm,
    core: str,
    addr: int,
    rows: int,
    cols: int,
    stride: int,
    dtype: np.dtype,
    value: np.ndarray,
    merge: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> None:
    """GM write by ``core``: the [rows, cols] tile ``value`` at byte ``addr`` (row stride
    ``stride`` elements of ``dtype``). ``merge(old, value)``, when given, computes what is stored
    from GM's current tile (an atomic store; under ``hardware`` ``old`` is read as ``dtype``).

    A merged tile whose own rows overlap (``stride < cols`` over several rows) is stored one row
    after the other, each row merged with GM as the rows before it left it: the device's atomic
    add acts on each element a row writes, so an element two rows cover gets both additions (one
    read of the whole tile, merged and stored at once, would keep only the last row's)."""
    if merge is not None and rows > 1 and stride < cols:
        for r in range(rows):
            row_addr = addr + r * stride * dtype.itemsize
            write_tile(gm, core, row_addr, 1, cols, stride, dtype, value[r : r + 1], merge)
        return
    if gm.exact:
        name, flat, off = gm.exact_index(addr, rows, cols, stride, False, dtype)
        flat[off] = value if merge is None else merge(flat[off], value)
        gm.written.add(name)
        return
    if merge is not None:
        value = merge(np_tile(gm.image, addr, rows, cols, stride, False, dtype), value)
    np_store(gm.image, addr, stride, value)
    gm.written.add(gm.layout.owner(addr))


# -- matmul --------------------------------------------------------------------------------------


def operand_fault(gm: Gm, mt: Any, d: dict) -> int | None:
    """The first out-of-range address of a matmul descriptor (A, B, C, bias order), else None."""
    ok, bad = check_operands(mt, gm.bounds, d)
    return None if bool(ok) else int(bad)


def run_matmuls(gm: Gm, matmuls: list, queue: list[tuple[Any, dict]]) -> list[tuple[Any, int]]:
    """Runs one step's matmuls, ``queue`` = ``[(aic, descriptor)]`` in AIC order: every load first
    (GM as it was), then the writes in AIC order, as the engine's compute phase does. ``matmuls``
    is ``program.matmuls`` (per group ``(MatmulType, tiling)``). Returns ``[(aic, address)]``: the
    AICs whose descriptor addresses an operand out of range (they stop; nothing of theirs is read
    or written)."""
    done = []
    for aic, d in queue:
        mt, tiling = matmuls[aic.group]
        bad = operand_fault(gm, mt, d)
        if bad is not None:
            done.append((aic, d, mt, None, bad))
            continue
        if empty_tile(d):  # an extent <= 0: IterateAll reads and writes nothing
            continue
        if not gm.arithmetic:  # record only (module docstring): the fault check above, no numbers
            continue
        core = f"aic{aic.core}"
        m, n, k = d["m"], d["n"], d["k"]
        a = read_tile(gm, core, d["a_addr"], m, k, d["stride_a"], bool(d["trans_a"]), mt.dtype("a"))
        b = read_tile(gm, core, d["b_addr"], k, n, d["stride_b"], bool(d["trans_b"]), mt.dtype("b"))
        bias = read_tile(gm, core, d["bias_addr"], 1, n, n, False, mt.dtype("bias"))[0] if d["has_bias"] else None
        scale = float(np.int32(d["quant_scale"]).view(np.float32)) if mt.dequant else 1.0
        c = exact_matmul(a, b, bias, scale) if gm.exact else hw_matmul(mt, tiling, a, b, bias, scale)
        done.append((aic, d, mt, c, None))
    faults = []
    for aic, d, mt, c, bad in done:
        if bad is not None:  # this AIC stops here; the rest of the step's matmuls are written
            faults.append((aic, bad))
            continue
        m, n = c.shape
        atomic = d["atomic"]
        if gm.exact:
            merge = lambda old, new, atomic=atomic: exact_combine(old, new, atomic)  # noqa: E731
        else:
            merge = lambda old, new, mt=mt, atomic=atomic: combine(mt, old, new, atomic, np)  # noqa: E731
        write_tile(gm, f"aic{aic.core}", d["c_addr"], m, n, d["stride_c"], mt.dtype("c"), c, merge)
    return faults


# -- AIV vector ops ------------------------------------------------------------------------------


def _exact_add(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """A vector store's ``atomic`` add under ``exact`` numerics: float64, unrounded."""
    return old + new


def _hw_add(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """A vector store's ``atomic`` add on the device: in float32, rounded once to the type."""
    return (old.astype(np.float32) + new.astype(np.float32)).astype(new.dtype)


class VectorUnit:
    """The UB contents of every AIV in one run, and the execution of vector ops on GM as it is now.

    UB buffers hold float64 under ``exact`` numerics, else their own type; a buffer reads zeros
    before its first write (its contents are not defined on the device)."""

    def __init__(self, gm: Gm):
        self.gm = gm
        self.ub: dict[tuple[int, int], np.ndarray] = {}

    def buffer(self, b: UbBuffer) -> np.ndarray:
        key = (b.block_idx, b.index)
        if key not in self.ub:
            self.ub[key] = np.zeros((b.rows, b.cols), np.float64 if self.gm.exact else b.dtype)
        return self.ub[key]

    def run(self, core: str, op: VectorOp) -> None:
        """Performs ``op`` for the AIV ``core`` now (numpy's floating-point warnings silenced: a
        NaN or an overflow is data, counted by the numerics report)."""
        if not self.gm.arithmetic:  # record only (module docstring): nothing moves
            return
        with np.errstate(all="ignore"):
            self._run(core, op)

    def _run(self, core: str, op: VectorOp) -> None:
        r, c = op.rows, op.cols
        kind = KIND[op.kind]  # the op table: pattern and numpy semantics (vector.KINDS)
        if kind.pattern == "load":
            self.buffer(op.dst)[:r, :c] = read_tile(self.gm, core, op.addr, r, c, op.stride, False, op.dst.dtype)
            return
        if kind.pattern == "store":
            value = self.buffer(op.src0)[:r, :c]
            merge = (_exact_add if self.gm.exact else _hw_add) if op.atomic else None
            write_tile(self.gm, core, op.addr, r, c, op.stride, op.src0.dtype, value, merge)
            return
        x = self.buffer(op.src0)[:r, :c]
        if kind.pattern == "cast":
            self.buffer(op.dst)[:r, :c] = x if self.gm.exact else x.astype(op.dst.dtype)
            return
        y = None
        if op.src1 is not None:
            y = self.buffer(op.src1)[:r, :1] if kind.pattern == "broadcast" else self.buffer(op.src1)[:r, :c]
        if self.gm.exact:
            res = kind.numpy(x, y, np.float64(op.scalar), np.float64)
        elif op.dst.dtype == np.float16:  # the ALU's float16 result: computed wider, rounded once
            s = np.float32(np.float16(op.scalar))
            res = kind.numpy(x.astype(np.float32), None if y is None else y.astype(np.float32), s, np.float32)
            res = res.astype(np.float16)
        else:
            res = kind.numpy(x, y, np.float32(op.scalar), np.float32)
        dst = self.buffer(op.dst)
        if kind.pattern == "reduce":
            dst[:r, :1] = res
        else:
            dst[:r, :c] = res

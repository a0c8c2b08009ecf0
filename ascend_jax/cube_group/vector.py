"""AIV vector compute as data: unified-buffer tiles, the ops on them, their numerics and their cost.

An AIV program may declare **UB buffers** (``LocalTensor`` s carved from the AIV's unified buffer:
a name, ``rows x cols`` elements of one dtype) and run **vector ops** on them between its protocol
ops. Each op is a :class:`VectorOp`, plain data: a kind, up to three buffers (``dst``, ``src0``,
``src1``), the region ``rows x cols`` it covers (the top-left corner of every buffer it names), and
for the GM copies a byte address, a row stride in elements and an atomic flag; ``muls`` / ``adds``
/ ``select`` carry a float scalar. :meth:`VectorOp.words` gives the op as one int row plus one
float, the form a batched engine would carry (see :data:`WORDS`).

Kinds (Ascend C names in brackets; ``x``, ``y`` are ``src0``, ``src1``; ``r`` a ``[rows, 1]``
column, one value per row; ``s`` the scalar):

====================  =======================================================================
``load``              ``dst <- GM[addr]``, ``rows x cols`` elements, ``stride`` elements between
                      rows (``DataCopy`` GM->UB). The GM type must be the buffer's: a copy does
                      not convert.
``store``             ``GM[addr] <- x`` (``DataCopy`` UB->GM); ``atomic=1`` adds into GM in the
                      GM type (``SetAtomicAdd`` before the copy).
``add sub mul div``   ``dst = x op y`` elementwise (``Add`` ``Sub`` ``Mul`` ``Div``).
``muls adds``         ``dst = x * s``, ``dst = x + s`` (``Muls`` ``Adds``).
``exp``               ``dst = exp(x)`` (``Exp``).
``row_max row_sum``   ``dst[:, 0] = max / sum of x over its cols`` (``WholeReduceMax/Sum``).
``sub_row mul_row``   ``dst = x - y[:, :1]``, ``x * y[:, :1]``: a per-row value broadcast along
                      the row (the ``Sub`` / ``Mul`` after a ``Brcb`` in softmax-style kernels).
``cast``              ``dst = x`` converted to dst's type (``Cast``, ``CAST_RINT``: round to
                      nearest even); float16 / bfloat16 <-> float32.
``select``            ``dst = where(y != 0, x, s)`` with ``y`` a mask tile (``Select``, tensor /
                      scalar mode).
====================  =======================================================================

The kinds live in one table, :data:`KINDS` (a :class:`VectorKind` row each: name, code, operand
pattern, numpy semantics, JAX semantics, cost): the builder, the scenario keys, the schema's
literal, both engines and both timed models read it, so a new op is one row (plus a named builder
method, if wanted, and its test). The numpy semantics (what the reference interpreter runs) and
the JAX semantics (what the engine runs on padded, masked arrays) are two separately written
functions in each row, so that the reference remains an independent check of the engine; only the
list of kinds, their operand patterns and their cost are shared.

Numerics (``hardware``): an op computes in its buffers' dtype, each result rounded once to that
dtype (round to nearest even); float32 ops are IEEE float32 (numpy), float16 ops are computed in
float32 and rounded to float16, which is the correctly rounded float16 result for add, sub, mul,
div and within one float16 rounding for exp. ``exp`` in float32 is numpy's (within an ulp or two of
the device's, which is not published). ``row_sum`` adds in float32 in numpy's pairwise order; the
device's reduction tree is not modelled. The Atlas A2 vector unit has no bfloat16 arithmetic:
bfloat16 buffers may only be loaded, stored and cast, as kernels do (they cast to float32 first).
Under ``numerics="exact"`` every buffer is float64, casts and stores do not round: the float64
reference of the same program.

Semantics in time: an op acts when the AIV performs it (in the ``timed`` schedule, at its start),
on GM as it is then. A tile that an AIC has not written yet reads as whatever GM holds (zeros, or a
previous block's values): a missing ``wait`` gives wrong numbers, not an error. GM addresses are
static, so their bounds and types are checked when the op is built.

Cost (``timed`` schedule, cycles): a GM copy takes ``vec_issue + bytes / ddr_rate`` (the same
per-core GM rate as the AIC's matmul traffic); a compute op takes ``vec_issue + ceil(rows * cols *
itemsize / vec_rate)``, itemsize the widest of its buffers (the vector unit handles ``vec_rate`` =
256 bytes per cycle, one repeat). Issue and copy never overlap (no double buffering modelled).

The JAX engine runs the same ops batched (``encode.vector_words``, ``vector_ops.apply_vector_ops``):
every op is a row of int words + scalar + bytes + where its buffers lie; each lane carries a flat
``[V, U] float32`` UB in which every buffer lies at its own size (float16 and bfloat16 values are
exact in float32) and rounds a result to its buffer's type by a float32 -> type -> float32 round
trip chosen by the ``dtype`` word; an op reads and writes windows of E elements (the largest
region, bucketed). Order: within a step every AIV's op acts in block_idx order (an AIV's store is
visible to a later AIV's load in the same step), before the AICs and before the step's matmuls
are written, so a load sees the matmuls of earlier steps only. :func:`vector_tables` gives the
same ops as padded ``[V, L, ...]`` tables by ``pc``.

Fidelity notes: the ops and their layout follow the Ascend C vector API (``DataCopy``, ``Add``,
``Muls``, ``Exp``, ``WholeReduceSum``, ``Cast``, ``Select``); the loop of GM->UB copy, float32
compute and UB->GM copy over S1 slices of a cube block is the vector side described in
ops-transformer's FA/FAG design note (``attention/flash_attention_score/docs``, section "CV Tiling").
The UB holds 192 KiB per AIV on Atlas A2 (:attr:`ChipSpec.ub_size`); buffers are placed 32-byte
aligned, back to back. The 32-byte granularity of ``DataCopy`` lengths is not checked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ascend_jax.cube_group.status import AivCall
from ascend_jax.errors import ConfigError
from ascend_jax.gm import Tensor, dtype_name, get_dtype

if TYPE_CHECKING:
    from ascend_jax.cube_group.program import AivProgram, CubeGroupProgram

# -- the op table ------------------------------------------------------------------------------
# Semantics of a compute op, written twice on purpose: ``numpy`` is what the reference interpreter
# runs (``reference/compute.py``), on the op's region exactly; ``jax`` is what the JAX engine runs
# (``engine/vector_ops.py``), on padded, masked arrays. The two are written separately so that the
# reference stays an independent check of the engine; the table only makes both (and the builder,
# the schema and the timed models) read the same list of kinds, codes, operand patterns and costs.
#
# ``numpy(x, b, s, dt)``: ``x`` the src0 region, ``b`` the second operand as the pattern gives it
# (a tile, a ``[rows, 1]`` column, the mask of ``select``, or None), ``s`` the scalar, ``dt`` the
# compute type; returns the result region (``[rows, 1]`` for a reduction).
# ``jax(jnp, x, b, s, n)``: elementwise kinds get ``x`` and ``b`` of one shape (``b`` already
# broadcast: the scalar, the row's column value or the tile); a reduction gets ``x [..., W]`` and
# ``n [...]``, the live length of each row, and returns ``[...]``.


def _np_exp(x, b, s, dt):
    return np.exp(x)


def _np_row_sum(x, b, s, dt):
    return np.add.reduce(x, axis=1, keepdims=True, dtype=dt)


def _jx_add(jnp, x, b, s, n):
    return x + b


def _jx_sub(jnp, x, b, s, n):
    return x - b


def _jx_mul(jnp, x, b, s, n):
    return x * b


def _jx_div(jnp, x, b, s, n):
    return x / b


def _jx_exp(jnp, x, b, s, n):
    return jnp.exp(x)


def _jx_select(jnp, x, b, s, n):
    return jnp.where(b != 0, x, s)


def _jx_same(jnp, x, b, s, n):  # cast: the value, rounded to the destination's type by the engine
    return x


def _jx_row_max(jnp, x, b, s, n):
    live = jnp.arange(x.shape[-1]).reshape((1,) * n.ndim + (-1,)) < n[..., None]
    return jnp.where(live, x, -jnp.inf).max(axis=-1)


def _jx_row_sum(jnp, x, b, s, n):
    from ascend_jax.cube_group.engine.vector_ops import pairwise_sum  # numpy's summation order, in JAX

    return pairwise_sum(x, n)


def copy_cycles(xp, nbytes, issue, ddr_rate, vec_rate):
    """A GM <-> UB copy: ``vec_issue + bytes / ddr_rate`` (float32 in, float32 out, any ``xp``)."""
    return issue + nbytes / ddr_rate


def compute_cycles(xp, nbytes, issue, ddr_rate, vec_rate):
    """A compute op: ``vec_issue + ceil(bytes / vec_rate)`` (one repeat handles ``vec_rate`` bytes)."""
    return issue + xp.ceil(nbytes / vec_rate)


#: Operand patterns: the scenario keys a kind takes (required, optional) besides ``kind``.
_REGION = frozenset({"rows", "cols"})
PATTERNS: dict[str, tuple[frozenset, frozenset]] = {
    "load": (frozenset({"dst", "addr"}), _REGION | {"stride"}),
    "store": (frozenset({"src0", "addr"}), _REGION | {"stride", "atomic"}),
    "binary": (frozenset({"dst", "src0", "src1"}), _REGION),  # dst = f(x, y), y a tile
    "broadcast": (frozenset({"dst", "src0", "src1"}), _REGION),  # dst = f(x, y[:, :1])
    "scalar": (frozenset({"dst", "src0", "scalar"}), _REGION),  # dst = f(x, s)
    "unary": (frozenset({"dst", "src0"}), _REGION),  # dst = f(x)
    "reduce": (frozenset({"dst", "src0"}), _REGION),  # dst[:, 0] = f(x over its cols)
    "cast": (frozenset({"dst", "src0"}), _REGION),  # dst = x in dst's type
    "select": (frozenset({"dst", "src0", "src1", "scalar"}), _REGION),  # dst = f(x, mask y, s)
}


@dataclasses.dataclass(frozen=True)
class VectorKind:
    """One vector op kind: the single place that says what it is (see :data:`KINDS`).

    Attributes:
      name: the kind's name (``VectorOp.kind``, the scenario's ``kind``, the schema's literal).
      code: its number in the engine's op words (its index in :data:`KINDS`).
      pattern: its operands, a key of :data:`PATTERNS` (``load`` and ``store`` are the GM copies).
      numpy: the reference's semantics (see the comment above :func:`copy_cycles`); None for copies.
      jax: the JAX engine's semantics, written separately; None for copies.
      cycles: ``cycles(xp, nbytes, issue, ddr_rate, vec_rate)``, the timed cost in float32, for
        numpy scalars (reference) and JAX arrays (engine) alike.
      doc: one line for the docs.
    """

    name: str
    code: int
    pattern: str
    numpy: Callable | None
    jax: Callable | None
    cycles: Callable
    doc: str = ""

    @property
    def is_copy(self) -> bool:
        """A GM <-> UB copy (``load`` / ``store``), not a compute op."""
        return self.pattern in ("load", "store")


def _kinds(*rows: tuple) -> tuple[VectorKind, ...]:
    return tuple(VectorKind(name, code, *rest) for code, (name, *rest) in enumerate(rows))


_C, _X = copy_cycles, compute_cycles
#: Every vector op kind, in the order of their codes.
KINDS: tuple[VectorKind, ...] = _kinds(
    ("load", "load", None, None, _C, "DataCopy GM -> UB"),
    ("store", "store", None, None, _C, "DataCopy UB -> GM (atomic: SetAtomicAdd)"),
    ("add", "binary", lambda x, b, s, dt: x + b, _jx_add, _X, "Add"),
    ("sub", "binary", lambda x, b, s, dt: x - b, _jx_sub, _X, "Sub"),
    ("mul", "binary", lambda x, b, s, dt: x * b, _jx_mul, _X, "Mul"),
    ("div", "binary", lambda x, b, s, dt: x / b, _jx_div, _X, "Div"),
    ("muls", "scalar", lambda x, b, s, dt: x * s, _jx_mul, _X, "Muls"),
    ("adds", "scalar", lambda x, b, s, dt: x + s, _jx_add, _X, "Adds"),
    ("exp", "unary", _np_exp, _jx_exp, _X, "Exp"),
    ("row_max", "reduce", lambda x, b, s, dt: x.max(axis=1, keepdims=True), _jx_row_max, _X, "WholeReduceMax"),
    ("row_sum", "reduce", _np_row_sum, _jx_row_sum, _X, "WholeReduceSum"),
    ("sub_row", "broadcast", lambda x, b, s, dt: x - b, _jx_sub, _X, "Brcb + Sub"),
    ("mul_row", "broadcast", lambda x, b, s, dt: x * b, _jx_mul, _X, "Brcb + Mul"),
    ("cast", "cast", lambda x, b, s, dt: x, _jx_same, _X, "Cast (CAST_RINT)"),
    ("select", "select", lambda x, b, s, dt: np.where(b != 0, x, s), _jx_select, _X, "Select (tensor / scalar)"),
)
#: name -> :class:`VectorKind`
KIND: dict[str, VectorKind] = {k.name: k for k in KINDS}
#: Vector op kinds, in the order of their codes (``VectorOp.words()[0]``).
VECTOR_KINDS = tuple(k.name for k in KINDS)


def kinds_of(pattern: str) -> tuple[str, ...]:
    """The kinds with this operand pattern."""
    return tuple(k.name for k in KINDS if k.pattern == pattern)


SCALAR = kinds_of("scalar")
REDUCE, BROADCAST = kinds_of("reduce"), kinds_of("broadcast")
#: Types the vector ALU computes in (Atlas A2: no bfloat16 arithmetic).
ARITH_DTYPES = ("float16", "float32")
#: Casts modelled: (from, to).
CASTS = {("float16", "float32"), ("float32", "float16"), ("bfloat16", "float32"), ("float32", "bfloat16")}
#: UB buffer alignment, bytes.
UB_ALIGN = 32
#: Buffer dtypes (codes in ``words``).
UB_DTYPES = ("float16", "bfloat16", "float32")
#: Scenario table keys per kind: (required, optional).
TABLE_KEYS: dict[str, tuple[frozenset, frozenset]] = {k.name: PATTERNS[k.pattern] for k in KINDS}
#: Int words of :meth:`VectorOp.words` (``scalar`` travels separately as a float).
WORDS = ("kind", "dst", "src0", "src1", "rows", "cols", "addr", "stride", "atomic", "dtype")


@dataclasses.dataclass(frozen=True)
class UbBuffer:
    """A UB tile of one AIV: ``rows x cols`` elements of ``dtype``, row-major, at byte ``offset``.

    Attributes:
      block_idx: the AIV that owns it.
      index: its number among that AIV's buffers (0-based, declaration order).
      name: for messages and traces.
      rows, cols: shape, elements.
      dtype: ``float16``, ``bfloat16`` or ``float32``.
      offset: byte offset in the UB (32-byte aligned).
    """

    block_idx: int
    index: int
    name: str
    rows: int
    cols: int
    dtype: np.dtype
    offset: int

    @property
    def nbytes(self) -> int:
        return self.rows * self.cols * self.dtype.itemsize

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)


@dataclasses.dataclass(frozen=True)
class VectorOp:
    """One vector op (see the module docstring for the kinds).

    Attributes:
      kind: one of :data:`VECTOR_KINDS`.
      dst, src0, src1: buffers, or None where the kind takes none (``store`` has no dst, ``load``
        no sources).
      rows, cols: the region, elements from each buffer's top-left corner.
      addr: GM byte address (``load`` / ``store``), else 0.
      stride: GM elements between consecutive rows (``load`` / ``store``), else 0.
      atomic: ``store``: 1 adds into GM, 0 overwrites.
      scalar: ``muls`` / ``adds`` operand, ``select``'s fill value.
    """

    kind: str
    dst: UbBuffer | None
    src0: UbBuffer | None = None
    src1: UbBuffer | None = None
    rows: int = 0
    cols: int = 0
    addr: int = 0
    stride: int = 0
    atomic: int = 0
    scalar: float = 0.0

    @property
    def gm_dtype(self) -> np.dtype:
        """Element type of the GM tile of a copy (the buffer's)."""
        return (self.dst if self.kind == "load" else self.src0).dtype

    def words(self) -> tuple[list[int], float]:
        """``(ints, scalar)``: the op as :data:`WORDS` (buffer indices, -1 for none; ``dtype`` the
        code in :data:`UB_DTYPES` of the result: dst's, or the GM tile's for a store)."""

        def idx(b):
            return -1 if b is None else b.index

        out = self.src0 if self.kind == "store" else self.dst
        ints = [KIND[self.kind].code, idx(self.dst), idx(self.src0), idx(self.src1), self.rows, self.cols]
        ints += [self.addr, self.stride, self.atomic, UB_DTYPES.index(out.dtype_name)]
        return ints, float(self.scalar)

    def describe(self) -> dict[str, Any]:
        """JSON-able description (traces)."""
        d: dict[str, Any] = {"op": self.kind, "rows": self.rows, "cols": self.cols}
        for role in ("dst", "src0", "src1"):
            b = getattr(self, role)
            if b is not None:
                d[role] = b.name
        if KIND[self.kind].is_copy:
            d.update(addr=self.addr, stride=self.stride)
            if self.atomic:
                d["atomic"] = "add"
        if "scalar" in PATTERNS[KIND[self.kind].pattern][0]:
            d["scalar"] = self.scalar
        return d


# -- builder ---------------------------------------------------------------------------------


class VectorBuilder:
    """``aiv.vec``: declares UB buffers and appends vector ops to an AIV's program.

    Every method checks its operands when called (buffer ownership, regions, dtypes, GM bounds)
    and raises :class:`ConfigError` naming the op. Regions default to the destination's shape
    (the source's for ``store``).
    """

    def __init__(self, aiv: AivProgram):
        self._aiv = aiv
        self.buffers: list[UbBuffer] = []
        self._used = 0

    # -- helpers
    def _where(self) -> str:
        return self._aiv._where()

    def _fail(self, key: str, value: Any, rule: str, fix: str = "") -> ConfigError:
        return ConfigError(f"{self._where()}.{key}", value, rule, fix)

    def _own(self, buf: Any, key: str) -> UbBuffer:
        if not isinstance(buf, UbBuffer) or buf.block_idx != self._aiv.block_idx:
            raise self._fail(key, getattr(buf, "name", buf), "must be a UB buffer this AIV declared with vec.buffer")
        return buf

    def _region(self, rows: int | None, cols: int | None, *bufs: tuple[UbBuffer, bool]) -> tuple[int, int]:
        """The op's region; each (buffer, is_column) must hold it (a column holds rows x 1)."""
        first = bufs[0][0]
        rows = first.rows if rows is None else rows
        cols = first.cols if cols is None else cols
        for key, v in (("rows", rows), ("cols", cols)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise self._fail(key, v, "must be an integer >= 1")
        for b, column in bufs:
            need = (rows, 1) if column else (rows, cols)
            if need[0] > b.rows or need[1] > b.cols:
                raise self._fail(
                    "rows" if need[0] > b.rows else "cols",
                    f"{need[0]} x {need[1]}",
                    f"the region does not fit buffer {b.name!r} ({b.rows} x {b.cols})",
                    "shrink the region or declare a larger buffer",
                )
        return int(rows), int(cols)

    def _arith(self, *bufs: UbBuffer) -> None:
        dt = bufs[0].dtype
        for b in bufs:
            if b.dtype_name not in ARITH_DTYPES:
                raise self._fail(
                    "dtype",
                    f"{b.name}: {b.dtype_name}",
                    f"the Atlas A2 vector unit computes in {list(ARITH_DTYPES)} only",
                    "cast bfloat16 tiles to float32 first",
                )
            if b.dtype != dt:
                raise self._fail(
                    "dtype",
                    f"{b.name}: {b.dtype_name}",
                    f"operands must share one dtype ({bufs[0].name}: {bufs[0].dtype_name})",
                    "cast one of them first",
                )

    def _append(self, op: VectorOp) -> None:
        self._aiv._vector(op)

    def _gm_tile(self, addr: Any, rows: int, cols: int, stride: int | None, dtype: np.dtype) -> tuple[int, int]:
        gm = self._aiv.kernel.gm
        where = self._where()
        a = gm.address(addr.name if isinstance(addr, Tensor) else addr, f"{where}.addr")
        stride = cols if stride is None else stride
        if not isinstance(stride, (int, np.integer)) or isinstance(stride, bool) or stride < cols:
            raise self._fail("stride", stride, f"must be an integer >= cols ({cols})")
        owner = gm.owner(a)
        if owner is None:
            raise self._fail("addr", gm.describe(a), "lies outside every GM tensor", "allocate the tensor first")
        t = gm.tensors[owner]
        if t.dtype != dtype:
            raise self._fail(
                "addr",
                f"{owner} ({dtype_name(t.dtype)})",
                f"a DataCopy does not convert: the tensor must have the buffer's type ({dtype_name(dtype)})",
                "load into a buffer of the tensor's type, then cast",
            )
        if (a - t.addr) % dtype.itemsize:
            raise self._fail("addr", gm.describe(a), f"must be a whole element ({dtype.itemsize} B) into {owner!r}")
        end = a + ((rows - 1) * stride + cols) * dtype.itemsize
        if end > t.end:
            raise self._fail(
                "rows",
                f"{rows} x {cols} (stride {stride}) at {gm.describe(a)}",
                f"the tile runs {end - t.end} bytes past the end of {owner!r}",
                "check the address, stride and shape",
            )
        return int(a), int(stride)

    def named(self, name: str, key: str = "buffer") -> UbBuffer:
        """This AIV's buffer called ``name``."""
        for b in self.buffers:
            if b.name == name:
                return b
        raise self._fail(key, name, f"no UB buffer of this AIV has this name; buffers: {[b.name for b in self.buffers]}",
                         "declare it first with { op = \"ub_buffer\", ... }")  # fmt: skip

    def apply(self, table: dict[str, Any]) -> None:
        """Appends the op a scenario table describes: ``kind`` plus the keys of :data:`TABLE_KEYS`
        (buffers by name; a key the kind does not take is an error, not ignored)."""
        kind = table["kind"]
        need, may = TABLE_KEYS[kind]
        given = {k for k, v in table.items() if k != "kind" and v is not None and v is not False}
        extra, missing = sorted(given - need - may), sorted(need - given)
        if extra:
            key = extra[0]
            raise self._fail(key, table[key], f"does not apply to a {kind!r} op", f"{kind} takes {sorted(need | may)}")
        if missing:
            raise self._fail(missing[0], None, f"is required by a {kind!r} op")
        t = {k: (self.named(table[k], k) if k in ("dst", "src0", "src1") else table[k]) for k in given}
        region = {k: t[k] for k in ("rows", "cols") if k in t}
        if kind == "load":
            self.load(t["dst"], t["addr"], stride=t.get("stride"), **region)
        elif kind == "store":
            self.store(t["addr"], t["src0"], stride=t.get("stride"), atomic=bool(t.get("atomic", False)), **region)
        else:
            self.op(kind, t["dst"], t["src0"], t.get("src1"), t.get("scalar"), **region)

    def op(self, kind: str, dst, x, y=None, scalar=None, rows=None, cols=None) -> None:
        """Appends a compute op of any kind of :data:`KINDS` (not a copy), its operands checked by
        its pattern: ``y`` the second tile (``binary``), the ``[rows, 1]`` column (``broadcast``)
        or the mask (``select``); ``scalar`` for ``scalar`` and ``select``. The named methods
        (:meth:`add`, :meth:`exp`, ...) call this."""
        k = KIND.get(kind)
        if k is None or k.is_copy:
            raise self._fail("kind", kind, f"must be a compute kind of {[k.name for k in KINDS if not k.is_copy]}")
        dst, x = self._own(dst, "dst"), self._own(x, "src0")
        pat = k.pattern
        two = pat in ("binary", "broadcast", "select")  # takes a second tile
        if two:
            y = self._own(y, "src1")
        if pat == "cast":
            pair = (x.dtype_name, dst.dtype_name)
            if pair not in CASTS:
                raise self._fail(
                    "dtype", f"{pair[0]} -> {pair[1]}", f"casts modelled: {sorted(CASTS)}", "cast through float32"
                )
        elif pat in ("binary", "broadcast"):
            self._arith(dst, x, y)
        else:
            self._arith(dst, x)
        if pat == "broadcast" and y.cols != 1:
            raise self._fail(
                "src1",
                f"{y.name}: {y.rows} x {y.cols}",
                f"{kind}'s src1 is a [rows, 1] column, one value per row (broadcast along the row)",
                f"declare {y.name!r} with cols = 1, e.g. the destination of a row_max / row_sum",
            )
        number = isinstance(scalar, (int, float, np.floating, np.integer)) and not isinstance(scalar, bool)
        if pat in ("scalar", "select") and not number:
            raise self._fail("scalar", scalar, "must be a number")
        if pat == "reduce":
            rows, cols = self._region(rows, cols, (x, False), (dst, True))
        else:
            bufs = [(dst, False), (x, False)] + ([(y, pat == "broadcast")] if two else [])
            rows, cols = self._region(rows, cols, *bufs)
        src1 = y if two else None
        s = float(scalar) if pat in ("scalar", "select") else 0.0
        self._append(VectorOp(kind, dst, x, src1, rows, cols, scalar=s))

    # -- declarations
    def buffer(self, name: str, rows: int, cols: int, dtype: Any = "float32") -> UbBuffer:
        """A ``rows x cols`` UB buffer of ``dtype`` (``TBuf`` / ``LocalTensor``), 32-byte aligned."""
        if not isinstance(name, str) or not name:
            raise self._fail("name", name, "must be a non-empty string")
        if any(b.name == name for b in self.buffers):
            raise self._fail("name", name, "this AIV already has a UB buffer with this name")
        for key, v in (("rows", rows), ("cols", cols)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise self._fail(key, v, "must be an integer >= 1")
        dt = get_dtype(dtype, f"{self._where()}.dtype")
        if dtype_name(dt) not in UB_DTYPES:
            raise self._fail("dtype", dtype_name(dt), f"UB buffers hold {list(UB_DTYPES)}")
        offset = -(-self._used // UB_ALIGN) * UB_ALIGN
        buf = UbBuffer(self._aiv.block_idx, len(self.buffers), name, int(rows), int(cols), dt, offset)
        ub = self._aiv.kernel.chip.ub_size
        if offset + buf.nbytes > ub:
            raise self._fail(
                "rows",
                f"{name}: {rows} x {cols} {dtype_name(dt)}",
                f"UB buffers take {offset + buf.nbytes} B > UB {ub} B of {self._aiv.kernel.chip.name}",
                "process the block in smaller slices or reuse buffers",
            )
        self._used = offset + buf.nbytes
        self.buffers.append(buf)
        return buf

    # -- GM copies
    def load(self, dst: UbBuffer, addr: Any, rows: int | None = None, cols: int | None = None, stride=None) -> None:
        """``DataCopy(dst, gm[addr])``: ``rows x cols`` elements, ``stride`` elements per GM row."""
        dst = self._own(dst, "dst")
        rows, cols = self._region(rows, cols, (dst, False))
        a, s = self._gm_tile(addr, rows, cols, stride, dst.dtype)
        self._append(VectorOp("load", dst, rows=rows, cols=cols, addr=a, stride=s))

    def store(
        self, addr: Any, src: UbBuffer, rows: int | None = None, cols: int | None = None, stride=None, atomic=False
    ) -> None:
        """``DataCopy(gm[addr], src)`` (``atomic``: with ``SetAtomicAdd``, adding in the GM type)."""
        src = self._own(src, "src")
        rows, cols = self._region(rows, cols, (src, False))
        a, s = self._gm_tile(addr, rows, cols, stride, src.dtype)
        if not isinstance(atomic, bool):
            raise self._fail("atomic", atomic, "must be true or false")
        self._append(VectorOp("store", None, src, rows=rows, cols=cols, addr=a, stride=s, atomic=int(atomic)))

    # -- compute (each a named call of :meth:`op`)
    def add(self, dst, x, y, rows=None, cols=None) -> None:
        """``Add``: dst = x + y."""
        self.op("add", dst, x, y, rows=rows, cols=cols)

    def sub(self, dst, x, y, rows=None, cols=None) -> None:
        """``Sub``: dst = x - y."""
        self.op("sub", dst, x, y, rows=rows, cols=cols)

    def mul(self, dst, x, y, rows=None, cols=None) -> None:
        """``Mul``: dst = x * y."""
        self.op("mul", dst, x, y, rows=rows, cols=cols)

    def div(self, dst, x, y, rows=None, cols=None) -> None:
        """``Div``: dst = x / y."""
        self.op("div", dst, x, y, rows=rows, cols=cols)

    def muls(self, dst, x, scalar, rows=None, cols=None) -> None:
        """``Muls``: dst = x * scalar (the scalar rounded to the buffer's type)."""
        self.op("muls", dst, x, scalar=scalar, rows=rows, cols=cols)

    def adds(self, dst, x, scalar, rows=None, cols=None) -> None:
        """``Adds``: dst = x + scalar (the scalar rounded to the buffer's type)."""
        self.op("adds", dst, x, scalar=scalar, rows=rows, cols=cols)

    def exp(self, dst, x, rows=None, cols=None) -> None:
        """``Exp``: dst = exp(x)."""
        self.op("exp", dst, x, rows=rows, cols=cols)

    def row_max(self, dst, x, rows=None, cols=None) -> None:
        """``WholeReduceMax`` per row: dst[r, 0] = max(x[r, :cols])."""
        self.op("row_max", dst, x, rows=rows, cols=cols)

    def row_sum(self, dst, x, rows=None, cols=None) -> None:
        """``WholeReduceSum`` per row: dst[r, 0] = sum(x[r, :cols])."""
        self.op("row_sum", dst, x, rows=rows, cols=cols)

    def sub_row(self, dst, x, r, rows=None, cols=None) -> None:
        """dst = x - r[:, 0] broadcast along each row (``Brcb`` + ``Sub``)."""
        self.op("sub_row", dst, x, r, rows=rows, cols=cols)

    def mul_row(self, dst, x, r, rows=None, cols=None) -> None:
        """dst = x * r[:, 0] broadcast along each row (``Brcb`` + ``Mul``)."""
        self.op("mul_row", dst, x, r, rows=rows, cols=cols)

    def cast(self, dst, x, rows=None, cols=None) -> None:
        """``Cast(dst, x, CAST_RINT)``: float16 / bfloat16 <-> float32, round to nearest even."""
        self.op("cast", dst, x, rows=rows, cols=cols)

    def select(self, dst, mask, x, scalar, rows=None, cols=None) -> None:
        """``Select`` (tensor / scalar mode): dst = x where mask != 0, else ``scalar``."""
        self.op("select", dst, x, mask, scalar, rows=rows, cols=cols)


# -- cost --------------------------------------------------------------------------------------


def vector_cycles(op: VectorOp, cost: np.ndarray) -> np.float32:
    """Cycles of ``op`` under the ``timed`` schedule (see the module docstring); ``cost`` is a
    :meth:`CostModel.vector`. float32 arithmetic, as the engine's timed step computes."""
    from ascend_jax.timing import C

    f32 = np.float32
    rates = (f32(cost[C[k]]) for k in ("vec_issue", "ddr_rate", "vec_rate"))
    return f32(KIND[op.kind].cycles(np, f32(op_bytes(op)), *rates))


def op_bytes(op: VectorOp) -> int:
    """Bytes an op moves (a copy: the GM tile) or processes (compute: region x widest operand's
    item size), the size its cost scales with."""
    if KIND[op.kind].is_copy:
        return op.rows * op.cols * op.gm_dtype.itemsize
    return op.rows * op.cols * max(b.dtype.itemsize for b in (op.dst, op.src0, op.src1) if b is not None)


# -- whole programs ----------------------------------------------------------------------------


def has_vector_ops(program: CubeGroupProgram) -> bool:
    """Whether any AIV of ``program`` runs a vector op."""
    return any(op.kind == AivCall.VECTOR for _, ops in program.aivs for op in ops)


def vector_tables(program: CubeGroupProgram) -> dict[str, np.ndarray]:
    """Every AIV's vector ops and UB buffers as padded numpy tables, the data a batched engine
    would carry. ``V`` AIVs with ops (``program.aivs`` order), ``L`` ops per AIV (program order,
    protocol ops included so the index is the op's ``pc``), ``B`` buffers per AIV:

    * ``op_words [V, L, len(WORDS)] int64``: :meth:`VectorOp.words` of each vector op; kind -1 for
      a protocol op or padding.
    * ``op_scalar [V, L] float32``.
    * ``op_bytes [V, L] float32``: :func:`op_bytes` (0 for protocol ops), so a timed engine costs
      an op as ``vec_issue + op_bytes / ddr_rate`` (copies) or ``vec_issue + ceil(op_bytes /
      vec_rate)`` with its lane's cost vector.
    * ``buf_shape [V, B, 2] int64`` (rows, cols; 0 for none), ``buf_dtype [V, B] int64`` (code in
      :data:`UB_DTYPES`, -1 for none), ``buf_offset [V, B] int64`` (UB bytes).
    """
    v = len(program.aivs)
    l_max = max((len(ops) for _, ops in program.aivs), default=0)
    bufs: dict[int, dict[int, UbBuffer]] = {}
    words = np.full((v, l_max, len(WORDS)), -1, np.int64)
    words[..., 1:] = 0
    scalar = np.zeros((v, l_max), np.float32)
    nbytes = np.zeros((v, l_max), np.float32)
    for i, (_, ops) in enumerate(program.aivs):
        for j, op in enumerate(ops):
            if op.kind != AivCall.VECTOR:
                continue
            ints, s = op.vec.words()
            words[i, j] = ints
            scalar[i, j] = s
            nbytes[i, j] = op_bytes(op.vec)
            for b in (op.vec.dst, op.vec.src0, op.vec.src1):
                if b is not None:
                    bufs.setdefault(i, {})[b.index] = b
    b_max = max((max(d) + 1 for d in bufs.values()), default=0)
    shape = np.zeros((v, b_max, 2), np.int64)
    dtype = np.full((v, b_max), -1, np.int64)
    offset = np.zeros((v, b_max), np.int64)
    for i, d in bufs.items():
        for k, b in d.items():
            shape[i, k] = (b.rows, b.cols)
            dtype[i, k] = UB_DTYPES.index(b.dtype_name)
            offset[i, k] = b.offset
    return {
        "op_words": words,
        "op_scalar": scalar,
        "op_bytes": nbytes,
        "buf_shape": shape,
        "buf_dtype": dtype,
        "buf_offset": offset,
    }


__all__ = [
    "KIND",
    "KINDS",
    "UbBuffer",
    "VectorBuilder",
    "VectorKind",
    "VectorOp",
    "VECTOR_KINDS",
    "has_vector_ops",
    "vector_cycles",
    "vector_tables",
]

"""Typed GM banks: how the JAX engine holds GM when every matmul operand and every AIV GM copy
reads and writes tensors in their own element type.

GM is byte-addressed, and the engine's general form is one ``[G] uint8`` array per lane: a tile
is gathered as bytes and bit-cast to its type, and a C tile is bit-cast back to bytes and
scattered. On a CPU those casts are shift-and-or loops, and every lane carries its own copy of
every tensor, read-only inputs included.

When the encoded program shows that no access needs byte semantics, the engine instead keeps the
tensors in *banks*: one typed array per (element type, written or not). A tensor is **written**
when some IterateAll's C address lies in it or some AIV ``store`` (``DataCopy`` UB -> GM) targets
it; the other tensors are read-only, live in the tables (shared by the lanes of a batch that runs
one program) and never enter the loop's state. A tile is then a ``dynamic_slice`` per row of a
typed array, and a C tile a typed scatter; an AIV ``load`` / ``store`` is a slice (or, for a
strided tile, a gather / scatter) of the bank of its UB type, converted exactly to and from the
UB's float32.

The banks are used when, for every group with a Matmul and every address an A, B, bias or C
operand can take (every IterateAll word, every state a callback leaves, every AIC's state after
``Init``; an address the run may resolve from the AIC's state is one of these), the tensor
holding it has the operand's element type and the address is a whole number of elements from the
tensor's start; and when every AIV GM copy of every lane has its whole tile inside one tensor of
the copy's UB type, starting a whole number of elements into it (the builder refuses other
copies; a program assembled by hand may hold one that reinterprets bytes, and then the batch
keeps the byte form). Addresses of matmul operands outside every tensor do not matter: such a
tile stops its AIC with ``GM_OUT_OF_RANGE`` and reads and writes nothing. A batch with
neither a Matmul nor an AIV GM copy (the protocol alone) keeps the byte form, as does every batch
run with ``EngineOptions(typed_banks=False)``; AIV vector ops without a Matmul use the banks.
Both forms give the same results (``tests/cube_group/engine/test_banks.py`` and
``test_banks_vector.py`` compare them array by array).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from ascend_jax.buckets import bucket, bucket_fine
from ascend_jax.cube_group.engine.encode import VEC
from ascend_jax.cube_group.matmul import AF, MM_FIELDS
from ascend_jax.cube_group.vector import KIND, UB_DTYPES
from ascend_jax.gm import GM_BASE, load_windows

if TYPE_CHECKING:  # pragma: no cover
    from ascend_jax.cube_group.engine.encode import EncodedProgram
    from ascend_jax.cube_group.program import CubeGroupProgram

#: operand roles and the Matmul state column of their address (C has no state column)
_ROLES = {"a": "a_addr", "b": "b_addr", "bias": "bias_addr", "c": "c_addr"}


@dataclasses.dataclass(frozen=True)
class GmBanks:
    """The static layout of typed banks (part of the engine's static shape).

    Attributes:
      dtypes: per bank, its element type (numpy name).
      writable: per bank, whether it holds written tensors (then it is loop state, one copy per
        lane; else a table).
      sizes: per bank, elements: its tensors back to back (their total bucketed, :func:`_bucketed`,
        so that programs whose tensors differ a little in size share a compilation), then a
        margin of ``margin`` elements (a row window starting in a tensor never crosses the bank's
        end; rows not written go to the margin's start).
      margin: elements of that margin.
      tensor_banks: per GM tensor in allocation order, its bank. Where a tensor lies in its bank
        (after the bank's earlier tensors, :func:`placement`) is data, ``Tables.gm_tensors``:
        programs whose tensors differ only in size and address share this layout.
      loaded, stored: per bank, whether some AIV vector ``load`` reads it / ``store`` writes it
        (the vector phase traces copies of those banks only).
    """

    dtypes: tuple[str, ...]
    writable: tuple[bool, ...]
    sizes: tuple[int, ...]
    tensor_banks: tuple[int, ...]
    margin: int = 0
    loaded: tuple[bool, ...] = ()  # per bank, whether some AIV ``load`` reads it
    stored: tuple[bool, ...] = ()  # per bank, whether some AIV ``store`` writes it

    @property
    def rw(self) -> tuple[int, ...]:
        """Indices of the written banks (their order is the order of ``State.gm``)."""
        return tuple(k for k, w in enumerate(self.writable) if w)

    def scratch(self, k: int) -> int:
        """First margin element of bank ``k``."""
        return self.sizes[k] - self.margin

    def of_dtype(self, dtype: np.dtype) -> tuple[int, ...]:
        return tuple(k for k, d in enumerate(self.dtypes) if np.dtype(d) == np.dtype(dtype))


def plan(programs: Sequence[CubeGroupProgram], encoded: Sequence[EncodedProgram], margin: int) -> GmBanks | None:
    """The banks of a batch (lanes share GM layout, groups and matmul configs), or None when some
    access needs the byte form (see the module docstring). ``margin``: the widest row window in
    elements."""
    first = programs[0]
    tensors = list(first.gm.tensors.values())
    if not tensors:  # no GM tensor: every operand address is out of range, nothing to type
        return None
    starts = np.array([t.addr for t in tensors], np.int64)
    ends = np.array([t.end for t in tensors], np.int64)
    copies = _copies_in_type(tensors, starts, encoded)
    if copies is None:
        return None
    loads, written = copies
    if not loads and not written and not any(m is not None for m in first.matmuls):
        return None  # nothing reads or writes GM through a type: the protocol alone, on bytes
    stores = set(written)
    aic0 = np.cumsum([0] + [g.aic_num for g in first.groups])
    for gi, cfg in enumerate(first.matmuls):
        if cfg is None:
            continue
        mt = cfg[0]
        for role, field in _ROLES.items():
            values = []
            for e in encoded:
                mine = e.ver_group == gi
                values.append(e.act_mmf[mine][..., AF[field]].ravel())
                if field in MM_FIELDS:
                    col = MM_FIELDS.index(field)
                    values.append(e.ver_mmf[mine, col])
                    values.append(e.mm_init[aic0[gi] : aic0[gi + 1], col])
            addr = np.unique(np.concatenate(values))
            owner = np.searchsorted(starts, addr, side="right") - 1
            inside = (owner >= 0) & (addr < ends[np.maximum(owner, 0)]) & (addr > 0)
            dt = mt.dtype(role)
            for a, t in zip(addr[inside], owner[inside], strict=True):
                if tensors[t].dtype != dt or (a - tensors[t].addr) % dt.itemsize:
                    return None
                if role == "c":
                    written.add(int(t))
    keys: list[tuple[str, bool]] = []
    bank_of = []
    fill: dict[tuple[str, bool], int] = {}
    for i, t in enumerate(tensors):
        key = (t.dtype.name, i in written)
        if key not in fill:
            keys.append(key)
            fill[key] = 0
        bank_of.append(keys.index(key))
        fill[key] += t.nbytes // t.dtype.itemsize
    margin = -(-margin // 16) * 16
    return GmBanks(
        dtypes=tuple(d for d, _ in keys),
        writable=tuple(w for _, w in keys),
        sizes=tuple(_bucketed(fill[key], key[1]) + margin for key in keys),
        tensor_banks=tuple(bank_of),
        margin=margin,
        loaded=tuple(any(bank_of[t] == k for t in loads) for k in range(len(keys))),
        stored=tuple(any(bank_of[t] == k for t in stores) for k in range(len(keys))),
    )


#: elements up to which a written bank's size is a power of two (above: within 12.5 %)
SMALL_BANK = 1 << 16


def _bucketed(n: int, written: bool) -> int:
    """A bank's padded size: a power of two for a read-only bank (one copy for the batch) or a
    small one, else :func:`ascend_jax.buckets.bucket_fine` (written banks are per lane)."""
    return bucket(n) if not written or n <= SMALL_BANK else bucket_fine(n)


def placement(banks: GmBanks, program: CubeGroupProgram) -> list[tuple[int, int, int, int]]:
    """Where each of a program's GM tensors (allocation order) lies: (bank, first element in the
    bank, GM byte address, bytes); a bank holds its tensors back to back in allocation order."""
    fill = [0] * len(banks.dtypes)
    out = []
    for k, t in zip(banks.tensor_banks, program.gm.tensors.values(), strict=True):
        out.append((k, fill[k], t.addr, t.nbytes))
        fill[k] += t.nbytes // t.dtype.itemsize
    return out


def _copies_in_type(
    tensors: list, starts: np.ndarray, encoded: Sequence[EncodedProgram]
) -> tuple[set[int], set[int]] | None:
    """(the tensors some AIV ``load`` reads, those some AIV ``store`` writes), or None when some GM copy (``load`` / ``store``) of
    some lane reinterprets bytes: its tile is not inside one tensor of the copy's UB type, starting
    a whole number of elements into it (the builder refuses such copies; a program assembled by
    hand may hold one)."""
    load, store = KIND["load"].code, KIND["store"].code
    ends = np.array([t.end for t in tensors], np.int64)
    sizes = np.array([t.dtype.itemsize for t in tensors], np.int64)
    # each tensor's type as a UB type code (-1: none)
    codes = np.array([UB_DTYPES.index(t.dtype.name) if t.dtype.name in UB_DTYPES else -1 for t in tensors])
    read: set[int] = set()
    written: set[int] = set()
    for e in encoded:
        ops = e.vec_ops[np.isin(e.vec_ops[:, VEC["kind"]], (load, store))]
        if not len(ops):
            continue
        addr, code = ops[:, VEC["addr"]], ops[:, VEC["dtype"]]
        t = np.searchsorted(starts, addr, side="right") - 1
        if (t < 0).any():
            return None
        size = sizes[t]
        end = addr + ((np.maximum(ops[:, VEC["rows"]], 1) - 1) * ops[:, VEC["stride"]] + ops[:, VEC["cols"]]) * size
        ok = (codes[t] == code) & ((addr - starts[t]) % size == 0) & (end <= ends[t])
        if not ok.all():
            return None
        written.update(int(i) for i in np.unique(t[ops[:, VEC["kind"]] == store]))
        read.update(int(i) for i in np.unique(t[ops[:, VEC["kind"]] == load]))
    return read, written


def initial(banks: GmBanks, program: CubeGroupProgram) -> tuple[np.ndarray, ...]:
    """Every bank's contents at launch (numpy, one per bank)."""
    out = [np.zeros(n, dt) for dt, n in zip(banks.dtypes, banks.sizes, strict=True)]
    for t, (k, first, _, _) in zip(program.gm.tensors.values(), placement(banks, program), strict=True):
        values = program.gm.read(t).reshape(-1)
        out[k][first : first + values.size] = values
    return tuple(out)


def element(banks: GmBanks, k: int, addr: jax.Array, table: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(index in bank ``k`` of the element at GM byte ``addr``, whether a tensor of bank ``k``
    holds ``addr``). Outside those tensors the index is meaningless (callers mask such tiles).
    ``table``: ``Tables.gm_tensors`` [T, 4] (start, end, bank, element shift), where the tensors
    lie (data: the static layout has only each tensor's bank)."""
    size = np.dtype(banks.dtypes[k]).itemsize
    # floor division by the element size, a power of two: an arithmetic shift is the same floor
    # for every int32 (one operation to trace, where ``//`` is ten)
    first = jax.lax.shift_right_arithmetic(addr, jnp.asarray(size.bit_length() - 1, addr.dtype))
    mine = np.asarray([t for t, b in enumerate(banks.tensor_banks) if b == k], np.int32)
    if not len(mine):
        return first, jnp.zeros(addr.shape, bool)
    # one compare of every address against the bank's tensors ([..., T_k]), then one reduction:
    # quicker to trace than a chain per tensor, and XLA keeps the [...] result rather than
    # recomputing it for every element of the tile it starts (as it would a traced division)
    contiguous = bool((np.diff(mine) == 1).all())  # a slice, not a gather (tensors of a type allocated together)
    rows = table[mine[0] : mine[-1] + 1] if contiguous else table[mine]
    rows = rows.reshape(*(1,) * addr.ndim, len(mine), table.shape[1])  # [..., T_k, 4]
    a = addr[..., None]
    inside = (a >= rows[..., 0]) & (a < rows[..., 1])
    shift = jnp.where(inside, rows[..., 3], 0).sum(axis=-1)  # tensors do not overlap: one at most
    return first + shift, inside.any(axis=-1)


def places(
    banks: GmBanks, addr: jax.Array, dtype: np.dtype, table: jax.Array
) -> dict[int, tuple[jax.Array, jax.Array]]:
    """Per bank of ``dtype``, :func:`element` of ``addr`` (any shape): where a load at ``addr``
    starts in that bank and whether the bank holds it. Computed once per address and passed to
    :func:`load_at`, so that loads of one address (a tile read plain and transposed, the compute
    phase's tile variants) share it: each is a small reduction, a kernel of its own."""
    return {k: element(banks, k, addr, table) for k in banks.of_dtype(dtype)}


def load_at(
    banks: GmBanks,
    ro: Sequence[jax.Array],
    rw: Sequence[jax.Array],
    at: dict[int, tuple[jax.Array, jax.Array]],
    n_rows: int,
    stride: jax.Array,
    width: int,
    dtype: np.dtype,
) -> jax.Array:
    """[n_rows, width] elements of ``dtype``: ``width`` from each stored row of a tile with
    ``stride`` elements per row, from whichever bank of that type holds its first element (zeros
    when none does). ``ro`` / ``rw``: one lane's read-only and written banks, in bank order;
    ``at``: the tile's :func:`places` (one lane's scalars)."""
    arrays = by_bank(banks, ro, rw)
    out = jnp.zeros((n_rows, width), dtype)
    for k in banks.of_dtype(dtype):
        first, hit = at[k]
        rows = load_windows(arrays[k], first + jnp.arange(n_rows, dtype=jnp.int32) * stride, width)
        out = jnp.where(hit, rows, out)
    return out


def host_image(
    banks: GmBanks, ro: Sequence[np.ndarray], rw: Sequence[np.ndarray], table: np.ndarray, lanes: int, real: int
) -> np.ndarray:
    """``[B, real] uint8``: every lane's GM bytes rebuilt on the host from its banks (read-only
    banks ``[n]`` shared or ``[B, n]``, written banks ``[B, n]``, numpy; ``table``
    ``Tables.gm_tensors``, where the tensors lie in them). Bytes between tensors
    are zero: nothing writes outside a tensor. numpy reinterprets typed rows as bytes for free,
    where the same cast on the device is a loop of shifts. The image is built lanes first, as the
    banks come back: each tensor is one copy of a contiguous run of bytes per lane (a shared one
    is the same run copied into every lane), and only the bytes no tensor covers are zeroed."""
    arrays = by_bank(banks, ro, rw)
    out = np.empty((lanes, real), np.uint8)
    pos = 0  # first byte not yet written
    for start, end, k, shift in sorted(np.asarray(table, np.int64).tolist()):
        size = np.dtype(banks.dtypes[k]).itemsize
        first, n = start // size + shift, end - start
        vals = arrays[k][..., first : first + n // size]  # [n // size] or [B, n // size]
        lo = start - GM_BASE
        out[:, pos:lo] = 0
        out[:, lo : lo + n] = np.ascontiguousarray(vals).view(np.uint8).reshape(-1, n)  # shared: broadcast
        pos = max(pos, lo + n)
    out[:, pos:] = 0
    return out


def by_bank(banks: GmBanks, ro: Sequence[Any], rw: Sequence[Any]) -> list[Any]:
    """One lane's (or the batch's) arrays in bank order, from the read-only and written lists."""
    ro_it, rw_it = iter(ro), iter(rw)
    return [next(rw_it) if w else next(ro_it) for w in banks.writable]

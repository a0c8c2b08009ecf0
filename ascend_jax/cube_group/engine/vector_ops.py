"""The vector phase of a step: every AIV vector op (UB compute, GM <-> UB copies) of the step, on
each lane's UB image and GM.

Op kinds come from the table :data:`ascend_jax.cube_group.vector.KINDS` (codes, patterns, JAX
semantics); UB dtype codes of :data:`ascend_jax.cube_group.vector.UB_DTYPES`. Each AIV's UB is one
flat float32 array (``State.ub`` [B, V, U]) in which every buffer lies at its own size (offset
and row stride in the op words); an op reads and writes windows of E elements
(``EngineShape.ub``): element k of the region it writes is row k // w, column k % w (w its cols,
1 for a reduction). With ``EngineShape.ub_flat`` every region is consecutive in its buffers and
in GM, and windows are slices; else they are gathers / scatters.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

import ascend_jax.cube_group.engine.banks as banks
from ascend_jax.cube_group.engine.encode import VEC
from ascend_jax.cube_group.engine.shape import EngineShape
from ascend_jax.cube_group.vector import KIND, KINDS, UB_DTYPES
from ascend_jax.gm import GM_BASE

_F16, _BF16, _F32 = (UB_DTYPES.index(t) for t in ("float16", "bfloat16", "float32"))


def apply_vector_ops(
    shape: EngineShape,
    ro: tuple[jax.Array, ...],
    gm: tuple[jax.Array, ...],
    ub: jax.Array,
    en: jax.Array,
    words: jax.Array,
    table: jax.Array,
):
    """Performs the vector ops the AIVs performed this step, before the step's matmuls are written.

    ``gm``: the written GM (``State.gm``, lane-major): ``([B, G] uint8,)`` the bytes, or with typed
    banks (:attr:`EngineShape.banks`) the written banks ``[B, n_k]``; ``ro``: the read-only banks
    (``()`` as bytes; shared ``[n_k]`` or ``[B, n_k]`` per lane). ``ub`` [B, V, U] float32
    (lane-major), ``en`` [V, B] which AIVs ran a vector op, ``words`` [V, N_VEC, B] its
    :data:`ascend_jax.cube_group.engine.encode.VEC` row, ``table`` ``Tables.gm_tensors`` [T, 4]
    (where the tensors lie in the banks). Returns the new (gm, ub).

    Order (the reference's, ``ReferenceInterpreter.step``): the AIVs act in block_idx order, so a
    store is visible to a later AIV's load in the same step. Compute ops touch only their own AIV's
    UB, so they run for every AIV at once (vectorised over AIVs and lanes; in a large batch one
    pass per semantics the step uses, :func:`_compute_ops`). GM copies: in a step where no lane
    stores, GM does not change and every load reads at once (vectorised over AIVs and lanes); with
    a store, a ``fori_loop`` over the AIVs (each vectorised over lanes, skipped when no lane's AIV
    copies) keeps that order exactly, atomic stores included.
    """
    w = jnp.moveaxis(words, -1, 0)  # [B, V, N_VEC]
    e = en.T  # [B, V]
    copy = kind_in(w[..., VEC["kind"]], [k for k in _used(shape) if k.is_copy])
    is_copy = e & copy
    is_compute = e & ~copy
    ub = _compute_ops(shape, ub, is_compute, w)
    if not shape.vec_kinds or not any(k.is_copy for k in _used(shape)):
        return gm, ub
    lane_copy = _vector_copy if shape.banks is None else functools.partial(_vector_copy_banks, table=table)
    # over lanes; shared read-only banks have no lane axis
    ro_axis = None if shape.shared else 0
    copy_one = jax.vmap(functools.partial(lane_copy, shape), in_axes=(ro_axis, 0, 0, 0, 0, 0))
    stores = is_copy & (w[..., VEC["kind"]] == KIND["store"].code)
    loads = is_copy & ~stores
    any_store = stores.any()

    def region(w, on):  # one op's region (computed where used: in every step it cost ~3%)
        return _region(shape, w[VEC["rows"]], w[VEC["cols"]], on)

    def put(u, w, r, value, on):  # a load's window into its AIV's UB
        return _write(shape, u, w[VEC["off_dst"]], w[VEC["ld_dst"]], r._replace(live=r.live & on), value)

    def load(lane, ub, aiv, en, w):  # one lane's load of one AIV: the values it reads, where they go
        ro, gm = lane
        reg = region(w, en)
        old = lane_copy(shape, ro, gm, en, w, jnp.zeros(shape.ub[1], jnp.float32), reg)[1]
        return old, _dest(shape, aiv, w[VEC["off_dst"]], w[VEC["ld_dst"]], reg.r, reg.c, reg.live)

    # No store in any lane: GM does not change in the step, so the AIVs' order does not matter and
    # the loads run at once (on each lane's loading AIVs, as the compute passes; the copy's unused
    # GM update is dead code), not one AIV at a time.
    at_once = functools.partial(_on_active, shape, load, lane=(ro, gm), lane_axes=((ro_axis, 0),))
    ub = jax.lax.cond(loads.any() & ~any_store, at_once, lambda u, o, w: u, ub, loads, w)

    # With a store, a loop over AIVs in block_idx order, each AIV's copy vectorised over lanes. An
    # AIV performs one op per step, so a store's UB window is as it was after the compute ops. The
    # loop carries GM and the values each load read (the UB carried through it and written there
    # was copied whole by XLA). The loop, its [B, V, E] buffer of loaded values and their writes
    # run under a conditional on some lane storing: filling that buffer in every step cost about
    # 6 % of the attention loop. (An earlier engine copied the whole GM in and out of such a
    # conditional; the optimised module of the attention loop at S = 2,048 has no copy of a bank
    # or of the UB now.)
    def one_aiv(v, carry):
        def run(c):
            gm, loaded = c
            at = functools.partial(jax.lax.dynamic_index_in_dim, index=v, axis=1, keepdims=False)
            wv = at(w)
            r = jax.vmap(region)(wv, at(is_copy))
            # its UB windows read from the lanes' whole UBs (AIV v's at v * U; not the [B, U] slice
            # of AIV v, which XLA materialised in every iteration)
            flat = ub.reshape(ub.shape[0], -1)
            src = jax.vmap(lambda u, w, r: _read(shape, u, w[VEC["off_src0"]], w[VEC["ld_src0"]], r, v))(flat, wv, r)
            gm, old = copy_one(ro, gm, at(is_copy), wv, src, r)
            return gm, jax.lax.dynamic_update_index_in_dim(loaded, old, v, axis=1)

        return jax.lax.cond(is_copy[:, v].any(), run, lambda c: c, carry)

    def with_stores(gm, ub):
        loaded = jnp.zeros((*e.shape, shape.ub[1]), jnp.float32)
        gm, loaded = jax.lax.fori_loop(0, e.shape[1], one_aiv, (gm, loaded))
        ub = jax.lax.cond(
            loads.any(),
            lambda u: jax.vmap(jax.vmap(put))(u, w, jax.vmap(jax.vmap(region))(w, loads), loaded, loads),
            lambda u: u,
            ub,
        )
        return gm, ub

    return jax.lax.cond(any_store, with_stores, lambda gm, ub: (gm, ub), gm, ub)


def _gm_values(raw4: jax.Array, raw2: jax.Array, dtype: jax.Array) -> jax.Array:
    """[E] float32 values of GM elements of the UB type ``dtype`` (code) given their bytes: ``raw4``
    [E, 4] as 4-byte elements, ``raw2`` [E, 2] as 2-byte ones."""
    as32 = jax.lax.bitcast_convert_type(raw4, jnp.float32)
    as16 = jax.lax.bitcast_convert_type(raw2, jnp.float16).astype(jnp.float32)
    asbf = jax.lax.bitcast_convert_type(raw2, jnp.bfloat16).astype(jnp.float32)
    return jnp.where(dtype == _F32, as32, jnp.where(dtype == _F16, as16, asbf))


def _gm_bytes(val: jax.Array, dtype: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The bytes of [E] values ``val`` as float32 ([E, 4]) and as the 2-byte type ``dtype`` ([E, 2])."""
    b32 = jax.lax.bitcast_convert_type(val, jnp.uint8)
    b16 = jax.lax.bitcast_convert_type(val.astype(jnp.float16), jnp.uint8)
    bbf = jax.lax.bitcast_convert_type(val.astype(jnp.bfloat16), jnp.uint8)
    return b32, jnp.where(dtype == _F16, b16, bbf)


def _compute_ops(shape: EngineShape, ub: jax.Array, en: jax.Array, w: jax.Array) -> jax.Array:
    """Every AIV's compute op in every lane: ``ub`` [B, V, U], ``en`` [B, V], ``w`` [B, V, N_VEC].

    One pass per distinct JAX semantics (:func:`semantics`) that some enabled op of the step uses,
    each under a ``lax.cond`` and evaluating that semantics alone, for the AIVs whose op has it
    (vectorised over AIVs and lanes). Each AIV performs one op and touches only its own UB, so the
    passes commute and the result is that of all ops at once. Why: a lockstep step's AIVs mostly
    run one or two kinds, and evaluating every used kind's semantics (and its operand reads) per
    element made the compute phase about 2.5 times as costly as one kind's (measured on the
    attention backward's kinds). Row reductions (a gather of their region and numpy's pairwise
    sum) are computed only in their own pass."""
    kind = w[..., VEC["kind"]]
    groups = [kinds for _, kinds in semantics(k for k in _used(shape) if not k.is_copy)]
    if _small(shape, ub):  # compile time rules
        elementwise = [k for g in groups if g[0].pattern != "reduce" for k in g]
        groups = [g for g in groups if g[0].pattern == "reduce"] + ([elementwise] if elementwise else [])
    for kinds in groups:
        on = en & kind_in(kind, kinds)
        # a semantics has one pattern where it is a reduction's
        op = functools.partial(_reduce_op if kinds[0].pattern == "reduce" else _vector_compute, shape, kinds)
        ub = jax.lax.cond(on.any(), functools.partial(_on_active, shape, op), lambda u, o, w: u, ub, on, w)
    return ub


#: lanes x AIVs x window elements from which each semantics gets a pass of its own, run on the
#: active AIVs in chunks (:func:`_on_active`); below, one pass evaluates every elementwise kind on
#: all AIVs at once (each pass is a loop, a sort and a scatter to compile, which costs more than
#: the work it saves on small windows: the test suite's programs)
SPLIT_PASSES_FROM = 1 << 20


def _small(shape: EngineShape, ub: jax.Array) -> bool:
    """Whether a batch's UB ``ub`` [B, V, U] is under :data:`SPLIT_PASSES_FROM` (static)."""
    return ub.shape[0] * ub.shape[1] * shape.ub[1] < SPLIT_PASSES_FROM


#: AIVs per chunk of :func:`_on_active` (a lockstep step of the attention backward runs an op on
#: 8, 16, 24 or 48 of its 48 AIVs)
_CHUNK = 8


def _on_active(
    shape: EngineShape, op, ub: jax.Array, on: jax.Array, w: jax.Array, lane=None, lane_axes=(None,)
) -> jax.Array:
    """``ub`` [B, V, U] after the ops of the AIVs ``on`` [B, V] (``w`` [B, V, N_VEC] their words).
    ``op(ub, aiv, en, w)`` (``op(lane, ub, aiv, en, w)`` with ``lane``, a pytree of per-lane
    arrays mapped over lanes with ``lane_axes``, e.g. GM) gives one AIV's op in one lane from that
    lane's UBs ``ub`` [V * U]: its [W] values and where they go (:class:`_Dest`). Each lane's
    active AIVs come first (in block_idx order), _CHUNK at a time, in as many chunks as the
    busiest lane needs: in a step the ops of a pass mostly run on a part of the AIVs (half of them
    on average in the attention backward), and the work follows that count, not V. A small batch
    (under :data:`SPLIT_PASSES_FROM`) runs every AIV at once instead: no sort and no loop to
    compile."""
    b, v, u = ub.shape

    def apply(flat, aiv, act, wc):  # the ops of AIVs aiv [B, c] (those where act) on flat [B, V * U]
        if lane is None:
            value, dest = jax.vmap(jax.vmap(op, in_axes=(None, 0, 0, 0)))(flat, aiv, act, wc)
        else:
            one = jax.vmap(op, in_axes=(None, None, 0, 0, 0))
            value, dest = jax.vmap(one, in_axes=(*lane_axes, 0, 0, 0, 0))(lane, flat, aiv, act, wc)
        return _scatter(shape, flat, value, dest._replace(start=jnp.where(act, dest.start, v * u)))

    if _small(shape, ub):  # every AIV at once (no sort, no loop to compile)
        aiv = jnp.broadcast_to(jnp.arange(v, dtype=jnp.int32), (b, v))
        return apply(ub.reshape(b, v * u), aiv, on, w).reshape(b, v, u)
    c = min(_CHUNK, v)
    idx = jnp.argsort(~on, axis=1, stable=True).astype(jnp.int32)  # [B, V] the active AIVs first
    if v % c:
        idx = jnp.concatenate([idx, jnp.zeros((b, c - v % c), jnp.int32)], axis=1)
    count = on.sum(1)

    def chunk(j, flat):
        aiv = jax.lax.dynamic_slice_in_dim(idx, j * c, c, axis=1)  # [B, c]
        act = (j * c + jnp.arange(c))[None, :] < count[:, None]
        return apply(flat, aiv, act, jnp.take_along_axis(w, aiv[..., None], axis=1))

    flat = jax.lax.fori_loop(0, (count.max() + c - 1) // c, chunk, ub.reshape(b, v * u))
    return flat.reshape(b, v, u)


class _Dest(NamedTuple):
    """Where an op's W values go in one lane's UBs [V * U]: with flat windows, the W elements from
    ``start`` [] (its AIV's UB at ``aiv * U``, the window clamped into that UB as
    ``dynamic_update_slice`` clamps it), those where ``live`` [W]; else to ``pos`` [W] (out of
    range where not written)."""

    start: jax.Array
    pos: jax.Array
    live: jax.Array


def _dest(shape: EngineShape, aiv: jax.Array, off: jax.Array, ld: jax.Array, r, c, live: jax.Array) -> _Dest:
    """Where AIV ``aiv``'s values for region cells (``r``, ``c``) go in a buffer at ``off`` with
    row stride ``ld`` (those where ``live``), as :class:`_Dest`."""
    u = shape.ub[0]
    at = off + r * ld + c
    at = jnp.where(at < 0, at + u, at)  # as an index into the AIV's own UB (.at[] wraps negatives)
    ok = live & (at >= 0) & (at < u)
    pos = jnp.where(ok, aiv * u + at, jnp.iinfo(jnp.int32).max)
    return _Dest(aiv * u + jnp.clip(off, 0, u - shape.ub[1]), pos, live)


def _scatter(shape: EngineShape, flat: jax.Array, value: jax.Array, dest: _Dest) -> jax.Array:
    """``flat`` [B, V * U] (each lane's UBs) with the [B, c, W] ``value`` written to ``dest``
    ([B, c] ops' :class:`_Dest`; a window starting past the end is dropped)."""
    lanes = jnp.broadcast_to(jnp.arange(flat.shape[0])[:, None], dest.start.shape)
    if not shape.ub_flat:
        return flat.at[lanes[..., None], dest.pos].set(value, mode="drop")
    width = value.shape[-1]
    old = jax.vmap(jax.vmap(lambda f, at: jax.lax.dynamic_slice(f, (at,), (width,)), in_axes=(None, 0)))(
        flat, dest.start
    )
    dims = jax.lax.ScatterDimensionNumbers(
        update_window_dims=(2,), inserted_window_dims=(0,), scatter_dims_to_operand_dims=(0, 1)
    )
    at = jnp.stack([lanes, dest.start], axis=-1)
    return jax.lax.scatter(
        flat, at, jnp.where(dest.live, value, old), dims, mode=jax.lax.GatherScatterMode.FILL_OR_DROP
    )


def _used(shape: EngineShape) -> list:
    """The rows of :data:`KINDS` some lane's program uses (the step leaves the others out)."""
    return [k for k in KINDS if k.code in shape.vec_kinds]


def _round(x: jax.Array, dtype: jax.Array) -> jax.Array:
    """float32 ``x`` rounded to the UB type ``dtype`` (code; round to nearest even) and back."""
    f16 = x.astype(jnp.float16).astype(jnp.float32)
    bf16 = x.astype(jnp.bfloat16).astype(jnp.float32)
    return jnp.where(dtype == _F16, f16, jnp.where(dtype == _BF16, bf16, x))


class _Region(NamedTuple):
    """The E elements of the region an op writes: element k is row ``r`` [E], column ``c`` [E] of
    a ``rows x width`` region; ``live`` [E] whether k is inside it (and the op runs)."""

    r: jax.Array
    c: jax.Array
    live: jax.Array


def _region(shape: EngineShape, rows: jax.Array, width: jax.Array, en: jax.Array) -> _Region:
    k = jnp.arange(shape.ub[1], dtype=jnp.int32)
    width = jnp.maximum(width, 1)
    r = k // width
    return _Region(r, k - r * width, en & (k < rows * width))


def _read(
    shape: EngineShape, ub: jax.Array, off: jax.Array, ld: jax.Array, reg: _Region, aiv: jax.Array | None = None
) -> jax.Array:
    """[E] the region's elements of the buffer at ``off`` with row stride ``ld`` in one AIV's ``ub``
    [U]; outside the region, whatever lies there. With ``aiv``: ``ub`` [V * U] holds every AIV's UB
    and the read is from AIV ``aiv``'s (offsets clipped to it as to a UB of its own)."""
    u = shape.ub[0]
    if shape.ub_flat:
        at = 0 if aiv is None else aiv * u
        return jax.lax.dynamic_slice(ub, (at + jnp.clip(off, 0, u - shape.ub[1]),), (shape.ub[1],))
    return _gather(shape, ub, aiv, off + reg.r * ld + reg.c)


def _gather(shape: EngineShape, ub: jax.Array, aiv: jax.Array | None, at: jax.Array) -> jax.Array:
    """The elements at offsets ``at`` (any shape) of AIV ``aiv``'s UB in ``ub`` [V * U] (of the one
    UB ``ub`` [U] for None), each offset clipped into that UB."""
    u = shape.ub[0]
    return ub[(0 if aiv is None else aiv * u) + jnp.clip(at, 0, u - 1)]


def _write(shape: EngineShape, ub: jax.Array, off: jax.Array, ld: jax.Array, reg: _Region, value: jax.Array):
    """``ub`` [U] with the live elements of ``value`` [E] written into the buffer at ``off``."""
    if shape.ub_flat:
        old = jax.lax.dynamic_slice(ub, (off,), (shape.ub[1],))
        return jax.lax.dynamic_update_slice(ub, jnp.where(reg.live, value, old), (off,))
    return ub.at[jnp.where(reg.live, off + reg.r * ld + reg.c, ub.shape[0])].set(value, mode="drop")


def _reduction(shape: EngineShape, kinds: list, ub: jax.Array, aiv: jax.Array, w: jax.Array) -> jax.Array:
    """One AIV's row reduction of one of ``kinds`` (reductions sharing one semantics) in one lane
    (``ub`` [V * U] the lane's UBs, ``aiv`` the AIV, ``w`` [N_VEC]): its ``rows x cols`` region
    gathered as [Rr, Cr], reduced per row by the kinds' JAX semantics: [Rr] (the values written to
    the destination's column)."""
    cols = w[VEC["cols"]]
    rr, cr = shape.ub[2], shape.ub[3]
    at = w[VEC["off_src0"]] + jnp.arange(rr)[:, None] * w[VEC["ld_src0"]] + jnp.arange(cr)[None, :]
    x2 = _gather(shape, ub, aiv, at)
    s = jax.lax.bitcast_convert_type(w[VEC["scalar"]], jnp.float32)
    return kinds[0].jax(jnp, x2, None, s, jnp.broadcast_to(cols, (rr,)))


def _reduce_op(shape: EngineShape, kinds: list, ub: jax.Array, aiv: jax.Array, en: jax.Array, w: jax.Array):
    """:func:`_vector_compute` for a row reduction of one of ``kinds`` (:func:`_reduction`): its
    ``rows <= Rr`` values (one per row, into the destination's column) alone, not an [E] window:
    the window's select and scatter made a reduction's pass cost about 8 times an elementwise
    one's."""
    k = jnp.arange(shape.ub[2], dtype=jnp.int32)
    value = _round(_reduction(shape, kinds, ub, aiv, w), w[VEC["dtype"]])
    return value, _dest(shape, aiv, w[VEC["off_dst"]], w[VEC["ld_dst"]], k, 0, en & (k < w[VEC["rows"]]))


def _vector_compute(shape: EngineShape, used: list, ub: jax.Array, aiv: jax.Array, en: jax.Array, w: jax.Array):
    """One AIV's elementwise compute op (no GM copy, no reduction: :func:`_reduce_op`), one of
    ``used`` (compute rows of :data:`KINDS`; only their semantics and operands are evaluated), in
    one lane: ``ub`` [V * U] the lane's UBs, ``aiv`` the AIV, ``en`` [] whether it runs, ``w``
    [N_VEC] its words. Returns its [E] values and where they go (:class:`_Dest`). The result is
    computed in float32 and rounded once to its buffer's type (the reference's
    ``VectorUnit.run``)."""
    kind, dtype = w[VEC["kind"]], w[VEC["dtype"]]
    rows, cols = w[VEC["rows"]], w[VEC["cols"]]

    def pattern(*names):
        return kind_in(kind, [k for k in used if k.pattern in names])

    def uses(*names):
        return any(k.pattern in names for k in used)

    reg = _region(shape, rows, cols, en)
    x = _read(shape, ub, w[VEC["off_src0"]], w[VEC["ld_src0"]], reg, aiv)
    s = jax.lax.bitcast_convert_type(w[VEC["scalar"]], jnp.float32)
    b = jnp.broadcast_to(s, x.shape)  # the second operand: the scalar, a tile or the row's value
    if uses("binary", "select"):
        b = jnp.where(pattern("binary", "select"), _read(shape, ub, w[VEC["off_src1"]], w[VEC["ld_src1"]], reg, aiv), b)
    if uses("broadcast"):
        column = _gather(shape, ub, aiv, w[VEC["off_src1"]] + reg.r * w[VEC["ld_src1"]])
        b = jnp.where(pattern("broadcast"), column, b)
    res = x  # cast: the source value, rounded below
    for fn, kinds in semantics(used):
        value = fn(jnp, x, b, s, None)
        if value is not x:  # the identity (cast) is already the default
            res = value if len(kinds) == len(used) else jnp.where(kind_in(kind, kinds), value, res)
    return _round(res, dtype), _dest(shape, aiv, w[VEC["off_dst"]], w[VEC["ld_dst"]], reg.r, reg.c, reg.live)


def kind_in(kind: jax.Array, kinds) -> jax.Array:
    """Whether each op code in ``kind`` is one of ``kinds`` (:class:`VectorKind` rows)."""
    out = jnp.zeros(kind.shape, bool)
    for k in kinds:
        out = out | (kind == k.code)
    return out


def semantics(kinds) -> list:
    """``[(jax semantics, [kinds])]``: the distinct JAX functions of ``kinds`` (compute rows of
    :data:`KINDS`), each with the kinds that share it (``add`` and ``adds`` are both ``x + b``),
    so each function is traced once."""
    out: dict = {}
    for k in kinds:
        out.setdefault(k.jax, []).append(k)
    return list(out.items())


def pairwise_sum(x: jax.Array, n: jax.Array) -> jax.Array:
    """``x`` [..., W] float32 summed over its first ``n`` [...] elements in numpy's order, so that
    the result is bit-identical to ``np.add.reduce(x[..., :n], axis=-1, dtype=np.float32)`` (numpy's
    ``pairwise_sum`` in ``loops_utils.h.src``: under 8 elements a plain loop; up to 128, eight
    running sums over the multiples of 8 combined as a tree, then the rest one by one; above, split
    at ``n / 2`` rounded down to a multiple of 8 and recurse; the reduction starts from 0)."""
    res = _pairwise(x, n)
    return jnp.where(res == 0, jnp.float32(0), res)  # 0 + res: a -0 sum is +0


def _take(x: jax.Array, idx: jax.Array) -> jax.Array:
    """``x[..., idx]`` for a per-row index ``idx`` [...] (clipped)."""
    return jnp.take_along_axis(x, jnp.clip(idx, 0, x.shape[-1] - 1)[..., None], axis=-1)[..., 0]


def _pairwise(x: jax.Array, n: jax.Array) -> jax.Array:
    width = x.shape[-1]
    small = _pairwise_block(x[..., : min(width, 128)], jnp.minimum(n, 128))
    if width <= 128:
        return small
    n2 = n // 2
    n2 = n2 - n2 % 8  # >= 64 whenever n > 128
    left = _pairwise(x[..., : width // 2], n2)
    idx = jnp.arange(width - 64).reshape((1,) * n2.ndim + (-1,)) + n2[..., None]
    right = _pairwise(jnp.take_along_axis(x, jnp.clip(idx, 0, width - 1), axis=-1), n - n2)
    return jnp.where(n <= 128, small, left + right)


def _pairwise_block(x: jax.Array, n: jax.Array) -> jax.Array:
    """numpy's pairwise sum of the first ``n`` <= 128 elements of ``x`` [..., <= 128]."""
    width = x.shape[-1]
    pad = -width % 8 + max(0, 8 - width)
    if pad:
        x = jnp.concatenate([x, jnp.zeros((*x.shape[:-1], pad), x.dtype)], axis=-1)
    seq = jnp.zeros(x.shape[:-1], x.dtype)
    for i in range(7):  # n < 8: one by one from 0
        seq = jnp.where(i < n, seq + x[..., i], seq)
    m = n - n % 8
    r = x[..., :8]
    for g in range(1, x.shape[-1] // 8):
        r = jnp.where((8 * g < m)[..., None], r + x[..., 8 * g : 8 * g + 8], r)
    res = ((r[..., 0] + r[..., 1]) + (r[..., 2] + r[..., 3])) + ((r[..., 4] + r[..., 5]) + (r[..., 6] + r[..., 7]))
    for k in range(7):  # the rest past the last multiple of 8
        res = jnp.where(m + k < n, res + _take(x, m + k), res)
    return jnp.where(n < 8, seq, res)


def _vector_copy(
    shape: EngineShape, ro: tuple, gm: tuple[jax.Array], en: jax.Array, w: jax.Array, src: jax.Array, reg: _Region
) -> tuple[tuple[jax.Array], jax.Array]:
    """One lane's GM copy of one AIV (the reference's ``VectorUnit.run``) on GM as bytes: ``gm``
    ``([G] uint8,)`` (``ro`` is empty), ``en``
    [] whether it copies, ``w`` [N_VEC], ``src`` [E] a store's UB window, ``reg`` its region.
    Element k of the region is the 4 bytes at its address: with flat windows one slice of 4E bytes
    (GM is padded by :func:`ascend_jax.gm.row_margin` of E), else a gather. A store writes the
    region's bytes only (an atomic store adds to GM's value in float32 and rounds once to the GM
    type). Returns the new gm and the [E] values GM held (what a load reads)."""
    gm = gm[0]
    e = shape.ub[1]
    kind, dtype = w[VEC["kind"]], w[VEC["dtype"]]
    size = jnp.where(dtype == _F32, 4, 2)
    start = jnp.where(en, w[VEC["addr"]] - GM_BASE, 0)  # byte index in gm
    if shape.ub_flat:
        raw = jax.lax.dynamic_slice(gm, (start,), (4 * e,))
        old = _gm_values(raw.reshape(e, 4), raw[: 2 * e].reshape(e, 2), dtype)
    else:
        at = start + (reg.r * w[VEC["stride"]] + reg.c) * size  # [E] each element's first byte
        raw = gm[jnp.clip(at[:, None] + jnp.arange(4)[None, :], 0, gm.shape[0] - 1)]  # [E, 4]
        old = _gm_values(raw, raw[:, :2], dtype)
    storing = en & (kind == KIND["store"].code)
    val = jnp.where(w[VEC["atomic"]] != 0, _round(old + src, dtype), src)
    b32, b2 = _gm_bytes(val, dtype)  # [E, 4], [E, 2]
    if shape.ub_flat:
        data = jnp.where(dtype == _F32, b32.reshape(-1), jnp.concatenate([b2.reshape(-1), raw[2 * e :]]))
        live = storing & (jnp.arange(4 * e) < w[VEC["rows"]] * w[VEC["cols"]] * size)
        return (jax.lax.dynamic_update_slice(gm, jnp.where(live, data, raw), (start,)),), old
    data = jnp.where(dtype == _F32, b32, jnp.concatenate([b2, b2], axis=-1))  # [E, 4]
    k = jnp.arange(4)[None, :]
    ok = storing & reg.live[:, None] & (k < size)
    return (gm.at[jnp.where(ok, at[:, None] + k, gm.shape[0])].set(data, mode="drop"),), old


def _vector_copy_banks(
    shape: EngineShape,
    ro: tuple[jax.Array, ...],
    gm: tuple[jax.Array, ...],
    en: jax.Array,
    w: jax.Array,
    src: jax.Array,
    reg: _Region,
    table: jax.Array,
) -> tuple[tuple[jax.Array, ...], jax.Array]:
    """:func:`_vector_copy` on typed banks (:attr:`EngineShape.banks`): ``ro`` one lane's read-only
    banks, ``gm`` its written ones, ``table`` ``Tables.gm_tensors`` (where the tensors lie). The
    plan (:func:`ascend_jax.cube_group.engine.banks.plan`) admits banks only when every copy's
    tile lies in a tensor of the copy's UB type at a whole element, so the copy reads (and a store
    writes) the bank of that type that holds its address: element k of the region at element
    ``first + r * stride + c`` (a slice of E elements with flat windows: banks end in a margin of
    the widest window). Values convert exactly between the
    bank's type and the UB's float32 (an atomic store adds in float32 and rounds once, as in
    bytes). Returns the new written banks and the [E] values GM held (what a load reads)."""
    bk = shape.banks
    arrays = banks.by_bank(bk, ro, gm)
    e = shape.ub[1]
    kind, dtype, addr = w[VEC["kind"]], w[VEC["dtype"]], w[VEC["addr"]]
    storing = en & (kind == KIND["store"].code)
    atomic = w[VEC["atomic"]] != 0
    flat_live = jnp.arange(e) < w[VEC["rows"]] * w[VEC["cols"]]
    old = jnp.zeros(e, jnp.float32)
    out = list(arrays)
    for k, name in enumerate(bk.dtypes):
        if not (bk.loaded[k] or bk.stored[k]):  # no copy touches it (plan)
            continue
        first, hit = banks.element(bk, k, addr, table)
        hit = hit & en & (dtype == UB_DTYPES.index(name))
        first = jnp.where(hit, first, 0)
        x = arrays[k]
        if shape.ub_flat:
            raw = jax.lax.dynamic_slice(x, (first,), (e,))
        else:
            at = first + reg.r * w[VEC["stride"]] + reg.c  # [E] each element's index
            raw = x[jnp.clip(at, 0, x.shape[0] - 1)]
        held = raw.astype(jnp.float32)
        old = jnp.where(hit, held, old)
        if not bk.stored[k]:
            continue
        val = jnp.where(atomic, _round(held + src, dtype), src).astype(x.dtype)
        if shape.ub_flat:
            out[k] = jax.lax.dynamic_update_slice(x, jnp.where(storing & hit & flat_live, val, raw), (first,))
        else:
            live = storing & hit & reg.live
            out[k] = x.at[jnp.where(live, at, x.shape[0])].set(val, mode="drop")
    return tuple(out[k] for k in bk.rw), old

"""The compute phase of a step: every matmul action the AICs performed this step, on GM.

Order within a step (documented semantics, the reference interpreter does the same):

1. every matmul of the step loads its A, B and bias tiles from GM as it was at the start of the
   compute phase (so two AICs of one step never see each other's results);
2. the cube compute runs as one padded, masked batched ``dot_general`` per Matmul type (per
   group with a matmul config), over the group's AICs;
3. results are written to GM one AIC after the other: groups in creation order, AICs in index
   order (``atomic_order="fixed"``), or in a random permutation drawn per lane and step
   (``atomic_order="random"``), so that a user can bound how much rounding depends on the
   arrival order of atomic accumulations. Tiles whose row windows do not overlap commute, so
   the engine stores them together: in passes (:func:`store_passes`), each one gather and one
   scatter, one pass for a step without overlaps (the common case).

Each action arrives as its :data:`ascend_jax.cube_group.matmul.ACTION_FIELDS` words, already resolved
against the AIC's persistent Matmul state by the step. A matmul whose A, B, C or bias extent is
not inside one tensor (checked here, in int32 without overflow: :func:`ascend_jax.cube_group.matmul.tile_inside`)
ends its AIC with ``GM_OUT_OF_RANGE`` (core, message and address in the result) and writes
nothing; an empty tile (an extent <= 0) reads and writes nothing.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import ascend_jax.cube_group.engine.banks as banks
from ascend_jax.cube_group.engine.encode import VEC, MatmulDims
from ascend_jax.cube_group.engine.shape import EngineShape
from ascend_jax.cube_group.matmul import MatmulType, check_operands, combine, compute_tiles, descriptor, empty_tile
from ascend_jax.cube_group.vector import KIND, KINDS, UB_DTYPES
from ascend_jax.gm import GM_BASE, load_rows, load_windows, row_starts, store_rows, store_windows


def matmul_requests(shape: EngineShape, en: jax.Array, fields: jax.Array) -> tuple[list, jax.Array, jax.Array]:
    """One lane's matmul requests of a step: ``en`` [C] bool, ``fields`` [C, A] int32 action
    words. Returns, per group with a Matmul (in :func:`matmul_groups` order), ``(d, e)``: the
    descriptor words (each [P]) and [P] whether the AIC writes a tile; then [C] whether each
    AIC's matmul lies outside GM (then nothing is written) and [C] the first address out of
    range. Cheap (descriptor words only): the engine decides from it how to store."""
    bounds = jnp.asarray(np.asarray(shape.gm_bounds, np.int32).reshape(-1, 2))
    d_all = descriptor(fields.T, jnp)  # each word [C]
    start = 0
    reqs, oks, bads = [], [], []
    for gi, g in enumerate(shape.groups):
        sl = slice(start, start + g.aic_num)
        start += g.aic_num
        cfg = shape.matmuls[gi] if shape.matmuls else None
        if cfg is None:
            oks.append(jnp.ones(g.aic_num, bool))
            bads.append(jnp.zeros(g.aic_num, jnp.int32))
            continue
        d = {k: v[sl] for k, v in d_all.items()}
        ok, bad = check_operands(cfg[0], bounds, d, jnp)
        oks.append(ok)
        bads.append(bad.astype(jnp.int32))
        reqs.append((d, en[sl] & ok & ~empty_tile(d)))
    return reqs, en & ~jnp.concatenate(oks), jnp.concatenate(bads)


def matmul_tiles(shape: EngineShape, ro: tuple[jax.Array, ...], gm: tuple[jax.Array, ...], reqs: list) -> list:
    """The C tiles [P, M, N] of one lane's requests (:func:`matmul_requests`), per group, from its
    GM: ``ro`` its read-only typed banks and ``gm`` its written ones (``State.gm``); as bytes,
    ``ro = ()`` and ``gm = ([G] uint8,)``."""
    tiles = []
    for (gi, mt, dims), (d, _) in zip(matmul_groups(shape), reqs, strict=True):
        a, b, bias = jax.vmap(lambda di, mt=mt, dims=dims: _operands(shape, mt, dims, ro, gm, di))(d)
        scale = jax.lax.bitcast_convert_type(d["quant_scale"], jnp.float32) if mt.dequant else None
        tiles.append(compute_tiles(mt, shape.matmuls[gi][1], a, b, bias, scale))
    return tiles


def matmul_groups(shape: EngineShape) -> list[tuple[int, MatmulType, MatmulDims]]:
    """(group index, Matmul type, tile dims) of each group with a Matmul, in creation order: the
    order of the per-group lists of :func:`matmul_requests` and :func:`matmul_tiles`, and of the
    writes."""
    cfgs = shape.matmuls or (None,) * len(shape.groups)
    return [(gi, cfg[0], cfg[2]) for gi, cfg in enumerate(cfgs) if cfg is not None]


def store_passes(shape: EngineShape, key: jax.Array, reqs: list) -> list:
    """In which pass each AIC of one lane stores its C tile this step: per group with a Matmul,
    [P] int32. The documented order is AIC index order (or, with ``atomic_order="random"``, a
    permutation drawn from the lane's ``key`` per step and group). An AIC goes one pass after
    the last AIC before it in that order whose written windows overlap its own
    (:func:`window_overlaps`), so tiles of one pass are disjoint and overlapping ones land in
    order: a step without overlaps is one pass. A tile writes each row as chunks of
    ``dims.chunk`` columns (:func:`chunk_width`), up to its own ``n`` rounded up to a chunk. With
    ``shape.batched_stores`` off (``EngineOptions(batched_stores=False)``) every AIC has a pass of
    its own. Passes from P on (P the group's AICs) are written row after row, each row re-read
    (:func:`store_tiles`): a lane in which some live tile's own rows may overlap (its C row stride
    below its written width, possible only without ``rows_disjoint``) stores every tile of the
    step that way, AIC ``k`` of the order in pass ``P + k``."""
    order_key = jax.random.fold_in(jax.random.wrap_key_data(key), 0x5EED)
    out = []
    for gidx, ((_, mt, dims), (d, e)) in enumerate(zip(matmul_groups(shape), reqs, strict=True)):
        n_aic = e.shape[0]
        if shape.atomic_order == "random":
            order = jax.random.permutation(jax.random.fold_in(order_key, gidx), n_aic)
        else:
            order = jnp.arange(n_aic)
        rank = jnp.zeros(n_aic, jnp.int32).at[order].set(jnp.arange(n_aic, dtype=jnp.int32))
        mm_ = dims.m
        g = chunk_width(dims)
        c_rows = _c_rows(shape, mt)
        # [P] columns each row writes: its n rounded up to a chunk
        width = dims.n if g == dims.n else jnp.minimum(-(-jnp.maximum(d["n"], 1) // g) * g, dims.n)
        if dims.rows_disjoint:
            seq = rank
        else:  # a tile whose rows overlap sends its whole lane's step to the ordered row stores
            fits = (d["m"] <= 1) | (d["stride_c"] >= width)
            seq = jnp.where((fits | ~e).all(), rank, n_aic + rank)
        if not (shape.batched_stores and c_rows):
            out.append(seq)
            continue
        u = mt.dtype("c").itemsize if shape.banks is None else 1  # GM indices per element
        lo = jax.vmap(lambda a, starts=c_rows.starts: starts(a, 1, 0)[0])(d["c_addr"])
        stride = jnp.where(e & (d["m"] > 1), d["stride_c"], 0) * u  # no product of an unused stride
        over = window_overlaps(lo, jnp.minimum(d["m"], mm_), stride, width * u, e)

        def place(k, passes, order=order, over=over, rank=rank):  # in the documented order: after
            ci = order[k]  # every earlier overlapping tile
            return passes.at[ci].set(jnp.where(over[ci] & (rank < k), passes + 1, 0).max())

        passes = jnp.zeros(n_aic, jnp.int32)
        if dims.rows_disjoint:  # unrolled, as before chunked stores
            for k in range(n_aic):
                passes = place(k, passes)
        else:  # a loop: with the ordered row stores beside it, P unrolled steps cost seconds of compile
            passes = jax.lax.fori_loop(0, n_aic, place, passes)
        out.append(passes if dims.rows_disjoint else jnp.where(seq >= n_aic, seq, passes))
    return out


def chunk_width(dims: MatmulDims) -> int:
    """Columns of one written window of a C row: ``dims.chunk`` (a divisor of N that divides every
    ``n`` a tile of the group can have; :func:`ascend_jax.cube_group.engine.shape.make_shape`), or
    N without one."""
    return dims.chunk or dims.n


def window_overlaps(
    lo: jax.Array, rows: jax.Array, stride: jax.Array, width: int | jax.Array, live: jax.Array
) -> jax.Array:
    """[P, P] bool: whether the writes of tiles i and j (i != j, both ``live``) can touch a
    common index. Tile i writes ``rows[i]`` windows of ``width[i]`` indices (a scalar: the same
    for every tile), the r-th starting at ``lo[i] + r * stride[i]`` (each [P] int32, GM indices;
    every row writes its whole window, its columns past the tile's own ``n`` rewritten with what
    they held). Two tiles of one stride ``s`` at least both widths are compared exactly on the
    (row, column) grid of that stride; other pairs by their whole index ranges, which may say
    "overlap" for interleaved tiles (that only costs the ordered store, never a wrong one)."""
    width = jnp.broadcast_to(jnp.asarray(width, jnp.int32), lo.shape)
    m = jnp.where(live, rows, 0)  # idle AICs: nothing to compare, and no overflow below
    s = jnp.where(live, stride, 0)
    hi = lo + (m - 1) * s + width  # one past the last index a window writes
    i, j = lo[:, None], lo[None, :]
    span = (i < hi[None, :]) & (j < hi[:, None])
    wi, wj = width[:, None], width[None, :]
    same = (s[:, None] == s[None, :]) & (s[:, None] >= wi) & (s[None, :] >= wj)
    sd = jnp.where(same, s[:, None], 1)
    q = jnp.floor_divide(j - i, sd)  # row of tile j's first index on tile i's grid
    rem = (j - i) - q * sd  # its column, 0 <= rem < s
    mi, mj = m[:, None], m[None, :]
    piece_a = (q < mi) & (q + mj > 0) & (rem < wi)
    piece_b = (rem + wj > sd) & (q + 1 < mi) & (q + 1 + mj > 0)  # the part that wraps a row
    overlap = jnp.where(same, piece_a | piece_b, span)
    both = live[:, None] & live[None, :] & (m[:, None] > 0) & (m[None, :] > 0)
    return overlap & both & ~jnp.eye(lo.shape[0], dtype=bool)


def store_tiles(
    shape: EngineShape, gm: tuple[jax.Array, ...], reqs: list, tiles: list, passes: list, n_passes: list
) -> tuple[jax.Array, ...]:
    """Writes one lane's C tiles of a step (``reqs`` from :func:`matmul_requests`, ``tiles`` from
    :func:`matmul_tiles`) to its written GM ``gm``, in ``passes`` (:func:`store_passes`): each
    pass below P one gather and one scatter of the chunks of the tiles in it, each pass from P on
    one tile written row after row, each row re-read. ``n_passes``: per group, one past the last
    pass to run (int32 scalar, the same for every lane so that the loops are not batched)."""
    for (_, mt, dims), (d, e), c, ps, n in zip(matmul_groups(shape), reqs, tiles, passes, n_passes, strict=True):
        c_rows = _c_rows(shape, mt)
        if c_rows is not None:  # else no tensor of C's type is written: every such tile is out of range
            group = StoreGroup(mt, dims, c_rows, d, e, c, ps)
            n_aic = e.shape[0]
            gm = jax.lax.fori_loop(0, jnp.minimum(n, n_aic), functools.partial(_store_pass, group), gm)
            if not dims.rows_disjoint:
                gm = jax.lax.fori_loop(n_aic, jnp.maximum(n, n_aic), functools.partial(_store_rows, group), gm)
    return gm


class StoreGroup(NamedTuple):
    """One group's C tiles of a step in one lane, as :func:`_store_pass` writes them."""

    mt: MatmulType  # the group's Matmul type
    dims: MatmulDims  # its tile bound
    c_rows: _CRows  # where its C rows go in ``State.gm``
    d: dict[str, jax.Array]  # [P] each AIC's descriptor words (:func:`matmul_requests`)
    e: jax.Array  # [P] which AICs store a tile this step
    c: jax.Array  # [P, M, N] the tiles
    ps: jax.Array  # [P] the pass each AIC stores in (:func:`store_passes`)


def _merged(group: StoreGroup, old: jax.Array, tile: jax.Array, ci: jax.Array, live: jax.Array) -> jax.Array:
    """What rows [R, N] of AIC ``ci``'s C region become (``old`` what they hold, ``tile`` its
    rows, ``live`` [R] which are written)."""
    new = combine(group.mt, old, tile, group.d["atomic"][ci])
    cols = jnp.arange(group.dims.n) < group.d["n"][ci]
    return jnp.where(live[:, None] & cols[None, :], new, old)


def _store_pass(group: StoreGroup, p: jax.Array, gm: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    """Pass ``p`` < P of one group's stores (see :func:`store_tiles`) into the written GM ``gm``:
    every tile of the pass at once, each row as windows of :func:`chunk_width` columns (chunks
    past the tile's ``n``, and rows not written, go to the scratch margin)."""
    c_rows, d, e, ps = group.c_rows, group.d, group.e, group.ps
    mm_, nn = group.dims.m, group.dims.n
    g = chunk_width(group.dims)
    n_chunks = nn // g
    u = group.mt.dtype("c").itemsize if c_rows.bytes else 1  # GM indices per element
    n_aic = e.shape[0]

    def rows(ci):  # one AIC's chunk starts [M, Ch] (not written: to scratch), live rows [M]
        live = e[ci] & (jnp.arange(mm_) < d["m"][ci]) & (ps[ci] == p)
        j = jnp.arange(n_chunks, dtype=jnp.int32)
        at = c_rows.starts(d["c_addr"][ci], mm_, d["stride_c"][ci])[:, None] + j[None, :] * (g * u)
        keep = live[:, None] & (j * g < d["n"][ci])[None, :]
        return jnp.where(keep, at, c_rows.scratch), live

    at, live = jax.vmap(rows)(jnp.arange(n_aic))  # [P, M, Ch], [P, M]
    old = c_rows.read(gm, at.reshape(-1), g).reshape(n_aic, mm_, nn)
    new = jax.vmap(functools.partial(_merged, group))(old, group.c, jnp.arange(n_aic), live)
    return c_rows.put(gm, at.reshape(-1), new.reshape(-1, g))


def _store_rows(group: StoreGroup, p: jax.Array, gm: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    """Pass ``p`` >= P of one group's stores: its one AIC's tile row after row, each row re-read
    and written as one window of N columns (its rows may overlap one another)."""
    c_rows, d, e, ps = group.c_rows, group.d, group.e, group.ps
    mm_, nn = group.dims.m, group.dims.n
    ci = jnp.argmax(ps == p)
    live = e[ci] & (jnp.arange(mm_) < d["m"][ci]) & (ps[ci] == p)
    at = jnp.where(live, c_rows.starts(d["c_addr"][ci], mm_, d["stride_c"][ci]), c_rows.scratch)

    def row(r, gm):
        old = c_rows.read(gm, at[r][None], nn)
        return c_rows.put(gm, at[r][None], _merged(group, old, group.c[ci][r][None], ci, live[r][None]))

    return jax.lax.fori_loop(0, mm_, row, gm)


class _CRows(NamedTuple):
    """Where one lane's C tiles of one Matmul type go in ``State.gm``. ``starts(addr, rows,
    stride)``: the rows' start indices [rows]; ``scratch``: the first index of the margin after
    the tensors, which holds a whole row window (rows not written go there); ``read(gm, starts,
    width)`` and ``put(gm, starts, rows)`` act on the ``State.gm`` tuple. GM as bytes: byte
    indices, bit casts; typed banks: element indices in the written bank of C's type."""

    starts: Any
    scratch: int
    read: Any
    put: Any
    bytes: bool  # GM as bytes (indices are bytes), else a typed bank (indices are elements)


def _c_rows(shape: EngineShape, mt: MatmulType) -> _CRows | None:
    """:class:`_CRows` of this Matmul type; None when no written bank has C's type."""
    dtype = mt.dtype("c")
    if shape.banks is None:
        pos, scratch = 0, shape.gm_real

        def starts(addr, rows, stride):
            return row_starts(addr, rows, stride, dtype.itemsize)

        def read(gm, at, width):
            return load_rows(gm[pos], at, width, dtype)

        write = store_rows

    else:
        bk = shape.banks
        mine = [k for k in bk.of_dtype(dtype) if bk.writable[k]]
        if not mine:
            return None
        k = mine[0]  # one bank per (type, written)
        pos, scratch = bk.rw.index(k), bk.scratch(k)

        def starts(addr, rows, stride):
            return banks.element(bk, k, addr)[0] + jnp.arange(rows, dtype=jnp.int32) * stride

        def read(gm, at, width):
            return load_windows(gm[pos], at, width)

        write = store_windows

    def put(gm, at, value):
        return (*gm[:pos], write(gm[pos], at, value), *gm[pos + 1 :])

    return _CRows(starts, scratch, read, put, shape.banks is None)


def _operands(
    shape: EngineShape,
    mt: MatmulType,
    dims: MatmulDims,
    ro: tuple[jax.Array, ...],
    gm: tuple[jax.Array, ...],
    d: dict[str, jax.Array],
):
    """One descriptor's A [Mt, Kp], B [Kp, Nt] and bias [Nt] (masked, zero padded), each read as
    whole stored rows (:func:`ascend_jax.gm.load_rows`, or :func:`ascend_jax.cube_group.engine.banks.load`
    from typed banks); ``dims``: the group's tile bound (Mt, Nt, Kp) and operand layouts."""
    mm_, nn, kp, a_layout, b_layout = dims.m, dims.n, dims.kp, dims.a_layout, dims.b_layout
    m, n, k = d["m"], d["n"], d["k"]

    def rows_at(addr, n_rows, stride, width, dtype):
        if shape.banks is None:
            return load_rows(gm[0], row_starts(addr, n_rows, stride, dtype.itemsize), width, dtype)
        return banks.load(shape.banks, ro, gm, addr, n_rows, stride, width, dtype)

    def tile(addr, rows, cols, stride, trans, dtype, layout):
        if layout != "trans":
            plain = rows_at(addr, rows, stride, cols, dtype)
        if layout != "plain":
            flipped = rows_at(addr, cols, stride, rows, dtype).T
        if layout == "both":
            return jnp.where(trans, flipped, plain)
        return plain if layout == "plain" else flipped

    a = tile(d["a_addr"], mm_, kp, d["stride_a"], d["trans_a"], mt.dtype("a"), a_layout)
    a = jnp.where((jnp.arange(mm_)[:, None] < m) & (jnp.arange(kp)[None, :] < k), a, 0)
    b = tile(d["b_addr"], kp, nn, d["stride_b"], d["trans_b"], mt.dtype("b"), b_layout)
    b = jnp.where((jnp.arange(kp)[:, None] < k) & (jnp.arange(nn)[None, :] < n), b, 0)
    bias = rows_at(d["bias_addr"], 1, jnp.int32(0), nn, mt.dtype("bias"))[0]
    bias = jnp.where((jnp.arange(nn) < n) & d["has_bias"], bias, 0)
    return a, b, bias


def count_dot_generals(jaxpr) -> int:
    """Number of ``dot_general`` equations in a jaxpr, sub-jaxprs included (for the docs and tests)."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)  # ClosedJaxpr -> Jaxpr
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            total += 1
        for v in eqn.params.values():
            for sub in v if isinstance(v, (list, tuple)) else [v]:
                if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
                    total += count_dot_generals(sub)
    return total


# -- AIV vector ops ----------------------------------------------------------------------------
# Op kinds come from the table ascend_jax.cube_group.vector.KINDS (codes, patterns, JAX semantics);
# UB dtype codes of UB_DTYPES. Each AIV's UB is one flat float32 array (``State.ub`` [B, V, U]) in
# which every buffer lies at its own size (offset and row stride in the op words); an op reads and
# writes windows of E elements (``EngineShape.ub``): element k of the region it writes is row
# k // w, column k % w (w its cols, 1 for a reduction). With ``EngineShape.ub_flat`` every region
# is consecutive in its buffers and in GM, and windows are slices; else they are gathers / scatters.
_F16, _BF16, _F32 = (UB_DTYPES.index(t) for t in ("float16", "bfloat16", "float32"))


def apply_vector_ops(
    shape: EngineShape,
    ro: tuple[jax.Array, ...],
    gm: tuple[jax.Array, ...],
    ub: jax.Array,
    en: jax.Array,
    words: jax.Array,
):
    """Performs the vector ops the AIVs performed this step, before the step's matmuls are written.

    ``gm``: the written GM (``State.gm``, lane-major): ``([B, G] uint8,)`` the bytes, or with typed
    banks (:attr:`EngineShape.banks`) the written banks ``[B, n_k]``; ``ro``: the read-only banks
    (``()`` as bytes; shared ``[n_k]`` or ``[B, n_k]`` per lane). ``ub`` [B, V, U] float32
    (lane-major), ``en`` [V, B] which AIVs ran a vector op, ``words`` [V, N_VEC, B] its
    :data:`ascend_jax.cube_group.engine.encode.VEC` row. Returns the new (gm, ub).

    Order (the reference's, ``ReferenceInterpreter.step``): the AIVs act in block_idx order, so a
    store is visible to a later AIV's load in the same step. Compute ops touch only their own AIV's
    UB, so they run for every AIV at once (vectorised over AIVs and lanes); GM copies run in a
    ``fori_loop`` over the AIVs (each vectorised over lanes, skipped when no lane's AIV copies),
    which keeps that order exactly, atomic stores included.
    """
    w = jnp.moveaxis(words, -1, 0)  # [B, V, N_VEC]
    e = en.T  # [B, V]
    copy = kind_in(w[..., VEC["kind"]], [k for k in _used(shape) if k.is_copy])
    is_copy = e & copy
    is_compute = e & ~copy
    ub = jax.lax.cond(is_compute.any(), lambda u: _compute_ops(shape, u, is_compute, w), lambda u: u, ub)
    if not shape.vec_kinds or not any(k.is_copy for k in _used(shape)):
        return gm, ub
    # An AIV performs one op per step, so a store's UB window is as it was after the compute ops:
    # read every store's source window at once. The loop over AIVs (block_idx order) then carries
    # only GM and the values each load read; the loaded windows are written to the UB at the end.
    reg = jax.vmap(jax.vmap(lambda w, e: _region(shape, w[VEC["rows"]], w[VEC["cols"]], e)))(w, is_copy)
    read = functools.partial(_read, shape)
    src = jax.vmap(jax.vmap(lambda u, w, r: read(u, w[VEC["off_src0"]], w[VEC["ld_src0"]], r)))(ub, w, reg)
    lane_copy = _vector_copy if shape.banks is None else _vector_copy_banks
    # over lanes; shared read-only banks have no lane axis
    copy_one = jax.vmap(functools.partial(lane_copy, shape), in_axes=(None if shape.shared else 0, 0, 0, 0, 0, 0))

    def one_aiv(v, carry):
        gm, loaded = carry

        def run(c):
            gm, loaded = c
            at = functools.partial(jax.lax.dynamic_index_in_dim, index=v, axis=1, keepdims=False)
            gm, old = copy_one(ro, gm, at(is_copy), at(w), at(src), jax.tree.map(at, reg))
            return gm, jax.lax.dynamic_update_index_in_dim(loaded, old, v, axis=1)

        return jax.lax.cond(is_copy[:, v].any(), run, lambda c: c, (gm, loaded))

    loaded = jnp.zeros((*e.shape, shape.ub[1]), jnp.float32)
    gm, loaded = jax.lax.fori_loop(0, e.shape[1], one_aiv, (gm, loaded))
    loads = is_copy & (w[..., VEC["kind"]] == KIND["load"].code)

    def put(u, w, r, value, on):  # a load's window into its AIV's UB
        return _write(shape, u, w[VEC["off_dst"]], w[VEC["ld_dst"]], r._replace(live=r.live & on), value)

    ub = jax.lax.cond(loads.any(), lambda u: jax.vmap(jax.vmap(put))(u, w, reg, loaded, loads), lambda u: u, ub)
    return gm, ub


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
    """Every AIV's compute op in every lane, all at once: ``ub`` [B, V, U], ``en`` [B, V], ``w``
    [B, V, N_VEC]. Row reductions (a gather of their region and numpy's pairwise sum) are computed
    only in a step where some AIV reduces: computed in every step they made up most of the
    compute phase."""
    reduce = [k for k in _used(shape) if k.pattern == "reduce"]
    red = jnp.zeros((*en.shape, shape.ub[1]), jnp.float32)
    if reduce:  # only in a step where some AIV reduces: the rows x cols gather and the sums are costly
        red = jax.lax.cond(
            (en & kind_in(w[..., VEC["kind"]], reduce)).any(),
            lambda: jax.vmap(jax.vmap(functools.partial(_reduction, shape)))(ub, w),
            lambda: red,
        )
    return jax.vmap(jax.vmap(functools.partial(_vector_compute, shape)))(ub, en, w, red)


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


def _read(shape: EngineShape, ub: jax.Array, off: jax.Array, ld: jax.Array, reg: _Region) -> jax.Array:
    """[E] the region's elements of the buffer at ``off`` with row stride ``ld`` in one AIV's ``ub``
    [U]; outside the region, whatever lies there."""
    if shape.ub_flat:
        return jax.lax.dynamic_slice(ub, (off,), (shape.ub[1],))
    return ub[jnp.clip(off + reg.r * ld + reg.c, 0, ub.shape[0] - 1)]


def _write(shape: EngineShape, ub: jax.Array, off: jax.Array, ld: jax.Array, reg: _Region, value: jax.Array):
    """``ub`` [U] with the live elements of ``value`` [E] written into the buffer at ``off``."""
    if shape.ub_flat:
        old = jax.lax.dynamic_slice(ub, (off,), (shape.ub[1],))
        return jax.lax.dynamic_update_slice(ub, jnp.where(reg.live, value, old), (off,))
    return ub.at[jnp.where(reg.live, off + reg.r * ld + reg.c, ub.shape[0])].set(value, mode="drop")


def _reduction(shape: EngineShape, ub: jax.Array, w: jax.Array) -> jax.Array:
    """One AIV's row reduction in one lane (``ub`` [U], ``w`` [N_VEC]): its ``rows x cols`` region
    gathered as [Rr, Cr], reduced per row by the kind's JAX semantics, in the first rows of an [E]
    window (the values written to the destination's column)."""
    kind, cols = w[VEC["kind"]], w[VEC["cols"]]
    rr, cr = shape.ub[2], shape.ub[3]
    at = w[VEC["off_src0"]] + jnp.arange(rr)[:, None] * w[VEC["ld_src0"]] + jnp.arange(cr)[None, :]
    x2 = ub[jnp.clip(at, 0, ub.shape[0] - 1)]
    s = jax.lax.bitcast_convert_type(w[VEC["scalar"]], jnp.float32)
    out = jnp.zeros(rr, jnp.float32)
    for fn, kinds in semantics(k for k in _used(shape) if k.pattern == "reduce"):
        out = jnp.where(kind_in(kind, kinds), fn(jnp, x2, None, s, jnp.broadcast_to(cols, (rr,))), out)
    return jnp.concatenate([out, jnp.zeros(shape.ub[1] - rr, out.dtype)])


def _vector_compute(shape: EngineShape, ub: jax.Array, en: jax.Array, w: jax.Array, red: jax.Array) -> jax.Array:
    """One AIV's compute op (no GM copy) in one lane: ``ub`` [U], ``en`` [], ``w`` [N_VEC], ``red``
    [E] its row reduction if it is one (:func:`_reduction`). Returns the new ``ub``. The result is
    computed in float32 and rounded once to its buffer's type (the reference's ``VectorUnit.run``)."""
    used = [k for k in _used(shape) if not k.is_copy]
    kind, dtype = w[VEC["kind"]], w[VEC["dtype"]]
    rows, cols = w[VEC["rows"]], w[VEC["cols"]]

    def pattern(*names):
        return kind_in(kind, [k for k in used if k.pattern in names])

    def uses(*names):
        return any(k.pattern in names for k in used)

    reg = _region(shape, rows, jnp.where(pattern("reduce"), 1, cols), en)
    x = _read(shape, ub, w[VEC["off_src0"]], w[VEC["ld_src0"]], reg)
    s = jax.lax.bitcast_convert_type(w[VEC["scalar"]], jnp.float32)
    b = jnp.broadcast_to(s, x.shape)  # the second operand: the scalar, a tile or the row's value
    if uses("binary", "select"):
        b = jnp.where(pattern("binary", "select"), _read(shape, ub, w[VEC["off_src1"]], w[VEC["ld_src1"]], reg), b)
    if uses("broadcast"):
        column = ub[jnp.clip(w[VEC["off_src1"]] + reg.r * w[VEC["ld_src1"]], 0, ub.shape[0] - 1)]
        b = jnp.where(pattern("broadcast"), column, b)
    res = x  # cast: the source value, rounded below
    for fn, kinds in semantics(k for k in used if k.pattern != "reduce"):
        value = fn(jnp, x, b, s, None)
        if value is not x:  # the identity (cast) is already the default
            res = jnp.where(kind_in(kind, kinds), value, res)
    if uses("reduce"):
        res = jnp.where(pattern("reduce"), red, res)
    return _write(shape, ub, w[VEC["off_dst"]], w[VEC["ld_dst"]], reg, _round(res, dtype))


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
) -> tuple[tuple[jax.Array, ...], jax.Array]:
    """:func:`_vector_copy` on typed banks (:attr:`EngineShape.banks`): ``ro`` one lane's read-only
    banks, ``gm`` its written ones. The plan (:func:`ascend_jax.cube_group.engine.banks.plan`)
    admits banks only when every copy's tile lies in a tensor of the copy's UB type at a whole
    element, so the copy reads (and a store writes) the bank of that type that holds its address:
    element k of the region at element ``first + r * stride + c`` (a slice of E elements with flat
    windows: banks end in a margin of the widest window). Values convert exactly between the
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
        first, hit = banks.element(bk, k, addr)
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

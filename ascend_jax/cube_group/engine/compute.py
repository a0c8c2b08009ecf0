"""The matmul phase of a step: every matmul action the AICs performed this step, on GM.

Order within a step (documented semantics, the reference interpreter does the same):

1. every matmul of the step loads its A, B and bias tiles from GM as it was at the start of the
   compute phase (so two AICs of one step never see each other's results);
2. the cube compute runs as padded, masked batched dots (``dot_general``) per Matmul type (per
   group with a matmul config), one per ``baseK`` chunk of K, over the group's AICs;
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

import ascend_jax.cube_group.engine.banks as banks
from ascend_jax.cube_group.engine.encode import MatmulDims
from ascend_jax.cube_group.engine.shape import EngineShape
from ascend_jax.cube_group.matmul import MatmulType, check_operands, combine, compute_tiles, descriptor, empty_tile
from ascend_jax.gm import load_rows, load_windows, row_starts, store_rows, store_windows


def matmul_requests(
    shape: EngineShape, bounds: jax.Array, en: jax.Array, fields: jax.Array
) -> tuple[list, jax.Array, jax.Array]:
    """One lane's matmul requests of a step: ``bounds`` [T, 2] int32 every GM tensor's first and
    end byte address (``Tables.gm_tensors``), ``en`` [C] bool, ``fields`` [C, A] int32 action
    words. Returns, per group with a Matmul (in :func:`matmul_groups` order), ``(d, e)``: the
    descriptor words (each [P]) and [P] whether the AIC writes a tile; then [C] whether each
    AIC's matmul lies outside GM (then nothing is written) and [C] the first address out of
    range. Cheap (descriptor words only): the engine decides from it how to store."""
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


def batch_tiles(
    shape: EngineShape, table: jax.Array, ro: tuple[jax.Array, ...], gm: tuple[jax.Array, ...], reqs: list
) -> list:
    """The C tiles of every lane's requests (:func:`matmul_requests`) from its GM: ``ro`` the
    read-only typed banks (shared, or lane-major as :attr:`EngineShape.shared` says), ``gm`` the
    written ones (``State.gm``, lane-major; as bytes ``ro = ()`` and ``gm = ([B, G] uint8,)``),
    ``table`` ``Tables.gm_tensors`` [T, 4] (where the tensors lie in the banks). Returns, per
    group, C tiles [B, P, M, N]. A group with tile variants (:attr:`MatmulDims.variants`; used
    from :data:`VARIANTS_FROM` multiply-adds a step) runs the step at the first (smallest) one that
    every live tile of every lane fits (n and k within it, its transposes), else at its bound:
    one ``lax.switch`` on a batch-wide index, so only the chosen shape's loads and dot run. The
    columns past the variant's n come back as zeros (the stores write only a tile's own n)."""
    out = []
    ro_axis = None if shape.shared else 0
    for (gi, mt, dims), (d, e) in zip(matmul_groups(shape), reqs, strict=True):
        tiling = shape.matmuls[gi][1]
        at = _operand_places(shape, mt, table, d)  # once, shared by the variants' branches

        def run(dv, mt=mt, dims=dims, tiling=tiling, d=d, at=at):
            def lane(ro, gm, d, at):
                a, b, bias = jax.vmap(lambda di, ai: _operands(shape, mt, dv, table, ro, gm, di, ai))(d, at)
                scale = jax.lax.bitcast_convert_type(d["quant_scale"], jnp.float32) if mt.dequant else None
                return compute_tiles(mt, tiling, a, b, bias, scale)

            tiles = jax.vmap(lane, in_axes=(ro_axis, 0, 0, 0))(ro, gm, d, at)
            return jnp.pad(tiles, ((0, 0), (0, 0), (0, 0), (0, dims.n - dv.n)))

        if not dims.variants or e.size * dims.m * dims.n * dims.kp < VARIANTS_FROM:
            out.append(run(dims))  # small tiles: the variants' compile time would outweigh them
            continue
        shapes = [dims._replace(n=n, kp=kp, a_layout=la, b_layout=lb) for n, kp, la, lb in dims.variants]
        index = jnp.int32(len(shapes))  # the bound
        for i in reversed(range(len(shapes))):  # the first that fits wins
            index = jnp.where(_fits(shapes[i], d, e), i, index)
        out.append(jax.lax.switch(index, [functools.partial(run, dv) for dv in (*shapes, dims)]))
    return out


#: multiply-adds of a step's padded dot (lanes x AICs x M x N x K) from which tile variants are
#: compiled (each is one more branch of loads and a dot)
VARIANTS_FROM = 1 << 25


def _fits(dv: MatmulDims, d: dict[str, jax.Array], e: jax.Array) -> jax.Array:
    """Whether every live tile (``e`` [B, P]; descriptor words ``d`` [B, P] each) fits the tile
    shape ``dv``: n and k within it, and A and B in its layouts. A scalar over the batch."""
    ok = (d["n"] <= dv.n) & (d["k"] <= dv.kp)
    for flag, layout in (("trans_a", dv.a_layout), ("trans_b", dv.b_layout)):
        if layout != "both":
            ok &= (d[flag] != 0) == (layout == "trans")
    return (ok | ~e).all()


def matmul_groups(shape: EngineShape) -> list[tuple[int, MatmulType, MatmulDims]]:
    """(group index, Matmul type, tile dims) of each group with a Matmul, in creation order: the
    order of the per-group lists of :func:`matmul_requests` and :func:`batch_tiles`, and of the
    writes."""
    cfgs = shape.matmuls or (None,) * len(shape.groups)
    return [(gi, cfg[0], cfg[2]) for gi, cfg in enumerate(cfgs) if cfg is not None]


def store_passes(shape: EngineShape, table: jax.Array, key: jax.Array, reqs: list) -> list:
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
        c_rows = _c_rows(shape, mt, table)
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
    shape: EngineShape,
    table: jax.Array,
    gm: tuple[jax.Array, ...],
    reqs: list,
    tiles: list,
    passes: list,
    plans: list,
    n_passes: list,
    n_writes: list,
) -> tuple[jax.Array, ...]:
    """Writes one lane's C tiles of a step (``reqs`` from :func:`matmul_requests`, ``tiles`` from
    :func:`batch_tiles`) to its written GM ``gm``, in ``passes`` (:func:`store_passes`): the
    tiles of each pass below P in writes of at most :func:`pass_width` tiles (one gather and one
    scatter of their chunks; a pass's tiles are disjoint, so it may be split), each pass from P on
    one tile written row after row, each row re-read. ``plans``: per group, the lane's
    :class:`PassPlan`; ``n_passes``: per group, one past the last pass to run; ``n_writes``: per
    group, the most writes of passes below P a lane needs; both int32 scalars, the same for every
    lane so that the loops are not batched."""
    for (_, mt, dims), (d, e), c, ps, plan, n, nw in zip(
        matmul_groups(shape), reqs, tiles, passes, plans, n_passes, n_writes, strict=True
    ):
        c_rows = _c_rows(shape, mt, table)
        if c_rows is not None:  # else no tensor of C's type is written: every such tile is out of range
            group = StoreGroup(mt, dims, c_rows, d, e, c, ps, plan)
            n_aic = e.shape[0]
            gm = jax.lax.fori_loop(0, nw, functools.partial(_store_pass, group), gm)
            if not dims.rows_disjoint:
                gm = jax.lax.fori_loop(n_aic, jnp.maximum(n, n_aic), functools.partial(_store_rows, group), gm)
    return gm


#: Most tiles one write of a store pass holds (:func:`store_tiles`). A write gathers and scatters
#: this many whole tiles, live or not: in the attention backward (24 AICs) passes hold 1, 3, 8 or
#: 24 tiles, and writing every AIC's slot in every pass moved 4.6 times the live tiles.
PASS_WIDTH = 4


def pass_width(n_aic: int) -> int:
    """Tiles per write of a store pass for a group of ``n_aic`` AICs."""
    return min(PASS_WIDTH, n_aic)


class PassPlan(NamedTuple):
    """One lane's store passes below P as writes (:func:`pass_plan`), each [P]."""

    pos: jax.Array  # each AIC's position in pass order (the row-by-row passes and idle AICs last)
    count: jax.Array  # tiles per pass
    first: jax.Array  # first position of each pass in that order
    writes: jax.Array  # writes per pass (count over pass_width, rounded up)
    done: jax.Array  # writes up to and including each pass


def pass_plan(ps: jax.Array, e: jax.Array) -> PassPlan:
    """:class:`PassPlan` of one lane's group: ``ps`` [P] each AIC's pass (:func:`store_passes`),
    ``e`` [P] which AICs store. Counts over [P, P] comparisons (a few fused reductions; a sort, a
    scatter and a cumulative sum were about 18 more kernels to compile)."""
    n_aic = e.shape[0]
    i = jnp.arange(n_aic)
    key = jnp.where(e & (ps < n_aic), ps, n_aic)
    before = (key[None, :] < key[:, None]) | ((key[None, :] == key[:, None]) & (i[None, :] < i[:, None]))
    count = (key[None, :] == i[:, None]).sum(axis=1, dtype=jnp.int32)
    writes = -(-count // pass_width(n_aic))
    upto = i[None, :] <= i[:, None]  # [p, q]: q <= p
    return PassPlan(
        pos=before.sum(axis=1, dtype=jnp.int32),
        count=count,
        first=jnp.where(upto, count[None, :], 0).sum(axis=1) - count,
        writes=writes,
        done=jnp.where(upto, writes[None, :], 0).sum(axis=1),
    )


class StoreGroup(NamedTuple):
    """One group's C tiles of a step in one lane, as :func:`_store_pass` writes them."""

    mt: MatmulType  # the group's Matmul type
    dims: MatmulDims  # its tile bound
    c_rows: _CRows  # where its C rows go in ``State.gm``
    d: dict[str, jax.Array]  # [P] each AIC's descriptor words (:func:`matmul_requests`)
    e: jax.Array  # [P] which AICs store a tile this step
    c: jax.Array  # [P, M, N] the tiles
    ps: jax.Array  # [P] the pass each AIC stores in (:func:`store_passes`)
    plan: PassPlan  # its passes below P as writes


def _merged(group: StoreGroup, old: jax.Array, tile: jax.Array, ci: jax.Array, live: jax.Array) -> jax.Array:
    """What rows [R, N] of AIC ``ci``'s C region become (``old`` what they hold, ``tile`` its
    rows, ``live`` [R] which are written)."""
    new = combine(group.mt, old, tile, group.d["atomic"][ci])
    cols = jnp.arange(group.dims.n) < group.d["n"][ci]
    return jnp.where(live[:, None] & cols[None, :], new, old)


def _store_pass(group: StoreGroup, t: jax.Array, gm: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    """Write ``t`` of one group's passes below P (see :func:`store_tiles`) into the written GM
    ``gm``: up to :func:`pass_width` tiles of one pass at once, each row as windows of
    :func:`chunk_width` columns (chunks past the tile's ``n``, rows not written and slots of no
    tile go to the scratch margin)."""
    c_rows, d, e = group.c_rows, group.d, group.e
    mm_, nn = group.dims.m, group.dims.n
    g = chunk_width(group.dims)
    n_chunks = nn // g
    u = group.mt.dtype("c").itemsize if c_rows.bytes else 1  # GM indices per element
    n_aic = e.shape[0]
    k = pass_width(n_aic)
    plan = group.plan
    p = (plan.done <= t).sum(dtype=jnp.int32)  # the pass this write belongs to (P: none)
    pc = jnp.minimum(p, n_aic - 1)
    j = (t - (plan.done[pc] - plan.writes[pc])) * k + jnp.arange(k)  # positions within the pass
    ok = (p < n_aic) & (j < plan.count[pc])
    sel = jnp.argmax(plan.pos[None, :] == (plan.first[pc] + j)[:, None], axis=1)  # [k] the AICs written

    def rows(ci, ok):  # one AIC's chunk starts [M, Ch] (not written: to scratch), live rows [M]
        live = ok & (jnp.arange(mm_) < d["m"][ci])
        j = jnp.arange(n_chunks, dtype=jnp.int32)
        at = c_rows.starts(d["c_addr"][ci], mm_, d["stride_c"][ci])[:, None] + j[None, :] * (g * u)
        keep = live[:, None] & (j * g < d["n"][ci])[None, :]
        return jnp.where(keep, at, c_rows.scratch), live

    at, live = jax.vmap(rows)(sel, ok)  # [k, M, Ch], [k, M]
    old = c_rows.read(gm, at.reshape(-1), g).reshape(k, mm_, nn)
    new = jax.vmap(functools.partial(_merged, group))(old, group.c[sel], sel, live)
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


def _c_rows(shape: EngineShape, mt: MatmulType, table: jax.Array) -> _CRows | None:
    """:class:`_CRows` of this Matmul type; None when no written bank has C's type. ``table``:
    ``Tables.gm_tensors`` [T, 4]."""
    dtype = mt.dtype("c")
    if shape.banks is None:
        pos, scratch = 0, shape.gm_data

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
            return banks.element(bk, k, addr, table)[0] + jnp.arange(rows, dtype=jnp.int32) * stride

        def read(gm, at, width):
            return load_windows(gm[pos], at, width)

        write = store_windows

    def put(gm, at, value):
        return (*gm[:pos], write(gm[pos], at, value), *gm[pos + 1 :])

    return _CRows(starts, scratch, read, put, shape.banks is None)


#: the operands a matmul loads: (descriptor word of the address, operand name of the element type)
OPERANDS = (("a_addr", "a"), ("b_addr", "b"), ("bias_addr", "bias"))


def _operand_places(shape: EngineShape, mt: MatmulType, table: jax.Array, d: dict[str, jax.Array]) -> dict:
    """Per operand address word, :func:`ascend_jax.cube_group.engine.banks.places` of every
    descriptor's address (each [B, P]); empty for GM as bytes. ``table``: ``Tables.gm_tensors``."""
    if shape.banks is None:
        return {}
    return {w: banks.places(shape.banks, d[w], mt.dtype(op), table) for w, op in OPERANDS}


def _operands(
    shape: EngineShape,
    mt: MatmulType,
    dims: MatmulDims,
    table: jax.Array,
    ro: tuple[jax.Array, ...],
    gm: tuple[jax.Array, ...],
    d: dict[str, jax.Array],
    at: dict,
):
    """One descriptor's A [Mt, Kp], B [Kp, Nt] and bias [Nt] (masked, zero padded), each read as
    whole stored rows (:func:`ascend_jax.gm.load_rows`, or :func:`ascend_jax.cube_group.engine.banks.load_at`
    from typed banks at ``at``, the descriptor's :func:`_operand_places`); ``dims``: the group's
    tile bound (Mt, Nt, Kp) and operand layouts."""
    mm_, nn, kp, a_layout, b_layout = dims.m, dims.n, dims.kp, dims.a_layout, dims.b_layout
    m, n, k = d["m"], d["n"], d["k"]

    def rows_at(word, n_rows, stride, width, dtype):
        if shape.banks is None:
            return load_rows(gm[0], row_starts(d[word], n_rows, stride, dtype.itemsize), width, dtype)
        return banks.load_at(shape.banks, ro, gm, at[word], n_rows, stride, width, dtype)

    def tile(word, rows, cols, stride, trans, dtype, layout):
        if layout != "trans":
            plain = rows_at(word, rows, stride, cols, dtype)
        if layout != "plain":
            flipped = rows_at(word, cols, stride, rows, dtype).T
        if layout == "both":
            return jnp.where(trans, flipped, plain)
        return plain if layout == "plain" else flipped

    a = tile("a_addr", mm_, kp, d["stride_a"], d["trans_a"], mt.dtype("a"), a_layout)
    a = jnp.where((jnp.arange(mm_)[:, None] < m) & (jnp.arange(kp)[None, :] < k), a, 0)
    b = tile("b_addr", kp, nn, d["stride_b"], d["trans_b"], mt.dtype("b"), b_layout)
    b = jnp.where((jnp.arange(kp)[:, None] < k) & (jnp.arange(nn)[None, :] < n), b, 0)
    bias = rows_at("bias_addr", 1, jnp.int32(0), nn, mt.dtype("bias"))[0]
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

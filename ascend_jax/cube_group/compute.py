"""The compute phase of a step: every matmul action the AICs performed this step, on GM.

Order within a step (documented semantics, the reference interpreter does the same):

1. every matmul of the step loads its A, B and bias tiles from GM as it was at the start of the
   compute phase (so two AICs of one step never see each other's results);
2. the cube compute runs as one padded, masked batched ``dot_general`` per Matmul type (per
   group with a matmul config), over the group's AICs;
3. results are written to GM one AIC after the other: groups in creation order, AICs in index
   order (``atomic_order="fixed"``), or in a random permutation drawn per lane and step
   (``atomic_order="random"``), so that a user can bound how much rounding depends on the
   arrival order of atomic accumulations.

Each action arrives as its :data:`ascend_jax.matmul.ACTION_FIELDS` words, already resolved
against the AIC's persistent Matmul state by the step. A matmul whose A, B, C or bias extent is
not inside one tensor (checked here, in int32 without overflow: :func:`ascend_jax.matmul.tile_inside`)
ends its AIC with ``GM_OUT_OF_RANGE`` (core, message and address in the result) and writes
nothing; an empty tile (an extent <= 0) reads and writes nothing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ascend_jax.cube_group.state import EngineShape
from ascend_jax.gm import GM_BASE, load_rows, row_starts, store_rows
from ascend_jax.matmul import MatmulType, check_operands, combine, compute_tiles, descriptor, empty_tile


def apply_matmuls(
    shape: EngineShape, gm: jax.Array, key: jax.Array, en: jax.Array, fields: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Performs one lane's matmul requests of a step: ``en`` [C] bool, ``fields`` [C, A] int32
    action words, on ``gm`` [G] uint8. Returns the new GM, [C] whether each AIC's matmul lies
    outside GM (then nothing is written) and [C] the first address out of range."""
    bounds = jnp.asarray(np.asarray(shape.gm_bounds, np.int32).reshape(-1, 2))
    d_all = descriptor(fields.T, jnp)  # each word [C]
    start = 0
    work, oks, bads = [], [], []
    for gi, g in enumerate(shape.groups):
        sl = slice(start, start + g.aic_num)
        start += g.aic_num
        cfg = shape.matmuls[gi] if shape.matmuls else None
        if cfg is None:
            oks.append(jnp.ones(g.aic_num, bool))
            bads.append(jnp.zeros(g.aic_num, jnp.int32))
            continue
        mt, tiling, dims = cfg
        d = {k: v[sl] for k, v in d_all.items()}
        ok, bad = check_operands(mt, bounds, d, jnp)
        oks.append(ok)
        bads.append(bad.astype(jnp.int32))
        a, b, bias = jax.vmap(lambda di, mt=mt, dims=dims: _operands(mt, dims, gm, di))(d)
        scale = jax.lax.bitcast_convert_type(d["quant_scale"], jnp.float32) if mt.dequant else None
        c = compute_tiles(mt, tiling, a, b, bias, scale)
        work.append((mt, dims, d, en[sl] & ok & ~empty_tile(d), c))
    ok_all, bad_addr = jnp.concatenate(oks), jnp.concatenate(bads)

    order_key = jax.random.fold_in(jax.random.wrap_key_data(key), 0x5EED)
    for gidx, (mt, dims, d, e, c) in enumerate(work):
        n_aic = e.shape[0]
        if shape.atomic_order == "random":
            order = jax.random.permutation(jax.random.fold_in(order_key, gidx), n_aic)
        else:
            order = jnp.arange(n_aic)
        mm_, nn, _, disjoint, _, _ = dims
        scratch = shape.gm_real - GM_BASE  # rows that are not written go to the scratch margin

        def write(i, gm, d=d, e=e, c=c, mt=mt, order=order, mm_=mm_, nn=nn, scratch=scratch, disjoint=disjoint):
            ci = order[i]
            size = mt.dtype("c").itemsize
            live = e[ci] & (jnp.arange(mm_) < d["m"][ci])
            starts = row_starts(d["c_addr"][ci], mm_, d["stride_c"][ci], size)
            starts = jnp.where(live, starts, scratch)
            old = load_rows(gm, starts, nn, mt.dtype("c"))
            new = combine(mt, old, c[ci], d["atomic"][ci])
            new = jnp.where(live[:, None] & (jnp.arange(nn)[None, :] < d["n"][ci]), new, old)
            if disjoint:  # no two rows' windows overlap: one scatter
                return store_rows(gm, starts, new)

            def row(r, gm, starts=starts, live=live, ci=ci):  # rows in order, each re-read
                cur = load_rows(gm, starts[r][None], nn, mt.dtype("c"))[0]
                val = combine(mt, cur, c[ci][r], d["atomic"][ci])
                val = jnp.where(jnp.arange(nn) < d["n"][ci], val, cur)
                return store_rows(gm, starts[r][None], val[None])  # a row not written: to scratch

            return jax.lax.fori_loop(0, mm_, row, gm)

        gm = jax.lax.fori_loop(0, n_aic, write, gm)

    return gm, en & ~ok_all, bad_addr


def _operands(mt: MatmulType, dims: tuple[int, int, int], gm: jax.Array, d: dict[str, jax.Array]):
    """One descriptor's A [Mt, Kp], B [Kp, Nt] and bias [Nt] (masked, zero padded), each read as
    whole stored rows (:func:`ascend_jax.gm.load_rows`); ``dims`` = (Mt, Nt, Kp)."""
    mm_, nn, kp, _, a_layout, b_layout = dims
    m, n, k = d["m"], d["n"], d["k"]

    def tile(addr, rows, cols, stride, trans, dtype, layout):
        size = dtype.itemsize
        if layout != "trans":
            plain = load_rows(gm, row_starts(addr, rows, stride, size), cols, dtype)
        if layout != "plain":
            flipped = load_rows(gm, row_starts(addr, cols, stride, size), rows, dtype).T
        if layout == "both":
            return jnp.where(trans, flipped, plain)
        return plain if layout == "plain" else flipped

    a = tile(d["a_addr"], mm_, kp, d["stride_a"], d["trans_a"], mt.dtype("a"), a_layout)
    a = jnp.where((jnp.arange(mm_)[:, None] < m) & (jnp.arange(kp)[None, :] < k), a, 0)
    b = tile(d["b_addr"], kp, nn, d["stride_b"], d["trans_b"], mt.dtype("b"), b_layout)
    b = jnp.where((jnp.arange(kp)[:, None] < k) & (jnp.arange(nn)[None, :] < n), b, 0)
    bias = load_rows(gm, row_starts(d["bias_addr"], 1, 0, 1), nn, mt.dtype("bias"))[0]
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

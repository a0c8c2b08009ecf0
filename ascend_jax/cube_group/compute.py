"""The compute phase of a step: every matmul action the AICs performed this step, on GM.

Order within a step (documented semantics, the reference interpreter does the same):

1. every matmul of the step loads its A, B and bias tiles from GM as it was at the start of the
   compute phase (so two AICs of one step never see each other's results);
2. the cube compute runs as one padded, masked batched ``dot_general`` per Matmul type (per
   group with a matmul config), over the group's AICs and, under ``vmap``, every batch lane;
3. results are written to GM one AIC after the other: groups in creation order, AICs in index
   order (``atomic_order="fixed"``), or in a random permutation drawn per lane and step
   (``atomic_order="random"``), so that a user can bound how much rounding depends on the
   arrival order of atomic accumulations.

A matmul whose A, B, C or bias extent is not inside one tensor (checked in int64 when the program
is encoded) ends the lane with ``GM_OUT_OF_RANGE`` (core, message and address in the result) and
writes nothing.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ascend_jax.cube_group.state import EngineShape
from ascend_jax.gm import element_offsets, load_tile, store_tile
from ascend_jax.matmul import D, combine, compute_tiles, gather_operands


def apply_matmuls(
    shape: EngineShape,
    act_desc: jax.Array,
    act_bad: jax.Array,
    gm: jax.Array,
    key: jax.Array,
    en: jax.Array,
    ver: jax.Array,
    pc: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Performs one lane's matmul requests of a step: ``en`` [C] bool, each AIC's action ``pc`` of
    version ``ver`` ([C] int32), with the lane's ``act_desc`` [N, F, D] and ``act_bad`` [N, F]
    tables (descriptors and GM bounds were settled at encode time), on ``gm`` [G] uint8.
    Returns the new GM and [C] whether each AIC's matmul lies outside GM (then nothing is written).
    """
    desc_all = act_desc[ver, pc]  # [C, D]
    bad_all = en & act_bad[ver, pc]
    start = 0
    work = []
    for gi, g in enumerate(shape.groups):
        sl = slice(start, start + g.aic_num)
        start += g.aic_num
        cfg = shape.matmuls[gi] if shape.matmuls else None
        if cfg is None:
            continue
        mt, tiling = cfg
        d, e = desc_all[sl], en[sl] & ~bad_all[sl]
        a, b, bias = jax.vmap(functools.partial(gather_operands, mt, tiling, gm))(d)
        c = compute_tiles(mt, tiling, a, b, bias)
        work.append((sl, mt, tiling, d, e, c))

    order_key = jax.random.fold_in(jax.random.wrap_key_data(key), 0x5EED)
    for gidx, (_, mt, tiling, d, e, c) in enumerate(work):
        n_aic = d.shape[0]
        if shape.atomic_order == "random":
            order = jax.random.permutation(jax.random.fold_in(order_key, gidx), n_aic)
        else:
            order = jnp.arange(n_aic)
        mm_, nn = tiling.singleCoreM, tiling.singleCoreN
        rows = jnp.arange(mm_)[:, None]
        cols = jnp.arange(nn)[None, :]

        def write(i, gm, d=d, e=e, c=c, mt=mt, order=order, rows=rows, cols=cols, mm_=mm_, nn=nn):
            ci = order[i]
            di = d[ci]
            valid = e[ci] & (rows < di[D["m"]]) & (cols < di[D["n"]])
            off = element_offsets(mm_, nn, di[D["stride_c"]], False)
            old = load_tile(gm, off, valid, di[D["c_addr"]], mt.dtype("c"))
            new = combine(mt, old, c[ci], di[D["atomic"]])
            return store_tile(gm, off, valid, di[D["c_addr"]], new)

        gm = jax.lax.fori_loop(0, n_aic, write, gm)

    return gm, bad_all


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

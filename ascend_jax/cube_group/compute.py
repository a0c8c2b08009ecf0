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

import dataclasses
import functools

import jax
import jax.numpy as jnp

from ascend_jax.cube_group.state import EngineShape, State, Tables
from ascend_jax.cube_group.status import ErrorCode, Status
from ascend_jax.gm import element_offsets, load_tile, store_tile
from ascend_jax.matmul import D, combine, compute_tiles, gather_operands


def apply_matmuls(shape: EngineShape, tab: Tables, st: State, en: jax.Array, ver: jax.Array, pc: jax.Array) -> State:
    """Performs one lane's matmul requests of a step: ``en`` [C] bool, each AIC's action ``pc`` of
    version ``ver`` ([C] int32). Descriptors and GM bounds were settled at encode time."""
    consts = shape.aic_constants()
    desc_all = tab.act_desc[ver, pc]  # [C, D]
    bad_all = en & tab.act_bad[ver, pc]
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
        a, b, bias = jax.vmap(functools.partial(gather_operands, mt, tiling, st.gm))(d)
        c = compute_tiles(mt, tiling, a, b, bias)
        work.append((sl, mt, tiling, d, e, c))

    gm = st.gm
    order_key = jax.random.fold_in(jax.random.wrap_key_data(st.key), 0x5EED)
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

    has_bad = bad_all.any() & (st.status != Status.ERROR)
    first = jnp.argmax(bad_all)
    cursor = jnp.asarray(consts["block"]) + st.aic_row * jnp.asarray(consts["p"]) + st.aic_col
    pick = lambda new, old: jnp.where(has_bad, new, old).astype(jnp.int32)  # noqa: E731
    return dataclasses.replace(
        st,
        gm=gm,
        status=pick(Status.ERROR, st.status),
        error_code=pick(ErrorCode.GM_OUT_OF_RANGE, st.error_code),
        error_aic=pick(first, st.error_aic),
        error_slot=pick(cursor[first], st.error_slot),
        error_ver=pick(ver[first], st.error_ver),
        error_pc=pick(pc[first], st.error_pc),
    )


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

"""The timed schedule's cost side of a step: when each core's next action can start, how long
it takes, and the queue-occupancy clock.

Under the ``timed`` schedule a step performs only the actions that start earliest (see
:func:`ascend_jax.cube_group.engine.step.step`); these functions give every core's start cycle and
duration from the state and the lane's cost vector (:mod:`ascend_jax.timing`). The reference
interpreter computes the same quantities with the same formulas: durations in float32, times and
sums as float32 pairs (:mod:`ascend_jax.cube_group.clock`; a delay's cycles are a pair too), so
that a step is one event whatever the time between events, and cycle counts stay exact.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ascend_jax.cube_group import clock
from ascend_jax.cube_group.callbacks import NO_WAIT
from ascend_jax.cube_group.engine.access import (
    D4,
    mm_fields,
    select_first,
    slot_pick,
    slot_read,
    vector_words,
)
from ascend_jax.cube_group.engine.encode import VEC
from ascend_jax.cube_group.engine.shape import EngineShape
from ascend_jax.cube_group.engine.state import ACT, AicHead, AivOps, State, Tables, packed_bytes
from ascend_jax.cube_group.engine.vector_ops import kind_in
from ascend_jax.cube_group.matmul import AF
from ascend_jax.cube_group.status import AicPhase, OpKind
from ascend_jax.cube_group.vector import KINDS
from ascend_jax.message import FAKE, FREE, QUIT
from ascend_jax.timing import C as TC


def aiv_times(shape: EngineShape, tab: Tables, cost: jax.Array, st: State, ops: AivOps):
    """Timed schedule: start cycle and duration of every AIV's next op (valid where ready), each a
    [V, B] float32 pair (:mod:`ascend_jax.cube_group.clock`)."""
    kind, x, a = ops.kind, ops.x, ops.a
    tm = st.timed
    nb = tm.barrier_time.shape[0]
    slot_t = tuple(slot_read(shape, w, x) for w in tm.pair("slot_time"))
    bar_sel = jnp.clip(a, 0, nb - 1)[:, None, :] == jnp.arange(nb)[None, :, None]
    bar_t = tuple(jnp.where(bar_sel, w[None], 0.0).sum(axis=1) for w in tm.pair("barrier_time"))  # one term
    last_aiv = clock.reduce_max(tm.pair("aiv_clock"), 0)
    last_core = clock.maximum(last_aiv, clock.reduce_max(tm.pair("aic_clock"), 0))
    sync_t = clock.where(a != 0, last_core, last_aiv)  # the all-core form also waits for the AICs
    conds = [
        kind == OpKind.ALLOC,
        (kind == OpKind.WAIT) & (a != 0),
        (kind == OpKind.ARRIVE) | (kind == OpKind.BWAIT),
        kind == OpKind.SYNC,
    ]
    enable = tuple(
        select_first(conds, [slot_t[i], slot_t[i], bar_t[i], jnp.broadcast_to(sync_t[i], a.shape)], 0.0) for i in (0, 1)
    )  # SyncAll: when the last core arrives
    start = clock.maximum(tm.pair("aiv_clock"), enable)
    c = cost[:, None, :]  # [12, 1, B]
    vec_dur = 0.0
    if shape.has_vector:  # each kind's cost function of the op table (vector.KINDS), as vector_cycles
        w = vector_words(shape, tab, a)
        nbytes = w[:, VEC["bytes"]].astype(jnp.float32)
        rates = tuple(c[TC[k]] for k in ("vec_issue", "ddr_rate", "vec_rate"))
        by_cost: dict = {}
        for k in KINDS:
            by_cost.setdefault(k.cycles, []).append(k)
        for fn, kinds in by_cost.items():
            vec_dur = jnp.where(kind_in(w[:, VEC["kind"]], kinds), fn(jnp, nbytes, *rates), vec_dur)
    delay = clock.of_int32(a, jnp)  # exact cycles, also past 2**24
    dur = select_first(
        [
            kind == OpKind.VECTOR,
            kind == OpKind.ALLOC,
            (kind == OpKind.WRITE) & (a == FAKE),
            (kind == OpKind.WRITE) & (a == QUIT),
            kind == OpKind.WRITE,
            kind == OpKind.WAIT,
            kind == OpKind.DELAY,
            (kind == OpKind.ARRIVE) | (kind == OpKind.BWAIT) | (kind == OpKind.SYNC),
        ],
        [vec_dur, c[TC["alloc"]], c[TC["fake"]], c[TC["quit"]], c[TC["post"]], c[TC["wait"]],
         delay[0], c[TC["barrier"]]],
        0.0,
    )  # fmt: skip
    dur = jnp.broadcast_to(dur, a.shape).astype(jnp.float32)
    return start, (dur, jnp.where(kind == OpKind.DELAY, delay[1], 0.0))


def mm_cost(shape: EngineShape, fields: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[C, B] float32 cube fractals and GM bytes of each AIC's IterateAll (the timed schedule's
    matmul cost; the reference's ``_mm_cycles`` computes the same in float32)."""
    consts = shape.aic_constants()
    per = []
    for gi in consts["group"].tolist():
        mt = shape.matmuls[gi][0] if shape.matmuls[gi] is not None else None
        sizes = (1, 1, 1) if mt is None else tuple(mt.dtype(x).itemsize for x in ("a", "b", "c"))
        per.append((32 if mt is not None and mt.a == "int8" else 16, *sizes))
    k0, sa, sb, sc = (jnp.asarray(np.array(col, np.float32))[:, None] for col in zip(*per, strict=True))
    m, n, k = (jnp.maximum(fields[:, AF[x]], 0).astype(jnp.float32) for x in ("single_m", "single_n", "single_k"))
    sixteen = jnp.float32(16)
    fractals = jnp.ceil(m / sixteen) * jnp.ceil(n / sixteen) * jnp.ceil(k / k0)
    traffic = m * k * sa + k * n * sb + m * n * sc
    return fractals, traffic


def aic_times(shape: EngineShape, tab: Tables, cost: jax.Array, st: State, head: AicHead):
    """Timed schedule: start cycle and duration of every AIC's next action on ``st``, each a [C, B]
    float32 pair (:mod:`ascend_jax.cube_group.clock`)."""
    cur, cur_word, pc, act, f_slot = head.cur, head.cur_word, head.pc, head.act, head.f_slot
    f_wait, f_is_mm = act[:, ACT["wait"]], act[:, ACT["mm"]] > 0
    tm = st.timed
    in_recv = st.aic_phase == AicPhase.RECEIVE
    no_slot = f_is_mm | (f_wait == NO_WAIT)
    enable = tuple(
        jnp.where(in_recv, slot_pick(shape, w, cur), jnp.where(no_slot, 0.0, slot_pick(shape, w, f_slot)))
        for w in tm.pair("slot_time")
    )
    start = clock.maximum(tm.pair("aic_clock"), enable)
    c = cost[:, None, :]
    recv_dur = jnp.where((cur_word & 0xFF) == QUIT, c[TC["poll"]], c[TC["dispatch"]])
    if shape.has_matmul:
        fields = mm_fields(shape, tab, st.mm_state, st.aic_ver, pc)
        fr, tr = mm_cost(shape, fields)
        call_dur = jnp.where(f_is_mm, c[TC["mm_overhead"]] + fr + tr / c[TC["ddr_rate"]], c[TC["free"]])
    else:
        call_dur = jnp.broadcast_to(c[TC["free"]], pc.shape)
    dur = jnp.where(in_recv, recv_dur, call_dur)
    return start, (dur, jnp.zeros_like(dur))


def occupancy(shape: EngineShape, st: State, tmin: tuple[jax.Array, jax.Array]) -> State:
    """Adds the time since the last event to each queue row's occupancy level (0..4 non-FREE);
    ``tmin``: the [B] pair of this step's event time (high word +inf where no core can act)."""
    tm = st.timed
    states = (packed_bytes(st.slot) & 3) if shape.packed else st.slot & 0xFF
    busy = (states != FREE).sum(axis=2)  # [C, W, B]
    level = busy.reshape(-1, busy.shape[-1])
    finite = jnp.isfinite(tmin[0])
    zero = (jnp.zeros_like(tmin[0]), jnp.zeros_like(tmin[0]))
    dt = clock.where(finite, clock.maximum(clock.sub(tmin, tm.pair("t_now")), zero), zero)
    sel = level[:, None, :] == jnp.arange(D4 + 1)[None, :, None]
    occ = clock.add(tm.pair("occ_cycles"), tuple(jnp.where(sel, w[None, None, :], 0.0) for w in dt))
    t_now = clock.where(finite, clock.maximum(tmin, tm.pair("t_now")), tm.pair("t_now"))
    return dataclasses.replace(st, timed=tm.put(occ_cycles=occ, t_now=t_now))

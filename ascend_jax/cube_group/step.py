"""One engine step for one lane: every enabled AIV acts, then every enabled AIC acts.

Both kernels are written for a single instance and vectorised over cores with masks and
``jnp.where`` (no ``lax.cond`` / ``lax.switch``); batching happens at the edge with ``vmap``.
Blocking calls are predicates evaluated once per step on the state at the start of the phase.
Writes are scatters with out-of-range indices dropped for masked-off cores.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ascend_jax.cube_group.callbacks import NO_WAIT, AicHandle, MsgView
from ascend_jax.cube_group.state import EngineShape, State, Tables
from ascend_jax.cube_group.status import AicPhase, ErrorCode, OpKind, Status
from ascend_jax.matmul import N_DESC, Matmul, _NoMatmul, shape_error
from ascend_jax.matmul import D as DM
from ascend_jax.message import MAX_MSG_PER_AIV, CubeMsgState
from ascend_jax.timing import C as TC

FREE, VALID, QUIT, FAKE = (int(s) for s in CubeMsgState)


def _chosen(shape: EngineShape, key: jax.Array, n: int) -> jax.Array:
    """Which enabled cores act: all of them (lockstep) or each with probability 1/2 (random)."""
    if shape.schedule == "lockstep":
        return jnp.ones(n, bool)
    return jax.random.bernoulli(key, 0.5, (n,))


def _aiv_head(tab: Tables, st: State):
    """Each AIV's next op: (pc, kind, slot, a, b, c), all [V] (pc clamped for finished AIVs)."""
    rows = jnp.arange(tab.op_len.shape[0])
    pc = jnp.minimum(st.aiv_pc, tab.op_kind.shape[1] - 1)
    return pc, tab.op_kind[rows, pc], tab.op_slot[rows, pc], tab.op_a[rows, pc], tab.op_b[rows, pc], tab.op_c[rows, pc]


def _aiv_times(shape: EngineShape, tab: Tables, st: State):
    """Timed schedule: [V] start cycle and duration of every AIV's next op (valid where ready)."""
    _, kind, slot, a, _, _ = _aiv_head(tab, st)
    nb = st.barrier_arrive.shape[0]
    bar = jnp.clip(a, 0, nb - 1)
    cost = tab.cost
    enable = jnp.select(
        [kind == OpKind.ALLOC, (kind == OpKind.WAIT) & (a != 0), (kind == OpKind.ARRIVE) | (kind == OpKind.BWAIT)],
        [st.slot_time[slot], st.slot_time[slot], st.barrier_time[bar]],
        0.0,
    )
    start = jnp.maximum(st.aiv_clock, enable)
    dur = jnp.select(
        [
            kind == OpKind.ALLOC,
            (kind == OpKind.WRITE) & (a == FAKE),
            (kind == OpKind.WRITE) & (a == QUIT),
            kind == OpKind.WRITE,
            kind == OpKind.WAIT,
            kind == OpKind.DELAY,
            (kind == OpKind.ARRIVE) | (kind == OpKind.BWAIT),
        ],
        [cost[TC["alloc"]], cost[TC["fake"]], cost[TC["quit"]], cost[TC["post"]], cost[TC["wait"]],
         a.astype(jnp.float32), cost[TC["barrier"]]],
        0.0,
    )  # fmt: skip
    return start, dur


def aiv_ready(shape: EngineShape, tab: Tables, st: State) -> jax.Array:
    """[V] whether each AIV's next op is enabled on ``st``."""
    active = st.aiv_pc < tab.op_len
    _, kind, slot, a, b, c = _aiv_head(tab, st)
    slot_free = st.slot_state[slot] == FREE
    nb, ncopy = st.barrier_arrive.shape
    bar = jnp.clip(a, 0, nb - 1)
    idx = jnp.clip(b, 0, ncopy - 1)
    return active & jnp.select(
        [kind == OpKind.ALLOC, kind == OpKind.WAIT, kind == OpKind.ARRIVE, kind == OpKind.BWAIT],
        [slot_free, (a == 0) | slot_free, (c < 0) | (st.barrier_wait[bar, idx] == c), st.barrier_arrive[bar, idx] >= c],
        True,
    )


def aiv_step(
    shape: EngineShape, tab: Tables, st: State, key: jax.Array, tmin: jax.Array | None = None
) -> tuple[State, jax.Array]:
    """Every AIV whose next op is enabled performs it (timed schedule: those starting at ``tmin``).
    Returns the new state and [V] enabled."""
    v = tab.op_len.shape[0]
    n_slots = shape.num_slots
    rows = jnp.arange(v)
    pc, kind, slot, a, b, c = _aiv_head(tab, st)
    slot_free = st.slot_state[slot] == FREE
    nb, ncopy = st.barrier_arrive.shape
    bar = jnp.clip(a, 0, nb - 1)
    ready = aiv_ready(shape, tab, st)
    is_delay = kind == OpKind.DELAY
    timed = shape.schedule == "timed"
    if timed:  # a delay is one action of `cycles` cycles
        start, dur = _aiv_times(shape, tab, st)
        act = ready & (start == tmin)
        timer = st.aiv_timer
        advance = act
        end = start + dur
    else:
        act = ready & (is_delay | _chosen(shape, key, v))
        timer = jnp.where(act & is_delay, st.aiv_timer + 1, st.aiv_timer)
        delay_done = act & is_delay & (timer >= a)
        timer = jnp.where(delay_done, 0, timer)
        advance = act & (~is_delay | delay_done)

    write = act & (kind == OpKind.WRITE)
    slot_state = st.slot_state.at[jnp.where(write, slot, n_slots)].set(a, mode="drop")
    slot_aiv_id = st.slot_aiv_id.at[jnp.where(write & (b >= 0), slot, n_slots)].set(b, mode="drop")
    slot_msg = st.slot_msg.at[jnp.where(write & (c >= 0), slot, n_slots)].set(c, mode="drop")

    test = act & (kind == OpKind.WAIT) & (a == 0)
    wait_result = st.aiv_wait_result.at[rows, jnp.where(test, pc, st.aiv_wait_result.shape[1])].set(
        slot_free.astype(jnp.int8), mode="drop"
    )

    copies = jnp.asarray(np.arange(ncopy)[None, :] < np.array(shape.barrier_copies or (1,))[:, None])
    arrive_add = jnp.zeros(nb, jnp.int32).at[jnp.where(act & (kind == OpKind.ARRIVE), bar, nb)].add(1, mode="drop")
    wait_add = jnp.zeros(nb, jnp.int32).at[jnp.where(act & (kind == OpKind.BWAIT), bar, nb)].add(1, mode="drop")
    if timed:
        waiting = (kind == OpKind.WAIT) | (kind == OpKind.ARRIVE) | (kind == OpKind.BWAIT)
        is_bar = act & ((kind == OpKind.ARRIVE) | (kind == OpKind.BWAIT))
        st = dataclasses.replace(
            st,
            aiv_clock=jnp.where(act, end, st.aiv_clock),
            slot_time=st.slot_time.at[jnp.where(write, slot, n_slots)].set(end, mode="drop"),
            barrier_time=st.barrier_time.at[jnp.where(is_bar, bar, nb)].max(end, mode="drop"),
            aiv_alloc_stall=st.aiv_alloc_stall + jnp.where(act & (kind == OpKind.ALLOC), start - st.aiv_clock, 0.0),
            aiv_wait_stall=st.aiv_wait_stall + jnp.where(act & waiting, start - st.aiv_clock, 0.0),
        )
    st = dataclasses.replace(
        st,
        slot_state=slot_state,
        slot_aiv_id=slot_aiv_id,
        slot_msg=slot_msg,
        aiv_pc=st.aiv_pc + advance,
        aiv_timer=timer,
        aiv_wait_result=wait_result,
        barrier_arrive=st.barrier_arrive + arrive_add[:, None] * copies,
        barrier_wait=st.barrier_wait + wait_add[:, None] * copies,
    )
    return st, ready


def _group_mm(shape: EngineShape, gi: int, h: AicHandle, xp=jnp):
    """The ``mm`` object a group's callback sees: a recorder bound to ``h``, or a guard."""
    cfg = shape.matmuls[gi] if shape.matmuls else None
    if cfg is None:
        return _NoMatmul(shape.groups[gi].name)
    return Matmul(cfg[0], cfg[1], xp, h)


def callback_requests(shape: EngineShape, tab: Tables, st: State, n_frees: int, row, col):
    """Evaluates every group's callback on the message under each AIC's cursor.

    Returns [C, F] action arrays (free offsets, wait states, enables, is-matmul, matmul dispatch
    error code and detail), [C, F, D] matmul descriptors and [C] skip counts. Each group's
    callback is traced once and vmapped over that group's AICs only (no branch per callback kind).
    """
    consts = shape.aic_constants()
    cur = consts["block"] + row * consts["p"] + col
    outs = []
    start = 0
    for gi, g in enumerate(shape.groups):
        sl = slice(start, start + g.aic_num)
        start += g.aic_num
        cb = shape.callbacks[gi]
        table = tab.msg_fields[gi]
        cfg = shape.matmuls[gi] if shape.matmuls else None

        def one(slot, column, depth, n, cb=cb, table=table, p=g.aiv_per_aic, gi=gi, cfg=cfg):
            mid = st.slot_msg[slot]
            fields = {k: jnp.where(mid >= 0, t[jnp.maximum(mid, 0)], jnp.zeros((), t.dtype)) for k, t in table.items()}
            msg = MsgView(st.slot_state[slot], st.slot_aiv_id[slot], fields)
            h = AicHandle(jnp, p, n, column, depth)
            cb.call(_group_mm(shape, gi, h), msg, h)
            i32 = jnp.int32
            off, wait, en, is_mm, descs, code, detail = [], [], [], [], [], [], []
            for act in h.actions:
                if act[0] == "free":
                    _, o, w, e = act
                    off.append(jnp.asarray(o, i32))
                    wait.append(jnp.asarray(w, i32))
                    descs.append(jnp.zeros(N_DESC, i32))
                    is_mm.append(False)
                    code.append(i32(0))
                    detail.append(i32(0))
                else:
                    _, words, e = act
                    off.append(i32(0))
                    wait.append(i32(NO_WAIT))
                    d = jnp.stack([jnp.asarray(x).astype(i32) for x in words])
                    descs.append(d)
                    is_mm.append(True)
                    which = shape_error(cfg[1], d[DM["m"]], d[DM["n"]], d[DM["k"]], d[DM["atomic"]], jnp)
                    code.append(
                        jnp.where(which == 4, ErrorCode.MATMUL_ATOMIC, jnp.where(which > 0, ErrorCode.MATMUL_SHAPE, 0))
                    )
                    detail.append(jnp.where(which == 4, d[DM["atomic"]], which).astype(i32))
                en.append(jnp.asarray(e, bool))
            pad = n_frees - len(h.actions)

            def col_(xs, dt, shape_=()):
                x = jnp.stack(xs) if xs else jnp.zeros((0, *shape_), dt)
                return jnp.pad(x.astype(dt), [(0, pad)] + [(0, 0)] * len(shape_))

            return (
                col_(off, jnp.int32),
                col_(wait, jnp.int32),
                col_(en, bool),
                col_([jnp.asarray(x) for x in is_mm], bool),
                col_(code, jnp.int32),
                col_(detail, jnp.int32),
                col_(descs, jnp.int32, (N_DESC,)),
                jnp.asarray(h.skip, jnp.int32),
            )

        outs.append(jax.vmap(one)(cur[sl], col[sl], row[sl], jnp.asarray(consts["n"][sl])))
    return tuple(jnp.concatenate(parts) for parts in zip(*outs, strict=True))


def count_frees(shape: EngineShape, tab: Tables) -> int:
    """F: the most actions (frees and matmuls) any group's callback records in one call (traced abstractly)."""
    most = 1
    for gi, g in enumerate(shape.groups):
        table = tab.msg_fields[gi]
        counts = []

        def probe(cb=shape.callbacks[gi], table=table, p=g.aiv_per_aic, counts=counts, gi=gi):
            fields = {k: jnp.zeros(v.shape[1:], v.dtype) for k, v in table.items()}
            h = AicHandle(jnp, p, jnp.int32(p), jnp.int32(0), jnp.int32(0))
            cb.call(_group_mm(shape, gi, h), MsgView(jnp.int32(VALID), jnp.int32(0), fields), h)
            counts.append(len(h.actions))
            return jnp.int32(0)

        jax.eval_shape(probe)
        most = max(most, counts[0])
    return most


def _release(alive: jax.Array, n: jax.Array, row: jax.Array, col: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``__ReleaseMessage`` in closed form: the next live column after ``col`` in the row, else the
    first live column of the next row (rows wrap 3 -> 0). [C, W] alive, [C] n/row/col."""
    w = alive.shape[1]
    cols = jnp.arange(w)[None, :]
    later = alive & (cols > col[:, None]) & (cols < n[:, None])
    has_later = later.any(axis=1)
    first_later = jnp.argmax(later, axis=1)
    first_any = jnp.argmax(alive, axis=1)
    new_row = jnp.where(has_later, row, (row + 1) % MAX_MSG_PER_AIV)
    new_col = jnp.where(has_later, first_later, first_any)
    return new_row.astype(jnp.int32), new_col.astype(jnp.int32)


def _aic_static(shape: EngineShape) -> dict[str, np.ndarray]:
    """[C] per-AIC matmul cost constants: K0 (fractal K) and element bytes of A, B, C (0: no matmul)."""
    k0, sa, sb, sc = [], [], [], []
    for gi, g in enumerate(shape.groups):
        cfg = shape.matmuls[gi] if shape.matmuls else None
        for _ in range(g.aic_num):
            if cfg is None:
                k0.append(16), sa.append(0), sb.append(0), sc.append(0)
            else:
                mt = cfg[0]
                k0.append(32 if mt.a == "int8" else 16)
                sa.append(mt.dtype("a").itemsize), sb.append(mt.dtype("b").itemsize), sc.append(mt.dtype("c").itemsize)
    return {k: np.array(v, np.float32) for k, v in (("k0", k0), ("sa", sa), ("sb", sb), ("sc", sc))}


def matmul_cycles(shape: EngineShape, tab: Tables, desc: jax.Array) -> jax.Array:
    """[C] cycles of each AIC's matmul action ``desc`` [C, D] (see :mod:`ascend_jax.timing`)."""
    k = _aic_static(shape)
    m = desc[:, DM["m"]].astype(jnp.float32)
    n = desc[:, DM["n"]].astype(jnp.float32)
    kk = desc[:, DM["k"]].astype(jnp.float32)
    fractals = jnp.ceil(m / 16) * jnp.ceil(n / 16) * jnp.ceil(kk / jnp.asarray(k["k0"]))
    traffic = m * kk * jnp.asarray(k["sa"]) + kk * n * jnp.asarray(k["sb"]) + m * n * jnp.asarray(k["sc"])
    return tab.cost[TC["mm_overhead"]] + fractals + traffic / tab.cost[TC["ddr_rate"]]


def aic_times(shape: EngineShape, tab: Tables, st: State):
    """Timed schedule: [C] ready, start cycle and duration of every AIC's next action on ``st``."""
    consts = shape.aic_constants()
    c_num, n_frees = st.aic_free_slot.shape
    rows_c = jnp.arange(c_num)
    p, block = jnp.asarray(consts["p"]), jnp.asarray(consts["block"])
    cur = block + st.aic_row * p + st.aic_col
    cur_state = st.slot_state[cur]
    in_recv = st.aic_phase == AicPhase.RECEIVE
    in_call = st.aic_phase == AicPhase.CALL
    fpc = jnp.minimum(st.aic_free_pc, n_frees - 1)
    f_slot = st.aic_free_slot[rows_c, fpc]
    f_wait = st.aic_free_wait[rows_c, fpc]
    f_is_mm = st.aic_act_mm[rows_c, fpc]
    ready = (in_recv & (cur_state != FREE)) | (in_call & ((f_wait == NO_WAIT) | (st.slot_state[f_slot] == f_wait)))
    enable = jnp.where(in_recv, st.slot_time[cur], jnp.where(f_is_mm | (f_wait == NO_WAIT), 0.0, st.slot_time[f_slot]))
    start = jnp.maximum(st.aic_clock, enable)
    cost = tab.cost
    recv_dur = jnp.where(cur_state == QUIT, cost[TC["poll"]], cost[TC["dispatch"]])
    call_dur = jnp.where(f_is_mm, matmul_cycles(shape, tab, st.aic_act_desc[rows_c, fpc]), cost[TC["free"]])
    return ready, start, jnp.where(in_recv, recv_dur, call_dur)


def aic_step(
    shape: EngineShape, tab: Tables, st: State, key: jax.Array, tmin: jax.Array | None = None
) -> tuple[State, jax.Array, jax.Array]:
    """Every AIC whose next action is enabled performs it (timed schedule: those starting at ``tmin``).

    Returns the new state, [C] enabled, [C] error codes (0 none) of AICs whose action was a
    protocol error (those AICs change nothing), [C] the cursor slot each AIC looked at, and [C]
    the error detail (skip count, free offset or wait state, by error code).
    """
    consts = shape.aic_constants()
    c_num, n_frees = st.aic_free_slot.shape
    n_slots = shape.num_slots
    rows_c = jnp.arange(c_num)
    p, n, block = (jnp.asarray(consts[k]) for k in ("p", "n", "block"))
    row, col = st.aic_row, st.aic_col
    msg_pos = row * p + col
    cur = block + msg_pos
    cur_state = st.slot_state[cur]

    in_recv = st.aic_phase == AicPhase.RECEIVE
    in_call = st.aic_phase == AicPhase.CALL
    fpc = jnp.minimum(st.aic_free_pc, n_frees - 1)
    f_slot = st.aic_free_slot[rows_c, fpc]
    f_wait = st.aic_free_wait[rows_c, fpc]
    recv_ready = in_recv & (cur_state != FREE)
    call_ready = in_call & ((f_wait == NO_WAIT) | (st.slot_state[f_slot] == f_wait))
    ready = recv_ready | call_ready
    timed = shape.schedule == "timed"
    if timed:
        _, t_start, t_dur = aic_times(shape, tab, st)
        act = ready & (t_start == tmin)
    else:
        act = ready & _chosen(shape, key, c_num)

    # -- dispatch: validate the callback's request ------------------------------------------
    offsets, waits, enables, is_mm, mm_code, mm_detail, descs, skip = callback_requests(
        shape, tab, st, n_frees, row, col
    )
    rel = msg_pos[:, None] + offsets
    frees = enables & ~is_mm
    out_block = frees & ((rel < 0) | (rel >= MAX_MSG_PER_AIV * p[:, None]))
    unused = frees & ~out_block & (rel % p[:, None] >= n[:, None])
    bad_wait = frees & (waits != NO_WAIT) & (waits != VALID) & (waits != FAKE)
    free_code = jnp.where(
        out_block,
        ErrorCode.FREE_OUT_OF_BLOCK,
        jnp.where(
            unused,
            ErrorCode.FREE_UNUSED_COLUMN,
            jnp.where(bad_wait, ErrorCode.BAD_WAIT_STATE, jnp.where(enables & is_mm, mm_code, 0)),
        ),
    )
    first_bad = jnp.argmax(free_code > 0, axis=1)
    call_code = jnp.where(
        skip < 0,
        ErrorCode.SKIP_NEGATIVE,
        jnp.where(col + skip >= n, ErrorCode.SKIP_CROSSES_ROW, free_code[rows_c, first_bad]),
    )
    is_quit = cur_state == QUIT
    log_full = st.recv_count >= tab.receive_limit
    code = jnp.where(log_full, ErrorCode.RECEIVE_LOG_FULL, jnp.where(is_quit, 0, call_code))
    recv_act = act & in_recv
    error = jnp.where(recv_act, code, 0)
    recv_ok = recv_act & (code == 0)
    detail = jnp.select(
        [
            code == ErrorCode.BAD_WAIT_STATE,
            (code == ErrorCode.MATMUL_SHAPE) | (code == ErrorCode.MATMUL_ATOMIC),
            (code == ErrorCode.FREE_OUT_OF_BLOCK) | (code == ErrorCode.FREE_UNUSED_COLUMN),
        ],
        [waits[rows_c, first_bad], mm_detail[rows_c, first_bad], offsets[rows_c, first_bad]],
        skip,
    )

    # -- log every received message ---------------------------------------------------------
    r = st.recv_slot.shape[1]
    log_at = jnp.where(recv_ok, st.recv_count, r)
    recv_slot = st.recv_slot.at[rows_c, log_at].set(cur, mode="drop")
    recv_state = st.recv_state.at[rows_c, log_at].set(cur_state, mode="drop")

    # -- QUIT: clear bit aivID ---------------------------------------------------------------
    quit_now = recv_ok & is_quit
    aiv_id = st.slot_aiv_id[cur]
    w = st.aic_alive.shape[1]
    clear = quit_now[:, None] & (jnp.arange(w)[None, :] == aiv_id[:, None])
    alive = st.aic_alive & ~clear

    # -- a message for the callback: store its frees -----------------------------------------
    call_now = recv_ok & ~is_quit
    any_free = enables.any(axis=1)
    free_slot = jnp.where(call_now[:, None], block[:, None] + rel, st.aic_free_slot)
    free_wait = jnp.where(call_now[:, None], waits, st.aic_free_wait)
    free_en = jnp.where(call_now[:, None], enables, st.aic_free_en)
    act_mm = jnp.where(call_now[:, None], is_mm, st.aic_act_mm)
    act_desc = jnp.where(call_now[:, None, None], descs, st.aic_act_desc)
    skip_now = jnp.where(call_now, skip, st.aic_skip)

    # -- CALL: perform the next action (a free, or a matmul handed to the compute phase) ---------
    free_act = act & in_call
    f_is_mm = st.aic_act_mm[rows_c, fpc]
    mm_now = free_act & f_is_mm
    mm_desc = st.aic_act_desc[rows_c, fpc]
    slot_state = st.slot_state.at[jnp.where(free_act & ~f_is_mm, f_slot, n_slots)].set(FREE, mode="drop")
    after = free_en & (jnp.arange(n_frees)[None, :] > fpc[:, None])
    next_pc = jnp.where(after.any(axis=1), jnp.argmax(after, axis=1), n_frees)
    first_pc = jnp.where(any_free, jnp.argmax(enables, axis=1), n_frees)
    free_pc = jnp.where(call_now, first_pc, jnp.where(free_act, next_pc, st.aic_free_pc))

    # -- end of Call (SetSkipMsg, then release) or after a QUIT (release) ----------------------
    call_end = (call_now & ~any_free) | (free_act & (next_pc >= n_frees))
    releasing = call_end | quit_now
    new_row, new_col = _release(alive, n, row, col + jnp.where(call_end, skip_now, 0))
    finished = releasing & ~alive.any(axis=1)
    phase = jnp.where(
        finished,
        AicPhase.DONE,
        jnp.where(releasing, AicPhase.RECEIVE, jnp.where(call_now, AicPhase.CALL, st.aic_phase)),
    ).astype(jnp.int32)

    if timed:
        t_end = t_start + t_dur
        freed = free_act & ~f_is_mm
        done_ok = act & (error == 0)  # an AIC whose action is a protocol error changes nothing
        st = dataclasses.replace(
            st,
            aic_clock=jnp.where(done_ok, t_end, st.aic_clock),
            aic_busy=st.aic_busy + jnp.where(done_ok, t_dur, 0.0),
            aic_blocked=st.aic_blocked + jnp.where(done_ok, t_start - st.aic_clock, 0.0),
            slot_time=st.slot_time.at[jnp.where(freed, f_slot, n_slots)].set(t_end, mode="drop"),
        )
    st = dataclasses.replace(
        st,
        slot_state=slot_state,
        aic_phase=phase,
        aic_row=jnp.where(releasing, new_row, row),
        aic_col=jnp.where(releasing, new_col, col),
        aic_alive=alive,
        aic_free_slot=free_slot,
        aic_free_wait=free_wait,
        aic_free_en=free_en,
        aic_act_mm=act_mm,
        aic_act_desc=act_desc,
        aic_free_pc=free_pc.astype(jnp.int32),
        aic_skip=skip_now,
        recv_slot=recv_slot,
        recv_state=recv_state,
        recv_count=st.recv_count + recv_ok,
    )
    return st, ready, error, cur, detail, mm_now, mm_desc


def _occupancy(shape: EngineShape, st: State, tmin: jax.Array) -> State:
    """Adds the time since the last event to each queue's current occupancy level (0..4 non-FREE)."""
    qmap = jnp.asarray(shape.queue_of_slot())
    busy = jnp.zeros(shape.total_queues + 1, jnp.int32).at[qmap].add((st.slot_state != FREE).astype(jnp.int32))
    level = jnp.clip(busy, 0, MAX_MSG_PER_AIV)
    dt = jnp.where(jnp.isfinite(tmin), jnp.maximum(tmin - st.t_now, 0.0), 0.0)
    occ = st.occ_cycles.at[jnp.arange(shape.total_queues + 1), level].add(dt)
    return dataclasses.replace(
        st, occ_cycles=occ, t_now=jnp.where(jnp.isfinite(tmin), jnp.maximum(tmin, st.t_now), st.t_now)
    )


def step(shape: EngineShape, tab: Tables, st: State) -> tuple[State, jax.Array, jax.Array]:
    """One protocol step of one lane, then the status update. A lane that is not RUNNING is left
    as is. Returns the state and the step's matmul requests: [C] enables and [C, D] descriptors
    (for :func:`ascend_jax.cube_group.compute.apply_matmuls`)."""
    key, k_aiv, k_aic = jax.random.split(st.key, 3)
    tmin = None
    if shape.schedule == "timed":  # events in time order: only the cores starting earliest act
        r_v = aiv_ready(shape, tab, st)
        s_v, _ = _aiv_times(shape, tab, st)
        r_c, s_c, _ = aic_times(shape, tab, st)
        tmin = jnp.minimum(jnp.min(jnp.where(r_v, s_v, jnp.inf)), jnp.min(jnp.where(r_c, s_c, jnp.inf)))
        st = _occupancy(shape, st, tmin)
    new, v_ready = aiv_step(shape, tab, st, k_aiv, tmin)
    new, aic_ready, error, cur, detail, mm_now, mm_desc = aic_step(shape, tab, new, k_aic, tmin)
    steps = st.step + 1
    has_error = (error > 0).any()
    first = jnp.argmax(error > 0)
    done = (new.aiv_pc >= tab.op_len).all() & (new.aic_phase == AicPhase.DONE).all()
    progressed = v_ready.any() | aic_ready.any()
    status = jnp.select(
        [has_error, done, ~progressed, steps >= tab.max_steps],
        [Status.ERROR, Status.OK, Status.DEADLOCK, Status.MAX_STEPS],
        Status.RUNNING,
    ).astype(jnp.int32)
    new = dataclasses.replace(
        new,
        step=steps,
        status=status,
        error_code=jnp.where(has_error, error[first], 0).astype(jnp.int32),
        error_aic=jnp.where(has_error, first, 0).astype(jnp.int32),
        error_slot=jnp.where(has_error, cur[first], 0).astype(jnp.int32),
        error_detail=jnp.where(has_error, detail[first], 0).astype(jnp.int32),
        key=key,
    )
    running = st.status == Status.RUNNING
    # a finished lane keeps its state; GM is left out: the protocol step never writes it, and the
    # compute phase only writes for requests of running lanes (a select over GM per step is costly)
    kept = {
        f.name: jnp.where(running, getattr(new, f.name), getattr(st, f.name))
        for f in dataclasses.fields(State)
        if f.name != "gm"
    }
    return State(**kept, gm=st.gm), mm_now & running, mm_desc

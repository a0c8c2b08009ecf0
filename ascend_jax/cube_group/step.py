"""One engine step for one lane: every enabled AIV acts, then every enabled AIC acts.

Both kernels are written for a single instance and vectorised over cores with masks and
``jnp.where`` (no ``lax.cond`` / ``lax.switch``); batching happens at the edge with ``vmap``.
Blocking calls are predicates evaluated once per step on the state at the start of the phase.
Writes are scatters with out-of-range indices dropped for masked-off cores.

The callback is not evaluated here: its decision for every slot version was computed when the
program was encoded (:mod:`ascend_jax.cube_group.encode`), so receiving a message is a table
look-up of the version under the cursor. A lane that is not RUNNING enables no core, so nothing
but its tables is read and its state stays as it is.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ascend_jax.cube_group.callbacks import NO_WAIT
from ascend_jax.cube_group.state import ACT, MAX_VERSIONS, VER, VERSION_BITS, EngineShape, State, Tables, slot_word
from ascend_jax.cube_group.status import AicPhase, ErrorCode, OpKind, Status
from ascend_jax.message import MAX_MSG_PER_AIV, CubeMsgState
from ascend_jax.timing import C as TC

FREE, VALID, QUIT, FAKE = (int(s) for s in CubeMsgState)


def _chosen(shape: EngineShape, key: jax.Array, n: int) -> jax.Array:
    """Which enabled cores act: all of them (lockstep) or each with probability 1/2 (random)."""
    if shape.schedule != "random":
        return jnp.ones(n, bool)
    return jax.random.bernoulli(jax.random.wrap_key_data(key), 0.5, (n,))


def _aiv_head(tab: Tables, st: State):
    """Each AIV's next op: (pc, kind, slot, a, b, c), all [V] (pc clamped for finished AIVs),
    unpacked from the two words of :func:`ascend_jax.cube_group.state.pack_op` (one gather)."""
    rows = jnp.arange(tab.op_len.shape[0])
    pc = jnp.minimum(st.aiv_pc, tab.ops.shape[1] - 1)
    w = tab.ops[rows, pc]
    kind, x, w1 = w[:, 0] & 7, w[:, 0] >> 3, w[:, 1]
    write = kind == OpKind.WRITE
    barrier = (kind == OpKind.ARRIVE) | (kind == OpKind.BWAIT)
    a = jnp.where(write, w1 >> VERSION_BITS, jnp.where(barrier, x >> 6, w1))
    c = jnp.where(write, w1 & (MAX_VERSIONS - 1), w1)
    return pc, kind, x, a, x & 63, c


def _aiv_times(shape: EngineShape, tab: Tables, cost: jax.Array, st: State):
    """Timed schedule: [V] start cycle and duration of every AIV's next op (valid where ready)."""
    _, kind, slot, a, _, _ = _aiv_head(tab, st)
    tm = st.timed
    nb = st.barrier_arrive.shape[0]
    bar = jnp.clip(a, 0, nb - 1)
    enable = jnp.select(
        [kind == OpKind.ALLOC, (kind == OpKind.WAIT) & (a != 0), (kind == OpKind.ARRIVE) | (kind == OpKind.BWAIT)],
        [tm.slot_time[slot], tm.slot_time[slot], tm.barrier_time[bar]],
        0.0,
    )
    start = jnp.maximum(tm.aiv_clock, enable)
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
    """[V] whether each AIV's next op is enabled on ``st`` (never in a lane that has stopped)."""
    active = (st.aiv_pc < tab.op_len) & (st.status == Status.RUNNING)
    _, kind, slot, a, b, c = _aiv_head(tab, st)
    slot_free = (st.slot[slot] & 0xFF) == FREE
    conds = [kind == OpKind.ALLOC, kind == OpKind.WAIT]
    values = [slot_free, (a == 0) | slot_free]
    if shape.barrier_copies:  # no barrier counters to read otherwise
        nb, ncopy = st.barrier_arrive.shape
        bar = jnp.clip(a, 0, nb - 1)
        idx = jnp.clip(b, 0, ncopy - 1)
        conds += [kind == OpKind.ARRIVE, kind == OpKind.BWAIT]
        values += [(c < 0) | (st.barrier_wait[bar, idx] == c), st.barrier_arrive[bar, idx] >= c]
    return active & jnp.select(conds, values, True)


def aiv_step(
    shape: EngineShape, tab: Tables, cost: jax.Array, st: State, key: jax.Array, tmin: jax.Array | None = None
) -> tuple[State, jax.Array]:
    """Every AIV whose next op is enabled performs it (timed schedule: those starting at ``tmin``).
    Returns the new state and [V] enabled."""
    v = tab.op_len.shape[0]
    n_slots = shape.num_slots
    pc, kind, slot, a, b, c = _aiv_head(tab, st)
    nb, ncopy = st.barrier_arrive.shape
    bar = jnp.clip(a, 0, nb - 1)
    ready = aiv_ready(shape, tab, st)
    is_delay = kind == OpKind.DELAY
    if shape.timed:  # a delay is one action of `cycles` cycles
        start, dur = _aiv_times(shape, tab, cost, st)
        act = ready & (start == tmin)
        timer = st.aiv_timer
        advance = act
    else:
        act = ready & (is_delay | _chosen(shape, key, v))
        timer = jnp.where(act & is_delay, st.aiv_timer + 1, st.aiv_timer)
        delay_done = act & is_delay & (timer >= a)
        timer = jnp.where(delay_done, 0, timer)
        advance = act & (~is_delay | delay_done)

    write = act & (kind == OpKind.WRITE)
    target = jnp.where(write, slot, n_slots)
    slot_words = st.slot.at[target].set(slot_word(a, c), mode="drop")

    wait_result = st.aiv_wait_result
    if shape.wait_tests:
        test = act & (kind == OpKind.WAIT) & (a == 0)
        slot_free = (st.slot[slot] & 0xFF) == FREE
        wait_result = wait_result.at[jnp.arange(v), jnp.where(test, pc, wait_result.shape[1])].set(
            slot_free.astype(jnp.int8), mode="drop"
        )

    barrier_arrive, barrier_wait = st.barrier_arrive, st.barrier_wait
    if shape.barrier_copies:
        copies = jnp.asarray(np.arange(ncopy)[None, :] < np.array(shape.barrier_copies)[:, None])
        arrive_add = jnp.zeros(nb, jnp.int32).at[jnp.where(act & (kind == OpKind.ARRIVE), bar, nb)].add(1, mode="drop")
        wait_add = jnp.zeros(nb, jnp.int32).at[jnp.where(act & (kind == OpKind.BWAIT), bar, nb)].add(1, mode="drop")
        barrier_arrive = barrier_arrive + arrive_add[:, None] * copies
        barrier_wait = barrier_wait + wait_add[:, None] * copies
    timed = st.timed
    if shape.timed:
        end = start + dur
        waiting = (kind == OpKind.WAIT) | (kind == OpKind.ARRIVE) | (kind == OpKind.BWAIT)
        is_bar = act & ((kind == OpKind.ARRIVE) | (kind == OpKind.BWAIT))
        timed = dataclasses.replace(
            timed,
            aiv_clock=jnp.where(act, end, timed.aiv_clock),
            slot_time=timed.slot_time.at[target].set(end, mode="drop"),
            barrier_time=timed.barrier_time.at[jnp.where(is_bar, bar, nb)].max(end, mode="drop"),
            aiv_alloc_stall=timed.aiv_alloc_stall
            + jnp.where(act & (kind == OpKind.ALLOC), start - timed.aiv_clock, 0.0),
            aiv_wait_stall=timed.aiv_wait_stall + jnp.where(act & waiting, start - timed.aiv_clock, 0.0),
        )
    st = dataclasses.replace(
        st,
        slot=slot_words,
        aiv_pc=st.aiv_pc + advance,
        aiv_timer=timer,
        aiv_wait_result=wait_result,
        barrier_arrive=barrier_arrive,
        barrier_wait=barrier_wait,
        timed=timed,
    )
    return st, ready


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


def _aic_head(shape: EngineShape, tab: Tables, st: State):
    """Each AIC's situation, all [C]: cursor slot and its word; the pending action of a call
    (pc clamped; its [C, 4] ``Tables.act`` row) and the word of the slot that action frees."""
    consts = shape.aic_constants()
    cur = jnp.asarray(consts["block"]) + st.aic_row * jnp.asarray(consts["p"]) + st.aic_col
    pc = jnp.minimum(st.aic_pc, tab.act.shape[1] - 1)
    act = tab.act[st.aic_ver, pc]
    return cur, st.slot[cur], pc, act, st.slot[act[:, ACT["slot"]]]


def aic_ready(shape: EngineShape, tab: Tables, st: State) -> jax.Array:
    """[C] whether each AIC's next action is enabled on ``st``."""
    _, cur_word, _, act, f_word = _aic_head(shape, tab, st)
    cur_state, f_wait, f_state = cur_word & 0xFF, act[:, ACT["wait"]], f_word & 0xFF
    running = st.status == Status.RUNNING
    in_recv = st.aic_phase == AicPhase.RECEIVE
    in_call = st.aic_phase == AicPhase.CALL
    call_ok = (f_wait == NO_WAIT) | (f_state == f_wait)
    return running & ((in_recv & (cur_state != FREE)) | (in_call & call_ok))


def matmul_cycles(tab: Tables, cost: jax.Array, ver: jax.Array, pc: jax.Array) -> jax.Array:
    """[C] cycles of each AIC's matmul action (version ``ver``, action ``pc``; see :mod:`ascend_jax.timing`)."""
    return cost[TC["mm_overhead"]] + tab.act_fractals[ver, pc] + tab.act_traffic[ver, pc] / cost[TC["ddr_rate"]]


def aic_times(shape: EngineShape, tab: Tables, cost: jax.Array, st: State):
    """Timed schedule: [C] ready, start cycle and duration of every AIC's next action on ``st``."""
    cur, cur_word, pc, act, _ = _aic_head(shape, tab, st)
    cur_state, f_slot, f_wait, f_is_mm = (
        cur_word & 0xFF,
        act[:, ACT["slot"]],
        act[:, ACT["wait"]],
        act[:, ACT["mm"]] > 0,
    )
    tm = st.timed
    ready = aic_ready(shape, tab, st)
    in_recv = st.aic_phase == AicPhase.RECEIVE
    enable = jnp.where(in_recv, tm.slot_time[cur], jnp.where(f_is_mm | (f_wait == NO_WAIT), 0.0, tm.slot_time[f_slot]))
    start = jnp.maximum(tm.aic_clock, enable)
    recv_dur = jnp.where(cur_state == QUIT, cost[TC["poll"]], cost[TC["dispatch"]])
    if tab.act_fractals.shape[1]:
        call_dur = jnp.where(f_is_mm, matmul_cycles(tab, cost, st.aic_ver, pc), cost[TC["free"]])
    else:
        call_dur = jnp.broadcast_to(cost[TC["free"]], pc.shape)
    return ready, start, jnp.where(in_recv, recv_dur, call_dur)


def aic_step(
    shape: EngineShape, tab: Tables, cost: jax.Array, st: State, key: jax.Array, tmin: jax.Array | None = None
):
    """Every AIC whose next action is enabled performs it (timed schedule: those starting at ``tmin``).

    Returns the new state, [C] enabled, [C] error codes (0 none) of AICs whose action was a
    protocol error (those AICs change nothing), [C] the cursor slot each AIC looked at, [C] the
    version it received, and [C] whether it performed a matmul action this step (with [C] the
    version and action index of that matmul).
    """
    consts = shape.aic_constants()
    c_num = st.aic_phase.shape[0]
    f = tab.act.shape[1]
    n_slots = shape.num_slots
    rows_c = jnp.arange(c_num)
    n = jnp.asarray(consts["n"])
    row, col = st.aic_row, st.aic_col
    cur, cur_word, pc, act_row, f_word = _aic_head(shape, tab, st)
    cur_state, f_slot, f_is_mm = cur_word & 0xFF, act_row[:, ACT["slot"]], act_row[:, ACT["mm"]] > 0
    in_recv = st.aic_phase == AicPhase.RECEIVE
    in_call = st.aic_phase == AicPhase.CALL
    ready = aic_ready(shape, tab, st)
    if shape.timed:
        _, t_start, t_dur = aic_times(shape, tab, cost, st)
        act = ready & (t_start == tmin)
    else:
        act = ready & _chosen(shape, key, c_num)

    # -- dispatch: the callback's decision for the version under the cursor ------------------
    ver = jnp.maximum((cur_word >> 8) - 1, 0)
    vt = tab.ver[ver]  # [C, 4]
    is_quit = cur_state == QUIT
    log_full = st.recv_count >= tab.receive_limit
    code = jnp.where(log_full, ErrorCode.RECEIVE_LOG_FULL, jnp.where(is_quit, 0, vt[:, VER["code"]]))
    recv_act = act & in_recv
    error = jnp.where(recv_act, code, 0)
    recv_ok = recv_act & (code == 0)

    # -- log every received message ---------------------------------------------------------
    r = st.recv_ver.shape[1]
    recv_ver = st.recv_ver.at[rows_c, jnp.where(recv_ok, st.recv_count, r)].set(ver, mode="drop")

    # -- QUIT: clear bit aivID ---------------------------------------------------------------
    quit_now = recv_ok & is_quit
    w = st.aic_alive.shape[1]
    alive = st.aic_alive & ~(quit_now[:, None] & (jnp.arange(w)[None, :] == vt[:, VER["aiv_id"], None]))

    # -- a message for the callback: serve its actions -----------------------------------------
    call_now = recv_ok & ~is_quit
    first = vt[:, VER["first"]]
    any_act = first < f

    # -- CALL: perform the next action (a free, or a matmul handed to the compute phase) ---------
    free_act = act & in_call
    mm_now = free_act & f_is_mm
    freed_word = (f_word & ~0xFF) | FREE  # FreeMessage writes the head state only
    slot = st.slot.at[jnp.where(free_act & ~f_is_mm, f_slot, n_slots)].set(freed_word, mode="drop")
    next_pc = act_row[:, ACT["next"]]
    aic_pc = jnp.where(call_now, first, jnp.where(free_act, next_pc, st.aic_pc))
    aic_ver = jnp.where(call_now, ver, st.aic_ver)

    # -- end of Call (SetSkipMsg, then release) or after a QUIT (release) ----------------------
    call_end = (call_now & ~any_act) | (free_act & (next_pc >= f))
    releasing = call_end | quit_now
    skip = jnp.where(call_now, vt[:, VER["skip"]], st.aic_skip)
    new_row, new_col = _release(alive, n, row, col + jnp.where(call_end, skip, 0))
    finished = releasing & ~alive.any(axis=1)
    phase = jnp.where(
        finished,
        AicPhase.DONE,
        jnp.where(releasing, AicPhase.RECEIVE, jnp.where(call_now, AicPhase.CALL, st.aic_phase)),
    ).astype(jnp.int32)

    timed = st.timed
    if shape.timed:
        t_end = t_start + t_dur
        freed = free_act & ~f_is_mm
        done_ok = act & (error == 0)  # an AIC whose action is a protocol error changes nothing
        timed = dataclasses.replace(
            timed,
            aic_clock=jnp.where(done_ok, t_end, timed.aic_clock),
            aic_busy=timed.aic_busy + jnp.where(done_ok, t_dur, 0.0),
            aic_blocked=timed.aic_blocked + jnp.where(done_ok, t_start - timed.aic_clock, 0.0),
            slot_time=timed.slot_time.at[jnp.where(freed, f_slot, n_slots)].set(t_end, mode="drop"),
        )
    st = dataclasses.replace(
        st,
        slot=slot,
        aic_phase=phase,
        aic_row=jnp.where(releasing, new_row, row),
        aic_col=jnp.where(releasing, new_col, col),
        aic_alive=alive,
        aic_ver=aic_ver,
        aic_pc=aic_pc.astype(jnp.int32),
        aic_skip=skip,
        recv_ver=recv_ver,
        recv_count=st.recv_count + recv_ok,
        timed=timed,
    )
    return st, ready, error, cur, ver, mm_now, st.aic_ver, pc


def _occupancy(shape: EngineShape, st: State, tmin: jax.Array) -> State:
    """Adds the time since the last event to each queue's current occupancy level (0..4 non-FREE)."""
    tm = st.timed
    qmap = jnp.asarray(shape.queue_of_slot())
    busy = jnp.zeros(shape.total_queues + 1, jnp.int32).at[qmap].add(((st.slot & 0xFF) != FREE).astype(jnp.int32))
    level = jnp.clip(busy, 0, MAX_MSG_PER_AIV)
    finite = jnp.isfinite(tmin)
    dt = jnp.where(finite, jnp.maximum(tmin - tm.t_now, 0.0), 0.0)
    occ = tm.occ_cycles.at[jnp.arange(shape.total_queues + 1), level].add(dt)
    return dataclasses.replace(
        st,
        timed=dataclasses.replace(tm, occ_cycles=occ, t_now=jnp.where(finite, jnp.maximum(tmin, tm.t_now), tm.t_now)),
    )


def step(shape: EngineShape, tab: Tables, cost: jax.Array, st: State):
    """One protocol step of one lane, then the status update. A lane that is not RUNNING enables
    no core and keeps its state. Returns the state and the step's matmul requests: [C] enables
    and the [C] version and action index of each (for :func:`ascend_jax.cube_group.compute.apply_matmuls`)."""
    key = st.key
    k_aiv = k_aic = key
    if shape.needs_key:
        raw = jax.random.split(jax.random.wrap_key_data(key), 3)
        key, k_aiv, k_aic = (jax.random.key_data(k) for k in raw)
    tmin = None
    if shape.timed:  # events in time order: only the cores starting earliest act
        r_v = aiv_ready(shape, tab, st)
        s_v, _ = _aiv_times(shape, tab, cost, st)
        r_c, s_c, _ = aic_times(shape, tab, cost, st)
        tmin = jnp.minimum(jnp.min(jnp.where(r_v, s_v, jnp.inf)), jnp.min(jnp.where(r_c, s_c, jnp.inf)))
        st = _occupancy(shape, st, tmin)
    running = st.status == Status.RUNNING
    new, v_ready = aiv_step(shape, tab, cost, st, k_aiv, tmin)
    new, aic_ready_, error, cur, ver, mm_now, mm_ver, mm_pc = aic_step(shape, tab, cost, new, k_aic, tmin)
    steps = st.step + 1
    has_error = (error > 0).any()
    first = jnp.argmax(error > 0)
    done = (new.aiv_pc >= tab.op_len).all() & (new.aic_phase == AicPhase.DONE).all()
    progressed = v_ready.any() | aic_ready_.any()
    status = jnp.select(
        [has_error, done, ~progressed, steps >= tab.max_steps],
        [Status.ERROR, Status.OK, Status.DEADLOCK, Status.MAX_STEPS],
        Status.RUNNING,
    ).astype(jnp.int32)
    new = dataclasses.replace(
        new,
        step=jnp.where(running, steps, st.step),
        status=jnp.where(running, status, st.status),
        error_code=jnp.where(running & has_error, error[first], st.error_code).astype(jnp.int32),
        error_aic=jnp.where(running & has_error, first, st.error_aic).astype(jnp.int32),
        error_slot=jnp.where(running & has_error, cur[first], st.error_slot).astype(jnp.int32),
        error_ver=jnp.where(running & has_error, ver[first], st.error_ver).astype(jnp.int32),
        key=jnp.where(running, key, st.key),
    )
    return new, mm_now, mm_ver, mm_pc

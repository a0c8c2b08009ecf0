"""One engine step for a whole batch: every enabled AIV acts, then every enabled AIC acts.

The step is written for the batch with the lane axis last (``[..., B]``); reading and writing
the slot grid and the tables goes through :mod:`ascend_jax.cube_group.engine.access`, and the timed
schedule's start cycles and durations come from :mod:`ascend_jax.cube_group.engine.timed`. Blocking
calls are predicates evaluated once per step on the state at the start of the phase; cores act
by masks (no ``lax.cond`` / ``lax.switch`` chooses what a core does).

Each AIC's decision for the step is one int32 action word (:data:`FLAG_BIT`: the error it stops
at, then a bit per decision), computed once and materialised (:func:`materialise`); every field
update, the receive-log write and the grid free are shifts and selects of it. The grid the AIVs
leave is materialised the same way before the AICs read it.

The callback is not evaluated here: its decision for every slot version was computed when the
program was encoded (:mod:`ascend_jax.cube_group.engine.encode`). A lane that is not RUNNING enables no
core, so its state stays as it is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ascend_jax.cube_group import clock
from ascend_jax.cube_group.callbacks import NO_WAIT
from ascend_jax.cube_group.engine.access import (
    D4,
    aiv_slot_post,
    aiv_slot_state,
    barrier_read,
    block_byte,
    first_true,
    lane_table,
    lookup,
    mm_fields,
    packed_free,
    select_first,
    slot_pick,
    slot_put,
    slot_write,
    vector_words,
)
from ascend_jax.cube_group.engine.shape import ALIVE_BITS, KIND_BITS, PACK_OP_COUNT_BIT, EngineShape
from ascend_jax.cube_group.engine.state import (
    ACT,
    MAX_VERSIONS,
    MTE3_BIT,
    PACK_COUNT_SHIFT,
    VER,
    VERSION_BITS,
    AicHead,
    AivOps,
    State,
    Tables,
    one_word_ops,
    slot_word,
)
from ascend_jax.cube_group.engine.timed import aic_times, aiv_times, occupancy
from ascend_jax.cube_group.matmul import N_MM
from ascend_jax.cube_group.status import AicPhase, ErrorCode, OpKind, Status
from ascend_jax.message import FREE, QUIT


class VectorOps(NamedTuple):
    """The vector ops the AIVs performed in a step (:func:`ascend_jax.cube_group.engine.vector_ops.apply_vector_ops`
    runs them)."""

    en: jax.Array  # [V, B] which AIVs performed one
    words: jax.Array  # [V, 12, B] its row of ``Tables.vec`` (:data:`ascend_jax.cube_group.engine.encode.VEC`)


class StepOut(NamedTuple):
    """What one protocol step of the batch (:func:`step`) gives the compute phase."""

    state: State  # the state after the step (status updated)
    mm_en: jax.Array  # [C, B] which AICs performed a matmul action (IterateAll) this step
    mm_fields: jax.Array  # [C, A, B] the resolved IterateAll words of each
    vec: VectorOps | None  # the AIVs' vector ops; None when no lane has one


#: programs up to this many ops per AIV fetch ops by a one-hot select, longer ones by a gather
ONEHOT_OPS = 32


def _chosen(shape: EngineShape, keys: jax.Array, n: int) -> jax.Array:
    """[n, B] which enabled cores act: all (lockstep) or each with probability 1/2 (random)."""
    if shape.schedule != "random":
        return jnp.ones((n, keys.shape[0]), bool)
    draw = jax.vmap(lambda k: jax.random.bernoulli(jax.random.wrap_key_data(k), 0.5, (n,)))(keys)
    return draw.T


# -- AIV side ----------------------------------------------------------------------------------
def _aiv_ops(shape: EngineShape, tab: Tables, st: State) -> AivOps:
    """Each AIV's next op, all [V, B] (pc clamped for finished AIVs), unpacked from the two words
    of :func:`ascend_jax.cube_group.engine.state.pack_op`."""
    n_ops = tab.ops.shape[1]
    pc = jnp.minimum(st.aiv_pc, n_ops - 1)
    one_word = one_word_ops(shape)
    if n_ops <= ONEHOT_OPS:
        sel = pc[:, None, :] == jnp.arange(n_ops)[None, :, None]
        w0 = jnp.where(sel, lane_table(shape, tab.ops[:, :, 0]), 0).sum(axis=1)
        w1 = None if one_word else jnp.where(sel, lane_table(shape, tab.ops[:, :, 1]), 0).sum(axis=1)
    elif shape.shared:
        w = tab.ops[jnp.arange(pc.shape[0])[:, None], pc]
        w0, w1 = w[..., 0], w[..., 1]
    else:
        w0 = jnp.take_along_axis(tab.ops[:, :, 0], pc[:, None, :], axis=1)[:, 0]
        w1 = jnp.take_along_axis(tab.ops[:, :, 1], pc[:, None, :], axis=1)[:, 0]
    kind, x = w0 & ((1 << KIND_BITS) - 1), (w0 >> KIND_BITS) & ((1 << (MTE3_BIT - KIND_BITS)) - 1)
    if one_word:  # ALLOC and WRITE only: a is a WRITE's head state, c unused (see pack_op)
        return AivOps(pc, kind, x, (x >> 2) & 0xFF, (w0 >> MTE3_BIT) & 1, jnp.zeros_like(x))
    write = kind == OpKind.WRITE
    barrier = (kind == OpKind.ARRIVE) | (kind == OpKind.BWAIT)
    a = jnp.where(write, w1 >> VERSION_BITS, jnp.where(barrier, x >> 6, w1))
    c = jnp.where(write, w1 & (MAX_VERSIONS - 1), w1)
    b = jnp.where(barrier, x & 63, (w0 >> MTE3_BIT) & 1)  # barrier: the copy index; alloc/write: MTE3
    return AivOps(pc, kind, x, a, b, c)


def aiv_ready(shape: EngineShape, tab: Tables, st: State, ops: AivOps) -> jax.Array:
    """[V, B] whether each AIV's next op is enabled on ``st`` (never in a lane that has stopped)."""
    active = (st.aiv_pc < lane_table(shape, tab.op_len)) & (st.status == Status.RUNNING)[None, :]
    kind, x, a, b, c = ops.kind, ops.x, ops.a, ops.b, ops.c
    slot_free = aiv_slot_state(shape, st.slot, x) == FREE
    conds, values = [], []  # kinds that no lane's program has are left out
    if shape.uses(OpKind.ALLOC):  # an MTE3 alloc also waits for the MTE3->S flag
        conds.append(kind == OpKind.ALLOC)
        values.append(slot_free & ((b == 0) | st.aiv_mte3) if shape.has_mte3 else slot_free)
    if shape.uses(OpKind.WAIT):
        conds.append(kind == OpKind.WAIT)
        values.append((a == 0) | slot_free)
    if shape.has_sync:  # SyncAll: every AIV with a program at this round, every AIC out of its loop
        k = st.aiv_syncs
        at_sync = (st.aiv_pc < lane_table(shape, tab.op_len)) & (kind == OpKind.SYNC)
        absent = jnp.broadcast_to(lane_table(shape, tab.op_len) == 0, k.shape)
        ok = (k[None] > k[:, None]) | (at_sync[None] & (k[None] == k[:, None])) | absent[None]
        aics_done = (st.aic_phase == AicPhase.DONE).all(axis=0)[None, :]
        conds.append(kind == OpKind.SYNC)
        values.append(ok.all(axis=1) & (aics_done | (a == 0)))  # a == 0: SyncAll<true>, the AIVs only
    if shape.barrier_copies:  # no barrier counters to read otherwise
        conds += [kind == OpKind.ARRIVE, kind == OpKind.BWAIT]
        values += [(c < 0) | (barrier_read(st.barrier_wait, a, b) == c), barrier_read(st.barrier_arrive, a, b) >= c]
    return active & select_first(conds, values, True)


def aiv_step(shape: EngineShape, tab: Tables, cost: jax.Array, st: State, keys: jax.Array, tmin: tuple | None):
    """Every AIV whose next op is enabled performs it (timed schedule: those starting at ``tmin``,
    the [B] float32 pair of the step's event cycle, :mod:`ascend_jax.cube_group.clock`).
    Returns the new state, [V, B] enabled, and the vector ops performed (:class:`VectorOps`), or
    None without vector ops."""
    ops = _aiv_ops(shape, tab, st)
    pc, kind, x, a, b, c = ops
    v = pc.shape[0]
    ready = aiv_ready(shape, tab, st, ops)
    is_delay = kind == OpKind.DELAY
    if shape.timed:  # a delay is one action of `cycles` cycles
        start, dur = aiv_times(shape, tab, cost, st, ops)
        act = ready & clock.equal(start, (tmin[0][None, :], tmin[1][None, :]))
        timer = st.aiv_timer
        advance = act
    elif not shape.uses(OpKind.DELAY):
        act = ready & _chosen(shape, keys, v)
        timer = st.aiv_timer
        advance = act
    else:
        act = ready & (is_delay | _chosen(shape, keys, v))
        timer = jnp.where(act & is_delay, st.aiv_timer + 1, st.aiv_timer)
        delay_done = act & is_delay & (timer >= a)
        timer = jnp.where(delay_done, 0, timer)
        advance = act & (~is_delay | delay_done)

    write = act & (kind == OpKind.WRITE)
    count = (x >> (PACK_OP_COUNT_BIT - KIND_BITS)) & 63  # packed grid: the write's count mod 64
    slot = aiv_slot_post(shape, st.slot, x, write, a, c, count)
    aiv_syncs = st.aiv_syncs + (act & (kind == OpKind.SYNC)) if shape.has_sync else st.aiv_syncs
    aiv_mte3 = st.aiv_mte3
    if shape.has_mte3:  # an MTE3 alloc takes the flag, an MTE3 post sets it again
        mte3 = (b == 1) & ((kind == OpKind.ALLOC) | write)
        aiv_mte3 = jnp.where(act & mte3, kind == OpKind.WRITE, st.aiv_mte3)

    wait_result = st.aiv_wait_result
    if shape.wait_tests:
        test = act & (kind == OpKind.WAIT) & (a == 0)
        slot_free = aiv_slot_state(shape, st.slot, x) == FREE
        sel = test[:, None, :] & (pc[:, None, :] == jnp.arange(wait_result.shape[1])[None, :, None])
        wait_result = jnp.where(sel, slot_free[:, None, :].astype(jnp.int8), wait_result)

    barrier_arrive, barrier_wait = st.barrier_arrive, st.barrier_wait
    if shape.barrier_copies:
        nb, ncopy, _ = barrier_arrive.shape
        copies = jnp.asarray(np.arange(ncopy)[None, :] < np.array(shape.barrier_copies)[:, None])[:, :, None]
        of_bar = a[:, None, :] == jnp.arange(nb)[None, :, None]  # [V, NB, B]
        arrive_add = ((act & (kind == OpKind.ARRIVE))[:, None, :] & of_bar).sum(axis=0)
        wait_add = ((act & (kind == OpKind.BWAIT))[:, None, :] & of_bar).sum(axis=0)
        barrier_arrive = barrier_arrive + arrive_add[:, None, :] * copies
        barrier_wait = barrier_wait + wait_add[:, None, :] * copies
    timed = st.timed
    if shape.timed:
        end = clock.add(start, dur)
        waiting = (kind == OpKind.WAIT) | (kind == OpKind.ARRIVE) | (kind == OpKind.BWAIT) | (kind == OpKind.SYNC)
        is_bar = act & ((kind == OpKind.ARRIVE) | (kind == OpKind.BWAIT))
        nb = timed.barrier_time.shape[0]
        of_bar = (jnp.clip(a, 0, nb - 1)[:, None, :] == jnp.arange(nb)[None, :, None]) & is_bar[:, None, :]
        bar_end = clock.reduce_max(clock.where(of_bar, (end[0][:, None], end[1][:, None]), (-jnp.inf, 0.0)), 0)
        aiv_clock = timed.pair("aiv_clock")
        stall = clock.sub(start, aiv_clock)
        zero = (jnp.zeros_like(stall[0]), jnp.zeros_like(stall[0]))
        timed = timed.put(
            aiv_clock=clock.where(act, end, aiv_clock),
            slot_time=tuple(
                slot_write(shape, w, x, write, e) for w, e in zip(timed.pair("slot_time"), end, strict=True)
            ),
            barrier_time=clock.maximum(timed.pair("barrier_time"), bar_end),
            aiv_alloc_stall=clock.add(
                timed.pair("aiv_alloc_stall"), clock.where(act & (kind == OpKind.ALLOC), stall, zero)
            ),
            aiv_wait_stall=clock.add(timed.pair("aiv_wait_stall"), clock.where(act & waiting, stall, zero)),
        )
    st = dataclasses.replace(
        st,
        slot=slot,
        aiv_mte3=aiv_mte3,
        aiv_syncs=aiv_syncs,
        aiv_pc=st.aiv_pc + advance,
        aiv_timer=timer,
        aiv_wait_result=wait_result,
        barrier_arrive=barrier_arrive,
        barrier_wait=barrier_wait,
        timed=timed,
    )
    vec = None
    if shape.has_vector:
        vec = VectorOps(act & (kind == OpKind.VECTOR), vector_words(shape, tab, a))
    return st, ready, vec


# -- AIC side ----------------------------------------------------------------------------------
def _release(
    alive: jax.Array, n: jax.Array, p: jax.Array, pos: jax.Array, col: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """``__ReleaseMessage`` in closed form on the device's cursor: ``msgPos`` ``pos`` (slots from
    the AIC's block base) and ``aivWork`` ``col``, both [C, B]; [C, 1] n and P; ``alive`` the
    live columns, [C, B] bits (:attr:`EngineShape.alive_bits`) or [C, W, B] booleans.

    Advancing moves both by one inside the live part of a row; at its end (``aivWork + 1 >= n``)
    ``msgPos`` jumps over the unused columns to the next row (to 0 from row 3) and ``aivWork``
    restarts at 0; then quit columns are skipped. A skip past the row (release builds) leaves
    ``msgPos`` ahead of ``aivWork``; the arithmetic keeps that offset, as on the device.
    """
    if alive.ndim == 2:  # bits: the column scans are bit operations
        clipped = jnp.clip(col, 0, ALIVE_BITS - 1)
        above = jnp.where(col < 0, -1, jnp.where(col >= ALIVE_BITS, 0, ~((jnp.int32(2) << clipped) - 1)))
        later = alive & above & ((jnp.int32(1) << n) - 1)
        has_later = (later != 0) & (col + 1 < n)
        first_later, first_any = _lowest_bit(later), _lowest_bit(alive)
    else:
        cols = jnp.arange(alive.shape[1])[None, :, None]
        later = alive & (cols > col[:, None, :]) & (cols < n[:, :, None])
        has_later = later.any(axis=1) & (col + 1 < n)
        first_later, first_any = first_true(later, axis=1), first_true(alive, axis=1)
    end = pos + jnp.maximum(n - 1 - col, 0)  # msgPos at the last live column of this row
    next_row = jnp.where(end // p == D4 - 1, 0, end + (p - n) + 1)
    new_pos = jnp.where(has_later, pos + first_later - col, next_row + first_any)
    new_col = jnp.where(has_later, first_later, first_any)
    return new_pos.astype(jnp.int32), new_col.astype(jnp.int32)


def _free_bits(shape: EngineShape, grid: jax.Array, f_slot: jax.Array, freeing: jax.Array):
    """Packed grid, frees in each AIC's own block (a debug build): [C, B] the column of the AIC's
    rows that holds the freed slot and the head-state bits the free clears in that column's word
    (0 where the AIC frees nothing), as :func:`ascend_jax.cube_group.engine.access.packed_free`
    clears them; (None, None) otherwise (the step calls ``packed_free``)."""
    if not shape.packed or shape.stray:
        return None, None
    c_num, w, _ = grid.shape
    _, idx, inside = block_byte(shape, grid, f_slot)
    bits = jnp.where(freeing & inside, jnp.int32(3) << ((idx & (D4 - 1)) << 3), 0)
    return (idx >> 2) - jnp.arange(c_num, dtype=jnp.int32)[:, None] * w, bits


def _lowest_bit(x: jax.Array) -> jax.Array:
    """Index of the lowest set bit of each int32 ``x`` (0 where none is set)."""
    return jnp.where(x == 0, 0, 31 - jax.lax.clz(x & -x))


def _aic_head(shape: EngineShape, tab: Tables, st: State) -> AicHead:
    """Each AIC's situation, all [C, B]: cursor slot and word; the pending action of a call (pc
    clamped; its [C, 7, B] ``Tables.act`` row), the global slot it frees and that slot's word."""
    f = tab.act.shape[1]
    pc = jnp.minimum(st.aic_pc, f - 1)
    flat = tab.act.reshape(-1, *tab.act.shape[2:])
    cur = cursor_slot(shape, st)
    # the gathers' indices are materialised (see materialise): fused into a gather, an index is
    # computed again for every element gathered, in scalar code (the cursor's byte is a select
    # over the block's columns)
    running = (st.status == Status.RUNNING).any()
    if shape.packed:  # the cursor's version: Tables.slot_ver at (grid index, write count)

        def at():
            byte, idx, _ = block_byte(shape, st.slot, cur)
            return st.aic_ver * f + pc, (idx << 6) + (byte >> PACK_COUNT_SHIFT), byte

        act_at, ver_at, byte = materialise(running, at)
    else:
        (act_at,) = materialise(running, lambda: (st.aic_ver * f + pc,))
    act = lookup(shape, flat, act_at)
    f_slot = act[:, ACT["slot"]]
    if shape.packed:  # f_word: the head state only (a free keeps the write count)
        f_word = block_byte(shape, st.slot, f_slot)[0] & 3
        vflat = tab.slot_ver.reshape(-1, *tab.slot_ver.shape[2:])
        # the wide word of the cursor's slot: its head state and its version
        cur_word = slot_word(byte & 3, lookup(shape, vflat[:, None], ver_at)[:, 0])
        return AicHead(cur, cur_word, pc, act, f_slot, f_word)
    return AicHead(cur, slot_pick(shape, st.slot, cur), pc, act, f_slot, slot_pick(shape, st.slot, f_slot))


def aic_ready(shape: EngineShape, st: State, head: AicHead, f_wait: jax.Array | None = None) -> jax.Array:
    """[C, B] whether each AIC's next action is enabled on ``st`` (``f_wait``: the pending
    action's wait column of ``head.act``, where the caller has it apart)."""
    cur_word, f_word = head.cur_word, head.f_word
    f_wait = head.act[:, ACT["wait"]] if f_wait is None else f_wait
    in_recv = st.aic_phase == AicPhase.RECEIVE
    in_call = st.aic_phase == AicPhase.CALL
    call_ok = (f_wait == NO_WAIT) | ((f_word & 0xFF) == f_wait)
    running = (st.status == Status.RUNNING)[None, :]
    return running & ((in_recv & ((cur_word & 0xFF) != FREE)) | (in_call & call_ok))


def aic_step(shape: EngineShape, tab: Tables, cost: jax.Array, st: State, keys: jax.Array, tmin: tuple | None):
    """Every AIC whose next action is enabled performs it (timed schedule: those starting at ``tmin``,
    as in :func:`aiv_step`).

    Returns the new state, [C, B] enabled, and [C, B] whether each AIC performed a matmul action
    this step, with [C, A, B] its resolved IterateAll words. An AIC whose dispatch is a protocol
    error logs the message, records the error and stops (AicPhase.ERROR); nothing else changes.
    """
    consts = shape.aic_constants()
    c_num, b = st.aic_phase.shape
    f = tab.act.shape[1]
    w = st.slot.shape[1]
    r = st.recv_ver.shape[1]
    n = jnp.asarray(consts["n"])[:, None]
    p = jnp.asarray(consts["p"])[:, None]
    pos, col = st.aic_pos, st.aic_col
    head = _aic_head(shape, tab, st)
    cur, cur_word, pc, act_row, f_slot, f_word = head
    # the action row's columns apart: the [C, 7, B] row read inside the branch below would be
    # copied there into another layout
    a_col = {k: act_row[:, ACT[k]] for k in ("wait", "mm", "assert", "next", "note")}
    in_call = st.aic_phase == AicPhase.CALL
    if shape.timed:
        t_start, t_dur = aic_times(shape, tab, cost, st, head)

    def decide():
        """The dispatch decision as the [C, B] arrays the updates below read (see materialise)."""
        cur_state, f_is_mm = cur_word & 0xFF, a_col["mm"] > 0
        in_recv = st.aic_phase == AicPhase.RECEIVE
        ready = aic_ready(shape, st, head, a_col["wait"])
        if shape.timed:
            act = ready & clock.equal(t_start, (tmin[0][None, :], tmin[1][None, :]))
        else:
            act = ready & _chosen(shape, keys, c_num)

        # -- dispatch: the callback's decision for the version under the cursor ------------------
        ver = jnp.maximum((cur_word >> 8) - 1, 0)
        vt = lookup(shape, tab.ver, ver)  # [C, 5, B]
        is_quit = cur_state == QUIT
        log_full = st.recv_count >= lane_table(shape, tab.receive_limit)[None]
        # an assert fires where its call is made (encode.py decides per version and build): VER["code"]
        # before any action of the call, ACT["assert"] right after the action it follows
        code = jnp.where(log_full, ErrorCode.RECEIVE_LOG_FULL, jnp.where(is_quit, 0, vt[:, VER["code"]]))
        recv_act = act & in_recv
        call_stop = jnp.where(act & in_call, a_col["assert"], 0)  # the action is performed first
        error = jnp.where(recv_act, code, call_stop)
        recv_ok = recv_act & (code == 0)
        free_act = act & in_call
        call_now = recv_ok & ~is_quit
        first, next_pc = vt[:, VER["first"]], a_col["next"]
        flags = {
            "ready": ready,
            "acts": act,
            "logged": recv_act & (code != ErrorCode.RECEIVE_LOG_FULL),  # a message that caused an error too
            "quit": recv_ok & is_quit,
            "call": call_now,
            "free_act": free_act,
            "freeing": free_act & ~f_is_mm,
            "call_end": (call_now & (first >= f)) | (free_act & (next_pc >= f)),
            "mm": free_act & f_is_mm,
        }
        word = error | _flag_bits(flags)
        if shape.notes_asserts:  # the CPU twin's stop, where this build passes it
            asserted = jnp.where(
                recv_act & ~log_full & ~is_quit, vt[:, VER["note"]], jnp.where(act & in_call, a_col["note"], 0)
            )
            word = word | (asserted << NOTE_SHIFT)
        # the word and the version under the cursor are materialised once: every update below is a
        # shift / select of them (fused into its consumers, the decision above would be recomputed in
        # each of them, and per column in the grid free)
        # (with the version row's columns the updates read: gathering the row again costs more)
        # (and, at [C, B], where the log entry goes and which bits of its block row the free clears,
        # so that the [C, R, B] log and the [C, W, B] grid are a compare and a select per element)
        small = r < 128 and st.recv_ver.dtype == jnp.int8  # the position fits the log's element type
        log_at = jnp.where(flags["logged"], st.recv_count, r).astype(jnp.int8 if small else jnp.int32)
        free_col, free_bits = _free_bits(shape, st.slot, f_slot, flags["freeing"])
        free = () if free_col is None else (free_col, free_bits)
        return (
            word, ver, f_slot, first, vt[:, VER["skip"]], vt[:, VER["aiv_id"]],
            log_at, ver.astype(st.recv_ver.dtype), *free,
        )  # fmt: skip

    word, ver, f_slot, first, skip_v, aiv_id, log_at, log_ver, *free = materialise(
        (st.status == Status.RUNNING).any(), decide
    )
    error = word & ERROR_MASK
    failing = error > 0  # this AIC stops here (AicPhase.ERROR)
    bit = {k: (word & (1 << i)) != 0 for k, i in FLAG_BIT.items()}
    quit_now, call_now, free_act, freeing, call_end = (
        bit[k] for k in ("quit", "call", "free_act", "freeing", "call_end")
    )
    logged = bit["logged"]

    # -- log every received message, by a select over the log's R entries (a scatter into
    # [C, R, B] runs element by element on a CPU); an entry past R is counted but not kept
    # (simulate runs such a lane again with the whole log: EngineShape.whole_log)
    at = log_at[:, None, :] == jnp.arange(r, dtype=log_at.dtype)[None, :, None]
    recv_ver = jnp.where(at, log_ver[:, None, :], st.recv_ver)

    # -- QUIT: clear bit aivID ---------------------------------------------------------------
    cols = jnp.arange(w)[None, :, None]
    quit_col = jnp.where(quit_now, aiv_id, -1)  # [C, B]: the column a QUIT retires
    if shape.alive_bits:
        in_row = (quit_col >= 0) & (quit_col < w)
        alive = st.aic_alive & ~jnp.where(in_row, jnp.int32(1) << jnp.clip(quit_col, 0, w - 1), 0)
    else:
        alive = st.aic_alive & (cols != quit_col[:, None, :])

    # -- CALL: perform the next action (a free, or a matmul handed to the compute phase) ---------
    if free:  # packed grid, frees in the AIC's own block: bits of one column
        free_col, free_bits = free
        cleared = jnp.where(
            free_col[:, None, :] == jnp.arange(w, dtype=jnp.int32)[None, :, None], free_bits[:, None, :], 0
        )
        slot = st.slot & ~cleared
    elif shape.packed:
        slot = packed_free(shape, st.slot, f_slot, freeing)
    else:
        freed_word = (f_word & ~0xFF) | FREE  # FreeMessage writes the head state only
        slot = slot_put(shape, st.slot, f_slot, freeing, freed_word)
    aic_pc = jnp.where(call_now, first, jnp.where(free_act, a_col["next"], st.aic_pc))
    aic_ver = jnp.where(call_now, ver, st.aic_ver)
    if shape.has_matmul:  # the IterateAll performed now sees the state from before this call's end
        fields = mm_fields(shape, tab, st.mm_state, st.aic_ver, pc)
    else:
        fields = jnp.zeros((c_num, 0, b), jnp.int32)

    # -- end of Call (SetSkipMsg, then release) or after a QUIT (release) ----------------------
    releasing = call_end | quit_now
    skip = jnp.where(call_now, skip_v, st.aic_skip)
    skipped = jnp.where(call_end, skip, 0)  # SetSkipMsg: aivWork += k, msgPos += k
    new_pos, new_col = _release(alive, n, p, pos + skipped, col + skipped)
    finished = releasing & ((alive == 0) if shape.alive_bits else ~alive.any(axis=1))
    mm_state = st.mm_state
    if shape.has_matmul:  # CallBack::Call returned: the Matmul object keeps what it set
        upd = lookup(shape, tab.ver_mmf, aic_ver)  # [C, M + 1, B]
        bits = (upd[:, N_MM][:, None, :] >> jnp.arange(N_MM, dtype=jnp.int32)[None, :, None]) & 1
        mm_state = jnp.where(call_end[:, None, :] & (bits == 0), upd[:, :N_MM], mm_state)
    phase = select_first(
        [failing, finished, releasing, call_now],
        [AicPhase.ERROR, AicPhase.DONE, AicPhase.RECEIVE, AicPhase.CALL],
        st.aic_phase,
    ).astype(jnp.int32)

    aic_asserts, aic_assert_n = st.aic_asserts, st.aic_assert_n
    if shape.notes_asserts:  # the CPU twin's stop, where this build passes it (once per AIC)
        asserted = word >> NOTE_SHIFT
        noted = (asserted > 0) & (aic_assert_n == 0)
        entry = (cur << 5) | asserted
        aic_asserts = jnp.where(noted[:, None, :], entry[:, None, :], aic_asserts)
        aic_assert_n = aic_assert_n + noted

    timed = st.timed
    if shape.timed:
        t_end = clock.add(t_start, t_dur)
        done_ok = bit["acts"] & ~failing  # an AIC whose action is a protocol error changes nothing
        aic_clock = timed.pair("aic_clock")
        zero = (jnp.zeros_like(t_end[0]), jnp.zeros_like(t_end[0]))
        timed = timed.put(
            aic_clock=clock.where(done_ok, t_end, aic_clock),
            aic_busy=clock.add(timed.pair("aic_busy"), clock.where(done_ok, t_dur, zero)),
            aic_blocked=clock.add(timed.pair("aic_blocked"), clock.where(done_ok, clock.sub(t_start, aic_clock), zero)),
            slot_time=tuple(
                slot_put(shape, w, f_slot, freeing & ~failing, e)
                for w, e in zip(timed.pair("slot_time"), t_end, strict=True)
            ),
        )
    st = dataclasses.replace(
        st,
        slot=slot,
        aic_phase=phase,
        aic_pos=jnp.where(releasing, new_pos, pos),
        aic_col=jnp.where(releasing, new_col, col),
        aic_alive=alive,
        aic_ver=aic_ver,
        aic_pc=aic_pc.astype(jnp.int32),
        aic_skip=skip,
        recv_ver=recv_ver,
        recv_count=st.recv_count + logged,
        aic_err_code=jnp.where(failing, error, st.aic_err_code),
        aic_err_slot=jnp.where(failing, cur, st.aic_err_slot),
        aic_err_ver=jnp.where(failing, jnp.where(in_call, st.aic_ver, ver), st.aic_err_ver),
        mm_state=mm_state,
        aic_asserts=aic_asserts,
        aic_assert_n=aic_assert_n,
        timed=timed,
    )
    return st, bit["ready"], bit["mm"], fields


#: the action word (:func:`aic_step`): bits 0..4 the error the action stops at (an ErrorCode,
#: 0: none); then one bit per decision; from NOTE_SHIFT up the assert the CPU twin would stop at
ERROR_MASK = 31
FLAG_BIT = {
    k: 5 + i for i, k in enumerate(("ready", "acts", "logged", "quit", "call", "free_act", "freeing", "call_end", "mm"))
}
NOTE_SHIFT = 5 + len(FLAG_BIT)


def materialise(pred: jax.Array, fn: Callable[[], tuple[jax.Array, ...]]) -> tuple[jax.Array, ...]:
    """``fn()``, computed once into memory: it runs as the taken branch of a ``lax.cond`` on
    ``pred`` (any scalar the compiler cannot fold; where it is false, zeros), whose results XLA
    must materialise. XLA:CPU fuses an elementwise producer into each of its consumers and
    recomputes it there, and it drops an ``optimization_barrier`` before fusion, so a decision
    read by many updates is otherwise computed once per update. The values are computed inside
    the branch, so its kernels write them in place: a branch that returned arrays computed
    outside it would copy each of them (one extra pass over each per step)."""
    return jax.lax.cond(pred, fn, lambda: tuple(jnp.zeros(x.shape, x.dtype) for x in jax.eval_shape(fn)))


def _flag_bits(flags: dict[str, jax.Array]) -> jax.Array:
    """The decision bits of the action word (:data:`FLAG_BIT`) from [C, B] booleans."""
    out = None
    for k, v in flags.items():
        x = v.astype(jnp.int32) << FLAG_BIT[k]
        out = x if out is None else out | x
    return out


def cursor_slot(shape: EngineShape, st: State) -> jax.Array:
    """[C, B] global slot index under each AIC's cursor."""
    consts = shape.aic_constants()
    return jnp.asarray(consts["block"])[:, None] + st.aic_pos


def step(shape: EngineShape, tab: Tables, cost: jax.Array, st: State) -> StepOut:
    """One protocol step of the batch, then the status update. A lane that is not RUNNING enables
    no core and keeps its state. ``cost`` is [12, B]. Returns a :class:`StepOut`: the state, the
    step's matmul requests (for :func:`ascend_jax.cube_group.engine.compute.batch_tiles`) and its
    vector ops."""
    keys = st.key
    k_aiv = k_aic = keys
    if shape.needs_key:
        raw = jax.vmap(lambda k: jax.random.key_data(jax.random.split(jax.random.wrap_key_data(k), 3)))(keys)
        keys, k_aiv, k_aic = raw[:, 0], raw[:, 1], raw[:, 2]
    tmin = None
    if shape.timed:  # event-driven: time jumps to the earliest start; only the cores starting then act
        ops = _aiv_ops(shape, tab, st)
        r_v = aiv_ready(shape, tab, st, ops)
        s_v, _ = aiv_times(shape, tab, cost, st, ops)
        head = _aic_head(shape, tab, st)
        r_c = aic_ready(shape, st, head)
        s_c, _ = aic_times(shape, tab, cost, st, head)
        none = (jnp.inf, 0.0)  # a core that cannot act
        t_v = clock.reduce_min(clock.where(r_v, s_v, none), 0)
        t_c = clock.reduce_min(clock.where(r_c, s_c, none), 0)
        tmin = clock.where(clock.less(t_c, t_v), t_c, t_v)  # the next cycle at which some core can act
        st = occupancy(shape, st, tmin)
    running = st.status == Status.RUNNING
    new, v_ready, vec = aiv_step(shape, tab, cost, st, k_aiv, tmin)
    # the AICs read the grid the AIVs left: computed once, not per AIC read (see materialise);
    # computed outside the branch, so copied there: running the AIV step inside it (its op
    # gathers passed in) measured 20 % slower
    slot, v_ready = materialise(running.any(), lambda: (new.slot, v_ready))
    new = dataclasses.replace(new, slot=slot)
    new, aic_ready_, mm_now, mm_fields_ = aic_step(shape, tab, cost, new, k_aic, tmin)
    steps = st.step + 1
    done = lane_done(shape, tab, new.aiv_pc, new.aic_phase, new.aiv_mte3)
    progressed = rows_any(v_ready) | rows_any(aic_ready_)
    status = select_first(
        [done, ~progressed, steps >= tab.max_steps], [Status.OK, Status.DEADLOCK, Status.MAX_STEPS], Status.RUNNING
    )
    status = final_status(status, new.aic_phase)
    new = dataclasses.replace(
        new,
        step=jnp.where(running, steps, st.step),
        status=jnp.where(running, status, st.status),
        key=jnp.where(running[:, None], keys, st.key),
    )
    return StepOut(new, mm_now & running[None, :], mm_fields_, vec)


def _rows(x: jax.Array, op, reduce, empty: bool) -> jax.Array:
    """``x`` [N, B] reduced over its rows. XLA:CPU rewrites a boolean reduction over more than 32
    rows into a reduce-window, which it runs element by element (the [48, B] AIV reductions were
    about a quarter of the step at 4,096 lanes). Many rows: an int8 reduction (measured on
    [48, 4,096]: half the cost of an int32 one, a quarter of a tree of elementwise ops), of
    adjacent row pairs combined first when N is even (an elementwise op that fuses into the rows'
    producer and halves what the reduction reads: the protocol loop at 4,096 lanes, exported and
    timed alternately, 15.1 against 16.2 ms a call; ``benchmarks/README.md``, session 17); a few
    rows: a tree of elementwise ops, which fuses into its consumer (a reduction is a call of its
    own)."""
    n = x.shape[0]
    if n > 16:
        if n % 2 == 0:
            pairs = x.reshape(n // 2, 2, *x.shape[1:])
            x = op(pairs[:, 0], pairs[:, 1])
        return reduce(x.astype(jnp.int8), axis=0) > 0
    if n == 0:
        return jnp.full(x.shape[1:], empty, bool)
    rows = [x[i] for i in range(n)]
    while len(rows) > 1:
        rows = [op(rows[i], rows[i + 1]) if i + 1 < len(rows) else rows[i] for i in range(0, len(rows), 2)]
    return rows[0]


def rows_any(x: jax.Array) -> jax.Array:
    """[B] whether any row of the boolean ``x`` [N, B] is set (see :func:`_rows`)."""
    return _rows(x, jnp.logical_or, jnp.max, False)


def rows_all(x: jax.Array) -> jax.Array:
    """[B] whether every row of the boolean ``x`` [N, B] is set (see :func:`_rows`)."""
    return _rows(x, jnp.logical_and, jnp.min, True)


def lane_done(
    shape: EngineShape, tab: Tables, aiv_pc: jax.Array, aic_phase: jax.Array, aiv_mte3: jax.Array | None = None
) -> jax.Array:
    """[B] every AIV past its last op and out of ``~KfcWorkspace`` (which waits for the MTE3->S
    flag: the reference's ``_Aiv.done``), and every AIC out of its loop or stopped at an error."""
    stopped = (aic_phase == AicPhase.DONE) | (aic_phase == AicPhase.ERROR)
    past = aiv_pc >= lane_table(shape, tab.op_len)
    if shape.has_mte3 and aiv_mte3 is not None:  # ~KfcWorkspace on the AIV waits for the MTE3->S flag
        past = past & aiv_mte3
    return rows_all(past) & rows_all(stopped)


def final_status(status: jax.Array, aic_phase: jax.Array) -> jax.Array:
    """[B] a lane that has stopped with some AIC stopped at an error ends in ERROR."""
    failed = rows_any(aic_phase == AicPhase.ERROR)
    return jnp.where((status != Status.RUNNING) & failed, Status.ERROR, status).astype(jnp.int32)

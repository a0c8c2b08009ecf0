"""One engine step for a whole batch: every enabled AIV acts, then every enabled AIC acts.

The step is written for the batch with the lane axis last (``[..., B]``), so its selects and
reductions run over contiguous lanes. Per-lane look-ups avoid gathers where the structure allows:
an AIV's next op is a one-hot select over its ops (short programs), its own queue is a static row
of the slot grid, an AIC's cursor and the slot it frees are one-hot selects over its ``W x 4``
block, barrier counters a one-hot over their copies. Gathers remain only for the callback's
decision tables (``[C]`` per lane) and as the general path for long programs or AIVs that touch
other queues. Blocking calls are predicates evaluated once per step on the state at the start of
the phase; cores act by masks (no ``lax.cond`` / ``lax.switch``).

The callback is not evaluated here: its decision for every slot version was computed when the
program was encoded (:mod:`ascend_jax.cube_group.encode`). A lane that is not RUNNING enables no
core, so its state stays as it is.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ascend_jax.cube_group.callbacks import NO_WAIT
from ascend_jax.cube_group.encode import VEC
from ascend_jax.cube_group.state import (
    ACT,
    KIND_BITS,
    MAX_VERSIONS,
    MTE3_BIT,
    PACK_COUNT_SHIFT,
    PACK_OP_COUNT_BIT,
    VER,
    VERSION_BITS,
    EngineShape,
    State,
    Tables,
    slot_word,
)
from ascend_jax.cube_group.status import AicPhase, ErrorCode, OpKind, Status
from ascend_jax.matmul import AF, N_ACTION, N_MM
from ascend_jax.message import MAX_MSG_PER_AIV, CubeMsgState
from ascend_jax.timing import C as TC

FREE, VALID, QUIT, FAKE = (int(s) for s in CubeMsgState)
D4 = MAX_MSG_PER_AIV
#: programs up to this many ops per AIV fetch ops by a one-hot select, longer ones by a gather
ONEHOT_OPS = 32


# -- look-up helpers (lane axis last) -----------------------------------------------------------
def _lane(shape: EngineShape, x: jax.Array) -> jax.Array:
    """A table field made broadcastable against ``[..., B]`` (shared tables have no lane axis)."""
    return x[..., None] if shape.shared else x


def _lookup(shape: EngineShape, table: jax.Array, idx: jax.Array) -> jax.Array:
    """Rows of a table at ``idx`` [M, B]: ``table`` [K, *X] (shared) or [K, *X, B] -> [M, *X, B]."""
    if shape.shared:
        return jnp.moveaxis(table[idx], 1, -1)
    extra = table.ndim - 2
    full = jnp.broadcast_to(idx.reshape(idx.shape[0], *(1,) * extra, idx.shape[1]), (idx.shape[0], *table.shape[1:]))
    return jnp.take_along_axis(table, full, axis=0)


def _pick4(rows: jax.Array, d: jax.Array) -> jax.Array:
    """``rows`` [M, 4, B] at depth ``d`` [M, B] -> [M, B] (a select chain over the 4 depths)."""
    out = rows[:, 0]
    for k in range(1, D4):
        out = jnp.where(d == k, rows[:, k], out)
    return out


def _slot_index(shape: EngineShape, slot: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Flat grid index of global slots ``slot`` [C, B] read by AIC c, and whether the slot lies in
    that AIC's group (a cursor or free past the group's slots, possible in a release build, reads
    FREE and writes nothing)."""
    consts = shape.aic_constants()
    lo, hi = (jnp.asarray(consts[k])[:, None] for k in ("group_lo", "group_hi"))
    inside = (slot >= lo) & (slot < hi)
    table = jnp.asarray(shape.grid_of_slot, jnp.int32)
    return table[jnp.clip(slot, 0, table.shape[0] - 1)], inside


def _slot_pick(shape: EngineShape, grid: jax.Array, slot: jax.Array) -> jax.Array:
    """The words (or times) of global slots ``slot`` [C, B] from ``grid`` [C, W, 4, B] (a gather of
    C elements per lane; 0 outside the group)."""
    flat = grid.reshape(-1, grid.shape[-1])
    idx, inside = _slot_index(shape, slot)
    return jnp.where(inside, jnp.take_along_axis(flat, idx, axis=0), jnp.zeros((), grid.dtype))


def _slot_put(shape: EngineShape, grid: jax.Array, slot: jax.Array, mask: jax.Array, value: jax.Array) -> jax.Array:
    """``grid`` with global slot ``slot`` set to ``value`` where ``mask`` (all [C, B])."""
    flat = grid.reshape(-1, grid.shape[-1])
    idx, inside = _slot_index(shape, slot)
    idx = jnp.where(mask & inside, idx, flat.shape[0])
    lanes = jnp.broadcast_to(jnp.arange(flat.shape[1])[None, :], idx.shape)
    return flat.at[idx, lanes].set(value, mode="drop").reshape(grid.shape)


def _select(conds: list, values: list, default):
    """``jnp.select`` as a chain of ``where`` (the first true condition wins). ``jnp.select`` takes an
    argmax over the stacked conditions, which XLA:CPU runs as a slow, unvectorised variadic reduce."""
    out = default
    for cond, value in zip(reversed(conds), reversed(values), strict=True):
        out = jnp.where(cond, value, out)
    return out


def _first_true(mask: jax.Array, axis: int = 0) -> jax.Array:
    """Index of the first True along ``axis`` (0 if none). A min over indices, not ``argmax``:
    XLA:CPU runs argmax as a variadic reduce that does not vectorise over lanes."""
    n = mask.shape[axis]
    iota = jax.lax.broadcasted_iota(jnp.int32, mask.shape, axis)
    first = jnp.where(mask, iota, n).min(axis=axis)
    return jnp.where(first == n, 0, first)


def _chosen(shape: EngineShape, keys: jax.Array, n: int) -> jax.Array:
    """[n, B] which enabled cores act: all (lockstep) or each with probability 1/2 (random)."""
    if shape.schedule != "random":
        return jnp.ones((n, keys.shape[0]), bool)
    draw = jax.vmap(lambda k: jax.random.bernoulli(jax.random.wrap_key_data(k), 0.5, (n,)))(keys)
    return draw.T


# -- AIV side ----------------------------------------------------------------------------------
def _aiv_ops(shape: EngineShape, tab: Tables, st: State):
    """Each AIV's next op: (pc, kind, x, a, b, c), all [V, B] (pc clamped for finished AIVs),
    unpacked from the two words of :func:`ascend_jax.cube_group.state.pack_op`."""
    n_ops = tab.ops.shape[1]
    pc = jnp.minimum(st.aiv_pc, n_ops - 1)
    if n_ops <= ONEHOT_OPS:
        sel = pc[:, None, :] == jnp.arange(n_ops)[None, :, None]
        w0 = jnp.where(sel, _lane(shape, tab.ops[:, :, 0]), 0).sum(axis=1)
        w1 = jnp.where(sel, _lane(shape, tab.ops[:, :, 1]), 0).sum(axis=1)
    elif shape.shared:
        w = tab.ops[jnp.arange(pc.shape[0])[:, None], pc]
        w0, w1 = w[..., 0], w[..., 1]
    else:
        w0 = jnp.take_along_axis(tab.ops[:, :, 0], pc[:, None, :], axis=1)[:, 0]
        w1 = jnp.take_along_axis(tab.ops[:, :, 1], pc[:, None, :], axis=1)[:, 0]
    kind, x = w0 & ((1 << KIND_BITS) - 1), (w0 >> KIND_BITS) & ((1 << (MTE3_BIT - KIND_BITS)) - 1)
    write = kind == OpKind.WRITE
    barrier = (kind == OpKind.ARRIVE) | (kind == OpKind.BWAIT)
    a = jnp.where(write, w1 >> VERSION_BITS, jnp.where(barrier, x >> 6, w1))
    c = jnp.where(write, w1 & (MAX_VERSIONS - 1), w1)
    b = jnp.where(barrier, x & 63, (w0 >> MTE3_BIT) & 1)  # barrier: the copy index; alloc/write: MTE3
    return pc, kind, x, a, b, c


def _home_rows(shape: EngineShape, grid: jax.Array) -> jax.Array:
    """[V, 4, B] each AIV's own queue row of the ``[C, W, 4, B]`` grid (static rows); [V, B] words
    of a packed ``[C, W, B]`` grid."""
    rows = grid.reshape(-1, *grid.shape[2:])
    home = np.asarray(shape.aiv_home)
    if home.shape[0] == rows.shape[0] and (home == np.arange(home.shape[0])).all():
        return rows
    return rows[np.maximum(home, 0)]


def _home_write(shape: EngineShape, grid: jax.Array, new_rows: jax.Array) -> jax.Array:
    """Writes the AIVs' rows back into the grid (inverse of :func:`_home_rows`)."""
    rows = grid.reshape(-1, *grid.shape[2:])
    home = np.asarray(shape.aiv_home)
    if home.shape[0] == rows.shape[0] and (home == np.arange(home.shape[0])).all():
        return new_rows.reshape(grid.shape)
    bound = np.flatnonzero(home >= 0)
    return rows.at[home[bound]].set(new_rows[bound]).reshape(grid.shape)


def _slot_read(shape: EngineShape, grid: jax.Array, x: jax.Array) -> jax.Array:
    """[V, B] the word of each AIV's target slot (grid index ``x`` [V, B])."""
    if shape.aiv_home is not None:
        return _pick4(_home_rows(shape, grid), x & (D4 - 1))
    flat = grid.reshape(-1, grid.shape[-1])
    return jnp.take_along_axis(flat, jnp.clip(x, 0, flat.shape[0] - 1), axis=0)


def _slot_write(shape: EngineShape, grid: jax.Array, x: jax.Array, mask: jax.Array, value: jax.Array) -> jax.Array:
    """The grid with each masked AIV's target slot set to ``value`` (all [V, B])."""
    if shape.aiv_home is not None:
        rows = _home_rows(shape, grid)
        sel = mask[:, None, :] & ((x & (D4 - 1))[:, None, :] == jnp.arange(D4)[None, :, None])
        return _home_write(shape, grid, jnp.where(sel, value[:, None, :], rows))
    flat = grid.reshape(-1, grid.shape[-1])
    lanes = jnp.broadcast_to(jnp.arange(flat.shape[1])[None, :], x.shape)
    flat = flat.at[jnp.where(mask, x, flat.shape[0]), lanes].set(value, mode="drop")
    return flat.reshape(grid.shape)


def _aiv_slot_state(shape: EngineShape, grid: jax.Array, x: jax.Array) -> jax.Array:
    """[V, B] the head state of each AIV's target slot (grid index ``x`` [V, B])."""
    if shape.packed:  # the AIV's own queue row, depth x & 3
        word = _home_rows(shape, grid)
        return (word >> ((x & (D4 - 1)) << 3)) & 3
    return _slot_read(shape, grid, x) & 0xFF


def _aiv_slot_post(shape: EngineShape, grid: jax.Array, x: jax.Array, mask: jax.Array, state, version, count):
    """The grid with each masked AIV's target slot (grid index ``x``) holding head ``state`` and
    ``version`` (wide grid) or its write ``count`` (packed grid), all [V, B]."""
    if not shape.packed:
        return _slot_write(shape, grid, x, mask, slot_word(state, version))
    word = _home_rows(shape, grid)  # [V, B]
    shift = (x & (D4 - 1)) << 3
    byte = state | (count << PACK_COUNT_SHIFT)
    new = (word & ~(jnp.int32(0xFF) << shift)) | (byte << shift)
    return _home_write(shape, grid, jnp.where(mask, new, word))


def _barrier_read(st_counter: jax.Array, bar: jax.Array, idx: jax.Array) -> jax.Array:
    """[V, B] counter copy ``idx`` of barrier ``bar`` (one-hot over the copies)."""
    nb, nc, b = st_counter.shape
    key = jnp.clip(bar, 0, nb - 1) * nc + jnp.clip(idx, 0, nc - 1)
    sel = key[:, None, :] == jnp.arange(nb * nc)[None, :, None]
    return jnp.where(sel, st_counter.reshape(1, nb * nc, b), 0).sum(axis=1)


def _aiv_times(shape: EngineShape, tab: Tables, cost: jax.Array, st: State, ops):
    """Timed schedule: [V, B] start cycle and duration of every AIV's next op (valid where ready)."""
    _, kind, x, a, _, _ = ops
    tm = st.timed
    nb = tm.barrier_time.shape[0]
    slot_t = _slot_read(shape, tm.slot_time, x)
    bar_sel = jnp.clip(a, 0, nb - 1)[:, None, :] == jnp.arange(nb)[None, :, None]
    bar_t = jnp.where(bar_sel, tm.barrier_time[None], 0.0).sum(axis=1)
    last_core = jnp.maximum(tm.aiv_clock.max(axis=0), tm.aic_clock.max(axis=0))[None, :]  # SyncAll
    enable = _select(
        [
            kind == OpKind.ALLOC,
            (kind == OpKind.WAIT) & (a != 0),
            (kind == OpKind.ARRIVE) | (kind == OpKind.BWAIT),
            kind == OpKind.SYNC,
        ],
        [slot_t, slot_t, bar_t, jnp.broadcast_to(last_core, slot_t.shape)],
        0.0,
    )
    start = jnp.maximum(tm.aiv_clock, enable)
    c = cost[:, None, :]  # [12, 1, B]
    vec_dur = 0.0
    if shape.has_vector:  # vector.vector_cycles: a copy at the GM rate, compute at vec_rate
        w = vector_words(shape, tab, a)
        nbytes = w[:, VEC["bytes"]].astype(jnp.float32)
        copy = w[:, VEC["kind"]] <= 1  # load, store
        vec_dur = c[TC["vec_issue"]] + jnp.where(copy, nbytes / c[TC["ddr_rate"]], jnp.ceil(nbytes / c[TC["vec_rate"]]))
    dur = _select(
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
         a.astype(jnp.float32), c[TC["barrier"]]],
        0.0,
    )  # fmt: skip
    return start, dur


def vector_words(shape: EngineShape, tab: Tables, row: jax.Array) -> jax.Array:
    """[V, 12, B] the ``Tables.vec`` rows ``row`` [V, B] (clipped: valid where the op is VECTOR)."""
    return _lookup(shape, tab.vec, jnp.clip(row, 0, tab.vec.shape[0] - 1))


def aiv_ready(shape: EngineShape, tab: Tables, st: State, ops) -> jax.Array:
    """[V, B] whether each AIV's next op is enabled on ``st`` (never in a lane that has stopped)."""
    active = (st.aiv_pc < _lane(shape, tab.op_len)) & (st.status == Status.RUNNING)[None, :]
    _, kind, x, a, b, c = ops
    slot_free = _aiv_slot_state(shape, st.slot, x) == FREE
    conds = [kind == OpKind.ALLOC, kind == OpKind.WAIT]
    values = [slot_free & ((b == 0) | st.aiv_mte3), (a == 0) | slot_free]  # an MTE3 alloc waits for the flag
    if shape.has_sync:  # SyncAll: every AIV with a program at this round, every AIC out of its loop
        k = st.aiv_syncs
        at_sync = (st.aiv_pc < _lane(shape, tab.op_len)) & (kind == OpKind.SYNC)
        absent = jnp.broadcast_to(_lane(shape, tab.op_len) == 0, k.shape)
        ok = (k[None] > k[:, None]) | (at_sync[None] & (k[None] == k[:, None])) | absent[None]
        aics_done = (st.aic_phase == AicPhase.DONE).all(axis=0)[None, :]
        conds.append(kind == OpKind.SYNC)
        values.append(ok.all(axis=1) & aics_done)
    if shape.barrier_copies:  # no barrier counters to read otherwise
        conds += [kind == OpKind.ARRIVE, kind == OpKind.BWAIT]
        values += [(c < 0) | (_barrier_read(st.barrier_wait, a, b) == c), _barrier_read(st.barrier_arrive, a, b) >= c]
    return active & _select(conds, values, True)


def aiv_step(shape: EngineShape, tab: Tables, cost: jax.Array, st: State, keys: jax.Array, tmin: jax.Array | None):
    """Every AIV whose next op is enabled performs it (timed schedule: those starting at ``tmin``).
    Returns the new state, [V, B] enabled, and the vector ops performed: ([V, B] which AIVs, their
    [V, 12, B] words), or None without vector ops (:func:`ascend_jax.cube_group.compute.apply_vector_ops`
    runs them)."""
    ops = _aiv_ops(shape, tab, st)
    pc, kind, x, a, b, c = ops
    v = pc.shape[0]
    ready = aiv_ready(shape, tab, st, ops)
    is_delay = kind == OpKind.DELAY
    if shape.timed:  # a delay is one action of `cycles` cycles
        start, dur = _aiv_times(shape, tab, cost, st, ops)
        act = ready & (start == tmin[None, :])
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
    slot = _aiv_slot_post(shape, st.slot, x, write, a, c, count)
    aiv_syncs = st.aiv_syncs + (act & (kind == OpKind.SYNC)) if shape.has_sync else st.aiv_syncs
    mte3 = (b == 1) & ((kind == OpKind.ALLOC) | write)
    aiv_mte3 = jnp.where(act & mte3, kind == OpKind.WRITE, st.aiv_mte3)  # alloc takes it, post sets it

    wait_result = st.aiv_wait_result
    if shape.wait_tests:
        test = act & (kind == OpKind.WAIT) & (a == 0)
        slot_free = _aiv_slot_state(shape, st.slot, x) == FREE
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
        end = start + dur
        waiting = (kind == OpKind.WAIT) | (kind == OpKind.ARRIVE) | (kind == OpKind.BWAIT) | (kind == OpKind.SYNC)
        is_bar = act & ((kind == OpKind.ARRIVE) | (kind == OpKind.BWAIT))
        nb = timed.barrier_time.shape[0]
        of_bar = (jnp.clip(a, 0, nb - 1)[:, None, :] == jnp.arange(nb)[None, :, None]) & is_bar[:, None, :]
        bar_end = jnp.where(of_bar, end[:, None, :], -jnp.inf).max(axis=0)
        timed = dataclasses.replace(
            timed,
            aiv_clock=jnp.where(act, end, timed.aiv_clock),
            slot_time=_slot_write(shape, timed.slot_time, x, write, end),
            barrier_time=jnp.maximum(timed.barrier_time, bar_end),
            aiv_alloc_stall=timed.aiv_alloc_stall
            + jnp.where(act & (kind == OpKind.ALLOC), start - timed.aiv_clock, 0.0),
            aiv_wait_stall=timed.aiv_wait_stall + jnp.where(act & waiting, start - timed.aiv_clock, 0.0),
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
        vec = (act & (kind == OpKind.VECTOR), vector_words(shape, tab, a))
    return st, ready, vec


# -- AIC side ----------------------------------------------------------------------------------
def _release(
    alive: jax.Array, n: jax.Array, p: jax.Array, pos: jax.Array, col: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """``__ReleaseMessage`` in closed form on the device's cursor: ``msgPos`` ``pos`` (slots from
    the AIC's block base) and ``aivWork`` ``col``, both [C, B]; [C, W, B] alive, [C, 1] n and P.

    Advancing moves both by one inside the live part of a row; at its end (``aivWork + 1 >= n``)
    ``msgPos`` jumps over the unused columns to the next row (to 0 from row 3) and ``aivWork``
    restarts at 0; then quit columns are skipped. A skip past the row (release builds) leaves
    ``msgPos`` ahead of ``aivWork``; the arithmetic keeps that offset, as on the device.
    """
    w = alive.shape[1]
    cols = jnp.arange(w)[None, :, None]
    later = alive & (cols > col[:, None, :]) & (cols < n[:, :, None])
    has_later = later.any(axis=1) & (col + 1 < n)
    first_later = _first_true(later, axis=1)
    end = pos + jnp.maximum(n - 1 - col, 0)  # msgPos at the last live column of this row
    next_row = jnp.where(end // p == D4 - 1, 0, end + (p - n) + 1)
    first_any = _first_true(alive, axis=1)
    new_pos = jnp.where(has_later, pos + first_later - col, next_row + first_any)
    new_col = jnp.where(has_later, first_later, first_any)
    return new_pos.astype(jnp.int32), new_col.astype(jnp.int32)


def _free_asserts(shape: EngineShape, tab: Tables, ver: jax.Array, n: jax.Array, p: jax.Array) -> jax.Array:
    """[C, B] the first free assert of version ``ver`` judged from the receiving AIC, as the
    device's FreeMessage sees it: ``rcvMsg + i`` outside that AIC's block or on a column it does
    not serve, or a wait state other than VALID / FAKE, or a Matmul setter's assert (0: none).
    Release builds only: there a
    misaligned cursor can read a slot of another AIC's block, so the encode-time check (made for
    the slot's own AIC) does not apply."""
    consts = shape.aic_constants()
    block = jnp.asarray(consts["block"])[:, None]
    f = tab.act.shape[1]
    flat = tab.act.reshape(-1, *tab.act.shape[2:])
    first = jnp.zeros_like(ver)
    for j in range(f):
        row = _lookup(shape, flat, ver * f + j)  # [C, 5, B]
        rel = row[:, ACT["slot"]] - block
        wait = row[:, ACT["wait"]]
        out_block = (rel < 0) | (rel >= D4 * p)
        code = jnp.where(
            out_block,
            ErrorCode.FREE_OUT_OF_BLOCK,
            jnp.where(
                rel % p >= n,
                ErrorCode.FREE_UNUSED_COLUMN,
                jnp.where((wait != NO_WAIT) & (wait != VALID) & (wait != FAKE), ErrorCode.BAD_WAIT_STATE, 0),
            ),
        )
        code = jnp.where((row[:, ACT["en"]] > 0) & (row[:, ACT["mm"]] == 0), code, row[:, ACT["assert"]])
        first = jnp.where(first == 0, code, first)
    return first


def _packed_states(grid: jax.Array) -> jax.Array:
    """[C, W, 4, B] the head states of a packed ``[C, W, B]`` grid."""
    return (grid[:, :, None, :] >> (8 * jnp.arange(D4, dtype=jnp.int32))[None, None, :, None]) & 3


def _block_byte(shape: EngineShape, grid: jax.Array, slot: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Packed grid: the byte of global slots ``slot`` [C, B] read by AIC c, their grid index and
    whether the slot can be read, all [C, B] (byte 0 outside the group, as :func:`_slot_pick`). A debug build's cursor and frees stay
    in the AIC's own block (a skip past the row and a free outside it are errors), so the word is a
    select over the block's columns; a release build's may leave it (a gather)."""
    c_num, w, b = grid.shape
    if not shape.release:
        consts = shape.aic_constants()
        block, p = (jnp.asarray(consts[k])[:, None] for k in ("block", "p"))
        rel = slot - block
        d = (rel >= p).astype(jnp.int32) + (rel >= 2 * p) + (rel >= 3 * p)
        col = rel - d * p
        inside = (rel >= 0) & (rel < D4 * p)
        sel = col[:, None, :] == jnp.arange(w)[None, :, None]
        word = jnp.where(sel, grid, 0).sum(axis=1)
        idx = ((jnp.arange(c_num, dtype=jnp.int32)[:, None] * w + col) << 2) + d
    else:
        idx, inside = _slot_index(shape, slot)
        word = jnp.take_along_axis(grid.reshape(-1, b), idx >> 2, axis=0)
        d = idx & (D4 - 1)
    return jnp.where(inside, (word >> (d << 3)) & 0xFF, 0), jnp.where(inside, idx, 0), inside


def _packed_word(shape: EngineShape, tab: Tables, grid: jax.Array, slot: jax.Array) -> jax.Array:
    """Packed grid: the wide word (:func:`slot_word`) of global slots ``slot`` [C, B], the version
    looked up in ``Tables.slot_ver`` from the write count."""
    byte, idx, _ = _block_byte(shape, grid, slot)
    flat = tab.slot_ver.reshape(-1, *tab.slot_ver.shape[2:])
    ver = _lookup(shape, flat[:, None], (idx << 6) + (byte >> PACK_COUNT_SHIFT))[:, 0]
    return slot_word(byte & 3, ver)


def _packed_free(shape: EngineShape, grid: jax.Array, slot: jax.Array, mask: jax.Array) -> jax.Array:
    """Packed grid: FreeMessage of global slots ``slot`` [C, B] where ``mask``: the head state
    bits cleared, the write count kept. Several AICs may clear bits of one word in one step."""
    c_num, w, b = grid.shape
    _, idx, inside = _block_byte(shape, grid, slot)
    mask = mask & inside
    bits = jnp.where(mask, jnp.int32(3) << ((idx & (D4 - 1)) << 3), 0)  # [C, B]
    row = idx >> 2
    if not shape.release:  # each AIC clears a bit pair of its own block
        sel = (row - jnp.arange(c_num, dtype=jnp.int32)[:, None] * w)[:, None, :] == jnp.arange(w)[None, :, None]
        return grid & ~jnp.where(sel, bits[:, None, :], 0)
    flat = grid.reshape(-1, b)
    clear = jnp.zeros_like(flat)
    for k in range(c_num):  # an OR over AICs: two may free slots of one queue row in one step
        clear = clear | jnp.where(row[k][None, :] == jnp.arange(flat.shape[0])[:, None], bits[k][None, :], 0)
    return (flat & ~clear).reshape(grid.shape)


def _aic_head(shape: EngineShape, tab: Tables, st: State):
    """Each AIC's situation, all [C, B]: cursor slot and word; the pending action of a call (pc
    clamped; its [C, 4, B] ``Tables.act`` row), the global slot it frees and that slot's word."""
    f = tab.act.shape[1]
    pc = jnp.minimum(st.aic_pc, f - 1)
    flat = tab.act.reshape(-1, *tab.act.shape[2:])
    act = _lookup(shape, flat, st.aic_ver * f + pc)
    cur, f_slot = cursor_slot(shape, st), act[:, ACT["slot"]]
    if shape.packed:  # f_word: the head state only (a free keeps the write count)
        f_word = _block_byte(shape, st.slot, f_slot)[0] & 3
        return cur, _packed_word(shape, tab, st.slot, cur), pc, act, f_slot, f_word
    return cur, _slot_pick(shape, st.slot, cur), pc, act, f_slot, _slot_pick(shape, st.slot, f_slot)


def aic_ready(shape: EngineShape, st: State, head) -> jax.Array:
    """[C, B] whether each AIC's next action is enabled on ``st``."""
    _, cur_word, _, act, _, f_word = head
    f_wait = act[:, ACT["wait"]]
    in_recv = st.aic_phase == AicPhase.RECEIVE
    in_call = st.aic_phase == AicPhase.CALL
    call_ok = (f_wait == NO_WAIT) | ((f_word & 0xFF) == f_wait)
    running = (st.status == Status.RUNNING)[None, :]
    return running & ((in_recv & ((cur_word & 0xFF) != FREE)) | (in_call & call_ok))


def mm_fields(shape: EngineShape, tab: Tables, mm_state: jax.Array, ver: jax.Array, pc: jax.Array) -> jax.Array:
    """[C, A, B] the IterateAll words of action ``pc`` of version ``ver`` ([C, B]), with the fields
    the call did not set taken from each AIC's Matmul state ``mm_state`` [C, M, B]."""
    f = tab.act.shape[1]
    row = _lookup(shape, tab.act_mmf.reshape(-1, *tab.act_mmf.shape[2:]), ver * f + pc)  # [C, A + 1, B]
    bits = (row[:, N_ACTION][:, None, :] >> jnp.arange(N_MM, dtype=jnp.int32)[None, :, None]) & 1
    state_part = jnp.where(bits > 0, mm_state, row[:, :N_MM])
    return jnp.concatenate([state_part, row[:, N_MM:N_ACTION]], axis=1)


def _mm_cost(shape: EngineShape, fields: jax.Array) -> tuple[jax.Array, jax.Array]:
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


def aic_times(shape: EngineShape, tab: Tables, cost: jax.Array, st: State, head):
    """Timed schedule: [C, B] start cycle and duration of every AIC's next action on ``st``."""
    cur, cur_word, pc, act, f_slot, _ = head
    f_wait, f_is_mm = act[:, ACT["wait"]], act[:, ACT["mm"]] > 0
    tm = st.timed
    in_recv = st.aic_phase == AicPhase.RECEIVE
    cur_t = _slot_pick(shape, tm.slot_time, cur)
    f_t = _slot_pick(shape, tm.slot_time, f_slot)
    enable = jnp.where(in_recv, cur_t, jnp.where(f_is_mm | (f_wait == NO_WAIT), 0.0, f_t))
    start = jnp.maximum(tm.aic_clock, enable)
    c = cost[:, None, :]
    recv_dur = jnp.where((cur_word & 0xFF) == QUIT, c[TC["poll"]], c[TC["dispatch"]])
    if shape.has_matmul:
        fields = mm_fields(shape, tab, st.mm_state, st.aic_ver, pc)
        fr, tr = _mm_cost(shape, fields)
        call_dur = jnp.where(f_is_mm, c[TC["mm_overhead"]] + fr + tr / c[TC["ddr_rate"]], c[TC["free"]])
    else:
        call_dur = jnp.broadcast_to(c[TC["free"]], pc.shape)
    return start, jnp.where(in_recv, recv_dur, call_dur)


def aic_step(shape: EngineShape, tab: Tables, cost: jax.Array, st: State, keys: jax.Array, tmin: jax.Array | None):
    """Every AIC whose next action is enabled performs it (timed schedule: those starting at ``tmin``).

    Returns the new state, [C, B] enabled, and [C, B] whether each AIC performed a matmul action
    this step, with [C, A, B] its resolved IterateAll words. An AIC whose dispatch is a protocol
    error logs the message, records the error and stops (AicPhase.ERROR); nothing else changes.
    """
    consts = shape.aic_constants()
    c_num, b = st.aic_phase.shape
    f = tab.act.shape[1]
    w = st.slot.shape[1]
    n = jnp.asarray(consts["n"])[:, None]
    p = jnp.asarray(consts["p"])[:, None]
    pos, col = st.aic_pos, st.aic_col
    head = _aic_head(shape, tab, st)
    cur, cur_word, pc, act_row, f_slot, f_word = head
    cur_state, f_is_mm = cur_word & 0xFF, act_row[:, ACT["mm"]] > 0
    in_recv = st.aic_phase == AicPhase.RECEIVE
    in_call = st.aic_phase == AicPhase.CALL
    ready = aic_ready(shape, st, head)
    if shape.timed:
        t_start, t_dur = aic_times(shape, tab, cost, st, head)
        act = ready & (t_start == tmin[None, :])
    else:
        act = ready & _chosen(shape, keys, c_num)

    # -- dispatch: the callback's decision for the version under the cursor ------------------
    ver = jnp.maximum((cur_word >> 8) - 1, 0)
    vt = _lookup(shape, tab.ver, ver)  # [C, 5, B]
    is_quit = cur_state == QUIT
    log_full = st.recv_count >= _lane(shape, tab.receive_limit)[None]
    skip_v = vt[:, VER["skip"]]
    # SetSkipMsg's debug assert is on the AIC's own aivWork (kernel_operator_cube_group_handle_impl.h)
    skip_code = jnp.where(
        skip_v < 0, ErrorCode.SKIP_NEGATIVE, jnp.where(col + skip_v >= n, ErrorCode.SKIP_CROSSES_ROW, 0)
    )
    if shape.release:  # asserts are compiled out: nothing stops the AIC at dispatch
        dispatch = jnp.zeros_like(skip_code)
        asserted = jnp.where(skip_code > 0, skip_code, _free_asserts(shape, tab, ver, n, p))
    else:
        dispatch = jnp.where(skip_code > 0, skip_code, vt[:, VER["code"]])
    code = jnp.where(log_full, ErrorCode.RECEIVE_LOG_FULL, jnp.where(is_quit, 0, dispatch))
    recv_act = act & in_recv
    error = jnp.where(recv_act, code, 0)
    recv_ok = recv_act & (code == 0)
    failing = error > 0  # this AIC stops here (AicPhase.ERROR)

    # -- log every received message (a message that caused an error too) -----------------------
    logged = recv_act & (code != ErrorCode.RECEIVE_LOG_FULL)
    r = st.recv_ver.shape[1]
    rows_c = jnp.broadcast_to(jnp.arange(c_num)[:, None], (c_num, b))
    lanes = jnp.broadcast_to(jnp.arange(b)[None, :], (c_num, b))
    recv_ver = st.recv_ver.at[rows_c, jnp.where(logged, st.recv_count, r), lanes].set(
        ver.astype(st.recv_ver.dtype), mode="drop"
    )

    # -- QUIT: clear bit aivID ---------------------------------------------------------------
    quit_now = recv_ok & is_quit
    cols = jnp.arange(w)[None, :, None]
    alive = st.aic_alive & ~(quit_now[:, None, :] & (cols == vt[:, None, VER["aiv_id"]]))

    # -- a message for the callback: serve its actions -----------------------------------------
    call_now = recv_ok & ~is_quit
    first = vt[:, VER["first"]]
    any_act = first < f

    # -- CALL: perform the next action (a free, or a matmul handed to the compute phase) ---------
    free_act = act & in_call
    mm_now = free_act & f_is_mm
    freeing = free_act & ~f_is_mm
    if shape.packed:
        slot = _packed_free(shape, st.slot, f_slot, freeing)
    else:
        freed_word = (f_word & ~0xFF) | FREE  # FreeMessage writes the head state only
        slot = _slot_put(shape, st.slot, f_slot, freeing, freed_word)
    next_pc = act_row[:, ACT["next"]]
    aic_pc = jnp.where(call_now, first, jnp.where(free_act, next_pc, st.aic_pc))
    aic_ver = jnp.where(call_now, ver, st.aic_ver)
    if shape.has_matmul:  # the IterateAll performed now sees the state from before this call's end
        fields = mm_fields(shape, tab, st.mm_state, st.aic_ver, pc)
    else:
        fields = jnp.zeros((c_num, 0, b), jnp.int32)

    # -- end of Call (SetSkipMsg, then release) or after a QUIT (release) ----------------------
    call_end = (call_now & ~any_act) | (free_act & (next_pc >= f))
    releasing = call_end | quit_now
    skip = jnp.where(call_now, skip_v, st.aic_skip)
    skipped = jnp.where(call_end, skip, 0)  # SetSkipMsg: aivWork += k, msgPos += k
    new_pos, new_col = _release(alive, n, p, pos + skipped, col + skipped)
    finished = releasing & ~alive.any(axis=1)
    mm_state = st.mm_state
    if shape.has_matmul:  # CallBack::Call returned: the Matmul object keeps what it set
        upd = _lookup(shape, tab.ver_mmf, aic_ver)  # [C, M + 1, B]
        bits = (upd[:, N_MM][:, None, :] >> jnp.arange(N_MM, dtype=jnp.int32)[None, :, None]) & 1
        mm_state = jnp.where(call_end[:, None, :] & (bits == 0), upd[:, :N_MM], mm_state)
    phase = _select(
        [failing, finished, releasing, call_now],
        [AicPhase.ERROR, AicPhase.DONE, AicPhase.RECEIVE, AicPhase.CALL],
        st.aic_phase,
    ).astype(jnp.int32)

    aic_asserts, aic_assert_n = st.aic_asserts, st.aic_assert_n
    if shape.release:  # list each dispatch's first failed assert, in the AIC's order
        noted = recv_act & ~log_full & ~is_quit & (asserted > 0)
        at = jnp.arange(aic_asserts.shape[1])[None, :, None] == aic_assert_n[:, None, :]
        entry = (cur << 5) | asserted
        aic_asserts = jnp.where(noted[:, None, :] & at, entry[:, None, :], aic_asserts)
        aic_assert_n = aic_assert_n + noted

    timed = st.timed
    if shape.timed:
        t_end = t_start + t_dur
        done_ok = act & (error == 0)  # an AIC whose action is a protocol error changes nothing
        timed = dataclasses.replace(
            timed,
            aic_clock=jnp.where(done_ok, t_end, timed.aic_clock),
            aic_busy=timed.aic_busy + jnp.where(done_ok, t_dur, 0.0),
            aic_blocked=timed.aic_blocked + jnp.where(done_ok, t_start - timed.aic_clock, 0.0),
            slot_time=_slot_put(shape, timed.slot_time, f_slot, freeing, t_end),
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
        aic_err_ver=jnp.where(failing, ver, st.aic_err_ver),
        mm_state=mm_state,
        aic_asserts=aic_asserts,
        aic_assert_n=aic_assert_n,
        timed=timed,
    )
    return st, ready, mm_now, fields


def _occupancy(shape: EngineShape, st: State, tmin: jax.Array) -> State:
    """Adds the time since the last event to each queue row's occupancy level (0..4 non-FREE)."""
    tm = st.timed
    states = _packed_states(st.slot) if shape.packed else st.slot & 0xFF
    busy = (states != FREE).sum(axis=2)  # [C, W, B]
    level = busy.reshape(-1, busy.shape[-1])
    finite = jnp.isfinite(tmin)
    dt = jnp.where(finite, jnp.maximum(tmin - tm.t_now, 0.0), 0.0)
    sel = level[:, None, :] == jnp.arange(D4 + 1)[None, :, None]
    occ = tm.occ_cycles + jnp.where(sel, dt[None, None, :], 0.0)
    t_now = jnp.where(finite, jnp.maximum(tmin, tm.t_now), tm.t_now)
    return dataclasses.replace(st, timed=dataclasses.replace(tm, occ_cycles=occ, t_now=t_now))


def cursor_slot(shape: EngineShape, st: State) -> jax.Array:
    """[C, B] global slot index under each AIC's cursor."""
    consts = shape.aic_constants()
    return jnp.asarray(consts["block"])[:, None] + st.aic_pos


def step(shape: EngineShape, tab: Tables, cost: jax.Array, st: State):
    """One protocol step of the batch, then the status update. A lane that is not RUNNING enables
    no core and keeps its state. ``cost`` is [12, B]. Returns the state, the step's matmul
    requests: [C, B] enables and the [C, A, B] action words of each (for
    :func:`ascend_jax.cube_group.compute.apply_matmuls`), and its vector ops (see :func:`aiv_step`)."""
    keys = st.key
    k_aiv = k_aic = keys
    if shape.needs_key:
        raw = jax.vmap(lambda k: jax.random.key_data(jax.random.split(jax.random.wrap_key_data(k), 3)))(keys)
        keys, k_aiv, k_aic = raw[:, 0], raw[:, 1], raw[:, 2]
    tmin = None
    if shape.timed:  # events in time order: only the cores starting earliest act
        ops = _aiv_ops(shape, tab, st)
        r_v = aiv_ready(shape, tab, st, ops)
        s_v, _ = _aiv_times(shape, tab, cost, st, ops)
        head = _aic_head(shape, tab, st)
        r_c = aic_ready(shape, st, head)
        s_c, _ = aic_times(shape, tab, cost, st, head)
        tmin = jnp.minimum(jnp.where(r_v, s_v, jnp.inf).min(axis=0), jnp.where(r_c, s_c, jnp.inf).min(axis=0))
        st = _occupancy(shape, st, tmin)
    running = st.status == Status.RUNNING
    new, v_ready, vec = aiv_step(shape, tab, cost, st, k_aiv, tmin)
    new, aic_ready_, mm_now, mm_fields_ = aic_step(shape, tab, cost, new, k_aic, tmin)
    steps = st.step + 1
    done = lane_done(shape, tab, new.aiv_pc, new.aic_phase)
    progressed = v_ready.any(axis=0) | aic_ready_.any(axis=0)
    status = _select(
        [done, ~progressed, steps >= tab.max_steps], [Status.OK, Status.DEADLOCK, Status.MAX_STEPS], Status.RUNNING
    )
    status = final_status(status, new.aic_phase)
    new = dataclasses.replace(
        new,
        step=jnp.where(running, steps, st.step),
        status=jnp.where(running, status, st.status),
        key=jnp.where(running[:, None], keys, st.key),
    )
    return new, mm_now & running[None, :], mm_fields_, vec


def lane_done(shape: EngineShape, tab: Tables, aiv_pc: jax.Array, aic_phase: jax.Array) -> jax.Array:
    """[B] every AIV past its last op and every AIC out of its loop or stopped at an error."""
    stopped = (aic_phase == AicPhase.DONE) | (aic_phase == AicPhase.ERROR)
    return (aiv_pc >= _lane(shape, tab.op_len)).all(axis=0) & stopped.all(axis=0)


def final_status(status: jax.Array, aic_phase: jax.Array) -> jax.Array:
    """[B] a lane that has stopped with some AIC stopped at an error ends in ERROR."""
    failed = (aic_phase == AicPhase.ERROR).any(axis=0)
    return jnp.where((status != Status.RUNNING) & failed, Status.ERROR, status).astype(jnp.int32)

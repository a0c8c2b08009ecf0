"""Array access for the engine step, lane axis last: table look-ups and the slot grid.

The step holds every per-lane array with the batch axis ``B`` last (``[..., B]``), so selects and
reductions run over contiguous lanes. The helpers here read and write those arrays while
avoiding gathers where the structure allows: an AIV's own queue is a static row of the slot grid,
an AIC reads its block by a column select, barrier counters by a one-hot over their copies.
Gathers remain for the callback's decision tables and as the general path (AIVs touching several
queues, a release build's cursor outside its block).

The slot grid has two layouts (see :class:`ascend_jax.cube_group.engine.state.State`): the wide grid
``[C, W, 4, B]`` (one word per slot: head state and version) and the packed grid ``[C, W, B]``
(one word per queue row, a byte per depth: head state and write count); the ``aiv_slot_*`` and
``block_byte`` / ``packed_*`` helpers hide the difference from the step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ascend_jax.cube_group.engine.shape import EngineShape
from ascend_jax.cube_group.engine.state import PACK_COUNT_SHIFT, Tables, slot_word
from ascend_jax.cube_group.matmul import N_ACTION, N_MM
from ascend_jax.message import MAX_MSG_PER_AIV

D4 = MAX_MSG_PER_AIV


def lane_table(shape: EngineShape, x: jax.Array) -> jax.Array:
    """A table field made broadcastable against ``[..., B]`` (shared tables have no lane axis)."""
    return x[..., None] if shape.shared else x


def lookup(shape: EngineShape, table: jax.Array, idx: jax.Array) -> jax.Array:
    """Rows of a table at ``idx`` [M, B]: ``table`` [K, *X] (shared) or [K, *X, B] -> [M, *X, B]."""
    if shape.shared:
        return jnp.moveaxis(table[idx], 1, -1)
    extra = table.ndim - 2
    full = jnp.broadcast_to(idx.reshape(idx.shape[0], *(1,) * extra, idx.shape[1]), (idx.shape[0], *table.shape[1:]))
    return jnp.take_along_axis(table, full, axis=0)


def pick4(rows: jax.Array, d: jax.Array) -> jax.Array:
    """``rows`` [M, 4, B] at depth ``d`` [M, B] -> [M, B] (a select chain over the 4 depths)."""
    out = rows[:, 0]
    for k in range(1, D4):
        out = jnp.where(d == k, rows[:, k], out)
    return out


def slot_index(shape: EngineShape, slot: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Flat grid index of global slots ``slot`` [C, B] read by AIC c, and whether the slot lies in
    that AIC's group (a cursor or free past the group's slots, possible in a release build, reads
    FREE and writes nothing)."""
    consts = shape.aic_constants()
    lo, hi = (jnp.asarray(consts[k])[:, None] for k in ("group_lo", "group_hi"))
    inside = (slot >= lo) & (slot < hi)
    table = jnp.asarray(shape.grid_of_slot, jnp.int32)
    return table[jnp.clip(slot, 0, table.shape[0] - 1)], inside


def slot_pick(shape: EngineShape, grid: jax.Array, slot: jax.Array) -> jax.Array:
    """The words (or times) of global slots ``slot`` [C, B] from ``grid`` [C, W, 4, B] (a gather of
    C elements per lane; 0 outside the group)."""
    flat = grid.reshape(-1, grid.shape[-1])
    idx, inside = slot_index(shape, slot)
    return jnp.where(inside, jnp.take_along_axis(flat, idx, axis=0), jnp.zeros((), grid.dtype))


def slot_put(shape: EngineShape, grid: jax.Array, slot: jax.Array, mask: jax.Array, value: jax.Array) -> jax.Array:
    """``grid`` with global slot ``slot`` set to ``value`` where ``mask`` (all [C, B])."""
    flat = grid.reshape(-1, grid.shape[-1])
    idx, inside = slot_index(shape, slot)
    idx = jnp.where(mask & inside, idx, flat.shape[0])
    lanes = jnp.broadcast_to(jnp.arange(flat.shape[1])[None, :], idx.shape)
    return flat.at[idx, lanes].set(value, mode="drop").reshape(grid.shape)


def select_first(conds: list, values: list, default):
    """``jnp.select`` as a chain of ``where`` (the first true condition wins). ``jnp.select`` takes an
    argmax over the stacked conditions, which XLA:CPU runs as a slow, unvectorised variadic reduce."""
    out = default
    for cond, value in zip(reversed(conds), reversed(values), strict=True):
        out = jnp.where(cond, value, out)
    return out


def first_true(mask: jax.Array, axis: int = 0) -> jax.Array:
    """Index of the first True along ``axis`` (0 if none). A min over indices, not ``argmax``:
    XLA:CPU runs argmax as a variadic reduce that does not vectorise over lanes."""
    n = mask.shape[axis]
    iota = jax.lax.broadcasted_iota(jnp.int32, mask.shape, axis)
    first = jnp.where(mask, iota, n).min(axis=axis)
    return jnp.where(first == n, 0, first)


def home_rows(shape: EngineShape, grid: jax.Array) -> jax.Array:
    """[V, 4, B] each AIV's own queue row of the ``[C, W, 4, B]`` grid (static rows); [V, B] words
    of a packed ``[C, W, B]`` grid."""
    rows = grid.reshape(-1, *grid.shape[2:])
    home = np.asarray(shape.aiv_home)
    if home.shape[0] == rows.shape[0] and (home == np.arange(home.shape[0])).all():
        return rows
    return rows[np.maximum(home, 0)]


def home_write(shape: EngineShape, grid: jax.Array, new_rows: jax.Array) -> jax.Array:
    """Writes the AIVs' rows back into the grid (inverse of :func:`home_rows`)."""
    rows = grid.reshape(-1, *grid.shape[2:])
    home = np.asarray(shape.aiv_home)
    if home.shape[0] == rows.shape[0] and (home == np.arange(home.shape[0])).all():
        return new_rows.reshape(grid.shape)
    bound = np.flatnonzero(home >= 0)
    return rows.at[home[bound]].set(new_rows[bound]).reshape(grid.shape)


def slot_read(shape: EngineShape, grid: jax.Array, x: jax.Array) -> jax.Array:
    """[V, B] the word of each AIV's target slot (grid index ``x`` [V, B])."""
    if shape.aiv_home is not None:
        return pick4(home_rows(shape, grid), x & (D4 - 1))
    flat = grid.reshape(-1, grid.shape[-1])
    return jnp.take_along_axis(flat, jnp.clip(x, 0, flat.shape[0] - 1), axis=0)


def slot_write(shape: EngineShape, grid: jax.Array, x: jax.Array, mask: jax.Array, value: jax.Array) -> jax.Array:
    """The grid with each masked AIV's target slot set to ``value`` (all [V, B])."""
    if shape.aiv_home is not None:
        rows = home_rows(shape, grid)
        sel = mask[:, None, :] & ((x & (D4 - 1))[:, None, :] == jnp.arange(D4)[None, :, None])
        return home_write(shape, grid, jnp.where(sel, value[:, None, :], rows))
    flat = grid.reshape(-1, grid.shape[-1])
    lanes = jnp.broadcast_to(jnp.arange(flat.shape[1])[None, :], x.shape)
    flat = flat.at[jnp.where(mask, x, flat.shape[0]), lanes].set(value, mode="drop")
    return flat.reshape(grid.shape)


def aiv_slot_state(shape: EngineShape, grid: jax.Array, x: jax.Array) -> jax.Array:
    """[V, B] the head state of each AIV's target slot (grid index ``x`` [V, B])."""
    if shape.packed:  # the AIV's own queue row, depth x & 3
        word = home_rows(shape, grid)
        return (word >> ((x & (D4 - 1)) << 3)) & 3
    return slot_read(shape, grid, x) & 0xFF


def aiv_slot_post(shape: EngineShape, grid: jax.Array, x: jax.Array, mask: jax.Array, state, version, count):
    """The grid with each masked AIV's target slot (grid index ``x``) holding head ``state`` and
    ``version`` (wide grid) or its write ``count`` (packed grid), all [V, B]."""
    if not shape.packed:
        return slot_write(shape, grid, x, mask, slot_word(state, version))
    word = home_rows(shape, grid)  # [V, B]
    shift = (x & (D4 - 1)) << 3
    byte = state | (count << PACK_COUNT_SHIFT)
    new = (word & ~(jnp.int32(0xFF) << shift)) | (byte << shift)
    return home_write(shape, grid, jnp.where(mask, new, word))


def barrier_read(st_counter: jax.Array, bar: jax.Array, idx: jax.Array) -> jax.Array:
    """[V, B] counter copy ``idx`` of barrier ``bar`` (one-hot over the copies)."""
    nb, nc, b = st_counter.shape
    key = jnp.clip(bar, 0, nb - 1) * nc + jnp.clip(idx, 0, nc - 1)
    sel = key[:, None, :] == jnp.arange(nb * nc)[None, :, None]
    return jnp.where(sel, st_counter.reshape(1, nb * nc, b), 0).sum(axis=1)


def vector_words(shape: EngineShape, tab: Tables, row: jax.Array) -> jax.Array:
    """[V, 12, B] the ``Tables.vec`` rows ``row`` [V, B] (clipped: valid where the op is VECTOR)."""
    return lookup(shape, tab.vec, jnp.clip(row, 0, tab.vec.shape[0] - 1))


def block_byte(shape: EngineShape, grid: jax.Array, slot: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Packed grid: the byte of global slots ``slot`` [C, B] read by AIC c, their grid index and
    whether the slot can be read, all [C, B] (byte 0 outside the group, as :func:`slot_pick`). A debug build's cursor and frees stay
    in the AIC's own block (a skip past the row and a free outside it are errors), so the word is a
    select over the block's columns; a release build's may leave it (a gather)."""
    c_num, w, b = grid.shape
    if not shape.stray:
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
        idx, inside = slot_index(shape, slot)
        word = jnp.take_along_axis(grid.reshape(-1, b), idx >> 2, axis=0)
        d = idx & (D4 - 1)
    return jnp.where(inside, (word >> (d << 3)) & 0xFF, 0), jnp.where(inside, idx, 0), inside


def packed_free(shape: EngineShape, grid: jax.Array, slot: jax.Array, mask: jax.Array) -> jax.Array:
    """Packed grid: FreeMessage of global slots ``slot`` [C, B] where ``mask``: the head state
    bits cleared, the write count kept. Several AICs may clear bits of one word in one step."""
    c_num, w, b = grid.shape
    _, idx, inside = block_byte(shape, grid, slot)
    mask = mask & inside
    bits = jnp.where(mask, jnp.int32(3) << ((idx & (D4 - 1)) << 3), 0)  # [C, B]
    row = idx >> 2
    if not shape.stray:  # each AIC clears a bit pair of its own block
        sel = (row - jnp.arange(c_num, dtype=jnp.int32)[:, None] * w)[:, None, :] == jnp.arange(w)[None, :, None]
        return grid & ~jnp.where(sel, bits[:, None, :], 0)
    flat = grid.reshape(-1, b)
    clear = jnp.zeros_like(flat)
    for k in range(c_num):  # an OR over AICs: two may free slots of one queue row in one step
        clear = clear | jnp.where(row[k][None, :] == jnp.arange(flat.shape[0])[:, None], bits[k][None, :], 0)
    return (flat & ~clear).reshape(grid.shape)


def mm_fields(shape: EngineShape, tab: Tables, mm_state: jax.Array, ver: jax.Array, pc: jax.Array) -> jax.Array:
    """[C, A, B] the IterateAll words of action ``pc`` of version ``ver`` ([C, B]), with the fields
    the call did not set taken from each AIC's Matmul state ``mm_state`` [C, M, B]."""
    f = tab.act.shape[1]
    row = lookup(shape, tab.act_mmf.reshape(-1, *tab.act_mmf.shape[2:]), ver * f + pc)  # [C, A + 1, B]
    bits = (row[:, N_ACTION][:, None, :] >> jnp.arange(N_MM, dtype=jnp.int32)[None, :, None]) & 1
    state_part = jnp.where(bits > 0, mm_state, row[:, :N_MM])
    return jnp.concatenate([state_part, row[:, N_MM:N_ACTION]], axis=1)

"""Engine data: the traced tables (program and lane) and the state pytree (the static shape they
are built for is :class:`EngineShape`, :mod:`ascend_jax.cube_group.engine.shape`).

Layout: the batch axis ``B`` is the **last** axis of every protocol array (state and per-lane
tables), so that the step's selects and reductions run over contiguous lanes (the step is
written for the whole batch, not vmapped). Slots live in a grid ``[C, W, 4]`` (AIC, column,
depth): an AIV's own queue is a row of the ``[C * W, 4]`` view and an AIC's block is
``grid[c]``, so most accesses are static slices and one-hot selects instead of gathers. GM and
the matmul tables stay lane-major (``[B, ...]``) for the vmapped compute phase.

Size letters: ``S`` slots of all groups, ``V`` AIVs with a program, ``L`` ops per AIV (padded),
``N`` slot versions (padded, see :mod:`ascend_jax.cube_group.engine.encode`), ``F`` actions per callback
call, ``D`` matmul descriptor words, ``C`` AICs serving a group, ``W`` row width bound (max P),
``R`` receive-log entries per AIC, ``B`` barriers, ``K`` counter copies (max), ``Q`` queues of all
groups, ``G`` GM bytes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import ascend_jax.cube_group.engine.banks as banks
from ascend_jax.cube_group.engine.encode import N_VEC, EncodedProgram
from ascend_jax.cube_group.engine.shape import (
    ALIVE_BITS,
    KIND_BITS,
    PACK_MAX_WRITES,
    PACK_OP_COUNT_BIT,
    EngineShape,
    can_pack,
)
from ascend_jax.cube_group.matmul import N_ACTION, N_MM
from ascend_jax.cube_group.program import CubeGroupProgram
from ascend_jax.cube_group.status import OpKind
from ascend_jax.message import MAX_MSG_PER_AIV


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Tables:
    """One program as arrays (traced; shared by every lane of a batch that runs the same program).

    Shapes are for one program; a batch of different programs adds the lane axis ``B`` last to
    every field but gm_init (first).

    ops: [V, L, 2] int32, each AIV op packed in two words (:func:`pack_op`); op_len: [V] ops per AIV.
    ver: [N, 5] int32 per slot version (columns :data:`VER`): the assert this build stops at on
      dispatch (code or 0), first action (F: none), SetSkipMsg total, head aivID (QUIT: the
      column to retire), the CPU twin's assert noted on dispatch (npu-debug / release, code or 0).
    act: [N, F, 7] int32 per action (columns :data:`ACT`): global slot freed, wait state, next
      action (F: none), is-matmul, performed, the assert this build stops at right after performing
      the action (code or 0), the CPU twin's assert noted right after it (code or 0).
    act_mmf: [N, F, A + 1] int32 IterateAll words and their keep mask; ver_mmf: [N, M + 1] the
      Matmul state each call leaves and its keep mask; mm_init: [C, M] the state after Init (see
      :class:`ascend_jax.cube_group.engine.encode.EncodedProgram`; [N, 0, 0], [N, 0], [C, 0] without
      a Matmul).
    slot_ver: [C * W * 4, 64] int32 packed grid only (:attr:`EngineShape.packed`; [0, 64] else):
      the version a slot holds after its k-th write (k mod 64; column 0: -1, the zeroed workspace).
    vec: [Vn, N_VEC] int32 every vector op's words (:data:`ascend_jax.cube_group.engine.encode.VEC`;
      [0, N_VEC] without vector ops).
    max_steps, receive_limit: [] int32.
    gm_tensors: [T, 4] int32 every GM tensor in allocation order (:func:`gm_tensor_table`): first
      byte address, end byte address, typed bank (-1 as bytes) and shift (the element at byte ``a``
      of the tensor is element ``a // itemsize + shift`` of its bank).
      One copy for the batch (lanes share the tensor layout), never a lane axis: data, not part of
      the static shape, so that programs whose tensors differ only in size share a compilation.
    gm_init: GM at launch, a tuple: ``([G] uint8,)`` the bytes, or with typed banks
      (:attr:`EngineShape.banks`) every bank's contents in bank order (``[n_k]`` of its type).
    """

    ops: jax.Array
    op_len: jax.Array
    ver: jax.Array
    act: jax.Array
    act_mmf: jax.Array
    ver_mmf: jax.Array
    mm_init: jax.Array
    vec: jax.Array
    slot_ver: jax.Array
    max_steps: jax.Array
    receive_limit: jax.Array
    gm_tensors: jax.Array
    gm_init: tuple[jax.Array, ...]

    LANE_MAJOR = ("gm_init",)
    #: fields with one copy for the whole batch, even when lanes run different programs
    BATCH_SHARED = ("gm_tensors",)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Timed:
    """Timed-schedule state (cycles, lane axis last): aiv_clock [V], aic_clock [C],
    slot_time [C, W, 4] (when each slot's state last changed), barrier_time [NB];
    aiv_alloc_stall, aiv_wait_stall [V]; aic_busy, aic_blocked [C]; occ_cycles [C * W, 5] cycles
    each queue row spent with 0..4 non-FREE slots; t_now [] time of the last event.

    Each quantity is two float32 words, ``name`` and ``name_lo`` of the same shape, whose sum is the
    cycle count (:mod:`ascend_jax.cube_group.clock`: exact past 2**24); :meth:`pair` and
    :meth:`put` read and write both."""

    aiv_clock: jax.Array
    aic_clock: jax.Array
    slot_time: jax.Array
    barrier_time: jax.Array
    aiv_alloc_stall: jax.Array
    aiv_wait_stall: jax.Array
    aic_busy: jax.Array
    aic_blocked: jax.Array
    occ_cycles: jax.Array
    t_now: jax.Array
    aiv_clock_lo: jax.Array
    aic_clock_lo: jax.Array
    slot_time_lo: jax.Array
    barrier_time_lo: jax.Array
    aiv_alloc_stall_lo: jax.Array
    aiv_wait_stall_lo: jax.Array
    aic_busy_lo: jax.Array
    aic_blocked_lo: jax.Array
    occ_cycles_lo: jax.Array
    t_now_lo: jax.Array

    #: the quantities (each has a ``_lo`` word)
    NAMES = (
        "aiv_clock", "aic_clock", "slot_time", "barrier_time", "aiv_alloc_stall", "aiv_wait_stall", "aic_busy",
        "aic_blocked", "occ_cycles", "t_now",
    )  # fmt: skip

    def pair(self, name: str) -> tuple[jax.Array, jax.Array]:
        """``(hi, lo)`` words of quantity ``name``."""
        return getattr(self, name), getattr(self, f"{name}_lo")

    def put(self, **pairs: tuple[jax.Array, jax.Array]) -> Timed:
        """A copy with the named quantities set from ``(hi, lo)`` pairs."""
        words = {}
        for name, (hi, lo) in pairs.items():
            words[name], words[f"{name}_lo"] = hi, lo
        return dataclasses.replace(self, **words)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class State:
    """Simulation state of a batch (immutable; updated with ``dataclasses.replace``). Shapes are
    per lane; the lane axis ``B`` is last, except gm and key (lane-major).

    slot: [C, W, 4] int32 word per slot: head state in bits 0..7, current version + 1 above (0:
      the zeroed workspace), see :func:`slot_word`. With :attr:`EngineShape.packed`: [C, W] int32,
      one byte per depth (depth d in bits 8d..8d+7, see :data:`PACK_COUNT_SHIFT`);
      :func:`unpack_slots` gives the wide form.
    aiv_pc, aiv_timer: [V] next op, steps spent in the current delay.
    aiv_mte3: [V] bool, the KfcWorkspace's MTE3->S flag (set at launch, taken by an MTE3 alloc,
      set again by an MTE3 post). aiv_syncs: [V] SyncAll calls completed.
    aiv_wait_result: [V, L] int8 result of Wait<false> ops (-1 not run; [V, 0] when none exist).
    aic_phase, aic_pos, aic_col: [C] AicPhase and the cursor as on the device: ``msgPos`` (slots
      from the AIC's block base) and ``aivWork`` (the column it believes it is at).
    aic_alive: [C] aivWorkState as an int32 bitmask (bit k: column k live) when rows have at most
      :data:`ALIVE_BITS` columns, else [C, W] booleans (:attr:`EngineShape.alive_bits`).
    aic_ver, aic_pc, aic_skip: [C] the version being served, its next action and its SetSkipMsg
      total (CALL phase).
    recv_ver: [C, R] received log (versions, int8 / int16 while they fit: :func:`recv_dtype`;
      their slot and state follow); recv_count: [C].
    barrier_arrive, barrier_wait: [NB, K] counter copies.
    gm: global memory, a tuple: ``([B, G] uint8,)`` the bytes, or with typed banks
      (:attr:`EngineShape.banks`) the written banks ``[B, n_k]`` in bank order (the read-only
      ones stay in ``Tables.gm_init``).
    step, status: [] run bookkeeping.
    aic_err_code, aic_err_slot, aic_err_ver, aic_err_addr: [C] the error that stopped each AIC
      (phase ERROR): code, global slot under its cursor, version received, and the first GM
      address out of range (``GM_OUT_OF_RANGE``; < 0: entry ``-1 - x`` of the encoder's
      ``big_addresses``).
    mm_state: [C, M] each AIC's Matmul object (:data:`ascend_jax.cube_group.matmul.MM_FIELDS`; M = 0 without
      a Matmul).
    aic_asserts: [C, R] release builds: each failed assert as ``slot << 5 | code`` in the order
      the AIC met them ([C, 0] in debug builds); aic_assert_n: [C] how many.
    key: [B, 2] PRNG key data of the random schedule / atomic order (unused otherwise).
    ub: [B, V, U] float32 every AIV's UB buffers, flat, each at its own size (offsets in the op
      words, :data:`ascend_jax.cube_group.engine.encode.VEC`; a float16 / bfloat16 value is exact in
      float32; [B, 0, 0] without vector ops), lane-major like gm.
    timed: :class:`Timed` under the timed schedule, else None.
    """

    slot: jax.Array
    aiv_pc: jax.Array
    aiv_timer: jax.Array
    aiv_mte3: jax.Array
    aiv_syncs: jax.Array
    aiv_wait_result: jax.Array
    aic_phase: jax.Array
    aic_pos: jax.Array
    aic_col: jax.Array
    aic_alive: jax.Array
    aic_ver: jax.Array
    aic_pc: jax.Array
    aic_skip: jax.Array
    recv_ver: jax.Array
    recv_count: jax.Array
    barrier_arrive: jax.Array
    barrier_wait: jax.Array
    gm: tuple[jax.Array, ...]
    step: jax.Array
    status: jax.Array
    aic_err_code: jax.Array
    aic_err_slot: jax.Array
    aic_err_ver: jax.Array
    aic_err_addr: jax.Array
    mm_state: jax.Array
    aic_asserts: jax.Array
    aic_assert_n: jax.Array
    key: jax.Array
    ub: jax.Array
    timed: Timed | None = None

    #: fields whose lane axis is the first (the rest, timed included, have it last)
    LANE_MAJOR = ("gm", "key", "ub")


class AivOps(NamedTuple):
    """Each AIV's next op (the step's :func:`_aiv_ops`), all ``[V, B]`` int32, unpacked from the
    op's two words (:func:`pack_op`)."""

    pc: jax.Array  # the op's index (clamped for an AIV past its last op)
    kind: jax.Array  # OpKind
    x: jax.Array  # slot ops: the slot's grid index (packed grid: its write count above); barriers: barrier << 6 | copy
    a: jax.Array  # WRITE: the head state; barriers: the barrier; else word 1 (WAIT: sync, DELAY: cycles, ...)
    b: jax.Array  # barriers: the copy index; ALLOC / WRITE: 1 in MTE3 mode
    c: jax.Array  # WRITE: the version written; barriers: the counter threshold (-1: none); else word 1


class AicHead(NamedTuple):
    """Each AIC's situation at the start of a step (the step's :func:`_aic_head`), ``[C, B]`` but
    ``act`` ``[C, 7, B]``."""

    cur: jax.Array  # global slot under the cursor
    cur_word: jax.Array  # its slot word (:func:`slot_word`; packed grid: the state and version)
    pc: jax.Array  # the pending action of a call (clamped to the callback's actions)
    act: jax.Array  # that action's ``Tables.act`` row (columns :data:`ACT`)
    f_slot: jax.Array  # the global slot the action frees
    f_word: jax.Array  # that slot's word (packed grid: its head state only)


#: columns of ``Tables.ver`` and ``Tables.act``
VER = {"code": 0, "first": 1, "skip": 2, "aiv_id": 3, "note": 4}
ACT = {"slot": 0, "wait": 1, "next": 2, "mm": 3, "en": 4, "assert": 5, "note": 6}

#: bit of word 0 that marks an MTE3 alloc / post
MTE3_BIT = 30

#: bits of a WRITE's version in the second op word (the head state sits above them)
VERSION_BITS = 23
MAX_VERSIONS = 1 << VERSION_BITS

#: packed grid: a depth's byte holds the head state in bits 0..1 and, from this bit up, the
#: number of writes to the slot modulo 64 (``Tables.slot_ver`` maps it to the version)
PACK_COUNT_SHIFT = 2


def slot_word(state, ver):
    """The packed slot word: head ``state`` (0..255) and version ``ver`` (-1: zeroed workspace)."""
    return state | ((ver + 1) << 8)


def write_counts(rows: np.ndarray) -> np.ndarray:
    """[n] the write count of every op of ``rows`` [n, 5] (kind, slot, a, b, c), in program order
    per slot: a WRITE's ordinal among the writes to its slot, from 1; 0 for other ops."""
    pos = np.flatnonzero(rows[:, 0] == OpKind.WRITE)
    slots = rows[pos, 1]
    order = np.argsort(slots, kind="stable")
    ranked = slots[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    out = np.zeros(len(rows), np.int64)
    out[pos[order]] = rank + 1
    return out


def packed_bytes(grid: jax.Array) -> jax.Array:
    """[C, W, 4, B] the byte of every depth of a packed ``[C, W, B]`` grid (state in bits 0..1)."""
    shifts = 8 * jnp.arange(MAX_MSG_PER_AIV, dtype=jnp.int32)
    return (grid[:, :, None, :] >> shifts[None, None, :, None]) & 0xFF


def unpack_slots(shape: EngineShape, tab: Tables, grid: jax.Array) -> jax.Array:
    """The wide ``[C, W, 4, B]`` slot words (:func:`slot_word`) of a grid; a packed ``[C, W, B]``
    grid's versions come from ``Tables.slot_ver``."""
    if not shape.packed:
        return grid
    c, w, b = grid.shape
    byte = packed_bytes(grid)
    state, count = byte & 3, byte >> PACK_COUNT_SHIFT
    idx = (jnp.arange(c * w * 4, dtype=jnp.int32).reshape(c, w, 4, 1) << 6) + count
    table = tab.slot_ver.reshape(-1, *tab.slot_ver.shape[2:])
    ver = table[idx] if shape.shared else jnp.take_along_axis(table, idx.reshape(-1, b), axis=0).reshape(c, w, 4, b)
    return slot_word(state, ver)


#: the op kinds a one-word op table holds (:func:`one_word_ops`)
ONE_WORD_KINDS = frozenset({int(OpKind.NOP), int(OpKind.ALLOC), int(OpKind.WRITE)})


def one_word_ops(shape: EngineShape) -> bool:
    """Whether the step reads only word 0 of each op (:func:`pack_op` with ``one_word``): a packed
    grid (an AIV's slot is a depth of its own queue row), the lockstep or random schedule (the
    timed one keeps each slot's grid index for its slot times) and no op but ALLOC and WRITE
    (their head state is all word 1 holds that such a step reads). Halves the op fetch."""
    return shape.packed and not shape.timed and set(shape.op_kinds) <= ONE_WORD_KINDS


def pack_op(
    rows: np.ndarray, grid_of_slot: np.ndarray, counts: np.ndarray | None = None, one_word: bool = False
) -> np.ndarray:
    """[n, 5] (kind, slot, a, b, c) op rows -> [n, 2] int32 words (one fetch per op).

    Word 0: ``kind | x << 4 | mte3 << 30`` with ``x`` the slot's grid index, or ``barrier << 6 |
    index`` for barrier ops; ``mte3``: an ALLOC that waits for the MTE3->S flag, a WRITE that
    sets it (``PostMessage<MTE3_MODE>``).
    With ``counts`` ([n] write counts, packed grid) a WRITE's count mod 64 sits at bit
    :data:`PACK_OP_COUNT_BIT` of word 0 (the packed step reads only the depth, ``x & 3``).
    Word 1: WRITE ``version | state << 23``; WAIT the sync flag; DELAY the cycles; SYNC 1 for the
    all-core form (0: AIV-only); barrier ops
    the counter threshold (-1: none); VECTOR its row of ``Tables.vec``; ALLOC 0.
    With ``one_word`` (:func:`one_word_ops`) word 0's ``x`` holds the depth ``x & 3`` and a WRITE's
    head state at bit 2 instead of the grid index, so the step needs no word 1.
    """
    kind, slot, a, b, c = rows.T
    barrier = (kind == OpKind.ARRIVE) | (kind == OpKind.BWAIT)
    slot_ops = (kind == OpKind.ALLOC) | (kind == OpKind.WRITE) | (kind == OpKind.WAIT)
    x = np.where(barrier, (a << 6) | b, np.where(slot_ops, grid_of_slot[np.where(slot_ops, slot, 0)], 0))
    w1 = np.select(
        [
            kind == OpKind.WRITE,
            (kind == OpKind.WAIT) | (kind == OpKind.DELAY) | (kind == OpKind.VECTOR) | (kind == OpKind.SYNC),
            barrier,
        ],
        [c | (a << VERSION_BITS), a, c],
        0,
    )
    mte3 = np.where((kind == OpKind.ALLOC) | (kind == OpKind.WRITE), b, 0)
    if one_word:  # the depth and a WRITE's head state (word 1 is kept but never read)
        x = (x & 3) | np.where(kind == OpKind.WRITE, (a & 0xFF) << 2, 0)
    if counts is not None:  # packed grid: a WRITE's write count mod 64 above x's low 20 bits
        x = np.where(kind == OpKind.WRITE, x | ((counts % 64) << (PACK_OP_COUNT_BIT - KIND_BITS)), x)
    return np.stack([kind | (x << KIND_BITS) | (mte3 << MTE3_BIT), w1], axis=-1).astype(np.int32)


def build_tables(shape: EngineShape, program: CubeGroupProgram, enc: EncodedProgram) -> Tables:
    """Pads one encoded program to ``shape`` and returns its tables (numpy, ready to stack)."""
    v, l_ = len(shape.aiv_blocks), shape.max_ops
    rows = np.zeros((v, l_, 5), np.int64)  # (kind, slot, a, b, c); NOP padding
    lens = np.zeros(v, np.int32)
    by_block = dict(zip((b for b, _ in program.aivs), enc.rows, strict=True))
    for i, b in enumerate(shape.aiv_blocks):
        row = by_block.get(b, [])
        lens[i] = len(row)
        if row:
            rows[i, : len(row)] = row
    flat = rows.reshape(-1, 5)
    slot_ver = np.zeros((shape.grid_size if shape.packed else 0, 64), np.int32)
    slot_ver[:, 0] = -1
    counts = None
    if shape.packed:  # one writer per slot: (v, pc) order is each slot's write order
        counts = write_counts(flat)
        w = counts > 0
        slot_ver[shape.grid_of_slot[flat[w, 1]], counts[w]] = flat[w, 4]
    ops = pack_op(flat, shape.grid_of_slot, counts, one_word_ops(shape)).reshape(v, l_, 2)
    n, f = shape.n_versions, shape.n_actions
    nv, fv = enc.n_versions, enc.n_actions

    def pad(x: np.ndarray, dtype: Any, fill: int = 0, cols: int | None = None) -> np.ndarray:
        out = np.full((n,) + ((f if cols is None else cols,) if x.ndim > 1 else ()) + x.shape[2:], fill, dtype)
        if x.ndim == 1:
            out[:nv] = x
        else:
            out[:nv, : min(fv, out.shape[1])] = x[:, : out.shape[1]]
        return out

    mm_cols = f if shape.has_matmul else 0
    mm_words = N_ACTION if shape.has_matmul else 0
    ver_mmf = np.zeros((n, N_MM + 1 if mm_words else 0), np.int32)
    ver_mmf[:nv] = enc.ver_mmf[:, : ver_mmf.shape[1]]
    if shape.banks is not None:
        gm_init = banks.initial(shape.banks, program)
    else:
        image = np.zeros(shape.gm_size, np.uint8)  # the tensors' bytes, then zeros
        if shape.has_gm:  # without matmuls and vector ops nothing reads or writes GM: carry one byte
            image[: program.gm.image.size] = program.gm.image
        gm_init = (image,)
    vec = np.zeros((shape.n_vec_ops, N_VEC), np.int32)
    vec[: len(enc.vec_ops)] = enc.vec_ops
    return Tables(
        ops=ops,
        op_len=lens,
        ver=np.stack(
            [
                pad(enc.ver_code, np.int32),
                pad(np.where(enc.ver_first >= fv, f, enc.ver_first), np.int32, fill=f),
                pad(enc.ver_skip, np.int32),
                pad(np.minimum(enc.ver_aiv_id, 2**31 - 1), np.int32),
                pad(enc.ver_note, np.int32),
            ],
            axis=-1,
        ),
        act=np.stack(
            [
                pad(enc.act_slot, np.int32),
                pad(enc.act_wait, np.int32),
                pad(np.where(enc.act_next >= fv, f, enc.act_next), np.int32, fill=f),
                pad(enc.act_mm, np.int32),
                pad(enc.act_en, np.int32),
                pad(enc.act_assert, np.int32),
                pad(enc.act_note, np.int32),
            ],
            axis=-1,
        ),
        act_mmf=pad(enc.act_mmf[..., : mm_words + 1 if mm_words else 0], np.int32, cols=mm_cols),
        ver_mmf=ver_mmf,
        mm_init=enc.mm_init[:, : N_MM if mm_words else 0].astype(np.int32),
        vec=vec,
        slot_ver=slot_ver,
        max_steps=np.int32(program.max_steps),
        receive_limit=np.int32(enc.capacity),
        gm_tensors=gm_tensor_table(shape, program),
        gm_init=gm_init,
    )


def gm_tensor_table(shape: EngineShape, program: CubeGroupProgram) -> np.ndarray:
    """:attr:`Tables.gm_tensors` of a program: ``[T, 4] int32`` (start, end, bank, shift)."""
    bounds = program.gm.bounds()
    out = np.zeros((len(bounds), 4), np.int64)
    out[:, :2] = bounds
    out[:, 2] = -1
    if shape.banks is not None:
        bk = shape.banks  # element index in the bank = address // itemsize + shift
        places = banks.placement(bk, program)
        out[:, 2:] = [(k, first - start // np.dtype(bk.dtypes[k]).itemsize) for k, first, start, _ in places]
    return out.astype(np.int32)


def read_only(shape: EngineShape, tab: Tables) -> tuple[jax.Array, ...]:
    """The read-only typed banks (tables, never loop state) in bank order; () when GM is bytes."""
    if shape.banks is None:
        return ()
    return tuple(x for x, w in zip(tab.gm_init, shape.banks.writable, strict=True) if not w)


def recv_dtype(shape: EngineShape):
    """The receive log's element type: int8 while version ids fit (the step rewrites the log by a
    select every step: its bytes are the step's largest stream), else :attr:`EngineShape.version_dtype`."""
    return jnp.int8 if shape.n_versions <= 128 else shape.version_dtype


def init_state(shape: EngineShape, tab: Tables, keys: jax.Array) -> State:
    """The batch at launch (``keys`` [B, 2]): zeroed workspace, every AIV at op 0, every AIC at
    (0, 0) with all columns live."""
    consts = shape.aic_constants()
    b = keys.shape[0]
    c, w, r = len(consts["core"]), shape.row_width, shape.receive_capacity
    v, l_ = len(shape.aiv_blocks), shape.max_ops
    nb, nc = max(len(shape.barrier_copies), 1), max(shape.barrier_copies, default=1)
    i32, f32 = jnp.int32, jnp.float32

    def zeros(*dims, dtype=i32):
        return jnp.zeros((*dims, b), dtype)

    timed = None
    if shape.timed:
        dims = {"aiv_clock": (v,), "aic_clock": (c,), "slot_time": (c, w, MAX_MSG_PER_AIV), "barrier_time": (nb,),
                "aiv_alloc_stall": (v,), "aiv_wait_stall": (v,), "aic_busy": (c,), "aic_blocked": (c,),
                "occ_cycles": (c * w, 5), "t_now": ()}  # fmt: skip
        timed = Timed(**{k + lo: zeros(*d, dtype=f32) for k, d in dims.items() for lo in ("", "_lo")})
    if shape.alive_bits:  # column k live: bit k
        alive = jnp.broadcast_to(jnp.asarray((1 << consts["n"]) - 1, jnp.int32)[:, None], (c, b))
    else:
        alive = jnp.broadcast_to(jnp.asarray(np.arange(w)[None, :] < consts["n"][:, None])[:, :, None], (c, w, b))
    gm = tab.gm_init if shape.banks is None else tuple(tab.gm_init[k] for k in shape.banks.rw)
    return State(
        slot=zeros(c, w) if shape.packed else zeros(c, w, MAX_MSG_PER_AIV),
        aiv_pc=zeros(v),
        aiv_timer=zeros(v),
        aiv_mte3=jnp.ones((v, b), bool),
        aiv_syncs=zeros(v),
        aiv_wait_result=jnp.full((v, l_ if shape.wait_tests else 0, b), -1, jnp.int8),
        aic_phase=zeros(c),
        aic_pos=zeros(c),
        aic_col=zeros(c),
        aic_alive=alive,
        aic_ver=zeros(c),
        aic_pc=zeros(c),
        aic_skip=zeros(c),
        recv_ver=zeros(c, r, dtype=recv_dtype(shape)),
        recv_count=zeros(c),
        barrier_arrive=zeros(nb, nc),
        barrier_wait=zeros(nb, nc),
        gm=tuple(jnp.broadcast_to(x, (b, x.shape[-1])) for x in gm) if shape.shared else gm,
        step=zeros(),
        status=zeros(),
        aic_err_code=zeros(c),
        aic_err_slot=zeros(c),
        aic_err_ver=zeros(c),
        aic_err_addr=zeros(c),
        mm_state=jnp.broadcast_to(_lane_last(shape, tab.mm_init), (c, tab.mm_init.shape[1], b)),
        aic_asserts=zeros(c, 0 if shape.build == "cpu" else 1),  # the CPU twin's one stop per AIC
        aic_assert_n=zeros(c),
        key=keys,
        ub=jnp.zeros((b, v, shape.ub[0]) if shape.has_vector else (b, 0, 0), f32),
        timed=timed,
    )


__all__ = [
    "ACT",
    "ALIVE_BITS",
    "KIND_BITS",
    "PACK_MAX_WRITES",
    "PACK_OP_COUNT_BIT",
    "VER",
    "AicHead",
    "AivOps",
    "EngineShape",
    "State",
    "Tables",
    "Timed",
    "build_tables",
    "init_state",
    "read_only",
    "one_word_ops",
    "pack_op",
    "slot_word",
    "unpack_slots",
    "packed_bytes",
    "can_pack",
]


def _lane_last(shape: EngineShape, x: jax.Array) -> jax.Array:
    """A per-program table with a trailing lane axis (shared tables get a broadcastable one)."""
    return x[..., None] if shape.shared else x

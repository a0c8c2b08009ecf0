"""Program -> numpy tables, once per ``simulate`` call (no JAX here).

Two facts make the engine's loop small:

* **Slot contents are known before the run.** A slot is written only by the AIV that owns its
  queue, in that AIV's program order, and the AIC only ever writes FREE into a head. So every
  AIV write (post, fake, quit) creates a *version* of a slot whose head state, ``aivID`` and
  payload are fixed at encode time: a post brings its own payload and aivID, a FAKE keeps both
  from the slot's previous version (stale, as on the device), a QUIT keeps the payload and writes
  its aivID. The engine carries one version id per slot instead of head fields and payloads.
* **A callback's decision depends only on what it receives.** With ``Init`` run once per AIC and
  the Matmul object reset per call, ``Call`` sees the message (state, aivID, payload) and the
  handle (P, n, column, depth), all functions of the version (past the first 64 bytes, the
  payload the AIC's D-cache returns is a function of the slot's earlier versions: ``dcache.py``). So
  each group's callback is
  evaluated once here, vectorised over every version of the group with ``handle.xp = numpy``
  (the same code the reference runs on scalars), and the engine looks its decision up: the
  ordered actions (frees with their wait states, matmul descriptors), the skip count, and the
  dispatch-time protocol error with its detail (spec §6.4 asserts; reference ``_aic_act``).

Everything a JAX int32 could not hold is settled here in int64: GM bounds of every matmul operand
(an out-of-range action keeps a zeroed descriptor and a flag, so no address wraps in the engine),
and ``max_steps``, delays and descriptor words are range-checked with a clear error.

AIV vector ops (:mod:`ascend_jax.cube_group.vector`) are data too: each becomes one row of int
words (kind, buffers, region, GM address and stride, atomic flag, result type, the scalar's float32
bits, bytes), and the engine runs them on a per-lane float32 UB image (``vector_ops.apply_vector_ops``).

Size letters: ``V`` AIVs, ``L`` ops per AIV, ``N`` versions (all groups), ``F`` actions per call,
``D`` descriptor words, ``S`` slots, ``C`` AICs, ``T`` tensors, ``G`` GM bytes.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from ascend_jax.buckets import bucket
from ascend_jax.cube_group.barrier import BarrierObject
from ascend_jax.cube_group.callbacks import NO_WAIT, AicHandle, MsgView, _StatelessCallback
from ascend_jax.cube_group.dcache import call_through_lines
from ascend_jax.cube_group.matmul import (
    ACTION_FIELDS,
    ADDRESS_FIELDS,
    AF,
    MM_FIELDS,
    N_ACTION,
    N_MM,
    Matmul,
    _NoMatmul,
    check_init_asserts,
    padded_k,
)
from ascend_jax.cube_group.program import CubeGroupProgram
from ascend_jax.cube_group.result import message_table
from ascend_jax.cube_group.status import CALL, ENCODED_KIND, ErrorCode, OpKind
from ascend_jax.cube_group.vector import KIND, UB_DTYPES, VectorOp, op_bytes
from ascend_jax.errors import ConfigError
from ascend_jax.gm import GM_BASE, GlobalMemory
from ascend_jax.message import FAKE, MAX_MSG_PER_AIV, QUIT, VALID

I32_MAX = 2**31 - 1


class MatmulDims(NamedTuple):
    """One group's static tile bound and what the engine may assume of its tiles: per program from
    :func:`_tile_dims` (``EncodedProgram.mm_dims``), over a batch in ``EngineShape.matmuls``."""

    m: int  # M: rows of every tile (the largest any call or Init can set)
    n: int  # N: columns of every tile
    kp: int  # K, padded to the tiling's baseK
    rows_disjoint: bool  # every C row stride the run can use is at least N: one scatter per tile
    a_layout: str  # "plain", "trans" or "both": the layouts A can be read in
    b_layout: str  # the same for B
    chunk: int = 0  # columns of one written C window: divides N and every n a tile can have (0: N)
    #: smaller tile shapes the compute phase may run a step at (:func:`tile_variants`): each
    #: ``(n, kp, a_layout, b_layout)`` with n <= N, kp <= Kp (whole baseK chunks), one layout each
    variants: tuple = ()


@dataclasses.dataclass
class EncodedProgram:
    """One program as numpy tables (unpadded; see the module docstring for the size letters).

    AIV ops, ``[V_p, L_p]`` per row of ``rows``: (kind, slot, a, b, c) as in :class:`OpKind`, with a
    WRITE's ``c`` the version it creates.
    Versions ``[N]``: ``ver_slot`` (global slot), ``ver_group``, ``ver_state``, ``ver_aiv_id``,
    ``ver_msg`` (per-group message id of the payload, -1 zeros); the callback's decision:
    ``ver_code`` (the assert this build stops at before any action of the call, 0 none),
    ``ver_detail`` (the stopping assert's detail: skip total or Matmul argument), ``ver_skip``,
    ``ver_first`` (first enabled action, F if none), ``ver_note`` (the CPU twin's assert, noted on
    dispatch by npu-debug / release), ``ver_misuse`` / ``ver_misuse_detail`` (the call's first
    api_misuse finding: code and offset or wait state).
    Actions ``[N, F]``: ``act_slot`` (global slot of a free), ``act_wait``, ``act_mm``, ``act_en``
    (the action is performed; none after a stopping assert), ``act_next`` (next enabled action, F
    if none), ``act_assert`` (the assert this build stops at right after performing the action),
    ``act_note`` (the CPU twin's assert, noted right after it). ``stray``: some free (or, in
    release, the cursor) may leave its AIC's block.
    Matmul state (groups with a Matmul): ``act_mmf`` ``[N, F, A + 1]`` the :data:`ACTION_FIELDS`
    words of each IterateAll plus a bit mask (bit i: field i is the AIC's state before the call,
    resolved at run time); ``ver_mmf`` ``[N, M + 1]`` the state a call leaves, with the same mask
    (bit set: unchanged); ``mm_init`` ``[C, M]`` each AIC's state after ``Init``. Address words
    outside 0..2**31-1 are stored as ``-1 - i`` with the true value in ``big_addresses[i]``.
    ``mm_dims``: per group, a :class:`MatmulDims` (the static tile bound, the largest extent any
    call or Init can set), None for a group without a Matmul.
    Vector ops: ``vec_ops`` ``[Vn, N_VEC]`` every AIV vector op as :data:`VEC` words (a VECTOR op
    row's ``a`` is its index); ``ub_dims`` the UB it needs (:class:`UbDims`, see :func:`vector_words`).
    """

    rows: list[list[tuple[int, int, int, int, int]]]
    ver_slot: np.ndarray
    ver_group: np.ndarray
    ver_state: np.ndarray
    ver_aiv_id: np.ndarray
    ver_msg: np.ndarray
    ver_code: np.ndarray
    ver_detail: np.ndarray
    ver_skip: np.ndarray
    ver_first: np.ndarray
    act_slot: np.ndarray
    act_wait: np.ndarray
    act_mm: np.ndarray
    act_en: np.ndarray
    act_next: np.ndarray
    act_assert: np.ndarray
    act_mmf: np.ndarray
    ver_mmf: np.ndarray
    mm_init: np.ndarray
    mm_dims: tuple
    big_addresses: list[int]
    capacity: int
    #: entries a receive log needs unless a message is received twice: the most writes into one
    #: AIC's block (plus its slots on a relaunch, whose first launch may leave messages), at most
    #: ``capacity``
    receivable: int = 0
    vec_ops: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, N_VEC), np.int64))
    ub_dims: UbDims = dataclasses.field(default_factory=lambda: UbDims())
    act_note: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 1), np.int64))
    ver_note: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    ver_misuse: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    ver_misuse_detail: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    stray: bool = False  # a release build, or some free lands outside its AIC's block
    #: per AIC (in the order of ``mm_init``): the Matmul argument its ``Init`` broke (NPU builds), or None
    init_asserts: tuple[str | None, ...] = ()

    @property
    def n_versions(self) -> int:
        return len(self.ver_slot)

    @property
    def n_actions(self) -> int:
        return self.act_slot.shape[1]


def _check_int32(field: str, value: int, rule: str, fix: str) -> None:
    if not 0 <= value <= I32_MAX:
        raise ConfigError(field, value, rule, fix)


def encode_ops(program: CubeGroupProgram) -> tuple[list[list[tuple]], list[tuple[int, int, int, int]]]:
    """AIV op rows and the versions their writes create: ``(slot, group, state, aiv_id, msg)``."""
    rows: list[list[tuple]] = []
    versions: list[tuple[int, int, int, int, int]] = []
    current: dict[int, int] = {}  # slot -> its latest version (absent: the zeroed workspace)
    msg_counter = {gi: 0 for gi in range(len(program.groups))}
    for b, ops in program.aivs:
        ring: dict[int, int] = {}
        alloc_slot: dict[tuple[int, int], int] = {}
        barrier_objs: dict[int, Any] = {}
        row = []
        for op in ops:
            g = (
                program.groups[op.group]
                if op.kind in (CALL.ALLOC, CALL.POST, CALL.FAKE, CALL.QUIT, CALL.WAIT)
                else None
            )
            if g is not None:
                q = program.queue_of[(op.group, b)]
                head = g.slot_base + g.slot_index(q, 0)
            if op.kind == CALL.ALLOC:
                pos = ring.get(op.group, 0)
                alloc_slot[(op.group, op.alloc)] = head + pos * g.aiv_per_aic
                ring[op.group] = (pos + 1) % MAX_MSG_PER_AIV
                row.append((ENCODED_KIND[op.kind], alloc_slot[(op.group, op.alloc)], 0, int(op.pipe == "MTE3"), 0))
            elif op.kind in (CALL.POST, CALL.FAKE, CALL.QUIT):
                slot = alloc_slot[(op.group, op.alloc)]
                prev = current.get(slot)
                prev_aiv, prev_msg = (0, -1) if prev is None else versions[prev][3:5]
                if op.kind == CALL.POST:
                    state, aiv_id, msg = op.state, op.aiv_id, msg_counter[op.group]
                    msg_counter[op.group] += 1
                elif op.kind == CALL.FAKE:
                    state, aiv_id, msg = FAKE, prev_aiv, prev_msg
                else:
                    state, aiv_id, msg = QUIT, op.aiv_id, prev_msg
                current[slot] = len(versions)
                versions.append((slot, op.group, state, aiv_id, msg))
                sets_flag = op.kind == CALL.POST and op.pipe == "MTE3"  # PostMessage<MTE3> sets MTE3->S again
                row.append((ENCODED_KIND[op.kind], slot, state, int(sets_flag), current[slot]))
            elif op.kind == CALL.WAIT:
                row.append((ENCODED_KIND[op.kind], head + op.offset, int(op.sync), 0, 0))
            elif op.kind == CALL.SYNC_ALL:  # a: 1 for the all-core form (waits for the AICs too)
                row.append((ENCODED_KIND[op.kind], 0, int(not op.aiv_only), 0, 0))
            elif op.kind == CALL.VECTOR:  # a: the op's row of vector_words (appended by encode_program)
                row.append((ENCODED_KIND[op.kind], 0, -1, 0, 0))
            elif op.kind == CALL.DELAY:
                _check_int32(
                    f"{op.where}.cycles", op.cycles, "must be in 0..2**31-1 cycles", "split the delay or shorten it"
                )
                row.append((ENCODED_KIND[op.kind], 0, op.cycles, 0, 0))
            elif op.kind in (CALL.ARRIVE, CALL.BARRIER_WAIT):
                obj = barrier_objs.setdefault(op.group, BarrierObject(program.barriers[op.group]))
                if op.kind == CALL.ARRIVE:
                    row.append((ENCODED_KIND[op.kind], 0, op.group, op.index, obj.arrive_threshold()))
                    obj.after_arrive()
                else:
                    row.append((ENCODED_KIND[op.kind], 0, op.group, op.index, obj.wait_threshold()))
                    obj.after_wait()
            else:  # pragma: no cover - the builder makes no other kinds
                raise AssertionError(op.kind)
        rows.append(row)
    return rows, versions


def _bcast(x: Any, n: int, dtype: Any = np.int64) -> np.ndarray:
    return np.broadcast_to(np.asarray(x), (n,)).astype(dtype)


def _evaluate_group(program: CubeGroupProgram, gi: int, ids: np.ndarray, versions: np.ndarray):
    """Runs group ``gi``'s callback once, vectorised over its versions ``ids`` (twice when it reads
    a message line it may hold stale, ``dcache.call_through_lines``); returns the recorded actions
    as lists of [n] arrays, plus the skip count [n]."""
    g = program.groups[gi]
    n = len(ids)
    slot_rel = versions[ids, 0] - g.slot_base
    k, rem = np.divmod(slot_rel, g.aiv_per_aic * MAX_MSG_PER_AIV)
    depth, column = np.divmod(rem, g.aiv_per_aic)
    queues = np.where(k < g.aic_num - 1, g.aiv_per_aic, g.queues_of_aic(g.aic_num - 1))
    cfg = program.matmuls[gi] if program.matmuls else None

    def call(fields):  # fields: every version's payload as its AIC's D-cache returns it (dcache.py)
        msg = MsgView(versions[ids, 2], versions[ids, 3], fields)
        handle = AicHandle(np, g.aiv_per_aic, queues, column, depth, dcache=fields)
        mm = _NoMatmul(g.name) if cfg is None else Matmul(cfg[0], cfg[1], np, handle, symbolic=True)
        handle.mm = mm  # the symbolic Matmul: its end state is the call's state update
        with np.errstate(all="ignore"):
            program.callbacks[gi].call(mm, msg, handle)
        return handle

    handle = call_through_lines(call, program.msg_dtypes[gi], message_table(program, gi), versions, ids)
    end_state = None if cfg is None else handle.mm.state_keep()
    return handle.actions, _bcast(handle.skip, n), column, queues, k, end_state


def receive_bound(program: CubeGroupProgram, capacity: int) -> int:
    """Entries an AIC's receive log takes when every message it receives is one of the writes into
    its block (on a relaunch also one left in a slot by the first launch): the most writes into one
    block, not above ``capacity``. A callback that leaves a message for the cursor's next lap makes
    the AIC receive it again, so a run may need more (the engine then reruns with the whole log)."""
    left = 0 if program.zero_workspace else MAX_MSG_PER_AIV * max((g.aiv_per_aic for g in program.groups), default=1)
    return min(capacity, max(program.writes_per_aic(), default=0) + left)


def encode_program(program: CubeGroupProgram) -> EncodedProgram:
    """Encodes one program (see the module docstring); runs every callback's ``init`` once per AIC."""
    _check_int32("max_steps", program.max_steps, "must be in 1..2**31-1", "lower max_steps")
    capacity = program.receive_capacity()
    _check_int32("max_received", capacity, "must be in 0..2**31-1", "lower max_received")
    init_rows, init_asserts = [], []
    for gi, cb in enumerate(program.callbacks):
        cfg = program.matmuls[gi] if program.matmuls else None
        for _ in range(program.groups[gi].aic_num):  # CallBack::Init once per AIC; its mm is Call's
            mm = None if cfg is None else Matmul(cfg[0], cfg[1])
            cb.init(mm, None if cfg is None else cfg[1])
            broken = None if cfg is None else check_init_asserts(mm, program.groups[gi].name, program.build)
            init_asserts.append(broken)
            state = mm.state if mm is not None else dict.fromkeys(MM_FIELDS, 0)
            init_rows.append([np.asarray(state[f]).item() for f in MM_FIELDS])
    rows, vlist = encode_ops(program)
    vec_ops, ub_dims = vector_words(program, rows)
    if len(vlist) >= 1 << 23:
        raise ConfigError(
            "program", f"{len(vlist)} posts, fakes and quits", "must be fewer than 2**23", "split the run"
        )
    versions = np.array(vlist, np.int64).reshape(-1, 5)
    nv = len(versions)
    per_group = []
    n_actions = 1
    for gi in range(len(program.groups)):
        ids = np.flatnonzero(versions[:, 1] == gi)
        if len(ids):
            acts, skip, column, queues, k, end_state = _evaluate_group(program, gi, ids, versions)
            per_group.append((gi, ids, acts, skip, column, queues, k, end_state))
            n_actions = max(n_actions, len(acts))
    f = n_actions
    all_keep = (1 << N_MM) - 1
    out = {
        "ver_code": np.zeros(nv, np.int64),
        "ver_detail": np.zeros(nv, np.int64),
        "ver_skip": np.zeros(nv, np.int64),
        "act_slot": np.zeros((nv, f), np.int64),
        "act_wait": np.full((nv, f), NO_WAIT, np.int64),
        "act_en": np.zeros((nv, f), bool),
        "act_mm": np.zeros((nv, f), bool),
        "act_assert": np.zeros((nv, f), np.int64),
        "act_note": np.zeros((nv, f), np.int64),
        "ver_note": np.zeros(nv, np.int64),
        "ver_misuse": np.zeros(nv, np.int64),
        "ver_misuse_detail": np.zeros(nv, np.int64),
        "act_mmf": np.zeros((nv, f, N_ACTION + 1), np.int64),
        "ver_mmf": np.zeros((nv, N_MM + 1), np.int64),
    }
    out["ver_mmf"][:, N_MM] = all_keep
    big: list[int] = []
    stray = program.build == "release"  # a cursor or a free may leave its AIC's block
    mm_init = _words(np.array(init_rows, np.int64).reshape(-1, N_MM), MM_FIELDS, big, "Init")
    dims_seen: dict[int, list[np.ndarray]] = {}
    for gi, ids, acts, skip, column, queues, k, end_state in per_group:
        g = program.groups[gi]
        n = len(ids)
        p = g.aiv_per_aic
        msg_pos = versions[ids, 0] - g.slot_base - k * p * MAX_MSG_PER_AIV
        block = g.slot_base + k * p * MAX_MSG_PER_AIV
        is_quit = versions[ids, 2] == QUIT
        # Asserts in program order (a "skip" entry is a SetSkipMsg call, an "assert" entry a Matmul
        # setter's): the first one this build has stops the AIC once the actions before it are
        # done (``stop_at``: the last enabled action before it, -1 none: at dispatch) and disables
        # every action after it; the first failed one of any build (the CPU twin's stop), when this
        # build does not stop there, is noted at its place (``note_at``) for asserts_violated.
        # A cpu or npu-debug AIC's cursor never leaves its row (a skip past it stops the AIC), so
        # the skip assert's aivWork is the slot's column; a release AIC's can, but only after the
        # first failed assert, and only that one is noted (the CPU twin stops there).
        stop_code, stop_detail, stop_at = np.zeros(n, np.int64), np.zeros(n, np.int64), np.full(n, -1, np.int64)
        note_code, note_at = np.zeros(n, np.int64), np.full(n, -1, np.int64)
        stopped, failed_before = np.zeros(n, bool), np.zeros(n, bool)
        last_real = np.full(n, -1, np.int64)  # the last enabled action so far
        mis_code, mis_detail = np.zeros(n, np.int64), np.zeros(n, np.int64)
        seen = dims_seen.setdefault(gi, [])
        for j, act in enumerate(acts):
            en = _bcast(act[-1], n, bool) & ~stopped
            if act[0] in ("skip", "assert"):
                if act[0] == "skip":  # SetSkipMsg: aivWork += k, then ASCENDC_DEBUG_ASSERT(aivWork < n)
                    k_i, total = _bcast(act[1], n), _bcast(act[2], n)
                    a_code = np.where(
                        k_i < 0,
                        ErrorCode.SKIP_NEGATIVE,
                        np.where(column + total >= queues, ErrorCode.SKIP_CROSSES_ROW, 0),
                    )
                    a_detail = total
                else:  # a Matmul setter's ASCENDC_ASSERT: the setter does nothing
                    a_code = np.full(n, ErrorCode.MATMUL_SHAPE, np.int64)
                    a_detail = np.full(n, act[1], np.int64)
                a_code = np.where(en & ~is_quit, a_code, 0)
                stops_here = _stops(a_code, program.build)
                new_note = (a_code > 0) & ~stops_here & ~failed_before
                note_code = np.where(new_note, a_code, note_code)
                note_at = np.where(new_note, last_real, note_at)
                failed_before |= a_code > 0
                stop_code = np.where(stops_here, a_code, stop_code)
                stop_detail = np.where(stops_here, a_detail, stop_detail)
                stop_at = np.where(stops_here, last_real, stop_at)
                stopped |= stops_here
                continue  # not an action the engine performs (act_en stays False)
            if act[0] == "matmul":
                vals = np.stack([_bcast(w, n) for w in act[1]], axis=-1)
                keep = np.stack([_bcast(x, n, bool) for x in act[2]], axis=-1)
                vals = np.where(keep, 0, vals)
                words = _words(vals, ACTION_FIELDS, big, f"group {g.name!r} IterateAll", live=en & ~is_quit)
                out["act_mm"][ids, j] = True
                out["act_mmf"][ids, j, :N_ACTION] = words
                out["act_mmf"][ids, j, N_ACTION] = (keep[:, :N_MM] << np.arange(N_MM)).sum(axis=1)
                seen.append((vals[:, :N_MM], (en & ~is_quit)[:, None] & ~keep[:, :N_MM]))
            else:  # FreeMessage: no assert in the code; a broken API-page constraint is a finding
                offset, wait = _bcast(act[1], n), _bcast(act[2], n)
                rel = msg_pos + offset
                out_block = (rel < 0) | (rel >= MAX_MSG_PER_AIV * p)
                unused = ~out_block & (rel % p >= queues)
                bad_wait = (wait != NO_WAIT) & (wait != VALID) & (wait != FAKE)
                a_code = np.where(
                    out_block,
                    ErrorCode.FREE_OUT_OF_BLOCK,
                    np.where(unused, ErrorCode.FREE_UNUSED_COLUMN, np.where(bad_wait, ErrorCode.BAD_WAIT_STATE, 0)),
                )
                a_code = np.where(en & ~is_quit, a_code, 0)
                first = (mis_code == 0) & (a_code > 0)
                mis_code = np.where(first, a_code, mis_code)
                mis_detail = np.where(first, np.where(bad_wait & ~out_block & ~unused, wait, offset), mis_detail)
                stray = stray or bool(np.any(en & ~is_quit & out_block))
                out["act_slot"][ids, j] = block + rel  # the free lands wherever rcvMsg + i points
                out["act_wait"][ids, j] = wait
            out["act_en"][ids, j] = en
            last_real = np.where(en, j, last_real)
        if end_state is not None:  # the state each call leaves (QUIT: no call, nothing changes)
            vals = np.stack([_bcast(v, n) for v in end_state[0]], axis=-1)
            keep = np.stack([_bcast(x, n, bool) for x in end_state[1]], axis=-1) | is_quit[:, None]
            vals = np.where(keep, 0, vals)
            out["ver_mmf"][ids, :N_MM] = _words(vals, MM_FIELDS, big, f"group {g.name!r} callback")
            out["ver_mmf"][ids, N_MM] = (keep << np.arange(N_MM)).sum(axis=1)
            seen.append((vals, ~keep))
        stop_code, note_code = np.where(is_quit, 0, stop_code), np.where(is_quit, 0, note_code)
        out["ver_code"][ids] = np.where(stop_at < 0, stop_code, 0)  # stops at dispatch
        out["ver_detail"][ids] = np.where(is_quit, 0, stop_detail)
        out["ver_skip"][ids] = np.where(is_quit, 0, skip)
        out["ver_note"][ids] = np.where(note_at < 0, note_code, 0)  # noted at dispatch
        out["ver_misuse"][ids] = mis_code
        out["ver_misuse_detail"][ids] = mis_detail
        at = stop_at >= 0
        out["act_assert"][ids[at], stop_at[at]] = stop_code[at]  # stops after performing that action
        at = (note_at >= 0) & (note_code > 0)
        out["act_note"][ids[at], note_at[at]] = note_code[at]
    c0 = 0
    for gi, g in enumerate(program.groups):  # what Init set counts too
        rows_ = mm_init[c0 : c0 + g.aic_num]
        dims_seen.setdefault(gi, []).append((rows_, np.ones(rows_.shape, bool)))
        c0 += g.aic_num
    en = out["act_en"]
    idx = np.arange(f)
    later = np.where(en[:, None, :] & (idx[None, None, :] > idx[None, :, None]), idx[None, None, :], f)
    act_next = later.min(axis=2) if f else np.zeros((nv, 0), np.int64)
    ver_first = np.where(en.any(axis=1), np.argmax(en, axis=1), f) if nv else np.zeros(0, np.int64)
    return EncodedProgram(
        rows=rows,
        ver_slot=versions[:, 0],
        ver_group=versions[:, 1],
        ver_state=versions[:, 2],
        ver_aiv_id=versions[:, 3],
        ver_msg=versions[:, 4],
        ver_first=ver_first,
        act_next=act_next,
        mm_init=mm_init,
        mm_dims=_tile_dims(program, dims_seen),
        big_addresses=big,
        capacity=capacity,
        receivable=receive_bound(program, capacity),
        vec_ops=vec_ops,
        ub_dims=ub_dims,
        stray=stray,
        init_asserts=tuple(init_asserts),
        **out,
    )


def _stops(code: np.ndarray, build: str) -> np.ndarray:
    """[n] whether each failed-check ``code`` (0: none) stops an AIC in ``build``
    (:meth:`ErrorCode.stops`)."""
    out = np.zeros(code.shape, bool)
    for c in np.unique(code[code > 0]):
        out |= (code == c) & ErrorCode(int(c)).stops(build)
    return out


#: Columns of :attr:`EncodedProgram.vec_ops`: :data:`ascend_jax.cube_group.vector.WORDS`, then the
#: scalar (float32 bits, already rounded to the result type as the vector unit rounds it), the
#: op's bytes (:func:`ascend_jax.cube_group.vector.op_bytes`, the size its timed cost scales with),
#: and where each buffer the op names lies in its AIV's flat UB (``State.ub``): the element offset
#: (``off_*``) and the row stride, the buffer's cols (``ld_*``); 0 for a buffer the op does not name.
VEC = {name: i for i, name in enumerate(("kind", "dst", "src0", "src1", "rows", "cols", "addr", "stride", "atomic",
                                         "dtype", "scalar", "bytes", "off_dst", "off_src0", "off_src1", "ld_dst",
                                         "ld_src0", "ld_src1"))}  # fmt: skip
N_VEC = len(VEC)
F16_CODE = UB_DTYPES.index("float16")


class UbDims(NamedTuple):
    """What one program's vector ops need of the engine's flat UB (:func:`vector_words`)."""

    size: int = 0  # elements of the largest AIV's buffers (each stored at its own rows x cols)
    window: int = 0  # elements of the largest region an op writes (rows x cols; rows for a reduction)
    reduce_rows: int = 0  # largest rows of a row_max / row_sum (0: none)
    reduce_cols: int = 0  # largest cols of a row_max / row_sum
    flat: bool = True  # every op's region is one run of consecutive elements in each buffer and GM


def vector_words(program: CubeGroupProgram, rows: list[list[tuple]]) -> tuple[np.ndarray, UbDims]:
    """Every AIV vector op of ``program`` as one int row (:data:`VEC`), ``[Vn, N_VEC]`` int64 in
    (AIV, pc) order, and the UB it needs (:class:`UbDims`; all 0 without vector ops). An AIV's
    buffers lie back to back in its flat UB, each at its own size, in declaration order. Points each
    VECTOR op row's ``a`` at its row."""
    out: list[list[int]] = []
    addr: list[int] = []
    size = window = red_rows = red_cols = 0
    flat = True
    for (_, ops), row in zip(program.aivs, rows, strict=True):
        offset: dict[int, int] = {}
        bufs = {}
        for op in ops:
            if op.kind == CALL.VECTOR:
                for b in (op.vec.dst, op.vec.src0, op.vec.src1):
                    if b is not None:
                        bufs[b.index] = b
        at = 0
        for i in sorted(bufs):
            offset[i] = at
            at += bufs[i].rows * bufs[i].cols
        size = max(size, at)
        seen: dict[tuple, list[int]] = {}  # this AIV's ops that differ only in GM address
        for pc, op in enumerate(ops):
            if op.kind != CALL.VECTOR:
                continue
            vec: VectorOp = op.vec
            key = (
                vec.kind,
                id(vec.dst),
                id(vec.src0),
                id(vec.src1),
                vec.rows,
                vec.cols,
                vec.stride,
                vec.atomic,
                vec.scalar,
                math.copysign(1.0, vec.scalar),
            )  # the sign apart: -0.0 == 0.0 as keys, but not in bits
            hit = seen.get(key)
            if hit is None:
                hit = seen[key] = _vector_row(vec, offset)
                w, r_rows, r_cols, f = _vector_region(vec)
                window, red_rows, red_cols = max(window, w), max(red_rows, r_rows), max(red_cols, r_cols)
                flat &= f
            out.append(hit)  # shared by the ops that differ only in address: set below
            addr.append(vec.addr)
            row[pc] = (OpKind.VECTOR, 0, len(out) - 1, 0, 0)
    words = np.array(out, np.int64).reshape(-1, N_VEC)
    words[:, VEC["addr"]] = addr
    return words, UbDims(size, window, red_rows, red_cols, flat)


def _vector_row(vec: VectorOp, offset: dict[int, int]) -> list[int]:
    """``vec`` as :data:`VEC` words for an AIV whose buffers start at ``offset`` (UB elements by
    buffer index)."""
    ints, scalar = vec.words()
    # the ALU's scalar: rounded to float16 when the result is float16 (the reference's VectorUnit)
    s32 = np.float32(np.float16(scalar)) if ints[9] == F16_CODE else np.float32(scalar)
    where = [(offset[b.index], b.cols) if b is not None else (0, 0) for b in (vec.dst, vec.src0, vec.src1)]
    return [*ints, int(s32.view(np.int32)), op_bytes(vec), *(o for o, _ in where), *(ld for _, ld in where)]


def _vector_region(vec: VectorOp) -> tuple[int, int, int, bool]:
    """``(window, reduce_rows, reduce_cols, flat)`` of one op (:class:`UbDims`' fields; 0 where it
    does not reduce)."""
    kind = KIND[vec.kind]
    reduce = kind.pattern == "reduce"
    out_cols = 1 if reduce else vec.cols
    flat = True
    if vec.rows > 1:  # a region of several rows is consecutive where it spans whole rows
        tiles = [(vec.dst, out_cols)] + ([] if reduce else [(vec.src0, vec.cols)])
        if kind.pattern in ("binary", "select"):
            tiles.append((vec.src1, vec.cols))
        flat = all(b is None or b.cols == width for b, width in tiles)
        if kind.is_copy:
            flat &= vec.stride == vec.cols
    return vec.rows * out_cols, (vec.rows if reduce else 0), (vec.cols if reduce else 0), flat


#: Largest operand tile (elements) the engine allocates per AIC and step.
MAX_TILE_ELEMENTS = 1 << 22


def _tile_dims(program: CubeGroupProgram, seen: dict[int, list[tuple[np.ndarray, np.ndarray]]]) -> tuple:
    """Per group: :class:`MatmulDims` (M, N, Kp, rows_disjoint, a_layout, b_layout) from every
    Matmul state value a call or Init can set
    (``seen``: (values, set mask) pairs of :data:`MM_FIELDS` rows). M, N, K bound every tile (the
    tiling's singleCore, or a larger SetTail: legal in the Norm configuration), K padded to baseK;
    ``rows_disjoint``: every C row stride the run can use is at least N, so the engine may write a
    tile's padded rows in one scatter; ``chunk``: the greatest common divisor of N and every n a
    call or Init can set (the engine writes C rows in windows of that many columns); ``a_layout`` / ``b_layout``: ``"plain"``, ``"trans"`` or
    ``"both"``, the layouts A and B can be read in."""
    dims = []
    for gi, cfg in enumerate(program.matmuls or [None] * len(program.groups)):
        if cfg is None:
            dims.append(None)
            continue
        t = cfg[1]
        ext = np.array([t.singleCoreM, t.singleCoreN, t.singleCoreK], np.int64)
        strides = []
        chunk = int(t.singleCoreN)
        for vals, mask in seen.get(gi, []):
            if not len(vals):
                continue
            ext = np.maximum(ext, np.where(mask[:, 5:8], vals[:, 5:8], 0).max(axis=0))
            chunk = int(np.gcd.reduce(np.abs(vals[:, 6][mask[:, 6]]), initial=chunk))
            strides.append(vals[:, 1][mask[:, 1]])  # org_n
            kc = vals[:, 4][mask[:, 4]]
            strides.append(kc[kc > 0])
        m, n, k = (int(v) for v in ext)
        k = padded_k(t, k)
        if max(m * k, k * n, m * n) > MAX_TILE_ELEMENTS:
            raise ConfigError(
                f"group {program.groups[gi].name!r} Matmul tail",
                f"M={m}, N={n}, K={k}",
                f"a tile larger than {MAX_TILE_ELEMENTS} elements is more than the engine allocates per AIC",
                "use smaller tails, or --engine reference",
            )
        all_strides = np.concatenate(strides) if strides else np.zeros(0, np.int64)
        modes = []
        for f in (9, 11):  # trans_a, trans_b: which layouts the run can load ("plain", "trans", "both")
            vals_f = [v[:, f][mk[:, f]] != 0 for v, mk in seen.get(gi, []) if len(v)]
            flags = np.concatenate(vals_f) if vals_f else np.zeros(1, bool)
            modes.append("both" if flags.any() and not flags.all() else "trans" if flags.all() else "plain")
        disjoint = bool(all_strides.size == 0 or all_strides.min() >= n)
        dims.append(MatmulDims(m, n, k, disjoint, *modes, chunk=int(np.gcd(chunk, n))))
    return tuple(dims)


def _words(vals: np.ndarray, names: tuple[str, ...], big: list[int], where: str, live: Any = True) -> np.ndarray:
    """[n, len(names)] int64 Matmul words made int32-safe: an address outside 0..2**31-1 becomes
    ``-1 - i`` with its value in ``big[i]`` (it is outside GM: the engine reports it); an
    ``enAtomic`` outside 1..3 is a plain store (0); any other word outside int32 is an error."""
    out = vals.copy()
    for i, name in enumerate(names):
        col = out[:, i]
        if name in ADDRESS_FIELDS:
            odd = (col < 0) | (col > I32_MAX)
            for r in np.flatnonzero(odd):
                big.append(int(col[r]))
                col[r] = -len(big)
        elif name == "atomic":
            out[:, i] = np.where((col >= 1) & (col <= 3), col, 0)
        else:
            bad = ((col < -(2**31)) | (col > I32_MAX)) & live
            if np.any(bad):
                r = int(np.argmax(bad))
                raise ConfigError(
                    f"{where} {name}",
                    int(col[r]),
                    "a Matmul shape or stride must fit int32, the JAX engine's word",
                    "use smaller shapes, or --engine reference",
                )
    return out


def program_key(program: CubeGroupProgram) -> bytes:
    """A SHA-256 digest of a program's content (:func:`program_content`): equal for two programs
    that encode alike, even when they were built apart."""
    tokens, arrays = program_content(program)
    h = hashlib.sha256("\0".join(tokens).encode())  # a repr holds no NUL, so NUL separates tokens
    for a in arrays:
        h.update(a)
    return h.digest()


def program_content(program: CubeGroupProgram) -> tuple[tuple[str, ...], tuple[np.ndarray, ...]]:
    """A program's content as (tokens, arrays): two programs that encode alike give equal tokens and
    arrays of equal bytes (``simulate`` encodes each distinct content once and shares its tables).

    It covers every field (name, geometry, callbacks, message types, every AIV op and its payload,
    limits, build, matmul configs, the GM's tensors and initial bytes, tolerances), walking
    dataclasses, containers and numpy arrays by value: tokens name each value's type and content
    (an array's dtype, shape and size), ``arrays`` hold the arrays' raw bytes (``[n] uint8``) in
    the order the tokens name them. Built-in callbacks count by their type (they hold no state);
    any other object (a user's callback, a function) counts by identity, so only the same object
    makes two programs equal there: a safe miss, never a false match.
    """
    tokens: list[str] = []
    arrays: list[np.ndarray] = []
    _walk(program, tokens, arrays, set())
    return tuple(tokens), tuple(arrays)


#: types whose repr is their whole content (and tells them apart)
_PLAIN = frozenset({type(None), bool, int, float, complex, str, bytes})


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


@functools.cache
def _type_text(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@functools.cache
def _dtype_text(dtype: np.dtype) -> str:
    return repr(dtype)  # slow for a message struct: once per dtype


def _walk(x: Any, tokens: list[str], arrays: list[np.ndarray], seen: set[int]) -> None:
    """Adds ``x`` to a program's content (see :func:`program_content`). Plain values inside a
    dataclass or a container are added in place (most of a program is op fields)."""
    t = type(x)
    if t in _PLAIN:
        tokens.append(repr(x))
    elif isinstance(x, enum.Enum):
        tokens.append(f"enum {_type_text(t)}.{x.name}")
    elif isinstance(x, int):  # an int subclass that is not an enum
        tokens.append(f"int {_type_text(t)} {int(x)}")
    elif isinstance(x, (np.ndarray, np.generic)):
        a = np.ascontiguousarray(x)
        tokens.append(f"array {_dtype_text(a.dtype)} {a.shape} {a.nbytes}")
        if a.dtype.hasobject:  # Python objects: by identity
            a = np.fromiter(map(id, a.reshape(-1)), np.int64, a.size)
        arrays.append(a.reshape(-1).view(np.uint8))
    elif isinstance(x, np.dtype):
        tokens.append(f"dtype {_dtype_text(x)}")
    elif isinstance(x, _StatelessCallback):
        tokens.append(f"callback {_type_text(t)}")
    elif id(x) in seen:  # a reference back into a container being walked
        tokens.append(f"cycle {id(x)}")
    elif isinstance(x, GlobalMemory):
        seen.add(id(x))
        tokens.append("gm")
        _walk(x.tensors, tokens, arrays, seen)
        _walk(x.image, tokens, arrays, seen)
        seen.discard(id(x))
    else:
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            tokens.append(f"dataclass {_type_text(t)}")
            items: Any = [getattr(x, name) for name in _field_names(t)]
        elif isinstance(x, (tuple, list, Mapping)):
            items = list(x.items()) if isinstance(x, Mapping) else x  # a mapping in insertion order
            tokens.append(f"{_type_text(t)} {len(items)}")
        else:  # an object we cannot compare by value: by identity (unequal to every other object)
            tokens.append(f"object {_type_text(t)} {id(x)}")
            return
        seen.add(id(x))
        for item in items:
            if type(item) in _PLAIN:
                tokens.append(repr(item))
            else:
                _walk(item, tokens, arrays, seen)
        seen.discard(id(x))


#: the most tile variants a group's compute phase compiles beside its full bound (each is one more
#: branch of operand loads and a dot in the compiled loop)
MAX_TILE_VARIANTS = 3


def tile_variants(
    tiling: Any, dims: MatmulDims, words: Sequence[np.ndarray], least: int = 16
) -> tuple[tuple[int, int, str, str], ...]:
    """The tile shapes a group's IterateAll calls fit, smaller than its bound ``dims``: from every
    IterateAll's :data:`ACTION_FIELDS` words with its mask (``words``: ``[n, A + 1]`` arrays) whose
    n, k and transposes are its own (not the AIC's state, known only at run time), the distinct
    ``(n, kp)``: n rounded up to a power of two (at least ``least``), K to a power of two in whole
    baseK chunks (each capped at the bound), with the layouts of A and B its calls use (one, or
    ``"both"``). The :data:`MAX_TILE_VARIANTS` most frequent other than the bound itself; a step
    whose tiles all fit one runs at it (``compute.batch_tiles``), else at the bound. The product
    is the same sum: the padded columns and K chunks are zeros either way. Its float rounding may
    differ in the last bit, as XLA's CPU dot may add a chunk's K products in another order for
    another tile width (seen on a CPU with AVX-512; on one without, the two were bit for bit
    equal)."""
    fields = [AF[f] for f in ("single_n", "single_k", "trans_a", "trans_b")]
    own = [w[(w[:, -1:] >> np.asarray(fields) & 1).sum(axis=1) == 0][:, fields] for w in words if len(w)]
    count: dict[tuple[int, int, str, str], int] = {}
    if own:  # every call's (n, k, trans_a, trans_b) once, with how many calls have it
        calls, times = np.unique(np.concatenate(own), axis=0, return_counts=True)
        for (n, k, ta, tb), c in zip(calls.tolist(), times.tolist(), strict=True):
            v = (
                min(dims.n, bucket(max(n, 1), least)),
                min(dims.kp, padded_k(tiling, bucket(max(k, 1), least))),
                "trans" if ta else "plain",
                "trans" if tb else "plain",
            )
            count[v] = count.get(v, 0) + c
    merged: dict[tuple[int, int], list] = {}  # one variant per (n, kp): each costs compile time
    for (n, kp, la, lb), c in count.items():
        m = merged.setdefault((n, kp), [None, None, 0])
        m[0] = la if m[0] in (None, la) else "both"
        m[1] = lb if m[1] in (None, lb) else "both"
        m[2] += c
    full = (dims.n, dims.kp, dims.a_layout, dims.b_layout)
    keep = [(n, kp, la, lb) for (n, kp), (la, lb, _) in merged.items() if (n, kp, la, lb) != full]
    keep.sort(key=lambda v: -merged[v[:2]][2])
    return tuple(sorted(keep[:MAX_TILE_VARIANTS], key=lambda v: v[0] * v[1]))


__all__ = ["GM_BASE", "EncodedProgram", "MatmulDims", "encode_program", "program_content", "program_key"]

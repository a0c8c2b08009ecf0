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
  handle (P, n, column, depth), all functions of the version. So each group's callback is
  evaluated once here, vectorised over every version of the group with ``handle.xp = numpy``
  (the same code the reference runs on scalars), and the engine looks its decision up: the
  ordered actions (frees with their wait states, matmul descriptors), the skip count, and the
  dispatch-time protocol error with its detail (spec §6.4 asserts; reference ``_aic_act``).

Everything a JAX int32 could not hold is settled here in int64: GM bounds of every matmul operand
(an out-of-range action keeps a zeroed descriptor and a flag, so no address wraps in the engine),
and ``max_steps``, delays and descriptor words are range-checked with a clear error.

Size letters: ``V`` AIVs, ``L`` ops per AIV, ``N`` versions (all groups), ``F`` actions per call,
``D`` descriptor words, ``S`` slots, ``C`` AICs, ``T`` tensors, ``G`` GM bytes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ascend_jax.cube_group.barrier import BarrierObject
from ascend_jax.cube_group.callbacks import NO_WAIT, AicHandle, MsgView
from ascend_jax.cube_group.program import CubeGroupProgram
from ascend_jax.cube_group.result import message_table
from ascend_jax.cube_group.status import ErrorCode, OpKind
from ascend_jax.cube_group.vector import reject_in_engine
from ascend_jax.errors import ConfigError
from ascend_jax.gm import GM_BASE
from ascend_jax.matmul import DESC_FIELDS, N_DESC, Matmul, _NoMatmul, shape_error
from ascend_jax.matmul import D as DM
from ascend_jax.message import MAX_MSG_PER_AIV, CubeMsgState

FREE, VALID, QUIT, FAKE = (int(s) for s in CubeMsgState)
I32_MAX = 2**31 - 1


@dataclasses.dataclass
class EncodedProgram:
    """One program as numpy tables (unpadded; see the module docstring for the size letters).

    AIV ops, ``[V_p, L_p]`` per row of ``rows``: (kind, slot, a, b, c) as in :class:`OpKind`, with a
    WRITE's ``c`` the version it creates.
    Versions ``[N]``: ``ver_slot`` (global slot), ``ver_group``, ``ver_state``, ``ver_aiv_id``,
    ``ver_msg`` (per-group message id of the payload, -1 zeros); the callback's decision:
    ``ver_code`` (first failing action, 0 none: where a debug build stops), ``ver_detail`` (offset,
    wait state, dimension or enAtomic, by code), ``ver_stop`` / ``ver_stop_detail`` (first Matmul
    error: stops in every build), (a release build judges the free asserts at run time, from the
    receiving AIC), ``ver_skip``, ``ver_first`` (first enabled action, F if none). The skip
    asserts depend on the AIC's ``aivWork`` at run time, so the engine checks them.
    Actions ``[N, F]``: ``act_slot`` (global slot of a free), ``act_wait``, ``act_mm``, ``act_en``
    (the action is performed), ``act_next``
    (next enabled action, F if none), ``act_bad`` (matmul outside GM), ``act_desc`` ``[N, F, D]``
    (int64, zero where bad), ``act_fractals`` and ``act_traffic`` (float32, timed cost of a matmul).
    ``bad_address``: (version, action) -> the first out-of-range operand address.
    """

    rows: list[list[tuple[int, int, int, int, int]]]
    ver_slot: np.ndarray
    ver_group: np.ndarray
    ver_state: np.ndarray
    ver_aiv_id: np.ndarray
    ver_msg: np.ndarray
    ver_code: np.ndarray
    ver_detail: np.ndarray
    ver_stop: np.ndarray
    ver_stop_detail: np.ndarray
    ver_skip: np.ndarray
    ver_first: np.ndarray
    act_slot: np.ndarray
    act_wait: np.ndarray
    act_mm: np.ndarray
    act_en: np.ndarray
    act_next: np.ndarray
    act_bad: np.ndarray
    act_desc: np.ndarray
    act_fractals: np.ndarray
    act_traffic: np.ndarray
    bad_address: dict[tuple[int, int], int]
    capacity: int

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
    horizon = program.max_steps + 1  # a longer lockstep delay cannot end before max_steps
    for b, ops in program.aivs:
        ring: dict[int, int] = {}
        alloc_slot: dict[tuple[int, int], int] = {}
        barrier_objs: dict[int, Any] = {}
        row = []
        for op in ops:
            g = program.groups[op.group] if op.kind in ("alloc", "post", "fake", "quit", "wait") else None
            if g is not None:
                q = program.queue_of[(op.group, b)]
                head = g.slot_base + g.slot_index(q, 0)
            if op.kind == "alloc":
                pos = ring.get(op.group, 0)
                alloc_slot[(op.group, op.alloc)] = head + pos * g.aiv_per_aic
                ring[op.group] = (pos + 1) % MAX_MSG_PER_AIV
                row.append((OpKind.ALLOC, alloc_slot[(op.group, op.alloc)], 0, int(op.pipe == "MTE3"), 0))
            elif op.kind in ("post", "fake", "quit"):
                slot = alloc_slot[(op.group, op.alloc)]
                prev = current.get(slot)
                prev_aiv, prev_msg = (0, -1) if prev is None else versions[prev][3:5]
                if op.kind == "post":
                    state, aiv_id, msg = op.state, op.aiv_id, msg_counter[op.group]
                    msg_counter[op.group] += 1
                elif op.kind == "fake":
                    state, aiv_id, msg = FAKE, prev_aiv, prev_msg
                else:
                    state, aiv_id, msg = QUIT, op.aiv_id, prev_msg
                current[slot] = len(versions)
                versions.append((slot, op.group, state, aiv_id, msg))
                sets_flag = op.kind == "post" and op.pipe == "MTE3"  # PostMessage<MTE3> sets MTE3->S again
                row.append((OpKind.WRITE, slot, state, int(sets_flag), current[slot]))
            elif op.kind == "wait":
                row.append((OpKind.WAIT, head + op.offset, int(op.sync), 0, 0))
            elif op.kind == "sync_all":
                row.append((OpKind.SYNC, 0, 0, 0, 0))
            elif op.kind == "delay":
                _check_int32(
                    f"{op.where}.cycles", op.cycles, "must be in 0..2**31-1 cycles", "split the delay or shorten it"
                )
                row.append((OpKind.DELAY, 0, min(op.cycles, horizon, I32_MAX), 0, 0))
            elif op.kind in ("arrive", "barrier_wait"):
                obj = barrier_objs.setdefault(op.group, BarrierObject(program.barriers[op.group]))
                if op.kind == "arrive":
                    row.append((OpKind.ARRIVE, 0, op.group, op.index, obj.arrive_threshold()))
                    obj.after_arrive()
                else:
                    row.append((OpKind.BWAIT, 0, op.group, op.index, obj.wait_threshold()))
                    obj.after_wait()
            else:  # pragma: no cover - the builder makes no other kinds
                raise AssertionError(op.kind)
        rows.append(row)
    return rows, versions


def _bcast(x: Any, n: int, dtype: Any = np.int64) -> np.ndarray:
    return np.broadcast_to(np.asarray(x), (n,)).astype(dtype)


def _tile_span(addr, rows, cols, stride, trans, itemsize):
    """First byte and one past the last of a ``rows x cols`` tile (int64; mirrors gm.tile_extent)."""
    last = np.where(trans, (cols - 1) * stride + rows - 1, (rows - 1) * stride + cols - 1)
    return addr, addr + (last + 1) * itemsize


def _inside(bounds: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    b = bounds[:, None]
    return ((b[..., 0] <= lo) & (hi <= b[..., 1]) & (b[..., 0] < b[..., 1])).any(axis=0)


def _evaluate_group(program: CubeGroupProgram, gi: int, ids: np.ndarray, versions: np.ndarray):
    """Runs group ``gi``'s callback once, vectorised over its versions ``ids``; returns the
    recorded actions as lists of [n] arrays, plus the skip count [n]."""
    g = program.groups[gi]
    n = len(ids)
    slot_rel = versions[ids, 0] - g.slot_base
    k, rem = np.divmod(slot_rel, g.aiv_per_aic * MAX_MSG_PER_AIV)
    depth, column = np.divmod(rem, g.aiv_per_aic)
    queues = np.where(k < g.aic_num - 1, g.aiv_per_aic, g.queues_of_aic(g.aic_num - 1))
    table = message_table(program, gi)
    mid = versions[ids, 4]
    fields = {}
    for name in program.msg_dtypes[gi].names[1:]:
        col = table[name] if len(table) else np.zeros(0, program.msg_dtypes[gi][name])
        fields[name] = np.where(mid >= 0, col[np.maximum(mid, 0)] if len(col) else 0, np.zeros((), col.dtype))
    msg = MsgView(versions[ids, 2], versions[ids, 3], fields)
    handle = AicHandle(np, g.aiv_per_aic, queues, column, depth)
    cfg = program.matmuls[gi] if program.matmuls else None
    mm = _NoMatmul(g.name) if cfg is None else Matmul(cfg[0], cfg[1], np, handle)
    with np.errstate(all="ignore"):
        program.callbacks[gi].call(mm, msg, handle)
    return handle.actions, _bcast(handle.skip, n), column, queues, k


def encode_program(program: CubeGroupProgram) -> EncodedProgram:
    """Encodes one program (see the module docstring); runs every callback's ``init`` once per AIC."""
    reject_in_engine(program)  # AIV vector ops run in the reference interpreter only, for now
    _check_int32("max_steps", program.max_steps, "must be in 1..2**31-1", "lower max_steps")
    capacity = program.receive_capacity()
    _check_int32("max_received", capacity, "must be in 0..2**31-1", "lower max_received")
    for gi, cb in enumerate(program.callbacks):
        cfg = program.matmuls[gi] if program.matmuls else None
        for _ in range(program.groups[gi].aic_num):  # CallBack::Init once per AIC before its first message
            cb.init(None if cfg is None else Matmul(cfg[0], cfg[1]), None if cfg is None else cfg[1])
    rows, vlist = encode_ops(program)
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
            acts, skip, column, queues, k = _evaluate_group(program, gi, ids, versions)
            per_group.append((gi, ids, acts, skip, column, queues, k))
            n_actions = max(n_actions, len(acts))
    f = n_actions
    out = {
        "ver_code": np.zeros(nv, np.int64),
        "ver_detail": np.zeros(nv, np.int64),
        "ver_stop": np.zeros(nv, np.int64),
        "ver_stop_detail": np.zeros(nv, np.int64),
        "ver_skip": np.zeros(nv, np.int64),
        "act_slot": np.zeros((nv, f), np.int64),
        "act_wait": np.full((nv, f), NO_WAIT, np.int64),
        "act_en": np.zeros((nv, f), bool),
        "act_mm": np.zeros((nv, f), bool),
        "act_bad": np.zeros((nv, f), bool),
        "act_desc": np.zeros((nv, f, N_DESC), np.int64),
        "act_fractals": np.zeros((nv, f), np.float32),
        "act_traffic": np.zeros((nv, f), np.float32),
    }
    bad_address: dict[tuple[int, int], int] = {}
    bounds = np.asarray(program.gm.bounds(), np.int64).reshape(-1, 2)
    for gi, ids, acts, skip, _column, queues, k in per_group:
        g = program.groups[gi]
        n = len(ids)
        p = g.aiv_per_aic
        msg_pos = versions[ids, 0] - g.slot_base - k * p * MAX_MSG_PER_AIV
        block = g.slot_base + k * p * MAX_MSG_PER_AIV
        # the skip asserts depend on the AIC's aivWork at run time: the engine checks them
        code = np.zeros(n, np.int64)  # first failing action (any kind): what a debug build stops at
        detail = np.zeros(n, np.int64)
        stop = np.zeros(n, np.int64)  # first Matmul error: stops the AIC in every build
        stop_detail = np.zeros(n, np.int64)
        cfg = program.matmuls[gi] if program.matmuls else None
        for j, act in enumerate(acts):
            en = _bcast(act[-1], n, bool)
            if act[0] == "matmul":
                words = {name: _bcast(w, n) for name, w in zip(DESC_FIELDS, act[1], strict=True)}
                which = shape_error(cfg[1], words["m"], words["n"], words["k"], words["atomic"])
                a_code = np.where(which == 4, ErrorCode.MATMUL_ATOMIC, np.where(which > 0, ErrorCode.MATMUL_SHAPE, 0))
                a_detail = np.where(which == 4, words["atomic"], which)
                desc = np.stack([words[name] for name in DESC_FIELDS], axis=-1)
                bad, first_bad = _check_gm(cfg[0], bounds, words)
                desc = np.where(bad[:, None], 0, desc)
                live = en & (a_code == 0) & ~bad
                too_big = live & ((desc < -(2**31)) | (desc > I32_MAX)).any(axis=1)
                if too_big.any():
                    i = int(np.argmax(too_big))
                    raise ConfigError(
                        f"group {g.name!r} matmul descriptor",
                        {name: int(desc[i, DM[name]]) for name in DESC_FIELDS},
                        "a word exceeds int32, the JAX engine's descriptor type",
                        "use smaller shapes or strides, or --engine reference",
                    )
                out["act_mm"][ids, j] = True
                out["act_desc"][ids, j] = desc
                out["act_bad"][ids, j] = bad
                for r in np.flatnonzero(bad & en):
                    bad_address[(int(ids[r]), j)] = int(first_bad[r])
                out["act_fractals"][ids, j], out["act_traffic"][ids, j] = _mm_cost(cfg[0], desc)
            else:
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
                a_detail = np.where(bad_wait & ~out_block & ~unused, wait, offset)
                out["act_slot"][ids, j] = block + rel  # a release build frees wherever rcvMsg + i points
                out["act_wait"][ids, j] = wait
            a_code = np.where(en, a_code, 0)
            first = (code == 0) & (a_code > 0)
            code = np.where(first, a_code, code)
            detail = np.where(first, a_detail, detail)
            if act[0] == "matmul":
                first = (stop == 0) & (a_code > 0)
                stop = np.where(first, a_code, stop)
                stop_detail = np.where(first, a_detail, stop_detail)
            out["act_en"][ids, j] = en
        is_quit = versions[ids, 2] == QUIT
        out["ver_code"][ids] = np.where(is_quit, 0, code)
        out["ver_detail"][ids] = np.where(is_quit, 0, detail)
        out["ver_stop"][ids] = np.where(is_quit, 0, stop)
        out["ver_stop_detail"][ids] = np.where(is_quit, 0, stop_detail)
        out["ver_skip"][ids] = np.where(is_quit, 0, skip)
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
        bad_address=bad_address,
        capacity=capacity,
        **out,
    )


def _check_gm(mt: Any, bounds: np.ndarray, w: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """[n] whether any operand of a descriptor lies outside every tensor, and the first bad address
    (A, B, C, bias order), in int64 (mirrors ``matmul.check_addresses``; reference ``_check``)."""
    m, n, k = w["m"], w["n"], w["k"]
    spans = [
        (w["a_addr"], _tile_span(w["a_addr"], m, k, w["stride_a"], w["trans_a"] != 0, mt.dtype("a").itemsize)),
        (w["b_addr"], _tile_span(w["b_addr"], k, n, w["stride_b"], w["trans_b"] != 0, mt.dtype("b").itemsize)),
        (w["c_addr"], _tile_span(w["c_addr"], m, n, w["stride_c"], False, mt.dtype("c").itemsize)),
    ]
    oks = [_inside(bounds, lo, hi) for _, (lo, hi) in spans]
    lo, hi = _tile_span(w["bias_addr"], 1, n, n, False, mt.dtype("bias").itemsize)
    oks.append(_inside(bounds, lo, hi) | (w["has_bias"] == 0))
    addrs = [a for a, _ in spans] + [w["bias_addr"]]
    first = np.zeros_like(m)
    for ok, addr in reversed(list(zip(oks, addrs, strict=True))):
        first = np.where(ok, first, addr)
    bad = ~(oks[0] & oks[1] & oks[2] & oks[3])
    return bad, first


def _mm_cost(mt: Any, desc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 cube fractals and GM bytes of each descriptor (the timed schedule's matmul cost,
    ``timing`` module docstring; the reference's ``_mm_cycles`` computes the same in float32)."""
    f32 = np.float32
    m, n, k = (desc[:, DM[x]].astype(f32) for x in ("m", "n", "k"))
    k0 = f32(32 if mt.a == "int8" else 16)
    fractals = np.ceil(m / f32(16)) * np.ceil(n / f32(16)) * np.ceil(k / k0)
    sa, sb, sc = (f32(mt.dtype(x).itemsize) for x in ("a", "b", "c"))
    traffic = m * k * sa + k * n * sb + m * n * sc
    return fractals.astype(f32), traffic.astype(f32)


__all__ = ["EncodedProgram", "encode_program", "GM_BASE"]

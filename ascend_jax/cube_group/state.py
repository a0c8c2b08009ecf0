"""Engine data: static shape, per-lane program tables, and the simulation state pytree.

Size letters: ``S`` slots of all groups, ``V`` AIVs with a program, ``L`` ops per AIV (padded),
``C`` AICs serving a group, ``W`` row width bound (max P), ``F`` free requests per callback call
(padded), ``R`` receive-log entries per AIC, ``B`` barriers, ``N`` counter copies (max), ``M_g``
messages posted into group ``g``, ``G`` GM bytes, ``T`` GM tensors, ``D`` matmul descriptor words.

``F`` counts a callback call's actions (frees and matmuls, in the order the callback recorded them).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ascend_jax.cube_group.barrier import BarrierObject
from ascend_jax.cube_group.layout import GroupGeometry
from ascend_jax.cube_group.program import CubeGroupProgram
from ascend_jax.cube_group.result import message_table
from ascend_jax.cube_group.status import OpKind
from ascend_jax.errors import ConfigError
from ascend_jax.matmul import N_DESC
from ascend_jax.message import MAX_MSG_PER_AIV, CubeMsgState

_AIC_CONSTANTS: dict = {}


@dataclasses.dataclass(frozen=True)
class EngineShape:
    """Everything that fixes array shapes or trace structure (static, hashable).

    Lanes of one batch must share it; programs that differ only in op contents, message values,
    delays, ``max_steps`` or ``max_received`` share it after padding and reuse one compilation.
    """

    groups: tuple[GroupGeometry, ...]
    callbacks: tuple[Any, ...]
    fields: tuple[tuple[tuple[str, str], ...], ...]  # per group: (field name, jnp dtype name)
    aiv_blocks: tuple[int, ...]  # block_idx of each AIV row
    max_ops: int  # L
    msgs_per_group: tuple[int, ...]  # M_g (>= 1, padded)
    receive_capacity: int  # R (array size; the per-lane limit is traced)
    barrier_copies: tuple[int, ...]  # N_b per barrier
    schedule: str  # "lockstep" | "random" | "timed"
    matmuls: tuple[Any, ...] = ()  # per group: (MatmulType, TCubeTiling) or None
    gm_size: int = 1  # G (bytes, padded)
    n_tensors: int = 1  # T (padded)
    atomic_order: str = "fixed"  # "fixed" (AIC index order) | "random" (per lane and step)

    @property
    def has_matmul(self) -> bool:
        return any(m is not None for m in self.matmuls)

    @property
    def total_queues(self) -> int:
        return sum(g.msg_queue_size for g in self.groups)

    def queue_of_slot(self) -> np.ndarray:
        """[S] global queue index (groups in order) of every slot; unused columns -> total_queues."""
        out = []
        base = 0
        for g in self.groups:
            for s in range(g.num_slots):
                k, c, _ = g.slot_queue_depth(s)
                q = k * g.aiv_per_aic + c
                out.append(base + q if c < g.queues_of_aic(k) else self.total_queues)
            base += g.msg_queue_size
        return np.array(out, np.int32)

    @property
    def num_slots(self) -> int:
        return sum(g.num_slots for g in self.groups)

    @property
    def aics(self) -> list[tuple[int, int]]:
        return [(gi, k) for gi, g in enumerate(self.groups) for k in range(g.aic_num)]

    @property
    def row_width(self) -> int:
        return max(g.aiv_per_aic for g in self.groups)

    def aic_constants(self) -> dict[str, np.ndarray]:
        """[C] per-AIC geometry: group, block base slot, P, n, absolute core index (cached)."""
        hit = _AIC_CONSTANTS.get(self.groups)
        if hit is None:
            hit = _AIC_CONSTANTS[self.groups] = self._aic_constants()
        return hit

    def _aic_constants(self) -> dict[str, np.ndarray]:
        rows = [
            (gi, g.slot_base + k * g.aiv_per_aic * MAX_MSG_PER_AIV, g.aiv_per_aic, g.queues_of_aic(k), g.first_aic + k)
            for gi, k in self.aics
            for g in [self.groups[gi]]
        ]
        arr = np.array(rows, np.int32).reshape(-1, 5)
        return dict(group=arr[:, 0], block=arr[:, 1], p=arr[:, 2], n=arr[:, 3], core=arr[:, 4])


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Tables:
    """One lane's program as arrays (traced; lanes differ freely).

    op_kind/op_slot/op_a/op_b/op_c: [V, L] int32, see :class:`OpKind` for the fields.
    op_len: [V] ops per AIV.
    msg_fields: per group, field name -> [M_g] values.
    max_steps: [] step bound. receive_limit: [] receive-log entries allowed per AIC.
    gm_init: [G] uint8 initial GM image. gm_bounds: [T, 2] int32 (start, end) of every tensor.
    cost: [11] float32 cost-model cycles (``timing.CostModel.vector``; timed schedule only).
    """

    op_kind: jax.Array
    op_slot: jax.Array
    op_a: jax.Array
    op_b: jax.Array
    op_c: jax.Array
    op_len: jax.Array
    msg_fields: tuple[dict[str, jax.Array], ...]
    max_steps: jax.Array
    receive_limit: jax.Array
    gm_init: jax.Array
    gm_bounds: jax.Array
    cost: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class State:
    """Simulation state of one lane (immutable; updated with ``dataclasses.replace``).

    slot_state, slot_aiv_id, slot_msg: [S] head state, head aivID, message id of the payload (-1 zero).
    aiv_pc, aiv_timer: [V] next op, steps spent in the current delay.
    aiv_wait_result: [V, L] int8 result of Wait<false> ops (-1 not run).
    aic_phase, aic_row, aic_col: [C] AicPhase, cursor row (depth) and column (aivWork).
    aic_alive: [C, W] aivWorkState as booleans.
    aic_free_slot, aic_free_wait, aic_free_en: [C, F] the actions the current call requested
      (a free's slot and wait state; matmul actions have wait NO_WAIT).
    aic_act_mm: [C, F] whether each action is a matmul; aic_act_desc: [C, F, D] its descriptor.
    gm: [G] uint8 global memory.
    aic_free_pc, aic_skip: [C] next free to perform, SetSkipMsg total of the current call.
    recv_slot, recv_state: [C, R] received log (global slot, state); recv_count: [C].
    barrier_arrive, barrier_wait: [B, N] counter copies.
    step, status, error_code, error_aic, error_slot, error_detail: [] run bookkeeping.
    key: PRNG key of the random schedule.
    Timed schedule (cycles, float32): aiv_clock [V], aic_clock [C], slot_time [S] (when each slot's
    state last changed), barrier_time [B]; aiv_alloc_stall, aiv_wait_stall [V]; aic_busy,
    aic_blocked [C]; occ_cycles [Q+1, 5] cycles each queue spent with 0..4 non-FREE slots;
    t_now [] time of the last event.
    """

    slot_state: jax.Array
    slot_aiv_id: jax.Array
    slot_msg: jax.Array
    aiv_pc: jax.Array
    aiv_timer: jax.Array
    aiv_wait_result: jax.Array
    aic_phase: jax.Array
    aic_row: jax.Array
    aic_col: jax.Array
    aic_alive: jax.Array
    aic_free_slot: jax.Array
    aic_free_wait: jax.Array
    aic_free_en: jax.Array
    aic_act_mm: jax.Array
    aic_act_desc: jax.Array
    gm: jax.Array
    aic_free_pc: jax.Array
    aic_skip: jax.Array
    recv_slot: jax.Array
    recv_state: jax.Array
    recv_count: jax.Array
    barrier_arrive: jax.Array
    barrier_wait: jax.Array
    step: jax.Array
    status: jax.Array
    error_code: jax.Array
    error_aic: jax.Array
    error_slot: jax.Array
    error_detail: jax.Array
    key: jax.Array
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


def _field_dtype(dtype: np.dtype) -> str:
    if dtype.kind == "f":
        return "float32"
    return "int32"


def encode_program(program: CubeGroupProgram) -> dict[str, Any]:
    """Lowers a program's symbolic ops to numpy tables (unpadded) and shape facts."""
    rows = []
    msg_counter = {gi: 0 for gi in range(len(program.groups))}
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
                slot = head + pos * g.aiv_per_aic
                alloc_slot[(op.group, op.alloc)] = slot
                ring[op.group] = (pos + 1) % MAX_MSG_PER_AIV
                row.append((OpKind.ALLOC, slot, 0, 0, 0))
            elif op.kind == "post":
                mid = msg_counter[op.group]
                msg_counter[op.group] += 1
                row.append((OpKind.WRITE, alloc_slot[(op.group, op.alloc)], op.state, op.aiv_id, mid))
            elif op.kind == "fake":
                row.append((OpKind.WRITE, alloc_slot[(op.group, op.alloc)], int(CubeMsgState.FAKE), -1, -1))
            elif op.kind == "quit":
                row.append((OpKind.WRITE, alloc_slot[(op.group, op.alloc)], int(CubeMsgState.QUIT), op.aiv_id, -1))
            elif op.kind == "wait":
                row.append((OpKind.WAIT, head + op.offset, int(op.sync), 0, 0))
            elif op.kind == "delay":
                row.append((OpKind.DELAY, 0, op.cycles, 0, 0))
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
    fields = []
    for gi in range(len(program.groups)):
        table = message_table(program, gi)
        cols = {}
        for name in program.msg_dtypes[gi].names[1:]:
            values = np.asarray(table[name])
            kind = _field_dtype(values.dtype)
            info = np.iinfo(np.int32)
            out_of_range = values.size and (values.max() > info.max or values.min() < info.min)
            if kind == "int32" and out_of_range and not jax.config.jax_enable_x64:
                raise ConfigError(
                    f"group {program.groups[gi].name!r} message field {name}",
                    int(values.max()),
                    "exceeds int32, the JAX engine's field type without 64-bit mode",
                    "enable jax_enable_x64 or use smaller values",
                )
            cols[name] = values.astype(np.float32 if kind == "float32" else np.int64)
        fields.append(cols)
    return {"rows": rows, "fields": fields, "capacity": program.receive_capacity()}


def build_tables(shape: EngineShape, program: CubeGroupProgram, enc: dict[str, Any]) -> Tables:
    """Pads one encoded program to ``shape`` and returns its tables (numpy, ready to stack)."""
    v, l_ = len(shape.aiv_blocks), shape.max_ops
    tab = np.zeros((5, v, max(l_, 1)), np.int32)
    lens = np.zeros(v, np.int32)
    by_block = dict(zip((b for b, _ in program.aivs), enc["rows"], strict=True))
    for i, b in enumerate(shape.aiv_blocks):
        row = by_block.get(b, [])
        lens[i] = len(row)
        if row:
            tab[:, i, : len(row)] = np.array(row, np.int64).T
    fields = []
    for gi, cols in enumerate(enc["fields"]):
        m = shape.msgs_per_group[gi]
        out = {}
        for name, dt in shape.fields[gi]:
            vals = cols[name]
            padded = np.zeros((m,) + vals.shape[1:], dt)
            padded[: len(vals)] = vals
            out[name] = padded
        fields.append(out)
    gm_init = np.zeros(shape.gm_size, np.uint8)
    if shape.has_matmul:  # without matmuls nothing reads or writes GM: carry one byte
        image = program.gm.image
        gm_init[: image.size] = image
    bounds = np.zeros((shape.n_tensors, 2), np.int32)
    b = program.gm.bounds()
    bounds[: len(b)] = b
    from ascend_jax.timing import CostModel

    return Tables(
        cost=CostModel.for_chip(program.chip).vector(),
        gm_init=gm_init,
        gm_bounds=bounds,
        op_kind=tab[0],
        op_slot=tab[1],
        op_a=tab[2],
        op_b=tab[3],
        op_c=tab[4],
        op_len=lens,
        msg_fields=tuple(fields),
        max_steps=np.int32(program.max_steps),
        receive_limit=np.int32(enc["capacity"]),
    )


def init_state(shape: EngineShape, n_frees: int, tab: Tables, key: jax.Array) -> State:
    """The state at launch: zeroed workspace, every AIV at op 0, every AIC at (0, 0) with all columns live."""
    consts = shape.aic_constants()
    c, w, r = len(consts["core"]), shape.row_width, shape.receive_capacity
    v, l_ = len(shape.aiv_blocks), max(shape.max_ops, 1)
    nb, nc = max(len(shape.barrier_copies), 1), max(shape.barrier_copies, default=1)
    i32 = jnp.int32
    return State(
        slot_state=jnp.zeros(shape.num_slots, i32),
        slot_aiv_id=jnp.zeros(shape.num_slots, i32),
        slot_msg=jnp.full(shape.num_slots, -1, i32),
        aiv_pc=jnp.zeros(v, i32),
        aiv_timer=jnp.zeros(v, i32),
        aiv_wait_result=jnp.full((v, l_), -1, jnp.int8),
        aic_phase=jnp.zeros(c, i32),
        aic_row=jnp.zeros(c, i32),
        aic_col=jnp.zeros(c, i32),
        aic_alive=jnp.asarray(np.arange(w)[None, :] < consts["n"][:, None]),
        aic_free_slot=jnp.zeros((c, n_frees), i32),
        aic_free_wait=jnp.zeros((c, n_frees), i32),
        aic_free_en=jnp.zeros((c, n_frees), bool),
        aic_act_mm=jnp.zeros((c, n_frees), bool),
        aic_act_desc=jnp.zeros((c, n_frees, N_DESC), i32),
        gm=jnp.asarray(tab.gm_init),
        aic_free_pc=jnp.zeros(c, i32),
        aic_skip=jnp.zeros(c, i32),
        recv_slot=jnp.zeros((c, r), i32),
        recv_state=jnp.zeros((c, r), i32),
        recv_count=jnp.zeros(c, i32),
        barrier_arrive=jnp.zeros((nb, nc), i32),
        barrier_wait=jnp.zeros((nb, nc), i32),
        step=jnp.zeros((), i32),
        status=jnp.zeros((), i32),
        error_code=jnp.zeros((), i32),
        error_aic=jnp.zeros((), i32),
        error_slot=jnp.zeros((), i32),
        error_detail=jnp.zeros((), i32),
        key=key,
        aiv_clock=jnp.zeros(v, jnp.float32),
        aic_clock=jnp.zeros(c, jnp.float32),
        slot_time=jnp.zeros(shape.num_slots, jnp.float32),
        barrier_time=jnp.zeros(nb, jnp.float32),
        aiv_alloc_stall=jnp.zeros(v, jnp.float32),
        aiv_wait_stall=jnp.zeros(v, jnp.float32),
        aic_busy=jnp.zeros(c, jnp.float32),
        aic_blocked=jnp.zeros(c, jnp.float32),
        occ_cycles=jnp.zeros((shape.total_queues + 1, 5), jnp.float32),
        t_now=jnp.zeros((), jnp.float32),
    )

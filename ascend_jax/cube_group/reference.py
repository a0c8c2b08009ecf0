"""Sequential reference interpreter: the oracle the JAX engine is tested against.

Plain Python, one core action at a time, written from the spec independently of the engine: it
walks the symbolic ops, keeps each AIV's ring position, each AIC's ``msgPos`` / ``aivWork`` /
``aivWorkState`` (a Python int bitmask) and runs ``release`` as the literal loop of spec §6.3.
A user callback is called with numpy scalars, one message at a time; the built-in ``free`` and
``merge`` callbacks' requests are written out from their documented rule (``_builtin_requests``),
so the engine's traced callbacks are checked against an independent statement of that rule.

Schedules:

* ``lockstep``: each step, every AIV whose next action is enabled performs it, then every AIC
  whose next action is enabled (evaluated after the AIVs moved) performs it. Enabledness within a
  phase is judged on the state at the start of the phase. The JAX engine's steps are the same, so
  step counts and ``max_steps`` outcomes agree.
* ``random``: as lockstep, but each enabled core acts with probability 1/2 (seeded); delays still
  tick. Results (received logs, slot states, witness) must not change; step counts do.

A step in which no core is enabled and no delay ticks while some core is unfinished is a deadlock.

Matmul actions performed in a step are computed after every AIC of the step has acted: all loads
first (GM as it was), then the writes in AIC order, as in the engine's compute phase. Numerics:

* ``numerics="hardware"``: GM is a byte image and tiles are computed as the cube unit does
  (:func:`ascend_jax.cube_group.matmul.hw_matmul`); this is what the engine is compared with.
* ``numerics="exact"``: every tensor has a float64 shadow; matmuls and atomics are computed in
  float64 without rounding. This is the float64 numpy reference of the numerics report; tiles
  must then be read with their tensor's element type.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from ascend_jax.cube_group.barrier import BarrierObject
from ascend_jax.cube_group.callbacks import NO_WAIT, AicHandle, FreeCallback, MergeCallback, MsgView
from ascend_jax.cube_group.clock import Cycles
from ascend_jax.cube_group.dcache import AicLineCache, message_lines
from ascend_jax.cube_group.matmul import (
    SHAPE_DETAIL,
    Matmul,
    _NoMatmul,
    check_init_asserts,
    check_operands,
    combine,
    descriptor,
    empty_tile,
    exact_combine,
    exact_matmul,
    hw_matmul,
    np_store,
    np_tile,
)
from ascend_jax.cube_group.program import AivOp, CubeGroupProgram
from ascend_jax.cube_group.result import CubeGroupResult
from ascend_jax.cube_group.status import CALL, ErrorCode, Status
from ascend_jax.cube_group.vector import VectorUnit, vector_cycles
from ascend_jax.errors import ConfigError
from ascend_jax.message import FAKE, FREE, MAX_MSG_PER_AIV, QUIT, VALID, CubeMsgState

F32 = np.float32


class _Slot:
    """One message slot. The class attributes are the zeroed workspace; writes set instance ones."""

    state: int = FREE  # head msgState
    aiv_id: int = 0  # head aivID
    payload: Any = None  # 0-d struct array of the group's message type, None = zeroed
    msg_id: int = -1  # which post (per-group message id) last wrote the payload
    write: int = -1  # event recording only: index in ``events`` of the action that last wrote the head


@dataclasses.dataclass(slots=True)
class _Aiv:
    block_idx: int
    ops: tuple[AivOp, ...]
    heads: dict  # group -> msgHead: the slot of this AIV's queue at depth 0 (group numbering)
    msg_ids: list  # per op: the per-group message id of a post, -1 for other ops
    pc: int = 0
    timer: int = 0
    pos: dict = dataclasses.field(default_factory=dict)  # group -> ring position 0..3
    alloc_slot: dict = dataclasses.field(default_factory=dict)  # (group, alloc #) -> slot index
    barriers: dict = dataclasses.field(default_factory=dict)  # barrier -> BarrierObject
    wait_results: list = dataclasses.field(default_factory=list)
    mte3_flag: bool = True  # the KfcWorkspace's MTE3->S event, set once when it is built
    syncs: int = 0  # SyncAll calls completed

    @property
    def done(self) -> bool:
        """Past its last op, and ``~KfcWorkspace`` returned: on the AIV the destructor waits for the
        MTE3->S flag (asc-devkit ``kernel_operator_cube_group_handle_impl.h`` / the KfcWorkspace
        destructor, ``WaitFlag<HardEvent::MTE3_S>``), which an MTE3 alloc took and only an MTE3
        post gives back: an AIV whose last MTE3 alloc carried a FAKE or a QUIT never returns."""
        return self.pc >= len(self.ops) and self.mte3_flag

    @property
    def in_destructor(self) -> bool:
        """Past its last op, waiting in ``~KfcWorkspace`` for the MTE3->S flag."""
        return self.pc >= len(self.ops) and not self.mte3_flag


@dataclasses.dataclass(slots=True)
class _Aic:
    group: int
    k: int
    core: int
    n: int
    p: int  # P, the row width of the group's blocks
    base: int  # first slot of this AIC's 4 x P block (group numbering)
    builtin: str | None  # "free" / "merge" for the built-in callbacks (see _builtin_requests)
    msg_pos: int = 0
    aiv_work: int = 0
    aiv_work_state: int = 0
    in_call: bool = False
    call_start: float = 0.0  # event recording only: when the current callback's dispatch began
    pending: list = dataclasses.field(default_factory=list)  # [("free", slot, wait) | ("matmul", desc)]
    mm: Any = None  # the AIC's Matmul object (lives from Init to the end of the run)
    skip: int = 0
    log: list = dataclasses.field(default_factory=list)
    error: dict | None = None  # the protocol error that stopped this AIC
    dcache: AicLineCache = dataclasses.field(default_factory=AicLineCache)  # message lines past the first
    misuse: list = dataclasses.field(default_factory=list)  # api_misuse findings, in dispatch order

    @property
    def done(self) -> bool:
        """Left its loop, or stopped at a protocol error (it never acts again)."""
        return self.aiv_work_state == 0 or self.error is not None


class ReferenceInterpreter:
    """Runs a :class:`CubeGroupProgram` one action at a time.

    Args:
      program: the compiled kernel.
      schedule: ``"lockstep"`` or ``"random"``.
      seed: seed of the random schedule.
      max_steps: overrides ``program.max_steps``.
      events: a list to append one dict per core action to (see :meth:`_event`), or None (the
        default: nothing is recorded and nothing costs). :mod:`ascend_jax.trace` reads it.
    """

    def __init__(
        self,
        program: CubeGroupProgram,
        schedule: str = "lockstep",
        seed: int = 0,
        max_steps: int | None = None,
        numerics: str = "hardware",
        cost: Any = None,
        events: list | None = None,
        start: tuple | None = None,
    ):
        self.events = events
        self._t = (0.0, 1.0)  # (start, duration) of the action being performed, for ``events``
        self._tick = 0  # steps performed (the time axis of recorded events outside ``timed``)
        self._step_room, self._more_steps = 1, 0  # steps step() may take at once; it took 1 + _more_steps
        if schedule not in ("lockstep", "random", "timed"):
            raise ValueError(f"schedule = {schedule!r}: must be 'lockstep', 'random' or 'timed'")
        if numerics not in ("hardware", "exact"):
            raise ValueError(f"numerics = {numerics!r}: must be 'hardware' or 'exact'")
        self.numerics = numerics
        if schedule == "timed":
            from ascend_jax.timing import CostModel

            self.cost = (cost or CostModel.for_chip(program.chip)).vector()
        self.image = program.gm.image
        self.bounds = program.gm.bounds()
        self.shadow = (
            {n: program.gm.read(n).astype(np.float64) for n in program.gm.tensors} if numerics == "exact" else {}
        )
        self.written: set[str] = set()  # tensors a matmul or a vector store wrote
        self.vector = VectorUnit(self)  # every AIV's UB; runs vector ops on GM as it is now
        self._mm_queue: list = []
        self.p = program
        self.schedule = schedule
        self.seed = seed
        self.rng = np.random.default_rng(seed) if schedule == "random" else None
        self.max_steps = program.max_steps if max_steps is None else max_steps
        # receive-log capacity: the exact value walks every op, so it is computed only once a log
        # reaches its lower bound (two laps of the widest row) unless the program fixes it
        self.capacity = program.max_received
        self.capacity_floor = (
            2 * MAX_MSG_PER_AIV * max(g.aiv_per_aic for g in program.groups) if self.capacity is None else self.capacity
        )
        self.slots = {gi: [_Slot() for _ in range(g.num_slots)] for gi, g in enumerate(program.groups)}
        if start is not None:  # a relaunch on the previous launch's workspace (zero_workspace = false)
            for gi, old in start[0].items():
                for new, prev in zip(self.slots[gi], old, strict=True):
                    new.__dict__.update(prev.__dict__)
        self.widths = widths = [g.aiv_per_aic for g in program.groups]  # P of every group
        heads: dict[int, dict[int, int]] = {b: {} for b, _ in program.aivs}
        for (gi, b), q in program.queue_of.items():  # msgHead of queue q: its AIC's block, row 0, column q % P
            heads[b][gi] = (q // widths[gi]) * widths[gi] * MAX_MSG_PER_AIV + q % widths[gi]
        counters = [0] * len(widths)
        self.aivs = []
        for b, ops in program.aivs:
            ids = [-1] * len(ops)
            for i, op in enumerate(ops):  # message ids: posts per group in (block_idx, op) order
                if op.kind == CALL.POST:
                    ids[i] = counters[op.group]
                    counters[op.group] += 1
            self.aivs.append(_Aiv(b, ops, heads[b], ids))
        self.aics = []
        for gi, k in program.aics:
            g, cb, p = program.groups[gi], program.callbacks[gi], widths[gi]
            n = g.queues_of_aic(k)
            builtin = {FreeCallback: "free", MergeCallback: "merge"}.get(type(cb))
            core = program.aic_core_index(gi, k)
            aic = _Aic(gi, k, core, n, p, k * p * MAX_MSG_PER_AIV, builtin, aiv_work_state=(1 << n) - 1)
            self.aics.append(aic)
        self.busy_aivs = [a for a in self.aivs if not a.done]  # unfinished cores, in index order
        self.busy_aics = list(self.aics)
        self.some_finished = False  # a core finished in this step: drop it from the busy lists
        self.counters_a = np.zeros(
            (len(program.barriers), max((b.copies for b in program.barriers), default=1)), np.int64
        )
        self.counters_w = np.zeros_like(self.counters_a)
        if start is not None:
            self.counters_a, self.counters_w = start[1].copy(), start[2].copy()
        if schedule == "timed":  # cycles as float32 pairs (clock.Cycles), computed as the engine computes them
            self._init_timed()
        for a in self.aics:  # CallBack::Init once per AIC, before its first message; its mm is Call's
            cfg = program.matmuls[a.group] if program.matmuls else None
            a.mm = _NoMatmul(program.groups[a.group].name) if cfg is None else Matmul(cfg[0], cfg[1], np)
            program.callbacks[a.group].init(a.mm, None if cfg is None else cfg[1])
            if cfg is not None:
                check_init_asserts(a.mm, program.groups[a.group].name, program.build)
        self.failed = 0  # AICs stopped at a protocol error
        self.asserts: dict[int, list[dict]] = {}  # npu-debug / release: AIC core -> the CPU twin's stop

    def _init_timed(self) -> None:
        program = self.p
        zero = Cycles()
        self.aiv_clock = {a.block_idx: zero for a in self.aivs}
        self.aic_clock = [zero] * len(self.aics)
        self.slot_time = {gi: [zero] * g.num_slots for gi, g in enumerate(program.groups)}
        self.barrier_time = [zero] * max(len(program.barriers), 1)
        self.alloc_stall = {a.block_idx: zero for a in self.aivs}
        self.wait_stall = {a.block_idx: zero for a in self.aivs}
        self.aic_busy = [zero] * len(self.aics)
        self.aic_blocked = [zero] * len(self.aics)
        self.t_now = zero
        self.occupancy: dict = {}

    # -- AIV -------------------------------------------------------------------------------
    def _aiv_head(self, aiv: _Aiv, gi: int) -> int:
        return aiv.heads[gi]

    def _barrier_obj(self, aiv: _Aiv, bi: int) -> BarrierObject:
        if bi not in aiv.barriers:
            aiv.barriers[bi] = BarrierObject(self.p.barriers[bi])
        return aiv.barriers[bi]

    def _aiv_ready(self, aiv: _Aiv) -> bool:
        if aiv.pc >= len(aiv.ops):  # in ~KfcWorkspace: the flag is never set again
            return False
        op = aiv.ops[aiv.pc]
        kind = op.kind
        if kind == CALL.WAIT:  # Wait<true> spins until the slot is FREE; Wait<false> reads once
            return not op.sync or self.slots[op.group][aiv.heads[op.group] + op.offset].state == FREE
        if kind == CALL.ALLOC:  # AllocMessage spins until the ring slot is FREE (MTE3: after the flag)
            if op.pipe == "MTE3" and not aiv.mte3_flag:
                return False
            pos = aiv.pos.get(op.group, 0)
            return self.slots[op.group][aiv.heads[op.group] + pos * self.widths[op.group]].state == FREE
        if kind == CALL.ARRIVE:
            obj = self._barrier_obj(aiv, op.group)
            thr = obj.arrive_threshold()
            return thr < 0 or self.counters_w[op.group, op.index] == thr
        if kind == CALL.BARRIER_WAIT:
            obj = self._barrier_obj(aiv, op.group)
            return self.counters_a[op.group, op.index] >= obj.wait_threshold()
        if kind == CALL.SYNC_ALL:
            return self._sync_ready(aiv)
        return True  # post, fake, quit, delay

    def _sync_ready(self, aiv: _Aiv) -> bool:
        """SyncAll returns when every AIV is at (or past) this round and, for the all-core form
        (``aiv_only`` False), every AIC left its loop (kernel_operator_block_sync_intf.h, SyncAll:
        ``isAIVOnly`` defaults to true)."""
        every_aiv = all(
            a.syncs > aiv.syncs or (a.pc < len(a.ops) and a.ops[a.pc].kind == CALL.SYNC_ALL and a.syncs == aiv.syncs)
            for a in self.aivs
            if a.ops  # an AIV without a program takes no part
        )
        return every_aiv and (aiv.ops[aiv.pc].aiv_only or all(c.aiv_work_state == 0 for c in self.aics))

    def _aiv_act(self, aiv: _Aiv) -> None:
        op = aiv.ops[aiv.pc]
        kind = op.kind
        if self.events is not None:
            self._aiv_event(aiv, op)
        if kind == CALL.DELAY:
            aiv.timer += 1
            if aiv.timer < op.cycles:
                return
            aiv.timer = 0
        elif kind == CALL.SYNC_ALL:
            aiv.syncs += 1
        elif kind == CALL.VECTOR:
            self.vector.run(op.vec)
        elif kind == CALL.ALLOC:
            pos = aiv.pos.get(op.group, 0)
            aiv.alloc_slot[(op.group, op.alloc)] = aiv.heads[op.group] + pos * self.widths[op.group]
            aiv.pos[op.group] = (pos + 1) % MAX_MSG_PER_AIV
            if op.pipe == "MTE3":  # WaitFlag<MTE3_S> consumed the event
                aiv.mte3_flag = False
        elif kind == CALL.POST:  # the whole struct, head included
            if op.pipe == "MTE3":  # the DMA post ends with SetFlag<MTE3_S>
                aiv.mte3_flag = True
            slot = self.slots[op.group][aiv.alloc_slot[(op.group, op.alloc)]]
            slot.state, slot.aiv_id = op.state, op.aiv_id
            slot.payload, slot.msg_id = op.payload, aiv.msg_ids[aiv.pc]
            if self.events is not None:
                slot.write = len(self.events) - 1
        elif kind == CALL.FAKE:  # head state only; payload stays stale
            slot = self.slots[op.group][aiv.alloc_slot[(op.group, op.alloc)]]
            slot.state = FAKE
            if self.events is not None:
                slot.write = len(self.events) - 1
        elif kind == CALL.QUIT:  # SetQuit: aivID, then the state
            slot = self.slots[op.group][aiv.alloc_slot[(op.group, op.alloc)]]
            slot.aiv_id, slot.state = op.aiv_id, QUIT
            if self.events is not None:
                slot.write = len(self.events) - 1
        elif kind == CALL.WAIT and not op.sync:  # Wait<false> returns whether the slot is FREE
            state = self.slots[op.group][aiv.heads[op.group] + op.offset].state
            aiv.wait_results.append(state == FREE)
            if self.events is not None:
                self.events[-1]["args"]["free"] = bool(state == FREE)
        elif kind == CALL.ARRIVE:
            obj = self._barrier_obj(aiv, op.group)
            self.counters_a[op.group, : obj.geometry.copies] += 1
            obj.after_arrive()
        elif kind == CALL.BARRIER_WAIT:
            obj = self._barrier_obj(aiv, op.group)
            self.counters_w[op.group, : obj.geometry.copies] += 1
            obj.after_wait()
        aiv.pc += 1
        if aiv.pc == len(aiv.ops):
            self.some_finished = True
        if self.events is not None and kind in (CALL.POST, CALL.FAKE, CALL.QUIT):
            self._occupancy_event(op.group, aiv.alloc_slot[(op.group, op.alloc)])

    # -- AIC -------------------------------------------------------------------------------
    def _slot(self, aic: _Aic, index: int) -> _Slot | None:
        """Slot ``index`` (group numbering) of the AIC's group; None past the group's area (a
        release build's stray cursor or free: reads FREE, writes nothing)."""
        slots = self.slots[aic.group]
        return slots[index] if 0 <= index < len(slots) else None

    def _place(self, aic: _Aic, index: int) -> tuple[int, int]:
        """(queue, depth) of slot ``index`` of the AIC's group (the slot actually read), or (-1, -1)."""
        g = self.p.groups[aic.group]
        if not 0 <= index < g.num_slots:
            return -1, -1
        k, col, d = g.slot_queue_depth(index)
        return k * g.aiv_per_aic + col, d

    def _aic_ready(self, aic: _Aic) -> bool:
        if aic.in_call:
            act = aic.pending[0]
            if act[0] == "matmul":
                return True
            _, slot, wait = act
            target = self._slot(aic, slot)
            return wait == NO_WAIT or (FREE if target is None else target.state) == wait
        cur = self._slot(aic, aic.base + aic.msg_pos)
        return cur is not None and cur.state != FREE

    def _advance(self, aic: _Aic) -> None:
        p = aic.p
        if aic.aiv_work + 1 >= aic.n:
            aic.msg_pos = 0 if aic.msg_pos // p == MAX_MSG_PER_AIV - 1 else aic.msg_pos + (p - aic.n) + 1
            aic.aiv_work = 0
        else:
            aic.msg_pos += 1
            aic.aiv_work += 1

    def _release(self, aic: _Aic) -> None:
        self._advance(aic)
        if aic.aiv_work_state == 0:
            return
        while not (aic.aiv_work_state >> aic.aiv_work) & 1:
            self._advance(aic)

    def _aic_act(self, aic: _Aic) -> dict | None:
        """Performs the AIC's next action. A protocol error at dispatch stops this AIC where it is
        (the message it received is in its log, except when the log itself is full); the other
        cores run on, so the final state does not depend on the schedule. Returns the error."""
        err = self._dispatch(aic)
        if err is not None:  # the message was logged at dispatch (a full log: not at all)
            if self.events is not None and err["code"] != ErrorCode.RECEIVE_LOG_FULL.name:
                args = {k: v for k, v in err.items() if k not in ("core", "group", "message")}
                self._event(f"aic{aic.core}", aic.group, "error", args, dur=0.0)
            self._fail(aic, err)
        return err

    def _fail(self, aic: _Aic, err: dict) -> None:
        if aic.error is None:
            aic.error = err
            self.failed += 1
            self.some_finished = True

    def _dispatch(self, aic: _Aic) -> dict | None:
        """The AIC's next action; an error dict instead when it is a protocol error."""
        if aic.in_call:
            act = aic.pending.pop(0)
            if act[0] == "matmul":
                self._mm_queue.append((aic, act[1]))
            elif (target := self._slot(aic, act[1])) is not None:
                target.state = FREE
            if self.events is not None:
                self._aic_action_event(aic, act)
            if (err := self._markers(aic)) is not None:
                return err  # an assert right after this action: performed, then the AIC stops
            if not aic.pending:
                self._finish_call(aic)
            return None
        p, base = aic.p, aic.base
        cur = self._slot(aic, base + aic.msg_pos)
        queue, depth = self._place(aic, base + aic.msg_pos)
        if len(aic.log) >= self.capacity_floor and len(aic.log) >= self._capacity():
            return self._error(ErrorCode.RECEIVE_LOG_FULL, aic, queue, depth)
        if cur.state == QUIT:
            aic.log.append((queue, depth, "QUIT"))
            if self.events is not None:
                self._receive_event(aic, cur, queue, depth, 0)
            if cur.aiv_id < 64:
                aic.aiv_work_state &= ~(1 << cur.aiv_id)
                self.some_finished = aic.done or self.some_finished
            self._release(aic)
            return None
        cfg = self.p.matmuls[aic.group] if self.p.matmuls else None
        if aic.builtin is not None:
            skip, actions = _builtin_requests(aic.builtin, cur, p)
        else:  # CallBack::Call(mm, msg, handle), which records its requests in the handle
            dtype = self.p.msg_dtypes[aic.group]
            payload = cur.payload if cur.payload is not None else np.zeros((), dtype)
            # past the first 64 bytes Call reads through this AIC's D-cache (dcache.py); line 0 is fresh
            lines = None if message_lines(dtype) == 1 else aic.dcache.view(base + aic.msg_pos, payload)
            msg = MsgView(cur.state, cur.aiv_id, _Fields(payload) if lines is None else lines)
            handle = AicHandle(np, p, aic.n, aic.aiv_work, aic.msg_pos // p, dcache=lines)
            if cfg is not None:
                aic.mm.handle = handle
            self.p.callbacks[aic.group].call(aic.mm, msg, handle)
            skip, actions = int(handle.skip), handle.actions
        # The call's requests in program order. An assert is a marker between the performed
        # actions: ("stop", error) where this build has the assert (the AIC stops once the actions
        # before it are done), ("note", entry) where only the CPU twin has it (asserts_violated).
        # The CPU twin stops at the first failed assert, so only that one is ever noted.
        pending: list = []
        first_failed = False  # a failed assert met earlier in this call (the CPU twin's stop)
        misuse: list = []  # api_misuse findings of this call (FreeMessage constraints no code checks)
        for act in actions:
            if not bool(act[-1]):
                continue
            code, detail = None, {}
            if act[0] == "skip":  # SetSkipMsg: ASCENDC_DEBUG_ASSERT(aivWork < n) after aivWork += k
                k_i, total = int(act[1]), int(act[2])
                if k_i < 0:
                    code = ErrorCode.SKIP_NEGATIVE
                elif aic.aiv_work + total >= aic.n:
                    code = ErrorCode.SKIP_CROSSES_ROW
                detail = {"skip": total}
            elif act[0] == "assert":  # a Matmul API ASCENDC_ASSERT (SetTail / SetOrgShape argument)
                code, detail = ErrorCode.MATMUL_SHAPE, {"dimension": SHAPE_DETAIL[act[1]]}
            if code is not None:
                if code.stops(self.p.build):
                    pending.append(("stop", self._error(code, aic, queue, depth, quiet=True, **detail)))
                    break  # nothing after the assert runs
                if not first_failed:
                    pending.append(("note", self._error(code, aic, queue, depth, quiet=True)))
                first_failed = True
                continue
            if act[0] in ("skip", "assert"):
                continue
            if act[0] == "matmul":
                desc = {k: int(v) for k, v in descriptor([int(x) for x in act[1]]).items()}
                pending.append(("matmul", desc))
                continue
            _, offset, wait, _ = act
            rel, wait = aic.msg_pos + int(offset), int(wait)
            # FreeMessage has no assert (kernel_operator_cube_group_handle_impl.h, FreeMessage): a
            # constraint of the API page broken here is a finding; the free lands where it points
            if not misuse:
                if not 0 <= rel < p * MAX_MSG_PER_AIV:
                    misuse.append((ErrorCode.FREE_OUT_OF_BLOCK, {"offset": int(offset)}))
                elif rel % p >= aic.n:
                    misuse.append((ErrorCode.FREE_UNUSED_COLUMN, {"offset": int(offset)}))
                elif wait not in (NO_WAIT, VALID, FAKE):
                    misuse.append((ErrorCode.BAD_WAIT_STATE, {"wait_state": wait}))
            pending.append(("free", base + rel, wait))
        for code, detail in misuse:
            aic.misuse.append(_misuse_entry(self._error(code, aic, queue, depth, quiet=True, **detail)))
        aic.log.append((queue, depth, _name(cur.state)))
        if self.events is not None:
            self._receive_event(aic, cur, queue, depth, skip)
            aic.call_start = self._t[0]
        aic.skip = skip
        aic.pending = pending
        if (err := self._markers(aic)) is not None:
            return err
        if aic.pending:
            aic.in_call = True
        else:
            self._finish_call(aic)
        return None

    def _markers(self, aic: _Aic) -> dict | None:
        """Processes the assert markers at the head of ``aic.pending`` (they cost no step): a
        note is listed (the first of this AIC only), a stop is returned as the error."""
        while aic.pending and aic.pending[0][0] in ("stop", "note"):
            kind, entry = aic.pending.pop(0)
            if kind == "stop":
                aic.pending = []
                return entry
            if not self.asserts.get(aic.core):
                self.asserts.setdefault(aic.core, []).append(entry)
        return None

    def _capacity(self) -> int:
        """Entries each receive log holds (:meth:`CubeGroupProgram.receive_capacity`)."""
        if self.capacity is None:
            self.capacity = self.p.receive_capacity()
        return self.capacity

    def _finish_call(self, aic: _Aic) -> None:
        if self.events is not None:
            g = self.p.groups[aic.group]
            start, end = aic.call_start, self._t[0] + self._t[1]
            queue, depth = aic.k * g.aiv_per_aic + aic.aiv_work, aic.msg_pos // g.aiv_per_aic
            self._event(f"aic{aic.core}", aic.group, "call", {"queue": queue, "depth": depth}, start, end - start)
        aic.in_call = False
        aic.aiv_work += aic.skip  # SetSkipMsg
        aic.msg_pos += aic.skip
        self._release(aic)

    def _error(self, code: ErrorCode, aic: _Aic, queue: int, depth: int, quiet: bool = False, **detail) -> dict:
        """The error dict of ``code`` at the AIC's message (queue, depth); ``quiet``: no event."""
        if self.events is not None and not quiet:
            args = {"code": code.name, "queue": queue, "depth": depth, **detail}
            self._event(f"aic{aic.core}", aic.group, "error", args, dur=0.0)
        return {
            "code": code.name,
            "core": f"aic{aic.core}",
            "group": self.p.groups[aic.group].name,
            "queue": queue,
            "depth": depth,
            "message": code.describe(),
            **{k: v if isinstance(v, str) else int(v) for k, v in detail.items()},
        }

    # -- event recording (only when ``events`` is a list) ----------------------------------------
    def _event(self, core: str, group: int | None, name: str, args: dict, ts=None, dur=None) -> dict:
        """Appends ``{"core", "group", "name", "ts", "dur", "args"}``: an action of ``core`` (``aiv3``,
        ``aic6``) in group index ``group`` (None: not a group's, e.g. a delay or a barrier) that
        started at ``ts`` and took ``dur`` (cycles under ``timed``, steps otherwise; default: the
        action being performed). ``name`` is the action (alloc, post, fake, quit, wait, delay,
        barrier, receive, call, free, matmul), ``blocked`` (a timed core spinning before an action),
        ``error`` or ``occupancy`` (``args["level"]``: non-FREE slots of ``args["queue"]``)."""
        e = {
            "core": core,
            "group": group,
            "name": name,
            "ts": float(self._t[0] if ts is None else ts),
            "dur": float(self._t[1] if dur is None else dur),
            "args": args,
        }
        self.events.append(e)
        return e

    def _where(self, gi: int, rel: int) -> tuple[int, int]:
        """(queue, depth) of slot ``rel`` of group ``gi`` (group numbering)."""
        g = self.p.groups[gi]
        k, col, d = g.slot_queue_depth(rel)
        return k * g.aiv_per_aic + col, d

    def _aiv_event(self, aiv: _Aiv, op: AivOp) -> None:
        core, kind = f"aiv{aiv.block_idx}", op.kind
        if kind == CALL.DELAY:
            if aiv.timer + 1 >= op.cycles:  # one slice when the delay ends, over all its steps
                self._event(core, None, "delay", {"cycles": op.cycles}, self._t[0] - op.cycles + 1, op.cycles)
            return
        if kind == CALL.VECTOR:
            self._event(core, None, "vector", op.vec.describe())
            return
        if kind in (CALL.ARRIVE, CALL.BARRIER_WAIT):
            obj = self._barrier_obj(aiv, op.group)
            args = {"op": kind.replace("barrier_", ""), "barrier": obj.geometry.name, "index": op.index}
            self._event(core, None, "barrier", args)
            return
        gi = op.group
        if kind == CALL.ALLOC:
            rel = aiv.heads[gi] + aiv.pos.get(gi, 0) * self.widths[gi]
        elif kind == CALL.WAIT:
            rel = aiv.heads[gi] + op.offset
        else:
            rel = aiv.alloc_slot[(gi, op.alloc)]
        queue, depth = self._where(gi, rel)
        args: dict[str, Any] = {"queue": queue, "depth": depth}
        if kind == CALL.POST:
            args.update(state=_name(op.state), aivID=op.aiv_id, msg_id=aiv.msg_ids[aiv.pc])
            args["message"] = _fields(op.payload)
        elif kind == CALL.QUIT:
            args.update(state="QUIT", aivID=op.aiv_id)
        elif kind == CALL.FAKE:
            args["state"] = "FAKE"
        elif kind == CALL.WAIT:
            args["sync"] = bool(op.sync)
        self._event(core, gi, kind, args)

    def _receive_event(self, aic: _Aic, cur: _Slot, queue: int, depth: int, skip: int) -> None:
        args: dict[str, Any] = {"queue": queue, "depth": depth, "state": _name(cur.state), "aivID": int(cur.aiv_id)}
        if cur.state != QUIT:
            args.update(msg_id=int(cur.msg_id), skip=int(skip), message=_fields(cur.payload))
        e = self._event(f"aic{aic.core}", aic.group, "receive", args)
        e["from"] = cur.write  # index of the event that wrote this head (-1: none)

    def _aic_action_event(self, aic: _Aic, act: tuple) -> None:
        if act[0] == "matmul":
            d = act[1]
            args = {k: d[k] for k in ("m", "n", "k", "atomic", "a_addr", "b_addr", "c_addr")}
            self._event(f"aic{aic.core}", aic.group, "matmul", args)
            return
        _, slot, wait = act
        queue, depth = self._where(aic.group, slot)
        args = {"queue": queue, "depth": depth, "wait": "none" if wait == NO_WAIT else _name(wait)}
        self._event(f"aic{aic.core}", aic.group, "free", args)
        self._occupancy_event(aic.group, slot)

    def _occupancy_event(self, gi: int, rel: int) -> None:
        """A sample of the queue of slot ``rel``: its non-FREE slots, at the end of the current action."""
        g = self.p.groups[gi]
        queue, _ = self._where(gi, rel)
        if queue >= g.msg_queue_size:
            return
        slots = self.slots[gi]
        level = sum(slots[g.slot_index(queue, d)].state != FREE for d in range(MAX_MSG_PER_AIV))
        self._event("", gi, "occupancy", {"queue": queue, "level": level}, self._t[0] + self._t[1], 0.0)

    # -- compute ---------------------------------------------------------------------------
    def _check(self, mt, d: dict) -> int | None:
        """The first out-of-range address of a descriptor (A, B, C, bias order), else None."""
        ok, bad = check_operands(mt, np.asarray(self.bounds, np.int64).reshape(-1, 2), d)
        return None if bool(ok) else int(bad)

    def _tile(self, addr: int, rows: int, cols: int, stride: int, trans: bool, dtype: np.dtype) -> np.ndarray:
        if self.numerics == "hardware":
            return np_tile(self.image, addr, rows, cols, stride, trans, dtype)
        name, flat, off = self._exact_index(addr, rows, cols, stride, trans, dtype)
        return flat[off]

    def _exact_index(self, addr, rows, cols, stride, trans, dtype):
        t = self.p.gm.tensors[self.p.gm.owner(addr)]
        if t.dtype != dtype or (addr - t.addr) % dtype.itemsize:
            raise ConfigError(
                "numerics",
                self.p.gm.describe(addr),
                f"the float64 reference reads tiles with their tensor's type ({t.dtype}), not {dtype}, at element offsets",
            )
        r = np.arange(rows)[:, None]
        c = np.arange(cols)[None, :]
        off = (addr - t.addr) // dtype.itemsize + ((c * stride + r) if trans else (r * stride + c))
        return t.name, self.shadow[t.name].reshape(-1), off

    def _compute(self) -> None:
        """Runs the step's matmuls: every load first, then the writes in AIC order."""
        queue, self._mm_queue = self._mm_queue, []
        done = []
        for aic, d in queue:
            mt, tiling = self.p.matmuls[aic.group]
            bad = self._check(mt, d)
            if bad is not None:
                done.append((aic, d, mt, None, bad))
                continue
            if empty_tile(d):  # an extent <= 0: IterateAll reads and writes nothing
                continue
            m, n, k = d["m"], d["n"], d["k"]
            a = self._tile(d["a_addr"], m, k, d["stride_a"], bool(d["trans_a"]), mt.dtype("a"))
            b = self._tile(d["b_addr"], k, n, d["stride_b"], bool(d["trans_b"]), mt.dtype("b"))
            bias = self._tile(d["bias_addr"], 1, n, n, False, mt.dtype("bias"))[0] if d["has_bias"] else None
            scale = float(np.int32(d["quant_scale"]).view(np.float32)) if mt.dequant else 1.0
            if self.numerics == "exact":
                c = exact_matmul(a, b, bias, scale)
            else:
                c = hw_matmul(mt, tiling, a, b, bias, scale)
            done.append((aic, d, mt, c, None))
        for aic, d, mt, c, bad in done:
            if bad is not None:  # this AIC stops here; the rest of the step's matmuls are written
                g = self.p.groups[aic.group]
                queue_, depth = aic.k * g.aiv_per_aic + aic.aiv_work, aic.msg_pos // g.aiv_per_aic
                self._fail(
                    aic, self._error(ErrorCode.GM_OUT_OF_RANGE, aic, queue_, depth, address=self.p.gm.describe(bad))
                )
                continue
            m, n = c.shape
            if self.numerics == "hardware":
                old = np_tile(self.image, d["c_addr"], m, n, d["stride_c"], False, mt.dtype("c"))
                np_store(self.image, d["c_addr"], d["stride_c"], combine(mt, old, c, d["atomic"], np))
            else:
                name, flat, off = self._exact_index(d["c_addr"], m, n, d["stride_c"], False, mt.dtype("c"))
                flat[off] = exact_combine(flat[off], c, d["atomic"])
                self.written.add(name)

    # -- loop ------------------------------------------------------------------------------
    def _chosen(self, ready: list) -> list:
        if self.schedule == "lockstep":
            return ready
        return [c for c in ready if self.rng.random() < 0.5]

    # -- timed schedule ----------------------------------------------------------------------
    def _c(self, name: str) -> np.float32:
        from ascend_jax.timing import C

        return F32(self.cost[C[name]])

    def _aiv_time(self, aiv: _Aiv) -> tuple[Cycles, Cycles]:
        """(start, duration) of the AIV's next op: a delay's duration is its cycles, exactly."""
        op = aiv.ops[aiv.pc]
        clock = self.aiv_clock[aiv.block_idx]
        enable = Cycles()
        if op.kind == CALL.ALLOC:
            g = self.p.groups[op.group]
            enable = self.slot_time[op.group][self._aiv_head(aiv, op.group) + aiv.pos.get(op.group, 0) * g.aiv_per_aic]
        elif op.kind == CALL.WAIT and op.sync:
            enable = self.slot_time[op.group][self._aiv_head(aiv, op.group) + op.offset]
        elif op.kind in (CALL.ARRIVE, CALL.BARRIER_WAIT):
            enable = self.barrier_time[op.group]
        elif op.kind == CALL.SYNC_ALL:  # when the last core arrives (the AIVs only: SyncAll<true>)
            enable = max([*self.aiv_clock.values(), *([] if op.aiv_only else self.aic_clock)])
        dur = {
            CALL.ALLOC: self._c("alloc"),
            CALL.FAKE: self._c("fake"),
            CALL.QUIT: self._c("quit"),
            CALL.POST: self._c("post"),
            CALL.WAIT: self._c("wait"),
            CALL.ARRIVE: self._c("barrier"),
            CALL.BARRIER_WAIT: self._c("barrier"),
            CALL.SYNC_ALL: self._c("barrier"),
        }.get(op.kind, op.cycles if op.kind == CALL.DELAY else F32(0))
        if op.kind == CALL.POST and op.state in (FAKE, QUIT):  # a hand-made FAKE / QUIT costs as the engine's
            dur = self._c("fake") if op.state == FAKE else self._c("quit")
        elif op.kind == CALL.VECTOR:
            dur = vector_cycles(op.vec, self.cost)
        return max(clock, enable), Cycles.of(dur)

    def _aic_time(self, aic: _Aic) -> tuple[Cycles, Cycles]:
        i = self.aics.index(aic)
        clock = self.aic_clock[i]
        slots = self.slot_time[aic.group]
        if not aic.in_call:
            cur = self.slots[aic.group][aic.base + aic.msg_pos]
            dur = self._c("poll") if cur.state == QUIT else self._c("dispatch")
            return max(clock, slots[aic.base + aic.msg_pos]), Cycles.of(dur)
        act = aic.pending[0]
        if act[0] == "matmul":
            return clock, Cycles.of(self._mm_cycles(aic, act[1]))
        _, slot, wait = act
        enable = Cycles() if wait == NO_WAIT else slots[slot]
        return max(clock, enable), Cycles.of(self._c("free"))

    def _mm_cycles(self, aic: _Aic, d: dict) -> np.float32:
        mt = self.p.matmuls[aic.group][0]
        k0 = F32(32 if mt.a == "int8" else 16)
        m, n, k = (F32(max(d[x], 0)) for x in ("m", "n", "k"))
        fr = F32(np.ceil(m / F32(16))) * F32(np.ceil(n / F32(16))) * F32(np.ceil(k / k0))
        sa, sb, sc = (F32(mt.dtype(x).itemsize) for x in ("a", "b", "c"))
        traffic = m * k * sa + k * n * sb + m * n * sc
        return F32(self._c("mm_overhead") + fr + traffic / self._c("ddr_rate"))

    def _timed_step(self) -> bool:
        ready_v = [a for a in self.aivs if not a.done and self._aiv_ready(a)]
        ready_c = [(i, c) for i, c in enumerate(self.aics) if not c.done and self._aic_ready(c)]
        if not (ready_v or ready_c):
            return False
        times_v = {a.block_idx: self._aiv_time(a) for a in ready_v}
        times_c = {i: self._aic_time(c) for i, c in ready_c}
        tmin = min([t for t, _ in times_v.values()] + [t for t, _ in times_c.values()])
        self._occupancy(tmin)
        for a in ready_v:
            start, dur = times_v[a.block_idx]
            if start != tmin:
                continue
            op = a.ops[a.pc]
            stall = start - self.aiv_clock[a.block_idx]
            if op.kind == CALL.ALLOC:
                self.alloc_stall[a.block_idx] += stall
            elif op.kind in (CALL.WAIT, CALL.ARRIVE, CALL.BARRIER_WAIT, CALL.SYNC_ALL):
                self.wait_stall[a.block_idx] += stall
            end = start + dur
            if self.events is not None:
                self._t = (float(start), float(dur))
                if stall > 0:
                    self._event(
                        f"aiv{a.block_idx}", None, "blocked", {"before": op.kind}, self.aiv_clock[a.block_idx], stall
                    )
                if op.kind == CALL.DELAY:
                    self._event(f"aiv{a.block_idx}", None, "delay", {"cycles": op.cycles})
            if op.kind in (CALL.POST, CALL.FAKE, CALL.QUIT):
                self.slot_time[op.group][a.alloc_slot[(op.group, op.alloc)]] = end
            if op.kind in (CALL.ARRIVE, CALL.BARRIER_WAIT):
                self.barrier_time[op.group] = max(self.barrier_time[op.group], end)
            self.aiv_clock[a.block_idx] = end
            if op.kind == CALL.DELAY:  # one action of `cycles` cycles
                a.pc += 1
                self.some_finished = a.done or self.some_finished
            else:
                self._aiv_act(a)
        for i, c in enumerate(self.aics):
            if c.done or not self._aic_ready(c):
                continue
            start, dur = self._aic_time(c)
            if start != tmin:
                continue
            freeing = c.in_call and c.pending[0][0] == "free"
            slot = c.pending[0][1] if freeing else None
            end = start + dur
            if self.events is not None:
                self._t = (float(start), float(dur))
                if start > self.aic_clock[i]:
                    what = "free" if freeing else "matmul" if c.in_call else "receive"
                    self._event(
                        f"aic{c.core}",
                        c.group,
                        "blocked",
                        {"before": what},
                        self.aic_clock[i],
                        start - self.aic_clock[i],
                    )
            if self._aic_act(c) is not None:
                continue
            self.aic_busy[i] += dur
            self.aic_blocked[i] += start - self.aic_clock[i]
            self.aic_clock[i] = end
            if freeing:
                self.slot_time[c.group][slot] = end
        if self._mm_queue:
            self._compute()
        self._drop_finished()
        return True

    def _occupancy(self, tmin: Cycles) -> None:
        dt = max(tmin - self.t_now, Cycles())
        for gi, g in enumerate(self.p.groups):
            for q in range(g.msg_queue_size):
                level = sum(self.slots[gi][g.slot_index(q, d)].state != FREE for d in range(MAX_MSG_PER_AIV))
                key = (gi, q)
                row = self.occupancy.setdefault(key, [Cycles()] * (MAX_MSG_PER_AIV + 1))
                row[level] += dt
        self.t_now = max(tmin, self.t_now)

    def step(self) -> bool:
        """One step; returns whether any core was enabled (progress was possible)."""
        if self.schedule == "timed":
            return self._timed_step()
        if self.events is not None:
            self._t = (float(self._tick), 1.0)
            self._tick += 1
        aiv_ready, aic_ready = self._aiv_ready, self._aic_ready
        ready_v = [a for a in self.busy_aivs if aiv_ready(a)]
        idle = self._idle_ticks(ready_v)
        if idle:  # `idle` steps in which only delays tick, taken at once
            for a in ready_v:
                a.timer += idle
            if self.events is not None:
                self._tick += idle - 1
            self._more_steps = idle - 1
            return True
        if self.schedule == "lockstep":  # every enabled AIV acts (a delay's tick touches only its timer)
            acting = ready_v
        else:
            ticking = [a for a in ready_v if a.ops[a.pc].kind == CALL.DELAY]  # time passes for every delay
            acting = ticking + self._chosen([a for a in ready_v if a.ops[a.pc].kind != CALL.DELAY])
        for a in acting:
            self._aiv_act(a)
        ready_c = [c for c in self.busy_aics if aic_ready(c)]
        for c in ready_c if self.schedule == "lockstep" else self._chosen(ready_c):
            self._aic_act(c)
        if self._mm_queue:
            self._compute()
        self._drop_finished()
        return bool(ready_v or ready_c)

    def _idle_ticks(self, ready_v: list[_Aiv]) -> int:
        """Lockstep and random: how many steps from now only tick delays (every enabled AIV is in a
        delay that does not end in them, no AIC is enabled), at most ``_step_room``; 0 if not two.
        Such steps change nothing but the delays' timers (and draw no random number), so they are
        taken at once: the same steps, the same results, time no longer spent per cycle."""
        if not ready_v or self._step_room < 2:
            return 0
        left = self._step_room
        for a in ready_v:
            op = a.ops[a.pc]
            if op.kind != CALL.DELAY:
                return 0
            left = min(left, op.cycles - a.timer - 1)  # ticks before the one that ends it
        if left < 2 or any(self._aic_ready(c) for c in self.busy_aics):
            return 0
        return left

    def _drop_finished(self) -> None:
        """Keeps ``busy_aivs`` / ``busy_aics`` to the cores that still have work (index order)."""
        if self.some_finished:
            self.busy_aivs = [a for a in self.busy_aivs if not a.done]
            self.busy_aics = [c for c in self.busy_aics if not c.done]
            self.some_finished = False

    def run(self) -> CubeGroupResult:
        status, steps = Status.RUNNING, 0
        while status == Status.RUNNING:
            self._step_room, self._more_steps = self.max_steps - steps, 0
            progressed = self.step()
            steps += 1 + self._more_steps
            if not self.busy_aivs and not self.busy_aics:
                status = Status.OK
            elif not progressed:
                status = Status.DEADLOCK
            elif steps >= self.max_steps:
                status = Status.MAX_STEPS
            if status != Status.RUNNING and self.failed:
                status = Status.ERROR  # an AIC stopped at an error; the rest ran until nothing could move
        return self._result(status, steps)

    def _blocked(self) -> list[dict]:
        out = []
        for c in self.aics:
            if c.done:
                continue
            g = self.p.groups[c.group]
            if c.in_call:
                _, slot, wait = c.pending[0]
                out.append(_entry(f"aic{c.core}", g.name, *self._place(c, slot), _name(wait)))
            else:
                out.append(_entry(f"aic{c.core}", g.name, *self._place(c, c.base + c.msg_pos), "NOT_FREE"))
        for a in self.aivs:
            if a.done:
                continue
            if a.in_destructor:
                out.append({"core": f"aiv{a.block_idx}", "until": "MTE3_FLAG", "call": "~KfcWorkspace"})
                continue
            op = a.ops[a.pc]
            if op.kind in (CALL.ALLOC, CALL.WAIT):
                g = self.p.groups[op.group]
                rel = self._aiv_head(a, op.group) + (
                    a.pos.get(op.group, 0) * g.aiv_per_aic if op.kind == CALL.ALLOC else op.offset
                )
                k, col, d = g.slot_queue_depth(rel)
                until = "MTE3_FLAG" if op.kind == CALL.ALLOC and op.pipe == "MTE3" and not a.mte3_flag else "FREE"
                out.append(_entry(f"aiv{a.block_idx}", g.name, k * g.aiv_per_aic + col, d, until))
            elif op.kind == CALL.ARRIVE:
                obj = self._barrier_obj(a, op.group)
                out.append(
                    _barrier_entry(f"aiv{a.block_idx}", obj.geometry.name, op.index, f"W=={obj.arrive_threshold()}")
                )
            elif op.kind == CALL.BARRIER_WAIT:
                obj = self._barrier_obj(a, op.group)
                out.append(
                    _barrier_entry(f"aiv{a.block_idx}", obj.geometry.name, op.index, f"A>={obj.wait_threshold()}")
                )
            elif op.kind == CALL.SYNC_ALL:
                out.append({"core": f"aiv{a.block_idx}", "until": "SYNC_ALL"})
        return out

    def _result(self, status: Status, steps: int) -> CubeGroupResult:
        total = sum(g.num_slots for g in self.p.groups)
        st, aid, mid = (np.zeros(total, np.int64) for _ in range(3))
        for gi, g in enumerate(self.p.groups):
            part = slice(g.slot_base, g.slot_base + g.num_slots)
            slots = self.slots[gi]
            st[part], aid[part], mid[part] = (
                [s.state for s in slots],
                [s.aiv_id for s in slots],
                [s.msg_id for s in slots],
            )
        return CubeGroupResult(
            program=self.p,
            status=status,
            steps=steps,
            slot_state=st,
            slot_aiv_id=aid,
            slot_msg=mid,
            received={c.core: list(c.log) for c in self.aics},
            blocked=self._blocked() if status == Status.DEADLOCK else [],
            error=next(c.error for c in self.aics if c.error is not None) if status == Status.ERROR else None,
            asserts_violated=[e for c in self.aics for e in self.asserts.get(c.core, [])],
            api_misuse=[e for c in self.aics for e in c.misuse],
            barrier_arrive=self.counters_a.copy(),
            barrier_wait=self.counters_w.copy(),
            wait_results={a.block_idx: list(a.wait_results) for a in self.aivs if a.wait_results},
            seed=self.seed,
            gm=self.image.copy() if self.numerics == "hardware" else None,
            timing=self._timing() if self.schedule == "timed" else None,
        )

    def _timing(self) -> dict:
        from ascend_jax.cube_group.result import timing_report

        occ = {}
        for (gi, q), row in self.occupancy.items():
            occ.setdefault(gi, {})[q] = [float(x) for x in row]
        return timing_report(
            self.p,
            aic_busy=[float(x) for x in self.aic_busy],
            aic_blocked=[float(x) for x in self.aic_blocked],
            aic_clock=[float(x) for x in self.aic_clock],
            aiv={
                b: (float(self.alloc_stall[b]), float(self.wait_stall[b]), float(self.aiv_clock[b]))
                for b in self.aiv_clock
            },
            occupancy=occ,
            freq_mhz=float(self.cost[-1]),
        )


class _Fields(Mapping):
    """A message's payload fields by name, read from the struct when the callback asks for them."""

    __slots__ = ("payload",)

    def __init__(self, payload: np.ndarray):
        self.payload = payload  # 0-d struct array of the group's message type

    def __getitem__(self, name: str) -> Any:
        if name == "head" or name not in self.payload.dtype.names:
            raise KeyError(name)
        return self.payload[name][()]

    def __iter__(self):
        return iter(self.payload.dtype.names[1:])

    def __len__(self) -> int:
        return len(self.payload.dtype.names) - 1


def _builtin_requests(kind: str, cur: _Slot, p: int) -> tuple[int, list[tuple]]:
    """``(skip, actions)`` that the built-in ``free`` / ``merge`` callback records for the message in
    ``cur``, written out from their rule (DESIGN.md; ``FreeCallback`` / ``MergeCallback`` in
    ``callbacks.py``) instead of calling them, which costs ~20 us a message through numpy.

    Actions are in the handle's format, ``("free", offset, wait_state, when)``, and go through the
    same checks as a user callback's. ``free``: ``FreeMessage(msg)``. ``merge``: with ``k`` the
    ``skipCnt`` of a VALID message (0 otherwise), ``FreeMessage(msg, VALID if k else no wait)``, then
    ``FreeMessage(msg + i, FAKE)`` for i = 1..k (as the seed: past the row end too), then
    ``SetSkipMsg(k)``.
    """
    if kind == "free":
        return 0, [("free", 0, NO_WAIT, True)]
    k = int(cur.payload["skipCnt"]) if cur.state == VALID and cur.payload is not None else 0
    actions = [("free", 0, VALID if k > 0 else NO_WAIT, True)]
    actions += [("free", i, FAKE, True) for i in range(1, k + 1)]
    return k, [*actions, ("skip", k, k, True)]  # SetSkipMsg(k) last, as the seed calls it


_STATE_NAMES = {int(s): s.name for s in CubeMsgState}


def _misuse_entry(err: dict) -> dict:
    """An ``api_misuse`` finding from an error dict: its keys, the kind first and the constraint
    (the code's description) in place of the message."""
    out = {"kind": "api_misuse", **err}
    out["constraint"] = out.pop("message")
    return out


def _fields(payload: Any) -> dict[str, Any]:
    """A message's payload fields (not the head) as JSON values; {} for no payload."""
    if payload is None:
        return {}
    return {n: payload[n].tolist() for n in payload.dtype.names[1:]}


def _name(state: int) -> str:
    """``CubeMsgState`` name of a head state; other values as numbers."""
    return _STATE_NAMES.get(state) or str(state)


def _entry(core: str, group: str, queue: int, depth: int, until: str) -> dict:
    return {"core": core, "group": group, "queue": int(queue), "depth": int(depth), "until": until}


def _barrier_entry(core: str, barrier: str, index: int, until: str) -> dict:
    return {"core": core, "barrier": barrier, "index": int(index), "until": until}


def run_reference(
    program: CubeGroupProgram,
    schedule: str = "lockstep",
    seed: int = 0,
    max_steps: int | None = None,
    cost: Any = None,
) -> CubeGroupResult:
    """Runs ``program`` in the reference interpreter (hardware numerics; ``cost`` for ``timed``)."""
    if program.zero_workspace:
        return ReferenceInterpreter(program, schedule, seed, max_steps, cost=cost).run()
    first = ReferenceInterpreter(program, schedule, seed, max_steps, cost=cost)
    first.run()  # the launch whose workspace the reported one inherits
    start = (first.slots, first.counters_a, first.counters_w)
    return ReferenceInterpreter(program, schedule, seed, max_steps, cost=cost, start=start).run()

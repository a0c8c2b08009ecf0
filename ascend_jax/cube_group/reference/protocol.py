"""The handle protocol in the reference: every core's state and what one action of a core does.

Plain Python, written from the spec independently of the engine. Each AIV keeps its ring
position per group (``AllocMessage`` / ``PostMessage`` / ``PostFakeMsg`` / ``SetQuit`` / ``Wait``),
its GroupBarrier objects, its SyncAll rounds and the KfcWorkspace MTE3->S flag; each AIC keeps
``msgPos`` / ``aivWork`` / ``aivWorkState`` (a Python int bitmask), receives a message, runs its
callback (``CallBack::Call``) and performs the requests the callback recorded (``FreeMessage``,
``IterateAll``, ``SetSkipMsg``) one action at a time; ``release`` is the literal loop of spec §6.3.

A user callback is called with numpy scalars, one message at a time; the built-in ``free`` and
``merge`` callbacks' requests are written out from their documented rule
(:func:`builtin_requests`), so the engine's traced callbacks are checked against an independent
statement of that rule.

Which core acts when is the scheduler's business (``interpreter.py``); matmuls requested here are
queued (``Protocol.mm_queue``) and computed by the scheduler at the end of the step
(``compute.run_matmuls``); vector ops run at once (``compute.VectorUnit``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from ascend_jax.cube_group.barrier import BarrierObject
from ascend_jax.cube_group.callbacks import NO_WAIT, AicHandle, FreeCallback, MergeCallback, MsgView
from ascend_jax.cube_group.dcache import AicLineCache, message_lines
from ascend_jax.cube_group.matmul import SHAPE_DETAIL, Matmul, _NoMatmul, check_init_asserts, descriptor
from ascend_jax.cube_group.program import AivOp, CubeGroupProgram
from ascend_jax.cube_group.reference.compute import VectorUnit
from ascend_jax.cube_group.reference.events import EventRecorder
from ascend_jax.cube_group.result import error_entry, init_assert_entry, misuse_entry, state_name
from ascend_jax.cube_group.status import CALL, ErrorCode
from ascend_jax.message import FAKE, FREE, MAX_MSG_PER_AIV, QUIT, VALID


class Slot:
    """One message slot. The class attributes are the zeroed workspace; writes set instance ones."""

    state: int = FREE  # head msgState
    aiv_id: int = 0  # head aivID
    payload: Any = None  # 0-d struct array of the group's message type, None = zeroed
    msg_id: int = -1  # which post (per-group message id) last wrote the payload
    write: int = -1  # event recording only: index in ``events`` of the action that last wrote the head


@dataclasses.dataclass(slots=True)
class Aiv:
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

    @property
    def core(self) -> str:
        return f"aiv{self.block_idx}"


@dataclasses.dataclass(slots=True)
class Aic:
    group: int
    k: int
    core: int
    n: int
    p: int  # P, the row width of the group's blocks
    base: int  # first slot of this AIC's 4 x P block (group numbering)
    builtin: str | None  # "free" / "merge" for the built-in callbacks (see builtin_requests)
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


class Protocol:
    """Every core's protocol state in one run, and the actions that change it.

    Args:
      program: the compiled kernel.
      vector: runs the AIVs' vector ops (``compute.VectorUnit``).
      events: a list to record events in (``events.EventRecorder``), or None.
      start: ``(slots, barrier arrive counters, barrier wait counters)`` of a previous launch whose
        workspace this one inherits (``zero_workspace = false``), or None.
      observer: the sanitizer's hook, or None: ``observer.aiv_act(self, aiv, op)`` before an AIV op,
        ``observer.aic_act(self, aic)`` before an AIC action (``ascend_jax.sanitizer.observer``).

    Attributes:
      slots: group -> its slots (group numbering).
      aivs, aics: the cores, in ``program.aivs`` / ``program.aics`` order.
      busy_aivs, busy_aics: the unfinished cores, in index order (see :meth:`drop_finished`).
      counters_a, counters_w: [barriers, copies] GroupBarrier arrive / wait counters.
      mm_queue: ``[(aic, descriptor)]`` matmuls requested in the current step.
      failed: AICs stopped at a protocol error.
      asserts: AIC core -> the CPU twin's stop (``npu-debug`` / ``release`` builds).
    """

    def __init__(
        self,
        program: CubeGroupProgram,
        vector: VectorUnit,
        events: list | None = None,
        start: tuple | None = None,
        observer: Any = None,
    ):
        self.p = program
        self.vector = vector
        self.observer = observer  # sanitizer hook: aiv_act / aic_act before each action (None: no cost)
        # receive-log capacity: the exact value walks every op, so it is computed only once a log
        # reaches its lower bound (two laps of the widest row) unless the program fixes it
        self.capacity = program.max_received
        self.capacity_floor = (
            2 * MAX_MSG_PER_AIV * max(g.aiv_per_aic for g in program.groups) if self.capacity is None else self.capacity
        )
        self.slots = {gi: [Slot() for _ in range(g.num_slots)] for gi, g in enumerate(program.groups)}
        if start is not None:  # a relaunch on the previous launch's workspace (zero_workspace = false)
            for gi, old in start[0].items():
                for new, prev in zip(self.slots[gi], old, strict=True):
                    new.__dict__.update(prev.__dict__)
        self.rec = EventRecorder(events, program, self.slots) if events is not None else None
        self.widths = widths = [g.aiv_per_aic for g in program.groups]  # P of every group
        heads: dict[int, dict[int, int]] = {b: {} for b, _ in program.aivs}
        for (gi, b), q in program.queue_of.items():  # msgHead of queue q: its AIC's block, row 0, column q % P
            heads[b][gi] = (q // widths[gi]) * widths[gi] * MAX_MSG_PER_AIV + q % widths[gi]
        counters = [0] * len(widths)
        self.aivs: list[Aiv] = []
        for b, ops in program.aivs:
            ids = [-1] * len(ops)
            for i, op in enumerate(ops):  # message ids: posts per group in (block_idx, op) order
                if op.kind == CALL.POST:
                    ids[i] = counters[op.group]
                    counters[op.group] += 1
            self.aivs.append(Aiv(b, ops, heads[b], ids))
        self.aics: list[Aic] = []
        for gi, k in program.aics:
            g, cb, p = program.groups[gi], program.callbacks[gi], widths[gi]
            n = g.queues_of_aic(k)
            builtin = {FreeCallback: "free", MergeCallback: "merge"}.get(type(cb))
            core = program.aic_core_index(gi, k)
            self.aics.append(Aic(gi, k, core, n, p, k * p * MAX_MSG_PER_AIV, builtin, aiv_work_state=(1 << n) - 1))
        self.busy_aivs = [a for a in self.aivs if not a.done]
        self.busy_aics = list(self.aics)
        self.some_finished = False  # a core finished in this step: drop it from the busy lists
        self.counters_a = np.zeros(
            (len(program.barriers), max((b.copies for b in program.barriers), default=1)), np.int64
        )
        self.counters_w = np.zeros_like(self.counters_a)
        if start is not None:
            self.counters_a, self.counters_w = start[1].copy(), start[2].copy()
        self.mm_queue: list[tuple[Aic, dict]] = []
        self.failed = 0
        self.asserts: dict[int, list[dict]] = {}

    def init_callbacks(self) -> None:
        """``CallBack::Init`` once per AIC, before its first message; its Matmul object is Call's."""
        program = self.p
        for a in self.aics:
            cfg = program.matmuls[a.group] if program.matmuls else None
            a.mm = _NoMatmul(program.groups[a.group].name) if cfg is None else Matmul(cfg[0], cfg[1], np)
            program.callbacks[a.group].init(a.mm, None if cfg is None else cfg[1])
            if cfg is not None:
                broken = check_init_asserts(a.mm, program.groups[a.group].name, program.build)
                if broken is not None:  # the CPU twin's stop, before any message of this AIC
                    entry = init_assert_entry(ErrorCode.MATMUL_SHAPE, f"aic{a.core}", program.groups[a.group].name,
                                              dimension=broken)  # fmt: skip
                    self.asserts[a.core] = [entry]

    def drop_finished(self) -> None:
        """Keeps ``busy_aivs`` / ``busy_aics`` to the cores that still have work (index order)."""
        if self.some_finished:
            self.busy_aivs = [a for a in self.busy_aivs if not a.done]
            self.busy_aics = [c for c in self.busy_aics if not c.done]
            self.some_finished = False

    # -- AIV -------------------------------------------------------------------------------------
    def barrier_obj(self, aiv: Aiv, bi: int) -> BarrierObject:
        """The AIV's GroupBarrier object of barrier ``bi`` (built at its first use)."""
        if bi not in aiv.barriers:
            aiv.barriers[bi] = BarrierObject(self.p.barriers[bi])
        return aiv.barriers[bi]

    def ring_slot(self, aiv: Aiv, gi: int) -> int:
        """The slot (group numbering) the AIV's next AllocMessage in group ``gi`` takes."""
        return aiv.heads[gi] + aiv.pos.get(gi, 0) * self.widths[gi]

    def aiv_ready(self, aiv: Aiv) -> bool:
        """Whether the AIV's next op is enabled."""
        if aiv.pc >= len(aiv.ops):  # in ~KfcWorkspace: the flag is never set again
            return False
        op = aiv.ops[aiv.pc]
        kind = op.kind
        if kind == CALL.WAIT:  # Wait<true> spins until the slot is FREE; Wait<false> reads once
            return not op.sync or self.slots[op.group][aiv.heads[op.group] + op.offset].state == FREE
        if kind == CALL.ALLOC:  # AllocMessage spins until the ring slot is FREE (MTE3: after the flag)
            if op.pipe == "MTE3" and not aiv.mte3_flag:
                return False
            return self.slots[op.group][self.ring_slot(aiv, op.group)].state == FREE
        if kind == CALL.ARRIVE:
            thr = self.barrier_obj(aiv, op.group).arrive_threshold()
            return thr < 0 or self.counters_w[op.group, op.index] == thr
        if kind == CALL.BARRIER_WAIT:
            return self.counters_a[op.group, op.index] >= self.barrier_obj(aiv, op.group).wait_threshold()
        if kind == CALL.SYNC_ALL:
            return self.sync_ready(aiv)
        return True  # post, fake, quit, delay, vector

    def sync_ready(self, aiv: Aiv) -> bool:
        """SyncAll returns when every AIV is at (or past) this round and, for the all-core form
        (``aiv_only`` False), every AIC left its loop (kernel_operator_block_sync_intf.h, SyncAll:
        ``isAIVOnly`` defaults to true)."""
        every_aiv = all(
            a.syncs > aiv.syncs or (a.pc < len(a.ops) and a.ops[a.pc].kind == CALL.SYNC_ALL and a.syncs == aiv.syncs)
            for a in self.aivs
            if a.ops  # an AIV without a program takes no part
        )
        return every_aiv and (aiv.ops[aiv.pc].aiv_only or all(c.aiv_work_state == 0 for c in self.aics))

    def aiv_act(self, aiv: Aiv) -> None:
        """Performs the AIV's next op (enabled); a delay ticks once."""
        op = aiv.ops[aiv.pc]
        kind = op.kind
        if self.observer is not None:  # sanitizer hook: sees the op before it acts
            self.observer.aiv_act(self, aiv, op)
        rec = self.rec
        if rec is not None:
            rec.aiv_op(aiv, op)
        if kind == CALL.DELAY:
            aiv.timer += 1
            if aiv.timer < op.cycles:
                return
            aiv.timer = 0
        elif kind == CALL.SYNC_ALL:
            aiv.syncs += 1
        elif kind == CALL.VECTOR:
            self.vector.run(aiv.core, op.vec)
        elif kind == CALL.ALLOC:
            aiv.alloc_slot[(op.group, op.alloc)] = self.ring_slot(aiv, op.group)
            aiv.pos[op.group] = (aiv.pos.get(op.group, 0) + 1) % MAX_MSG_PER_AIV
            if op.pipe == "MTE3":  # WaitFlag<MTE3_S> consumed the event
                aiv.mte3_flag = False
        elif kind == CALL.POST:  # the whole struct, head included
            if op.pipe == "MTE3":  # the DMA post ends with SetFlag<MTE3_S>
                aiv.mte3_flag = True
            slot = self.slots[op.group][aiv.alloc_slot[(op.group, op.alloc)]]
            slot.state, slot.aiv_id = op.state, op.aiv_id
            slot.payload, slot.msg_id = op.payload, aiv.msg_ids[aiv.pc]
            if rec is not None:
                slot.write = rec.last
        elif kind == CALL.FAKE:  # head state only; payload stays stale
            slot = self.slots[op.group][aiv.alloc_slot[(op.group, op.alloc)]]
            slot.state = FAKE
            if rec is not None:
                slot.write = rec.last
        elif kind == CALL.QUIT:  # SetQuit: aivID, then the state
            slot = self.slots[op.group][aiv.alloc_slot[(op.group, op.alloc)]]
            slot.aiv_id, slot.state = op.aiv_id, QUIT
            if rec is not None:
                slot.write = rec.last
        elif kind == CALL.WAIT and not op.sync:  # Wait<false> returns whether the slot is FREE
            free = self.slots[op.group][aiv.heads[op.group] + op.offset].state == FREE
            aiv.wait_results.append(free)
            if rec is not None:
                rec.wait_result(free)
        elif kind == CALL.ARRIVE:
            obj = self.barrier_obj(aiv, op.group)
            self.counters_a[op.group, : obj.geometry.copies] += 1
            obj.after_arrive()
        elif kind == CALL.BARRIER_WAIT:
            obj = self.barrier_obj(aiv, op.group)
            self.counters_w[op.group, : obj.geometry.copies] += 1
            obj.after_wait()
        aiv.pc += 1
        if aiv.pc == len(aiv.ops):
            self.some_finished = True
        if rec is not None and kind in (CALL.POST, CALL.FAKE, CALL.QUIT):
            rec.occupancy(op.group, aiv.alloc_slot[(op.group, op.alloc)])

    # -- AIC -------------------------------------------------------------------------------------
    def slot(self, aic: Aic, index: int) -> Slot | None:
        """Slot ``index`` (group numbering) of the AIC's group; None past the group's area (a
        release build's stray cursor or free: reads FREE, writes nothing)."""
        slots = self.slots[aic.group]
        return slots[index] if 0 <= index < len(slots) else None

    def place(self, aic: Aic, index: int) -> tuple[int, int]:
        """(queue, depth) of slot ``index`` of the AIC's group (the slot actually read), or (-1, -1)."""
        g = self.p.groups[aic.group]
        if not 0 <= index < g.num_slots:
            return -1, -1
        k, col, d = g.slot_queue_depth(index)
        return k * g.aiv_per_aic + col, d

    def aic_ready(self, aic: Aic) -> bool:
        """Whether the AIC's next action is enabled: a message at its cursor, or (in a call) its
        next request's wait state."""
        if aic.in_call:
            act = aic.pending[0]
            if act[0] == "matmul":
                return True
            _, slot, wait = act
            target = self.slot(aic, slot)
            return wait == NO_WAIT or (FREE if target is None else target.state) == wait
        cur = self.slot(aic, aic.base + aic.msg_pos)
        return cur is not None and cur.state != FREE

    def head_state(self, aic: Aic) -> int:
        """The state of the slot at the AIC's cursor."""
        return self.slots[aic.group][aic.base + aic.msg_pos].state

    @staticmethod
    def advance(aic: Aic) -> None:
        """One step of the AIC's cursor along its block (spec §6.3)."""
        p = aic.p
        if aic.aiv_work + 1 >= aic.n:
            aic.msg_pos = 0 if aic.msg_pos // p == MAX_MSG_PER_AIV - 1 else aic.msg_pos + (p - aic.n) + 1
            aic.aiv_work = 0
        else:
            aic.msg_pos += 1
            aic.aiv_work += 1

    def release(self, aic: Aic) -> None:
        """``release``: the cursor moves on to the next queue whose AIV has not quit."""
        self.advance(aic)
        if aic.aiv_work_state == 0:
            return
        while not (aic.aiv_work_state >> aic.aiv_work) & 1:
            self.advance(aic)

    def aic_act(self, aic: Aic) -> dict | None:
        """Performs the AIC's next action. A protocol error at dispatch stops this AIC where it is
        (the message it received is in its log, except when the log itself is full); the other
        cores run on, so the final state does not depend on the schedule. Returns the error."""
        err = self.dispatch(aic)
        if err is not None:  # the message was logged at dispatch (a full log: not at all)
            if self.rec is not None and err["code"] != ErrorCode.RECEIVE_LOG_FULL.name:
                self.rec.error(aic, {k: v for k, v in err.items() if k not in ("core", "group", "message")})
            self.fail(aic, err)
        return err

    def fail(self, aic: Aic, err: dict) -> None:
        """Stops the AIC at ``err`` (its first error only)."""
        if aic.error is None:
            aic.error = err
            self.failed += 1
            self.some_finished = True

    def dispatch(self, aic: Aic) -> dict | None:
        """The AIC's next action; an error dict instead when it is a protocol error."""
        if self.observer is not None:  # sanitizer hook: sees the action before it happens
            self.observer.aic_act(self, aic)
        rec = self.rec
        if aic.in_call:
            act = aic.pending.pop(0)
            if act[0] == "matmul":
                self.mm_queue.append((aic, act[1]))
            elif (target := self.slot(aic, act[1])) is not None:
                target.state = FREE
            if rec is not None:
                rec.aic_action(aic, act)
            if (err := self.markers(aic)) is not None:
                return err  # an assert right after this action: performed, then the AIC stops
            if not aic.pending:
                self.finish_call(aic)
            return None
        base = aic.base
        cur = self.slot(aic, base + aic.msg_pos)
        queue, depth = self.place(aic, base + aic.msg_pos)
        if len(aic.log) >= self.capacity_floor and len(aic.log) >= self.receive_capacity():
            return self.error(ErrorCode.RECEIVE_LOG_FULL, aic, queue, depth)
        if cur.state == QUIT:
            aic.log.append((queue, depth, "QUIT"))
            if rec is not None:
                rec.receive(aic, cur, queue, depth, 0)
            if cur.aiv_id < 64:
                aic.aiv_work_state &= ~(1 << cur.aiv_id)
                self.some_finished = aic.done or self.some_finished
            self.release(aic)
            return None
        skip, actions = self.call(aic, cur)
        aic.pending = self.requests(aic, actions, queue, depth)
        aic.log.append((queue, depth, state_name(cur.state)))
        if rec is not None:
            rec.receive(aic, cur, queue, depth, skip)
            aic.call_start = rec.t[0]
        aic.skip = skip
        if (err := self.markers(aic)) is not None:
            return err
        if aic.pending:
            aic.in_call = True
        else:
            self.finish_call(aic)
        return None

    def call(self, aic: Aic, cur: Slot) -> tuple[int, list[tuple]]:
        """``CallBack::Call(mm, msg, handle)`` on the message in ``cur``: ``(skip, requests)`` it
        recorded in the handle (the built-in callbacks: from their rule)."""
        if aic.builtin is not None:
            return builtin_requests(aic.builtin, cur)
        p, base = aic.p, aic.base
        dtype = self.p.msg_dtypes[aic.group]
        payload = cur.payload if cur.payload is not None else np.zeros((), dtype)
        # past the first 64 bytes Call reads through this AIC's D-cache (dcache.py); line 0 is fresh
        lines = None if message_lines(dtype) == 1 else aic.dcache.view(base + aic.msg_pos, payload)
        msg = MsgView(cur.state, cur.aiv_id, _Fields(payload) if lines is None else lines)
        handle = AicHandle(np, p, aic.n, aic.aiv_work, aic.msg_pos // p, dcache=lines)
        if self.p.matmuls and self.p.matmuls[aic.group] is not None:
            aic.mm.handle = handle
        self.p.callbacks[aic.group].call(aic.mm, msg, handle)
        return int(handle.skip), handle.actions

    def requests(self, aic: Aic, actions: list[tuple], queue: int, depth: int) -> list:
        """The call's requests as the AIC's pending actions, in program order, checked.

        An assert is a marker between the performed actions: ``("stop", error)`` where this build
        has the assert (the AIC stops once the actions before it are done), ``("note", entry)``
        where only the CPU twin has it (``asserts_violated``). The CPU twin stops at the first
        failed assert, so only that one is ever noted. FreeMessage constraints no code checks are
        recorded as ``api_misuse`` findings (the first of the call) in ``aic.misuse``."""
        p, base = aic.p, aic.base
        pending: list = []
        first_failed = False  # a failed assert met earlier in this call (the CPU twin's stop)
        misuse: list = []
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
                    pending.append(("stop", self.error(code, aic, queue, depth, quiet=True, **detail)))
                    break  # nothing after the assert runs
                if not first_failed:
                    pending.append(("note", self.error(code, aic, queue, depth, quiet=True)))
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
            aic.misuse.append(misuse_entry(self.error(code, aic, queue, depth, quiet=True, **detail)))
        return pending

    def markers(self, aic: Aic) -> dict | None:
        """Processes the assert markers at the head of ``aic.pending`` (they cost no step): a
        note is listed (the first of this AIC only), a stop is returned as the error."""
        while aic.pending and aic.pending[0][0] in ("stop", "note"):
            kind, entry = aic.pending.pop(0)
            if kind == "stop":
                aic.pending = []
                return entry
            if not self.asserts.get(aic.core):  # an Init assert (init_callbacks) came first
                self.asserts.setdefault(aic.core, []).append(entry)
        return None

    def receive_capacity(self) -> int:
        """Entries each receive log holds (:meth:`CubeGroupProgram.receive_capacity`)."""
        if self.capacity is None:
            self.capacity = self.p.receive_capacity()
        return self.capacity

    def finish_call(self, aic: Aic) -> None:
        """The callback call ended: ``SetSkipMsg``'s skip applies, then ``release``."""
        if self.rec is not None:
            self.rec.call(aic)
        aic.in_call = False
        aic.aiv_work += aic.skip  # SetSkipMsg
        aic.msg_pos += aic.skip
        self.release(aic)

    def error(self, code: ErrorCode, aic: Aic, queue: int, depth: int, quiet: bool = False, **detail) -> dict:
        """The error dict of ``code`` at the AIC's message (queue, depth); ``quiet``: no event."""
        if self.rec is not None and not quiet:
            self.rec.error(aic, {"code": code.name, "queue": queue, "depth": depth, **detail})
        return error_entry(code, f"aic{aic.core}", self.p.groups[aic.group].name, queue, depth, **detail)

    def matmul_fault(self, aic: Aic, address: int) -> None:
        """The AIC's matmul addressed GM out of range at ``address``: it stops there."""
        g = self.p.groups[aic.group]
        queue, depth = aic.k * g.aiv_per_aic + aic.aiv_work, aic.msg_pos // g.aiv_per_aic
        self.fail(aic, self.error(ErrorCode.GM_OUT_OF_RANGE, aic, queue, depth, address=self.p.gm.describe(address)))


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


def builtin_requests(kind: str, cur: Slot) -> tuple[int, list[tuple]]:
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

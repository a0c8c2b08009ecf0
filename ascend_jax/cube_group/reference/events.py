"""Trace events recorded during a reference run (only when the caller passes an ``events`` list).

:mod:`ascend_jax.trace` turns the list into a trace. One dict per core action::

    {"core": "aiv3" | "aic6" | "", "group": group index | None, "name": ..., "ts": float,
     "dur": float, "args": {...}}

``ts`` / ``dur`` are cycles under the ``timed`` schedule, steps otherwise. ``name`` is the action
(alloc, post, fake, quit, wait, delay, vector, barrier, sync_all, receive, call, free, matmul), ``blocked`` (a
timed core spinning before an action), ``error`` or ``occupancy`` (``args["level"]``: the non-FREE
slots of ``args["queue"]`` at the end of an action). A receive adds ``"from"``: the index of the
event that wrote the head it read (-1: none).
"""

from __future__ import annotations

from typing import Any

from ascend_jax.cube_group.callbacks import NO_WAIT
from ascend_jax.cube_group.program import AivOp, CubeGroupProgram
from ascend_jax.cube_group.result import state_name
from ascend_jax.cube_group.status import CALL
from ascend_jax.message import FREE, MAX_MSG_PER_AIV, QUIT


def payload_fields(payload: Any) -> dict[str, Any]:
    """A message's payload fields (not the head) as JSON values; {} for no payload."""
    if payload is None:
        return {}
    return {n: payload[n].tolist() for n in payload.dtype.names[1:]}


class EventRecorder:
    """Appends the events of one run to ``events``.

    ``slots`` is the run's slot table (group -> list of slots, ``protocol.Slot``), read for the
    occupancy samples. ``t`` is the (start, duration) of the action being performed, the default
    time of an event; ``tick`` counts the steps performed (the time axis outside ``timed``).
    """

    def __init__(self, events: list, program: CubeGroupProgram, slots: dict[int, list]):
        self.events = events
        self.p = program
        self.slots = slots
        self.t = (0.0, 1.0)
        self.tick = 0

    @property
    def last(self) -> int:
        """Index of the last event recorded (-1: none)."""
        return len(self.events) - 1

    def event(self, core: str, group: int | None, name: str, args: dict, ts=None, dur=None) -> dict:
        """Appends and returns one event of ``core`` in group index ``group`` (None: not a group's,
        e.g. a delay or a barrier) that started at ``ts`` and took ``dur`` (default: ``t``)."""
        e = {
            "core": core,
            "group": group,
            "name": name,
            "ts": float(self.t[0] if ts is None else ts),
            "dur": float(self.t[1] if dur is None else dur),
            "args": args,
        }
        self.events.append(e)
        return e

    def where(self, gi: int, rel: int) -> tuple[int, int]:
        """(queue, depth) of slot ``rel`` of group ``gi`` (group numbering)."""
        g = self.p.groups[gi]
        k, col, d = g.slot_queue_depth(rel)
        return k * g.aiv_per_aic + col, d

    def aiv_op(self, aiv: Any, op: AivOp) -> None:
        """The AIV's next op ``op``, about to be performed (a delay: one event when it ends, over
        all its steps)."""
        core, kind = f"aiv{aiv.block_idx}", op.kind
        if kind == CALL.DELAY:
            if aiv.timer + 1 >= op.cycles:
                self.event(core, None, "delay", {"cycles": op.cycles}, self.t[0] - op.cycles + 1, op.cycles)
            return
        if kind == CALL.VECTOR:
            self.event(core, None, "vector", op.vec.describe())
            return
        if kind in (CALL.ARRIVE, CALL.BARRIER_WAIT):
            args = {"op": kind.replace("barrier_", ""), "barrier": self.p.barriers[op.group].name, "index": op.index}
            self.event(core, None, "barrier", args)
            return
        if kind == CALL.SYNC_ALL:  # not a group's: every AIV (and, aiv_only False, every AIC) meets here
            self.event(core, None, kind, {"aiv_only": bool(op.aiv_only)})
            return
        gi = op.group
        if kind == CALL.ALLOC:  # the ring slot it takes
            rel = aiv.heads[gi] + aiv.pos.get(gi, 0) * self.p.groups[gi].aiv_per_aic
        elif kind == CALL.WAIT:
            rel = aiv.heads[gi] + op.offset
        else:
            rel = aiv.alloc_slot[(gi, op.alloc)]
        queue, depth = self.where(gi, rel)
        args: dict[str, Any] = {"queue": queue, "depth": depth}
        if kind == CALL.POST:
            args.update(state=state_name(op.state), aivID=op.aiv_id, msg_id=aiv.msg_ids[aiv.pc])
            args["message"] = payload_fields(op.payload)
        elif kind == CALL.QUIT:
            args.update(state="QUIT", aivID=op.aiv_id)
        elif kind == CALL.FAKE:
            args["state"] = "FAKE"
        elif kind == CALL.WAIT:
            args["sync"] = bool(op.sync)
        self.event(core, gi, kind, args)

    def wait_result(self, free: bool) -> None:
        """What the ``Wait<false>`` recorded last returned."""
        self.events[-1]["args"]["free"] = bool(free)

    def receive(self, aic: Any, cur: Any, queue: int, depth: int, skip: int) -> None:
        """The AIC received the message in slot ``cur`` at (queue, depth)."""
        args: dict[str, Any] = {
            "queue": queue,
            "depth": depth,
            "state": state_name(cur.state),
            "aivID": int(cur.aiv_id),
        }
        if cur.state != QUIT:
            args.update(msg_id=int(cur.msg_id), skip=int(skip), message=payload_fields(cur.payload))
        e = self.event(f"aic{aic.core}", aic.group, "receive", args)
        e["from"] = cur.write

    def aic_action(self, aic: Any, act: tuple) -> None:
        """One requested action of the AIC's callback, performed now: ``("matmul", descriptor)``
        or ``("free", slot, wait)``."""
        if act[0] == "matmul":
            d = act[1]
            args = {k: d[k] for k in ("m", "n", "k", "atomic", "a_addr", "b_addr", "c_addr")}
            self.event(f"aic{aic.core}", aic.group, "matmul", args)
            return
        _, slot, wait = act
        queue, depth = self.where(aic.group, slot)
        args = {"queue": queue, "depth": depth, "wait": "none" if wait == NO_WAIT else state_name(wait)}
        self.event(f"aic{aic.core}", aic.group, "free", args)
        self.occupancy(aic.group, slot)

    def call(self, aic: Any) -> None:
        """The AIC's callback call ended (it began at ``aic.call_start``)."""
        g = self.p.groups[aic.group]
        start, end = aic.call_start, self.t[0] + self.t[1]
        queue, depth = aic.k * g.aiv_per_aic + aic.aiv_work, aic.msg_pos // g.aiv_per_aic
        self.event(f"aic{aic.core}", aic.group, "call", {"queue": queue, "depth": depth}, start, end - start)

    def error(self, aic: Any, args: dict) -> None:
        """The AIC stopped at an error (``args``: its code, place and detail)."""
        self.event(f"aic{aic.core}", aic.group, "error", args, dur=0.0)

    def blocked(self, core: str, group: int | None, before: str, since: Any, stall: Any) -> None:
        """A timed core spun from ``since`` for ``stall`` cycles before its action ``before``."""
        self.event(core, group, "blocked", {"before": before}, since, stall)

    def occupancy(self, gi: int, rel: int) -> None:
        """A sample of the queue of slot ``rel``: its non-FREE slots, at the end of the current action."""
        g = self.p.groups[gi]
        queue, _ = self.where(gi, rel)
        if queue >= g.msg_queue_size:
            return
        slots = self.slots[gi]
        level = sum(slots[g.slot_index(queue, d)].state != FREE for d in range(MAX_MSG_PER_AIV))
        self.event("", gi, "occupancy", {"queue": queue, "level": level}, self.t[0] + self.t[1], 0.0)

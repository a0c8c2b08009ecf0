"""The ``timed`` schedule's costs and clocks in the reference.

Cycles are float32 pairs (:class:`ascend_jax.cube_group.clock.Cycles`) and every cost is computed
in float32 from the cost vector (:meth:`ascend_jax.timing.CostModel.vector`), as the engine does,
so the two agree exactly. An action starts at ``max(its core's clock, when it was enabled)``: a
slot's time is when its head was last written, a barrier's when its counters last moved.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ascend_jax.cube_group.callbacks import NO_WAIT
from ascend_jax.cube_group.clock import Cycles
from ascend_jax.cube_group.program import CubeGroupProgram
from ascend_jax.cube_group.result import timing_report
from ascend_jax.cube_group.status import CALL
from ascend_jax.cube_group.vector import vector_cycles
from ascend_jax.message import FAKE, FREE, MAX_MSG_PER_AIV, QUIT

F32 = np.float32


def cost_vector(program: CubeGroupProgram, cost: Any) -> np.ndarray:
    """The float32 cost vector of ``cost`` (a :class:`~ascend_jax.timing.CostModel`; None: the
    program's chip's)."""
    from ascend_jax.timing import CostModel

    return (cost or CostModel.for_chip(program.chip)).vector()


class Clocks:
    """Every core's clock and the timed run's accounting.

    Attributes (cycles):
      aiv_clock: block_idx -> when the AIV's last action ended; likewise ``aic_clock`` per AIC.
      slot_time: group -> per slot, when its head was last written.
      barrier_time: per barrier, when its counters last moved.
      alloc_stall, wait_stall: block_idx -> cycles spun in AllocMessage / in waits.
      aic_busy, aic_blocked: per AIC, cycles acting / spinning before an action.
      occupancy: (group, queue) -> cycles spent at each level 0..4 of non-FREE slots.
    """

    def __init__(self, program: CubeGroupProgram, cost: np.ndarray, aiv_blocks: list[int], n_aics: int):
        zero = Cycles()
        self.p = program
        self.cost = cost
        self.aiv_clock = {b: zero for b in aiv_blocks}
        self.aic_clock = [zero] * n_aics
        self.slot_time = {gi: [zero] * g.num_slots for gi, g in enumerate(program.groups)}
        self.barrier_time = [zero] * max(len(program.barriers), 1)
        self.alloc_stall = {b: zero for b in aiv_blocks}
        self.wait_stall = {b: zero for b in aiv_blocks}
        self.aic_busy = [zero] * n_aics
        self.aic_blocked = [zero] * n_aics
        self.t_now = zero
        self.occupancy: dict = {}

    def c(self, name: str) -> np.float32:
        """The cost ``name`` (:data:`ascend_jax.timing.C`)."""
        from ascend_jax.timing import C

        return F32(self.cost[C[name]])

    def aiv_time(self, aiv: Any, alloc_slot: int | None) -> tuple[Cycles, Cycles]:
        """(start, duration) of the AIV's next op; ``alloc_slot`` is the ring slot an alloc takes.
        A delay's duration is its cycles, exactly."""
        op = aiv.ops[aiv.pc]
        clock = self.aiv_clock[aiv.block_idx]
        enable = Cycles()
        if op.kind == CALL.ALLOC:
            enable = self.slot_time[op.group][alloc_slot]
        elif op.kind == CALL.WAIT and op.sync:
            enable = self.slot_time[op.group][aiv.heads[op.group] + op.offset]
        elif op.kind in (CALL.ARRIVE, CALL.BARRIER_WAIT):
            enable = self.barrier_time[op.group]
        elif op.kind == CALL.SYNC_ALL:  # when the last core arrives (the AIVs only: SyncAll<true>)
            enable = max([*self.aiv_clock.values(), *([] if op.aiv_only else self.aic_clock)])
        c = self.c
        dur = {
            CALL.ALLOC: c("alloc"),
            CALL.FAKE: c("fake"),
            CALL.QUIT: c("quit"),
            CALL.POST: c("post"),
            CALL.WAIT: c("wait"),
            CALL.ARRIVE: c("barrier"),
            CALL.BARRIER_WAIT: c("barrier"),
            CALL.SYNC_ALL: c("barrier"),
        }.get(op.kind, op.cycles if op.kind == CALL.DELAY else F32(0))
        if op.kind == CALL.POST and op.state in (FAKE, QUIT):  # a hand-made FAKE / QUIT costs as the engine's
            dur = c("fake") if op.state == FAKE else c("quit")
        elif op.kind == CALL.VECTOR:
            dur = vector_cycles(op.vec, self.cost)
        return max(clock, enable), Cycles.of(dur)

    def aic_time(self, i: int, aic: Any, head_state: int) -> tuple[Cycles, Cycles]:
        """(start, duration) of the next action of AIC ``i``; ``head_state`` is the state of the
        slot at its cursor (read when it is not in a call)."""
        clock = self.aic_clock[i]
        slots = self.slot_time[aic.group]
        if not aic.in_call:
            dur = self.c("poll") if head_state == QUIT else self.c("dispatch")
            return max(clock, slots[aic.base + aic.msg_pos]), Cycles.of(dur)
        act = aic.pending[0]
        if act[0] == "matmul":
            return clock, Cycles.of(self.mm_cycles(aic.group, act[1]))
        _, slot, wait = act
        enable = Cycles() if wait == NO_WAIT else slots[slot]
        return max(clock, enable), Cycles.of(self.c("free"))

    def mm_cycles(self, gi: int, d: dict) -> np.float32:
        """Cycles of one matmul of group ``gi`` (descriptor ``d``): fractal count plus GM traffic."""
        mt = self.p.matmuls[gi][0]
        k0 = F32(32 if mt.a == "int8" else 16)
        m, n, k = (F32(max(d[x], 0)) for x in ("m", "n", "k"))
        fr = F32(np.ceil(m / F32(16))) * F32(np.ceil(n / F32(16))) * F32(np.ceil(k / k0))
        sa, sb, sc = (F32(mt.dtype(x).itemsize) for x in ("a", "b", "c"))
        traffic = m * k * sa + k * n * sb + m * n * sc
        return F32(self.c("mm_overhead") + fr + traffic / self.c("ddr_rate"))

    def advance(self, tmin: Cycles, slots: dict[int, list]) -> None:
        """Moves time to ``tmin``, adding the time since the last event to each queue's level."""
        dt = max(tmin - self.t_now, Cycles())
        for gi, g in enumerate(self.p.groups):
            for q in range(g.msg_queue_size):
                level = sum(slots[gi][g.slot_index(q, d)].state != FREE for d in range(MAX_MSG_PER_AIV))
                row = self.occupancy.setdefault((gi, q), [Cycles()] * (MAX_MSG_PER_AIV + 1))
                row[level] += dt
        self.t_now = max(tmin, self.t_now)

    def report(self) -> dict:
        """The result's ``timing`` section (:func:`ascend_jax.cube_group.result.timing_report`)."""
        occ: dict = {}
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

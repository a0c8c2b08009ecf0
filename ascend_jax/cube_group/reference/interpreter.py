"""The reference interpreter: the scheduler that picks which cores act, over the protocol state.

Schedules:

* ``lockstep``: each step, every AIV whose next action is enabled performs it, then every AIC
  whose next action is enabled (evaluated after the AIVs moved) performs it. Enabledness within a
  phase is judged on the state at the start of the phase. The JAX engine's steps are the same, so
  step counts and ``max_steps`` outcomes agree.
* ``random``: as lockstep, but each enabled core acts with probability 1/2 (seeded); delays still
  tick. Results (received logs, slot states, witness) must not change; step counts do.
* ``timed``: each step, the enabled actions that start earliest (cycles, ``timed.Clocks``) act.

A step in which no core is enabled and no delay ticks while some core is unfinished is a deadlock.

Matmul actions performed in a step are computed after every AIC of the step has acted: all loads
first (GM as it was), then the writes in AIC order, as in the engine's compute phase
(``compute.run_matmuls``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ascend_jax.cube_group.clock import Cycles
from ascend_jax.cube_group.program import CubeGroupProgram
from ascend_jax.cube_group.reference.compute import Gm, VectorUnit, run_matmuls
from ascend_jax.cube_group.reference.outcome import build_result
from ascend_jax.cube_group.reference.protocol import Aiv, Protocol
from ascend_jax.cube_group.reference.timed import Clocks, cost_vector
from ascend_jax.cube_group.result import CubeGroupResult
from ascend_jax.cube_group.status import CALL, Status
from ascend_jax.enums import SCHEDULES, one_of


class ReferenceInterpreter:
    """Runs a :class:`CubeGroupProgram` one action at a time.

    Args:
      program: the compiled kernel.
      schedule: ``"lockstep"``, ``"random"`` or ``"timed"``.
      seed: seed of the random schedule.
      max_steps: overrides ``program.max_steps``.
      numerics: ``"hardware"`` (GM bytes, the cube unit's rounding) or ``"exact"`` (a float64
        shadow of every tensor; see :mod:`ascend_jax.cube_group.reference.compute`).
      cost: the ``timed`` schedule's :class:`~ascend_jax.timing.CostModel` (None: the chip's).
      events: a list to append one dict per core action to
        (:mod:`ascend_jax.cube_group.reference.events`), or None (the default: nothing is recorded
        and nothing costs). :mod:`ascend_jax.trace` reads it.
      start: ``(slots, arrive counters, wait counters)`` of a previous launch whose workspace this
        launch inherits (``zero_workspace = false``; :func:`run_reference`).
      observer: the sanitizer's hook (``ascend_jax.sanitizer.observer.Observer``), told of every
        core action before it happens; None (the default) costs nothing.
      arithmetic: False for the sanitizer's record-only run: matmuls and vector ops are checked but
        compute nothing (:mod:`~ascend_jax.cube_group.reference.compute`); True (the default)
        for every other run.

    Attributes:
      proto: the protocol state (:class:`~ascend_jax.cube_group.reference.protocol.Protocol`).
      gm: GM (:class:`~ascend_jax.cube_group.reference.compute.Gm`); ``vector``: every AIV's UB.
      clocks: the ``timed`` schedule's clocks (:class:`~ascend_jax.cube_group.reference.timed.Clocks`).
    """

    def __init__(
        self,
        program: CubeGroupProgram,
        *,
        schedule: str = "lockstep",
        seed: int = 0,
        max_steps: int | None = None,
        numerics: str = "hardware",
        cost: Any = None,
        events: list | None = None,
        start: tuple | None = None,
        observer: Any = None,
        arithmetic: bool = True,
    ):
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule = {schedule!r}: must be {one_of(SCHEDULES)}")
        if numerics not in ("hardware", "exact"):
            raise ValueError(f"numerics = {numerics!r}: must be 'hardware' or 'exact'")
        self.p = program
        self.schedule = schedule
        self.seed = seed
        self.numerics = numerics
        self.events = events
        self.cost = cost_vector(program, cost) if schedule == "timed" else None
        self.gm = Gm(program, numerics, arithmetic)
        self.vector = VectorUnit(self.gm)
        self.proto = Protocol(program, self.vector, events, start, observer)
        self.rec = self.proto.rec
        self.rng = np.random.default_rng(seed) if schedule == "random" else None
        self.max_steps = program.max_steps if max_steps is None else max_steps
        self.clocks = (
            Clocks(program, self.cost, [a.block_idx for a in self.proto.aivs], len(self.proto.aics))
            if schedule == "timed"
            else None
        )
        self.proto.init_callbacks()
        self._step_room, self._more_steps = 1, 0  # steps step() may take at once; it took 1 + _more_steps

    # the run's state, as callers read it
    @property
    def image(self) -> np.ndarray:
        """[G] uint8 GM bytes (``hardware`` numerics)."""
        return self.gm.image

    @property
    def shadow(self) -> dict[str, np.ndarray]:
        """Tensor name -> float64 value (``exact`` numerics)."""
        return self.gm.shadow

    @property
    def written(self) -> set[str]:
        """Names of the tensors a matmul or a vector store wrote."""
        return self.gm.written

    # -- the scheduler -------------------------------------------------------------------------
    def _chosen(self, ready: list) -> list:
        """The enabled cores that act this step (``random``: each with probability 1/2)."""
        if self.schedule == "lockstep":
            return ready
        return [c for c in ready if self.rng.random() < 0.5]

    def step(self) -> bool:
        """One step; returns whether any core was enabled (progress was possible)."""
        if self.schedule == "timed":
            return self._timed_step()
        proto, rec = self.proto, self.rec
        if rec is not None:
            rec.t = (float(rec.tick), 1.0)
            rec.tick += 1
        aiv_ready, aic_ready = proto.aiv_ready, proto.aic_ready
        ready_v = [a for a in proto.busy_aivs if aiv_ready(a)]
        idle = self._idle_ticks(ready_v)
        if idle:  # `idle` steps in which only delays tick, taken at once
            for a in ready_v:
                a.timer += idle
            if rec is not None:
                rec.tick += idle - 1
            self._more_steps = idle - 1
            return True
        if self.schedule == "lockstep":  # every enabled AIV acts (a delay's tick touches only its timer)
            acting = ready_v
        else:
            ticking = [a for a in ready_v if a.ops[a.pc].kind == CALL.DELAY]  # time passes for every delay
            acting = ticking + self._chosen([a for a in ready_v if a.ops[a.pc].kind != CALL.DELAY])
        for a in acting:
            proto.aiv_act(a)
        ready_c = [c for c in proto.busy_aics if aic_ready(c)]
        for c in ready_c if self.schedule == "lockstep" else self._chosen(ready_c):
            proto.aic_act(c)
        self._end_step()
        return bool(ready_v or ready_c)

    def _end_step(self) -> None:
        """The step's matmuls (every load, then every write), then the busy lists."""
        proto = self.proto
        if proto.mm_queue:
            queue, proto.mm_queue = proto.mm_queue, []
            for aic, address in run_matmuls(self.gm, self.p.matmuls, queue):
                proto.matmul_fault(aic, address)
        proto.drop_finished()

    def _idle_ticks(self, ready_v: list[Aiv]) -> int:
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
        if left < 2 or any(self.proto.aic_ready(c) for c in self.proto.busy_aics):
            return 0
        return left

    def _aiv_time(self, a: Aiv) -> tuple[Cycles, Cycles]:
        op = a.ops[a.pc]
        return self.clocks.aiv_time(a, self.proto.ring_slot(a, op.group) if op.kind == CALL.ALLOC else None)

    def _aic_time(self, i: int, c) -> tuple[Cycles, Cycles]:
        return self.clocks.aic_time(i, c, None if c.in_call else self.proto.head_state(c))

    def _timed_step(self) -> bool:
        """``timed``: the enabled actions that start first (at ``tmin``) act, AIVs then AICs."""
        proto, clocks, rec = self.proto, self.clocks, self.rec
        ready_v = [a for a in proto.aivs if not a.done and proto.aiv_ready(a)]
        ready_c = [(i, c) for i, c in enumerate(proto.aics) if not c.done and proto.aic_ready(c)]
        if not (ready_v or ready_c):
            return False
        times_v = {a.block_idx: self._aiv_time(a) for a in ready_v}
        times_c = {i: self._aic_time(i, c) for i, c in ready_c}
        tmin = min([t for t, _ in times_v.values()] + [t for t, _ in times_c.values()])
        clocks.advance(tmin, proto.slots)
        for a in ready_v:
            start, dur = times_v[a.block_idx]
            if start != tmin:
                continue
            op = a.ops[a.pc]
            stall = start - clocks.aiv_clock[a.block_idx]
            if op.kind == CALL.ALLOC:
                clocks.alloc_stall[a.block_idx] += stall
            elif op.kind in (CALL.WAIT, CALL.ARRIVE, CALL.BARRIER_WAIT, CALL.SYNC_ALL):
                clocks.wait_stall[a.block_idx] += stall
            end = start + dur
            if rec is not None:
                rec.t = (float(start), float(dur))
                if stall > 0:
                    rec.blocked(a.core, None, op.kind, clocks.aiv_clock[a.block_idx], stall)
                if op.kind == CALL.DELAY:
                    rec.event(a.core, None, "delay", {"cycles": op.cycles})
            if op.kind in (CALL.POST, CALL.FAKE, CALL.QUIT):
                clocks.slot_time[op.group][a.alloc_slot[(op.group, op.alloc)]] = end
            if op.kind in (CALL.ARRIVE, CALL.BARRIER_WAIT):
                clocks.barrier_time[op.group] = max(clocks.barrier_time[op.group], end)
            clocks.aiv_clock[a.block_idx] = end
            if op.kind == CALL.DELAY:  # one action of `cycles` cycles
                a.pc += 1
                proto.some_finished = a.done or proto.some_finished
            else:
                proto.aiv_act(a)
        for i, c in enumerate(proto.aics):
            if c.done or not proto.aic_ready(c):
                continue
            start, dur = self._aic_time(i, c)
            if start != tmin:
                continue
            freeing = c.in_call and c.pending[0][0] == "free"
            slot = c.pending[0][1] if freeing else None
            end = start + dur
            if rec is not None:
                rec.t = (float(start), float(dur))
                if start > clocks.aic_clock[i]:
                    what = "free" if freeing else "matmul" if c.in_call else "receive"
                    rec.blocked(f"aic{c.core}", c.group, what, clocks.aic_clock[i], start - clocks.aic_clock[i])
            if proto.aic_act(c) is not None:
                continue
            clocks.aic_busy[i] += dur
            clocks.aic_blocked[i] += start - clocks.aic_clock[i]
            clocks.aic_clock[i] = end
            if freeing:
                clocks.slot_time[c.group][slot] = end
        self._end_step()
        return True

    def run(self) -> CubeGroupResult:
        """Steps until every core finished (OK), none can move (DEADLOCK) or ``max_steps``."""
        proto = self.proto
        status, steps = Status.RUNNING, 0
        while status == Status.RUNNING:
            self._step_room, self._more_steps = self.max_steps - steps, 0
            progressed = self.step()
            steps += 1 + self._more_steps
            if not proto.busy_aivs and not proto.busy_aics:
                status = Status.OK
            elif not progressed:
                status = Status.DEADLOCK
            elif steps >= self.max_steps:
                status = Status.MAX_STEPS
            if status != Status.RUNNING and proto.failed:
                status = Status.ERROR  # an AIC stopped at an error; the rest ran until nothing could move
        return build_result(
            proto,
            status,
            steps,
            self.seed,
            gm=self.gm.image.copy() if self.numerics == "hardware" else None,
            timing=self.clocks.report() if self.clocks is not None else None,
        )


def run_reference(
    program: CubeGroupProgram,
    *,
    schedule: str = "lockstep",
    seed: int = 0,
    max_steps: int | None = None,
    cost: Any = None,
) -> CubeGroupResult:
    """Runs ``program`` in the reference interpreter (hardware numerics; ``cost`` for ``timed``)."""
    if program.zero_workspace:
        return ReferenceInterpreter(program, schedule=schedule, seed=seed, max_steps=max_steps, cost=cost).run()
    first = ReferenceInterpreter(program, schedule=schedule, seed=seed, max_steps=max_steps, cost=cost)
    first.run()  # the launch whose workspace the reported one inherits
    start = (first.proto.slots, first.proto.counters_a, first.proto.counters_w)
    return ReferenceInterpreter(
        program, schedule=schedule, seed=seed, max_steps=max_steps, cost=cost, start=start
    ).run()

"""The result of a run, engine-independent, and its JSON form (DESIGN.md result contract)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ascend_jax.cube_group.barrier import barrier_image
from ascend_jax.cube_group.layout import workspace_image
from ascend_jax.cube_group.program import CubeGroupProgram
from ascend_jax.cube_group.status import AivCall, Status
from ascend_jax.message import MAX_MSG_PER_AIV, CubeMsgState

_STATE_NAMES = {int(s): s.name for s in CubeMsgState}


def state_name(value: int) -> str:
    """Name of a head state; values outside the enum print as numbers."""
    value = int(value)
    return _STATE_NAMES.get(value) or str(value)


# -- witness and error entries: one builder per kind, for both engines ---------------------------
# The reference (cube_group/reference/outcome.py, protocol.py) builds its entries here; the JAX
# engine's readout (cube_group/engine/readout.py) builds them with the same functions. Key order is
# part of the JSON contract.


def slot_witness(core: str, group: str, queue: int, depth: int, until: str) -> dict[str, Any]:
    """A deadlock witness entry: ``core`` spins on slot (queue, depth) of ``group`` until ``until``
    (``FREE``, ``NOT_FREE``, ``MTE3_FLAG`` or a head state's name)."""
    return {"core": core, "group": group, "queue": int(queue), "depth": int(depth), "until": until}


def barrier_witness(core: str, barrier: str, index: int, until: str) -> dict[str, Any]:
    """A deadlock witness entry: ``core`` spins on copy ``index`` of a GroupBarrier's counters
    until ``until`` (``W==n`` before an Arrive, ``A>=n`` in a Wait)."""
    return {"core": core, "barrier": barrier, "index": int(index), "until": until}


def sync_witness(core: str) -> dict[str, Any]:
    """A deadlock witness entry: ``core`` waits in SyncAll."""
    return {"core": core, "until": "SYNC_ALL"}


def destructor_witness(core: str) -> dict[str, Any]:
    """A deadlock witness entry: the AIV ``core`` finished its ops and waits in ``~KfcWorkspace``
    for the MTE3->S flag that no post gives back."""
    return {"core": core, "until": "MTE3_FLAG", "call": "~KfcWorkspace"}


def error_entry(code: Any, core: str, group: str, queue: int, depth: int, **detail: Any) -> dict[str, Any]:
    """The error dict of ``code`` (an :class:`~ascend_jax.cube_group.status.ErrorCode`) at message
    (queue, depth) of ``group`` on the AIC ``core``; ``detail`` (ints, or strings) follows."""
    return {
        "code": code.name,
        "core": core,
        "group": group,
        "queue": int(queue),
        "depth": int(depth),
        "message": code.describe(),
        **{k: v if isinstance(v, str) else int(v) for k, v in detail.items()},
    }


def init_assert_entry(code: Any, core: str, group: str, **detail: Any) -> dict[str, Any]:
    """The ``asserts_violated`` entry of an assert broken in ``CallBack::Init`` on the AIC ``core``
    (before any message, so no queue or depth: ``call`` says where)."""
    return {
        "code": code.name,
        "core": core,
        "group": group,
        "call": "Init",
        "message": code.describe(),
        **{k: v if isinstance(v, str) else int(v) for k, v in detail.items()},
    }


def misuse_entry(err: dict[str, Any]) -> dict[str, Any]:
    """An ``api_misuse`` finding from an :func:`error_entry` dict: the kind first, its keys, and the
    constraint (the code's description) last in place of the message."""
    out = {"kind": "api_misuse", **err}
    out["constraint"] = out.pop("message")
    return out


@dataclasses.dataclass
class CubeGroupResult:
    """What one simulated kernel launch produced.

    Attributes:
      program: the program that ran.
      status: OK, DEADLOCK, MAX_STEPS or ERROR.
      steps: engine steps executed.
      slot_state: [total_slots] head state of every slot at the end (engine slot numbering).
      slot_aiv_id: [total_slots] head aivID of every slot.
      slot_msg: [total_slots] which post (per-group message id) last wrote the payload, -1 none.
      received: absolute AIC index -> every message its loop received, in order, as
        ``(queue, depth, state)``.
      blocked: on deadlock, one entry per blocked core (see DESIGN.md).
      error: on ERROR, ``{"code", "core", "message", ...}``.
      barrier_arrive, barrier_wait: [barriers, N] final counter copies.
      wait_results: block_idx -> what each executed ``Wait<false>`` returned (True: slot FREE), in
        program order. These depend on timing, so they are not part of :meth:`outcome`.
      seed: the lane's seed (drives the random schedule and random atomic order); replaying it
        alone (``simulate(program, schedule, seeds=[seed])``) reproduces the lane exactly.
      gm: final GM bytes (``[G] uint8`` from ``GM_BASE``), or None when the program has no tensors.
      numerics: the numerics report (see :func:`ascend_jax.numerics.numerics_report`) once computed.
      asserts_violated: ``npu-debug`` and ``release`` builds: per AIC, the assert the CPU twin
        (``cpu``) would have stopped at, if this build's AIC reached it without stopping: at most one
        per AIC (the twin stops there), ``{"code", "core", "group", "queue", "depth", "message"}``,
        AICs in index order.
      api_misuse: findings of kind ``api_misuse``: calls that break a documented constraint no
        device code checks (``status.API_MISUSE``: FreeMessage's target and wait state); the run
        went on as on the device. ``{"kind", "code", "core", "group", "queue", "depth",
        "constraint", detail}``, the first of each callback call, AICs in index order, each in
        dispatch order.
    """

    program: CubeGroupProgram
    status: Status
    steps: int
    slot_state: np.ndarray
    slot_aiv_id: np.ndarray
    slot_msg: np.ndarray
    received: dict[int, list[tuple[int, int, str]]]
    blocked: list[dict[str, Any]]
    error: dict[str, Any] | None
    barrier_arrive: np.ndarray
    barrier_wait: np.ndarray
    wait_results: dict[int, list[bool]] = dataclasses.field(default_factory=dict)
    seed: int | None = None
    gm: np.ndarray | None = None
    numerics: dict[str, Any] | None = None
    timing: dict[str, Any] | None = None
    asserts_violated: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    api_misuse: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def tensor(self, name: str) -> np.ndarray:
        """The final value of GM tensor ``name``."""
        return self.program.gm.read(name, self.gm)

    def tensors(self) -> dict[str, np.ndarray]:
        return {name: self.tensor(name) for name in self.program.gm.tensors}

    def slot_states(self, group: int) -> list[list[str]]:
        """``slot_states[depth][queue]`` names of group ``group``."""
        g = self.program.groups[group]
        return [
            [state_name(self.slot_state[g.slot_base + g.slot_index(q, d)]) for q in range(g.msg_queue_size)]
            for d in range(MAX_MSG_PER_AIV)
        ]

    def outcome(self) -> tuple:
        """Everything that must not depend on the engine or the schedule (for comparisons)."""
        return (
            self.status,
            tuple(sorted((k, tuple(map(tuple, v))) for k, v in self.received.items())),
            tuple(self.slot_state.tolist()),
            tuple(tuple(sorted(b.items())) for b in self.blocked),
            None if self.error is None else tuple(sorted(self.error.items())),
            tuple(tuple(sorted(a.items())) for a in self.asserts_violated),
            tuple(tuple(sorted(a.items())) for a in self.api_misuse),
        )

    def to_json(self) -> dict[str, Any]:
        """The DESIGN.md result object."""
        groups = {}
        for gi, g in enumerate(self.program.groups):
            aics = range(g.first_aic, g.first_aic + g.aic_num)
            groups[g.name] = {
                "slot_states": self.slot_states(gi),
                "received": {str(a): [list(e) for e in self.received.get(a, [])] for a in aics},
            }
        out: dict[str, Any] = {
            "scenario": self.program.name,
            "status": self.status.label,
            "steps": int(self.steps),
            "groups": groups,
            "blocked": self.blocked,
        }
        if self.error is not None:
            out["error"] = self.error
        if self.program.build != "cpu":
            out["asserts_violated"] = self.asserts_violated
        if self.api_misuse:
            out["api_misuse"] = self.api_misuse
        if self.status in (Status.DEADLOCK, Status.ERROR) and self.seed is not None:
            out["seed"] = self.seed
        if self.numerics is not None:
            out["numerics"] = self.numerics
        if self.timing is not None:
            from ascend_jax.utilisation import compute_utilisation

            out["timing"] = self.timing
            out["utilisation"] = compute_utilisation(self.timing).to_json()
        return out

    def workspace_image(self) -> np.ndarray:
        """Final KfcWorkspace bytes (uint8), byte 0 at the first group's base address."""
        payloads = []
        for gi, g in enumerate(self.program.groups):
            table = message_table(self.program, gi)
            ids = self.slot_msg[g.slot_base : g.slot_base + g.num_slots]
            payloads.append(np.where(ids >= 0, table[np.maximum(ids, 0)], np.zeros((), table.dtype)))
        return workspace_image(list(self.program.groups), self.slot_state, self.slot_aiv_id, payloads)

    def barrier_image(self) -> np.ndarray:
        """Final GroupBarrier workspace bytes (uint8), byte 0 at the first barrier's base address."""
        return barrier_image(list(self.program.barriers), self.barrier_arrive, self.barrier_wait)


def timing_report(
    program: CubeGroupProgram,
    aic_busy: list[float],
    aic_blocked: list[float],
    aic_clock: list[float],
    aiv: dict[int, tuple[float, float, float]],
    occupancy: dict[int, dict[int, list[float]]],
    freq_mhz: float,
) -> dict[str, Any]:
    """The ``timing`` section of a timed run (cycles of the AI core clock).

    ``kernel_cycles``: when the last core finished; per AIC busy (its actions), blocked (spinning
    on a slot before an action) and idle (the rest of the kernel time) cycles; per AIV cycles
    stalled in AllocMessage and in waits (Wait and barriers); per queue the cycles spent with 0..4
    non-FREE slots and the time-averaged occupancy.
    """
    kernel = max([*aic_clock, *(c for _, _, c in aiv.values()), 0.0])
    cores = [program.aic_core_index(gi, k) for gi, k in program.aics]
    aic = {
        str(core): {"busy_cycles": b, "blocked_cycles": bl, "idle_cycles": max(kernel - b - bl, 0.0)}
        for core, b, bl in zip(cores, aic_busy, aic_blocked, strict=True)
    }
    out_aiv = {str(b): {"alloc_stall_cycles": a, "wait_stall_cycles": w} for b, (a, w, _) in sorted(aiv.items())}
    occ = {}
    for gi, g in enumerate(program.groups):
        rows = occupancy.get(gi, {})
        occ[g.name] = {}
        for q in range(g.msg_queue_size):
            levels = rows.get(q, [0.0] * 5)
            total = sum(levels)
            occ[g.name][str(q)] = {
                "cycles_at_level": levels,
                "mean": sum(i * x for i, x in enumerate(levels)) / total if total else 0.0,
            }
    return {
        "kernel_cycles": kernel,
        "kernel_us": kernel / freq_mhz,
        "freq_mhz": freq_mhz,
        "aic": aic,
        "aiv": out_aiv,
        "occupancy": occ,
    }


def message_table(program: CubeGroupProgram, group: int) -> np.ndarray:
    """[messages] struct array of every post into ``group``, in (block_idx, op) order.

    The index into this table is the message id that slots record (``slot_msg``).
    """
    msgs = [op.payload for _, ops in program.aivs for op in ops if op.kind == AivCall.POST and op.group == group]
    dtype = program.msg_dtypes[group]
    return np.array(msgs, dtype=dtype) if msgs else np.zeros(0, dtype)


def slot_location(program: CubeGroupProgram, slot: int) -> tuple[int, int, int]:
    """(group, queue, depth) of a global slot index; queue may be >= Q for unused columns."""
    for gi, g in enumerate(program.groups):
        if g.slot_base <= slot < g.slot_base + g.num_slots:
            k, c, d = g.slot_queue_depth(slot - g.slot_base)
            return gi, k * g.aiv_per_aic + c, d
    raise IndexError(slot)

"""The result of a reference run: final slots, logs, the deadlock witness, the error.

The witness (``CubeGroupResult.blocked``) lists every unfinished core and the predicate it spins
on; the entries are built by :mod:`ascend_jax.cube_group.result` (``slot_witness`` and its
siblings), the same builders the engine's readout can use.
"""

from __future__ import annotations

import numpy as np

from ascend_jax.cube_group.callbacks import NO_WAIT
from ascend_jax.cube_group.reference.protocol import Protocol
from ascend_jax.cube_group.result import (
    CubeGroupResult,
    barrier_witness,
    destructor_witness,
    slot_witness,
    state_name,
    sync_witness,
)
from ascend_jax.cube_group.status import CALL, Status


def blocked_cores(proto: Protocol) -> list[dict]:
    """The deadlock witness: one entry per unfinished core, AICs first, each in index order."""
    program = proto.p
    out = []
    for c in proto.aics:
        if c.done:
            continue
        g = program.groups[c.group]
        if c.in_call:
            _, slot, wait = c.pending[0]
            until = "FREE" if wait == NO_WAIT else state_name(wait)
            out.append(slot_witness(f"aic{c.core}", g.name, *proto.place(c, slot), until))
        else:
            out.append(slot_witness(f"aic{c.core}", g.name, *proto.place(c, c.base + c.msg_pos), "NOT_FREE"))
    for a in proto.aivs:
        if a.done:
            continue
        if a.in_destructor:
            out.append(destructor_witness(a.core))
            continue
        op = a.ops[a.pc]
        if op.kind in (CALL.ALLOC, CALL.WAIT):
            g = program.groups[op.group]
            rel = proto.ring_slot(a, op.group) if op.kind == CALL.ALLOC else a.heads[op.group] + op.offset
            k, col, d = g.slot_queue_depth(rel)
            until = "MTE3_FLAG" if op.kind == CALL.ALLOC and op.pipe == "MTE3" and not a.mte3_flag else "FREE"
            out.append(slot_witness(a.core, g.name, k * g.aiv_per_aic + col, d, until))
        elif op.kind == CALL.ARRIVE:
            obj = proto.barrier_obj(a, op.group)
            out.append(barrier_witness(a.core, obj.geometry.name, op.index, f"W=={obj.arrive_threshold()}"))
        elif op.kind == CALL.BARRIER_WAIT:
            obj = proto.barrier_obj(a, op.group)
            out.append(barrier_witness(a.core, obj.geometry.name, op.index, f"A>={obj.wait_threshold()}"))
        elif op.kind == CALL.SYNC_ALL:
            out.append(sync_witness(a.core))
    return out


def slot_tables(proto: Protocol) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[total_slots] final head state, head aivID and message id of every slot (engine numbering)."""
    groups = proto.p.groups
    total = sum(g.num_slots for g in groups)
    st, aid, mid = (np.zeros(total, np.int64) for _ in range(3))
    for gi, g in enumerate(groups):
        part = slice(g.slot_base, g.slot_base + g.num_slots)
        slots = proto.slots[gi]
        st[part], aid[part], mid[part] = (
            [s.state for s in slots],
            [s.aiv_id for s in slots],
            [s.msg_id for s in slots],
        )
    return st, aid, mid


def build_result(
    proto: Protocol,
    status: Status,
    steps: int,
    seed: int,
    gm: np.ndarray | None,
    timing: dict | None,
) -> CubeGroupResult:
    """The :class:`CubeGroupResult` of a run that ended with ``status`` after ``steps`` steps;
    ``gm`` the final GM bytes (None under ``exact`` numerics), ``timing`` the timed report."""
    st, aid, mid = slot_tables(proto)
    return CubeGroupResult(
        program=proto.p,
        status=status,
        steps=steps,
        slot_state=st,
        slot_aiv_id=aid,
        slot_msg=mid,
        received={c.core: list(c.log) for c in proto.aics},
        blocked=blocked_cores(proto) if status == Status.DEADLOCK else [],
        error=next(c.error for c in proto.aics if c.error is not None) if status == Status.ERROR else None,
        asserts_violated=[e for c in proto.aics for e in proto.asserts.get(c.core, [])],
        api_misuse=[e for c in proto.aics for e in c.misuse],
        barrier_arrive=proto.counters_a.copy(),
        barrier_wait=proto.counters_w.copy(),
        wait_results={a.block_idx: list(a.wait_results) for a in proto.aivs if a.wait_results},
        seed=seed,
        gm=gm,
        timing=timing,
    )

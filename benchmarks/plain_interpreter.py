"""The baseline a user would write instead of the JAX engine: a plain sequential interpreter.

Pure Python, no JAX and no numpy in the loop, one action at a time, written for speed. It runs a
compiled :class:`ascend_jax.CubeGroupProgram` in the lockstep schedule with the same step semantics
as the project's engines (``ascend_jax/cube_group/reference/``, ``ReferenceInterpreter.step``),
so step counts, statuses and received logs agree:

* each step, every AIV whose next action is enabled performs it (enabledness judged on the state
  at the start of the AIV phase), then every AIC whose next action is enabled performs it;
* an AIC either receives the message under its cursor (spec §6.1) or performs the next
  ``FreeMessage`` of the callback it is in (one per step, each waiting for its wait state);
* the cursor moves by ``release`` (spec §6.3);
* a run ends ``ok`` when every core is done, ``deadlock`` after a step in which no core was
  enabled, ``max_steps`` after ``max_steps`` steps; ``error`` instead of any of these when an AIC
  stopped at a protocol error (that AIC stops, the others run on, as in the reference).

Everything the program fixes is resolved once before the loop: each AIV op becomes a tuple of
small ints with its global slot index (the ring position of an ``AllocMessage`` is its ordinal
mod 4) and, for barrier ops, the counter threshold (a core's barrier object evolves only with its
own ops, spec §8). Supported callbacks: the built-in ``free`` and ``merge``; ``matmul`` and user
callbacks are refused (this baseline models the protocol only).

    from plain_interpreter import run_plain
    r = run_plain(program)     # PlainResult(status="ok", steps=30, received={6: [(0, 0, "VALID"), ...]}, ...)
"""

from __future__ import annotations

import dataclasses

from ascend_jax import MAX_MSG_PER_AIV, CubeGroupProgram, FreeCallback, MergeCallback

FREE, VALID, QUIT, FAKE = 0, 1, 2, 3
NO_WAIT = -1
STATE_NAMES = {VALID: "VALID", QUIT: "QUIT", FAKE: "FAKE"}

# AIV op codes; operands in the tuple after the code
ALLOC = 0  # (ALLOC, slot)
POST = 1  # (POST, slot, state, aiv_id, skip_cnt)
FAKE_OP = 2  # (FAKE_OP, slot)
QUIT_OP = 3  # (QUIT_OP, slot, aiv_id)
WAIT = 4  # (WAIT, slot): Wait<true>
POLL = 5  # (POLL, slot): Wait<false>
DELAY = 6  # (DELAY, cycles)
ARRIVE = 7  # (ARRIVE, barrier, threshold on W or -1)
BWAIT = 8  # (BWAIT, barrier, threshold on A)

# callbacks
CB_FREE, CB_MERGE = 0, 1


@dataclasses.dataclass
class PlainResult:
    """Outcome of one plain run.

    Attributes:
      status: ``"ok"``, ``"deadlock"``, ``"max_steps"`` or ``"error"``.
      steps: lockstep steps executed.
      received: absolute AIC index -> its received log, ``(queue, depth, state name)`` in order.
      error: the protocol error code name when ``status == "error"``, else None.
      wait_results: block_idx -> what each ``Wait<false>`` returned, for AIVs that ran one.
    """

    status: str
    steps: int
    received: dict[int, list[tuple[int, int, str]]]
    error: str | None = None
    wait_results: dict[int, list[bool]] = dataclasses.field(default_factory=dict)


def _aiv_tables(program: CubeGroupProgram) -> tuple[list[int], list[list[tuple]], int]:
    """Block indices and op tuples of every AIV (global slot indices, static barrier thresholds),
    and the receive-log capacity of every AIC (``CubeGroupProgram.receive_capacity``)."""
    geo = [(g.slot_base, g.aiv_per_aic) for g in program.groups]
    has_skip = ["skipCnt" in d.names for d in program.msg_dtypes]
    queue_of = program.queue_of
    writes: dict[tuple[int, int], int] = {}  # (group, AIC of the group) -> posts + fakes + quits
    blocks, tables = [], []
    for b, ops in program.aivs:
        allocs: dict[tuple[int, int], int] = {}  # (group, alloc ordinal) -> global slot
        counter: dict[int, list] = {}  # barrier -> [counter, has_arrive] of this core's object
        table = []
        for op in ops:
            kind = op.kind
            if kind == "alloc" or kind == "wait":
                slot_base, p = geo[op.group]
                q = queue_of[(op.group, b)]
                head = slot_base + (q // p) * p * MAX_MSG_PER_AIV + q % p
                if kind == "alloc":
                    allocs[(op.group, op.alloc)] = s = head + (op.alloc % MAX_MSG_PER_AIV) * p
                    table.append((ALLOC, s))
                else:
                    table.append((WAIT if op.sync else POLL, head + op.offset))
            elif kind == "post" or kind == "fake" or kind == "quit":
                s = allocs[(op.group, op.alloc)]
                key = (op.group, queue_of[(op.group, b)] // geo[op.group][1])
                writes[key] = writes.get(key, 0) + 1
                if kind == "post":
                    skip = int(op.payload["skipCnt"]) if has_skip[op.group] else 0
                    table.append((POST, s, op.state, op.aiv_id, skip))
                elif kind == "fake":
                    table.append((FAKE_OP, s))
                else:
                    table.append((QUIT_OP, s, op.aiv_id))
            elif kind == "delay":
                table.append((DELAY, op.cycles))
            elif kind == "arrive" or kind == "barrier_wait":
                barrier = program.barriers[op.group]
                st = counter.setdefault(op.group, [1, False])
                if kind == "arrive":
                    table.append((ARRIVE, op.group, (st[0] - 1) * barrier.wait_size if st[0] > 1 else -1))
                    st[0], st[1] = st[0] + 1, True
                else:
                    table.append((BWAIT, op.group, (st[0] - 1 if st[1] else st[0]) * barrier.arrive_size))
                    st[0], st[1] = st[0] + (0 if st[1] else 1), False
            else:
                raise ValueError(f"aiv[{b}]: op kind {kind!r} is not supported by the plain interpreter")
        blocks.append(b)
        tables.append(table)
    capacity = program.max_received
    if capacity is None:
        capacity = max(writes.values(), default=0) + 2 * MAX_MSG_PER_AIV * max(p for _, p in geo)
    return blocks, tables, capacity


def run_plain(program: CubeGroupProgram, max_steps: int | None = None) -> PlainResult:
    """Runs ``program`` in the lockstep schedule; see the module docstring.

    Args:
      program: a compiled kernel whose groups use the ``free`` or ``merge`` callback.
      max_steps: overrides ``program.max_steps``.
    Returns:
      the :class:`PlainResult`.
    """
    limit = program.max_steps if max_steps is None else max_steps
    n_slots = sum(g.num_slots for g in program.groups)
    state = [FREE] * n_slots  # head msgState of every slot (global numbering)
    aiv_id = [0] * n_slots  # head aivID
    skip_of = [0] * n_slots  # payload skipCnt (stale after a FAKE, as on the device)
    arrived = [0] * max(len(program.barriers), 1)  # every copy of a barrier's counter moves together
    waited = [0] * max(len(program.barriers), 1)

    blocks, tables, capacity = _aiv_tables(program)
    pc = [0] * len(tables)
    timer = [0] * len(tables)
    polls: dict[int, list[bool]] = {}
    live_v = [v for v, t in enumerate(tables) if t]

    # AIC state, one list entry per AIC: static geometry then the cursor
    cores, base, width, used, first_q, cb, end = [], [], [], [], [], [], []
    for gi, k in program.aics:
        g = program.groups[gi]
        callback = program.callbacks[gi]
        if isinstance(callback, MergeCallback):
            cb.append(CB_MERGE)
        elif isinstance(callback, FreeCallback):
            cb.append(CB_FREE)
        else:
            raise ValueError(f"group {g.name!r}: callback {callback!r} is not supported (free or merge only)")
        cores.append(program.aic_core_index(gi, k))
        base.append(g.slot_base + k * g.aiv_per_aic * MAX_MSG_PER_AIV)
        width.append(g.aiv_per_aic)
        used.append(g.queues_of_aic(k))
        first_q.append(k * g.aiv_per_aic)
        end.append(g.slot_base + g.num_slots)  # a free past the group's slots reads FREE, writes nothing
    n_aic = len(cores)
    msg_pos = [0] * n_aic
    aiv_work = [0] * n_aic
    work_state = [(1 << n) - 1 for n in used]
    frees: list[list[tuple[int, int]] | None] = [None] * n_aic  # the call's remaining frees, or None
    skip = [0] * n_aic
    logs: list[list[tuple[int, int, str]]] = [[] for _ in range(n_aic)]
    live_c = list(range(n_aic))

    def release(c: int) -> None:
        """Spec §6.3: advance one column, then past quit columns."""
        p, n = width[c], used[c]
        pos, work, ws = msg_pos[c], aiv_work[c], work_state[c]
        while True:
            if work + 1 >= n:
                pos = 0 if pos // p == MAX_MSG_PER_AIV - 1 else pos + (p - n) + 1
                work = 0
            else:
                pos += 1
                work += 1
            if ws == 0 or (ws >> work) & 1:
                break
        msg_pos[c], aiv_work[c] = pos, work

    status, steps, failed = "", 0, {}  # failed: AIC -> the error that stopped it
    while not status:
        steps += 1
        # AIV phase: which AIVs are enabled, judged before any of them acts
        ready = []
        for v in live_v:
            op = tables[v][pc[v]]
            code = op[0]
            if code in (ALLOC, WAIT):
                if state[op[1]] == FREE:
                    ready.append((v, op))
            elif code == ARRIVE:
                if op[2] < 0 or waited[op[1]] == op[2]:
                    ready.append((v, op))
            elif code == BWAIT:
                if arrived[op[1]] >= op[2]:
                    ready.append((v, op))
            else:
                ready.append((v, op))
        progressed = bool(ready)
        finished = False
        for v, op in ready:
            code = op[0]
            if code == POST:
                s = op[1]
                state[s], aiv_id[s], skip_of[s] = op[2], op[3], op[4]
            elif code == FAKE_OP:
                state[op[1]] = FAKE
            elif code == QUIT_OP:
                aiv_id[op[1]] = op[2]
                state[op[1]] = QUIT
            elif code == DELAY:
                timer[v] += 1
                if timer[v] < op[1]:
                    continue
                timer[v] = 0
            elif code == POLL:
                polls.setdefault(blocks[v], []).append(state[op[1]] == FREE)
            elif code == ARRIVE:
                arrived[op[1]] += 1
            elif code == BWAIT:
                waited[op[1]] += 1
            pc[v] += 1
            if pc[v] == len(tables[v]):
                finished = True
        if finished:
            live_v = [v for v in live_v if pc[v] < len(tables[v])]

        # AIC phase: AICs touch only their own blocks, so each acts as soon as it is found enabled
        done_c = False
        for c in live_c:
            todo = frees[c]
            if todo is not None:  # inside Call: the next FreeMessage(msg, waitState)
                s, wait = todo[0]
                inside = s < end[c]
                if wait != NO_WAIT and (state[s] if inside else FREE) != wait:
                    continue
                progressed = True
                if inside:
                    state[s] = FREE
                del todo[0]
                if not todo:
                    frees[c] = None
                    if skip[c] and aiv_work[c] + skip[c] >= used[c]:  # SetSkipMsg's debug assert
                        failed[c], done_c = "SKIP_CROSSES_ROW", True
                        continue
                    if skip[c]:  # SetSkipMsg
                        aiv_work[c] += skip[c]
                        msg_pos[c] += skip[c]
                    release(c)
                continue
            s = base[c] + msg_pos[c]
            st = state[s]
            if st == FREE:
                continue
            progressed = True
            log = logs[c]
            queue, depth = first_q[c] + aiv_work[c], msg_pos[c] // width[c]
            if len(log) >= capacity:
                failed[c], done_c = "RECEIVE_LOG_FULL", True
                continue
            if st == QUIT:
                log.append((queue, depth, "QUIT"))
                if aiv_id[s] < 64:
                    work_state[c] &= ~(1 << aiv_id[s])
                release(c)
                if work_state[c] == 0:
                    done_c = True
                continue
            k = skip_of[s] if cb[c] == CB_MERGE and st == VALID else 0
            log.append((queue, depth, STATE_NAMES.get(st) or str(st)))
            if k:  # merge leader: wait VALID on itself, then FAKE on the k followers
                frees[c] = [(s, VALID)] + [(s + i, FAKE) for i in range(1, k + 1)]
            else:
                frees[c] = [(s, NO_WAIT)]
            skip[c] = k
        if done_c:
            live_c = [c for c in live_c if work_state[c] and c not in failed]

        if not live_v and not live_c:
            status = "ok"
        elif not progressed:
            status = "deadlock"
        elif steps >= limit:
            status = "max_steps"
        if status and failed:
            status = "error"
    error = failed[min(failed)] if status == "error" else None  # the lowest-index AIC's error
    return PlainResult(status, steps, {cores[c]: logs[c] for c in range(n_aic)}, error, polls)

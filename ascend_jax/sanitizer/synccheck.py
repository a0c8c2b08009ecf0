"""synccheck: synchronisation that cannot pair up.

Read from the program itself (each check is a property of the ops, whatever the schedule):

* ``mte3_flag_unpaired``: an ``AllocMessage<MTE3>`` took the KfcWorkspace's MTE3->S flag and its
  slot was filled by a fake or a quit, which do not set it again: the next MTE3 alloc, or
  ``~KfcWorkspace`` at the end of the AIV, waits for it forever (F13).
* ``barrier_unbalanced``: a GroupBarrier whose arrive indices and wait indices are not all used
  the same number of rounds: some Arrive or Wait never pairs (a round short of arrivals hangs its
  waiters; a surplus makes which arrival a wait sees depend on the schedule).
* ``alloc_never_posted``: an alloc that no post, fake or quit fills (the builder refuses these
  already; kept for programs built another way).
* ``queue_never_quit``: a bound queue into which its AIV never sends a QUIT: its AIC never leaves
  its loop (F1).
* ``sync_all_before_quit``: the all-core SyncAll before the AIV's last QUIT (F14).
* ``wait_other_queue``: a ``Wait`` on a slot of another queue: which message it orders against
  depends on the schedule.

Taken from the run (the engines' own analysis, the same under every schedule):

* ``deadlock``: the run's deadlock witness (which core waits on what);
* ``api_misuse``: the run's ``api_misuse`` entries (codes ``FREE_OUT_OF_BLOCK``,
  ``FREE_UNUSED_COLUMN``, ``BAD_WAIT_STATE``, named first in the message): FreeMessage calls that
  break a documented constraint the device does not check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ascend_jax.cube_group.status import CALL, Status
from ascend_jax.message import QUIT
from ascend_jax.sanitizer.events import Site
from ascend_jax.sanitizer.findings import Finding, OpRef, describe_site

SourceOf = Callable[[int, int], str]


def _site(b: int, i: int, op: Any, source_of: SourceOf) -> Site:
    return Site(f"aiv{b}", i, str(op.kind), source_of(b, i))


def _sync(site: Site) -> OpRef:
    return OpRef(site, "sync")


def _is_quit(op: Any) -> bool:
    return op.kind == CALL.QUIT or (op.kind == CALL.POST and op.state == QUIT)


def static_synccheck(program: Any, source_of: SourceOf) -> list[Finding]:
    """The checks read from the program (module docstring)."""
    out: list[Finding] = []
    for b, ops in program.aivs:
        out += _mte3(b, ops, source_of)
        out += _never_posted(b, ops, source_of)
        out += _sync_all(program, b, ops, source_of)
        out += _foreign_waits(program, b, ops, source_of)
    out += _never_quit(program, source_of)
    out += _barriers(program, source_of)
    return out


def _mte3(b: int, ops: tuple, source_of: SourceOf) -> list[Finding]:
    out = []
    flag, taken = True, None  # taken: (alloc index, its fill) that left the flag unset
    fills = {(op.group, op.alloc): (i, op) for i, op in enumerate(ops) if op.kind in (CALL.POST, CALL.FAKE, CALL.QUIT)}
    waiters = [(i, op) for i, op in enumerate(ops) if op.kind == CALL.ALLOC and op.pipe == "MTE3"]
    waiters.append((len(ops), None))  # ~KfcWorkspace
    for i, op in waiters:
        if not flag and taken is not None:
            (ai, alloc), (fi, fill) = taken
            waiter = f"the MTE3 alloc at op {i}" if op is not None else "~KfcWorkspace at the end of the kernel"
            wsite = _site(b, i, op, source_of) if op is not None else Site(f"aiv{b}", i, "~KfcWorkspace")
            out.append(
                Finding(
                    "synccheck",
                    "mte3_flag_unpaired",
                    (_sync(_site(b, ai, alloc, source_of)), _sync(_site(b, fi, fill, source_of)), _sync(wsite)),
                    f"a PostMessage<MTE3> into the slot of aiv{b} op {ai} (SetFlag<MTE3_S>)",
                    f"{describe_site(_site(b, ai, alloc, source_of))} took the KfcWorkspace's MTE3->S flag and "
                    f"op {fi} filled its slot with a {fill.kind}, which does not set it again, so {waiter} waits "
                    "for the flag forever.",
                    "allocate fakes and quits in SCALAR mode (only PostMessage<MTE3> sets the flag again).",
                )
            )
            return out  # the AIV never gets past this wait
        if op is None:
            break
        flag = False
        fill = fills.get((op.group, op.alloc))
        if fill is not None and fill[1].kind == CALL.POST:
            flag = True  # PostMessage<MTE3> ends with SetFlag<MTE3_S>
        elif fill is not None:
            taken = ((i, op), fill)
    return out


def _never_posted(b: int, ops: tuple, source_of: SourceOf) -> list[Finding]:
    filled = {(op.group, op.alloc) for op in ops if op.kind in (CALL.POST, CALL.FAKE, CALL.QUIT)}
    out = []
    for i, op in enumerate(ops):
        if op.kind == CALL.ALLOC and (op.group, op.alloc) not in filled:
            site = _site(b, i, op, source_of)
            out.append(
                Finding(
                    "synccheck",
                    "alloc_never_posted",
                    (_sync(site),),
                    "a post, fake or quit into the slot",
                    f"{describe_site(site)} allocates a slot that no post fills: the AIC blocks on that FREE slot.",
                    "post, fake or quit every allocated slot.",
                )  # fmt: skip
            )
    return out


def _sync_all(program: Any, b: int, ops: tuple, source_of: SourceOf) -> list[Finding]:
    last_quit = max((i for i, op in enumerate(ops) if _is_quit(op)), default=-1)
    for i, op in enumerate(ops):
        if op.kind == CALL.SYNC_ALL and not op.aiv_only and i < last_quit:
            site = _site(b, i, op, source_of)
            return [
                Finding(
                    "synccheck",
                    "sync_all_before_quit",
                    (_sync(site), _sync(_site(b, last_quit, ops[last_quit], source_of))),
                    f"aiv{b}'s QUITs before the all-core SyncAll",
                    f"{describe_site(site)} is the all-core SyncAll (aiv_only = false), which waits for every AIC to "
                    f"leave its service loop, but aiv{b} sends its QUIT only at op {last_quit}: the AIC never leaves.",
                    "send every QUIT before the all-core SyncAll, or use the AIV-only form (the default).",
                )  # fmt: skip
            ]
    return []


def _foreign_waits(program: Any, b: int, ops: tuple, source_of: SourceOf) -> list[Finding]:
    out = []
    for i, op in enumerate(ops):
        if op.kind == CALL.WAIT and op.sync and op.offset % program.groups[op.group].aiv_per_aic:
            site = _site(b, i, op, source_of)
            out.append(
                Finding(
                    "synccheck",
                    "wait_other_queue",
                    (_sync(site),),
                    "a wait on this AIV's own message",
                    f"{describe_site(site)} waits on offset {op.offset}, a slot of another queue: the message it "
                    "orders against is whichever that queue holds when the wait runs, which depends on the schedule.",
                    "wait on your own messages (offset d * P) and synchronise AIVs with a GroupBarrier.",
                )  # fmt: skip
            )
    return out


def _never_quit(program: Any, source_of: SourceOf) -> list[Finding]:
    out = []
    ops_of = dict(program.aivs)
    quits = {(b, op.group) for b, ops in program.aivs for op in ops if _is_quit(op)}
    for (gi, b), q in sorted(program.queue_of.items()):
        ops = ops_of.get(b, ())
        if (b, gi) in quits:
            continue
        g = program.groups[gi]
        site = Site(f"aiv{b}", len(ops), "end of program", source_of(b, len(ops)) if ops else "")
        out.append(
            Finding(
                "synccheck",
                "queue_never_quit",
                (_sync(site),),
                f"a QUIT from aiv{b} into group {g.name!r}",
                f"aiv{b} is bound to queue {q} of group {g.name!r} but never sends a QUIT there: its AIC "
                f"(aic{g.first_aic + g.aic_of_queue(q)}) never leaves its service loop.",
                f"end aiv{b}'s work in {g.name!r} with quit.",
            )  # fmt: skip
        )
    return out


def _barriers(program: Any, source_of: SourceOf) -> list[Finding]:
    out = []
    for bar in program.barriers:
        arrive = [0] * bar.arrive_size
        wait = [0] * bar.wait_size
        first: dict[int, Site] = {}
        for b, ops in program.aivs:
            for i, op in enumerate(ops):
                if op.kind in (CALL.ARRIVE, CALL.BARRIER_WAIT) and op.group == bar.index:
                    (arrive if op.kind == CALL.ARRIVE else wait)[op.index] += 1
                    first.setdefault(b, _site(b, i, op, source_of))
        counts = set(arrive) | set(wait)
        if len(counts) <= 1:
            continue
        out.append(
            Finding(
                "synccheck",
                "barrier_unbalanced",
                tuple(_sync(s) for _, s in sorted(first.items())),
                f"the same number of rounds at every arrive index (0..{bar.arrive_size - 1}) and wait index "
                f"(0..{bar.wait_size - 1})",
                f"GroupBarrier {bar.name!r}: Arrive calls per index {arrive}, Wait calls per index {wait}; every "
                "index must be used once per round, so some Arrive or Wait never pairs.",
                "give the barrier arrive_size arrivers and wait_size waiters, each calling once per round.",
            )
        )
    return out


def run_synccheck(program: Any, result: Any, pcs: dict[int, int], source_of: SourceOf) -> list[Finding]:
    """Findings from the run's own analysis: the deadlock witness and ``api_misuse``."""
    out = []
    if result.status == Status.DEADLOCK and result.blocked:
        ops, parts = [], []
        for e in result.blocked:
            core = e["core"]
            if core.startswith("aiv"):
                b = int(core[3:])
                i = pcs.get(b, -1)
                ops_b = dict(program.aivs).get(b, ())
                name = str(ops_b[i].kind) if 0 <= i < len(ops_b) else str(e.get("call", "end"))
                ops.append(_sync(Site(core, i, name, source_of(b, i))))
            else:
                ops.append(_sync(Site(core, len(result.received.get(int(core[3:]), [])), "receive loop")))
            where = ", ".join(f"{k} {v}" for k, v in e.items() if k not in ("core", "until"))
            parts.append(f"{core} waits for {e['until']}" + (f" ({where})" if where else ""))
        out.append(
            Finding(
                "synccheck",
                "deadlock",
                tuple(ops),
                "a post, free or arrival that never comes",
                "The run deadlocked: " + "; ".join(parts) + ". GM accesses are analysed up to where the cores stopped.",
                "see the pitfalls page for the usual causes (a queue that stops posting, a skip over a quit, an "
                "unpaired MTE3 flag, the all-core SyncAll before the quits).",
            )  # fmt: skip
        )
    for e in result.api_misuse:
        core = e["core"]
        log = result.received.get(int(core[3:]), [])
        idx = next((i for i, r in enumerate(log) if r[0] == e.get("queue") and r[1] == e.get("depth")), -1)
        detail = ", ".join(f"{k} {v}" for k, v in e.items() if k not in ("kind", "code", "core", "constraint"))
        out.append(
            Finding(
                "synccheck",
                "api_misuse",
                (_sync(Site(core, idx, "FreeMessage")),),
                "a FreeMessage that keeps the documented constraint",
                f"{e['code']}: {core}'s callback for the message it received as number {idx} ({detail}): "
                f"{e['constraint']}.",
                "free only slots of the AIC's own block, with wait state VALID or FAKE (or none).",
            )  # fmt: skip
        )
    return out

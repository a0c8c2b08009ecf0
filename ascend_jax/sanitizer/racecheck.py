"""racecheck: GM accesses of different cores that overlap, at least one a write, with no
happens-before between them.

Every pair is examined (not only the last access of each byte, as a one-pass detector would), so
the set of racing pairs depends only on the accesses and the happens-before relation, both of
which are properties of the program (:mod:`ascend_jax.sanitizer.events`). Two atomics of one kind
(two atomic adds) commute and are not a race; an atomic and a plain read or write are.

Pairs are reported once per pair of op sites: the instances of one pair of source lines (a loop
of a Python model, several AIVs running the same code) are one finding, named by its first
instance (cores in index order, then op indices) and counting the others.
"""

from __future__ import annotations

import numpy as np

from ascend_jax.sanitizer.events import ACCESS_KINDS, Access, EventLog, Site, element_range, overlap
from ascend_jax.sanitizer.findings import Finding, OpRef, _core_key, describe_site

_CHUNK = 1024  # later accesses compared against all earlier ones per block (memory ~ CHUNK x n)
_VERB = {"read": "reads", "write": "writes", "atomic_add": "atomically adds into", "atomic_max": "atomically maxes into",
         "atomic_min": "atomically mins into"}  # fmt: skip


def racing_pairs(log: EventLog) -> list[tuple[Access, Access, tuple[int, int]]]:
    """Every racing pair ``(a, b, (lo, hi))``: ``a`` logged before ``b``, ``[lo, hi)`` the bytes
    spanning their overlap."""
    by_tensor: dict[str, list[Access]] = {}
    for a in log.accesses:
        if a.tensor is not None:
            by_tensor.setdefault(a.tensor, []).append(a)
    out = []
    for accs in by_tensor.values():
        n = len(accs)
        if n < 2:
            continue
        core = np.array([a.core for a in accs])
        epoch = np.array([a.epoch for a in accs])
        lo = np.array([a.lo for a in accs])
        hi = np.array([a.hi for a in accs])
        kind = np.array([ACCESS_KINDS.index(a.kind) for a in accs])
        if (kind == 0).all() or len(set(core.tolist())) < 2:
            continue
        vc = np.stack([a.vc for a in accs])
        write = kind != 0
        atomic = kind >= 2
        for j0 in range(1, n, _CHUNK):
            j = np.arange(j0, min(n, j0 + _CHUNK))
            known = vc[j][:, core]  # [J, n]: what access j knows of access i's core
            cand = (
                (np.arange(n)[None, :] < j[:, None])
                & (core[None, :] != core[j, None])
                & (lo[None, :] < hi[j, None])
                & (lo[j, None] < hi[None, :])
                & (write[None, :] | write[j, None])
                & ~(atomic[None, :] & (kind[None, :] == kind[j, None]))
                & (epoch[None, :] > known)  # not ordered: i does not happen before j
            )
            for jj, ii in zip(*np.nonzero(cand), strict=True):
                a, b = accs[int(ii)], accs[int(j[jj])]
                span = overlap(a, b)
                if span is not None:
                    out.append((a, b, span))
    return out


def _signature(site: Site) -> tuple:
    """What makes two instances 'the same race': the op and its source line; without a source
    line, the op itself."""
    if site.source:
        return (site.core.rstrip("0123456789"), site.op, site.source, site.part, site.origin is None)
    return (site.core, site.op_index, site.op, site.part)


def _canon(a: Access, b: Access) -> tuple[Access, Access]:
    ka = _core_key(a.site.core) + (a.site.op_index, a.site.part)
    kb = _core_key(b.site.core) + (b.site.op_index, b.site.part)
    return (a, b) if ka <= kb else (b, a)


def missing_sync(x: Site, y: Site, x_writes: bool = True, y_writes: bool = True) -> tuple[str, str]:
    """(the synchronisation that would order ``x`` and ``y``, the fix in words). A writer whose
    partner only reads is taken to be the producer (it must go first)."""
    aiv_x, aiv_y = x.origin is None, y.origin is None
    if aiv_x and aiv_y:
        if x_writes != y_writes:  # producer -> consumer
            p, c = (x, y) if x_writes else (y, x)
            return (
                f"a GroupBarrier (or SyncAll) from {p.core} op {p.op_index} to {c.core} op {c.op_index}",
                f"{p.core} arrives at a GroupBarrier after op {p.op_index} and {c.core} waits at it before op "
                f"{c.op_index} (or both call SyncAll between them).",
            )
        return (
            f"no synchronisation between {x.core} op {x.op_index} and {y.core} op {y.op_index}",
            f"a GroupBarrier between them (the core that must go first arrives after its op, the other waits "
            f"before its own) or a SyncAll between {x.core} op {x.op_index} and {y.core} op {y.op_index}.",
        )
    if aiv_x != aiv_y:
        v, c, v_writes, c_writes = (x, y, x_writes, y_writes) if aiv_x else (y, x, y_writes, x_writes)
        poster, post = c.origin
        if poster == v.core and v.op_index > post:
            return (
                f"a Wait<true> by {v.core} on the message it posted at op {post}, before its op {v.op_index}",
                f"wait on the message before the {v.op} ({v.core}: wait(group, offset of the post at op {post}) "
                f"before op {v.op_index}).",
            )
        if poster == v.core:
            return (
                f"an order between {v.core} op {v.op_index} and the AIC's work for its message of op {post}",
                f"move op {v.op_index} before the post at op {post}, or wait on that message before it.",
            )
        if v_writes and not c_writes:  # v produces what the AIC reads for poster's message
            return (
                f"a GroupBarrier from {v.core} op {v.op_index} to {poster}'s post at op {post}",
                f"{v.core} arrives at a GroupBarrier after op {v.op_index} and {poster} waits at it before the "
                f"post at op {post}, so the message is sent only once {v.core}'s data is in GM.",
            )
        if c_writes and not v_writes:  # the AIC produces, for poster's message, what v reads
            return (
                f"an order from the AIC's work for {poster}'s message of op {post} to {v.core} op {v.op_index}",
                f"{poster} waits on that message (Wait<true>), then arrives at a GroupBarrier at which {v.core} "
                f"waits before op {v.op_index}.",
            )
        return (
            f"an order between {v.core} op {v.op_index} and {poster}'s post at op {post}",
            f"a GroupBarrier between {v.core} and {poster}: the core whose access must come first arrives "
            f"after it ({v.core} after op {v.op_index}, or {poster} after waiting on its message), the other "
            f"waits before its own ({poster} before the post at op {post}, or {v.core} before op {v.op_index}).",
        )
    return (
        f"an order between the messages posted by {x.origin[0]} op {x.origin[1]} and {y.origin[0]} op {y.origin[1]}",
        "write with atomics of one kind (isAtomic), or let the second message be posted only after the first "
        "is done: its AIV waits on the first message (Wait<true>), through a GroupBarrier when another AIV posted it.",
    )


def op_ref(a: Access, log: EventLog) -> OpRef:
    """The op of an access, with the elements of its whole footprint."""
    if a.tensor is None:
        return OpRef(a.site, a.kind)
    return OpRef(a.site, a.kind, a.tensor, tuple(element_range(log.tensors[a.tensor], a.lo, a.hi)))


def racecheck(log: EventLog) -> list[Finding]:
    """The race findings of ``log`` (module docstring)."""
    groups: dict[tuple, list[tuple[Access, Access, tuple[int, int]]]] = {}
    for a, b, span in racing_pairs(log):
        x, y = _canon(a, b)
        key = (x.tensor, _signature(x.site), x.kind, _signature(y.site), y.kind)
        groups.setdefault(key, []).append((x, y, span))
    out = []
    for items in groups.values():
        items.sort(key=lambda it: (_core_key(it[0].site.core), it[0].site.op_index, _core_key(it[1].site.core),
                                   it[1].site.op_index, it[2]))  # fmt: skip
        x, y, (lo, hi) = items[0]
        t = log.tensors[x.tensor]
        first, last = element_range(t, lo, hi)
        missing, fix = missing_sync(x.site, y.site, x.kind != "read", y.kind != "read")
        more = ""
        if len(items) > 1:
            pairs = sorted(
                {(i.site.core, j.site.core) for i, j, _ in items}, key=lambda p: _core_key(p[0]) + _core_key(p[1])
            )
            shown = ", ".join(f"{p}/{q}" for p, q in pairs[:6]) + (" ..." if len(pairs) > 6 else "")
            more = f" The same pair of ops races {len(items)} times in all (cores {shown})."
        message = (
            f"{describe_site(x.site)} {_VERB[x.kind]} {x.tensor} and {describe_site(y.site)} "
            f"{_VERB[y.kind]} it, overlapping in elements {first}..{last} ({t.cell(first)}..{t.cell(last)}), "
            f"and nothing orders them, so the result depends on which runs first.{more}"
        )
        out.append(Finding("racecheck", "race", (op_ref(x, log), op_ref(y, log)), missing, message,
                           fix))  # fmt: skip
    return out

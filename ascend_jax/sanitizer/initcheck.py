"""initcheck: reads of memory that nothing defined first.

* GM: a read (or an atomic, which reads the old value) of bytes of a tensor marked uninitialised
  that no write happening before it covers. Every tensor of a program has an ``init`` (``zeros``
  by default, which stands for the host zeroing it before the launch), so only tensors the caller
  marks (``sanitize(uninitialised=...)``, ``--uninit``: scratch workspaces whose device contents
  are garbage) are checked. "Before" is happens-before, not the order of the run: a write that
  came first only by luck of the schedule does not count (racecheck reports that pair too).
* UB: a vector op that reads a region of a UB buffer that no earlier op of the same AIV wrote
  (UB is private to its AIV, so program order decides).
"""

from __future__ import annotations

import numpy as np

from ascend_jax.sanitizer.events import Access, EventLog, happens_before
from ascend_jax.sanitizer.findings import Finding, OpRef, describe_site
from ascend_jax.sanitizer.racecheck import _signature, op_ref


def _mark(mask: np.ndarray, base: int, a: Access) -> None:
    for s, e in a.runs():
        s, e = max(s, base), min(e, base + mask.size)
        if s < e:
            mask[s - base : e - base] = True


def _uncovered(mask: np.ndarray, base: int, r: Access) -> tuple[int, int] | None:
    """(first, last) uncovered byte of ``r``'s footprint, or None."""
    lo_b, hi_b = None, None
    for s, e in r.runs():
        gap = np.nonzero(~mask[s - base : e - base])[0]
        if gap.size:
            lo_b = s + int(gap[0]) if lo_b is None else lo_b
            hi_b = s + int(gap[-1])
    return None if lo_b is None else (lo_b, hi_b)


def gm_initcheck(log: EventLog) -> list[Finding]:
    """Reads of uninitialised tensors not covered by a happens-before-earlier write."""
    out: dict[tuple, Finding] = {}
    for name, t in log.tensors.items():
        if t.initialised:
            continue
        accs = [a for a in log.accesses if a.tensor == name]
        writes = [a for a in accs if a.kind != "read"]
        for r in accs:
            if r.kind == "write":
                continue
            mask = np.zeros(r.hi - r.lo, bool)
            for w in writes:
                if w is not r and w.lo < r.hi and r.lo < w.hi and happens_before(w, r):
                    _mark(mask, r.lo, w)
            gap = _uncovered(mask, r.lo, r)
            if gap is None:
                continue
            key = (name, _signature(r.site), r.kind)
            if key in out:
                continue
            first, last = (gap[0] - t.addr) // t.itemsize, (gap[1] - t.addr) // t.itemsize
            verb = "reads" if r.kind == "read" else "atomically updates (reading the old value of)"
            message = (
                f"{describe_site(r.site)} {verb} {name} elements {first}..{last} ({t.cell(first)}..{t.cell(last)}), "
                f"which no init and no write that happens before it defines ({name} is marked uninitialised)."
            )
            out[key] = Finding(
                "initcheck",
                "uninitialised_gm_read",
                (op_ref(r, log),),
                f"a write of {name} elements {first}..{last} that happens before {r.site.core} op {r.site.op_index}",
                message,
                "write those elements first and order that write before the read (a wait on its message, or a "
                "barrier), or give the tensor an init.",
            )
    return list(out.values())


def ub_initcheck(log: EventLog) -> list[Finding]:
    """Vector ops reading UB regions their AIV never wrote."""
    written: dict[tuple[str, str], np.ndarray] = {}
    out: dict[tuple, Finding] = {}
    for u in log.ub:
        key = (u.site.core, u.buffer)
        mask = written.get(key)
        if mask is None:
            mask = written[key] = np.zeros(u.shape, bool)
        if u.write:
            mask[: u.rows, : u.cols] = True
            continue
        hole = ~mask[: u.rows, : u.cols]
        if not hole.any():
            continue
        fkey = (_signature(u.site), u.buffer, u.site.core if not u.site.source else "")
        if fkey in out:
            continue
        rows, cols = np.nonzero(hole)
        first = int(rows[0]) * u.shape[1] + int(cols[0])
        last = int(rows[-1]) * u.shape[1] + int(cols[-1])
        message = (
            f"{describe_site(u.site)} reads UB buffer {u.buffer!r} rows 0..{u.rows - 1}, cols 0..{u.cols - 1}, "
            f"but no earlier op of {u.site.core} wrote [{int(rows[0])}, {int(cols[0])}]..[{int(rows[-1])}, "
            f"{int(cols[-1])}] of it (UB contents before the first write are undefined on a device)."
        )
        out[fkey] = Finding(
            "initcheck",
            "uninitialised_ub_read",
            (OpRef(u.site, "read", f"ub:{u.buffer}", (first, last)),),
            f"an op of {u.site.core} writing {u.buffer!r} before op {u.site.op_index}",
            message,
            f"load or compute into {u.buffer!r} before reading it (or shrink the op's region).",
        )
    return list(out.values())


def initcheck(log: EventLog) -> list[Finding]:
    return gm_initcheck(log) + ub_initcheck(log)

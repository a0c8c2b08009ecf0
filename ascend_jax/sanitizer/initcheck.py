"""initcheck: reads of memory that nothing defined first.

* GM: a read (or an atomic, which reads the old value) of bytes of a tensor without ``init``
  that no write happening before it covers. The simulator zero-fills such a tensor (runs stay
  deterministic), but a device's memory holds whatever was there: a kernel that relies on zeros
  needs the host to zero the tensor (a memset before the launch), which the scenario or model
  states as ``init = "zeros"``. ``sanitize(uninitialised=...)`` (``--uninit``) also marks tensors
  that do have an ``init``, to ask whether the kernel needs it. "Before" is happens-before, not
  the order of the run: a write that came first only by luck of the schedule does not count.
  When racecheck runs too, a read whose undefined bytes racing writes would define is left to
  racecheck's finding of the pair (one finding per bug: the missing order).
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


def gm_initcheck(log: EventLog, races_reported: bool = False) -> list[Finding]:
    """Reads of uninitialised tensors not covered by a happens-before-earlier write.

    With ``races_reported`` (racecheck runs too), a read whose every undefined byte some write
    races with is left to racecheck: the missing order is the bug, and one finding names it."""
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
            racing = []
            for w in writes:
                if w is not r and w.lo < r.hi and r.lo < w.hi:
                    if happens_before(w, r):
                        _mark(mask, r.lo, w)
                    elif races_reported and not happens_before(r, w) and w.kind != r.kind:
                        racing.append(w)
            gap = _uncovered(mask, r.lo, r)
            if gap is None:
                continue
            if racing:
                for w in racing:
                    _mark(mask, r.lo, w)
                if _uncovered(mask, r.lo, r) is None:
                    continue
            key = (name, _signature(r.site), r.kind)
            if key in out:
                continue
            first, last = (gap[0] - t.addr) // t.itemsize, (gap[1] - t.addr) // t.itemsize
            verb = "reads" if r.kind == "read" else "atomically updates (reading the old value of)"
            why = (
                f"{name} is marked uninitialised, so its init does not count" if t.marked
                else f"{name} has no init: the simulator zero-fills it, a device's memory holds whatever was there"
            )  # fmt: skip
            fix = (
                f"the kernel relies on {name}'s init: keep it (the host sets {name} before the launch)." if t.marked
                else "write those elements first and order that write before the read (a wait on its message, or a "
                f'barrier), or, if the host zeroes {name} before the launch, say so: init = "zeros".'
            )  # fmt: skip
            message = (
                f"{describe_site(r.site)} {verb} {name} elements {first}..{last} ({t.cell(first)}..{t.cell(last)}), "
                f"which no init and no write that happens before it defines ({why})."
            )
            out[key] = Finding(
                "initcheck",
                "uninitialised_gm_read",
                (op_ref(r, log),),
                f"a write of {name} elements {first}..{last} that happens before {r.site.core} op {r.site.op_index}",
                message,
                fix,
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


def initcheck(log: EventLog, races_reported: bool = False) -> list[Finding]:
    return gm_initcheck(log, races_reported) + ub_initcheck(log)

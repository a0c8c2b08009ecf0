"""memcheck: accesses outside the memory they mean.

* ``out_of_range``: a matmul tile outside every GM tensor (the engines stop that AIC with
  ``GM_OUT_OF_RANGE`` and touch nothing; vector copies are checked when the op is built);
* ``straddle``: a tile that starts in one tensor and runs into another (or past its end): the
  engines refuse it too, and name only its address; this says which tensors it spans;
* ``overlapping_tensors``: two GM tensors, or a tensor and a KfcWorkspace or GroupBarrier
  workspace, that share bytes (a tensor written through one name changes the other).
"""

from __future__ import annotations

from typing import Any

from ascend_jax.sanitizer.events import EventLog, Site
from ascend_jax.sanitizer.findings import Finding, OpRef, describe_site


def regions(program: Any) -> list[list[tuple[str, int, int]]]:
    """The named byte ranges of the program, per address space: the GM tensors; the groups'
    message areas and the GroupBarrier workspaces (offsets in the workspace the kernel is given)."""
    gm = [(f"tensor {t.name!r}", t.addr, t.end) for t in program.gm.tensors.values()]
    ws = [(f"group {g.name!r} message slots", g.base_addr, g.base_addr + g.area_bytes) for g in program.groups]
    ws += [(f"GroupBarrier {b.name!r} workspace", b.base_addr, b.base_addr + b.workspace_len) for b in program.barriers]
    return [gm, ws]


def overlapping_regions(named: list[tuple[str, int, int]]) -> list[Finding]:
    out = []
    named = sorted(named, key=lambda r: (r[1], r[2]))
    for i, (na, la, ha) in enumerate(named):
        for nb, lb, hb in named[i + 1 :]:
            if lb >= ha:
                break
            if la < hb and lb < ha:
                out.append(
                    Finding(
                        "memcheck",
                        "overlapping_tensors",
                        (),
                        f"disjoint placement of {na} and {nb}",
                        f"{na} (bytes 0x{la:x}..0x{ha - 1:x}) and {nb} (bytes 0x{lb:x}..0x{hb - 1:x}) share bytes "
                        f"0x{max(la, lb):x}..0x{min(ha, hb) - 1:x}.",
                        "place them apart (a workspace_base past the tensors, or separate allocations).",
                    )  # fmt: skip
                )
    return out


def bad_tiles(log: EventLog) -> list[Finding]:
    """Findings from the tiles the run refused (``log.notes`` of kind ``bad_tile``) and from
    logged accesses that leave their tensor."""
    out = []
    for n in log.notes:
        if n.get("kind") != "bad_tile":
            continue
        out.append(_tile_finding(log, n["site"], n["access"], n["lo"], n["hi"], n["addr"]))
    for a in log.accesses:
        t = log.tensors.get(a.tensor) if a.tensor is not None else None
        if t is None or a.hi > t.end:
            out.append(_tile_finding(log, a.site, a.kind, a.lo, a.hi, a.addr))
    return out


def _tile_finding(log: EventLog, site: Site, access: str, lo: int, hi: int, addr: int) -> Finding:
    inside = log.tensors_in(lo, hi)
    names = [t.name for t in inside]
    if len(inside) >= 2 or (inside and (lo < inside[0].addr or hi > inside[0].end)):
        kind = "straddle"
        what = f"spans bytes 0x{lo:x}..0x{hi - 1:x}, which run across {', '.join(names)}" + (
            " and memory outside every tensor"
            if sum(min(hi, t.end) - max(lo, t.addr) for t in inside) < hi - lo
            else ""
        )
    else:
        kind = "out_of_range"
        what = f"at 0x{addr:x} lies outside every GM tensor (bytes 0x{lo:x}..0x{hi - 1:x})"
    ref = OpRef(site, access, names[0] if len(names) == 1 else None)
    return Finding(
        "memcheck", kind, (ref,), "",
        f"{describe_site(site)}: the {access} tile {what}; the engines stop the AIC there (GM_OUT_OF_RANGE).",
        "check the message's address, extents and row stride against the tensor's shape.",
    )  # fmt: skip


def memcheck(log: EventLog, program: Any | None) -> list[Finding]:
    found = bad_tiles(log)
    if program is not None:
        for space in regions(program):
            found += overlapping_regions(space)
    return found

"""Findings: the JSON the sanitizer prints and its human rendering.

A finding is ``{"tool", "kind", "cores", "ops", "missing", "message"}``; each op is
``{"core", "op_index", "op", "access", "tensor", "elements"}`` with ``elements`` the first and
last element (flat, row-major index into the tensor, both included) that the op touches where the
finding lies, or None where no tensor is involved. Findings are sorted (tool, kind, then their ops),
so the list is the same for every schedule that produced the same program.
"""

from __future__ import annotations

import dataclasses
import textwrap
from typing import Any

from ascend_jax.sanitizer.events import Site

#: The four tools, in report order (the names of msSanitizer's and Compute Sanitizer's tools).
TOOLS = ("racecheck", "initcheck", "synccheck", "memcheck")


@dataclasses.dataclass(frozen=True)
class OpRef:
    """One op of a finding (an entry of ``ops``)."""

    site: Site
    access: str  # read / write / atomic_add / ... / sync
    tensor: str | None = None
    elements: tuple[int, int] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "core": self.site.core,
            "op_index": self.site.op_index,
            "op": self.site.op,
            "access": self.access,
            "tensor": self.tensor,
            "elements": None if self.elements is None else [int(self.elements[0]), int(self.elements[1])],
        }


@dataclasses.dataclass(frozen=True)
class Finding:
    """One finding. ``fix`` and ``detail`` feed the human rendering only."""

    tool: str
    kind: str
    ops: tuple[OpRef, ...]
    missing: str
    message: str
    fix: str = ""

    @property
    def cores(self) -> list[str]:
        out: list[str] = []
        for o in self.ops:
            if o.site.core not in out:
                out.append(o.site.core)
        return out

    def sort_key(self) -> tuple:
        tool = TOOLS.index(self.tool) if self.tool in TOOLS else len(TOOLS)
        return (tool, self.kind, tuple(_core_key(o.site.core) + (o.site.op_index, o.site.op) for o in self.ops),
                self.message)  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "kind": self.kind,
            "cores": self.cores,
            "ops": [o.to_json() for o in self.ops],
            "missing": self.missing,
            "message": self.message,
        }

    def render(self) -> str:
        """One paragraph: what, where (both cores, both ops with their lines), and the fix."""
        text = f"[{self.tool}] {self.kind}: {self.message}"
        if self.missing:
            text += f" Missing: {self.missing}."
        if self.fix:
            text += f" Fix: {self.fix}"
        return textwrap.fill(text, width=100, break_long_words=False, break_on_hyphens=False)


def _core_key(core: str) -> tuple:
    """aiv before aic, then by number: ``aiv2`` < ``aiv10`` < ``aic0``."""
    kind = core.rstrip("0123456789")
    num = core[len(kind) :]
    return ({"aiv": 0, "aic": 1}.get(kind, 2), int(num) if num else -1)


def sort_findings(findings: list[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: f.sort_key())


def describe_site(site: Site) -> str:
    """``aiv0 op 12 (load, models/x.py:123)``; an AIC op names the message that asked for it."""
    where = f" at {site.source}" if site.source else ""
    if site.origin is not None:
        part = f" (IterateAll {site.part})" if site.part else ""
        return (
            f"{site.core}'s {site.op}{part} for message {site.op_index} it received, "
            f"posted by {site.origin[0]} op {site.origin[1]}{where}"
        )
    return f"{site.core} op {site.op_index} ({site.op}{where})"


def report_json(tools: tuple[str, ...], findings: list[Finding]) -> dict[str, Any]:
    """The ``"sanitizer"`` object of the result JSON."""
    return {"tools": list(tools), "findings": [f.to_json() for f in findings]}


def render(tools: tuple[str, ...], findings: list[Finding]) -> str:
    """The human report: a summary line, then one paragraph per finding."""
    if not findings:
        return f"sanitizer ({', '.join(tools)}): no findings"
    counts: dict[str, int] = {}
    for f in findings:
        counts[f.tool] = counts.get(f.tool, 0) + 1
    head = ", ".join(f"{t} {counts.get(t, 0)}" for t in tools)
    return "\n\n".join([f"sanitizer: {len(findings)} finding(s) ({head})", *(f.render() for f in findings)])

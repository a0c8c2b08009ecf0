"""Element operations and bytes moved by one iteration of a compiled while loop, from optimised HLO.

Used by ``protocol_ceiling.py``. The count reads the text of ``jax.stages.Compiled.as_text()``:

* every instruction of the loop body is a kernel (a thunk of XLA:CPU) unless it only renames or
  groups values (``parameter``, ``constant``, ``get-tuple-element``, ``tuple``, ``bitcast``);
* **element operations** of a kernel: for a fusion, each instruction of the fused computation
  weighted by its output's elements, leaving out those that only move or rename values
  (broadcasts, slices, bitcasts, reshapes, iotas, parameters, constants); for any other kernel, its
  output's elements (a scatter or dynamic-update-slice: its update's, as it writes in place);
* **bytes** of a kernel: what it reads (its operands) plus what it writes (its output); a kernel
  that updates a buffer in place (root ``dynamic-update-slice`` or ``scatter``) counts the update,
  not the whole buffer, as read and written;
* a ``conditional`` counts its most expensive branch (by element operations), a nested ``while``
  its body times its known trip count (1 when XLA does not know it; ``unknown_trips`` counts those).

These are estimates of the work a step does, for a ceiling, not a cycle model: a fusion may read
an operand twice, or keep part of it in registers.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

_ITEMSIZE = {
    "pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
    "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
}  # fmt: skip
_ARRAY = re.compile(r"\b(" + "|".join(_ITEMSIZE) + r")\[([\d,]*)\]")
_FREE_TOP = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all", "partition-id"}
_FREE_FUSED = {
    "parameter",
    "constant",
    "broadcast",
    "slice",
    "bitcast",
    "reshape",
    "iota",
    "tuple",
    "get-tuple-element",
}
_IN_PLACE = {"dynamic-update-slice", "scatter"}


@dataclass
class Instr:
    name: str
    shape: str  # the output's type text (an array type or a tuple of them)
    op: str
    operands: str  # the text between the op's parentheses (operand types and names)
    attrs: str  # the rest of the line (calls=, body=, branch_computations=, ...)
    root: bool


@dataclass
class Cost:
    """Element operations, bytes and kernel runs of one iteration (summed over kernels; a nested
    loop's kernels count once per trip)."""

    element_ops: float = 0.0
    bytes: float = 0.0
    kernels: int = 0
    unknown_trips: int = 0
    by_op: dict[str, float] = field(default_factory=dict)  # element ops per kernel kind
    #: (instruction name, element ops, bytes) of each kernel run, in order
    per_kernel: list[tuple[str, float, float]] = field(default_factory=list)

    def add(self, other: Cost, times: float = 1.0) -> None:
        self.element_ops += other.element_ops * times
        self.bytes += other.bytes * times
        self.kernels += int(other.kernels * times)
        self.unknown_trips += other.unknown_trips
        for k, v in other.by_op.items():
            self.by_op[k] = self.by_op.get(k, 0.0) + v * times
        self.per_kernel += [(n, o * times, b * times) for n, o, b in other.per_kernel]

    def roofline_s(self, ops_per_s: float, bytes_per_s: float) -> float:
        """Seconds of the kernels if each ran at the slower of its two limits (element ops at
        ``ops_per_s``, bytes at ``bytes_per_s``), one after another, with no launch cost."""
        return sum(max(o / ops_per_s, b / bytes_per_s) for _, o, b in self.per_kernel)


def arrays(text: str) -> list[tuple[int, int]]:
    """(elements, itemsize) of every array type in ``text`` (a shape or an operand list)."""
    out = []
    for dt, dims in _ARRAY.findall(text):
        out.append((math.prod(int(d) for d in dims.split(",") if d), _ITEMSIZE[dt]))
    return out


def nbytes(text: str) -> int:
    return sum(n * s for n, s in arrays(text))


def elements(text: str) -> int:
    return sum(n for n, _ in arrays(text))


def _close(text: str, start: int) -> int:
    """Index of the parenthesis closing the one at ``start``."""
    depth = 0
    for i in range(start, len(text)):
        c = text[i]
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unbalanced parentheses in HLO line: {text[:120]}")


def _instr(line: str) -> Instr | None:
    m = re.match(r"\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*", line)
    if not m:
        return None
    rest = line[m.end() :]
    if rest.startswith("("):
        end = _close(rest, 0)
        shape, rest = rest[: end + 1], rest[end + 1 :].lstrip()
    else:
        shape, _, rest = rest.partition(" ")
    mo = re.match(r"([\w\-]+)\(", rest)
    if not mo:
        return None
    end = _close(rest, mo.end() - 1)
    return Instr(m.group(2), shape, mo.group(1), rest[mo.end() : end], rest[end + 1 :], bool(m.group(1)))


def computations(hlo: str) -> dict[str, list[Instr]]:
    """Every computation of an HLO module's text, by name: its instructions in order."""
    comps: dict[str, list[Instr]] = {}
    cur = None
    for line in hlo.splitlines():
        if not line.startswith(" ") and line.rstrip().endswith("{"):
            m = re.match(r"(?:ENTRY\s+)?%?([\w.\-]+)", line)
            cur = m.group(1) if m else None
            if cur is not None:
                comps[cur] = []
            continue
        if cur is not None and line.startswith(" "):
            ins = _instr(line)
            if ins is not None:
                comps[cur].append(ins)
    return comps


def _callee(attrs: str, key: str) -> str | None:
    m = re.search(key + r"=%?([\w.\-]+)", attrs)
    return m.group(1) if m else None


def _update_elements(ins: Instr, shapes: dict[str, str]) -> float:
    """Elements an in-place ``dynamic-update-slice`` (operand 1) or ``scatter`` (operand 2) writes."""
    per = [elements(a) for a in _operand_types(ins, shapes)]
    at = 1 if ins.op == "dynamic-update-slice" else 2
    return float(per[at] if len(per) > at else elements(ins.shape))


def _fused_ops(comps: dict[str, list[Instr]], name: str) -> tuple[float, dict[str, float]]:
    ops, by = 0.0, {}
    shapes = {ins.name: ins.shape for ins in comps[name]}
    for ins in comps[name]:
        if ins.op == "fusion":
            sub, sub_by = _fused_ops(comps, _callee(ins.attrs, "calls"))
            ops += sub
            for k, v in sub_by.items():
                by[k] = by.get(k, 0.0) + v
            continue
        if ins.op in _FREE_FUSED:
            continue
        n = _update_elements(ins, shapes) if ins.op in _IN_PLACE else float(elements(ins.shape))
        ops += n
        by[ins.op] = by.get(ins.op, 0.0) + n
    return ops, by


def _operand_types(ins: Instr, shapes: dict[str, str]) -> list[str]:
    """The type text of each operand: printed beside it, or, where the text names operands only
    (``fusion(%a, %b)``), its definition's in ``shapes`` (instruction name -> output type, of the
    same computation)."""
    names = re.findall(r"%([\w.\-]+)", ins.operands)
    parts = [p.strip() for p in re.split(r"%[\w.\-]+", ins.operands)[: len(names)]]
    return [(p.lstrip(", ") if _ARRAY.search(p) else shapes.get(n, "")) for p, n in zip(parts, names, strict=True)]


def operand_arrays(ins: Instr, shapes: dict[str, str]) -> list[tuple[int, int]]:
    """(elements, itemsize) of every array an instruction reads (see :func:`_operand_types`)."""
    return [a for t in _operand_types(ins, shapes) for a in arrays(t)]


def _kernel_bytes(ins: Instr, root_op: str | None, shapes: dict[str, str]) -> float:
    ops = operand_arrays(ins, shapes)
    if (root_op or ins.op) in _IN_PLACE and ops:
        big = max(range(len(ops)), key=lambda i: ops[i][0] * ops[i][1])
        rest = sum(n * s for i, (n, s) in enumerate(ops) if i != big)
        return 2.0 * rest  # the update and indices read, the update written over the buffer
    return float(sum(n * s for n, s in ops) + nbytes(ins.shape))


def body_cost(comps: dict[str, list[Instr]], name: str) -> Cost:
    """The :class:`Cost` of running computation ``name`` once (a loop body or a branch)."""
    cost = Cost()
    shapes = {ins.name: ins.shape for ins in comps[name]}
    for ins in comps[name]:
        if ins.op in _FREE_TOP:
            continue
        if ins.op == "conditional":
            m = re.search(r"branch_computations=\{([^}]*)\}", ins.attrs)
            names = [b.strip().lstrip("%") for b in m.group(1).split(",")] if m else []
            if not names:  # true_computation= / false_computation= form
                names = [
                    c for c in (_callee(ins.attrs, "true_computation"), _callee(ins.attrs, "false_computation")) if c
                ]
            branches = [body_cost(comps, b) for b in names]
            if branches:
                cost.add(max(branches, key=lambda c: c.element_ops))
            cost.kernels += 1
            continue
        if ins.op == "while":
            m = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', ins.attrs)
            trips = int(m.group(1)) if m else 1
            cost.unknown_trips += m is None
            cost.add(body_cost(comps, _callee(ins.attrs, "body")), trips)
            cost.kernels += 1
            continue
        cost.kernels += 1
        if ins.op == "fusion":
            callee = _callee(ins.attrs, "calls")
            ops, by = _fused_ops(comps, callee)
            root = next((i.op for i in comps[callee] if i.root), None)
            moved = _kernel_bytes(ins, root, shapes)
        else:
            ops = _update_elements(ins, shapes) if ins.op in _IN_PLACE else float(elements(ins.shape))
            by = {ins.op: ops}
            moved = _kernel_bytes(ins, None, shapes)
        cost.bytes += moved
        cost.per_kernel.append((ins.name, ops, moved))
        cost.element_ops += ops
        for k, v in by.items():
            cost.by_op[k] = cost.by_op.get(k, 0.0) + v
    return cost


def main_loop_body(comps: dict[str, list[Instr]]) -> str:
    """The body of the module's largest while loop (by instructions, its callees included)."""

    def size(name: str, seen: set[str]) -> int:
        if name in seen or name not in comps:
            return 0
        seen.add(name)
        n = len(comps[name])
        for ins in comps[name]:
            for key in ("calls", "body", "condition", "to_apply"):
                c = _callee(ins.attrs, key)
                if c:
                    n += size(c, seen)
        return n

    bodies = [_callee(ins.attrs, "body") for instrs in comps.values() for ins in instrs if ins.op == "while"]
    if not bodies:
        raise ValueError("the module has no while loop")
    return max(bodies, key=lambda b: size(b, set()))


def loop_cost(hlo: str) -> Cost:
    """:class:`Cost` of one iteration of the largest while loop in an optimised HLO module."""
    comps = computations(hlo)
    return body_cost(comps, main_loop_body(comps))

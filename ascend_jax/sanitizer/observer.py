"""Feeds an :class:`~ascend_jax.sanitizer.events.EventLog` from the reference interpreter.

The reference's protocol state (``reference.protocol.Protocol``, ``proto`` below) calls
:meth:`Observer.aiv_act` before an AIV performs an op and :meth:`Observer.aic_act` before an AIC
performs its next action (a receive, a requested free or matmul). The observer reads the
protocol state at that moment (which slot an alloc takes,
a barrier object's round, the matmul descriptor) and logs accesses and synchronisation:

========================  ==============================================================
interpreter action        logged
========================  ==============================================================
AIV alloc                 acquire the slot (it waited for the FREE the AIC wrote)
AIV post / fake / quit    publish the slot (the AIC's receive or wait-state free reads it)
AIV ``Wait<true>``        acquire the slot (``Wait<false>`` only reads: nothing)
AIV Arrive, round r       acquire the waits of round r - 1 (r > 1), release arrivals of r
AIV barrier Wait, round r acquire the arrivals of round r, release the waits of round r
AIV SyncAll, round k      every participant releases round k at its arrival (all AIVs with
                          a program; the all-core form also every AIC), then acquire it
AIV vector op             GM tile read / write / atomic add; UB regions read and written
AIC receive               acquire the slot it reads
AIC free                  acquire the slot first when it waits for a state, then publish it
AIC matmul                A, B (and bias) read, C written or atomically updated, at the
                          AIC's clock between the receive and the frees of its message
========================  ==============================================================
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ascend_jax.cube_group.callbacks import NO_WAIT
from ascend_jax.cube_group.matmul import empty_tile
from ascend_jax.cube_group.status import CALL
from ascend_jax.cube_group.vector import BROADCAST, REDUCE
from ascend_jax.message import FREE
from ascend_jax.sanitizer.events import ATOMIC_KIND, EventLog, Site, TensorInfo


def tensor_infos(program: Any, uninitialised: frozenset[str] = frozenset()) -> list[TensorInfo]:
    """The program's tensors; one allocated without ``init`` (``GlobalMemory.init_given``), or
    named in ``uninitialised``, is undefined at launch."""
    given = program.gm.init_given
    return [
        TensorInfo(
            t.name,
            t.addr,
            t.nbytes,
            t.dtype.itemsize,
            tuple(t.shape),
            given.get(t.name, True) and t.name not in uninitialised,
            given.get(t.name, True) and t.name in uninitialised,  # marked although it has an init
        )  # fmt: skip
        for t in program.gm.tensors.values()
    ]


def core_names(program: Any) -> list[str]:
    aivs = [f"aiv{b}" for b, _ in program.aivs]
    aics = [f"aic{program.aic_core_index(gi, k)}" for gi, k in program.aics]
    return aivs + aics


class Observer:
    """Logs one run of ``program`` (see the module docstring).

    Args:
      program: the program being run.
      uninitialised: tensor names initcheck treats as undefined before the kernel writes them,
        even though they have an ``init`` (tensors without one are undefined anyway).
      source_of: ``(block_idx, op index) -> "file:line"`` where an AIV op was written (default:
        the op's ``where``, e.g. ``aiv[0].ops[3]`` in a scenario).
    """

    def __init__(
        self,
        program: Any,
        uninitialised: frozenset[str] = frozenset(),
        source_of: Callable[[int, int], str] | None = None,
    ):
        self.program = program
        self.log = EventLog(core_names(program), tensor_infos(program, frozenset(uninitialised)))
        ops = dict(program.aivs)
        self._ops = ops
        self.source_of = source_of or (lambda b, i: ops[b][i].where if 0 <= i < len(ops.get(b, ())) else "")
        self._origin: dict[tuple[int, int], tuple[str, int, str]] = {}  # (group, slot) -> the post that wrote it
        self._current: dict[int, tuple[int, tuple[str, int, str] | None]] = {}  # AIC core -> (msg #, origin)
        self._parts: dict[int, int] = {}  # AIC core -> IterateAlls of the current call so far
        self._synced: set[tuple[str, int]] = set()
        self._itemsizes: dict[int, tuple[int, int, int, int]] = {}  # group -> A, B, bias, C element bytes

    # -- AIV -------------------------------------------------------------------------------
    def aiv_act(self, proto: Any, aiv: Any, op: Any) -> None:
        kind = op.kind
        if kind == CALL.DELAY:
            return
        log, core = self.log, f"aiv{aiv.block_idx}"
        g = op.group
        if kind == CALL.ALLOC:
            log.acquire(core, ("slot", g, proto.ring_slot(aiv, g)))
        elif kind in (CALL.POST, CALL.FAKE, CALL.QUIT):
            slot = aiv.alloc_slot[(g, op.alloc)]
            log.publish(core, ("slot", g, slot))
            self._origin[(g, slot)] = (core, aiv.pc, self.source_of(aiv.block_idx, aiv.pc))
        elif kind == CALL.WAIT:
            if op.sync:
                log.acquire(core, ("slot", g, aiv.heads[g] + op.offset))
        elif kind == CALL.ARRIVE:
            r = proto.barrier_obj(aiv, g).counter
            if r > 1:
                log.acquire(core, ("barrier_wait", g, r - 1))
            log.release(core, ("barrier_arrive", g, r))
        elif kind == CALL.BARRIER_WAIT:
            obj = proto.barrier_obj(aiv, g)
            r = obj.counter - 1 if obj.has_arrive else obj.counter
            log.acquire(core, ("barrier_arrive", g, r))
            log.release(core, ("barrier_wait", g, r))
        elif kind == CALL.SYNC_ALL:
            self._sync_all(proto, aiv, op)
        elif kind == CALL.VECTOR:
            self._vector(core, aiv.block_idx, aiv.pc, op.vec)

    def _sync_all(self, proto: Any, aiv: Any, op: Any) -> None:
        k, key = aiv.syncs, ("sync_all", aiv.syncs)
        members = [f"aiv{a.block_idx}" for a in proto.aivs if a.ops]
        if not op.aiv_only:
            members += [f"aic{c.core}" for c in proto.aics]
        for m in members:  # each is at this SyncAll (or past it, having released already)
            if (m, k) not in self._synced:
                self._synced.add((m, k))
                self.log.release(m, key)
        self.log.acquire(f"aiv{aiv.block_idx}", key)

    def _vector(self, core: str, b: int, i: int, vec: Any) -> None:
        site = Site(core, i, vec.kind, self.source_of(b, i))
        log, r, c = self.log, vec.rows, vec.cols
        if vec.kind == "load":
            log.tile(core, site, "read", vec.addr, r, c, vec.stride, vec.dst.dtype.itemsize)
        elif vec.kind == "store":
            kind = "atomic_add" if vec.atomic else "write"
            log.tile(core, site, kind, vec.addr, r, c, vec.stride, vec.src0.dtype.itemsize)
        reads = [(vec.src0, r, c)] if vec.src0 is not None else []
        if vec.src1 is not None:
            reads.append((vec.src1, r, 1 if vec.kind in BROADCAST else c))
        for buf, rows, cols in reads:
            log.ub_access(site, buf.name, (buf.rows, buf.cols), rows, cols, write=False)
        if vec.dst is not None:
            log.ub_access(site, vec.dst.name, (vec.dst.rows, vec.dst.cols), r, 1 if vec.kind in REDUCE else c, True)

    # -- AIC -------------------------------------------------------------------------------
    def aic_act(self, proto: Any, aic: Any) -> None:
        log, core, g = self.log, f"aic{aic.core}", aic.group
        if not aic.in_call:
            rel = aic.base + aic.msg_pos
            cur = proto.slot(aic, rel)
            if cur is None or cur.state == FREE:
                return
            log.acquire(core, ("slot", g, rel))
            self._current[aic.core] = (len(aic.log), self._origin.get((g, rel)))
            self._parts[aic.core] = 0
            return
        act = aic.pending[0]
        if act[0] == "free":
            _, slot, wait = act
            if proto.slot(aic, slot) is None:
                return
            if wait != NO_WAIT:
                log.acquire(core, ("slot", g, slot))
            log.publish(core, ("slot", g, slot))
        elif act[0] == "matmul":
            self._matmul(aic, act[1])

    def _inside(self, addr: int, rows: int, cols: int, stride: int, trans: bool, itemsize: int) -> bool:
        """Whether a tile lies in one tensor (``matmul.tile_inside``'s rule, on Python ints)."""
        runs, per = (cols, rows) if trans else (rows, cols)
        if addr < 0 or (runs > 1 and stride < 0):
            return False
        t = self.log.owner(addr)
        return t is not None and addr + ((runs - 1) * stride + per) * itemsize <= t.end

    def _matmul(self, aic: Any, d: dict) -> None:
        core = f"aic{aic.core}"
        n_msg, origin = self._current.get(aic.core, (-1, None))
        part = self._parts.get(aic.core, 0)
        self._parts[aic.core] = part + 1
        if empty_tile(d):
            return
        sizes = self._itemsizes.get(aic.group)
        if sizes is None:
            mt = self.program.matmuls[aic.group][0]
            sizes = self._itemsizes[aic.group] = tuple(mt.dtype(w).itemsize for w in ("a", "b", "bias", "c"))
        a_size, b_size, bias_size, c_size = sizes
        m, n, k = d["m"], d["n"], d["k"]
        operands = [
            ("A", "read", d["a_addr"], m, k, d["stride_a"], bool(d["trans_a"]), a_size),
            ("B", "read", d["b_addr"], k, n, d["stride_b"], bool(d["trans_b"]), b_size),
        ]
        if d["has_bias"]:
            operands.append(("bias", "read", d["bias_addr"], 1, n, n, False, bias_size))
        operands.append(("C", ATOMIC_KIND.get(int(d["atomic"]), "write"), d["c_addr"], m, n, d["stride_c"], False,
                         c_size))  # fmt: skip
        post = (origin[0], origin[1]) if origin is not None else ("?", -1)
        src = origin[2] if origin is not None else ""
        sites = {name: Site(core, n_msg, f"matmul.{name}", src, post, part) for name, *_ in operands}
        bad = [o for o in operands if not self._inside(*o[2:])]
        if bad:  # the engines stop this AIC and write nothing of the tile
            name, kind, addr, rows, cols, stride, trans, isz = bad[0]
            runs, per = (cols, rows) if trans else (rows, cols)
            lo, hi = addr, addr + ((runs - 1) * stride + per) * isz
            self.log.note(kind="bad_tile", site=sites[name], access=kind, addr=addr, lo=min(lo, hi), hi=max(lo, hi))
            return
        for name, kind, addr, rows, cols, stride, trans, isz in operands:
            self.log.tile(core, sites[name], kind, addr, rows, cols, stride, isz, trans)

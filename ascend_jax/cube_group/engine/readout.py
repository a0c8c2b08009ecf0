"""Final engine arrays -> results: the final state as flat result arrays (:func:`batch_minor`),
packed one ``[K, B]`` array per element type on an accelerator (:func:`pack_minor`; on the CPU
each array as it is) and viewed lanes first on the host without a transpose
(:func:`unpack_lanes`, :class:`Join`, :func:`gm_host`), then a :class:`BatchResult` of numpy
arrays, per-lane objects on demand.

``simulate`` returns one :class:`BatchResult`. Batch questions (how many lanes deadlocked, which
lanes differ from lane 0, steps and kernel cycles per lane) are numpy operations on its arrays;
the per-lane :class:`CubeGroupResult` (received logs as lists, witnesses, error dicts, JSON) is
built only when a lane is asked for (``res[i]``, iteration) and then cached.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ascend_jax.cube_group import clock
from ascend_jax.cube_group.callbacks import NO_WAIT
from ascend_jax.cube_group.engine.banks import host_image
from ascend_jax.cube_group.engine.encode import EncodedProgram
from ascend_jax.cube_group.engine.hostmem import lease
from ascend_jax.cube_group.engine.shape import EngineShape
from ascend_jax.cube_group.engine.state import State, Tables, read_only
from ascend_jax.cube_group.matmul import SHAPE_DETAIL
from ascend_jax.cube_group.program import CubeGroupProgram
from ascend_jax.cube_group.result import (
    CubeGroupResult,
    barrier_witness,
    destructor_witness,
    error_entry,
    init_assert_entry,
    misuse_entry,
    slot_location,
    slot_witness,
    state_name,
    sync_witness,
    timing_report,
)
from ascend_jax.cube_group.status import AicPhase, ErrorCode, OpKind, Status

#: error dict key carrying the detail of each dispatch-time error code
_DETAIL_KEY = {
    ErrorCode.FREE_OUT_OF_BLOCK: "offset",
    ErrorCode.FREE_UNUSED_COLUMN: "offset",
    ErrorCode.BAD_WAIT_STATE: "wait_state",
}


class _Lanes:
    """Which program each lane ran: ``index[i]`` into ``programs`` / ``encoded``."""

    def __init__(self, programs: list[CubeGroupProgram], encoded: list[EncodedProgram], index: np.ndarray):
        self.programs = programs
        self.encoded = encoded
        self.index = index


class BatchResult(Sequence):
    """Results of a batch of lanes, as arrays (lane-major, ``B`` lanes).

    Attributes:
      status: [B] int :class:`Status` values. steps: [B] engine steps.
      seeds: [B] the lanes' seeds.
      arrays: every final state array, ``[B, ...]`` numpy; the receive log ``recv_ver`` is
        ``[B, C, R]`` with ``R`` the largest ``recv_count`` of the batch (entries at or past a
        lane's count are undefined); ``gm`` ``[B, G]`` uint8 the final bytes of the GM tensors
        (G: the program's GM size, address ``GM_BASE`` first).
      schedule: the schedule that ran.
    Index it (``res[i]``) or iterate for per-lane :class:`CubeGroupResult` objects.
    """

    def __init__(
        self,
        shape: EngineShape,
        lanes: _Lanes,
        arrays: dict[str, np.ndarray],
        seeds: np.ndarray,
        costs: np.ndarray,
        schedule: str,
    ):
        self.shape = shape
        self._lanes = lanes
        self.arrays = arrays
        self.seeds = seeds
        self.costs = costs
        self.schedule = schedule
        self.status = arrays["status"]
        self.steps = arrays["step"]
        self._cache: dict[int, CubeGroupResult] = {}
        #: the numerics report (:func:`ascend_jax.numerics.numerics_report`) once computed
        self.numerics: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.status)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = range(len(self))[i]
        hit = self._cache.get(i)
        if hit is None:
            hit = self._cache[i] = self._lane(i)
        if hit.numerics is None:
            hit.numerics = self.numerics
        return hit

    def __iter__(self) -> Iterator[CubeGroupResult]:
        return (self[i] for i in range(len(self)))

    def __add__(self, other: Sequence) -> list:
        return list(self) + list(other)

    def __radd__(self, other: Sequence) -> list:
        return list(other) + list(self)

    def __repr__(self) -> str:
        return f"BatchResult(lanes={len(self)}, status={self.status_counts()})"

    def program(self, i: int) -> CubeGroupProgram:
        return self._lanes.programs[self._lanes.index[i]]

    # -- batch aggregates (numpy) -----------------------------------------------------------
    def status_counts(self) -> dict[str, int]:
        """Lanes per status label, e.g. ``{"ok": 1000, "deadlock": 24}``."""
        values, counts = np.unique(self.status, return_counts=True)
        return {Status(int(v)).label: int(c) for v, c in zip(values, counts, strict=True)}

    def received_slots(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """[B, C, R] global slot and head state of every received message, and [B, C] counts
        (entries at or past the count are -1)."""
        ver = self.arrays["recv_ver"].astype(np.int64)
        count = self.arrays["recv_count"]
        slot = np.full(ver.shape, -1, np.int64)
        state = np.full(ver.shape, -1, np.int64)
        valid = np.arange(ver.shape[2])[None, None, :] < count[:, :, None]
        for p, enc in enumerate(self._lanes.encoded):
            lanes = np.flatnonzero(self._lanes.index == p)
            if not len(lanes) or not enc.n_versions:
                continue
            v = np.minimum(ver[lanes], enc.n_versions - 1)
            slot[lanes] = np.where(valid[lanes], enc.ver_slot[v], -1)
            state[lanes] = np.where(valid[lanes], enc.ver_state[v], -1)
        return slot, state, count

    def same_as_lane0(self) -> np.ndarray:
        """[B] whether each lane's outcome equals lane 0's: status, received logs, final slot states,
        where its cores stopped (the deadlock witness) and its error."""
        a = self.arrays
        slot, state, count = self.received_slots()
        same = (self.status == self.status[0]) & (count == count[:1]).all(axis=1)
        same &= ((slot == slot[:1]) & (state == state[:1])).all(axis=(1, 2))
        for key in ("slot_state", "aiv_pc", "aic_phase", "aic_pc", "aic_err_code", "aic_err_slot"):
            x = a[key].reshape(len(self), -1)
            same &= (x == x[:1]).all(axis=1)
        return same

    def batch_json(self) -> list[dict[str, Any]]:
        """The result JSON's ``"batch"`` list: each lane's seed, status, steps and whether its
        received logs and slot states equal lane 0's (from the arrays; no per-lane objects)."""
        same = self.same_as_lane0()
        return [
            {"lane": i, "seed": int(s), "status": Status(int(st)).label, "steps": int(n), "same_as_lane0": bool(m)}
            for i, (s, st, n, m) in enumerate(zip(self.seeds, self.status, self.steps, same, strict=True))
        ]

    def kernel_cycles(self) -> np.ndarray | None:
        """[B] cycles when the last core finished (timed schedule), else None."""
        if "aic_clock" not in self.arrays:
            return None
        return np.maximum(
            self.arrays["aic_clock"].max(axis=1, initial=0.0), self.arrays["aiv_clock"].max(axis=1, initial=0.0)
        )

    # -- one lane -----------------------------------------------------------------------------
    def _lane(self, i: int) -> CubeGroupResult:
        a = {k: v[i] for k, v in self.arrays.items()}
        p = self._lanes.index[i]
        program, enc = self._lanes.programs[p], self._lanes.encoded[p]
        shape = self.shape
        consts = shape.aic_constants()
        status = Status(int(a["status"]))
        q_of, d_of = _slot_tables(program)
        received = {}
        for c, core in enumerate(consts["core"]):
            vers = a["recv_ver"][c, : int(a["recv_count"][c])].astype(np.int64)
            slots = enc.ver_slot[vers]
            names = [state_name(x) for x in enc.ver_state[vers].tolist()]
            received[int(core)] = list(zip(q_of[slots].tolist(), d_of[slots].tolist(), names, strict=True))
        sv = a["slot_ver"]
        has = sv >= 0
        safe = np.maximum(sv, 0)
        slot_aiv_id = np.where(has, enc.ver_aiv_id[safe] if enc.n_versions else 0, 0).astype(np.int64)
        slot_msg = np.where(has, enc.ver_msg[safe] if enc.n_versions else -1, -1).astype(np.int64)
        nb = len(program.barriers)
        v_rows = [int(np.flatnonzero(np.array(shape.aiv_blocks) == b)[0]) for b, _ in program.aivs]
        wait_results = {}
        if shape.wait_tests:
            wr = a["aiv_wait_result"]
            for v, (b, _) in zip(v_rows, program.aivs, strict=True):
                got = wr[v][wr[v] >= 0]
                if len(got):
                    wait_results[int(b)] = [bool(x) for x in got]
        return CubeGroupResult(
            program=program,
            status=status,
            steps=int(a["step"]),
            slot_state=a["slot_state"].astype(np.int64),
            slot_aiv_id=slot_aiv_id,
            slot_msg=slot_msg,
            received=received,
            blocked=_witness(shape, program, enc, a) if status == Status.DEADLOCK else [],
            error=_error(shape, program, enc, a) if status == Status.ERROR else None,
            barrier_arrive=a["barrier_arrive"][:nb].astype(np.int64),
            barrier_wait=a["barrier_wait"][:nb].astype(np.int64),
            wait_results=wait_results,
            seed=int(self.seeds[i]),
            gm=a["gm"][: program.gm.size].copy() if shape.has_gm else program.gm.image,
            timing=_timing(shape, program, a, self.costs[i]) if self.schedule == "timed" else None,
            asserts_violated=_asserts(shape, program, enc, a),
            api_misuse=_misuse(shape, program, enc, a),
        )


def _error(shape: EngineShape, program: CubeGroupProgram, enc: EncodedProgram, a: dict) -> dict[str, Any]:
    """The error dict of a lane that stopped with ``error``: that of the lowest-index AIC that
    stopped at an error (same keys as the reference's)."""
    consts = shape.aic_constants()
    c = int(np.flatnonzero(a["aic_phase"] == AicPhase.ERROR)[0])
    code = ErrorCode(int(a["aic_err_code"][c]))
    ver = int(a["aic_err_ver"][c])
    gi = int(consts["group"][c])
    q, d = _place(program, gi, int(a["aic_err_slot"][c]))
    # the detail of the code reported: a skip's count, else the failing action's
    detail: dict[str, Any] = {}
    value = int(enc.ver_detail[ver])
    if code in (ErrorCode.SKIP_CROSSES_ROW, ErrorCode.SKIP_NEGATIVE):
        detail["skip"] = value  # the SetSkipMsg total at the call that failed
    elif code in _DETAIL_KEY:
        detail[_DETAIL_KEY[code]] = value
    elif code == ErrorCode.MATMUL_SHAPE:
        detail["dimension"] = SHAPE_DETAIL[value]
    elif code == ErrorCode.GM_OUT_OF_RANGE:
        addr = int(a["aic_err_addr"][c])
        detail["address"] = program.gm.describe(addr if addr >= 0 else enc.big_addresses[-1 - addr])
    return error_entry(code, f"aic{int(consts['core'][c])}", program.groups[gi].name, q, d, **detail)


def _place(program: CubeGroupProgram, gi: int, slot: int) -> tuple[int, int]:
    """(queue, depth) of global slot ``slot`` in group ``gi``, or (-1, -1) past the group's slots
    (a release build's stray cursor or free)."""
    g = program.groups[gi]
    if not g.slot_base <= slot < g.slot_base + g.num_slots:
        return -1, -1
    return slot_location(program, slot)[1:]


def _asserts(shape: EngineShape, program: CubeGroupProgram, enc: EncodedProgram, a: dict) -> list[dict[str, Any]]:
    """NPU builds: the assert the CPU twin would have stopped at, AICs in index order: one its
    ``Init`` broke (known when the program was encoded), else the first one met in the run."""
    if not shape.notes_asserts and not any(enc.init_asserts):
        return []
    consts = shape.aic_constants()
    out = []
    for c, core in enumerate(consts["core"]):
        gi = int(consts["group"][c])
        broken = enc.init_asserts[c] if c < len(enc.init_asserts) else None
        if broken is not None:
            out.append(init_assert_entry(ErrorCode.MATMUL_SHAPE, f"aic{int(core)}", program.groups[gi].name,
                                         dimension=broken))  # fmt: skip
            continue
        if not shape.notes_asserts:
            continue
        for entry in a["aic_asserts"][c, : int(a["aic_assert_n"][c])].tolist():
            code = ErrorCode(entry & 31)
            q, d = _place(program, gi, entry >> 5)
            out.append(error_entry(code, f"aic{int(core)}", program.groups[gi].name, q, d))
    return out


def _misuse(shape: EngineShape, program: CubeGroupProgram, enc: EncodedProgram, a: dict) -> list[dict[str, Any]]:
    """The ``api_misuse`` findings: per AIC in index order, the first broken FreeMessage
    constraint of each message it dispatched (``EncodedProgram.ver_misuse``), in dispatch order."""
    if not enc.ver_misuse.any():
        return []
    consts = shape.aic_constants()
    out = []
    for c, core in enumerate(consts["core"]):
        gi = int(consts["group"][c])
        for ver in a["recv_ver"][c, : int(a["recv_count"][c])].tolist():
            code = int(enc.ver_misuse[ver])
            if code == 0:
                continue
            code = ErrorCode(code)
            q, d = _place(program, gi, int(enc.ver_slot[ver]))
            key = "wait_state" if code == ErrorCode.BAD_WAIT_STATE else "offset"
            detail = {key: int(enc.ver_misuse_detail[ver])}
            out.append(misuse_entry(error_entry(code, f"aic{int(core)}", program.groups[gi].name, q, d, **detail)))
    return out


def _timing(shape: EngineShape, program: CubeGroupProgram, a: dict, cost: np.ndarray) -> dict:
    occ: dict = {}
    base = 0
    for gi, g in enumerate(program.groups):
        occ[gi] = {q: [float(x) for x in a["occ_cycles"][base + q]] for q in range(g.msg_queue_size)}
        base += g.msg_queue_size
    return timing_report(
        program,
        aic_busy=a["aic_busy"].astype(float).tolist(),
        aic_blocked=a["aic_blocked"].astype(float).tolist(),
        aic_clock=a["aic_clock"].astype(float).tolist(),
        aiv={
            int(b): (float(a["aiv_alloc_stall"][v]), float(a["aiv_wait_stall"][v]), float(a["aiv_clock"][v]))
            for v, b in enumerate(shape.aiv_blocks)
            if b in dict(program.aivs)
        },
        occupancy=occ,
        freq_mhz=float(cost[-1]),
    )


_SLOT_TABLES: dict = {}


def _slot_tables(program: CubeGroupProgram) -> tuple[np.ndarray, np.ndarray]:
    """[S] queue and depth of every global slot (per program geometry)."""
    key = program.groups
    hit = _SLOT_TABLES.get(key)
    if hit is None:
        total = sum(g.num_slots for g in program.groups)
        q = np.zeros(total, np.int64)
        d = np.zeros(total, np.int64)
        for s in range(total):
            _, q[s], d[s] = slot_location(program, s)
        hit = _SLOT_TABLES[key] = (q, d)
    return hit


def _witness(shape: EngineShape, program: CubeGroupProgram, enc: EncodedProgram, a: dict) -> list[dict]:
    """Every unfinished core and the predicate it is blocked on, from the final arrays."""
    consts = shape.aic_constants()
    out = []
    for c, core in enumerate(consts["core"]):
        phase = int(a["aic_phase"][c])
        if phase in (AicPhase.DONE, AicPhase.ERROR):
            continue
        if phase == AicPhase.CALL:
            ver, pc = int(a["aic_ver"][c]), int(a["aic_pc"][c])
            slot, until = int(enc.act_slot[ver, pc]), int(enc.act_wait[ver, pc])
            until_name = "FREE" if until == NO_WAIT else state_name(until)
        else:
            slot = int(consts["block"][c] + a["aic_pos"][c])
            until_name = "NOT_FREE"
        gi = int(consts["group"][c])
        q, d = _place(program, gi, slot)
        out.append(slot_witness(f"aic{int(core)}", program.groups[gi].name, q, d, until_name))
    rows = dict(zip((b for b, _ in program.aivs), enc.rows, strict=True))
    for v, block in enumerate(shape.aiv_blocks):
        pc = int(a["aiv_pc"][v])
        row = rows.get(block, [])
        if pc >= len(row):
            if row and shape.has_mte3 and not a["aiv_mte3"][v]:  # waiting in ~KfcWorkspace for the flag
                out.append(destructor_witness(f"aiv{block}"))
            continue
        kind, slot, op_a, op_b, op_c = row[pc]
        if kind in (OpKind.ALLOC, OpKind.WAIT):
            gi, q, d = slot_location(program, slot)
            flag_down = kind == OpKind.ALLOC and op_b == 1 and not a["aiv_mte3"][v]
            until = "MTE3_FLAG" if flag_down else "FREE"
            out.append(slot_witness(f"aiv{block}", program.groups[gi].name, q, d, until))
        elif kind == OpKind.SYNC:
            out.append(sync_witness(f"aiv{block}"))
        elif kind in (OpKind.ARRIVE, OpKind.BWAIT):
            until = f"W=={op_c}" if kind == OpKind.ARRIVE else f"A>={op_c}"
            out.append(barrier_witness(f"aiv{block}", program.barriers[op_a].name, op_b, until))
    return out


def batch_minor(shape: EngineShape, st: State) -> dict[str, jax.Array]:
    """The final state as one flat dict of result arrays, lanes still the last axis (but
    ``State.LANE_MAJOR`` fields); slots (and slot times) in global slot order ``[S, B]`` as
    ``slot_state`` and ``slot_ver`` (both :attr:`EngineShape.version_dtype`), queue occupancy in
    queue order ``[Q, 5, B]``; GM as its tensors' bytes ``gm`` ``[B, gm_data]`` (:func:`gm_host`
    cuts them to the program's size), or with typed
    banks the written banks ``gm_bank0`` ... ``[B, n]`` (:func:`gm_host` makes them bytes).
    :func:`lane_major` finishes the job."""
    b = st.status.shape[-1]
    grid = shape.grid_of_slot
    out = {f.name: getattr(st, f.name) for f in dataclasses.fields(State) if f.name not in ("timed", "ub", "slot")}
    if shape.banks is None:  # the tensors' bytes (the margin after them is the engine's scratch)
        out["gm"] = st.gm[0][:, : shape.gm_data]
    else:  # the written banks as they are: gm_host turns them into bytes (no cast on the device)
        out.pop("gm")
        out.update({f"gm_bank{i}": x for i, x in enumerate(st.gm)})
    slot = st.slot.reshape(-1, b)[grid]  # whole rows of lanes move: cheap while lanes are minor
    out["slot_state"] = (slot & 0xFF).astype(shape.version_dtype)
    out["slot_ver"] = ((slot >> 8) - 1).astype(shape.version_dtype)
    if st.timed is not None:  # UB contents at the end are not part of a result
        out.update({f.name: getattr(st.timed, f.name) for f in dataclasses.fields(st.timed)})
        for lo in ("", "_lo"):
            out[f"slot_time{lo}"] = out[f"slot_time{lo}"].reshape(-1, b)[grid]
            out[f"occ_cycles{lo}"] = out[f"occ_cycles{lo}"][shape.queue_rows]
    return out


#: one array's lane axis moved first. Compiled on its own and called once per array: XLA:CPU has a
#: fast kernel for a transpose whose operand is a parameter (about 0.2 ns an element), but a
#: transpose fused with anything else (the arithmetic before it, or the other arrays' transposes in
#: one call) runs as an element loop ten times slower (measured at 4,096 lanes: 2.0 against 0.2 ms
#: for ``[192, 4096]`` int32; 5.9 against 1.6 ms for all the arrays in one call). Byte-sized arrays
#: transpose slowly either way, so the slot states travel as int16.
_move_lanes_first = jax.jit(lambda x: jnp.moveaxis(x, -1, 0))


#: per static shape, where each result array lies in the packed arrays of :func:`pack_minor`
#: (recorded when the loop is traced; the same for every chunk of the shape)
PACK_LAYOUT: dict[EngineShape, tuple] = {}


def _lane_first_field(name: str) -> bool:
    return name in State.LANE_MAJOR or name.startswith("gm_bank")


#: the layout group of a lanes-last array returned on its own (:func:`pack_minor` with
#: ``pack=False``)
MINOR = "minor"


def pack_minor(arrays: dict[str, jax.Array], pack: bool = True) -> tuple[dict[str, jax.Array], tuple]:
    """The lanes-last result arrays (:func:`batch_minor`) as one ``[K, B]`` array per element type
    (``packed_int32``, ``packed_int16``, ...: each array's elements as rows, arrays one after
    another) and the layout :func:`unpack_lanes` reads them back with; the lane-major fields stay
    as they are. The host takes the packed arrays as they are: nothing is transposed.

    ``pack=False`` (the CPU, where a host array is a view of the device's buffer, no copy): every
    array comes back on its own, lanes last (layout group :data:`MINOR`), so the loop's final
    arrays are the results and nothing is copied into packed arrays (measured at 4,096 lanes of
    the sample protocol on a 2-core AMD EPYC with AVX-512: 12.8 against 14.1 ms for the loop and
    its read-back, best of 50 alternating calls). On an accelerator one copy per element type
    costs less than a transfer per array."""
    out: dict[str, jax.Array] = {}
    rows: dict[str, list[jax.Array]] = {}
    layout = []
    for k, v in arrays.items():
        if _lane_first_field(k):
            out[k] = v
            layout.append((k, None, 0, 0, ()))
            continue
        if not pack:
            out[k] = v
            layout.append((k, MINOR, 0, 0, tuple(v.shape[:-1])))
            continue
        group = np.dtype(v.dtype).name
        lo = sum(x.shape[0] for x in rows.get(group, []))
        size = int(np.prod(v.shape[:-1], dtype=np.int64))
        rows.setdefault(group, []).append(v.reshape(size, v.shape[-1]))
        layout.append((k, group, lo, lo + size, tuple(v.shape[:-1])))
    for group, parts in rows.items():
        out[f"packed_{group}"] = jnp.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
    return out, tuple(layout)


def _lanes_last(layout: tuple) -> set[str]:
    """The host arrays of a layout whose last axis is the lanes (packed or :data:`MINOR`)."""
    out = set()
    for k, group, *_ in layout:
        if group == MINOR:
            out.add(k)
        elif group is not None:
            out.add(f"packed_{group}")
    return out


def unpack_lanes(host: dict[str, np.ndarray], layout: tuple) -> dict[str, np.ndarray]:
    """Host arrays of :func:`pack_minor` (packed ones ``[K, B]``, lanes last) -> the result arrays
    ``[B, ...]`` by name: views of the packed arrays with the lane axis first (numpy strides; no
    copy, no transpose)."""
    out = {}
    for k, group, lo, hi, dims in layout:
        if group is None:
            out[k] = host[k]
        elif group == MINOR:
            out[k] = np.moveaxis(host[k], -1, 0)
        else:
            x = host[f"packed_{group}"].T
            out[k] = x[:, lo:hi].reshape(x.shape[0], *dims)
    return out


class Chunk(NamedTuple):
    """One chunk's final arrays on the host: :func:`pack_minor`'s arrays (packed and
    :data:`MINOR` ones lanes last, the rest lanes first) and their layout."""

    arrays: dict[str, np.ndarray]
    layout: tuple

    def lanes(self, n: int) -> Chunk:
        """The chunk's first ``n`` lanes (its real ones)."""
        last = _lanes_last(self.layout)
        return Chunk({k: v[..., :n] if k in last else v[:n] for k, v in self.arrays.items()}, self.layout)

    def unpacked(self) -> dict[str, np.ndarray]:
        return unpack_lanes(self.arrays, self.layout)


def _lanes_first(arrays: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """``arrays`` (:func:`batch_minor`) with the lane axis first."""
    return {k: (v if _lane_first_field(k) else _move_lanes_first(v)) for k, v in arrays.items()}


def gm_host(shape: EngineShape, tab: Tables, arrays: dict[str, np.ndarray], real: int) -> dict[str, np.ndarray]:
    """Host result arrays with the final GM as bytes ``gm`` ``[B, real] uint8`` (``real``: the
    programs' GM size, :attr:`ascend_jax.gm.GlobalMemory.size`): with typed banks, from the
    written banks (``gm_bank0`` ...) and the read-only ones (``tab``, numpy, the same lanes); as
    bytes, the engine's cut to ``real``. Each timed quantity's two float32
    words (``name``, ``name_lo``) become one float64 array ``name`` (cycles, exact)."""
    if any(k.endswith("_lo") for k in arrays):
        words = {k[:-3] for k in arrays if k.endswith("_lo") and k[:-3] in arrays}
        arrays = {
            k: clock.to_float((v, arrays[f"{k}_lo"])) if k in words else v
            for k, v in arrays.items()
            if not (k.endswith("_lo") and k[:-3] in words)
        }
    if shape.banks is None:
        return {**arrays, "gm": arrays["gm"][:, :real]} if "gm" in arrays else arrays
    out = {k: v for k, v in arrays.items() if not k.startswith("gm_bank")}
    rw = [np.asarray(arrays[f"gm_bank{i}"]) for i in range(len(shape.banks.rw))]
    ro = [np.asarray(x) for x in read_only(shape, tab)]
    out["gm"] = host_image(shape.banks, ro, rw, np.asarray(tab.gm_tensors), len(arrays["status"]), real)
    return out


def lane_major(shape: EngineShape, st: State) -> dict[str, jax.Array]:
    """The final state as one flat dict of lane-major arrays ``[B, ...]`` (the :class:`BatchResult`
    arrays; see :func:`batch_minor`). The transposes run on the device: numpy transposes of the
    receive log cost more than the loop."""
    return _lanes_first(batch_minor(shape, st))


class Join:
    """The batch's result arrays, filled as each chunk is read back (:meth:`add`, from any thread):
    a chunk's arrays are copied into its lanes of batch-sized arrays allocated at the first
    chunk (:func:`_carve`), so that the copies run beside the chunks still running
    (:mod:`ascend_jax.workers`) instead of after the last one (measured: joining two chunks of
    2,048 lanes of the sample protocol after both had run took about 4 ms, a quarter of
    ``simulate()``). :meth:`result` gives the batch's arrays lanes first."""

    def __init__(self, n: int):
        self.n = n
        self._lock = threading.Lock()
        self._parts: dict[int, Chunk] = {}
        self._whole: dict[str, np.ndarray] | None = None
        self._layout: tuple | None = None
        self._mixed = False  # a chunk of another layout (run again with the whole log) came

    def add(self, lo: int, part: Chunk) -> None:
        """Chunk ``part`` (cut to its real lanes), whose first lane is the batch's lane ``lo``."""
        last = _lanes_last(part.layout)
        some = next(iter(part.arrays))
        m = part.arrays[some].shape[-1 if some in last else 0]
        with self._lock:
            self._parts[lo] = part
            if m == self.n:  # the whole batch in one chunk: its arrays are the result
                return
            if self._whole is None:
                self._layout = part.layout
                self._whole = _carve(
                    {
                        k: ((*v.shape[:-1], self.n) if k in last else (self.n, *v.shape[1:]), v.dtype)
                        for k, v in part.arrays.items()
                    }
                )
            if part.layout != self._layout:
                self._mixed = True
                return
            whole = self._whole
        for k, v in part.arrays.items():  # outside the lock: numpy copies without the GIL
            if k in last:
                whole[k][..., lo : lo + m] = v
            else:
                whole[k][lo : lo + m] = v

    def result(self) -> dict[str, np.ndarray]:
        """One dict of ``[n, ...]`` arrays, once every chunk was added: viewed lanes first
        (:func:`unpack_lanes`), the receive log keeping only the entries some lane filled (``R``
        becomes the largest ``recv_count``: its capacity is a power-of-two bucket, mostly empty)."""
        parts = [self._parts[lo] for lo in sorted(self._parts)]
        if self._mixed:
            return _join_logs(parts, self.n)
        arrays, layout = (parts[0].arrays, parts[0].layout) if self._whole is None else (self._whole, self._layout)
        out = unpack_lanes(arrays, layout)
        used = int(out["recv_count"].max(initial=0))
        out["recv_ver"] = out["recv_ver"][..., :used]
        return out


def _carve(specs: dict[str, tuple[tuple[int, ...], np.dtype]]) -> dict[str, np.ndarray]:
    """Empty arrays of the given shapes and types, cut from one buffer of :mod:`.hostmem` (whose
    pages a previous result may have mapped already), each at a 64-byte boundary."""
    offsets, total = {}, 0
    for k, (shape, dtype) in specs.items():
        offsets[k] = total
        total += -(-int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize // 64) * 64
    buf = lease(total)
    out = {}
    for k, (shape, dtype) in specs.items():
        n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        out[k] = buf[offsets[k] : offsets[k] + n].view(dtype).reshape(shape)
    return out


def _join_logs(chunks: list[Chunk], n: int) -> dict[str, np.ndarray]:
    """:meth:`Join.result` for chunks of two layouts: some chunk was run again with the whole
    receive log (``EngineShape.whole_log``), so its log is longer. Each chunk is viewed lanes
    first and copied into ``[n, ...]`` arrays, the log as long as the longest ``recv_count``."""
    parts = [c.unpacked() for c in chunks]
    used = max(int(p["recv_count"].max(initial=0)) for p in parts)
    out = {}
    for k, first in parts[0].items():
        dims = (*first.shape[1:-1], used) if k == "recv_ver" else first.shape[1:]
        # the log's entries past a shorter chunk's own stay 0, as in a chunk run with the whole log
        whole = (np.zeros if k == "recv_ver" else np.empty)((n, *dims), first.dtype)
        lo = 0
        for p in parts:
            if k == "recv_ver":
                part = p[k][..., :used]
                whole[lo : lo + len(part), ..., : part.shape[-1]] = part
            else:
                part = p[k]
                whole[lo : lo + len(part)] = part
            lo += len(part)
        out[k] = whole
    return out

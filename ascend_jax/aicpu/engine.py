"""The batched JAX engine of task programs: the control pass once per task structure, the data of
every lane at once.

Lanes whose programs share a task structure (queues, tasks, notifies, allocations, cost parameters,
timeouts, kernel launches: everything but the bytes in device memory) take the same steps at the
same simulated times, because no task branches on data. So a batch is split into *groups* of equal
structure; each group runs one :class:`~ascend_jax.aicpu.schedule.ControlPass` (the step semantics
of :mod:`ascend_jax.aicpu.reference`, in plain Python, once per group), and the copies and
reductions it executed are applied to the memory of all the group's lanes by one jit-compiled
function: memory is a ``[lanes, R * M / w]`` array of ``w``-byte words (lanes are an array axis, no
``vmap``, and each lane's memory is one row, as the programs hold it), each step reads the memory as
it was at the start of the step and writes each task's window in place, in queue order. Repeated
blocks of steps (the rounds of a ring) run as one loop over a table of their offsets. The compiled
function is cached per (schedule, lane bucket, memory size), so a second batch of the same
structure compiles nothing.

Kernels run in Python when the control pass reaches them (the device model), over the memory of
the group's first lane as it is at that simulated time; the device model records which bytes the
kernels read, and lanes whose bytes there differ leave the group with a copy of its control state
and run their own kernels (so a kernel that reads data never sees another lane's bytes).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import operator
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ascend_jax import workers
from ascend_jax.aicpu.codes import numpy_dtype
from ascend_jax.aicpu.device import DeviceModel
from ascend_jax.aicpu.reduce import reduce_bytes, reduce_elements
from ascend_jax.aicpu.result import CommResult, CommStatus, hang_report
from ascend_jax.aicpu.schedule import ControlPass, DataStep
from ascend_jax.aicpu.tasks import TASK_FIELDS, TASK_TIMES, TaskProgram
from ascend_jax.buckets import bucket

#: How many times a data schedule was traced (compiled), per process.
TRACES = {"count": 0}
#: Default lanes per compiled call: the largest power of two whose memory is at most this many bytes
#: (the data steps are memory-bound; a chunk that fits the caches runs several times faster per lane;
#: on a 2-core AMD EPYC with 1 MiB of L2 per core, 8-rank allreduces of 1,024 lanes, best of 8
#: alternating calls, two runs: 32 KiB per rank 0.62 / 0.75 s with 4 MiB chunks against 0.70 / 0.82
#: with 8 MiB; 4 KiB per rank 0.18 / 0.14 against 0.18 / 0.16 s).
CHUNK_BYTES = 4 << 20


_TASK = operator.attrgetter(*TASK_FIELDS, *TASK_TIMES)
_LAUNCH = operator.attrgetter("rank", "queue", "name", "kernel_so", "function_name", "fn", "param", "param_dtype",
                              "timeout_s")  # fmt: skip


def structure_key(program: TaskProgram) -> tuple:
    """Everything a run's control flow and its kernels' behaviour can depend on, except the bytes
    of device memory: lanes with equal keys take the same steps at the same times."""
    w = program.world
    world = None
    if w is not None:
        world = (
            w.cost,
            tuple(sorted(w.kernel_return_errors.items())),
            tuple(sorted(w.threads.items())),
            tuple((h, c.rank, c.peer, c.comm, c.protocol, tuple(c.notifies)) for h, c in sorted(w.channels.items())),
            tuple(
                (name, c.rank, c.size, c.buffer_addr, c.buffer_size, tuple(c.ctx.items()), tuple(c.channels.items()))
                for comms in w.comms
                for name, c in comms.items()
            ),
            tuple(w.notify_rank),
        )
    return (
        program.n_ranks,
        program.notify_names,
        tuple((q.name, q.rank, q.kind, tuple(q.notifies), tuple(map(_TASK, q.tasks))) for q in program.queues),
        program.allocs,
        program.max_steps,
        tuple(program.outputs.items()),
        program.wait_timeout_error,
        tuple(map(_LAUNCH, program.launches)),
        program.reduce_dtypes,
        tuple(m.size for m in program.memory),
        world,
    )


# -- the data side ---------------------------------------------------------------------------------


def _word_bytes(steps: Sequence[DataStep], row: int) -> int:
    """The widest word (4, 2 or 1 bytes) that every offset, length and rank row is a multiple of."""
    g = row
    for ops in steps:
        for op in ops:
            g = np.gcd(g, np.gcd(np.gcd(op.src_off, op.dst_off), op.nbytes))
    return 4 if g % 4 == 0 else 2 if g % 2 == 0 else 1


@functools.lru_cache(maxsize=64)
def _widths(steps: tuple[DataStep, ...], row: int) -> int:
    """:func:`_word_bytes`, once per schedule (every chunk of a group asks)."""
    return _word_bytes(steps, row)


_WORD = {4: np.uint32, 2: np.uint16, 1: np.uint8}


def _as_elements(x: jax.Array, dtype: np.dtype, w: int) -> jax.Array:
    """[B, k] words of ``w`` bytes (lanes major) -> elements of ``dtype`` (a bit cast; [B, k * w /
    size] for elements wider than a word, [B, k, w / size] for narrower ones)."""
    size = dtype.itemsize
    if size > w:
        b, k = x.shape
        x = x.reshape(b, k * w // size, size // w)
    return jax.lax.bitcast_convert_type(x, dtype)


def _as_words(v: jax.Array, w: int, k: int) -> jax.Array:
    """Inverse of :func:`_as_elements`: [B, k] words of ``w`` bytes."""
    x = jax.lax.bitcast_convert_type(v, _WORD[w])
    return x.reshape(x.shape[0], k)


def _signature(ops: DataStep, w: int) -> tuple:
    """What a step's code depends on besides its offsets: per task, whether it reduces (with its
    element type and operation) and its length in words."""
    return tuple((op.reduce, op.dtype if op.reduce else 0, op.op if op.reduce else 0, op.nbytes // w) for op in ops)


def _offsets(ops: DataStep, row: int, w: int) -> list[tuple[int, int]]:
    """Per task, the word where its source and its destination windows start."""
    return [((op.src_rank * row + op.src_off) // w, (op.dst_rank * row + op.dst_off) // w) for op in ops]


def _reduced(old: jax.Array, v: jax.Array, dtype: int, rop: int, w: int) -> jax.Array:
    """[B, k] words: ``v`` reduced into ``old`` (both [B, k] words of ``w`` bytes) as elements of
    HcclDataType ``dtype`` with HcclReduceOp ``rop``."""
    dt = numpy_dtype(dtype)
    return _as_words(reduce_elements(jnp, _as_elements(old, dt, w), _as_elements(v, dt, w), rop), w, v.shape[1])


def _values(sig: tuple, w: int, at: jax.Array, mem: jax.Array) -> list[jax.Array]:
    """What each task of a step writes, [B, k] words each: its source window, reduced into its
    destination window for a reduce, both read as the step found the memory. ``at`` [T, 2]: the
    windows' first words (:func:`_offsets`)."""
    out = []
    for j, (reduce, dtype, rop, k) in enumerate(sig):
        v = jax.lax.dynamic_slice_in_dim(mem, at[j, 0], k, axis=1)
        if reduce:
            v = _reduced(jax.lax.dynamic_slice_in_dim(mem, at[j, 1], k, axis=1), v, dtype, rop, w)
        out.append(v)
    return out


def _step(sig: tuple, w: int, go: jax.Array, at: jax.Array, mem: jax.Array) -> jax.Array:
    """One data step on [B, W] words: every task's value from the memory as the step found it,
    then each written in place, in queue order (a word written twice keeps the later value).

    The values are computed in the taken branch of a ``lax.cond`` on ``go`` (a traced True), so
    XLA makes them buffers of their own. Fused into the in-place writes instead, a read of a window
    another write of the step changes makes XLA copy the whole memory first (measured: 30 whole
    copies for the 30 steps of a 32 KiB allreduce, about 60x slower); an optimization barrier does
    not stop it, as XLA:CPU removes barriers before fusing."""
    values = jax.lax.cond(
        go,
        functools.partial(_values, sig, w),
        lambda at, m: [jnp.zeros((m.shape[0], k), m.dtype) for *_, k in sig],
        at,
        mem,
    )
    for j, v in enumerate(values):
        mem = jax.lax.dynamic_update_slice_in_dim(mem, v, at[j, 1], axis=1)
    return mem


def _step_windows(sig: tuple, w: int, at: jax.Array, mem: jax.Array) -> jax.Array:
    """:func:`_step` for a step whose tasks all move ``k`` words to destinations that do not overlap:
    one gather of every source window (and one of the reduce destinations) as ``[T, B, k]``, one
    scatter of every written window. Same values as :func:`_step`, in a fraction of its kernels
    (the compile of a 32 KiB ring allreduce's steps: 0.6 against 1.5 s; run time the same)."""
    b, k = mem.shape[0], sig[0][3]
    dims = jax.lax.GatherDimensionNumbers(offset_dims=(1, 2), collapsed_slice_dims=(), start_index_map=(1,))
    src = jax.lax.gather(mem, at[:, :1], dims, (b, k), mode="promise_in_bounds")
    old = jax.lax.gather(mem, at[:, 1:], dims, (b, k), mode="promise_in_bounds") if any(s[0] for s in sig) else None
    values = [
        _reduced(old[j], src[j], dtype, rop, w) if reduce else src[j] for j, (reduce, dtype, rop, _) in enumerate(sig)
    ]
    dims = jax.lax.ScatterDimensionNumbers(
        update_window_dims=(1, 2), inserted_window_dims=(), scatter_dims_to_operand_dims=(1,)
    )
    return jax.lax.scatter(mem, at[:, 1:], jnp.stack(values), dims, unique_indices=True, mode="promise_in_bounds")


def _disjoint(sig: tuple, tables: np.ndarray) -> bool:
    """Whether every task of the step moves the same number of words and, in every row of
    ``tables`` ([repeats, T, 2] offsets), no two destination windows overlap (a scatter of them then
    needs no order)."""
    k = sig[0][3]
    if any(s[3] != k for s in sig):
        return False
    dst = np.sort(tables[:, :, 1], axis=1)
    return bool((np.diff(dst, axis=1) >= k).all())


#: the longest block of steps :func:`_blocks` looks for repeats of (a ring round of a reduce-scatter
#: is two steps: the copy into the peer's buffer, then the reduce)
MAX_PERIOD = 4


def _blocks(sigs: list[tuple]) -> list[tuple[int, int, int]]:
    """``sigs`` (one :func:`_signature` per step) cut into ``(first, period, repeats)``: a block of
    ``period`` steps that the next steps repeat, signature by signature, ``repeats`` times in all
    (the most steps covered wins; 1 x 1 when nothing repeats)."""
    out, i = [], 0
    while i < len(sigs):
        best = (1, 1)
        for p in range(1, MAX_PERIOD + 1):
            r = 1
            while sigs[i + r * p : i + (r + 1) * p] == sigs[i : i + p] and i + (r + 1) * p <= len(sigs):
                r += 1
            if r > 1 and r * p > best[0] * best[1]:
                best = (p, r)
        out.append((i, *best))
        i += best[0] * best[1]
    return out


def _apply(steps: tuple[DataStep, ...], row: int, w: int, mem: jax.Array, go: jax.Array) -> jax.Array:
    """Applies the data steps to [B, R * row / w] words (lanes major, each lane's memory as the
    programs hold it); ``go`` is a traced True. Repeated blocks of steps of one signature (the
    rounds of a ring: :func:`_blocks`) run as one loop over a table of their offsets, so the
    compiled code grows with the kinds of step, not with their number."""
    TRACES["count"] += 1
    steps = [tuple(op for op in ops if op.nbytes // w) for ops in steps]
    steps = [ops for ops in steps if ops]
    sigs = [_signature(ops, w) for ops in steps]
    for first, period, repeats in _blocks(sigs):
        block = steps[first : first + period * repeats]
        tables = [np.array([_offsets(ops, row, w) for ops in block[k::period]], np.int32) for k in range(period)]
        kinds = [
            functools.partial(_step_windows, sig, w) if _disjoint(sig, t) else functools.partial(_step, sig, w, go)
            for sig, t in zip(sigs[first : first + period], tables, strict=True)
        ]
        tables = [jnp.asarray(t) for t in tables]

        def body(n, m, tables=tables, kinds=kinds):
            for table, step in zip(tables, kinds, strict=True):
                m = step(table[n], m)
            return m

        mem = body(0, mem) if repeats == 1 else jax.lax.fori_loop(0, repeats, body, mem)
    return mem


@functools.lru_cache(maxsize=256)  # a sweep compiles one schedule per size: keep the recent ones
def _compiled(steps: tuple[DataStep, ...], row: int, w: int, jit: bool):
    fn = functools.partial(_apply, steps, row, w)
    return jax.jit(fn, donate_argnums=0) if jit else fn


def apply_steps(
    steps: list[DataStep] | tuple[DataStep, ...], mem: np.ndarray, row: int, chunk: int, jit: bool = True
) -> np.ndarray:
    """The data steps applied to the memory of every lane.

    Args:
      steps: the steps in order (each a tuple of :class:`~ascend_jax.aicpu.schedule.DataOp`).
      mem: [B, R * row] uint8, every lane's device memory (rank r at ``r * row``).
      row: bytes per rank (a multiple of 4).
      chunk: lanes per compiled call (the last call is padded to a power of two).
    Returns:
      [B, R * row] uint8, the memory after the steps.
    """
    if not steps:
        return mem
    steps = tuple(steps)
    w = _widths(steps, row)
    fn = _compiled(steps, row, w, jit)
    words = np.ascontiguousarray(mem).view(_WORD[w])
    out = np.empty_like(words)
    n = words.shape[0]
    for lo in range(0, n, chunk):
        part = words[lo : lo + chunk]
        k = part.shape[0]
        size = chunk if k == chunk else bucket(k)
        if size != k:
            part = np.concatenate([part, np.repeat(part[-1:], size - k, axis=0)])
        part = jax.device_put(part)  # [lanes, W] (jnp.asarray stages a copy: slower)
        if jit:
            done = fn(part, np.True_)
        else:
            with jax.disable_jit():
                done = fn(part, np.True_)
        out[lo : lo + k] = np.asarray(done)[:k]
    return out.view(np.uint8)


# -- groups ----------------------------------------------------------------------------------------


def replay_lane(steps: Sequence[DataStep], memory: list[np.ndarray]) -> None:
    """The data steps applied in place to one lane's memory (per rank, uint8) with numpy: what the
    group's first lane holds when a kernel reads it (the batch gets the same steps compiled)."""
    for ops in steps:
        values = []
        for op in ops:  # the memory as the step found it
            v = memory[op.src_rank][op.src_off : op.src_off + op.nbytes].copy()
            if op.reduce:
                v = reduce_bytes(memory[op.dst_rank][op.dst_off : op.dst_off + op.nbytes].copy(), v, op.dtype, op.op)
            values.append(v)
        for op, v in zip(ops, values, strict=True):  # written in queue order
            memory[op.dst_rank][op.dst_off : op.dst_off + op.nbytes] = v


@dataclasses.dataclass
class _Segment:
    """Data steps up to a pause (or the end), and at a pause what the kernels read: ``reads`` as
    ``(rank, offset, bytes)``, ``seen`` the first lane's bytes there, ``before`` the control state
    before the kernels ran (for lanes that read other bytes)."""

    steps: tuple[DataStep, ...]
    reads: list[tuple[int, int, int]] = dataclasses.field(default_factory=list)
    seen: np.ndarray | None = None
    before: ControlPass | None = None


@dataclasses.dataclass
class _Group:
    """Lanes (indices into the batch) that share a control pass, and their memory at its current
    point ([B, R * row] uint8; None: the programs' initial memory)."""

    lanes: np.ndarray
    control: ControlPass
    mem: np.ndarray | None = None


def _clone(ctl: ControlPass) -> ControlPass:
    """A deep copy of a control pass (its program's queues and its device model), sharing the world
    and the initial memory, which runs never change."""
    return copy.deepcopy(ctl, {id(ctl.p.world): ctl.p.world, id(ctl.p.memory): ctl.p.memory})


def _control(group: _Group, first: list[np.ndarray]) -> list[_Segment]:
    """Runs the group's control pass to its end over its first lane's memory ``first`` (per rank,
    changed in place): kernels run where they are reached, and every pause ends a segment."""
    ctl = group.control
    segments = []
    while True:
        pause = ctl.advance()
        seg = _Segment(tuple(ctl.take_steps()))
        segments.append(seg)
        replay_lane(seg.steps, first)
        if pause is None:
            return segments
        seg.before = _clone(ctl) if len(group.lanes) > 1 else None
        ctl.model.reads.clear()
        for at, q in pause.kernels:  # queue order, over the first lane's memory as it is now
            ctl.model.run_kernel(ctl.p.queues[q].tasks[ctl.pc[q]], at, first)
        ctl.reopen()
        seg.reads = list(ctl.model.reads)
        if seg.reads and seg.before is not None:
            seg.seen = np.concatenate([first[r][lo : lo + n] for r, lo, n in seg.reads])


def _initial_memory(programs: Sequence[TaskProgram], row: int) -> np.ndarray:
    """[B, R * row] uint8: every lane's initial memory, rank r at ``r * row``."""
    ranks = programs[0].n_ranks
    mem = np.zeros((len(programs), ranks * row), np.uint8)
    for i, p in enumerate(programs):
        for r, m in enumerate(p.memory):
            mem[i, r * row : r * row + m.size] = m
    return mem


class _Outcome:
    """The control outcome a group's lanes share (read-only arrays)."""

    def __init__(self, ctl: ControlPass):
        def frozen(a: np.ndarray) -> np.ndarray:
            a.flags.writeable = False
            return a

        self.ctl = ctl
        self.qstatus = frozen(np.array(ctl.qstatus, np.int64))
        self.qerror = frozen(np.array(ctl.qerror, np.int64))
        self.pc = frozen(np.array(ctl.pc, np.int64))
        self.clock = frozen(np.array(ctl.clock, np.float32))
        self.lost = frozen(np.array(ctl.lost, np.int64))
        self.flags = frozen(np.array(ctl.flag, bool))
        self.start, self.end = (frozen(a) for a in ctl.timeline())
        self.filled: set[int] = set()  # worlds whose stream syncs this outcome has set

    def result(self, program: TaskProgram, mem: np.ndarray, row: int) -> CommResult:
        """Lane ``program``'s result: its own world and memory, the group's tasks and outcome."""
        ctl = self.ctl
        ran = object.__new__(type(program))  # the lane's fields with the group's tasks (all checked already)
        ran.__dict__.update(program.__dict__, queues=ctl.p.queues, launches=ctl.p.launches)
        result = CommResult(
            program=ran,
            status=ctl.status,
            steps=ctl.steps,
            queue_status=self.qstatus,
            queue_error=self.qerror,
            queue_pc=self.pc,
            clock=self.clock,
            lost=self.lost,
            memory=[mem[r * row : r * row + m.size] for r, m in enumerate(program.memory)],
            start=self.start,
            end=self.end,
            flags=self.flags,
            hang=hang_report(ran, self.qstatus, self.pc) if ctl.status == CommStatus.HANG else [],
            device_calls=list(ctl.model.calls),
            kernel_log=list(ctl.model.log),
        )
        if id(program.world) not in self.filled:  # lanes of one world get the same codes: set them once
            result.fill_syncs()
            self.filled.add(id(program.world))
        return result


def _run_group(
    group: _Group, programs: Sequence[TaskProgram], row: int, chunk: int, jit: bool, pending: list[_Group]
) -> list[tuple[int, CommResult]]:
    """Runs a group: its control pass once, then its lanes' data chunk by chunk (each chunk from its
    initial memory to its results while it is in the caches). Lanes whose bytes differ from the
    first lane's where a kernel read them go to ``pending`` as new groups, stopped at that pause."""
    lead = programs[int(group.lanes[0])]
    if group.mem is None:
        first = [m.copy() for m in lead.memory]
    else:
        first = [group.mem[0, r * row : r * row + m.size].copy() for r, m in enumerate(lead.memory)]
    segments = _control(group, first)
    outcome = _Outcome(group.control)

    def one(lo: int) -> tuple[list, dict]:
        """One chunk of the group's lanes: its results, and the lanes that went apart by pause."""
        lanes = group.lanes[lo : lo + chunk]
        start = group.mem[lo : lo + chunk] if group.mem is not None else None
        mem = _initial_memory([programs[int(i)] for i in lanes], row) if start is None else start
        apart: dict[tuple[int, bytes], list[tuple[int, np.ndarray]]] = {}
        for k, seg in enumerate(segments):
            mem = apply_steps(seg.steps, mem, row, chunk, jit)
            if seg.seen is None:
                continue
            cols = np.concatenate([np.arange(r * row + a, r * row + a + n) for r, a, n in seg.reads])
            seen = mem[:, cols]
            differ = (seen != seg.seen).any(axis=1)
            for j in np.flatnonzero(differ):
                apart.setdefault((k, seen[j].tobytes()), []).append((int(lanes[j]), mem[j]))
            if differ.any():
                lanes, mem = lanes[~differ], mem[~differ]
        return [(int(i), outcome.result(programs[int(i)], mem[j], row)) for j, i in enumerate(lanes)], apart

    # on a CPU, chunks run at once from one thread each (ascend_jax.workers); the first one here,
    # which compiles the group's data schedules
    n_chunks = -(-len(group.lanes) // chunk)
    n_workers = workers.count(n_chunks, None, cpu_backend=jit and jax.default_backend() == "cpu")
    out: list[tuple[int, CommResult]] = []
    apart: dict[tuple[int, bytes], list[tuple[int, np.ndarray]]] = {}
    for part, part_apart in workers.run(one, lambda r: r, range(0, len(group.lanes), chunk), n_workers):
        out += part
        for key, rows in part_apart.items():  # in chunk order, as one pass over the lanes would add them
            apart.setdefault(key, []).extend(rows)
    for (k, _), rows in apart.items():
        lanes = np.array([i for i, _ in rows])
        pending.append(_Group(lanes, _clone(segments[k].before), np.stack([m for _, m in rows])))
    return out


def run_comm_batch(
    programs: Sequence[TaskProgram], *, max_steps: int | None = None, chunk: int | None = None, jit: bool = True
) -> list[CommResult]:
    """Runs programs as lanes; each lane's result equals its own reference run.

    Args:
      programs: task programs (lanes of equal structure share one control pass and one compiled
        data schedule; see :func:`structure_key`; lanes made with
        :meth:`~ascend_jax.aicpu.tasks.TaskProgram.with_memory` of one program are grouped without
        comparing their tasks).
      max_steps: overrides every program's step bound.
      chunk: lanes per compiled call (default: the largest power of two whose memory fits in :data:`CHUNK_BYTES`).
      jit: False runs the same data steps eagerly (for debugging).
    """
    if not programs:
        return []
    programs = list(programs)
    if max_steps is not None:
        programs = [dataclasses.replace(p, max_steps=max_steps) for p in programs]
    by_key: dict[tuple, list[int]] = {}
    known: dict[tuple, tuple] = {}  # lanes that share their task graph's objects share its key
    for i, p in enumerate(programs):
        ident = (id(p.queues), id(p.world), id(p.launches), id(p.allocs), id(p.notify_names), id(p.outputs),
                 p.max_steps, p.wait_timeout_error, p.reduce_dtypes, tuple(m.size for m in p.memory))  # fmt: skip
        key = known.get(ident)
        if key is None:
            key = known[ident] = structure_key(p)
        by_key.setdefault(key, []).append(i)
    results: list[CommResult | None] = [None] * len(programs)
    for lanes in by_key.values():
        fork = programs[lanes[0]].fork()
        row = max(8, max(m.size for m in fork.memory))
        row += -row % 4
        fit = max(1, CHUNK_BYTES // (fork.n_ranks * row))
        size = max(1, int(chunk or 1 << (fit.bit_length() - 1)))  # a power of two that fits, not above
        pending = [_Group(np.array(lanes), ControlPass(fork, DeviceModel(fork), fork.max_steps))]
        while pending:
            for i, r in _run_group(pending.pop(), programs, row, size, jit, pending):
                results[i] = r
    return results  # type: ignore[return-value]


def run_comm(program: TaskProgram, *, jit: bool = True, max_steps: int | None = None) -> CommResult:
    """Runs one task program in the JAX engine (``jit=False``: the same data steps, eagerly)."""
    return run_comm_batch([program], max_steps=max_steps, jit=jit)[0]


__all__ = ["TRACES", "apply_steps", "replay_lane", "run_comm", "run_comm_batch", "structure_key"]

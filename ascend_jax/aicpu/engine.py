"""The batched JAX engine of task programs: the control pass once per task structure, the data of
every lane at once.

Lanes whose programs share a task structure (queues, tasks, notifies, allocations, cost parameters,
timeouts, kernel launches: everything but the bytes in device memory) take the same steps at the
same simulated times, because no task branches on data. So a batch is split into *groups* of equal
structure; each group runs one :class:`~ascend_jax.aicpu.schedule.ControlPass` (the step semantics
of :mod:`ascend_jax.aicpu.reference`, in plain Python, once per group), and the copies and
reductions it executed are applied to the memory of all the group's lanes by one jit-compiled
function: memory is a ``[lanes, R * M / w]`` array of ``w``-byte words (lanes are an array axis, no
``vmap``), each step reads the memory as it was at the start of the step and writes each task's
window in queue order, with every offset a trace-time constant. The compiled function is cached per
(schedule, lane bucket, memory size), so a second batch of the same structure compiles nothing.

Kernels run in Python when the control pass reaches them (the device model), over the memory of
the group's first lane as it is at that simulated time; the device model records which bytes the
kernels read, and lanes whose bytes there differ leave the group with a copy of its control state
and run their own kernels (so a kernel that reads data never sees another lane's bytes).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ascend_jax.aicpu.codes import numpy_dtype
from ascend_jax.aicpu.device import DeviceModel
from ascend_jax.aicpu.reduce import reduce_elements
from ascend_jax.aicpu.result import CommResult, CommStatus, hang_report
from ascend_jax.aicpu.schedule import ControlPass, DataStep
from ascend_jax.aicpu.tasks import TASK_FIELDS, TASK_TIMES, TaskProgram

#: How many times a data schedule was traced (compiled), per process.
TRACES = {"count": 0}
#: Default lanes per compiled call: chosen so a chunk's memory stays near this many bytes (the data
#: steps are memory-bound; a chunk that fits the caches runs several times faster per lane).
CHUNK_BYTES = 8 << 20


def _bucket(n: int) -> int:
    """The power of two >= n: lane counts share compilations."""
    return 1 << max(0, n - 1).bit_length()


def structure_key(program: TaskProgram) -> tuple:
    """Everything a run's control flow and its kernels' behaviour can depend on, except the bytes
    of device memory: lanes with equal keys take the same steps at the same times."""
    w = program.world
    queues = tuple(
        (
            q.name,
            q.rank,
            q.kind,
            tuple(q.notifies),
            tuple(tuple(getattr(t, f) for f in TASK_FIELDS + TASK_TIMES) for t in q.tasks),
        )
        for q in program.queues
    )
    launches = tuple(
        (
            ln.rank,
            ln.queue,
            ln.name,
            ln.kernel_so,
            ln.function_name,
            id(ln.fn),
            ln.param,
            ln.param_dtype,
            ln.timeout_s,
        )
        for ln in program.launches
    )
    world = (
        None
        if w is None
        else repr(
            (
                w.cost,
                sorted(w.kernel_return_errors.items()),
                sorted(w.threads.items()),
                sorted(w.channels.items()),
                w.comms,
                w.notify_rank,
            )
        )
    )
    return (
        program.n_ranks,
        program.notify_names,
        queues,
        program.allocs,
        program.max_steps,
        tuple(sorted(program.outputs.items())),
        program.wait_timeout_error,
        launches,
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


_WORD = {4: np.uint32, 2: np.uint16, 1: np.uint8}


def _as_elements(x: jax.Array, dtype: np.dtype, w: int) -> jax.Array:
    """[k, B] words of ``w`` bytes (lanes minor) -> elements of ``dtype`` (a bit cast; [k * w / size,
    B] for elements wider than a word, [k, B, w / size] for narrower ones)."""
    size = dtype.itemsize
    if size > w:
        k, b = x.shape
        x = x.reshape(k * w // size, size // w, b).transpose(0, 2, 1)
    return jax.lax.bitcast_convert_type(x, dtype)


def _as_words(v: jax.Array, w: int, k: int) -> jax.Array:
    """Inverse of :func:`_as_elements`: [k, B] words of ``w`` bytes."""
    x = jax.lax.bitcast_convert_type(v, _WORD[w])
    if x.ndim == 3 and np.dtype(v.dtype).itemsize > w:  # [k * w / size, B, size / w]
        x = x.transpose(0, 2, 1)
    return x.reshape(k, -1)


def _rows(rank: int, off: int, nbytes: int, row: int, w: int) -> np.ndarray:
    first = (rank * row + off) // w
    return np.arange(first, first + nbytes // w)


def _step(ops: DataStep, row: int, w: int, mem: jax.Array) -> jax.Array:
    """One data step on [W, B] words: one gather of every source row, one of the reduce
    destinations, one reduction per (dtype, op), one scatter of every destination row."""
    copies = [op for op in ops if not op.reduce]
    kinds: dict[tuple[int, int], list] = {}
    for op in ops:
        if op.reduce:
            kinds.setdefault((op.dtype, op.op), []).append(op)
    order = copies + [op for group in kinds.values() for op in group]
    src = np.concatenate([_rows(op.src_rank, op.src_off, op.nbytes, row, w) for op in order])
    dst = np.concatenate([_rows(op.dst_rank, op.dst_off, op.nbytes, row, w) for op in order])
    values = mem[src]  # [K, B]: the memory as the step found it
    n_copy = sum(op.nbytes // w for op in copies)
    parts = [values[:n_copy]] if n_copy else []
    if kinds:
        old = mem[dst[n_copy:]]
        at = n_copy
        for (dtype, rop), group in kinds.items():
            k = sum(op.nbytes // w for op in group)
            dt = numpy_dtype(dtype)
            a = _as_elements(old[at - n_copy : at - n_copy + k], dt, w)
            b = _as_elements(values[at : at + k], dt, w)
            parts.append(_as_words(reduce_elements(jnp, a, b, rop), w, k))
            at += k
    new = jnp.concatenate(parts) if len(parts) > 1 else parts[0]
    # a row written by several tasks of the step keeps the last one's value (queue order)
    rank_in_queue = np.concatenate([np.full(op.nbytes // w, ops.index(op)) for op in order])
    last = {}
    for i in np.lexsort((np.arange(len(dst)), rank_in_queue)):
        last[int(dst[i])] = i
    keep = np.array(sorted(last.values()))
    if keep.size != dst.size:
        new, dst = new[keep], dst[keep]
    return mem.at[dst].set(new, unique_indices=True, mode="promise_in_bounds")


def _apply(steps: tuple[DataStep, ...], row: int, w: int, mem: jax.Array) -> jax.Array:
    """Applies the data steps to [R * row / w, B] words (lanes minor: a task's window is a block of
    contiguous rows); every index is a trace-time constant."""
    TRACES["count"] += 1
    for ops in steps:
        mem = _step(ops, row, w, mem)
    return mem


@functools.cache
def _compiled(steps: tuple[DataStep, ...], row: int, w: int, jit: bool):
    fn = functools.partial(_apply, steps, row, w)
    return jax.jit(fn, donate_argnums=0) if jit else fn


def apply_steps(steps: list[DataStep], mem: np.ndarray, row: int, chunk: int, jit: bool = True) -> np.ndarray:
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
    w = _word_bytes(steps, row)
    fn = _compiled(tuple(steps), row, w, jit)
    words = np.ascontiguousarray(mem).view(_WORD[w])
    out = np.empty_like(words)
    n = words.shape[0]
    for lo in range(0, n, chunk):
        part = words[lo : lo + chunk]
        k = part.shape[0]
        size = chunk if k == chunk else _bucket(k)
        if size != k:
            part = np.concatenate([part, np.repeat(part[-1:], size - k, axis=0)])
        minor = jnp.asarray(np.ascontiguousarray(part.T))  # [W, lanes]
        if jit:
            done = fn(minor)
        else:
            with jax.disable_jit():
                done = fn(minor)
        out[lo : lo + k] = np.asarray(done)[:, :k].T
    return out.view(np.uint8)


# -- groups ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Group:
    """Lanes (indices into the batch) that share a control pass, and their memory [B, R * row]."""

    lanes: np.ndarray
    control: ControlPass
    mem: np.ndarray


def _split_by_reads(group: _Group, row: int) -> list[np.ndarray]:
    """Lane positions (into the group) whose bytes at every range the kernels read differ from the
    first lane's, grouped by those bytes; the first lane's own group is left out."""
    reads = group.control.model.reads
    if len(group.lanes) == 1 or not reads:
        return []
    cols = np.concatenate([np.arange(r * row + lo, r * row + lo + n) for r, lo, n in reads])
    seen = group.mem[:, cols]
    differ = np.flatnonzero((seen != seen[0]).any(axis=1))
    if not differ.size:
        return []
    _, inverse = np.unique(seen[differ], axis=0, return_inverse=True)
    return [differ[inverse.ravel() == k] for k in range(int(inverse.max()) + 1)]


def _clone(ctl: ControlPass) -> ControlPass:
    """A deep copy of a control pass (its program's queues and its device model), sharing the world
    and the initial memory, which runs never change."""
    return copy.deepcopy(ctl, {id(ctl.p.world): ctl.p.world, id(ctl.p.memory): ctl.p.memory})


def _run_group(group: _Group, row: int, chunk: int, jit: bool, pending: list[_Group]) -> None:
    """Runs a group to its end; lanes that a kernel's reads set apart go to ``pending``."""
    ctl = group.control
    while True:
        pause = ctl.advance()
        steps = ctl.take_steps()
        if steps:
            group.mem = apply_steps(steps, group.mem, row, chunk, jit)
        if pause is None:
            return
        before = _clone(ctl) if len(group.lanes) > 1 else None
        ctl.model.reads.clear()
        first = [group.mem[0, r * row : r * row + m.size] for r, m in enumerate(ctl.p.memory)]
        for at, q in pause.kernels:  # queue order, over the first lane's memory as it is now
            ctl.model.run_kernel(ctl.p.queues[q].tasks[ctl.pc[q]], at, first)
        ctl.reopen()
        apart = _split_by_reads(group, row)
        if apart:
            keep = np.ones(len(group.lanes), bool)
            for idx in apart:
                keep[idx] = False
                pending.append(_Group(group.lanes[idx], _clone(before), group.mem[idx]))
            group.lanes, group.mem = group.lanes[keep], group.mem[keep]


def _initial_memory(programs: Sequence[TaskProgram], row: int) -> np.ndarray:
    """[B, R * row] uint8: every lane's initial memory, rank r at ``r * row``."""
    ranks = programs[0].n_ranks
    mem = np.zeros((len(programs), ranks * row), np.uint8)
    for i, p in enumerate(programs):
        for r, m in enumerate(p.memory):
            mem[i, r * row : r * row + m.size] = m
    return mem


def _result(program: TaskProgram, ctl: ControlPass, mem: np.ndarray, row: int, timeline) -> CommResult:
    """Lane ``program``'s result: its own world and memory, the group's tasks and control outcome."""
    ran = dataclasses.replace(program, queues=ctl.p.queues, launches=ctl.p.launches)
    qstatus = np.array(ctl.qstatus, np.int64)
    pc = np.array(ctl.pc, np.int64)
    result = CommResult(
        program=ran,
        status=ctl.status,
        steps=ctl.steps,
        queue_status=qstatus,
        queue_error=np.array(ctl.qerror, np.int64),
        queue_pc=pc,
        clock=np.array(ctl.clock, np.float32),
        lost=np.array(ctl.lost, np.int64),
        memory=[mem[r * row : r * row + m.size] for r, m in enumerate(program.memory)],
        start=timeline[0],
        end=timeline[1],
        flags=np.array(ctl.flag, bool),
        hang=hang_report(ran, qstatus, pc) if ctl.status == CommStatus.HANG else [],
        device_calls=list(ctl.model.calls),
        kernel_log=list(ctl.model.log),
    )
    result.fill_syncs()
    return result


def run_comm_batch(
    programs: Sequence[TaskProgram], max_steps: int | None = None, chunk: int | None = None, jit: bool = True
) -> list[CommResult]:
    """Runs programs as lanes; each lane's result equals its own reference run.

    Args:
      programs: task programs (lanes of equal structure share one control pass and one compiled
        data schedule; see :func:`structure_key`).
      max_steps: overrides every program's step bound.
      chunk: lanes per compiled call (default: as many as keep about :data:`CHUNK_BYTES` of memory).
      jit: False runs the same data steps eagerly (for debugging).
    """
    if not programs:
        return []
    programs = list(programs)
    if max_steps is not None:
        programs = [dataclasses.replace(p, max_steps=max_steps) for p in programs]
    by_key: dict[tuple, list[int]] = {}
    for i, p in enumerate(programs):
        by_key.setdefault(structure_key(p), []).append(i)
    results: list[CommResult | None] = [None] * len(programs)
    for lanes in by_key.values():
        fork = programs[lanes[0]].fork()
        row = max(8, max(m.size for m in fork.memory))
        row += -row % 4
        size = chunk or _bucket(max(1, CHUNK_BYTES // (fork.n_ranks * row)))
        first = _Group(np.array(lanes), ControlPass(fork, DeviceModel(fork), fork.max_steps), None)
        first.mem = _initial_memory([programs[i] for i in lanes], row)
        pending = [first]
        while pending:
            group = pending.pop()
            _run_group(group, row, max(1, int(size)), jit, pending)
            timeline = group.control.timeline()
            for k, i in enumerate(group.lanes):
                results[int(i)] = _result(programs[int(i)], group.control, group.mem[k], row, timeline)
    return results  # type: ignore[return-value]


def run_comm(program: TaskProgram, jit: bool = True, max_steps: int | None = None) -> CommResult:
    """Runs one task program in the JAX engine (``jit=False``: the same data steps, eagerly)."""
    return run_comm_batch([program], max_steps, jit=jit)[0]


__all__ = ["TRACES", "apply_steps", "run_comm", "run_comm_batch", "structure_key"]

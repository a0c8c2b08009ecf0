"""The JAX engine of task programs: every queue of every rank advanced by one jit-compiled step.

The program becomes fixed-shape tables (``[Q, L]`` tasks of ``Q`` queues, padded to ``L``); the
state is a pytree of arrays: per-queue program counter, status, error and clock, per-notify flag,
set time and lost-record count, ``[R, M]`` device memory of every rank, and the ``[Q, L]``
timeline. :func:`comm_step` implements the semantics documented in
:mod:`ascend_jax.aicpu.reference` with masks over queues (no Python loop over queues, no branch
per task kind); ``run_comm`` is a ``jit``-ted ``while_loop`` bounded by ``max_steps``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ascend_jax.aicpu.codes import HcclReduceOp, numpy_dtype
from ascend_jax.aicpu.reference import CommResult, CommStatus, QueueStatus, hang_report
from ascend_jax.aicpu.world import MEM_BASE, MEMORY_FAULT_ERROR, TASK_FIELDS, TaskKind, TaskProgram

F = {name: i for i, name in enumerate(TASK_FIELDS)}


def _bucket(n: int, least: int = 8) -> int:
    return max(least, 1 << max(0, n - 1).bit_length())


@dataclasses.dataclass(frozen=True)
class CommShape:
    """Static sizes: queues Q, tasks per queue L, notifies N, ranks R, memory bytes M per rank,
    the largest transfer B (bytes), allocations A per rank, and the reduce dtypes present."""

    queues: int
    tasks: int
    notifies: int
    ranks: int
    mem: int
    max_bytes: int
    allocs: int
    reduce_dtypes: tuple[int, ...]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CommTables:
    """ints [Q, L, 10] (TASK_FIELDS), timeout / duration [Q, L] float32 s, lens [Q], allocs [R, A, 2]
    (start, end; empty rows start == end), wait_timeout_error [], max_steps []."""

    ints: jax.Array
    timeout: jax.Array
    duration: jax.Array
    lens: jax.Array
    allocs: jax.Array
    wait_timeout_error: jax.Array
    max_steps: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CommState:
    """pc, qstatus, qerror [Q] int32; clock [Q] f32; flag [N] bool, flag_time [N] f32, lost [N] int32;
    mem [R, M] uint8; start, end [Q, L] f32 (NaN: not run); status, step [] int32."""

    pc: jax.Array
    qstatus: jax.Array
    qerror: jax.Array
    clock: jax.Array
    flag: jax.Array
    flag_time: jax.Array
    lost: jax.Array
    mem: jax.Array
    start: jax.Array
    end: jax.Array
    status: jax.Array
    step: jax.Array


def encode(program: TaskProgram) -> tuple[CommShape, CommTables, CommState]:
    """Tables and initial state of a program (numpy -> JAX)."""
    q_n = max(1, len(program.queues))
    l_n = _bucket(max((len(q.tasks) for q in program.queues), default=1))
    n_n = max(1, len(program.notify_names))
    r_n = program.n_ranks
    m_n = max(8, max(m.size for m in program.memory))
    b_n = _bucket(max((t.nbytes for q in program.queues for t in q.tasks), default=8))
    a_n = max(1, max(len(a) for a in program.allocs))
    dts = tuple(
        sorted({t.dtype for q in program.queues for t in q.tasks if t.kind == TaskKind.REDUCE and t.nbytes > 0})
    )
    shape = CommShape(q_n, l_n, n_n, r_n, m_n, b_n, a_n, dts)
    ints = np.zeros((q_n, l_n, len(TASK_FIELDS)), np.int64)
    timeout = np.zeros((q_n, l_n), np.float32)
    duration = np.zeros((q_n, l_n), np.float32)
    lens = np.zeros(q_n, np.int32)
    for qi, q in enumerate(program.queues):
        lens[qi] = len(q.tasks)
        for ti, t in enumerate(q.tasks):
            ints[qi, ti] = [int(getattr(t, f)) for f in TASK_FIELDS]
            timeout[qi, ti] = t.timeout
            duration[qi, ti] = t.duration
    if ints.size and (ints.max() > np.iinfo(np.int32).max):
        raise ValueError("a task field exceeds int32")
    allocs = np.zeros((r_n, a_n, 2), np.int32)
    for r, al in enumerate(program.allocs):
        for i, (s, e, _) in enumerate(al):
            allocs[r, i] = (s, e)
    mem = np.zeros((r_n, m_n), np.uint8)
    for r, m in enumerate(program.memory):
        mem[r, : m.size] = m
    tab = CommTables(
        ints=jnp.asarray(ints.astype(np.int32)),
        timeout=jnp.asarray(timeout),
        duration=jnp.asarray(duration),
        lens=jnp.asarray(lens),
        allocs=jnp.asarray(allocs),
        wait_timeout_error=jnp.int32(program.wait_timeout_error),
        max_steps=jnp.int32(program.max_steps),
    )
    st = CommState(
        pc=jnp.zeros(q_n, jnp.int32),
        qstatus=jnp.where(jnp.asarray(lens) == 0, QueueStatus.DONE, QueueStatus.RUNNING).astype(jnp.int32),
        qerror=jnp.zeros(q_n, jnp.int32),
        clock=jnp.zeros(q_n, jnp.float32),
        flag=jnp.zeros(n_n, bool),
        flag_time=jnp.zeros(n_n, jnp.float32),
        lost=jnp.zeros(n_n, jnp.int32),
        mem=jnp.asarray(mem),
        start=jnp.full((q_n, l_n), jnp.nan, jnp.float32),
        end=jnp.full((q_n, l_n), jnp.nan, jnp.float32),
        status=jnp.int32(CommStatus.RUNNING),
        step=jnp.int32(0),
    )
    return shape, tab, st


def _inside(allocs: jax.Array, rank: jax.Array, addr: jax.Array, n: jax.Array) -> jax.Array:
    """[Q] whether [addr, addr + n) lies in one allocation of ``rank`` (n <= 0: always)."""
    a = allocs[rank]  # [Q, A, 2]
    ok = (a[..., 0] <= addr[:, None]) & (addr[:, None] + n[:, None] <= a[..., 1]) & (a[..., 0] < a[..., 1])
    return ok.any(axis=1) | (n <= 0)


def _reduce(shape: CommShape, dst: jax.Array, src: jax.Array, dtype: jax.Array, op: jax.Array) -> jax.Array:
    """[Q, B] bytes: op(dst, src) elementwise in each queue's dtype (only the dtypes present are traced)."""
    out = dst
    q_n, b_n = dst.shape
    for code in shape.reduce_dtypes:
        dt = numpy_dtype(code)
        size = dt.itemsize
        a = jax.lax.bitcast_convert_type(dst.reshape(q_n, b_n // size, size) if size > 1 else dst, dt)
        b = jax.lax.bitcast_convert_type(src.reshape(q_n, b_n // size, size) if size > 1 else src, dt)
        summed = a + b if dt.kind in "iu" else (a.astype(jnp.float32) + b.astype(jnp.float32)).astype(dt)
        opq = op[:, None]
        val = jnp.where(
            opq == HcclReduceOp.SUM,
            summed,
            jnp.where(opq == HcclReduceOp.MAX, jnp.where(b > a, b, a), jnp.where(b < a, b, a)),
        )
        if dt.kind not in "iu":  # as the reference: any NaN operand -> the canonical quiet NaN
            nan = jnp.isnan(a.astype(jnp.float32)) | jnp.isnan(b.astype(jnp.float32))
            val = jnp.where(nan, jnp.asarray(np.array(np.nan, dt)), val)
        raw = jax.lax.bitcast_convert_type(val, jnp.uint8).reshape(q_n, b_n)
        out = jnp.where((dtype == code)[:, None], raw, out)
    return out


def comm_step(shape: CommShape, tab: CommTables, st: CommState) -> CommState:
    """One step of every queue (see the reference module for the semantics)."""
    q_n = shape.queues
    qs = jnp.arange(q_n)
    pc = jnp.minimum(st.pc, shape.tasks - 1)
    t = tab.ints[qs, pc]  # [Q, 10]
    kind, notify = t[:, F["kind"]], t[:, F["notify"]]
    n_safe = jnp.clip(notify, 0, shape.notifies - 1)
    timeout, duration = tab.timeout[qs, pc], tab.duration[qs, pc]
    running = st.qstatus == QueueStatus.RUNNING

    is_data = running & ((kind == TaskKind.COPY) | (kind == TaskKind.REDUCE))
    nbytes = t[:, F["nbytes"]]
    src_rank, dst_rank = t[:, F["src_rank"]], t[:, F["dst_rank"]]
    src_addr, dst_addr = t[:, F["src_addr"]], t[:, F["dst_addr"]]
    fault = is_data & ~(
        _inside(tab.allocs, src_rank, src_addr, nbytes) & _inside(tab.allocs, dst_rank, dst_addr, nbytes)
    )
    is_kernel = running & (kind == TaskKind.KERNEL)
    kfail = is_kernel & (t[:, F["error"]] != 0)
    is_record = running & ((kind == TaskKind.RECORD) | (is_kernel & ~kfail))

    # candidate events and their times
    is_wait = running & (kind == TaskKind.WAIT)
    avail = st.flag[n_safe]
    deadline = st.clock + timeout
    timed = timeout > 0
    wait_late = is_wait & avail & timed & (st.flag_time[n_safe] > deadline)
    wait_ok = is_wait & avail & ~wait_late
    wait_expire = is_wait & ~avail & timed
    other = running & ~is_wait & ~fault & ~kfail
    fail_c = wait_late | wait_expire | fault | kfail
    has = fail_c | wait_ok | other
    t_ev = jnp.where(
        wait_ok, jnp.maximum(st.clock, st.flag_time[n_safe]), jnp.where(wait_late | wait_expire, deadline, st.clock)
    )
    tmin = jnp.min(jnp.where(has, t_ev, jnp.inf))
    sel = has & (t_ev == tmin)
    cand = sel & wait_ok
    first = jnp.full(shape.notifies, q_n, jnp.int32).at[jnp.where(cand, n_safe, shape.notifies)].min(qs, mode="drop")
    win = cand & (first[n_safe] == qs)
    execute = win | (sel & other)
    fail_now = sel & fail_c
    fail_code = jnp.where(
        wait_late | wait_expire, tab.wait_timeout_error, jnp.where(fault, MEMORY_FAULT_ERROR, t[:, F["error"]])
    )
    fail_at = t_ev
    start = t_ev
    end = start + duration

    # notifies: waits consume, then records set (lowest queue first); records on a set flag are lost
    consumed = jnp.zeros(shape.notifies, bool).at[jnp.where(win, n_safe, shape.notifies)].set(True, mode="drop")
    flag1 = st.flag & ~consumed
    recs = execute & is_record & (notify >= 0)
    rec_n = jnp.where(recs, n_safe, shape.notifies)
    count = jnp.zeros(shape.notifies, jnp.int32).at[rec_n].add(1, mode="drop")
    first_rec = jnp.full(shape.notifies, q_n, jnp.int32).at[rec_n].min(qs, mode="drop")
    set_now = (count > 0) & ~flag1
    lost = st.lost + count - set_now
    flag = flag1 | set_now
    flag_time = jnp.where(set_now, end[jnp.minimum(first_rec, q_n - 1)], st.flag_time)

    # data: read the start-of-step memory, write in queue order
    b = jnp.arange(shape.max_bytes)
    src_idx = jnp.clip(src_addr - MEM_BASE, 0, shape.mem - 1)[:, None] + b[None, :]
    dst_idx = jnp.clip(dst_addr - MEM_BASE, 0, shape.mem - 1)[:, None] + b[None, :]
    src_bytes = st.mem[src_rank[:, None], jnp.clip(src_idx, 0, shape.mem - 1)]
    data = src_bytes
    if shape.reduce_dtypes:
        dst_bytes = st.mem[dst_rank[:, None], jnp.clip(dst_idx, 0, shape.mem - 1)]
        reduced = _reduce(shape, dst_bytes, src_bytes, t[:, F["dtype"]], t[:, F["op"]])
        data = jnp.where((kind == TaskKind.REDUCE)[:, None], reduced, src_bytes)
    writes = execute & is_data
    valid = writes[:, None] & (b[None, :] < nbytes[:, None])

    def write(q, mem):
        cols = jnp.where(valid[q], dst_idx[q], shape.mem)
        return mem.at[dst_rank[q], cols].set(data[q], mode="drop")

    mem = jax.lax.fori_loop(0, q_n, write, st.mem)

    # timeline, clocks, program counters, queue status
    row = jnp.where(execute | fail_now, qs, q_n)
    t_start = jnp.where(fail_now, fail_at, start)
    t_end = jnp.where(fail_now, fail_at, end)
    start_tl = st.start.at[row, pc].set(t_start, mode="drop")
    end_tl = st.end.at[row, pc].set(t_end, mode="drop")
    clock = jnp.where(execute, end, jnp.where(fail_now, fail_at, st.clock))
    new_pc = st.pc + execute
    qstatus = jnp.where(
        fail_now, QueueStatus.FAILED, jnp.where(execute & (new_pc >= tab.lens), QueueStatus.DONE, st.qstatus)
    )
    qerror = jnp.where(fail_now, fail_code, st.qerror)

    hang = running.any() & ~has.any()

    step = st.step + 1
    still = (qstatus == QueueStatus.RUNNING).any()
    status = jnp.select(
        [hang, ~still & (qstatus == QueueStatus.FAILED).any(), ~still, step >= tab.max_steps],
        [CommStatus.HANG, CommStatus.ERROR, CommStatus.OK, CommStatus.MAX_STEPS],
        CommStatus.RUNNING,
    ).astype(jnp.int32)
    return CommState(
        pc=new_pc.astype(jnp.int32),
        qstatus=qstatus.astype(jnp.int32),
        qerror=qerror.astype(jnp.int32),
        clock=clock,
        flag=flag,
        flag_time=flag_time,
        lost=lost.astype(jnp.int32),
        mem=mem,
        start=start_tl,
        end=end_tl,
        status=status,
        step=step,
    )


@functools.partial(jax.jit, static_argnums=0)
def _run(shape: CommShape, tab: CommTables, st: CommState) -> CommState:
    return jax.lax.while_loop(lambda s: s.status == CommStatus.RUNNING, functools.partial(comm_step, shape, tab), st)


def run_comm(program: TaskProgram, jit: bool = True, max_steps: int | None = None) -> CommResult:
    """Runs a task program in the JAX engine (``jit=False``: the same step, eagerly)."""
    if max_steps is not None:
        program = dataclasses.replace(program, max_steps=max_steps)
    shape, tab, st = encode(program)
    if jit:
        st = _run(shape, tab, st)
    else:
        with jax.disable_jit():
            while int(st.status) == CommStatus.RUNNING:
                st = comm_step(shape, tab, st)
    st = jax.tree.map(np.asarray, st)
    q_real = len(program.queues)
    width = max((len(q.tasks) for q in program.queues), default=1)
    status = CommStatus(int(st.status))
    result = CommResult(
        program=program,
        status=status,
        steps=int(st.step),
        queue_status=st.qstatus[:q_real].astype(np.int64),
        queue_error=st.qerror[:q_real].astype(np.int64),
        queue_pc=st.pc[:q_real].astype(np.int64),
        clock=st.clock[:q_real],
        lost=st.lost[: len(program.notify_names)].astype(np.int64),
        memory=[st.mem[r, : m.size].copy() for r, m in enumerate(program.memory)],
        start=st.start[:q_real, :width],
        end=st.end[:q_real, :width],
        flags=st.flag[: len(program.notify_names)].copy(),
        hang=hang_report(program, st.qstatus, st.pc) if status == CommStatus.HANG else [],
    )
    result.fill_syncs()
    return result

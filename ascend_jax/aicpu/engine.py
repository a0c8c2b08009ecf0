"""The JAX engine of task programs: every queue of every rank of every lane advanced by one
jit-compiled, vmapped step.

A program becomes fixed-shape tables (``[Q, L]`` tasks of ``Q`` queues, padded to ``L``); the state
is a pytree of arrays: per-queue program counter, status, error and clock, per-notify flag, set
time and lost-record count, ``[R, M]`` device memory of every rank, and the ``[Q, L]`` timeline.
:func:`comm_step` implements the semantics documented in :mod:`ascend_jax.aicpu.reference` with
masks over queues (no Python loop over queues, no branch per task kind).

Lanes: :func:`run_comm_batch` stacks programs of one task structure (same queues, notifies and
ranks; message counts, data, cost parameters and timeouts may differ: they are table values) on
a leading axis and runs ``jit(vmap(while_loop(step)))`` once per shape. When lanes pause before a
kernel task, the device model runs those kernels in Python (:mod:`ascend_jax.aicpu.device`), the
lanes' tables are re-encoded in place and the same compiled loop resumes. Shapes are chosen so that
kernels' submissions rarely change them (``L`` at least 128; the largest transfer bounded by the
largest allocation; the reduce dtypes a program declares, or every hardware reduce dtype, traced
when it launches kernels).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ascend_jax.aicpu.codes import REDUCE_DTYPES, numpy_dtype
from ascend_jax.aicpu.device import DeviceModel
from ascend_jax.aicpu.reduce import reduce_elements
from ascend_jax.aicpu.result import CommResult, CommStatus, QueueStatus, hang_report
from ascend_jax.aicpu.tasks import MEM_BASE, MEMORY_FAULT_ERROR, TASK_FIELDS, TASK_TIMES, TaskKind, TaskProgram

F = {name: i for i, name in enumerate(TASK_FIELDS)}
T = {name: i for i, name in enumerate(TASK_TIMES)}
#: How many times the lane loop was traced (compiled), per process.
TRACES = {"count": 0}


def _bucket(n: int, least: int = 8) -> int:
    return max(least, 1 << max(0, n - 1).bit_length())


@dataclasses.dataclass(frozen=True)
class CommShape:
    """Static sizes: queues Q, tasks per queue L, notifies N, ranks R, memory bytes M per rank,
    the largest transfer B (bytes), allocations A per rank, and the reduce dtypes traced."""

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
    """ints [Q, L, 11] (TASK_FIELDS), times [Q, L, 3] float32 s (TASK_TIMES), lens [Q], allocs
    [R, A, 2] (start, end; empty rows start == end), wait_timeout_error [], max_steps []; with a
    leading lane axis when batched."""

    ints: jax.Array
    times: jax.Array
    lens: jax.Array
    allocs: jax.Array
    wait_timeout_error: jax.Array
    max_steps: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CommState:
    """pc, qstatus, qerror [Q] int32; clock [Q] f32; flag [N] bool, flag_time [N] f32, lost [N] int32;
    mem [R, M + B] uint8 (the last B bytes stay zero); start, end [Q, L] f32 (NaN: not run); paused [Q] bool (kernel tasks to run
    before the next step); status, step [] int32."""

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
    paused: jax.Array
    status: jax.Array
    step: jax.Array


def comm_shape(programs: list[TaskProgram]) -> CommShape:
    """The smallest shape that holds every program (lanes share one shape)."""
    launches = any(p.launches for p in programs)
    longest = max((len(q.tasks) for p in programs for q in p.queues), default=1)
    biggest = max(
        [t.nbytes for p in programs for q in p.queues for t in q.tasks]
        + ([e - s for p in programs for al in p.allocs for s, e, _ in al] if launches else [8])
    )
    dts = {t.dtype for p in programs for q in p.queues for t in q.tasks if t.kind == TaskKind.REDUCE and t.nbytes > 0}
    for p in programs:
        if p.launches:
            dts |= {int(d) for d in (REDUCE_DTYPES if p.reduce_dtypes is None else p.reduce_dtypes)}
    return CommShape(
        queues=max(1, max(len(p.queues) for p in programs)),
        tasks=_bucket(longest, 128 if launches else 8),
        notifies=max(1, max(len(p.notify_names) for p in programs)),
        ranks=max(p.n_ranks for p in programs),
        mem=max(8, max(m.size for p in programs for m in p.memory)),
        max_bytes=_bucket(biggest),
        allocs=max(1, max(len(a) for p in programs for a in p.allocs)),
        reduce_dtypes=tuple(sorted(dts)),
    )


def _fits(shape: CommShape, program: TaskProgram) -> bool:
    need = comm_shape([program])
    return need.tasks <= shape.tasks and set(need.reduce_dtypes) <= set(shape.reduce_dtypes)


def _grown(shape: CommShape, programs: list[TaskProgram]) -> CommShape:
    """``shape`` with room for the tasks and reduce dtypes kernels added. Memory and the largest
    transfer stay: a transfer longer than every allocation faults whatever its length."""
    need = comm_shape(programs)
    return dataclasses.replace(
        shape,
        tasks=max(shape.tasks, need.tasks),
        reduce_dtypes=tuple(sorted(set(shape.reduce_dtypes) | set(need.reduce_dtypes))),
    )


def encode_tables(shape: CommShape, program: TaskProgram) -> dict[str, np.ndarray]:
    """numpy tables of one lane."""
    q_n, l_n = shape.queues, shape.tasks
    ints = np.zeros((q_n, l_n, len(TASK_FIELDS)), np.int64)
    ints[..., F["launch"]] = -1
    times = np.zeros((q_n, l_n, len(TASK_TIMES)), np.float32)
    lens = np.zeros(q_n, np.int32)
    for qi, q in enumerate(program.queues):
        lens[qi] = len(q.tasks)
        if q.tasks:
            ints[qi, : len(q.tasks)] = [[int(getattr(t, f)) for f in TASK_FIELDS] for t in q.tasks]
            times[qi, : len(q.tasks)] = [[getattr(t, f) for f in TASK_TIMES] for t in q.tasks]
    if ints.size and ints.max() > np.iinfo(np.int32).max:
        raise ValueError("a task field exceeds int32")
    allocs = np.zeros((shape.ranks, shape.allocs, 2), np.int32)
    for r, al in enumerate(program.allocs):
        for i, (s, e, _) in enumerate(al):
            allocs[r, i] = (s, e)
    return {
        "ints": ints.astype(np.int32),
        "times": times,
        "lens": lens,
        "allocs": allocs,
        "wait_timeout_error": np.int32(program.wait_timeout_error),
        "max_steps": np.int32(program.max_steps),
    }


def init_state(shape: CommShape, program: TaskProgram) -> dict[str, np.ndarray]:
    """numpy initial state of one lane."""
    q_n, l_n = shape.queues, shape.tasks
    lens = np.zeros(q_n, np.int32)
    lens[: len(program.queues)] = [len(q.tasks) for q in program.queues]
    mem = np.zeros((shape.ranks, shape.mem + shape.max_bytes), np.uint8)  # B spare bytes: slices never clamp
    for r, m in enumerate(program.memory):
        mem[r, : m.size] = m
    return {
        "pc": np.zeros(q_n, np.int32),
        "qstatus": np.where(lens == 0, QueueStatus.DONE, QueueStatus.RUNNING).astype(np.int32),
        "qerror": np.zeros(q_n, np.int32),
        "clock": np.zeros(q_n, np.float32),
        "flag": np.zeros(shape.notifies, bool),
        "flag_time": np.zeros(shape.notifies, np.float32),
        "lost": np.zeros(shape.notifies, np.int32),
        "mem": mem,
        "start": np.full((q_n, l_n), np.nan, np.float32),
        "end": np.full((q_n, l_n), np.nan, np.float32),
        "paused": np.zeros(q_n, bool),
        "status": np.int32(CommStatus.RUNNING),
        "step": np.int32(0),
    }


def _inside(allocs: jax.Array, rank: jax.Array, addr: jax.Array, n: jax.Array) -> jax.Array:
    """[Q] whether [addr, addr + n) lies in one allocation of ``rank`` (n <= 0: always)."""
    a = allocs[rank]  # [Q, A, 2]
    ok = (a[..., 0] <= addr[:, None]) & (addr[:, None] + n[:, None] <= a[..., 1]) & (a[..., 0] < a[..., 1])
    return ok.any(axis=1) | (n <= 0)


def _reduce(shape: CommShape, dst: jax.Array, src: jax.Array, dtype: jax.Array, op: jax.Array) -> jax.Array:
    """[Q, B] bytes: op(dst, src) elementwise in each queue's dtype (the traced dtypes only), through
    the one :func:`~ascend_jax.aicpu.reduce.reduce_elements` both engines use."""
    out = dst
    q_n, b_n = dst.shape
    for code in shape.reduce_dtypes:
        dt = numpy_dtype(code)
        size = dt.itemsize
        a = jax.lax.bitcast_convert_type(dst.reshape(q_n, b_n // size, size) if size > 1 else dst, dt)
        b = jax.lax.bitcast_convert_type(src.reshape(q_n, b_n // size, size) if size > 1 else src, dt)
        val = reduce_elements(jnp, a, b, op[:, None])
        raw = jax.lax.bitcast_convert_type(val, jnp.uint8).reshape(q_n, b_n)
        out = jnp.where((dtype == code)[:, None], raw, out)
    return out


def comm_step(shape: CommShape, tab: CommTables, st: CommState) -> CommState:
    """One step of every queue of one lane (see the reference module for the semantics)."""
    q_n = shape.queues
    qs = jnp.arange(q_n)
    pc = jnp.minimum(st.pc, shape.tasks - 1)
    t = tab.ints[qs, pc]  # [Q, 11]
    kind, notify = t[:, F["kind"]], t[:, F["notify"]]
    n_safe = jnp.clip(notify, 0, shape.notifies - 1)
    times = tab.times[qs, pc]
    timeout, duration, not_before = times[:, T["timeout"]], times[:, T["duration"]], times[:, T["not_before"]]
    running = st.qstatus == QueueStatus.RUNNING
    ready = jnp.maximum(st.clock, not_before)

    is_data = running & ((kind == TaskKind.COPY) | (kind == TaskKind.REDUCE))
    nbytes = t[:, F["nbytes"]]
    src_rank, dst_rank = t[:, F["src_rank"]], t[:, F["dst_rank"]]
    src_addr, dst_addr = t[:, F["src_addr"]], t[:, F["dst_addr"]]
    fault = is_data & ~(
        _inside(tab.allocs, src_rank, src_addr, nbytes) & _inside(tab.allocs, dst_rank, dst_addr, nbytes)
    )
    is_kernel = running & (kind == TaskKind.KERNEL)
    pending = is_kernel & (t[:, F["launch"]] >= 0)
    kfail = is_kernel & ~pending & (t[:, F["error"]] != 0)
    is_record = running & ((kind == TaskKind.RECORD) | (is_kernel & ~kfail & ~pending))

    # candidate events and their times
    is_wait = running & (kind == TaskKind.WAIT)
    avail = st.flag[n_safe]
    deadline = ready + timeout
    timed = timeout > 0
    wait_late = is_wait & avail & timed & (st.flag_time[n_safe] > deadline)
    wait_ok = is_wait & avail & ~wait_late
    wait_expire = is_wait & ~avail & timed
    other = running & ~is_wait & ~fault & ~kfail & ~pending
    fail_c = wait_late | wait_expire | fault | kfail
    has = fail_c | wait_ok | other | pending
    t_ev = jnp.where(
        wait_ok,
        jnp.maximum(ready, st.flag_time[n_safe]),
        jnp.where(wait_late | wait_expire, deadline, jnp.where(kfail, ready + duration, ready)),
    )
    tmin = jnp.min(jnp.where(has, t_ev, jnp.inf))
    sel = has & (t_ev == tmin)
    pause = (sel & pending).any()
    cand = sel & wait_ok
    first = jnp.full(shape.notifies, q_n, jnp.int32).at[jnp.where(cand, n_safe, shape.notifies)].min(qs, mode="drop")
    win = cand & (first[n_safe] == qs)
    execute = win | (sel & other)
    fail_now = sel & fail_c
    fail_code = jnp.where(
        wait_late | wait_expire, tab.wait_timeout_error, jnp.where(fault, MEMORY_FAULT_ERROR, t[:, F["error"]])
    )
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
    src_off = jnp.clip(src_addr - MEM_BASE, 0, shape.mem)
    dst_off = jnp.clip(dst_addr - MEM_BASE, 0, shape.mem)

    def window(rank, off):  # [B] contiguous bytes of one rank (a row slice, not a byte gather)
        return jax.lax.dynamic_slice(st.mem, (rank, off), (1, shape.max_bytes))[0]

    src_bytes = jax.vmap(window)(src_rank, src_off)
    data = src_bytes
    if shape.reduce_dtypes:
        dst_bytes = jax.vmap(window)(dst_rank, dst_off)
        reduced = _reduce(shape, dst_bytes, src_bytes, t[:, F["dtype"]], t[:, F["op"]])
        data = jnp.where((kind == TaskKind.REDUCE)[:, None], reduced, src_bytes)
    writes = execute & is_data
    valid = writes[:, None] & (b[None, :] < nbytes[:, None])

    def write(q, mem):
        old = jax.lax.dynamic_slice(mem, (dst_rank[q], dst_off[q]), (1, shape.max_bytes))
        new = jnp.where(valid[q], data[q], old[0])[None]
        return jax.lax.dynamic_update_slice(mem, new, (dst_rank[q], dst_off[q]))

    mem = jax.lax.fori_loop(0, q_n, write, st.mem)

    # timeline, clocks, program counters, queue status
    row = jnp.where(execute | fail_now, qs, q_n)
    start_tl = st.start.at[row, pc].set(t_ev, mode="drop")
    end_tl = st.end.at[row, pc].set(jnp.where(fail_now, t_ev, end), mode="drop")
    clock = jnp.where(execute, end, jnp.where(fail_now, t_ev, st.clock))
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
    stepped = CommState(
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
        paused=jnp.zeros(q_n, bool),
        status=status,
        step=step,
    )
    # a pause changes nothing but the status and which kernels must run (at time tmin)
    paused = dataclasses.replace(
        st, paused=sel & pending, clock=jnp.where(sel & pending, tmin, st.clock), status=jnp.int32(CommStatus.PAUSED)
    )
    return jax.tree.map(lambda p, s: jnp.where(pause, p, s), paused, stepped)


def _lane_loop(shape: CommShape, tab: CommTables, st: CommState) -> CommState:
    return jax.lax.while_loop(lambda s: s.status == CommStatus.RUNNING, functools.partial(comm_step, shape, tab), st)


@functools.partial(jax.jit, static_argnums=0)
def _run_lanes(shape: CommShape, tab: CommTables, st: CommState) -> CommState:
    TRACES["count"] += 1
    return jax.vmap(functools.partial(_lane_loop, shape))(tab, st)


def _stack(rows: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _grow_state(st: dict[str, np.ndarray], width: int) -> None:
    for k in ("start", "end"):
        pad = np.full((*st[k].shape[:-1], width - st[k].shape[-1]), np.nan, np.float32)
        st[k] = np.concatenate([st[k], pad], axis=-1)


def _resume(
    shape: CommShape, lane: int, forks: list[TaskProgram], models: list[DeviceModel], st: dict[str, np.ndarray]
) -> bool:
    """Runs the kernels lane ``lane`` paused before; returns whether its tables still fit ``shape``."""
    p = forks[lane]
    memory = [st["mem"][lane, r] for r in range(p.n_ranks)]
    for q in np.flatnonzero(st["paused"][lane]):
        task = p.queues[q].tasks[int(st["pc"][lane, q])]
        models[lane].run_kernel(task, st["clock"][lane, q], memory)
    st["paused"][lane] = False
    st["status"][lane] = CommStatus.RUNNING
    for q, qu in enumerate(p.queues):
        if st["qstatus"][lane, q] == QueueStatus.DONE and st["pc"][lane, q] < len(qu.tasks):
            st["qstatus"][lane, q] = QueueStatus.RUNNING
    return _fits(shape, p)


def run_comm_batch(
    programs: list[TaskProgram], max_steps: int | None = None, chunk: int | None = None
) -> list[CommResult]:
    """Runs programs as lanes of one vmapped loop (``chunk`` lanes per compiled call; default all).

    The programs must share a task structure (queues, notifies, ranks); everything else (message
    sizes, data, durations, timeouts) may differ per lane. One compilation per distinct shape.
    """
    if not programs:
        return []
    if max_steps is not None:
        programs = [dataclasses.replace(p, max_steps=max_steps) for p in programs]
    n = len(programs)
    chunk = n if chunk is None else max(1, min(chunk, n))
    forks = [p.fork() for p in programs]
    models = [DeviceModel(f) for f in forks]
    shape = comm_shape(forks)
    finals: list[dict[str, np.ndarray]] = []
    for lo in range(0, n, chunk):
        idx = list(range(lo, min(lo + chunk, n)))
        idx += [idx[-1]] * (chunk - len(idx))  # pad the last chunk: same lane count, same compilation
        lanes, lane_models = [], []
        for k, i in enumerate(idx):  # a padded copy gets its own fork: no kernel runs twice on one model
            fresh = k > 0 and i == idx[k - 1]
            lanes.append(programs[i].fork() if fresh else forks[i])
            lane_models.append(DeviceModel(lanes[-1]) if fresh else models[i])
        tab = _stack([encode_tables(shape, p) for p in lanes])
        st = _stack([init_state(shape, p) for p in lanes])
        while True:
            out = _run_lanes(shape, CommTables(**tab), CommState(**st))
            st = {k: np.array(v) for k, v in dataclasses.asdict(out).items()}
            paused = np.flatnonzero(st["status"] == CommStatus.PAUSED)
            if not paused.size:
                break
            fits = [_resume(shape, int(i), lanes, lane_models, st) for i in paused]
            if not all(fits):
                shape = _grown(shape, lanes)
                _grow_state(st, shape.tasks)
                tab = _stack([encode_tables(shape, p) for p in lanes])
            else:
                for i in paused:
                    row = encode_tables(shape, lanes[int(i)])
                    for k in ("ints", "times", "lens"):
                        tab[k][int(i)] = row[k]
        for k, i in enumerate(idx[: min(chunk, n - lo)]):
            finals.append({key: v[k] for key, v in st.items()})
            forks[i], models[i] = lanes[k], lane_models[k]
    return [_result(forks[i], models[i], finals[i]) for i in range(n)]


def _result(program: TaskProgram, model: DeviceModel, st: dict[str, np.ndarray]) -> CommResult:
    q_real = len(program.queues)
    width = max((len(q.tasks) for q in program.queues), default=1)
    status = CommStatus(int(st["status"]))
    result = CommResult(
        program=program,
        status=status,
        steps=int(st["step"]),
        queue_status=st["qstatus"][:q_real].astype(np.int64),
        queue_error=st["qerror"][:q_real].astype(np.int64),
        queue_pc=st["pc"][:q_real].astype(np.int64),
        clock=st["clock"][:q_real],
        lost=st["lost"][: len(program.notify_names)].astype(np.int64),
        memory=[st["mem"][r, : m.size].copy() for r, m in enumerate(program.memory)],
        start=st["start"][:q_real, :width],
        end=st["end"][:q_real, :width],
        flags=st["flag"][: len(program.notify_names)].copy(),
        hang=hang_report(program, st["qstatus"], st["pc"]) if status == CommStatus.HANG else [],
        device_calls=list(model.calls),
        kernel_log=list(model.log),
    )
    result.fill_syncs()
    return result


def run_comm(program: TaskProgram, jit: bool = True, max_steps: int | None = None) -> CommResult:
    """Runs one task program in the JAX engine (``jit=False``: the same step, eagerly)."""
    if jit:
        return run_comm_batch([program], max_steps)[0]
    if max_steps is not None:
        program = dataclasses.replace(program, max_steps=max_steps)
    fork = program.fork()
    model = DeviceModel(fork)
    shape = comm_shape([fork])
    st = {k: v[None] for k, v in init_state(shape, fork).items()}
    with jax.disable_jit():
        while True:
            tab = CommTables(**{k: jnp.asarray(v) for k, v in encode_tables(shape, fork).items()})
            s = CommState(**{k: jnp.asarray(v[0]) for k, v in st.items()})
            while int(s.status) == CommStatus.RUNNING:
                s = comm_step(shape, tab, s)
            st = {k: np.array(v)[None] for k, v in dataclasses.asdict(s).items()}
            if int(st["status"][0]) != CommStatus.PAUSED:
                break
            if not _resume(shape, 0, [fork], [model], st):
                shape = _grown(shape, [fork])
                _grow_state(st, shape.tasks)
    return _result(fork, model, {k: v[0] for k, v in st.items()})


__all__ = ["CommShape", "comm_shape", "comm_step", "run_comm", "run_comm_batch"]

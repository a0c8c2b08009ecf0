"""``simulate``: runs one or many programs in the JAX engine.

A batch is one jitted ``lax.while_loop`` whose body is the protocol :func:`step` vmapped over the
stacked lanes, followed by the compute phase (:func:`apply_matmuls`, vmapped) under a ``lax.cond``
that skips it when no AIC of any lane performed a matmul this step. Each lane is bounded by its
own ``max_steps``; the loop runs until its slowest lane stops; finished lanes are left untouched.
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ascend_jax.cube_group.callbacks import NO_WAIT
from ascend_jax.cube_group.compute import apply_matmuls
from ascend_jax.cube_group.program import CubeGroupProgram
from ascend_jax.cube_group.result import CubeGroupResult, slot_location, state_name
from ascend_jax.cube_group.state import EngineShape, State, Tables, build_tables, encode_program, init_state
from ascend_jax.cube_group.status import AicPhase, ErrorCode, OpKind, Status
from ascend_jax.cube_group.step import count_frees, step
from ascend_jax.errors import ConfigError
from ascend_jax.matmul import Matmul

#: Incremented each time the batched run is traced (tests use it to check for retracing).
TRACE_COUNT = {"run": 0}


def batch_step(shape: EngineShape, tab: Tables, st: State) -> State:
    """One step of every lane: the vmapped protocol step, then the compute phase if needed."""
    st, en, desc = jax.vmap(functools.partial(step, shape))(tab, st)
    if not shape.has_matmul:
        return st
    return jax.lax.cond(
        en.any(),
        lambda s: jax.vmap(functools.partial(apply_matmuls, shape))(tab, s, en, desc),
        lambda s: s,
        st,
    )


@functools.partial(jax.jit, static_argnums=(0, 1))
def _run_batch(shape: EngineShape, n_frees: int, tab: Tables, keys: jax.Array) -> State:
    TRACE_COUNT["run"] += 1
    st = jax.vmap(functools.partial(init_state, shape, n_frees))(tab, keys)
    return jax.lax.while_loop(
        lambda s: (s.status == Status.RUNNING).any(), functools.partial(batch_step, shape, tab), st
    )


def _bucket(n: int) -> int:
    """Rounds a padded size up to a power of two (at least 8), so that programs of similar size
    share one compilation; the true per-lane limits stay in the traced tables."""
    return max(8, 1 << max(0, n - 1).bit_length())


def make_shape(
    programs: Sequence[CubeGroupProgram], encoded: Sequence[dict], schedule: str, atomic_order: str = "fixed"
) -> EngineShape:
    """The common static shape of a batch; programs must share groups, callbacks, matmul configs,
    barriers and GM tensor layout (GM contents may differ per lane)."""
    first = programs[0]
    for i, p in enumerate(programs[1:], 1):
        same = (
            p.groups == first.groups
            and p.callbacks == first.callbacks
            and [d.descr for d in p.msg_dtypes] == [d.descr for d in first.msg_dtypes]
            and p.barriers == first.barriers
            and p.matmuls == first.matmuls
            and p.gm.same_layout(first.gm)
        )
        if not same:
            raise ConfigError(
                f"programs[{i}]",
                p.name,
                "lanes of one batch must share groups, callbacks, message types, matmul configs, barriers and tensors",
            )
    fields = tuple(
        tuple((name, str(enc_f[name].dtype)) for name in first.msg_dtypes[gi].names[1:])
        for gi, enc_f in enumerate(encoded[0]["fields"])
    )
    return EngineShape(
        groups=first.groups,
        callbacks=first.callbacks,
        fields=fields,
        aiv_blocks=tuple(sorted({b for p in programs for b, _ in p.aivs})),
        max_ops=_bucket(max((len(r) for e in encoded for r in e["rows"]), default=1)),
        msgs_per_group=tuple(
            _bucket(max(len(next(iter(e["fields"][gi].values()), [])) for e in encoded))
            for gi in range(len(first.groups))
        ),
        receive_capacity=_bucket(max(e["capacity"] for e in encoded)),
        barrier_copies=tuple(b.copies for b in first.barriers),
        schedule=schedule,
        matmuls=tuple(first.matmuls) or (None,) * len(first.groups),
        gm_size=max(1, first.gm.size) if any(m is not None for m in first.matmuls) else 1,
        n_tensors=max(1, len(first.gm.tensors)),
        atomic_order=atomic_order,
    )


def simulate(
    programs: CubeGroupProgram | Sequence[CubeGroupProgram],
    schedule: str = "lockstep",
    seeds: int | Sequence[int] = 0,
    max_steps: int | None = None,
    jit: bool = True,
    atomic_order: str = "fixed",
    chunk_size: int | None = None,
    progress: bool = False,
    costs: Any = None,
) -> list[CubeGroupResult]:
    """Runs programs in the JAX engine, one batch lane each.

    Args:
      programs: one program or a list (lanes); lanes must share geometry and callbacks but may
        differ in ops, messages, delays and limits.
      schedule: ``"lockstep"`` or ``"random"`` (each enabled core acts with probability 1/2).
      seeds: one seed per lane, or a first seed (lane i gets seed + i).
      max_steps: overrides every program's ``max_steps``.
      jit: False runs the same step eagerly (slow; for debugging and tests).
      atomic_order: ``"fixed"`` writes a step's matmul results in AIC index order; ``"random"``
        in a permutation drawn per lane and step (bounds the order dependence of atomics).
      chunk_size: lanes per compiled call; default: as many as fit :data:`MEMORY_BUDGET` bytes
        (see :func:`lane_bytes`). A batch larger than a chunk runs chunk by chunk with one
        compilation (the last chunk is padded with copies of its first lane).
      progress: show a progress bar over chunks.
      costs: the ``timed`` schedule's :class:`ascend_jax.timing.CostModel`: one for every lane or
        one per lane (lanes may differ without recompiling); default ``CostModel.for_chip``.
    Returns:
      one :class:`CubeGroupResult` per lane.
    """
    if schedule not in ("lockstep", "random", "timed"):
        raise ConfigError("schedule", schedule, "must be 'lockstep', 'random' or 'timed'")
    if atomic_order not in ("fixed", "random"):
        raise ConfigError("atomic_order", atomic_order, "must be 'fixed' or 'random'")
    if isinstance(programs, CubeGroupProgram):
        programs = [programs]
    if max_steps is not None:  # one replacement per distinct program keeps shared lanes shared
        swapped = {id(p): dataclasses.replace(p, max_steps=max_steps) for p in programs}
        programs = [swapped[id(p)] for p in programs]
    if isinstance(seeds, int):
        seeds = [seeds + i for i in range(len(programs))]
    if len(seeds) != len(programs):
        raise ConfigError("seeds", list(seeds), f"needs one seed per lane ({len(programs)})")
    bad = [s for s in seeds if not isinstance(s, (int, np.integer)) or not 0 <= s < 2**32]
    if bad:
        raise ConfigError("seeds", bad[0], "seeds must be integers in 0..2**32-1")
    seeds = [int(s) for s in seeds]
    from ascend_jax.timing import CostModel

    if costs is None or isinstance(costs, CostModel):
        costs = [costs] * len(programs)
    if len(costs) != len(programs) or not all(c is None or isinstance(c, CostModel) for c in costs):
        raise ConfigError("costs", type(costs).__name__, f"needs a CostModel or one per lane ({len(programs)})")
    defaults: dict = {}  # one default cost vector per distinct chip
    for p in programs:
        if p.chip not in defaults:
            defaults[p.chip] = CostModel.for_chip(p.chip).vector()
    cost_vecs = [c.vector() if c is not None else defaults[p.chip] for c, p in zip(costs, programs, strict=True)]
    shape = prepare(programs[:1], schedule, seeds[:1], atomic_order, shape_of=programs)[0]
    n = len(programs)
    if chunk_size is None:
        chunk_size = max(1, min(n, MEMORY_BUDGET // (8 * lane_bytes(programs[0], shape))))
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ConfigError("chunk_size", chunk_size, "must be an integer >= 1")
    chunk_size = min(chunk_size, n)
    results: list[CubeGroupResult] = []
    bar = _progress(progress and n > chunk_size, n)
    for lo in range(0, n, chunk_size):
        progs, sds = programs[lo : lo + chunk_size], seeds[lo : lo + chunk_size]
        real = len(progs)
        progs = progs + [progs[0]] * (chunk_size - real)  # pad: one compilation for every chunk
        sds = sds + [sds[0]] * (chunk_size - real)
        shape, n_frees, tab, keys = prepare(progs, schedule, sds, atomic_order, shape_of=programs)
        vecs = cost_vecs[lo : lo + chunk_size]
        tab = dataclasses.replace(tab, cost=jnp.asarray(np.stack(vecs + [vecs[0]] * (chunk_size - real))))
        final = _run_batch(shape, n_frees, tab, keys) if jit else _run_eager(shape, n_frees, tab, keys)
        final = {f.name: np.asarray(getattr(final, f.name)) for f in dataclasses.fields(State)}
        tabs = {f.name: getattr(tab, f.name) for f in dataclasses.fields(Tables) if f.name != "msg_fields"}
        tabs = {
            k: np.asarray(v)
            for k, v in tabs.items()
            if k in ("op_kind", "op_slot", "op_a", "op_b", "op_c", "op_len", "cost")
        }
        for i in range(real):  # plain indexing: tree_map per lane costs more than the extraction
            lane = types.SimpleNamespace(**{k: v[i] for k, v in final.items()})
            lane_tab = types.SimpleNamespace(**{k: v[i] for k, v in tabs.items()})
            results.append(extract_result(shape, progs[i], lane, lane_tab, sds[i], schedule, lane_tab.cost))
        if bar is not None:
            bar[0].update(bar[1], advance=real)
    if bar is not None:
        bar[0].stop()
    return results


#: Bytes of device memory a chunk of lanes may use (state, tables and step temporaries).
MEMORY_BUDGET = int(float(__import__("os").environ.get("ASCEND_JAX_MEMORY_BUDGET", 2 * 2**30)))


def lane_bytes(program: CubeGroupProgram, shape: EngineShape | None = None) -> int:
    """Bytes of one lane's state plus tables (the per-lane footprint; a step needs a few times
    this in temporaries, hence the factor 8 in the automatic chunk size)."""
    if shape is None:
        shape = prepare([program], "lockstep", [0])[0]
    hit = _LANE_BYTES.get((id(program), shape))
    if hit is not None and hit[0] is program:
        return hit[1]
    _, n_frees, tab, keys = prepare([program], shape.schedule, [0], shape.atomic_order, shape_of=[program], shape=shape)
    lane_tab = jax.tree.map(lambda x: x[0], tab)
    st = jax.eval_shape(functools.partial(init_state, shape, n_frees), lane_tab, keys[0])
    leaves = jax.tree.leaves(st) + jax.tree.leaves(lane_tab)
    nbytes = int(sum(np.prod(x.shape, dtype=np.int64) * np.dtype(x.dtype).itemsize for x in leaves))
    if len(_LANE_BYTES) > 64:
        _LANE_BYTES.clear()
    _LANE_BYTES[(id(program), shape)] = (program, nbytes)
    return nbytes


_LANE_BYTES: dict = {}


def _progress(show: bool, total: int):
    if not show:
        return None
    from rich.progress import Progress

    bar = Progress(transient=False)
    task = bar.add_task("lanes", total=total)
    bar.start()
    return bar, task


def prepare(
    programs: Sequence[CubeGroupProgram],
    schedule: str,
    seeds: Sequence[int],
    atomic_order: str = "fixed",
    shape_of: Sequence[CubeGroupProgram] | None = None,
    shape: EngineShape | None = None,
) -> tuple[EngineShape, int, Tables, jax.Array]:
    """Encodes a batch: (static shape, actions per call F, stacked lane tables, PRNG keys).

    ``shape_of``: the programs whose common shape to use (default ``programs``), so that every
    chunk of a large batch compiles once.
    """
    distinct = {id(p): p for p in programs}  # lanes often share one program object: encode it once
    for p in distinct.values():
        for gi, cb in enumerate(p.callbacks):
            for _ in range(p.groups[gi].aic_num):  # CallBack::Init once per AIC before its first message
                cb.init(*init_args(p, gi))
    enc = {k: _encode(p) for k, p in distinct.items()}
    encoded = [enc[id(p)] for p in programs]
    if shape is None:
        every = {id(p): p for p in (shape_of or programs)}
        shape = make_shape(list(every.values()), [_encode(p) for p in every.values()], schedule, atomic_order)
    built = {k: build_tables(shape, p, enc[k]) for k, p in distinct.items()}
    order = [id(p) for p in programs]
    if len(built) == 1:
        only = next(iter(built.values()))
        tab = jax.tree.map(lambda x: jnp.asarray(np.broadcast_to(x, (len(programs), *np.shape(x)))), only)
    else:
        tab = jax.tree.map(lambda *xs: jnp.asarray(np.stack(xs)), *[built[k] for k in order])
    del encoded
    keys = jax.vmap(lambda s: jax.random.key_data(jax.random.key(s)))(jnp.asarray(np.asarray(seeds, np.uint32)))
    return shape, _count_frees(shape, jax.tree.map(lambda x: x[0], tab)), tab, keys


_FREES_CACHE: dict = {}
_ENCODED: dict = {}


def _encode(program: CubeGroupProgram) -> dict:
    """``encode_program`` cached per program object (chunks and shape passes reuse it)."""
    hit = _ENCODED.get(id(program))
    if hit is None or hit[0] is not program:
        if len(_ENCODED) > 256:
            _ENCODED.clear()
        hit = (program, encode_program(program))
        _ENCODED[id(program)] = hit
    return hit[1]


def _count_frees(shape: EngineShape, tab: Tables) -> int:
    key = (shape, tuple(tuple((k, v.shape, str(v.dtype)) for k, v in g.items()) for g in tab.msg_fields))
    if key not in _FREES_CACHE:
        _FREES_CACHE[key] = count_frees(shape, tab)
    return _FREES_CACHE[key]


def batch_jaxpr(programs: Sequence[CubeGroupProgram], atomic_order: str = "fixed"):
    """The jaxpr of one engine step of a batch (protocol step and compute phase), for inspection:
    e.g. ``count_dot_generals(batch_jaxpr([p] * 8))`` shows the compute is one batched matmul."""
    shape, n_frees, tab, keys = prepare(programs, "lockstep", list(range(len(programs))), atomic_order)
    st = jax.vmap(functools.partial(init_state, shape, n_frees))(tab, keys)
    return jax.make_jaxpr(functools.partial(batch_step, shape))(tab, st)


def init_args(program: CubeGroupProgram, gi: int) -> tuple:
    """``(mm, tiling)`` for ``CallBack::Init`` of group ``gi`` (an unbound Matmul, or None)."""
    cfg = program.matmuls[gi] if program.matmuls else None
    if cfg is None:
        return (None, None)
    return (Matmul(cfg[0], cfg[1]), cfg[1])


def _run_eager(shape: EngineShape, n_frees: int, tab: Tables, keys: jax.Array) -> State:
    """The same semantics without jit: a Python loop over lanes and steps."""
    outs = []
    for i in range(keys.shape[0]):
        lane = jax.tree.map(lambda x, i=i: x[i], tab)
        st = init_state(shape, n_frees, lane, keys[i])
        with jax.disable_jit():
            while int(st.status) == Status.RUNNING:
                st, en, desc = step(shape, lane, st)
                if shape.has_matmul and bool(en.any()):
                    st = apply_matmuls(shape, lane, st, en, desc)
        outs.append(st)
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)


def extract_result(
    shape: EngineShape,
    program: CubeGroupProgram,
    st: State,
    tab: Tables,
    seed: int,
    schedule: str,
    cost: np.ndarray | None = None,
) -> CubeGroupResult:
    """Reads one lane's final state (numpy) into a :class:`CubeGroupResult`."""
    consts = shape.aic_constants()
    status = Status(int(st.status))
    q_of, d_of = _slot_tables(program)
    received = {}
    for c, core in enumerate(consts["core"]):
        n = int(st.recv_count[c])
        slots = st.recv_slot[c, :n]
        names = [_STATE_NAMES.get(int(x)) or state_name(x) for x in st.recv_state[c, :n].tolist()]
        received[int(core)] = list(zip(q_of[slots].tolist(), d_of[slots].tolist(), names, strict=True))
    error = None
    if status == Status.ERROR:
        c = int(st.error_aic)
        code = ErrorCode(int(st.error_code))
        gi, q, d = slot_location(program, int(st.error_slot))
        error = {
            "code": code.name,
            "core": f"aic{int(consts['core'][c])}",
            "group": program.groups[gi].name,
            "queue": q,
            "depth": d,
            "message": code.describe(),
        }
        key = {
            ErrorCode.SKIP_CROSSES_ROW: "skip",
            ErrorCode.SKIP_NEGATIVE: "skip",
            ErrorCode.FREE_OUT_OF_BLOCK: "offset",
            ErrorCode.FREE_UNUSED_COLUMN: "offset",
            ErrorCode.BAD_WAIT_STATE: "wait_state",
            ErrorCode.MATMUL_ATOMIC: "en_atomic",
        }.get(code)
        if key:
            error[key] = int(st.error_detail)
        elif code == ErrorCode.MATMUL_SHAPE:
            error["dimension"] = "MNK"[int(st.error_detail) - 1]
        elif code == ErrorCode.GM_OUT_OF_RANGE:
            error["address"] = program.gm.describe(int(st.error_detail))
    return CubeGroupResult(
        program=program,
        status=status,
        steps=int(st.step),
        slot_state=st.slot_state.astype(np.int64),
        slot_aiv_id=st.slot_aiv_id.astype(np.int64),
        slot_msg=st.slot_msg.astype(np.int64),
        received=received,
        blocked=_witness(shape, program, st, tab) if status == Status.DEADLOCK else [],
        error=error,
        barrier_arrive=st.barrier_arrive[: len(program.barriers)].astype(np.int64),
        barrier_wait=st.barrier_wait[: len(program.barriers)].astype(np.int64),
        wait_results={
            int(shape.aiv_blocks[v]): [bool(x) for x in st.aiv_wait_result[v][st.aiv_wait_result[v] >= 0]]
            for v in np.flatnonzero((st.aiv_wait_result >= 0).any(axis=1))
        },
        seed=seed,
        gm=st.gm[: program.gm.size].copy() if shape.has_matmul else program.gm.image,
        timing=_timing(shape, program, st, cost) if schedule == "timed" else None,
    )


def _timing(shape: EngineShape, program: CubeGroupProgram, st: Any, cost: np.ndarray) -> dict:
    from ascend_jax.cube_group.result import timing_report

    occ: dict = {}
    base = 0
    for gi, g in enumerate(program.groups):
        occ[gi] = {q: [float(x) for x in st.occ_cycles[base + q]] for q in range(g.msg_queue_size)}
        base += g.msg_queue_size
    return timing_report(
        program,
        aic_busy=st.aic_busy.astype(float).tolist(),
        aic_blocked=st.aic_blocked.astype(float).tolist(),
        aic_clock=st.aic_clock.astype(float).tolist(),
        aiv={
            int(b): (float(st.aiv_alloc_stall[v]), float(st.aiv_wait_stall[v]), float(st.aiv_clock[v]))
            for v, b in enumerate(shape.aiv_blocks)
            if b in dict(program.aivs)
        },
        occupancy=occ,
        freq_mhz=float(cost[-1]),
    )


_STATE_NAMES = {0: "FREE", 1: "VALID", 2: "QUIT", 3: "FAKE"}
_SLOT_TABLES: dict = {}


def _slot_tables(program: CubeGroupProgram) -> tuple[np.ndarray, np.ndarray]:
    """[S] queue and depth of every global slot (cached per program object)."""
    key = id(program)
    hit = _SLOT_TABLES.get(key)
    if hit is None or hit[0] is not program:
        total = sum(g.num_slots for g in program.groups)
        q = np.zeros(total, np.int64)
        d = np.zeros(total, np.int64)
        for s in range(total):
            _, q[s], d[s] = slot_location(program, s)
        hit = (program, q, d)
        if len(_SLOT_TABLES) > 64:
            _SLOT_TABLES.clear()
        _SLOT_TABLES[key] = hit
    return hit[1], hit[2]


def _witness(shape: EngineShape, program: CubeGroupProgram, st: State, tab: Tables) -> list[dict[str, Any]]:
    """Every unfinished core and the predicate it is blocked on, from the final arrays."""
    consts = shape.aic_constants()
    out = []
    for c, core in enumerate(consts["core"]):
        phase = int(st.aic_phase[c])
        if phase == AicPhase.DONE:
            continue
        if phase == AicPhase.CALL:
            f = int(st.aic_free_pc[c])
            slot, until = int(st.aic_free_slot[c, f]), int(st.aic_free_wait[c, f])
            until_name = "FREE" if until == NO_WAIT else state_name(until)
        else:
            slot = int(consts["block"][c] + st.aic_row[c] * consts["p"][c] + st.aic_col[c])
            until_name = "NOT_FREE"
        gi, q, d = slot_location(program, slot)
        out.append(
            {"core": f"aic{int(core)}", "group": program.groups[gi].name, "queue": q, "depth": d, "until": until_name}
        )
    for v, block in enumerate(shape.aiv_blocks):
        pc = int(st.aiv_pc[v])
        if pc >= int(tab.op_len[v]):
            continue
        kind = int(tab.op_kind[v, pc])
        if kind in (OpKind.ALLOC, OpKind.WAIT):
            gi, q, d = slot_location(program, int(tab.op_slot[v, pc]))
            out.append(
                {"core": f"aiv{block}", "group": program.groups[gi].name, "queue": q, "depth": d, "until": "FREE"}
            )
        elif kind in (OpKind.ARRIVE, OpKind.BWAIT):
            b = program.barriers[int(tab.op_a[v, pc])]
            thr = int(tab.op_c[v, pc])
            until = f"W=={thr}" if kind == OpKind.ARRIVE else f"A>={thr}"
            out.append({"core": f"aiv{block}", "barrier": b.name, "index": int(tab.op_b[v, pc]), "until": until})
    return out

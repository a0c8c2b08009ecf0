"""``simulate``: runs one or many programs in the JAX engine.

Data flow: every distinct program is encoded once (numpy, :mod:`ascend_jax.cube_group.encode`),
padded to the batch's common :class:`EngineShape` and run as one jitted ``lax.while_loop`` whose
body is the protocol :func:`step` vmapped over lanes, then the AIVs' vector ops
(:func:`apply_vector_ops`) and the compute phase (:func:`matmul_tiles`, :func:`store_tiles`), each under a
``lax.cond`` that skips it when no core of any lane performed one. Lanes that run the same program share one copy of its tables (``vmap`` with
``in_axes=None``). The batch axis is sharded over the chosen devices (a 1-D mesh). Each lane is
bounded by its own ``max_steps``; the loop runs until its slowest lane stops. The final arrays
come back as a :class:`BatchResult` (:mod:`ascend_jax.cube_group.readout`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import sys
import zlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ascend_jax.buckets import bucket
from ascend_jax.cube_group import banks, compute
from ascend_jax.cube_group.compute import (
    apply_vector_ops,
    matmul_requests,
    matmul_tiles,
    store_passes,
    store_tiles,
)
from ascend_jax.cube_group.encode import EncodedProgram, encode_program
from ascend_jax.cube_group.program import CubeGroupProgram
from ascend_jax.cube_group.readout import BatchResult, _Lanes
from ascend_jax.cube_group.state import (
    EngineShape,
    State,
    Tables,
    build_tables,
    can_pack,
    init_state,
    read_only,
    unpack_slots,
)
from ascend_jax.cube_group.status import ENCODED_KIND, AicPhase, AivCall, ErrorCode, OpKind, Status
from ascend_jax.cube_group.step import cursor_slot, final_status, lane_done, step
from ascend_jax.errors import ConfigError
from ascend_jax.gm import row_margin

#: Most lanes per compiled call on a CPU by default (measured: 16,384 lanes of the sample protocol
#: ran 7.2 M messages/s in one call and 8.6 M/s in chunks of 4,096).
CPU_CHUNK = 4096

#: Whether batches that allow it run on the packed slot grid (:func:`can_pack`); tests turn it
#: off to compare the packed and the wide grid.
PACKED_GRID = True

#: Incremented each time the batched run is traced (tests use it to check for retracing).
TRACE_COUNT = {"run": 0}


def _compute(shape: EngineShape, tab: Tables, st: State, en: jax.Array, fields: jax.Array) -> State:
    """The compute phase of every lane (vmapped; lane-major GM), then GM errors into the state. C
    tiles are stored in passes (:func:`store_passes`): one when no two windows of a step
    overlap, the most any lane needs otherwise. An AIC stopped here may leave nothing running:
    the lane then ends in this step, as in the reference (whose compute phase comes before its
    end-of-step check)."""
    reqs, bad, addr = jax.vmap(functools.partial(matmul_requests, shape), in_axes=(1, 2))(en, fields)
    ro = read_only(shape, tab)
    tiles = jax.vmap(functools.partial(matmul_tiles, shape), in_axes=(None if shape.shared else 0, 0, 0))(
        ro, st.gm, reqs
    )
    passes = jax.vmap(functools.partial(store_passes, shape))(st.key, reqs)
    n_passes = [jnp.where(e, p + 1, 0).max() for p, (_, e) in zip(passes, reqs, strict=True)]  # over all lanes
    gm = jax.vmap(functools.partial(store_tiles, shape), in_axes=(0, 0, 0, 0, None))(
        st.gm, reqs, tiles, passes, n_passes
    )
    bad = bad.T & (st.aic_phase != AicPhase.ERROR)  # [C, B]: these AICs stop here

    def pick(new, old):
        return jnp.where(bad, new, old).astype(jnp.int32)

    phase = pick(AicPhase.ERROR, st.aic_phase)
    done = lane_done(shape, tab, st.aiv_pc, phase, st.aiv_mte3)
    status = jnp.where((st.status == Status.RUNNING) & done, Status.OK, st.status)
    return dataclasses.replace(
        st,
        gm=gm,
        aic_phase=phase,
        status=final_status(status, phase),
        aic_err_code=pick(ErrorCode.GM_OUT_OF_RANGE, st.aic_err_code),
        aic_err_slot=pick(cursor_slot(shape, st), st.aic_err_slot),
        aic_err_ver=pick(st.aic_ver, st.aic_err_ver),
        aic_err_addr=pick(addr.T, st.aic_err_addr),
    )


def batch_step(shape: EngineShape, tab: Tables, cost: jax.Array, st: State) -> State:
    """One step of every lane: the protocol step, then the compute phase if any lane needs it."""
    st, en, fields, vec = step(shape, tab, cost, st)
    if vec is not None:  # the AIVs' vector ops act before the step's matmuls are written
        v_en, words = vec
        gm, ub = jax.lax.cond(
            v_en.any(),
            lambda g, u: apply_vector_ops(shape, g, u, v_en, words),
            lambda g, u: (g, u),
            st.gm[0],  # vector ops keep GM as bytes (see banks.plan)
            st.ub,
        )
        st = dataclasses.replace(st, gm=(gm,), ub=ub)
    if not shape.has_matmul:
        return st
    return jax.lax.cond(en.any(), lambda s: _compute(shape, tab, s, en, fields), lambda s: s, st)


def _run(shape: EngineShape, tab: Tables, cost: jax.Array, keys: jax.Array, start=None) -> State:
    """The compiled loop. ``start``: (slot grid, barrier arrive, barrier wait) of a previous launch
    to start from (a workspace that was not zeroed), or None for a zeroed workspace."""
    TRACE_COUNT["run"] += 1
    st = init_state(shape, tab, keys)
    if start is not None:
        st = dataclasses.replace(st, slot=start[0], barrier_arrive=start[1], barrier_wait=start[2])
    st = jax.lax.while_loop(
        lambda s: (s.status == Status.RUNNING).any(), functools.partial(batch_step, shape, tab, cost), st
    )
    return dataclasses.replace(st, slot=unpack_slots(shape, tab, st.slot))


def _compiler_options() -> dict[str, int] | None:
    """XLA options for the engine's loop: on a CPU with AVX-512, 512-bit vectors. The step is a
    long chain of elementwise integer operations over lanes, so the vector width sets its speed
    (measured on a 2-core AMD EPYC, one core, the sample protocol: about 210 against 255 ns per
    lane-step with XLA's default 256-bit preference, 520 with 128)."""
    if jax.default_backend() != "cpu":
        return None
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # pragma: no cover - numpy moved its feature table
        return None
    return {"xla_cpu_prefer_vector_width": 512} if features.get("AVX512F") else None


class _LazyJit:
    """``jax.jit(fn, static_argnums=(0,))`` with :func:`_compiler_options`, built on first use
    (asking for the backend at import would start JAX before :func:`init_distributed`)."""

    def __init__(self, fn):
        self.fn = fn

    @functools.cached_property
    def jitted(self):
        return jax.jit(self.fn, static_argnums=(0,), compiler_options=_compiler_options())

    def __call__(self, *args):
        return self.jitted(*args)

    def lower(self, *args):
        return self.jitted.lower(*args)


_run_batch = _LazyJit(_run)


def _run_arrays(shape: EngineShape, tab: Tables, cost: jax.Array, keys: jax.Array, start=None) -> dict[str, jax.Array]:
    """The compiled loop, then its final state as result arrays, lanes last (:func:`batch_minor`)."""
    return batch_minor(shape, _run(shape, tab, cost, keys, start))


_run_arrays_batch = _LazyJit(_run_arrays)


#: the rule and the fix of a seed out of range (a first seed or a per-lane one)
_SEED_RANGE = ("seeds must be integers in 0..2**32-1", "lower the first seed or the batch")


def _bucket(n: int) -> int:
    """A padded size of the cube-group engine: :func:`ascend_jax.buckets.bucket`, at least 8."""
    return bucket(n, 8)


def make_shape(
    programs: Sequence[CubeGroupProgram], encoded: Sequence[EncodedProgram], schedule: str, atomic_order: str = "fixed"
) -> EngineShape:
    """The common static shape of a batch; programs must share groups, matmul configs, barriers
    and GM tensor layout (ops, messages, callbacks and GM contents may differ per lane)."""
    first = programs[0]
    for i, p in enumerate(programs[1:], 1):
        same = (
            p.groups == first.groups
            and p.barriers == first.barriers
            and p.matmuls == first.matmuls
            and p.gm.same_layout(first.gm)
            and p.build == first.build
            and p.zero_workspace == first.zero_workspace
        )
        if not same:
            raise ConfigError(
                f"programs[{i}]",
                p.name,
                "lanes of one batch must share groups, matmul configs, barriers, tensors, build and zero_workspace",
            )
    all_ops = [op for p in programs for _, ops in p.aivs for op in ops]
    has_mm = any(m is not None for m in first.matmuls)
    n_vec = max(len(e.vec_ops) for e in encoded)
    has_gm = has_mm or n_vec > 0
    ub = tuple(int(x) for x in np.max([e.ub_dims for e in encoded], axis=0)) if n_vec else (0, 0, 0)
    shape = EngineShape(
        groups=first.groups,
        aiv_blocks=tuple(sorted({b for p in programs for b, _ in p.aivs})),
        max_ops=_bucket(max((len(r) for e in encoded for r in e.rows), default=1)),
        n_versions=_bucket(max(e.n_versions for e in encoded)),
        n_actions=max(e.n_actions for e in encoded),
        receive_capacity=_bucket(max(e.capacity for e in encoded)),
        barrier_copies=tuple(b.copies for b in first.barriers),
        schedule=schedule,
        matmuls=_matmul_configs(first, encoded),
        gm_size=_gm_size(first, encoded, ub[2]) if has_gm else 1,
        gm_real=first.gm.size if has_gm else 0,
        atomic_order=atomic_order if has_mm else "fixed",
        batched_stores=compute.BATCHED_STORES,
        wait_tests=any(op.kind == AivCall.WAIT and not op.sync for op in all_ops),
        shared=len(programs) == 1,
        build=first.build,
        stray=any(e.stray for e in encoded),
        op_kinds=tuple(sorted({int(ENCODED_KIND[op.kind]) for op in all_ops})),
        has_mte3=any(op.pipe == "MTE3" for op in all_ops),
        gm_bounds=tuple(tuple(int(x) for x in b) for b in first.gm.bounds()) if has_mm else (),
        n_vec_ops=_bucket(n_vec) if n_vec else 0,
        ub=ub,
    )
    shape = dataclasses.replace(shape, aiv_home=_aiv_home(shape, programs, encoded))
    if banks.TYPED_BANKS and has_mm:
        shape = dataclasses.replace(shape, banks=banks.plan(programs, encoded, _widest(encoded, ub[2])))
    packed = PACKED_GRID and first.zero_workspace and can_pack(shape, [e.rows for e in encoded])
    return dataclasses.replace(shape, packed=packed)


def _gm_size(first: CubeGroupProgram, encoded: Sequence[EncodedProgram], ub_cols: int = 0) -> int:
    """GM bytes the engine carries: the tensors, then a zero margin that a row window starting in
    GM never crosses (:func:`ascend_jax.gm.row_margin`), also the scratch of rows not written.
    ``ub_cols``: the widest UB buffer (a vector load reads rows of that many elements)."""
    return first.gm.size + row_margin(_widest(encoded, ub_cols))


def _widest(encoded: Sequence[EncodedProgram], ub_cols: int = 0) -> int:
    """The widest row window in elements: a tile's M, N or K bound, or a UB buffer's columns."""
    widest = max((max(d[:3]) for e in encoded for d in e.mm_dims if d is not None), default=1)
    return max(widest, ub_cols)


def _matmul_configs(first: CubeGroupProgram, encoded: Sequence[EncodedProgram]) -> tuple:
    """Per group: (MatmulType, TCubeTiling, (M, N, Kp, rows_disjoint, a_layout, b_layout) over
    every lane; see ``encode._tile_dims``) or None."""
    if not first.matmuls:
        return (None,) * len(first.groups)
    out = []
    for gi, cfg in enumerate(first.matmuls):
        if cfg is None:
            out.append(None)
            continue
        dims = np.max([e.mm_dims[gi][:3] for e in encoded], axis=0)
        disjoint = all(e.mm_dims[gi][3] for e in encoded)
        layouts = [{e.mm_dims[gi][j] for e in encoded} for j in (4, 5)]
        layouts = [x.pop() if len(x) == 1 else "both" for x in layouts]
        out.append((cfg[0], cfg[1], (*(int(x) for x in dims), disjoint, *layouts)))
    return tuple(out)


def _aiv_home(shape: EngineShape, programs: Sequence[CubeGroupProgram], encoded: Sequence[EncodedProgram]):
    """Per AIV row, the queue row (``c * W + col``) of the one queue it touches (-1: none), when
    every AIV touches at most one queue and lanes agree; else None (the step's general path)."""
    grid = shape.grid_of_slot >> 2  # [S] queue row of every slot
    homes = [-1] * len(shape.aiv_blocks)
    for p, e in zip(programs, encoded, strict=True):
        rows = dict(zip((b for b, _ in p.aivs), e.rows, strict=True))
        for v, b in enumerate(shape.aiv_blocks):
            touched = {int(grid[slot]) for kind, slot, *_ in rows.get(b, []) if kind in _SLOT_OPS}
            if len(touched) > 1 or (touched and homes[v] not in (-1, *touched)):
                return None
            if touched:
                homes[v] = touched.pop()
    bound = [h for h in homes if h >= 0]
    if len(set(bound)) != len(bound):  # two AIVs on one queue row: no static row per AIV
        return None
    return tuple(homes)


_SLOT_OPS = (OpKind.ALLOC, OpKind.WRITE, OpKind.WAIT)


@dataclasses.dataclass
class Prepared:
    """A batch ready to run: static shape, tables (numpy), per-lane arrays."""

    shape: EngineShape
    lanes: _Lanes
    tables: Tables  # shared: one program's; else stacked, lane axis last (first for LANE_MAJOR)
    costs: np.ndarray  # [B, len(CostModel.FIELDS)] float32
    keys: np.ndarray  # [B, 2] uint32
    seeds: np.ndarray  # [B]

    def chunk(self, idx: np.ndarray) -> tuple[Tables, np.ndarray, np.ndarray]:
        """Tables, [12, b] costs and [b, 2] keys of the lanes ``idx``."""
        tab = self.tables
        if not self.shape.shared:
            tab = Tables(
                **{
                    f.name: (jax.tree.map(lambda y: y[idx], x) if f.name in Tables.LANE_MAJOR else x[..., idx])
                    for f in dataclasses.fields(Tables)
                    for x in [getattr(tab, f.name)]
                }
            )
        return tab, np.ascontiguousarray(self.costs[idx].T), self.keys[idx]


def prepare(
    programs: CubeGroupProgram | Sequence[CubeGroupProgram],
    schedule: str = "lockstep",
    seeds: int | Sequence[int] = 0,
    atomic_order: str = "fixed",
    costs: Any = None,
    max_steps: int | None = None,
) -> Prepared:
    """Validates the arguments and encodes a batch (each distinct program once)."""
    if schedule not in ("lockstep", "random", "timed"):
        raise ConfigError("schedule", schedule, "must be 'lockstep', 'random' or 'timed'")
    if atomic_order not in ("fixed", "random"):
        raise ConfigError("atomic_order", atomic_order, "must be 'fixed' or 'random'")
    if isinstance(programs, CubeGroupProgram):
        programs = [programs]
    programs = list(programs)
    if not programs:
        raise ConfigError("programs", [], "needs at least one program")
    if max_steps is not None:  # one replacement per distinct program keeps shared lanes shared
        if not isinstance(max_steps, int) or isinstance(max_steps, bool) or not 1 <= max_steps < 2**31:
            raise ConfigError("max_steps", max_steps, "must be an integer in 1..2**31-1")
        swapped = {id(p): dataclasses.replace(p, max_steps=max_steps) for p in programs}
        programs = [swapped[id(p)] for p in programs]
    n = len(programs)
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        if not 0 <= int(seeds) <= 2**32 - n:  # lane i gets seed + i
            raise ConfigError("seeds", int(seeds), *_SEED_RANGE)
        seeds_arr = np.arange(int(seeds), int(seeds) + n, dtype=np.int64).astype(np.uint32)
    else:
        if isinstance(seeds, (bool, str, bytes)) or not isinstance(seeds, (Sequence, np.ndarray)):
            raise ConfigError("seeds", seeds, "must be an integer (lane i gets seed + i) or one integer per lane")
        seeds = list(seeds)
        if len(seeds) != n:
            raise ConfigError("seeds", seeds, f"needs one seed per lane ({n})")
        bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 0 <= s < 2**32]
        if bad:
            raise ConfigError("seeds", bad[0], *_SEED_RANGE)
        seeds_arr = np.asarray(seeds, np.uint32)
    from ascend_jax.timing import CostModel

    ids = np.fromiter(map(id, programs), np.int64, n)  # distinct programs in order of first use
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    by_use = np.argsort(first)
    rank = np.empty_like(by_use)
    rank[by_use] = np.arange(len(by_use))
    index = rank[inverse.reshape(-1)]
    distinct = [programs[i] for i in first[by_use]]
    if costs is None or isinstance(costs, CostModel):
        vecs = np.stack([(costs or CostModel.for_chip(p.chip)).vector() for p in distinct])
        cost_arr = vecs[index]  # one cost vector per distinct program, gathered per lane
    else:
        if len(costs) != len(programs) or not all(c is None or isinstance(c, CostModel) for c in costs):
            raise ConfigError("costs", type(costs).__name__, f"needs a CostModel or one per lane ({len(programs)})")
        defaults = [CostModel.for_chip(p.chip).vector() for p in distinct]
        cost_arr = np.stack([defaults[i] if c is None else c.vector() for c, i in zip(costs, index, strict=True)])
    encoded = [encode_program(p) for p in distinct]
    shape = make_shape(distinct, encoded, schedule, atomic_order)
    tables = [build_tables(shape, p, e) for p, e in zip(distinct, encoded, strict=True)]
    if shape.shared:
        tab = tables[0]
    else:
        stacked = jax.tree.map(lambda *xs: np.stack(xs)[index], *tables)  # lane axis first
        tab = Tables(
            **{
                f.name: (x if f.name in Tables.LANE_MAJOR else np.moveaxis(x, 0, -1))
                for f in dataclasses.fields(Tables)
                for x in [getattr(stacked, f.name)]
            }
        )
    keys = np.zeros((len(programs), 2), np.uint32)
    if shape.needs_key:  # threefry key data of jax.random.key(seed) for a 32-bit seed: [0, seed]
        keys[:, 1] = seeds_arr
    return Prepared(shape, _Lanes(distinct, encoded, index), tab, cost_arr, keys, seeds_arr)


def _memory_budget() -> int:
    """Bytes of device memory a chunk of lanes may use (``ASCEND_JAX_MEMORY_BUDGET``, default 2 GiB)."""
    raw = os.environ.get("ASCEND_JAX_MEMORY_BUDGET", str(2 * 2**30))
    try:
        value = int(float(raw))
    except (ValueError, OverflowError):  # "abc", "nan"; "inf", "1e400"
        value = 0
    if not 1 <= value <= 2**50:
        raise ConfigError(
            "ASCEND_JAX_MEMORY_BUDGET", raw, "must be a number of bytes in 1..2^50 (1 PiB)", "e.g. 2e9 (default 2 GiB)"
        )
    return value


def lane_bytes(program: CubeGroupProgram, schedule: str = "lockstep") -> int:
    """Bytes of one lane's state plus its tables (the per-lane footprint; a step needs a few times
    this in temporaries, hence the factor 8 in the automatic chunk size)."""
    return _lane_bytes(prepare([program], schedule))


def _lane_bytes(prep: Prepared) -> int:
    hit = _LANE_BYTES.get(prep.shape)
    if hit is None:
        hit = _LANE_BYTES[prep.shape] = _measure_lane_bytes(prep)
    return hit


_LANE_BYTES: dict = {}  # per static shape: the bytes depend on shapes only


def _measure_lane_bytes(prep: Prepared) -> int:
    tab, _, keys = prep.chunk(np.zeros(1, np.int64))
    st = jax.eval_shape(functools.partial(init_state, prep.shape), tab, jnp.asarray(keys))
    leaves = jax.tree.leaves(st) + ([] if prep.shape.shared else jax.tree.leaves(tab))
    return int(sum(np.prod(x.shape, dtype=np.int64) * np.dtype(x.dtype).itemsize for x in leaves))


#: Environment variables that join this process to a multi-process run (see :func:`init_distributed`).
#: Largest number of processes of a multi-process run (JAX's distributed runtime takes an int32 count).
MAX_PROCESSES = 65536
DISTRIBUTED_ENV = ("ASCEND_JAX_COORDINATOR", "ASCEND_JAX_NUM_PROCESSES", "ASCEND_JAX_PROCESS_ID")


def init_distributed(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> bool:
    """Joins this process to a multi-process run (``jax.distributed.initialize``), so that
    :func:`simulate` shards its lanes over the devices of every process.

    Each argument left out is read from its environment variable (:data:`DISTRIBUTED_ENV`):
    ``ASCEND_JAX_COORDINATOR`` (``host:port`` of process 0, reachable from every process),
    ``ASCEND_JAX_NUM_PROCESSES`` (an integer in 1..:data:`MAX_PROCESSES`) and ``ASCEND_JAX_PROCESS_ID`` (0..N-1, distinct
    per process). Give all three or none. Must run before anything else in the process uses JAX;
    :func:`simulate` calls it first, so setting the variables is enough for the CLI. Idempotent.

    Returns:
      True if this process is part of an initialised ``jax.distributed`` run (by this call, an
      earlier one or the user's own ``jax.distributed.initialize``), False if nothing was asked.
    """
    if jax.distributed.is_initialized():
        return True
    names = dict(zip(("coordinator", "num_processes", "process_id"), DISTRIBUTED_ENV, strict=True))
    given = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    field = {k: k for k in given}
    for k, env in names.items():
        if given[k] is None and os.environ.get(env, "") != "":
            given[k], field[k] = os.environ[env], env
    if all(v is None for v in given.values()):
        return False
    from_env = any(field[k] != k for k in given)
    for k, v in given.items():
        if v is None:
            have = " and ".join(field[o] for o in given if given[o] is not None)
            raise ConfigError(
                names[k] if from_env else k,
                None,
                "a multi-process run needs a coordinator, a number of processes and a process id "
                f"(arguments coordinator, num_processes, process_id or variables {', '.join(DISTRIBUTED_ENV)}), "
                f"but only {have} given",
                f"set {names[k] if from_env else k} too, or unset the others for a single-process run",
            )
    addr = str(given["coordinator"])
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(
            field["coordinator"], addr, "must be HOST:PORT with a port in 1..65535", "e.g. localhost:12345"
        )
    n = _whole(field["num_processes"], given["num_processes"], 1, MAX_PROCESSES, "the number of processes, e.g. 2")
    pid = _whole(
        field["process_id"],
        given["process_id"],
        0,
        n - 1,
        f"one of 0..{n - 1}, a different one in each process (0: the coordinator's)",
    )
    timeout = _whole(INIT_TIMEOUT_ENV, os.environ.get(INIT_TIMEOUT_ENV) or str(DEFAULT_INIT_TIMEOUT_S), 1, 86400,
                     f"a whole number of seconds, e.g. {DEFAULT_INIT_TIMEOUT_S}")  # fmt: skip
    from jax._src import xla_bridge  # private, hence the getattr: has JAX already started here?

    if not getattr(xla_bridge, "backends_are_initialized", lambda: False)():  # else initialize says so at once
        whom = f"the coordinator (process 0) at {addr}" if pid else f"{n - 1} other process(es) to join at {addr}"
        print(f"ascend-jax: process {pid} of {n} is waiting for {whom} (gives up after {timeout} s; "
              f"{INIT_TIMEOUT_ENV} sets it)", file=sys.stderr, flush=True)  # fmt: skip
        if pid:  # JAX aborts the whole process when the coordinator never answers: look first
            _wait_for_coordinator(field["coordinator"], addr, host, int(port), timeout, f"process {pid} of {n}")
    try:
        jax.distributed.initialize(
            coordinator_address=addr, num_processes=n, process_id=pid, initialization_timeout=timeout
        )
    except RuntimeError as e:
        if "must be called before" not in str(e):
            raise
        raise ConfigError(
            field["coordinator"],
            addr,
            "JAX had already started in this process, so it can no longer join a multi-process run",
            "join first (init_distributed() before any other JAX call); on the command line leave --devices out",
        ) from None
    return True


#: Seconds ``init_distributed`` waits for the other processes (``ASCEND_JAX_INIT_TIMEOUT`` overrides).
DEFAULT_INIT_TIMEOUT_S = 60
INIT_TIMEOUT_ENV = "ASCEND_JAX_INIT_TIMEOUT"


def _wait_for_coordinator(field: str, addr: str, host: str, port: int, timeout: float, who: str) -> None:
    """Returns once something accepts a TCP connection at ``host:port``; raises :class:`ConfigError`
    after ``timeout`` seconds (JAX's own wait ends by aborting the process, with no message)."""
    import socket
    import time

    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((host.strip("[]"), port), timeout=max(0.05, min(1.0, left))):
                return
        except OSError:
            if left <= 0:
                raise ConfigError(
                    field, addr, f"no coordinator answered there within {timeout} s ({who} waits for process 0)",
                    f"start process 0 first, check the address, or raise {INIT_TIMEOUT_ENV} (seconds)",
                ) from None  # fmt: skip
            time.sleep(min(0.2, max(0.0, left)))


def _whole(field: str, value: Any, lo: int, hi: int | None, fix: str) -> int:
    """``value`` (an int or its decimal text) as an int in lo..hi, else a ConfigError."""
    text = value.strip() if isinstance(value, str) else value
    ok = isinstance(text, int) and not isinstance(text, bool)
    if isinstance(text, str) and text.isdigit():
        text, ok = int(text), True
    if not ok or text < lo or (hi is not None and text > hi):
        rule = f"must be an integer in {lo}..{hi}" if hi is not None else f"must be an integer >= {lo}"
        raise ConfigError(field, value, rule, fix)
    return text


def _mesh(devices: int | None):
    """A 1-D mesh over the first ``devices`` devices (all by default), or None for one device.

    In a multi-process run (``jax.process_count() > 1``) the mesh spans every device of every
    process (``jax.devices()`` is global there), so ``devices`` must be left out or name them all."""
    avail = jax.devices()
    n = len(avail) if devices is None else devices
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(avail):
        raise ConfigError("devices", devices, f"must be an integer in 1..{len(avail)} (devices available)")
    if jax.process_count() > 1 and n != len(avail):
        raise ConfigError(
            "devices",
            devices,
            f"a multi-process run shards the lanes over all {len(avail)} devices of its {jax.process_count()} processes",
            "leave devices (--devices) out",
        )
    if n == 1:
        return None
    return jax.sharding.Mesh(np.array(avail[:n]), ("lanes",))


def _place(mesh, shape: EngineShape, tab: Tables, cost: np.ndarray, keys: np.ndarray):
    """Device arrays for one chunk: lane axes sharded over ``mesh``, shared tables replicated.

    Every process holds the whole chunk in host memory (all run :func:`prepare` on the same
    programs) and copies only the lanes of its own devices (``jax.make_array_from_callback`` asks
    for the addressable shards only), so this serves one process and many alike."""
    if mesh is None:
        return jax.tree.map(jnp.asarray, tab), jnp.asarray(cost), jnp.asarray(keys)
    from jax.sharding import NamedSharding, PartitionSpec

    def put(x: np.ndarray, spec: PartitionSpec) -> jax.Array:
        return jax.make_array_from_callback(x.shape, NamedSharding(mesh, spec), lambda index: x[index])

    def first(x):
        return put(x, PartitionSpec("lanes"))

    def last(x):
        return put(x, PartitionSpec(*([None] * (x.ndim - 1)), "lanes"))

    def table(name, x):
        if shape.shared:
            return jax.tree.map(lambda y: put(y, PartitionSpec()), x)
        return jax.tree.map(first, x) if name in Tables.LANE_MAJOR else last(x)

    tab = Tables(**{f.name: table(f.name, getattr(tab, f.name)) for f in dataclasses.fields(Tables)})
    return tab, last(cost), first(keys)


def _fetch(mesh, st):
    """The final state as host numpy arrays, whole on every process: a multi-process run first
    replicates every field over the mesh (one compiled all-gather), then reads the local copy."""
    if mesh is not None and jax.process_count() > 1:
        from jax.sharding import NamedSharding, PartitionSpec

        st = _replicate(NamedSharding(mesh, PartitionSpec()))(st)
        return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), st)
    return jax.device_get(st)


@functools.cache
def _replicate(sharding):
    return jax.jit(lambda s: s, out_shardings=sharding)


@contextlib.contextmanager
def _native_stdout_to_stderr(mesh):
    """In a multi-process run, points file descriptor 1 at stderr while the batch runs: JAX's CPU
    collectives (Gloo) print a line per connection to the process's stdout, which ``--json``
    output must not contain. Python's own ``sys.stdout`` is flushed before and after."""
    if mesh is None or jax.process_count() == 1:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _check_same_call(mesh, prep: Prepared, chunk_size: int) -> None:
    """In a multi-process run, insists that every process called :func:`simulate` alike (the
    processes run one SPMD program: different lanes would hang or mix batches)."""
    if mesh is None or jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    tables = 0  # every encoded program (ops, messages, callback decisions, GM contents) of every lane
    for x in jax.tree.leaves(prep.tables):
        tables = zlib.crc32(np.ascontiguousarray(x), tables)
    parts = [repr(prep.shape).encode(), prep.seeds.tobytes(), prep.costs.tobytes(), prep.keys.tobytes()]
    mine = np.array([len(prep.seeds), chunk_size, tables, *(zlib.crc32(b) for b in parts)], np.uint32)
    every = np.asarray(multihost_utils.process_allgather(mine))  # [processes, 7]
    if not (every == mine).all():
        raise ConfigError(
            "programs",
            f"process {jax.process_index()} of {jax.process_count()}",
            "every process of a multi-process run must call simulate with the same programs, seeds and options",
            "give every process the same arguments (each copies only its own lanes to its devices)",
        )


def default_chunk(prep: Prepared) -> int:
    """Lanes per compiled call when ``simulate`` is not told: what fits the memory budget, and on a
    CPU at most :data:`CPU_CHUNK` (lanes beyond a few thousand fall out of the CPU caches)."""
    n = len(prep.seeds)
    chunk = 1 if n == 1 else max(1, min(n, _memory_budget() // (8 * _lane_bytes(prep))))
    return min(chunk, CPU_CHUNK) if jax.default_backend() == "cpu" else chunk


def compile_batch(prep: Prepared, chunk: int | None = None, devices: int | None = None):
    """The compiled loop of a prepared batch and its device arguments (for benchmarks):
    ``fn, args = compile_batch(prep); jax.block_until_ready(fn(*args))`` runs the loop alone."""
    n = len(prep.seeds) if chunk is None else chunk
    args = _place(_mesh(devices), prep.shape, *prep.chunk(np.arange(n)))
    return _run_batch.lower(prep.shape, *args).compile(), args


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
    devices: int | None = None,
) -> BatchResult:
    """Runs programs in the JAX engine, one batch lane each.

    Args:
      programs: one program or a list (lanes); lanes must share geometry, matmul configs,
        barriers and tensors but may differ in ops, messages, callbacks, delays and limits.
      schedule: ``"lockstep"``, ``"random"`` (each enabled core acts with probability 1/2) or
        ``"timed"`` (events in cycle order from the cost model).
      seeds: one seed per lane, or a first seed (lane i gets seed + i); all in 0..2**32-1.
      max_steps: overrides every program's ``max_steps``.
      jit: False runs the same step eagerly (slow; for debugging and tests).
      atomic_order: ``"fixed"`` writes a step's matmul results in AIC index order; ``"random"``
        in a permutation drawn per lane and step (bounds the order dependence of atomics).
      chunk_size: lanes per compiled call; default: as many as fit ``ASCEND_JAX_MEMORY_BUDGET``
        bytes (see :func:`lane_bytes`). A batch larger than a chunk runs chunk by chunk with one
        compilation (the last chunk is padded with copies of its first lane).
      progress: show a progress bar over chunks (lanes done, elapsed, ETA); with an automatic chunk
        size, a batch of :data:`PROGRESS_LANES` lanes or more runs in about four chunks or more.
      costs: the ``timed`` schedule's :class:`ascend_jax.timing.CostModel`: one for every lane or
        one per lane (lanes may differ without recompiling); default ``CostModel.for_chip``.
      devices: shard the batch axis over this many devices (default: all of them). In a
        multi-process run (``jax.distributed`` initialised, or the :data:`DISTRIBUTED_ENV`
        variables set: see :func:`init_distributed`) the lanes are sharded over every device of
        every process and ``devices`` must be left out; every process must call ``simulate``
        with the same arguments, copies only its own lanes to its devices and gets the whole
        :class:`BatchResult` back. ``jit=False`` runs every lane in every process.
    Returns:
      a :class:`BatchResult`: arrays for the whole batch; ``res[i]`` is lane i's
      :class:`CubeGroupResult`.
    """
    init_distributed()  # before anything else touches JAX: joins a run the environment describes
    prep = prepare(programs, schedule, seeds, atomic_order, costs, max_steps)
    n = len(prep.seeds)
    mesh = _mesh(devices) if jit else None
    n_dev = 1 if mesh is None else mesh.size
    if chunk_size is None:
        chunk_size = default_chunk(prep)
        if progress and n >= PROGRESS_LANES:  # a few chunks, so the bar can count lanes and estimate the rest
            chunk_size = min(chunk_size, max(PROGRESS_LANES // 4, 1 << ((-(-n // 4)).bit_length() - 1)))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ConfigError("chunk_size", chunk_size, "must be an integer >= 1")
    chunk_size = min(chunk_size, n)
    chunk_size = -(-chunk_size // n_dev) * n_dev  # every device gets the same number of lanes
    with _native_stdout_to_stderr(mesh):  # a multi-process run's collectives chat on stdout
        _check_same_call(mesh, prep, chunk_size)
        parts: list[dict[str, np.ndarray]] = []
        bar = _progress(progress and n > chunk_size, n)
        for lo in range(0, n, chunk_size):
            idx = np.arange(lo, lo + chunk_size)
            real = min(chunk_size, n - lo)
            idx[real:] = lo  # pad: one compilation for every chunk
            args = prep.chunk(idx)
            relaunch = not prep.lanes.programs[0].zero_workspace
            if jit:
                placed = _place(mesh, prep.shape, *args)
                start = None
                if relaunch:  # report a second launch on the first one's workspace
                    first = _run_batch(prep.shape, *placed)
                    start = (first.slot, first.barrier_arrive, first.barrier_wait)
                final = _lanes_first(_run_arrays_batch(prep.shape, *placed, start))
            else:
                st = _run_eager(prep.shape, *args)
                if relaunch:
                    st = _run_eager(prep.shape, *args, (st.slot, st.barrier_arrive, st.barrier_wait))
                final = lane_major(prep.shape, st)
            host = {k: np.asarray(v) for k, v in _fetch(mesh, final).items()}
            parts.append({k: v[:real] for k, v in gm_host(prep.shape, args[0], host).items()})
            if bar is not None:
                bar[0].update(bar[1], advance=real)
        if bar is not None:
            bar[0].stop()
    return BatchResult(prep.shape, prep.lanes, _assemble(parts, n), prep.seeds, prep.costs, schedule)


def batch_minor(shape: EngineShape, st: State) -> dict[str, jax.Array]:
    """The final state as one flat dict of result arrays, lanes still the last axis (but
    ``State.LANE_MAJOR`` fields); slots (and slot times) in global slot order ``[S, B]`` as
    ``slot_state`` and ``slot_ver`` (both :attr:`EngineShape.version_dtype`), queue occupancy in
    queue order ``[Q, 5, B]``; GM as its tensors' bytes ``gm`` ``[B, gm_real]``, or with typed
    banks the written banks ``gm_bank0`` ... ``[B, n]`` (:func:`gm_host` makes them bytes).
    :func:`lane_major` finishes the job."""
    b = st.status.shape[-1]
    grid = shape.grid_of_slot
    out = {f.name: getattr(st, f.name) for f in dataclasses.fields(State) if f.name not in ("timed", "ub", "slot")}
    if shape.banks is None:  # the tensors' bytes (the margin after them is the engine's scratch)
        out["gm"] = st.gm[0][:, : shape.gm_real]
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


def _lanes_first(arrays: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """``arrays`` (:func:`batch_minor`) with the lane axis first."""
    first_axis = set(State.LANE_MAJOR)
    return {k: (v if k in first_axis or k.startswith("gm_bank") else _move_lanes_first(v)) for k, v in arrays.items()}


def gm_host(shape: EngineShape, tab: Tables, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Host result arrays with the final GM as bytes: with typed banks, the written banks
    (``gm_bank0`` ...) and the read-only ones (``tab``, numpy, the same lanes) become ``gm``
    ``[B, gm_real] uint8``; as bytes, ``arrays`` unchanged. Each timed quantity's two float32
    words (``name``, ``name_lo``) become one float64 array ``name`` (cycles, exact)."""
    if any(k.endswith("_lo") for k in arrays):
        from ascend_jax.cube_group import clock  # here: the import block is shared with other edits

        words = {k[:-3] for k in arrays if k.endswith("_lo") and k[:-3] in arrays}
        arrays = {
            k: clock.to_float((v, arrays[f"{k}_lo"])) if k in words else v
            for k, v in arrays.items()
            if not (k.endswith("_lo") and k[:-3] in words)
        }
    if shape.banks is None:
        return arrays
    out = {k: v for k, v in arrays.items() if not k.startswith("gm_bank")}
    rw = [np.asarray(arrays[f"gm_bank{i}"]) for i in range(len(shape.banks.rw))]
    ro = [np.asarray(x) for x in read_only(shape, tab)]
    out["gm"] = banks.host_image(shape.banks, ro, rw, len(arrays["status"]), shape.gm_real)
    return out


def lane_major(shape: EngineShape, st: State) -> dict[str, jax.Array]:
    """The final state as one flat dict of lane-major arrays ``[B, ...]`` (the :class:`BatchResult`
    arrays; see :func:`batch_minor`). The transposes run on the device: numpy transposes of the
    receive log cost more than the loop."""
    return _lanes_first(batch_minor(shape, st))


def _assemble(parts: list[dict[str, np.ndarray]], n: int) -> dict[str, np.ndarray]:
    """One dict of ``[n, ...]`` arrays from the chunks' lane-major arrays (each already cut to its
    real lanes). The receive log keeps only the entries some lane filled (``R`` becomes the largest
    ``recv_count``): its capacity is a power-of-two bucket with room for two extra laps, mostly
    empty, and copying it whole was the largest host cost of a big batch."""
    used = max(int(p["recv_count"].max(initial=0)) for p in parts)
    if len(parts) == 1:
        out = dict(parts[0])
        out["recv_ver"] = out["recv_ver"][..., :used]
        return out
    out = {}
    for k, first in parts[0].items():
        cut = (..., slice(used)) if k == "recv_ver" else (...,)
        whole = np.empty((n, *first[cut].shape[1:]), first.dtype)
        lo = 0
        for p in parts:
            whole[lo : lo + len(p[k])] = p[k][cut]
            lo += len(p[k])
        out[k] = whole
    return out


#: With ``progress``, a batch of at least this many lanes runs in at least about four chunks when
#: the chunk size is automatic (one compiled call cannot report how far it got).
PROGRESS_LANES = 1024


def _progress(show: bool, total: int):
    if not show:
        return None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn())  # fmt: skip
    bar = Progress(*columns, console=Console(stderr=True), transient=True)  # stdout stays clean for --json
    task = bar.add_task("lanes", total=total)
    bar.start()
    return bar, task


def batch_jaxpr(programs: Sequence[CubeGroupProgram], atomic_order: str = "fixed"):
    """The jaxpr of one engine step of a batch (protocol step and compute phase), for inspection:
    e.g. ``count_dot_generals(batch_jaxpr([p] * 8))`` shows the compute is one batched matmul."""
    prep = prepare(programs, "lockstep", list(range(len(programs))), atomic_order)
    tab, cost, keys = (jax.tree.map(jnp.asarray, x) for x in prep.chunk(np.arange(len(programs))))
    st = init_state(prep.shape, tab, keys)
    return jax.make_jaxpr(functools.partial(batch_step, prep.shape))(tab, cost, st)


def _run_eager(shape: EngineShape, tab: Tables, cost: np.ndarray, keys: np.ndarray, start=None) -> State:
    """The same semantics without jit: a Python loop over steps of the batch."""
    tab, cost = jax.tree.map(jnp.asarray, tab), jnp.asarray(cost)
    with jax.disable_jit():
        st = init_state(shape, tab, jnp.asarray(keys))
        if start is not None:
            st = dataclasses.replace(st, slot=start[0], barrier_arrive=start[1], barrier_wait=start[2])
        while bool((st.status == Status.RUNNING).any()):
            st = batch_step(shape, tab, cost, st)
        return dataclasses.replace(st, slot=unpack_slots(shape, tab, st.slot))


__all__ = [
    "DISTRIBUTED_ENV",
    "BatchResult",
    "TRACE_COUNT",
    "batch_jaxpr",
    "compile_batch",
    "init_distributed",
    "lane_bytes",
    "prepare",
    "simulate",
]

"""``simulate``: runs one or many programs in the JAX engine.

Data flow: every distinct program is encoded once (numpy, :mod:`ascend_jax.cube_group.encode`),
padded to the batch's common :class:`EngineShape` and run as one jitted ``lax.while_loop`` whose
body is the protocol :func:`step` vmapped over lanes, followed by the compute phase
(:func:`apply_matmuls`) under a ``lax.cond`` that skips it when no AIC of any lane performed a
matmul. Lanes that run the same program share one copy of its tables (``vmap`` with
``in_axes=None``). The batch axis is sharded over the chosen devices (a 1-D mesh). Each lane is
bounded by its own ``max_steps``; the loop runs until its slowest lane stops. The final arrays
come back as a :class:`BatchResult` (:mod:`ascend_jax.cube_group.readout`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ascend_jax.cube_group.compute import apply_matmuls
from ascend_jax.cube_group.encode import EncodedProgram, encode_program
from ascend_jax.cube_group.program import CubeGroupProgram
from ascend_jax.cube_group.readout import BatchResult, _Lanes
from ascend_jax.cube_group.state import EngineShape, State, Tables, build_tables, init_state
from ascend_jax.cube_group.status import AicPhase, ErrorCode, OpKind, Status
from ascend_jax.cube_group.step import cursor_slot, final_status, step
from ascend_jax.errors import ConfigError

#: Most lanes per compiled call on a CPU by default (measured: 16,384 lanes of the sample protocol
#: ran 7.2 M messages/s in one call and 8.6 M/s in chunks of 4,096).
CPU_CHUNK = 4096

#: Incremented each time the batched run is traced (tests use it to check for retracing).
TRACE_COUNT = {"run": 0}


def _compute(shape: EngineShape, tab: Tables, st: State, en: jax.Array, ver: jax.Array, pc: jax.Array) -> State:
    """The compute phase of every lane (vmapped; lane-major GM), then GM errors into the state."""
    axis = None if shape.shared else 0
    gm, bad = jax.vmap(functools.partial(apply_matmuls, shape), in_axes=(axis, axis, 0, 0, 0, 0, 0))(
        tab.act_desc, tab.act_bad, st.gm, st.key, en.T, ver.T, pc.T
    )
    bad = bad.T & (st.aic_phase != AicPhase.ERROR)  # [C, B]: these AICs stop here

    def pick(new, old):
        return jnp.where(bad, new, old).astype(jnp.int32)

    phase = pick(AicPhase.ERROR, st.aic_phase)
    return dataclasses.replace(
        st,
        gm=gm,
        aic_phase=phase,
        status=final_status(st.status, phase),
        aic_err_code=pick(ErrorCode.GM_OUT_OF_RANGE, st.aic_err_code),
        aic_err_slot=pick(cursor_slot(shape, st), st.aic_err_slot),
        aic_err_ver=pick(ver, st.aic_err_ver),
        aic_err_pc=pick(pc, st.aic_err_pc),
    )


def batch_step(shape: EngineShape, tab: Tables, cost: jax.Array, st: State) -> State:
    """One step of every lane: the protocol step, then the compute phase if any lane needs it."""
    st, en, ver, pc = step(shape, tab, cost, st)
    if not shape.has_matmul:
        return st
    return jax.lax.cond(en.any(), lambda s: _compute(shape, tab, s, en, ver, pc), lambda s: s, st)


def _run(shape: EngineShape, tab: Tables, cost: jax.Array, keys: jax.Array, start=None) -> State:
    """The compiled loop. ``start``: (slot grid, barrier arrive, barrier wait) of a previous launch
    to start from (a workspace that was not zeroed), or None for a zeroed workspace."""
    TRACE_COUNT["run"] += 1
    st = init_state(shape, tab, keys)
    if start is not None:
        st = dataclasses.replace(st, slot=start[0], barrier_arrive=start[1], barrier_wait=start[2])
    return jax.lax.while_loop(
        lambda s: (s.status == Status.RUNNING).any(), functools.partial(batch_step, shape, tab, cost), st
    )


_run_batch = jax.jit(_run, static_argnums=(0,))


def _bucket(n: int) -> int:
    """Rounds a padded size up to a power of two (at least 8), so that programs of similar size
    share one compilation; the true per-lane limits stay in the traced tables."""
    return max(8, 1 << max(0, n - 1).bit_length())


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
    has_mm = any(m is not None for m in first.matmuls)
    shape = EngineShape(
        groups=first.groups,
        aiv_blocks=tuple(sorted({b for p in programs for b, _ in p.aivs})),
        max_ops=_bucket(max((len(r) for e in encoded for r in e.rows), default=1)),
        n_versions=_bucket(max(e.n_versions for e in encoded)),
        n_actions=max(e.n_actions for e in encoded),
        receive_capacity=_bucket(max(e.capacity for e in encoded)),
        barrier_copies=tuple(b.copies for b in first.barriers),
        schedule=schedule,
        matmuls=tuple(first.matmuls) or (None,) * len(first.groups),
        gm_size=max(1, first.gm.size) if has_mm else 1,
        atomic_order=atomic_order if has_mm else "fixed",
        wait_tests=any(op.kind == "wait" and not op.sync for p in programs for _, ops in p.aivs for op in ops),
        shared=len(programs) == 1,
        build=first.build,
        has_sync=any(op.kind == "sync_all" for p in programs for _, ops in p.aivs for op in ops),
    )
    return dataclasses.replace(shape, aiv_home=_aiv_home(shape, programs, encoded))


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
                    f.name: (x[idx] if f.name in Tables.LANE_MAJOR else x[..., idx])
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
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        seeds = [int(seeds) + i for i in range(len(programs))]
    seeds = list(seeds)
    if len(seeds) != len(programs):
        raise ConfigError("seeds", seeds, f"needs one seed per lane ({len(programs)})")
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 0 <= s < 2**32]
    if bad:
        raise ConfigError("seeds", bad[0], "seeds must be integers in 0..2**32-1", "lower the first seed or the batch")
    seeds_arr = np.asarray(seeds, np.uint32)
    from ascend_jax.timing import CostModel

    order: dict[int, int] = {}
    distinct: list[CubeGroupProgram] = []
    for p in programs:
        if id(p) not in order:
            order[id(p)] = len(distinct)
            distinct.append(p)
    index = np.array([order[id(p)] for p in programs], np.int64)
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
        tab = Tables(
            **{
                f.name: (x if f.name in Tables.LANE_MAJOR else np.moveaxis(x, 0, -1))
                for f in dataclasses.fields(Tables)
                for x in [np.stack([getattr(t, f.name) for t in tables])[index]]
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
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError("ASCEND_JAX_MEMORY_BUDGET", raw, "must be a positive number of bytes", "e.g. 2e9")
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


def _mesh(devices: int | None):
    """A 1-D mesh over the first ``devices`` devices (all by default), or None for one device."""
    avail = jax.devices()
    n = len(avail) if devices is None else devices
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(avail):
        raise ConfigError("devices", devices, f"must be an integer in 1..{len(avail)} (devices available)")
    if n == 1:
        return None
    return jax.sharding.Mesh(np.array(avail[:n]), ("lanes",))


def _place(mesh, shape: EngineShape, tab: Tables, cost: np.ndarray, keys: np.ndarray):
    """Device arrays for one chunk: lane axes sharded over ``mesh``, shared tables replicated."""
    if mesh is None:
        return jax.tree.map(jnp.asarray, tab), jnp.asarray(cost), jnp.asarray(keys)
    from jax.sharding import NamedSharding, PartitionSpec

    first = NamedSharding(mesh, PartitionSpec("lanes"))
    repl = NamedSharding(mesh, PartitionSpec())

    def last(x):
        return NamedSharding(mesh, PartitionSpec(*([None] * (x.ndim - 1)), "lanes"))

    def put(name, x):
        if shape.shared:
            return jax.device_put(x, repl)
        return jax.device_put(x, first if name in Tables.LANE_MAJOR else last(x))

    tab = Tables(**{f.name: put(f.name, getattr(tab, f.name)) for f in dataclasses.fields(Tables)})
    return tab, jax.device_put(cost, last(cost)), jax.device_put(keys, first)


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
      progress: show a progress bar over chunks.
      costs: the ``timed`` schedule's :class:`ascend_jax.timing.CostModel`: one for every lane or
        one per lane (lanes may differ without recompiling); default ``CostModel.for_chip``.
      devices: shard the batch axis over this many local devices (default: all of them).
    Returns:
      a :class:`BatchResult`: arrays for the whole batch; ``res[i]`` is lane i's
      :class:`CubeGroupResult`.
    """
    prep = prepare(programs, schedule, seeds, atomic_order, costs, max_steps)
    n = len(prep.seeds)
    mesh = _mesh(devices) if jit else None
    n_dev = 1 if mesh is None else mesh.size
    if chunk_size is None:
        chunk_size = 1 if n == 1 else max(1, min(n, _memory_budget() // (8 * _lane_bytes(prep))))
        if jax.default_backend() == "cpu":  # lanes beyond a few thousand fall out of the CPU caches
            chunk_size = min(chunk_size, CPU_CHUNK)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ConfigError("chunk_size", chunk_size, "must be an integer >= 1")
    chunk_size = min(chunk_size, n)
    chunk_size = -(-chunk_size // n_dev) * n_dev  # every device gets the same number of lanes
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
            final = _run_batch(prep.shape, *placed)
            if relaunch:  # report a second launch on the first one's workspace
                final = _run_batch(prep.shape, *placed, (final.slot, final.barrier_arrive, final.barrier_wait))
        else:
            final = _run_eager(prep.shape, *args)
            if relaunch:
                final = _run_eager(prep.shape, *args, (final.slot, final.barrier_arrive, final.barrier_wait))
        parts.append({k: v[:real] for k, v in _lane_major(prep.shape, jax.device_get(final)).items()})
        if bar is not None:
            bar[0].update(bar[1], advance=real)
    if bar is not None:
        bar[0].stop()
    arrays = parts[0] if len(parts) == 1 else {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return BatchResult(prep.shape, prep.lanes, arrays, prep.seeds, prep.costs, schedule)


def _lane_major(shape: EngineShape, st: State) -> dict[str, np.ndarray]:
    """The final state as one flat dict of lane-major numpy arrays ``[B, ...]``; slots (and slot
    times) in global slot order ``[B, S]``, queue occupancy in queue order ``[B, Q, 5]``."""
    out = {f.name: np.asarray(getattr(st, f.name)) for f in dataclasses.fields(State) if f.name != "timed"}
    if st.timed is not None:
        out.update({f.name: np.asarray(getattr(st.timed, f.name)) for f in dataclasses.fields(st.timed)})
    lane_major = {"gm", "key"}
    out = {k: (v if k in lane_major else np.moveaxis(v, -1, 0)) for k, v in out.items()}
    b = out["status"].shape[0]
    grid = shape.grid_of_slot
    slot = out.pop("slot").reshape(b, -1)[:, grid]
    out["slot_state"] = slot & 0xFF
    out["slot_ver"] = (slot >> 8) - 1
    if "slot_time" in out:
        out["slot_time"] = out["slot_time"].reshape(b, -1)[:, grid]
        out["occ_cycles"] = out["occ_cycles"][:, shape.queue_rows]
    return out


def _progress(show: bool, total: int):
    if not show:
        return None
    from rich.console import Console
    from rich.progress import Progress

    bar = Progress(console=Console(stderr=True), transient=True)  # stdout stays clean for --json
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
    return st


__all__ = ["BatchResult", "TRACE_COUNT", "batch_jaxpr", "compile_batch", "lane_bytes", "prepare", "simulate"]

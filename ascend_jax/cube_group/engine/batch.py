"""Preparing a batch: the arguments checked, lanes grouped by program content, each distinct program
encoded once (:func:`ascend_jax.cube_group.engine.encode.encode_program`), the common
:class:`EngineShape`, the tables, seeds and cost vectors (:func:`prepare`); and the memory a
lane needs, which sets the default chunk of lanes per compiled call (:func:`default_chunk`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import zlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import ascend_jax.cube_group.engine.memo as memo
import ascend_jax.workers as ascend_workers
from ascend_jax.cube_group.engine.encode import program_content
from ascend_jax.cube_group.engine.options import EngineOptions, resolve
from ascend_jax.cube_group.engine.readout import _Lanes
from ascend_jax.cube_group.engine.shape import EngineShape, make_shape
from ascend_jax.cube_group.engine.state import Tables, build_tables, init_state
from ascend_jax.cube_group.program import CubeGroupProgram
from ascend_jax.enums import ATOMIC_ORDERS, SCHEDULES, one_of
from ascend_jax.errors import ConfigError

#: Most lanes per compiled call on a CPU by default (measured: 16,384 lanes of the sample protocol
#: ran 7.2 M messages/s in one call and 8.6 M/s in chunks of 4,096).
CPU_CHUNK = 4096
# A cache-sized chunk was tried (512 lanes: the chunk's state in half a core's L2): the loop alone
# ran fewer CPU ns per lane-step (233 against 353 at 4,096 lanes a chunk, 16,384 lanes), but
# simulate() end to end was slower with it, in wall and CPU time alike (default scenario, best of 5:
# 4,096 lanes 46.0 ms wall / 61.5 ms CPU in chunks of 512 against 36.5 / 59.1 in one chunk;
# 16,384 lanes 181 / 262 against 143 / 233): each chunk pays its placement, call and readout.

#: the rule and the fix of a seed out of range (a first seed or a per-lane one)
_SEED_RANGE = ("seeds must be integers in 0..2**32-1", "lower the first seed or the batch")


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
                    f.name: (
                        x
                        if f.name in Tables.BATCH_SHARED
                        else jax.tree.map(lambda y: y[idx], x)
                        if f.name in Tables.LANE_MAJOR
                        else x[..., idx]
                    )
                    for f in dataclasses.fields(Tables)
                    for x in [getattr(tab, f.name)]
                }
            )
        return tab, np.ascontiguousarray(self.costs[idx].T), self.keys[idx]


def prepare(
    programs: CubeGroupProgram | Sequence[CubeGroupProgram],
    *,
    schedule: str = "lockstep",
    seeds: int | Sequence[int] = 0,
    atomic_order: str = "fixed",
    costs: Any = None,
    max_steps: int | None = None,
    options: EngineOptions | None = None,
) -> Prepared:
    """Validates the arguments and encodes a batch (each distinct program once: lanes whose programs
    have equal content (:func:`group_programs`) share one encoding and one set of tables)."""
    if schedule not in SCHEDULES:
        raise ConfigError("schedule", schedule, f"must be {one_of(SCHEDULES)}")
    if atomic_order not in ATOMIC_ORDERS:
        raise ConfigError("atomic_order", atomic_order, f"must be {one_of(ATOMIC_ORDERS)}")
    if isinstance(programs, CubeGroupProgram):
        programs = [programs]
    programs = list(programs)
    if not programs:
        raise ConfigError("programs", [], "needs at least one program")
    if max_steps is not None and (
        not isinstance(max_steps, int) or isinstance(max_steps, bool) or not 1 <= max_steps < 2**31
    ):
        raise ConfigError("max_steps", max_steps, "must be an integer in 1..2**31-1")
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

    options = resolve(options)  # checked before it keys the kept shapes
    distinct, index = group_programs(programs)
    # each distinct program encoded (or its encoding reused: memo.py); max_steps replaced once
    # per distinct program keeps shared lanes shared
    keep = len(distinct) <= memo.MAX_PROGRAMS
    done = [memo.encoded(p, max_steps, keep) for p in distinct]
    distinct, encoded = [d[0] for d in done], [d[1] for d in done]
    entries = [d[2] for d in done] if all(d[2] is not None for d in done) else None
    if costs is None or isinstance(costs, CostModel):
        vecs = np.stack([(costs or CostModel.for_chip(p.chip)).vector() for p in distinct])
        cost_arr = vecs[index]  # one cost vector per distinct program, gathered per lane
    else:
        if len(costs) != len(programs) or not all(c is None or isinstance(c, CostModel) for c in costs):
            raise ConfigError("costs", type(costs).__name__, f"needs a CostModel or one per lane ({len(programs)})")
        defaults = [CostModel.for_chip(p.chip).vector() for p in distinct]
        cost_arr = np.stack([defaults[i] if c is None else c.vector() for c, i in zip(costs, index, strict=True)])
    shape = memo.shape_of(
        entries,
        (schedule, atomic_order, options),
        lambda: make_shape(distinct, encoded, schedule, atomic_order, options=options),
    )
    tables = [
        memo.tables_of(None if entries is None else entries[i], shape, functools.partial(build_tables, shape, p, e))
        for i, (p, e) in enumerate(zip(distinct, encoded, strict=True))
    ]
    if shape.shared:
        tab = tables[0]
    else:
        stacked = jax.tree.map(lambda *xs: np.stack(xs)[index], *tables)  # lane axis first
        tab = Tables(
            **{
                f.name: (
                    getattr(tables[0], f.name)  # lanes share the tensor layout (make_shape checks it)
                    if f.name in Tables.BATCH_SHARED
                    else x
                    if f.name in Tables.LANE_MAJOR
                    else np.moveaxis(x, 0, -1)
                )
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


def lane_bytes(program: CubeGroupProgram, *, schedule: str = "lockstep", options: EngineOptions | None = None) -> int:
    """Bytes of one lane's state plus its tables (the per-lane footprint; a step needs a few times
    this in temporaries, hence the factor 8 in the automatic chunk size)."""
    return _lane_bytes(prepare([program], schedule=schedule, options=options))


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


def default_chunk(prep: Prepared, workers: int | None = None) -> int:
    """Lanes per compiled call when ``simulate`` is not told: what fits the memory budget with
    :func:`chunk_workers` chunks in flight, on a CPU at most :data:`CPU_CHUNK`, and no more than
    gives every one of those threads a chunk."""
    n = len(prep.seeds)
    w = chunk_workers(prep, workers)
    chunk = 1 if n == 1 else max(1, min(n, _memory_budget() // (8 * _lane_bytes(prep) * w)))
    if jax.default_backend() != "cpu":
        return chunk
    return ascend_workers.split(min(chunk, CPU_CHUNK), n, w)


def chunk_workers(prep: Prepared, workers: int | None = None) -> int:
    """Threads that run chunks of this batch at once (:mod:`ascend_jax.workers`): ``workers``
    if given, else one per CPU this process may use but no more than gives each thread
    :data:`ascend_jax.workers.MIN_CHUNK_BYTES` of lane state (:func:`lane_bytes`); 1 off the CPU
    backend."""
    cpu = jax.default_backend() == "cpu"
    n, w = len(prep.seeds), ascend_workers.check(workers)
    if w is None and (n == 1 or not cpu):  # one thread: no need to measure a lane (a trace)
        return 1
    return ascend_workers.count(n, w, cpu_backend=cpu, lane_bytes=_lane_bytes(prep) if w is None else 1)


def group_programs(programs: Sequence[CubeGroupProgram]) -> tuple[list[CubeGroupProgram], np.ndarray]:
    """The distinct programs of a batch, in order of first use, and ``[B]`` each lane's index into
    them. Programs are distinct by content (:func:`program_content`), so equal programs built
    apart share one encoding; each object is looked at once however many lanes run it.

    Contents are bucketed by their tokens and a CRC of each array (cheap next to a digest of a
    large GM image), and a program joins a bucket's member only when every array's bytes are
    equal, so the grouping is exact."""
    n = len(programs)
    id_list = list(map(id, programs))
    if id_list.count(id_list[0]) == n:  # one object for every lane (the common batch): nothing to compare
        return [programs[0]], np.zeros(n, np.int64)
    ids = np.asarray(id_list, np.int64)
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)  # one entry per object
    group_of = np.empty(len(first), np.int64)
    buckets: dict[tuple, list[int]] = {}  # (tokens, array CRCs) -> indices into distinct
    arrays_of: list[tuple[np.ndarray, ...]] = []
    distinct: list[CubeGroupProgram] = []
    for k in np.argsort(first, kind="stable"):  # objects in order of first use
        p = programs[first[k]]
        tokens, arrays = program_content(p)
        members = buckets.setdefault((tokens, tuple(zlib.crc32(a) for a in arrays)), [])
        same = [j for j in members if all(np.array_equal(a, b) for a, b in zip(arrays, arrays_of[j], strict=True))]
        if same:
            group_of[k] = same[0]
        else:
            group_of[k] = len(distinct)
            members.append(len(distinct))
            arrays_of.append(arrays)
            distinct.append(p)
    return distinct, group_of[inverse.reshape(-1)]

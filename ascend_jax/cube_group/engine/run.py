"""``simulate``: runs one or many programs in the JAX engine, chunk by chunk.

Data flow: :func:`prepare` encodes every distinct program once and pads it to the batch's common
:class:`EngineShape`; each chunk of lanes is placed on the devices (:mod:`.devices`, the batch axis
sharded over a 1-D mesh) and run by the jitted loop (:mod:`.loop`); the final arrays come back as
one :class:`BatchResult` (:mod:`.readout`). Lanes that run the same program share one copy of its
tables. :class:`EngineOptions` choose the engine's array forms (static: part of the shape).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ascend_jax import workers as ascend_workers
from ascend_jax.cube_group.engine.batch import Prepared, chunk_workers, default_chunk, prepare
from ascend_jax.cube_group.engine.devices import (
    _check_same_call,
    _fetch,
    _mesh,
    _native_stdout_to_stderr,
    _place,
    init_distributed,
)
from ascend_jax.cube_group.engine.loop import Start, _run_arrays_batch, _run_batch, _run_eager, batch_step
from ascend_jax.cube_group.engine.options import EngineOptions
from ascend_jax.cube_group.engine.readout import (
    PACK_LAYOUT,
    BatchResult,
    Chunk,
    Join,
    batch_minor,
    gm_host,
    pack_minor,
)
from ascend_jax.cube_group.engine.shape import EngineShape
from ascend_jax.cube_group.engine.state import init_state
from ascend_jax.cube_group.program import CubeGroupProgram
from ascend_jax.errors import ConfigError


def loop_function(prep: Prepared, chunk: int | None = None, devices: int | None = None):
    """The jitted loop of a prepared batch and its arguments, the static shape first (for
    benchmarks that time the stages of its compile): ``fn, args = loop_function(prep)``, then
    ``fn.trace(*args)``, ``.lower()``, ``.compile()``. ``chunk``: lanes (default all)."""
    n = len(prep.seeds) if chunk is None else chunk
    return _run_batch.jitted, (prep.shape, *_place(_mesh(devices), prep.shape, *prep.chunk(np.arange(n))))


def compile_batch(prep: Prepared, chunk: int | None = None, devices: int | None = None):
    """The compiled loop of a prepared batch and its device arguments (for benchmarks):
    ``fn, args = compile_batch(prep); jax.block_until_ready(fn(*args))`` runs the loop alone."""
    fn, args = loop_function(prep, chunk, devices)
    return fn.lower(*args).compile(), args[1:]


def run_chunks(fn, shape: EngineShape, chunks: Sequence[tuple], workers: int) -> list:
    """Runs ``fn`` (the jitted loop :func:`loop_function` gives, compiled already) on each placed
    chunk (:func:`place_lanes`) the way :func:`simulate` dispatches them: from ``workers`` threads
    at once (:func:`chunk_workers`; :mod:`ascend_jax.workers`). Returns each chunk's final state,
    ready, in order (for benchmarks that time the loop alone)."""
    return ascend_workers.run(lambda a: fn(shape, *a), jax.block_until_ready, chunks, workers, lambda _: None)


def simulate(
    programs: CubeGroupProgram | Sequence[CubeGroupProgram],
    *,
    schedule: str = "lockstep",
    seeds: int | Sequence[int] = 0,
    max_steps: int | None = None,
    jit: bool = True,
    atomic_order: str = "fixed",
    chunk_size: int | None = None,
    progress: bool = False,
    costs: Any = None,
    devices: int | None = None,
    options: EngineOptions | None = None,
    workers: int | None = None,
) -> BatchResult:
    """Runs programs in the JAX engine, one batch lane each.

    Args:
      programs: one program or a list (lanes); lanes must share geometry, matmul configs,
        barriers and tensors but may differ in ops, messages, callbacks, delays and limits.
        A program object run before is not encoded again while it is unchanged
        (:mod:`ascend_jax.cube_group.engine.memo`).
      schedule: ``"lockstep"``, ``"random"`` (each enabled core acts with probability 1/2) or
        ``"timed"`` (events in cycle order from the cost model).
      seeds: one seed per lane, or a first seed (lane i gets seed + i); all in 0..2**32-1.
      max_steps: overrides every program's ``max_steps``.
      jit: False runs the same step eagerly (slow; for debugging and tests).
      atomic_order: ``"fixed"`` writes a step's matmul results in AIC index order; ``"random"``
        in a permutation drawn per lane and step (bounds the order dependence of atomics).
      chunk_size: lanes per compiled call; default: as many as fit ``ASCEND_JAX_MEMORY_BUDGET``
        bytes (see :func:`lane_bytes`) with ``workers`` chunks in flight, and on a CPU at most
        :data:`~ascend_jax.cube_group.engine.batch.CPU_CHUNK` (4,096, measured fastest end to end)
        and few enough lanes that every worker gets a chunk
        (:func:`ascend_jax.cube_group.engine.batch.default_chunk`). A batch larger than a chunk runs
        chunk by chunk with one compilation (the last chunk is padded with copies of its first lane).
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
      options: the engine's array forms (:class:`EngineOptions`; default: the fast ones). Results
        do not depend on them; a change of options compiles the loop anew.
      workers: on the CPU backend, chunks run at once from this many threads (default: one per
        CPU this process may use, but no more than gives each thread
        :data:`ascend_jax.workers.MIN_CHUNK_BYTES` of lane state; :mod:`ascend_jax.workers`). 1
        runs one chunk at a time. Ignored with a device mesh, without ``jit`` and off the CPU. Results do not
        depend on it.
    Returns:
      a :class:`BatchResult`: arrays for the whole batch; ``res[i]`` is lane i's
      :class:`CubeGroupResult`.
    """
    init_distributed()  # before anything else touches JAX: joins a run the environment describes
    ascend_workers.check(workers)
    prep = prepare(
        programs,
        schedule=schedule,
        seeds=seeds,
        atomic_order=atomic_order,
        costs=costs,
        max_steps=max_steps,
        options=options,
    )
    n = len(prep.seeds)
    mesh = _mesh(devices) if jit else None
    n_dev = 1 if mesh is None else mesh.size
    n_workers = chunk_workers(prep, workers) if mesh is None and jit else 1
    if chunk_size is None:
        chunk_size = default_chunk(prep, n_workers)
        if progress and n >= PROGRESS_LANES:  # a few chunks, so the bar can count lanes and estimate the rest
            chunk_size = min(chunk_size, max(PROGRESS_LANES // 4, 1 << ((-(-n // 4)).bit_length() - 1)))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ConfigError("chunk_size", chunk_size, "must be an integer >= 1")
    chunk_size = min(chunk_size, n)
    chunk_size = -(-chunk_size // n_dev) * n_dev  # every device gets the same number of lanes
    with _native_stdout_to_stderr(mesh):  # a multi-process run's collectives chat on stdout
        _check_same_call(mesh, prep, chunk_size)
        bar = _progress(progress and n > chunk_size, n)

        joined = Join(n)

        def start(lo: int):
            idx = np.arange(lo, lo + chunk_size)
            real = min(chunk_size, n - lo)
            idx[real:] = lo  # pad: one compilation for every chunk
            args = prep.chunk(idx)
            return lo, args, real, _start_chunk(prep, prep.shape, mesh, jit, args)

        def finish(started) -> None:
            lo, args, real, running = started
            part = _finish_chunk(mesh, running)
            if part.unpacked()["recv_count"].max(initial=0) > prep.shape.receive_capacity:
                # some AIC received a message twice and its log ran past the entries carried
                part = _finish_chunk(mesh, _start_chunk(prep, prep.shape.whole_log(), mesh, jit, args))
            joined.add(lo, part.lanes(real))
            if bar is not None:
                bar[0].update(bar[1], advance=real)

        def warm(lo: int) -> None:  # compiles the loop for the worker threads, runs nothing
            idx = np.full(chunk_size, lo)
            # the arguments exactly as _start_chunk passes them (start=None included: a call
            # without it is another cache entry, and the threads would compile the loop again)
            _run_arrays_batch.warm(
                (prep.shape, chunk_size), lambda: (prep.shape, *_place(mesh, prep.shape, *prep.chunk(idx)), None)
            )

        fresh = prep.lanes.programs[0].zero_workspace  # a second launch compiles two loops: not warmed
        ascend_workers.run(start, finish, range(0, n, chunk_size), n_workers, warm if jit and fresh else None)
        if bar is not None:
            bar[0].stop()
    arrays = gm_host(prep.shape, prep.tables, joined.result(), prep.lanes.programs[0].gm.size)
    return BatchResult(prep.shape, prep.lanes, arrays, prep.seeds, prep.costs, schedule)


def _start_chunk(prep: Prepared, shape, mesh, jit: bool, args):
    """One chunk of lanes (``args``: its tables, costs and keys) dispatched in ``shape``: its final
    arrays (device arrays, still running under jit) and their layout (:func:`_finish_chunk`)."""
    relaunch = not prep.lanes.programs[0].zero_workspace
    if jit:
        placed = _place(mesh, shape, *args)
        start = None
        if relaunch:  # report a second launch on the first one's workspace
            first = _run_batch(shape, *placed)
            start = Start.after(first)
        return _run_arrays_batch(shape, *placed, start), PACK_LAYOUT[shape]
    st = _run_eager(shape, *args)
    if relaunch:
        st = _run_eager(shape, *args, Start.after(st))
    return pack_minor(batch_minor(shape, st))


def _finish_chunk(mesh, running) -> Chunk:
    """A chunk's final arrays on the host (:class:`Chunk`), once it has run."""
    final, layout = running
    return Chunk({k: np.asarray(v) for k, v in _fetch(mesh, final).items()}, layout)


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


def batch_jaxpr(
    programs: Sequence[CubeGroupProgram], *, atomic_order: str = "fixed", options: EngineOptions | None = None
):
    """The jaxpr of one engine step of a batch (protocol step and compute phase), for inspection:
    e.g. ``count_dot_generals(batch_jaxpr([p] * 8))`` shows the compute is one batched matmul per K chunk."""
    prep = prepare(programs, seeds=list(range(len(programs))), atomic_order=atomic_order, options=options)
    tab, cost, keys = (jax.tree.map(jnp.asarray, x) for x in prep.chunk(np.arange(len(programs))))
    st = init_state(prep.shape, tab, keys)
    return jax.make_jaxpr(functools.partial(batch_step, prep.shape))(tab, cost, st)

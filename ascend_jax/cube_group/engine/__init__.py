"""The JAX engine of cube resource groups, one module per stage of a run:

- :mod:`.options`: :class:`EngineOptions`, the engine's choices of array form (static).
- :mod:`.encode`: a program as numpy tables (callbacks decided once), and its content key.
- :mod:`.shape`: :class:`EngineShape`, the static shape a batch is padded to (:func:`make_shape`).
- :mod:`.state`: the traced tables and the loop state (:class:`Tables`, :class:`State`).
- :mod:`.batch`: arguments checked, lanes grouped by program, tables stacked; memory per lane.
- :mod:`.step`, :mod:`.access`, :mod:`.timed`: the protocol step of every lane, its reads and
  writes of the slot grid and tables, and the timed schedule's cycles.
- :mod:`.compute`, :mod:`.banks`: vector ops and matmuls on GM (as bytes or as typed banks).
- :mod:`.loop`: one step of a batch and the bounded, jitted loop around it (or an eager one).
- :mod:`.devices`: multi-process runs, the device mesh, placing and fetching arrays
  (:func:`place_lanes`: a chunk's arguments for the function :func:`compile_batch` returns).
- :mod:`.readout`: the final state as result arrays and a :class:`BatchResult` (:mod:`.hostmem`:
  the host buffers joined results are cut from, used again once a result is gone).
- :mod:`.run`: :func:`simulate`, which runs the stages chunk by chunk.

``__all__`` below is the engine's surface; everything else is internal to its modules (the few
``_``-prefixed names imported here serve the engine's own tests, and no model or benchmark may use
them: tests/test_architecture.py checks).
"""

from __future__ import annotations

from ascend_jax.cube_group.engine.batch import Prepared, chunk_workers, default_chunk, lane_bytes, prepare
from ascend_jax.cube_group.engine.batch import _memory_budget as _memory_budget
from ascend_jax.cube_group.engine.devices import DISTRIBUTED_ENV, init_distributed, place_lanes
from ascend_jax.cube_group.engine.loop import TRACE_COUNT
from ascend_jax.cube_group.engine.loop import _run as _run
from ascend_jax.cube_group.engine.loop import _run_batch as _run_batch
from ascend_jax.cube_group.engine.options import EngineOptions
from ascend_jax.cube_group.engine.readout import BatchResult, gm_host, lane_major
from ascend_jax.cube_group.engine.run import (
    PROGRESS_LANES,
    batch_jaxpr,
    compile_batch,
    loop_function,
    run_chunks,
    simulate,
)
from ascend_jax.cube_group.engine.shape import EngineShape, make_shape
from ascend_jax.cube_group.engine.state import State, Tables

__all__ = [
    "DISTRIBUTED_ENV",
    "PROGRESS_LANES",
    "TRACE_COUNT",
    "BatchResult",
    "EngineOptions",
    "EngineShape",
    "Prepared",
    "State",
    "Tables",
    "batch_jaxpr",
    "chunk_workers",
    "compile_batch",
    "default_chunk",
    "gm_host",
    "init_distributed",
    "lane_bytes",
    "lane_major",
    "loop_function",
    "make_shape",
    "place_lanes",
    "prepare",
    "run_chunks",
    "simulate",
]

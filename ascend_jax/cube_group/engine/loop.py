"""The loop: one engine step of a whole batch (:func:`batch_step`) and the bounded
``lax.while_loop`` around it, jitted (:data:`_run_batch`, :data:`_run_arrays_batch`) or eager
(:func:`_run_eager`, for debugging).

A step is the protocol :func:`ascend_jax.cube_group.engine.step.step` over every lane, then the
AIVs' vector ops (:func:`apply_vector_ops`) and the compute phase (:func:`batch_tiles`,
:func:`store_tiles`), each under a ``lax.cond`` that skips it when no core of any lane performed
one. The loop runs until its slowest lane stops (each lane is bounded by its own ``max_steps``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ascend_jax.cube_group.engine.compute import batch_tiles, matmul_requests, pass_plan, store_passes, store_tiles
from ascend_jax.cube_group.engine.readout import PACK_LAYOUT, batch_minor, pack_minor
from ascend_jax.cube_group.engine.shape import EngineShape
from ascend_jax.cube_group.engine.state import State, Tables, init_state, read_only, unpack_slots
from ascend_jax.cube_group.engine.step import cursor_slot, final_status, lane_done, step
from ascend_jax.cube_group.engine.vector_ops import apply_vector_ops
from ascend_jax.cube_group.status import AicPhase, ErrorCode, Status


class Start(NamedTuple):
    """Where a launch starts other than from a zeroed workspace: the slot grid and barrier counters
    a previous launch left (``CubeGroupKernel(zero_workspace=False)`` reports a second launch)."""

    slot: jax.Array  # State.slot
    barrier_arrive: jax.Array  # State.barrier_arrive
    barrier_wait: jax.Array  # State.barrier_wait

    @classmethod
    def after(cls, st: State) -> Start:
        """The start a launch that ended in ``st`` leaves to the next one."""
        return cls(st.slot, st.barrier_arrive, st.barrier_wait)

    def apply(self, st: State) -> State:
        """``st`` (a launch's initial state) starting from this workspace instead."""
        return dataclasses.replace(
            st, slot=self.slot, barrier_arrive=self.barrier_arrive, barrier_wait=self.barrier_wait
        )


#: Incremented each time the batched run is traced (tests use it to check for retracing).
TRACE_COUNT = {"run": 0}


def _compute(shape: EngineShape, tab: Tables, st: State, en: jax.Array, fields: jax.Array) -> State:
    """The compute phase of every lane (vmapped; lane-major GM), then GM errors into the state. C
    tiles are stored in passes (:func:`store_passes`): one when no two windows of a step
    overlap, the most any lane needs otherwise. An AIC stopped here may leave nothing running:
    the lane then ends in this step, as in the reference (whose compute phase comes before its
    end-of-step check)."""
    table = tab.gm_tensors  # [T, 4] where the tensors lie (one copy for the batch)
    reqs, bad, addr = jax.vmap(functools.partial(matmul_requests, shape), in_axes=(None, 1, 2))(
        table[:, :2], en, fields
    )
    ro = read_only(shape, tab)
    tiles = batch_tiles(shape, table, ro, st.gm, reqs)
    passes = jax.vmap(functools.partial(store_passes, shape, table))(st.key, reqs)
    n_passes = [jnp.where(e, p + 1, 0).max() for p, (_, e) in zip(passes, reqs, strict=True)]  # over all lanes
    plans = [jax.vmap(pass_plan)(p, e) for p, (_, e) in zip(passes, reqs, strict=True)]
    n_writes = [plan.done[:, -1].max() for plan in plans]  # over all lanes
    gm = jax.vmap(functools.partial(store_tiles, shape, table), in_axes=(0, 0, 0, 0, 0, None, None))(
        st.gm, reqs, tiles, passes, plans, n_passes, n_writes
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
    out = step(shape, tab, cost, st)
    st, vec = out.state, out.vec
    if vec is not None:  # the AIVs' vector ops act before the step's matmuls are written
        gm, ub = jax.lax.cond(
            vec.en.any(),
            lambda g, u: apply_vector_ops(shape, read_only(shape, tab), g, u, vec.en, vec.words, tab.gm_tensors),
            lambda g, u: (g, u),
            st.gm,
            st.ub,
        )
        st = dataclasses.replace(st, gm=gm, ub=ub)
    if not shape.has_matmul:
        return st
    return jax.lax.cond(out.mm_en.any(), lambda s: _compute(shape, tab, s, out.mm_en, out.mm_fields), lambda s: s, st)


def _run(shape: EngineShape, tab: Tables, cost: jax.Array, keys: jax.Array, start: Start | None = None) -> State:
    """The compiled loop. ``start``: the workspace a previous launch left (:class:`Start`), or None
    for a zeroed workspace."""
    TRACE_COUNT["run"] += 1
    st = init_state(shape, tab, keys)
    if start is not None:
        st = start.apply(st)
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
        self._warmed: set = set()

    @functools.cached_property
    def jitted(self):
        return jax.jit(self.fn, static_argnums=(0,), compiler_options=_compiler_options())

    def __call__(self, *args):
        return self.jitted(*args)

    def lower(self, *args):
        return self.jitted.lower(*args)

    def warm(self, key, args: Callable[[], tuple]) -> None:
        """Compiles the function for ``args()`` (the static shape first) without running it, once
        per hashable ``key`` (what decides the arguments' shapes), so that threads calling it
        next find it compiled (:mod:`ascend_jax.workers`)."""
        if key not in self._warmed:
            self.lower(*args()).compile()
            self._warmed.add(key)

    def clear_cache(self) -> None:
        """Forgets what this function compiled (nothing to do before its first use)."""
        self._warmed.clear()
        if "jitted" in self.__dict__:
            self.jitted.clear_cache()


_run_batch = _LazyJit(_run)


def _run_arrays(
    shape: EngineShape, tab: Tables, cost: jax.Array, keys: jax.Array, start: Start | None = None
) -> dict[str, jax.Array]:
    """The compiled loop, then its final state as result arrays, lanes last (:func:`batch_minor`),
    on an accelerator packed one ``[K, B]`` array per element type (:func:`pack_minor`; its
    layout goes to ``PACK_LAYOUT[shape]``)."""
    arrays = batch_minor(shape, _run(shape, tab, cost, keys, start))
    packed, PACK_LAYOUT[shape] = pack_minor(arrays, pack=jax.default_backend() != "cpu")
    return packed


_run_arrays_batch = _LazyJit(_run_arrays)


def clear_compiled() -> None:
    """Forgets every compiled loop of this process (:data:`_run_batch`, :data:`_run_arrays_batch`):
    a size threshold read while tracing (``compute.VARIANTS_FROM``, ``vector_ops.SPLIT_PASSES_FROM``)
    then applies to the next call, which tests that change a threshold rely on."""
    _run_batch.clear_cache()
    _run_arrays_batch.clear_cache()


def _run_eager(
    shape: EngineShape, tab: Tables, cost: np.ndarray, keys: np.ndarray, start: Start | None = None
) -> State:
    """The same semantics without jit: a Python loop over steps of the batch."""
    tab, cost = jax.tree.map(jnp.asarray, tab), jnp.asarray(cost)
    with jax.disable_jit():
        st = init_state(shape, tab, jnp.asarray(keys))
        if start is not None:
            st = start.apply(st)
        while bool((st.status == Status.RUNNING).any()):
            st = batch_step(shape, tab, cost, st)
        return dataclasses.replace(st, slot=unpack_slots(shape, tab, st.slot))

"""Engine v2: results as arrays, sharding over devices, and no silent integer wrap-around.

The sharded run happens in a subprocess because the number of host devices
(``--xla_force_host_platform_device_count``) is fixed when JAX starts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import ascend_jax as aj
from ascend_jax import Status
from ascend_jax.errors import ConfigError


def _merge_kernel(skip: int = 0, delay: int = 0, value: int = 0, max_steps: int = 2000):
    k = aj.CubeGroupKernel(max_steps=max_steps)
    g = k.create_cube_res_group("g", 0, 2, 2, callback="merge")
    for q in range(2):
        a = k.aiv(q)
        a.assign_queue(g, q)
        if delay and q == 1:
            a.delay(delay)
        a.post(g, fields={"skipCnt": skip if q == 0 else 0, "value": value})
        a.quit(g)
    return k.compile()


def test_batch_result_arrays_and_lazy_lanes():
    good, stuck = _merge_kernel(), _merge_kernel(skip=1)  # skip 1 with no FAKE follower: deadlock
    res = aj.simulate([good, stuck, good])
    assert len(res) == 3
    assert res.status.tolist() == [Status.OK, Status.DEADLOCK, Status.OK]
    assert res.status_counts() == {"ok": 2, "deadlock": 1}
    assert res.same_as_lane0().tolist() == [True, False, True]
    slot, state, count = res.received_slots()
    assert count.tolist() == [[4], [1], [4]]
    assert slot[0, 0, :4].tolist() == [0, 1, 2, 3] and state[0, 0, :4].tolist() == [1, 1, 2, 2]
    assert slot[1, 0, 1] == -1  # past the count
    # per-lane objects are built on demand and equal the reference
    for r, p in zip(res, [good, stuck, good], strict=True):
        assert r.outcome() == aj.run_reference(p).outcome()
    assert res[1].blocked == [{"core": "aic0", "group": "g", "queue": 1, "depth": 0, "until": "FAKE"}]
    assert [r.status for r in res[0:2]] == [Status.OK, Status.DEADLOCK]


@pytest.mark.slow
def test_values_that_do_not_fit_int32_never_wrap():
    # a uint32 message field at its maximum is legal and only the callback's decision reads it
    p = _merge_kernel(value=2**32 - 1)
    assert aj.simulate(p)[0].outcome() == aj.run_reference(p).outcome()
    # a delay longer than max_steps: both engines stop at max_steps (no wrap to a short delay)
    p = _merge_kernel(delay=2**31 - 1, max_steps=50)
    eng, ref = aj.simulate(p)[0], aj.run_reference(p)
    assert eng.status == ref.status == Status.MAX_STEPS and eng.steps == ref.steps == 50
    with pytest.raises(ConfigError, match="max_steps"):
        aj.simulate(_merge_kernel(), max_steps=2**31)


@pytest.mark.slow
def test_gm_addresses_near_2_31_are_out_of_range_not_wrapped():
    k = aj.CubeGroupKernel()
    k.alloc("a", (32, 32), "float16", init="random")
    k.alloc("b", (32, 32), "float16", init="random")
    c = k.alloc("c", (32, 32), "float32")
    tiling = dict(
        M=32, N=32, Ka=32, Kb=32, singleCoreM=32, singleCoreN=32, singleCoreK=32, baseM=32, baseN=32, baseK=16
    )
    mt = dict(a="float16", b="float16", c="float32", bias="float32")
    g = k.create_cube_res_group("g", 0, 2, 1, callback="matmul", matmul=mt, tiling=tiling)
    a = k.aiv(0)
    a.assign_queue(g, 0)
    far = 2**31 - 64  # an int32 engine would wrap the C tile's end past 2**31 to a negative address
    a.post(g, fields={"skipCnt": 0, "aAddr": "a", "bAddr": "b", "cAddr": far})
    a.quit(g)
    p = k.compile()
    eng, ref = aj.simulate(p)[0], aj.run_reference(p)
    assert eng.status == ref.status == Status.ERROR
    assert eng.error["code"] == "GM_OUT_OF_RANGE" and eng.error == ref.error
    assert np.array_equal(eng.tensor(c.name), np.zeros((32, 32), np.float32))  # nothing written


_SHARDED = textwrap.dedent(
    """
    import json, sys
    sys.path[:0] = ["tests", "tests/cube_group/engine"]
    import jax
    import ascend_jax as aj
    from test_run import _merge_kernel
    assert len(jax.devices()) == 4, jax.devices()
    lanes = [_merge_kernel(skip=i % 2, delay=i % 3) for i in range(10)]
    one = aj.simulate(lanes, schedule="random", seeds=7, devices=1)
    four = aj.simulate(lanes, schedule="random", seeds=7, devices=4, chunk_size=6)
    same = all(a.outcome() == b.outcome() and a.steps == b.steps for a, b in zip(one, four))
    print(json.dumps({"same": same, "status": four.status.tolist(), "n": len(four)}))
    """
)


def on_four_host_devices(script: str) -> dict:
    """Runs ``script`` in a fresh Python with 4 forced CPU devices (fixed when JAX starts) from the
    repository root; returns the JSON its last output line holds."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    root = str(Path(__file__).resolve().parents[3])
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=root, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_sharded_over_four_host_devices_equals_one_device():
    got = on_four_host_devices(_SHARDED)
    assert got["same"] is True and got["n"] == 10
    assert got["status"] == [Status.OK if i % 2 == 0 else Status.DEADLOCK for i in range(10)]


def test_devices_argument_is_checked():
    with pytest.raises(ConfigError, match="devices"):
        aj.simulate(_merge_kernel(), devices=0)


@pytest.mark.slow
def test_compiled_loop_composes_with_jax_vmap():
    """``jax.vmap`` over the engine's loop (two chunks of two lanes, stacked) gives every final
    state field equal to one batched run of the four lanes: the loop is a pure function of its
    tables, costs and keys (lanes of different programs, random schedule)."""
    import functools

    import jax

    from ascend_jax.cube_group import engine as eng

    lanes = [_merge_kernel(skip=i % 2, delay=i % 3) for i in range(4)]
    prep = eng.prepare(lanes, schedule="random", seeds=[3, 4, 5, 6])
    whole = eng._run_batch(prep.shape, *prep.chunk(np.arange(4)))
    parts = [prep.chunk(np.arange(2 * i, 2 * i + 2)) for i in range(2)]
    stacked = jax.tree_util.tree_map(lambda *x: np.stack(x), *parts)
    mapped = jax.jit(jax.vmap(functools.partial(eng._run, prep.shape)))(*stacked)
    leaves_whole = jax.tree_util.tree_leaves_with_path(whole)
    leaves_mapped = dict(jax.tree_util.tree_leaves_with_path(mapped))
    assert len(leaves_whole) > 20
    for path, w in leaves_whole:
        m = np.asarray(leaves_mapped[path])  # [2 chunks, ...] with each chunk's 2 lanes inside
        name = jax.tree_util.keystr(path)
        if any(name == f".{k}" or name.startswith(f".{k}[") for k in eng.State.LANE_MAJOR):  # gm: a tuple
            joined = m.reshape(4, *m.shape[2:])
        else:  # lane axis last: [2, ..., 2] -> [..., 4]
            joined = np.moveaxis(m, 0, -2).reshape(*m.shape[1:-1], 4)
        np.testing.assert_array_equal(joined, np.asarray(w), err_msg=name)


@pytest.mark.slow
def test_step_leaves_out_op_kinds_no_lane_uses():
    """The static shape lists the op kinds and pipes the lanes use, so the step compiles only those
    branches; a lane with a delay or an MTE3 post in the batch brings them back for every lane."""
    from ascend_jax.cube_group import engine as eng
    from ascend_jax.cube_group.status import OpKind

    def kernel(delay: bool, mte3: bool):
        k = aj.CubeGroupKernel()
        g = k.create_cube_res_group("g", 0, 2, 1)
        a = k.aiv(0)
        a.assign_queue(g, 0)
        if delay:
            a.delay(3)
        a.post(g, pipe="MTE3" if mte3 else "SCALAR")
        a.quit(g)
        return k.compile()

    plain, slow, flagged = kernel(False, False), kernel(True, False), kernel(False, True)
    shape = eng.prepare(plain).shape
    assert not shape.uses(OpKind.DELAY) and not shape.uses(OpKind.WAIT) and not shape.has_mte3
    mixed = eng.prepare([plain, slow, flagged]).shape
    assert mixed.uses(OpKind.DELAY) and mixed.has_mte3
    results = aj.simulate([plain, slow, flagged])
    for program, res in zip([plain, slow, flagged], results, strict=True):
        ref = aj.run_reference(program)
        assert res.status == ref.status == aj.Status.OK and res.steps == ref.steps
    assert results[1].steps == results[0].steps + 3  # the delay's three cycles


@pytest.mark.slow
@pytest.mark.parametrize("queues", [30, 31, 40])
@pytest.mark.parametrize("build", ["debug", "release"])
def test_wide_rows_live_columns_as_bits_or_booleans(queues, build):
    """An AIC's live columns are an int32 bitmask for rows of up to 30 columns and booleans above:
    both equal the reference, with merges (skip counts) and quits across the whole row."""
    from ascend_jax.cube_group import engine as eng

    k = aj.CubeGroupKernel(max_steps=5000, build=build)
    g = k.create_cube_res_group("g", 0, 2, queues, callback="merge")
    for q in range(queues):
        a = k.aiv(q)
        a.assign_queue(g, q)
        if q % 7 == 0 and q + 2 < queues:
            a.post(g, {"skipCnt": 2})
        elif q % 7 in (1, 2):
            a.fake(g)
        else:
            a.post(g)
        if q % 5 != 4:  # some queues stay open: the AIC keeps serving them
            a.post(g)
        a.quit(g)
    program = k.compile()
    assert eng.prepare(program).shape.alive_bits == (queues <= 30)
    ref = aj.run_reference(program)
    [res] = aj.simulate(program)
    assert res.to_json() == ref.to_json()


def test_equal_programs_built_apart_are_encoded_once(monkeypatch):
    """Lanes are grouped by program content, not by object: two programs built apart from the same
    description share one encoding and one set of tables; one differing in a message field, in GM
    contents or in its name is a program of its own."""
    from ascend_jax.cube_group.engine import batch as batch_module
    from ascend_jax.cube_group.engine import memo
    from ascend_jax.cube_group.engine.encode import program_key

    encoded = []
    real = memo.encode_program
    monkeypatch.setattr(memo, "encode_program", lambda p: encoded.append(p) or real(p))
    monkeypatch.setattr(memo, "MAX_PROGRAMS", 0)  # every prepare encodes (no encoding kept)
    a, b = _merge_kernel(value=5), _merge_kernel(value=5)
    assert a is not b and program_key(a) == program_key(b)
    prep = batch_module.prepare([a, b, a])
    assert len(encoded) == 1 and prep.shape.shared and prep.lanes.index.tolist() == [0, 0, 0]

    other = _merge_kernel(value=6)
    renamed = dataclasses.replace(b, name="renamed")
    with_gm = [_merge_kernel(value=5) for _ in range(3)]
    for p in with_gm:
        p.gm.alloc("x", (4,), "float32")
    with_gm[2].gm.write("x", np.ones(4, np.float32))
    for odd in (other, renamed):
        assert program_key(odd) != program_key(a)
        encoded.clear()
        prep = batch_module.prepare([a, odd, b])
        assert len(encoded) == 2 and not prep.shape.shared and prep.lanes.index.tolist() == [0, 1, 0]
    assert program_key(with_gm[0]) == program_key(with_gm[1]) != program_key(with_gm[2])

    res = aj.simulate([a, other, b], seeds=[7, 8, 7])
    assert res[0].to_json() == res[2].to_json() == aj.run_reference(b, seed=7).to_json()
    assert res[1].to_json() == aj.run_reference(other, seed=8).to_json()


def test_engine_options_are_static_and_checked():
    """``EngineOptions`` reach the static shape (a new option is a new compilation, never a stale
    one) and leave results unchanged; anything but an ``EngineOptions`` (or None) is refused."""
    from ascend_jax.cube_group import engine as eng
    from ascend_jax.cube_group.engine import EngineOptions

    p = _merge_kernel(value=3)
    fast, wide = eng.prepare(p).shape, eng.prepare(p, options=EngineOptions(packed_grid=False)).shape
    assert fast.packed and not wide.packed and fast != wide
    before = eng.TRACE_COUNT["run"]
    assert aj.simulate(p, options=EngineOptions(packed_grid=False))[0].to_json() == aj.simulate(p)[0].to_json()
    assert eng.TRACE_COUNT["run"] > before
    with pytest.raises(ConfigError, match="options"):
        aj.simulate(p, options={"packed_grid": False})
    with pytest.raises(ConfigError, match="options.typed_banks"):
        EngineOptions(typed_banks=1)
    with pytest.raises(TypeError):
        aj.simulate(p, "lockstep")  # everything after the programs is keyword-only


class _KeepCallback:
    """Frees nothing: the AIC meets the same message again on every lap of its cursor."""

    required_fields: tuple[str, ...] = ()

    def init(self, mm, tiling):
        pass

    def call(self, mm, msg, handle):
        pass


def _lapping_kernel(keep: bool):
    """Two AIVs fill their queues (8 writes) and never quit: with ``keep`` the AIC receives the
    same 8 messages lap after lap until its log is full; without, it frees them and waits on a FREE
    slot (deadlock)."""
    k = aj.CubeGroupKernel()
    g = k.create_cube_res_group("g", 0, 2, 2, callback=_KeepCallback() if keep else "free")
    for q in range(2):
        a = k.aiv(q)
        a.assign_queue(g, q)
        for _ in range(4):
            a.post(g)
    return k.compile()


def test_receive_log_carries_the_writes_and_reruns_a_lane_that_receives_more():
    from ascend_jax.cube_group.engine import prepare

    keep, free = _lapping_kernel(True), _lapping_kernel(False)
    shape = prepare([keep]).shape
    assert shape.receive_capacity == 8 < shape.receive_full  # the 8 writes into the block; writes + two laps
    # lanes that need the whole log beside lanes that do not, in one or two chunks (the rerun
    # chunk last, or first while the next one runs)
    for chunk, lanes in ((None, (free, keep)), (1, (free, keep)), (1, (keep, free))):
        res = aj.simulate(list(lanes), chunk_size=chunk)
        for lane, program in zip(res, lanes, strict=True):
            ref = aj.run_reference(program)
            assert lane.outcome() == ref.outcome()
        at = lanes.index(keep)
        assert res[at].error["code"] == "RECEIVE_LOG_FULL"
        assert len(res[at].received[0]) == keep.receive_capacity() > shape.receive_capacity
        assert res.arrays["recv_ver"].shape[2] == keep.receive_capacity()


def test_action_word_holds_every_error_code_and_note():
    """The AIC's action word packs the error code below its decision bits and the noted assert
    above them: every ErrorCode must fit both fields of the int32 word."""
    from ascend_jax.cube_group.engine.step import ERROR_MASK, FLAG_BIT, NOTE_SHIFT
    from ascend_jax.cube_group.status import ErrorCode

    assert max(ErrorCode) <= ERROR_MASK and min(FLAG_BIT.values()) > ERROR_MASK.bit_length() - 1
    assert len(set(FLAG_BIT.values())) == len(FLAG_BIT) and max(FLAG_BIT.values()) < NOTE_SHIFT
    assert NOTE_SHIFT + max(ErrorCode).bit_length() <= 31


def test_default_chunk_on_a_cpu_is_at_most_cpu_chunk_and_the_memory_budget(monkeypatch):
    from ascend_jax.cube_group.engine import batch

    prep = batch.prepare([_merge_kernel()] * 9000)
    assert batch.default_chunk(prep, workers=1) == batch.CPU_CHUNK
    assert batch.default_chunk(prep, workers=2) == batch.CPU_CHUNK  # two threads get chunks either way
    assert batch.default_chunk(batch.prepare([_merge_kernel()] * 5000), workers=2) == 2500  # one chunk each
    per_lane = batch._lane_bytes(prep)
    monkeypatch.setattr(batch, "_memory_budget", lambda: 8 * per_lane * 1000)
    assert batch.default_chunk(prep, workers=1) == 1000  # the memory budget binds first
    assert batch.default_chunk(prep, workers=2) == 500  # ... shared by the chunks in flight
    assert batch.default_chunk(batch.prepare([_merge_kernel()] * 100)) == 100  # never more than the batch


def test_workers_by_default_one_per_cpu_each_with_min_chunk_bytes_of_lanes(monkeypatch):
    from ascend_jax import workers
    from ascend_jax.cube_group.engine import batch

    monkeypatch.setattr(workers, "cpus", lambda: 4)
    per = workers.MIN_CHUNK_BYTES // 1024  # lanes of 1 KiB a thread needs
    assert workers.count(per - 1, None, cpu_backend=True, lane_bytes=1024) == 1  # too little for one thread
    assert workers.count(3 * per, None, cpu_backend=True, lane_bytes=1024) == 3
    assert workers.count(10**6, None, cpu_backend=True, lane_bytes=1024) == 4
    assert workers.count(2, None, cpu_backend=True, lane_bytes=10**7) == 2  # large lanes go alone
    assert workers.count(10**6, None, cpu_backend=False) == 1  # an accelerator runs one chunk at a time
    assert workers.count(8, 3, cpu_backend=True, lane_bytes=1) == 3  # asked for: as given
    small, large = (batch.prepare([_merge_kernel()] * n) for n in (8, 1 << 15))
    per = -(-workers.MIN_CHUNK_BYTES // batch._lane_bytes(large))  # lanes a thread needs
    assert 8 < per < (1 << 15) // 4
    assert (batch.chunk_workers(small), batch.chunk_workers(large), batch.chunk_workers(small, 2)) == (1, 4, 2)
    assert [workers.split(4096, n, 2) for n in (1, 5, 4096, 5000, 9000)] == [1, 3, 2048, 2500, 4096]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_workers_must_be_a_positive_integer(bad):
    with pytest.raises(ConfigError, match="workers"):
        aj.simulate([_merge_kernel()], workers=bad)


def test_chunks_run_from_threads_give_the_lanes_of_one_call():
    """Chunks dispatched from several threads (ascend_jax.workers) and joined as each finishes give
    the arrays of one call, lane for lane, on the random schedule (a key per lane) with lanes
    that end differently, and the whole-log rerun of a chunk joins too."""
    lanes = [_merge_kernel(skip=i % 2, delay=i % 3, value=i) for i in range(11)]
    one = aj.simulate(lanes, schedule="random", seeds=5, workers=1)
    assert len(set(one.status.tolist())) > 1  # lanes that end differently
    for chunk, n_workers in ((1, 3), (2, 2), (4, 5)):
        threaded = aj.simulate(lanes, schedule="random", seeds=5, chunk_size=chunk, workers=n_workers)
        assert threaded.arrays.keys() == one.arrays.keys()
        for key in one.arrays:
            np.testing.assert_array_equal(threaded.arrays[key], one.arrays[key], err_msg=key)
    keep, free = _lapping_kernel(True), _lapping_kernel(False)
    mixed = [free, keep, free, free]
    alone = aj.simulate(mixed, workers=1)
    threaded = aj.simulate(mixed, chunk_size=1, workers=2)
    for key in alone.arrays:
        np.testing.assert_array_equal(threaded.arrays[key], alone.arrays[key], err_msg=key)
    assert threaded[1].error["code"] == "RECEIVE_LOG_FULL"


def test_chunks_from_threads_trace_and_compile_the_loop_once():
    """The loop is compiled before the threads start (``_LazyJit.warm``) with the very arguments
    the chunks are called with: a warm-up called without ``start`` was another cache entry, and
    the threads then traced and compiled the loop a second time."""
    from ascend_jax.cube_group import engine
    from ascend_jax.cube_group.engine import loop

    loop.clear_compiled()
    before = engine.TRACE_COUNT["run"]
    res = aj.simulate([_merge_kernel(value=i) for i in range(7)], chunk_size=3, workers=2)
    assert engine.TRACE_COUNT["run"] - before == 1
    assert all(r.status == Status.OK for r in res)


def test_loop_function_and_compile_batch_run_the_loop_simulate_runs():
    """``engine.loop_function`` (the jitted loop and its arguments, for timing a compile's stages)
    and ``engine.compile_batch`` give the loop ``simulate`` runs: the same steps and statuses."""
    import jax

    from ascend_jax.cube_group import engine

    programs = [_merge_kernel(), _merge_kernel(skip=1)]
    prep = engine.prepare(programs, seeds=[0, 1])
    fn, args = engine.loop_function(prep)
    assert args[0] == prep.shape
    staged = jax.device_get(fn.trace(*args).lower().compile()(*args[1:]))
    compiled, placed = engine.compile_batch(prep)
    whole = jax.device_get(compiled(*placed))
    res = aj.simulate(programs, seeds=[0, 1])
    # engine.run_chunks: the jitted loop on each lane as a chunk of its own, from two threads
    halves = [engine.place_lanes(prep, np.array([i])) for i in range(2)]
    parts = engine.run_chunks(fn, prep.shape, halves, 2)
    assert [int(p.step[0]) for p in parts] == [int(x) for x in res.steps]
    assert [int(p.status[0]) for p in parts] == [int(x) for x in res.status]
    for st in (staged, whole):
        np.testing.assert_array_equal(np.asarray(st.step), res.steps)
        assert [int(s) for s in np.asarray(st.status)] == [int(s) for s in res.status]

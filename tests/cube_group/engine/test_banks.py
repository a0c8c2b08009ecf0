"""Typed GM banks (``ascend_jax.cube_group.engine.banks``) against GM as bytes: which batches use them,
and that every result array is identical either way (and agrees with the reference)."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
from _models import load
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_access import _assert_same_arrays
from test_matmul_state import _MSG, ITERATE, SET_A, T, _kernel
from test_run import on_four_host_devices

import ascend_jax as aj
from ascend_jax import Status
from ascend_jax.cube_group import engine
from ascend_jax.cube_group.engine import EngineOptions


def _both_forms(programs, **kw):
    """(typed run, byte run, the typed run's banks) of one batch."""
    layout = engine.prepare(programs).shape.banks
    typed = aj.simulate(programs, **kw)
    bytes_only = EngineOptions(typed_banks=False)
    assert engine.prepare(programs, options=bytes_only).shape.banks is None
    plain = aj.simulate(programs, options=bytes_only, **kw)
    return typed, plain, layout


def _sample():
    return load("cube_group_sample").build()


@pytest.mark.slow
def test_sample_model_shares_a_and_b_and_carries_only_c():
    """The sample's A and B (float16) are read-only tables, C (float32) is the one written bank;
    lanes agree with the byte form array by array and with the reference."""
    program = _sample()
    typed, plain, layout = _both_forms([program] * 3, atomic_order="random", seeds=5)
    assert layout is not None
    bank = dict(zip(program.gm.tensors, layout.tensor_banks, strict=True))
    assert [layout.dtypes[bank[n]] for n in ("a", "b", "c")] == ["float16", "float16", "float32"]
    assert [layout.writable[bank[n]] for n in ("a", "b", "c")] == [False, False, True]
    _assert_same_arrays(typed, plain)
    ref = aj.run_reference(program)
    assert typed[0].outcome() == ref.outcome()
    for name in ("a", "b"):
        np.testing.assert_array_equal(typed[0].tensor(name), program.gm.read(name))
    np.testing.assert_allclose(typed[0].tensor("c"), ref.tensor("c"), rtol=1e-5, atol=1e-5)


def _addr(p, name, offset=0):
    return p.gm.tensors[name].addr + offset


@pytest.mark.slow
def test_which_batches_keep_gm_as_bytes():
    """A tile read in another type than its tensor's, or from an address that is not a whole
    number of elements into it, needs byte semantics; an address outside every tensor does not
    (that tile stops its AIC and touches nothing)."""
    base = _kernel([])
    cases = {
        "pun": ([{"op": SET_A | ITERATE, "tm": -1, "tn": -1, "tk": -1, "a": _addr(base, "c"), "c": "c"}], None),
        "half_element": (
            [{"op": SET_A | ITERATE, "tm": -1, "tn": -1, "tk": -1, "a": _addr(base, "a", 1), "c": "c"}],
            None,
        ),
        "outside": ([{"op": SET_A | ITERATE, "tm": -1, "tn": -1, "tk": -1, "a": 16, "c": "c"}], "typed"),
        "plain": ([{"op": SET_A | ITERATE, "tm": -1, "tn": -1, "tk": -1, "a": "a", "c": "c"}], "typed"),
    }
    for name, (msgs, want) in cases.items():
        p = _kernel(msgs, init={"set_tensor_b": ("b",)})
        typed, plain, layout = _both_forms([p])
        assert (layout is not None) == (want == "typed"), name
        _assert_same_arrays(typed, plain)
        assert typed[0].outcome() == aj.run_reference(p).outcome(), name


@pytest.mark.slow
def test_lanes_with_their_own_tensor_contents():
    """Lanes whose read-only tensors differ (no shared tables): each lane reads its own."""
    lanes = []
    for seed in range(3):
        p = _kernel(
            [{"op": SET_A | ITERATE, "tm": -1, "tn": -1, "tk": -1, "a": "a", "c": "c"}], {"set_tensor_b": ("b",)}
        )
        p.gm.write("a", np.random.default_rng(seed).uniform(-1, 1, (2 * T, T)))
        lanes.append(p)
    typed, plain, layout = _both_forms(lanes)
    assert layout is not None and not engine.prepare(lanes).shape.shared
    _assert_same_arrays(typed, plain)
    for i, p in enumerate(lanes):
        want = p.gm.read("a")[:T].astype(np.float64) @ p.gm.read("b").astype(np.float64)
        np.testing.assert_allclose(typed[i].tensor("c")[:T], want, rtol=2e-3, atol=2e-3)


@pytest.mark.slow
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.lists(_MSG, min_size=1, max_size=4), min_size=2, max_size=3),
    st.sampled_from(["debug", "release"]),
    st.sampled_from(["lockstep", "timed"]),
)
def test_random_matmul_scripts_typed_equal_bytes(scripts, build, schedule):
    """Random Matmul call sequences (tails, atomics, bias on and off, two C rows): the typed and
    the byte form give the same arrays, lane by lane, and the reference's outcome."""
    built = []
    for msgs in scripts:
        c = _kernel([]).gm.tensors["c"].addr
        rows = [{**{k: v for k, v in m.items() if k != "row"}, "a": "a", "b": "b", "bias": "bias",
                 "c": c + m["row"] * T * T * 4} for m in msgs]  # fmt: skip
        built.append(_kernel(rows, init={"set_tensor_a": ("a",), "set_tensor_b": ("b",)}, build=build))
    typed, plain, layout = _both_forms(built, schedule=schedule)
    assert layout is not None
    _assert_same_arrays(typed, plain)
    for i, p in enumerate(built):
        assert typed[i].outcome() == aj.run_reference(p, schedule=schedule).outcome(), i


_SHARDED = textwrap.dedent(
    """\
    import json, sys
    sys.path[:0] = ["tests", "tests/cube_group", "tests/cube_group/engine"]
    import jax, numpy as np
    import ascend_jax as aj
    from test_matmul_state import SET_A, ITERATE, T, _kernel
    from ascend_jax.cube_group import engine
    assert len(jax.devices()) == 4, jax.devices()
    lanes = []
    for seed in range(6):
        p = _kernel([{"op": SET_A | ITERATE, "tm": -1, "tn": -1, "tk": -1, "a": "a", "c": "c"}],
                    {"set_tensor_b": ("b",)})
        p.gm.write("a", np.random.default_rng(seed).uniform(-1, 1, (2 * T, T)))
        lanes.append(p)
    assert engine.prepare(lanes).shape.banks is not None
    one = aj.simulate(lanes, devices=1)
    four = aj.simulate(lanes, devices=4, chunk_size=4)
    same = all(np.array_equal(one.arrays[k], four.arrays[k]) for k in one.arrays)
    print(json.dumps({"same": same, "n": len(four), "status": four.status.tolist()}))
    """
)


@pytest.mark.slow
def test_typed_banks_sharded_over_four_host_devices_equal_one_device():
    got = on_four_host_devices(_SHARDED)
    assert got == {"same": True, "n": 6, "status": [int(Status.OK)] * 6}, got


def test_host_image_equals_a_lane_by_lane_build():
    """``banks.host_image`` (lanes first, gaps zeroed in place) against a naive build of each
    lane's bytes: tensors in any table order, gaps between and after them, a shared read-only
    bank, a per-lane read-only bank and a written one, float16 and float32."""
    from ascend_jax.cube_group.engine.banks import GmBanks, host_image
    from ascend_jax.gm import GM_BASE

    rng = np.random.default_rng(0)
    lanes, real = 3, 400
    layout = GmBanks(dtypes=("float16", "float32", "float32"), writable=(False, False, True),
                     sizes=(64, 64, 64), tensor_banks=(0, 1, 2))  # fmt: skip
    shared = rng.standard_normal(64).astype(np.float16)
    own = rng.standard_normal((lanes, 64)).astype(np.float32)
    written = rng.standard_normal((lanes, 64)).astype(np.float32)
    # (start, end, bank, shift): bank element of byte `start` is start // itemsize + shift
    table = np.array(
        [
            [GM_BASE + 200, GM_BASE + 240, 2, -(GM_BASE + 200) // 4 + 5],
            [GM_BASE + 8, GM_BASE + 72, 0, -(GM_BASE + 8) // 2 + 3],
            [GM_BASE + 100, GM_BASE + 132, 1, -(GM_BASE + 100) // 4],
        ],
        np.int64,
    )
    want = np.zeros((lanes, real), np.uint8)
    for lane in range(lanes):
        for start, end, k, shift in table:
            vals = (shared, own[lane], written[lane])[k]
            size = vals.itemsize
            first = start // size + shift
            want[lane, start - GM_BASE : end - GM_BASE] = vals[first : first + (end - start) // size].view(np.uint8)
    got = host_image(layout, [shared, own], [written], table, lanes, real)
    assert got.shape == (lanes, real) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)
    assert not want[:, :8].any() and not want[:, 240:].any()  # the layout has gaps before and after


def test_a_matmul_kernel_without_tensors_runs_on_bytes():
    """A Matmul whose operands point at GM with no tensor allocated: the plan has nothing to type
    (it used to index an empty tensor table and raise), the batch keeps bytes, and every AIC stops
    with GM_OUT_OF_RANGE as in the reference."""
    t = 16
    kern = aj.CubeGroupKernel(name="no_tensors")
    tiling = dict(M=t, N=t, Ka=t, Kb=t, singleCoreM=t, singleCoreN=t, singleCoreK=t, baseM=16, baseN=16, baseK=16)
    mt = dict(a="float16", b="float16", c="float32", bias="float32")
    g = kern.create_cube_res_group("g", 0, 2, 1, "matmul", aj.CUBE_MATMUL_MSG, matmul=mt, tiling=tiling)
    aiv = kern.aiv(0)
    aiv.assign_queue(g, 0)
    aiv.post(g, {"aAddr": 4096, "bAddr": 4096, "cAddr": 4096, "kaOrgShape": t, "kbOrgShape": t, "nOrgShape": t})
    aiv.quit(g)
    p = kern.compile()
    assert not p.gm.tensors
    assert engine.prepare([p]).shape.banks is None
    res, ref = aj.simulate(p)[0], aj.run_reference(p)
    assert res.outcome() == ref.outcome()
    assert ref.status.name != "OK"

"""The Matmul object persists per AIC (Init's object is Call's; SetTail -1 keeps, 0 sets; tails
larger than singleCore; SetBias until DisableBias; enAtomic outside 1..3 stores; int8 -> half
dequantisation). Hand-written cases with numpy expectations, both engines, and random scripts
where the two engines must agree."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ascend_jax as aj
from ascend_jax.cube_group.status import Status
from ascend_jax.errors import ConfigError
from ascend_jax.gm import get_dtype

T = 16  # tile edge: singleCoreM = N = K
SCRIPT_MSG = aj.message_dtype(
    [
        ("op", np.int32),
        ("tm", np.int32),
        ("tn", np.int32),
        ("tk", np.int32),
        ("atomic", np.int32),
        ("a", np.int64),
        ("b", np.int64),
        ("c", np.int64),
        ("bias", np.int64),
    ],
    size=128,
)
SET_TAIL, SET_A, SET_B, SET_BIAS, NO_BIAS, ITERATE = 1, 2, 4, 8, 16, 32


class Script:
    """Each message says which Matmul calls this Call makes (bits of ``op``) and with what; Init
    may set B, the org shape, a bias, a tail or the quant scale once per AIC."""

    required_fields = ("op", "tm", "tn", "tk", "atomic", "a", "b", "c", "bias")

    def __init__(self, init=None):
        self.init_calls = init or {}

    def init(self, mm, tiling):
        for name, args in self.init_calls.items():
            getattr(mm, name)(*args)

    def call(self, mm, msg, handle):
        op = msg.op
        mm.set_tail(msg.tm, msg.tn, msg.tk, when=(op & SET_TAIL) > 0)
        mm.set_tensor_a(msg.a, when=(op & SET_A) > 0)
        mm.set_tensor_b(msg.b, when=(op & SET_B) > 0)
        mm.set_bias(msg.bias, when=(op & SET_BIAS) > 0)
        mm.disable_bias(when=(op & NO_BIAS) > 0)
        mm.iterate_all(msg.c, msg.atomic, when=(op & ITERATE) > 0)
        handle.free_message(msg)


def _kernel(messages, init=None, ab="float16", c_type="float32", bias_type="float32", rows=2 * T, build="debug"):
    """One AIC, one queue: the AIV posts ``messages`` (dicts of Script fields; tensor names allowed
    for addresses, resolved below) in order, then quits. A: ``rows`` x T, B: T x T, C: ``rows`` x T."""
    k = aj.CubeGroupKernel(name="mm-state", build=build)
    a = k.alloc("a", (rows, T), ab, init="random", seed=1)
    b = k.alloc("b", (T, T), ab, init="random", seed=2)
    c = k.alloc("c", (rows, T), c_type, init="random", seed=3)
    bias = k.alloc("bias", (T,), bias_type, init="random", seed=4)
    addr = {"a": a.addr, "b": b.addr, "c": c.addr, "bias": bias.addr}
    base_k = 32 // get_dtype(ab).itemsize  # C0
    tiling = dict(M=T, N=T, Ka=T, Kb=T, singleCoreM=T, singleCoreN=T, singleCoreK=T, baseM=16, baseN=16, baseK=base_k)
    mt = dict(a=ab, b=ab, c=c_type, bias=bias_type)
    cb = Script(
        {n: tuple(addr.get(x, x) if isinstance(x, str) else x for x in args) for n, args in (init or {}).items()}
    )
    g = k.create_cube_res_group("g", 0, 2, 1, callback=cb, msg_dtype=SCRIPT_MSG, matmul=mt, tiling=tiling)
    v = k.aiv(0)
    v.assign_queue(g, 0)
    for m in messages:
        v.post(g, fields={key: addr.get(val, val) if isinstance(val, str) else val for key, val in m.items()})
    v.quit(g)
    return k.compile()


def _both(p):
    eng, ref = aj.simulate(p)[0], aj.run_reference(p)
    assert eng.outcome() == ref.outcome()
    # fp32 sums inside one baseK chunk may round in another order (XLA's dot against numpy's)
    np.testing.assert_allclose(eng.tensor("c"), ref.tensor("c"), rtol=1e-5, atol=1e-5)
    return eng


def _ab(p):
    return p.gm.read("a").astype(np.float64), p.gm.read("b").astype(np.float64)


@pytest.mark.slow
def test_init_object_is_the_one_call_sees_and_state_persists_across_calls():
    # Init sets B; call 1 sets tail 8 x 16 x 16 and A; call 2 sets nothing but C (SetTail -1: keeps 8)
    msgs = [
        {"op": SET_TAIL | SET_A | ITERATE, "tm": 8, "tn": -1, "tk": -1, "a": "a", "c": "c"},
        {"op": SET_TAIL | ITERATE, "tm": -1, "tn": -1, "tk": -1, "c": "c"},
    ]
    p = _kernel(msgs, init={"set_tensor_b": ("b",)})
    c_addr = p.gm.tensors["c"].addr
    msgs[1]["c"] = c_addr + T * T * 4  # the second tile of C: rows 16..31
    p = _kernel(msgs, init={"set_tensor_b": ("b",)})
    r = _both(p)
    assert r.status == Status.OK
    a, b = _ab(p)
    want = p.gm.read("c").copy()
    want[0:8] = (a[0:8] @ b).astype(np.float32)
    want[16:24] = (a[0:8] @ b).astype(np.float32)  # same A (persisted), same 8-row tail
    np.testing.assert_allclose(r.tensor("c"), want, rtol=1e-6, atol=1e-6)


def test_set_tail_zero_is_an_empty_tile_and_larger_than_single_core_is_legal():
    msgs = [
        {"op": SET_TAIL | SET_A | SET_B | ITERATE, "tm": 0, "tn": -1, "tk": -1, "a": "a", "b": "b", "c": "c"},
        {"op": SET_TAIL | ITERATE, "tm": 2 * T, "tn": -1, "tk": -1, "c": "c"},  # 32 rows > singleCoreM 16
    ]
    p = _kernel(msgs)
    before = p.gm.read("c").copy()
    r = _both(p)
    assert r.status == Status.OK
    a, b = _ab(p)
    want = before.copy()
    want[:] = (a @ b).astype(np.float32)  # the first call wrote nothing, the second all 32 rows
    np.testing.assert_allclose(r.tensor("c"), want, rtol=1e-6, atol=1e-6)


def test_bias_persists_until_disabled_and_atomic_outside_1_to_3_stores():
    row = T * T * 4  # bytes of 16 float32 rows
    msgs = [
        {"op": SET_A | SET_B | SET_BIAS | ITERATE, "a": "a", "b": "b", "bias": "bias", "c": "c", "atomic": 7},
        {"op": ITERATE, "c": "c", "atomic": 1},  # bias still on: C += A @ B + bias (atomic add)
        {"op": NO_BIAS | ITERATE, "c": "c", "atomic": 1},  # C += A @ B
    ]
    p = _kernel(msgs)
    a, b = _ab(p)
    bias = p.gm.read("bias").astype(np.float64)
    r = _both(p)
    assert r.status == Status.OK
    top = (a[0:T] @ b + bias).astype(np.float32)  # enAtomic 7: a plain store, not an error
    top = (top.astype(np.float32) + (a[0:T] @ b + bias).astype(np.float32)).astype(np.float32)
    top = (top + (a[0:T] @ b).astype(np.float32)).astype(np.float32)
    np.testing.assert_allclose(r.tensor("c")[0:T], top, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(r.tensor("c")[T:], p.gm.read("c")[T:])
    del row


def test_set_tail_below_minus_one_debug_error_release_assert_and_empty_tile():
    msgs = [{"op": SET_TAIL | SET_A | SET_B | ITERATE, "tm": -2, "tn": -1, "tk": -1, "a": "a", "b": "b", "c": "c"}]
    r = _both(_kernel(msgs))
    assert r.status == Status.ERROR and r.error["code"] == "MATMUL_SHAPE" and r.error["dimension"] == "M"
    p = _kernel(msgs, build="release")
    r = _both(p)
    assert r.status == Status.OK
    assert [(x["code"], x["queue"], x["depth"]) for x in r.to_json()["asserts_violated"]] == [("MATMUL_SHAPE", 0, 0)]
    np.testing.assert_array_equal(r.tensor("c"), p.gm.read("c"))  # singleCoreM -2: nothing computed


def test_init_assert_is_a_config_error_in_debug():
    with pytest.raises(ConfigError, match="SetOrgShape orgN"):
        aj.run_reference(_kernel([], init={"set_org_shape": (16, 0, 16)}))
    with pytest.raises(ConfigError, match="SetOrgShape orgN"):
        aj.simulate(_kernel([], init={"set_org_shape": (16, 0, 16)}))


def test_int8_to_half_dequantises_with_the_quant_scale():
    msgs = [{"op": SET_A | SET_B | ITERATE, "a": "a", "b": "b", "c": "c"}]
    p = _kernel(msgs, init={"set_quant_scalar": (0.125,)}, ab="int8", c_type="float16", bias_type="int32")
    r = _both(p)
    assert r.status == Status.OK
    a, b = _ab(p)
    want = ((a[0:T] @ b).astype(np.float32) * np.float32(0.125)).astype(np.float16)
    np.testing.assert_array_equal(r.tensor("c")[0:T], want)


def test_address_beyond_2_31_from_the_state_is_out_of_range_with_its_true_value():
    far = 2**40 + 0x100
    msgs = [
        {"op": SET_A | SET_B, "a": far, "b": "b"},  # no IterateAll: the state keeps A = far
        {"op": ITERATE, "c": "c"},
    ]
    p = _kernel(msgs)
    r = _both(p)
    assert r.status == Status.ERROR and r.error["code"] == "GM_OUT_OF_RANGE"
    assert r.error["address"].startswith(f"0x{far:x}")
    assert r.error["depth"] == 1


def test_iterate_without_tensors_reads_address_zero():
    p = _kernel([{"op": ITERATE, "c": "c"}])
    r = _both(p)
    assert r.status == Status.ERROR and r.error["address"] == "0x0 (outside every tensor)"


_TAILS = st.sampled_from([-1, 0, 3, 8, 16])
_MSG = st.fixed_dictionaries(
    {
        "op": st.integers(0, 31).map(lambda x: x | ITERATE),
        "tm": st.sampled_from([-2, -1, 0, 3, 8, 16, 24]),
        "tn": _TAILS,
        "tk": _TAILS,
        "atomic": st.integers(0, 4),
        "row": st.integers(0, 1),
    }
)


@pytest.mark.slow
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(_MSG, min_size=1, max_size=5), min_size=2, max_size=4), st.booleans())
def test_random_scripts_agree_between_engines(scripts, release):
    """Random sequences of Matmul calls over one AIC's persistent object (Init sets A and B): both
    engines give the same status, error, logs and C, in one batched JAX run."""
    built = []
    for msgs in scripts:
        c = _kernel([]).gm.tensors["c"].addr
        rows = [{**{k: v for k, v in m.items() if k != "row"}, "a": "a", "b": "b", "bias": "bias",
                 "c": c + m["row"] * T * T * 4} for m in msgs]  # fmt: skip
        built.append(
            _kernel(rows, init={"set_tensor_a": ("a",), "set_tensor_b": ("b",)}, build=["debug", "release"][release])
        )
    res = aj.simulate(built)
    for i, p in enumerate(built):
        ref = aj.run_reference(p)
        assert res[i].outcome() == ref.outcome(), i
        np.testing.assert_allclose(res[i].tensor("c"), ref.tensor("c"), rtol=1e-5, atol=1e-5)


def test_c_rows_narrower_than_the_tile_bound_take_the_row_by_row_store():
    """orgN = 8 with a tile bound of 16 columns: the engine cannot write a padded row window at
    once (it would cover the next row), so it stores row by row; both engines and numpy agree."""
    msgs = [{"op": SET_TAIL | SET_A | SET_B | ITERATE, "tm": -1, "tn": 8, "tk": -1, "a": "a", "b": "b", "c": "c"}]
    p = _kernel(msgs, init={"set_org_shape": (T, 8, T, T)})
    before = p.gm.read("c").reshape(-1).copy()
    r = _both(p)
    assert r.status == Status.OK
    a, b = _ab(p)
    got = r.tensor("c").reshape(-1)
    want = a[0:T] @ b.reshape(-1)[: T * 8].reshape(T, 8)  # B rows read 8 elements apart too
    np.testing.assert_allclose(got[: T * 8].reshape(T, 8), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[T * 8 :], before[T * 8 :])  # nothing past the tile


@pytest.mark.slow
def test_a_gm_error_in_the_last_compute_phase_ends_the_lane_in_that_step():
    """The AIC's only IterateAll is out of range and nothing else is left to run: both engines end
    the lane in the step of the error (the JAX engine used to run one more, idle, step)."""
    msgs = [{"op": SET_A | SET_B | ITERATE, "a": "a", "b": "b", "c": 2**20}]
    p = _kernel(msgs)
    eng, ref = aj.simulate(p)[0], aj.run_reference(p)
    assert eng.status == ref.status == Status.ERROR and eng.error["code"] == "GM_OUT_OF_RANGE"
    # 1: alloc; 2: post, alloc of the QUIT; 3: QUIT posted, the AIC receives the task;
    # 4: its IterateAll, out of range: the AIC stops and nothing else can run
    assert eng.steps == ref.steps == 4
    e, r = aj.simulate(p, schedule="timed")[0], aj.run_reference(p, schedule="timed")
    assert (e.status, e.steps, e.timing) == (r.status, r.steps, r.timing)

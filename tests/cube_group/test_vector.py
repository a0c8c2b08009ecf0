"""AIV vector ops (ascend_jax/cube_group/vector.py) in the reference interpreter, and the
attention-backward model built on them (models/attention_grad.py).

Tolerances against numpy float64: float32 and float16 elementwise ops, row broadcasts, casts and
selects are exact roundings of the float64 result (one round-to-nearest-even to the buffer type);
float32 ``exp`` within 4 ulp; float32 ``row_sum`` within ``cols`` unit roundoffs of the sum of
magnitudes; ``row_max`` exact. The attention model's dQ, dK, dV must be within two unit roundoffs
of the input type (relative L2) of the float64 backward.
"""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest

from ascend_jax import ReferenceInterpreter, load_scenario, run_reference
from ascend_jax.cli import main
from ascend_jax.cube_group.program import CubeGroupKernel
from ascend_jax.cube_group.vector import VECTOR_KINDS, WORDS, vector_cycles, vector_tables
from ascend_jax.errors import ConfigError
from ascend_jax.numerics import compare
from ascend_jax.timing import CostModel
from tests._models import load

ROWS, COLS = 8, 16
F32_U = 2.0**-24


ag = load("attention_grad")


def kernel(*inputs, out_dtype="float32", out_init="zeros"):
    """A one-AIV kernel with inputs ``x0, x1, ...`` ([ROWS, COLS] arrays) and an output ``y``."""
    k = CubeGroupKernel(chip="910B1")
    g = k.create_cube_res_group("g", 0, 2, 1, "free")
    for i, arr in enumerate(inputs):
        k.alloc(f"x{i}", arr.shape, arr.dtype, arr)
    k.alloc("y", (ROWS, COLS), out_dtype, out_init)
    aiv = k.aiv(0)
    aiv.assign_queue(g, 0)
    return k, g, aiv


def finish(k, g, aiv):
    aiv.quit(g)
    p = k.compile()
    res = run_reference(p)
    assert res.status.name == "OK"
    return p, res


def data(dtype, seed=0, lo=-2.0, hi=2.0):
    return np.random.default_rng(seed).uniform(lo, hi, (ROWS, COLS)).astype(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("kind", ["add", "sub", "mul", "div"])
def test_binary_ops_round_once_to_the_buffer_type(kind, dtype):
    x, y = data(dtype, 1), data(dtype, 2, 0.5, 2.0)
    k, g, aiv = kernel(x, y, out_dtype=dtype)
    a, b = aiv.vec.buffer("a", ROWS, COLS, dtype), aiv.vec.buffer("b", ROWS, COLS, dtype)
    aiv.vec.load(a, "x0")
    aiv.vec.load(b, "x1")
    getattr(aiv.vec, kind)(a, a, b)
    aiv.vec.store("y", a)
    _, res = finish(k, g, aiv)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    want = {"add": x64 + y64, "sub": x64 - y64, "mul": x64 * y64, "div": x64 / y64}[kind]
    np.testing.assert_array_equal(res.tensor("y"), want.astype(dtype))


def test_scalar_ops_round_the_scalar_to_float16():
    x = data("float16", 3)
    k, g, aiv = kernel(x, out_dtype="float16")
    a = aiv.vec.buffer("a", ROWS, COLS, "float16")
    aiv.vec.load(a, "x0")
    aiv.vec.muls(a, a, 0.1)
    aiv.vec.adds(a, a, -0.3)
    aiv.vec.store("y", a)
    _, res = finish(k, g, aiv)
    step = (x.astype(np.float64) * np.float64(np.float16(0.1))).astype(np.float16)
    want = (step.astype(np.float64) + np.float64(np.float16(-0.3))).astype(np.float16)
    np.testing.assert_array_equal(res.tensor("y"), want)


def test_softmax_chain_float32_against_float64():
    """row_max, sub_row, exp, row_sum, div by the row sum (mul_row by its inverse) in float32."""
    x = data("float32", 4, -4.0, 4.0)
    k, g, aiv = kernel(x)
    v = aiv.vec
    a, m, s, one = (v.buffer(n, ROWS, c) for n, c in (("a", COLS), ("m", 1), ("s", 1), ("one", 1)))
    v.load(a, "x0")
    v.row_max(m, a)
    v.sub_row(a, a, m)
    v.exp(a, a)
    v.row_sum(s, a)
    v.muls(one, s, 0.0)
    v.adds(one, one, 1.0)
    v.div(s, one, s, cols=1)
    v.mul_row(a, a, s)
    v.store("y", a)
    _, res = finish(k, g, aiv)
    x64 = x.astype(np.float64)
    e = np.exp(x64 - x64.max(1, keepdims=True))
    want = e / e.sum(1, keepdims=True)
    # exp 4 ulp, the sum COLS roundoffs, the inverse and the product one each
    np.testing.assert_allclose(res.tensor("y"), want, rtol=(8 + COLS) * F32_U, atol=0)


def test_reductions_and_exp_float32():
    x = data("float32", 5, -3.0, 3.0)
    k, g, aiv = kernel(x)
    v = aiv.vec
    a, r = v.buffer("a", ROWS, COLS), v.buffer("r", ROWS, 1)
    big, mx = v.buffer("big", ROWS, COLS), v.buffer("mx", ROWS, 1)
    v.load(a, "x0")
    v.row_sum(r, a)
    v.exp(big, a)
    v.sub_row(a, a, r)  # y = x - rowsum(x), exact rounding of the float32 values
    v.store("y", a)
    v.row_max(mx, big)
    p, res = finish(k, g, aiv)
    x64 = x.astype(np.float64)
    ref = ReferenceInterpreter(p)
    ref.run()
    got_sum = ref.vector.ub[(0, 1)][:, 0]
    bound = COLS * F32_U * np.abs(x64).sum(1)
    assert np.all(np.abs(got_sum - x64.sum(1)) <= bound)
    got_exp = ref.vector.ub[(0, 2)]
    np.testing.assert_allclose(got_exp, np.exp(x64), rtol=8 * F32_U, atol=0)
    np.testing.assert_array_equal(ref.vector.ub[(0, 3)][:, 0], got_exp.max(1))
    np.testing.assert_array_equal(res.tensor("y"), (x64 - got_sum.astype(np.float64)[:, None]).astype(np.float32))


def test_row_max_is_exact_and_select_fills():
    x = data("float32", 6)
    mask = np.tril(np.ones((ROWS, COLS))).astype(np.float16)
    k, g, aiv = kernel(x, mask)
    v = aiv.vec
    a, m, r = v.buffer("a", ROWS, COLS), v.buffer("m", ROWS, COLS, "float16"), v.buffer("r", ROWS, 1)
    v.load(a, "x0")
    v.load(m, "x1")
    v.select(a, m, a, -1000.0)
    v.row_max(r, a)
    v.sub_row(a, a, r)
    v.store("y", a)
    _, res = finish(k, g, aiv)
    sel = np.where(mask != 0, x, np.float32(-1000.0))
    np.testing.assert_array_equal(res.tensor("y"), sel - sel.max(1, keepdims=True))


def test_casts_round_to_nearest_even():
    # float32 values at float16 / bfloat16 ties: 1 + 2^-11 -> 1 (even), 1 + 3 * 2^-11 -> 1 + 2^-9
    x = np.full((ROWS, COLS), 1.0, np.float32)
    x[0, :4] = [1 + 2.0**-11, 1 + 3 * 2.0**-11, 1 + 2.0**-8, 1 + 3 * 2.0**-8]
    x[1:] = data("float32", 7)[1:]
    k, g, aiv = kernel(x, out_dtype="float16")
    k.alloc("yb", (ROWS, COLS), "bfloat16")
    k.alloc("back", (ROWS, COLS), "float32")
    v = aiv.vec
    a, h, b = v.buffer("a", ROWS, COLS), v.buffer("h", ROWS, COLS, "float16"), v.buffer("b", ROWS, COLS, "bfloat16")
    v.load(a, "x0")
    v.cast(h, a)
    v.cast(b, a)
    v.store("y", h)
    v.store("yb", b)
    v.cast(a, b)
    v.store("back", a)
    _, res = finish(k, g, aiv)
    y, yb = res.tensor("y"), res.tensor("yb")
    assert y[0, :2].tolist() == [1.0, 1 + 2.0**-9]
    assert yb[0, 2:4].astype(np.float32).tolist() == [1.0, 1 + 2.0**-6]
    np.testing.assert_array_equal(y, x.astype(np.float64).astype(np.float16))
    np.testing.assert_array_equal(yb, x.astype(ml_dtypes.bfloat16))
    np.testing.assert_array_equal(res.tensor("back"), yb.astype(np.float32))


def test_atomic_store_adds_in_the_gm_type_and_exact_mode_is_float64():
    x = data("float32", 8)
    init = data("float32", 9)
    k, g, aiv = kernel(x, out_init=init)
    a = aiv.vec.buffer("a", ROWS, COLS)
    aiv.vec.load(a, "x0")
    aiv.vec.exp(a, a)
    aiv.vec.store("y", a, atomic=True)
    aiv.vec.store("y", a, atomic=True)
    p, res = finish(k, g, aiv)
    e32 = np.exp(x)
    np.testing.assert_array_equal(res.tensor("y"), (init + e32) + e32)
    exact = ReferenceInterpreter(p, numerics="exact")
    exact.run()
    e64 = np.exp(x.astype(np.float64))
    np.testing.assert_array_equal(exact.shadow["y"].reshape(ROWS, COLS), (init + e64) + e64)
    assert exact.written == {"y"}


def test_partial_regions_and_strided_gm():
    """A 4 x 8 region of 8 x 16 buffers, loaded from every other row of a [16, 16] tensor."""
    x = np.random.default_rng(10).uniform(-1, 1, (2 * ROWS, COLS)).astype(np.float32)
    k, g, aiv = kernel(x)
    a = aiv.vec.buffer("a", ROWS, COLS)
    aiv.vec.load(a, "x0", rows=4, cols=8, stride=2 * COLS)
    aiv.vec.muls(a, a, 2.0, rows=4, cols=8)
    aiv.vec.store("y", a, rows=4, cols=8, stride=COLS)
    _, res = finish(k, g, aiv)
    want = np.zeros((ROWS, COLS), np.float32)
    want[:4, :8] = 2 * x[0:8:2, :8]
    np.testing.assert_array_equal(res.tensor("y"), want)


def test_a_load_reads_gm_as_it_is_then():
    """An AIV that reads a matmul's C before waiting for the task sees zeros; after the wait, A @ B."""
    k = CubeGroupKernel(chip="910B1")
    mt = dict(a="float16", b="float16", c="float32", bias="float32")
    tiling = dict(
        M=16, N=16, Ka=16, Kb=16, singleCoreM=16, singleCoreN=16, singleCoreK=16, baseM=16, baseN=16, baseK=16
    )
    g = k.create_cube_res_group("g", 0, 2, 1, "matmul", matmul=mt, tiling=tiling, msg_dtype=ag.CUBE_MATMUL_MSG)
    a = k.alloc("a", (16, 16), "float16", "random", 1)
    b = k.alloc("b", (16, 16), "float16", "random", 2)
    c = k.alloc("c", (16, 16), "float32")
    early, late = k.alloc("early", (16, 16), "float32"), k.alloc("late", (16, 16), "float32")
    aiv = k.aiv(0)
    aiv.assign_queue(g, 0)
    buf = aiv.vec.buffer("c", 16, 16)
    off = ag._task(aiv, g, a.addr, b.addr, c.addr, 16, 16, 16)
    aiv.vec.load(buf, c)
    aiv.vec.store(early, buf)
    aiv.wait(g, off)
    aiv.vec.load(buf, c)
    aiv.vec.store(late, buf)
    aiv.quit(g)
    p = k.compile()
    for schedule in ("lockstep", "timed"):
        res = run_reference(p, schedule=schedule)
        assert not res.tensor("early").any()
        want = p.gm.read("a").astype(np.float32) @ p.gm.read("b").astype(np.float32)
        np.testing.assert_allclose(res.tensor("late"), want, rtol=1e-6, atol=1e-6)


def test_timed_cost_of_vector_ops():
    x = data("float32", 11)
    k, g, aiv = kernel(x, out_dtype="float16")
    v = aiv.vec
    a, h = v.buffer("a", ROWS, COLS), v.buffer("h", ROWS, COLS, "float16")
    v.load(a, "x0")  # 20 + 512 B / 32 B per cycle = 36
    v.exp(a, a)  # 20 + ceil(512 / 256) = 22
    v.cast(h, a)  # widest operand float32: 22
    v.store("y", h)  # 20 + 256 / 32 = 28
    p, _ = finish(k, g, aiv)
    cost = CostModel.for_chip("910B1")
    ops = [op.vec for op in p.aivs[0][1] if op.kind == "vector"]
    assert [float(vector_cycles(op, cost.vector())) for op in ops] == [36.0, 22.0, 22.0, 28.0]
    res = run_reference(p, schedule="timed")
    # AIV: the vector ops, then AllocMessage (40) and SetQuit (40); the AIC polls the QUIT (40)
    assert res.timing["kernel_cycles"] == 36 + 22 + 22 + 28 + 40 + 40 + 40
    slow = run_reference(p, schedule="timed", cost=CostModel.for_chip("910B1", vec_issue=120.0))
    assert slow.timing["kernel_cycles"] == res.timing["kernel_cycles"] + 4 * 100


def test_vector_tables_are_the_ops_as_data():
    x = data("float32", 12)
    k, g, aiv = kernel(x)
    a, r = aiv.vec.buffer("a", ROWS, COLS), aiv.vec.buffer("r", ROWS, 1)
    aiv.vec.load(a, "x0")
    aiv.vec.row_sum(r, a)
    aiv.vec.muls(a, a, 0.5)
    aiv.vec.store("y", a, atomic=True)
    p, _ = finish(k, g, aiv)
    t = vector_tables(p)
    words = t["op_words"][0]
    assert words.shape == (6, len(WORDS))  # 4 vector ops, then the quit's alloc and quit (kind -1)
    x_addr, y_addr = p.gm.tensors["x0"].addr, p.gm.tensors["y"].addr
    code = VECTOR_KINDS.index
    assert words.tolist() == [
        [code("load"), 0, -1, -1, ROWS, COLS, x_addr, COLS, 0, 2],
        [code("row_sum"), 1, 0, -1, ROWS, COLS, 0, 0, 0, 2],
        [code("muls"), 0, 0, -1, ROWS, COLS, 0, 0, 0, 2],
        [code("store"), -1, 0, -1, ROWS, COLS, y_addr, COLS, 1, 2],
        [-1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [-1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ]
    assert t["op_scalar"][0].tolist() == [0, 0, 0.5, 0, 0, 0]
    assert t["op_bytes"][0].tolist() == [512, 512, 512, 512, 0, 0]
    assert t["buf_shape"][0].tolist() == [[ROWS, COLS], [ROWS, 1]]
    assert t["buf_offset"][0].tolist() == [0, ROWS * COLS * 4]
    assert t["buf_dtype"][0].tolist() == [2, 2]


def test_engine_words_of_ops_alike_but_for_address_or_scalar_sign():
    """The engine's encoder shares the words of an AIV's ops that differ only in GM address; each
    op still gets its own address, and -0.0 and 0.0 scalars (equal as keys) keep their own bits."""
    from ascend_jax.cube_group.engine.encode import VEC, encode_ops, vector_words

    x = data("float32", 13)
    k, g, aiv = kernel(x, x)
    a = aiv.vec.buffer("a", ROWS, COLS)
    aiv.vec.load(a, "x0")
    aiv.vec.load(a, "x1")
    aiv.vec.muls(a, a, 0.0)
    aiv.vec.muls(a, a, -0.0)
    aiv.vec.store("y", a)
    p, _ = finish(k, g, aiv)
    rows, _ = encode_ops(p)
    words, dims = vector_words(p, rows)
    assert words[:, VEC["addr"]].tolist() == [p.gm.tensors["x0"].addr, p.gm.tensors["x1"].addr, 0, 0,
                                              p.gm.tensors["y"].addr]  # fmt: skip
    scalars = words[:, VEC["scalar"]].astype(np.int32).view(np.float32)
    assert [np.signbit(v) for v in scalars[2:4]] == [False, True]
    assert dims.size == ROWS * COLS and dims.window == ROWS * COLS


@pytest.mark.parametrize(
    ("call", "field", "rule"),
    [
        (lambda v, b: v.add(b["bf"], b["bf"], b["bf"]), "dtype", "computes in"),
        (lambda v, b: v.add(b["f32"], b["f32"], b["f16"]), "dtype", "share one dtype"),
        (lambda v, b: v.cast(b["bf"], b["f16"]), "dtype", "casts modelled"),
        (lambda v, b: v.load(b["f16"], "x0"), "addr", "does not convert"),
        (lambda v, b: v.load(b["f32"], "x0", rows=ROWS, stride=2 * COLS), "rows", "past the end"),
        (lambda v, b: v.load(b["f32"], "x0", cols=COLS + 1), "cols", "does not fit"),
        (lambda v, b: v.sub_row(b["col"], b["f32"], b["col"], cols=COLS), "cols", "does not fit"),
        (lambda v, b: v.buffer("huge", 1024, 1024, "float32"), "rows", "UB"),
        (lambda v, b: v.exp(b["f32"], "a"), "src0", "UB buffer"),
    ],
)
def test_bad_vector_ops_are_config_errors(call, field, rule):
    k, g, aiv = kernel(data("float32"))
    v = aiv.vec
    bufs = {
        "f32": v.buffer("a", ROWS, COLS),
        "f16": v.buffer("h", ROWS, COLS, "float16"),
        "bf": v.buffer("b", ROWS, COLS, "bfloat16"),
        "col": v.buffer("c", ROWS, 1),
    }
    with pytest.raises(ConfigError) as e:
        call(v, bufs)
    assert e.value.field.endswith(field) and rule in e.value.rule


def test_another_aivs_buffer_is_rejected():
    k, g, aiv = kernel(data("float32"))
    other = k.aiv(1)
    buf = other.vec.buffer("a", ROWS, COLS)
    with pytest.raises(ConfigError, match="this AIV declared"):
        aiv.vec.exp(aiv.vec.buffer("a", ROWS, COLS), buf)


# -- the attention-backward model ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_grad_matches_float64_backward(dtype, causal):
    p = ag.build(
        0, dtype=dtype, causal=causal, s1=128, s2=64, block_s1=32 if causal else 64, block_s2=32 if causal else 64
    )
    res = run_reference(p)
    assert res.status.name == "OK"
    want = ag.expected(p)
    tol = ag.TOLERANCE[dtype]
    for name in ("dq", "dk", "dv"):
        err = compare(res.tensor(name), want[name], tol)
        assert err["ok"], (name, err)
        assert err["rel_l2_error"] > 0  # rounded inputs do leave an error: the check can fail


def test_attention_grad_batch_heads_and_vec_slices():
    """B = 2, H = 2 and a block larger than one vector slice (block_s2 = 256: two 32-row slices)."""
    p = ag.build(1, batch=2, heads=2, s1=64, s2=256, d=32, block_s1=64, block_s2=256, aics=1, aivs=3)
    res = run_reference(p)
    want = ag.expected(p)
    for name in ("dq", "dk", "dv"):
        assert compare(res.tensor(name), want[name], ag.TOLERANCE["float16"])["ok"]


def test_expected_is_the_gradient():
    """The float64 backward against central differences of sum(O * dO)."""
    rng = np.random.default_rng(0)
    inputs = {n: rng.uniform(-1, 1, (1, 1, 4, 3)) for n in ("q", "k", "v")}
    do = rng.uniform(-1, 1, (1, 1, 4, 3))
    grads = ag.backward(inputs["q"], inputs["k"], inputs["v"], do, causal=True)
    h, i = 1e-6, (0, 0, 2, 1)
    for name in ("q", "k", "v"):
        loss = []
        for sign in (1, -1):
            moved = {n: x.copy() for n, x in inputs.items()}
            moved[name][i] += sign * h
            loss.append((ag.forward(moved["q"], moved["k"], moved["v"], True)[0] * do).sum())
        assert abs(grads["d" + name][i] - (loss[0] - loss[1]) / (2 * h)) < 1e-8


@pytest.mark.parametrize("causal", [False, True])
def test_attention_grad_race_without_the_qk_wait(causal):
    """Without its wait on the Q K^T task the AIV computes P from a stale S workspace: the numerics fail."""
    p = ag.build(0, causal=causal, wait_qk=False)
    res = run_reference(p)
    assert res.status.name == "OK"  # the protocol is fine; only the numbers are wrong
    want = ag.expected(p)
    for name in ("dq", "dk", "dv"):
        err = compare(res.tensor(name), want[name], ag.TOLERANCE["float16"])
        assert not err["ok"] and err["rel_l2_error"] > 0.05, (name, err)


def test_cli_attention_grad_timed_json(capsys):
    code = main(["run", "--model", "attention_grad", "--schedule", "timed", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["status"] == "ok"
    for name in ("dq", "dk", "dv"):
        entry = out["numerics"][name]
        assert entry["ok"] and entry["numpy_check"]["ok"]
        assert entry["numpy_check"]["tolerance"] == ag.TOLERANCE["float16"]
    assert out["timing"]["kernel_us"] > 0 and set(out["timing"]["aiv"]) == {"0", "1", "2", "3"}


# -- scenario TOML -------------------------------------------------------------------------------

TOML_HEAD = """
name = "v"
[[tensor]]
name = "x"
shape = [8, 16]
dtype = "float32"
init = "random"
[[tensor]]
name = "y"
shape = [8, 16]
dtype = "float32"
[[group]]
name = "g"
block_start = 0
block_size = 2
msg_queue_size = 1
callback = "free"
[[aiv]]
block_idx = 0
ops = [
  { op = "assign_queue", group = "g", queue = 0 },
  { op = "ub_buffer", name = "a", rows = 8, cols = 16 },
  { op = "ub_buffer", name = "r", rows = 8, cols = 1 },
"""


def test_toml_vector_softmax_example():
    p = load_scenario("docs/examples/vector_softmax.toml")
    res = run_reference(p)
    x = p.gm.read("x").astype(np.float64)
    e = np.exp(x - x.max(1, keepdims=True))
    err = compare(res.tensor("y"), e / e.sum(1, keepdims=True), 2.0**-10)
    assert err["ok"] and err["rel_l2_error"] > 0


def test_toml_ops_are_the_builders_ops(tmp_path):
    path = tmp_path / "v.toml"
    path.write_text(
        TOML_HEAD
        + """  { op = "vector", kind = "load", dst = "a", addr = "x+64", rows = 4, stride = 32 },
  { op = "vector", kind = "row_sum", dst = "r", src0 = "a" },
  { op = "vector", kind = "select", dst = "a", src0 = "a", src1 = "a", scalar = -1 },
  { op = "vector", kind = "store", addr = "y", src0 = "a", atomic = true },
  { op = "quit", group = "g" },
]"""
    )
    p = load_scenario(path)
    k, g, aiv = kernel(data("float32"))
    a, r = aiv.vec.buffer("a", ROWS, COLS), aiv.vec.buffer("r", ROWS, 1)
    x = k.gm.tensors["x0"]
    aiv.vec.load(a, x.addr + 64, rows=4, stride=32)
    aiv.vec.row_sum(r, a)
    aiv.vec.select(a, a, a, -1)
    aiv.vec.store("y", a, atomic=True)
    aiv.quit(g)
    q = k.compile()
    toml_ops = [op.vec.words() for op in p.aivs[0][1] if op.kind == "vector"]
    py_ops = [op.vec.words() for op in q.aivs[0][1] if op.kind == "vector"]
    assert toml_ops == py_ops and len(toml_ops) == 4


@pytest.mark.parametrize(
    ("op", "field", "rule"),
    [
        ('{ op = "vector", kind = "exp", dst = "a", src0 = "b" }', "aiv[0].ops[3].src0", "no UB buffer"),
        (
            '{ op = "vector", kind = "exp", dst = "a", src0 = "a", scalar = 2 }',
            "aiv[0].ops[3].scalar",
            "does not apply",
        ),
        ('{ op = "vector", kind = "add", dst = "a", src0 = "a" }', "aiv[0].ops[3].src1", "is required"),
        ('{ op = "vector", kind = "load", dst = "a", addr = "y", atomic = true }', "aiv[0].ops[3].atomic", "does not"),
        ('{ op = "vector", kind = "expp", dst = "a", src0 = "a" }', "aiv[0].ops[3].kind", ""),
        ('{ op = "ub_buffer", name = "a", rows = 1, cols = 1 }', "aiv[0].ops[3].name", "already has"),
    ],
)
def test_toml_vector_errors(tmp_path, op, field, rule):
    path = tmp_path / "bad.toml"
    path.write_text(TOML_HEAD + f'  {op},\n  {{ op = "quit", group = "g" }},\n]')
    with pytest.raises(ConfigError) as e:
        load_scenario(path)
    assert e.value.field == field and rule in e.value.rule

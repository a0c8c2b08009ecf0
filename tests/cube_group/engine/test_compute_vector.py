"""AIV vector ops in the JAX engine (``vector_ops.apply_vector_ops``) against the reference interpreter.

What must agree exactly: status, steps, received logs, the timed schedule's timing, and every GM
byte a vector op writes, except after a float32 ``exp``: XLA's float32 ``exp`` and numpy's differ
by 1 or 2 ulp on about 40% of inputs (measured on 10**6 uniform inputs in [-20, 2]; their float16
results agreed), so programs with an ``exp`` are compared to a relative 1e-3 (one float16 rounding
flipped by that ulp). The attention model also runs matmuls, whose float32 sums within a baseK
chunk are added in a different order by XLA's dot and numpy's (as for every matmul program), so its
dQ, dK, dV are compared to a relative L2 of 1e-4 between engines, far below the model's stated
tolerance against float64 (9.8e-4 for float16).
"""

from __future__ import annotations

import json

import hypothesis.strategies as st
import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from ascend_jax import run_reference, simulate
from ascend_jax.cli import main
from ascend_jax.cube_group.engine.encode import encode_program
from ascend_jax.cube_group.engine.shape import make_shape
from ascend_jax.cube_group.engine.vector_ops import pairwise_sum
from ascend_jax.cube_group.program import CubeGroupKernel
from ascend_jax.numerics import compare
from ascend_jax.timing import CostModel
from tests._models import load

ag = load("attention_grad")
SMALL = dict(s1=64, s2=64, d=32, block_s1=32, block_s2=32, aics=1, aivs=2)
ENGINE_RTOL = 1e-4  # relative L2 of dQ, dK, dV between the engines (see the module docstring)


def _agree(ref, eng, p, timed: bool) -> None:
    assert eng.status == ref.status and eng.status.name == "OK"
    assert eng.steps == ref.steps
    assert eng.received == ref.received
    if timed:
        assert eng.timing == ref.timing
    for name in ("dq", "dk", "dv"):
        err = compare(eng.tensor(name), ref.tensor(name).astype(np.float64), ENGINE_RTOL)
        assert err["ok"], (name, err)


#: D below the block: the matmul tile bound (64) exceeds the dQ / dK / dV row stride (32), so the
#: compute phase writes C row by row and sends the rows it does not write (those of an AIC with no
#: matmul in the step: two AICs) to GM's scratch margin
NARROW = dict(SMALL, s1=128, s2=128, block_s1=64, block_s2=64, aics=2, aivs=4)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("dtype", "causal", "schedule", "shape"),
    [("float16", False, "timed", SMALL), ("bfloat16", True, "timed", NARROW), ("float16", True, "lockstep", SMALL),
     ("bfloat16", False, "random", SMALL)],
)  # fmt: skip
def test_attention_grad_engines_agree_and_the_race_fails(dtype, causal, schedule, shape):
    """One batch: the kernel and the same kernel without its wait on Q K^T (lane 1). Both engines
    agree on each (the random schedule: on the protocol outcome, which no schedule changes, and on
    the numbers up to the order of atomic adds); the race's dQ, dK, dV miss the float64 backward
    in the JAX engine too."""
    good = ag.build(0, dtype=dtype, causal=causal, **shape)
    race = ag.build(0, dtype=dtype, causal=causal, wait_qk=False, **shape)
    res = simulate([good, race], schedule=schedule, seeds=[3, 4])
    want = ag.expected(good)
    if schedule == "random":
        ref = run_reference(good)
        assert res[0].outcome() == ref.outcome() and res[0].steps != ref.steps  # another order, same outcome
        assert res[1].status.name == "OK"
        for name in ("dq", "dk", "dv"):
            assert compare(res[0].tensor(name), ref.tensor(name).astype(np.float64), ENGINE_RTOL)["ok"]
    else:
        for lane, p in enumerate((good, race)):
            _agree(run_reference(p, schedule=schedule), res[lane], p, schedule == "timed")
    for name in ("dq", "dk", "dv"):
        ok = compare(res[0].tensor(name), want[name], ag.TOLERANCE[dtype])
        assert ok["ok"] and ok["rel_l2_error"] > 0, (name, ok)
        bad = compare(res[1].tensor(name), want[name], ag.TOLERANCE[dtype])
        assert not bad["ok"] and bad["rel_l2_error"] > 0.05, (name, bad)


def test_pairwise_sum_is_numpys():
    """``pairwise_sum`` gives np.add.reduce's float32 bits for every length up to 200 (its 8-way
    blocks, the tail and the recursive split above 128 elements) from one traced width."""
    rng = np.random.default_rng(0)
    width = 200
    x = (rng.standard_normal((width, width)) * 10.0 ** rng.uniform(-3, 3, (width, width))).astype(np.float32)
    n = np.arange(1, width + 1, dtype=np.int32)
    got = np.asarray(jax.jit(pairwise_sum)(x, n))
    want = np.array([np.add.reduce(x[i, : n[i]], dtype=np.float32) for i in range(width)], np.float32)
    np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))


# -- random programs -------------------------------------------------------------------------------

ROWS, COLS, GM_ROWS, GM_COLS = 8, 24, 12, 40
N_AIV, N_OPS = 3, 10
#: every AIV's first op: it names the last buffer, so every lane has the same UB bound (one compilation)
FIRST = ("cast", "z", "a", 1, 1)
#: buffer name -> dtype; every AIV declares all of them, so every lane has the same UB shape
BUFS = {"a": "float32", "b": "float32", "m": "float32", "h": "float16", "h2": "float16", "z": "bfloat16"}
#: tensors per buffer type (loads and stores of every AIV land in the same few tensors)
TENSORS = {"float32": ("x32", "y32"), "float16": ("x16", "y16"), "bfloat16": ("xbf",)}
COMPUTE = {
    "float32": ("add", "sub", "mul", "div", "muls", "adds", "exp", "row_max", "row_sum", "sub_row", "mul_row",
                "select"),
    "float16": ("add", "sub", "mul", "div", "muls", "adds", "exp", "row_max", "row_sum", "select"),
}  # fmt: skip
CASTS = (("h", "a"), ("a", "h"), ("z", "b"), ("b", "z"))


@st.composite
def vector_op(draw):
    """One op as plain data: (kind, args...)."""
    what = draw(st.sampled_from(("copy", "copy", "compute", "compute", "cast")))
    rows, cols = draw(st.integers(1, ROWS)), draw(st.integers(1, COLS))
    if what == "copy":
        buf = draw(st.sampled_from(("a", "b", "h", "h2", "z")))
        tensor = draw(st.sampled_from(TENSORS[BUFS[buf]]))
        r0, c0 = draw(st.integers(0, GM_ROWS - rows)), draw(st.integers(0, GM_COLS - cols))
        store = draw(st.booleans())
        return ("store" if store else "load", buf, tensor, r0 * GM_COLS + c0, rows, cols, store and draw(st.booleans()))
    if what == "cast":
        return ("cast", *draw(st.sampled_from(CASTS)), rows, cols)
    dtype = draw(st.sampled_from(("float32", "float16")))
    kind = draw(st.sampled_from(COMPUTE[dtype]))
    x, y = ("a", "b") if dtype == "float32" else ("h", "h2")
    dst, src0, src1 = draw(st.permutations((x, x, y)))
    scalar = draw(st.sampled_from((0.0, -1.5, 0.1, 3.0)))
    return (kind, dst, src0, src1, rows, cols, scalar)


def build_lane(ops_per_aiv, seed: int):
    """A kernel whose AIVs run ``ops_per_aiv`` (lists of :func:`vector_op` tuples) on shared
    tensors, then quit. Tensors hold values from ``seed`` in [-2, 2)."""
    k = CubeGroupKernel(chip="910B1", name="vector-random")
    g = k.create_cube_res_group("g", 0, 2, N_AIV, "free")
    rng = np.random.default_rng(seed)
    for names in TENSORS.values():
        for t in names:
            dt = "float32" if t.endswith("32") else "float16" if t.endswith("16") else "bfloat16"
            k.alloc(t, (GM_ROWS, GM_COLS), dt, rng.uniform(-2, 2, (GM_ROWS, GM_COLS)))
    for a, ops in enumerate(ops_per_aiv):
        aiv = k.aiv(a)
        aiv.assign_queue(g, a)
        v = aiv.vec
        buf = {n: v.buffer(n, ROWS, 1 if n == "m" else COLS, dt) for n, dt in BUFS.items()}
        for op in ops:
            _emit(k, v, buf, op)
        aiv.quit(g)
    return k.compile()


def _emit(k, v, buf, op) -> None:
    kind = op[0]
    if kind in ("load", "store"):
        _, b, tensor, offset, rows, cols, atomic = op
        t = k.gm.tensors[tensor]
        addr = t.addr + offset * t.dtype.itemsize
        if kind == "load":
            v.load(buf[b], addr, rows, cols, stride=GM_COLS)
        else:
            v.store(addr, buf[b], rows, cols, stride=GM_COLS, atomic=atomic)
    elif kind == "cast":
        _, dst, src, rows, cols = op
        v.cast(buf[dst], buf[src], rows, cols)
    else:
        _, dst, x, y, rows, cols, s = op
        d, xb, yb = buf[dst], buf[x], buf[y]
        if kind in ("row_max", "row_sum"):
            getattr(v, kind)(buf["m"] if d.dtype == np.float32 else d, xb, rows, cols)
        elif kind in ("sub_row", "mul_row"):
            getattr(v, kind)(d, xb, buf["m"], rows, cols)
        elif kind in ("muls", "adds"):
            getattr(v, kind)(d, xb, s, rows, cols)
        elif kind == "exp":
            v.exp(d, xb, rows, cols)
        elif kind == "select":
            v.select(d, yb, xb, s, rows, cols)
        else:
            getattr(v, kind)(d, xb, yb, rows, cols)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-identical, except that any two NaNs match (their payloads are not modelled)."""
    nan = np.isnan(a.astype(np.float32)) & np.isnan(b.astype(np.float32))
    return bool(((a.view(np.uint8).reshape(a.shape + (-1,)) == b.view(np.uint8).reshape(b.shape + (-1,))).all(-1)
                 | nan).all())  # fmt: skip


aiv_ops = st.lists(
    st.lists(vector_op(), min_size=N_OPS - 1, max_size=N_OPS - 1).map(lambda ops: [FIRST, *ops]),
    min_size=N_AIV,
    max_size=N_AIV,
)


@pytest.mark.slow
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(aiv_ops, min_size=2, max_size=2), st.integers(0, 2**16))
def test_random_vector_programs_match_the_reference(lanes, seed):
    """Two random programs (lanes of one batch) of 3 AIVs x 10 vector ops on shared tensors: loads
    and stores of different AIVs meet in one step, atomics included. Lockstep and timed: same
    status, steps, timing and GM (bit-identical without an ``exp``)."""
    programs = [build_lane(ops, seed + i) for i, ops in enumerate(lanes)]
    for schedule in ("lockstep", "timed"):
        res = simulate(programs, schedule=schedule)
        for p, ops, eng in zip(programs, lanes, res, strict=True):
            ref = run_reference(p, schedule=schedule)
            assert eng.status == ref.status and eng.steps == ref.steps
            assert eng.timing == ref.timing
            has_exp = any(op[0] == "exp" for aiv in ops for op in aiv)
            for name in p.gm.tensors:
                a, b = eng.tensor(name), ref.tensor(name)
                if has_exp:
                    np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), rtol=1e-3, atol=1e-6)
                else:
                    assert _same_bits(a, b), (schedule, name, a, b)


FILL = ("adds", "h2", "h2", "h2", 1, 1, 0.0)  # an op that changes nothing another op reads


def _row(tensor, row):
    return tensor, row * GM_COLS, 1, 8  # the first 8 elements of a GM row


def test_same_step_order_of_loads_and_stores():
    """Lockstep, op i of every AIV in step i + 1. Step 2: AIV 0 stores y32 row 0 and AIV 1 loads it
    (it sees the store: block_idx order). Step 4: AIV 2 stores row 4 and AIV 1 loads it (it does
    not see the later AIV's store). Step 5: AIV 0 reads row 1, stored by AIV 1 in step 3. Step 7:
    all three add atomically into row 6, in block_idx order (float32 sums in that order).
    Built like the random programs, so it shares their compilation."""
    ops = [
        [("load", "a", *_row("x32", 0), False), ("store", "a", *_row("y32", 0), False), FIRST, FILL,
         ("load", "b", *_row("y32", 1), False), ("store", "b", *_row("y32", 2), False),
         ("store", "a", *_row("y32", 6), True), FILL, FILL, FILL],
        [FILL, ("load", "a", *_row("y32", 0), False), ("store", "a", *_row("y32", 1), False),
         ("load", "b", *_row("y32", 4), False), ("store", "b", *_row("y32", 5), False), FILL,
         ("store", "a", *_row("y32", 6), True), FILL, FILL, FILL],
        [("load", "a", *_row("x32", 3), False), FILL, FILL, ("store", "a", *_row("y32", 4), False), FILL, FILL,
         ("store", "a", *_row("y32", 6), True), FILL, FILL, FILL],
    ]  # fmt: skip
    programs = [build_lane(ops, 7), build_lane(ops, 8)]
    res = simulate(programs, schedule="lockstep")
    for p, eng in zip(programs, res, strict=True):
        x, y0 = p.gm.read("x32")[:, :8], p.gm.read("y32")[:, :8]
        y = eng.tensor("y32")[:, :8]
        for row in (0, 1, 2):
            np.testing.assert_array_equal(y[row], x[0])
        np.testing.assert_array_equal(y[4], x[3])
        np.testing.assert_array_equal(y[5], y0[4])  # the value before AIV 2's store of step 4
        np.testing.assert_array_equal(y[6], ((y0[6] + x[0]) + x[0]) + x[3])
        assert _same_bits(eng.tensor("y32"), run_reference(p).tensor("y32"))


@pytest.mark.slow
def test_vector_costs_per_lane():
    """Lanes with different vector costs share one compilation and time their ops from their own
    cost vector, as the reference does."""
    p = ag.build(0, **SMALL)
    slow = CostModel(vec_issue=80.0, vec_rate=64.0)
    res = simulate([p, p], schedule="timed", costs=[None, slow])
    assert res[0].timing == run_reference(p, schedule="timed").timing
    assert res[1].timing == run_reference(p, schedule="timed", cost=slow).timing
    assert res.kernel_cycles()[1] > res.kernel_cycles()[0]


@pytest.mark.slow
def test_cli_auto_runs_a_batch_of_vector_programs_in_the_jax_engine(capsys, monkeypatch):
    import ascend_jax.cube_group.reference as reference

    def refuse(*args, **kw):
        raise AssertionError("--engine auto ran the reference for a batch")

    monkeypatch.setattr(reference, "run_reference", refuse)
    args = [f"--model-arg={k}={v}" for k, v in SMALL.items()]
    code = main(["run", "--model", "attention_grad", *args, "--batch", "2", "--schedule", "timed", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["status"] == "ok"
    assert [lane["same_as_lane0"] for lane in out["batch"]] == [True, True]
    assert all(out["numerics"][n]["ok"] for n in ("dq", "dk", "dv"))


def test_long_thin_buffers_are_stored_at_their_own_size():
    """A 1 x 48,000 and a 48,000 x 1 float16 buffer (192,000 B of UB): the engine stores each at its
    own size (a flat UB of the summed, bucketed sizes, not 48,000 x 48,000) and equals the
    reference bit for bit."""
    n = 48_000
    k = CubeGroupKernel(chip="910B1", name="long-ub")
    g = k.create_cube_res_group("g", 0, 2, 1, "free")
    k.alloc("x", (n,), "float16", np.random.default_rng(0).uniform(-2, 2, n))
    k.alloc("row", (n,), "float16", np.zeros(n))
    k.alloc("col", (n,), "float16", np.zeros(n))
    aiv = k.aiv(0)
    aiv.assign_queue(g, 0)
    v = aiv.vec
    a, b = v.buffer("a", 1, n, "float16"), v.buffer("b", n, 1, "float16")
    v.load(a, "x")
    v.load(b, "x")
    v.muls(a, a, 3.0)
    v.adds(b, b, -1.0)
    v.store("row", a)
    v.store("col", b)
    aiv.quit(g)
    p = k.compile()
    shape = make_shape([p], [encode_program(p)], "lockstep")
    assert shape.ub[0] < 5 * n and shape.ub[1] < 2 * n and shape.ub_flat  # bucketed sizes, summed
    ref, eng = run_reference(p), simulate([p])[0]
    assert eng.status == ref.status
    for name in ("row", "col"):
        assert _same_bits(eng.tensor(name), ref.tensor(name))
    np.testing.assert_array_equal(ref.tensor("row"), (p.gm.read("x").astype(np.float32) * 3).astype(np.float16))

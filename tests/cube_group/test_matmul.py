"""AIC compute: GM tensors, the Matmul API, the batched compute and its numerics.

Every run is checked three ways: the JAX engine against the reference interpreter (same
hardware numerics, tolerance: one unit in the last place of the C type), both against an
independent float64 numpy computation written here (tolerance: ``TOLERANCE`` of the C type), and
the numerics report against the float64 reference interpreter.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ascend_jax.cli import main
from ascend_jax.cube_group.engine import batch_jaxpr, simulate
from ascend_jax.cube_group.engine.compute import count_dot_generals
from ascend_jax.cube_group.matmul import TOLERANCE, MatmulType, TCubeTiling
from ascend_jax.cube_group.program import CubeGroupKernel
from ascend_jax.cube_group.reference import run_reference
from ascend_jax.cube_group.status import Status
from ascend_jax.errors import ConfigError
from ascend_jax.gm import GM_ALIGN, GM_BASE, GlobalMemory, get_dtype
from ascend_jax.message import CUBE_MATMUL_MSG
from ascend_jax.numerics import numerics_report
from tests._models import load

ROOT = Path(__file__).resolve().parents[2]


def _ulp_close(x: np.ndarray, y: np.ndarray, dtype: str) -> None:
    """JAX vs reference: equal up to one unit in the last place of the C type (XLA and numpy may
    order the additions inside one baseK chunk differently)."""
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    if dtype == "int32":
        np.testing.assert_array_equal(x, y)
        return
    eps = float(np.finfo(get_dtype(dtype)).eps) if dtype != "bfloat16" else 2.0**-7
    np.testing.assert_allclose(x64, y64, rtol=2 * eps, atol=2 * eps * max(1.0, float(np.abs(y64).max())))


def _kernel(
    ab="float16",
    c="float32",
    bias=None,
    m=16,
    n=16,
    k=64,
    base_k=None,
    tasks=2,
    trans_a=False,
    trans_b=False,
    tails=(0, 0, 0),
    atomic=0,
    c_init="zeros",
    seed=0,
):
    """One AIC (block_size 2) with ``tasks`` queues; task q computes C[q] = A[q] @ B[q] (+ bias)."""
    kern = CubeGroupKernel(name=f"mm-{ab}-{c}")
    c0 = 32 // get_dtype(ab).itemsize
    base_k = base_k or max(c0, 16)
    a_shape = (tasks, k, m) if trans_a else (tasks, m, k)
    b_shape = (tasks, n, k) if trans_b else (tasks, k, n)
    a = kern.alloc("a", a_shape, ab, "random", seed + 1)
    b = kern.alloc("b", b_shape, ab, "random", seed + 2)
    cc = kern.alloc("c", (tasks, m, n), c, c_init, seed + 3)
    bias_t = kern.alloc("bias", (n,), bias, "random", seed + 4) if bias else None
    g = kern.create_cube_res_group(
        "g",
        0,
        2,
        tasks,
        "matmul",
        CUBE_MATMUL_MSG,
        matmul=dict(a=ab, b=ab, c=c, bias=bias or ("int32" if ab == "int8" else "float32")),
        tiling=dict(
            M=m, N=n, Ka=k, Kb=k, singleCoreM=m, singleCoreN=n, singleCoreK=k, baseM=16, baseN=16, baseK=base_k
        ),
    )
    isz = get_dtype(ab).itemsize
    for q in range(tasks):
        aiv = kern.aiv(q)
        aiv.assign_queue(g, q)
        fields = {
            "aAddr": a.addr + q * m * k * isz,
            "bAddr": b.addr + q * k * n * isz,
            "cAddr": cc.addr + q * m * n * get_dtype(c).itemsize,
            "isTransA": trans_a,
            "isTransB": trans_b,
            "isAtomic": atomic,
            "tailM": tails[0],
            "tailN": tails[1],
            "tailK": tails[2],
        }
        if bias_t is not None:
            fields["biasAddr"] = bias_t.addr
        aiv.post(g, fields)
        aiv.quit(g)
    return kern.compile()


def _numpy_c(p, trans_a=False, trans_b=False, tails=(0, 0, 0), bias=False, atomic=0):
    """Independent float64 answer for :func:`_kernel` programs."""
    a = p.gm.read("a").astype(np.float64)
    b = p.gm.read("b").astype(np.float64)
    c = p.gm.read("c").astype(np.float64)
    if trans_a:
        a = a.transpose(0, 2, 1)
    if trans_b:
        b = b.transpose(0, 2, 1)
    m, n, k = (t if t > 0 else s for t, s in zip(tails, (a.shape[1], b.shape[2], a.shape[2]), strict=True))
    out = c.copy()
    prod = a[:, :m, :k] @ b[:, :k, :n]
    if bias:
        prod = prod + p.gm.read("bias").astype(np.float64)[:n]
    region = out[:, :m, :n]
    out[:, :m, :n] = {0: prod, 1: region + prod, 2: np.maximum(region, prod), 3: np.minimum(region, prod)}[atomic]
    return out


def _check_all(p, want, c_dtype, **sim_kw):
    jax_r = simulate(p, **sim_kw)[0]
    ref_r = run_reference(p)
    assert jax_r.status == Status.OK and ref_r.status == Status.OK
    assert jax_r.outcome() == ref_r.outcome()
    _ulp_close(jax_r.tensor("c"), ref_r.tensor("c"), c_dtype)
    tol = TOLERANCE[c_dtype]
    err = np.linalg.norm(jax_r.tensor("c").astype(np.float64) - want) / np.linalg.norm(want)
    assert err <= tol, (err, tol)
    report = numerics_report(p, jax_r)
    assert report["c"]["ok"] and report["c"]["tolerance"] == tol
    assert jax_r.to_json()["numerics"]["c"]["rel_l2_error"] == report["c"]["rel_l2_error"]
    return jax_r, report["c"]


COMBOS = [
    ("float16", "float32", "float32"),
    ("float16", "float16", "float16"),
    ("float16", "bfloat16", None),
    ("bfloat16", "float32", "float16"),
    ("bfloat16", "bfloat16", "float32"),
    ("bfloat16", "float16", None),
    ("float32", "float32", "float32"),
    ("float32", "float32", "float16"),
    ("float32", "float16", None),
    ("float32", "bfloat16", None),
    ("int8", "int32", "int32"),
]


@pytest.mark.slow
@pytest.mark.parametrize("ab,c,bias", COMBOS, ids=[f"{a}->{c}" + ("+bias" if b else "") for a, c, b in COMBOS])
def test_dtype_combinations(ab, c, bias):
    p = _kernel(ab, c, bias)
    want = _numpy_c(p, bias=bias is not None)
    _, entry = _check_all(p, want, c)
    if c == "int32":
        assert entry["rel_l2_error"] == 0.0 and entry["max_abs_error"] == 0.0


def test_accumulation_is_in_base_k_chunks_with_one_final_rounding():
    # fp16 -> fp16: the only rounding to fp16 is at write-out, so the result equals the fp32
    # accumulation rounded once; with K = 64 and baseK = 16 it is four fp32 chunk adds.
    p = _kernel("float16", "float16", m=16, n=16, k=64, base_k=16)
    r = simulate(p)[0]
    a = p.gm.read("a").astype(np.float32)
    b = p.gm.read("b").astype(np.float32)
    acc = np.zeros((2, 16, 16), np.float32)
    for j in range(0, 64, 16):
        acc = acc + a[:, :, j : j + 16] @ b[:, j : j + 16]
    diff = np.abs(r.tensor("c").astype(np.float32) - acc.astype(np.float16).astype(np.float32))
    ulp = np.spacing(np.abs(acc).astype(np.float16)).astype(np.float32)
    assert (diff <= ulp).all()


@pytest.mark.parametrize("trans_a,trans_b", [(True, False), (False, True), (True, True)])
def test_transposes(trans_a, trans_b):
    p = _kernel(trans_a=trans_a, trans_b=trans_b, m=16, n=32, k=32)
    _check_all(p, _numpy_c(p, trans_a, trans_b), "float32")


def test_tails_smaller_than_base_block_leave_the_rest_of_c_untouched():
    tails = (5, 7, 9)
    p = _kernel(m=16, n=16, k=32, tails=tails, c_init="random")
    want = _numpy_c(p, tails=tails)
    r, _ = _check_all(p, want, "float32")
    before = p.gm.read("c")
    np.testing.assert_array_equal(r.tensor("c")[:, 5:, :], before[:, 5:, :])
    np.testing.assert_array_equal(r.tensor("c")[:, :, 7:], before[:, :, 7:])


@pytest.mark.parametrize("atomic", [1, 2, 3], ids=["add", "max", "min"])
def test_atomic_modes_combine_with_gm(atomic):
    p = _kernel(atomic=atomic, c_init="random", k=32)
    _check_all(p, _numpy_c(p, atomic=atomic), "float32")


def test_several_aics_atomically_add_into_one_tile():
    p = _load_toml("atomic_accumulate.toml")
    a = p.gm.read("a").astype(np.float64)
    b = p.gm.read("b").astype(np.float64)
    want = p.gm.read("bias").astype(np.float64) + a @ b
    jax_r = simulate(p)[0]
    ref_r = run_reference(p)
    assert jax_r.status == Status.OK
    # fixed order: both engines add the four fp16 tiles in the same order -> identical bits
    np.testing.assert_array_equal(jax_r.tensor("c"), ref_r.tensor("c"))
    err = np.linalg.norm(jax_r.tensor("c").astype(np.float64) - want) / np.linalg.norm(want)
    assert err <= TOLERANCE["float16"]
    assert numerics_report(p, jax_r)["c"]["ok"]


@pytest.mark.slow
def test_random_atomic_order_per_lane_is_reported_and_fixed_order_is_deterministic():
    p = _load_toml("atomic_accumulate.toml")
    fixed = simulate([p] * 4, atomic_order="fixed")
    assert all(np.array_equal(r.tensor("c"), fixed[0].tensor("c")) for r in fixed)
    assert numerics_report(p, fixed)["c"]["lane_spread"] == 0.0
    rand = simulate([p] * 16, atomic_order="random", seeds=100)
    report = numerics_report(p, rand)["c"]
    assert report["ok"]
    assert 0.0 <= report["lane_spread"] <= 2 * TOLERANCE["float16"]
    # the received logs and slot states never depend on the write order
    assert all(r.outcome() == fixed[0].outcome() for r in rand)
    # each lane is a valid fp16 result of some order: within tolerance of the exact answer
    a = p.gm.read("a").astype(np.float64)
    want = p.gm.read("bias").astype(np.float64) + a @ p.gm.read("b").astype(np.float64)
    for r in rand:
        assert np.linalg.norm(r.tensor("c") - want) / np.linalg.norm(want) <= TOLERANCE["float16"]


def test_out_of_range_address_is_an_error_and_writes_nothing():
    kern = CubeGroupKernel(name="oob")
    a = kern.alloc("a", (16, 32), "float16", "random", 1)
    b = kern.alloc("b", (32, 16), "float16", "random", 2)
    c = kern.alloc("c", (2, 16, 16), "float32", "random", 3)
    g = kern.create_cube_res_group(
        "g",
        0,
        2,
        2,
        "matmul",
        CUBE_MATMUL_MSG,
        matmul=MatmulType("float16", "float16", "float32"),
        tiling=TCubeTiling(16, 16, 32, 32, 16, 16, 32, 16, 16, 16),
    )
    v0, v1 = kern.aiv(0), kern.aiv(1)
    v0.assign_queue(g, 0)
    v1.assign_queue(g, 1)
    v0.post(g, {"aAddr": a.addr + 2, "bAddr": b.addr, "cAddr": c.addr})  # A runs 2 bytes past the tensor
    v1.post(g, {"aAddr": a.addr, "bAddr": b.addr, "cAddr": c.addr + 16 * 16 * 4})
    v0.quit(g)
    v1.quit(g)
    p = kern.compile()
    for r in (simulate(p)[0], run_reference(p)):
        assert r.status == Status.ERROR
        assert r.error["code"] == "GM_OUT_OF_RANGE"
        assert r.error["core"] == "aic0" and r.error["queue"] == 0 and r.error["depth"] == 0
        assert r.error["address"] == f"0x{a.addr + 2:x} (a+2)"
        # the failing matmul wrote nothing: tile 0 of C is as initialised
        np.testing.assert_array_equal(r.tensor("c")[0], p.gm.read("c")[0])
    assert simulate(p)[0].outcome() == run_reference(p).outcome()


@pytest.mark.slow
def test_null_address_is_an_error_and_a_tail_over_single_core_is_legal():
    p = _kernel(tails=(0, 0, 0))
    big = _kernel(tails=(17, 0, 0))  # tailM 17 > singleCoreM 16: legal in the Norm configuration
    for r in (simulate(big)[0], run_reference(big)):
        # task 0 computes 17 rows (into C[0] and C[1]'s first row); task 1's 17th A row is past A
        assert r.status == Status.ERROR and r.error["code"] == "GM_OUT_OF_RANGE" and r.error["depth"] == 0
        assert r.error["queue"] == 1
        a, b = big.gm.read("a").astype(np.float64), big.gm.read("b").astype(np.float64)
        want = (a.reshape(-1, 64)[:17] @ b[0]).astype(np.float32)
        np.testing.assert_allclose(r.tensor("c").reshape(-1, 16)[:17], want, rtol=1e-5, atol=1e-5)
    assert simulate(p)[0].status == Status.OK
    kern = CubeGroupKernel()
    kern.alloc("c", (16, 16), "float32")
    g = kern.create_cube_res_group(
        "g", 0, 2, 1, "matmul", CUBE_MATMUL_MSG, matmul={}, tiling=TCubeTiling(16, 16, 16, 16, 16, 16, 16, 16, 16, 16)
    )
    v = kern.aiv(0)
    v.assign_queue(g, 0)
    v.post(g, {"aAddr": 0, "bAddr": 0, "cAddr": "c"})
    v.quit(g)
    r = simulate(kern.compile())[0]
    assert r.status == Status.ERROR and r.error["address"] == "0x0 (outside every tensor)"


def test_merge_with_gaps_and_last_tail_matches_numpy_sample():
    mod = load("cube_group_sample")
    p = mod.build(seed=3)
    want = mod.expected(p)["c"]
    jax_r = simulate(p)[0]
    ref_r = run_reference(p)
    assert jax_r.status == Status.OK and jax_r.outcome() == ref_r.outcome()
    _ulp_close(jax_r.tensor("c"), ref_r.tensor("c"), "float32")
    c = jax_r.tensor("c").astype(np.float64)
    assert np.linalg.norm(c - want) / np.linalg.norm(want) <= TOLERANCE["float32"]
    # the merged tiles: 4 per AIC; the last one computed only lastTailM = 40 rows
    assert (c[mod.QUEUES + mod.MERGE - 1, mod.LAST_TAIL_M :] == 0).all()
    assert (c[mod.QUEUES + mod.MERGE - 1, : mod.LAST_TAIL_M] != 0).all()
    # each AIC received 8 single tasks + 1 merged leader (FAKE followers are skipped) + 8 QUITs
    for core in range(6, 12):
        states = [s for _, _, s in jax_r.received[core]]
        assert states.count("VALID") == 9 and states.count("QUIT") == 8 and "FAKE" not in states


@pytest.mark.xdist_group("eager")  # one worker: eager runs share its per-op compiles
@pytest.mark.slow
def test_eager_jit_and_vmapped_lanes_agree():
    lanes = [_kernel(seed=s, k=32) for s in (0, 10, 20)]
    batched = simulate(lanes)
    for p, r in zip(lanes, batched, strict=True):
        single = simulate(p)[0]
        np.testing.assert_array_equal(r.tensor("c"), single.tensor("c"))
        assert r.outcome() == single.outcome()
    small = _kernel(seed=5, k=16, tasks=1)
    eager = simulate(small, jit=False)[0]
    jitted = simulate(small)[0]
    np.testing.assert_array_equal(eager.tensor("c"), jitted.tensor("c"))
    assert eager.outcome() == jitted.outcome() and eager.status == Status.OK
    # lanes hold different data, so their results differ
    assert not np.array_equal(batched[0].tensor("c"), batched[1].tensor("c"))


def test_compute_of_a_step_is_one_batched_dot_general_per_k_chunk():
    p = _kernel(k=32)  # two baseK chunks of 16
    jaxpr = batch_jaxpr([p] * 8)
    assert count_dot_generals(jaxpr) == 2
    dots = [line for line in str(jaxpr).splitlines() if "dot_general" in line]
    assert all("[8,1,16,16]" in d for d in dots)  # lanes x AICs x M x N


def test_matmul_type_and_tiling_validation():
    with pytest.raises(ConfigError, match="matmul.c"):
        MatmulType("int8", "int8", "bfloat16", "int32")
    with pytest.raises(ConfigError, match="matmul.bias"):
        MatmulType("bfloat16", "bfloat16", "float32", "bfloat16")
    assert MatmulType("int8", "int8", "float16", "int32").dequant
    with pytest.raises(ConfigError, match="matmul.b"):
        MatmulType("float16", "float32", "float32")
    with pytest.raises(ConfigError, match="a_format"):
        MatmulType(a_format="NZ")
    mt = MatmulType()
    with pytest.raises(ConfigError, match=r"tiling.baseK.*multiple of C0 = 16"):
        TCubeTiling(64, 64, 64, 64, 64, 64, 64, 64, 64, 8).check(mt)
    with pytest.raises(ConfigError, match=r"tiling.singleCoreM.*<= M"):
        TCubeTiling(16, 64, 64, 64, 32, 64, 64, 16, 64, 16).check(mt)
    with pytest.raises(ConfigError, match="L0A"):
        TCubeTiling(512, 64, 512, 512, 512, 64, 512, 512, 64, 256).check(mt)
    with pytest.raises(ConfigError, match="L0C"):
        TCubeTiling(512, 512, 16, 16, 512, 512, 16, 256, 256, 16).check(mt)
    with pytest.raises(ConfigError, match=r"tiling.stepM.*> 0"):
        TCubeTiling(16, 16, 16, 16, 16, 16, 16, 16, 16, 16, stepM=0).check(mt)
    kern = CubeGroupKernel()
    with pytest.raises(ConfigError, match="needs the group's matmul type"):
        kern.create_cube_res_group("g", 0, 2, 1, "matmul", CUBE_MATMUL_MSG)
    with pytest.raises(ConfigError, match="group\\[0\\].tiling"):
        kern.create_cube_res_group("g", 0, 2, 1, "matmul", CUBE_MATMUL_MSG, matmul={})


def test_gm_allocator_and_host_access(tmp_path):
    gm = GlobalMemory()
    a = gm.alloc("a", (3, 5), "half", "random", 7)
    b = gm.alloc("b", 10, "int8")
    assert a.addr == GM_BASE and a.addr % GM_ALIGN == 0 and b.addr % GM_ALIGN == 0
    assert b.addr == a.addr + 64  # 30 bytes take ALIGN_UP(30, 32) + 32 = 64 bytes; the next start is 64-aligned
    assert gm.address("a+0x10") == a.addr + 16 and gm.address("b") == b.addr
    assert gm.read("a").dtype == np.float16 and gm.read("a").shape == (3, 5)
    np.save(tmp_path / "x.npy", np.arange(4, dtype=np.float32))
    gm.alloc("x", 4, "float32", str(tmp_path / "x.npy"))
    np.testing.assert_array_equal(gm.read("x"), [0, 1, 2, 3])
    paths = gm.dump(tmp_path / "dump")
    assert sorted(p.name for p in paths) == ["a.npy", "b.npy", "x.npy"]
    with pytest.raises(ConfigError, match=r"tensor\['y'\].dtype"):
        gm.alloc("y", 4, "float64")
    with pytest.raises(ConfigError, match="already exists"):
        gm.alloc("a", 4, "float32")
    with pytest.raises(ConfigError, match="must have shape"):
        gm.alloc("z", 5, "float32", str(tmp_path / "x.npy"))
    with pytest.raises(ConfigError, match="no such tensor"):
        gm.address("nope+4")


def _load_toml(name: str):
    from ascend_jax.scenario import load_scenario

    return load_scenario(ROOT / "models" / name)


def test_scenario_tensor_errors_name_the_path(tmp_path):
    from ascend_jax.scenario import load_scenario

    text = (ROOT / "models" / "atomic_accumulate.toml").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace('dtype = "float16"\ninit = "random"\nseed = 1', 'dtype = "float16"\nsize = 3'))
    with pytest.raises(ConfigError, match=r"tensor\[0\].size"):
        load_scenario(bad)
    bad.write_text(text.replace('cAddr = "c" }', 'cAddr = "d+4" }', 1))
    with pytest.raises(ConfigError, match=r"aiv\[1\].ops\[1\].fields.cAddr.*no such tensor"):
        load_scenario(bad)


def test_cli_model_json_dump_and_exit_code(tmp_path, capsys):
    rc = main(["run", "--model", "cube_group_sample", "--json", "--dump", str(tmp_path)])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["status"] == "ok"
    entry = out["numerics"]["c"]
    assert entry["ok"] and entry["numpy_check"]["ok"]
    assert set(entry) >= {"rel_l2_error", "max_abs_error", "max_rel_error", "nan", "inf", "tolerance", "ok"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "b.npy", "c.npy"]
    assert np.load(tmp_path / "c.npy").shape == (72, 64, 64)
    rc = main(["run", "--model", "nope"])
    assert rc == 2 and "no such model" in capsys.readouterr().err


# -- property: random matmul programs, JAX engine == reference interpreter ---------------------

import hypothesis.strategies as hst  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402


@hst.composite
def matmul_programs(draw):
    """2 AICs x 2 queues; each AIV posts 1-3 matmul messages (random tails, transposes, atomic
    mode, merges, overlapping C tiles, sometimes an out-of-range A) then quits."""
    kern = CubeGroupKernel(name="prop", max_steps=2000)
    a = kern.alloc("a", (4, 32, 32), "float16", "random", draw(hst.integers(0, 99)))
    b = kern.alloc("b", (4, 32, 32), "float16", "random", 7)
    c = kern.alloc("c", (4, 16, 16), "float32", "random", 8)
    g = kern.create_cube_res_group(
        "g", 0, 4, 4, "matmul", CUBE_MATMUL_MSG,
        matmul=dict(a="float16", b="float16", c="float32"),
        tiling=dict(M=16, N=16, Ka=32, Kb=32, singleCoreM=16, singleCoreN=16, singleCoreK=32, baseM=16, baseN=16, baseK=16),
    )  # fmt: skip
    for q in range(4):
        kern.aiv(q).assign_queue(g, q)
    for q in range(4):
        aiv = kern.aiv(q)
        for _ in range(draw(hst.integers(1, 3))):
            merge = q % 2 == 0 and draw(hst.booleans())
            fields = {
                "aAddr": a.addr + draw(hst.integers(0, 3)) * 2048 + draw(hst.sampled_from([0, 0, 0, 4096])),
                "bAddr": b.addr + draw(hst.integers(0, 3)) * 2048,
                "cAddr": c.addr + draw(hst.integers(0, 3)) * 1024,
                "isTransA": draw(hst.booleans()),
                "isTransB": draw(hst.booleans()),
                "isAtomic": draw(hst.integers(0, 3)),
                "tailM": draw(hst.integers(0, 16)),
                "tailN": draw(hst.integers(0, 16)),
                "tailK": draw(hst.integers(0, 32)),
                "skipCnt": 1 if merge else 0,
                "aGap": 0,
                "cGap": 0,
                "lastTailM": draw(hst.integers(0, 16)),
            }
            aiv.post(g, fields)
            if merge:
                kern.aiv(q + 1).fake(g)
        aiv.quit(g)
    return kern.compile()


@pytest.mark.slow
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(matmul_programs())
def test_random_matmul_programs_match_the_reference(p):
    jax_r = simulate(p)[0]
    ref_r = run_reference(p)
    assert jax_r.outcome() == ref_r.outcome(), (jax_r.to_json(), ref_r.to_json())
    assert jax_r.steps == ref_r.steps
    _ulp_close(jax_r.tensor("c"), ref_r.tensor("c"), "float32")

"""One compilation per shape family: programs that differ only in the extent of their tensors
(GM sizes within one :func:`ascend_jax.buckets.bucket_fine` bucket, tensors at other addresses)
and, with AIV vector ops, of their UB tiles share the compiled loop, in both GM forms, and each
still equals the reference."""

from __future__ import annotations

import numpy as np
import pytest

import ascend_jax as aj
from ascend_jax import CUBE_MATMUL_MSG, CubeGroupKernel
from ascend_jax.buckets import bucket, bucket_fine
from ascend_jax.cube_group import engine
from ascend_jax.cube_group.engine import EngineOptions
from ascend_jax.cube_group.engine.loop import TRACE_COUNT, clear_compiled

T = 16  # tile edge


def _kernel(extra_rows: int, pad: int):
    """Two AICs, one matmul each into C, with C ``extra_rows`` rows longer and a ``pad``-element
    tensor allocated before the operands (so every tensor address moves)."""
    kern = CubeGroupKernel(name="family")
    kern.alloc("pad", (pad,), "float32", "zeros")
    a = kern.alloc("a", (T, T), "float16", "random", 1)
    b = kern.alloc("b", (T, T), "float16", "random", 2)
    c = kern.alloc("c", (2 * T + extra_rows, T), "float32", "zeros")
    tiling = dict(M=T, N=T, Ka=T, Kb=T, singleCoreM=T, singleCoreN=T, singleCoreK=T, baseM=16, baseN=16, baseK=16)
    mt = dict(a="float16", b="float16", c="float32", bias="float32")
    g = kern.create_cube_res_group("g", 0, 4, 2, "matmul", CUBE_MATMUL_MSG, matmul=mt, tiling=tiling)
    for q in range(2):
        aiv = kern.aiv(q)
        aiv.assign_queue(g, q)
        aiv.post(g, {"aAddr": a.addr, "bAddr": b.addr, "cAddr": c.addr + 4 * q * T * T, "kaOrgShape": T,
                     "kbOrgShape": T, "nOrgShape": T})  # fmt: skip
        aiv.quit(g)
    return kern.compile()


def _one_compilation(first, second, typed: bool):
    """Runs two programs of one family (GM sizes differ) in one GM form: they get one static shape,
    the second runs on the first one's compilation (no trace), and each outcome equals the
    reference's. Returns ``(program, result, reference result)`` of each for the tensor checks."""
    options = EngineOptions(typed_banks=typed)
    assert first.gm.size != second.gm.size
    shapes = [engine.prepare([p], options=options).shape for p in (first, second)]
    assert (shapes[0].banks is not None) == typed
    assert shapes[0] == shapes[1]
    results = []
    for p in (first, second):
        before = TRACE_COUNT["run"]
        results.append(aj.simulate(p, options=options)[0])
        traced = TRACE_COUNT["run"] - before
    assert traced == 0  # the second program ran on the first one's compilation
    out = []
    for p, res in zip((first, second), results, strict=True):
        ref = aj.run_reference(p)
        assert res.outcome() == ref.outcome()
        out.append((p, res, ref))
    return out


def test_bucket_fine_is_at_most_an_eighth_above():
    for n in [*range(40), 1000, 4097, 10_883_872, 2**31 - 1]:
        b = bucket_fine(n)
        assert n <= b <= max(n, n + n // 8 + 1), n
        assert bucket_fine(b) == b  # a bucket is its own bucket
    assert bucket_fine(10_703_136) == bucket_fine(10_883_872) < bucket(10_703_136)


@pytest.mark.parametrize("typed", [True, False], ids=["typed_banks", "bytes"])
def test_programs_of_one_family_share_a_compilation(typed):
    first, second = _kernel(1, 1000), _kernel(2, 1020)  # 7,328 and 7,520 B: one bucket, per bank too
    assert first.gm.tensors["c"].addr != second.gm.tensors["c"].addr
    for p, res, ref in _one_compilation(first, second, typed):
        # float32 sums of 16 products: the dot's and numpy's summation orders differ in the last bit
        np.testing.assert_allclose(res.tensor("c"), ref.tensor("c"), rtol=1e-5, atol=1e-5)
        assert res.tensor("c").shape == p.gm.tensors["c"].shape


def test_clear_compiled_makes_the_next_call_trace_again():
    """``loop.clear_compiled`` (what the threshold tests rely on): the same program, run again after
    it, is traced once more and gives the same result. A protocol-only kernel (cheap to compile)."""
    kern = CubeGroupKernel(name="retrace")
    g = kern.create_cube_res_group("g", 0, 2, 1, "free")
    aiv = kern.aiv(0)
    aiv.assign_queue(g, 0)
    aiv.post(g)
    aiv.quit(g)
    p = kern.compile()
    first = aj.simulate(p)[0]
    before = TRACE_COUNT["run"]
    aj.simulate(p)
    assert TRACE_COUNT["run"] == before  # cached
    clear_compiled()
    again = aj.simulate(p)[0]
    assert TRACE_COUNT["run"] == before + 1
    assert again.outcome() == first.outcome() and again.status == first.status


def _vector_kernel(rows: int, pad: int):
    """Two AIVs and no Matmul: each loads a ``rows x 16`` float16 tile and a float32 one, scales
    and adds them in UB buffers of ``rows`` rows, and stores both; a ``pad``-element tensor first
    (so every tensor address moves)."""
    kern = CubeGroupKernel(name="vector_family")
    kern.alloc("pad", (pad,), "float32", "zeros")
    kern.alloc("x", (2 * rows, 16), "float16", "random", 1)
    kern.alloc("w", (rows, 16), "float32", "random", 2)
    kern.alloc("y", (2 * rows, 16), "float32", "zeros")
    g = kern.create_cube_res_group("g", 0, 2, 2, "free")
    for i in range(2):
        aiv = kern.aiv(i)
        aiv.assign_queue(g, i)
        a = aiv.vec.buffer("a", rows, 16, "float16")
        b = aiv.vec.buffer("b", rows, 16, "float32")
        c = aiv.vec.buffer("c", rows, 16, "float32")
        aiv.vec.load(a, kern.gm.tensors["x"].addr + 2 * 16 * rows * i)
        aiv.vec.load(b, "w")
        aiv.vec.cast(c, a)
        aiv.vec.muls(c, c, 0.5)
        aiv.vec.add(c, c, b)
        aiv.vec.store(kern.gm.tensors["y"].addr + 4 * 16 * rows * i, c)
        aiv.quit(g)
    return kern.compile()


@pytest.mark.parametrize("typed", [True, False], ids=["typed_banks", "bytes"])
def test_vector_programs_of_one_family_share_a_compilation(typed):
    """AIV vector programs whose tensors and UB tiles differ only in extent (7 or 8 rows) and
    whose tensors lie at other addresses run on one compilation, and each equals the reference."""
    first, second = _vector_kernel(7, 1000), _vector_kernel(8, 940)  # 5,984 and 6,048 B: one bucket
    for _, res, ref in _one_compilation(first, second, typed):
        np.testing.assert_array_equal(res.tensor("y"), ref.tensor("y"))

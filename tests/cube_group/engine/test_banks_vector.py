"""Typed GM banks with AIV vector ops: GM <-> UB copies read and write the bank of the copy's type
(``vector_ops._vector_copy_banks``); a copy that reinterprets bytes keeps the batch on GM as bytes.
Every result array equals the byte form's, and the outcome the reference's."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from _models import load
from test_access import _assert_same_arrays

import ascend_jax as aj
from ascend_jax.cube_group import engine
from ascend_jax.cube_group.engine import EngineOptions
from ascend_jax.cube_group.status import AivCall

ag = load("attention_grad")
SMALL = dict(s1=64, s2=64, d=16, block_s1=32, block_s2=32, aics=1, aivs=2)
#: the tile bound (64) above the dQ / dK / dV row stride (32), two AICs, four AIVs
NARROW = dict(s1=128, s2=128, d=32, block_s1=64, block_s2=64, aics=2, aivs=4)
READ_ONLY = ("q", "k", "v", "do", "o", "lse")
WRITTEN = ("dq", "dk", "dv", "s_ws", "dp_ws", "p_ws", "ds_ws")


def _both_forms(programs, **kw):
    """(typed run, byte run, the typed run's banks) of one batch."""
    layout = engine.prepare(programs, schedule=kw.get("schedule", "lockstep")).shape.banks
    typed = aj.simulate(programs, **kw)
    bytes_only = EngineOptions(typed_banks=False)
    assert engine.prepare(programs, options=bytes_only).shape.banks is None
    plain = aj.simulate(programs, options=bytes_only, **kw)
    return typed, plain, layout


def _bank_of(program, layout, name):
    k = dict(zip(program.gm.tensors, layout.tensor_banks, strict=True))[name]
    return layout.dtypes[k], layout.writable[k]


def _replace_vector_op(program, block, which, **fields):
    """``program`` with the ``which``-th vector op (``kind`` given in ``fields`` as ``match``) of
    AIV ``block`` changed to ``fields`` (bypassing the builder's checks, as a hand-made program could)."""
    match = fields.pop("match")
    aivs = []
    done = False
    for b, ops in program.aivs:
        ops = list(ops)
        vec = [i for i, op in enumerate(ops) if op.kind == AivCall.VECTOR and op.vec.kind == match]
        if b == block and len(vec) > which:
            i = vec[which]
            ops[i] = dataclasses.replace(ops[i], vec=dataclasses.replace(ops[i].vec, **fields))
            done = True
        aivs.append((b, tuple(ops)))
    if done:
        return dataclasses.replace(program, aivs=tuple(aivs))
    raise AssertionError("no such op")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("dtype", "causal", "schedule", "shape"),
    # lockstep only (the timed schedule on typed banks: test_compute_vector's attention runs; the
    # byte form's timed compile cost this test 30 s of the suite's budget)
    [("float16", False, "lockstep", SMALL), ("bfloat16", True, "lockstep", NARROW)],
)
def test_attention_banks_equal_bytes(dtype, causal, schedule, shape):
    """The attention backward (vector loads, casts, stores, matmuls on what they store): inputs
    are read-only tables, workspaces and outputs written banks of their own type; two lanes with
    their own inputs and one shared program give the byte form's arrays and the reference's
    outcome."""
    lanes = [ag.build(seed, dtype=dtype, causal=causal, **shape) for seed in (0, 1)]
    # one shared program (read-only banks as tables) only at the small shape: each form compiles
    for programs in (lanes, lanes[:1]) if shape is SMALL else (lanes,):
        typed, plain, layout = _both_forms(programs, schedule=schedule)
        assert layout is not None
        p = programs[0]
        for name in READ_ONLY:
            assert _bank_of(p, layout, name) == (p.gm.tensors[name].dtype.name, False), name
        for name in WRITTEN:
            assert _bank_of(p, layout, name) == (p.gm.tensors[name].dtype.name, True), name
        _assert_same_arrays(typed, plain)
        for i, prog in enumerate(programs):
            ref = aj.run_reference(prog, schedule=schedule)
            assert typed[i].outcome() == ref.outcome(), i
            for name in ("p_ws", "ds_ws"):  # what the AIVs stored, in the input type
                np.testing.assert_allclose(
                    typed[i].tensor(name).astype(np.float32), ref.tensor(name).astype(np.float32), rtol=2e-2, atol=1e-3
                )


@pytest.mark.slow
def test_strided_copies_on_banks():
    """A load whose rows are not consecutive in GM (stride above its cols: windows are gathers, not
    slices) and an atomic store read and write the right bank elements."""
    p = ag.build(0, **SMALL)
    cols = SMALL["block_s2"] // 2
    p = _replace_vector_op(p, 0, 0, match="load", cols=cols, stride=SMALL["block_s2"])
    p = _replace_vector_op(p, 1, 0, match="store", atomic=1)
    assert not engine.prepare([p]).shape.ub_flat
    typed, plain, layout = _both_forms([p])
    assert layout is not None
    _assert_same_arrays(typed, plain)
    assert typed[0].outcome() == aj.run_reference(p).outcome()


@pytest.mark.slow
def test_a_copy_that_reinterprets_bytes_keeps_gm_as_bytes():
    """A store of a float16 buffer into a float32 tensor (the builder refuses it; a hand-made
    program may hold it) needs byte semantics: the batch keeps GM as bytes, and a tensor only such
    a copy reads is no reason either. The run still equals the reference."""
    base = ag.build(0, **SMALL)
    at = base.gm.tensors["s_ws"].addr
    pun = _replace_vector_op(ag.build(0, **SMALL), 0, 0, match="store", addr=at)
    assert engine.prepare([base]).shape.banks is not None
    assert engine.prepare([pun]).shape.banks is None
    half = _replace_vector_op(ag.build(0, **SMALL), 0, 0, match="load", addr=base.gm.tensors["lse"].addr + 2)
    assert engine.prepare([half]).shape.banks is None  # half an element into a float32 tensor
    res = aj.simulate([pun])
    assert res[0].outcome() == aj.run_reference(pun).outcome()


def _vector_only(seed: int):
    """A kernel of two AIVs and no Matmul: each loads two [8, 16] tiles (float16 and float32),
    computes with them, and stores a float16 and a float32 result; one AIV stores atomically."""
    from ascend_jax.cube_group.program import CubeGroupKernel

    rng = np.random.default_rng(seed)
    k = CubeGroupKernel(chip="910B1")
    g = k.create_cube_res_group("g", 0, 2, 2, "free")
    k.alloc("x", (16, 16), "float16", rng.uniform(-2, 2, (16, 16)).astype(np.float16))
    k.alloc("w", (8, 16), "float32", rng.uniform(0.5, 2, (8, 16)).astype(np.float32))
    k.alloc("y16", (16, 16), "float16", "zeros")
    k.alloc("y32", (8, 16), "float32", "zeros")
    for i in range(2):
        aiv = k.aiv(i)
        aiv.assign_queue(g, i)
        a = aiv.vec.buffer("a", 8, 16, "float16")
        b = aiv.vec.buffer("b", 8, 16, "float32")
        c = aiv.vec.buffer("c", 8, 16, "float32")
        half = 8 * 16 * 2 * i  # bytes to AIV i's rows of the float16 tensors
        aiv.vec.load(a, k.gm.tensors["x"].addr + half)
        aiv.vec.load(b, "w")
        aiv.vec.cast(c, a)
        aiv.vec.mul(c, c, b)
        aiv.vec.cast(a, c)
        aiv.vec.store(k.gm.tensors["y16"].addr + half, a)
        aiv.vec.store("y32", c, atomic=bool(i))
        aiv.quit(g)
    return k.compile()


def test_vector_ops_without_a_matmul_use_the_banks():
    """AIV loads and stores with no Matmul in the kernel: inputs are read-only tables, the stored
    tensors written banks of their own type, and every array equals the byte form's (two lanes
    with their own data); a protocol alone (no GM copy, no Matmul) stays on bytes."""
    lanes = [_vector_only(seed) for seed in (0, 1)]
    typed, plain, layout = _both_forms(lanes)
    assert layout is not None
    p = lanes[0]
    assert _bank_of(p, layout, "x") == ("float16", False) and _bank_of(p, layout, "w") == ("float32", False)
    assert _bank_of(p, layout, "y16") == ("float16", True) and _bank_of(p, layout, "y32") == ("float32", True)
    _assert_same_arrays(typed, plain)
    for i, prog in enumerate(lanes):
        ref = aj.run_reference(prog)
        assert typed[i].outcome() == ref.outcome(), i
        for name in ("y16", "y32"):
            np.testing.assert_array_equal(typed[i].tensor(name), ref.tensor(name))
    protocol = load("cube_group_sample").build(protocol_only=True)
    assert engine.prepare([protocol]).shape.banks is None

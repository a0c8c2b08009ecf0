"""The vector op table (``ascend_jax.cube_group.vector.KINDS``): one row per kind, read by the builder,
the schema, both engines and both timed models. Each row's numpy semantics (the reference's) and JAX
semantics (the engine's, written separately) must agree, and its cost must be the same number in
numpy and in JAX."""

from __future__ import annotations

import inspect
import typing

import jax.numpy as jnp
import numpy as np
import pytest

import ascend_jax.cube_group.engine.compute as engine_compute
import ascend_jax.cube_group.engine.timed as engine_timed
import ascend_jax.cube_group.vector as vector
from ascend_jax.cube_group.vector import KIND, KINDS, PATTERNS, TABLE_KEYS, VECTOR_KINDS, VectorBuilder
from ascend_jax.schema import VectorOpTable


def test_codes_are_positions_and_names_are_unique():
    assert [k.code for k in KINDS] == list(range(len(KINDS)))
    assert tuple(k.name for k in KINDS) == VECTOR_KINDS
    assert len(set(VECTOR_KINDS)) == len(KINDS)
    assert {k.name for k in KINDS if k.is_copy} == {"load", "store"}
    assert all(k.pattern in PATTERNS for k in KINDS)
    assert all((k.numpy is None) == k.is_copy and (k.jax is None) == k.is_copy for k in KINDS)


def test_schema_and_scenario_keys_come_from_the_table():
    literal = typing.get_args(VectorOpTable.model_fields["kind"].annotation)
    assert literal == VECTOR_KINDS
    assert set(TABLE_KEYS) == set(VECTOR_KINDS)
    for k in KINDS:
        assert TABLE_KEYS[k.name] == PATTERNS[k.pattern]


def test_every_compute_kind_has_a_builder_method_that_appends_it():
    for k in KINDS:
        assert callable(getattr(VectorBuilder, k.name)), k.name


def _operands(rng, pattern: str, rows: int, cols: int):
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    if pattern == "broadcast":
        b = rng.standard_normal((rows, 1)).astype(np.float32)
    elif pattern == "select":
        b = (rng.random((rows, cols)) < 0.5).astype(np.float32)
    elif pattern == "binary":
        b = rng.standard_normal((rows, cols)).astype(np.float32) + 3.0  # away from 0 for div
    else:
        b = None
    return x, b, np.float32(-1.25)


@pytest.mark.parametrize("kind", [k for k in KINDS if not k.is_copy], ids=lambda k: k.name)
@pytest.mark.parametrize("cols", [1, 7, 40, 200])
def test_numpy_and_jax_semantics_agree(kind, cols):
    """The engine's JAX function on a padded row (4 dead columns of garbage) gives the reference's
    float32 bits on the live region."""
    rng = np.random.default_rng(cols)
    rows = 5
    x, b, s = _operands(rng, kind.pattern, rows, cols)
    want = kind.numpy(x, b, s, np.float32)
    pad = rng.standard_normal((rows, 4)).astype(np.float32) * 1e6
    xp = np.concatenate([x, pad], axis=1)
    if b is None:
        bj = jnp.zeros_like(xp)
    elif kind.pattern == "broadcast":
        bj = jnp.broadcast_to(b, xp.shape)
    else:
        bj = jnp.concatenate([b, pad], axis=1)
    if kind.pattern == "scalar":
        bj = jnp.full(xp.shape, s)
    got = np.asarray(kind.jax(jnp, jnp.asarray(xp), bj, jnp.float32(s), jnp.full((rows,), cols)))
    if kind.pattern == "reduce":
        np.testing.assert_array_equal(got, want[:, 0])
    else:
        tol = 2e-7 if kind.name == "exp" else 0  # exp: XLA's and numpy's differ in the last bit
        np.testing.assert_allclose(got[:, :cols], want, rtol=tol, atol=0)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_cycles_agree_in_numpy_and_jax(kind):
    f32 = np.float32
    rates = (f32(20.0), f32(64.0), f32(256.0))
    for nbytes in (1.0, 255.0, 256.0, 257.0, 65536.0, 3.0e7):
        a = kind.cycles(np, f32(nbytes), *rates)
        b = kind.cycles(jnp, jnp.float32(nbytes), *(jnp.float32(r) for r in rates))
        assert a.dtype == np.float32 and float(a) == float(b)
    assert float(KIND["load"].cycles(np, f32(256), *rates)) == 24.0  # 20 + 256 / 64
    assert float(KIND["add"].cycles(np, f32(257), *rates)) == 22.0  # 20 + ceil(257 / 256)


def test_engines_read_the_table_not_a_code_map():
    """No second code map and no order-coded kind tests in the engine's vector code."""
    for module in (engine_compute, engine_timed):
        src = inspect.getsource(module)
        assert "VECTOR_KINDS" not in src
        assert "kind <=" not in src and "kind >" not in src and '_K["' not in src
    assert not hasattr(vector, "VectorUnit")  # the reference has its own (reference/compute.py)
    assert not hasattr(vector, "_compute")

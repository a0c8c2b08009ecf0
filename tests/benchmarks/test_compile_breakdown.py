"""``benchmarks/compile_breakdown.py`` counts a jaxpr's equations with those of its sub-jaxprs."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tests._models import load

cb = load("compile_breakdown", "benchmarks")


def test_equations_of_nested_jaxprs_are_counted():
    def f(x):
        y = jnp.sin(x)
        z = jax.lax.cond(x > 0, lambda v: v * 2.0, lambda v: v - 1.0, y)  # one equation per branch
        return jax.lax.while_loop(lambda v: v < 10.0, lambda v: v + 1.0, z)  # one in each of its jaxprs

    jaxpr = jax.make_jaxpr(f)(1.0).jaxpr
    top = len(jaxpr.eqns)
    assert top == 5  # sin, gt, the predicate's convert, cond, while
    assert cb._eqns(jaxpr) == top + 2 + 2  # the two branches' one equation each, cond_fun's and body_fun's


def test_rounds_must_be_positive(capsys):
    assert cb.main(["--rounds", "0"]) == 2
    assert "--rounds = 0" in capsys.readouterr().err

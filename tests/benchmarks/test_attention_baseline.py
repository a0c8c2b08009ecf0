"""The attention benchmark's baseline is a correct attention backward.

``benchmarks/attention_throughput.py`` divides the simulator's time by that of
``plain_backward`` (and quotes ``plain_backward_o_lse``), so both must compute dQ, dK, dV: they
are compared here, on tiny shapes with and without the causal mask and with a leading batch axis,
with a float64 numpy backward written out in this file from the formulas

    P = softmax(Q K^T / sqrt(D)),  O = P V,  dV = P^T dO,  dP = dO V^T,
    dS = P * (dP - rowsum(dO * O)),  dQ = dS K / sqrt(D),  dK = dS^T Q / sqrt(D)

and checked once against a finite difference of ``sum(O * dO)``.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests._models import load

bench = load("attention_throughput", "benchmarks")


def numpy_backward(q, k, v, do, causal):
    """float64 ``(dQ, dK, dV, O, lse)`` for ``[..., S, D]`` inputs."""
    q, k, v, do = (x.astype(np.float64) for x in (q, k, v, do))
    scale = 1.0 / np.sqrt(q.shape[-1])
    s = q @ np.swapaxes(k, -1, -2) * scale
    if causal:
        s = np.where(np.tril(np.ones(s.shape[-2:], bool)), s, -np.inf)
    lse = np.log(np.exp(s - s.max(-1, keepdims=True)).sum(-1)) + s.max(-1)
    p = np.exp(s - lse[..., None])
    o = p @ v
    ds = p * (do @ np.swapaxes(v, -1, -2) - (do * o).sum(-1, keepdims=True))
    return ds @ k * scale, np.swapaxes(ds, -1, -2) @ q * scale, np.swapaxes(p, -1, -2) @ do, o, lse


def inputs(shape, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, shape).astype(np.float32) for _ in range(4)]


def close(got, want):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(16, 8), (3, 32, 16)])
def test_plain_backward_matches_float64(shape, causal):
    q, k, v, do = inputs(shape)
    dq, dk, dv, o, lse = numpy_backward(q, k, v, do, causal)
    for got, want in zip(bench.plain_backward(q, k, v, do, causal=causal), (dq, dk, dv), strict=True):
        assert got.shape == want.shape and got.dtype == np.float32
        close(got, want)
    o32, lse32 = bench.forward_o_lse(q, k, v, causal)
    close(o32, o)
    close(lse32, lse)
    given = bench.plain_backward_o_lse(q, k, v, do, o32, lse32, causal=causal)
    for got, want in zip(given, (dq, dk, dv), strict=True):
        close(got, want)


def test_causal_mask_changes_the_gradient():
    q, k, v, do = inputs((16, 8), seed=1)
    full = bench.plain_backward(q, k, v, do, causal=False)
    causal = bench.plain_backward(q, k, v, do, causal=True)
    # the last query row sees every key either way: dQ's last row agrees, the first does not
    close(causal[0][-1], np.asarray(full[0][-1], np.float64))
    assert not np.allclose(causal[0][0], full[0][0], rtol=1e-3)


def test_numpy_reference_is_the_gradient():
    """The float64 reference itself: dQ against a central difference of sum(O * dO) in one entry."""
    q, k, v, do = (x.astype(np.float64) for x in inputs((8, 4), seed=2))

    def loss(qq):
        s = qq @ k.T / 2.0
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        return float(((p @ v) * do).sum())

    dq = numpy_backward(q, k, v, do, False)[0]
    h = 1e-6
    for i, j in [(0, 0), (3, 2), (7, 3)]:
        e = np.zeros_like(q)
        e[i, j] = h
        assert abs((loss(q + e) - loss(q - e)) / (2 * h) - dq[i, j]) < 1e-7

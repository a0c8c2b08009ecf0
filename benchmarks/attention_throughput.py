"""Attention backward: the simulator's time per lane against a plain ``jax.numpy`` backward of the same shape.

    python benchmarks/attention_throughput.py [--quick] [--s S ...] [--batch B ...] [--causal full|causal] [--out FILE]

Writes ``{"meta": {...}, "results": [{"engine", "device", "batch", "s", "d", "causal", "lane_s",
"plain_jnp_s", "compile_s", "wall_s", "cpu_s", ...}, ...]}`` to ``--out`` (default: a folder under
the system's temporary directory, never ``benchmarks/results/``), a PNG plot beside it, and prints
``lane_s / plain_jnp_s`` per row.

* Workload: ``models/attention_grad.py`` (B = H = 1, S1 = S2 = S, head size D, float16 inputs,
  seed 0), the shape of ``benchmarks/attention_sweep.py``: 128 x 128 blocks on 24 AICs and 48
  AIVs (the 910B1's all), ``round_robin`` assignment, no merging, built by that script's
  ``build``. The JAX engine runs the default ``lockstep`` schedule.
* ``jax`` rows: ``batch`` lanes of the same program in one ``ascend_jax.simulate`` call.
  ``wall_s`` / ``cpu_s``: wall and CPU seconds (user + sys of this process, every thread,
  ``resource.getrusage``) of the fastest warm call (best of ``REPEATS``, fewer once they take
  ``WARM_MAX_TOTAL_S``; taken in turns with the plain jnp calls, :func:`time_interleaved`);
  ``lane_s = wall_s / batch``; ``compile_s``: the first call's wall time minus ``wall_s``
  (``first_call_s`` is the first call's). ``bytes_per_lane``: ``ascend_jax.lane_bytes(program)`` (the engine state of one
  lane; the op tables are one copy for the batch). ``rel_l2_error``: lane 0's dQ, dK, dV against
  the model's float64 backward (``expected``; the largest of the three; checked for S <= 2,048,
  and the run fails above the model's float16 tolerance).
* ``plain_jnp_s``: :func:`plain_backward`, float32 ``jax.numpy`` (matmuls at
  ``Precision.HIGHEST``, jit-compiled, warm, the fastest call of :func:`time_interleaved`'s
  rounds) on the same Q, K, V, dO cast to float32, ``batch`` problems stacked in one call,
  divided by ``batch``: dQ, dK, dV from Q, K, V, dO with the softmax and O recomputed (6 matmuls
  of S x S x D). ``plain_jnp_o_lse_s``: the same backward
  given the forward's O and row log-sum-exp, as the kernel is (:func:`plain_backward_o_lse`, 5
  matmuls), the closer match of the kernel's work. ``plain_jnp_wall_s`` / ``plain_jnp_cpu_s``:
  the first one's fastest call (all ``plain_batch`` problems). Timed on JAX's default device, in
  the same run as the simulator, in turns with its calls. The printed ``cpu / cpu`` is the CPU-time
  ratio per problem (less moved by other jobs on a shared machine than the wall-time ratio);
  ``load_average_1m``: the machine's load when the row was measured.
* ``reference`` row: ``ascend_jax.run_reference`` on one lane of the smallest ``--quick`` shape
  (S = 512, D = 64, not causal; in a full run too), best of ``REPEATS`` (in turns with the plain
  jnp calls); its ``plain_jnp_s`` is timed at batch 1.
* Shapes: full run S in {2,048, 4,096} x D = 64 x causal or not, batches 2 and 8; ``--quick``
  (about two minutes on 2 cores): S in {512, 1,024}, batch 2. ``--s``, ``--batch`` and
  ``--causal`` replace the grid's values (e.g. the target point alone: ``--s 2048 --batch 8
  --causal full``).

Every number is host time on this machine (a shared one: compare rows of one run). The issue's
target is ``lane_s / plain_jnp_s <= 4`` at S = 2,048, D = 64, batch >= 8.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import ascend_jax as aj  # before JAX computes: its XLA_FLAGS option (ascend_jax.xla_flags) must be read at start

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common beside this script (also when loaded by path)
from _common import Timing, cpu_s  # noqa: E402

QUICK = {"s": (512, 1024), "d": (64,), "causal": (False, True), "batch": (2,)}
FULL = {"s": (2048, 4096), "d": (64,), "causal": (False, True), "batch": (2, 8)}
#: warm calls per measurement (the fastest is kept); the simulator's stop early once they total
#: WARM_MAX_TOTAL_S seconds (full run, S = 4,096, batch 8: about a minute a call)
REPEATS = 3
WARM_MAX_TOTAL_S = 60.0
#: per round of time_interleaved, each plain jnp backward: this many calls, and more while they
#: total under PLAIN_ROUND_S seconds (the fastest call of every round is kept)
PLAIN_CALLS, PLAIN_ROUND_S = 2, 0.5
#: the kernel's blocking (attention_sweep's main grid)
KERNEL = {"block": 128, "aics": 24}
CHECK_UP_TO = 2048
DEFAULT_OUT = Path(tempfile.gettempdir()) / "ascend_jax_benchmarks" / "attention_throughput.json"
HI = jax.lax.Precision.HIGHEST


def timed(fn: Callable[[], object]) -> Timing:
    """Wall and CPU seconds of one call of ``fn``."""
    c0, t0 = cpu_s(), time.perf_counter()
    fn()
    return Timing(time.perf_counter() - t0, cpu_s() - c0)


def best_of(
    fn: Callable[[], object], repeats: int = REPEATS, min_total_s: float = 0.0, max_total_s: float = float("inf")
) -> Timing:
    """The fastest (wall) of ``repeats`` calls of ``fn`` (fewer once they total ``max_total_s``;
    at least one), and more calls (up to 100) while their total is under ``min_total_s``: the
    least disturbed call on a shared machine."""
    best, total, n = Timing(float("inf"), float("inf")), 0.0, 0
    while n == 0 or (n < repeats and total < max_total_s) or (total < min_total_s and n < 100):
        t = timed(fn)
        best, total, n = min(best, t, key=lambda x: x.wall_s), total + t.wall_s, n + 1
    return best


def _mm(a: jax.Array, b: jax.Array, spec: str) -> jax.Array:
    return jnp.einsum(spec, a, b, precision=HI)


def _logits(q: jax.Array, k: jax.Array, causal: bool) -> jax.Array:
    """``[..., S1, S2]`` Q K^T / sqrt(D), -inf above the diagonal when ``causal``."""
    s = _mm(q, k, "...id,...jd->...ij") * (1.0 / math.sqrt(q.shape[-1]))
    if causal:
        keep = jnp.tril(jnp.ones(s.shape[-2:], bool))
        s = jnp.where(jnp.broadcast_to(keep, s.shape), s, -jnp.inf)
    return s


def _grads(q, k, v, do, p, o) -> tuple[jax.Array, jax.Array, jax.Array]:
    scale = 1.0 / math.sqrt(q.shape[-1])
    dv = _mm(p, do, "...ij,...id->...jd")
    dp = _mm(do, v, "...id,...jd->...ij")
    ds = p * (dp - jnp.sum(do * o, axis=-1, keepdims=True))
    return _mm(ds, k, "...ij,...jd->...id") * scale, _mm(ds, q, "...ij,...id->...jd") * scale, dv


@partial(jax.jit, static_argnames="causal")
def plain_backward(q, k, v, do, causal: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Plain float32 attention backward: ``(dQ, dK, dV)`` of ``sum(O * dO)``, ``O = softmax(Q K^T /
    sqrt(D)) V``, the softmax and O recomputed from the inputs.

    Args:
      q, k, v, do: ``[..., S, D]`` float32 (S1 = S2 = S; any leading batch axes).
      causal: keep key positions <= query position (top-left aligned).
    Returns:
      dQ, dK, dV, each ``[..., S, D]`` float32.
    """
    s = _logits(q, k, causal)
    p = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))
    p = p / jnp.sum(p, axis=-1, keepdims=True)
    return _grads(q, k, v, do, p, _mm(p, v, "...ij,...jd->...id"))


@partial(jax.jit, static_argnames="causal")
def plain_backward_o_lse(q, k, v, do, o, lse, causal: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
    """:func:`plain_backward` given the forward's output ``o`` ``[..., S, D]`` and row log-sum-exp
    ``lse`` ``[..., S]`` (float32), as the kernel is: ``P = exp(Q K^T / sqrt(D) - lse)``, 5 matmuls."""
    p = jnp.exp(_logits(q, k, causal) - lse[..., None])
    return _grads(q, k, v, do, p, o)


def forward_o_lse(q, k, v, causal: bool) -> tuple[jax.Array, jax.Array]:
    """``(O, lse)`` of the forward, float32 (inputs of :func:`plain_backward_o_lse`)."""
    s = _logits(q, k, causal)
    lse = jax.nn.logsumexp(s, axis=-1)
    return _mm(jnp.exp(s - lse[..., None]), v, "...ij,...jd->...id"), lse


def time_interleaved(
    engine: Callable[[], object], inputs: Sequence[np.ndarray], causal: bool, batch: int
) -> tuple[Timing, Timing, Timing]:
    """Fastest warm calls of ``engine()`` (a simulator call), :func:`plain_backward` and
    :func:`plain_backward_o_lse`, the plain ones on ``batch`` stacked copies of ``inputs`` (Q, K, V,
    dO as ``[S, D]``, cast to float32) on JAX's default device.

    Measured in turns, so that both see the shared machine's quiet and busy moments alike: up to
    ``REPEATS`` rounds (no new round once the engine's calls total ``WARM_MAX_TOTAL_S``), each one
    ``engine()`` call and then, for each plain backward, ``PLAIN_CALLS`` calls or more while they
    total under ``PLAIN_ROUND_S`` seconds. ``engine`` must be warm (compiled) already.
    """
    q, k, v, do = (jax.device_put(np.broadcast_to(x.astype(np.float32), (batch, *x.shape)).copy()) for x in inputs)
    o, lse = jax.block_until_ready(forward_o_lse(q, k, v, causal))
    plain = [
        partial(plain_backward, q, k, v, do, causal=causal),
        partial(plain_backward_o_lse, q, k, v, do, o, lse, causal=causal),
    ]
    for fn in plain:
        jax.block_until_ready(fn())  # compile and warm
    best = [Timing(float("inf"), float("inf"))] * 3
    engine_total = 0.0
    for _ in range(REPEATS):
        t = timed(engine)
        engine_total += t.wall_s
        times = [t] + [best_of(lambda fn=fn: jax.block_until_ready(fn()), PLAIN_CALLS, PLAIN_ROUND_S) for fn in plain]
        best = [min(b, x, key=lambda y: y.wall_s) for b, x in zip(best, times, strict=True)]
        if engine_total >= WARM_MAX_TOTAL_S:
            break
    return best[0], best[1], best[2]


def jax_device() -> str:
    """``platform:kind`` of JAX's default device, e.g. ``cpu:cpu``."""
    d = jax.devices()[0]
    return f"{d.platform}:{d.device_kind}"


def rel_l2(res, want: dict[str, np.ndarray]) -> float:
    """Largest relative L2 error of dQ, dK, dV in a lane result against ``want`` (float64)."""
    return max(
        float(np.linalg.norm(res.tensor(n).astype(np.float64) - want[n]) / np.linalg.norm(want[n]))
        for n in ("dq", "dk", "dv")
    )


def measure_shape(ag, build, pt: dict, batches: Sequence[int], device: str) -> tuple[list[dict], object]:
    """The ``jax`` rows of one (S, D, causal) point, one per batch size; and its program."""
    p, vec_rows = build(ag, {**pt, **KERNEL})
    want = ag.expected(p) if pt["s"] <= CHECK_UP_TO else None
    bytes_per_lane = int(aj.lane_bytes(p))
    inputs = [p.gm.read(n) for n in ("q", "k", "v", "do")]
    rows = []
    for batch in batches:
        lanes = [p] * batch
        first = {}
        t_first = timed(lambda lanes=lanes, first=first: first.setdefault("res", aj.simulate(lanes)))
        res = first["res"]
        assert all(res[i].status == aj.Status.OK for i in range(batch)), (pt, [res[i].status for i in range(batch)])
        err = rel_l2(res[0], want) if want is not None else None
        if err is not None and not err <= ag.TOLERANCE["float16"]:
            raise AssertionError(f"{pt}: the simulator's dQ/dK/dV are off: relative L2 {err:.2e}")
        warm, plain, plain_given = time_interleaved(lambda lanes=lanes: aj.simulate(lanes), inputs, pt["causal"], batch)
        rows.append(
            {
                "engine": "jax",
                "device": device,
                "batch": batch,
                **pt,
                "lane_s": warm.wall_s / batch,
                "plain_jnp_s": plain.wall_s / batch,
                "compile_s": max(t_first.wall_s - warm.wall_s, 0.0),
                "wall_s": warm.wall_s,
                "cpu_s": warm.cpu_s,
                "first_call_s": t_first.wall_s,
                "plain_jnp_o_lse_s": plain_given.wall_s / batch,
                "plain_jnp_wall_s": plain.wall_s,
                "plain_jnp_cpu_s": plain.cpu_s,
                "plain_batch": batch,
                "load_average_1m": os.getloadavg()[0],
                "bytes_per_lane": bytes_per_lane,
                "steps": int(res.steps[0]),
                "vec_rows": vec_rows,
                "rel_l2_error": err,
            }
        )
        report(rows[-1])
    return rows, p


def measure_reference(p, pt: dict) -> dict:
    """The ``reference`` row: one lane of ``p`` in ``run_reference``."""
    inputs = [p.gm.read(n) for n in ("q", "k", "v", "do")]
    t, plain, plain_given = time_interleaved(lambda: aj.run_reference(p), inputs, pt["causal"], 1)
    row = {
        "engine": "reference",
        "device": "cpu:host",
        "batch": 1,
        **pt,
        "lane_s": t.wall_s,
        "plain_jnp_s": plain.wall_s,
        "compile_s": 0.0,
        "wall_s": t.wall_s,
        "cpu_s": t.cpu_s,
        "plain_jnp_o_lse_s": plain_given.wall_s,
        "plain_jnp_wall_s": plain.wall_s,
        "plain_jnp_cpu_s": plain.cpu_s,
        "plain_batch": 1,
        "load_average_1m": os.getloadavg()[0],
    }
    report(row)
    return row


def report(r: dict) -> None:
    print(
        f"{r['engine']:9s} S {r['s']:5d} D {r['d']:3d} {'causal' if r['causal'] else 'full  '} batch {r['batch']:2d}: "
        f"lane {r['lane_s'] * 1e3:9.1f} ms (cpu {r['cpu_s'] / r['batch'] * 1e3:9.1f}), "
        f"plain jnp {r['plain_jnp_s'] * 1e3:8.2f} ms ({r['plain_jnp_o_lse_s'] * 1e3:8.2f} given O, lse), "
        f"lane / plain {r['lane_s'] / r['plain_jnp_s']:7.1f}x ({r['lane_s'] / r['plain_jnp_o_lse_s']:7.1f}x), "
        f"cpu / cpu {r['cpu_s'] / r['plain_jnp_cpu_s'] * r['plain_batch'] / r['batch']:7.1f}x, "
        f"compile {r['compile_s']:5.2f} s, load {r['load_average_1m']:.1f}",
        flush=True,
    )


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Per-lane time and the plain jnp backward against S (left), and their ratio (right)."""
    from _common import pyplot

    plt = pyplot()
    if plt is None:
        return
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5))
    jrows = [r for r in rows if r["engine"] == "jax"]
    keys = sorted({(r["d"], r["causal"], r["batch"]) for r in jrows})
    for i, (d, causal, batch) in enumerate(keys):
        sel = sorted(
            (r for r in jrows if (r["d"], r["causal"], r["batch"]) == (d, causal, batch)), key=lambda r: r["s"]
        )
        s = [r["s"] for r in sel]
        label = f"D={d}, {'causal' if causal else 'full'}, batch {batch}"
        color = f"C{i}"
        ax.plot(s, [r["lane_s"] for r in sel], "o-", color=color, label=f"simulator per lane, {label}")
        ax.plot(s, [r["plain_jnp_s"] for r in sel], "x--", color=color, label=f"plain jnp, {label}")
        bx.plot(s, [r["lane_s"] / r["plain_jnp_s"] for r in sel], "o-", color=color, label=label)
    for r in rows:
        if r["engine"] == "reference":
            ax.plot([r["s"]], [r["lane_s"]], "k*", markersize=10, label="reference interpreter, one lane")
            bx.plot([r["s"]], [r["lane_s"] / r["plain_jnp_s"]], "k*", markersize=10, label="reference interpreter")
    bx.axhline(4.0, color="grey", linestyle=":", label="target 4x (S = 2,048, batch >= 8)")
    seqs = sorted({r["s"] for r in rows})
    for axis in (ax, bx):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xticks(seqs)
        axis.set_xticklabels([str(s) for s in seqs])
        axis.set_xlabel("sequence length S1 = S2")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    ax.set_ylabel("host seconds per attention backward")
    bx.set_ylabel("simulator lane_s / plain jnp")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="S in {512, 1024}, batch 2 (about two minutes)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    ap.add_argument("--s", type=int, nargs="+", help="sequence lengths instead of the grid's")
    ap.add_argument("--batch", type=int, nargs="+", help="batch sizes instead of the grid's")
    ap.add_argument("--causal", choices=("both", "full", "causal"), default="both", help="which masks (default both)")
    args = ap.parse_args(argv)
    from _common import load_model_module, machine, write
    from attention_sweep import build

    ag = load_model_module("attention_grad")
    grid = dict(QUICK if args.quick else FULL)
    if args.s:
        grid["s"] = tuple(args.s)
    if args.batch:
        grid["batch"] = tuple(args.batch)
    if args.causal != "both":
        grid["causal"] = (args.causal == "causal",)
    device = jax_device()
    jax.block_until_ready(jnp.zeros(1) + 1)  # backend start-up is not part of compile_s
    t0 = time.perf_counter()
    rows, programs = [], {}
    for s, d, causal in itertools.product(grid["s"], grid["d"], grid["causal"]):
        pt = {"s": s, "d": d, "causal": causal}
        new, programs[s, d, causal] = measure_shape(ag, build, pt, grid["batch"], device)
        rows += new
    pt = {"s": QUICK["s"][0], "d": QUICK["d"][0], "causal": False}
    p = programs.get((pt["s"], pt["d"], False)) or build(ag, {**pt, **KERNEL})[0]
    rows.append(measure_reference(p, pt))
    meta = {
        **machine(),
        "benchmark": "attention_throughput",
        "quick": args.quick,
        "grid": {k: list(v) for k, v in grid.items()},
        "model": "attention_grad",
        "kernel": {**KERNEL, "aivs": 2 * KERNEL["aics"], "dtype": "float16", "assign": "round_robin"},
        "schedule": "lockstep",
        "repeats": REPEATS,
        "plain_jnp": "float32 jax.numpy, Precision.HIGHEST, jit, warm, batch problems per call / batch",
        "timing": {
            "rounds": REPEATS,
            "engine_max_total_s": WARM_MAX_TOTAL_S,
            "plain_calls_per_round": PLAIN_CALLS,
            "plain_round_s": PLAIN_ROUND_S,
        },  # fmt: skip
        "total_s": time.perf_counter() - t0,
        "load_average": list(os.getloadavg()),
    }
    write(args.out, {"meta": meta, "results": rows})
    plot(rows, args.out.with_suffix(".png"), f"attention backward: simulator per lane vs plain jnp ({device})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

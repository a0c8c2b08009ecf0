"""Received messages per second against batch size: plain Python, the reference and the JAX engine.

    python benchmarks/protocol_throughput.py [--quick] [--scenario FILE.toml] [--out FILE]

Writes ``{"meta": {...}, "ratios": [...], "results": [{"engine", "device", "devices", "batch",
"messages_per_s", "engine_messages_per_s", "compile_s"}, ...]}`` to ``--out`` (default: a folder
under the system's temporary directory, never ``benchmarks/results/``) and a PNG plot beside it.

* A message is one received-log entry (VALID, FAKE or QUIT); a lane's count is taken from a
  reference run of the workload, and every lane of a batch runs the same program object.
* Engines, measured in one run on the same machine:

  - ``plain_python``: ``plain_interpreter.run_plain``, the sequential interpreter a user would
    write instead (no JAX, no numpy in its loop); lanes one after another.
  - ``reference``: ``ascend_jax.run_reference`` (the project's oracle); lanes one after another.
  - ``jax``: ``ascend_jax.simulate`` on the whole batch.

* ``messages_per_s`` is end to end: for ``jax`` a warm ``simulate()`` call that returns results;
  ``engine_messages_per_s`` the compiled loop alone (for the sequential engines the same number);
  ``compile_s`` the first ``simulate()`` call minus a warm one (0 for the sequential engines).
* ``--quick`` (under two minutes on a 2-core CPU) measures batches 1, 1,024 and 4,096; without it
  also 16,384. ``--scenario`` replaces the default workload, the CubeGroupCustom sample's protocol
  without compute (``models/cube_group_sample.py``, ``protocol_only=True``: 6 AICs, 48 queues,
  102 received messages per lane). The printed ratios divide by ``plain_python``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np
from _common import load_model_module, machine, pyplot, write
from plain_interpreter import run_plain

import ascend_jax as aj
from ascend_jax import ConfigError, CubeGroupProgram

QUICK = [1, 1024, 4096]
FULL = [1, 1024, 4096, 16384]
DEFAULT_OUT = Path(tempfile.gettempdir()) / "ascend_jax_benchmarks" / "protocol_throughput.json"


def jax_device() -> tuple[str, int]:
    """``(platform:kind, device count)`` of JAX's default backend, e.g. ``("cpu:cpu", 1)``."""
    d = jax.devices()[0]
    return f"{d.platform}:{d.device_kind}", jax.device_count()


def best_time(fn: Callable[[], object], repeats: int, min_total_s: float = 0.0) -> float:
    """Smallest wall time (s) of ``fn()`` over ``repeats`` calls, and more calls (up to 1,000) while
    their total is under ``min_total_s`` (the machine is shared: the best call is the least disturbed)."""
    best, total, n = float("inf"), 0.0, 0
    while n < repeats or (total < min_total_s and n < 1000):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, total, n = min(best, dt), total + dt, n + 1
    return best


def time_sequential(run: Callable[[CubeGroupProgram], object], programs: Sequence[CubeGroupProgram]) -> float:
    """Seconds to run every lane one after another with ``run``: best of 3 passes (2 above 4,096
    lanes), or of as many as fit half a second for small batches."""

    def all_lanes():
        for p in programs:
            run(p)

    n = len(programs)
    return best_time(all_lanes, 3 if n <= 4096 else 2, 0.5 if n < 64 else 0.0)


def time_jax(programs: Sequence[CubeGroupProgram]) -> tuple[float, float, float]:
    """``(end_to_end_s, engine_s, compile_s)`` of the JAX engine on a batch of lanes.

    end_to_end_s: a warm ``simulate(programs)`` that returns every lane's result.
    engine_s: the compiled batched loop alone, on tables already encoded and on the device, run
    the way ``simulate`` runs it: in chunks of ``engine.default_chunk`` lanes (4,096 on a CPU),
    one call per chunk.
    Both are the best of 7 calls (3 above 4,096 lanes; small batches: as many as fit 0.5 s): the
    JAX calls are short, so on a shared machine a few of them land on a busy moment.
    compile_s: lowering and compiling the loop for one chunk (``engine.compile_batch``).

    This is the one place that knows the engine's internals (``engine.prepare``,
    ``engine.default_chunk``, ``engine.compile_batch``); change it with the engine.
    """
    from ascend_jax.cube_group import engine

    n = len(programs)
    prep = engine.prepare(programs, "lockstep", list(range(n)))
    chunk = engine.default_chunk(prep)
    t0 = time.perf_counter()
    fn, first = engine.compile_batch(prep, chunk)
    compile_s = time.perf_counter() - t0
    mesh = engine._mesh(None)
    chunks = [first] + [
        engine._place(mesh, prep.shape, *prep.chunk(np.arange(lo, lo + chunk))) for lo in range(chunk, n, chunk)
    ]  # every batch measured here is a multiple of the chunk
    aj.simulate(programs)  # warm: the jit cache holds the same compilation
    repeats, min_total_s = 7 if n <= 4096 else 3, 0.5 if n < 64 else 0.0
    end_to_end = best_time(lambda: aj.simulate(programs), repeats, min_total_s)

    def loop():
        return [jax.block_until_ready(fn(*args)) for args in chunks]

    loop()
    engine_s = best_time(loop, repeats, min_total_s)
    return end_to_end, engine_s, compile_s


def workload(scenario: str | None) -> CubeGroupProgram:
    if scenario is None:
        return load_model_module("cube_group_sample").build(protocol_only=True)
    if not Path(scenario).is_file():
        raise ConfigError("--scenario", scenario, "no such file", "give the path of a scenario .toml")
    return aj.load_scenario(scenario)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="batches 1, 1,024 and 4,096 only (under two minutes)")
    ap.add_argument("--scenario", help="scenario .toml to run instead of the sample protocol")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help=f"JSON results (default {DEFAULT_OUT})")
    args = ap.parse_args(argv)
    try:
        program = workload(args.scenario)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ref = aj.run_reference(program)
    msgs = sum(len(v) for v in ref.received.values())
    if msgs == 0:
        print(f"error: --scenario = {args.scenario}: receives no message; nothing to measure", file=sys.stderr)
        return 2
    print(f"{program.name}: {msgs} received messages per lane, {ref.steps} steps, status {ref.status.label}")
    plain_ok = True
    try:
        plain = run_plain(program)
        assert (plain.status, plain.steps, plain.received) == (ref.status.label, ref.steps, ref.received), (
            "the plain interpreter disagrees with the reference on this workload"
        )
    except ValueError as e:
        plain_ok = False
        print(f"plain_python: not measured ({e})")
    device, n_devices = jax_device()
    jax.block_until_ready(jax.numpy.zeros(1) + 1)  # backend start-up is not part of compile_s
    batches = QUICK if args.quick else FULL
    rows = []

    def add(engine: str, dev: str, devs: int, batch: int, t: float, t_engine: float, compile_s: float) -> None:
        row = {
            "engine": engine,
            "device": dev,
            "devices": devs,
            "batch": batch,
            "messages_per_s": batch * msgs / t,
            "engine_messages_per_s": batch * msgs / t_engine,
            "compile_s": compile_s,
        }
        rows.append(row)
        print(
            f"{engine:13s} batch {batch:6d}: {row['messages_per_s']:12,.0f} msgs/s end to end, "
            f"{row['engine_messages_per_s']:12,.0f} engine only, compile {compile_s:.2f} s"
        )

    for batch in batches:
        lanes = [program] * batch
        if plain_ok:
            t = time_sequential(run_plain, lanes)
            add("plain_python", "cpu:host", 1, batch, t, t, 0.0)
        t = time_sequential(aj.run_reference, lanes)
        add("reference", "cpu:host", 1, batch, t, t, 0.0)
        t_end, t_eng, compile_s = time_jax(lanes)
        add("jax", device, n_devices, batch, t_end, t_eng, compile_s)

    [res] = aj.simulate(program)  # after the timings, so that batch 1's first call compiles
    assert (res.status, res.steps, res.received) == (ref.status, ref.steps, ref.received), (
        "the JAX engine disagrees with the reference on this workload"
    )
    ratios = []
    if plain_ok:
        print("ratios against plain_python (same run):")
        for batch in batches:
            by = {r["engine"]: r for r in rows if r["batch"] == batch}
            base = by["plain_python"]["messages_per_s"]
            ratio = {
                "batch": batch,
                "jax_end_to_end": by["jax"]["messages_per_s"] / base,
                "jax_engine_only": by["jax"]["engine_messages_per_s"] / base,
                "reference": by["reference"]["messages_per_s"] / base,
            }
            ratios.append(ratio)
            print(
                f"  batch {batch:6d}: jax end to end {ratio['jax_end_to_end']:7.2f}x, "
                f"engine only {ratio['jax_engine_only']:7.2f}x, reference {ratio['reference']:5.2f}x"
            )
    out = Path(args.out)
    meta = {**machine(), "workload": program.name, "messages_per_lane": msgs, "steps_per_lane": ref.steps}
    write(out, {"meta": meta, "ratios": ratios, "results": rows})
    plot(rows, out.with_suffix(".png"), f"{program.name} on {device} ({machine()['cpu_count']} cores)")
    return 0


def plot(rows: list[dict], path: Path, title: str) -> None:
    """messages/s against batch, one line per engine (and one for the JAX compiled loop)."""
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lines = (
        ("plain Python", "plain_python", "messages_per_s"),
        ("reference", "reference", "messages_per_s"),
        ("jax end to end", "jax", "messages_per_s"),
        ("jax compiled loop", "jax", "engine_messages_per_s"),
    )
    for label, engine, key in lines:
        pts = [(r["batch"], r[key]) for r in rows if r["engine"] == engine]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch (lanes)")
    ax.set_ylabel("received messages / s")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())

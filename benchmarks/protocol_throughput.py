"""Received messages per second against batch size: plain Python, the reference and the JAX engine.

    python benchmarks/protocol_throughput.py [--quick] [--scenario FILE.toml] [--out FILE]

Writes ``{"meta": {...}, "ratios": [...], "results": [{"engine", "device", "devices", "batch",
"messages_per_s", "engine_messages_per_s", "compile_s", "wall_s", "cpu_s", ...}, ...]}`` to
``--out`` (default: a folder under the system's temporary directory, never
``benchmarks/results/``) and a PNG plot beside it.

* A message is one received-log entry (VALID, FAKE or QUIT); a lane's count is taken from a
  reference run of the workload, and every lane of a batch runs the same program object.
* Engines, measured in one run on the same machine:

  - ``plain_python``: ``plain_interpreter.run_plain``, the sequential interpreter a user would
    write instead (no JAX, no numpy in its loop); lanes one after another.
  - ``reference``: ``ascend_jax.run_reference`` (the project's oracle); lanes one after another.
  - ``jax``: ``ascend_jax.simulate`` on the whole batch.

* The sequential engines are timed **once per run**, before the JAX batches: the best of
  ``SEQ_PASSES`` passes over ``MEASURED_LANES`` (256) lanes of the workload. That one rate is
  written in each of their rows (every batch; ``"measured_lanes": 256`` says so) and every ratio
  divides by it, so a ratio compares the JAX engine with the same baseline at every batch size
  (timing them per batch gave the plain interpreter 2.3x more messages/s at batch 1 than at
  4,096 lanes on a loaded machine, which flattered the large-batch ratios).
* ``messages_per_s`` is end to end: for ``jax`` a warm ``simulate()`` call that returns results;
  ``engine_messages_per_s`` the compiled loop alone (for the sequential engines the same number);
  ``compile_s`` lowering and compiling the loop for one chunk (``engine.loop_function``; 0 for
  the sequential engines). ``jax`` rows also give ``chunk`` (lanes per compiled call) and
  ``workers`` (the threads its chunks were dispatched from at once, as ``simulate`` does).
* ``wall_s`` / ``cpu_s``: wall and CPU seconds (user + sys of this process,
  ``resource.getrusage``, every thread) of the measured call: the best pass over
  ``measured_lanes`` lanes for the sequential engines, the best end-to-end ``simulate()`` for
  ``jax`` (``engine_wall_s`` / ``engine_cpu_s``: its best compiled-loop pass). CPU above wall
  means several threads; wall well above CPU means the shared machine kept this process waiting.
  ``load_average_1m``: the machine's load when the row was written.
  Each ``ratios`` entry has the wall-time ratios and the same per CPU second (``*_cpu``): on a
  shared machine the CPU ones leave out the time a process waited for a core.
* ``bytes_per_lane`` (``jax`` rows and ``meta``): ``ascend_jax.lane_bytes(program)``, the bytes
  of one lane's engine state (every leaf of ``init_state``, shapes from ``jax.eval_shape``: GM,
  slots, counters, logs). The op tables are not in it: every lane runs the same program object, so
  one copy of the tables serves the whole batch (``meta.table_bytes``, once per chunk).
* ``--quick`` (under two minutes on a 2-core CPU) measures batches 1, 1,024 and 4,096; without it
  also 16,384 and 65,536. ``--scenario`` replaces the default workload, the CubeGroupCustom sample's protocol
  without compute (``models/cube_group_sample.py``, ``protocol_only=True``: 6 AICs, 48 queues,
  102 received messages per lane). The printed ratios divide by ``plain_python``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
from _common import Timing, cpu_s, load_model_module, machine, pyplot, write
from plain_interpreter import run_plain

import ascend_jax as aj
from ascend_jax import ConfigError, CubeGroupProgram

QUICK = [1, 1024, 4096]
FULL = [1, 1024, 4096, 16384, 65536]
#: lanes of one timed pass of the sequential engines, and passes (the best is kept)
MEASURED_LANES = 256
SEQ_PASSES = 7
DEFAULT_OUT = Path(tempfile.gettempdir()) / "ascend_jax_benchmarks" / "protocol_throughput.json"
LANE_BYTES_METHOD = (
    "ascend_jax.lane_bytes(program): bytes of every leaf of the engine's init_state for one lane "
    "(jax.eval_shape, shape x itemsize); tables excluded (one copy shared by all lanes of the same program)"
)


def jax_device() -> tuple[str, int]:
    """``(platform:kind, device count)`` of JAX's default backend, e.g. ``("cpu:cpu", 1)``."""
    d = jax.devices()[0]
    return f"{d.platform}:{d.device_kind}", jax.device_count()


def best_time(fn: Callable[[], object], repeats: int, min_total_s: float = 0.0) -> Timing:
    """The call of ``fn()`` with the smallest wall time over ``repeats`` calls, and more calls (up
    to 1,000) while their total is under ``min_total_s`` (the machine is shared: the best call is
    the least disturbed); its wall and CPU seconds."""
    best, total, n = Timing(float("inf"), float("inf")), 0.0, 0
    while n < repeats or (total < min_total_s and n < 1000):
        c0, t0 = cpu_s(), time.perf_counter()
        fn()
        dt, dc = time.perf_counter() - t0, cpu_s() - c0
        if dt < best.wall_s:
            best = Timing(dt, dc)
        total, n = total + dt, n + 1
    return best


def time_sequential(run: Callable[[CubeGroupProgram], object], program: CubeGroupProgram) -> Timing:
    """One pass of ``run`` over ``MEASURED_LANES`` lanes of ``program``, one after another: the
    best of ``SEQ_PASSES`` passes."""

    def all_lanes():
        for _ in range(MEASURED_LANES):
            run(program)

    return best_time(all_lanes, SEQ_PASSES)


class JaxTiming(NamedTuple):
    end_to_end: Timing  # a warm simulate() that returns every lane's result
    engine: Timing  # the compiled loop alone
    compile_s: float
    table_bytes: int  # the batch's op tables: one copy when every lane runs one program
    chunk: int  # lanes per compiled call
    workers: int  # threads the chunks were dispatched from


def time_jax(programs: Sequence[CubeGroupProgram]) -> JaxTiming:
    """Timings of the JAX engine on a batch of lanes.

    end_to_end: a warm ``simulate(programs)`` that returns every lane's result.
    engine: the compiled batched loop alone, on tables already encoded and on the device, run
    the way ``simulate`` runs it: in chunks of ``engine.default_chunk`` lanes (on a CPU at most
    ``engine.batch.CPU_CHUNK``, 4,096, and split so that each of ``engine.chunk_workers``
    threads gets one), one call per chunk, the calls dispatched from that many threads
    (``engine.run_chunks``).
    Both are the best of 7 calls (5 above 4,096 lanes; small batches: as many as fit 0.5 s a
    round), the two alternating: the JAX calls are short, so on a shared machine a few of them
    land on a busy moment.
    compile_s: lowering and compiling the loop for one chunk (``engine.loop_function``).
    table_bytes: bytes of the encoded tables (``prepare``), shared by the lanes when they run one
    program, else stacked per lane.

    This is the one place that knows the engine's internals (``engine.prepare``,
    ``engine.default_chunk``, ``engine.chunk_workers``, ``engine.loop_function``,
    ``engine.run_chunks``); change it with
    the engine.
    """
    from ascend_jax.cube_group import engine

    n = len(programs)
    prep = engine.prepare(programs, schedule="lockstep", seeds=list(range(n)))
    table_bytes = int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(prep.tables)))
    chunk = engine.default_chunk(prep)
    fn, (shape, *first) = engine.loop_function(prep, chunk)  # the jitted loop simulate() calls
    t0 = time.perf_counter()
    fn.lower(shape, *first).compile()  # what the call below finds in the jit cache
    compile_s = time.perf_counter() - t0
    chunks = [first] + [
        engine.place_lanes(prep, np.arange(lo, lo + chunk)) for lo in range(chunk, n, chunk)
    ]  # every batch measured here is a multiple of the chunk
    aj.simulate(programs)  # warm: the jit cache holds the same compilation
    repeats, min_total_s = 7 if n <= 4096 else 5, 0.5 if n < 64 else 0.0

    n_workers = engine.chunk_workers(prep)

    def loop():  # compiled already: every chunk is dispatched from the threads, as simulate does
        return engine.run_chunks(fn, shape, chunks, n_workers)

    loop()
    # the two alternate, call by call, so that both meet the same moments of a shared machine
    # (timed one after the other, their ratio moved between 0.6 and 1.0 from run to run)
    end_to_end = engine_t = Timing(float("inf"), float("inf"))
    for _ in range(repeats):
        e, g = best_time(lambda: aj.simulate(programs), 1, min_total_s), best_time(loop, 1, min_total_s)
        end_to_end, engine_t = min(end_to_end, e, key=_wall), min(engine_t, g, key=_wall)
    return JaxTiming(end_to_end, engine_t, compile_s, table_bytes, chunk, n_workers)


def _wall(t: Timing) -> float:
    return t.wall_s


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
    bytes_per_lane = int(aj.lane_bytes(program))
    batches = QUICK if args.quick else FULL
    rows = []

    def add(engine: str, dev: str, devs: int, batch: int, lanes: int, t: Timing, **extra) -> dict:
        """A row; ``t`` timed ``lanes`` lanes end to end (for ``jax``, ``extra["loop"]`` the compiled loop)."""
        t_engine = extra.pop("loop", t)
        row = {
            "engine": engine,
            "device": dev,
            "devices": devs,
            "batch": batch,
            "messages_per_s": lanes * msgs / t.wall_s,
            "engine_messages_per_s": lanes * msgs / t_engine.wall_s,
            "compile_s": extra.pop("compile_s", 0.0),
            "wall_s": t.wall_s,
            "cpu_s": t.cpu_s,
            "load_average_1m": os.getloadavg()[0],
            **extra,
        }
        rows.append(row)
        print(
            f"{engine:13s} batch {batch:6d}: {row['messages_per_s']:12,.0f} msgs/s end to end, "
            f"{row['engine_messages_per_s']:12,.0f} engine only, compile {row['compile_s']:.2f} s, "
            f"wall {t.wall_s:.3f} s, cpu {t.cpu_s:.3f} s"
            + (f" (timed once, {lanes} lanes)" if engine != "jax" else f", {bytes_per_lane:,} B/lane")
        )
        return row

    # the sequential engines: one rate each per run, on MEASURED_LANES lanes of the same program
    sequential = {}
    if plain_ok:
        sequential["plain_python"] = time_sequential(run_plain, program)
    sequential["reference"] = time_sequential(aj.run_reference, program)
    table_bytes = 0
    for batch in batches:
        for name, t in sequential.items():
            add(name, "cpu:host", 1, batch, MEASURED_LANES, t, measured_lanes=MEASURED_LANES)
        jt = time_jax([program] * batch)
        table_bytes = jt.table_bytes
        add("jax", device, n_devices, batch, batch, jt.end_to_end, loop=jt.engine, compile_s=jt.compile_s,
            engine_wall_s=jt.engine.wall_s, engine_cpu_s=jt.engine.cpu_s, bytes_per_lane=bytes_per_lane,
            chunk=jt.chunk, workers=jt.workers)  # fmt: skip

    [res] = aj.simulate(program)  # after the timings, so that batch 1's first call compiles
    assert (res.status, res.steps, res.received) == (ref.status, ref.steps, ref.received), (
        "the JAX engine disagrees with the reference on this workload"
    )
    ratios = []
    if plain_ok:
        base = MEASURED_LANES * msgs / sequential["plain_python"].wall_s
        base_cpu = MEASURED_LANES * msgs / sequential["plain_python"].cpu_s
        print(f"ratios against plain_python ({base:,.0f} msgs/s, timed once on {MEASURED_LANES} lanes):")
        for batch in batches:
            by = {r["engine"]: r for r in rows if r["batch"] == batch}
            ratio = {
                "batch": batch,
                "jax_end_to_end": by["jax"]["messages_per_s"] / base,
                "jax_engine_only": by["jax"]["engine_messages_per_s"] / base,
                "reference": by["reference"]["messages_per_s"] / base,
                # the same per CPU second (the machine is shared: waiting for a core is not in it)
                "jax_end_to_end_cpu": batch * msgs / by["jax"]["cpu_s"] / base_cpu,
                "jax_engine_only_cpu": batch * msgs / by["jax"]["engine_cpu_s"] / base_cpu,
            }
            ratios.append(ratio)
            print(
                f"  batch {batch:6d}: jax end to end {ratio['jax_end_to_end']:7.2f}x, "
                f"engine only {ratio['jax_engine_only']:7.2f}x, reference {ratio['reference']:5.2f}x; per CPU second "
                f"{ratio['jax_end_to_end_cpu']:7.2f}x and {ratio['jax_engine_only_cpu']:7.2f}x"
            )
    out = Path(args.out)
    meta = {
        **machine(),
        "workload": program.name,
        "messages_per_lane": msgs,
        "steps_per_lane": ref.steps,
        "quick": args.quick,
        "bytes_per_lane": bytes_per_lane,
        "bytes_per_lane_method": LANE_BYTES_METHOD,
        "table_bytes": table_bytes,
        "sequential_timing": {
            "measured_lanes": MEASURED_LANES,
            "passes": SEQ_PASSES,
            "rule": "timed once per run before the JAX batches (best pass); the same rate in every batch's row",
            **{k: t._asdict() for k, t in sequential.items()},
        },
        "load_average": list(os.getloadavg()),
    }
    write(out, {"meta": meta, "ratios": ratios, "results": rows})
    plot(rows, out.with_suffix(".png"), f"{program.name} on {device} ({machine()['cpu_count']} cores)")
    return 0


def plot(rows: list[dict], path: Path, title: str) -> None:
    """messages/s against batch, one line per engine (and one for the JAX compiled loop); the
    sequential engines' lines are flat: one rate per run."""
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lines = (
        (f"plain Python (timed once, {MEASURED_LANES} lanes)", "plain_python", "messages_per_s"),
        (f"reference (timed once, {MEASURED_LANES} lanes)", "reference", "messages_per_s"),
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

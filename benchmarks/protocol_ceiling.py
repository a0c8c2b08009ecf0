"""The protocol loop against its ceiling on this machine: the work of a lane-step and the rates.

    python benchmarks/protocol_ceiling.py [--lanes 4096] [--out FILE]

What it measures, in one run, on the default workload of ``protocol_throughput.py`` (the
CubeGroupCustom sample's protocol, every lane the same program):

* **the work of one loop iteration** per lane, from the compiled loop's optimised HLO
  (``hlo_cost.py``): element operations, bytes read and written by its kernels, kernels per step;
* **the machine's rates**, each a compiled ``fori_loop`` timed as the engine's loop is (same JAX,
  same threads): the element-operation rate of a fused chain of int32 integer ops (shifts,
  xors, ands, adds) on arrays as large as the loop's state, and the bandwidth of a fused
  ``x * a + b`` over float32 arrays the size of the loop's state and over 256 MiB (memory);
* **the loop itself**: the compiled loop at ``--lanes`` and at 64 lanes in one call each (the
  two give the fixed cost of a step, the kernels' launch and the loop's bookkeeping, apart from
  the per-lane cost), and ``--lanes`` lanes the way ``simulate`` runs them (``loop_as_run``: on a
  CPU, chunks dispatched from one thread per core at once, ``ascend_jax.workers``);
* **the plain sequential interpreter** (``plain_interpreter.run_plain``), 256 lanes, best of 7.

From these, per lane-step (ns, wall; the same per CPU second beside it): the floor of the
loop's present kernels, each at the slower of its element ops / op rate and its bytes /
bandwidth at the state's size (a roofline, summed over the kernels a step runs) plus the fixed
cost / lanes,
the ratio to the plain interpreter that floor would give, and the time (and element operations
at the measured rate) a lane-step may take for the issue's 120x and 60x. Writes JSON to
``--out`` (default: under the system's temporary directory) and a PNG beside it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from _common import Timing, cpu_s, machine, pyplot, write
from hlo_cost import loop_cost
from plain_interpreter import run_plain
from protocol_throughput import MEASURED_LANES, best_time, time_sequential, workload

import ascend_jax as aj

DEFAULT_OUT = Path(tempfile.gettempdir()) / "ascend_jax_benchmarks" / "protocol_ceiling.json"
SMALL_LANES = 64
MEMORY_BYTES = 256 << 20
TARGETS = {"loop_120x": 120.0, "simulate_60x": 60.0}


class Measure:
    """A compiled call timed in rounds: ``best`` keeps its least disturbed call so far."""

    def __init__(self, fn, args: tuple, min_s: float = 0.2):
        self.fn, self.args, self.min_s = fn, args, min_s
        self.best = Timing(float("inf"), float("inf"))
        jax.block_until_ready(fn(*args))  # warm

    def time(self) -> None:
        t = best_time(lambda: jax.block_until_ready(self.fn(*self.args)), 3, self.min_s)
        self.best = min(self.best, t)


def op_rate(lanes: int, state_bytes: int, iters: int = 200) -> tuple[Measure, dict]:
    """Element operations per second of XLA's fused int32 code when arithmetic, not memory, limits
    it: a chain of 56 dependent ops an element (compares, selects, shifts, ands, adds, xors of the
    array with itself and constants, nothing XLA can hoist) over one ``[K, lanes]`` array of
    ``state_bytes`` (the loop's state), ``iters`` times; ops counted from its HLO."""
    k = max(1, state_bytes // (4 * lanes))

    def chain(x):
        for i in range(1, 9):
            x = jnp.where(x > i * 7919, x + i, x & (x << 1)) ^ (x >> 2)  # 7 element ops a line
        return x

    f = jax.jit(lambda x: jax.lax.fori_loop(0, iters, lambda i, x: chain(x), x))
    x = jnp.asarray(np.random.default_rng(0).integers(0, 1 << 30, (k, lanes), np.int32))
    comp = f.lower(x).compile()
    return Measure(comp, (x,)), {"shape": [k, lanes], "element_ops": loop_cost(comp.as_text()).element_ops * iters}


def bandwidth(n_bytes: int, iters: int) -> tuple[Measure, dict]:
    """Bytes per second of a fused ``x * a + b`` over a float32 array of ``n_bytes`` (read and
    write counted from its HLO), ``iters`` times in a ``fori_loop``."""
    x = jnp.ones((max(1, n_bytes // 4),), jnp.float32)
    f = jax.jit(lambda x: jax.lax.fori_loop(0, iters, lambda i, x: x * 0.5 + 0.25, x))
    comp = f.lower(x).compile()
    return Measure(comp, (x,)), {"bytes": n_bytes, "bytes_moved": loop_cost(comp.as_text()).bytes * iters}


def compiled_loop(programs: list, lanes: int) -> tuple[Measure, str, int]:
    """The compiled loop on ``lanes`` lanes, its optimised HLO and the steps it runs."""
    from ascend_jax.cube_group import engine

    prep = engine.prepare(programs[:lanes], schedule="lockstep", seeds=list(range(lanes)))
    fn, args = engine.compile_batch(prep, lanes)
    steps = int(np.max(aj.simulate(programs[:lanes]).steps))
    return Measure(fn, args), fn.as_text(), steps


class LoopAsRun(Measure):
    """The compiled loop over every lane the way ``simulate`` runs it: chunks of
    ``engine.default_chunk`` lanes dispatched from ``engine.chunk_workers`` threads at once
    (``engine.run_chunks``), without encoding, placement or readout."""

    def __init__(self, programs: list):
        from ascend_jax.cube_group import engine

        n = len(programs)
        prep = engine.prepare(programs, schedule="lockstep", seeds=list(range(n)))
        self.chunk, self.workers = engine.default_chunk(prep), engine.chunk_workers(prep)
        fn, (shape, *first) = engine.loop_function(prep, self.chunk)
        rest = [engine.place_lanes(prep, np.arange(lo, lo + self.chunk)) for lo in range(self.chunk, n, self.chunk)]
        chunks = [first, *rest]  # --lanes is a multiple of the chunk (a power of two)

        def run():
            return engine.run_chunks(fn, shape, chunks, self.workers)

        super().__init__(run, ())


class Sequential(Measure):
    """The plain interpreter's pass over ``MEASURED_LANES`` lanes, as a :class:`Measure`."""

    def __init__(self, program):
        self.program = program
        self.best = Timing(float("inf"), float("inf"))

    def time(self) -> None:
        self.best = min(self.best, time_sequential(run_plain, self.program))


class Simulate(Measure):
    """A warm ``simulate()`` of every lane, end to end."""

    def __init__(self, programs: list):
        self.programs = programs
        self.best = Timing(float("inf"), float("inf"))
        aj.simulate(programs)

    def time(self) -> None:
        self.best = min(self.best, best_time(lambda: aj.simulate(self.programs), 3))


def kernel_times(m: Measure, names: set[str], calls: int = 5) -> dict[str, float]:
    """Seconds each kernel of ``names`` (HLO instruction names) took over ``calls`` calls of
    ``m``, from a JAX profiler trace (XLA:CPU records one event per kernel run)."""
    import shutil

    from jax.profiler import ProfileData

    d = Path(tempfile.mkdtemp(prefix="protocol_ceiling_trace_"))
    try:
        jax.profiler.start_trace(str(d))
        for _ in range(calls):
            jax.block_until_ready(m.fn(*m.args))
        jax.profiler.stop_trace()
        [f] = list(d.glob("**/*.xplane.pb"))
        total: dict[str, float] = {}
        for plane in ProfileData.from_file(str(f)).planes:
            for line in plane.lines:
                for ev in line.events:
                    if ev.name in names:
                        total[ev.name] = total.get(ev.name, 0.0) + ev.duration_ns * 1e-9
        return total
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lanes", type=int, default=4096, help="lanes of the measured chunk (default 4,096)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every timing, best kept (default 3)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help=f"JSON results (default {DEFAULT_OUT})")
    ap.add_argument("--profile", action="store_true", help="also time each kernel of the loop (a profiler trace)")
    args = ap.parse_args(argv)
    if args.lanes <= SMALL_LANES:
        print(f"error: --lanes = {args.lanes}: must be above {SMALL_LANES}; give e.g. --lanes 4096", file=sys.stderr)
        return 2
    if args.rounds < 1:
        print(f"error: --rounds = {args.rounds}: must be at least 1; give e.g. --rounds 3", file=sys.stderr)
        return 2
    program = workload(None)
    ref = aj.run_reference(program)
    msgs = sum(len(v) for v in ref.received.values())
    lanes = args.lanes
    programs = [program] * lanes
    state = int(aj.lane_bytes(program)) * lanes

    big, hlo, steps = compiled_loop(programs, lanes)
    small, _, steps_small = compiled_loop(programs, SMALL_LANES)
    ops_m, ops_info = op_rate(lanes, state)
    bw_m, bw_info = bandwidth(state, 400)
    mem_m, mem_info = bandwidth(MEMORY_BYTES, 8)
    seq, sim, as_run = Sequential(program), Simulate(programs), LoopAsRun(programs)
    measures = [seq, big, small, sim, as_run, ops_m, bw_m, mem_m]
    for r in range(args.rounds):  # alternating, so a busy moment does not fall on one item only
        for m in measures if r % 2 == 0 else measures[::-1]:
            m.time()
    plain_lane = Timing(seq.best.wall_s / MEASURED_LANES, seq.best.cpu_s / MEASURED_LANES)
    cost = loop_cost(hlo)
    kernels = []
    if args.profile:
        calls = 5
        measured = kernel_times(big, {n for n, _, _ in cost.per_kernel}, calls)
        # one kernel runs on one thread (a trace event each): the rates per CPU second
        op_r = ops_info["element_ops"] / ops_m.best.cpu_s
        bw_r = bw_info["bytes_moved"] / bw_m.best.cpu_s
        per = 1e9 / (lanes * steps * calls)  # seconds over the calls -> ns per lane-step
        for name in dict.fromkeys(n for n, _, _ in cost.per_kernel):
            o = sum(x for n, x, _ in cost.per_kernel if n == name)
            b = sum(x for n, _, x in cost.per_kernel if n == name)
            roof = max(o / op_r, b / bw_r) / lanes * 1e9
            took = measured.get(name, 0.0) * per
            kernels.append({"name": name, "element_ops_per_lane": o / lanes, "bytes_per_lane": b / lanes,
                            "roofline_ns": roof, "measured_ns": took, "excess_ns": took - roof})  # fmt: skip
        kernels.sort(key=lambda k: -k["excess_ns"])
    big, small, e2e, run_t = big.best, small.best, sim.best, as_run.best

    def rate(info: dict, m: Measure, key: str, per: str) -> dict:
        return {**info, "wall_s": m.best.wall_s, "cpu_s": m.best.cpu_s,
                f"{per}_per_s": info[key] / m.best.wall_s, f"{per}_per_cpu_s": info[key] / m.best.cpu_s}  # fmt: skip

    rates = {
        "element_ops": rate(ops_info, ops_m, "element_ops", "ops"),
        "bandwidth_state": rate(bw_info, bw_m, "bytes_moved", "bytes"),
        "bandwidth_memory": rate(mem_info, mem_m, "bytes_moved", "bytes"),
    }

    def per_lane_step(t: float, n: int) -> float:
        return t / (steps * n) * 1e9

    fixed = {}
    per_lane = {}
    for kind in ("wall_s", "cpu_s"):
        tb, ts = getattr(big, kind) / steps, getattr(small, kind) / steps_small
        per_lane[kind] = max((tb - ts) / (lanes - SMALL_LANES), 0.0)
        fixed[kind] = max(ts - per_lane[kind] * SMALL_LANES, 0.0)
    ops = cost.element_ops / lanes
    byts = cost.bytes / lanes
    ceiling = {}
    for kind, ops_key, bw_key in (("wall", "ops_per_s", "bytes_per_s"), ("cpu", "ops_per_cpu_s", "bytes_per_cpu_s")):
        op_r, bw_r = rates["element_ops"][ops_key], rates["bandwidth_state"][bw_key]
        t_ops = ops / op_r * 1e9
        t_bytes = byts / bw_r * 1e9
        t_fixed = fixed[f"{kind}_s"] / lanes * 1e9
        t_roof = cost.roofline_s(op_r, bw_r) / lanes * 1e9
        floor = t_roof + t_fixed
        plain_ns = getattr(plain_lane, f"{kind}_s") / steps * 1e9
        loop_ns = per_lane_step(getattr(big, f"{kind}_s"), lanes)
        e2e_ns = per_lane_step(getattr(e2e, f"{kind}_s"), lanes)
        as_run_ns = per_lane_step(getattr(run_t, f"{kind}_s"), lanes)
        ceiling[kind] = {
            "plain_ns_per_lane_step": plain_ns,
            "loop_ns_per_lane_step": loop_ns,
            "simulate_ns_per_lane_step": e2e_ns,
            "floor_ops_ns": t_ops,
            "floor_bytes_ns": t_bytes,
            "roofline_ns": t_roof,
            "fixed_ns": t_fixed,
            "floor_ns": floor,
            "loop_ratio": plain_ns / loop_ns,
            "loop_as_run_ns_per_lane_step": as_run_ns,
            "loop_as_run_ratio": plain_ns / as_run_ns,
            "simulate_ratio": plain_ns / e2e_ns,
            "ceiling_ratio": plain_ns / floor,
            **{f"{name}_ns_per_lane_step": plain_ns / x for name, x in TARGETS.items()},
            "element_ops_for_loop_120x": max(plain_ns / 120.0 - t_fixed, 0.0) * 1e-9 * rates["element_ops"][ops_key],
        }
    out = Path(args.out)
    payload = {
        "meta": {
            **machine(),
            "workload": program.name,
            "lanes": lanes,
            "rounds": args.rounds,
            "steps": steps,
            "messages_per_lane": msgs,
            "state_bytes_per_lane": state // lanes,
            "load_average": list(os.getloadavg()),
            "method": __doc__,
        },
        "loop_work": {
            "kernels_per_step": cost.kernels,
            "element_ops_per_lane_step": ops,
            "bytes_per_lane_step": byts,
            "element_ops_by_kind": {k: v / lanes for k, v in sorted(cost.by_op.items(), key=lambda kv: -kv[1])},
            "unknown_trip_counts": cost.unknown_trips,
        },
        "timings": {
            "plain_per_lane": plain_lane._asdict(),
            "loop": big._asdict(),
            "loop_small": {**small._asdict(), "lanes": SMALL_LANES, "steps": steps_small},
            "simulate": e2e._asdict(),
            "loop_as_run": {**run_t._asdict(), "chunk": as_run.chunk, "workers": as_run.workers},
            "fixed_per_step": fixed,
            "per_lane_step": per_lane,
        },
        "machine_rates": rates,
        "ceiling": ceiling,
        "kernels": kernels,
    }
    w = ceiling["wall"]
    print(f"{program.name}, {lanes} lanes, {steps} steps; {cost.kernels} kernels a step")
    print(f"  work per lane-step: {ops:,.0f} element ops, {byts:,.0f} bytes")
    print(f"  rates: {rates['element_ops']['ops_per_s'] / 1e9:.1f} G element ops/s, "
          f"{rates['bandwidth_state']['bytes_per_s'] / 1e9:.1f} GB/s at the state's size, "
          f"{rates['bandwidth_memory']['bytes_per_s'] / 1e9:.1f} GB/s from memory")  # fmt: skip
    print(f"  fixed per step {fixed['wall_s'] * 1e6:.1f} us wall ({w['fixed_ns']:.1f} ns per lane-step)")
    for kind, c in ceiling.items():
        print(f"  {kind}: plain {c['plain_ns_per_lane_step']:,.0f} ns/lane-step; loop {c['loop_ns_per_lane_step']:.0f} "
              f"({c['loop_ratio']:.1f}x) in one call, {c['loop_as_run_ns_per_lane_step']:.0f} "
              f"({c['loop_as_run_ratio']:.1f}x) as simulate runs it ({as_run.workers} threads, chunks of {as_run.chunk}), "
              f"simulate {c['simulate_ns_per_lane_step']:.0f} ({c['simulate_ratio']:.1f}x); "
              f"floor {c['floor_ns']:.0f} = kernels' roofline {c['roofline_ns']:.0f} (all ops {c['floor_ops_ns']:.0f}, "
              f"all bytes {c['floor_bytes_ns']:.0f}) + fixed "
              f"{c['fixed_ns']:.0f} -> ceiling {c['ceiling_ratio']:.1f}x; 120x needs {c['loop_120x_ns_per_lane_step']:.0f} ns "
              f"(about {c['element_ops_for_loop_120x']:,.0f} element ops)")  # fmt: skip
    if kernels:
        took = sum(k["measured_ns"] for k in kernels)
        print(
            f"  kernels (--profile): {took:.0f} ns per lane-step in {len(kernels)} kernels, summed over threads; "
            "the largest excess over their roofline:"
        )
        for k in kernels[:12]:
            print(
                f"    {k['name']:40s} {k['measured_ns']:6.1f} ns (roofline {k['roofline_ns']:5.1f}; "
                f"{k['element_ops_per_lane']:7.0f} ops, {k['bytes_per_lane']:6.0f} B per lane)"
            )
    write(out, payload)
    plot(ceiling, out.with_suffix(".png"), f"{program.name}, {lanes} lanes, {machine()['cpu_count']} cores")
    return 0


def plot(ceiling: dict, path: Path, title: str) -> None:
    """ns per lane-step: the loop and simulate() as measured, the floor of the present work, and
    what 120x / 60x of the plain interpreter allow; wall and CPU side by side."""
    plt = pyplot()
    if plt is None:
        return
    labels = ["loop", "simulate", "all ops at peak", "all bytes", "kernels' roofline", "floor (+ fixed)",
              "120x allows", "60x allows"]  # fmt: skip
    keys = ["loop_ns_per_lane_step", "simulate_ns_per_lane_step", "floor_ops_ns", "floor_bytes_ns", "roofline_ns", "floor_ns",
            "loop_120x_ns_per_lane_step", "simulate_60x_ns_per_lane_step"]  # fmt: skip
    fig, ax = plt.subplots(figsize=(8, 4))
    y = np.arange(len(labels))
    for j, (kind, c) in enumerate(ceiling.items()):
        ax.barh(y + 0.4 * j, [c[k] for k in keys], height=0.4, label=kind)
    ax.set_yticks(y + 0.2, labels)
    ax.invert_yaxis()
    ax.set_xlabel("ns per lane-step")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    t0 = time.perf_counter()
    c0 = cpu_s()
    rc = main()
    print(f"({time.perf_counter() - t0:.0f} s wall, {cpu_s() - c0:.0f} s CPU)")
    raise SystemExit(rc)

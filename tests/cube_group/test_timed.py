"""Event-driven time in the ``timed`` schedule (issue 22, item 4), in both engines.

A timed step is one event: time jumps to the next cycle at which some core can act, so a ``delay``
of any length is one step and ``max_steps`` counts steps. Clocks are kept as two float32 words
(:mod:`ascend_jax.cube_group.clock`), so cycle counts past 2**24 stay exact.

"Today's" results are golden copies in ``tests/golden/event_time/``, made by running this file as a
script (``python tests/cube_group/test_timed.py``) at commit 275c140, before the change: every shipped
cube-group model under ``timed`` (status, steps, the result JSON with its ``timing`` section, and
the recorded trace events, the last two as SHA-256 digests), 24 random programs from the
property tests' generator (:func:`seeded_program`) and 32 more that share one JAX batch
(:func:`batch_programs`). Both engines agreed on every entry when the files were made.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import random
import sys
import types
from pathlib import Path

import pytest

import ascend_jax as aj
from ascend_jax import Status
from ascend_jax.cube_group.program import CubeGroupProgram
from ascend_jax.models import available_models, load_model
from ascend_jax.trace import record_cube

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import test_engine_equals_reference as test_properties  # noqa: E402  (the property tests' program generator)

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "event_time"
N_RANDOM = 24
#: the random programs of one JAX batch (one compilation): two groups, a barrier
BATCH_GEOMETRY = [(0, 4, 3, "merge"), (4, 2, 2, "free")]
N_BATCH = 32
BIG = 2**31 - 1  # the longest delay a program may hold (int32 cycles)


# -- random programs: the property tests' generator, drawn from a seeded RNG ---------------------
class _Strategy:
    """One of the few strategies the generator draws from, as a description to draw with an RNG."""

    def __init__(self, pick, keep=None):
        self.pick, self.keep = pick, keep

    def filter(self, keep):
        return _Strategy(self.pick, keep)


class _SeededStrategies:
    """Stands in for ``hypothesis.strategies`` (integers, sampled_from, booleans) in the generator."""

    @staticmethod
    def integers(lo, hi):
        return _Strategy(lambda rng: rng.randint(lo, hi))

    @staticmethod
    def sampled_from(items):
        return _Strategy(lambda rng: rng.choice(list(items)))

    @staticmethod
    def booleans():
        return _Strategy(lambda rng: rng.random() < 0.5)


def _seeded(fn, extra: dict):
    """The function a composite strategy ``fn`` was defined from, with ``st`` (and ``extra``)
    replaced in its globals."""
    raw = fn().wrapped_strategy.definition
    glob = {**raw.__globals__, "st": _SeededStrategies, **extra}
    return types.FunctionType(raw.__code__, glob, raw.__name__, raw.__defaults__, raw.__closure__)


def seeded_program(seed: int, geometry=None, with_barrier=None) -> CubeGroupProgram:
    """The property tests' random program (:func:`test_properties.programs`: 1-2 groups, posts,
    merges, FAKEs, waits, delays, missing quits, barriers), its draws made by ``random.Random(seed)``;
    ``geometry`` and ``with_barrier`` as there (fixed, the programs can share one batch)."""
    rng = random.Random(seed)

    def draw(strategy):
        if callable(strategy) and not isinstance(strategy, _Strategy):  # a composite: geometries()
            return strategy(draw)
        while True:
            v = strategy.pick(rng)
            if strategy.keep is None or strategy.keep(v):
                return v

    geometries = _seeded(test_properties.geometries, {})
    programs = _seeded(test_properties.programs, {"geometries": lambda: geometries})
    return programs(draw, geometry, with_barrier)


# -- what is compared -------------------------------------------------------------------------
def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def summary(result, events: list[dict] | None = None) -> dict:
    """What the golden files keep of a run: status, steps, timing, and digests of the result JSON
    (received logs, final slots, timing) and of the recorded trace events."""
    out = {
        "status": result.status.name,
        "steps": int(result.steps),
        "timing": result.timing,
        "json_sha256": _digest({k: v for k, v in result.to_json().items() if k != "seed"}),  # lane i: seed i
    }
    if events is not None:
        out["events_sha256"] = _digest(events)
        out["n_events"] = len(events)
    return out


@functools.cache
def cube_models() -> list[str]:
    return [m for m in available_models() if isinstance(load_model(m)[0], CubeGroupProgram)]


def _golden(name: str) -> dict:
    return json.loads((GOLDEN / f"{name}.json").read_text())


def batch_programs() -> list[CubeGroupProgram]:
    return [seeded_program(1000 + i, BATCH_GEOMETRY, True) for i in range(N_BATCH)]


def generate(part: str = "all") -> None:
    """Writes the golden files (run at commit 275c140, before event-driven time; see the module
    docstring). The JAX engine is checked to agree with the reference on every entry."""
    GOLDEN.mkdir(parents=True, exist_ok=True)
    if part in ("all", "batch"):
        progs = batch_programs()
        lanes = aj.simulate(progs, schedule="timed")
        out = {}
        for i, (p, eng) in enumerate(zip(progs, lanes, strict=True)):
            result, events = record_cube(p, "timed", 0)
            out[str(i)] = summary(result, events)
            assert summary(eng)["json_sha256"] == out[str(i)]["json_sha256"], i
        (GOLDEN / "random_batch.json").write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
        if part == "batch":
            return
    models = {}
    for m in cube_models():
        program = load_model(m)[0]
        result, events = record_cube(program, "timed", 0)
        models[m] = summary(result, events)
        eng = aj.simulate(program, schedule="timed")[0]
        assert summary(eng)["json_sha256"] == models[m]["json_sha256"], m
        print(m, models[m]["status"], models[m]["steps"], models[m]["timing"]["kernel_cycles"])
    (GOLDEN / "models.json").write_text(json.dumps(models, indent=1, sort_keys=True) + "\n")
    rand = {}
    for seed in range(N_RANDOM):
        program = seeded_program(seed)
        result, events = record_cube(program, "timed", 0)
        rand[str(seed)] = summary(result, events)
        eng = aj.simulate(program, schedule="timed")[0]
        assert summary(eng)["json_sha256"] == rand[str(seed)]["json_sha256"], seed
    (GOLDEN / "random.json").write_text(json.dumps(rand, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    generate(*sys.argv[1:])


# -- tests ------------------------------------------------------------------------------------
def _delay_program(cycles: int, max_steps: int = 30) -> CubeGroupProgram:
    """One AIV: a delay of ``cycles``, then post, wait and quit into a one-queue group."""
    k = aj.CubeGroupKernel(max_steps=max_steps)
    g = k.create_cube_res_group("g", 0, 2, 1, "free")
    a = k.aiv(0)
    a.assign_queue(g, 0)
    a.delay(cycles)
    a.post(g)
    a.wait(g)
    a.quit(g)
    return k.compile()


def _run(engine: str, program, schedule: str = "timed", **kw):
    if engine == "reference":
        return aj.run_reference(program, schedule=schedule, **kw)
    return aj.simulate(program, schedule=schedule, **kw)[0]


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["reference", "jax"])
def test_longest_delay_is_one_step_with_exact_cycles(engine):
    # after the delay (default costs, cycles): alloc 40 + post 120; the AIC's dispatch 80 and free 40;
    # the AIV's wait 40 (from the free), alloc 40 + quit 40; the AIC's QUIT poll 40: 440 cycles
    long, short = _run(engine, _delay_program(BIG)), _run(engine, _delay_program(1000))
    assert long.status == short.status == Status.OK
    assert long.steps == short.steps <= 30  # max_steps = 30 counts steps, not cycles
    assert long.timing["kernel_cycles"] == BIG + 440  # one float32 would say 2**31 (or less: 2**31 + 40 = 2**31)
    assert short.timing["kernel_cycles"] == 1000 + 440
    shift = BIG - 1000
    assert long.timing["aic"]["0"]["blocked_cycles"] == short.timing["aic"]["0"]["blocked_cycles"] + shift
    assert long.timing["aic"]["0"]["busy_cycles"] == short.timing["aic"]["0"]["busy_cycles"]
    lv, sv = (r.timing["occupancy"]["g"]["0"]["cycles_at_level"] for r in (long, short))
    assert lv[0] == sv[0] + shift and lv[1:] == sv[1:]


@pytest.mark.slow
def test_longest_delay_engine_equals_reference():
    program = _delay_program(BIG)
    eng, ref = aj.simulate(program, schedule="timed")[0], aj.run_reference(program, schedule="timed")
    assert eng.to_json() == ref.to_json()
    assert eng.steps == ref.steps
    stopped = _delay_program(BIG, max_steps=2)  # the delay is the second step: the run stops there
    for r in (aj.simulate(stopped, schedule="timed")[0], aj.run_reference(stopped, schedule="timed")):
        assert r.status == Status.MAX_STEPS and r.steps == 2


@pytest.mark.parametrize("engine", ["reference", "jax"])
def test_timed_delay_longer_than_max_steps_keeps_its_cycles(engine):
    # the engine used to clip a delay to max_steps + 1 when it encoded it (a lockstep bound)
    r = _run(engine, _delay_program(5000, max_steps=30))
    assert r.status == Status.OK and r.timing["kernel_cycles"] == 5000 + 440


@pytest.mark.parametrize("engine", ["reference", "jax"])
def test_lockstep_delays_still_take_one_step_per_cycle(engine):
    ok = _run(engine, _delay_program(20, max_steps=100), "lockstep")
    assert ok.status == Status.OK and ok.steps == _run("reference", _delay_program(1), "lockstep").steps + 19
    stop = _run(engine, _delay_program(BIG, max_steps=1000), "lockstep")
    assert stop.status == Status.MAX_STEPS and stop.steps == 1000
    # a max_steps override above the program's: the delay's cycles are not clipped to the program's bound
    longer = _run(engine, _delay_program(500, max_steps=100), "lockstep", max_steps=10_000)
    assert longer.status == Status.OK and longer.steps == ok.steps + 480


@pytest.mark.slow
def test_reference_lockstep_takes_idle_ticks_at_once_with_the_same_trace():
    # two delays that end apart, an AIC waiting: the idle steps are skipped in bulk, not one by one
    k = aj.CubeGroupKernel(max_steps=10**6)
    g = k.create_cube_res_group("g", 0, 2, 2, "free")
    for b, d in ((0, 50_000), (1, 70_000)):
        a = k.aiv(b)
        a.assign_queue(g, b)
        a.post(g)
        a.delay(d)
        a.wait(g)
        a.quit(g)
    program = k.compile()
    result, events = record_cube(program, "lockstep", 0)
    assert result.status == Status.OK and result.steps > 70_000
    delays = sorted((e["ts"], e["dur"]) for e in events if e["name"] == "delay")
    quits = [e["ts"] for e in events if e["name"] == "quit"]
    assert [d for _, d in delays] == [50_000, 70_000] and max(quits) > 70_000
    for seed in (0, 1):  # random: no draw is made in an idle step, so the seeds' runs are the engine's
        ref = aj.run_reference(program, schedule="random", seed=seed)
        eng = aj.simulate(program, schedule="random", seeds=seed)[0]
        assert ref.outcome() == result.outcome() == eng.outcome()
    assert aj.simulate(program)[0].steps == result.steps


@pytest.mark.slow
@pytest.mark.parametrize("model", cube_models())
def test_shipped_models_keep_todays_timed_results(model):
    program = load_model(model)[0]
    gold = _golden("models")[model]
    result, events = record_cube(program, "timed", 0)
    assert summary(result, events) == gold  # status, steps, timing, result JSON, trace events
    assert summary(aj.simulate(program, schedule="timed")[0])["json_sha256"] == gold["json_sha256"]


@pytest.mark.slow
def test_random_programs_keep_todays_timed_results():
    gold = _golden("random")
    for seed in range(N_RANDOM):
        result, events = record_cube(seeded_program(seed), "timed", 0)
        assert summary(result, events) == gold[str(seed)], seed
    gold = _golden("random_batch")
    programs = batch_programs()
    lanes = aj.simulate(programs, schedule="timed")  # one compiled batch, a lane per program
    for i, (program, eng) in enumerate(zip(programs, lanes, strict=True)):
        result, events = record_cube(program, "timed", 0)
        assert summary(result, events) == gold[str(i)], i
        assert summary(eng)["json_sha256"] == gold[str(i)]["json_sha256"], i


def _with_delays(program: CubeGroupProgram, cycles) -> CubeGroupProgram:
    """``program`` with delay number j (in AIV order) lasting ``cycles(j, old cycles)``."""
    count = iter(range(10**6))
    aivs = tuple(
        (b, tuple(dataclasses.replace(op, cycles=cycles(next(count), op.cycles)) if op.kind == "delay" else op
                  for op in ops))
        for b, ops in program.aivs
    )  # fmt: skip
    return dataclasses.replace(program, aivs=aivs)


def test_random_programs_with_huge_delays_engine_equals_reference():
    # every delay lasts 2**31 - 1 - j cycles: clocks reach ~2**33, each cycle still counted
    programs = [_with_delays(p, lambda j, c: BIG - j) for p in batch_programs()[:12]]
    assert any(op.kind == "delay" for p in programs for _, ops in p.aivs for op in ops)
    lanes = aj.simulate(programs, schedule="timed")
    for program, eng in zip(programs, lanes, strict=True):
        ref = aj.run_reference(program, schedule="timed")
        assert summary(eng) == summary(ref)  # status, steps, timing, result JSON (lane i has seed i)
        assert ref.status != Status.MAX_STEPS
        lock = aj.run_reference(_with_delays(program, lambda j, c: 3), schedule="lockstep")
        if lock.status != Status.MAX_STEPS:  # the schedule changes no result (test_properties)
            assert ref.outcome() == lock.outcome()
        if any(op.kind == "delay" for _, ops in program.aivs for op in ops) and ref.status == Status.OK:
            assert ref.timing["kernel_cycles"] > BIG - 64  # the delay took its cycles


@pytest.mark.slow
def test_attention_grad_follower_delay_of_2_31_cycles():
    def run(delay, engine="reference"):
        program = load_model("attention_grad", options={"merge": "true", "follower_delay": str(delay)})[0]
        return _run(engine, program)

    mid, big = run(10**6), run(BIG)  # 10**6: where one float32 was still exact
    assert big.status == Status.OK and big.steps == mid.steps
    # the follower's delay is on the critical path: the kernel ends BIG - 10**6 cycles later, exactly
    assert big.timing["kernel_cycles"] == mid.timing["kernel_cycles"] + BIG - 10**6
    assert run(BIG, "jax").to_json() == big.to_json()


def test_clock_pairs_add_exactly_and_alike_in_numpy_and_jax():
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ascend_jax.cube_group import clock
    from ascend_jax.cube_group.clock import Cycles

    rng = np.random.default_rng(0)
    lanes, n = 16, 64
    whole = rng.integers(0, BIG, (n, lanes), dtype=np.int64).astype(np.int32)  # delays
    frac = (rng.integers(0, 2**16, (n, lanes)) / 32).astype(np.float32)  # durations in 1/32 cycles
    add = jax.jit(clock.add)
    acc_j = (jnp.zeros(lanes, jnp.float32), jnp.zeros(lanes, jnp.float32))
    acc_n = [Cycles()] * lanes
    exact = np.zeros(lanes, np.float64)  # < 2**53 and in 1/32 steps: float64 is exact here
    for i in range(n):
        d = clock.of_int32(jnp.asarray(whole[i]), jnp)
        acc_j = add(add(acc_j, d), (jnp.asarray(frac[i]), jnp.zeros(lanes, jnp.float32)))
        acc_n = [a + int(w) + f for a, w, f in zip(acc_n, whole[i], frac[i], strict=True)]
        exact += whole[i].astype(np.float64) + frac[i].astype(np.float64)
    hi, lo = (np.asarray(w) for w in acc_j)
    assert (hi == np.array([a[0] for a in acc_n])).all() and (lo == np.array([a[1] for a in acc_n])).all()
    assert (clock.to_float(acc_j) == exact).all()  # every cycle and 1/32 cycle kept, up to ~2**37
    assert (hi == exact.astype(np.float32)).all()  # normalised: the high word is the float32 rounding
    # order and equality follow the value
    a, b = Cycles.of(BIG), Cycles.of(BIG - 1)
    assert b < a and a > b and a == Cycles.of(BIG) and a != b and float(a - b) == 1.0

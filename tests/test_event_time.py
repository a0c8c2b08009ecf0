"""Event-driven time in the ``timed`` schedule (issue 22, item 4), in both engines.

A timed step is one event: time jumps to the next cycle at which some core can act, so a ``delay``
of any length is one step and ``max_steps`` counts steps. Clocks are kept as two float32 words
(:mod:`ascend_jax.cube_group.clock`), so cycle counts past 2**24 stay exact.

"Today's" results are golden copies in ``tests/golden/event_time/``, made by running this file as a
script (``python tests/test_event_time.py``) at commit 275c140, before the change: every shipped
cube-group model under ``timed`` (status, steps, the result JSON with its ``timing`` section, and
the recorded trace events, the last two as SHA-256 digests) and 24 random programs from the
property tests' generator (:func:`seeded_program`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import sys
import types
from pathlib import Path

import ascend_jax as aj
from ascend_jax.cube_group.program import CubeGroupProgram
from ascend_jax.models import available_models, load_model
from ascend_jax.trace import record_cube

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_properties  # noqa: E402  (the property tests' program generator)

GOLDEN = Path(__file__).resolve().parent / "golden" / "event_time"
N_RANDOM = 24
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


def seeded_program(seed: int) -> CubeGroupProgram:
    """The property tests' random program (:func:`test_properties.programs`: 1-2 groups, posts,
    merges, FAKEs, waits, delays, missing quits, barriers), its draws made by ``random.Random(seed)``."""
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
    return programs(draw)


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
        "json_sha256": _digest(result.to_json()),
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


def generate() -> None:
    """Writes the golden files (run at commit 275c140, before event-driven time; see the module
    docstring). The JAX engine is checked to agree with the reference on every entry."""
    GOLDEN.mkdir(parents=True, exist_ok=True)
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
    generate()

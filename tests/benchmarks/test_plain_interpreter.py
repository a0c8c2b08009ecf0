"""The benchmark's plain sequential interpreter equals the reference interpreter.

``benchmarks/plain_interpreter.py`` is the baseline the throughput benchmark divides by, so it
must run the same protocol with the same lockstep steps: status, steps, received logs, error
codes and ``Wait<false>`` results are compared with :func:`ascend_jax.run_reference` on the
shipped protocol scenarios and on the random programs of ``tests/cube_group/test_engine_equals_reference.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from test_engine_equals_reference import SETTINGS, programs

import ascend_jax as aj
from tests._models import load

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str, folder: str):
    return load(name, folder)


plain = _load("plain_interpreter", "benchmarks")
sample = _load("cube_group_sample", "models")


def assert_same(program: aj.CubeGroupProgram, max_steps: int | None = None) -> plain.PlainResult:
    ref = aj.run_reference(program, max_steps=max_steps)
    got = plain.run_plain(program, max_steps=max_steps)
    assert got.status == ref.status.label
    assert got.steps == ref.steps
    assert got.received == ref.received
    assert got.error == (ref.error["code"] if ref.error else None)
    assert got.wait_results == ref.wait_results
    return got


def test_merge_example_by_hand():
    r = assert_same(aj.load_scenario(ROOT / "models" / "merge_example.toml"))
    assert (r.status, r.steps) == ("ok", 16)
    v, q = "VALID", "QUIT"
    assert r.received == {0: [(0, 0, v), (3, 0, v), (4, 0, v), (0, 1, q), (1, 1, q), (2, 1, q), (3, 1, q), (4, 1, q)]}


@pytest.mark.parametrize(
    ("source", "max_steps", "status", "steps", "messages"),
    [
        ("models/merge_example.toml", None, "ok", 16, 8),
        ("models/merge_example.toml", 5, "max_steps", 5, 1),
        ("models/barrier_example.toml", None, "ok", 21, 16),
        ("default", None, "ok", 38, 126),
        ("sample", None, "ok", 30, 102),
    ],
)
def test_shipped_scenarios(source, max_steps, status, steps, messages):
    if source == "default":
        program = aj.load_scenario(aj.builtin_scenario_path())
    elif source == "sample":
        program = sample.build(protocol_only=True)
    else:
        program = aj.load_scenario(ROOT / source)
    r = assert_same(program, max_steps)
    assert r.status == status
    assert r.steps == steps
    assert sum(len(v) for v in r.received.values()) == messages


def test_protocol_errors_and_deadlock():
    k = aj.CubeGroupKernel()  # skipCnt 2 from column 1 of a 2-queue row: the merge's frees of msg + 1 and
    g = k.create_cube_res_group("g", 0, 2, 2)  # msg + 2 wait for FAKEs that never come, before SetSkipMsg
    for q in range(2):
        a = k.aiv(q)
        a.assign_queue(g, q)
        a.post(g, {"skipCnt": 2 * q})
        a.quit(g)
    r = assert_same(k.compile())
    assert (r.status, r.error) == ("deadlock", None)

    k = aj.CubeGroupKernel()  # skipCnt 1 from column 1, and the slot after the row holds a FAKE: the free
    g = k.create_cube_res_group("g", 0, 2, 2)  # returns, then SetSkipMsg's assert stops the AIC
    a0, a1 = k.aiv(0), k.aiv(1)
    a0.assign_queue(g, 0)
    a1.assign_queue(g, 1)
    a0.post(g, {"skipCnt": 0})
    a0.fake(g)
    a0.quit(g)
    a1.post(g, {"skipCnt": 1})
    a1.quit(g)
    r = assert_same(k.compile())
    assert (r.status, r.error) == ("error", "SKIP_CROSSES_ROW")

    k = aj.CubeGroupKernel(max_received=3)  # five messages into a log of three
    g = k.create_cube_res_group("g", 0, 2, 1, callback="free")
    a = k.aiv(0)
    a.assign_queue(g, 0)
    for _ in range(4):
        a.post(g)
    a.quit(g)
    r = assert_same(k.compile())
    assert (r.status, r.error) == ("error", "RECEIVE_LOG_FULL")
    assert len(r.received[0]) == 3

    k = aj.CubeGroupKernel()  # no QUIT on queue 1: the AIC waits on a FREE slot forever
    g = k.create_cube_res_group("g", 0, 2, 2)
    for q in range(2):
        a = k.aiv(q)
        a.assign_queue(g, q)
        a.post(g)
        a.wait(g, sync=False)
        if q == 0:
            a.quit(g)
    r = assert_same(k.compile())
    assert r.status == "deadlock"
    assert r.received == {0: [(0, 0, "VALID"), (1, 0, "VALID"), (0, 1, "QUIT")]}


def test_refuses_matmul_callbacks():
    with pytest.raises(ValueError, match="free or merge only"):
        plain.run_plain(sample.build())


@SETTINGS
@given(programs())
def test_random_programs_equal_the_reference(program):
    assert_same(program)

"""``models/moe_grouped_matmul.py``: the layout, merging's message and time savings (a hand case
with every value written out), numerics against float64, both engines, the CLI options."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ascend_jax_models import moe_grouped_matmul as moe

import ascend_jax as aj
from ascend_jax.cli import main
from ascend_jax.cube_group.matmul import TOLERANCE

# Two experts with 200 and 40 rows, 64-row tiles, 2 AICs with 4 queues each, expert-parallel:
# AIC 0 gets expert 0's tiles (rows 0-63, 64-127, 128-191, 192-199), AIC 1 expert 1's (200-239).
HAND = dict(experts=2, counts=(200, 40), tile_m=64, aics=2, queues_per_aic=4, assign="expert")


def _valid(result) -> dict[int, int]:
    return {core: sum(s == "VALID" for _, _, s in log) for core, log in result.received.items()}


def test_hand_plan():
    merged = moe.plan([200, 40], 64, 2, 4, "expert", True)
    T = moe.Tile
    assert merged.tiles == (T(0, 0, 64), T(0, 64, 64), T(0, 128, 64), T(0, 192, 8), T(1, 200, 40))
    assert merged.tasks == (moe.Task(0, 0, 0, merged.tiles[:4]), moe.Task(1, 0, 0, merged.tiles[4:]))
    assert merged.fakes == 3
    single = moe.plan([200, 40], 64, 2, 4, "expert", False)
    assert [(t.aic, t.row, t.column, len(t.tiles)) for t in single.tasks] == [
        (0, 0, 0, 1), (0, 0, 1, 1), (0, 0, 2, 1), (0, 0, 3, 1), (1, 0, 0, 1)
    ]  # fmt: skip
    assert single.fakes == 0
    # balanced: 5 tiles over 2 AICs -> 3 + 2, contiguous in expert order
    bal = moe.plan([200, 40], 64, 2, 4, "balanced", True)
    assert bal.aic_tiles == (bal.tiles[:3], bal.tiles[3:])
    # a row ends a merge: 6 full tiles of one expert on one AIC with P = 4 -> runs of 4 and 2
    rows = moe.plan([384], 64, 1, 4, "expert", True)
    assert [(t.row, t.column, len(t.tiles)) for t in rows.tasks] == [(0, 0, 4), (1, 0, 2)]


def test_hand_case_messages_time_and_numerics():
    """Merging the four tiles of expert 0 saves three received VALIDs and three dispatches."""
    on = aj.run_reference(moe.build(0, merge=True, **HAND), schedule="timed")
    off = aj.run_reference(moe.build(0, merge=False, **HAND), schedule="timed")
    assert _valid(on) == {0: 1, 1: 1} and _valid(off) == {0: 4, 1: 1}
    for r in (on, off):  # every column quits once; followers freed by the merge are not received
        assert [sum(s == "QUIT" for _, _, s in log) for log in r.received.values()] == [4, 4]
        assert [sum(s == "FAKE" for _, _, s in log) for log in r.received.values()] == [0, 0]
    # IterateAll cycles (timing.py): 300 + ceil(m/16)*ceil(n/16)*ceil(k/16) + (A + B + C bytes) / 32
    full = 300 + 4 * 8 * 8 + (64 * 128 * 2 + 128 * 128 * 2 + 64 * 128 * 4) / 32  # 3116
    tail8 = 300 + 1 * 8 * 8 + (8 * 128 * 2 + 128 * 128 * 2 + 8 * 128 * 4) / 32  # 1580
    tail40 = 300 + 3 * 8 * 8 + (40 * 128 * 2 + 128 * 128 * 2 + 40 * 128 * 4) / 32  # 2476
    # AIC busy: dispatches (80) + matmuls + frees (40 per tile) + 4 QUIT polls (40)
    busy0_on = 80 + 3 * full + tail8 + 4 * 40 + 4 * 40
    busy1 = 80 + tail40 + 40 + 4 * 40
    assert (busy0_on, busy1) == (11328, 2756)
    assert on.timing["aic"]["0"]["busy_cycles"] == busy0_on
    assert off.timing["aic"]["0"]["busy_cycles"] == busy0_on + 3 * 80
    assert on.timing["aic"]["1"]["busy_cycles"] == off.timing["aic"]["1"]["busy_cycles"] == busy1
    u = aj.compute_utilisation(on)
    assert u.imbalance == pytest.approx(busy0_on / ((busy0_on + busy1) / 2) - 1)
    assert (u.busiest, u.least_busy) == (0, 1)
    # numerics: the same matmuls in the same order, so the same bits; within tolerance of float64
    np.testing.assert_array_equal(on.tensor("y"), off.tensor("y"))
    want = moe.expected(on.program)["y"]
    x, w = on.program.gm.read("x").astype(np.float64), on.program.gm.read("w").astype(np.float64)
    np.testing.assert_array_equal(want[:200], x[:200] @ w[0])
    np.testing.assert_array_equal(want[200:], x[200:] @ w[1])
    rel = np.linalg.norm(on.tensor("y") - want) / np.linalg.norm(want)
    assert rel <= TOLERANCE["float32"]


@pytest.mark.slow
def test_hand_case_jax_engine_matches():
    p = moe.build(0, merge=True, **HAND)
    jax_r = aj.simulate(p, schedule="timed")[0]
    ref = aj.run_reference(p, schedule="timed")
    assert jax_r.outcome() == ref.outcome() and jax_r.timing == ref.timing
    # the order of additions inside one baseK chunk is XLA's in the engine, numpy's in the reference
    y, want = jax_r.tensor("y").astype(np.float64), ref.tensor("y").astype(np.float64)
    assert np.linalg.norm(y - want) / np.linalg.norm(want) <= TOLERANCE["float32"]


def test_default_build_merging_saves_the_fakes():
    """Default model (2,048 rows, 8 experts, skew 1.2): merging removes exactly one received
    VALID per FAKE posted, and the results stay within tolerance."""
    on_p, off_p = moe.build(0), moe.build(0, merge=False)
    lay = moe.plan(moe.draw_counts(0, 8, 2048, 1.2), 64, 4, 4, "expert", True)
    on, off = aj.run_reference(on_p, schedule="timed"), aj.run_reference(off_p, schedule="timed")
    assert sum(_valid(off).values()) == len(lay.tiles)
    assert sum(_valid(on).values()) == len(lay.tasks) == len(lay.tiles) - lay.fakes
    assert lay.fakes > 0
    assert on.timing["kernel_cycles"] < off.timing["kernel_cycles"]
    np.testing.assert_array_equal(on.tensor("y"), off.tensor("y"))
    ref = moe.expected(on_p)["y"]
    assert np.linalg.norm(on.tensor("y") - ref) / np.linalg.norm(ref) <= TOLERANCE["float32"]


def test_counts_are_seeded_and_skewed():
    a = moe.draw_counts(3, 8, 2048, 3.0)
    assert a == moe.draw_counts(3, 8, 2048, 3.0) and sum(a) == 2048
    # p_max = 1 / sum(r^-3, r = 1..8) = 0.84; the multinomial's sd is about 17 rows
    assert max(a) > 0.75 * 2048
    flat = moe.draw_counts(3, 8, 2048, 0.0)
    assert sum(flat) == 2048 and max(flat) < 2048 / 8 * 1.3


def test_balanced_assignment_evens_the_load():
    exp = aj.compute_utilisation(aj.run_reference(moe.build(0, skew=2.0), schedule="timed"))
    bal = aj.compute_utilisation(aj.run_reference(moe.build(0, skew=2.0, assign="balanced"), schedule="timed"))
    assert bal.imbalance < 0.1 < 1.0 < exp.imbalance
    assert bal.kernel_us < exp.kernel_us


def test_cli_timed_json(capsys):
    argv = ["run", "--model", "moe_grouped_matmul", "--schedule", "timed", "--json"]
    assert main([*argv, "--model-arg", "tokens=512", "--model-arg", "assign=balanced"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["status"] == "ok" and js["scenario"] == "moe_grouped_matmul-balanced-merge"
    assert js["numerics"]["y"]["ok"] and js["numerics"]["y"]["numpy_check"]["ok"]
    assert js["utilisation"]["summary"]["aics"] == 4
    assert js["utilisation"]["kernel_us"] == js["timing"]["kernel_us"]


@pytest.mark.parametrize(
    "arg, says",
    [
        ("merge=maybe", "merge must be true or false"),
        ("skw=1", "did you mean 'skew'"),
        ("skew=-1", "skew = -1.0: must be a number in 0.0..10.0"),
        ("assign=random", "assign = 'random': must be one of ['expert', 'balanced']"),
        ("queues_per_aic=13", "aics * queues_per_aic = 52 AIVs exceed the chip's 48"),
        ("tokens", "must look like NAME=VALUE"),
    ],
)
def test_cli_bad_options_exit_2(capsys, arg, says):
    assert main(["run", "--model", "moe_grouped_matmul", "--model-arg", arg]) == 2
    assert says in capsys.readouterr().err


def test_model_arg_needs_a_python_model(capsys):
    assert main(["run", "--model", "merge_example", "--model-arg", "a=1"]) == 2
    assert "is a TOML scenario and takes no options" in capsys.readouterr().err
    assert main(["run", "models/merge_example.toml", "--model-arg", "a=1"]) == 2
    assert "applies only to --model" in capsys.readouterr().err

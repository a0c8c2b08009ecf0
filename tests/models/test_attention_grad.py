"""attention_grad's task-to-queue assignment and message merging (models/attention_grad.py): the
layout written out for a small causal case, the AIC time it costs, numerics for every option, the
race a merge without its fence would have, and the command-line options."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ascend_jax import compute_utilisation, run_reference, simulate
from ascend_jax.cli import main
from ascend_jax.cube_group.status import Status
from ascend_jax.errors import ConfigError
from ascend_jax.numerics import compare
from tests._models import load

ag = load("attention_grad")

#: causal S1 = S2 = 256 in 64 x 64 blocks (a 4 x 4 grid, 10 blocks on or below the diagonal) on
#: 4 AICs x 2 queues: the case the written-out values below describe
SMALL = dict(s1=256, s2=256, causal=True, aics=4, aivs=8)
#: the blocks (b, h, i, j) in list order: S2 blocks outer, S1 blocks from the diagonal down
BLOCKS = [(0, 0, i, j) for j in range(4) for i in range(j, 4)]
#: one block's AIC busy cycles under the default cost model: five matmuls of 64 x 64 x 64 (S, dP,
#: dV, dQ, dK), each dispatch 80 + IterateAll (300 + 4 * 4 * 4 fractals + (8192 + 8192 + 16384)
#: bytes / 32 = 1388) + free 40
BLOCK_CYCLES = 5 * (80 + 1388 + 40)
QUIT_CYCLES = 40  # receiving one column's QUIT


def _small_plan(assign: str, merge: bool = False, merge_dv: bool = False):
    return ag.plan(1, 1, 4, 4, True, 4, 8, assign, merge, (64, 64), merge_dv)


def test_block_list_and_round_robin_layout():
    lay = _small_plan("round_robin")
    assert list(lay.blocks) == BLOCKS
    assert lay.aic_queues == ((0, 1), (2, 3), (4, 5), (6, 7))
    # block t to queue t % 8: queues 0 and 1 get blocks 8 and 9 as well
    assert [list(q) for q in lay.queues] == [[BLOCKS[0], BLOCKS[8]], [BLOCKS[1], BLOCKS[9]]] + [
        [BLOCKS[t]] for t in range(2, 8)
    ]
    assert [len(q) for q in lay.queues] == [2, 2, 1, 1, 1, 1, 1, 1]
    assert lay.blocks_per_aic() == [4, 2, 2, 2]


def test_balanced_layout():
    lay = _small_plan("balanced")
    # runs of 3, 3, 2, 2 blocks per AIC, each dealt over the AIC's two queues
    assert [list(q) for q in lay.queues] == [
        [BLOCKS[0], BLOCKS[2]], [BLOCKS[1]], [BLOCKS[3], BLOCKS[5]], [BLOCKS[4]],
        [BLOCKS[6]], [BLOCKS[7]], [BLOCKS[8]], [BLOCKS[9]],
    ]  # fmt: skip
    assert [len(q) for q in lay.queues] == [2, 1, 2, 1, 1, 1, 1, 1]
    assert lay.blocks_per_aic() == [3, 3, 2, 2]


def test_balanced_evens_the_aics_where_round_robin_does_not():
    """36 causal blocks over 4 AICs x 2 queues: the 4 extra blocks of the round robin land on AICs 0 and 1."""
    rr = ag.plan(1, 1, 8, 8, True, 4, 8, "round_robin")
    bal = ag.plan(1, 1, 8, 8, True, 4, 8, "balanced")
    assert rr.blocks_per_aic() == [10, 10, 8, 8] and [len(q) for q in rr.queues] == [5, 5, 5, 5, 4, 4, 4, 4]
    assert bal.blocks_per_aic() == [9, 9, 9, 9] and [len(q) for q in bal.queues] == [5, 4, 5, 4, 5, 4, 5, 4]
    # an uneven group (5 queues on 2 AICs: 3 + 2) and more AICs than needed keep every block once
    for aics, aivs in ((2, 5), (3, 3), (4, 8)):
        for assign in ag.ASSIGNS:
            lay = ag.plan(2, 1, 3, 3, True, aics, aivs, assign)
            assert sorted(b for q in lay.queues for b in q) == sorted(lay.blocks)
    assert ag.plan(2, 1, 3, 3, True, 2, 5, "balanced").blocks_per_aic() == [6, 6]


def test_merge_layout_written_out():
    lay = _small_plan("round_robin", merge=True)
    roles = [[(s.role, s.skip, s.q_gap_rows, s.k_gap_rows) for s in st] for st in lay.steps]
    assert roles == [
        [("leader", 1, 64, 0), ("leader", 1, 0, 64)],  # (0,0)+(1,0): next Q block, same K; (3,2)+(3,3)
        [("follower", 1, 64, 0), ("follower", 1, 0, 64)],
        [("leader", 1, 64, 0)],  # (2,0)+(3,0)
        [("follower", 1, 64, 0)],
        [("leader", 1, 64, 0)],  # (1,1)+(2,1)
        [("follower", 1, 64, 0)],
        [("single", 0, 0, 0)],  # (3,1) then (2,2): Q steps back, the unsigned gap cannot
        [("single", 0, 0, 0)],
    ]
    # four follower steps: S, dP, dQ, dK become FAKEs (dV too with merge_dv)
    assert (lay.fakes, lay.valid) == (16, 34)
    assert (_small_plan("round_robin", True, True).fakes, _small_plan("round_robin", True, True).valid) == (20, 30)
    bal = _small_plan("balanced", merge=True)
    # AIC 0: (0,0)+(1,0); AIC 1: (3,0) then (1,1), Q steps back; AIC 3: (3,2)+(3,3)
    assert [[s.role for s in st] for st in bal.steps] == [
        ["leader", "single"], ["follower"], ["single", "single"], ["single"],
        ["single"], ["single"], ["leader"], ["follower"],
    ]  # fmt: skip
    assert (bal.fakes, bal.valid) == (8, 42)
    assert _small_plan("round_robin").fakes == 0 and _small_plan("round_robin").valid == 50


@pytest.mark.parametrize(
    ("merge", "merge_dv", "valid", "aic0_busy"),
    [
        (False, False, 50, 4 * BLOCK_CYCLES + 2 * QUIT_CYCLES),
        # every FAKE covered by a leader is freed in its callback, never received: one dispatch less
        (True, False, 34, 4 * BLOCK_CYCLES + 2 * QUIT_CYCLES - 2 * 4 * 80),
        (True, True, 30, 4 * BLOCK_CYCLES + 2 * QUIT_CYCLES - 2 * 5 * 80),
    ],
)
def test_merge_valid_messages_and_aic_time(merge, merge_dv, valid, aic0_busy):
    p = ag.build(0, merge=merge, merge_dv=merge_dv, **SMALL)
    res = run_reference(p, schedule="timed")
    assert res.status.name == "OK"
    received = [st for log in res.received.values() for _, _, st in log]
    assert received.count("VALID") == valid
    assert received.count("FAKE") == 0 and received.count("QUIT") == 8
    assert res.timing["aic"]["0"]["busy_cycles"] == aic0_busy
    # AIC 3 (queues 6, 7: single tasks) is busy for its two blocks either way
    assert res.timing["aic"]["3"]["busy_cycles"] == 2 * BLOCK_CYCLES + 2 * QUIT_CYCLES


@pytest.mark.parametrize("assign", ["round_robin", "balanced"])
@pytest.mark.parametrize(("merge", "merge_dv"), [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("causal", [True, False])
def test_numerics_for_every_option(assign, merge, merge_dv, causal):
    p = ag.build(0, s1=256, s2=128, causal=causal, block_s1=64, block_s2=64 if causal else 128, aics=2, aivs=4,
                 assign=assign, merge=merge, merge_dv=merge_dv, dtype="bfloat16" if causal else "float16")  # fmt: skip
    res = run_reference(p)
    assert res.status.name == "OK"
    want = ag.expected(p)
    tol = ag.TOLERANCE["bfloat16" if causal else "float16"]
    for name in ("dq", "dk", "dv"):
        err = compare(res.tensor(name), want[name], tol)
        assert err["ok"] and 0 < err["rel_l2_error"] < tol, (name, err)


def test_balanced_lowers_the_aic_imbalance_on_the_causal_case():
    rr = compute_utilisation(run_reference(ag.build(0, **SMALL), schedule="timed"))
    bal = compute_utilisation(run_reference(ag.build(0, assign="balanced", **SMALL), schedule="timed"))
    # busy cycles follow the block counts: 4, 2, 2, 2 against 3, 3, 2, 2 blocks
    freq = rr.freq_mhz
    assert [round(t.busy_us * freq) for t in rr.aic.values()] == [4 * BLOCK_CYCLES + 80] + [2 * BLOCK_CYCLES + 80] * 3
    assert [round(t.busy_us * freq) for t in bal.aic.values()] == [3 * BLOCK_CYCLES + 80] * 2 + [
        2 * BLOCK_CYCLES + 80
    ] * 2
    assert rr.imbalance == pytest.approx((4 * BLOCK_CYCLES + 80) / ((10 * BLOCK_CYCLES + 320) / 4) - 1)
    assert bal.imbalance < rr.imbalance / 2
    assert bal.kernel_us < rr.kernel_us
    # the full case has 4 blocks per AIC either way
    full = dict(SMALL, causal=False)
    fr = compute_utilisation(run_reference(ag.build(0, **full), schedule="timed"))
    fb = compute_utilisation(run_reference(ag.build(0, assign="balanced", **full), schedule="timed"))
    assert fr.imbalance == fb.imbalance == 0.0


def test_dv_merge_needs_its_barrier():
    """A slow follower: the merged dV reads its P workspace before it is stored unless the leader
    waits on the barrier; the dQ / dK merges are fenced by the follower's own dV post."""
    want = None
    for merge_dv, barrier, bad in ((False, True, set()), (True, True, set()), (True, False, {"dv"})):
        p = ag.build(0, merge=True, merge_dv=merge_dv, dv_barrier=barrier, follower_delay=5000)
        res = run_reference(p, schedule="timed")
        assert res.status.name == "OK"
        want = want or ag.expected(p)
        failed = {n for n in ("dq", "dk", "dv") if not compare(res.tensor(n), want[n], ag.TOLERANCE["float16"])["ok"]}
        assert failed == bad, (merge_dv, barrier)


def test_cli_options(capsys):
    args = ["run", "--model", "attention_grad", "--schedule", "timed", "--json", "--model-arg", "causal=true",
            "--model-arg", "s1=256", "--model-arg", "s2=256", "--model-arg", "aics=4", "--model-arg", "aivs=8"]  # fmt: skip
    code = main([*args, "--model-arg", "assign=balanced", "--model-arg", "merge=true"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["status"] == "ok"
    assert out["scenario"] == "attention_grad-float16-causal-balanced-merge"
    assert all(out["numerics"][n]["ok"] and out["numerics"][n]["numpy_check"]["ok"] for n in ("dq", "dk", "dv"))
    assert out["utilisation"]["summary"]["imbalance"] == pytest.approx(0.2, abs=0.02)
    assert main([*args, "--model-arg", "assign=random"]) == 2
    err = capsys.readouterr().err
    assert "assign" in err and "'random'" in err and "round_robin" in err


def test_option_errors():
    with pytest.raises(ConfigError, match="merge_dv"):
        ag.build(0, merge_dv=True)
    with pytest.raises(ConfigError, match="follower_delay"):
        ag.build(0, follower_delay=-1)


@pytest.mark.parametrize("assign", ["round_robin", "balanced"])
def test_longer_runs_across_heads(assign):
    """B = H = 2 on 3 AICs x 3 queues: runs of three columns (skipCnt 2), some across a head boundary."""
    p = ag.build(1, batch=2, heads=2, s1=128, s2=128, d=32, block_s1=32, block_s2=32, causal=True, aics=3,
                 aivs=9, assign=assign, merge=True, merge_dv=True)  # fmt: skip
    lay = ag.plan(2, 2, 4, 4, True, 3, 9, assign, True, (32, 32), True)
    assert max(s.skip for st in lay.steps for s in st) == 2
    assert len(lay.blocks) == 40 and (lay.fakes, lay.valid) == (85, 115)
    # one run starts at the last block of head 0, (3, 3), and continues into head 1's (0, 0)
    crossing = [(lay.queues[q][n], lay.queues[q + 1][n]) for q, st in enumerate(lay.steps) for n, s in enumerate(st)
                if s.role == "leader" and lay.queues[q][n][:2] != lay.queues[q + s.skip][n][:2]]  # fmt: skip
    assert crossing == [((0, 0, 3, 3), (0, 1, 0, 0))]
    res = run_reference(p)
    assert res.status.name == "OK"
    assert [st for log in res.received.values() for _, _, st in log].count("VALID") == lay.valid
    want = ag.expected(p)
    for name in ("dq", "dk", "dv"):
        assert compare(res.tensor(name), want[name], ag.TOLERANCE["float16"])["ok"], name


@pytest.mark.slow
def test_balanced_merged_causal_run_agrees_between_engines():
    """The load-balance and merge options run the same in the JAX engine as in the reference
    (timed schedule: status, logs, timing; dQ / dK / dV within fp32 rounding of each other)."""
    p = ag.build(**SMALL, assign="balanced", merge=True)
    eng, ref = simulate(p, schedule="timed")[0], run_reference(p, schedule="timed")
    assert eng.status == ref.status == Status.OK
    assert eng.outcome() == ref.outcome() and eng.steps == ref.steps
    for name in ("dq", "dk", "dv"):
        np.testing.assert_allclose(eng.tensor(name), ref.tensor(name), rtol=1e-4, atol=1e-4)


def test_sizes_beyond_gm_or_the_float64_reference_are_config_errors():
    with pytest.raises(ConfigError, match="2 GiB at most"):
        ag.build(s1=10**8)
    with pytest.raises(ConfigError, match="float64 reference needs"):
        ag.build(s1=65536, s2=65536)

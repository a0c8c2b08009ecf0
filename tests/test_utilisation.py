"""Load balance of timed runs (``ascend_jax.utilisation``): a two-AIC hand case with every time
written out, on both engines; the JSON key; the summary line; the report plot."""

from __future__ import annotations

import json

import pytest

import ascend_jax as aj
from ascend_jax.cli import main
from ascend_jax.utilisation import AicTime, AivStall, compute_utilisation, summary_line

FREQ = 1850.0


def _two_aics() -> aj.CubeGroupProgram:
    """AICs 0 and 1, one queue each (P = 1), the ``free`` callback. AIV 0 posts two messages and
    a QUIT into queue 0; AIV 1 only a QUIT into queue 1."""
    k = aj.CubeGroupKernel(name="two-aics")
    g = k.create_cube_res_group("g", 0, 4, 2, "free")
    a0, a1 = k.aiv(0), k.aiv(1)
    a0.assign_queue(g, 0)
    a1.assign_queue(g, 1)
    a0.post(g)
    a0.post(g)
    a0.quit(g)
    a1.quit(g)
    return k.compile()


# Default costs (cycles): alloc 40, post 120, quit 40, dispatch 80, poll 40, free 40.
# AIV 0: alloc 0-40, post 40-160, alloc 160-200, post 200-320, alloc 320-360, quit 360-400.
# AIV 1: alloc 0-40, quit 40-80.
# AIC 0: blocked 0-160, dispatch 160-240, free 240-280, blocked 280-320, dispatch 320-400,
#        free 400-440, QUIT poll 440-480: busy 280, blocked 200, idle 0.
# AIC 1: blocked 0-80, QUIT poll 80-120: busy 40, blocked 80, idle 480 - 120 = 360.
# Kernel 480 cycles. No AIV stalls (every slot is FREE when allocated, no waits).
KERNEL = 480.0
AIC = {0: (280.0, 200.0, 0.0), 1: (40.0, 80.0, 360.0)}


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["reference", "jax"])
def test_two_aic_hand_case(engine):
    p = _two_aics()
    r = aj.run_reference(p, schedule="timed") if engine == "reference" else aj.simulate(p, schedule="timed")[0]
    u = compute_utilisation(r)
    assert u.kernel_us == pytest.approx(KERNEL / FREQ)
    for core, (busy, blocked, idle) in AIC.items():
        assert u.aic[core] == AicTime(
            busy_us=pytest.approx(busy / FREQ),
            blocked_us=pytest.approx(blocked / FREQ),
            idle_us=pytest.approx(idle / FREQ),
            utilisation=pytest.approx(busy / KERNEL),
        )
    assert u.aiv == {0: AivStall(0.0, 0.0, 0.0), 1: AivStall(0.0, 0.0, 0.0)}
    assert u.mean == pytest.approx((280 + 40) / 2 / KERNEL)
    assert (u.min, u.max) == (pytest.approx(40 / KERNEL), pytest.approx(280 / KERNEL))
    assert u.max_min_ratio == pytest.approx(7.0)
    assert u.imbalance == pytest.approx(280 / 160 - 1)  # max busy / mean busy - 1 = 0.75
    assert (u.busiest, u.least_busy) == (0, 1)
    assert (u.aiv_stall_mean_us, u.aiv_stall_max_us, u.most_stalled) == (0.0, 0.0, 0)


@pytest.mark.slow
def test_backpressure_and_wait_stalls():
    """One AIC, one queue: the AIV posts five messages into its four-slot ring, then waits for
    the last to be freed. A slow AIC (1,000-cycle dispatch) fills the ring, so the fifth
    AllocMessage stalls (backpressure), and the wait stalls until the AIC frees the fifth message."""
    k = aj.CubeGroupKernel(name="ring")
    g = k.create_cube_res_group("g", 0, 2, 1, "free")
    a = k.aiv(0)
    a.assign_queue(g, 0)
    for _ in range(5):
        a.post(g)
    a.wait(g)
    a.quit(g)
    p = k.compile()
    cost = aj.CostModel(dispatch=1000.0)
    # AIV: four alloc+post pairs end at 160, 320, 480, 640; the fifth alloc needs slot 0, freed by
    # the AIC at 160 (blocked) + 1000 (dispatch) + 40 (free) = 1200: alloc stall 1200 - 640 = 560.
    # Its post ends at 1200 + 40 + 120 = 1360. Depths 1..3 are freed at 2240, 3280, 4320 and the
    # fifth message (depth 0 again) at 5360: the wait (Wait<true> on it) stalls 5360 - 1360 = 4000.
    r = aj.run_reference(p, schedule="timed", cost=cost)
    assert r.timing == aj.simulate(p, schedule="timed", costs=cost)[0].timing
    u = compute_utilisation(r)
    assert u.aiv[0] == AivStall(
        alloc_stall_us=pytest.approx(560 / FREQ),
        wait_stall_us=pytest.approx(4000 / FREQ),
        stall_us=pytest.approx(4560 / FREQ),
    )
    assert (u.aiv_stall_max_us, u.most_stalled) == (pytest.approx(4560 / FREQ), 0)


def test_needs_a_timed_result():
    r = aj.run_reference(_two_aics())
    with pytest.raises(ValueError, match="schedule='timed'"):
        compute_utilisation(r)
    with pytest.raises(ValueError, match="pass res"):
        compute_utilisation(aj.simulate(_two_aics(), schedule="timed"))


def test_json_key_and_summary_line(capsys):
    p = _two_aics()
    r = aj.run_reference(p, schedule="timed")
    js = r.to_json()
    assert js["utilisation"] == compute_utilisation(r).to_json()
    assert js["utilisation"]["summary"] == {
        "aics": 2,
        "mean": pytest.approx(160 / KERNEL),
        "min": pytest.approx(40 / KERNEL),
        "max": pytest.approx(280 / KERNEL),
        "max_min_ratio": pytest.approx(7.0),
        "imbalance": pytest.approx(0.75),
        "busiest": 0,
        "least_busy": 1,
        "aiv_stall_mean_us": 0.0,
        "aiv_stall_max_us": 0.0,
        "most_stalled": 0,
    }
    assert "utilisation" not in aj.run_reference(p).to_json()  # lockstep: no timing, no key
    assert summary_line(compute_utilisation(r)) == (
        "AIC utilisation (busy / kernel): mean 33.3%, min 8.3% (aic1), max 58.3% (aic0); busy max/min 7, "
        "imbalance 0.750; AIV stall mean 0.000 us, max 0.000 us (aiv0)"
    )


def test_cli_json_and_summary(capsys):
    code = main(["run", "models/merge_example.toml", "--schedule", "timed", "--json"])
    js = json.loads(capsys.readouterr().out)
    assert code == 0
    # merge_example: one AIC busy 640 of 800 cycles, blocked 160 (docs/reference/result-json.md)
    assert js["utilisation"]["aic"]["0"] == {
        "busy_us": pytest.approx(640 / FREQ),
        "blocked_us": pytest.approx(160 / FREQ),
        "idle_us": 0.0,
        "utilisation": pytest.approx(0.8),
    }
    assert js["utilisation"]["aiv"]["4"]["wait_stall_us"] == pytest.approx(440 / FREQ)
    assert main(["run", "models/merge_example.toml", "--schedule", "timed"]) == 0
    out = capsys.readouterr().out
    assert "AIC utilisation (busy / kernel): mean 80.0%, min 80.0% (aic0), max 80.0% (aic0)" in out


def test_means_add_left_to_right_on_every_python():
    """Python 3.12's ``sum`` compensates rounding (``sum([0.1] * 10) == 1.0`` there, 0.9999999999999999
    on 3.11): the utilisation means add left to right, so the result JSON is the same on both."""
    from ascend_jax import utilisation

    assert utilisation._sum([0.1] * 10) == 0.9999999999999999
    assert utilisation._sum([]) == 0.0

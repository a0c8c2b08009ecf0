"""Device fidelity: the seed's and the official sample's callbacks, the official sample's protocol,
and the default Wait after a QUIT. Every expected value is written out; both engines must agree.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

import ascend_jax as aj
from ascend_jax import Status
from ascend_jax.message import CUBE_MATMUL_MSG
from tests._models import load

ROOT = Path(__file__).resolve().parents[2]
V, F, Q = "VALID", "FAKE", "QUIT"
TILING = dict(M=16, N=16, Ka=32, Kb=32, singleCoreM=16, singleCoreN=16, singleCoreK=32, baseM=16, baseN=16, baseK=16)
MATMUL = dict(a="float16", b="float16", c="float32", bias="float32")


def both(program):
    ref, [eng] = aj.run_reference(program), aj.simulate(program)
    assert eng.outcome() == ref.outcome() and eng.steps == ref.steps, (ref.to_json(), eng.to_json())
    return ref, eng


def _merge_kernel(callback: str, fake_followers: int, skip: int = 2):
    """3 queues on one AIC; queue 0 posts a leader with ``skip``, queues 1.. post FAKE followers
    (only ``fake_followers`` of them), then one more FAKE in queue 2 at depth 1 unless covered."""
    k = aj.CubeGroupKernel(max_steps=200)
    a = k.alloc("a", (3, 16, 32), "float16", init="random", seed=3)
    b = k.alloc("b", (32, 16), "float16", init="random", seed=4)
    c = k.alloc("c", (3, 16, 16), "float32")
    g = k.create_cube_res_group("g", 0, 2, 3, callback, CUBE_MATMUL_MSG, matmul=MATMUL, tiling=TILING)
    fields = dict(skipCnt=skip, aAddr="a", bAddr="b", cAddr="c", aGap=16 * 32, cGap=16 * 16, tailM=16, tailN=16)
    fields.update(tailK=32, lastTailM=16, mOrgShape=16, nOrgShape=16, kaOrgShape=32, kbOrgShape=32)
    for q in range(3):
        aiv = k.aiv(q)
        aiv.assign_queue(g, q)
        if q == 0:
            aiv.post(g, fields)
        elif q <= fake_followers:
            aiv.fake(g)
        else:
            aiv.post(g, {**fields, "skipCnt": 0, "aAddr": f"a+{q * 16 * 32 * 2}", "cAddr": f"c+{q * 16 * 16 * 4}"})
        aiv.quit(g)
    return k.compile(), (a, b, c)


@pytest.mark.slow
def test_seed_callback_merges_like_the_seed_and_computes_every_task():
    program, _ = _merge_kernel("seed", fake_followers=2)
    ref, eng = both(program)
    assert ref.status == Status.OK
    assert ref.received == {0: [(0, 0, V), (0, 1, Q), (1, 1, Q), (2, 1, Q)]}
    a = program.gm.read("a").astype(np.float64)
    b = program.gm.read("b").astype(np.float64)
    np.testing.assert_allclose(eng.tensor("c"), a @ b, rtol=2e-3, atol=2e-3)  # three tiles from one leader


def _lap_kernel(callback: str):
    """One queue posts four tasks (depths 0..3), then a FAKE into depth 0 again (its payload is the
    first task's, stale), then QUIT: a FAKE that no leader's skip covers."""
    k = aj.CubeGroupKernel(max_steps=200)
    k.alloc("a", (4, 16, 32), "float16", init="random", seed=3)
    k.alloc("b", (32, 16), "float16", init="random", seed=4)
    k.alloc("c", (4, 16, 16), "float32")
    g = k.create_cube_res_group("g", 0, 2, 1, callback, CUBE_MATMUL_MSG, matmul=MATMUL, tiling=TILING)
    aiv = k.aiv(0)
    aiv.assign_queue(g, 0)
    for t in range(4):
        fields = dict(aAddr=f"a+{t * 16 * 32 * 2}", bAddr="b", cAddr=f"c+{t * 16 * 16 * 4}", tailM=16, tailN=16)
        fields.update(tailK=32, lastTailM=16, mOrgShape=16, nOrgShape=16, kaOrgShape=32, kbOrgShape=32)
        aiv.post(g, fields)
    aiv.fake(g)
    aiv.quit(g)
    return k.compile()


@pytest.mark.slow
def test_seed_callback_hangs_on_a_fake_that_no_skip_covers():
    # the FAKE reaches Call: the seed's callback computes on the stale payload (task 0 again) and
    # then FreeMessage(rcvMsg, VALID) waits for VALID on a FAKE slot forever
    ref, eng = both(_lap_kernel("seed"))
    assert ref.status == Status.DEADLOCK
    assert ref.received == {0: [(0, 0, V), (0, 1, V), (0, 2, V), (0, 3, V), (0, 0, F)]}
    # the AIV has finished (its QUIT sits at depth 1); only the AIC is stuck
    assert ref.blocked == [{"core": "aic0", "group": "g", "queue": 0, "depth": 0, "until": "VALID"}]


@pytest.mark.slow
def test_matmul_callback_is_the_tolerant_variant_of_the_same_program():
    ref, _ = both(_lap_kernel("matmul"))
    assert ref.status == Status.OK  # the uncovered FAKE is freed without compute
    assert ref.received[0][4] == (0, 0, F)


def _load_model(name: str):
    return load(name)


@pytest.mark.slow
def test_official_sample_protocol_receives_in_the_expected_order():
    sample = _load_model("cube_group_custom")
    ref, eng = both(sample.build())
    assert ref.status == Status.OK and ref.steps == 25
    assert ref.received == sample.expected_received()
    assert ref.received[6][:5] == [(0, 0, V), (4, 0, V), (5, 0, V), (6, 0, V), (7, 0, V)]
    assert sum(len(v) for v in ref.received.values()) == 93  # 45 tasks + 48 QUITs
    assert ref.slot_states(0)[1] == [Q] * 48 and ref.slot_states(0)[0] == ["FREE"] * 48


def test_sample_callback_frees_an_uncovered_fake_by_its_stale_func_id():
    # one AIC, four queues. Lap 1: queue 0 posts a funcID-1 leader covering queues 1..3 (FAKEs);
    # depths 1..3 hold funcID-0 tasks. Lap 2, depth 0 again: queue 0 writes a FAKE that no leader
    # covers; its payload is lap 1's (funcID 1), so FreeMessage(rcvMsg, VALID) waits forever.
    # With a stale funcID 0 instead, FreeMessage(rcvMsg) has no wait state and the run ends ok.
    def build(lap1_func):
        k = aj.CubeGroupKernel(max_steps=200)
        g = k.create_cube_res_group("g", 0, 2, 4, "sample")
        for q in range(4):
            aiv = k.aiv(q)
            aiv.assign_queue(g, q)
            if q == 0:
                aiv.post(g, {"funcID": lap1_func})
            elif lap1_func == 1:
                aiv.fake(g)
            else:
                aiv.post(g, {"funcID": 0})
            for _ in range(3):
                aiv.post(g, {"funcID": 0})
            aiv.fake(g) if q == 0 else aiv.post(g, {"funcID": 0})
            aiv.quit(g)
        return k.compile()

    ref, _ = both(build(1))
    assert ref.status == Status.DEADLOCK
    assert ref.blocked[0] == {"core": "aic0", "group": "g", "queue": 0, "depth": 0, "until": "VALID"}
    ref, _ = both(build(0))
    assert ref.status == Status.OK
    assert ref.received[0][16] == (0, 0, "FAKE")  # lap 2's uncovered FAKE, freed with no wait


def test_default_wait_after_quit_waits_on_the_latest_post():
    k = aj.CubeGroupKernel(max_steps=100)
    g = k.create_cube_res_group("g", 0, 2, 1, "merge")
    aiv = k.aiv(0)
    aiv.assign_queue(g, 0)
    aiv.post(g, {"skipCnt": 0})
    aiv.quit(g)
    aiv.wait(g)  # SendQuitMsg returns nothing: this waits on the post at depth 0, which the AIC frees
    ref, _ = both(k.compile())
    assert ref.status == Status.OK
    assert ref.received == {0: [(0, 0, V), (0, 1, Q)]}


# -- build modes ---------------------------------------------------------------------------------
class SkipOnly:
    """Frees the received message and skips ``skipCnt`` columns, freeing no followers."""

    required_fields = ("skipCnt",)

    def init(self, mm, tiling):
        pass

    def call(self, mm, msg, handle):
        handle.free_message(msg)
        handle.set_skip_msg(handle.xp.where(msg.state == aj.CubeMsgState.VALID, msg.skipCnt, 0))


def _skip_kernel(build: str):
    """One AIC, 4 queues (P = n = 4): queue 1's message skips 3 columns from column 1, past the row."""
    k = aj.CubeGroupKernel(build=build, max_steps=200)
    g = k.create_cube_res_group("g", 0, 2, 4, callback=SkipOnly())
    for q in range(4):
        aiv = k.aiv(q)
        aiv.assign_queue(g, q)
        aiv.post(g, {"skipCnt": 3 if q == 1 else 0})
        aiv.post(g)
        aiv.quit(g)
    return k.compile()


def test_debug_build_stops_at_a_skip_past_the_row():
    # the callback frees its message, then SetSkipMsg asserts (kernel_operator_cube_group_handle_impl.h,
    # SetSkipMsg): the free is done before the AIC stops
    ref, _ = both(_skip_kernel("cpu"))
    assert ref.status == Status.ERROR and ref.error["code"] == "SKIP_CROSSES_ROW"
    assert ref.received == {0: [(0, 0, V), (1, 0, V)]}
    assert ref.slot_states(0)[0] == ["FREE", "FREE", V, V]
    assert ref.asserts_violated == []
    assert "asserts_violated" not in ref.to_json()


def test_release_build_moves_the_cursor_as_the_device_does():
    # after the skip aivWork = msgPos = 4; the release moves msgPos to 5 (row 1, column 1) while
    # aivWork restarts at 0: for the rest of the lap the AIC reads column c + 1 believing it is at
    # column c. It never reads (2, 0), (3, 0) or (0, 1), retires columns by the QUITs it happens to
    # read, and ends waiting on (0, 3), which no one fills
    ref, eng = both(_skip_kernel("release"))
    assert ref.received == {
        0: [(0, 0, V), (1, 0, V), (1, 1, V), (2, 1, V), (3, 1, V), (0, 2, Q), (2, 2, Q)],
    }
    assert ref.status == Status.DEADLOCK and ref.steps == 14
    assert ref.blocked == [{"core": "aic0", "group": "g", "queue": 0, "depth": 3, "until": "NOT_FREE"}]
    assert ref.slot_states(0)[0] == ["FREE", "FREE", V, V]
    assert ref.asserts_violated[0] == {
        "code": "SKIP_CROSSES_ROW",
        "core": "aic0",
        "group": "g",
        "queue": 1,
        "depth": 0,
        "message": aj.ErrorCode.SKIP_CROSSES_ROW.describe(),
    }
    assert eng.to_json()["asserts_violated"] == ref.asserts_violated


class FreeWaitingFor:
    """Frees the received message with a forbidden wait state (FREE or QUIT)."""

    required_fields = ()

    def __init__(self, state):
        self.state = state

    def init(self, mm, tiling):
        pass

    def call(self, mm, msg, handle):
        handle.free_message(msg, self.state)


def _wait_kernel(build: str, state):
    k = aj.CubeGroupKernel(build=build, max_steps=100)
    g = k.create_cube_res_group("g", 0, 2, 1, callback=FreeWaitingFor(state))
    aiv = k.aiv(0)
    aiv.assign_queue(g, 0)
    aiv.post(g)
    aiv.quit(g)
    return k.compile()


@pytest.mark.slow
def test_release_free_waiting_for_free_spins_forever():
    # issue 24: FreeMessage has no assert on its wait state (kernel_operator_cube_group_handle_impl.h,
    # FreeMessage), so every build spins; the broken constraint is an api_misuse finding
    for build in ("cpu", "release"):
        ref, _ = both(_wait_kernel(build, aj.CubeMsgState.FREE))
        assert ref.status == Status.DEADLOCK  # FreeMessage(msg, FREE) on a VALID slot never returns
        assert ref.blocked == [{"core": "aic0", "group": "g", "queue": 0, "depth": 0, "until": "FREE"}]
        assert ref.asserts_violated == []
        assert [a["code"] for a in ref.api_misuse] == ["BAD_WAIT_STATE"]


def test_release_free_waiting_for_quit_erases_the_quit():
    # queue 0 posts at depth 0 and quits at depth 1; the callback's FreeMessage(msg + 4, QUIT)
    # (msg + P: the next row) waits for that QUIT and overwrites it with FREE
    class EraseNextQuit(FreeWaitingFor):
        def call(self, mm, msg, handle):
            handle.free_message(msg)
            handle.free_message(msg + handle.aiv_per_aic, aj.CubeMsgState.QUIT)

    k = aj.CubeGroupKernel(build="release", max_steps=100)
    g = k.create_cube_res_group("g", 0, 2, 1, callback=EraseNextQuit(None))
    aiv = k.aiv(0)
    aiv.assign_queue(g, 0)
    aiv.post(g)
    aiv.quit(g)
    ref, _ = both(k.compile())
    assert ref.slot_states(0)[1] == ["FREE"]  # the QUIT was erased before the AIC read it
    assert ref.status == Status.DEADLOCK  # so the AIC never leaves its loop
    assert ref.asserts_violated == []  # no assert holds it (issue 24): a finding, not an assert
    assert [a["code"] for a in ref.api_misuse] == ["BAD_WAIT_STATE"]


def test_cli_build_release_lists_the_asserts(capsys):
    import json

    from ascend_jax.cli import main

    code = main(["run", str(ROOT / "docs/examples/f7_skip_past_row.toml"), "--build", "release", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 3 and out["status"] == "deadlock"  # the merge waits for a FAKE the follower never posts
    # issue 24: the merge calls SetSkipMsg after its frees, so the CPU twin hangs in the same
    # FreeMessage(msg + 1, FAKE) and never reaches the assert: nothing to list
    assert out["asserts_violated"] == []
    assert out["blocked"] == [{"core": "aic0", "group": "g", "queue": 1, "depth": 0, "until": "FAKE"}]
    code = main(["run", str(ROOT / "docs/examples/f7_skip_past_row.toml"), "--json"])  # cpu by default
    out = json.loads(capsys.readouterr().out)
    assert code == 3 and out["status"] == "deadlock" and "asserts_violated" not in out


# -- effects kernel authors trip on --------------------------------------------------------------
def _mte3_kernel(fake_pipe: str):
    """Queue 0 posts in MTE3 mode, then a FAKE (after an alloc in ``fake_pipe`` mode), then quits in
    MTE3 mode; queue 1 posts the leader that covers the FAKE."""
    k = aj.CubeGroupKernel(max_steps=100)
    g = k.create_cube_res_group("g", 0, 2, 2, callback="merge")
    lead, follow = k.aiv(0), k.aiv(1)
    lead.assign_queue(g, 0)
    follow.assign_queue(g, 1)
    lead.post(g, {"skipCnt": 0})
    follow.post(g, {"skipCnt": 0}, pipe="MTE3")
    lead.post(g, {"skipCnt": 1})
    follow.fake(g, pipe=fake_pipe)
    lead.quit(g)
    follow.quit(g, pipe="MTE3")
    return k.compile()


def test_mte3_alloc_after_a_fake_hangs_f13():
    ok, _ = both(_mte3_kernel("SCALAR"))  # the FAKE's alloc was SCALAR: the flag is still set
    # but the last MTE3 alloc carried a QUIT: ~KfcWorkspace waits for the flag forever (issue 24.3)
    assert ok.status == Status.DEADLOCK
    assert ok.blocked == [{"core": "aiv1", "until": "MTE3_FLAG", "call": "~KfcWorkspace"}]
    assert ok.received == {0: [(0, 0, V), (1, 0, V), (0, 1, V), (0, 2, Q), (1, 2, Q)]}  # (1, 1) merged
    # an MTE3 alloc before PostFakeMsg takes the MTE3->S flag and nothing sets it again
    ref, _ = both(_mte3_kernel("MTE3"))
    assert ref.status == Status.DEADLOCK
    assert ref.blocked == [
        {"core": "aic0", "group": "g", "queue": 1, "depth": 2, "until": "NOT_FREE"},
        {"core": "aiv1", "group": "g", "queue": 1, "depth": 2, "until": "MTE3_FLAG"},
    ]
    assert ref.received == {0: [(0, 0, V), (1, 0, V), (0, 1, V), (0, 2, Q)]}


def test_scenario_pipe_key_reaches_the_program():
    doc = {
        "group": [{"name": "g", "block_start": 0, "block_size": 2, "msg_queue_size": 1}],
        "aiv": [
            {
                "block_idx": 0,
                "ops": [
                    {"op": "assign_queue", "group": "g", "queue": 0},
                    {"op": "fake", "group": "g", "pipe": "MTE3"},
                    {"op": "quit", "group": "g", "pipe": "MTE3"},
                ],
            }
        ],
    }
    ref, _ = both(aj.load_scenario(doc))
    assert ref.status == Status.DEADLOCK
    assert ref.blocked[-1] == {"core": "aiv0", "group": "g", "queue": 0, "depth": 1, "until": "MTE3_FLAG"}


def _sync_kernel(before_quit: bool, aiv_only: bool = False):
    k = aj.CubeGroupKernel(max_steps=200)
    g = k.create_cube_res_group("g", 0, 2, 2, callback="merge")
    for q in range(2):
        aiv = k.aiv(q)
        aiv.assign_queue(g, q)
        aiv.post(g, {"skipCnt": 0})
        if before_quit:
            aiv.sync_all(aiv_only)
        aiv.quit(g)
        if not before_quit:
            aiv.sync_all(aiv_only)
    return k.compile()


@pytest.mark.slow
def test_sync_all_before_the_quits_deadlocks_f14():
    ok, _ = both(_sync_kernel(before_quit=False))
    assert ok.status == Status.OK
    # steps 1-4: allocs, posts, the quits' allocs and QUITs while the AIC serves (0,0) and (1,0);
    # 5: the AIC frees (1,0); 6-7: it reads both QUITs and leaves its loop; 8: SyncAll returns
    assert ok.steps == 8
    ref, _ = both(_sync_kernel(before_quit=True))
    # the AIC leaves CreateCubeResGroup only after every QUIT, so it never reaches its SyncAll
    assert ref.status == Status.DEADLOCK
    assert ref.blocked == [
        {"core": "aic0", "group": "g", "queue": 0, "depth": 1, "until": "NOT_FREE"},
        {"core": "aiv0", "until": "SYNC_ALL"},
        {"core": "aiv1", "until": "SYNC_ALL"},
    ]
    for schedule in ("timed", "random"):
        eng = aj.simulate(_sync_kernel(before_quit=False), schedule=schedule)[0]
        ref = aj.run_reference(_sync_kernel(before_quit=False), schedule=schedule)
        assert eng.status == ref.status == Status.OK
    assert (
        aj.simulate(_sync_kernel(False), schedule="timed")[0].timing
        == aj.run_reference(_sync_kernel(False), schedule="timed").timing
    )


@pytest.mark.slow
def test_unzeroed_workspace_relaunch_f10():
    """zero_workspace = false: the reported launch starts from the first launch's slots."""
    k = aj.CubeGroupKernel(zero_workspace=False, max_steps=100)
    g = k.create_cube_res_group("g", 0, 2, 2, callback="merge")
    for q in range(2):
        aiv = k.aiv(q)
        aiv.assign_queue(g, q)
        aiv.post(g, {"skipCnt": 0})
        aiv.quit(g)
    ref, eng = both(k.compile())
    # the first launch left QUITs at depth 1: the AIC reads them after this launch's two tasks and
    # leaves its loop, while the AIVs' allocs for their own QUITs spin on those slots forever
    assert ref.status == Status.DEADLOCK and ref.steps == 8
    assert ref.received == {0: [(0, 0, V), (1, 0, V), (0, 1, Q), (1, 1, Q)]}
    assert ref.blocked == [
        {"core": "aiv0", "group": "g", "queue": 0, "depth": 1, "until": "FREE"},
        {"core": "aiv1", "group": "g", "queue": 1, "depth": 1, "until": "FREE"},
    ]
    fresh, _ = both(dataclasses.replace(k.compile(), zero_workspace=True))
    assert fresh.status == Status.OK


@pytest.mark.slow
def test_scenario_zero_workspace_key():
    doc = {
        "zero_workspace": False,
        "group": [{"name": "g", "block_start": 0, "block_size": 2, "msg_queue_size": 1}],
        "aiv": [
            {"block_idx": 0, "ops": [{"op": "assign_queue", "group": "g", "queue": 0}, {"op": "quit", "group": "g"}]}
        ],
    }
    ref, _ = both(aj.load_scenario(doc))
    # the old QUIT at depth 0 retires the column at once; the new QUIT's alloc spins on it
    assert ref.status == Status.DEADLOCK and ref.received == {0: [(0, 0, Q)]}

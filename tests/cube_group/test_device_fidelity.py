"""Device fidelity II (issue 24): asserts where the code has them, checks the device lacks as
``api_misuse`` findings, the ``~KfcWorkspace`` MTE3 wait, SyncAll's two forms. Every behaviour is
run in both engines, which must agree exactly; each test names the source it follows.
"""

from __future__ import annotations

from pathlib import Path

import ascend_jax as aj
from ascend_jax import Status
from ascend_jax.cube_group.status import API_MISUSE, ErrorCode

ROOT = Path(__file__).resolve().parents[2]
V, F, Q = "VALID", "FAKE", "QUIT"


def both(program, schedule="lockstep"):
    ref, [eng] = aj.run_reference(program, schedule=schedule), aj.simulate(program, schedule=schedule)
    assert eng.outcome() == ref.outcome() and eng.steps == ref.steps, (ref.to_json(), eng.to_json())
    assert eng.to_json() == ref.to_json()
    return ref


class Calls:
    """A callback made of a fixed list of calls: ("free", offset, wait) or ("skip", k)."""

    required_fields = ()

    def __init__(self, *calls):
        self.calls = calls

    def __eq__(self, other):
        return type(other) is Calls and other.calls == self.calls

    def __hash__(self):
        return hash(self.calls)

    def init(self, mm, tiling):
        pass

    def call(self, mm, msg, handle):
        for c in self.calls:
            if c[0] == "skip":
                handle.set_skip_msg(c[1])
            else:
                handle.free_message(msg + c[1], c[2])


def _row(callback, build="cpu", follower="fake", queues=2, aics=1):
    """``aics`` AICs with ``queues`` queues in all; queue 0 posts, the others post a FAKE (or
    ``follower``: "post"), then every queue quits."""
    k = aj.CubeGroupKernel(build=build, max_steps=200)
    g = k.create_cube_res_group("g", 0, 2 * aics, queues, callback=callback)
    for q in range(queues):
        aiv = k.aiv(q)
        aiv.assign_queue(g, q)
        if q == 0 or follower == "post":
            aiv.post(g)
        else:
            aiv.fake(g)
        aiv.quit(g)
    return k.compile()


# -- 24.2: an assert fires at the call that holds it, in program order ---------------------------------
def test_skip_assert_fires_after_the_frees_before_it():
    # kernel_operator_cube_group_handle_impl.h, SetSkipMsg: the assert is in SetSkipMsg, so the frees
    # the callback requested before it are done first (here both slots of the row)
    cb = Calls(("free", 0, None), ("free", 1, aj.CubeMsgState.FAKE), ("skip", 2))
    for build in ("cpu", "npu-debug"):
        r = both(_row(cb, build))
        assert r.status == Status.ERROR and r.error["code"] == "SKIP_CROSSES_ROW"
        assert r.slot_states(0)[0] == ["FREE", "FREE"]
        assert r.received == {0: [(0, 0, V)]}
    r = both(_row(cb, "release"))
    assert r.error is None and [a["code"] for a in r.asserts_violated] == ["SKIP_CROSSES_ROW"]


def test_skip_past_the_row_hangs_in_the_free_before_the_assert_f7():
    # the seed's and the sample's callbacks (and merge) call SetSkipMsg after FreeMessage(msg + i, FAKE):
    # with no FAKE in queue 1 every build hangs there and never reaches the assert (issue 24.2)
    program = aj.load_scenario(ROOT / "docs/examples/f7_skip_past_row.toml")
    for build in ("cpu", "npu-debug", "release"):
        import dataclasses

        r = both(dataclasses.replace(program, build=build))
        assert r.status == Status.DEADLOCK and r.error is None and r.asserts_violated == []
        assert r.blocked == [{"core": "aic0", "group": "g", "queue": 1, "depth": 0, "until": "FAKE"}]


def test_only_the_first_failed_assert_of_an_aic_is_listed():
    # the CPU twin stops at its first failed assert (kernel_operator_cube_group_handle_impl.h,
    # SetSkipMsg), so a release run lists one per AIC however often it passes the check
    cb = Calls(("free", 0, None), ("skip", 2))  # every message skips past the row of two
    r = both(_row(cb, "release", follower="post"))
    assert len(r.received[0]) > 1  # the AIC passed the failing SetSkipMsg more than once
    assert [(a["code"], a["queue"]) for a in r.asserts_violated] == [("SKIP_CROSSES_ROW", 0)]


# -- 24.2: checks the device does not have are api_misuse findings --------------------------------
def test_bad_wait_state_is_a_finding_and_the_free_spins():
    # kernel_operator_cube_group_handle_impl.h, FreeMessage: no assert on waitState; it spins until the
    # slot holds the state asked for
    for build in ("cpu", "release"):
        r = both(_row(Calls(("free", 0, aj.CubeMsgState.FREE)), build))
        assert r.status == Status.DEADLOCK and r.error is None
        assert r.blocked[0] == {"core": "aic0", "group": "g", "queue": 0, "depth": 0, "until": "FREE"}
        [m] = r.api_misuse
        assert m["kind"] == "api_misuse" and m["code"] == "BAD_WAIT_STATE" and m["wait_state"] == 0
        assert m["constraint"] == ErrorCode.BAD_WAIT_STATE.describe()
        assert r.to_json()["api_misuse"] == r.api_misuse


def test_free_out_of_block_writes_free_into_another_aics_block():
    # kernel_operator_cube_group_handle_impl.h, FreeMessage: no bounds check; FREE lands where msg + i
    # points. One queue per AIC (P = 1): AIC 0's msg + 4 is AIC 1's depth-0 slot, queue 1's task,
    # which is freed before AIC 1 reads it
    cb = Calls(("free", 0, None), ("free", 4, None))
    r = both(_row(cb, "cpu", follower="post", queues=2, aics=2))
    assert r.status != Status.ERROR and r.error is None
    codes = [(m["code"], m["core"], m["offset"]) for m in r.api_misuse]
    assert ("FREE_OUT_OF_BLOCK", "aic0", 4) in codes


def test_free_of_an_unused_column_is_a_finding():
    # kernel_operator_cube_group_handle_impl.h, FreeMessage: no check of the column either. 3 queues on
    # 2 AICs (P = 2): the last AIC serves one column; its msg + 1 is unused
    cb = Calls(("free", 0, None), ("free", 1, None))
    r = both(_row(cb, "cpu", follower="post", queues=3, aics=2))
    assert r.error is None
    assert ("FREE_UNUSED_COLUMN", "aic1") in [(m["code"], m["core"]) for m in r.api_misuse]
    assert {ErrorCode.FREE_OUT_OF_BLOCK, ErrorCode.FREE_UNUSED_COLUMN, ErrorCode.BAD_WAIT_STATE} == API_MISUSE
    assert not any(c.stops(b) for c in API_MISUSE for b in ("cpu", "npu-debug", "release"))


# -- 24.3: ~KfcWorkspace waits on the MTE3 flag -------------------------------------------------------
def _mte3_program(last_post_mte3: bool):
    k = aj.CubeGroupKernel(max_steps=100)
    g = k.create_cube_res_group("g", 0, 2, 1, callback="free")
    aiv = k.aiv(0)
    aiv.assign_queue(g, 0)
    aiv.post(g, pipe="MTE3")
    if last_post_mte3:
        aiv.quit(g)  # SCALAR: the flag the MTE3 post set is still up
    else:
        aiv.quit(g, pipe="MTE3")  # the MTE3 alloc takes the flag; SetQuit never sets it again
    return k.compile()


def test_destructor_waits_for_the_mte3_flag():
    # kernel_operator_cube_group_handle_impl.h: KfcWorkspace::~KfcWorkspace on the AIV does
    # WaitFlag<HardEvent::MTE3_S>(evtID) (the constructor set it once); AllocMessage<MTE3_MODE> waits for
    # it, only PostMessage<MTE3_MODE> sets it again (PostFakeMsg and SetQuit never do)
    for schedule in ("lockstep", "timed"):
        r = both(_mte3_program(False), schedule)
        assert r.status == Status.DEADLOCK
        assert r.blocked == [{"core": "aiv0", "until": "MTE3_FLAG", "call": "~KfcWorkspace"}]
        assert r.received == {0: [(0, 0, V), (0, 1, Q)]}  # the AIC finished; only the AIV hangs
        assert both(_mte3_program(True), schedule).status == Status.OK


# -- 24.4: SyncAll defaults to the AIVs only ----------------------------------------------------------
def _sync_program(aiv_only):
    k = aj.CubeGroupKernel(max_steps=100)
    g = k.create_cube_res_group("g", 0, 2, 2, callback="free")
    for q in range(2):
        aiv = k.aiv(q)
        aiv.assign_queue(g, q)
        aiv.post(g)
        aiv.sync_all() if aiv_only is None else aiv.sync_all(aiv_only=aiv_only)
        aiv.quit(g)
    return k.compile()


def test_sync_all_default_is_aiv_only_and_all_core_form_deadlocks_f14():
    # kernel_operator_block_sync_intf.h, SyncAll: template <bool isAIVOnly = true>
    for schedule in ("lockstep", "timed"):
        assert both(_sync_program(None), schedule).status == Status.OK
        assert both(_sync_program(True), schedule).status == Status.OK
        r = both(_sync_program(False), schedule)
        assert r.status == Status.DEADLOCK
        assert {"core": "aiv0", "until": "SYNC_ALL"} in r.blocked


def test_sync_all_scenario_key():
    # kernel_operator_block_sync_intf.h, SyncAll<isAIVOnly = true>: a scenario's sync_all op without
    # aiv_only is the default (AIV-only) form
    doc = {
        "group": [{"name": "g", "block_start": 0, "block_size": 2, "msg_queue_size": 1}],
        "aiv": [
            {
                "block_idx": 0,
                "ops": [
                    {"op": "assign_queue", "group": "g", "queue": 0},
                    {"op": "sync_all", "aiv_only": False},
                    {"op": "sync_all"},
                    {"op": "quit", "group": "g"},
                ],
            }
        ],
    }
    ops = aj.load_scenario(doc).aivs[0][1]
    assert [o.aiv_only for o in ops if o.kind == "sync_all"] == [False, True]


# -- 24.8: GroupBarrier against group_barrier_impl.h ---------------------------------------------------
def _barrier(arrive_size, wait_size, programs):
    """One group (every AIV binds a queue and quits last) and barrier ``b``; ``programs``: per AIV
    a list of ("arrive", index), ("wait", index) or ("delay", cycles), run before the QUIT."""
    k = aj.CubeGroupKernel(max_steps=300)
    g = k.create_cube_res_group("g", 0, 2, len(programs), callback="free")
    b = k.group_barrier("b", arrive_size, wait_size)
    for v, ops in enumerate(programs):
        aiv = k.aiv(v)
        aiv.assign_queue(g, v)
        for op, x in ops:
            if op == "arrive":
                aiv.arrive(b, x)
            elif op == "wait":
                aiv.barrier_wait(b, x)
            else:
                aiv.delay(x)
        aiv.quit(g)
    return k.compile()


def test_barrier_first_arrive_does_not_wait():
    # group_barrier_impl.h, GroupBarrier::Arrive: only counter > 1 waits (the previous round's end)
    r = both(_barrier(1, 1, [[("arrive", 0)], []]))
    assert r.status == Status.OK
    assert r.barrier_arrive[0].tolist() == [1]  # every Arrive adds 1 to each copy of A


def test_barrier_second_arrive_waits_for_the_previous_rounds_waits():
    # GroupBarrier::Arrive: with counter = 2 it spins until W[i] == (counter - 1) * waitSize
    r = both(_barrier(1, 2, [[("arrive", 0), ("arrive", 0)], [("wait", 0)], []]))
    assert r.status == Status.DEADLOCK  # only one of the two waiters waited: W = 1, not 2
    assert {"core": "aiv0", "barrier": "b", "index": 0, "until": "W==2"} in r.blocked
    r = both(_barrier(1, 2, [[("arrive", 0), ("arrive", 0)], [("wait", 0)], [("wait", 1)]]))
    assert r.status == Status.OK and r.barrier_wait[0].tolist() == [2, 2]


def test_barrier_arrive_compares_with_equality():
    # GroupBarrier::Arrive spins while W != expected: one wait too many (W = 2 with waitSize 1)
    # leaves the second Arrive spinning forever
    r = both(_barrier(1, 1, [[("delay", 20), ("arrive", 0), ("arrive", 0)], [("wait", 0)], [("wait", 0)]]))
    assert r.status == Status.DEADLOCK
    assert {"core": "aiv0", "barrier": "b", "index": 0, "until": "W==1"} in r.blocked


def test_barrier_wait_waits_for_counter_times_arrive_size_arrivals():
    # group_barrier_impl.h, GroupBarrier::Wait: spins while A[j] < waitCounter * arriveSize
    r = both(_barrier(2, 1, [[("wait", 0)], [("arrive", 0)], []]))
    assert r.status == Status.DEADLOCK
    assert {"core": "aiv0", "barrier": "b", "index": 0, "until": "A>=2"} in r.blocked
    # ">=": three arrivals pass a wait for two
    r = both(_barrier(2, 1, [[("delay", 20), ("wait", 0)], [("arrive", 0)], [("arrive", 1)], [("arrive", 0)]]))
    assert r.status == Status.OK and r.barrier_arrive[0].tolist() == [3, 3]


def test_barrier_wait_after_arrive_uses_the_same_round():
    # GroupBarrier::Wait: waitCounter = counter - 1 after an Arrive (hasArrive), and counter stays
    r = both(_barrier(2, 2, [[("arrive", 0), ("wait", 0), ("arrive", 0), ("wait", 0)]] * 2))
    assert r.status == Status.OK
    assert r.barrier_arrive[0].tolist() == [4, 4] and r.barrier_wait[0].tolist() == [4, 4]


def test_barrier_wait_without_arrive_moves_to_the_next_round():
    # group_barrier_impl.h, GroupBarrier::Wait: without a preceding Arrive, waitCounter = counter and then
    # counter += 1, so a core that only waits needs counter * arriveSize arrivals on its second Wait
    r = both(_barrier(1, 1, [[("wait", 0), ("wait", 0)], [("arrive", 0)], []]))
    assert r.status == Status.DEADLOCK
    assert {"core": "aiv0", "barrier": "b", "index": 0, "until": "A>=2"} in r.blocked
    r = both(_barrier(1, 1, [[("wait", 0), ("wait", 0)], [("arrive", 0), ("arrive", 0)], []]))
    assert r.status == Status.OK and r.barrier_wait[0].tolist() == [2]


def test_barrier_constructor_debug_asserts_are_refused_in_every_build():
    # group_barrier_impl.h, GroupBarrier::GroupBarrier: ASCENDC_DEBUG_ASSERTs that arriveSize and waitSize
    # are in 1..GetBlockNum(); a release build would run on with them, which the model does not cover,
    # so the builder refuses them in every build, before either engine runs
    import pytest

    from ascend_jax.errors import ConfigError

    for build in ("cpu", "npu-debug", "release"):
        for arrive, wait, field in (
            (0, 1, "arrive_size"),
            (1, 0, "wait_size"),
            (49, 1, "arrive_size"),
            (1, 49, "wait_size"),
        ):
            with pytest.raises(ConfigError) as e:
                aj.CubeGroupKernel(chip="910B1", build=build).group_barrier("b", arrive, wait)
            assert e.value.field == f"barrier[0].{field}"
        aj.CubeGroupKernel(chip="910B1", build=build).group_barrier("b", 48, 48)


# -- 24.7: chips --------------------------------------------------------------------------------------
def test_atlas_a3_is_refused_with_the_reason():
    # the CreateCubeResGroup API page lists Atlas A2 and Ascend 950PR/DT, not Atlas A3 (so does the
    # KfcWorkspace constructor's page); a refusal at build time, so the same for both engines
    import pytest

    from ascend_jax.errors import ConfigError

    for name in ("Ascend910_9391", "910_9382", "A3"):
        with pytest.raises(ConfigError, match="does not list Atlas A3") as e:
            aj.CubeGroupKernel(chip=name)
        assert e.value.field == "chip"
    assert aj.CubeGroupKernel(chip="Ascend910B2").chip.aiv_num == 48


def test_ascend_950_bins_are_presets_from_the_public_platform_ini():
    # hicann/runtime src/platform/platform_config/cann-dev/Ascend950PR_9599.ini (commit 681ef76):
    # [SoCInfo] cube_core_cnt=36, vector_core_cnt=72; [AICoreSpec] cube_freq=1800, ub_size=253952,
    # l0_c_size=262144, l1_size=524288; [AICoreMemoryRates] ddr_rate=31. Ascend950DT_9571.ini: 28 AICs,
    # 1650 MHz, ddr_rate=80. Ascend950PR_950z.ini: 4 AICs.
    import pytest

    from ascend_jax.chips import A950_BINS
    from ascend_jax.errors import ConfigError

    pr = aj.CubeGroupKernel(chip="Ascend950PR_9599").chip
    assert (pr.name, pr.aic_num, pr.aiv_num, pr.cube_freq_mhz) == ("Ascend950PR_9599", 36, 72, 1800.0)
    assert (pr.ub_size, pr.l0c_size, pr.l1_size, pr.rate("ddr_rate")) == (253952, 262144, 524288, 31.0)
    dt = aj.get_chip("950DT_9571")
    assert (dt.aic_num, dt.aiv_num, dt.cube_freq_mhz, dt.rate("ddr_rate")) == (28, 56, 1650.0, 80.0)
    assert aj.get_chip("950PR_950z").aiv_num == 8
    assert len(A950_BINS) == 35 and all(aj.get_chip(b).aiv_num == 2 * aj.get_chip(b).aic_num for b in A950_BINS)
    # a family name has no numbers: the bins differ (4..36 AICs); the error lists them
    for name, hint in (("Ascend950PR", "950PR_9599"), ("950DT", "950DT_9571"), ("950", "950PR_9589")):
        with pytest.raises(ConfigError, match=hint) as e:
            aj.CubeGroupKernel(chip=name)
        assert e.value.field == "chip" and "no Ascend" in e.value.rule
    with pytest.raises(ConfigError, match="'950PR_9599'"):  # the spelling is case-sensitive
        aj.get_chip("ascend950pr_9599")
    # a 950 group obeys the same API-page limits against its own counts: 4 AICs, 8 AIVs
    k = aj.CubeGroupKernel(chip="950PR_950z")
    with pytest.raises(ConfigError, match="AIV count"):
        k.create_cube_res_group("g", 0, 2, 9, "free")
    k.create_cube_res_group("g", 0, 8, 8, "free")


def test_910b_presets_are_the_public_platform_ini():
    # hicann/runtime src/platform/platform_config/cann/Ascend910B<n>.ini: cube_freq 1850 / 1800 / 1800 /
    # 1500 MHz, 24 / 24 / 20 / 20 AICs, ddr_rate=32, l2_size 192 MiB (910B4: 96 MiB)
    got = {n: (c.aic_num, c.aiv_num, c.cube_freq_mhz, c.l2_size >> 20) for n, c in aj.CHIPS.items() if "910B" in n}
    assert got == {
        "910B1": (24, 48, 1850.0, 192),
        "910B2": (24, 48, 1800.0, 192),
        "910B3": (20, 40, 1800.0, 192),
        "910B4": (20, 40, 1500.0, 96),
    }
    assert all(aj.CHIPS[n].rate("ddr_rate") == 32.0 for n in got)


# -- 24.5: merge frees as the seed does -----------------------------------------------------------------
def test_merge_frees_msg_plus_i_for_every_i_up_to_k_past_the_row():
    # the seed's callback and the sample's (op_kernel/cube_group_custom.cpp, MyCallbackFunc::Call): for
    # i in 1..skipCnt FreeMessage(rcvMsg + i, FAKE), then SetSkipMsg (kernel_operator_cube_group_handle_impl.h,
    # no cap at the row end); msg + 2 from column 0 of a 2-column row is the next row's column 0 (queue 0's
    # QUIT), waited for forever
    program = _row("merge", "cpu")  # queue 0 posts (skipCnt from a zeroed payload: 0) ...
    k = aj.CubeGroupKernel(max_steps=100)
    g = k.create_cube_res_group("g", 0, 2, 2, callback="merge")
    for q in range(2):
        aiv = k.aiv(q)
        aiv.assign_queue(g, q)
        aiv.post(g, {"skipCnt": 2}) if q == 0 else aiv.fake(g)
        aiv.quit(g)
    for build in ("cpu", "release"):
        import dataclasses

        r = both(dataclasses.replace(k.compile(), build=build))
        assert r.status == Status.DEADLOCK and r.error is None and r.asserts_violated == []
        assert r.blocked == [{"core": "aic0", "group": "g", "queue": 0, "depth": 1, "until": "FAKE"}]
        assert r.slot_states(0)[0] == ["FREE", "FREE"]  # msg and msg + 1 were freed first
    assert both(program).status == Status.OK


# -- 24.6: the sample's 128-byte message ----------------------------------------------------------------
def test_sample_message_is_the_samples_128_byte_struct():
    # op_kernel/cube_group_custom.cpp, struct CubeMsgBody (natural C alignment)
    from ascend_jax.message import SAMPLE_MSG_BODY

    assert SAMPLE_MSG_BODY.itemsize == 128 and "skipCnt" not in SAMPLE_MSG_BODY.names
    offsets = {
        n: SAMPLE_MSG_BODY.fields[n][1] for n in ("funcId", "aivStartTime", "cGap", "kcOrgShape", "enPartialSum")
    }
    assert offsets == {"funcId": 2, "aivStartTime": 24, "cGap": 72, "kcOrgShape": 112, "enPartialSum": 120}
    from tests._models import load

    sample = load("cube_group_custom")
    program = sample.build()
    assert program.msg_dtypes[0] == SAMPLE_MSG_BODY  # the model posts the sample's own message
    r = both(program)
    assert r.status == Status.OK and r.received == sample.expected_received()


def test_queue_count_and_aic_range_are_checked_against_the_chip():
    # the CreateCubeResGroup API page: msgQueueSize <= the AIV count, the AIC range inside the chip,
    # an AIC in at most one group (no code checks these: the builder does)
    import pytest

    from ascend_jax.errors import ConfigError

    k = aj.CubeGroupKernel(chip="910B1")
    with pytest.raises(ConfigError, match="AIV count") as e:
        k.create_cube_res_group("g", 0, 2, 50, "free")  # one AIC, 50 queues: P fits 64, the chip has 48 AIVs
    assert e.value.field == "group[0].msg_queue_size"
    with pytest.raises(ConfigError, match="exceed the chip"):
        k.create_cube_res_group("g", 46, 4, 2, "free")
    k.create_cube_res_group("g", 0, 4, 4, "free")
    with pytest.raises(ConfigError, match="overlap"):
        k.create_cube_res_group("h", 2, 2, 1, "free")


def test_ub_reserve_for_the_handle():
    # the CreateCubeResGroup API page: the last 1600 B + sizeof(msg) of UB are the handle's; the code:
    # kernel_operator_cube_group_handle_impl.h, CubeResGroupHandle constructor, ubMsgAddr = TOTAL_UB_SIZE -
    # ONE_BLK_SIZE * AIV_CORE_NUM - sizeof(CubeMsgType) (32 B x 50 = 1600 B)
    import pytest

    from ascend_jax.errors import ConfigError

    def program(nbytes):
        k = aj.CubeGroupKernel(chip="910B1")
        g = k.create_cube_res_group("g", 0, 2, 1, "free")  # the 64-byte CubeMsgBody
        aiv = k.aiv(0)
        aiv.assign_queue(g, 0)
        aiv.vec.buffer("x", 1, nbytes // 4, "float32")
        aiv.quit(g)
        return k.compile()

    free = 196608 - 1600 - 64
    assert program(free).aivs[0][0] == 0  # up to the reserve: fine
    with pytest.raises(ConfigError, match="reserved by CreateCubeResGroup") as e:
        program(free + 32)
    assert e.value.field == "aiv[0] UB buffers"


# -- 24 Build: the checks the device lacks reach the sanitizer; the run stays the device's ---------------
class FreeWaitingForFree:
    """FreeMessage(msg, FREE): a scenario names it as ``python:test_device_fidelity:FreeWaitingForFree``."""

    required_fields = ()

    def init(self, mm, tiling):
        pass

    def call(self, mm, msg, handle):
        handle.free_message(msg, aj.CubeMsgState.FREE)


def test_api_misuse_entries_are_sanitizer_findings_and_the_run_is_the_devices():
    # kernel_operator_cube_group_handle_impl.h, FreeMessage(msg, waitState): no assert, no bounds or column
    # check. The sanitizer's synccheck takes the run's api_misuse entries as findings (kind: the code in
    # lower case); the observed run is the plain run, equal in both engines
    programs = [
        _row(Calls(("free", 0, aj.CubeMsgState.FREE)), "release"),
        _row(Calls(("free", 0, None), ("free", 4, None)), "cpu", follower="post", queues=2, aics=2),
        _row(Calls(("free", 0, None), ("free", 1, None)), "npu-debug", follower="post", queues=3, aics=2),
    ]
    for program in programs:
        ref = both(program)
        report = aj.sanitize(program, tools="synccheck")
        assert report.result.to_json() == ref.to_json()
        found = [(f.tool, f.kind, f.message.split(":")[0], f.ops[0].site.core) for f in report.findings]
        assert ref.api_misuse
        for m in ref.api_misuse:
            assert ("synccheck", "api_misuse", m["code"], m["core"]) in found
        assert not report.ok


def test_sanitize_cli_reports_the_misuse_in_both_engines(tmp_path, capsys):
    import json

    from ascend_jax.cli import main

    path = tmp_path / "bad_wait.toml"
    path.write_text(
        '[[group]]\nname = "g"\nblock_start = 0\nblock_size = 2\nmsg_queue_size = 1\n'
        'callback = "python:test_device_fidelity:FreeWaitingForFree"\n'
        '[[aiv]]\nblock_idx = 0\nops = [{ op = "assign_queue", group = "g", queue = 0 }, '
        '{ op = "post", group = "g" }, { op = "quit", group = "g" }]\n'
    )
    for engine in ("reference", "jax"):
        argv = ["sanitize", str(path), "--allow-python", "--json", "--engine", engine, "--max-steps", "100"]
        assert main(argv) == 3
        out = json.loads(capsys.readouterr().out)
        assert out["status"] == "deadlock"  # FreeMessage spins for FREE, as on the device
        kinds = [(f["tool"], f["kind"]) for f in out["sanitizer"]["findings"]]
        assert ("synccheck", "api_misuse") in kinds and ("synccheck", "deadlock") in kinds
        misuse = next(f for f in out["sanitizer"]["findings"] if f["kind"] == "api_misuse")
        assert misuse["message"].startswith("BAD_WAIT_STATE: ")

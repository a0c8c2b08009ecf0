"""Device fidelity: the seed's and the official sample's callbacks, the official sample's protocol,
and the default Wait after a QUIT. Every expected value is written out; both engines must agree.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

import ascend_jax as aj
from ascend_jax import Status
from ascend_jax.message import CUBE_MATMUL_MSG

ROOT = Path(__file__).resolve().parent.parent
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


def test_seed_callback_hangs_on_a_fake_that_no_skip_covers():
    # the FAKE reaches Call: the seed's callback computes on the stale payload (task 0 again) and
    # then FreeMessage(rcvMsg, VALID) waits for VALID on a FAKE slot forever
    ref, eng = both(_lap_kernel("seed"))
    assert ref.status == Status.DEADLOCK
    assert ref.received == {0: [(0, 0, V), (0, 1, V), (0, 2, V), (0, 3, V), (0, 0, F)]}
    # the AIV has finished (its QUIT sits at depth 1); only the AIC is stuck
    assert ref.blocked == [{"core": "aic0", "group": "g", "queue": 0, "depth": 0, "until": "VALID"}]


def test_matmul_callback_is_the_tolerant_variant_of_the_same_program():
    ref, _ = both(_lap_kernel("matmul"))
    assert ref.status == Status.OK  # the uncovered FAKE is freed without compute
    assert ref.received[0][4] == (0, 0, F)


def _load_model(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "models" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_official_sample_protocol_receives_in_the_expected_order():
    sample = _load_model("cube_group_custom")
    ref, eng = both(sample.build())
    assert ref.status == Status.OK and ref.steps == 25
    assert ref.received == sample.expected_received()
    assert ref.received[6][:5] == [(0, 0, V), (4, 0, V), (5, 0, V), (6, 0, V), (7, 0, V)]
    assert sum(len(v) for v in ref.received.values()) == 93  # 45 tasks + 48 QUITs
    assert ref.slot_states(0)[1] == [Q] * 48 and ref.slot_states(0)[0] == ["FREE"] * 48


def test_sample_callback_hangs_on_an_uncovered_fake():
    k = aj.CubeGroupKernel(max_steps=100)
    g = k.create_cube_res_group("g", 0, 2, 2, "sample")
    for q in range(2):
        aiv = k.aiv(q)
        aiv.assign_queue(g, q)
        aiv.post(g, {"funcID": 0}) if q == 0 else aiv.fake(g)
        aiv.quit(g)
    ref, _ = both(k.compile())
    assert ref.status == Status.DEADLOCK
    assert ref.blocked[0] == {"core": "aic0", "group": "g", "queue": 1, "depth": 0, "until": "VALID"}


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

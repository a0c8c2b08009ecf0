"""The three builds (issue 24.1): ``cpu`` (the CPU twin) checks ``ASCENDC_ASSERT`` and
``ASCENDC_DEBUG_ASSERT``, ``npu-debug`` only ``ASCENDC_DEBUG_ASSERT``, ``release`` nothing
(asc-devkit ``kernel_log.h``, the two macros' definitions); ``debug`` is a deprecated alias of
``cpu``. Every run is checked in both engines.
"""

from __future__ import annotations

import json
import warnings

import pytest

import ascend_jax as aj
from ascend_jax import Status
from ascend_jax.cube_group.program import BuildAliasWarning, normalise_build
from ascend_jax.errors import ConfigError
from ascend_jax.message import CUBE_MATMUL_MSG

BUILDS = ("cpu", "npu-debug", "release")
TILING = dict(M=16, N=16, Ka=32, Kb=32, singleCoreM=16, singleCoreN=16, singleCoreK=32, baseM=16, baseN=16, baseK=16)
MATMUL = dict(a="float16", b="float16", c="float32")


def both(program):
    ref, [eng] = aj.run_reference(program), aj.simulate(program)
    assert eng.outcome() == ref.outcome() and eng.steps == ref.steps, (ref.to_json(), eng.to_json())
    assert eng.to_json() == ref.to_json()
    return ref


# -- names -----------------------------------------------------------------------------------------
def test_debug_is_a_deprecated_alias_of_cpu():
    # kernel_log.h: the old `debug` checked both macros, which is what the CPU twin does
    with pytest.warns(BuildAliasWarning, match="deprecated"):
        assert normalise_build("debug") == "cpu"
    assert issubclass(BuildAliasWarning, DeprecationWarning)
    with pytest.warns(DeprecationWarning):
        k = aj.CubeGroupKernel(build="debug")
    assert k.build == "cpu"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for build in BUILDS:  # the three real names never warn
            assert aj.CubeGroupKernel(build=build).build == build
    assert aj.CubeGroupKernel().build == "cpu"  # the default is the CPU twin, as `debug` was


def test_an_unknown_build_names_the_three():
    # kernel_log.h: ASCENDC_ASSERT / ASCENDC_DEBUG_ASSERT give exactly three combinations a developer can build
    with pytest.raises(ConfigError) as e:
        aj.CubeGroupKernel(build="profile")
    assert e.value.field == "build" and "npu-debug" in str(e.value)


def test_scenario_key_and_cli_flag(capsys, tmp_path):
    # kernel_log.h (which macros each build keeps); the key and the flag only choose the build
    from ascend_jax.cli import main

    doc = {
        "build": "npu-debug",
        "group": [{"name": "g", "block_start": 0, "block_size": 2, "msg_queue_size": 1}],
        "aiv": [
            {"block_idx": 0, "ops": [{"op": "assign_queue", "group": "g", "queue": 0}, {"op": "quit", "group": "g"}]}
        ],
    }
    assert aj.load_scenario(doc).build == "npu-debug"
    with pytest.warns(BuildAliasWarning):
        assert aj.load_scenario({**doc, "build": "debug"}).build == "cpu"
    path = tmp_path / "s.toml"
    path.write_text(
        'build = "release"\n[[group]]\nname = "g"\nblock_start = 0\nblock_size = 2\nmsg_queue_size = 1\n'
        '[[aiv]]\nblock_idx = 0\nops = [{ op = "assign_queue", group = "g", queue = 0 }, { op = "quit", group = "g" }]\n'
    )
    assert main(["run", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["asserts_violated"] == []  # the weaker builds always list them (here none)
    assert main(["run", str(path), "--build", "debug", "--json"]) == 0
    captured = capsys.readouterr()
    assert "deprecated" in captured.err and "--build cpu" in captured.err
    assert "asserts_violated" not in json.loads(captured.out)  # cpu: a failed assert is an error instead


# -- which assert each build has --------------------------------------------------------------------
class SkipThenFree:
    """SetSkipMsg(2) on a row of two queues (past the row), then FreeMessage(msg)."""

    required_fields = ()

    def init(self, mm, tiling):
        pass

    def call(self, mm, msg, handle):
        handle.set_skip_msg(2)
        handle.free_message(msg)


def _skip_program(build: str):
    k = aj.CubeGroupKernel(build=build, max_steps=100)
    g = k.create_cube_res_group("g", 0, 2, 2, callback=SkipThenFree())
    for q in range(2):
        aiv = k.aiv(q)
        aiv.assign_queue(g, q)
        aiv.post(g) if q == 0 else aiv.fake(g)
        aiv.quit(g)
    return k.compile()


def test_skip_assert_is_a_debug_assert():
    # kernel_operator_cube_group_handle_impl.h, SetSkipMsg: ASCENDC_DEBUG_ASSERT(aivWork < aivNumForCurAic)
    for build in ("cpu", "npu-debug"):
        r = both(_skip_program(build))
        assert r.status == Status.ERROR and r.error["code"] == "SKIP_CROSSES_ROW" and r.error["skip"] == 2
        assert r.received == {0: [(0, 0, "VALID")]}
        assert r.slot_states(0)[0] == ["VALID", "FAKE"]  # SetSkipMsg came first: nothing was freed
        assert r.asserts_violated == []
    r = both(_skip_program("release"))  # no assert: the cursor leaves the row as on the device
    assert r.status == Status.DEADLOCK and r.error is None
    assert [(a["code"], a["queue"], a["depth"]) for a in r.asserts_violated] == [("SKIP_CROSSES_ROW", 0, 0)]


def _shape_program(build: str):
    """The seed's callback with lastTailM = -2: SetTail(-2, ...) breaks a Matmul ASCENDC_ASSERT."""
    k = aj.CubeGroupKernel(build=build, max_steps=100)
    k.alloc("a", (16, 32), "float16", init="random", seed=1)
    k.alloc("b", (32, 16), "float16", init="random", seed=2)
    k.alloc("c", (16, 16), "float32")
    g = k.create_cube_res_group("g", 0, 2, 1, "seed", CUBE_MATMUL_MSG, matmul=MATMUL, tiling=TILING)
    aiv = k.aiv(0)
    aiv.assign_queue(g, 0)
    shapes = dict(mOrgShape=16, nOrgShape=16, kaOrgShape=32, kbOrgShape=32, tailM=16, tailN=16, tailK=32)
    aiv.post(g, {**shapes, "aAddr": "a", "bAddr": "b", "cAddr": "c", "lastTailM": -2})
    aiv.quit(g)
    return k.compile()


def test_matmul_shape_assert_exists_only_in_the_cpu_twin():
    # matmul_impl_base.h (SetTail's shape check) uses ASCENDC_ASSERT, empty on __NPU_DEVICE__ (kernel_log.h)
    r = both(_shape_program("cpu"))
    assert r.status == Status.ERROR and r.error["code"] == "MATMUL_SHAPE"
    for build in ("npu-debug", "release"):
        r = both(_shape_program(build))
        assert r.status == Status.OK and r.error is None  # nothing stops: the kernel ends
        assert [(a["code"], a["core"]) for a in r.asserts_violated] == [("MATMUL_SHAPE", "aic0")]
        assert not r.tensor("c").any()  # SetTail kept -2: a negative extent, an empty tile


def test_init_shape_assert_stops_only_the_cpu_twin():
    from test_runner import BadInit  # Init breaks a Matmul ASCENDC_ASSERT (SetTail -3)

    def program(build):
        k = aj.CubeGroupKernel(build=build, max_steps=50)
        k.alloc("a", (16, 32), "float16")
        g = k.create_cube_res_group("g", 0, 2, 1, BadInit(), CUBE_MATMUL_MSG, matmul=MATMUL, tiling=TILING)
        aiv = k.aiv(0)
        aiv.assign_queue(g, 0)
        aiv.quit(g)
        return k.compile()

    # matmul_impl_base.h (SetTail's shape check) is an ASCENDC_ASSERT, empty on __NPU_DEVICE__
    # (kernel_log.h); Init runs before the service loop, so the CPU twin cannot start; in both engines
    for run in (aj.run_reference, aj.simulate):
        with pytest.raises(ConfigError, match="Matmul"):
            run(program("cpu"))
    for build in ("npu-debug", "release"):
        r = both(program(build))  # both engines, results equal
        assert r.status == Status.OK
        # the NPU builds run on and list, per AIC of the group, the assert the CPU twin stopped at
        want = {"code": "MATMUL_SHAPE", "core": "aic0", "group": "g", "call": "Init", "dimension": "M"}
        assert [{k: e[k] for k in want} for e in r.asserts_violated] == [want]


def test_geometry_debug_asserts_are_refused_in_every_build():
    # kernel_operator_cube_group_handle_impl.h: the CubeResGroupHandle constructor (blockStart and blockSize
    # even, the last AIC keeps a queue) and AssignQueue (queueIdIn < msgQueueSize) hold ASCENDC_DEBUG_ASSERTs,
    # so a release build would run on with that geometry. What it then does is outside the model: the
    # builder refuses it in every build (docs/model/cube-groups.md, Builds), before either engine runs
    cases = {  # (block_start, block_size, msg_queue_size, queue bound) -> the field refused
        (1, 2, 1, 0): "group[0].block_start",
        (0, 3, 1, 0): "group[0].block_size",
        (0, 6, 4, 0): "group[0].msg_queue_size",
        (0, 2, 1, 1): "aiv[0].ops[0].queue",
    }
    for build in BUILDS:
        for (start, size, queues, q), field in cases.items():
            k = aj.CubeGroupKernel(build=build)
            with pytest.raises(ConfigError) as e:
                k.aiv(0).assign_queue(k.create_cube_res_group("g", start, size, queues, "free"), q)
            assert e.value.field == field, (build, field)


def test_random_programs_agree_in_every_build():
    # random programs with merges, misuse frees and skips past the row (the event-time batch, one
    # geometry: one compilation per build); every build's engine run equals its reference run
    import dataclasses

    from test_timed import batch_programs

    programs = batch_programs()
    seen = set()
    for build in BUILDS:
        lanes = aj.simulate([dataclasses.replace(p, build=build) for p in programs])
        for p, eng in zip(programs, lanes, strict=True):
            ref = aj.run_reference(dataclasses.replace(p, build=build))
            assert eng.outcome() == ref.outcome() and eng.steps == ref.steps, (build, ref.to_json())
            seen.add((build, ref.status.label, bool(ref.asserts_violated), bool(ref.api_misuse)))
    assert any(s[:2] == ("cpu", "error") for s in seen)  # the sample has a failed assert ...
    assert any(s[0] == "release" and s[2] for s in seen)  # ... which release lists
    assert any(s[0] == "cpu" and s[3] for s in seen)  # and some api_misuse finding

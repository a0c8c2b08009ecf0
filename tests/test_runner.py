"""``ascend_jax.run(program, config)`` and :class:`~ascend_jax.config.RunConfig`: the one run path
that the CLI and the Python API share (issue 25, item 1).

The CLI and the API give the same result JSON on shipped models in both engines; the ``auto``
engine rule lives in :func:`ascend_jax.runner.resolve_engine`; a build override goes through the
program's constructor and the engine's checks; ``RunConfig`` refuses bad values naming the field.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import ascend_jax as aj
from ascend_jax.cli import main
from ascend_jax.config import AtomicOrder, Build, Engine, RunConfig, Schedule
from ascend_jax.cube_group.program import BUILDS, BuildAliasWarning
from ascend_jax.errors import ConfigError
from ascend_jax.jsonsafe import dumps_strict
from ascend_jax.message import CUBE_MATMUL_MSG
from ascend_jax.models import load_model
from ascend_jax.runner import is_comm, prepare, resolve_engine

ROOT = Path(__file__).resolve().parents[1]


def _cli_json(capsys, *argv: str) -> tuple[int, dict]:
    code = main(["run", *argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def _api_json(result) -> dict:
    return json.loads(dumps_strict(result.to_json(), indent=2))


# -- the API and the CLI agree ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "engine", "batch"),
    [
        ("merge_example", "reference", 1),
        ("cube_group_sample", "reference", 1),
        ("cube_group_sample", "jax", 1),
        ("atomic_accumulate", "reference", 2),
        ("p2p_send_recv", "reference", 1),
        ("p2p_send_recv", "jax", 1),
        ("allreduce", "reference", 2),
    ],
)
def test_run_and_the_cli_give_the_same_json(capsys, model, engine, batch):
    code, cli = _cli_json(capsys, "--model", model, "--engine", engine, "--batch", str(batch))
    config = RunConfig(engine=engine, batch=batch)
    program, expected, _ = load_model(model, seed=config.seed)
    lanes = None
    if is_comm(program) and batch > 1:  # a comm model builds each lane with its own seed
        lanes = lambda seed: load_model(model, seed=seed)[0]  # noqa: E731
    result = aj.run(program, config, expected=expected, lanes=lanes)
    assert result.engine == engine
    assert _api_json(result) == cli
    assert (code == 0) == result.ok


def test_comm_lanes_as_a_list_or_a_builder_give_the_same_batch():
    config = RunConfig(batch=3, seed=5, engine="reference")
    program, expected, _ = load_model("allreduce", seed=5)
    listed = aj.run(
        program, config, expected=expected, lanes=[program] + [load_model("allreduce", seed=s)[0] for s in (6, 7)]
    )
    built = aj.run(program, config, expected=expected, lanes=lambda seed: load_model("allreduce", seed=seed)[0])
    assert _api_json(listed) == _api_json(built) and [row["seed"] for row in listed.batch_json()] == [5, 6, 7]
    with pytest.raises(ConfigError, match="lanes"):
        aj.run(program, config, lanes=[program])


def test_every_run_flag_reaches_its_run_config_field():
    # A flag that is not given is None; any value it gives (a False included) reaches the field.
    import argparse

    from ascend_jax.cli import _parser
    from ascend_jax.cli.parser import run_config

    sub = next(a for a in _parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    run = sub.choices["run"]
    actions = {a.dest: a for a in run._actions if a.dest in RunConfig.model_fields}
    assert set(actions) == set(RunConfig.model_fields)
    plain = run_config(run.parse_args(["--model", "merge_example"]))
    assert plain.model_fields_set == set()
    for field, action in actions.items():
        flag = action.option_strings[0]
        if isinstance(action, argparse._StoreTrueAction):
            argv, want = [flag], True
        elif isinstance(action, argparse.BooleanOptionalAction):
            default = RunConfig.model_fields[field].default
            argv, want = [flag if not default else "--no-" + flag[2:]], not default
        elif action.choices:
            default = str(getattr(plain, field).value if getattr(plain, field) is not None else "")
            want = next(c for c in action.choices if c not in (default, "debug"))
            argv = [flag, want]
        else:
            argv, want = [flag, "2"], 2
        config = run_config(run.parse_args(["--model", "merge_example", *argv]))
        got = getattr(config, field)
        assert (got.value if hasattr(got, "value") else got) == want, (field, argv, got)
        assert config.model_fields_set == {field}, (field, config.model_fields_set)


def test_every_run_config_field_is_a_run_flag_of_the_same_name():
    from ascend_jax.cli import _parser

    sub = next(a for a in _parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    flags = {a.dest for a in sub.choices["run"]._actions}
    assert set(RunConfig.model_fields) <= flags  # cli/parser.py's run_config reads each field's flag by name
    from ascend_jax.cli.parser import COMM_UNSUPPORTED
    from ascend_jax.runner import COMM_UNSUPPORTED_FIELDS

    assert set(COMM_UNSUPPORTED_FIELDS) <= set(COMM_UNSUPPORTED)  # the CLI refuses them first, as flags


# -- the auto engine rule ---------------------------------------------------------------------------
def test_auto_picks_the_reference_for_one_deterministic_lane_and_jax_otherwise():
    assert resolve_engine(RunConfig()) == Engine.REFERENCE
    assert resolve_engine(RunConfig(schedule="timed")) == Engine.REFERENCE
    assert resolve_engine(RunConfig(batch=2)) == Engine.JAX
    assert resolve_engine(RunConfig(schedule="random")) == Engine.JAX  # random lanes replay in their engine
    assert resolve_engine(RunConfig(atomic_order="random")) == Engine.JAX
    assert resolve_engine(RunConfig(chunk=4)) == Engine.JAX
    assert resolve_engine(RunConfig(devices=1)) == Engine.JAX
    assert resolve_engine(RunConfig(engine="reference", batch=8)) == Engine.REFERENCE
    assert resolve_engine(RunConfig(chunk=4), comm=True) == Engine.REFERENCE  # chunk sizes a comm batch only
    program = aj.load_scenario(aj.builtin_scenario_path())
    assert aj.run(program).engine == Engine.REFERENCE
    assert prepare(program, RunConfig(batch=2)).engine == Engine.JAX


def test_one_lane_run_through_the_api_imports_no_jax():
    code = (
        "import json, sys, ascend_jax as aj\n"
        "r = aj.run(aj.load_scenario(aj.builtin_scenario_path()), aj.RunConfig(schedule='timed'))\n"
        "print(json.dumps([r.engine, r.ok, [m for m in ('jax', 'jaxlib', 'ml_dtypes') if m in sys.modules]]))"
    )
    env = {k: v for k, v in os.environ.items() if k != "ASCEND_JAX_MODELS"}
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.strip().splitlines()[-1]) == ["reference", True, []]


def test_a_batch_runs_in_jax_and_matches_the_reference():
    program = aj.load_scenario(ROOT / "models" / "merge_example.toml")
    jax = aj.run(program, RunConfig(batch=2, schedule="random", seed=3))
    ref = aj.run(program, RunConfig(batch=2, schedule="random", seed=3, engine="reference"))
    assert (jax.engine, ref.engine) == (Engine.JAX, Engine.REFERENCE)
    assert jax.seeds == ref.seeds == (3, 4)
    assert jax.ok and ref.ok


# -- settings that do not apply ---------------------------------------------------------------------
def test_settings_the_engine_lacks_are_refused_like_the_cli():
    program = aj.load_scenario(aj.builtin_scenario_path())
    with pytest.raises(ConfigError, match="random needs --engine jax"):
        prepare(program, RunConfig(engine="reference", atomic_order="random"))
    with pytest.raises(ConfigError, match="--chunk = 4: applies to --engine jax only"):
        prepare(program, RunConfig(engine="reference", chunk=4))
    with pytest.raises(ConfigError, match="work estimate"):
        prepare(program, RunConfig(engine="reference", batch=100_000))
    assert prepare(program, RunConfig(engine="reference", batch=100_000, allow_large=True)).config.allow_large


def test_a_comm_program_refuses_cube_group_settings():
    program, _, _ = load_model("p2p_send_recv", seed=0)
    with pytest.raises(ConfigError, match="--schedule = 'lockstep': does not apply to comm model"):
        aj.run(program, RunConfig(schedule="lockstep"))  # given explicitly, even the default
    with pytest.raises(ConfigError, match="--devices = 1: does not apply"):
        aj.run(program, RunConfig(devices=1))
    assert aj.run(program).ok


# -- the build override -----------------------------------------------------------------------------
class BadInit:
    """Init breaks a Matmul ASCENDC_ASSERT (SetTail -3): only the CPU twin stops there."""

    required_fields = ()

    def init(self, mm, tiling):
        mm.set_tail(-3, -1, -1)

    def call(self, mm, msg, handle):
        handle.free_message(msg)


def _bad_init_program(build: str):
    tiling = dict(M=16, N=16, Ka=32, Kb=32, singleCoreM=16, singleCoreN=16, singleCoreK=32, baseM=16, baseN=16,
                  baseK=16)  # fmt: skip
    k = aj.CubeGroupKernel(build=build, max_steps=50)
    k.alloc("a", (16, 32), "float16")
    g = k.create_cube_res_group(
        "g", 0, 2, 1, BadInit(), CUBE_MATMUL_MSG, matmul=dict(a="float16", b="float16", c="float32"), tiling=tiling
    )
    aiv = k.aiv(0)
    aiv.assign_queue(g, 0)
    aiv.quit(g)
    return k.compile()


def test_build_override_goes_through_the_program_and_its_checks():
    program = _bad_init_program("release")
    res = aj.run(program, RunConfig(engine="reference"))
    assert res.ok and res.program.build == "release"
    for build in ("npu-debug", Build.RELEASE):
        res = aj.run(program, RunConfig(engine="reference", build=build))
        assert res.ok and res.program.build == build and res.program is not program
    with pytest.raises(ConfigError, match="breaks a Matmul ASCENDC_ASSERT"):  # the CLI's exit 2
        aj.run(program, RunConfig(engine="reference", build="cpu"))
    assert program.build == "release"  # the given program is not changed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = RunConfig(build="debug")
    assert config.build == Build.CPU and any(issubclass(w.category, BuildAliasWarning) for w in caught)


def test_max_steps_override_reaches_the_program():
    program = aj.load_scenario(aj.builtin_scenario_path())
    res = aj.run(program, RunConfig(max_steps=5))
    assert res.program.max_steps == 5 and res.results[0].status == aj.Status.MAX_STEPS and not res.ok
    assert aj.run(program, RunConfig(max_steps=program.max_steps)).program is program


# -- RunConfig --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("values", "field", "words"),
    [
        ({"batch": 0}, "batch", "must be >= 1"),
        ({"batch": True}, "batch", "must be an integer"),
        ({"seed": -1}, "seed", "must be >= 0"),
        ({"seed": 2**32 - 1, "batch": 2}, "seed", "lane seeds run from seed to seed + batch - 1"),
        ({"max_steps": 0}, "max_steps", "must be >= 1"),
        ({"chunk": 0}, "chunk", "must be >= 1"),
        ({"devices": 5000}, "devices", "must be <= 4096"),
        ({"schedule": "rand"}, "schedule", "did you mean 'random'"),
        ({"atomic_order": "sorted"}, "atomic_order", "must be one of ['fixed', 'random']"),
        ({"engine": "numpy"}, "engine", "must be one of ['auto', 'jax', 'reference']"),
        ({"build": "fast"}, "build", "must be one of ['cpu', 'npu-debug', 'release']"),
        ({"bacth": 2}, "bacth", "did you mean 'batch'"),
        ({"allow_large": "yes"}, "allow_large", "must be true or false"),
    ],
)
def test_run_config_refuses_bad_values_naming_the_field(values, field, words):
    with pytest.raises(ConfigError) as info:
        RunConfig(**values)
    assert info.value.field == field
    assert words in str(info.value)


def test_run_config_is_frozen_with_str_enums():
    config = RunConfig(schedule="random", atomic_order="random", batch=4, seed=9)
    assert config.schedule is Schedule.RANDOM and config.schedule == "random"
    assert config.atomic_order is AtomicOrder.RANDOM and config.engine is Engine.AUTO
    assert config.seeds == [9, 10, 11, 12]
    with pytest.raises(Exception, match="frozen"):
        config.batch = 2  # type: ignore[misc]
    assert config.replace(batch=2).batch == 2 and config.replace(batch=2).schedule is Schedule.RANDOM
    with pytest.raises(ConfigError, match="batch"):
        config.replace(batch=0)
    assert RunConfig() == RunConfig(schedule="lockstep") and hash(RunConfig()) == hash(RunConfig())
    assert [b.value for b in Build] == list(BUILDS)  # one set of build names


def test_public_names():
    for name in ("run", "RunConfig", "RunResult", "Schedule", "AtomicOrder", "Build", "Engine"):
        assert name in aj.__all__ and getattr(aj, name) is not None
    import ascend_jax.runner  # noqa: F401 (the module: aj.run stays the function)

    assert callable(aj.run) and aj.run is ascend_jax.runner.run

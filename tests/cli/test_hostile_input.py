"""Hostile and invalid input: every case exits 2 with a message naming the field, no traceback,
nothing written outside the allowed places; data files never run code without --allow-python.

The inputs are the small files in ``tests/hostile/`` (copied to a temporary folder per test, so
relative paths in them resolve there) and argument lists.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ascend_jax as aj
from ascend_jax.cli import main

HOSTILE = Path(__file__).resolve().parents[1] / "hostile"

#: (file in tests/hostile, field named in the message, words of the rule)
FILE_CASES = [
    ("top_aiv_int.toml", "aiv = 5", "must be an array"),
    ("top_barrier_int.toml", "barrier = 5", "must be an array"),
    ("no_group.toml", "group", "is required"),
    ("queue_size_bool.toml", "group[0].msg_queue_size = True", "must be an integer"),
    ("block_size_bool.toml", "group[0].block_size = True", "must be an integer"),
    ("shape_bool.toml", "tensor[0].shape[0] = True", "must be an integer"),
    ("sync_string.toml", "aiv[0].ops[2].sync = 'false'", "must be true or false"),
    ("name_int.toml", "name = 123", "must be a string"),
    ("tail_negative.toml", "aiv[0].ops[1].fields.tailM = -5", "must be >= 0"),
    ("skipcnt_string.toml", "aiv[0].ops[1].fields.skipCnt = 'three'", "must be an integer"),
    ("skipcnt_bool.toml", "aiv[0].ops[1].fields.skipCnt = True", "true/false are not integers"),
    ("queue_string.toml", "aiv[0].ops[0].queue = '1'", "without quotes"),
    ("ops_strings.toml", "aiv[1].ops[0] = 'post'", "must be a table"),
    ("unknown_top_key.toml", "gruop", "did you mean 'group'"),
    ("unknown_group_key.toml", "group[0].calback", "did you mean 'callback'"),
    ("unknown_op.toml", "aiv[0].ops[3].op = 'qiut'", "did you mean 'quit'"),
    ("op_missing.toml", "aiv[0].ops[3].op", "is required"),
    ("unknown_field.toml", "aiv[0].ops[1].fields.skipcnt", "did you mean 'skipCnt'"),
    ("max_steps_huge.toml", "max_steps = 1000000000000", "must be <= 2147483647"),
    ("max_received_huge.toml", "max_received = 1000000000", "must be <= 131072"),
    ("tensor_seed_negative.toml", "tensor[0].seed = -1", "must be >= 0"),
    ("shape_huge.toml", "tensor[0].shape[0] = 4294967296", "must be <= 2147483647"),
    ("gm_overflow.toml", "tensor = ", "must fit in 2147483648 bytes"),
    ("dtype_unknown.toml", "tensor[0].dtype = 'float17'", "did you mean 'float16'"),
    ("python_callback.toml", "group[0].callback = 'python:hostile_callback:Evil'", "--allow-python"),
    ("python_callback_abort.toml", "group[0].callback = 'python:os:abort'", "--allow-python"),
    ("callback_bad_form.toml", "group[0].callback = 'python:os'", "python:package.module:Class"),
    ("callback_unknown.toml", "group[0].callback = 'mergee'", "did you mean 'merge'"),
    ("message_unknown.toml", "group[0].message = 'CubeMsg'", "did you mean 'CubeMsgBody'"),
    ("state_unknown.toml", "aiv[0].ops[1].state = 'VALD'", "did you mean 'VALID'"),
    ("aiv_id_big.toml", "aiv[0].ops[1].aiv_id = 300", "must be <= 255"),
    ("delay_zero.toml", "aiv[0].ops[3].cycles = 0", "must be >= 1"),
    ("group_name_escape.toml", "group[0].name = 'g\\x1b[31m'", "a letter or _ first"),
    ("npy_escape.toml", "tensor[0].init = '../../../outside.npy'", "leaves the scenario's folder"),
    ("npy_missing.toml", "tensor[0].init = 'missing.npy'", "file not found"),
    ("npy_npz.toml", "tensor[0].init", "is not a .npy file"),
    ("npy_complex.toml", "tensor[0].init", "not complex, structured"),
    ("npy_structured.toml", "tensor[0].init", "not complex, structured"),
    ("npy_wrong_shape.toml", "tensor[0].init = 'wrong_shape.npy of shape (3, 4)'", "must have shape (4, 4)"),
    ("npy_float_for_int.toml", "tensor[0].init", "float data for a int32 tensor"),
    ("npy_folder.toml", "tensor[0].init = 'data/folder.npy'", "not a regular file"),
    ("chip_ini_text.toml", "text_cores.ini[SoCInfo].cube_core_cnt = 'twenty'", "must be a positive number"),
    ("chip_ini_zero.toml", "zero_cores.ini[SoCInfo].cube_core_cnt = '0'", "must be a positive number"),
    ("chip_ini_escape.toml", "chip = '../../Ascend910B1.ini'", "leaves the scenario's folder"),
    ("chip_unknown.toml", "chip = '910C'", "unknown chip"),
    ("tiling_huge.toml", "group[0].tiling.M = 2147483648", "must be <= 2147483647"),
    ("tiling_unknown_key.toml", "group[0].tiling.baseKK", "did you mean 'baseK'"),
    ("bad_syntax.toml", "scenario = ", "is not valid TOML"),
    ("not_utf8.toml", "scenario = ", "is not UTF-8"),
]

#: (argument list; {h} is the hostile folder, {w} the working folder), field, rule words
ARG_CASES = [
    (["run", "--seed", "-1"], "--seed = -1", "must be >= 0"),
    (["run", "--seed", "5000000000"], "--seed = 5000000000", "must be <= 4294967295"),
    (["run", "--seed", "4294967295", "--batch", "2"], "--seed = 4294967295", "past 4294967295"),
    (["run", "--batch", "0"], "--batch = 0", "must be >= 1"),
    (["run", "--max-steps", "0"], "--max-steps = 0", "must be >= 1"),
    (["run", "--max-steps", "1000000000000"], "--max-steps = 1000000000000", "must be <= 2147483647"),
    (["run", "--chunk", "0"], "--chunk = 0", "must be >= 1"),
    (["run", "--model", "../../x/evil"], "--model = '../../x/evil'", "--allow-python"),
    (["run", "--model", "{h}/hostile_callback.py"], "--model = ", "--allow-python"),
    (["run", "--model", "nope"], "--model = 'nope'", "no such model"),
    (["run", "--model", "merge_exampel"], "--model = 'merge_exampel'", "did you mean 'merge_example'"),
    (["run", "{h}/base.toml", "--dump", "{h}/base.toml"], "--dump = ", "exists and is not a folder"),
    (["run", "{h}/base.toml", "--dump", "{h}/base.toml/sub"], "--dump = ", "cannot be created"),
    (["run", "--model", "p2p_send_recv", "--schedule", "random"], "--schedule = 'random'", "does not apply"),
    (["run", "--model", "p2p_send_recv", "--dump", "{w}/d"], "--dump = ", "does not apply"),
    (["run", "--model", "p2p_send_recv", "--atomic-order", "random"], "--atomic-order = 'random'", "does not apply"),
    (["run", "--model", "allreduce", "--ranks", "65"], "--ranks = 65", "must be <= 64"),
    (["run", "--model", "p2p_send_recv", "--ranks", "4"], "--ranks = 4", "fixed number of ranks"),
    (["run", "--model", "merge_example", "--ranks", "4"], "--ranks = 4", "cube-group scenario"),
    (["run", "{h}/base.toml", "--ranks", "3"], "--ranks = 3", "applies only to ring comm models"),
    (
        ["run", "{h}/base.toml", "--engine", "reference", "--atomic-order", "random"],
        "--atomic-order",
        "needs --engine jax",
    ),
    (["run", "{h}/base.toml", "--model", "merge_example"], "--model = 'merge_example'", "not both"),
    (["run", "{h}/data"], "scenario = ", "not a regular file"),
    (["run", "{h}/missing.toml"], "scenario = ", "file not found"),
    (["check", "{h}/missing.toml"], "scenario = ", "file not found"),
]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"") for p in sorted(root.rglob("*"))}


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A copy of tests/hostile at ``tmp/box/h`` and an empty working folder ``tmp/box/w`` (the cwd)."""
    box = tmp_path / "box"
    shutil.copytree(HOSTILE, box / "h")
    (box / "w").mkdir()
    monkeypatch.chdir(box / "w")
    monkeypatch.setenv("HOSTILE_MARKER", str(box / "w" / "hostile_imported.marker"))
    monkeypatch.delenv("ASCEND_JAX_MODELS", raising=False)
    return box


def _expect_exit_2(capsys, box: Path, argv: list[str], field: str, rule: str) -> str:
    before = _tree(box)
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (argv, out, err)
    assert "Traceback" not in out + err
    assert err.startswith("invalid input: ") and field in err and rule in err, err
    assert "\x1b" not in out + err
    assert _tree(box) == before  # nothing written, not even an empty --dump folder
    return err


@pytest.mark.parametrize(("name", "field", "rule"), FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_hostile_scenario_file_exits_2(capsys, sandbox, name, field, rule):
    path = str(sandbox / "h" / name)
    _expect_exit_2(capsys, sandbox, ["run", path], field, rule)
    if not name.startswith("python_callback"):  # check accepts these by form (see below)
        _expect_exit_2(capsys, sandbox, ["check", path], field, rule)
    assert "hostile_callback" not in sys.modules


@pytest.mark.parametrize(("argv", "field", "rule"), ARG_CASES, ids=[" ".join(c[0]) for c in ARG_CASES])
def test_hostile_arguments_exit_2(capsys, sandbox, argv, field, rule):
    argv = [a.format(h=sandbox / "h", w=sandbox / "w") for a in argv]
    _expect_exit_2(capsys, sandbox, argv, field, rule)


def test_case_count():
    assert len(FILE_CASES) + len(ARG_CASES) >= 40


def test_generated_hostile_files_exit_2(capsys, sandbox):
    w = sandbox / "w"
    deep = w / "deep.toml"
    deep.write_text("x = " + "[" * 50_000 + "]" * 50_000 + "\n")
    big = w / "big.toml"
    big.write_text("# " + "x" * (5 * 2**20) + "\n")
    ops = ", ".join('{ op = "delay", cycles = 1 }' for _ in range(100_001))
    many = w / "many.toml"
    many.write_text(
        '[[group]]\nname = "g"\nblock_start = 0\nblock_size = 2\nmsg_queue_size = 2\n'
        f"[[aiv]]\nblock_idx = 0\nops = [{ops}]\n"
    )
    _expect_exit_2(capsys, sandbox, ["check", str(deep)], "scenario = ", "nested too deeply")
    _expect_exit_2(capsys, sandbox, ["check", str(big)], "scenario = ", "the limit is 4194304 bytes")
    _expect_exit_2(capsys, sandbox, ["check", str(many)], "aiv[0].ops = '100001 entries'", "at most 100000")


def test_argparse_errors_exit_2(capsys):
    assert main(["run", "--seed", "abc"]) == 2
    assert "argument --seed: invalid int value: 'abc'" in capsys.readouterr().err
    assert main(["run", "--engine", "fast"]) == 2
    assert "argument --engine: invalid choice: 'fast'" in capsys.readouterr().err


def test_check_and_run_never_import_a_python_callback_without_allow_python(capsys, sandbox, monkeypatch):
    h, marker = sandbox / "h", sandbox / "w" / "hostile_imported.marker"
    monkeypatch.syspath_prepend(str(h))  # importable, as it would be beside a scenario under python -m
    monkeypatch.delitem(sys.modules, "hostile_callback", raising=False)
    scenario = str(h / "python_callback.toml")
    assert main(["check", scenario]) == 0
    assert "valid (1 groups, 2 AIVs, 1 AICs)" in capsys.readouterr().out
    assert main(["run", scenario]) == 2
    assert "--allow-python" in capsys.readouterr().err
    assert main(["check", str(h / "python_callback_abort.toml")]) == 0  # os.abort is never resolved
    capsys.readouterr()
    assert "hostile_callback" not in sys.modules and not marker.exists()
    # with the flag, run imports it (the marker proves the import) and uses it
    assert main(["run", scenario, "--allow-python", "--engine", "reference", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "ok"
    assert marker.read_text() == "imported" and "hostile_callback" in sys.modules


def test_model_path_needs_allow_python_and_models_env(capsys, sandbox, monkeypatch, tmp_path):
    h, marker = sandbox / "h", sandbox / "w" / "hostile_imported.marker"
    assert main(["run", "--model", str(h / "hostile_callback.py")]) == 2
    assert not marker.exists()
    capsys.readouterr()
    # a folder listed in ASCEND_JAX_MODELS serves its files by name
    models = tmp_path / "mymodels"
    models.mkdir()
    shutil.copy(h / "base.toml", models / "my_base.toml")
    monkeypatch.setenv("ASCEND_JAX_MODELS", str(models))
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    assert "my_base" in listing and "cube_group_sample" in listing
    assert main(["run", "--model", "my_base", "--engine", "reference", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["scenario"] == "hostile-base"


def test_dump_writes_only_inside_the_folder(capsys, sandbox):
    box = sandbox
    out = box / "w" / "out" / "dump"
    assert main(["run", str(box / "h" / "base.toml"), "--engine", "reference", "--dump", str(out), "--json"]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["a.npy"]
    np.testing.assert_array_equal(np.load(out / "a.npy"), np.zeros((4, 4), np.float32))
    # a link planted where a tensor file goes is refused, and its target is untouched
    victim = box / "w" / "victim.txt"
    victim.write_text("keep")
    (out / "a.npy").unlink()
    os.symlink(victim, out / "a.npy")
    assert main(["run", str(box / "h" / "base.toml"), "--engine", "reference", "--dump", str(out)]) == 2
    assert "would write outside the folder" in capsys.readouterr().err
    assert victim.read_text() == "keep"


def test_names_are_printed_escaped(capsys, sandbox):
    path = sandbox / "w" / "esc.toml"
    path.write_text((HOSTILE / "base.toml").read_text().replace('"hostile-base"', '"x\\u001b[2J[red]y"'))
    assert main(["run", str(path), "--engine", "reference"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "x\\x1b[2J[red]y" in out


def test_debug_shows_the_traceback(capsys):
    assert main(["run", "--seed", "-1", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "--seed = -1" in err


def test_schema_and_version(capsys):
    import ascend_jax

    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "ascend_jax scenario" and schema["additionalProperties"] is False
    assert set(schema["properties"]) == {
        "name",
        "chip",
        "build",
        "zero_workspace",
        "max_steps",
        "max_received",
        "group",
        "barrier",
        "aiv",
        "tensor",
    }
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ascend-jax {ascend_jax.__version__}"
    from importlib.metadata import version

    assert ascend_jax.__version__ == version("ascend_jax")


def test_npy_paths_resolve_against_the_scenario_folder(capsys, sandbox):
    # run from an unrelated cwd: "data/float_4x4.npy" is found beside the scenario, not in the cwd
    path = sandbox / "h" / "npy_ok.toml"
    path.write_text((HOSTILE / "base.toml").read_text().replace('init = "zeros"', 'init = "data/float_4x4.npy"'))
    out = sandbox / "w" / "dump"
    assert main(["run", str(path), "--engine", "reference", "--dump", str(out), "--json"]) == 0
    capsys.readouterr()
    np.testing.assert_array_equal(np.load(out / "a.npy"), np.full((4, 4), 0.5, np.float32))


def test_console_script_process_exits_2_without_a_traceback(tmp_path):
    # the real process, not main(): nothing (import, argparse, rich) prints a traceback
    proc = subprocess.run(
        [sys.executable, "-m", "ascend_jax.cli", "check", str(HOSTILE / "not_utf8.toml")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "scenario = " in proc.stderr and "is not UTF-8 text" in proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("seeds", [True, "ab", 1.5, 2**32 - 1, -1, [0, True]])
def test_simulate_rejects_bad_seeds_with_a_config_error(seeds):
    """Every lane needs a uint32 seed: an integer (lane i gets seed + i, all within uint32) or one
    integer per lane; anything else is a ConfigError naming the field, never a TypeError."""
    k = aj.CubeGroupKernel()
    g = k.create_cube_res_group("g", 0, 2, 1)
    a = k.aiv(0)
    a.assign_queue(g, 0)
    a.post(g)
    a.quit(g)
    program = k.compile()
    with pytest.raises(aj.ConfigError, match="seeds"):
        aj.simulate([program, program], seeds=seeds)

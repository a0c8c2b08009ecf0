"""The ``ascend-jax`` command: DESIGN.md result JSON field for field, and exit codes 0 / 3 / 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import ascend_jax as aj
from ascend_jax import models as aj_models
from ascend_jax.cli import main

DEADLOCK = """
name = "f1"
[[group]]
name = "g"
block_start = 0
block_size = 2
msg_queue_size = 2
callback = "merge"
[[aiv]]
block_idx = 0
ops = [{ op = "assign_queue", group = "g", queue = 0 }, { op = "post", group = "g" }, { op = "quit", group = "g" }]
[[aiv]]
block_idx = 1
ops = [{ op = "assign_queue", group = "g", queue = 1 }, { op = "post", group = "g" }]
"""


def run_json(capsys, *argv):
    code = main(["run", *argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("engine", ["jax", "reference"])
def test_run_json_contract(capsys, engine):
    code, out = run_json(capsys, "models/merge_example.toml", "--engine", engine)
    assert code == 0
    assert out.pop("version") == aj.__version__  # the CLI adds the package version
    assert out == {
        "scenario": "merge-example",
        "status": "ok",
        "steps": 16,
        "groups": {
            "g": {
                "slot_states": [["FREE"] * 5, ["QUIT"] * 5, ["FREE"] * 5, ["FREE"] * 5],
                "received": {
                    "0": [[0, 0, "VALID"], [3, 0, "VALID"], [4, 0, "VALID"]] + [[q, 1, "QUIT"] for q in range(5)]
                },
            }
        },
        "blocked": [],
    }


def test_deadlock_json_and_exit_code(capsys, tmp_path):
    path = tmp_path / "f1.toml"
    path.write_text(DEADLOCK)
    code, out = run_json(capsys, str(path))
    assert code == 3
    assert out["status"] == "deadlock"
    assert out["blocked"] == [{"core": "aic0", "group": "g", "queue": 1, "depth": 1, "until": "NOT_FREE"}]
    assert out["groups"]["g"]["received"] == {"0": [[0, 0, "VALID"], [1, 0, "VALID"], [0, 1, "QUIT"]]}


def test_max_steps_exit_code(capsys):
    code, out = run_json(capsys, "models/merge_example.toml", "--max-steps", "5")
    assert code == 3 and out["status"] == "max_steps" and out["steps"] == 5


def test_invalid_scenario_exit_code(capsys, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(DEADLOCK.replace("block_size = 2", "block_size = 5"))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "group[0].block_size = 5" in err and "must be even" in err
    assert main(["check", str(path)]) == 2
    assert main(["check", "models/merge_example.toml"]) == 0
    assert main(["run", str(tmp_path / "missing.toml")]) == 2


@pytest.mark.slow
def test_batch_random_schedule_lanes_agree(capsys):
    code, out = run_json(capsys, "models/merge_example.toml", "--batch", "6", "--schedule", "random", "--seed", "3")
    assert code == 0
    assert [lane["seed"] for lane in out["batch"]] == [3, 4, 5, 6, 7, 8]
    assert all(lane["status"] == "ok" and lane["same_as_lane0"] for lane in out["batch"])
    assert len({lane["steps"] for lane in out["batch"]}) > 1  # timing differs, results do not


def test_default_run_prints_a_summary():
    # the README's main job, through the installed console script
    proc = subprocess.run([sys.executable, "-m", "ascend_jax.cli", "run"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "doc-usage-48q" in proc.stdout and "status=ok" in proc.stdout
    assert "final slot states of qk" in proc.stdout


def test_public_api_names_import():
    for name in aj.__all__:
        assert getattr(aj, name) is not None, name


@pytest.mark.slow
def test_chunk_runs_a_batch_in_chunks(capsys):
    code, out = run_json(capsys, "models/merge_example.toml", "--batch", "3", "--chunk", "2", "--schedule", "random")
    assert code == 0
    assert [lane["seed"] for lane in out["batch"]] == [0, 1, 2]
    assert all(lane["status"] == "ok" and lane["same_as_lane0"] for lane in out["batch"])


def test_models_lists_every_shipped_model_with_a_description(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines]
    assert names == sorted(aj_models.available_models())
    assert {"cube_group_sample", "merge_example", "p2p_send_recv", "allreduce"} <= set(names)
    assert all(len(line.split(maxsplit=1)) == 2 for line in lines)  # a description on every line


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["reference", "jax"])
def test_summary_explains_every_witness_kind(capsys, engine):
    """A SyncAll witness has no slot: the summary names it and the F14 fix (it used to crash the
    summary with an internal error, exit 1); a FREE witness points at backpressure."""
    assert main(["run", "docs/examples/f14_sync_all_before_quit.toml", "--engine", engine]) == 3
    out = capsys.readouterr().out
    assert "aiv0 waits in SyncAll until SYNC_ALL" in out and "pitfall F14" in out
    assert main(["run", "docs/examples/f10_unzeroed_workspace.toml", "--engine", engine]) == 3
    out = capsys.readouterr().out
    assert "aiv1 waits on queue 1 depth 1 for FREE" in out

"""``--report``: PNG plots and report.md; the terminal summary (plain, uncut, witnesses in words);
progress lines on stderr."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest

from ascend_jax.cli import _Activity, main
from ascend_jax.models import load_model
from ascend_jax.numerics import numerics_report
from ascend_jax.report import describe_blocked, describe_error, lane_errors

PNG = b"\x89PNG\r\n\x1a\n"


def _report(capsys, tmp_path, *argv) -> tuple[int, str, list[str]]:
    folder = tmp_path / "r"
    code = main(["run", *argv, "--report", str(folder)])
    captured = capsys.readouterr()
    md = (folder / "report.md").read_text()
    for name in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):  # every linked plot is a PNG in the folder
        assert (folder / name).read_bytes()[:8] == PNG
    assert captured.out.splitlines()[0] in md  # the summary is quoted
    return code, md, sorted(p.name for p in folder.iterdir())


def test_timed_sample_report(capsys, tmp_path):
    code, md, files = _report(capsys, tmp_path, "--model", "cube_group_sample", "--schedule", "timed")
    assert code == 0
    assert files == ["gantt.png", "occupancy.png", "report.md", "utilisation.png"]
    assert "![gantt.png](gantt.png)" in md and "![occupancy.png](occupancy.png)" in md
    assert "![utilisation.png](utilisation.png)" in md


def test_batch_report_has_lane_plots(capsys, tmp_path):
    code, md, files = _report(capsys, tmp_path, "models/merge_example.toml", "--batch", "6", "--schedule", "timed")
    assert code == 0
    assert files == ["gantt.png", "kernel_cycles.png", "occupancy.png", "report.md", "status.png", "steps.png",
                     "utilisation.png"]  # fmt: skip


def test_random_atomic_order_report_shows_the_spread(capsys, tmp_path):
    argv = ("models/atomic_accumulate.toml", "--batch", "8", "--atomic-order", "random", "--trace-lane", "5")
    code, md, files = _report(capsys, tmp_path, *argv)
    assert code == 0 and "atomic_spread.png" in files
    assert "Per-lane plots show lane 5 (seed 5)" in md
    # the plotted errors: lane 0's is the numerics report's, and the spread line quotes their range
    from ascend_jax.cube_group.engine import simulate

    program, _, _ = load_model("atomic_accumulate")
    results = simulate([program] * 8, seeds=list(range(8)), atomic_order="random")
    report = numerics_report(program, results)
    errors, tol = lane_errors(program, results)
    assert errors["c"][0] == pytest.approx(report["c"]["rel_l2_error"], rel=1e-12)
    assert f"from {errors['c'].min():.3g} to {errors['c'].max():.3g} across 8 lanes" in md
    assert len(set(np.round(errors["c"], 12))) > 1  # the order changes the rounding


def test_comm_report(capsys, tmp_path):
    code, md, files = _report(capsys, tmp_path, "--model", "p2p_send_recv")
    assert code == 0 and files == ["comm_timeline.png", "report.md"]


def test_report_without_matplotlib_exits_2_and_says_how_to_install(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    assert main(["run", "models/merge_example.toml", "--report", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "--report" in err and "matplotlib" in err and "pip install 'ascend_jax[bench]'" in err
    assert not (tmp_path / "r").exists()


def test_report_on_a_file_exits_2(capsys, tmp_path):
    (tmp_path / "f").write_text("x")
    assert main(["run", "models/merge_example.toml", "--report", str(tmp_path / "f")]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err


def test_deadlock_witness_in_words(capsys):
    assert main(["run", "docs/examples/f5_too_few_fakes.toml"]) == 3
    out = capsys.readouterr().out
    code = main(["run", "docs/examples/f5_too_few_fakes.toml", "--json"])
    blocked = json.loads(capsys.readouterr().out)["blocked"]
    assert code == 3 and len(blocked) == 2
    for b in blocked:  # each witness entry, in words, on one line of the summary
        assert f"{b['core']} waits on queue {b['queue']} depth {b['depth']} for {b['until']}" in out
    assert "for FAKE (the slot holds VALID); hint: the leader's skipCnt exceeds" in out
    assert "{'core'" not in out  # no raw dicts


def test_error_in_words_with_hint():
    error = {"code": "SKIP_CROSSES_ROW", "core": "aic0", "group": "g", "queue": 0, "depth": 0,
             "message": "SetSkipMsg(k) would move the cursor past the end of the row", "skip": 2}  # fmt: skip
    text = describe_error(error)
    assert text.startswith("SKIP_CROSSES_ROW at aic0 on queue 0 depth 0 of group g: SetSkipMsg(k)")
    assert "(skip 2)" in text and "pitfall F7" in text


def test_forgotten_valid_hint():
    from ascend_jax.cube_group.reference import run_reference
    from ascend_jax.scenario import load_scenario

    result = run_reference(load_scenario("docs/examples/f8_forgotten_valid.toml"))
    (line,) = describe_blocked(result)
    assert line.startswith("aic0 waits on queue 0 depth 0 for a message (the slot holds FREE)")
    assert "depth 1 holds QUIT" in line and "pitfall F8" in line


def test_summary_is_not_cut_when_piped(capsys):
    """Not a terminal: plain lines as wide as their content (no rich wrapping at 80 columns)."""
    assert main(["run", "--model", "cube_group_sample", "--schedule", "timed"]) == 0
    out = capsys.readouterr().out
    code = main(["run", "--model", "cube_group_sample", "--schedule", "timed", "--json"])
    timing = json.loads(capsys.readouterr().out)["timing"]
    assert code == 0
    lines = out.splitlines()
    assert any(len(line) > 80 for line in lines) and not any(c in out for c in "┃│━…")
    assert f"kernel: {timing['kernel_cycles']:.0f} cycles = {timing['kernel_us']:.3f} us" in out
    for core, t in timing["aic"].items():  # per-core busy / blocked / idle
        row = next(line for line in lines if line.startswith(f"aic{core} "))
        assert row.split()[1] == f"{t['busy_cycles']:.0f}" and row.split()[3] == f"{t['blocked_cycles']:.0f}"
    heads = [line for line in lines if line.startswith(("6 ", "11 "))]
    assert len(heads) == 2 and all(line.rstrip().endswith("...") for line in heads)


def test_batch_summary_counts_and_lanes_that_differ(capsys):
    assert main(["run", "docs/examples/f5_too_few_fakes.toml", "--batch", "4", "--schedule", "random"]) == 3
    out = capsys.readouterr().out
    assert "lanes: deadlock 4; steps min" in out
    assert "4/4 lanes with lane 0's outcome" in out
    assert "replay one alone with --batch 1 --schedule random --seed S, S in: 0, 1, 2, 3" in out


def test_atomic_spread_in_summary(capsys):
    argv = ["run", "models/atomic_accumulate.toml", "--batch", "8", "--atomic-order", "random"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert main([*argv, "--json"]) == 0
    spread = json.loads(capsys.readouterr().out)["numerics"]["c"]["lane_spread"]
    assert f"atomic-order spread: with a random atomic order, lanes differ from lane 0 by up to {spread:.3g}" in out


def test_activity_speaks_on_stderr_only_after_the_delay(capsys):
    with _Activity("quick work", delay=5.0):
        pass
    assert capsys.readouterr() == ("", "")
    with _Activity("slow work", delay=0.0, every=0.01) as act:
        while not act.said:
            pass
    out, err = capsys.readouterr()
    assert out == "" and "ascend-jax: slow work ..." in err and "slow work: done in" in err

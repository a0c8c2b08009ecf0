"""``ascend-jax sanitize`` and ``ascend-jax run --sanitize``: output, JSON, exit codes, refusals."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from ascend_jax.cli import main

ROOT = Path(__file__).resolve().parents[2]
RACE = str(ROOT / "docs" / "examples" / "sanitizer_race.toml")
FIXED = str(ROOT / "docs" / "examples" / "sanitizer_race_fixed.toml")


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def flat(text: str) -> str:
    """The text with every run of whitespace one space (the report wraps at 100 columns)."""
    return " ".join(text.split())


def test_sanitize_reports_the_race_and_exits_3():
    code, out, _ = cli("sanitize", RACE)
    out = flat(out)
    assert code == 3
    assert "sanitizer: 1 finding(s) (racecheck 1, initcheck 0, synccheck 0, memcheck 0)" in out
    assert "[racecheck] race: aiv0 op 2 (load at" in out and "wait on the message before the load" in out
    assert "sanitizer_race.toml:47, aiv[0].ops[3]" in out  # the scenario's line and op
    code, out, _ = cli("sanitize", FIXED)
    assert code == 0 and "no findings" in out


def test_sanitize_json_is_the_issue_format():
    code, out, _ = cli("sanitize", RACE, "--json")
    doc = json.loads(out)
    assert code == 3 and doc.keys() == {"scenario", "status", "sanitizer"}
    san = doc["sanitizer"]
    assert san.keys() == {"tools", "findings"}
    assert san["tools"] == ["racecheck", "initcheck", "synccheck", "memcheck"]
    (f,) = san["findings"]
    assert f.keys() == {"tool", "kind", "cores", "ops", "missing", "message"}
    assert f["cores"] == ["aiv0", "aic0"]
    assert [(o["op"], o["access"], o["tensor"], o["elements"]) for o in f["ops"]] == [
        ("load", "read", "c", [0, 255]),
        ("matmul.C", "write", "c", [0, 255]),
    ]


def test_run_sanitize_adds_the_analysis_to_the_run():
    code, out, _ = cli("run", RACE, "--sanitize", "--engine", "reference")
    assert code == 3 and "status=ok" in out and "[racecheck] race" in out
    code, out, _ = cli("run", RACE, "--sanitize", "--json", "--engine", "reference")
    doc = json.loads(out)
    assert code == 3 and doc["status"] == "ok" and len(doc["sanitizer"]["findings"]) == 1
    code, out, _ = cli("run", FIXED, "--sanitize", "--json", "--engine", "reference")
    assert code == 0 and json.loads(out)["sanitizer"]["findings"] == []
    code, out, _ = cli("run", RACE, "--json", "--engine", "reference")  # without --sanitize: no key, exit 0
    assert code == 0 and "sanitizer" not in json.loads(out)


@pytest.mark.parametrize("schedule", ["lockstep", "random", "timed"])
def test_findings_are_the_same_under_every_schedule(schedule):
    code, out, _ = cli("sanitize", RACE, "--json", "--engine", "reference", "--schedule", schedule, "--seed", "5")
    base = json.loads(cli("sanitize", RACE, "--json")[1])
    assert code == 3 and json.loads(out)["sanitizer"] == base["sanitizer"]


def test_a_jax_batch_lists_each_lanes_findings():
    code, out, err = cli("sanitize", RACE, "--json", "--batch", "3", "--schedule", "random", "--seed", "2")
    san = json.loads(out)["sanitizer"]
    assert code == 3 and san["lane_findings"] == [1, 1, 1] and san["first_finding_lane"] == 0
    assert len(san["findings"]) == 1
    code, out, _ = cli("sanitize", RACE, "--batch", "3", "--schedule", "random", "--seed", "2")
    out = flat(out)
    assert "the JAX engine keeps no access log" in out and "all 3 lanes run this program" in out


def test_tool_selection_and_uninitialised_tensors():
    code, out, _ = cli("sanitize", RACE, "--json", "--tool", "synccheck,memcheck")
    san = json.loads(out)["sanitizer"]
    assert code == 0 and san == {"tools": ["synccheck", "memcheck"], "findings": []}
    # c has no init: the early load reads memory nothing defined yet (with racecheck on, the race
    # is the one finding; initcheck alone names the read)
    code, out, _ = cli("sanitize", RACE, "--json", "--tool", "initcheck")
    (f,) = json.loads(out)["sanitizer"]["findings"]
    assert code == 3 and (f["kind"], f["ops"][0]["op"], f["ops"][0]["tensor"]) == ("uninitialised_gm_read", "load", "c")
    assert "c has no init" in f["message"]
    # the twin waits: the matmul's write of c happens before the load
    code, out, _ = cli("sanitize", FIXED, "--json", "--tool", "initcheck")
    assert code == 0 and json.loads(out)["sanitizer"]["findings"] == []
    # --uninit asks whether a given init is needed: atomic_accumulate's atomics read C's zeros
    code, out, _ = cli("sanitize", "--model", "atomic_accumulate", "--json", "--tool", "initcheck")
    assert code == 0 and json.loads(out)["sanitizer"]["findings"] == []
    code, out, _ = cli("sanitize", "--model", "atomic_accumulate", "--json", "--tool", "initcheck", "--uninit", "c")
    found = json.loads(out)["sanitizer"]["findings"]
    assert (
        code == 3 and found and {(f["ops"][0]["access"], f["ops"][0]["tensor"]) for f in found} == {("atomic_add", "c")}
    )
    assert all("c is marked uninitialised" in f["message"] for f in found)


@pytest.mark.parametrize(
    "argv, words",
    [
        (("sanitize", RACE, "--tool", "lint"), "--tool"),
        (("sanitize", RACE, "--uninit", "nope"), "--uninit = 'nope': no such tensor"),
        (("run", RACE, "--tool", "racecheck"), "applies only with --sanitize"),
        (("sanitize", "--model", "allreduce"), "comm model"),
    ],
)
def test_bad_sanitizer_flags_exit_2(argv, words):
    code, _, err = cli(*argv)
    assert code == 2 and words in err


def test_the_model_line_names_the_attention_race():
    code, out, _ = cli("sanitize", "--model", "attention_grad", "--model-arg", "wait_qk=false")
    out = flat(out)
    assert code == 3 and "1 finding(s)" in out
    assert "load at models/attention_grad.py:" in out and "(_task, called from line" in out
    assert "races 4 times in all (cores aiv0/aic0, aiv1/aic0, aiv2/aic1, aiv3/aic1)" in out


def test_the_jax_engine_reports_what_the_reference_reports():
    ref = json.loads(cli("sanitize", RACE, "--json", "--engine", "reference")[1])["sanitizer"]
    jax = json.loads(cli("sanitize", RACE, "--json", "--engine", "jax")[1])["sanitizer"]
    assert jax == ref and len(ref["findings"]) == 1


def test_a_run_cut_short_says_so():
    code, out, _ = cli("sanitize", "--model", "attention_grad", "--max-steps", "5")
    assert code == 3 and "the run ended max_steps" in out and "raise --max-steps" in flat(out)

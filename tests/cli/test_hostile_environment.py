"""Hardening II (issue 26): report files never written through a link, numbers from the environment
and from chip INI files range-checked (exit 2 naming the field, the value, the rule and the fix,
nothing written), strict result JSON (:mod:`ascend_jax.jsonsafe`), the Python floor declared where
the code needs it, and the docs agreeing with the code."""

from __future__ import annotations

import enum
import json
import math
import os
import re
import shutil
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from _exit2 import exit_2

from ascend_jax.cli import _parser, main
from ascend_jax.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = Path(__file__).resolve().parents[1] / "hostile"


@pytest.fixture
def box(tmp_path, monkeypatch):
    """A copy of tests/hostile at ``tmp/h`` and the working folder ``tmp/w`` (the cwd)."""
    shutil.copytree(HOSTILE, tmp_path / "h")
    (tmp_path / "w").mkdir()
    monkeypatch.chdir(tmp_path / "w")
    monkeypatch.delenv("ASCEND_JAX_MEMORY_BUDGET", raising=False)
    return tmp_path


def _exit_2(capsys, root: Path, argv: list[str], *words: str) -> str:
    """:func:`_exit2.exit_2` with nothing under ``root`` created or changed."""
    return exit_2(capsys, argv, *words, root=root)


# -- 1. --report never writes through a link -----------------------------------------------------


@pytest.mark.parametrize("name", ["report.md", "gantt.png", "steps.png"])
def test_report_refuses_a_planted_link(capsys, box, name):
    victim = box / "w" / "victim.txt"
    victim.write_text("keep")
    report = box / "w" / "r"
    report.mkdir()
    os.symlink(victim, report / name)  # steps.png: a file this run would not even draw
    _exit_2(capsys, box, ["run", str(box / "h" / "base.toml"), "--engine", "reference", "--report", str(report)],
            f"--report = '{report / name}'", "would write outside the folder", "remove it")  # fmt: skip
    assert victim.read_text() == "keep"
    assert sorted(p.name for p in report.iterdir()) == [name]  # nothing drawn before the refusal


def test_report_refuses_a_dangling_link_and_a_folder(capsys, box):
    report = box / "w" / "r"
    report.mkdir()
    os.symlink(box / "w" / "nowhere.md", report / "report.md")  # would create a file outside
    argv = ["run", str(box / "h" / "base.toml"), "--engine", "reference", "--report", str(report)]
    _exit_2(capsys, box, argv, "--report", "report.md", "would write outside the folder")
    assert not (box / "w" / "nowhere.md").exists()
    (report / "report.md").unlink()
    (report / "gantt.png").mkdir()
    _exit_2(capsys, box, argv, "--report", "gantt.png", "not a plain file")


def test_comm_report_refuses_a_planted_link(capsys, box):
    victim = box / "w" / "victim.txt"
    victim.write_text("keep")
    report = box / "w" / "r"
    report.mkdir()
    os.symlink(victim, report / "comm_timeline.png")
    argv = ["run", "--model", "p2p_send_recv", "--engine", "reference", "--report", str(report)]
    _exit_2(capsys, box, argv, "--report", "comm_timeline.png", "would write outside the folder")
    assert victim.read_text() == "keep"


def test_report_into_a_linked_folder_still_works(capsys, box):
    # the folder itself may be a link (as for --dump): its files land in the real folder
    real = box / "w" / "real"
    real.mkdir()
    os.symlink(real, box / "w" / "r")
    assert main(["run", str(box / "h" / "base.toml"), "--engine", "reference", "--report", "r"]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in real.iterdir()) == ["gantt.png", "occupancy.png", "report.md"]
    assert (real / "gantt.png").read_bytes().startswith(b"\x89PNG")


def test_report_writer_does_not_follow_a_link_planted_after_the_check(tmp_path):
    from ascend_jax import report

    report.check_report_folder(tmp_path)  # a clean folder passes
    victim = tmp_path.parent / f"{tmp_path.name}-victim.txt"
    victim.write_text("keep")
    os.symlink(victim, tmp_path / "report.md")
    with pytest.raises(ConfigError, match="would write outside the folder"):
        report._write_text(tmp_path / "report.md", "overwritten")
    with pytest.raises(ConfigError, match="would write outside the folder"):
        report.check_report_folder(tmp_path)
    assert victim.read_text() == "keep"


# -- 2. numbers from the environment and from chip INI files -------------------------------------


@pytest.mark.parametrize("raw", ["inf", "1e400", "-inf", "nan", "0", "-5", "abc", "1e20"])
def test_memory_budget_out_of_range_exits_2(capsys, box, monkeypatch, raw):
    monkeypatch.setenv("ASCEND_JAX_MEMORY_BUDGET", raw)
    argv = ["run", str(box / "h" / "base.toml"), "--engine", "jax", "--batch", "2"]
    _exit_2(capsys, box, argv, f"ASCEND_JAX_MEMORY_BUDGET = {raw!r}", "must be a number of bytes in 1..2^50", "2e9")


def test_memory_budget_accepts_a_plain_number(monkeypatch):
    from ascend_jax.cube_group.engine import _memory_budget

    monkeypatch.setenv("ASCEND_JAX_MEMORY_BUDGET", "2e9")
    assert _memory_budget() == 2_000_000_000
    monkeypatch.delenv("ASCEND_JAX_MEMORY_BUDGET")
    assert _memory_budget() == 2 * 2**30


#: (INI section, key = value, extra CLI flags, words of the message)
INI_CASES = [
    ("AICoreSpec", "cube_freq=1e-300", ["--schedule", "timed"], "must be in 1..10000 MHz"),
    ("AICoreSpec", "cube_freq=1e300", ["--schedule", "timed"], "must be in 1..10000 MHz"),
    ("AICoreSpec", "cube_freq=0.5", [], "must be in 1..10000 MHz"),
    ("AICoreSpec", "cube_freq=1e400", [], "must be a positive number"),
    ("AICoreSpec", "cube_freq=1/0", [], "must be a positive number"),
    ("AICoreSpec", "cube_freq=1e-400", [], "finite, above 0"),
    ("AICoreSpec", "ub_size=4611686018427387904", [], "must be in 1024..16777216 bytes"),
    ("AICoreSpec", "ub_size=0.5", [], "must be in 1024..16777216 bytes"),
    ("AICoreSpec", "ub_size=2048.5", [], "must be a whole number of bytes"),
    ("AICoreSpec", "l1_size=1e300", [], "must be in 1024..268435456 bytes"),
    ("SoCInfo", "memory_size=1e30", [], "must be in 1048576..1099511627776 bytes"),
    ("SoCInfo", "l2_size=12", [], "must be in 1024..68719476736 bytes"),
    ("AICoreMemoryRates", "ddr_rate=1e-300", ["--schedule", "timed"], "must be in 0.015625..65536 bytes/cycle/core"),
    ("AICoreMemoryRates", "l2_read_rate=1e300", [], "must be in 0.015625..65536 bytes/cycle/core"),
    ("AICoreMemoryRates", "ub_to_ddr_rate=1/1e300", [], "must be in 0.015625..65536"),
    ("SoCInfo", "vector_core_cnt=5000", [], "must be a whole number in 1..2048"),
    ("DtypeMKN", "Default=16,\u00b2,16", [], "three whole numbers in 1..4096"),
    ("DtypeMKN", "Default=16," + "9" * 5000 + ",16", [], "three whole numbers in 1..4096"),
]


def _ini(box: Path, section: str, line: str, cores: int = 2) -> Path:
    """``box/w/chip.ini`` with ``cores`` AICs plus ``[section] line``, and a scenario using it."""
    body = f"[SoCInfo]\ncube_core_cnt={cores}\n"
    body = body + line + "\n" if section == "SoCInfo" else body + f"[{section}]\n{line}\n"
    (box / "w" / "chip.ini").write_text(body, encoding="utf-8")
    scenario = box / "w" / "s.toml"
    scenario.write_text((HOSTILE / "base.toml").read_text().replace('"hostile-base"', '"ini"\nchip = "chip.ini"'))
    return scenario


@pytest.mark.parametrize(("section", "line", "flags", "rule"), INI_CASES, ids=[c[1][:40] for c in INI_CASES])
def test_chip_ini_numbers_out_of_range_exit_2(capsys, box, section, line, flags, rule):
    scenario = _ini(box, section, line)
    key, value = line.split("=", 1)
    field = f"chip.ini[{section}].{key}"
    shown = repr(value) if len(value) < 100 else ""  # a long value is shortened in the message
    _exit_2(capsys, box, ["run", str(scenario), "--engine", "reference", *flags], field, shown, rule)
    _exit_2(capsys, box, ["check", str(scenario)], field, rule)


def test_chip_ini_core_count_above_the_limit_exits_2(capsys, box):
    scenario = _ini(box, "AICoreSpec", "cube_freq=1850", cores=1025)
    _exit_2(capsys, box, ["check", str(scenario)], "chip.ini[SoCInfo].cube_core_cnt = '1025'", "in 1..1024")


def test_chip_ini_bounds_admit_real_chips_and_the_largest_ub(capsys, box):
    """The limits admit a 910B INI's values and their extremes; a UB buffer larger than the
    largest UB is then refused by the buffer check, in bounded time (no allocation)."""
    from ascend_jax.chips import load_platform_ini

    ini = box / "w" / "Ascend910B1.ini"
    ini.write_text(
        "[SoCInfo]\ncube_core_cnt=1024\nvector_core_cnt=2048\nmemory_size=68719476736\nl2_size=201326592\n"
        "[AICoreSpec]\ncube_freq=10000\nub_size=16777216\nl0_a_size=65536\nl1_size=524288\n"
        "[AICoreMemoryRates]\nddr_rate=32\nub_to_ddr_rate=21474836480/680000000\nl1_to_l0_a_rate=512\n"
    )
    chip = load_platform_ini(ini)
    assert (chip.aic_num, chip.aiv_num, chip.cube_freq_mhz, chip.ub_size) == (1024, 2048, 10000.0, 16 * 2**20)
    assert chip.rate("l1_to_l0_a_rate") == 512.0 and chip.memory_size == 64 * 2**30
    # a 100,000 x 100,000 float32 UB buffer against the largest UB: a ConfigError, not a MemoryError
    scenario = _ini(box, "AICoreSpec", "ub_size=16777216")
    text = scenario.read_text().replace(
        '{ op = "assign_queue", group = "g", queue = 0 },',
        '{ op = "assign_queue", group = "g", queue = 0 },\n'
        '  { op = "ub_buffer", name = "big", rows = 100000, cols = 100000 },',
    )
    scenario.write_text(text)
    _exit_2(capsys, box, ["check", str(scenario)], "100000 x 100000", "> UB 16777216 B", "smaller slices")


def test_timed_run_on_an_ini_chip_gives_finite_json(capsys, box):
    scenario = _ini(box, "AICoreSpec", "cube_freq=1\n[AICoreMemoryRates]\nddr_rate=0.015625")
    assert main(["run", str(scenario), "--engine", "reference", "--schedule", "timed", "--json"]) == 0
    out = capsys.readouterr().out
    timing = json.loads(out, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))["timing"]
    assert timing["freq_mhz"] == 1.0 and math.isfinite(timing["kernel_cycles"]) and timing["kernel_cycles"] > 0


# -- 3. strict result JSON -----------------------------------------------------------------------


def test_strict_json_replaces_non_finite_floats_with_null_and_a_reason():
    from ascend_jax.jsonsafe import REASON_SUFFIX, dumps_strict, strict_json

    doc = {
        "status": "ok",
        "timing": {"freq_mhz": float("inf"), "kernel_cycles": np.float32("inf"), "kernel_us": 1.5},
        "errors": [0.1, float("nan"), [np.float64("-inf")]],
        "array": np.array([[1.0, np.nan], [2.0, 3.0]], np.float32),
        "counts": (np.int64(3), np.bool_(True), 7, None),
    }
    notes: list = []
    clean = strict_json(doc, notes)
    assert doc["timing"]["freq_mhz"] == float("inf")  # the input is not modified
    t = clean["timing"]
    assert t["freq_mhz"] is None and t["kernel_cycles"] is None and t["kernel_us"] == 1.5
    assert t["freq_mhz" + REASON_SUFFIX].startswith("was Infinity: JSON has no infinities")
    assert "kernel_us" + REASON_SUFFIX not in t
    assert list(t) == ["freq_mhz", "freq_mhz_null_reason", "kernel_cycles", "kernel_cycles_null_reason", "kernel_us"]
    assert clean["errors"] == [0.1, None, [None]]
    assert set(clean["errors_null_reason"]) == {"[1]", "[2][0]"}
    assert clean["errors_null_reason"]["[1]"].startswith("was NaN")
    assert clean["errors_null_reason"]["[2][0]"].startswith("was -Infinity")
    assert clean["array"] == [[1.0, None], [2.0, 3.0]] and list(clean["array_null_reason"]) == ["[0][1]"]
    assert clean["counts"] == [3, True, 7, None] and type(clean["counts"][0]) is int
    assert [p for p, _ in notes] == [
        "timing.freq_mhz",
        "timing.kernel_cycles",
        "errors[1]",
        "errors[2][0]",
        "array[0][1]",
    ]
    text = dumps_strict(doc, indent=2)
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)  # the text outside strings
    assert "NaN" not in bare and "Infinity" not in bare and "null" in bare
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c)) == json.loads(json.dumps(clean))


def test_strict_json_edge_cases():
    from ascend_jax.jsonsafe import dumps_strict, strict_json

    notes: list = []
    assert strict_json(float("nan"), notes) is None and notes[0][0] == ""
    assert strict_json([float("inf"), 1]) == [None, 1]  # a top-level list: only notes can say why
    # a member the caller wrote under the reason's name is kept
    assert strict_json({"x": float("inf"), "x_null_reason": "mine"}) == {"x": None, "x_null_reason": "mine"}
    finite = {"a": [1, 2.5, "s", True, None], "b": {"c": np.float16(0.5)}}
    assert json.loads(dumps_strict(finite)) == {"a": [1, 2.5, "s", True, None], "b": {"c": 0.5}}
    with pytest.raises(TypeError):  # anything that is not JSON data stays an error
        dumps_strict({"x": object()})


# -- 4. the Python floor -------------------------------------------------------------------------


def _floor() -> tuple[int, int]:
    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    m = re.fullmatch(r">=\s*(\d+)\.(\d+)", spec.strip())
    assert m, f"requires-python {spec!r}: expected the form '>=3.X'"
    return int(m.group(1)), int(m.group(2))


def test_requires_python_matches_what_the_code_uses():
    floor = _floor()
    code = "\n".join(p.read_text() for p in (ROOT / "ascend_jax").rglob("*.py"))
    needs = (3, 10)
    if "StrEnum" in code:  # enum.StrEnum: Python 3.11
        assert hasattr(enum, "StrEnum")
        needs = max(needs, (3, 11))
    if re.search(r"^\s*import tomllib", code, re.M):  # tomllib: 3.11 (and tomli is not a dependency)
        needs = max(needs, (3, 11))
    assert floor >= needs, f"requires-python >={floor} but the code needs {needs}"
    assert sys.version_info[:2] >= floor  # the tests run on a supported Python
    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]["target-version"]
    assert target == f"py{floor[0]}{floor[1]}"
    wanted = f"{floor[0]}.{floor[1]}"
    assert f"Python >= {wanted})" in (ROOT / "README.md").read_text()
    assert f"Python {wanted} or newer" in (ROOT / "docs" / "getting-started.md").read_text()


# -- 5., 6. docs against code --------------------------------------------------------------------


def test_cli_page_names_every_subcommand_and_the_ranks_range():
    from ascend_jax.models import RANKS_RANGE

    sub = next(a for a in _parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    names = list(sub.choices)
    page = (ROOT / "docs" / "reference" / "cli.md").read_text()
    words = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
    assert f"with {words[len(names)]} subcommands" in page
    for name in names:
        assert f"## `ascend-jax {name}`" in page, name
    lo, hi = RANKS_RANGE
    assert f"| `--ranks N` | integer `{lo}..{hi}` |" in page
    assert f"`--ranks` accepts {lo}..{hi}" in (ROOT / "docs" / "model" / "comm.md").read_text()
    for path in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]:  # no page keeps the old 2..8
        assert "--ranks 2..8" not in path.read_text() and "integer `2..8`" not in path.read_text(), path


def test_readme_and_docs_point_only_to_files_in_the_repository():
    readme = (ROOT / "README.md").read_text()
    for ref in sorted(set(re.findall(r"[\w./-]+\.md\b", readme))):
        if ref.startswith("r/"):  # the report a command example writes
            continue
        assert (ROOT / ref).exists(), f"README.md points to {ref}, which is not in the repository"
    assert "DESIGN.md" not in readme and "spec/" not in readme
    pages = {p: p.read_text() for p in (ROOT / "docs").rglob("*.md")}
    for path, text in pages.items():
        assert "DESIGN.md" not in text and "spec/" not in text, path
    test_cmd = ".venv/bin/python -m pytest -n auto"
    assert test_cmd in readme and "python -m pytest -n auto" in pages[ROOT / "docs" / "getting-started.md"]
    assert "pytest -q" not in pages[ROOT / "docs" / "getting-started.md"]
    assert "does not run vector ops" not in pages[ROOT / "docs" / "workloads" / "attention-backward.md"]


def test_timing_page_lists_every_ini_bound():
    from ascend_jax.chips import INI_LIMITS, MAX_CORES

    page = (ROOT / "docs" / "model" / "timing.md").read_text()
    for key in INI_LIMITS:
        assert f"`{key}`" in page, key
    assert f"whole number, 1..{MAX_CORES} |" in page and f"whole number, 1..{2 * MAX_CORES} |" in page
    assert "| 1..10000 MHz |" in page and INI_LIMITS["cube_freq"][:2] == (1.0, 10_000.0)
    assert "1/64..65536 bytes per cycle per core" in page


def test_docs_site_leaves_out_pycache():
    """``docs/hooks.py`` is imported by mkdocs, which would write ``docs/__pycache__``: the build
    turns bytecode off and ``exclude_docs`` leaves any ``__pycache__`` folder out of the site."""
    config = (ROOT / "mkdocs.yml").read_text()
    block = re.search(r"^exclude_docs: \|\n((?:  .*\n)+)", config, re.M)
    assert block and "__pycache__/" in block.group(1).split()
    assert re.search(r"^export PYTHONDONTWRITEBYTECODE=1\b", (ROOT / "docs" / "build.sh").read_text(), re.M)

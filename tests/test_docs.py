"""Runs every code block of ``docs/`` marked as runnable and checks the output the page shows.

Markers (HTML comments, invisible in the rendered site), each on its own line right before a
fenced block:

* ``<!-- run -->`` before a ```` ```python ```` or ```` ```bash ```` block: the block is run.
  ``<!-- run exit=3 -->`` expects that exit code from every command of a bash block (default 0).
  Python blocks of one page share one namespace and run in page order, like a notebook.
  Bash blocks may contain only ``ascend-jax ...`` commands (run in-process through
  :func:`ascend_jax.cli.main`, from the repository root); anything else is a test failure, so a
  page never marks as runnable a command the test cannot run. A single-lane ``ascend-jax run``
  that names no ``--engine`` runs with ``--engine reference``: the output is the same for both
  engines (``tests/cli/test_result_json.py`` and ``tests/cube_group/test_hand_cases.py`` check that), and the reference
  needs no compilation, which keeps this test fast.
* ``<!-- output -->`` before the block showing what the previous runnable block printed: every
  non-empty shown line (spaces collapsed) must occur in the real output; a line ``...`` is skipped.
* ``<!-- output json -->``: the shown block is JSON and must be a *subset* of the JSON the last
  command printed: shown keys must exist with equal values (recursively), shown lists must have
  the real length, and the string ``"..."`` matches any value.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shlex
from pathlib import Path

import pytest

from ascend_jax.cli import main as cli_main
from ascend_jax.errors import ConfigError
from ascend_jax.scenario import load_scenario

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
MARKER = re.compile(r"^<!--\s*(run|output)\b(.*?)-->\s*$")
FENCE = re.compile(r"^(```+)\s*([\w-]*)(.*)$")


@contextlib.contextmanager
def _chdir(path: Path):
    """``contextlib.chdir`` (Python 3.11+) for Python 3.10."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def parse_blocks(path: Path) -> list[dict]:
    """Marked fenced blocks of one page, in order: ``{"kind", "opts", "lang", "code", "line"}``."""
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = MARKER.match(lines[i].strip())
        if not m:
            i += 1
            continue
        kind, opts, start = m.group(1), m.group(2).split(), i + 1
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        f = FENCE.match(lines[j]) if j < len(lines) else None
        if f is None:
            raise AssertionError(f"{path.name}:{start}: marker <!-- {kind} --> is not followed by a fenced block")
        fence, lang = f.group(1), f.group(2)
        k = j + 1
        while k < len(lines) and lines[k].strip() != fence:
            k += 1
        if k == len(lines):
            raise AssertionError(f"{path.name}:{j + 1}: unterminated code block")
        blocks.append({"kind": kind, "opts": opts, "lang": lang, "code": "\n".join(lines[j + 1 : k]), "line": j + 1})
        i = k + 1
    return blocks


def pages_with_blocks() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if parse_blocks(p))


def bash_commands(code: str) -> list[list[str]]:
    """The commands of a bash block (continuation lines joined, comments dropped)."""
    joined = re.sub(r"\\\n", " ", code)
    cmds = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            cmds.append(words)
    return cmds


def with_fast_engine(argv: list[str]) -> list[str]:
    """``argv`` plus ``--engine reference`` for a single-lane run that names no engine."""
    batch = any(a == "--batch" or a.startswith("--batch=") for a in argv)
    named = any(a == "--engine" or a.startswith("--engine=") for a in argv)
    atomic = any(a.startswith("--atomic-order") for a in argv)
    if argv[:1] == ["run"] and not (batch or named or atomic):
        return [*argv, "--engine", "reference"]
    return argv


def run_cli(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _chdir(ROOT):
        try:
            rc = cli_main(argv)
        except SystemExit as e:  # argparse errors
            rc = e.code if isinstance(e.code, int) else 2
    return rc, out.getvalue() + err.getvalue()


def json_subset(shown, real, where: str = "$") -> None:
    """Asserts that ``shown`` (from the page) is contained in ``real`` (see the module docstring)."""
    if shown == "...":
        return
    if isinstance(shown, dict):
        assert isinstance(real, dict), f"{where}: page shows an object, the run printed {real!r}"
        for key, value in shown.items():
            assert key in real, f"{where}: page shows key {key!r}, the run has only {sorted(real)}"
            json_subset(value, real[key], f"{where}.{key}")
    elif isinstance(shown, list):
        assert isinstance(real, list) and len(real) == len(shown), f"{where}: page shows {shown!r}, run has {real!r}"
        for i, (s, r) in enumerate(zip(shown, real, strict=True)):
            json_subset(s, r, f"{where}[{i}]")
    elif isinstance(shown, float) and isinstance(real, (int, float)):
        assert math.isclose(shown, real, rel_tol=1e-6), f"{where}: page shows {shown}, the run printed {real}"
    else:
        assert shown == real, f"{where}: page shows {shown!r}, the run printed {real!r}"


def text_subset(shown: str, real: str, where: str) -> None:
    flat = " ".join(real.split())
    for line in shown.splitlines():
        want = " ".join(line.split())
        if want and want != "...":
            assert want in flat, f"{where}: the page shows {line!r}, not in the real output:\n{real}"


def test_fast_engine_only_for_single_lane_runs():
    assert with_fast_engine(["run", "x.toml", "--json"]) == ["run", "x.toml", "--json", "--engine", "reference"]
    assert with_fast_engine(["run", "x.toml", "--batch", "4"]) == ["run", "x.toml", "--batch", "4"]
    assert with_fast_engine(["run", "--engine", "jax"]) == ["run", "--engine", "jax"]
    assert with_fast_engine(["check", "x.toml"]) == ["check", "x.toml"]


def test_api_page_renders_every_public_name():
    """Every name in ``ascend_jax.__all__`` has a ``::: ascend_jax.NAME`` entry on the API page, and
    the page renders nothing else (a new public name fails here until it is documented)."""
    import ascend_jax

    listed = re.findall(r"^::: ascend_jax\.(\w+)\s*$", (DOCS / "reference" / "api.md").read_text(), re.M)
    assert sorted(listed) == sorted(ascend_jax.__all__)


def test_markers_are_found():
    """The docs do have runnable blocks (a renamed marker must not silently disable this test)."""
    pages = {p.relative_to(DOCS).as_posix() for p in pages_with_blocks()}
    assert {"getting-started.md", "pitfalls.md", "reference/api.md", "reference/cli.md"} <= pages


def test_every_example_scenario_loads():
    """Every example under docs/examples/ is valid, except ``invalid_*.toml``, which must be rejected."""
    examples = sorted((DOCS / "examples").glob("*.toml"))
    assert len(examples) >= 7
    for path in examples:
        if path.name.startswith("invalid_"):
            with pytest.raises(ConfigError):
                load_scenario(path)
        else:
            assert load_scenario(path).groups, path


@pytest.mark.parametrize("page", pages_with_blocks(), ids=lambda p: p.relative_to(DOCS).as_posix())
def test_runnable_blocks(page: Path):
    namespace: dict = {"__name__": "__docs__"}
    last_out: str | None = None
    for block in parse_blocks(page):
        where = f"{page.relative_to(ROOT)}:{block['line']}"
        if block["kind"] == "output":
            assert last_out is not None, f"{where}: an output block must follow a runnable block"
            if "json" in block["opts"]:
                try:  # stdout's JSON, then maybe stderr's progress lines (a run that took over a second)
                    real, end = json.JSONDecoder().raw_decode(last_out.lstrip())
                except json.JSONDecodeError as e:
                    raise AssertionError(f"{where}: the run did not print JSON ({e}):\n{last_out}") from None
                rest = last_out.lstrip()[end:].splitlines()
                assert all(not line or line.startswith("ascend-jax: ") for line in rest), f"{where}: {last_out}"
                json_subset(json.loads(block["code"]), real, where)
            else:
                text_subset(block["code"], last_out, where)
            continue
        opts = dict(o.split("=", 1) for o in block["opts"] if "=" in o)
        if block["lang"] == "python":
            out = io.StringIO()
            with contextlib.redirect_stdout(out), _chdir(ROOT):
                exec(compile(block["code"], where, "exec"), namespace)  # noqa: S102 - the docs' own code
            last_out = out.getvalue()
        elif block["lang"] in ("bash", "sh", "console"):
            want_rc = int(opts.get("exit", 0))
            commands = bash_commands(block["code"])
            assert commands, f"{where}: empty runnable block"
            for words in commands:
                assert words[0] == "ascend-jax", f"{where}: runnable bash blocks run only ascend-jax, not {words[0]!r}"
                rc, last_out = run_cli(with_fast_engine(words[1:]))
                assert rc == want_rc, f"{where}: `{shlex.join(words)}` exited {rc}, expected {want_rc}:\n{last_out}"
        else:
            raise AssertionError(f"{where}: cannot run a {block['lang']!r} block")

"""The CLI items of issue 26 ("Hardening II and the newcomer's path"): ``ascend-jax sweep``, strict
JSON with a ``version``, checks before any run, ``--ranks`` up to 64, light ``--version`` /
``models``, model inputs (``--seed``, ``None`` options), shadowed models, bfloat16 dumps, ``check``
listing every error, the work bound, the distributed wait and rich tables.

Every hostile input exits 2 with a message naming the field, the value, the rule and the fix, and
writes nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ascend_jax.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _refused(capsys, argv: list[str], *words: str) -> str:
    """Runs ``argv``, insists on exit 2, an ``invalid input`` line with a fix and every word in
    ``words`` (field, value, rule), no traceback and nothing on stdout; returns the message."""
    code, out, err = _cli(capsys, *argv)
    assert code == 2, (out, err)
    assert out == ""
    assert "Traceback" not in err
    assert err.startswith("invalid input: ") and "(fix: " in err, err
    for w in words:
        assert w in err, (w, err)
    return err


def _fresh(
    code: str, *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Runs ``code`` in a fresh interpreter at the repository root (no user models)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ASCEND_JAX_")}
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, env={**base, **(env or {})}, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def _no_nan(text: str) -> object:
    """``json.loads`` that rejects ``NaN`` / ``Infinity`` (strict JSON)."""

    def refuse(word: str) -> object:
        raise AssertionError(f"non-strict JSON constant {word}")

    return json.loads(text, parse_constant=refuse)


# -- item 12: --version and models import no pydantic ------------------------------------------

_LOADED = """
import contextlib, io, json, sys
from ascend_jax.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "loaded": [m for m in ("pydantic", "pydantic_core", "jax") if m in sys.modules]}))
"""


@pytest.mark.parametrize("argv", [["--version"], ["models"]], ids=" ".join)
def test_version_and_models_import_no_pydantic(argv):
    p = _fresh(_LOADED, *argv)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out == {"rc": 0, "loaded": []}


def test_run_args_still_validated_lazily(capsys):
    _refused(capsys, ["run", "--seed", "4294967295", "--batch", "2"], "--seed", "4294967295", "uint32")
    _refused(capsys, ["run", "--batch", "0"], "--batch", "= 0", ">= 1")

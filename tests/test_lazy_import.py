"""Fast single runs: ``import ascend_jax`` and the CLI's one-lane reference paths never import JAX.

Importing JAX (and ``ml_dtypes``, whose extension alone takes about half a second to load) costs
seconds, more than a one-lane run in the reference interpreter. The package therefore resolves its
public names on first use (PEP 562 ``__getattr__`` in ``ascend_jax/__init__.py``), the modules the
reference interpreter shares with the JAX engine (``gm``, ``matmul``) import JAX only inside their
JAX functions, and bfloat16 is loaded when a bfloat16 tensor is first used. Each check runs in a
fresh interpreter, since this test process has long imported JAX.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ascend_jax
import ascend_jax.aicpu
from ascend_jax.cli import main

ROOT = Path(__file__).resolve().parent.parent
#: modules a single reference run must not load
HEAVY = ("jax", "jaxlib", "ml_dtypes")

#: an expression, in the child, for the heavy modules it has loaded
LOADED = f"[m for m in {HEAVY!r} if m in sys.modules]"

_CLI = f"""
import contextlib, io, json, sys
from ascend_jax.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    rc = main(sys.argv[1:])
print(json.dumps({{"rc": rc, "loaded": {LOADED}}}))
"""


def _python(code: str, *args: str) -> dict:
    """Runs ``code`` in a fresh interpreter (repository root, no user models); returns the JSON its
    last stdout line holds."""
    env = {k: v for k, v in os.environ.items() if k != "ASCEND_JAX_MODELS"}
    p = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_import_ascend_jax_loads_no_jax():
    out = _python(f"import json, sys, ascend_jax, ascend_jax.aicpu; print(json.dumps({LOADED}))")
    assert out == []


@pytest.mark.parametrize(
    "argv",
    [
        ["--version"],
        ["check", "ascend_jax/scenarios/default.toml"],
        ["models"],
        ["schema"],
        ["run"],
        ["run", "--schedule", "timed"],
        ["run", "models/merge_example.toml", "--json"],
        ["run", "--model", "cube_group_sample"],
        ["run", "--model", "allreduce", "--ranks", "8"],
        ["run", "--model", "p2p_send_recv", "--json"],
    ],
    ids=" ".join,
)
def test_cli_single_runs_load_no_jax(argv):
    out = _python(_CLI, *argv)
    assert out["rc"] == 0
    assert out["loaded"] == [], f"`ascend-jax {' '.join(argv)}` imported {out['loaded']} (see this module's docstring)"


def test_public_names_resolve_lazily():
    code = f"""
import importlib, json, sys
import ascend_jax as aj
import ascend_jax.aicpu as ac
before = {LOADED}
wrong = [n for n in aj.__all__ if getattr(aj, n) is not getattr(importlib.import_module(aj._ORIGIN[n]), n)]
missing = [n for n in ac.__all__ if not hasattr(ac, n)]
ns = {{}}
exec("from ascend_jax import *", ns)
print(json.dumps({{"before": before, "wrong": wrong, "missing": missing, "star": sorted(set(aj.__all__) - set(ns)),
                  "dir": sorted(set(aj.__all__) - set(dir(aj))), "jax_after": "jax" in sys.modules,
                  "version": aj.__version__}}))
"""
    out = _python(code)
    assert out["before"] == [] and out["wrong"] == [] and out["missing"] == []
    assert out["star"] == [] and out["dir"] == []
    assert out["jax_after"]  # simulate, lane_bytes, init_distributed: the JAX engine, loaded on first use
    assert out["version"] == ascend_jax.__version__


def test_lazy_names_in_this_process():
    assert set(ascend_jax._ORIGIN) == set(ascend_jax.__all__)
    for name in ascend_jax.__all__:
        assert getattr(ascend_jax, name) is not None
    assert callable(ascend_jax.aicpu.run_comm) and callable(ascend_jax.aicpu.run_comm_batch)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ascend_jax.nope  # noqa: B018
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ascend_jax.aicpu.nope  # noqa: B018
    with pytest.raises(ImportError):
        exec("from ascend_jax import nope", {})


def _summary(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(argv)
    return rc, out.getvalue().splitlines()[0]


def test_comm_single_run_defaults_to_the_reference():
    rc, auto = _summary(["run", "--model", "p2p_send_recv"])
    rc_jax, jax = _summary(["run", "--model", "p2p_send_recv", "--engine", "jax"])
    assert rc == rc_jax == 0
    assert "engine=reference" in auto and "engine=jax" in jax
    # the same run either way, up to the engine label and the wall time
    assert auto.split("wall=")[0].replace("reference", "jax") == jax.split("wall=")[0]

"""ascend_jax.xla_flags: the LLVM option `import ascend_jax` adds to XLA_FLAGS, and when it leaves it alone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ascend_jax import xla_flags
from ascend_jax.xla_flags import LLVM_OPTIONS, OPT_OUT_ENV, prefer_fast_compile

OPTION = f"--xla_backend_extra_options={LLVM_OPTIONS}"


@pytest.fixture
def no_gpu(monkeypatch):
    """No GPU plugin installed, whatever this machine has."""
    monkeypatch.setattr(xla_flags, "_gpu_possible", lambda environ: False)


def test_adds_the_option_to_empty_flags(no_gpu):
    env: dict[str, str] = {}
    assert prefer_fast_compile(env)
    assert env["XLA_FLAGS"] == OPTION


def test_keeps_the_users_other_flags(no_gpu):
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert prefer_fast_compile(env)
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {OPTION}"


@pytest.mark.parametrize(
    "env",
    [
        {OPT_OUT_ENV: "0"},
        {OPT_OUT_ENV: " 0 ", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
        {"XLA_FLAGS": "--xla_backend_extra_options=-unroll-threshold=300"},
    ],
    ids=["opt-out", "opt-out-with-flags", "users-own-llvm-options"],
)
def test_leaves_the_environment_alone(no_gpu, env):
    before = dict(env)
    assert not prefer_fast_compile(env)
    assert env == before


def test_a_gpu_plugin_leaves_the_flags_unless_the_cpu_is_pinned(monkeypatch):
    found = {"jax_cuda12_plugin"}
    monkeypatch.setattr(xla_flags.importlib.util, "find_spec", lambda name: object() if name in found else None)
    env: dict[str, str] = {}
    assert not prefer_fast_compile(env)
    assert "XLA_FLAGS" not in env
    env = {"JAX_PLATFORMS": "cpu"}
    assert prefer_fast_compile(env)
    assert env["XLA_FLAGS"] == OPTION


def _child(env_extra: dict[str, str]) -> str:
    """XLA_FLAGS as a fresh interpreter sees it after ``import ascend_jax``, the two engines and one
    jitted function (XLA parses the option there: a bad one would fail the run)."""
    code = (
        "import os, jax, jax.numpy as jnp\n"
        "import ascend_jax\n"
        "assert '-unroll-threshold' in os.environ.get('XLA_FLAGS', '') or os.environ.get('ASCEND_JAX_XLA_FLAGS') == '0'\n"
        "import ascend_jax.cube_group.engine, ascend_jax.aicpu.engine\n"
        "assert int(jax.jit(lambda x: (x * 3).sum())(jnp.arange(40))) == 2340\n"
        "print(os.environ.get('XLA_FLAGS', ''))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", OPT_OUT_ENV)}
    env.update(JAX_PLATFORMS="cpu", **env_extra)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_importing_ascend_jax_sets_the_flag_once_and_jax_runs():
    assert _child({}) == OPTION  # set by import ascend_jax, once
    assert _child({OPT_OUT_ENV: "0"}) == ""


@pytest.mark.parametrize(("raw", "want"), [("", True), ("1", True), (" 1 ", True), ("0", False), (" 0", False)])
def test_opt_out_values(raw, want):
    assert xla_flags.opted_in({OPT_OUT_ENV: raw}) is want
    assert xla_flags.opted_in({}) is True


@pytest.mark.parametrize("raw", ["yes", "2", "off", "-0", "0x0"])
def test_a_bad_opt_out_value_warns_and_leaves_the_flags(no_gpu, raw):
    """The library warns (it cannot exit) and changes nothing; ``opted_in`` names the variable."""
    env = {OPT_OUT_ENV: raw, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    with pytest.warns(UserWarning, match=OPT_OUT_ENV):
        assert not prefer_fast_compile(env)
    assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"
    with pytest.raises(xla_flags.ConfigError, match="must be 0 or 1"):
        xla_flags.opted_in(env)


def test_the_cli_exits_2_on_a_bad_opt_out_value(capsys, monkeypatch):
    from _exit2 import exit_2

    monkeypatch.setenv(OPT_OUT_ENV, "maybe")
    exit_2(capsys, ["models"], OPT_OUT_ENV, "'maybe'", "must be 0 or 1")


def test_the_ascend_jax_command_reports_a_bad_value_once():
    """The console script checks the variable itself: the package import does not warn first, so
    the message appears once, as the ``invalid input:`` line, with exit code 2."""
    script = os.path.join(os.path.dirname(sys.executable), "ascend-jax")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update({OPT_OUT_ENV: "yes", "JAX_PLATFORMS": "cpu"})
    out = subprocess.run([script, "models"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.count("must be 0 or 1") == 1 and out.stderr.startswith("invalid input: ")
    assert "Warning" not in out.stderr and out.stdout == ""

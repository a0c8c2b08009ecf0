"""Scale-out over processes: a two-process ``jax.distributed`` run on this CPU equals one process.

Two worker processes (``tests/_multihost.py``), two CPU devices each, join one run through the
``ASCEND_JAX_*`` variables on a free local port; the lanes are sharded over the four devices of
both processes and every process prints the whole batch. The test runs the same batches in its
own single-device process and compares lane by lane. Also: bad variables are rejected before any
connection is tried, with exit code 2 on the command line.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import _multihost
import pytest

from ascend_jax.cli import main as cli_main
from ascend_jax.cube_group.engine import DISTRIBUTED_ENV, init_distributed
from ascend_jax.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one_process_lane_by_lane(tmp_path):
    port = _free_port()
    base = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}
    base.update(
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        JAX_PLATFORMS="cpu",
        ASCEND_JAX_COORDINATOR=f"localhost:{port}",
        ASCEND_JAX_NUM_PROCESSES="2",
    )
    procs, logs = [], []
    for i in range(2):  # output to files, not pipes: a full pipe would stall one process at exit
        logs.append((tmp_path / f"out{i}.txt", tmp_path / f"err{i}.txt"))
        with open(logs[i][0], "w") as out, open(logs[i][1], "w") as err:
            env = {**base, "ASCEND_JAX_PROCESS_ID": str(i)}
            script = str(ROOT / "tests" / "_multihost.py")
            procs.append(subprocess.Popen([sys.executable, script], env=env, cwd=ROOT, stdout=out, stderr=err))
    try:
        single = _multihost.lanes_json(_multihost.batch())  # meanwhile, here: one process, one device
        codes = [p.wait(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for code, (_, err) in zip(codes, logs, strict=True):
        assert code == 0, err.read_text()[-3000:]
    printed = [out.read_text().splitlines() for out, _ in logs]
    assert [len(lines) for lines in printed] == [1, 1]  # stdout holds the JSON only (Gloo chats on stderr)
    outs = [json.loads(lines[0]) for lines in printed]
    refused = "devices = 2: a multi-process run shards the lanes over all 4 devices of its 2 processes"
    differ = "every process of a multi-process run must call simulate with the same programs, seeds and options"
    for i, o in enumerate(outs):
        info = o["info"]
        assert (info["processes"], info["index"], info["devices"]) == (2, i, 4)
        assert info["devices=2"] == f"{refused} (fix: leave devices (--devices) out)"
        assert info["mismatch"].startswith(f"programs = 'process {i} of 2': {differ}")
    for o in outs:  # every process got the whole batch, equal to the one-device run lane by lane
        assert len(o["lanes"]) == len(single) == 10
        for lane, (got, want) in enumerate(zip(o["lanes"], single, strict=True)):
            assert got == want, f"lane {lane} differs"
    assert [lane["status"] for lane in single] == ["ok", "deadlock"] * 5
    assert len({lane["gm_sha256"] for lane in single}) == 2  # C_0 and C_1, or C_0 only
    assert len({lane["steps"] for lane in single}) > 1  # the random schedule: lanes differ


@pytest.mark.parametrize(
    ("env", "field", "rule"),
    [
        ({"ASCEND_JAX_COORDINATOR": "localhost", "ASCEND_JAX_NUM_PROCESSES": "2", "ASCEND_JAX_PROCESS_ID": "0"},
         "ASCEND_JAX_COORDINATOR = 'localhost'", "HOST:PORT"),
        ({"ASCEND_JAX_COORDINATOR": "localhost:99999", "ASCEND_JAX_NUM_PROCESSES": "2", "ASCEND_JAX_PROCESS_ID": "0"},
         "ASCEND_JAX_COORDINATOR = 'localhost:99999'", "port in 1..65535"),
        ({"ASCEND_JAX_COORDINATOR": "localhost:1234", "ASCEND_JAX_NUM_PROCESSES": "two", "ASCEND_JAX_PROCESS_ID": "0"},
         "ASCEND_JAX_NUM_PROCESSES = 'two'", "integer in 1..65536"),
        ({"ASCEND_JAX_COORDINATOR": "localhost:1234", "ASCEND_JAX_NUM_PROCESSES": "2", "ASCEND_JAX_PROCESS_ID": "2"},
         "ASCEND_JAX_PROCESS_ID = '2'", "integer in 0..1"),
        ({"ASCEND_JAX_COORDINATOR": "localhost:1234", "ASCEND_JAX_NUM_PROCESSES": "2"},
         "ASCEND_JAX_PROCESS_ID = None", "needs a coordinator, a number of processes and a process id"),
    ],
)  # fmt: skip
def test_bad_distributed_variables_exit_2_naming_the_variable(monkeypatch, capsys, env, field, rule):
    for k in DISTRIBUTED_ENV:
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    code = cli_main(["run", str(ROOT / "docs" / "examples" / "first.toml"), "--engine", "jax", "--batch", "2"])
    err = capsys.readouterr().err
    assert code == 2
    assert field in err and rule in err and "fix:" in err


def test_joining_after_jax_started_exits_2(monkeypatch, capsys):
    # the CLI's --devices check starts JAX before simulate could join: a clear error, no hang
    monkeypatch.setenv("ASCEND_JAX_COORDINATOR", f"localhost:{_free_port()}")
    monkeypatch.setenv("ASCEND_JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("ASCEND_JAX_PROCESS_ID", "1")
    code = cli_main(["run", str(ROOT / "docs" / "examples" / "first.toml"), "--engine", "jax", "--devices", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "ASCEND_JAX_COORDINATOR" in err and "JAX had already started" in err and "leave --devices out" in err


def test_init_distributed_arguments_are_checked_and_nothing_asked_is_a_no_op(monkeypatch):
    for k in DISTRIBUTED_ENV:
        monkeypatch.delenv(k, raising=False)
    assert init_distributed() is False  # a single-process run: nothing to join
    with pytest.raises(ConfigError, match=r"process_id = -1: must be an integer in 0\.\.3"):
        init_distributed(coordinator="localhost:1234", num_processes=4, process_id=-1)
    with pytest.raises(ConfigError, match=r"num_processes = None: .*only coordinator and process_id given"):
        init_distributed(coordinator="localhost:1234", num_processes=None, process_id=0)

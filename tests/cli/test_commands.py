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

ROOT = Path(__file__).resolve().parents[2]


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
    # progress lines ("building model ...") may come first when a step takes over 2 s on a loaded machine
    message = err[err.index("invalid input: ") :] if "invalid input: " in err else ""
    assert message and "(fix: " in message, err
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


@pytest.mark.parametrize(
    "argv", [["--version"], ["models"], ["sweep", "-b", "64", "-e", "256", "-g", "2"]], ids=" ".join
)
def test_version_and_models_import_no_pydantic(argv):
    p = _fresh(_LOADED, *argv)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out == {"rc": 0, "loaded": []}


def test_run_args_still_validated_lazily(capsys):
    _refused(capsys, ["run", "--seed", "4294967295", "--batch", "2"], "--seed", "4294967295", "uint32")
    _refused(capsys, ["run", "--batch", "0"], "--batch", "= 0", ">= 1")


# -- item 1: ascend-jax sweep ----------------------------------------------------------------


def test_sweep_prints_the_nccl_tests_layout(capsys):
    code, out, err = _cli(capsys, "sweep", "--model", "reduce_scatter", "-b", "256", "-e", "1K", "-f", "2", "-g", "4")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "# ascend-jax sweep: simulated ring reduce_scatter on 4 ranks"
    assert "SIMULATED" in lines[1]
    assert "minBytes 256 maxBytes 1024 step: 2(factor) ranks: 4 dtype: float engine: reference" in lines[2]
    data = [ln.split() for ln in lines if not ln.startswith("#")]
    assert [row[:5] for row in data] == [
        ["256", "64", "float", "sum", "-1"],
        ["512", "128", "float", "sum", "-1"],
        ["1024", "256", "float", "sum", "-1"],
    ]
    assert all(row[8] == "0" and row[12] == "0" for row in data)  # #wrong, out of place and in place
    assert "# Out of bounds values : 0 OK" in lines


def test_sweep_json_is_strict_and_complete(capsys):
    code, out, _ = _cli(capsys, "sweep", "--model", "allgather", "-b", "8", "-e", "64", "-f", "4", "-g", "2",
                        "--dtype", "half", "--json")  # fmt: skip
    assert code == 0
    doc = _no_nan(out)
    assert set(doc) == {"op", "ranks", "dtype", "engine", "cost", "rows", "avg_busbw"}
    assert (doc["op"], doc["ranks"], doc["dtype"], doc["engine"]) == ("allgather", 2, "half", "reference")
    assert [r["size"] for r in doc["rows"]] == [8, 32]  # -b 8 is already one half per rank; x4 up to 64
    assert doc["cost"]["link_bw"] > 0 and doc["avg_busbw"] > 0
    assert all(r[k]["status"] == "ok" and r[k]["wrong"] == 0 for r in doc["rows"] for k in ("out_of_place", "in_place"))


def test_sweep_raises_a_small_size_to_one_element_per_rank(capsys):
    code, out, _ = _cli(capsys, "sweep", "-b", "1", "-e", "64", "-g", "4", "--json")
    assert code == 0
    assert [r["size"] for r in json.loads(out)["rows"]] == [16, 32, 64]  # 1, 2, 4, 8 and 16 bytes -> 16, once


def test_sweep_exits_3_when_elements_are_wrong(capsys):
    # int8 sums of 8 ranks wrap around: nccl-tests' #wrong, exit 3
    code, out, _ = _cli(capsys, "sweep", "--dtype", "int8", "-g", "8", "-b", "128", "-e", "128")
    assert code == 3
    assert "FAILED" in out


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["-b", "0"], ["-b = '0'", "1 .. 67108864 bytes"]),
        (["-b", "1X"], ["-b = '1X'", "K, M or G"]),
        (["-b", "1e3"], ["-b = '1e3'", "whole number of bytes"]),
        (["-b", "99999999999999999999"], ["-b = '9999", "whole number"]),
        (["-e", "65M"], ["-e = '65M'", "64M"]),
        (["-e", "-1"], ["-e = '-1'", "whole number"]),
        (["-b", "8K", "-e", "1K"], ["-b = '8K'", "above -e"]),
        (["-f", "1"], ["-f = '1'", "2..1048576"]),
        (["-f", "two"], ["-f = 'two'", "whole number"]),
        (["-g", "65"], ["-g = '65'", "2..64"]),
        (["-g", "1"], ["-g = '1'", "2..64"]),
        (["-g", "64", "-e", "2M"], ["-e = '2M'", "64 ranks x 2097152 bytes"]),
        (["--model", "p2p_send_recv", "-g", "4"], ["-g = '4'", "2 ranks"]),
        (["--model", "p2p_send_recv", "--dtype", "half"], ["--dtype = 'half'", "float data only"]),
        (["--dtype", "fp8"], ["--dtype = 'fp8'", "nccl-tests' names"]),
        (["--model", "alreduce"], ["--model = 'alreduce'", "did you mean 'allreduce'"]),
        (["--model", "../x.py"], ["--model = '../x.py'", "sweep runs one of"]),
        (["--engine", "gpu"], ["--engine = 'gpu'", "reference or jax"]),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) and v and v[0].startswith("-") else "",
)
def test_sweep_refuses_bad_flags(capsys, argv, words):
    _refused(capsys, ["sweep", *argv], *words)


# -- item 2: strict JSON with the package version --------------------------------------------

HUGE_ANSWER = '''"""atomic_accumulate with a numpy answer of 1e300s: its relative L2 error is inf / inf = NaN."""
import numpy as np
from ascend_jax.scenario import load_scenario

def build(seed: int = 0):
    return load_scenario({path!r})

def expected(program):
    return {{"c": np.full((32, 32), 1e300)}}
'''


def test_run_json_is_strict_with_null_and_a_reason(capsys, tmp_path, monkeypatch):
    import ascend_jax

    (tmp_path / "acc_huge.py").write_text(HUGE_ANSWER.format(path=str(ROOT / "models" / "atomic_accumulate.toml")))
    monkeypatch.setenv("ASCEND_JAX_MODELS", str(tmp_path))
    code, out, _ = _cli(capsys, "run", "--model", "acc_huge", "--json")
    assert code == 3  # the numpy check fails
    doc = _no_nan(out)  # json.dumps would have written NaN here
    check = doc["numerics"]["c"]["numpy_check"]
    assert check["rel_l2_error"] is None and check["rel_l2_error_null_reason"].startswith("was NaN")
    assert doc["version"] == ascend_jax.__version__


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "models/merge_example.toml", "--json"],
        ["run", "--model", "p2p_send_recv", "--json"],
        ["run", "--model", "allreduce", "--ranks", "3", "--batch", "2", "--engine", "reference", "--json"],
    ],
    ids=" ".join,
)
def test_every_run_json_has_the_version(capsys, argv):
    import ascend_jax

    code, out, _ = _cli(capsys, *argv)
    assert code == 0
    doc = _no_nan(out)
    assert doc["version"] == ascend_jax.__version__
    assert len(doc.get("batch", [0, 0])) == 2


# -- item 3: --report's links and an empty --trace are refused before any run -----------------


@pytest.mark.parametrize("model", ["cube_group_sample", "p2p_send_recv"])
def test_report_link_refused_before_the_run(capsys, tmp_path, model):
    folder, secret = tmp_path / "r", tmp_path / "secret.txt"
    folder.mkdir()
    secret.write_text("keep")
    (folder / "report.md").symlink_to(secret)
    trace = tmp_path / "t.json"
    err = _refused(capsys, ["run", "--model", model, "--report", str(folder), "--trace", str(trace)],
                   "--report", "report.md", "a link")  # fmt: skip
    assert "ascend-jax:" not in err  # no progress, trace or report note: nothing ran
    assert secret.read_text() == "keep" and not trace.exists()
    assert sorted(p.name for p in folder.iterdir()) == ["report.md"]


@pytest.mark.parametrize(
    ("flag", "words"),
    [("--trace", ["--trace = ''", "no file would be written"]), ("--report", ["--report = ''", "names no folder"]),
     ("--dump", ["--dump = ''", "names no folder"]), ("--trace", ["--trace = ' '", "is empty"])],
)  # fmt: skip
def test_empty_output_paths_are_refused(capsys, tmp_path, monkeypatch, flag, words):
    monkeypatch.chdir(tmp_path)
    value = " " if "' '" in words[0] else ""
    _refused(capsys, ["run", str(ROOT / "models" / "merge_example.toml"), flag, value], *words)
    assert list(tmp_path.iterdir()) == []


# -- item 8: --ranks 2..64 for the ring comm models -------------------------------------------


def test_sixteen_rank_allreduce_runs_and_matches_numpy(capsys):
    import numpy as np

    from ascend_jax.aicpu.reference import run_comm_reference
    from ascend_jax.models import load_model

    code, out, _ = _cli(capsys, "run", "--model", "allreduce", "--ranks", "16")
    assert code == 0  # the model's numpy answer agrees (exit 3 otherwise)
    assert "ranks=16  status=ok" in out.splitlines()[0]
    program, _, _ = load_model("allreduce", ranks=16)
    result = run_comm_reference(program)
    want = np.sum([np.asarray(x, np.float64) for x in program.world.inputs], axis=0)
    for r in range(16):
        np.testing.assert_allclose(result.output(f"rank{r}.recvBuf"), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("value", "rule"), [("65", "must be <= 64"), ("1", "must be >= 2"), ("0", "must be >= 2")])
def test_ranks_outside_2_to_64_refused(capsys, value, rule):
    _refused(capsys, ["run", "--model", "reduce_scatter", "--ranks", value], f"--ranks = {value}", rule)


# -- item 7: --seed reaches the model; options with a None default ----------------------------


def test_seed_changes_a_models_generated_inputs(capsys, tmp_path):
    import numpy as np

    dumps = {}
    for seed in ("0", "1", "1"):
        folder = tmp_path / f"d{seed}-{len(dumps)}"
        code, _, err = _cli(capsys, "run", "--model", "cube_group_sample", "--seed", seed, "--dump", str(folder))
        assert code == 0, err
        dumps[folder.name] = np.load(folder / "a.npy")
    a0, a1, a1_again = dumps.values()
    assert not np.array_equal(a0, a1)  # another seed, other inputs
    np.testing.assert_array_equal(a1, a1_again)  # the same seed, the same inputs


def test_comm_model_inputs_follow_the_seed():
    from ascend_jax.models import load_model

    p0, p1 = (load_model("p2p_send_recv", seed=seed)[0] for seed in (0, 1))
    assert not (p0.world.inputs[0] == p1.world.inputs[0]).all()


def test_documented_d128_causal_128_block_case_runs(capsys):
    # the build() docstring of attention_grad: D = 128, causal, 128 x 128 blocks: 32 rows fit the UB
    argv = ["run", "--model", "attention_grad", "--model-arg", "d=128", "--model-arg", "causal=true",
            "--model-arg", "block_s1=128", "--model-arg", "block_s2=128"]  # fmt: skip
    code, out, err = _cli(capsys, *argv, "--model-arg", "vec_rows=32")
    assert code == 0, err
    assert "status=ok" in out.splitlines()[0]
    _refused(capsys, argv, "UB buffers take", "> UB 196608 B")  # the default slice (64 rows) does not fit
    code, out, _ = _cli(capsys, "run", "--model", "attention_grad", "--model-arg", "vec_rows=None")
    assert code == 0  # "none" gives the default back


@pytest.mark.parametrize(
    ("arg", "words"),
    [
        ("vec_rows=abc", ["vec_rows=abc", "an integer or none", "vec_rows=none"]),
        ("vec_rows=1.5", ["vec_rows=1.5", "an integer or none"]),
        ("qk_scale=nan", ["qk_scale=nan", "a finite number"]),
        ("qk_scale=-inf", ["qk_scale=-inf", "a finite number"]),
        ("d=" + "9" * 5000, ["--model-arg", "d must be an integer"]),
        ("causal=maybe", ["causal=maybe", "true or false"]),
    ],
    ids=lambda v: v[:20] if isinstance(v, str) else "",
)
def test_bad_model_option_values_refused(capsys, arg, words):
    _refused(capsys, ["run", "--model", "attention_grad", "--model-arg", arg], *words)


def test_none_default_without_annotation_tries_int_float_bool_text(tmp_path, monkeypatch):
    from ascend_jax.models import load_model

    (tmp_path / "opt_probe.py").write_text(
        '"""Records its options."""\nfrom ascend_jax.scenario import load_scenario\nSEEN = {}\n\n'
        f"def build(seed=0, x=None):\n    SEEN['x'] = x\n    return load_scenario({str(ROOT / 'models' / 'merge_example.toml')!r})\n"
    )
    monkeypatch.setenv("ASCEND_JAX_MODELS", str(tmp_path))
    seen = []
    for text in ("3", "2.5", "yes", "abc", "none"):
        load_model("opt_probe", options={"x": text})
        seen.append(sys.modules["ascend_jax_model_opt_probe"].SEEN["x"])
    assert seen == [3, 2.5, True, "abc", None]


# -- item 9: a model in $ASCEND_JAX_MODELS never silently shadows another ----------------------


def test_a_user_model_named_like_a_shipped_one_is_refused(capsys, tmp_path, monkeypatch):
    from ascend_jax.models import shipped_models_dir

    shipped = shipped_models_dir()
    mine = tmp_path / "allreduce.py"
    mine.write_text('"""Not the shipped allreduce."""\nraise SystemExit("imported!")\n')
    monkeypatch.setenv("ASCEND_JAX_MODELS", str(tmp_path))
    err = _refused(capsys, ["run", "--model", "allreduce"], "--model = 'allreduce'", str(mine),
                   str(shipped / "allreduce.py"), "shadow", "rename your file")  # fmt: skip
    assert "imported!" not in err  # refused before importing either file
    code, out, _ = _cli(capsys, "models")
    assert code == 0
    line = next(ln for ln in out.splitlines() if ln.startswith("allreduce "))
    assert "refused: also defined by" in line
    # the folder listed twice (or the shipped folder listed itself) is no conflict
    monkeypatch.setenv("ASCEND_JAX_MODELS", os.pathsep.join([str(shipped), str(shipped / ".." / shipped.name)]))
    code, out, _ = _cli(capsys, "run", "--model", "allreduce")
    assert code == 0


def test_two_user_files_of_one_name_are_refused(capsys, tmp_path, monkeypatch):
    (tmp_path / "mine.toml").write_text((ROOT / "models" / "merge_example.toml").read_text())
    (tmp_path / "mine.py").write_text('"""A Python model of the same name."""\n')
    monkeypatch.setenv("ASCEND_JAX_MODELS", str(tmp_path))
    _refused(capsys, ["run", "--model", "mine"], "mine.py", "mine.toml", "defined by 2 files")


# -- item 10: bfloat16 dumps load as numbers ---------------------------------------------------


def test_bfloat16_dump_loads_as_float32_with_the_same_values(capsys, tmp_path):
    import ml_dtypes
    import numpy as np

    from ascend_jax.scenario import load_scenario

    text = (ROOT / "models" / "merge_example.toml").read_text()
    text += '\n[[tensor]]\nname = "w"\nshape = [4, 8]\ndtype = "bfloat16"\ninit = "random"\nseed = 3\n'
    text += '\n[[tensor]]\nname = "h"\nshape = [3]\ndtype = "float16"\ninit = "random"\n'
    scenario = tmp_path / "bf16.toml"
    scenario.write_text(text)
    folder = tmp_path / "dump"
    code, _, err = _cli(capsys, "run", str(scenario), "--dump", str(folder))
    assert code == 0, err
    w, h = np.load(folder / "w.npy"), np.load(folder / "h.npy")
    assert w.dtype == np.float32 and h.dtype == np.float16  # not |V2; other dtypes unchanged
    program = load_scenario(scenario)
    want = program.gm.read("w", program.gm.image)
    assert want.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(w, want.astype(np.float32))
    assert np.array_equal(w.astype(ml_dtypes.bfloat16).astype(np.float32), w)  # exactly bfloat16 values
    assert np.abs(w).max() > 0


# -- item 6: check lists every error, each with a fix -----------------------------------------

MANY_ERRORS = """
name = "multi"
[[group]]
name = "g"
block_start = 1
block_size = 0
msg_queue_size = 2
colour = "red"
[[aiv]]
block_idx = "0"
ops = [{ op = "assign_queue", group = "g", queue = 0 }, { op = "pst", group = "g" }]
"""

CROSS_ERRORS = """
name = "cross"
[[group]]
name = "g"
block_start = 0
block_size = 2
msg_queue_size = 2
callback = "mrge"
[[tensor]]
name = "x"
shape = [4]
dtype = "float32"
init = "nope.npy"
[[aiv]]
block_idx = 0
ops = [{ op = "assign_queue", group = "g", queue = 0 }, { op = "post", group = "g", fields = { funcID = "x", tailM = -1 } }]
"""

BUILD_ERRORS = """
name = "build"
[[group]]
name = "g"
block_start = 0
block_size = 2
msg_queue_size = 2
[[aiv]]
block_idx = 0
ops = [{ op = "assign_queue", group = "g", queue = 5 }]
[[aiv]]
block_idx = 1
ops = [{ op = "assign_queue", group = "h", queue = 0 }]
[[aiv]]
block_idx = 1
ops = []
"""


def _check_lines(capsys, tmp_path, text: str) -> list[str]:
    path = tmp_path / "s.toml"
    path.write_text(text)
    code, out, err = _cli(capsys, "check", str(path))
    assert code == 2 and out == "" and "Traceback" not in err
    lines = err.splitlines()
    assert lines[-1].startswith(f"{path}: ")
    for line in lines[:-1]:
        assert line.startswith("invalid input: ") and "(fix: " in line, line
    return lines


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        (MANY_ERRORS, ["group[0].colour = 'red'", "group[0].block_size = 0", "aiv[0].block_idx = '0'",
                       "aiv[0].ops[1].op = 'pst'"]),
        (CROSS_ERRORS, ["group[0].callback = 'mrge'", "aiv[0].ops[1].fields.funcID = 'x'",
                        "tensor[0].init = 'nope.npy'"]),
        (BUILD_ERRORS, ["aiv[0].ops[0].queue = 5", "aiv[1].ops[0].group = 'h'", "aiv[2].block_idx = 1"]),
    ],
    ids=["schema", "cross-checks", "builders"],
)  # fmt: skip
def test_check_lists_every_error_with_its_fix(capsys, tmp_path, text, fields):
    lines = _check_lines(capsys, tmp_path, text)
    assert len(lines) == len(fields) + 1
    for field, line in zip(fields, lines, strict=False):
        assert field in line
    assert lines[-1].endswith(f": {len(fields)} errors")


def test_check_caps_the_list_at_20(capsys, tmp_path):
    keys = "\n".join(f"bad_key_{i} = {i}" for i in range(25))
    text = MANY_ERRORS.replace('colour = "red"', keys)
    lines = _check_lines(capsys, tmp_path, text)
    assert len(lines) == 21
    assert lines[-1].endswith(": 28 errors (the first 20 shown)")


def test_run_still_stops_at_the_first_error(capsys, tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(CROSS_ERRORS)
    err = _refused(capsys, ["run", str(path)], "group[0].callback = 'mrge'")
    assert len(err.splitlines()) == 1


def test_post_field_messages_carry_a_fix(capsys, tmp_path):
    # the two post-field messages that had no fix: a quoted number and a negative size
    lines = _check_lines(capsys, tmp_path, CROSS_ERRORS)
    assert "funcID = 'x'" in lines[1] and "(fix: write the number without quotes)" in lines[1]
    lines = _check_lines(capsys, tmp_path, CROSS_ERRORS.replace('funcID = "x", ', ""))
    assert "tailM = -1: must be >= 0 (a size in elements) (fix: write 0 or a positive size)" in lines[1]


# -- item 4: a work bound before any run, progress while it runs -----------------------------

REPRO = ["run", "--model", "attention_grad", "--model-arg", "s1=8192", "--model-arg", "s2=8192",
         "--model-arg", "batch=2", "--model-arg", "d=16"]  # fmt: skip


def test_the_issue_repro_is_refused_before_the_build(capsys, monkeypatch):
    import ascend_jax.models as aj_models

    built = []
    real = aj_models.load_model

    def spy(*a, **k):  # the refusal must come from before_build, not from a finished build
        hook = k["before_build"]
        k["before_build"] = lambda ops: (built.append(ops), hook(ops))
        return real(*a, **k)

    monkeypatch.setattr(aj_models, "load_model", spy)
    _refused(capsys, REPRO, "work estimate", "1,048,584 AIV ops", "x 1 lane", "budget of 500,000", "--allow-large")
    assert built == [1048584]


def test_attention_work_estimate_matches_the_build():
    from ascend_jax.models import load_model

    for opts in ({"s1": "256", "s2": "512", "heads": "2"}, {"s1": "256", "s2": "256", "causal": "true"}):
        seen = []
        program, _, _ = load_model("attention_grad", options=opts, before_build=seen.append)
        ops = sum(len(o) for _, o in program.aivs)
        assert ops <= seen[0] <= 1.1 * ops  # exact for full blocks; diagonal blocks a few ops fewer


def test_work_over_the_budget_needs_allow_large(capsys):
    # the 384-op default scenario, 1,303 lanes in the reference interpreter: 500,352 op-lanes
    argv = ["run", "--batch", "1303", "--engine", "reference", "--json"]
    _refused(capsys, argv, "work estimate", "384 AIV ops (counted) x 1,303 lanes = 500,352", "reference engine")
    code, out, _ = _cli(capsys, *argv, "--allow-large")
    assert code == 0 and len(json.loads(out)["batch"]) == 1303


def test_jax_budget_is_larger(capsys):
    _refused(capsys, ["run", "--batch", "1048576", "--engine", "jax"], "x 1,048,576 lanes", "jax engine's budget")


def test_activity_reports_units_elapsed_and_eta(capsys):
    import time

    from ascend_jax.cli import _Activity

    with _Activity("counting", delay=0.0, every=0.01, total=4, unit="lanes") as act:
        act.advance(2)
        time.sleep(0.05)
        assert act.progress_text().startswith("2/4 lanes, ") and "ETA" in act.progress_text()
    err = capsys.readouterr().err
    assert "ascend-jax: counting ..." in err and "still counting (2/4 lanes, " in err and "counting: done in" in err


@pytest.mark.parametrize(
    ("arg", "words"),
    [
        ("block_s1=0", ["attention_grad.block_s1 = 0", ">= 1"]),
        ("heads=0", ["attention_grad.heads = 0", ">= 1"]),
        ("batch=100000000000", ["work estimate", "12,800,000,000,008 AIV ops", "--allow-large"]),
    ],
)
def test_hostile_attention_sizes_exit_2_quickly(capsys, arg, words):
    _refused(capsys, ["run", "--model", "attention_grad", "--model-arg", arg], *words)


# -- item 5: the distributed path says whom it waits for and gives up -------------------------

_RUN = "import sys; from ascend_jax.cli import main; sys.exit(main(sys.argv[1:]))"


def _free_port() -> int:
    """A local port nothing listens on (bound, read, released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _distributed(timeout: str) -> subprocess.CompletedProcess:
    env = {"ASCEND_JAX_COORDINATOR": f"127.0.0.1:{_free_port()}", "ASCEND_JAX_NUM_PROCESSES": "2",
           "ASCEND_JAX_PROCESS_ID": "1", "ASCEND_JAX_INIT_TIMEOUT": timeout}  # fmt: skip
    return _fresh(_RUN, "run", "--batch", "2", env=env, timeout=120)


def test_a_process_without_coordinator_gives_up_with_exit_2():
    p = _distributed("1")
    assert p.returncode == 2, p.stderr
    assert p.stdout == "" and "Traceback" not in p.stderr
    assert "process 1 of 2 is waiting for the coordinator (process 0) at 127.0.0.1:" in p.stderr
    assert "gives up after 1 s; ASCEND_JAX_INIT_TIMEOUT sets it" in p.stderr
    assert "invalid input: ASCEND_JAX_COORDINATOR = '127.0.0.1:" in p.stderr
    assert "no coordinator answered there within 1 s" in p.stderr and "(fix: start process 0 first" in p.stderr


@pytest.mark.parametrize("value", ["abc", "0", "-5", "1e3", "99999999"])
def test_a_bad_init_timeout_is_refused(value):
    p = _distributed(value)
    assert p.returncode == 2, p.stderr
    assert f"invalid input: ASCEND_JAX_INIT_TIMEOUT = '{value}': must be an integer in 1..86400" in p.stderr
    assert "waiting" not in p.stderr  # refused before any wait


# -- item 11: tables laid out by rich; comm rows name each rank once --------------------------


def test_tables_are_rich_tables_of_plain_cells():
    from ascend_jax.cli import _table

    lines = _table("t", ["name", "value"], [["[red]x[/red]", "1"], ["a-much-longer-name", "22"]])
    assert lines[0] == "t"
    assert lines[1].split() == ["name", "value"] and set(lines[2]) == {"─"}
    assert lines[3].split() == ["[red]x[/red]", "1"]  # cells are text, never markup
    assert lines[4].split() == ["a-much-longer-name", "22"]
    assert lines[3].index("1") == lines[4].index("22") == lines[1].index("value")  # one column, aligned


def test_comm_summary_names_each_rank_once(capsys):
    code, out, _ = _cli(capsys, "run", "--model", "p2p_thread_notify")
    assert code == 0
    lines = out.splitlines()
    head = lines.index("queues")
    assert lines[head + 1].split() == ["rank", "queue", "kind", "status", "error", "tasks"]
    rows = [ln.split() for ln in lines[head + 3 : head + 7]]
    assert [r[:2] for r in rows] == [["0", "stream0"], ["0", "thread0"], ["1", "stream0"], ["1", "thread0"]]
    assert not any("rank" in cell for r in rows for cell in r)


def test_activity_on_a_terminal_draws_a_rich_progress_line(capsys, monkeypatch):
    import time

    from ascend_jax.cli import _Activity

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with _Activity("drawing", delay=0.0, total=3, unit="sizes") as act:
        for _ in range(3):
            act.advance()
        time.sleep(0.5)
    err = capsys.readouterr().err
    assert "drawing" in err and "3/3 sizes" in err and "drawing: done in" in err
    assert "ascend-jax: drawing ..." not in err  # the rich line, not the plain one


# -- comm model sizes: bounded before anything is allocated ----------------------------------


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--model", "allreduce", "--model-arg", "count=100000000"], ["count=100000000", "1..1048576", "4 x 4 blocks"]),
        (["--model", "allgather", "--ranks", "64", "--model-arg", "count=4097"], ["count=4097", "1..4096"]),
        (["--model", "p2p_send_recv", "--model-arg", "count=-5"], ["count=-5", "1..16777216"]),
        (["--model", "p2p_thread_notify", "--model-arg", "count=0"], ["count=0", "1..16777216"]),
        (["--model", "allreduce", "--model-arg", "count=1000000", "--batch", "8"],
         ["work estimate", "16,000,000 input elements x 8 lanes", "--allow-large"]),
    ],
)  # fmt: skip
def test_comm_sizes_are_bounded(capsys, argv, words):
    _refused(capsys, ["run", *argv], *words)


# -- a deeply nested scenario and a block-size hint that works --------------------------------


def test_a_deeply_nested_scenario_is_refused_without_recursion(capsys, tmp_path):
    deep = tmp_path / "deep.toml"
    deep.write_text("[" + ".".join(["a"] * 50_000) + "]\n")
    _refused(capsys, ["check", str(deep)], "deep.toml", "levels deep", "the limit is 32")


def test_the_block_size_hint_is_a_value_that_divides(capsys):
    err = _refused(capsys, ["run", "--model", "attention_grad", "--model-arg", "s1=96"], "block_s1 = 64", "dividing 96")
    assert "(fix: e.g. 96)" in err
    code, _, _ = _cli(capsys, "run", "--model", "attention_grad", "--model-arg", "s1=96", "--model-arg", "block_s1=96")
    assert code == 0


def test_a_large_batch_with_progress_runs_in_chunks_the_bar_can_count(monkeypatch):
    import ascend_jax as aj
    from ascend_jax.cube_group.engine import run as engine

    shown = []
    real = engine._progress
    monkeypatch.setattr(engine, "_progress", lambda show, total: shown.append((show, total)) or real(False, total))
    p = _merge_program()
    with_bar = aj.simulate([p] * engine.PROGRESS_LANES, progress=True)
    assert shown == [(True, engine.PROGRESS_LANES)]  # more than one chunk: the bar counts lanes
    plain = aj.simulate([p] * engine.PROGRESS_LANES)
    assert (with_bar.status == plain.status).all() and (with_bar.steps == plain.steps).all()


def _merge_program():
    import ascend_jax as aj

    k = aj.CubeGroupKernel()
    g = k.create_cube_res_group("g", 0, 2, 2, callback="merge")
    for q in range(2):
        a = k.aiv(q)
        a.assign_queue(g, q)
        a.post(g, {"skipCnt": 0})
        a.quit(g)
    return k.compile()


@pytest.mark.parametrize("value", ["abc", "0", "99999999999999999999"])
def test_a_bad_process_count_is_refused(monkeypatch, value):
    import ascend_jax as aj
    from ascend_jax.cube_group.engine import init_distributed

    monkeypatch.setenv("ASCEND_JAX_COORDINATOR", "127.0.0.1:1")
    monkeypatch.setenv("ASCEND_JAX_NUM_PROCESSES", value)
    monkeypatch.setenv("ASCEND_JAX_PROCESS_ID", "0")
    with pytest.raises(aj.ConfigError, match="ASCEND_JAX_NUM_PROCESSES"):  # before any connection is tried
        init_distributed()


def test_a_scenario_can_post_the_samples_own_message(capsys, tmp_path):
    # CubeGroupCustom's 128-byte CubeMsgBody (message.SAMPLE_MSG_BODY) with the sample's callback
    aivs = "".join(
        f'\n[[aiv]]\nblock_idx = {q}\nops = [\n  {{ op = "assign_queue", group = "g", queue = {q} }},\n'
        f'  {{ op = "post", group = "g", fields = {{ funcId = 0 }} }},\n  {{ op = "quit", group = "g" }},\n]\n'
        for q in range(2)
    )
    path = tmp_path / "sample_msg.toml"
    path.write_text(
        'name = "sample-msg"\n\n[[group]]\nname = "g"\nblock_start = 0\nblock_size = 2\nmsg_queue_size = 2\n'
        'callback = "sample"\nmessage = "SampleCubeMsgBody"\n' + aivs
    )
    for engine in ("reference", "jax"):
        code, out, _ = _cli(capsys, "run", str(path), "--engine", engine, "--json")
        assert code == 0 and json.loads(out)["status"] == "ok", out

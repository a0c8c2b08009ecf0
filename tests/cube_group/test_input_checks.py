"""Hardening III (issue 26, the non-CLI items): documented Matmul type combinations in a scenario,
vector operand shapes, data paths that stay in the scenario's folder (exit 2 naming the field, the
value, the rule and the fix), no numpy RuntimeWarning on NaN / Inf by design, report plots that say
what they show, comm trace labels, and an honest ``matches_run`` for ``--trace-lane``."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from _exit2 import exit_2

import ascend_jax as aj
from ascend_jax.cli import main
from ascend_jax.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
MATMUL_TOML = ROOT / "models" / "atomic_accumulate.toml"
SOFTMAX_TOML = ROOT / "docs" / "examples" / "vector_softmax.toml"
BASE_MATMUL = 'matmul = { a = "float16", b = "float16", c = "float16", bias = "float16" }'


def _exit_2(capsys, argv: list[str], *words: str) -> str:
    return exit_2(capsys, argv, *words)


def _matmul_scenario(tmp_path: Path, matmul: str, tensor_types: dict[str, str] | None = None) -> Path:
    """models/atomic_accumulate.toml with its ``matmul`` table replaced (and tensor dtypes retyped)."""
    text = MATMUL_TOML.read_text()
    assert BASE_MATMUL in text
    text = text.replace(BASE_MATMUL, matmul)
    if '"int8"' in matmul:
        text = text.replace("baseK = 16", "baseK = 32")  # C0 = 32 for int8
    for name, dtype in (tensor_types or {}).items():
        old = f'name = "{name}"\nshape'
        head, rest = text.split(old, 1)
        shape_line, after = rest.split("\n", 1)
        dtype_line, after = after.split("\n", 1)
        assert dtype_line.startswith("dtype")
        text = head + old + shape_line + "\n" + f'dtype = "{dtype}"' + "\n" + after
    path = tmp_path / "mm.toml"
    path.write_text(text)
    return path


# -- 1. Matmul type combinations of a scenario ------------------------------------------------


@pytest.mark.parametrize(
    ("matmul", "types", "words"),
    [
        (
            'matmul = { a = "int8", b = "int8", c = "float16", bias = "int32" }',
            {"a": "int8", "b": "int8", "bias": "int32"},
            ("group[0].matmul.c", "'float16'", "int8 inputs give C in ['int32']", "c = 'int32'"),
        ),
        (
            'matmul = { a = "bfloat16", b = "bfloat16", c = "float32", bias = "float16" }',
            {"a": "bfloat16", "b": "bfloat16", "c": "float32"},
            ("group[0].matmul.bias", "'float16'", "bfloat16 inputs take a bias in ['float32']", "bias = 'float32'"),
        ),
        (
            'matmul = { a = "float32", b = "float32", c = "float32", bias = "half" }',
            {"a": "float32", "b": "float32", "c": "float32"},
            ("group[0].matmul.bias", "'float16'", "float32 inputs take a bias in ['float32']", "bias = 'float32'"),
        ),
    ],
    ids=["int8-to-float16", "bfloat16-with-float16-bias", "float32-with-half-bias"],
)
def test_scenario_matmul_combinations_outside_the_docs_exit_2(tmp_path, capsys, matmul, types, words):
    path = _matmul_scenario(tmp_path, matmul, types)
    _exit_2(capsys, ["check", str(path)], *words)


def test_scenario_matmul_combinations_the_docs_allow_pass(tmp_path, capsys):
    ok = _matmul_scenario(tmp_path, 'matmul = { a = "int8", b = "int8", c = "int32", bias = "int32" }',
                          {"a": "int8", "b": "int8", "bias": "int32", "c": "int32"})  # fmt: skip
    assert main(["check", str(ok)]) == 0, capsys.readouterr()
    ok = _matmul_scenario(tmp_path, 'matmul = { a = "bfloat16", b = "bfloat16", c = "bfloat16", bias = "float32" }',
                          {"a": "bfloat16", "b": "bfloat16", "bias": "float32", "c": "bfloat16"})  # fmt: skip
    assert main(["check", str(ok)]) == 0, capsys.readouterr()
    assert main(["check", str(MATMUL_TOML)]) == 0  # float16 inputs take a float16 bias


def test_python_api_keeps_the_dequant_combination():
    # int8 -> float16 goes through SetQuantScalar, which only Python code can call: the API keeps it
    mt = aj.MatmulType("int8", "int8", "float16", "int32")
    assert mt.dequant
    from ascend_jax.cube_group.matmul import check_scenario_types

    with pytest.raises(ConfigError, match=r"matmul\.c = 'float16'"):
        check_scenario_types({"a": "int8", "b": "int8", "c": "float16", "bias": "int32"})


# -- 2. vector operand shapes ----------------------------------------------------------------


def _softmax_with(tmp_path: Path, old: str, new: str) -> Path:
    text = SOFTMAX_TOML.read_text()
    assert old in text
    path = tmp_path / "v.toml"
    path.write_text(text.replace(old, new, 1))
    return path


def test_sub_row_with_a_full_tile_as_src1_exits_2(tmp_path, capsys):
    # src1 of sub_row must be a [rows, 1] column; an 8 x 64 tile was accepted and read column 0 only
    bad = _softmax_with(
        tmp_path,
        '{ op = "vector", kind = "sub_row", dst = "a", src0 = "a", src1 = "m" }',
        '{ op = "ub_buffer", name = "wide", rows = 8, cols = 64 },\n'
        '  { op = "vector", kind = "sub_row", dst = "a", src0 = "a", src1 = "wide" }',
    )
    _exit_2(capsys, ["check", str(bad)], "aiv[0].ops[10].src1", "wide: 8 x 64", "[rows, 1] column", "cols = 1")


def test_mul_row_with_a_two_column_src1_exits_2(tmp_path, capsys):
    bad = _softmax_with(
        tmp_path,
        '{ op = "ub_buffer", name = "m", rows = 8, cols = 1 }',
        '{ op = "ub_buffer", name = "m", rows = 8, cols = 2 }',
    )
    # row_max into a 2-column m is fine (column 0); the first broadcast reading it is not
    _exit_2(capsys, ["check", str(bad)], ".src1", "m: 8 x 2", "sub_row's src1 is a [rows, 1] column")


def test_vector_builder_rejects_a_wide_row_operand():
    k = aj.CubeGroupKernel(name="v")
    g = k.create_cube_res_group("g", 0, 2, 1, callback="free")
    aiv = k.aiv(0)
    aiv.assign_queue(g, 0)
    v = aiv.vec
    a, wide, col = v.buffer("a", 8, 64), v.buffer("wide", 8, 64), v.buffer("col", 8, 1)
    for call in (v.sub_row, v.mul_row):
        with pytest.raises(ConfigError, match=r"src1 = 'wide: 8 x 64'.*\[rows, 1\] column"):
            call(a, a, wide)
        call(a, a, col)  # the documented shape


# -- 4. data paths stay in the scenario's folder ---------------------------------------------


@pytest.mark.parametrize("where", ["absolute", "parent"])
def test_npy_init_outside_the_scenario_folder_exits_2(tmp_path, capsys, where):
    data = tmp_path / "x.npy"
    np.save(data, np.zeros((16, 64), np.float32))
    folder = tmp_path / "s"
    folder.mkdir()
    init = str(data) if where == "absolute" else "../x.npy"
    text = SOFTMAX_TOML.read_text().replace('init = "random"', f"init = {init!r}", 1)
    path = folder / "v.toml"
    path.write_text(text)
    rule = "is an absolute path" if where == "absolute" else "leaves the scenario's folder"
    _exit_2(capsys, ["check", str(path)], "tensor[0].init", repr(init), rule)
    _exit_2(capsys, ["run", str(path)], "tensor[0].init", rule)
    # the same file beside the scenario is fine
    np.save(folder / "x.npy", np.zeros((16, 64), np.float32))
    path.write_text(SOFTMAX_TOML.read_text().replace('init = "random"', 'init = "x.npy"', 1))
    assert main(["check", str(path)]) == 0, capsys.readouterr()


def test_tensor_tables_refuse_paths_outside_their_folder(tmp_path):
    from ascend_jax.gm import tensors_from_tables

    np.save(tmp_path / "x.npy", np.zeros(4, np.float32))
    sub = tmp_path / "s"
    sub.mkdir()
    table = {"name": "x", "shape": [4], "dtype": "float32"}
    with pytest.raises(ConfigError, match="leaves the scenario's folder"):
        tensors_from_tables([{**table, "init": "../x.npy"}], sub)
    with pytest.raises(ConfigError, match="absolute path"):
        tensors_from_tables([{**table, "init": str(tmp_path / "x.npy")}], sub)
    assert tensors_from_tables([{**table, "init": "x.npy"}], tmp_path).read("x").shape == (4,)


# -- 3. no RuntimeWarning on NaN / Inf by design ---------------------------------------------


def test_attention_with_an_injected_nan_prints_no_runtime_warning():
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    proc = subprocess.run(
        [sys.executable, "-m", "ascend_jax.cli", "run", "--model", "attention_grad", "--model-arg", "inject_nan=true"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr  # numerics not ok: the NaN is reported, not warned about
    assert "NaN" in proc.stdout
    assert "RuntimeWarning" not in proc.stderr, proc.stderr


def test_numpy_numerics_on_inf_and_nan_warn_nothing():
    """Inputs that make numpy warn on any machine (Inf * 0, Inf - Inf, overflow, 0 / 0) go through
    the reference's matmul and vector numerics with warnings turned into errors."""
    from ascend_jax.cube_group.matmul import combine, exact_combine, exact_matmul, hw_matmul, rel_l2

    mt = aj.MatmulType("float32", "float32", "float32", "float32")
    tiling = aj.TCubeTiling(16, 16, 16, 16, 16, 16, 16, 16, 16, 8)
    a = np.zeros((16, 16), np.float32)
    a[0, 0], a[1, 1] = np.inf, np.nan
    b = np.ones((16, 16), np.float32)
    b[0, 1] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = hw_matmul(mt, tiling, a, b, np.full(16, -np.inf, np.float32))
        e = exact_matmul(a, b, None)
        combine(mt, c, c, 1, np)
        exact_combine(e, -e, 1)
        rel_l2(c, e)
    assert np.isnan(c).any() and np.isnan(e[0, 1])  # Inf * 0 is NaN, as the device computes it

    k = aj.CubeGroupKernel(name="v")
    g = k.create_cube_res_group("g", 0, 2, 1, callback="free")
    x = np.full((8, 64), 70000.0, np.float32)
    x[0, :2] = (np.inf, 0.0)
    k.alloc("x", (8, 64), "float32", x)
    k.alloc("y", (8, 64), "float16")
    aiv = k.aiv(0)
    aiv.assign_queue(g, 0)
    v = aiv.vec
    f, h, m = v.buffer("f", 8, 64), v.buffer("h", 8, 64, "float16"), v.buffer("m", 8, 1)
    v.load(f, "x")
    v.sub(f, f, f)  # Inf - Inf
    v.div(f, f, f)  # 0 / 0
    v.load(f, "x")
    v.exp(f, f)  # overflow
    v.row_sum(m, f)
    v.sub_row(f, f, m)
    v.load(f, "x")
    v.cast(h, f)  # 70000 overflows float16
    v.store("y", h)
    aiv.quit(g)
    p = k.compile()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = aj.run_reference(p)
        aj.numerics_report(p, [res])
    assert np.isinf(res.tensor("y")).sum() == 8 * 64 - 1  # every value but the 0 overflows


# -- 5. report plots -------------------------------------------------------------------------


def _capture(monkeypatch, name: str) -> list:
    """Wraps ``ascend_jax.report.<name>`` (a figure builder) to keep every figure it returns."""
    from ascend_jax import report

    made = []
    real = getattr(report, name)

    def keep(*args, **kwargs):
        fig = real(*args, **kwargs)
        made.append(fig)
        return fig

    monkeypatch.setattr(report, name, keep)
    return made


def _texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_utilisation_plot_says_no_aiv_stalled_instead_of_an_empty_axis(tmp_path, capsys, monkeypatch):
    figs = _capture(monkeypatch, "utilisation_figure")
    assert main(["run", str(SOFTMAX_TOML), "--schedule", "timed", "--report", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    [fig] = figs
    _, bx = fig.axes[:2]
    assert "no AIV stalled" in _texts(fig)
    assert not bx.axison and not bx.patches  # no bars, no 0..1e-9 axis


def test_utilisation_plot_draws_bars_when_aivs_stall(tmp_path, capsys, monkeypatch):
    figs = _capture(monkeypatch, "utilisation_figure")
    toml = ROOT / "models" / "merge_example.toml"
    assert main(["run", str(toml), "--schedule", "timed", "--report", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    [fig] = figs
    bx = fig.axes[1]
    assert "no AIV stalled" not in _texts(fig)
    assert bx.axison and len(bx.patches) >= 5 and bx.get_xlim()[1] > 0.2  # 5 AIVs, the largest stall 0.238 µs


def test_steps_histogram_has_integer_bins(tmp_path, capsys, monkeypatch):
    figs = _capture(monkeypatch, "histogram_figure")
    toml = ROOT / "models" / "merge_example.toml"
    argv = ["run", str(toml), "--batch", "8", "--schedule", "random", "--report", str(tmp_path / "r")]
    assert main(argv) == 0
    capsys.readouterr()
    [steps] = [f for f in figs if "steps" in f.axes[0].get_xlabel()]
    bars = steps.axes[0].patches
    edges = sorted({round(p.get_x(), 9) for p in bars} | {round(p.get_x() + p.get_width(), 9) for p in bars})
    assert len(edges) >= 3
    assert all(float(e).is_integer() for e in edges), edges
    assert all(float(t).is_integer() for t in steps.axes[0].get_xticks())


def test_integer_bins_hold_whole_counts():
    from ascend_jax.report import integer_bins

    np.testing.assert_array_equal(integer_bins(np.array([10, 18, 12])), np.arange(10, 20))
    np.testing.assert_array_equal(integer_bins(np.array([7, 7])), [7, 8])
    wide = integer_bins(np.arange(100, 1001))
    width = np.diff(wide)
    assert len(wide) <= 51 and (width == width[0]).all() and width[0] == 19 and wide[-1] > 1000
    assert np.issubdtype(wide.dtype, np.integer)


# -- 7. comm trace labels --------------------------------------------------------------------


def test_comm_labels_say_the_rank_once(tmp_path, capsys, monkeypatch):
    import json

    figs = _capture(monkeypatch, "comm_timeline_figure")
    trace = tmp_path / "t.json"
    code = main(["run", "--model", "p2p_send_recv", "--trace", str(trace), "--report", str(tmp_path / "r")])
    assert code == 0, capsys.readouterr()
    capsys.readouterr()
    [fig] = figs
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert "rank 0 stream0" in labels and "rank 1 stream0" in labels, labels
    assert all(label.count("rank") == 1 for label in labels), labels
    events = json.loads(trace.read_text())["traceEvents"]
    threads = [e["args"]["name"] for e in events if e.get("name") == "thread_name"]
    processes = [e["args"]["name"] for e in events if e.get("name") == "process_name"]
    assert sorted(set(processes)) == ["rank 0", "rank 1"]
    assert "stream0" in threads and not any("rank" in t for t in threads), threads


def test_queue_labels_keep_names_without_the_rank_prefix():
    from ascend_jax.trace import queue_label, queue_row_label

    assert queue_label(0, "rank0.thread1") == "thread1"
    assert queue_label(1, "rank0.stream0") == "rank0.stream0"  # another rank's prefix is kept
    assert queue_row_label(2, "custom") == "rank 2 custom"


# -- 8. --trace-lane of a random batch -------------------------------------------------------


def test_trace_lane_of_a_random_batch_is_that_lanes_run():
    from ascend_jax.cube_group.engine import simulate
    from ascend_jax.trace import lane_meta, record_cube

    program = aj.load_scenario(ROOT / "models" / "merge_example.toml")  # has a delay: idle steps count too
    runs = simulate([program] * 8, seeds=list(range(8)), schedule="random")
    own_differs = 0
    for lane in range(8):
        rec, events = record_cube(program, "random", lane, draws="jax")
        meta = lane_meta(rec, runs[lane], "random", "jax")
        assert meta["matches_run"], (lane, meta)
        assert rec.steps == runs[lane].steps and rec.outcome() == runs[lane].outcome()
        assert max(e["ts"] for e in events) < rec.steps  # the trace's time axis is the lane's steps
        assert "JAX engine's draws" in meta["interleaving"]
        own, _ = record_cube(program, "random", lane)  # the interpreter's own draw: another interleaving
        own_meta = lane_meta(own, runs[lane], "random", "jax")
        if own.steps != runs[lane].steps:
            own_differs += 1
            assert not own_meta["matches_run"]
            assert (
                f"{own.steps} steps in the recording, {runs[lane].steps} in the run" in own_meta["matches_run_reason"]
            )
            assert "not the lane's" in own_meta["matches_run_reason"]
    assert own_differs >= 4  # the old recording disagreed on most lanes while saying matches_run: true


def test_lane_match_names_a_different_status():
    from ascend_jax.trace import lane_match

    ok = aj.run_reference(aj.load_scenario(ROOT / "models" / "merge_example.toml"))
    short = aj.run_reference(aj.load_scenario(ROOT / "models" / "merge_example.toml"), max_steps=3)
    assert lane_match(ok, ok, "lockstep") == (True, f"same outcome and steps ({ok.steps}) as the run's lane")
    same, why = lane_match(short, ok, "lockstep")
    assert not same and "status max_steps in the recording, ok in the run" in why and "3 steps" in why


# -- 6. test tiers ---------------------------------------------------------------------------


def test_slow_marker_is_registered_and_the_quick_tier_is_documented():
    import ast
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert any(m.startswith("slow:") for m in cfg["markers"])
    assert "--strict-markers" in cfg["addopts"].split() and "-m" not in cfg["addopts"].split()  # full run keeps all
    quick = 'python -m pytest -n auto -m "not slow"'
    assert f".venv/bin/{quick}" in (ROOT / "README.md").read_text()
    assert quick in (ROOT / "docs" / "getting-started.md").read_text()
    marked = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any(
                ast.unparse(d) == "pytest.mark.slow" for d in node.decorator_list
            ):
                marked.setdefault(path.name, []).append(node.name)
    assert len(marked) >= 10 and sum(map(len, marked.values())) >= 30, marked
    assert "cube_group/test_input_checks.py" not in marked  # this file's checks stay in the quick tier


def test_random_batch_report_says_whether_the_recording_is_the_lane(tmp_path, capsys):
    import re

    from ascend_jax.cube_group.engine import simulate

    toml = ROOT / "models" / "merge_example.toml"
    folder = tmp_path / "r"
    argv = ["run", str(toml), "--batch", "8", "--schedule", "random", "--trace-lane", "5", "--report", str(folder)]
    assert main(argv) == 0
    capsys.readouterr()
    md = (folder / "report.md").read_text()
    [lane5] = simulate([aj.load_scenario(toml)], seeds=[5], schedule="random")
    m = re.search(r"Under `random` the recording (is|is not) lane 5's run: ([^\n]*)\.", md)
    assert m is not None, md
    if m[1] == "is":
        assert f"same outcome and steps ({lane5.steps})" in m[2]
    else:  # the recording drew its own interleaving: the report says so and names the step counts
        assert f"in the recording, {lane5.steps} in the run" in m[2]


def test_cli_trace_lane_of_a_random_jax_batch_is_that_lanes_run(tmp_path):
    import json

    from ascend_jax.cli import main

    trace = tmp_path / "t.json"
    argv = ["run", str(ROOT / "models" / "merge_example.toml"), "--batch", "8", "--schedule", "random",
            "--engine", "jax", "--trace", str(trace), "--trace-lane", "5"]  # fmt: skip
    assert main(argv) == 0
    meta = json.loads(trace.read_text())["otherData"]
    assert meta["matches_run"] is True and meta["steps"] == meta["run_steps"], meta
    assert "JAX engine's draws" in meta["interleaving"]

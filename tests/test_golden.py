"""Golden result JSON: every shipped model and every docs example, byte for byte.

The files in ``tests/golden/results/`` are the ``--json`` output of ``ascend-jax run`` for each
case below, as it is today. A refactor that changes no behaviour leaves them equal; a change that
does alter a result shows up here as a diff. When a change of result is intended, regenerate them
with the one command

    python tests/test_golden.py --regen

and commit the new files together with the change that explains them.

One part of a result depends on the machine, not on the simulator: the size of a float32 result's
rounding error against its float64 replay (``rel_l2_error``, ``max_abs_error``, ``max_rel_error``
and the number quoted in ``reason``), because numpy's BLAS and SIMD kernels sum in a different
order on different CPUs (the files written on an Intel Xeon and an AMD EPYC differ there, and only
there). Those values are compared as "measured" (present, a number); everything else in the
numerics block (``ok``, the tolerance, NaN / Inf and mismatch counts) and the rest of the JSON byte
for byte. Their size is checked against tolerances by ``tests/test_numerics.py``, and the engines'
bytes against each other by the engine tests.

Cases: each model of ``ascend-jax models`` with its defaults (``--engine auto``: the reference
interpreter for one lane), the cube-group models once more on the JAX engine with two lanes of a
random schedule, and every scenario in ``docs/examples/`` (including the ones that end in an error
or a deadlock: their exit code is part of the golden file).
"""

from __future__ import annotations

import contextlib
import difflib
import io
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden" / "results"

MODELS = (
    "allgather",
    "allreduce",
    "atomic_accumulate",
    "attention_grad",
    "barrier_example",
    "cube_group_custom",
    "cube_group_sample",
    "merge_example",
    "moe_grouped_matmul",
    "p2p_send_recv",
    "p2p_thread_notify",
    "reduce_scatter",
)
#: Cube-group models also run on the JAX engine (two lanes, random schedule): the compiled path.
JAX_MODELS = ("atomic_accumulate", "barrier_example", "cube_group_custom", "merge_example")
EXAMPLES = tuple(sorted(p.stem for p in (ROOT / "docs" / "examples").glob("*.toml")))


def _cases() -> dict[str, list[str]]:
    cases = {f"model_{m}": ["--model", m] for m in MODELS}
    for m in JAX_MODELS:
        cases[f"jax_{m}"] = ["--model", m, "--engine", "jax", "--batch", "2", "--schedule", "random", "--seed", "7"]
    for e in EXAMPLES:
        cases[f"example_{e}"] = [str(ROOT / "docs" / "examples" / f"{e}.toml")]
    return cases


CASES = _cases()


#: Rounding-error sizes that depend on the CPU's BLAS / SIMD kernels (see the module docstring).
MEASURED = frozenset({"rel_l2_error", "max_abs_error", "max_rel_error"})
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _mask(value):
    """``value`` with every machine-dependent rounding-error size replaced by a marker."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k in MEASURED and isinstance(v, (int, float)):
                out[k] = "<measured>"
            elif k == "reason" and isinstance(v, str) and v.startswith("rel L2 "):
                head, sep, rest = v.partition(" <= ")
                out[k] = "rel L2 <measured>" + (sep + rest if sep else _NUMBER.sub("<x>", head[7:]))
            else:
                out[k] = _mask(v)
        return out
    if isinstance(value, list):
        return [_mask(v) for v in value]
    return value


def canonical(text: str) -> str:
    """A golden file's text with the measured rounding-error sizes masked (the exit line kept)."""
    head, _, body = text.partition("\n")
    if not body.strip():
        return text
    return head + "\n" + json.dumps(_mask(json.loads(body)), indent=2) + "\n"


def _run(argv: list[str]) -> str:
    """One ``ascend-jax run ... --json`` in this process: its exit code and stdout, as one text."""
    from ascend_jax.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["run", *argv, "--json"])
    text = out.getvalue()
    # The docs examples are passed by absolute path; the golden file keeps it relative to the repo.
    text = text.replace(str(ROOT) + "/", "")
    return f"# exit {code}\n{text}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_result_json_matches_golden(name: str) -> None:
    path = GOLDEN / f"{name}.json"
    assert path.exists(), f"{path} is missing: run `python tests/test_golden.py --regen`"
    want = path.read_text()
    got = _run(CASES[name])
    want, got = canonical(want), canonical(got)
    if got != want:
        diff = "".join(
            difflib.unified_diff(
                want.splitlines(keepends=True), got.splitlines(keepends=True), f"golden/{name}", "now", n=2
            )
        )
        pytest.fail(
            f"result JSON of {name} differs from its golden file (first 80 lines of the diff):\n"
            + "".join(diff.splitlines(keepends=True)[:80])
        )


def test_every_case_has_exactly_one_golden_file() -> None:
    files = {p.stem for p in GOLDEN.glob("*.json")}
    assert files == set(CASES), f"stale: {sorted(files - set(CASES))}, missing: {sorted(set(CASES) - files)}"


def test_golden_files_are_json_after_the_exit_line() -> None:
    for p in sorted(GOLDEN.glob("*.json")):
        head, _, body = p.read_text().partition("\n")
        assert head.startswith("# exit "), p
        if body.strip():
            json.loads(body)


def test_only_the_measured_rounding_sizes_are_masked() -> None:
    def doc(**numerics) -> str:
        base = {"ok": True, "rel_l2_error": 1.3e-07, "max_abs_error": 4.7e-06, "max_rel_error": 0.038, "nan": 0,
                "reason": "rel L2 1.33e-07 <= tolerance 1e-05"}  # fmt: skip
        return "# exit 0\n" + json.dumps({"status": "ok", "numerics": {"c": {**base, **numerics}}})

    same = canonical(doc())
    assert (
        canonical(doc(rel_l2_error=1.27e-07, max_rel_error=0.0596, reason="rel L2 1.27e-07 <= tolerance 1e-05")) == same
    )
    for changed in (
        {"ok": False},
        {"nan": 1},
        {"reason": "rel L2 1.33e-07 <= tolerance 1e-03"},
        {"rel_l2_error": None},
    ):
        assert canonical(doc(**changed)) != same, changed


def _regen() -> None:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for old in GOLDEN.glob("*.json"):
        old.unlink()
    for name, argv in sorted(CASES.items()):
        (GOLDEN / f"{name}.json").write_text(_run(argv))
        print("wrote", GOLDEN / f"{name}.json")


if __name__ == "__main__":
    if sys.argv[1:] != ["--regen"]:
        sys.exit("usage: python tests/test_golden.py --regen")
    sys.path.insert(0, str(ROOT))
    _regen()

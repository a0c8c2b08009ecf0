"""Numerics report: simulated GM tensors against the float64 numpy reference.

The reference is the reference interpreter in ``numerics="exact"`` mode: the same program, the
same action order, every matmul, atomic and AIV vector op computed in float64 from the input
values, without rounding. For every tensor a matmul or a vector store wrote, the report gives::

    {"dtype": "float32", "combination": "float16xfloat16->float32", "rel_l2_error": ...,
     "max_abs_error": ..., "max_rel_error": ..., "nan": 0, "inf": 0, "tolerance": ..., "ok": true}

``rel_l2_error = ||sim - ref||_2 / ||ref||_2`` over the elements finite on both sides;
``max_rel_error`` is taken over those whose reference is non-zero. ``ok`` means
``rel_l2_error <= tolerance``, no NaN in ``sim`` (not even where the reference is NaN too) and
every other non-finite value of either side matched by the same infinity on the other; each entry
adds ``reason`` (why ``ok`` is what it is, in words, e.g. ``"3 NaN where the float64 reference is
finite"``), ``nonfinite`` (those counts by position, :func:`compare`) and ``reference_shares``
(which roundings the replay shares with the kernel: those made before it, in the GM inputs as
stored; a kernel that reads a forward's output rounded to its input type is checked against that
rounded value). Tolerances by C type are :data:`ascend_jax.cube_group.matmul.TOLERANCE`, unless the
program sets one for the tensor (``CubeGroupProgram.tolerances``). With several
batch lanes (e.g. ``atomic_order="random"``) the report adds ``lane_spread``: the largest relative
L2 distance between a lane's result and lane 0's. :func:`add_numpy_checks` adds a model's own
numpy answer as ``numpy_check``; the entry's ``ok`` and the check's agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ascend_jax.compare import compare, rel_l2
from ascend_jax.cube_group.matmul import TOLERANCE
from ascend_jax.cube_group.program import CubeGroupProgram
from ascend_jax.cube_group.reference import ReferenceInterpreter
from ascend_jax.cube_group.result import CubeGroupResult


def exact_reference(
    program: CubeGroupProgram, schedule: str = "lockstep"
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """float64 values of every tensor a matmul or vector store writes, and each one's dtype combination
    label, from a replay under ``schedule`` (``lockstep`` or ``timed``: a timed run is replayed timed,
    so a long ``delay`` costs one step there, as in the run, instead of one step per cycle)."""
    ref = ReferenceInterpreter(program, schedule=schedule if schedule == "timed" else "lockstep", numerics="exact")
    ref.run()
    labels = {}
    for gi, cfg in enumerate(program.matmuls):
        if cfg is not None:
            labels[gi] = cfg[0].label
    combo = {}
    for name in ref.written:
        dt = program.gm.tensors[name].dtype
        matches = [lab for lab in labels.values() if lab.endswith(f"->{_name(dt)}")]
        combo[name] = matches[0] if matches else _name(dt)
    return {n: ref.shadow[n].reshape(program.gm.tensors[n].shape) for n in sorted(ref.written)}, combo


def _name(dt: np.dtype) -> str:
    from ascend_jax.gm import dtype_name

    return dtype_name(dt)


#: How the float64 replay relates to the kernel (``reference_shares`` of every entry, followed by
#: the kernel's inputs and their types).
REPLAY_SHARES = (
    "the float64 replay starts from the GM inputs as stored, so it shares every rounding made before "
    "the kernel (e.g. a forward output stored in the input type) and none made inside it"
)


def add_numpy_checks(report: dict[str, dict[str, Any]], program: CubeGroupProgram, result, expected) -> None:
    """Adds ``numpy_check`` (:func:`compare` of ``result``'s tensors against ``expected(program)``,
    a model's float64 numpy answer) to the report's entries, at each entry's tolerance (1e-5 for a
    tensor the report has no entry for), and makes the two verdicts agree: if either comparison
    fails, both ``ok`` are False and each ``reason`` names the other's failure.

    ``expected.reference_shares`` (a string, if the model sets it) says which roundings the numpy
    answer shares with the kernel; it becomes the check's ``reference_shares``.
    """
    shares = getattr(expected, "reference_shares", None)
    for name, want in expected(program).items():
        entry = report.setdefault(name, {})
        check = compare(result.tensor(name), want, entry.get("tolerance", 1e-5))
        if shares:
            check["reference_shares"] = shares
        entry["numpy_check"] = check
        if "ok" not in entry:
            continue
        if entry["ok"] and not check["ok"]:
            entry["ok"] = False
            whose = f" (numpy_check's reference: {shares})" if shares else ""
            entry["reason"] += f"; but numpy_check fails: {check['reason']}{whose}"
        elif check["ok"] and not entry["ok"]:
            check["ok"] = False
            check["reason"] += f"; but the float64 replay fails: {entry['reason']}"


def numerics_report(
    program: CubeGroupProgram, results: CubeGroupResult | Sequence[CubeGroupResult]
) -> dict[str, dict[str, Any]]:
    """Per written tensor: errors of ``results[0]`` (and the lane spread of the others) against
    the float64 reference. Also stores the report in each result's ``numerics``."""
    if isinstance(results, CubeGroupResult):
        results = [results]
    arrays = getattr(results, "arrays", None)  # a BatchResult: read every lane's GM from its array
    if arrays is not None:
        images = [arrays["gm"][i, : program.gm.size] for i in range(len(results))]
    else:
        images = [r.gm for r in results]
    refs, combos = exact_reference(program, "timed" if results[0].timing is not None else "lockstep")
    inputs = [n for n in sorted(program.gm.tensors) if n not in refs]
    shares = REPLAY_SHARES + (
        ": " + ", ".join(f"{n} {_name(program.gm.tensors[n].dtype)}" for n in inputs) if inputs else ""
    )
    bad_inputs = []
    for n in inputs:
        x = program.gm.read(n).astype(np.float64)
        nan, inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
        if nan or inf:
            bad_inputs.append(f"{n} ({nan} NaN, {inf} Inf)")
    report = {}
    for name, ref in refs.items():
        dt = program.gm.tensors[name].dtype
        tol = program.tolerances.get(name, TOLERANCE[_name(dt)])
        sim = program.gm.read(name, images[0])
        entry = {"dtype": _name(dt), "combination": combos[name], **compare(sim, ref, tol), "reference_shares": shares}
        if bad_inputs and entry["nonfinite"]["both_nan"] + entry["nonfinite"]["same_inf"]:
            entry["reason"] += "; non-finite inputs: " + ", ".join(bad_inputs)
        if len(images) > 1:
            entry["lane_spread"] = max(rel_l2(program.gm.read(name, im), sim) for im in images[1:])
        report[name] = entry
    if arrays is not None:
        results.numerics = report  # lanes built later carry it
    else:
        for r in results:
            r.numerics = report
    return report

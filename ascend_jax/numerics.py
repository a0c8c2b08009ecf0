"""Numerics report: simulated GM tensors against the float64 numpy reference.

The reference is the reference interpreter in ``numerics="exact"`` mode: the same program, the
same action order, every matmul, atomic and AIV vector op computed in float64 from the input
values, without rounding. For every tensor a matmul or a vector store wrote, the report gives::

    {"dtype": "float32", "combination": "float16xfloat16->float32", "rel_l2_error": ...,
     "max_abs_error": ..., "max_rel_error": ..., "nan": 0, "inf": 0, "tolerance": ..., "ok": true}

``rel_l2_error = ||sim - ref||_2 / ||ref||_2``; ``max_rel_error`` is taken over elements whose
reference is non-zero; ``ok`` means ``rel_l2_error <= tolerance`` and no NaN/Inf where the
reference is finite. Tolerances by C type are :data:`ascend_jax.matmul.TOLERANCE`, unless the
program sets one for the tensor (``CubeGroupProgram.tolerances``). With several
batch lanes (e.g. ``atomic_order="random"``) the report adds ``lane_spread``: the largest relative
L2 distance between a lane's result and lane 0's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ascend_jax.cube_group.program import CubeGroupProgram
from ascend_jax.cube_group.reference import ReferenceInterpreter
from ascend_jax.cube_group.result import CubeGroupResult
from ascend_jax.matmul import TOLERANCE, rel_l2


def exact_reference(program: CubeGroupProgram) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """float64 values of every tensor a matmul or vector store writes, and each one's dtype combination label."""
    ref = ReferenceInterpreter(program, numerics="exact")
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


def compare(sim: np.ndarray, ref: np.ndarray, tolerance: float) -> dict[str, Any]:
    """Error metrics of one tensor (see the module docstring)."""
    s = sim.astype(np.float64)
    finite_ref = np.isfinite(ref)
    nan = int(np.isnan(s).sum())
    inf = int(np.isinf(s).sum())
    bad_nonfinite = int((~np.isfinite(s) & finite_ref).sum())
    diff = np.abs(np.where(np.isfinite(s), s, 0.0) - np.where(finite_ref, ref, 0.0))
    nz = (ref != 0) & finite_ref
    err = rel_l2(np.where(np.isfinite(s), s, 0.0), np.where(finite_ref, ref, 0.0))
    return {
        "rel_l2_error": err,
        "max_abs_error": float(diff.max()) if diff.size else 0.0,
        "max_rel_error": float((diff[nz] / np.abs(ref[nz])).max()) if nz.any() else 0.0,
        "nan": nan,
        "inf": inf,
        "tolerance": tolerance,
        "ok": bool(err <= tolerance and bad_nonfinite == 0),
    }


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
    refs, combos = exact_reference(program)
    report = {}
    for name, ref in refs.items():
        dt = program.gm.tensors[name].dtype
        tol = program.tolerances.get(name, TOLERANCE[_name(dt)])
        sim = program.gm.read(name, images[0])
        entry = {"dtype": _name(dt), "combination": combos[name], **compare(sim, ref, tol)}
        if len(images) > 1:
            entry["lane_spread"] = max(rel_l2(program.gm.read(name, im), sim) for im in images[1:])
        report[name] = entry
    if arrays is not None:
        results.numerics = report  # lanes built later carry it
    else:
        for r in results:
            r.numerics = report
    return report

"""The vector phase's paths by what a step holds (``vector_ops.apply_vector_ops``), against the
reference interpreter, bit for bit: compute steps whose AIVs run one kind or several (one pass per
semantics the step uses, row reductions writing their column alone), and copy steps with loads only
(read at once over AIVs) or with a store (the AIV loop in block_idx order).

Built like ``test_compute_vector``'s random programs (3 AIVs, lockstep: op i of every AIV in step
i + 1), with no ``exp`` so that every GM byte must agree.
"""

from __future__ import annotations

import pytest

from ascend_jax import run_reference, simulate
from ascend_jax.cube_group.engine import vector_ops
from ascend_jax.cube_group.engine.loop import clear_compiled
from tests.cube_group.engine.test_compute_vector import FILL, FIRST, _row, _same_bits, build_lane


@pytest.fixture(autouse=True)
def _a_pass_per_semantics(monkeypatch):
    """These windows are below vector_ops.SPLIT_PASSES_FROM: give each semantics its own pass
    anyway, as a large program's steps do (test_compute_vector.py covers the merged pass)."""
    monkeypatch.setattr(vector_ops, "SPLIT_PASSES_FROM", 0)
    clear_compiled()  # the threshold is read while tracing: no loop traced before with the default
    yield
    clear_compiled()


def _agree(lanes, seed: int) -> None:
    programs = [build_lane(ops, seed + i) for i, ops in enumerate(lanes)]
    res = simulate(programs, schedule="lockstep")
    for p, eng in zip(programs, res, strict=True):
        ref = run_reference(p, schedule="lockstep")
        assert eng.status == ref.status and eng.steps == ref.steps
        for name in p.gm.tensors:
            assert _same_bits(eng.tensor(name), ref.tensor(name)), name


def _pad(ops):
    return [[FIRST, *aiv, *[FILL] * (9 - len(aiv))] for aiv in ops]


@pytest.mark.slow
def test_steps_of_one_kind_and_of_several_kinds():
    """Step 2: every AIV loads (no store: read at once). Step 3: all run ``muls`` (one kind).
    Step 4: ``mul``, ``row_sum`` and ``sub_row`` (three semantics, a reduction among them). Step 5:
    ``row_sum`` in two AIVs and ``row_max`` in the third (two reductions). Step 6: ``muls`` and
    ``mul_row`` (one semantics, two patterns) and a cast. Then each AIV stores its buffers. Lane 1
    runs the AIVs' ops in another order, so its steps mix other kinds."""
    loads = [("load", "a", *_row("x32", r), False) for r in (0, 1, 2)]
    ops = [
        [loads[0], ("muls", "a", "a", "b", 8, 24, -1.5), ("mul", "b", "a", "a", 8, 24, 0.0),
         ("row_sum", "m", "a", "b", 8, 24, 0.0), ("muls", "b", "b", "a", 8, 24, 3.0)],
        [loads[1], ("muls", "b", "a", "a", 8, 24, 0.1), ("row_sum", "m", "b", "a", 8, 24, 0.0),
         ("row_sum", "m", "a", "b", 8, 24, 0.0), ("mul_row", "a", "a", "b", 8, 24, 0.0)],
        [loads[2], ("muls", "b", "a", "a", 8, 24, 3.0), ("sub_row", "a", "b", "b", 8, 24, 0.0),
         ("row_max", "m", "a", "b", 8, 24, 0.0), ("cast", "h", "a", 8, 24)],
    ]  # fmt: skip
    stores = [("store", "a", *_row("y32", 3 + a), False) for a in range(3)]
    stores16 = [("store", "h", *_row("y16", a), False) for a in range(3)]
    first = _pad([[*aiv, s, ("store", "b", *_row("y32", 6 + a), False), t]
                  for a, (aiv, s, t) in enumerate(zip(ops, stores, stores16, strict=True))])  # fmt: skip
    second = _pad([[aiv[0], *aiv[:0:-1], s, t] for aiv, s, t in zip(ops, stores, stores16, strict=True)])
    _agree([first, second], 11)


@pytest.mark.slow
def test_a_store_in_one_lane_orders_every_lanes_copies():
    """Step 2: loads alone (read at once). Step 3: in lane 0, AIV 0 stores y32 row 0 and AIVs 1
    and 2 load it (they see the store: block_idx order, the AIV loop); lane 1's AIVs only load in
    that step (in the same loop, as a lane stores). Step 4: loads alone in both lanes, of rows
    stored in step 3. Step 5: in lane 0, AIV 2 stores and AIV 0 loads the same row (it does not
    see the later AIV's store)."""
    x = [("load", "a", *_row("x32", r), False) for r in range(3)]
    y = [("load", "b", *_row("y32", r), False) for r in range(3)]
    lane0 = [
        [x[0], ("store", "a", *_row("y32", 0), False), y[0], ("load", "a", *_row("y32", 5), False)],
        [x[1], y[0], y[1], FILL],
        [x[2], y[0], y[2], ("store", "b", *_row("y32", 5), False)],
    ]
    lane1 = [[x[a], y[a], y[(a + 1) % 3], ("store", "b", *_row("y32", 7 + a), False)] for a in range(3)]
    _agree([_pad(lane0), _pad(lane1)], 21)

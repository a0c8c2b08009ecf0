"""The sanitizer on every shipped cube-group model and docs example, and on the attention races,
under the lockstep, random (several seeds) and timed schedules: the same findings every time."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ascend_jax.cube_group.program import CubeGroupKernel, CubeGroupProgram
from ascend_jax.errors import ConfigError
from ascend_jax.models import available_models, load_model
from ascend_jax.sanitizer import sanitize
from ascend_jax.sanitizer.sources import capture_sources, source_lookup
from ascend_jax.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "docs" / "examples").glob("*.toml"))
SCHEDULES = (("lockstep", 0), ("random", 1), ("random", 7), ("timed", 0))

#: Docs examples that show a bug on purpose, and what the sanitizer says about them (the
#: sanitizer page's seeded bugs; their ``_fixed`` twins are clean).
EXPECTED = {
    "sanitizer_race": {("racecheck", "race")},
    "sanitizer_uninit": {("initcheck", "uninitialised_ub_read")},
    "sanitizer_mte3": {("synccheck", "deadlock"), ("synccheck", "mte3_flag_unpaired")},
    "sanitizer_oob": {("memcheck", "straddle")},
    "f13_mte3_after_fake": {("synccheck", "deadlock"), ("synccheck", "mte3_flag_unpaired")},
    "f14_sync_all_before_quit": {("synccheck", "deadlock"), ("synccheck", "sync_all_before_quit")},
    "f5_skip_over_quit": {("synccheck", "deadlock")},
    "f5_too_few_fakes": {("synccheck", "deadlock")},
    "f8_forgotten_valid": {("synccheck", "deadlock")},
    "f10_unzeroed_workspace": {("synccheck", "deadlock")},
    "f2_backpressure": {("synccheck", "deadlock"), ("synccheck", "queue_never_quit")},
    "f7_skip_past_row": {("synccheck", "deadlock")},
    # its first op multiplies the never-written UB buffer `one` by 0 to clear it: on a device that
    # buffer holds whatever the last kernel left, and NaN * 0 is NaN
}


def _every_schedule(program: CubeGroupProgram, **kw) -> list[dict]:
    """The findings JSON under every schedule, asserting they are all the same."""
    reports = [sanitize(program, schedule=s, seed=seed, **kw).to_json() for s, seed in SCHEDULES]
    for (s, seed), r in zip(SCHEDULES[1:], reports[1:], strict=True):
        assert r == reports[0], (
            f"{s} (seed {seed}) found {json.dumps(r)[:400]}, lockstep {json.dumps(reports[0])[:400]}"
        )
    return reports[0]["findings"]


def _cube_models() -> list[str]:
    """The shipped cube-group models; the comm models are AI CPU task programs, outside the sanitizer."""
    names = available_models(kind="cube_group")
    assert set(available_models()) - set(names) == set(available_models(kind="comm"))
    return names


@pytest.mark.parametrize("name", _cube_models())
def test_shipped_model_is_clean_under_every_schedule(name):
    program = load_model(name)[0]
    assert isinstance(program, CubeGroupProgram), f"{name} is not a cube-group model"
    assert _every_schedule(program) == []


@pytest.mark.parametrize("path", [p for p in EXAMPLES if not p.stem.startswith("invalid_")], ids=lambda p: p.stem)
def test_docs_example_findings_under_every_schedule(path):
    # the invalid_* examples are files the loader refuses (exit 2): tests/test_golden.py pins that
    program = load_scenario(path)
    found = _every_schedule(program)
    assert {(f["tool"], f["kind"]) for f in found} == EXPECTED.get(path.stem, set())


def _attention(**kw) -> tuple[CubeGroupProgram, object]:
    with capture_sources() as table:
        program = load_model("attention_grad", options={k: str(v).lower() for k, v in kw.items()})[0]
    return program, source_lookup(program, table)


RACES = {
    "wait_qk": (dict(wait_qk=False), "s_ws", ("load", "read"), ("matmul.C", "write"), "a Wait<true>"),
    "wait_qk_causal": (dict(wait_qk=False, causal=True), "s_ws", ("load", "read"), ("matmul.C", "write"), "a Wait<true>"),
    "dv_barrier": (dict(merge=True, merge_dv=True, dv_barrier=False), "p_ws", ("store", "write"), ("matmul.A", "read"),
                   "a GroupBarrier from"),
    "dv_barrier_delayed": (dict(merge=True, merge_dv=True, dv_barrier=False, follower_delay=5000), "p_ws",
                           ("store", "write"), ("matmul.A", "read"), "a GroupBarrier from"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(RACES))
def test_attention_races_are_named_under_every_schedule(case):
    kw, tensor, aiv_op, aic_op, missing = RACES[case]
    program, src = _attention(**kw)
    (f,) = _every_schedule(program, source_of=src)
    assert (f["tool"], f["kind"]) == ("racecheck", "race")
    aiv, aic = f["ops"]
    assert aiv["core"].startswith("aiv") and aic["core"].startswith("aic")
    assert (aiv["op"], aiv["access"], aiv["tensor"]) == (*aiv_op, tensor)
    assert (aic["op"], aic["access"], aic["tensor"]) == (*aic_op, tensor)
    assert aiv["elements"][0] <= aic["elements"][1] and aic["elements"][0] <= aiv["elements"][1]
    assert f["missing"].startswith(missing)
    assert "models/attention_grad.py:" in f["message"]


def test_attention_fixed_twins_are_clean():
    for kw in (dict(causal=True), dict(merge=True), dict(merge=True, merge_dv=True, follower_delay=5000)):
        program, src = _attention(**kw)
        assert _every_schedule(program, source_of=src) == [], kw


def test_the_wait_qk_race_names_the_wait_to_add():
    program, src = _attention(wait_qk=False)
    rep = sanitize(program, source_of=src)
    (f,) = rep.findings
    load, post = f.ops[0].site, f.ops[1].site
    assert post.origin == (load.core, 1)  # the S task aiv0 posted at op 1 (alloc 0, post 1)
    text = rep.render()
    assert "wait on the message before the load" in text
    assert f"{load.core} op {load.op_index}" in text


def _one_aiv(sync: str):
    """AIV 0 posts C = A @ B, quits, then (SyncAll in the given form) loads C without waiting."""
    k = CubeGroupKernel(chip="910B1", name="sync-forms")
    t = dict(M=16, N=16, Ka=16, Kb=16, singleCoreM=16, singleCoreN=16, singleCoreK=16, baseM=16, baseN=16, baseK=16)
    g = k.create_cube_res_group("g", 0, 2, 1, "matmul", matmul=dict(a="float16", b="float16", c="float32",
                                bias="float32"), tiling=t)  # fmt: skip
    a, b = (k.alloc(n, (16, 16), "float16", "random", seed=i) for i, n in enumerate("ab"))
    c = k.alloc("c", (16, 16), "float32")
    aiv = k.aiv(0)
    aiv.assign_queue(g, 0)
    f = aiv.vec.buffer("f", 16, 16, "float32")
    aiv.post(g, dict(aAddr=a.addr, bAddr=b.addr, cAddr=c.addr))
    aiv.quit(g)
    if sync != "none":
        aiv.sync_all(aiv_only=sync == "aiv_only")
    aiv.vec.load(f, c.addr)
    return k.compile()


def test_only_the_all_core_sync_all_orders_the_aics_work():
    assert _every_schedule(_one_aiv("all_cores")) == []  # it waits for the AIC to leave its loop
    for form in ("aiv_only", "none"):
        (f,) = _every_schedule(_one_aiv(form))
        assert (f["kind"], f["ops"][0]["op"], f["ops"][1]["op"]) == ("race", "load", "matmul.C"), form


def test_synccheck_on_barriers_and_foreign_waits():
    k = CubeGroupKernel(chip="910B1", name="sync-shapes")
    g = k.create_cube_res_group("g", 0, 2, 2, "free")
    bar = k.group_barrier("b", 1, 1)
    for q in range(2):
        aiv = k.aiv(q)
        aiv.assign_queue(g, q)
        aiv.post(g)
        if q == 0:
            aiv.arrive(bar, 0)
            aiv.arrive(bar, 0)  # a second round nobody waits for
            aiv.wait(g, 1)  # queue 1's slot (P = 2): another queue's message
        else:
            aiv.barrier_wait(bar, 0)
        aiv.quit(g)
    found = _every_schedule(k.compile())
    assert {(f["tool"], f["kind"]) for f in found} == {
        ("synccheck", "barrier_unbalanced"),
        ("synccheck", "wait_other_queue"),
    }
    bad = next(f for f in found if f["kind"] == "barrier_unbalanced")
    assert "Arrive calls per index [2], Wait calls per index [1]" in bad["message"]
    # a sync op touches no tensor: both fields null (docs/model/sanitizer.md, the JSON section)
    assert all(o["access"] == "sync" and o["tensor"] is None and o["elements"] is None for f in found for o in f["ops"])


def test_reports_are_cached_by_program_content():
    race, fixed = (
        ROOT / "docs" / "examples" / "sanitizer_race.toml",
        ROOT / "docs" / "examples" / "sanitizer_race_fixed.toml",
    )
    first = sanitize(load_scenario(race), seed=5)
    again = sanitize(load_scenario(race), seed=5)  # built apart, equal content: the cached report
    assert again.log is first.log and again.to_json() == first.to_json()
    fresh = sanitize(load_scenario(race), seed=5, cache=False)
    assert fresh.log is not first.log and fresh.to_json() == first.to_json()
    assert sanitize(load_scenario(fixed), seed=5).findings == []
    # what initcheck reads is content too: c given an init, the early load reads defined bytes
    assert [f.kind for f in sanitize(load_scenario(race), tools="initcheck").findings] == ["uninitialised_gm_read"]
    given = load_scenario(race)
    given.gm.init_given["c"] = True
    assert sanitize(given, tools="initcheck").findings == []
    assert len(sanitize(given, tools="initcheck", uninitialised=["c"]).findings) == 1


def test_programs_differing_only_in_data_share_a_report_but_not_a_result():
    from ascend_jax import run_reference

    path = ROOT / "docs" / "examples" / "sanitizer_race_fixed.toml"
    first, other = load_scenario(path), load_scenario(path)
    other.gm.write("a", np.full(other.gm.tensors["a"].shape, 0.5))  # a sweep over inputs
    one, two = sanitize(first, seed=2), sanitize(other, seed=2)
    assert two.log is one.log and two.to_json() == one.to_json()
    for program, report in ((first, one), (other, two)):  # each result is its own program's run
        assert report.result.tensor("out").tobytes() == run_reference(program, seed=2).tensor("out").tobytes()
    assert one.result.tensor("out").tobytes() != two.result.tensor("out").tobytes()
    moved = load_scenario(path)  # a different layout is different content
    moved.gm.alloc("pad", (16,), "float32", init="zeros")
    assert sanitize(moved, seed=2).log is not one.log


def test_available_models_by_kind_splits_the_shipped_models():
    cube, comm = available_models(kind="cube_group"), available_models(kind="comm")
    assert {"attention_grad", "merge_example"} <= set(cube) and {"allreduce", "p2p_send_recv"} <= set(comm)
    assert sorted(cube + comm) == available_models()
    with pytest.raises(ConfigError, match="kind"):
        available_models(kind="cube")


def _record_only_matches_a_computing_run(program, source_of=None, schedule="lockstep", seed=0) -> None:
    """The observed run skips the arithmetic (reference.compute's record-only mode): its event
    log, findings and result JSON must be those of an observed run that computes, and the report's
    ``result`` must be the plain run's, tensors included."""
    from ascend_jax import run_reference
    from ascend_jax.sanitizer.api import TOOLS, _run_and_analyse

    args = (program, schedule, seed, None, None, TOOLS, (), source_of)
    skip, full = _run_and_analyse(*args), _run_and_analyse(*args, arithmetic=True)
    assert skip.to_json() == full.to_json()

    def accesses(log):
        return [(a.site, a.kind, a.tensor, a.addr, a.rows, a.width, a.stride, a.vc.tolist()) for a in log.accesses]

    assert accesses(skip.log) == accesses(full.log) and skip.log.ub == full.log.ub
    assert skip.log.notes == full.log.notes
    assert skip.observed.to_json() == full.observed.to_json()
    assert skip.observed.outcome() == full.observed.outcome()
    plain = run_reference(program, schedule=schedule, seed=seed)
    assert skip.result.to_json() == plain.to_json()
    for name in program.gm.tensors:
        assert skip.result.tensor(name).tobytes() == plain.tensor(name).tobytes(), name


@pytest.mark.parametrize("name", _cube_models())
def test_record_only_run_matches_a_computing_run_on_models(name):
    program = load_model(name)[0]
    for schedule, seed in (("lockstep", 0), ("timed", 0)):
        _record_only_matches_a_computing_run(program, schedule=schedule, seed=seed)


def test_record_only_run_matches_a_computing_run_on_examples_and_races():
    for path in EXAMPLES:
        if not path.stem.startswith("invalid_"):
            _record_only_matches_a_computing_run(load_scenario(path), schedule="random", seed=3)
    for kw, *_ in RACES.values():
        program, src = _attention(**kw)
        _record_only_matches_a_computing_run(program, src, schedule="random", seed=1)

"""The sanitizer's checks on hand-built event logs: every edge and every rule, one small case each."""

from __future__ import annotations

from pathlib import Path

import pytest

from ascend_jax.sanitizer import EventLog, Site, TensorInfo, analyse
from ascend_jax.sanitizer.events import happens_before, overlap
from ascend_jax.sanitizer.findings import TOOLS, render

ROOT_DOCS = Path(__file__).resolve().parents[2] / "docs"

CORES = ["aiv0", "aiv1", "aic0"]


def _log(*tensors: TensorInfo) -> EventLog:
    return EventLog(CORES, tensors or (TensorInfo("x", 0x1000, 1024, 4, (16, 16)),))


def _site(core: str, i: int, op: str = "store") -> Site:
    return Site(core, i, op, f"test:{core}:{i}")


def _row(log: EventLog, core: str, i: int, kind: str, row: int = 0, rows: int = 1) -> None:
    """Rows ``row .. row + rows - 1`` of the 16 x 16 float32 tensor x."""
    log.tile(core, _site(core, i, "load" if kind == "read" else "store"), kind, 0x1000 + row * 64, rows, 16, 16, 4)


def _races(log: EventLog) -> list:
    return [f for f in analyse(log, ("racecheck",)) if f.tool == "racecheck"]


def test_unordered_writes_race_and_a_message_orders_them():
    log = _log()
    _row(log, "aiv0", 0, "write")
    _row(log, "aiv1", 0, "write")
    (f,) = _races(log)
    assert f.kind == "race" and f.cores == ["aiv0", "aiv1"]
    assert [o.to_json()["elements"] for o in f.ops] == [[0, 15], [0, 15]]
    assert f.to_json().keys() == {"tool", "kind", "cores", "ops", "missing", "message"}
    assert f.ops[0].to_json().keys() == {"core", "op_index", "op", "access", "tensor", "elements"}

    log = _log()
    _row(log, "aiv0", 0, "write")
    log.publish("aiv0", ("slot", 0, 0))  # post
    log.acquire("aic0", ("slot", 0, 0))  # receive
    log.publish("aic0", ("slot", 0, 0))  # free
    log.acquire("aiv1", ("slot", 0, 0))  # alloc reusing the slot
    _row(log, "aiv1", 0, "write")
    assert _races(log) == []


def test_a_publish_is_seen_only_by_acquires_after_it():
    log = _log()
    log.publish("aiv0", ("slot", 0, 0))
    _row(log, "aiv0", 1, "write")  # after the post: the receiver does not see it
    log.acquire("aiv1", ("slot", 0, 0))
    _row(log, "aiv1", 0, "read")
    assert len(_races(log)) == 1


def test_reads_do_not_race_and_atomics_of_one_kind_commute():
    log = _log()
    _row(log, "aiv0", 0, "read")
    _row(log, "aiv1", 0, "read")
    assert _races(log) == []
    log = _log()
    _row(log, "aiv0", 0, "atomic_add")
    _row(log, "aiv1", 0, "atomic_add")
    log.tile("aic0", _site("aic0", 0, "matmul.C"), "atomic_add", 0x1000, 16, 16, 16, 4)
    assert _races(log) == []
    for other in ("atomic_max", "write", "read"):
        log = _log()
        _row(log, "aiv0", 0, "atomic_add")
        _row(log, "aiv1", 0, other)
        (f,) = _races(log)
        assert {o.access for o in f.ops} == {"atomic_add", other}


def test_one_core_never_races_with_itself():
    log = _log()
    _row(log, "aiv0", 0, "write")
    _row(log, "aiv0", 1, "read")
    assert _races(log) == []


def test_overlap_is_exact_on_strided_tiles():
    log = _log()
    even = log.tile("aiv0", _site("aiv0", 0), "write", 0x1000, 8, 16, 32, 4)  # rows 0, 2, 4, ...
    odd = log.tile("aiv1", _site("aiv1", 0), "write", 0x1000 + 64, 8, 16, 32, 4)  # rows 1, 3, 5, ...
    assert overlap(even, odd) is None
    assert _races(log) == []
    col = log.tile("aic0", _site("aic0", 0, "matmul.B"), "read", 0x1000 + 4, 16, 1, 16, 4)  # column 1
    assert overlap(even, col) == (0x1000 + 4, 0x1000 + 14 * 64 + 8)
    assert [f.cores for f in _races(log)] == [["aiv0", "aic0"], ["aiv1", "aic0"]]


def test_transposed_tile_footprint():
    log = _log()
    a = log.tile("aiv0", _site("aiv0", 0), "read", 0x1000, 4, 2, 16, 4, trans=True)  # 2 stored rows of 4
    assert (a.rows, a.width, a.stride) == (2, 16, 64)


def test_barrier_rounds_order_arrivers_before_waiters():
    log = _log()
    _row(log, "aiv0", 0, "write")
    log.release("aiv0", ("barrier_arrive", 0, 1))
    log.acquire("aiv1", ("barrier_arrive", 0, 1))
    log.release("aiv1", ("barrier_wait", 0, 1))
    _row(log, "aiv1", 1, "read")
    assert _races(log) == []
    # a wait of round 2 does not see an arrival of round 1 made after the round-1 wait
    log = _log()
    log.release("aiv0", ("barrier_arrive", 0, 1))
    log.acquire("aiv1", ("barrier_arrive", 0, 1))
    _row(log, "aiv0", 1, "write")
    _row(log, "aiv1", 1, "read")
    assert len(_races(log)) == 1


def test_happens_before_is_transitive_through_an_aic():
    log = _log()
    a = log.tile("aiv0", _site("aiv0", 0), "write", 0x1000, 1, 16, 16, 4)
    log.publish("aiv0", ("slot", 0, 0))
    log.acquire("aic0", ("slot", 0, 0))
    log.publish("aic0", ("slot", 0, 1))
    log.acquire("aiv1", ("slot", 0, 1))
    b = log.tile("aiv1", _site("aiv1", 0), "read", 0x1000, 1, 16, 16, 4)
    assert happens_before(a, b) and not happens_before(b, a)


def test_initcheck_gm_needs_an_init_or_an_ordered_write():
    ws = TensorInfo("ws", 0x1000, 1024, 4, (16, 16), initialised=False)
    log = _log(ws)
    _row(log, "aiv0", 0, "read")
    (f,) = analyse(log, ("initcheck",))
    assert (f.tool, f.kind, f.ops[0].tensor) == ("initcheck", "uninitialised_gm_read", "ws")
    assert "0..15" in f.message
    # an atomic add reads the old value too
    log = _log(ws)
    _row(log, "aiv0", 0, "atomic_add")
    assert len(analyse(log, ("initcheck",))) == 1
    # an ordered write covers the read; a partial one does not
    log = _log(ws)
    _row(log, "aiv0", 0, "write", rows=2)
    log.publish("aiv0", ("slot", 0, 0))
    log.acquire("aiv1", ("slot", 0, 0))
    _row(log, "aiv1", 0, "read", rows=2)
    _row(log, "aiv1", 1, "read", row=1, rows=2)
    (f,) = analyse(log, ("initcheck",))
    assert f.ops[0].site.op_index == 1 and "32..47" in f.message
    # an unordered write does not count (whatever order the run took): initcheck alone reports
    # the read; with racecheck, the race is the one finding, as it names the missing order
    log = _log(ws)
    _row(log, "aiv0", 0, "write")
    _row(log, "aiv1", 0, "read")
    assert [f.tool for f in analyse(log, ("initcheck",))] == ["initcheck"]
    assert [f.tool for f in analyse(log, ("racecheck", "initcheck"))] == ["racecheck"]
    # ... unless the racing write leaves some of the read's bytes undefined all the same
    log = _log(ws)
    _row(log, "aiv0", 0, "write")
    _row(log, "aiv1", 0, "read", rows=2)
    assert sorted(f.tool for f in analyse(log, ("racecheck", "initcheck"))) == ["initcheck", "racecheck"]
    # an initialised tensor needs nothing
    log = _log()
    _row(log, "aiv0", 0, "read")
    assert analyse(log, ("initcheck",)) == []


def test_initcheck_ub_reads_before_writes():
    log = _log()
    s = _site("aiv0", 0, "exp")
    log.ub_access(s, "a", (8, 64), 8, 64, write=False)
    log.ub_access(_site("aiv0", 1, "load"), "b", (8, 64), 4, 64, write=True)
    log.ub_access(_site("aiv0", 2, "exp"), "b", (8, 64), 4, 64, write=False)
    log.ub_access(_site("aiv0", 3, "exp"), "b", (8, 64), 8, 64, write=False)
    found = analyse(log, ("initcheck",))
    assert [(f.kind, f.ops[0].site.op_index, f.ops[0].tensor) for f in found] == [
        ("uninitialised_ub_read", 0, "ub:a"),
        ("uninitialised_ub_read", 3, "ub:b"),
    ]
    assert found[1].ops[0].elements == (256, 511)  # rows 4..7 of b


def test_memcheck_out_of_range_and_straddle():
    a = TensorInfo("a", 0x1000, 256, 4, (64,))
    b = TensorInfo("b", 0x1100, 256, 4, (64,))
    log = _log(a, b)
    log.tile("aic0", _site("aic0", 0, "matmul.A"), "read", 0x10F0, 1, 16, 16, 4)  # a's end into b
    log.note(kind="bad_tile", site=_site("aic0", 1, "matmul.C"), access="write", addr=0x9000, lo=0x9000, hi=0x9040)
    found = analyse(log, ("memcheck",))
    assert sorted(f.kind for f in found) == ["out_of_range", "straddle"]
    straddle = next(f for f in found if f.kind == "straddle")
    assert "a, b" in straddle.message
    # a tile's elements are null; its tensor is named only when it partly covers exactly one
    assert [f.to_json()["ops"][0]["tensor"] for f in found] == [None, None]
    assert all(f.to_json()["ops"][0]["elements"] is None for f in found)
    log = _log(a, b)
    log.tile("aic0", _site("aic0", 0, "matmul.A"), "read", 0x11F0, 1, 64, 64, 4)  # b's end into nothing
    (alone,) = analyse(log, ("memcheck",))
    assert (alone.kind, alone.to_json()["ops"][0]["tensor"], alone.to_json()["ops"][0]["elements"]) == (
        "straddle",
        "b",
        None,
    )


def test_findings_are_sorted_and_rendered_one_paragraph_each():
    log = _log()
    _row(log, "aiv1", 0, "write")
    _row(log, "aiv0", 0, "write", row=1)
    _row(log, "aic0", 0, "read", row=1)
    _row(log, "aiv0", 1, "read")
    found = analyse(log, TOOLS)
    assert [f.cores for f in found] == [["aiv0", "aic0"], ["aiv0", "aiv1"]]  # by (core, op index)
    text = render(TOOLS, found)
    assert text.count("[racecheck]") == 2 and "Missing:" in text and "Fix:" in text


def test_unknown_access_kind_is_refused():
    with pytest.raises(ValueError, match="access kind"):
        _log().access("aiv0", _site("aiv0", 0), "scribble", 0x1000, 1, 4, 4, 4)


def test_memcheck_overlapping_regions():
    from ascend_jax.sanitizer.memcheck import overlapping_regions

    found = overlapping_regions(
        [("tensor 'a'", 0x1000, 0x1100), ("tensor 'b'", 0x10C0, 0x1200), ("tensor 'c'", 0x1200, 0x1300)]
    )
    (f,) = found
    assert f.kind == "overlapping_tensors" and "0x10c0..0x10ff" in f.message
    assert (f.to_json()["ops"], f.to_json()["cores"]) == ([], [])
    assert "tensor 'a'" in f.message and "tensor 'b'" in f.message


def test_scenario_lines_find_each_ops_line(tmp_path):
    from ascend_jax.sanitizer.sources import scenario_lines

    f = tmp_path / "s.toml"
    f.write_text(
        'name = "x"\n[[group]]\nname = "g"\n[[aiv]]\nblock_idx = 0\nops = [\n  { op = "assign_queue" },  # { op = no\n'
        '  { op = "post" }, { op = "quit" },\n]\n[[tensor]]\nname = "t"\n[[aiv]]\nops = [{ op = "quit" }]\n'
    )
    assert scenario_lines(f) == {(0, 0): 7, (0, 1): 8, (0, 2): 8, (1, 0): 13}
    assert scenario_lines(tmp_path / "missing.toml") == {}


def test_gm_remembers_whether_a_tensor_was_given_an_init():
    import numpy as np

    from ascend_jax.gm import GlobalMemory
    from ascend_jax.scenario import load_scenario

    gm = GlobalMemory()
    gm.alloc("bare", (4,), "float32")
    gm.alloc("zeroed", (4,), "float32", "zeros")
    gm.alloc("given", (4,), "float32", np.ones(4))
    assert gm.init_given == {"bare": False, "zeroed": True, "given": True}
    assert not gm.read("bare").any() and not gm.read("zeroed").any()  # both zero-filled all the same
    assert gm.copy().init_given == gm.init_given
    examples = ROOT_DOCS / "examples"
    assert load_scenario(examples / "sanitizer_race.toml").gm.init_given == {"a": True, "b": True, "c": False,
                                                                             "out": False}  # fmt: skip
    assert load_scenario(examples / "sanitizer_uninit_fixed.toml").gm.init_given == {"x": True, "y": True}

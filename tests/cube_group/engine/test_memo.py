"""Encodings kept across ``simulate`` calls (engine/memo.py): reused only while the program object is
unchanged; any change in place (a payload, the GM, a mapping) encodes it again; a program holding a
user's object is never kept; results equal the reference either way."""

from __future__ import annotations

import gc

import numpy as np
import pytest

import ascend_jax as aj
from ascend_jax.cube_group.engine import memo
from ascend_jax.cube_group.engine import prepare as prepare_batch


def _kernel(skip: int = 0, callback="merge"):
    k = aj.CubeGroupKernel(max_steps=2000)
    g = k.create_cube_res_group("g", 0, 2, 2, callback=callback)
    for q in range(2):
        a = k.aiv(q)
        a.assign_queue(g, q)
        a.post(g, fields={"skipCnt": skip if q == 0 else 0, "value": q + 1})
        a.quit(g)
    return k.compile()


@pytest.fixture(autouse=True)
def _fresh():
    memo.clear()
    yield
    memo.clear()


def _counts() -> tuple[int, int]:
    return memo.STATS["encoded"], memo.STATS["reused"]


def _same_as_reference(program, **kw) -> None:
    [res] = aj.simulate(program, **kw)
    assert res.to_json() == aj.run_reference(program, **kw).to_json()


def test_an_unchanged_program_is_encoded_once():
    p = _kernel()
    e0, r0 = _counts()
    first = prepare_batch([p] * 3)
    second = prepare_batch([p] * 3)
    assert _counts() == (e0 + 1, r0 + 1)
    assert second.shape is first.shape and second.tables is first.tables  # shape and tables kept too
    _same_as_reference(p)
    # another schedule is another shape of the same encoding
    assert prepare_batch([p], schedule="random").shape is not first.shape
    assert _counts()[0] == e0 + 1


def test_a_payload_changed_in_place_is_encoded_again():
    p = _kernel(skip=0)
    before = aj.simulate(p)[0].to_json()
    e0, _ = _counts()
    op = next(op for _, ops in p.aivs for op in ops if op.payload is not None)
    op.payload["skipCnt"] = 1  # a message field changed inside the frozen program
    after = aj.simulate(p)[0]
    assert _counts()[0] == e0 + 1
    assert after.to_json() != before
    _same_as_reference(p)


def test_the_gm_and_mappings_changed_in_place_are_seen():
    p = _kernel()
    p.gm.alloc("x", (4,), "float32")
    aj.simulate(p)
    e0, _ = _counts()
    p.gm.write("x", np.ones(4, np.float32))
    res = aj.simulate(p)[0]
    assert _counts()[0] == e0 + 1
    assert res.tensor("x").tolist() == [1.0] * 4  # the GM the program holds now
    _same_as_reference(p)
    e1, _ = _counts()
    q0 = dict(p.queue_of)
    p.queue_of.update({(0, 0): q0[(0, 1)], (0, 1): q0[(0, 0)]})  # the AIVs swap queues
    _same_as_reference(p)
    assert _counts()[0] == e1 + 1


def test_max_steps_keeps_its_own_encoding():
    p = _kernel()
    e0, _ = _counts()
    short = aj.simulate(p, max_steps=1)[0]
    assert short.status.name == "MAX_STEPS"
    assert aj.simulate(p)[0].status.name == "OK"
    assert aj.simulate(p, max_steps=1)[0].to_json() == short.to_json()
    assert _counts()[0] == e0 + 2  # one per max_steps


class _Scaled:
    """A user's callback with state: frees every message and sets the skip count it holds."""

    required_fields: tuple[str, ...] = ()

    def __init__(self, skip: int):
        self.skip = skip

    def init(self, mm, tiling):
        pass

    def call(self, mm, msg, handle):
        handle.free_message(msg)
        handle.set_skip_msg(self.skip)


def test_a_program_with_a_user_object_is_never_kept():
    cb = _Scaled(0)
    p = _kernel(callback=cb)
    e0, r0 = _counts()
    first = aj.simulate(p)[0].to_json()
    cb.skip = 1  # the same program object, another behaviour
    second = aj.simulate(p)[0]
    assert _counts() == (e0 + 2, r0)
    assert second.to_json() != first
    _same_as_reference(p)


def test_entries_go_with_their_program_and_past_the_limit(monkeypatch):
    p = _kernel()
    aj.simulate(p)
    assert len(memo._ENTRIES) == 1
    del p
    gc.collect()
    assert not memo._ENTRIES  # the program is gone, so is its entry
    monkeypatch.setattr(memo, "MAX_PROGRAMS", 2)
    programs = [_kernel(skip=i % 2) for i in range(3)]
    for q in programs:
        aj.simulate(q)
    assert len(memo._ENTRIES) == 2  # the least recently used went
    res = aj.simulate(programs)  # more distinct programs than kept: encoded, not kept
    assert len(memo._ENTRIES) == 2
    for seed, (lane, q) in enumerate(zip(res, programs, strict=True)):
        assert lane.to_json() == aj.run_reference(q, seed=seed).to_json()


def test_tables_are_placed_once_per_object():
    from ascend_jax.cube_group.engine import devices

    p = _kernel()
    tab = prepare_batch([p]).tables
    assert devices._device_tables(tab) is devices._device_tables(tab)
    assert id(tab) in devices._ON_DEVICE
    key = id(tab)
    memo.clear()
    del tab
    gc.collect()
    assert key not in devices._ON_DEVICE

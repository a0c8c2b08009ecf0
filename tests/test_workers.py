"""ascend_jax.workers: chunks dispatched from threads, finished in order."""

from __future__ import annotations

import threading

import pytest

from ascend_jax import workers


@pytest.mark.parametrize("n_workers", [1, 2, 3])
@pytest.mark.parametrize("warm", [False, True])
def test_run_finishes_every_item_in_order_and_warms_once(n_workers, warm):
    threads, warmed = set(), []

    def start(x):
        threads.add(threading.current_thread().name)
        return x * 10

    out = workers.run(start, lambda r: r + 1, range(7), n_workers, warmed.append if warm else None)
    assert out == [x * 10 + 1 for x in range(7)]
    assert warmed == ([0] if warm and n_workers > 1 else [])
    on_pool = {t for t in threads if t.startswith("ascend_jax_chunk")}
    assert bool(on_pool) == (n_workers > 1)  # one worker: every chunk from the caller's thread
    assert len(on_pool) <= n_workers


def test_run_of_nothing_and_errors_reach_the_caller():
    assert workers.run(lambda x: x, lambda r: r, [], 2) == []

    def finish(r):
        if r == 3:
            raise ValueError("chunk 3")
        return r

    with pytest.raises(ValueError, match="chunk 3"):
        workers.run(lambda x: x, finish, range(5), 2)


def test_an_error_drops_the_chunks_not_started():
    ran = []

    def finish(r):
        ran.append(r)
        if r == 0:
            raise ValueError("chunk 0")
        threading.Event().wait(0.01)  # the others take a while: most are still queued
        return r

    with pytest.raises(ValueError, match="chunk 0"):
        workers.run(lambda x: x, finish, range(40), 2, lambda _: None)
    threading.Event().wait(0.5)  # all 40 would have run by now (0.2 s on two threads)
    assert len(ran) < 10


def test_a_forked_child_gets_its_own_pool(monkeypatch):
    """A child made by fork has none of its parent's threads: a pool made before the fork would
    take its chunks and never run them."""
    monkeypatch.setattr(workers, "_POOLS", {})
    before = workers._pool(2)
    monkeypatch.setattr(workers.os, "getpid", lambda: -1)  # as a child would see another pid
    assert workers._pool(2) is not before
    assert workers.run(lambda x: x, lambda r: r * 2, range(4), 2) == [0, 2, 4, 6]
    for pool in workers._POOLS.values():
        pool.shutdown()

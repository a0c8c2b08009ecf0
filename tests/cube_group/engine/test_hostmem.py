"""engine.hostmem: result buffers go back to the pool only when no array of them is left."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from ascend_jax.cube_group.engine import hostmem


@pytest.fixture(autouse=True)
def empty_pool(monkeypatch):
    monkeypatch.setattr(hostmem, "_idle", [])


def test_a_buffer_returns_when_its_last_view_is_gone_and_is_leased_again():
    buf = hostmem.lease(1000)
    assert buf.size == 1000 and buf.flags.writeable
    rows = buf[64:128].view(np.int32).reshape(4, 4)
    cols, tail = rows.T, rows[1:]
    del buf, rows
    gc.collect()
    assert hostmem.idle_bytes() == 0  # views of it are alive
    del cols
    gc.collect()
    assert hostmem.idle_bytes() == 0
    tail[:] = 7
    del tail  # the last one: back in the pool
    assert hostmem.idle_bytes() == 1000
    again = hostmem.lease(700)  # 700..1400 fits a 1,000-byte buffer
    assert hostmem.idle_bytes() == 0 and again.size == 700
    other = hostmem.lease(700)  # none idle: a new buffer, not the one in use
    assert not np.shares_memory(again, other)


def test_the_pool_keeps_at_most_pool_bytes_and_only_fitting_sizes(monkeypatch):
    monkeypatch.setattr(hostmem, "POOL_BYTES", 3000)
    held = [hostmem.lease(1000) for _ in range(4)]
    del held
    assert hostmem.idle_bytes() == 3000  # the oldest dropped
    big = hostmem.lease(2500)  # no idle buffer of 2,500..5,000 bytes
    assert hostmem.idle_bytes() == 3000 and big.size == 2500


def test_simulate_results_of_several_chunks_stay_intact_while_later_batches_reuse_memory():
    from test_run import _merge_kernel

    import ascend_jax as aj

    lanes = [_merge_kernel(skip=i % 2, value=i) for i in range(9)]
    first = aj.simulate(lanes, chunk_size=2, workers=2)
    kept = {k: v.copy() for k, v in first.arrays.items()}
    for _ in range(3):  # each call leases, joins and drops a result of the same size
        aj.simulate([_merge_kernel(value=99)] * 9, chunk_size=2, workers=2)
    for k, v in kept.items():
        np.testing.assert_array_equal(first.arrays[k], v, err_msg=k)
    assert hostmem.idle_bytes() > 0  # the dropped results' buffer waits for the next batch

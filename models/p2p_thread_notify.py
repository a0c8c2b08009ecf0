"""The current hccl P2P example on 2 ranks: stream and AI CPU thread synchronise through thread notifies.

Host side per rank: the user stream becomes a host thread with one notify and is exported to the AI
CPU; one AI CPU thread with one notify is exported to the host; an HCCS channel with two notifies;
then on the stream ``record (AI CPU thread, notify 0) -> kernel (timeout 27 * 68 s) -> wait (own
notify 0, 1836 s)``. Device side: acquire comm, batch mode, wait on notify 0, send or receive as in
the seed, record the host thread's notify 0, end batch, release.
Run: ``ascend-jax run --model p2p_thread_notify --json``.
"""

from __future__ import annotations

from ascend_jax.aicpu import p2p_expected, p2p_thread_job


def build(seed: int = 0, count: int = 1024):
    return p2p_thread_job(count, seed=seed)


def expected(program):
    return p2p_expected(program)

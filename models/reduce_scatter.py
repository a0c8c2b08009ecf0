"""Ring reduce_scatter over p ranks (default 4; `--ranks 2..64`) built on the seed's primitives.

Each rank runs one device thread with channels to its ring neighbours; per step it records ACK to
prev, waits ACK from next, writes its block into next's HCCL buffer, records DATA to next, waits
DATA from prev and copies or reduces the received block (spec §9.3). fp32 data, SUM.
Run: ``ascend-jax run --model reduce_scatter --ranks 8 --json``.
"""

from __future__ import annotations

from ascend_jax.aicpu import HcclCMDType, ring_expected, ring_job


def build(seed: int = 0, ranks: int = 4, count: int = 256):
    return ring_job(int(HcclCMDType.REDUCE_SCATTER), ranks=ranks, count=count, seed=seed)


def expected(program):
    return ring_expected(program)

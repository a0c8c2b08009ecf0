"""The seed's P2P flow on 2 ranks: rank 0 ``HcclSendCustom``, rank 1 ``HcclRecvCustom`` (the
receiver pulls from the sender's HCCL buffer), each host synchronizing its stream afterwards.

Host side per rank: engine context, two ACL notifies, one AI CPU thread, an HCCS channel with two
notifies, HCCL buffers, context copied to the device, op-info JSON loaded, then
``aclrtRecordNotify(n0) -> aclrtLaunchKernelWithConfig(timeout 1836 s) -> aclrtWaitAndResetNotify(n1)``.
Device side: acquire comm, batch mode, wait n0, ExecOp, record n1, end batch, release.
Run: ``ascend-jax run --model p2p_send_recv --json``.
"""

from __future__ import annotations

from ascend_jax.aicpu import p2p_expected, p2p_job


def build(seed: int = 0, count: int = 1024):
    return p2p_job(count, seed=seed)


def expected(program):
    return p2p_expected(program)

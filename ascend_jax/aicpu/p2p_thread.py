"""The current hccl P2P example: host and device synchronise through thread notifies, not ACL notifies.

Modelled on hicann/hccl ``examples/04_custom_ops_p2p`` (``op_host/send.cc`` ``HcclSendCustom``,
``op_host/launch_kernel.cc`` ``LaunchKernelWithAclrt``, ``op_kernel_aicpu/aicpu_kernel.cc``
``HcclLaunchP2PAicpuKernel``, ``op_kernel_aicpu/exec_op.cc`` ``ExecOp``). Where the seed's flow (see
:mod:`ascend_jax.aicpu.collectives`) records and waits two ACL notifies around the kernel, this one:

* turns the user stream into a host thread with one notify (``HcclThreadAcquireWithStream``, engine
  ``CPU_TS``) and exports it to the AI CPU (``HcclThreadExportToCommEngine`` to ``AICPU_TS``);
* acquires one AI CPU thread with one notify and exports it to the host (to ``CPU_TS``);
* on the stream: records the AI CPU thread's notify 0, launches the kernel (timeout 27 * 68 =
  1836 s), waits on its own notify 0 (``CUSTOM_TIMEOUT`` = 1836 s);
* in the kernel: the AI CPU thread waits on its notify 0, runs the same send / receive as the seed
  (``ExecOp``), then records notify 0 of the host thread.

As in the example, the two host thread handles live in the OpParam, which is filled only when the
engine context is created: a second call with the same tag finds the context and passes handle 0,
so its first thread record fails with ``HCCL_E_PTR`` (hicann/hcomm
``src/base_comm/primitives/api_c_adpt/cpu_primitives_c_adpt.cc`` ``HcommThreadNotifyRecordOnThread``:
``CHK_PTR_NULL`` on the thread).

Return codes, each from the example's own code (``inc/log.h`` macros) or the hcomm call it makes:
NULL buffer, communicator or stream -> ``HCCL_E_PTR`` (``HcclSendCustom``, ``CHK_PTR_NULL``); any
failing ACL call (``aclrtMemcpy`` of the context, the function lookup, the argument calls, the
launch) -> ``HCCL_E_RUNTIME`` (``ACLCHECK``); a library that does not load ->
``HCCL_E_OPEN_FILE_FAILURE`` (``op_host/load_kernel.cc`` ``LoadBinaryFromFile``); every HCCL / Hcomm
call's own code is passed on unchanged (``CHK_RET``); the thread API's codes are those of
:class:`~ascend_jax.aicpu.host.HostApi`, checked against hicann/hcomm there.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ascend_jax.aicpu.codes import (
    CommEngine,
    CommProtocol,
    HcclCMDType,
    HcclResult,
)
from ascend_jax.aicpu.collectives import KernelError, exec_p2p, p2p_op_param
from ascend_jax.aicpu.device import DeviceApi
from ascend_jax.aicpu.host import HostApi
from ascend_jax.aicpu.opinfo import device_kernel
from ascend_jax.aicpu.structs import THREAD_ALG_RESOURCE_CTX, THREAD_OP_PARAM

#: The example's kernel symbol; the simulator registers it under its own .so name so that it stays
#: apart from the seed flow's kernel of the same name.
THREAD_P2P_KERNEL = "HcclLaunchP2PAicpuKernel"
THREAD_P2P_SO = "libp2p_thread_aicpu_kernel.so"
THREAD_P2P_OP_INFO = {
    THREAD_P2P_KERNEL: {
        "opInfo": {"opKernelLib": "AICPUKernel", "kernelSo": THREAD_P2P_SO, "functionName": THREAD_P2P_KERNEL}
    }
}
#: ``CUSTOM_TIMEOUT`` (inc/common.h) and the launch attribute ``NOTIFY_DEFAULT_WAIT_TIME = 27 * 68``
#: (op_host/launch_kernel.cc), seconds.
CUSTOM_TIMEOUT = 1836
LAUNCH_TIMEOUT = 27 * 68
#: ``DEVICE_TYPE_A2`` (inc/common.h ``DeviceType``).
DEVICE_TYPE_A2 = 0
TAG = "hccl_custom_p2p"


def _p2p(host: HostApi, buf: int, count: int, data_type: int, peer: int, comm: str, stream: int, op_type: int,
         timeout: int) -> int:  # fmt: skip
    if not buf or comm is None or stream is None:
        return int(HcclResult.E_PTR)
    ret, param = p2p_op_param(host, THREAD_OP_PARAM, TAG, comm, buf, count, data_type, op_type)
    if ret:
        return ret
    param["devType"] = DEVICE_TYPE_A2
    engine = int(CommEngine.AICPU)
    ret, ctx, _ = host.hccl_engine_ctx_get(comm, TAG, engine)
    if ret:
        ret, ctx = host.hccl_engine_ctx_create(comm, TAG, engine, THREAD_ALG_RESOURCE_CTX.itemsize)
        if ret:
            return ret
        res = np.zeros((), THREAD_ALG_RESOURCE_CTX)
        ret, param["cpuThread"] = host.hccl_thread_acquire_with_stream(comm, int(CommEngine.CPU_TS), stream, 1)
        if ret:
            return ret
        ret, (res["cpuThreadOnAicpu"],) = _export(host, comm, int(param["cpuThread"]), CommEngine.AICPU_TS)
        if ret:
            return ret
        ret, threads = host.hccl_thread_acquire(comm, int(CommEngine.AICPU_TS), 1, 1)
        if ret:
            return ret
        res["aicpuThread"] = threads[0]
        ret, (param["aicpuThreadOnCpu"],) = _export(host, comm, threads[0], CommEngine.CPU_TS)
        if ret:
            return ret
        ret, res["channelHandle"] = host.hccl_channel_acquire(comm, engine, peer, int(CommProtocol.HCCS), 2)
        if ret:
            return ret
        _, res["localBuffer"]["addr"], res["localBuffer"]["size"] = host.hccl_get_hccl_buffer(comm)
        _, res["remoteBuffer"]["addr"], res["remoteBuffer"]["size"] = host.hccl_channel_get_hccl_buffer(
            comm, int(res["channelHandle"])
        )
        if host.aclrt_memcpy_h2d(ctx, res):
            return int(HcclResult.E_RUNTIME)  # ACLCHECK
    param["resCtx"] = ctx
    return _launch(host, stream, param, timeout)


def _export(host: HostApi, comm: str, thread: int, engine: CommEngine) -> tuple[int, tuple[int]]:
    ret, out = host.hccl_thread_export_to_comm_engine(comm, 1, [thread], int(engine))
    return ret, (out[0] if out else 0,)


def _launch(host: HostApi, stream: int, param: np.ndarray, timeout: int) -> int:
    """``LaunchKernelWithAclrt``: load the op-info library once per host thread, record the AI CPU
    thread's notify, launch, wait on the host thread's notify."""
    binary = host.thread_local.get("hccl_custom_thread_binary")
    # LoadAICPUKernel (op_host/load_kernel.cc) runs before the first thread record, as here; the model
    # passes the op-info document itself, not a path, so realpath's HCCL_E_INTERNAL cannot arise
    if binary is None:  # LoadBinaryFromFile: HCCL_E_OPEN_FILE_FAILURE when aclrtBinaryLoadFromFile fails
        ret, binary = host.aclrt_binary_load_from_file(THREAD_P2P_OP_INFO)
        if ret:
            return int(HcclResult.E_OPEN_FILE_FAILURE)
        host.thread_local["hccl_custom_thread_binary"] = binary
    cpu, aicpu = int(param["cpuThread"]), int(param["aicpuThreadOnCpu"])
    ret = host.hcomm_thread_notify_record_on_thread(cpu, aicpu, 0)
    if ret:
        return ret
    ret, func = host.aclrt_binary_get_function(binary, THREAD_P2P_KERNEL)
    if ret:
        return int(HcclResult.E_RUNTIME)
    ret, args = host.aclrt_kernel_args_init(func)
    if ret or host.aclrt_kernel_args_append(args, param)[0] or host.aclrt_kernel_args_finalize(args):
        return int(HcclResult.E_RUNTIME)
    cfg = {7: LAUNCH_TIMEOUT}  # ACL_RT_LAUNCH_KERNEL_ATTR_TIMEOUT
    if host.aclrt_launch_kernel_with_config(func, 1, stream, cfg, args, None, THREAD_OP_PARAM):
        return int(HcclResult.E_RUNTIME)
    return host.hcomm_thread_notify_wait_on_thread(cpu, 0, timeout)


def hccl_send_thread(host: HostApi, send_buf: int, count: int, data_type: int, dest_rank: int, comm: str,
                     stream: int, *, timeout: int = CUSTOM_TIMEOUT) -> int:  # fmt: skip
    """``HcclSendCustom`` of the current example (thread notifies). Returns an HcclResult."""
    return _p2p(host, send_buf, count, data_type, dest_rank, comm, stream, int(HcclCMDType.SEND), timeout)


def hccl_recv_thread(host: HostApi, recv_buf: int, count: int, data_type: int, src_rank: int, comm: str,
                     stream: int, *, timeout: int = CUSTOM_TIMEOUT) -> int:  # fmt: skip
    """``HcclRecvCustom`` of the current example (thread notifies)."""
    return _p2p(host, recv_buf, count, data_type, src_rank, comm, stream, int(HcclCMDType.RECEIVE), timeout)


def _ok(ret: int) -> None:
    if ret:
        raise KernelError(ret)


@device_kernel(THREAD_P2P_SO, THREAD_P2P_KERNEL)
def p2p_thread_kernel(dev: DeviceApi, param: Any) -> int:
    """``HcclLaunchP2PAicpuKernel`` of the current example: 0 on success, 1 on any failed call."""
    ctx = dev.read_struct(int(param["resCtx"]), THREAD_ALG_RESOURCE_CTX)
    a2 = int(param["devType"]) in (0, 1)  # A2 / A3 acquire and release the communicator
    try:
        if a2:
            _ok(dev.hcomm_acquire_comm(param["commName"]))
        _ok(dev.hcomm_batch_mode_start(param["tag"].decode()))
        thread, channel = int(ctx["aicpuThread"]), int(ctx["channelHandle"])
        _ok(dev.hcomm_thread_notify_wait_on_thread(thread, 0, CUSTOM_TIMEOUT))
        exec_p2p(dev, param, thread, channel, int(ctx["localBuffer"]["addr"]), int(ctx["remoteBuffer"]["addr"]))
        _ok(dev.hcomm_thread_notify_record_on_thread(thread, int(ctx["cpuThreadOnAicpu"]), 0))
        _ok(dev.hcomm_batch_mode_end(param["tag"].decode()))
        if a2:
            _ok(dev.hcomm_release_comm(param["commName"]))
    except KernelError:
        return 1
    return 0


__all__ = ["CUSTOM_TIMEOUT", "LAUNCH_TIMEOUT", "hccl_recv_thread", "hccl_send_thread", "p2p_thread_kernel"]

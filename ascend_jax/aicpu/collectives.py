"""The seed's custom P2P operator and ring collectives, written against the simulated APIs.

* :func:`hccl_send_custom` / :func:`hccl_recv_custom`: the host side of the documented sample
  (spec §4.2, §8.1): engine context, two ACL notifies, one device thread, an HCCS channel with
  two notifies, HCCL buffers, the context copied to the device, the op-info JSON loaded once per
  host thread, then ``record n0 -> kernel -> wait n1`` on the user stream.
* :func:`p2p_kernel` (``HcclLaunchP2PAicpuKernel`` in ``libp2p_aicpu_kernel.so``): the device
  side (§8.2): acquire the communicator, batch mode, wait n0 on the thread, ExecOp (send: stage
  into the HCCL buffer, record ACK, wait DATA; receive: wait ACK, read the peer's HCCL buffer,
  record DATA), record n1, end batch, release.
* :func:`hccl_ring_custom` and :func:`ring_kernel`: ring AllGather / ReduceScatter / AllReduce
  (§9.3) from the same primitives: per step record ACK to prev, wait ACK from next, write my
  block into next's HCCL buffer, record DATA to next, wait DATA from prev, then copy or reduce
  the received block locally.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ascend_jax.aicpu.codes import (
    ACL_RT_LAUNCH_KERNEL_ATTR_TIMEOUT,
    NOTIFY_DEFAULT_WAIT_TIME,
    NOTIFY_IDX_ACK,
    NOTIFY_IDX_DATA_SIGNAL,
    SIZE_TABLE,
    CommEngine,
    CommProtocol,
    HcclCMDType,
    HcclResult,
)
from ascend_jax.aicpu.device import DeviceApi
from ascend_jax.aicpu.host import HostApi
from ascend_jax.aicpu.opinfo import device_kernel
from ascend_jax.aicpu.structs import ALG_RESOURCE_CTX, OP_PARAM, RING_RES_CTX

#: The sample's op-info library: key, functionName, host lookup name and C symbol all equal.
P2P_KERNEL = "HcclLaunchP2PAicpuKernel"
P2P_SO = "libp2p_aicpu_kernel.so"
P2P_OP_INFO = {P2P_KERNEL: {"opInfo": {"opKernelLib": "AICPUKernel", "kernelSo": P2P_SO, "functionName": P2P_KERNEL}}}
RING_KERNEL = "HcclLaunchRingAicpuKernel"
RING_SO = "libring_aicpu_kernel.so"
RING_OP_INFO = {
    RING_KERNEL: {"opInfo": {"opKernelLib": "AICPUKernel", "kernelSo": RING_SO, "functionName": RING_KERNEL}}
}
CUSTOM_TIMEOUT = NOTIFY_DEFAULT_WAIT_TIME  # 1836 s (HCCL-P2P-NOW)
TAG = "hccl_custom_p2p"


class _HostState:
    """Per host thread (``thread_local`` in the sample): the loaded binary and the two notifies."""

    def __init__(self) -> None:
        self.binary: int | None = None
        self.notifies: dict[str, list[int]] = {}


def _host_state(host: HostApi) -> _HostState:
    return host.thread_local.setdefault("hccl_custom", _HostState())


def _acl(ret: int) -> int:
    """The sample's ``ACLCHECK``: any failing ACL call makes the wrapper return ``HCCL_E_RUNTIME`` (15)
    (hicann/hccl ``examples/04_custom_ops_p2p``: the macro in ``inc/log.h``, used around every ACL call
    of ``op_host/launch_kernel.cc`` ``LaunchKernelWithAclrt``; the raw aclError stays visible in
    ``World.host_calls``)."""
    return int(HcclResult.E_RUNTIME) if ret else 0


def _launch(
    host: HostApi, stream: int, op_info: Any, kernel_name: str, param: np.ndarray, notifies: list[int], timeout: int
) -> int:
    """``record n0 -> kernel(param) -> wait n1`` on ``stream`` (spec §8.1 H3)."""
    st = _host_state(host)
    if st.binary is None:
        # hicann/hccl examples/04_custom_ops_p2p op_host/load_kernel.cc, LoadBinaryFromFile: a path that
        # realpath() cannot resolve -> HCCL_E_INTERNAL (4); a failing aclrtBinaryLoadFromFile ->
        # HCCL_E_OPEN_FILE_FAILURE (10)
        if isinstance(op_info, (str, Path)) and not Path(op_info).exists():
            return int(HcclResult.E_INTERNAL)
        ret, st.binary = host.aclrt_binary_load_from_file(op_info)
        if ret:
            st.binary = None
            return int(HcclResult.E_OPEN_FILE_FAILURE)
    if _acl(host.aclrt_record_notify(notifies[0], stream)):
        return int(HcclResult.E_RUNTIME)
    ret, func = host.aclrt_binary_get_function(st.binary, kernel_name)
    if _acl(ret):
        return int(HcclResult.E_RUNTIME)
    ret, args = host.aclrt_kernel_args_init(func)
    if _acl(ret):
        return int(HcclResult.E_RUNTIME)
    ret, _ = host.aclrt_kernel_args_append(args, param)
    if _acl(ret) or _acl(host.aclrt_kernel_args_finalize(args)):
        return int(HcclResult.E_RUNTIME)
    ret = host.aclrt_launch_kernel_with_config(
        func, 1, stream, {ACL_RT_LAUNCH_KERNEL_ATTR_TIMEOUT: NOTIFY_DEFAULT_WAIT_TIME}, args, None, param.dtype
    )
    if _acl(ret):
        return int(HcclResult.E_RUNTIME)
    return _acl(host.aclrt_wait_and_reset_notify(notifies[1], stream, timeout))


def _notifies(host: HostApi, key: str) -> list[int]:
    st = _host_state(host)
    if key not in st.notifies:
        pair = []
        for _ in range(2):
            _, n = host.aclrt_create_notify(0)
            pair.append(n)
        st.notifies[key] = pair
    return st.notifies[key]


def p2p_op_param(
    host: HostApi,
    dtype: np.dtype,
    tag: str,
    comm: str,
    buf: int,
    count: int,
    data_type: int,
    op_type: int,
    comm_name_override: str | None = None,
) -> tuple[int, np.ndarray]:
    """The OpParam fields a P2P host wrapper fills before its resources (both sample flows): tag, the
    communicator's name, the send buffer as ``inputPtr`` or the receive buffer as ``outputPtr``,
    count, data type, op type. ``dtype``: the flow's OpParam layout. Returns (HcclResult, param)."""
    param = np.zeros((), dtype)
    param["tag"] = tag.encode()
    ret, name = host.hccl_get_comm_name(comm)
    if ret:
        return ret, param
    param["commName"] = (comm_name_override if comm_name_override is not None else name).encode()
    param["inputPtr" if op_type == HcclCMDType.SEND else "outputPtr"] = buf
    param["count"], param["dataType"], param["opType"] = count, data_type, op_type
    return 0, param


def _p2p(
    host: HostApi,
    buf: int,
    count: int,
    data_type: int,
    peer: int,
    comm: str,
    stream: int,
    op_type: int,
    op_info: Any,
    kernel_name: str,
    tag: str,
    timeout: int,
    comm_name_override: str | None,
) -> int:
    if not buf or comm is None or stream is None:
        return int(HcclResult.E_PTR)
    ret, param = p2p_op_param(host, OP_PARAM, tag, comm, buf, count, data_type, op_type, comm_name_override)
    if ret:
        return ret
    engine = int(CommEngine.AICPU)
    ret, ctx, _ = host.hccl_engine_ctx_get(comm, tag, engine)
    if ret:
        ret, ctx = host.hccl_engine_ctx_create(comm, tag, engine, ALG_RESOURCE_CTX.itemsize)
        if ret:
            return ret
        res = np.zeros((), ALG_RESOURCE_CTX)
        notifies = _notifies(host, tag)
        res["notifyIds"] = [host.aclrt_get_notify_id(n)[1] for n in notifies]
        ret, threads = host.hccl_thread_acquire(comm, engine, 1, 0)
        if ret:
            return ret
        res["threadHandle"] = threads[0]
        ret, channel = host.hccl_channel_acquire(comm, engine, peer, int(CommProtocol.HCCS), 2)
        if ret:
            return ret
        res["channelHandle"] = channel
        _, res["localBuffer"]["addr"], res["localBuffer"]["size"] = host.hccl_get_hccl_buffer(comm)
        _, res["remoteBuffer"]["addr"], res["remoteBuffer"]["size"] = host.hccl_channel_get_hccl_buffer(comm, channel)
        host.aclrt_memcpy_h2d(ctx, res)
    param["resCtx"] = ctx
    return _launch(host, stream, op_info, kernel_name, param, _notifies(host, tag), timeout)


def hccl_send_custom(
    host: HostApi,
    send_buf: int,
    count: int,
    data_type: int,
    dest_rank: int,
    comm: str,
    stream: int,
    *,
    op_info: Any = P2P_OP_INFO,
    kernel_name: str = P2P_KERNEL,
    tag: str = TAG,
    timeout: int = CUSTOM_TIMEOUT,
    comm_name_override: str | None = None,
) -> int:
    """``HcclSendCustom`` (host library of the sample). Returns an HcclResult: 15 if an ACL call failed,
    10 if the op-info JSON could not be loaded, 4 if its path does not exist, the HCCL call's code
    otherwise."""
    return _p2p(host, send_buf, count, data_type, dest_rank, comm, stream, int(HcclCMDType.SEND), op_info,
                kernel_name, tag, timeout, comm_name_override)  # fmt: skip


def hccl_recv_custom(
    host: HostApi,
    recv_buf: int,
    count: int,
    data_type: int,
    src_rank: int,
    comm: str,
    stream: int,
    *,
    op_info: Any = P2P_OP_INFO,
    kernel_name: str = P2P_KERNEL,
    tag: str = TAG,
    timeout: int = CUSTOM_TIMEOUT,
    comm_name_override: str | None = None,
) -> int:
    """``HcclRecvCustom``."""
    return _p2p(host, recv_buf, count, data_type, src_rank, comm, stream, int(HcclCMDType.RECEIVE), op_info,
                kernel_name, tag, timeout, comm_name_override)  # fmt: skip


def _fail_unless(ret: int) -> None:
    if ret:
        raise KernelError(ret)


class KernelError(Exception):
    """A kernel's Hcomm call failed (the kernel returns 1, as the samples' ``CHK_RET`` paths do)."""


def exec_p2p(dev: DeviceApi, param: np.ndarray, thread: int, channel: int, local: int, remote: int) -> None:
    """The samples' ``ExecOp`` (both flows): a send stages ``inputPtr`` into this rank's HCCL buffer
    ``local``, records ACK and waits for DATA; a receive waits for ACK, reads the peer's HCCL buffer
    ``remote`` into ``outputPtr`` and records DATA. Raises :class:`KernelError` on a failed call."""
    nbytes = int(param["count"]) * SIZE_TABLE[int(param["dataType"])]
    if int(param["opType"]) == HcclCMDType.SEND:
        _fail_unless(dev.hcomm_local_copy_on_thread(thread, local, int(param["inputPtr"]), nbytes))
        _fail_unless(dev.hcomm_channel_notify_record_on_thread(thread, channel, NOTIFY_IDX_ACK))
        _fail_unless(dev.hcomm_channel_notify_wait_on_thread(thread, channel, NOTIFY_IDX_DATA_SIGNAL, CUSTOM_TIMEOUT))
    elif int(param["opType"]) == HcclCMDType.RECEIVE:
        _fail_unless(dev.hcomm_channel_notify_wait_on_thread(thread, channel, NOTIFY_IDX_ACK, CUSTOM_TIMEOUT))
        _fail_unless(dev.hcomm_read_on_thread(thread, channel, int(param["outputPtr"]), remote, nbytes))
        _fail_unless(dev.hcomm_channel_notify_record_on_thread(thread, channel, NOTIFY_IDX_DATA_SIGNAL))


@device_kernel(P2P_SO, P2P_KERNEL)
def p2p_kernel(dev: DeviceApi, param: np.ndarray) -> int:
    """The sample's AI CPU kernel: 0 on success, 1 on any failed Hcomm call."""
    ctx = dev.read_struct(int(param["resCtx"]), ALG_RESOURCE_CTX)
    name = param["commName"]
    try:
        _fail_unless(dev.hcomm_acquire_comm(name))
        _fail_unless(dev.hcomm_batch_mode_start(param["tag"].decode()))
        thread, channel = int(ctx["threadHandle"]), int(ctx["channelHandle"])
        _fail_unless(dev.hcomm_aclrt_notify_wait_on_thread(thread, int(ctx["notifyIds"][0]), CUSTOM_TIMEOUT))
        exec_p2p(dev, param, thread, channel, int(ctx["localBuffer"]["addr"]), int(ctx["remoteBuffer"]["addr"]))
        _fail_unless(dev.hcomm_aclrt_notify_record_on_thread(thread, int(ctx["notifyIds"][1])))
        _fail_unless(dev.hcomm_batch_mode_end(param["tag"].decode()))
        _fail_unless(dev.hcomm_release_comm(name))
    except KernelError:
        return 1
    return 0


# -- ring collectives ------------------------------------------------------------------------------

RING_PARAM = np.dtype(
    [("op", OP_PARAM), ("ctx", RING_RES_CTX), ("workPtr", np.uint64), ("timeout", np.uint32)], align=True
)


def hccl_ring_custom(
    host: HostApi,
    op_type: int,
    send_buf: int,
    recv_buf: int,
    work_buf: int,
    count: int,
    data_type: int,
    reduce_op: int,
    comm: str,
    stream: int,
    *,
    timeout: int = CUSTOM_TIMEOUT,
) -> int:
    """Host side of a ring collective. ``count`` elements per block (one block per rank): AllGather
    sends ``count`` and receives ``p*count``; ReduceScatter sends ``p*count`` and receives
    ``count``; AllReduce ``p*count`` both ways. ``work_buf`` holds ``p*count`` elements."""
    _, rank = host.hccl_get_rank_id(comm)
    _, size = host.hccl_get_rank_size(comm)
    engine = int(CommEngine.AICPU)
    param = np.zeros((), RING_PARAM)
    op = param["op"]
    op["tag"] = b"hccl_custom_ring"
    op["commName"] = host.hccl_get_comm_name(comm)[1].encode()
    op["inputPtr"], op["outputPtr"], op["count"] = send_buf, recv_buf, count
    op["dataType"], op["opType"] = data_type, op_type
    c = param["ctx"]
    notifies = _notifies(host, "ring")
    c["notifyIds"] = [host.aclrt_get_notify_id(n)[1] for n in notifies]
    ret, threads = host.hccl_thread_acquire(comm, engine, 1, 0)
    if ret:
        return ret
    c["threadHandle"] = threads[0]
    nxt, prv = (rank + 1) % size, (rank - 1) % size
    ret, c["nextChannel"] = host.hccl_channel_acquire(comm, engine, nxt, int(CommProtocol.HCCS), 2)
    if ret:
        return ret
    ret, c["prevChannel"] = host.hccl_channel_acquire(comm, engine, prv, int(CommProtocol.HCCS), 2)
    if ret:
        return ret
    _, c["localBuffer"]["addr"], c["localBuffer"]["size"] = host.hccl_get_hccl_buffer(comm)
    _, c["nextBuffer"]["addr"], c["nextBuffer"]["size"] = host.hccl_channel_get_hccl_buffer(comm, int(c["nextChannel"]))
    c["myRank"], c["rankSize"], c["reduceOp"] = rank, size, reduce_op
    param["workPtr"] = work_buf
    param["timeout"] = timeout
    return _launch(host, stream, RING_OP_INFO, RING_KERNEL, param, notifies, timeout)


@device_kernel(RING_SO, RING_KERNEL)
def ring_kernel(dev: DeviceApi, param: np.ndarray) -> int:
    """Ring AllGather / ReduceScatter / AllReduce on one device thread (spec §9.3)."""
    op, c = param["op"], param["ctx"]
    thread, nxt, prv = int(c["threadHandle"]), int(c["nextChannel"]), int(c["prevChannel"])
    p, r = int(c["rankSize"]), int(c["myRank"])
    dtype, count = int(op["dataType"]), int(op["count"])
    block = count * SIZE_TABLE[dtype]
    work, slot, peer_slot = int(param["workPtr"]), int(c["localBuffer"]["addr"]), int(c["nextBuffer"]["addr"])
    kind = int(op["opType"])
    T = int(param["timeout"])  # device waits use the host's timeout (seconds, 0 = forever)

    def exchange(send_block: int, recv_block: int, reduce: bool) -> None:
        _fail_unless(dev.hcomm_channel_notify_record_on_thread(thread, prv, NOTIFY_IDX_ACK))
        _fail_unless(dev.hcomm_channel_notify_wait_on_thread(thread, nxt, NOTIFY_IDX_ACK, T))
        _fail_unless(dev.hcomm_write_on_thread(thread, nxt, peer_slot, work + send_block * block, block))
        _fail_unless(dev.hcomm_channel_notify_record_on_thread(thread, nxt, NOTIFY_IDX_DATA_SIGNAL))
        _fail_unless(dev.hcomm_channel_notify_wait_on_thread(thread, prv, NOTIFY_IDX_DATA_SIGNAL, T))
        dst = work + recv_block * block
        if reduce:
            _fail_unless(dev.hcomm_local_reduce_on_thread(thread, dst, slot, count, dtype, int(c["reduceOp"])))
        else:
            _fail_unless(dev.hcomm_local_copy_on_thread(thread, dst, slot, block))

    try:
        _fail_unless(dev.hcomm_acquire_comm(op["commName"]))
        _fail_unless(dev.hcomm_batch_mode_start("ring"))
        _fail_unless(dev.hcomm_aclrt_notify_wait_on_thread(thread, int(c["notifyIds"][0]), T))
        src, out = int(op["inputPtr"]), int(op["outputPtr"])
        if kind == HcclCMDType.ALLGATHER:
            _fail_unless(dev.hcomm_local_copy_on_thread(thread, work + r * block, src, block))
        else:
            _fail_unless(dev.hcomm_local_copy_on_thread(thread, work, src, p * block))
        if kind in (HcclCMDType.REDUCE_SCATTER, HcclCMDType.ALLREDUCE):
            for s in range(p - 1):  # after p-1 steps rank r owns the reduced block r
                exchange((r - s - 1) % p, (r - s - 2) % p, True)
        if kind in (HcclCMDType.ALLGATHER, HcclCMDType.ALLREDUCE):
            for s in range(p - 1):
                exchange((r - s) % p, (r - s - 1) % p, False)
        if kind == HcclCMDType.REDUCE_SCATTER:
            _fail_unless(dev.hcomm_local_copy_on_thread(thread, out, work + r * block, block))
        else:
            _fail_unless(dev.hcomm_local_copy_on_thread(thread, out, work, p * block))
        _fail_unless(dev.hcomm_aclrt_notify_record_on_thread(thread, int(c["notifyIds"][1])))
        _fail_unless(dev.hcomm_batch_mode_end("ring"))
        _fail_unless(dev.hcomm_release_comm(op["commName"]))
    except KernelError:
        return 1
    return 0


__all__ = [
    "hccl_recv_custom",
    "hccl_ring_custom",
    "hccl_send_custom",
    "p2p_kernel",
    "ring_kernel",
]

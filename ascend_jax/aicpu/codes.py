"""Numeric codes and enumerations of the ACL runtime and HCCL / Hcomm (spec §2.4, §7)."""

from __future__ import annotations

import enum

import numpy as np


class AclError(enum.IntEnum):
    """``aclError`` values used by the model (spec §2.4; the ``RT_*`` values checked against
    hicann/runtime ``include/external/acl/error_codes/rt_error_codes.h``)."""

    SUCCESS = 0
    INVALID_PARAM = 100000
    INVALID_FILE = 100003
    KERNEL_NOT_FOUND = 100029
    BAD_ALLOC = 200000
    FAILURE = 500001
    RT_FAILURE = 500003
    RT_PARAM_INVALID = 107000
    RT_INVALID_DEVICEID = 107001
    RT_CONTEXT_NULL = 107002
    RT_STREAM_CONTEXT = 107003
    RT_FILE_OPEN = 107009
    RT_INVALID_HANDLE = 107017
    RT_WAIT_TIMEOUT = 107019
    RT_TASK_TIMEOUT = 107020
    RT_FEATURE_NOT_SUPPORT = 207000
    RT_NO_NOTIFY_RESOURCE = 207009
    RT_INTERNAL_ERROR = 507000
    RT_TS_ERROR = 507001
    RT_END_OF_SEQUENCE = 507005
    RT_AICPU_TIMEOUT = 507017
    RT_AICPU_EXCEPTION = 507018
    RT_STREAM_SYNC_TIMEOUT = 507046
    RT_FFTS_PLUS_TIMEOUT = 507048
    RT_AICPU_INTERNAL_ERROR = 507900
    RT_SYMBOL_NOT_FOUND = 507915


class HcclResult(enum.IntEnum):
    """``HcclResult``, every member (spec §7.3; hicann/hcomm ``include/hccl/hccl_types.h``). Which call
    returns ``E_PTR``, ``E_PARA``, ``E_NOT_FOUND`` or ``E_RUNTIME``, and the source of each: the table
    "Return codes of the host and device calls" in ``docs/model/comm.md``."""

    SUCCESS = 0
    E_PARA = 1
    E_PTR = 2
    E_MEMORY = 3
    E_INTERNAL = 4
    E_NOT_SUPPORT = 5
    E_NOT_FOUND = 6
    E_UNAVAIL = 7
    E_SYSCALL = 8
    E_TIMEOUT = 9
    E_OPEN_FILE_FAILURE = 10
    E_TCP_CONNECT = 11
    E_ROCE_CONNECT = 12
    E_TCP_TRANSFER = 13
    E_ROCE_TRANSFER = 14
    E_RUNTIME = 15
    E_DRV = 16
    E_PROFILING = 17
    E_CCE = 18
    E_NETWORK = 19
    E_AGAIN = 20
    E_REMOTE = 21
    E_SUSPENDING = 22
    E_OPRETRY_FAIL = 23
    E_OOM = 24
    E_IN_STATUS = 1041
    E_RESERVED = 1042


class HcclDataType(enum.IntEnum):
    """``HcclDataType`` / ``HcommDataType`` (spec §7.1)."""

    INT8 = 0
    INT16 = 1
    INT32 = 2
    FP16 = 3
    FP32 = 4
    INT64 = 5
    UINT64 = 6
    UINT8 = 7
    UINT16 = 8
    UINT32 = 9
    FP64 = 10
    BFP16 = 11
    INT128 = 12
    HIF8 = 14
    FP8E4M3 = 15
    FP8E5M2 = 16
    FP8E8M0 = 17


#: ``SIZE_TABLE[dataType]`` of the samples: element bytes (slot 13 = 2, entries >= 18 are 0).
SIZE_TABLE = [1, 2, 4, 2, 4, 8, 8, 1, 2, 4, 8, 2, 16, 2, 1, 1, 1, 1] + [0] * (255 - 18)

#: numpy element type of the data types the model can compute with.
NUMPY_DTYPE = {
    HcclDataType.INT8: np.dtype(np.int8),
    HcclDataType.INT16: np.dtype(np.int16),
    HcclDataType.INT32: np.dtype(np.int32),
    HcclDataType.FP16: np.dtype(np.float16),
    HcclDataType.FP32: np.dtype(np.float32),
    HcclDataType.UINT8: np.dtype(np.uint8),
}


def numpy_dtype(dt: int) -> np.dtype:
    """numpy element type of an HcclDataType (bfloat16 from ml_dtypes, a JAX dependency)."""
    if dt == HcclDataType.BFP16:
        from ascend_jax.gm import bfloat16

        return bfloat16()
    return NUMPY_DTYPE[HcclDataType(dt)]


class HcclCMDType(enum.IntEnum):
    """``HcclCMDType`` (spec §7.2), the values used here."""

    INVALID = 0
    BROADCAST = 1
    ALLREDUCE = 2
    REDUCE = 3
    SEND = 4
    RECEIVE = 5
    ALLGATHER = 6
    REDUCE_SCATTER = 7


class HcclReduceOp(enum.IntEnum):
    SUM = 0
    PROD = 1
    MAX = 2
    MIN = 3


class CommEngine(enum.IntEnum):
    CPU = 0
    CPU_TS = 1
    AICPU = 2
    AICPU_TS = 3
    AIV = 4
    CCU = 5


class CommProtocol(enum.IntEnum):
    """``CommProtocol`` of hicann/hcomm's public ``hccl_res`` headers (``UBC_CTP`` and ``UBG`` are old
    names of ``UB_CTP`` and ``UB_RTP``)."""

    HCCS = 0
    ROCE = 1
    PCIE = 2
    SIO = 3
    UB_CTP = 4
    UBC_TP = 5
    UB_MEM = 6
    UBOE = 7
    HCCS_ONLY = 8
    UB_RTP = 9


#: ``HcclChannelDesc.notifyNum`` limit of the Atlas A2 channel manager (hicann/hcomm
#: ``channel_manager.cc``, ``NOTIFY_NUM_MAX``).
CHANNEL_NOTIFY_NUM_MAX = 64
#: Protocols ``ChannelManager::CheckChannelParam`` accepts on Atlas A2: for the AIV engine, and for
#: the others.
CHANNEL_PROTOCOLS_AIV = frozenset({CommProtocol.HCCS, CommProtocol.HCCS_ONLY, CommProtocol.SIO})
CHANNEL_PROTOCOLS = CHANNEL_PROTOCOLS_AIV | {CommProtocol.ROCE}
#: Engines ``ChannelManager::CheckChannelParam`` accepts (every one but ``CCU``).
CHANNEL_ENGINES = frozenset({CommEngine.CPU, CommEngine.CPU_TS, CommEngine.AICPU, CommEngine.AICPU_TS, CommEngine.AIV})


#: Atlas A2/A3 hardware reduce support (spec §5.2): dtype x op; anything else is HCCL_E_PARA.
REDUCE_DTYPES = frozenset(
    {
        HcclDataType.FP32,
        HcclDataType.FP16,
        HcclDataType.INT8,
        HcclDataType.INT16,
        HcclDataType.INT32,
        HcclDataType.BFP16,
    }
)
REDUCE_OPS = frozenset({HcclReduceOp.SUM, HcclReduceOp.MAX, HcclReduceOp.MIN})

#: ``ACL_NOTIFY_DEFAULT`` / ``ACL_NOTIFY_DEVICE_USE_ONLY``.
ACL_NOTIFY_DEFAULT, ACL_NOTIFY_DEVICE_USE_ONLY = 0x0, 0x1
#: ``ACL_RT_LAUNCH_KERNEL_ATTR_TIMEOUT`` (seconds, uint16) and ``..._TIMEOUT_US``.
ACL_RT_LAUNCH_KERNEL_ATTR_TIMEOUT, ACL_RT_LAUNCH_KERNEL_ATTR_TIMEOUT_US = 7, 8
#: ``NOTIFY_DEFAULT_WAIT_TIME`` of the samples, seconds (hicann/hccl ``examples/04_custom_ops_p2p``
#: ``op_host/launch_kernel.cc`` ``LaunchKernelWithAclrt``: the launch's timeout attribute).
NOTIFY_DEFAULT_WAIT_TIME = 27 * 68
#: Channel notify indices used by HCCL (spec §6.3).
NOTIFY_IDX_ACK, NOTIFY_IDX_DATA_SIGNAL, NOTIFY_IDX_FIN_ACK = 0, 1, 2

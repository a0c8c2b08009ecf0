"""C layouts of the sample's structures (spec §4.1, LP64 / aarch64, natural alignment).

``COMM_BUFFER`` (16 B), ``ALG_RESOURCE_CTX`` (56 B, documented version) and ``OP_PARAM`` (328 B) are
numpy structured dtypes whose field offsets equal the C offsets, so an OpParam built on the host is
the exact byte blob ``aclrtKernelArgsAppend`` copies.
"""

from __future__ import annotations

import numpy as np

TAG_LENGTH = 32 + 128
COMM_INDENTIFIER_MAX_LENGTH = 128
AICPU_CONTROL_NOTIFY_NUM = 2

COMM_BUFFER = np.dtype([("addr", np.uint64), ("size", np.uint64)], align=True)

ALG_RESOURCE_CTX = np.dtype(
    [
        ("threadHandle", np.uint64),
        ("localBuffer", COMM_BUFFER),
        ("remoteBuffer", COMM_BUFFER),
        ("channelHandle", np.uint64),
        ("notifyIds", np.uint32, (AICPU_CONTROL_NOTIFY_NUM,)),
    ],
    align=True,
)

OP_PARAM = np.dtype(
    [
        ("tag", "S160"),
        ("commName", "S128"),
        ("inputPtr", np.uint64),
        ("outputPtr", np.uint64),
        ("count", np.uint64),
        ("dataType", np.int32),
        ("opType", np.int32),
        ("resCtx", np.uint64),
    ],
    align=True,
)

#: Collective extension (spec §9.3: reduceOp and rank info as in HCCL-AG), appended after OpParam.
RING_RES_CTX = np.dtype(
    [
        ("threadHandle", np.uint64),
        ("localBuffer", COMM_BUFFER),
        ("nextChannel", np.uint64),
        ("prevChannel", np.uint64),
        ("nextBuffer", COMM_BUFFER),
        ("notifyIds", np.uint32, (AICPU_CONTROL_NOTIFY_NUM,)),
        ("myRank", np.uint32),
        ("rankSize", np.uint32),
        ("reduceOp", np.int32),
    ],
    align=True,
)


#: The current hccl P2P example's resource context (hicann/hccl ``examples/04_custom_ops_p2p/inc/common.h``,
#: ``AlgResourceCtx``): the AI CPU thread, the host stream's thread as the AI CPU sees it, both HCCL
#: buffers and the channel; 56 B.
THREAD_ALG_RESOURCE_CTX = np.dtype(
    [
        ("aicpuThread", np.uint64),
        ("cpuThreadOnAicpu", np.uint64),
        ("localBuffer", COMM_BUFFER),
        ("remoteBuffer", COMM_BUFFER),
        ("channelHandle", np.uint64),
    ],
    align=True,
)

#: Its ``OpParam`` (same file): adds the device type and the two thread handles of the host side; 344 B.
THREAD_OP_PARAM = np.dtype(
    [
        ("tag", "S160"),
        ("commName", "S128"),
        ("inputPtr", np.uint64),
        ("outputPtr", np.uint64),
        ("count", np.uint64),
        ("devType", np.int32),
        ("dataType", np.int32),
        ("opType", np.int32),
        ("cpuThread", np.uint64),
        ("aicpuThreadOnCpu", np.uint64),
        ("resCtx", np.uint64),
    ],
    align=True,
)


def to_bytes(value: np.ndarray) -> bytes:
    return np.ascontiguousarray(value).tobytes()


def from_bytes(data: bytes, dtype: np.dtype) -> np.ndarray:
    return np.frombuffer(bytes(data), dtype=dtype, count=1)[0]

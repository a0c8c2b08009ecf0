"""AI CPU communication operators (HCCL custom ops on the AI CPU engine, spec ``aicpu_comm_op.md``).

The pieces, one role per module:

* :mod:`~ascend_jax.aicpu.tasks` the task format (task kinds, queues, kernel launches, cost model,
  :class:`TaskProgram`); :mod:`~ascend_jax.aicpu.world` ranks, memory, communicators, notifies;
* :mod:`~ascend_jax.aicpu.host` the host's ACL runtime and HCCL control plane (:class:`HostApi`);
* :mod:`~ascend_jax.aicpu.device` the Hcomm device API (:class:`DeviceApi`) and the device model
  that runs a kernel when its stream reaches the kernel task;
* :mod:`~ascend_jax.aicpu.engine` (JAX, lanes an array axis) and :mod:`~ascend_jax.aicpu.reference`
  (plain Python) run programs; :mod:`~ascend_jax.aicpu.result` is what both return;
* :mod:`~ascend_jax.aicpu.collectives` the seed's P2P operator and ring collectives;
  :mod:`~ascend_jax.aicpu.models` whole jobs built from them (:func:`p2p_job`, :func:`ring_job`)
  with their float64 numpy answers.

Writing a custom operator: register a device kernel in a (simulated) ``.so``, list it in an op-info
library, and launch it from each rank's host between two notifies::

    import numpy as np
    from ascend_jax.aicpu import World, device_kernel, run_comm, OP_PARAM, HcclDataType

    @device_kernel("libmy_kernels.so", "MyCopyKernel")
    def my_copy(dev, param):                 # runs when the stream reaches the kernel task
        thread = int(param["resCtx"])        # here: the thread handle, passed by value
        if dev.hcomm_batch_mode_start("copy"):
            return 1
        dev.hcomm_local_copy_on_thread(thread, int(param["outputPtr"]), int(param["inputPtr"]),
                                       int(param["count"]) * 4)
        dev.hcomm_batch_mode_end("copy")     # submits the thread's tasks at this simulated time
        return 0

    world = World(ranks=1)
    world.init_comm("comm0")
    host = world.host(0)
    _, stream = host.aclrt_create_stream()
    _, src = host.aclrt_malloc(64)
    _, dst = host.aclrt_malloc(64)
    host.aclrt_memcpy_h2d(src, np.arange(16, dtype=np.float32))
    _, (thread,) = host.hccl_thread_acquire("comm0", 2, 1, 0)
    lib = {"MyCopyKernel": {"opInfo": {"opKernelLib": "AICPUKernel", "kernelSo": "libmy_kernels.so",
                                       "functionName": "MyCopyKernel"}}}
    _, binary = host.aclrt_binary_load_from_file(lib)
    _, func = host.aclrt_binary_get_function(binary, "MyCopyKernel")
    _, args = host.aclrt_kernel_args_init(func)
    param = np.zeros((), OP_PARAM)
    param["inputPtr"], param["outputPtr"], param["count"], param["resCtx"] = src, dst, 16, thread
    host.aclrt_kernel_args_append(args, param)
    host.aclrt_kernel_args_finalize(args)
    host.aclrt_launch_kernel_with_config(func, 1, stream, {7: 1836}, args, None, OP_PARAM)
    world.mark_output("dst", 0, dst, int(HcclDataType.FP32), 16)
    result = run_comm(world.program())       # or run_comm_reference(...); same result
    assert result.status.label == "ok" and result.output("dst")[3] == 3.0

A real operator also orders the device thread after the stream (a notify recorded on the stream
before the launch and waited on the thread first) and the stream after the thread (the reverse
after the work), as :func:`hccl_send_custom` / :func:`p2p_kernel` do.
"""

from typing import TYPE_CHECKING, Any

from ascend_jax.aicpu.codes import (
    AclError,
    CommEngine,
    CommProtocol,
    HcclCMDType,
    HcclDataType,
    HcclReduceOp,
    HcclResult,
)
from ascend_jax.aicpu.collectives import (
    hccl_recv_custom,
    hccl_ring_custom,
    hccl_send_custom,
    p2p_kernel,
    ring_kernel,
)
from ascend_jax.aicpu.device import DeviceApi, DeviceModel, LaunchContext
from ascend_jax.aicpu.host import HostApi
from ascend_jax.aicpu.models import comm_numerics, p2p_expected, p2p_job, p2p_thread_job, ring_expected, ring_job
from ascend_jax.aicpu.opinfo import OpInfo, device_kernel, load_op_info
from ascend_jax.aicpu.reduce import reduce_bytes, reduce_elements
from ascend_jax.aicpu.reference import CommReference, run_comm_reference
from ascend_jax.aicpu.result import CommResult, CommStatus, QueueStatus
from ascend_jax.aicpu.structs import ALG_RESOURCE_CTX, COMM_BUFFER, OP_PARAM
from ascend_jax.aicpu.tasks import (
    MEM_BASE,
    MEMORY_FAULT_ERROR,
    CommCost,
    KernelLaunch,
    Queue,
    Task,
    TaskKind,
    TaskProgram,
)
from ascend_jax.aicpu.world import World, run_hosts

if TYPE_CHECKING:
    from ascend_jax.aicpu.engine import run_comm, run_comm_batch


def __getattr__(name: str) -> Any:
    """``run_comm`` / ``run_comm_batch`` (the JAX engine) are imported on first use, so that the
    reference path (:func:`run_comm_reference`) never imports JAX."""
    if name in ("run_comm", "run_comm_batch"):
        from ascend_jax.aicpu import engine

        value = getattr(engine, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: the comm simulator's public names, sorted (constants, classes, functions)
__all__ = [
    "ALG_RESOURCE_CTX",
    "COMM_BUFFER",
    "MEMORY_FAULT_ERROR",
    "MEM_BASE",
    "OP_PARAM",
    "AclError",
    "CommCost",
    "CommEngine",
    "CommProtocol",
    "CommReference",
    "CommResult",
    "CommStatus",
    "DeviceApi",
    "DeviceModel",
    "HcclCMDType",
    "HcclDataType",
    "HcclReduceOp",
    "HcclResult",
    "HostApi",
    "KernelLaunch",
    "LaunchContext",
    "OpInfo",
    "Queue",
    "QueueStatus",
    "Task",
    "TaskKind",
    "TaskProgram",
    "World",
    "comm_numerics",
    "device_kernel",
    "hccl_recv_custom",
    "hccl_ring_custom",
    "hccl_send_custom",
    "load_op_info",
    "p2p_expected",
    "p2p_job",
    "p2p_kernel",
    "p2p_thread_job",
    "reduce_bytes",
    "reduce_elements",
    "ring_expected",
    "ring_job",
    "ring_kernel",
    "run_comm",
    "run_comm_batch",
    "run_comm_reference",
    "run_hosts",
]

"""The current hccl P2P example (hicann/hccl examples/04_custom_ops_p2p: op_host/send.cc HcclSendCustom,
op_host/launch_kernel.cc LaunchKernelWithAclrt, op_kernel_aicpu/aicpu_kernel.cc HcclLaunchP2PAicpuKernel):
thread notifies between the host stream and the AI CPU thread, in both engines."""

from __future__ import annotations

import numpy as np
from _comm import run_both

from ascend_jax.aicpu import CommStatus, HcclDataType, HcclResult, TaskKind, World
from ascend_jax.aicpu.codes import CommEngine
from ascend_jax.aicpu.models import p2p_expected, p2p_thread_job
from ascend_jax.aicpu.p2p_thread import CUSTOM_TIMEOUT, LAUNCH_TIMEOUT, hccl_send_thread


def test_send_recv_moves_the_data_and_both_engines_agree():
    p = p2p_thread_job(64, seed=3)
    r = run_both(p)
    assert r.status == CommStatus.OK and r.rank_errors() == [0, 0]
    np.testing.assert_array_equal(r.output("rank1.recvBuf"), p2p_expected(p)["rank1.recvBuf"].astype(np.float32))
    assert all(ret == 0 for ret in p.world.host_returns.values())


def test_stream_order_is_record_kernel_wait_on_thread_notifies():
    # launch_kernel.cc: HcommThreadNotifyRecordOnThread(cpuThread, aicpuThreadOnCpu, 0), the launch with
    # timeout 27 * 68, HcommThreadNotifyWaitOnThread(cpuThread, 0, CUSTOM_TIMEOUT)
    p = p2p_thread_job(16)
    stream = next(q for q in p.queues if q.name == "rank0.stream0")
    kinds = [t.kind for t in stream.tasks]
    assert kinds == [TaskKind.RECORD, TaskKind.KERNEL, TaskKind.WAIT]
    thread = next(q for q in p.queues if q.name == "rank0.thread0")
    assert stream.tasks[0].notify == thread.notifies[0]  # the AI CPU thread's notify 0
    assert stream.tasks[2].notify == stream.notifies[0] and stream.tasks[2].timeout == CUSTOM_TIMEOUT
    assert p.launches[0].timeout_s == LAUNCH_TIMEOUT == 27 * 68 and CUSTOM_TIMEOUT == 1836  # inc/common.h


def test_the_kernel_waits_on_its_notify_then_records_the_host_threads():
    r = run_both(p2p_thread_job(16))
    calls = [c for _, rank, _, c, ret in r.device_calls if rank == 0]
    assert calls[2] == "hcomm_thread_notify_wait_on_thread" and "hcomm_thread_notify_record_on_thread" in calls


def test_a_second_call_with_the_same_tag_passes_an_unset_thread_handle():
    # send.cc fills param.cpuThread / aicpuThreadOnCpu only when HcclEngineCtxGet fails (a new context)
    w = World(2)
    w.init_comm("c")
    h = w.host(0)
    _, s = h.aclrt_create_stream()
    _, buf = h.aclrt_malloc(64)
    assert hccl_send_thread(h, buf, 16, int(HcclDataType.FP32), 1, "c", s) == 0
    assert hccl_send_thread(h, buf, 16, int(HcclDataType.FP32), 1, "c", s) == int(HcclResult.E_PTR)


def test_thread_api_argument_checks():
    # hicann/hcomm src/coll_communicator_mgr/api_c_adpt/resource/thread_c_adpt.cc (HcclThreadAcquireWithStream,
    # HcclThreadExportToCommEngine) and src/base_comm/primitives/api_c_adpt/hcomm_thread_c_adpt.cc
    # (HcommThreadAllocWithStream: CPU / CPU_TS only; HcommThreadExportToCommEngine: an unknown thread is
    # HCCL_E_NOT_FOUND)
    w = World(1)
    w.init_comm("c")
    h = w.host(0)
    _, s = h.aclrt_create_stream()
    # HcommThreadAllocWithStream: a new stream thread only for CPU / CPU_TS
    assert h.hccl_thread_acquire_with_stream("c", int(CommEngine.AICPU_TS), s, 1)[0] == int(HcclResult.E_PARA)
    assert h.hccl_thread_acquire_with_stream("c", 9, s, 1)[0] == int(HcclResult.E_PARA)  # IsValidCommEngine
    assert h.hccl_thread_acquire_with_stream("nope", int(CommEngine.CPU_TS), s, 1)[0] == int(HcclResult.E_PTR)
    assert h.hccl_thread_acquire_with_stream("c", int(CommEngine.CPU_TS), 12345, 1)[0] == int(HcclResult.E_PTR)
    ret, t = h.hccl_thread_acquire_with_stream("c", int(CommEngine.CPU_TS), s, 1)
    assert ret == 0
    assert h.hccl_thread_export_to_comm_engine("c", 1, [999], int(CommEngine.AICPU_TS))[0] == int(
        HcclResult.E_NOT_FOUND
    )
    ret, (exported,) = h.hccl_thread_export_to_comm_engine("c", 1, [t], int(CommEngine.AICPU_TS))
    assert ret == 0 and w.threads[exported] == w.threads[t]
    # the host may not use the AI CPU view of its own stream, nor a notify index it does not have
    # (cpu_primitives_c_adpt.cc HcommThreadNotifyWaitOnThread: GetNotify gives NULL -> HCCL_E_PTR)
    assert h.hcomm_thread_notify_wait_on_thread(exported, 0, 1) == int(HcclResult.E_PTR)
    assert h.hcomm_thread_notify_wait_on_thread(t, 1, 1) == int(HcclResult.E_PTR)
    assert h.hcomm_thread_notify_wait_on_thread(t, 0, 1) == 0

"""Return codes of the comm simulator's host and device calls, each pinned to the public source that
decides it (hicann/hcomm, hicann/hccl examples/04_custom_ops_p2p, hicann/runtime). Where no public
source decides a code, the test says so and pins the modelled value."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _comm import run_both

from ascend_jax.aicpu import HcclDataType, HcclResult, World
from ascend_jax.aicpu.codes import AclError, CommEngine, CommProtocol
from ascend_jax.aicpu.opinfo import OpInfo, device_kernel, load_op_info, parse_op_info
from ascend_jax.aicpu.p2p_thread import hccl_send_thread

AICPU = int(CommEngine.AICPU)


def _host(ranks: int = 1):
    w = World(ranks)
    w.init_comm("c")
    return w, w.host(0)


# -- HCCL_E_PTR ---------------------------------------------------------------------------------------
def test_a_null_communicator_is_e_ptr_in_every_hccl_call():
    # CHK_PTR_NULL(comm): hicann/hcomm op_base.cc HcclGetCommName, coll_comm_rank_graph_a_adpt.cc
    # HcclGetRankId / HcclGetRankSize, api_c_adpt/resource/*.cc (engine ctx, threads, buffers, channels)
    _, h = _host()
    _, s = h.aclrt_create_stream()
    ptr = int(HcclResult.E_PTR)
    assert h.hccl_get_comm_name(None)[0] == ptr
    assert h.hccl_get_rank_id(None)[0] == ptr
    assert h.hccl_get_rank_size(None)[0] == ptr
    assert h.hccl_engine_ctx_get(None, "t", AICPU)[0] == ptr
    assert h.hccl_engine_ctx_create(None, "t", AICPU, 64)[0] == ptr
    assert h.hccl_thread_acquire(None, AICPU, 1, 1)[0] == ptr
    assert h.hccl_thread_acquire_with_stream(None, int(CommEngine.CPU_TS), s, 1)[0] == ptr
    assert h.hccl_thread_export_to_comm_engine(None, 1, [1], AICPU)[0] == ptr
    assert h.hccl_get_hccl_buffer(None)[0] == ptr
    assert h.hccl_channel_get_hccl_buffer(None, 1)[0] == ptr


def test_the_samples_wrapper_checks_its_pointers_first():
    # hicann/hccl examples/04_custom_ops_p2p op_host/send.cc HcclSendCustom: CHK_PTR_NULL(sendBuf, comm,
    # stream) before anything else
    w, h = _host(2)
    _, s = h.aclrt_create_stream()
    assert hccl_send_thread(h, 0, 4, int(HcclDataType.FP32), 1, "c", s) == int(HcclResult.E_PTR)
    assert w.host_calls == [(0, "aclrt_create_stream", 0)]  # no HCCL call was made


# -- engine contexts ----------------------------------------------------------------------------------
def test_engine_ctx_codes_follow_the_a2_context_manager():
    # hicann/hcomm engine_ctx_c_adpt.cc HcclEngineCtxGet / HcclEngineCtxCreate and, on Atlas A2,
    # independent_op_context_manager.cc ContextManager::GetCommEngineCtx / CreateCommEngineCtx
    _, h = _host()
    para = int(HcclResult.E_PARA)
    assert h.hccl_engine_ctx_get("c", "t", AICPU)[0] == para  # not created yet: E_PARA (950: E_NOT_FOUND)
    assert h.hccl_engine_ctx_create("c", "t", AICPU, 0)[0] == para  # size 0
    assert h.hccl_engine_ctx_create("c", "x" * 256, AICPU, 8)[0] == para  # over HCCL_RES_TAG_MAX_LEN
    assert h.hccl_engine_ctx_create("c", "t", 9, 8)[0] == para  # no such engine
    ret, addr = h.hccl_engine_ctx_create("c", "t", AICPU, 8)
    assert ret == 0 and h.hccl_engine_ctx_get("c", "t", AICPU)[1:] == (addr, 8)
    assert h.hccl_engine_ctx_create("c", "t", AICPU, 8)[0] == para  # same (tag, engine) twice
    # a NULL tag is the reserved tag "" (ctxTag == nullptr ? COMM_RESERVE_CTX_TAG : ctxTag)
    ret, addr = h.hccl_engine_ctx_create("c", None, AICPU, 8)
    assert ret == 0 and h.hccl_engine_ctx_get("c", "", AICPU)[1] == addr


# -- threads ------------------------------------------------------------------------------------------
def test_thread_acquire_checks_engine_count_and_notifies():
    # thread_c_adpt.cc HcclThreadAcquire: IsValidCommEngine, threadNum == 0,
    # notifyNumPerThread >= HCCL_THREAD_NOTIFY_MAX_NUM (65536, threads/thread.h)
    _, h = _host()
    para = int(HcclResult.E_PARA)
    assert h.hccl_thread_acquire("c", 6, 1, 1)[0] == para
    assert h.hccl_thread_acquire("c", AICPU, 0, 1)[0] == para
    assert h.hccl_thread_acquire("c", AICPU, 1, 65536)[0] == para
    assert h.hccl_thread_acquire("c", AICPU, 1, 65535)[0] == 0


def test_a_stream_made_a_thread_twice_is_the_same_thread_topped_up():
    # thread_manager.cc ThreadMgr::HcclThreadAcquireWithStream: mainThread_ per stream; a second call
    # returns it and supplements only the missing notifies, whatever the engine;
    # hcomm_thread_c_adpt.cc HcommThreadAllocWithStream: a new one only for CPU / CPU_TS
    w, h = _host()
    _, s = h.aclrt_create_stream()
    ret, t = h.hccl_thread_acquire_with_stream("c", int(CommEngine.CPU_TS), s, 1)
    assert ret == 0 and len(w.queues[w.threads[t]].notifies) == 1
    assert h.hccl_thread_acquire_with_stream("c", int(CommEngine.CPU_TS), s, 3) == (0, t)
    assert len(w.queues[w.threads[t]].notifies) == 3
    assert h.hccl_thread_acquire_with_stream("c", int(CommEngine.AICPU_TS), s, 2) == (0, t)  # found first
    assert len(w.queues[w.threads[t]].notifies) == 3
    _, s2 = h.aclrt_create_stream()
    assert h.hccl_thread_acquire_with_stream("c", int(CommEngine.CPU), s2, 1)[0] == 0
    _, s3 = h.aclrt_create_stream()
    assert h.hccl_thread_acquire_with_stream("c", int(CommEngine.CCU), s3, 1)[0] == int(HcclResult.E_PARA)
    # another communicator has its own ThreadMgr: a thread of its own for the same stream
    w.init_comm("d")
    ret, t2 = h.hccl_thread_acquire_with_stream("d", int(CommEngine.CPU_TS), s, 1)
    assert ret == 0 and t2 != t and w.threads[t2] == w.threads[t]


def test_export_codes_and_handles():
    # thread_c_adpt.cc HcclThreadExportToCommEngine (threadNum 0 or > MAX_EXPORT_THREAD_NUM = 40,
    # IsValidCommEngine); hcomm_thread_c_adpt.cc HcommThreadExportToCommEngine (AIV: E_PARA; towards
    # the host LookupD2HHandle, towards the AI CPU LookupThreadByHandle + FindThreadByCommEngine; a
    # handle not found: HCCL_E_NOT_FOUND; the maps are process-wide, not per communicator)
    w, h = _host()
    para, missing = int(HcclResult.E_PARA), int(HcclResult.E_NOT_FOUND)
    _, s = h.aclrt_create_stream()
    _, cpu = h.hccl_thread_acquire_with_stream("c", int(CommEngine.CPU_TS), s, 1)
    _, (aicpu,) = h.hccl_thread_acquire("c", int(CommEngine.AICPU_TS), 1, 1)
    ts = int(CommEngine.AICPU_TS)
    assert h.hccl_thread_export_to_comm_engine("c", 0, [], ts)[0] == para
    assert h.hccl_thread_export_to_comm_engine("c", 41, [cpu] * 41, ts)[0] == para
    assert h.hccl_thread_export_to_comm_engine("c", 1, [cpu], int(CommEngine.AIV))[0] == para
    assert h.hccl_thread_export_to_comm_engine("c", 1, [cpu], 17)[0] == para
    assert h.hccl_thread_export_to_comm_engine("c", 1, [0], ts)[0] == missing  # no such thread
    assert h.hccl_thread_export_to_comm_engine("c", 1, [cpu], int(CommEngine.CPU_TS))[0] == missing  # host -> host
    assert h.hccl_thread_export_to_comm_engine("c", 1, [aicpu], ts) == (0, [aicpu])  # its own AI CPU handle
    ret, (on_aicpu,) = h.hccl_thread_export_to_comm_engine("c", 1, [cpu], ts)
    assert ret == 0 and w.threads[on_aicpu] == w.threads[cpu]
    assert h.hccl_thread_export_to_comm_engine("c", 1, [cpu], ts) == (0, [on_aicpu])  # FindThreadByCommEngine
    ret, (on_cpu,) = h.hccl_thread_export_to_comm_engine("c", 1, [aicpu], int(CommEngine.CPU_TS))
    assert ret == 0 and w.threads[on_cpu] == w.threads[aicpu]
    w.init_comm("d")  # process-wide maps: another communicator finds c's threads too
    assert h.hccl_thread_export_to_comm_engine("d", 1, [cpu], ts) == (0, [on_aicpu])


def test_thread_notify_codes_on_host_and_device():
    # hicann/hcomm cpu_primitives_c_adpt.cc (host) and aicpu_ts_primitives_c_adpt.cc (device)
    # HcommThreadNotifyRecordOnThread / WaitOnThread: NULL thread, NULL dstThread and an index outside
    # [0, notifyNum) (GetNotify gives NULL) are all CHK_PTR_NULL -> HCCL_E_PTR
    from ascend_jax.aicpu.device import DeviceModel

    w, h = _host()
    ptr = int(HcclResult.E_PTR)
    _, s = h.aclrt_create_stream()
    _, cpu = h.hccl_thread_acquire_with_stream("c", int(CommEngine.CPU_TS), s, 1)
    _, (aicpu,) = h.hccl_thread_acquire("c", int(CommEngine.AICPU_TS), 1, 2)
    _, (aicpu_on_cpu,) = h.hccl_thread_export_to_comm_engine("c", 1, [aicpu], int(CommEngine.CPU_TS))
    _, (cpu_on_aicpu,) = h.hccl_thread_export_to_comm_engine("c", 1, [cpu], int(CommEngine.AICPU_TS))
    assert h.hcomm_thread_notify_record_on_thread(0, aicpu_on_cpu, 0) == ptr
    assert h.hcomm_thread_notify_record_on_thread(cpu, 0, 0) == ptr
    assert h.hcomm_thread_notify_record_on_thread(cpu, aicpu_on_cpu, 2) == ptr
    assert h.hcomm_thread_notify_record_on_thread(cpu, aicpu_on_cpu, 1) == 0
    assert h.hcomm_thread_notify_wait_on_thread(cpu, 1, 0) == ptr
    dev = DeviceModel(w.program()).device_api(0)
    assert dev.hcomm_thread_notify_record_on_thread(0, cpu_on_aicpu, 0) == ptr
    assert dev.hcomm_thread_notify_record_on_thread(aicpu, 0, 0) == ptr
    assert dev.hcomm_thread_notify_record_on_thread(aicpu, cpu_on_aicpu, 1) == ptr
    assert dev.hcomm_thread_notify_record_on_thread(aicpu, cpu_on_aicpu, 0) == 0
    assert dev.hcomm_thread_notify_wait_on_thread(aicpu, 2, 0) == ptr
    assert dev.hcomm_thread_notify_wait_on_thread(0, 0, 0) == ptr
    assert dev.hcomm_thread_notify_wait_on_thread(aicpu, 1, 0) == 0


def test_acquire_comm_codes_on_the_device():
    # aicpu_ts_primitives_c_adpt.cc HcommAcquireComm: NULL -> E_PTR; on Atlas A2 an unknown group
    # ("AicpuGetCommbyGroup is null") -> E_PTR; HcommReleaseComm: NULL -> E_PTR, else 0
    from ascend_jax.aicpu.device import DeviceModel

    w, _ = _host()
    dev = DeviceModel(w.program()).device_api(0)
    assert dev.hcomm_acquire_comm(None) == int(HcclResult.E_PTR)
    assert dev.hcomm_acquire_comm(b"nope") == int(HcclResult.E_PTR)
    assert dev.hcomm_acquire_comm(b"c") == 0
    assert dev.hcomm_release_comm(None) == int(HcclResult.E_PTR)
    assert dev.hcomm_release_comm(b"nope") == 0


def test_channel_buffer_of_an_unknown_channel_is_e_para():
    # channel_c_adpt.cc HcclChannelGetHcclBuffer -> channel_manager.cc ChannelManager::IsChannelExist
    w, h = _host(2)
    assert h.hccl_channel_get_hccl_buffer("c", 12345)[0] == int(HcclResult.E_PARA)
    _, ch = h.hccl_channel_acquire("c", AICPU, 1, int(CommProtocol.HCCS), 2)
    ret, addr, size = h.hccl_channel_get_hccl_buffer("c", ch)
    assert ret == 0 and addr == w.comms[1]["c"].buffer_addr and size == w.hccl_buffer_size


def test_channel_acquire_codes_follow_the_a2_channel_manager():
    # hicann/hcomm coll_comm_res_c_adpt.cc HcclChannelAcquire (CheckChannelResParams, ProcessHcclChannelDesc),
    # then channel_manager.cc ChannelManager::ChannelCommCreate -> CheckChannelParam: notifyNum > NOTIFY_NUM_MAX
    # (64), remoteRank == userRank_, a protocol the engine does not take, an engine outside CPU / CPU_TS /
    # AICPU / AICPU_TS / AIV: all HCCL_E_PARA, checked before PrepareHandleArray reuses a channel
    w, h = _host(3)
    para = int(HcclResult.E_PARA)
    hccs, roce = int(CommProtocol.HCCS), int(CommProtocol.ROCE)
    assert h.hccl_channel_acquire(None, AICPU, 1, hccs, 2)[0] == int(HcclResult.E_PTR)
    assert h.hccl_channel_acquire("c", AICPU, 1, hccs, 65)[0] == para
    assert h.hccl_channel_acquire("c", AICPU, 0, hccs, 2)[0] == para  # to itself
    for protocol in (CommProtocol.PCIE, CommProtocol.UB_CTP, CommProtocol.UB_MEM, CommProtocol.UBOE, 17):
        assert h.hccl_channel_acquire("c", AICPU, 1, int(protocol), 2)[0] == para, protocol
    assert h.hccl_channel_acquire("c", int(CommEngine.AIV), 1, roce, 2)[0] == para  # AIV: no RoCE
    assert h.hccl_channel_acquire("c", int(CommEngine.CCU), 1, hccs, 2)[0] == para
    assert h.hccl_channel_acquire("c", 9, 1, hccs, 2)[0] == para
    ret, ch = h.hccl_channel_acquire("c", AICPU, 1, hccs, 64)
    assert ret == 0 and len(w.channels[ch].notifies) == 64
    for protocol in (roce, int(CommProtocol.SIO), int(CommProtocol.HCCS_ONLY)):
        ret, other = h.hccl_channel_acquire("c", AICPU, 1, protocol, 2)
        assert ret == 0 and other != ch  # the protocol is part of the key
    assert h.hccl_channel_acquire("c", int(CommEngine.AIV), 2, int(CommProtocol.SIO), 2)[0] == 0
    # the key is (tag, engine, remote rank, protocol): a second call reuses the channel with its notifies
    assert h.hccl_channel_acquire("c", AICPU, 1, hccs, 2) == (0, ch) and len(w.channels[ch].notifies) == 64
    assert h.hccl_channel_acquire("c", AICPU, 1, hccs, 65)[0] == para  # checked before the reuse
    # a remote rank outside the communicator is not checked by CheckChannelParam (it reaches the
    # transport set-up): not decided by public sources, modelled as HCCL_E_PARA
    assert h.hccl_channel_acquire("c", AICPU, 3, hccs, 2)[0] == para
    assert h.hccl_channel_acquire("c", AICPU, -1, hccs, 2)[0] == para


def test_device_channel_op_codes():
    # hicann/hcomm aicpu_ts_primitives_c_adpt.cc HcommChannelNotifyRecordOnThread / WaitOnThread and
    # HcommRead/Write(Reduce)OnThread: CHK_PTR_NULL(dst, src), UnwrapChannelHandle (aicpu_ts_channel_helper.h:
    # handle 0 -> HCCL_E_PTR), CHK_PTR_NULL(thread), then on Atlas A2 IsSupportReduce -> HCCL_E_PARA; a
    # notify index outside [0, notifyNum) fails in TransportP2p::Post / Wait (transport_p2p.cc) with
    # HCCL_E_INTERNAL
    from ascend_jax.aicpu.device import DeviceModel
    from ascend_jax.aicpu.tasks import MEM_BASE

    w, h = _host(2)
    _, ch = h.hccl_channel_acquire("c", AICPU, 1, int(CommProtocol.HCCS), 2)
    w.host(1).hccl_channel_acquire("c", AICPU, 0, int(CommProtocol.HCCS), 2)
    _, (t,) = h.hccl_thread_acquire("c", int(CommEngine.AICPU_TS), 1, 0)
    dev = DeviceModel(w.program()).device_api(0)
    ptr, para, internal = int(HcclResult.E_PTR), int(HcclResult.E_PARA), int(HcclResult.E_INTERNAL)
    for idx, code in ((0, 0), (1, 0), (2, internal), (-1, internal)):
        assert dev.hcomm_channel_notify_record_on_thread(t, ch, idx) == code, idx
        assert dev.hcomm_channel_notify_wait_on_thread(t, ch, idx, 5) == code, idx
    assert dev.hcomm_channel_notify_record_on_thread(t, 0, 0) == ptr
    assert dev.hcomm_channel_notify_wait_on_thread(t, 0, 0, 5) == ptr
    assert dev.hcomm_channel_notify_record_on_thread(0, ch, 9) == ptr  # the thread is checked before Post
    assert dev.hcomm_channel_notify_wait_on_thread(0, ch, 9, 5) == ptr
    a, b = MEM_BASE, MEM_BASE + 64
    fp32, fp64 = int(HcclDataType.FP32), int(HcclDataType.FP64)
    for call in (dev.hcomm_read_on_thread, dev.hcomm_write_on_thread):
        assert call(t, ch, 0, b, 16) == ptr and call(t, ch, a, 0, 16) == ptr
        assert call(t, 0, a, b, 16) == ptr and call(0, ch, a, b, 16) == ptr
        assert call(t, ch, a, b, 16) == 0
    for call in (dev.hcomm_read_reduce_on_thread, dev.hcomm_write_reduce_on_thread):
        assert call(t, ch, 0, b, 4, fp32, 0) == ptr and call(t, 0, a, b, 4, fp32, 0) == ptr
        assert call(0, ch, a, b, 4, fp64, 0) == ptr  # the thread before IsSupportReduce
        assert call(t, ch, a, b, 4, fp64, 0) == para and call(t, ch, a, b, 4, fp32, 1) == para  # PROD
        assert call(t, ch, a, b, 4, fp32, 0) == 0
    total = sum(1 for c in dev.model.calls if c[4] == 0)
    assert total == 4 + 2 + 2  # only the calls that returned 0 wrote a task ...
    assert len(dev.model.buffers[w.threads[t]]) == total  # ... into the thread's buffer


def test_local_op_codes_check_the_thread_before_the_reduce():
    # aicpu_ts_primitives_c_adpt.cc HcommLocalCopyOnThread / HcommLocalReduceOnThread: CHK_PTR_NULL(dst,
    # src, thread), then on Atlas A2 IsSupportReduce -> HCCL_E_PARA
    from ascend_jax.aicpu.device import DeviceModel
    from ascend_jax.aicpu.tasks import MEM_BASE

    w, h = _host()
    _, (t,) = h.hccl_thread_acquire("c", int(CommEngine.AICPU_TS), 1, 0)
    dev = DeviceModel(w.program()).device_api(0)
    a, b, fp64 = MEM_BASE, MEM_BASE + 64, int(HcclDataType.FP64)
    assert dev.hcomm_local_copy_on_thread(0, a, b, -1) == int(HcclResult.E_PTR)
    assert dev.hcomm_local_copy_on_thread(t, a, b, -1) == int(HcclResult.E_PARA)  # modelled (uint64_t)
    assert dev.hcomm_local_reduce_on_thread(0, a, b, 4, fp64, 0) == int(HcclResult.E_PTR)
    assert dev.hcomm_local_reduce_on_thread(t, a, b, 4, fp64, 0) == int(HcclResult.E_PARA)


# -- HCCL_E_RUNTIME -----------------------------------------------------------------------------------
def test_a_failing_acl_call_in_the_thread_samples_launch_is_e_runtime():
    # hicann/hccl examples/04_custom_ops_p2p inc/log.h ACLCHECK (any aclError != 0 -> HCCL_E_RUNTIME),
    # around aclrtBinaryGetFunction ... aclrtLaunchKernelWithConfig in op_host/launch_kernel.cc
    # LaunchKernelWithAclrt; the raw aclError stays in host_calls
    w, h = _host(2)
    _, s = h.aclrt_create_stream()
    _, buf = h.aclrt_malloc(64)
    _, binary = h.aclrt_binary_load_from_file({"other": {"opInfo": {"kernelSo": "x.so", "functionName": "f"}}})
    h.thread_local["hccl_custom_thread_binary"] = binary  # a library without the sample's kernel
    assert hccl_send_thread(h, buf, 16, int(HcclDataType.FP32), 1, "c", s) == int(HcclResult.E_RUNTIME)
    assert (0, "aclrt_binary_get_function", int(AclError.RT_PARAM_INVALID)) in w.host_calls


# -- the op-info loader -------------------------------------------------------------------------------
def test_op_info_leniency_follows_the_runtimes_json_parser():
    # hicann/runtime src/runtime/core/src/kernel/json_parse.cc GetCpuKernelFromJson, then program.cc
    # Program::RegisterCpuKernel
    notes: list[str] = []
    doc = {
        "no_opinfo": {"other": 1},  # no "opInfo": skipped with a warning
        "opinfo_not_object": {"opInfo": "x"},  # contains() is false on a string: every field empty
        "missing": {"opInfo": {"opKernelLib": "AICPUKernel"}},  # functionName / kernelSo only warn
        "bad_type": {"opInfo": {"kernelSo": "a.so", "functionName": 5}},  # get<string> throws: skipped
        "bool_user": {"opInfo": {"kernelSo": "a.so", "functionName": "f", "userDefined": True}},  # throws
        "ok": {"opInfo": {"kernelSo": "a.so", "functionName": "f", "userDefined": "True", "extra": [1]}},
    }
    lib = parse_op_info(doc, notes)
    assert sorted(lib) == ["missing", "ok", "opinfo_not_object"]
    assert lib["opinfo_not_object"] == OpInfo("opinfo_not_object", "", "", "")
    assert lib["missing"] == OpInfo("missing", "", "", "AICPUKernel")
    assert lib["ok"].user_defined and lib["ok"].kernel_so == "a.so"
    assert any("no_opinfo" in n for n in notes) and any("bad_type" in n for n in notes)


def test_op_info_top_level_that_is_no_object(tmp_path):
    # nlohmann items(): an array's entries are keyed "0", "1", ...; a scalar registers nothing, and the
    # load itself succeeds (RegisterCpuKernel of an empty list); only a parse failure is 107000
    entry = {"opInfo": {"kernelSo": "a.so", "functionName": "f"}}
    assert sorted(parse_op_info([entry, {"x": 1}, entry])) == ["0", "2"]
    assert parse_op_info(7) == {}
    _, h = _host()
    for text, code in (("[]", 0), ("3", 0), ("{", 107000), ('{"k": NaN}', 107000), ("", 107000)):
        p = tmp_path / "lib.json"
        p.write_text(text)
        assert h.aclrt_binary_load_from_file(str(p))[0] == code, text
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps({"k": entry}).encode())  # a UTF-8 BOM is skipped
    assert sorted(load_op_info(p)) == ["k"]


# -- kernel return values -----------------------------------------------------------------------------
@device_kernel("libcodes_test.so", "ret_code")
def _ret_code(dev, param):
    return int(np.frombuffer(bytes(param[:4]), np.int32)[0])


@pytest.mark.parametrize(
    ("ret", "code"),
    [
        (201, int(AclError.RT_END_OF_SEQUENCE)),  # KERNEL_STATUS_END_OF_SEQUENCE -> 507005
        (101, int(AclError.RT_AICPU_EXCEPTION)),  # the task-wait flag: stream code not public; modelled
        (1050, int(AclError.RT_AICPU_EXCEPTION)),  # passthrough only for KFC kernels: a plain failure
        (7, int(AclError.RT_AICPU_EXCEPTION)),
    ],
)
def test_kernel_return_values(ret, code):
    # hicann/runtime src/aicpu_sched/aicpu_processer/ae_kernel_lib_aicpu.cc TransformKernelErrorCode
    # (201 end of sequence, 101 task wait, anything else passed on as a failure) and
    # ae_kernel_lib_aicpu_kfc.cpp (1000..1099 passed through for KFC kernels only)
    w = World(1)
    h = w.host(0)
    _, s = h.aclrt_create_stream()
    _, b = h.aclrt_binary_load_from_file(
        {"k": {"opInfo": {"opKernelLib": "AICPUKernel", "kernelSo": "libcodes_test.so", "functionName": "ret_code"}}}
    )
    _, f = h.aclrt_binary_get_function(b, "k")
    _, a = h.aclrt_kernel_args_init(f)
    h.aclrt_kernel_args_append(a, np.int32(ret).tobytes())
    h.aclrt_kernel_args_finalize(a)
    assert h.aclrt_launch_kernel_with_config(f, 1, s, {}, a) == 0
    assert run_both(w.program()).sync_code(0) == code


def test_aclrt_notify_on_thread_checks_the_thread_first():
    # aicpu_ts_primitives_c_adpt.cc HcommAclrtNotifyRecordOnThread / WaitOnThread: CHK_PTR_NULL on the
    # thread; the notify id goes on unchecked (HcclLocalBareNotifyRecord), so a bad id's code is not
    # decided by public sources: modelled as HCCL_E_PARA
    from ascend_jax.aicpu.device import DeviceModel

    w, h = _host()
    _, (aicpu,) = h.hccl_thread_acquire("c", int(CommEngine.AICPU_TS), 1, 0)
    _, n = h.aclrt_create_notify()
    _, nid = h.aclrt_get_notify_id(n)
    dev = DeviceModel(w.program()).device_api(0)
    assert dev.hcomm_aclrt_notify_record_on_thread(0, 10**6) == int(HcclResult.E_PTR)
    assert dev.hcomm_aclrt_notify_wait_on_thread(0, nid, 1) == int(HcclResult.E_PTR)
    assert dev.hcomm_aclrt_notify_record_on_thread(aicpu, 10**6) == int(HcclResult.E_PARA)
    assert dev.hcomm_aclrt_notify_record_on_thread(aicpu, nid) == 0

"""AI CPU comm v2: the real runtime's codes (each test names the source it was checked against) and
kernels that run when their stream reaches the kernel task, in both engines."""

from __future__ import annotations

import hypothesis.strategies as hst
import numpy as np
import pytest
from _comm import run_both
from hypothesis import HealthCheck, given, settings

from ascend_jax.aicpu import (
    AclError,
    CommStatus,
    DeviceApi,
    HcclDataType,
    HcclResult,
    TaskKind,
    World,
    device_kernel,
    run_comm_reference,
)

SO = "libtest_v2.so"
PARAM = np.dtype([("thread", np.uint64), ("a", np.uint64), ("b", np.uint64), ("n0", np.uint32), ("n1", np.uint32)])
SEEN: list = []


def launch(host, stream, fn_name, param, timeout_attr=None):
    """Load a one-kernel op-info library and launch ``fn_name`` from ``SO`` on ``stream``."""
    doc = {fn_name: {"opInfo": {"opKernelLib": "AICPUKernel", "kernelSo": SO, "functionName": fn_name}}}
    _, b = host.aclrt_binary_load_from_file(doc)
    _, f = host.aclrt_binary_get_function(b, fn_name)
    _, a = host.aclrt_kernel_args_init(f)
    host.aclrt_kernel_args_append(a, param)
    host.aclrt_kernel_args_finalize(a)
    cfg = {} if timeout_attr is None else {7: timeout_attr}
    return host.aclrt_launch_kernel_with_config(f, 1, stream, cfg, a, None, PARAM)


def one_rank(threads=1, notify_num=0):
    w = World(1)
    w.init_comm("c")
    h = w.host(0)
    _, s = h.aclrt_create_stream()
    _, ths = h.hccl_thread_acquire("c", 2, threads, notify_num)
    return w, h, s, ths


def param(thread=0, a=0, b=0, n0=0, n1=0):
    p = np.zeros((), PARAM)
    p["thread"], p["a"], p["b"], p["n0"], p["n1"] = thread, a, b, n0, n1
    return p


# -- batch mode and launch registration (hicann/hcomm aicpu_ts_primitives_c_adpt.cc, launch_context.cc) ---------


@device_kernel(SO, "NoBatch")
def _no_batch(dev: DeviceApi, p) -> int:
    """The seed kernel's handshake without HcommBatchModeStart / End."""
    t = int(p["thread"])
    SEEN.append(dev.hcomm_aclrt_notify_wait_on_thread(t, int(p["n0"]), 10))
    SEEN.append(dev.hcomm_aclrt_notify_record_on_thread(t, int(p["n1"])))
    return 0


def test_data_plane_outside_batch_mode_returns_0_but_never_runs():
    # HcommAclrtNotify*OnThread queue the task and return HCCL_SUCCESS whatever the launch mode; only
    # batch mode registers the thread for HcommBatchModeEnd (AddThread / LaunchContext), so nothing
    # is submitted and the host's wait on n1 times out.
    SEEN.clear()
    w, h, s, (t,) = one_rank()
    _, n0 = h.aclrt_create_notify(0)
    _, n1 = h.aclrt_create_notify(0)
    ids = [h.aclrt_get_notify_id(n)[1] for n in (n0, n1)]
    h.aclrt_record_notify(n0, s)
    assert launch(h, s, "NoBatch", param(t, n0=ids[0], n1=ids[1])) == 0
    h.aclrt_wait_and_reset_notify(n1, s, 5)
    r = run_both(w.program())
    assert SEEN == [0, 0, 0, 0]  # both calls return 0, in both engines
    assert r.status == CommStatus.ERROR and r.rank_errors() == [AclError.RT_TASK_TIMEOUT] == [107020]
    assert not [q for q in r.program.queues if q.kind == "thread"][0].tasks  # nothing submitted


@device_kernel(SO, "EndOnly")
def _end_only(dev: DeviceApi, p) -> int:
    SEEN.append(dev.hcomm_batch_mode_end("x"))  # no Start before: HandleEagerMode + HandleClear -> 0
    SEEN.append(dev.hcomm_batch_mode_start("x"))
    dev.hcomm_local_copy_on_thread(int(p["thread"]), int(p["b"]), int(p["a"]), 8)
    SEEN.append(dev.hcomm_batch_mode_start("x"))  # a second Start keeps the task recorded above
    dev.hcomm_local_copy_on_thread(int(p["thread"]), int(p["b"]) + 8, int(p["a"]) + 8, 8)
    SEEN.append(dev.hcomm_batch_mode_end("x"))
    return 0


def test_batch_end_without_start_is_0_and_a_second_start_keeps_tasks():
    SEEN.clear()
    w, h, s, (t,) = one_rank()
    _, a = h.aclrt_malloc(16)
    _, b = h.aclrt_malloc(16)
    h.aclrt_memcpy_h2d(a, np.arange(16, dtype=np.uint8))
    launch(h, s, "EndOnly", param(t, a, b))
    r = run_both(w.program())
    assert SEEN == [0, 0, 0, 0] * 2
    assert r.status == CommStatus.OK
    thread = [q for q in r.program.queues if q.kind == "thread"][0]
    assert [x.kind for x in thread.tasks] == [TaskKind.NOP, TaskKind.COPY, TaskKind.COPY]
    np.testing.assert_array_equal(r.memory[0][b - 0x10000 : b - 0x10000 + 16], np.arange(16))


@device_kernel(SO, "StartCopyFail")
def _start_copy_fail(dev: DeviceApi, p) -> int:
    dev.hcomm_batch_mode_start("x")
    dev.hcomm_local_copy_on_thread(int(p["thread"]), int(p["b"]), int(p["a"]), 8)
    return 1  # fails mid-batch: batch mode and the registration stay with the AI CPU thread


@device_kernel(SO, "CopyEnd")
def _copy_end(dev: DeviceApi, p) -> int:
    dev.hcomm_local_copy_on_thread(int(p["thread"]), int(p["b"]) + 8, int(p["a"]) + 8, 8)
    return dev.hcomm_batch_mode_end("y")


def test_batch_mode_outlives_a_kernel_that_fails_mid_batch():
    # g_threadLaunchCtx is thread_local to the AI CPU thread (aicpu_ts_primitives_c_adpt.cc): the next
    # kernel on that thread still is in batch mode and its End submits the failed kernel's task too
    w, h, s, (t,) = one_rank()
    _, s2 = h.aclrt_create_stream()
    _, a = h.aclrt_malloc(16)
    _, b = h.aclrt_malloc(16)
    h.aclrt_memcpy_h2d(a, np.arange(1, 17, dtype=np.uint8))
    _, n = h.aclrt_create_notify(0)
    launch(h, s, "StartCopyFail", param(t, a, b))
    h.aclrt_record_notify(n, s2)  # 1 us on stream 2: its kernel runs after the first one
    launch(h, s2, "CopyEnd", param(t, a, b))
    r = run_both(w.program())
    assert r.status == CommStatus.ERROR
    assert r.sync_code(0) == AclError.RT_AICPU_EXCEPTION == 507018 and r.sync_code(2) == 0
    np.testing.assert_array_equal(r.memory[0][b - 0x10000 : b - 0x10000 + 16], np.arange(1, 17))


@device_kernel(SO, "BadIndex")
def _bad_index(dev: DeviceApi, p) -> int:
    t = int(p["thread"])
    SEEN.append(dev.hcomm_thread_notify_wait_on_thread(t, 2, 1))  # notifyNumPerThread = 2
    SEEN.append(dev.hcomm_thread_notify_record_on_thread(t, t, 5))
    SEEN.append(dev.hcomm_thread_notify_record_on_thread(t, t, 1))
    return 0


def test_thread_notify_index_out_of_range_is_e_ptr():
    # GetNotify(thread, idx) gives NULL, then CHK_PTR_NULL -> HCCL_E_PTR (HcommThreadNotifyWaitOnThread,
    # HcommThreadNotifyRecordOnThread in aicpu_ts_primitives_c_adpt.cc)
    SEEN.clear()
    w, h, s, (t,) = one_rank(notify_num=2)
    launch(h, s, "BadIndex", param(t))
    run_comm_reference(w.program())
    assert SEEN == [HcclResult.E_PTR, HcclResult.E_PTR, 0] == [2, 2, 0]


# -- kernel outcome codes ---------------------------------------------------------------------------------------


@device_kernel(SO, "Returns")
def _returns(dev: DeviceApi, p) -> int:
    dev.elapse(float(p["b"]) * 1e-3)  # b milliseconds of AI CPU time
    return int(p["a"])


@pytest.mark.parametrize(
    "ret, spent_ms, timeout_attr, code",
    [
        (0, 0, None, 0),
        (1, 0, None, AclError.RT_AICPU_EXCEPTION),  # ordinary failure: 507018
        (201, 0, None, AclError.RT_END_OF_SEQUENCE),  # KERNEL_STATUS_END_OF_SEQUENCE -> 507005
        (1050, 0, None, AclError.RT_AICPU_EXCEPTION),  # reserved range, stream code unconfirmed: default
        (0, 3000, 2, AclError.RT_AICPU_TIMEOUT),  # runs 3 s with a 2 s launch timeout -> 507017
        (0, 1000, 2, 0),
    ],
)
def test_kernel_outcome_codes(ret, spent_ms, timeout_attr, code):
    w, h, s, _ = one_rank()
    launch(h, s, "Returns", param(a=ret, b=spent_ms), timeout_attr)
    r = run_both(w.program())
    assert r.sync_code(0) == code
    kernel_end = float(r.end[0, 0])
    want = min(20e-6 + spent_ms * 1e-3, timeout_attr or np.inf)  # kernel_s + spent, cut at the timeout
    assert kernel_end == pytest.approx(want, rel=1e-6)


def test_special_kernel_returns_are_configurable_per_world():
    w = World(1, kernel_return_errors={1050: int(AclError.RT_AICPU_INTERNAL_ERROR)})
    h = w.host(0)
    _, s = h.aclrt_create_stream()
    launch(h, s, "Returns", param(a=1050))
    assert run_both(w.program()).sync_code(0) == 507900


def test_missing_function_name_registers_and_fails_on_the_device():
    # json_parse.cc / program.cc: a missing functionName only warns; the kernel fails when it runs
    w, h, s, _ = one_rank()
    doc = {"K": {"opInfo": {"opKernelLib": "AICPUKernel", "kernelSo": SO}}}
    ret, b = h.aclrt_binary_load_from_file(doc)
    ret2, f = h.aclrt_binary_get_function(b, "K")
    _, a = h.aclrt_kernel_args_init(f)
    h.aclrt_kernel_args_append(a, b"\0" * 8)
    assert (ret, ret2, h.aclrt_launch_kernel_with_config(f, 1, s, {}, a)) == (0, 0, 0)
    assert run_both(w.program()).sync_code(0) == 507018


def test_hccl_result_enum_is_complete():
    # hicann/hcomm include/hccl/hccl_types.h
    assert (
        HcclResult(15).name == "E_RUNTIME" and HcclResult(24).name == "E_OOM" and HcclResult(1041).name == "E_IN_STATUS"
    )
    assert [int(v) for v in HcclResult][:25] == list(range(25))


# -- kernels run when the stream reaches them --------------------------------------------------------------------


@device_kernel(SO, "ReadBuf")
def _read_buf(dev: DeviceApi, p) -> int:
    SEEN.append((dev.now, dev.read_array(int(p["a"]), 4, int(HcclDataType.INT32)).tolist()))
    return 0


@pytest.mark.parametrize("ordered", [True, False])
def test_kernel_sees_memory_written_on_another_stream_only_when_notifies_order_them(ordered):
    SEEN.clear()
    w, h, s, _ = one_rank()
    _, s2 = h.aclrt_create_stream()
    _, src = h.aclrt_malloc(16)
    _, buf = h.aclrt_malloc(16)
    h.aclrt_memcpy_h2d(src, np.array([7, 8, 9, 10], np.int32))
    _, n = h.aclrt_create_notify(0)
    assert h.aclrt_memcpy_async(buf, 16, src, 16, s) == 0  # stream 1 writes buf ...
    h.aclrt_record_notify(n, s)
    if ordered:
        h.aclrt_wait_and_reset_notify(n, s2, 0)  # ... and stream 2 waits for it
    launch(h, s2, "ReadBuf", param(a=buf))
    r = run_both(w.program())
    assert r.status == CommStatus.OK
    (t_ref, seen_ref), (t_jax, seen_jax) = SEEN  # one kernel run per engine
    assert seen_ref == seen_jax == ([7, 8, 9, 10] if ordered else [0, 0, 0, 0])
    copy_end, kernel_start = float(r.end[0, 0]), float(r.start[2, 1 if ordered else 0])
    assert t_ref == t_jax == pytest.approx(kernel_start + 20e-6)
    assert (kernel_start >= copy_end) == ordered


def test_hcomm_calls_are_recorded_at_the_kernels_simulated_time():
    w, h, s, (t,) = one_rank()
    _, n = h.aclrt_create_notify(0)
    _, s0 = h.aclrt_create_stream()
    h.aclrt_record_notify(n, s0)
    h.aclrt_wait_and_reset_notify(n, s, 0)
    h.aclrt_record_notify(n, s)  # the kernel task starts at 3 us (record 0-1, wait 1-2, record 2-3)
    _, a = h.aclrt_malloc(16)
    launch(h, s, "EndOnly", param(t, a, a))
    r = run_both(w.program())
    kernel_start = float(r.start[0, 2])
    times = {call: tm for tm, _, _, call, _ in r.device_calls}
    assert kernel_start == pytest.approx(3e-6, rel=1e-5)
    assert times["hcomm_batch_mode_end"] == pytest.approx(kernel_start + 20e-6)
    thread = next(i for i, q in enumerate(r.program.queues) if q.kind == "thread")
    assert float(r.start[thread, 0]) == pytest.approx(kernel_start + 20e-6)  # submitted, then started


def test_p2p_seed_flow_order_kernel_then_thread_then_done():
    from ascend_jax.aicpu.models import p2p_job

    p = p2p_job(256, seed=3)
    r = run_both(p)
    assert r.status == CommStatus.OK and r.rank_errors() == [0, 0]
    np.testing.assert_array_equal(r.output("rank1.recvBuf"), p.world.inputs[0])
    names = [q.name for q in r.program.queues]
    s0, t0 = names.index("rank0.stream0"), names.index("rank0.thread0")
    rec_n0, kernel, wait_n1 = (float(r.start[s0, i]) for i in range(3))
    assert rec_n0 < kernel < float(r.start[t0, 0]) < float(r.end[s0, 2])
    assert all(ret == 0 for *_, ret in r.device_calls) and len(r.device_calls) == 2 * 9


# -- property: random programs with kernel launches -------------------------------------------------------------


@device_kernel(SO, "DataDependent")
def _data_dependent(dev: DeviceApi, p) -> int:
    """Reads one byte as it is now and lets it decide the work: 1..3 copies and records, or fail."""
    b = dev.read(int(p["a"]), 1)[0]
    t = int(p["thread"])
    dev.hcomm_batch_mode_start("r")
    for i in range(b % 3 + 1):
        dev.hcomm_local_copy_on_thread(t, int(p["b"]) + 8 * i, int(p["a"]) + 8 * i, 8)
        dev.hcomm_thread_notify_record_on_thread(t, t, i % 2)
    dev.hcomm_batch_mode_end("r")
    return 201 if b % 7 == 0 else 0


@hst.composite
def launch_programs(draw):
    w = World(1)
    w.init_comm("c")
    h = w.host(0)
    _, buf = h.aclrt_malloc(256)
    h.aclrt_memcpy_h2d(buf, np.random.default_rng(draw(hst.integers(0, 99))).integers(0, 255, 256, np.uint8))
    _, threads = h.hccl_thread_acquire("c", 2, 2, 2)
    streams = [h.aclrt_create_stream()[1] for _ in range(draw(hst.integers(1, 3)))]
    notifies = [h.aclrt_create_notify(0)[1] for _ in range(2)]
    for _ in range(draw(hst.integers(1, 8))):
        s = draw(hst.sampled_from(streams))
        what = draw(hst.sampled_from(["copy", "record", "wait", "kernel", "kernel"]))
        off = draw(hst.sampled_from([0, 64, 128]))
        if what == "copy":
            h.aclrt_memcpy_async(buf + off, 64, buf + draw(hst.sampled_from([0, 64, 128])), 64, s)
        elif what == "record":
            h.aclrt_record_notify(draw(hst.sampled_from(notifies)), s)
        elif what == "wait":
            h.aclrt_wait_and_reset_notify(draw(hst.sampled_from(notifies)), s, draw(hst.sampled_from([0, 1])))
        else:
            t = draw(hst.sampled_from(threads))
            launch(h, s, "DataDependent", param(t, buf + off, buf + 192), draw(hst.sampled_from([None, 1])))
    return w.program(max_steps=300)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(launch_programs())
def test_random_programs_with_kernel_launches_jax_equals_reference(p):
    r = run_both(p)
    assert r.status in (CommStatus.OK, CommStatus.ERROR, CommStatus.HANG, CommStatus.MAX_STEPS)
    # every kernel task a stream got past ran its function exactly once (its Hcomm calls are logged)
    ran = [
        t for q, qu in enumerate(r.program.queues) for t in qu.tasks[: int(r.queue_pc[q])] if t.kind == TaskKind.KERNEL
    ]
    assert all(t.launch == -1 for t in ran)
    assert len(
        {(launch, rank) for _, rank, launch, call, _ in r.device_calls if call == "hcomm_batch_mode_end"}
    ) >= len(ran)


@device_kernel(SO, "ManyTasks")
def _many_tasks(dev: DeviceApi, p) -> int:
    """200 tasks (more than the engine's first table width) and an fp16 reduce nobody declared."""
    t, a, b = int(p["thread"]), int(p["a"]), int(p["b"])
    dev.hcomm_batch_mode_start("m")
    for i in range(199):
        dev.hcomm_local_copy_on_thread(t, b + 2 * (i % 8), a + 2 * (i % 8), 2)
    dev.hcomm_local_reduce_on_thread(t, b, a, 8, int(HcclDataType.FP16), 0)
    dev.hcomm_batch_mode_end("m")
    return 0


def test_engine_regrows_when_kernels_outgrow_its_shape():
    w = World(1, reduce_dtypes=(int(HcclDataType.FP32),))
    w.init_comm("c")
    h = w.host(0)
    _, s = h.aclrt_create_stream()
    _, (t,) = h.hccl_thread_acquire("c", 2, 1, 0)
    _, a = h.aclrt_malloc(16)
    _, b = h.aclrt_malloc(16)
    h.aclrt_memcpy_h2d(a, np.arange(8, dtype=np.float16))
    launch(h, s, "ManyTasks", param(t, a, b))
    w.mark_output("b", 0, b, int(HcclDataType.FP16), 8)
    r = run_both(w.program())
    assert r.status == CommStatus.OK and len(r.program.queues[1].tasks) == 201
    np.testing.assert_array_equal(r.output("b"), 2 * np.arange(8, dtype=np.float16))


def test_sample_host_wrapper_codes_for_the_op_info_file(tmp_path):
    # hicann/hccl examples/04_custom_ops_p2p op_host/load_kernel.cc LoadBinaryFromFile: realpath fails ->
    # HCCL_E_INTERNAL; aclrtBinaryLoadFromFile fails (107000 here) -> HCCL_E_OPEN_FILE_FAILURE
    from ascend_jax.aicpu.models import p2p_job

    bad = tmp_path / "libp2p_aicpu_kernel.json"
    bad.write_text("{not json")
    p = p2p_job(16, op_info=str(bad))
    assert p.world.host_returns[(0, "send")] == HcclResult.E_OPEN_FILE_FAILURE == 10
    assert (0, "aclrt_binary_load_from_file", 107000) in p.world.host_calls
    p = p2p_job(16, op_info=str(tmp_path / "missing.json"))
    assert (
        p.world.host_returns
        == {(0, "send"): HcclResult.E_INTERNAL, (1, "recv"): HcclResult.E_INTERNAL}
        == {
            (0, "send"): 4,
            (1, "recv"): 4,
        }
    )

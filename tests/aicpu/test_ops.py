"""AI CPU communication operators: op-info library, ACL / Hcomm APIs, the two task engines, the P2P
flow, ring collectives and the documented pitfalls with their real error codes."""

from __future__ import annotations

import json

import hypothesis.strategies as hst
import numpy as np
import pytest
from _comm import run_both
from hypothesis import HealthCheck, given, settings

from ascend_jax.aicpu.codes import AclError, HcclCMDType, HcclDataType, HcclReduceOp, HcclResult
from ascend_jax.aicpu.collectives import P2P_KERNEL, P2P_SO
from ascend_jax.aicpu.device import DeviceApi, DeviceModel
from ascend_jax.aicpu.engine import run_comm
from ascend_jax.aicpu.models import comm_numerics, p2p_expected, p2p_job, ring_expected, ring_job
from ascend_jax.aicpu.opinfo import device_kernel, load_op_info
from ascend_jax.aicpu.result import CommStatus, QueueStatus
from ascend_jax.aicpu.structs import ALG_RESOURCE_CTX, COMM_BUFFER, OP_PARAM
from ascend_jax.aicpu.tasks import MEM_BASE, Task, TaskKind
from ascend_jax.aicpu.world import World
from ascend_jax.cli import main

# -- op-info and structs ---------------------------------------------------------------------------


def test_op_info_loading_is_lenient_like_the_runtime(tmp_path):
    # hicann/runtime src/runtime/core/src/kernel/json_parse.cc and program.cc (RegisterCpuKernel):
    # no opInfo -> entry skipped; missing kernelSo / functionName -> warning only; opKernelLib free text
    good = {"K": {"opInfo": {"opKernelLib": "AICPUKernel", "kernelSo": "libk.so", "functionName": "K"}}}
    path = tmp_path / "lib.json"
    path.write_text(json.dumps(good))
    lib = load_op_info(path)
    assert lib["K"].kernel_so == "libk.so" and lib["K"].function_name == "K"
    notes: list[str] = []
    doc = {
        "NoInfo": {},
        "NoSo": {"opInfo": {"opKernelLib": "AICPUKernel", "functionName": "F"}},
        "Tbe": {"opInfo": {"opKernelLib": "TBE", "kernelSo": "a.so", "functionName": "a b"}},
    }
    lib = load_op_info(doc, notes)
    assert sorted(lib) == ["NoSo", "Tbe"]
    assert lib["NoSo"].kernel_so == "" and lib["Tbe"].op_kernel_lib == "TBE"
    assert notes == ["'NoInfo': no opInfo object; entry skipped", "'NoSo': opInfo.kernelSo missing"]
    path.write_text("{not json")
    assert load_op_info(path) is None
    assert load_op_info(tmp_path / "missing.json") is None
    # a top level that parses but is no object loads and registers nothing (json_parse.cc iterates
    # nlohmann items(): array elements keyed by index, none with an opInfo here)
    assert load_op_info(["not", "an", "object"]) == {}


def test_struct_layouts_match_c():
    assert COMM_BUFFER.itemsize == 16
    assert ALG_RESOURCE_CTX.itemsize == 56
    assert [ALG_RESOURCE_CTX.fields[n][1] for n in ALG_RESOURCE_CTX.names] == [0, 8, 24, 40, 48]
    assert OP_PARAM.itemsize == 328
    assert [OP_PARAM.fields[n][1] for n in OP_PARAM.names] == [0, 160, 288, 296, 304, 312, 316, 320]


# -- host API return codes ----------------------------------------------------------------------------


def test_acl_host_calls_return_documented_codes():
    w = World(2)
    h = w.host(0)
    assert h.aclrt_create_notify(5)[0] == AclError.RT_PARAM_INVALID
    _, n = h.aclrt_create_notify(0)
    _, s = h.aclrt_create_stream()
    assert h.aclrt_record_notify(12345, s) == AclError.INVALID_PARAM
    assert h.aclrt_record_notify(n, 999) == AclError.RT_STREAM_CONTEXT
    assert h.aclrt_binary_load_from_file("/no/such/op_info.json")[0] == AclError.RT_PARAM_INVALID == 107000
    assert h.aclrt_binary_load_from_file({"bad": 1})[0] == 0  # an entry without opInfo is skipped
    ret, b = h.aclrt_binary_load_from_file(
        {"K": {"opInfo": {"opKernelLib": "AICPUKernel", "kernelSo": "x.so", "functionName": "K"}}}
    )
    assert ret == 0
    assert h.aclrt_binary_get_function(b, "Other")[0] == AclError.RT_PARAM_INVALID  # spec F1: 107000
    ret, f = h.aclrt_binary_get_function(b, "K")
    _, args = h.aclrt_kernel_args_init(f)
    assert h.aclrt_kernel_args_append(args, b"")[0] == AclError.INVALID_PARAM
    assert h.aclrt_launch_kernel_with_config(f, 0, s, {}, args) == AclError.INVALID_PARAM  # numBlocks 0
    # seconds and microseconds together: ApiErrorDecorator::CheckKernelLaunchCfg -> 107000
    assert h.aclrt_launch_kernel_with_config(f, 1, s, {7: 5, 8: 5}, args) == AclError.RT_PARAM_INVALID == 107000
    assert h.aclrt_launch_kernel_with_config(f, 1, s, {}, args, reserve=object()) == AclError.INVALID_PARAM
    w.init_comm("c")
    assert h.hccl_channel_acquire("c", 2, 0, 0, 2)[0] == HcclResult.E_PARA  # to itself
    assert h.hccl_thread_acquire("nope", 2, 1, 0)[0] == HcclResult.E_PTR


def test_device_calls_check_arguments_only():
    w = World(2)
    w.init_comm("c")
    h = w.host(0)
    _, threads = h.hccl_thread_acquire("c", 2, 1, 2)
    t = threads[0]
    model = DeviceModel(w.program().fork())
    dev = model.device_api(0)
    assert dev.hcomm_batch_mode_start("x") == 0
    assert dev.hcomm_local_copy_on_thread(t, 0, MEM_BASE, 8) == HcclResult.E_PTR
    assert dev.hcomm_local_copy_on_thread(999, MEM_BASE, MEM_BASE, 8) == HcclResult.E_PTR
    for dt, op in ((HcclDataType.INT64, HcclReduceOp.SUM), (HcclDataType.FP32, HcclReduceOp.PROD)):
        assert dev.hcomm_local_reduce_on_thread(t, MEM_BASE, MEM_BASE + 64, 4, int(dt), int(op)) == HcclResult.E_PARA
    assert dev.hcomm_local_reduce_on_thread(t, MEM_BASE, MEM_BASE + 64, 4, int(HcclDataType.BFP16), 2) == 0
    assert dev.hcomm_acquire_comm("nope") == HcclResult.E_PTR
    assert dev.hcomm_acquire_comm(b"c") == 0
    # a copy to a bad address is accepted at enqueue: it fails when it runs
    assert dev.hcomm_local_copy_on_thread(t, 0xDEAD0, MEM_BASE, 8) == 0
    assert dev.hcomm_batch_mode_end("x") == 0
    kinds = [k.kind for k in model.program.queues[0].tasks]
    assert kinds == [TaskKind.NOP, TaskKind.REDUCE, TaskKind.COPY]  # submission marker, then the tasks


# -- the P2P flow -------------------------------------------------------------------------------------------


def test_p2p_send_recv_both_engines_and_happens_before():
    p = p2p_job(512, seed=1)
    assert p.world.host_returns == {(0, "send"): 0, (1, "recv"): 0}
    r = run_both(p)
    assert r.status == CommStatus.OK and r.rank_errors() == [0, 0]
    assert comm_numerics(r, p2p_expected(p))["rank1.recvBuf"]["ok"]
    np.testing.assert_array_equal(r.output("rank1.recvBuf"), p.world.inputs[0])
    tl = {(e["queue"], e["task"]): (e["start"], e["end"]) for e in r.to_json()["timeline"]}
    ack = tl[("rank0.thread0", "record rank1.ch->0.notify[0]")]
    read = tl[("rank1.thread0", "read 2048 B rank0 -> rank1")]
    data = tl[("rank1.thread0", "record rank0.ch->1.notify[1]")]
    wait_data = tl[("rank0.thread0", "wait rank0.ch->1.notify[1]")]
    done = tl[("rank0.stream0", "wait rank0.aclNotify1")]
    assert ack[1] <= read[0] and read[1] <= data[0] and data[1] <= wait_data[0] and wait_data[1] <= done[0]
    kernel = tl[("rank0.stream0", f"kernel {P2P_KERNEL} ({P2P_SO}:{P2P_KERNEL})")]
    assert tl[("rank0.thread0", "start of kernel 0")][0] >= kernel[1]  # threads start after the kernel task


@pytest.mark.parametrize("ranks", range(2, 9))
def test_ring_collectives_match_numpy(ranks):
    for op in (HcclCMDType.ALLGATHER, HcclCMDType.REDUCE_SCATTER, HcclCMDType.ALLREDUCE):
        p = ring_job(int(op), ranks=ranks, count=32, seed=ranks)
        r = run_both(p)
        assert r.status == CommStatus.OK, r.to_json(timeline=False)
        report = comm_numerics(r, ring_expected(p))
        assert len(report) == ranks and all(e["ok"] for e in report.values()), report
        assert r.lost.sum() == 0  # the ACK / DATA handshake never loses a record


def test_ring_int32_sum_is_exact():
    p = ring_job(int(HcclCMDType.ALLREDUCE), ranks=4, count=16, dtype=int(HcclDataType.INT32))
    r = run_both(p)
    for name, want in ring_expected(p).items():
        np.testing.assert_array_equal(r.output(name), want.astype(np.int32))


# -- pitfalls ---------------------------------------------------------------------------------------------------


SEEN_COUNTS: list[int] = []


@device_kernel("libtest_args.so", "EchoCount")
def _echo_count(dev: DeviceApi, param) -> int:
    """Records the OpParam count it was launched with (to see the copy semantics)."""
    SEEN_COUNTS.append(int(param["count"]))
    return 0


def test_kernel_args_append_copies_and_sync_codes_are_filled():
    SEEN_COUNTS.clear()
    w = World(1)
    h = w.host(0)
    doc = {
        "EchoCount": {
            "opInfo": {"opKernelLib": "AICPUKernel", "kernelSo": "libtest_args.so", "functionName": "EchoCount"}
        }
    }
    _, s = h.aclrt_create_stream()
    _, b = h.aclrt_binary_load_from_file(doc)
    _, f = h.aclrt_binary_get_function(b, "EchoCount")
    _, a = h.aclrt_kernel_args_init(f)
    param = np.zeros((), OP_PARAM)
    param["count"] = 7
    h.aclrt_kernel_args_append(a, param)
    param["count"] = 99  # changed after the append: the kernel still sees 7
    h.aclrt_kernel_args_finalize(a)
    assert h.aclrt_launch_kernel_with_config(f, 1, s, {7: 1836}, a, None, OP_PARAM) == 0
    assert SEEN_COUNTS == []  # the kernel runs when the stream reaches it, not at launch
    sync = h.aclrt_synchronize_stream(s)
    assert sync.code is None
    run_comm(w.program())
    assert SEEN_COUNTS == [7]
    assert sync.code == 0


def test_pitfall_json_key_differs_from_lookup_name():
    doc = {
        "CustomAicpuKernel": {"opInfo": {"opKernelLib": "AICPUKernel", "kernelSo": P2P_SO, "functionName": P2P_KERNEL}}
    }
    p = p2p_job(64, op_info=doc)
    # aclrtBinaryGetFunction gives 107000 (F1); the sample's ACLCHECK turns it into HCCL_E_RUNTIME
    # (hicann/hccl examples/04_custom_ops_p2p op_host/launch_kernel.cc)
    assert p.world.host_returns[(0, "send")] == HcclResult.E_RUNTIME == 15
    assert (0, "aclrt_binary_get_function", 107000) in p.world.host_calls


def test_pitfall_function_name_not_exported():
    doc = {
        P2P_KERNEL: {
            "opInfo": {"opKernelLib": "AICPUKernel", "kernelSo": P2P_SO, "functionName": "HcclLaunchP2PKernel"}
        }
    }
    p = p2p_job(64, op_info=doc)
    assert p.world.host_returns == {(0, "send"): 0, (1, "recv"): 0}  # host calls all succeed
    r = run_both(p)
    assert r.status == CommStatus.ERROR
    assert r.rank_errors() == [AclError.RT_AICPU_EXCEPTION, AclError.RT_AICPU_EXCEPTION] == [507018, 507018]


def test_pitfall_both_ranks_send_first_times_out():
    p = p2p_job(64, both_send_first=True)
    r = run_both(p)
    assert r.status == CommStatus.ERROR
    assert r.rank_errors() == [AclError.RT_TASK_TIMEOUT, AclError.RT_TASK_TIMEOUT] == [107020, 107020]
    failed = {q.name: float(r.clock[i]) for i, q in enumerate(p.queues) if r.queue_status[i] == QueueStatus.FAILED}
    # both the device thread's DATA wait and the host stream's done-wait expire ~1836 s after they
    # started (equal timeouts, as in the sample: spec F12); float32 seconds cannot separate them
    assert failed["rank0.thread0"] == pytest.approx(1836, rel=1e-4)
    assert failed["rank0.stream0"] == pytest.approx(1836, rel=1e-4)


TEST_HANDLES: dict[int, tuple[int, int, int]] = {}


@device_kernel("libtest_pitfalls.so", "DoubleRecord")
def _double_record(dev: DeviceApi, param) -> int:
    """Rank 0 records the peer's ACK twice; rank 1 first copies 64 KiB (about 2.6 us), then waits
    twice on its ACK (5 s timeout), so both records land before its first wait."""
    thread, channel, buf = TEST_HANDLES[dev.rank]
    dev.hcomm_batch_mode_start("t")
    if dev.rank == 0:
        dev.hcomm_channel_notify_record_on_thread(thread, channel, 0)
        dev.hcomm_channel_notify_record_on_thread(thread, channel, 0)
    else:
        dev.hcomm_local_copy_on_thread(thread, buf + 65536, buf, 65536)
        dev.hcomm_channel_notify_wait_on_thread(thread, channel, 0, 5)
        dev.hcomm_channel_notify_wait_on_thread(thread, channel, 0, 5)
    dev.hcomm_batch_mode_end("t")
    return 0


def test_pitfall_two_records_before_the_wait_lose_a_wakeup():
    w = World(2)
    w.init_comm("c")
    TEST_HANDLES.clear()
    doc = {
        "DoubleRecord": {
            "opInfo": {"opKernelLib": "AICPUKernel", "kernelSo": "libtest_pitfalls.so", "functionName": "DoubleRecord"}
        }
    }
    for r in range(2):
        h = w.host(r)
        _, threads = h.hccl_thread_acquire("c", 2, 1, 0)
        _, ch = h.hccl_channel_acquire("c", 2, 1 - r, 0, 1)
        _, buf = h.aclrt_malloc(2 * 65536)
        TEST_HANDLES[r] = (threads[0], ch, buf)
    for r in range(2):
        h = w.host(r)
        _, s = h.aclrt_create_stream()
        _, b = h.aclrt_binary_load_from_file(doc)
        _, f = h.aclrt_binary_get_function(b, "DoubleRecord")
        _, a = h.aclrt_kernel_args_init(f)
        h.aclrt_kernel_args_append(a, b"\0" * 8)
        assert h.aclrt_launch_kernel_with_config(f, 1, s, {}, a) == 0
    p = w.program()
    r = run_both(p)
    assert r.status == CommStatus.ERROR
    out = r.to_json()
    assert out["lost_records"] == [{"notify": "rank1.ch->0.notify[0]", "lost_records": 1}]
    thread1 = next(q for q in out["ranks"][1]["queues"] if q["kind"] == "thread")
    assert thread1["status"] == "failed" and thread1["error"] == 107020 and thread1["tasks_done"] == 3


def test_pitfall_unknown_communicator_name():
    p = p2p_job(64, comm_name_override="no_such_comm")
    r = run_both(p)
    assert r.rank_errors() == [AclError.RT_AICPU_EXCEPTION] * 2  # HcommAcquireComm -> HCCL_E_PTR -> kernel returns 1
    assert all(not q.tasks for q in r.program.queues if q.kind == "thread")  # nothing was submitted


def test_hang_report_names_queue_task_and_notify():
    p = p2p_job(64, both_send_first=True, timeout=0)  # host waits forever; device waits 1836 s
    r = run_both(p)
    assert r.status == CommStatus.HANG
    stuck = {h["queue"]: h for h in r.hang}
    assert sorted(stuck) == ["rank0.stream0", "rank1.stream0"]
    assert stuck["rank0.stream0"]["waits_for"] == "rank0.aclNotify1"
    assert stuck["rank0.stream0"]["task"] == 2 and stuck["rank0.stream0"]["label"] == "wait rank0.aclNotify1"
    out = r.to_json()
    threads = [q for rank in out["ranks"] for q in rank["queues"] if q["kind"] == "thread"]
    assert threads[0]["status"] == "failed" and threads[0]["error"] == 107020  # the device DATA wait expired
    assert out["hang"] and r.rank_errors() == [-1, -1]


def test_copy_outside_memory_fails_the_thread():
    w = World(1)
    q = w.new_queue(0, "thread", "t")
    w.mem[0].malloc(64, "buf")
    w.queues[q].tasks += [
        Task(TaskKind.COPY, src_addr=MEM_BASE, dst_addr=MEM_BASE + 32, nbytes=32, duration=1e-6),
        Task(TaskKind.COPY, src_addr=MEM_BASE, dst_addr=MEM_BASE + 48, nbytes=32, duration=1e-6),
    ]
    r = run_both(w.program())
    assert r.status == CommStatus.ERROR and int(r.queue_error[0]) == AclError.RT_AICPU_EXCEPTION
    assert int(r.queue_pc[0]) == 1


def test_cli_comm_models(capsys):
    assert main(["run", "--model", "p2p_send_recv", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "ok" and [r["error"] for r in out["ranks"]] == [0, 0]
    assert out["numerics"]["rank1.recvBuf"]["ok"] and out["timeline"][0]["start"] == 0.0
    assert main(["run", "--model", "reduce_scatter", "--ranks", "3", "--json", "--engine", "reference"]) == 0
    assert len(json.loads(capsys.readouterr().out)["ranks"]) == 3
    assert main(["run", "--model", "p2p_send_recv", "--ranks", "4"]) == 2


# -- property: random task programs ------------------------------------------------------------------------------


@hst.composite
def task_programs(draw):
    ranks = draw(hst.integers(1, 3))
    w = World(ranks)
    for r in range(ranks):
        w.mem[r].malloc(256, "buf")
        w.host(r).aclrt_memcpy_h2d(MEM_BASE, np.random.default_rng(r).integers(0, 255, 256, np.uint8).tobytes())
    n_notifies = draw(hst.integers(1, 4))
    notifies = [w.new_notify(0, f"n{i}") for i in range(n_notifies)]
    for qi in range(draw(hst.integers(1, 4))):
        q = w.new_queue(draw(hst.integers(0, ranks - 1)), "thread", f"q{qi}")
        for _ in range(draw(hst.integers(0, 6))):
            kind = draw(hst.sampled_from(["record", "wait", "wait", "copy", "reduce", "kernel"]))
            dur = draw(hst.sampled_from([0.0, 1e-6, 3e-6]))
            if kind == "record":
                t = Task(TaskKind.RECORD, draw(hst.sampled_from(notifies)), duration=dur)
            elif kind == "wait":
                t = Task(
                    TaskKind.WAIT,
                    draw(hst.sampled_from(notifies)),
                    timeout=draw(hst.sampled_from([0.0, 1e-5, 2.0])),
                    duration=dur,
                )
            elif kind == "kernel":
                t = Task(
                    TaskKind.KERNEL,
                    draw(hst.sampled_from(notifies)),
                    error=draw(hst.sampled_from([0, 0, 507018])),
                    duration=dur,
                )
            else:
                n = draw(hst.sampled_from([8, 16, 64]))
                t = Task(
                    TaskKind.COPY if kind == "copy" else TaskKind.REDUCE,
                    src_rank=draw(hst.integers(0, ranks - 1)),
                    src_addr=MEM_BASE + draw(hst.sampled_from([0, 64, 128, 224])),
                    dst_rank=draw(hst.integers(0, ranks - 1)),
                    dst_addr=MEM_BASE + draw(hst.sampled_from([0, 64, 128, 224])),
                    nbytes=n,
                    dtype=int(draw(hst.sampled_from([HcclDataType.FP32, HcclDataType.INT8, HcclDataType.FP16]))),
                    op=int(draw(hst.sampled_from([HcclReduceOp.SUM, HcclReduceOp.MAX, HcclReduceOp.MIN]))),
                    duration=dur,
                )
            w.queues[q].tasks.append(t)
    return w.program(max_steps=200)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(task_programs())
def test_random_task_programs_jax_equals_reference(p):
    run_both(p)


def test_hostile_op_info_files_give_107000_not_a_crash(tmp_path):
    """aclrtBinaryLoadFromFile on a file that is not UTF-8, a folder, JSON nested 100k deep, or a
    100k-digit number: the runtime answers 107000 (binary_loader.cc); the simulator must too."""
    from ascend_jax.aicpu import World

    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\xff\xfe not utf-8")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    num = tmp_path / "num.json"
    num.write_text('{"k": ' + "9" * 100_000 + "}")
    host = World(1).host(0)
    for path in (bad, tmp_path, deep, num):
        assert host.aclrt_binary_load_from_file(str(path))[0] == 107000, path

"""``--trace``: Chrome trace-event JSON of a cube-group lane or a comm run, checked against the
format (:func:`ascend_jax.trace.check_trace`) and against the run's own result."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from ascend_jax.aicpu.reference import TaskKind, run_comm_reference
from ascend_jax.cli import main
from ascend_jax.cube_group.reference import ReferenceInterpreter
from ascend_jax.models import load_model
from ascend_jax.scenario import load_scenario
from ascend_jax.trace import check_trace, comm_trace, count_events, cube_trace, record_cube

ROOT = Path(__file__).resolve().parent.parent


def _run(capsys, tmp_path, *argv):
    """Runs ``ascend-jax run ... --json --trace`` and returns (exit code, result JSON, trace)."""
    path = tmp_path / "t.json"
    code = main(["run", *argv, "--json", "--trace", str(path)])
    out = json.loads(capsys.readouterr().out)
    return code, out, json.loads(path.read_text())


def _slices(trace, name):
    return [e for e in trace["traceEvents"] if e["ph"] == "X" and e["name"] == name]


def _threads(trace):
    return {(e["pid"], e["tid"]): e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "thread_name"}


def test_timed_sample_trace_matches_the_result(capsys, tmp_path):
    code, out, trace = _run(capsys, tmp_path, "--model", "cube_group_sample", "--schedule", "timed")
    assert code == 0
    assert check_trace(trace) == []
    program, _, _ = load_model("cube_group_sample")
    received = [e for log in out["groups"]["qk"]["received"].values() for e in log]
    receives = _slices(trace, "receive")
    assert len(receives) == len(received)
    assert Counter(e["args"]["state"] for e in receives) == Counter(s for _, _, s in received)
    ops = Counter(op.kind for _, aiv_ops in program.aivs for op in aiv_ops)
    for kind in ("alloc", "post", "fake", "quit"):
        assert len(_slices(trace, kind)) == ops[kind], kind
    # every receive has the flow from the write it read, ending on that receive's track
    starts = {e["id"]: e for e in trace["traceEvents"] if e["ph"] == "s"}
    ends = {e["id"]: e for e in trace["traceEvents"] if e["ph"] == "f"}
    assert set(starts) == set(ends) and len(ends) == len(receives)
    for r in receives:
        hits = [f for f in ends.values() if (f["pid"], f["tid"]) == (r["pid"], r["tid"])
                and r["ts"] <= f["ts"] <= r["ts"] + r["dur"]]  # fmt: skip
        assert len(hits) == 1
        src = starts[hits[0]["id"]]
        writer = [w for w in trace["traceEvents"] if w["ph"] == "X" and (w["pid"], w["tid"]) == (src["pid"], src["tid"])
                  and w["ts"] <= src["ts"] <= w["ts"] + w["dur"]]  # fmt: skip
        assert [w["name"] for w in writer] in (["post"], ["fake"], ["quit"])
        assert writer[0]["args"]["queue"] == r["args"]["queue"] and writer[0]["args"]["depth"] == r["args"]["depth"]
    # one track per core: AICs 6..11 and AIVs 0..47, one occupancy counter per queue
    names = set(_threads(trace).values())
    assert names == {f"aic{c} (AIC)" for c in range(6, 12)} | {f"aiv{b} (AIV)" for b in range(48)}
    counters = {e["name"] for e in trace["traceEvents"] if e["ph"] == "C"}
    assert counters == {f"queue {q} occupancy" for q in range(48)}
    assert "MHz" in trace["otherData"]["time_unit"] and trace["otherData"]["matches_run"] is True
    # the time axis is the timing report's: the last slice ends at the kernel's end (µs)
    end = max(e["ts"] + e["dur"] for e in trace["traceEvents"] if e["ph"] == "X")
    assert end == pytest.approx(out["timing"]["kernel_us"], rel=1e-6)


@pytest.mark.parametrize("model", ["cube_group_sample", "merge_example", "barrier_example"])
def test_timed_slices_add_up_to_the_timing_report(model):
    program, _, _ = load_model(model)
    result, events = record_cube(program, "timed", 0)
    trace = cube_trace(program, result, events, "timed")
    assert check_trace(trace) == []
    freq = result.timing["freq_mhz"]
    busy, blocked = defaultdict(float), defaultdict(float)
    for e in trace["traceEvents"]:
        if e["ph"] != "X":
            continue
        core = _threads(trace)[(e["pid"], e["tid"])].split()[0]
        if e["name"] == "blocked":
            blocked[core] += e["dur"] * freq
        elif e["name"] in ("receive", "free", "matmul") or core.startswith("aiv"):
            busy[core] += e["dur"] * freq
    for core, t in result.timing["aic"].items():
        assert busy[f"aic{core}"] == pytest.approx(t["busy_cycles"], abs=0.05)
        assert blocked[f"aic{core}"] == pytest.approx(t["blocked_cycles"], abs=0.05)
    for b, t in result.timing["aiv"].items():
        assert blocked[f"aiv{b}"] == pytest.approx(t["alloc_stall_cycles"] + t["wait_stall_cycles"], abs=0.05)


def test_lockstep_trace_replays_the_received_logs_in_steps(capsys, tmp_path):
    code, out, trace = _run(capsys, tmp_path, "models/merge_example.toml")
    assert code == 0 and check_trace(trace) == []
    assert "steps" in trace["otherData"]["time_unit"]
    threads = _threads(trace)
    per_core = defaultdict(list)
    for e in sorted(_slices(trace, "receive"), key=lambda e: e["ts"]):
        per_core[threads[(e["pid"], e["tid"])].split()[0][3:]].append([e["args"]["queue"], e["args"]["depth"],
                                                                        e["args"]["state"]])  # fmt: skip
    assert dict(per_core) == {k: v for k, v in out["groups"]["g"]["received"].items() if v}
    assert all(float(e["ts"]).is_integer() and e["dur"] >= 1 for e in trace["traceEvents"] if e["ph"] == "X")
    assert max(e["ts"] + e["dur"] for e in trace["traceEvents"] if e["ph"] == "X") == out["steps"]


def test_batch_trace_records_the_chosen_lane_and_random_says_whose_interleaving(capsys, tmp_path):
    argv = ("models/merge_example.toml", "--batch", "4", "--schedule", "random", "--seed", "5", "--trace-lane", "2")
    code, out, trace = _run(capsys, tmp_path, *argv)
    assert code == 0 and check_trace(trace) == []
    meta = trace["otherData"]
    assert (meta["lane"], meta["seed"], meta["run_engine"]) == (2, 7, "jax")
    assert meta["run_steps"] == out["batch"][2]["steps"] and meta["matches_run"] is True
    # the recording replays the JAX engine's own draws for the lane: the same run, step for step
    assert "JAX engine's draws" in meta["interleaving"] and meta["steps"] == meta["run_steps"]


def test_deadlock_trace_has_every_core_and_no_flow_without_a_receive(capsys, tmp_path):
    code, out, trace = _run(capsys, tmp_path, "docs/examples/f5_too_few_fakes.toml")
    assert code == 3 and out["status"] == "deadlock" and check_trace(trace) == []
    assert count_events(trace)["flows"] == len(_slices(trace, "receive")) == 1


def test_recording_changes_nothing():
    program, _, _ = load_model("cube_group_sample")
    for schedule in ("lockstep", "random", "timed"):
        plain = ReferenceInterpreter(program, schedule=schedule, seed=3).run()
        events: list = []
        recorded = ReferenceInterpreter(program, schedule=schedule, seed=3, events=events).run()
        assert events and recorded.outcome() == plain.outcome() and recorded.steps == plain.steps
        assert recorded.timing == plain.timing
        assert (recorded.gm == plain.gm).all()


@pytest.mark.parametrize("model", ["p2p_send_recv", "allreduce"])
def test_comm_trace_has_a_flow_into_every_wait(model, capsys, tmp_path):
    code, out, trace = _run(capsys, tmp_path, "--model", model, "--engine", "reference")
    assert code == 0 and check_trace(trace) == []
    counts = count_events(trace)
    assert sum(v for k, v in counts.items() if k != "flows") == len(out["timeline"])
    program, _, _ = load_model(model)
    result = run_comm_reference(program)
    executed_waits = sum(
        not np.isnan(result.start[q, i])
        for q, qu in enumerate(result.program.queues)  # the tasks as run (kernels may add some)
        for i, t in enumerate(qu.tasks)
        if t.kind == TaskKind.WAIT
    )
    assert counts["flows"] == counts["wait"] == executed_waits > 0
    ranks = {e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "process_name"}
    assert ranks == {f"rank {r}" for r in range(len(out["ranks"]))}


def test_comm_flows_follow_the_notify_rule():
    program, _, _ = load_model("p2p_send_recv")
    trace = comm_trace(run_comm_reference(program))
    slices = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    for f in (e for e in trace["traceEvents"] if e["ph"] == "f"):
        s = next(e for e in trace["traceEvents"] if e["ph"] == "s" and e["id"] == f["id"])
        (src,) = [
            x
            for x in slices
            if (x["pid"], x["tid"]) == (s["pid"], s["tid"]) and x["ts"] <= s["ts"] <= x["ts"] + x["dur"]
        ]
        (dst,) = [  # a zero-length task shares its instant with the next one: the notify tells them apart
            x
            for x in slices
            if (x["pid"], x["tid"]) == (f["pid"], f["tid"])
            and x["ts"] <= f["ts"] <= x["ts"] + x["dur"]
            and x["args"].get("notify") == f["args"]["notify"]
        ]
        assert src["args"]["kind"] in ("record", "kernel") and dst["args"]["kind"] == "wait"
        assert src["args"]["notify"] == dst["args"]["notify"] == f["args"]["notify"]
        assert src["ts"] + src["dur"] <= dst["ts"] + 1e-6  # the record ended before the wait ran


def _ev(**kw):
    return {"name": "a", "ph": "X", "ts": 0.0, "dur": 2.0, "pid": 1, "tid": 1, **kw}


@pytest.mark.parametrize(
    ("events", "problem"),
    [
        ([{"ph": "X", "ts": 0, "pid": 1, "tid": 1}], "missing"),
        ([_ev(ts="0")], "not a finite number"),
        ([_ev(dur=-1.0)], "dur"),
        ([_ev(), _ev(ts=1.0, dur=2.0)], "overlaps"),
        ([_ev(), {"name": "m", "cat": "c", "ph": "s", "id": 1, "ts": 1.0, "pid": 1, "tid": 1}], "'s' and 0 'f'"),
        (
            [
                _ev(),
                {"name": "m", "cat": "c", "ph": "f", "id": 1, "ts": 1.0, "pid": 1, "tid": 1},
                {"name": "m", "cat": "c", "ph": "s", "id": 1, "ts": 9.0, "pid": 1, "tid": 1},
            ],
            "before it starts",
        ),  # fmt: skip
        ([{"name": "B", "ph": "B", "ts": 0.0, "pid": 1, "tid": 1}], "never end"),
        ([{"name": "q", "ph": "C", "ts": 0.0, "pid": 1, "args": {"n": "x"}}], "counter values"),
        ([{"name": "q", "ph": "Q", "ts": 0.0}], "unknown phase"),
    ],
)
def test_checker_rejects_broken_traces(events, problem):
    problems = check_trace({"traceEvents": events})
    assert problems and problem in problems[0]


def test_checker_accepts_nested_slices_and_bound_flows():
    events = [_ev(dur=10.0), _ev(ts=2.0, dur=3.0), _ev(tid=2, ts=20.0, dur=1.0)]
    events += [{"name": "m", "cat": "c", "ph": "s", "id": 1, "ts": 3.0, "pid": 1, "tid": 1},
               {"name": "m", "cat": "c", "ph": "f", "bp": "e", "id": 1, "ts": 20.5, "pid": 1, "tid": 2}]  # fmt: skip
    assert check_trace({"traceEvents": events}) == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--trace", "{tmp}"], "--trace = '{tmp}': is a folder"),
        (["--trace", "{tmp}/no/t.json"], "does not exist"),
        (
            ["--batch", "2", "--trace", "{tmp}/t.json", "--trace-lane", "2"],
            "--trace-lane = 2: must be a lane of the batch, 0..1",
        ),
        (["--trace-lane", "0"], "chooses the lane of --trace or --report"),
        (["--trace-lane", "-1", "--trace", "{tmp}/t.json"], "--trace-lane = -1"),
    ],
)
def test_bad_trace_flags_exit_2_and_write_nothing(argv, message, capsys, tmp_path):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["run", "models/merge_example.toml", *argv]) == 2
    assert message.replace("{tmp}", str(tmp_path)) in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_comm_rejects_trace_lane(capsys, tmp_path):
    assert main(["run", "--model", "p2p_send_recv", "--trace", str(tmp_path / "t.json"), "--trace-lane", "0"]) == 2
    assert "--trace-lane = 0: does not apply to comm model" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("schedule", ["lockstep", "random", "timed"])
def test_a_returning_sync_all_is_recorded(schedule, tmp_path):
    # The AIV-only SyncAll returns (the all-core form of f14 hangs); recording used to fail on it.
    text = (ROOT / "docs" / "examples" / "f14_sync_all_before_quit.toml").read_text()
    assert text.count("aiv_only = false") == 2
    path = tmp_path / "f14_aiv_only.toml"
    path.write_text(text.replace("aiv_only = false", "aiv_only = true"))
    program = load_scenario(path)
    result, events = record_cube(program, schedule, 0)
    assert result.status.name == "OK"
    syncs = [e for e in events if e["name"] == "sync_all"]
    assert len(syncs) == 2 and {e["core"] for e in syncs} == {"aiv0", "aiv1"}
    trace = cube_trace(program, result, events, schedule)
    assert check_trace(trace) == []

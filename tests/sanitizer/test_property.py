"""Property: random producer / consumer programs are clean with every wait, and a planted missing
wait is reported as a race of that AIV, the same under every schedule.

Each AIV, per block: loads a tile of ``x`` and stores it into its workspace ``w``, posts a matmul
``c = w @ b`` to the AICs, waits for it, then loads ``c`` and stores it into ``out``. Dropping the
wait of a block makes two races: the load of ``c`` with the matmul writing it, and (when a block
follows) the next store into ``w`` with the matmul still reading it. With two AIVs or more, AIV 0
may also hand a tile to AIV 1 through ``shared``, ordered by a GroupBarrier (0 arrives after its
store, 1 waits before its load) or by a SyncAll, or (planted) by nothing.
"""

from __future__ import annotations

import hypothesis.strategies as st
import numpy as np
from hypothesis import given, settings

from ascend_jax.cube_group.program import CubeGroupKernel
from ascend_jax.sanitizer import sanitize

T = 16  # tile edge


def build(aivs: int, aics: int, blocks: list[int], dropped: set[tuple[int, int]], handoff: str = "none"):
    k = CubeGroupKernel(chip="910B1", name="producer-consumer")
    tiling = dict(M=T, N=T, Ka=T, Kb=T, singleCoreM=T, singleCoreN=T, singleCoreK=T, baseM=T, baseN=T, baseK=T)
    g = k.create_cube_res_group(
        "g", 0, 2 * aics, aivs, "matmul",
        matmul=dict(a="float16", b="float16", c="float32", bias="float32"), tiling=tiling,
    )  # fmt: skip
    x = k.alloc("x", (aivs, T, T), "float16", "random", seed=1)
    b = k.alloc("b", (T, T), "float16", "random", seed=2)
    w = k.alloc("w", (aivs, T, T), "float16")
    c = k.alloc("c", (aivs, T, T), "float32")
    out = k.alloc("out", (aivs, max(blocks), T, T), "float32")
    shared = k.alloc("shared", (T, T), "float16")
    bar = k.group_barrier("handoff", 1, 1) if handoff == "barrier" else None
    for a in range(aivs):
        aiv = k.aiv(a)
        aiv.assign_queue(g, a)
        h = aiv.vec.buffer("h", T, T, "float16")
        f = aiv.vec.buffer("f", T, T, "float32")
        for j in range(blocks[a]):
            aiv.vec.load(h, x.addr + a * T * T * 2)
            aiv.vec.store(w.addr + a * T * T * 2, h)
            fields = dict(tailM=T, tailN=T, tailK=T, aAddr=w.addr + a * T * T * 2, bAddr=b.addr,
                          cAddr=c.addr + a * T * T * 4)  # fmt: skip
            off = aiv.post(g, fields)
            if (a, j) not in dropped:
                aiv.wait(g, off)
            aiv.vec.load(f, c.addr + a * T * T * 4)
            aiv.vec.store(out.addr + (a * max(blocks) + j) * T * T * 4, f)
        aiv.quit(g)  # before the hand-off: a SyncAll before it could stall the AIC serving other queues
        if a == 0 and handoff != "none":
            aiv.vec.store(shared.addr, h)
        if handoff == "barrier" and a in (0, 1):
            aiv.arrive(bar, 0) if a == 0 else aiv.barrier_wait(bar, 0)
        elif handoff == "sync_all":  # every AIV with a program takes part
            aiv.sync_all()
        if a == 1 and handoff != "none":
            aiv.vec.load(h, shared.addr)
    return k.compile()


@st.composite
def programs(draw):
    aics = draw(st.integers(1, 2))
    aivs = draw(st.integers(aics, 4))
    blocks = draw(st.lists(st.integers(1, 3), min_size=aivs, max_size=aivs))
    slots = [(a, j) for a in range(aivs) for j in range(blocks[a])]
    dropped = draw(st.sets(st.sampled_from(slots), max_size=2)) if draw(st.booleans()) else set()
    handoff = draw(st.sampled_from(("none", "barrier", "sync_all", "missing"))) if aivs >= 2 else "none"
    seed = draw(st.integers(0, 2**16))
    return aivs, aics, blocks, dropped, handoff, seed


@settings(max_examples=25, deadline=None)
@given(programs())
def test_planted_missing_wait_is_reported_and_the_twin_is_clean(case):
    aivs, aics, blocks, dropped, handoff, seed = case
    program = build(aivs, aics, blocks, dropped, handoff)
    reports = [sanitize(program, schedule=s, seed=seed).to_json() for s in ("lockstep", "random", "timed")]
    assert reports[1] == reports[0] and reports[2] == reports[0]
    found = reports[0]["findings"]
    assert all(f["tool"] == "racecheck" for f in found)
    racing = {o["core"] for f in found for o in f["ops"] if o["core"].startswith("aiv")}
    want = {f"aiv{a}" for a, _ in dropped} | ({"aiv0", "aiv1"} if handoff == "missing" else set())
    assert racing == want
    handed = [f for f in found if f["ops"][0]["tensor"] == "shared"]
    assert len(handed) == (handoff == "missing")
    for a, j in dropped:  # the load of c after the post races with the matmul that writes c
        assert any(
            f["ops"][0]["core"] == f"aiv{a}" and f["ops"][0]["op"] == "load" and f["ops"][1]["op"] == "matmul.C"
            for f in found
        ), (a, j, found)
    if dropped or handoff == "missing":
        twin = build(aivs, aics, blocks, set(), "barrier" if handoff == "missing" else handoff)
        assert sanitize(twin, schedule="random", seed=seed).findings == []


def test_the_jax_engine_reports_the_same_findings_as_the_reference():
    """The JAX engine keeps no access log: a JAX run's findings are the analysis of the observed
    reference run of its program (``ascend-jax sanitize --engine jax``). That stands for the JAX
    engine when each of its lanes makes the run the reference observed (the same received logs,
    slot states and status), and the findings do not depend on the seed; a clean program also ends
    with the same output in both engines (up to the float32 summation order of the matmuls)."""
    from ascend_jax import simulate

    cases = [  # one batch: the lanes share groups, barriers and tensors
        (2, 1, [2, 1], set(), "sync_all"),
        (2, 1, [2, 1], {(0, 1)}, "sync_all"),
        (2, 1, [1, 2], set(), "missing"),
        (2, 1, [2, 2], set(), "none"),
    ]
    programs = [build(*case) for case in cases]
    seeds = [3, 11, 5, 8]
    batch = simulate(programs, schedule="random", seeds=seeds)
    for i, (program, seed) in enumerate(zip(programs, seeds, strict=True)):
        observed = sanitize(program, schedule="random", seed=seed, cache=False)
        assert batch[i].outcome() == observed.result.outcome(), i
        for other in (1, 2, 99):  # another lane's seed: the same findings
            assert sanitize(program, schedule="random", seed=other).to_json() == observed.to_json(), (i, other)
        if not observed.findings:
            np.testing.assert_allclose(batch[i].tensor("out"), observed.result.tensor("out"), rtol=1e-4, atol=1e-6)
    counts = [len(sanitize(p).findings) for p in programs]
    assert counts[0] == 0 and counts[3] == 0 and counts[1] > 0 and counts[2] > 0

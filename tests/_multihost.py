"""The batch of the multi-process test (``tests/cube_group/engine/test_devices.py``) and its worker.

Run as a script, this is one process of a multi-process run: it joins through the
``ASCEND_JAX_*`` variables (``simulate`` reads them), runs :func:`batch` and prints, as the last
stdout line, the JSON of :func:`lanes_json`. The test runs the same batch in one
process and compares lane by lane.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import ascend_jax as aj


def kernel(skip: int, delay: int) -> aj.CubeGroupProgram:
    """One AIC serving two queues with the matmul callback: each AIV asks for C_q = A @ B (32x32
    tiles of random float16 A and B) into its own tensor ``c{q}``. AIV 0's message has skipCnt
    ``skip`` (1: the AIC waits for a FAKE follower that never comes, a deadlock after C_0 only);
    AIV 1 posts after ``delay`` cycles and then tests its slot with a Wait<false>."""
    k = aj.CubeGroupKernel(max_steps=500)
    k.alloc("a", (32, 32), "float16", init="random")
    k.alloc("b", (32, 32), "float16", init="random")
    tiling = dict(
        M=32, N=32, Ka=32, Kb=32, singleCoreM=32, singleCoreN=32, singleCoreK=32, baseM=32, baseN=32, baseK=16
    )
    mt = dict(a="float16", b="float16", c="float32", bias="float32")
    g = k.create_cube_res_group("g", 0, 2, 2, callback="matmul", matmul=mt, tiling=tiling)
    for q in range(2):
        k.alloc(f"c{q}", (32, 32), "float32")
        a = k.aiv(q)
        a.assign_queue(g, q)
        if q == 1 and delay:
            a.delay(delay)
        a.post(g, fields={"skipCnt": skip if q == 0 else 0, "aAddr": "a", "bAddr": "b", "cAddr": f"c{q}"})
        if q == 1:
            a.wait(g, sync=False)
        a.quit(g)
    return k.compile()


def batch() -> aj.BatchResult:
    """Ten different lanes (lane tables sharded, GM sharded) under the random schedule, in chunks
    of six lanes rounded up to the device count (the last chunk padded). One compilation: the
    test's time is mostly XLA compiling the loop in each process."""
    return aj.simulate([kernel(skip=i % 2, delay=i % 3) for i in range(10)], schedule="random", seeds=7, chunk_size=6)


def lanes_json(res: aj.BatchResult) -> list[dict]:
    """Per lane: the result JSON (status, steps, received logs, slot states, blocked cores, error)
    plus the raw slot states, Wait<false> results, seed and a digest of the final GM bytes."""
    out = []
    for r in res:
        out.append(
            {
                **r.to_json(),
                "slot_state": r.slot_state.tolist(),
                "wait_results": {str(k): v for k, v in r.wait_results.items()},
                "seed": r.seed,
                "gm_sha256": None if r.gm is None else hashlib.sha256(r.gm.tobytes()).hexdigest(),
            }
        )
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import jax

    result = batch()  # simulate joins the run the ASCEND_JAX_* variables describe
    info = {"processes": jax.process_count(), "index": jax.process_index(), "devices": len(jax.devices())}
    try:  # a multi-process run uses every device: a smaller count is refused before compiling
        aj.simulate(kernel(0, 0), devices=2)
    except aj.ConfigError as e:
        info["devices=2"] = str(e)
    try:  # processes that disagree on the lanes (here a message field) are refused before running
        aj.simulate([kernel(skip=jax.process_index(), delay=0)] * 4)
    except aj.ConfigError as e:
        info["mismatch"] = str(e)
    print(json.dumps({"info": info, "lanes": lanes_json(result)}))

"""Ascend's CubeGroupCustom sample as a model (spec S12): 6 AICs serving 48 AIV queues.

Run it with ``ascend-jax run --model cube_group_sample [--json]``.

Shape of the sample: a MIX 1:2 kernel on 910B1; ``CreateCubeResGroup`` with blockStart 12 and
blockSize 12 (AICs 6..11), msgQueueSize 48 (P = 8 queues per AIC), every AIV binds queue
``GetBlockIdx()``; the Matmul type is half x half -> float (bias float) and the 128-byte message
carries the Matmul arguments. Each AIV posts

* a funcID 0 task: one [64 x 128] x [128 x 64] matmul into its own C tile;
* in every AIC's block, columns 0..3 then merge: column 0 posts a funcID 1 leader with skipCnt 3
  (four matmuls at aGap / cGap strides, the last with lastTailM = 40 rows) and columns 1..3 post
  FAKE; columns 4..7 have nothing more to post;
* then a QUIT.

The tile sizes are this model's choice (the sample's own sizes are not public): A is
``[72, 64, 128]`` half (48 single tiles + 6 x 4 merged), B ``[128, 64]`` half shared by every task
(bGap 0), C ``[72, 64, 64]`` float. :func:`expected` is the float64 numpy answer.
"""

from __future__ import annotations

import types

import numpy as np

from ascend_jax import CUBE_MATMUL_MSG, CubeGroupKernel, CubeGroupProgram

M, N, K = 64, 64, 128
BLOCK_START, BLOCK_SIZE, QUEUES = 12, 12, 48
P = QUEUES // (BLOCK_SIZE // 2)
MERGE, LAST_TAIL_M = 4, 40
TILES = QUEUES + (BLOCK_SIZE // 2) * MERGE

TILING = dict(M=M, N=N, Ka=K, Kb=K, singleCoreM=M, singleCoreN=N, singleCoreK=K, baseM=64, baseN=64, baseK=64)
MATMUL = dict(a="float16", b="float16", c="float32", bias="float32")


def build(seed: int = 0, protocol_only: bool = False) -> CubeGroupProgram:
    """The sample kernel; A and B are uniform in [-1, 1) (as half) from ``seed``.

    ``protocol_only``: the same messages with the ``merge`` callback and no Matmul (the sample's
    protocol without compute, for throughput benchmarks).
    """
    k = CubeGroupKernel(chip="910B1", name="cube_group_sample" + ("-protocol" if protocol_only else ""))
    if protocol_only:  # same addresses in the messages, but no GM to carry
        a = b = c = types.SimpleNamespace(addr=0x10000)
    else:
        a = k.alloc("a", (TILES, M, K), "float16", "random", seed)
        b = k.alloc("b", (K, N), "float16", "random", seed + 1)
        c = k.alloc("c", (TILES, M, N), "float32")
    if protocol_only:
        g = k.create_cube_res_group("qk", BLOCK_START, BLOCK_SIZE, QUEUES, "merge", CUBE_MATMUL_MSG)
    else:
        g = k.create_cube_res_group(
            "qk", BLOCK_START, BLOCK_SIZE, QUEUES, "matmul", CUBE_MATMUL_MSG, matmul=MATMUL, tiling=TILING
        )
    a_tile, c_tile = M * K * 2, M * N * 4  # bytes per tile
    for q in range(QUEUES):
        aiv = k.aiv(q)
        aiv.assign_queue(g, q)
        aiv.post(g, {"funcID": 0, "aAddr": a.addr + q * a_tile, "bAddr": b.addr, "cAddr": c.addr + q * c_tile})
        col = q % P
        first = QUEUES + (q // P) * MERGE
        if col == 0:
            aiv.post(
                g,
                {
                    "funcID": 1,
                    "skipCnt": MERGE - 1,
                    "aAddr": a.addr + first * a_tile,
                    "bAddr": b.addr,
                    "cAddr": c.addr + first * c_tile,
                    "aGap": M * K,
                    "bGap": 0,
                    "cGap": M * N,
                    "lastTailM": LAST_TAIL_M,
                },
            )
        elif col < MERGE:
            aiv.fake(g)
        aiv.quit(g)
    return k.compile()


def expected(program: CubeGroupProgram) -> dict[str, np.ndarray]:
    """C in float64 numpy: ``C[t] = A[t] @ B``, the last merged tile of each AIC only its first 40 rows."""
    a = program.gm.read("a").astype(np.float64)
    b = program.gm.read("b").astype(np.float64)
    c = a @ b
    for aic in range(BLOCK_SIZE // 2):
        c[QUEUES + aic * MERGE + MERGE - 1, LAST_TAIL_M:] = 0.0
    return {"c": c}

"""The official CubeGroupCustom sample's protocol (spec S12), with its free-and-skip callback.

Run it with ``ascend-jax run --model cube_group_custom [--json]``.

A MIX 1:2 kernel on 910B1: ``CreateCubeResGroup`` with blockStart 12 and blockSize 12 (AICs
6..11), msgQueueSize 48 (P = 8 queues per AIC), the sample's own 128-byte ``CubeMsgBody``
(``message.SAMPLE_MSG_BODY``: aivStartTime, cGap, five org shapes, enPartialSum; no skipCnt), and
the built-in ``sample`` callback (it frees and skips by ``funcId``; no Matmul). Every message
carries the sample's initial values (org shapes 2, 3, 4; the rest 0). Every AIV binds queue
``GetBlockIdx()`` and then

* AIV 0 posts a funcID 1 merge leader (its callback skips the next 3 columns);
* AIVs 1..3 post FAKE (the followers the leader covers);
* every other AIV posts one funcID 0 message;
* each AIV waits for its message to be freed (``Wait<true>``), then sends QUIT.

:func:`expected_received` is the received order the sample's description implies; the tests
compare the simulated logs with it. ``cube_group_sample`` is a different model: this protocol's
shape with real Matmul work (the ``matmul`` callback) and a merge in every AIC.
"""

from __future__ import annotations

from ascend_jax import SAMPLE_LEADER_FUNC_ID, SAMPLE_MERGE, SAMPLE_MSG_BODY, CubeGroupKernel, CubeGroupProgram

BLOCK_START, BLOCK_SIZE, QUEUES = 12, 12, 48
P = QUEUES // (BLOCK_SIZE // 2)


def build(seed: int = 0) -> CubeGroupProgram:
    """The sample kernel (``seed`` is unused: the protocol draws nothing at random)."""
    del seed
    k = CubeGroupKernel(chip="910B1", name="cube_group_custom")
    g = k.create_cube_res_group("qk", BLOCK_START, BLOCK_SIZE, QUEUES, "sample", SAMPLE_MSG_BODY)
    shapes = {"mOrgShape": 2, "nOrgShape": 3, "kaOrgShape": 4}  # the sample's message initialisers
    for q in range(QUEUES):
        aiv = k.aiv(q)
        aiv.assign_queue(g, q)
        if q == 0:  # the sample's leader skips a fixed SAMPLE_MERGE columns; its message has no skipCnt
            aiv.post(g, {"funcId": SAMPLE_LEADER_FUNC_ID, **shapes})
        elif q <= SAMPLE_MERGE:
            aiv.fake(g)
        else:
            aiv.post(g, {"funcId": 0, **shapes})
        aiv.wait(g)
        aiv.quit(g)
    return k.compile()


def expected_received() -> dict[int, list[tuple[int, int, str]]]:
    """Absolute AIC index -> the (queue, depth, state) sequence its loop receives: row 0's messages
    (AIC 6 skips the three FAKE columns after the leader), then row 1's QUITs."""
    out = {}
    for k in range(BLOCK_SIZE // 2):
        queues = range(k * P, (k + 1) * P)
        row0 = [(q, 0, "VALID") for q in queues if not (k == 0 and 1 <= q <= SAMPLE_MERGE)]
        out[BLOCK_START // 2 + k] = row0 + [(q, 1, "QUIT") for q in queues]
    return out

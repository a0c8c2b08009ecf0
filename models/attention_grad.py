"""Attention backward (dQ, dK, dV) on a cube resource group, the AIVs computing the softmax gradient.

Run it with ``ascend-jax run --model attention_grad [--schedule timed] [--json]`` (one lane runs in
the reference interpreter, ``--batch N`` in the JAX engine); options with ``--model-arg NAME=VALUE``
(e.g. ``--model-arg causal=true --model-arg assign=balanced --model-arg merge=true``).

The workload of Ascend's FlashAttentionScoreGrad (ops-transformer, ``attention/
flash_attention_score_grad``; the general template ``flash_attention_score_grad_s1s2_bn2gs1s2.h``
splits B, N, S1 and S2 into s1 x s2 blocks over the cores), written here as a resource-group
kernel. For inputs Q, K, V, dO ``[B, H, S, D]`` (float16 or bfloat16), the forward's output O and
its row log-sum-exp ``lse`` ``[B, H, S1]`` (float32), and ``scale = 1 / sqrt(D)``:

    P = exp(Q K^T * scale - lse)        (zero above the diagonal when causal)
    dV = P^T dO,   dP = dO V^T,   dS = P * (dP - rowsum(dO * O)),
    dQ = dS K * scale,   dK = dS^T Q * scale

The (b, h, s1 block, s2 block) blocks (causal: those on or below the diagonal; S2 blocks outer,
S1 blocks inner, as the kernel's ``InitIndex`` walks them) go to the AIVs, AIV ``a`` bound to queue
``a``, AIC ``k`` of the group serving ``P = ceil(aivs / aics)`` adjacent queues (``assign``):

* ``"round_robin"`` (default): block ``t`` of the list to queue ``t % aivs``. Every queue gets the
  same number of blocks, give or take one, but the ``T mod aivs`` queues with one more are the
  first ones, so they pile up on the first AICs.
* ``"balanced"``: the list is cut into ``aics`` contiguous runs whose lengths differ by at most
  one, and each AIC deals its run round robin over its queues: the AICs' block counts differ by
  at most one (every non-empty block costs an AIC the same five matmuls).

For each block an AIV

1. posts two matmul tasks to its queue: ``S = Q_i K_j^T`` and ``dP = dO_i V_j^T`` into its own
   float32 workspaces (the ``matmul`` callback runs each one's IterateAll);
2. waits for the S task, then in slices of ``vec_rows`` rows (the UB holds a slice, not the block)
   loads S, computes ``P = exp(S * scale - lse)`` (``select`` with the causal keep-mask on diagonal
   blocks), casts P to the input type and stores it to its P workspace;
3. waits for the dP task (first slice), loads dP, dO and O, computes ``rowsum(dO * O)`` in float32
   and ``dS * scale = P * (dP - rowsum) * scale``, casts it and stores it to its dS workspace;
4. posts ``dV_j += P^T dO_i``, ``dQ_i += dS K_j`` and ``dK_j += dS^T Q_i`` (atomic adds in float32
   into zeroed outputs: dQ over s2 blocks, dK and dV over s1 blocks), then waits for the last of
   them (an AIC serves a queue in order, so the earlier two are done too) before the next block
   overwrites its workspaces.

Merging (``merge``). At its ``n``-th block, every column of an AIC posts its ``n``-th five messages,
so the ``n``-th S posts of the AIC's columns share one row of its slots. A run of adjacent columns
whose ``n``-th blocks lie at one stride in Q and K (consecutive S1 blocks of one S2 block: Q rows
``block_s1`` apart, the same K / V rows) becomes one task: the first column posts a leader with
``skipCnt = k`` and the gaps (``aGap`` / ``bGap`` / ``cGap`` in elements), the next k post FAKE, and
the callback runs the k + 1 matmuls, freeing each column's slot right after its own matmul (so a
follower's wait on its FAKE returns when its own tile is done). This is correct without a barrier
for the S and dP tasks, whose inputs (Q, K, V, dO) are in GM before the kernel starts, and for dQ
and dK if each follower first posts its own dV (VALID, after storing P and dS): the AIC serves its
slots row by row, so it has received that dV, and the follower has stored its dS, before it reaches
the leader's dQ in the next row. The dV posts cannot merge that way: the callback runs a follower's
matmul before it looks at the follower's FAKE, so nothing orders the follower's P store before the
leader's merged dV. ``merge_dv`` merges them behind a ``GroupBarrier`` per run (followers arrive
after storing dS, the leader waits before posting); ``dv_barrier=False`` drops it (a race that
``follower_delay`` makes visible). :func:`plan` gives the layout.

Numerics: Q K^T and dO V^T are exact products with float32 accumulation; P and dS are rounded once
to the input type before the cube unit multiplies them, so dQ, dK and dV carry about one input
rounding: the stated tolerance is 2 unit roundoffs of the input type (relative L2: 9.8e-4 for
float16, 7.8e-3 for bfloat16; measured about 2e-4 and 1.7e-3 at the default shape) against :func:`expected`, the float64 numpy backward of the same
inputs. Not modelled: dropout, pse, the forward's separate max / sum inputs, double-buffered
workspaces, and the final cast of dQ / dK / dV to the input type.

Roundings the tolerance leaves out. The kernel reads O, the forward's output, rounded to the input
type (as a device stores it). :func:`expected` recomputes O in float64, the report's float64 replay
reads the stored O (each entry's ``reference_shares`` says so). O enters only through
``rowsum(dO * O)``, which nearly cancels ``dP`` where the softmax is close to one-hot, so O's
rounding is amplified as the logits grow (``qk_scale``; dO is an input drawn in the input type, the
same in both references). Measured at the default shape, float16, seed 0, relative L2 of dQ (dK
alike) against :func:`expected`, and how much of it O's rounding alone gives (the float64
backward with O rounded)::

    qk_scale   max |Q K^T|   dQ error   O's rounding alone   dQ against the replay
    1          13            2.1e-4     1.7e-5               2.1e-4
    4          202           5.1e-4     4.6e-4               2.3e-4
    8          807           9.3e-4     9.2e-4               2.4e-4
    10.5       1,390         1.75e-3    1.74e-3              2.1e-4
    (bfloat16 at 10.5: 1.15e-2 against 7.8e-3; 1.14e-2 from O)

So beyond about ``qk_scale = 8`` the error is above the tolerance: the numpy check fails, and the
report's verdict with it (the two agree; the reason names the numpy figure), though the kernel's
own roundings (the replay column) stay at 2e-4. That is the honest answer: with O stored in the
input type, the backward is not accurate to two roundings at such logits.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ascend_jax import CUBE_MATMUL_MSG, ConfigError, CubeGroupKernel, CubeGroupProgram

#: Unit roundoff of the input types.
UNIT_ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8}
#: Relative-L2 tolerance of dQ, dK, dV against the float64 backward: two unit roundoffs of the
#: input type (P and dS are each rounded once to it; measured errors are about 0.4 of one).
TOLERANCE = {t: 2 * u for t, u in UNIT_ROUNDOFF.items()}
#: Elements of one float32 vector slice (32 KiB, the vector basic block of the FA/FAG design note).
VEC_SLICE_ELEMS = 8192


def _check(name: str, value: int, rule: bool, text: str, fix: str = "") -> None:
    if not rule:
        raise ConfigError(f"attention_grad.{name}", value, text, fix)


ASSIGNS = ("round_robin", "balanced")


class Step(NamedTuple):
    """What one queue posts for the S, dP, dQ and dK tasks (and with ``merge_dv`` dV) of its ``n``-th block.

    ``role`` is ``"single"`` (its own tasks, ``skipCnt`` 0), ``"leader"`` (its own and the next
    ``skip`` columns' tasks, ``skipCnt = skip``, gaps in elements of Q / K rows) or ``"follower"``
    (a FAKE: the leader of its row computes its tasks). ``leader`` is the leader's queue and
    ``position`` the column's place in the run (0 for the leader, 1..skip for its followers).
    """

    role: str
    skip: int = 0
    q_gap_rows: int = 0
    k_gap_rows: int = 0
    leader: int = -1
    position: int = 0


class Plan(NamedTuple):
    """The layout of one build.

    Attributes:
      blocks: every (b, h, i, j) block (causal: on or below the diagonal), S2 blocks outer.
      queues: per queue (AIV ``a`` is bound to queue ``a``) its blocks in posting order.
      aic_queues: per AIC of the group the queues it serves (``P`` adjacent columns).
      steps: per queue one :class:`Step` per block: its role in the S, dP, dQ and dK posts (and
        with ``merge_dv`` the dV posts).
      merge_dv: whether the dV posts merge too.
    """

    blocks: tuple[tuple[int, int, int, int], ...]
    queues: tuple[tuple[tuple[int, int, int, int], ...], ...]
    aic_queues: tuple[tuple[int, ...], ...]
    steps: tuple[tuple[Step, ...], ...]
    merge_dv: bool = False

    def blocks_per_aic(self) -> list[int]:
        """Blocks of each AIC of the group (the sum over the queues it serves)."""
        return [sum(len(self.queues[q]) for q in qs) for qs in self.aic_queues]

    @property
    def fakes(self) -> int:
        """FAKE messages posted: per follower step four (S, dP, dQ, dK), five with ``merge_dv``."""
        return (5 if self.merge_dv else 4) * sum(s.role == "follower" for st in self.steps for s in st)

    @property
    def valid(self) -> int:
        """VALID messages posted: five per block, less the FAKEs."""
        return 5 * len(self.blocks) - self.fakes


def block_list(batch: int, heads: int, n1: int, n2: int, causal: bool) -> list[tuple[int, int, int, int]]:
    """The (b, h, i, j) blocks of ``n1 x n2`` block grids (causal: ``j <= i``), S2 blocks outer,
    S1 blocks inner, as the kernel's ``InitIndex`` walks them."""
    return [
        (b, h, i, j)
        for b in range(batch)
        for h in range(heads)
        for j in range(n2)
        for i in range(n1)
        if not causal or j <= i
    ]


def aic_queues(aics: int, aivs: int) -> list[tuple[int, ...]]:
    """Queues of each AIC of the group: ``P = ceil(aivs / aics)`` adjacent ones each, the last AIC
    the rest (docs/model/cube-groups.md)."""
    p = -(-aivs // aics)
    return [tuple(range(k * p, min((k + 1) * p, aivs))) for k in range(aics)]


def plan(
    batch: int,
    heads: int,
    n1: int,
    n2: int,
    causal: bool,
    aics: int,
    aivs: int,
    assign: str = "round_robin",
    merge: bool = False,
    rows: tuple[int, int] = (1, 1),
    merge_dv: bool = False,
) -> Plan:
    """Which queue handles which block, and which posts merge (module docstring).

    Args:
      batch, heads: B and H.
      n1, n2: blocks along S1 and S2 (``S1 / block_s1``, ``S2 / block_s2``).
      causal: keep only blocks with ``j <= i``.
      aics, aivs: the group's AICs and queues (one AIV per queue).
      assign: ``"round_robin"`` (block ``t`` to queue ``t % aivs``) or ``"balanced"`` (equal
        contiguous runs per AIC, each dealt round robin over the AIC's queues).
      merge: merge the posts of adjacent columns of one AIC whose blocks lie at one address
        stride (``skipCnt`` + FAKEs; module docstring).
      rows: (block_s1, block_s2), only to express the merge gaps in Q / K rows.
      merge_dv: the dV posts merge too (same runs; only changes :attr:`Plan.fakes`).
    """
    blocks = block_list(batch, heads, n1, n2, causal)
    per_aic = aic_queues(aics, aivs)
    if assign == "round_robin":
        queues = [blocks[a::aivs] for a in range(aivs)]
    else:
        served = [qs for qs in per_aic if qs]
        runs = np.array_split(np.arange(len(blocks)), len(served))
        queues = [[] for _ in range(aivs)]
        for qs, run in zip(served, runs, strict=True):
            for m, q in enumerate(qs):
                queues[q] = [blocks[int(t)] for t in run[m :: len(qs)]]
    steps: list[list[Step]] = [[Step("single")] * len(queues[q]) for q in range(aivs)]

    def _addr(blk: tuple[int, int, int, int]) -> tuple[int, int]:
        b, h, i, j = blk  # first row of the block in Q / dO [B*H*S1, D] and in K / V [B*H*S2, D]
        return ((b * heads + h) * n1 + i) * rows[0], ((b * heads + h) * n2 + j) * rows[1]

    if merge:
        for qs in per_aic:
            for n in range(max((len(queues[q]) for q in qs), default=0)):
                c = 0
                while c < len(qs):
                    run = [qs[c]]
                    if n < len(queues[qs[c]]):
                        a0 = _addr(queues[qs[c]][n])
                        unit = None
                        while c + len(run) < len(qs) and n < len(queues[qs[c + len(run)]]):
                            a = _addr(queues[qs[c + len(run)]][n])
                            if unit is None:
                                unit = (a[0] - a0[0], a[1] - a0[1])
                                if min(unit) < 0:  # the gaps are unsigned
                                    break
                            elif a != (a0[0] + len(run) * unit[0], a0[1] + len(run) * unit[1]):
                                break
                            run.append(qs[c + len(run)])
                    if len(run) > 1:
                        steps[run[0]][n] = Step("leader", len(run) - 1, *unit, leader=run[0])
                        for m, q in enumerate(run[1:], 1):
                            steps[q][n] = Step("follower", len(run) - 1, *unit, leader=run[0], position=m)
                    c += len(run)
    return Plan(
        tuple(blocks), tuple(tuple(q) for q in queues), tuple(per_aic), tuple(tuple(s) for s in steps), merge_dv
    )


def build(
    seed: int = 0,
    *,
    batch: int = 1,
    heads: int = 1,
    s1: int = 128,
    s2: int = 128,
    d: int = 64,
    block_s1: int = 64,
    block_s2: int = 64,
    causal: bool = False,
    dtype: str = "float16",
    aics: int = 2,
    aivs: int = 4,
    wait_qk: bool = True,
    vec_rows: int | None = None,
    chip: str = "910B1",
    assign: str = "round_robin",
    merge: bool = False,
    merge_dv: bool = False,
    dv_barrier: bool = True,
    follower_delay: int = 0,
    qk_scale: float = 1.0,
    inject_nan: bool = False,
    lse_offset: float = 0.0,
) -> CubeGroupProgram:
    """The kernel for one shape; Q, K, V, dO uniform in [-1, 1) from ``seed`` (rounded to ``dtype``).

    Args:
      batch, heads, s1, s2, d: the attention shape (B, H, S1, S2, D).
      block_s1, block_s2: the s1 x s2 block one AIV handles at a time (multiples of 16 dividing
        S1 / S2; equal when ``causal``).
      causal: keep only key positions <= query position (top-left aligned).
      dtype: ``float16`` or ``bfloat16`` inputs (float32 accumulation and outputs).
      aics, aivs: AICs of the group (from AIC 0) and AIVs posting to it (one queue each).
      vec_rows: rows of one vector slice (a divisor of ``block_s1``); default: the most rows with
        ``rows x block_s2 <= VEC_SLICE_ELEMS``. Fewer rows shrink the UB buffers (e.g. D = 128,
        causal, 128 x 128 blocks: 32 rows fit the 192 KiB UB, 64 do not).
      wait_qk: False drops the AIV's wait on the Q K^T task before it reads S (a race: P is
        computed from whatever the S workspace holds).
      chip: chip preset.
      assign: task-to-queue assignment, ``"round_robin"`` or ``"balanced"`` (:func:`plan`).
      merge: merge the S, dP, dQ and dK posts of adjacent columns of one AIC (``skipCnt`` +
        FAKEs; :func:`plan` and the module docstring say which and why no barrier is needed).
      merge_dv: with ``merge``, merge the dV posts of the same runs too, the leader waiting on a
        ``GroupBarrier`` at which its followers arrive once their P and dS are stored.
      dv_barrier: False drops that barrier (a race: the AIC computes a follower's dV from
        whatever its P workspace holds when the leader's message arrives).
      follower_delay: cycles a merge follower spends (a ``delay``) before computing its P and dS,
        as a slower AIV would; 0 for none. It shows the race of ``dv_barrier=False``.
      qk_scale: Q and K are drawn uniform in ``[-qk_scale, qk_scale)`` (V and dO stay in [-1, 1)):
        the logits ``Q K^T`` grow as ``qk_scale**2`` (up to 13 at 1, 1,390 at 10.5 at the default shape), the
        softmax sharpens and the rounding of O to the input type dominates the error (module
        docstring, Numerics).
      inject_nan: one NaN at ``Q[0, 0, 0, 0]``, set before the float64 forward, so O and lse of
        query row 0 are NaN too: dV and dK come out entirely NaN, dQ in row 0 (as in both
        references).
      lse_offset: subtracted from the lse of query row 0 (a stale forward statistic, natural log
        units): ``exp(S * scale - lse)`` of that row is multiplied by ``exp(lse_offset)``. At 100 it
        overflows float32 in the kernel (Inf in the P workspace) while the unrounded float64
        replay stays finite.
    """
    for name, v in (("batch", batch), ("heads", heads), ("s1", s1), ("s2", s2), ("d", d), ("aics", aics),
                    ("aivs", aivs), ("block_s1", block_s1), ("block_s2", block_s2)):  # fmt: skip
        _check(name, v, isinstance(v, int) and not isinstance(v, bool) and v >= 1, "must be an integer >= 1")
    _check("dtype", dtype, dtype in ("float16", "bfloat16"), "must be 'float16' or 'bfloat16'")
    for name, blk, s in (("block_s1", block_s1, s1), ("block_s2", block_s2, s2)):
        fits = [b for b in range(16, min(s, 128) + 1, 16) if s % b == 0]
        hint = f"e.g. {fits[-1]}" if fits else f"make {name[-2:]} a multiple of 16"
        _check(name, blk, blk % 16 == 0 and s % blk == 0, f"must be a multiple of 16 dividing {s}", hint)
    _check("d", d, d % 16 == 0, "must be a multiple of 16 (cube fractal)")
    _check("block_s2", block_s2, not causal or block_s1 == block_s2, "must equal block_s1 when causal")
    _check("aivs", aivs, aivs <= 2 * aics * 32, "too many queues for the group", "add AICs")
    _check("assign", assign, assign in ASSIGNS, f"must be one of {list(ASSIGNS)}", "'round_robin' or 'balanced'")
    _check("merge", merge, isinstance(merge, bool), "must be true or false")
    _check("merge_dv", merge_dv, isinstance(merge_dv, bool), "must be true or false")
    _check("merge_dv", merge_dv, merge or not merge_dv, "needs merge=true", "add --model-arg merge=true")
    _check("dv_barrier", dv_barrier, isinstance(dv_barrier, bool), "must be true or false")
    _check("follower_delay", follower_delay, isinstance(follower_delay, int) and not isinstance(follower_delay, bool)
           and follower_delay >= 0, "must be an integer >= 0 (cycles)")  # fmt: skip
    _check("qk_scale", qk_scale, isinstance(qk_scale, (int, float)) and not isinstance(qk_scale, bool)
           and 0 < qk_scale <= 200, "must be a number in (0, 200] (Q and K in the input type)", "e.g. 1 (the default) or 10.5")  # fmt: skip
    _check("inject_nan", inject_nan, isinstance(inject_nan, bool), "must be true or false", "e.g. true")
    _check("lse_offset", lse_offset, isinstance(lse_offset, (int, float)) and not isinstance(lse_offset, bool)
           and math.isfinite(lse_offset), "must be a finite number (natural log units)", "e.g. 0 (the default) or 100")  # fmt: skip
    isz = 2
    # the inputs, outputs and workspaces must fit the simulator's 2 GiB of GM, and the float64
    # forward pass (for O, lse and the numerics check) holds b*h*s1*s2 probabilities
    gm_bytes = batch * heads * d * (s1 * (3 * isz + 4) + s2 * (2 * isz + 8)) + batch * heads * s1 * 4
    gm_bytes += aivs * block_s1 * block_s2 * (8 + 2 * isz)
    _check("s1", s1, gm_bytes < 2**31 - 2**20, f"the tensors would take {gm_bytes} B of GM (2 GiB at most)",
           "use smaller batch, heads, s1, s2 or d")  # fmt: skip
    _check("s2", s2, batch * heads * s1 * s2 <= 2**27, f"the float64 reference needs {batch * heads * s1 * s2 * 8} B",
           "at most 2**27 score elements (batch * heads * s1 * s2)")  # fmt: skip
    scale = 1.0 / math.sqrt(d)
    name = f"attention_grad-{dtype}{'-causal' if causal else ''}"
    name += ("-balanced" if assign == "balanced" else "") + ("-merge" if merge else "") + ("-dv" if merge_dv else "")
    k = CubeGroupKernel(chip=chip, name=name, max_steps=10**7)
    rng = np.random.default_rng(seed)
    shape_q, shape_k = (batch, heads, s1, d), (batch, heads, s2, d)
    q_val = rng.uniform(-1, 1, shape_q) * qk_scale
    if inject_nan:
        q_val[0, 0, 0, 0] = np.nan
    q = k.alloc("q", shape_q, dtype, q_val)
    kk = k.alloc("k", shape_k, dtype, rng.uniform(-1, 1, shape_k) * qk_scale)
    v = k.alloc("v", shape_k, dtype, rng.uniform(-1, 1, shape_k))
    do = k.alloc("do", shape_q, dtype, rng.uniform(-1, 1, shape_q))
    o_val, lse_val = forward(k.gm.read("q"), k.gm.read("k"), k.gm.read("v"), causal)
    lse_val[0, 0, 0] -= lse_offset
    o = k.alloc("o", shape_q, dtype, o_val)
    lse = k.alloc("lse", (batch, heads, s1), "float32", lse_val)
    # dQ, dK, dV gather every block's share with atomic adds, so they start at zero: a device
    # kernel has them zeroed before it runs (a memset on the host, or InitGlobalMemory and a SyncAll)
    dq = k.alloc("dq", shape_q, "float32", "zeros")
    dk = k.alloc("dk", shape_k, "float32", "zeros")
    dv = k.alloc("dv", shape_k, "float32", "zeros")
    ws_shape = (aivs, block_s1, block_s2)
    s_ws = k.alloc("s_ws", ws_shape, "float32")
    dp_ws = k.alloc("dp_ws", ws_shape, "float32")
    p_ws = k.alloc("p_ws", ws_shape, dtype)
    ds_ws = k.alloc("ds_ws", ws_shape, dtype)
    keep = (
        k.alloc("keep_mask", (block_s1, block_s2), "float16", np.tril(np.ones((block_s1, block_s2))))
        if causal
        else None
    )
    for t in ("dq", "dk", "dv"):
        k.set_tolerance(t, TOLERANCE[dtype])

    t_max = max(block_s1, block_s2, d)
    tiling = dict(M=t_max, N=t_max, Ka=t_max, Kb=t_max, singleCoreM=t_max, singleCoreN=t_max, singleCoreK=t_max,
                  baseM=min(t_max, 128), baseN=min(t_max, 128), baseK=min(t_max, 64))  # fmt: skip
    g = k.create_cube_res_group(
        "fag", 0, 2 * aics, aivs, "matmul", CUBE_MATMUL_MSG,
        matmul=dict(a=dtype, b=dtype, c="float32", bias="float32"), tiling=tiling,
    )  # fmt: skip

    lay = plan(batch, heads, s1 // block_s1, s2 // block_s2, causal, aics, aivs, assign, merge, (block_s1, block_s2),
               merge_dv)  # fmt: skip
    barriers = {}  # (leader queue, skip) -> the GroupBarrier of that run: its followers arrive, it waits
    if merge_dv and dv_barrier:
        for st in lay.steps:
            for s in st:
                if s.role == "leader" and (s.leader, s.skip) not in barriers:
                    barriers[(s.leader, s.skip)] = k.group_barrier(f"dv_q{s.leader}_k{s.skip}", s.skip, 1)
    if vec_rows is None:
        vec_rows = max(r for r in range(1, block_s1 + 1) if block_s1 % r == 0 and r * block_s2 <= VEC_SLICE_ELEMS)
    ok = isinstance(vec_rows, int) and not isinstance(vec_rows, bool) and vec_rows >= 1 and block_s1 % vec_rows == 0
    _check("vec_rows", vec_rows, ok, f"must be an integer >= 1 dividing block_s1 ({block_s1})", "e.g. 32")
    for a in range(aivs):
        aiv = k.aiv(a)
        aiv.assign_queue(g, a)
        mine = lay.queues[a]
        if not mine:
            aiv.quit(g)
            continue
        vec = aiv.vec
        s32 = vec.buffer("s", vec_rows, block_s2, "float32")  # S, then P (float32)
        dp32 = vec.buffer("dp", vec_rows, block_s2, "float32")  # dP, then dS
        half = vec.buffer("half", vec_rows, block_s2, dtype)  # P or dS in the input type
        mask = vec.buffer("mask", vec_rows, block_s2, "float16") if causal else None
        do_in = vec.buffer("do_in", vec_rows, d, dtype)
        o_in = vec.buffer("o_in", vec_rows, d, dtype)
        do32 = vec.buffer("do32", vec_rows, d, "float32")
        o32 = vec.buffer("o32", vec_rows, d, "float32")
        lse_r = vec.buffer("lse", vec_rows, 1, "float32")
        dsum = vec.buffer("rowsum", vec_rows, 1, "float32")
        ws = a * block_s1 * block_s2  # this AIV's workspace slot, elements
        for (b, h, i, j), step in zip(mine, lay.steps[a], strict=True):
            row_q = (b * heads + h) * s1 + i * block_s1  # first row of the block in [B*H*S1, D]
            row_k = (b * heads + h) * s2 + j * block_s2
            qi, doi, oi = (t.addr + row_q * d * isz for t in (q, do, o))
            kj, vj = (t.addr + row_k * d * isz for t in (kk, v))

            if step.role == "follower":  # the leader of this row posted this block's S and dP
                s_off, dp_off = aiv.fake(g), aiv.fake(g)
            else:
                gaps = dict(skip=step.skip, a_gap=step.q_gap_rows * d, b_gap=step.k_gap_rows * d,
                            c_gap=block_s1 * block_s2)  # fmt: skip
                s_off = _task(aiv, g, qi, kj, s_ws.addr + ws * 4, block_s1, block_s2, d, trans_b=True, **gaps)
                dp_off = _task(aiv, g, doi, vj, dp_ws.addr + ws * 4, block_s1, block_s2, d, trans_b=True, **gaps)
            if wait_qk:
                aiv.wait(g, s_off)
            if follower_delay and step.role == "follower":
                aiv.delay(follower_delay)
            for r0 in range(0, block_s1, vec_rows):
                at = (ws + r0 * block_s2) * 4
                vec.load(s32, s_ws.addr + at, stride=block_s2)
                vec.muls(s32, s32, scale)
                vec.load(lse_r, lse.addr + row_q * 4 + r0 * 4)
                vec.sub_row(s32, s32, lse_r)
                vec.exp(s32, s32)
                if causal and i == j:
                    vec.load(mask, keep.addr + r0 * block_s2 * 2)
                    vec.select(s32, mask, s32, 0.0)
                vec.cast(half, s32)
                vec.store(p_ws.addr + (ws + r0 * block_s2) * isz, half)
                if r0 == 0:
                    aiv.wait(g, dp_off)
                vec.load(dp32, dp_ws.addr + at)
                vec.load(do_in, doi + r0 * d * isz)
                vec.load(o_in, oi + r0 * d * isz)
                vec.cast(do32, do_in)
                vec.cast(o32, o_in)
                vec.mul(do32, do32, o32)
                vec.row_sum(dsum, do32)
                vec.sub_row(dp32, dp32, dsum)
                vec.mul(dp32, dp32, s32)
                vec.muls(dp32, dp32, scale)
                vec.cast(half, dp32)
                vec.store(ds_ws.addr + (ws + r0 * block_s2) * isz, half)
            p_at, ds_at = p_ws.addr + ws * isz, ds_ws.addr + ws * isz
            one, qg, kg = block_s1 * block_s2, step.q_gap_rows * d, step.k_gap_rows * d
            gv, gq, gk = {}, {}, {}  # merge gaps (elements) of dV, dQ, dK for a leader
            if step.role == "leader":
                gq = dict(skip=step.skip, a_gap=one, b_gap=kg, c_gap=qg)
                gk = dict(skip=step.skip, a_gap=one, b_gap=qg, c_gap=kg)
                if merge_dv:
                    if dv_barrier:  # every follower's P and dS are stored
                        aiv.barrier_wait(barriers[(step.leader, step.skip)], 0)
                    gv = dict(skip=step.skip, a_gap=one, b_gap=qg, c_gap=kg)
            if step.role == "follower":
                if not merge_dv:
                    # its own dV: once the AIC has received it, this AIV's P and dS are in GM, so the
                    # leader's dQ and dK in the next rows may compute with them (the AIC serves in order)
                    _task(aiv, g, p_at, doi, dv.addr + row_k * d * 4, block_s2, d, block_s1, trans_a=True,
                          atomic=True)  # fmt: skip
                else:
                    if dv_barrier:  # P and dS are stored: the leader's merged dV may read them
                        aiv.arrive(barriers[(step.leader, step.skip)], step.position - 1)
                    aiv.fake(g)
                aiv.fake(g)
                last = aiv.fake(g)
            else:
                _task(aiv, g, p_at, doi, dv.addr + row_k * d * 4, block_s2, d, block_s1, trans_a=True, atomic=True,
                      **gv)  # fmt: skip
                _task(aiv, g, ds_at, kj, dq.addr + row_q * d * 4, block_s1, d, block_s2, atomic=True, **gq)
                last = _task(aiv, g, ds_at, qi, dk.addr + row_k * d * 4, block_s2, d, block_s1, trans_a=True,
                             atomic=True, **gk)  # fmt: skip
            aiv.wait(g, last)
        aiv.quit(g)
    return k.compile()


def _task(aiv, g, a_addr, b_addr, c_addr, m, n, kdim, trans_a=False, trans_b=False, atomic=False,
          skip=0, a_gap=0, b_gap=0, c_gap=0) -> int:  # fmt: skip
    """Posts one IterateAll (``C[m, n] (+)= A[m, kdim] B[kdim, n]``, operands stored dense, A / B
    transposed as asked) for the ``matmul`` callback; returns the message offset to wait on. With
    ``skip = k > 0`` a merge leader: the callback runs k + 1 such matmuls, the i-th at
    ``a_addr + i * a_gap`` etc. (gaps in elements of A, B, C), for the next k columns' FAKEs."""
    fields = {
        "aAddr": a_addr, "bAddr": b_addr, "cAddr": c_addr, "tailM": m, "tailN": n, "tailK": kdim,
        "mOrgShape": m, "nOrgShape": n, "kaOrgShape": kdim, "kbOrgShape": kdim,
        "isTransA": trans_a, "isTransB": trans_b, "isAtomic": int(atomic),
        "skipCnt": skip, "aGap": a_gap, "bGap": b_gap, "cGap": c_gap,
    }  # fmt: skip
    return aiv.post(g, fields)


def forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool) -> tuple[np.ndarray, np.ndarray]:
    """float64 forward of ``[B, H, S, D]`` inputs: the output O ``[B, H, S1, D]`` and the row
    log-sum-exp of the scaled, masked scores ``[B, H, S1]``."""
    p, lse = _softmax(q, k, causal)
    return p @ v.astype(np.float64), lse


def _softmax(q: np.ndarray, k: np.ndarray, causal: bool) -> tuple[np.ndarray, np.ndarray]:
    q64, k64 = q.astype(np.float64), k.astype(np.float64)
    s = q64 @ np.swapaxes(k64, -1, -2) / math.sqrt(q.shape[-1])
    if causal:
        s1, s2 = s.shape[-2:]
        s = np.where(np.tril(np.ones((s1, s2), bool)), s, -np.inf)
    m = s.max(-1, keepdims=True)
    lse = m + np.log(np.exp(s - m).sum(-1, keepdims=True))
    return np.exp(s - lse), lse[..., 0]


def backward(q, k, v, do, causal: bool) -> dict[str, np.ndarray]:
    """float64 attention backward: dQ, dK, dV of ``sum(O * dO)`` with ``O = softmax(Q K^T / sqrt(D)) V``."""
    q64, k64, v64, do64 = (x.astype(np.float64) for x in (q, k, v, do))
    scale = 1.0 / math.sqrt(q.shape[-1])
    p, _ = _softmax(q, k, causal)
    o = p @ v64
    dv = np.swapaxes(p, -1, -2) @ do64
    dp = do64 @ np.swapaxes(v64, -1, -2)
    ds = p * (dp - (do64 * o).sum(-1, keepdims=True))
    return {"dq": ds @ k64 * scale, "dk": np.swapaxes(ds, -1, -2) @ q64 * scale, "dv": dv}


def expected(program: CubeGroupProgram) -> dict[str, np.ndarray]:
    """dQ, dK, dV in float64 numpy from the program's Q, K, V and dO (independent of the kernel:
    O and the softmax are recomputed in float64)."""
    causal = "keep_mask" in program.gm.tensors
    return backward(*(program.gm.read(n) for n in ("q", "k", "v", "do")), causal)


#: Which roundings :func:`expected` shares with the kernel (the report's ``numpy_check.reference_shares``).
expected.reference_shares = (
    "Q, K, V and dO as stored in the input type; O and the softmax recomputed in float64, where the "
    "kernel and the float64 replay read O rounded to the input type"
)


def work(seed: int = 0, **options) -> int:
    """Estimated AIV ops of ``build(seed, **options)``, without building it (``ascend-jax run``
    checks its work budget with it before a long build): the ops of one- and two-block kernels of
    the same options give a fixed part and a per-block part, scaled to the B x H x n1 x n2 blocks
    (n (n + 1) / 2 per (batch, head) when causal)."""
    b1, b2 = options.get("block_s1", 64), options.get("block_s2", 64)
    if b1 < 1 or b2 < 1:
        return 0  # build() names the bad block size
    n1, n2 = max(1, options.get("s1", 128) // b1), max(1, options.get("s2", 128) // b2)
    blocks = (n1 * (n1 + 1) // 2 if options.get("causal", False) else n1 * n2) * options.get("batch", 1)
    blocks *= options.get("heads", 1)
    small = {**options, "s1": b1, "s2": b2, "heads": 1}
    one, two = (sum(len(ops) for _, ops in build(seed, **{**small, "batch": b}).aivs) for b in (1, 2))
    return (one - (two - one)) + blocks * (two - one)

"""An MoE-like uneven load: grouped matmuls, one per expert, with skewed token counts.

Run it with ``ascend-jax run --model moe_grouped_matmul --schedule timed [--json]``; options with
``--model-arg NAME=VALUE`` (e.g. ``--model-arg merge=false --model-arg skew=2``).

The workload is the expert FFN of a mixture-of-experts layer after routing: the token rows routed
to expert ``e`` (``counts[e]`` of them, sorted by expert as a grouped matmul expects) are
multiplied by the expert's weight, ``Y[rows of e] = X[rows of e] @ W[e]`` with ``X`` ``[tokens,
hidden]``, ``W`` ``[experts, hidden, ffn]`` and ``Y`` ``[tokens, ffn]``. The counts are drawn from
a Zipf-like law (``p_e`` proportional to ``rank_e ** -skew``, the ranks shuffled over the experts,
then a multinomial draw of ``tokens`` rows; all from ``seed``), so a few experts get most rows.

Each expert's rows are cut into tiles of ``tile_m`` rows (the last one shorter). The AIVs post one
matmul task per tile into their queues and the AICs run them with the built-in ``matmul``
callback. Which AIC gets which tiles (``assign``):

* ``"expert"``: expert ``e``'s tiles go to AIC ``e % aics`` (expert parallel: the skew shows);
* ``"balanced"``: the expert-major list of all tiles is cut into ``aics`` contiguous runs whose
  tile counts differ by at most one.

An AIC's tiles are laid out row by row over its ``queues_per_aic`` columns (tile ``j`` of the AIC
in column ``j % P``, row ``j // P``); the AIV bound to a column posts its tiles in row order and
then a QUIT. With ``merge`` on, adjacent tiles of one expert in a row become one task: the first
column posts a leader with ``skipCnt = k`` (``aGap`` / ``cGap`` step one tile, ``lastTailM`` the
last tile's rows) and the next ``k`` columns post FAKE, as in the seed's merge protocol; the AIC
runs the ``k + 1`` matmuls in one callback. :func:`plan` gives the layout; GM holds ``x``, ``w``,
``y`` and ``group_list`` (int32, cumulative rows per expert, as grouped-matmul operators take it),
from which :func:`expected` computes the float64 numpy answer.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ascend_jax import CUBE_MATMUL_MSG, ConfigError, CubeGroupKernel, CubeGroupProgram

ASSIGNS = ("expert", "balanced")
DTYPES = ("float16", "bfloat16")
#: the 910B1's cores (placement is checked against them): 24 AICs, 48 AIVs, one AIV per queue here
MAX_AICS, MAX_AIVS = 24, 48


@dataclasses.dataclass(frozen=True)
class Tile:
    """``rows`` token rows of ``expert`` starting at global row ``first_row`` of X and Y."""

    expert: int
    first_row: int
    rows: int


@dataclasses.dataclass(frozen=True)
class Task:
    """One message: a leader (or single task) at ``column`` of an AIC's row covering ``tiles``
    (adjacent columns ``column .. column + len(tiles) - 1``; the followers post FAKE)."""

    aic: int
    row: int
    column: int
    tiles: tuple[Tile, ...]


@dataclasses.dataclass(frozen=True)
class Plan:
    """The layout of one build: ``counts[e]`` rows per expert, every tile, the tasks (messages
    that carry work) and per AIC its tiles in layout order."""

    counts: tuple[int, ...]
    tiles: tuple[Tile, ...]
    tasks: tuple[Task, ...]
    aic_tiles: tuple[tuple[Tile, ...], ...]

    @property
    def fakes(self) -> int:
        """FAKE messages posted: tiles covered by a leader other than its first."""
        return len(self.tiles) - len(self.tasks)


def draw_counts(seed: int, experts: int, tokens: int, skew: float) -> list[int]:
    """Rows per expert: ``p_e`` proportional to ``rank_e ** -skew`` with the ranks 1..experts
    shuffled, then a multinomial draw of ``tokens`` rows (numpy ``default_rng(seed)``)."""
    rng = np.random.default_rng(seed)
    weights = np.arange(1, experts + 1, dtype=np.float64) ** -float(skew)
    p = rng.permutation(weights / weights.sum())
    return [int(x) for x in rng.multinomial(tokens, p)]


def plan(counts: list[int], tile_m: int, aics: int, queues_per_aic: int, assign: str, merge: bool) -> Plan:
    """Tiles, their AICs and the merged tasks (see the module docstring)."""
    tiles: list[Tile] = []
    start = 0
    for e, n in enumerate(counts):
        tiles += [Tile(e, start + r, min(tile_m, n - r)) for r in range(0, n, tile_m)]
        start += n
    if assign == "expert":
        per_aic = [tuple(t for t in tiles if t.expert % aics == k) for k in range(aics)]
    else:
        per_aic = [tuple(tiles[int(i[0]) : int(i[-1]) + 1]) if len(i) else () for i in np.array_split(
            np.arange(len(tiles)), aics)]  # fmt: skip
    tasks: list[Task] = []
    p = queues_per_aic
    for k, mine in enumerate(per_aic):
        for r in range(0, len(mine), p):
            row = mine[r : r + p]
            c = 0
            while c < len(row):
                run = [row[c]]
                while merge and c + len(run) < len(row) and _adjacent(run[-1], row[c + len(run)], tile_m):
                    run.append(row[c + len(run)])
                tasks.append(Task(k, r // p, c, tuple(run)))
                c += len(run)
    return Plan(tuple(counts), tuple(tiles), tuple(tasks), tuple(per_aic))


def _adjacent(a: Tile, b: Tile, tile_m: int) -> bool:
    """Whether ``b`` continues ``a`` in X and Y at the gap of one full tile (one expert, so one B)."""
    return a.expert == b.expert and a.rows == tile_m and b.first_row == a.first_row + tile_m


def _check(name: str, value, lo, hi, kind=int) -> None:
    if isinstance(value, bool) or not isinstance(value, kind if kind is int else (int, float)) or not lo <= value <= hi:
        what = "an integer" if kind is int else "a number"
        raise ConfigError(name, value, f"must be {what} in {lo}..{hi}", f"give {name} between {lo} and {hi}")


def build(
    seed: int = 0,
    experts: int = 8,
    tokens: int = 2048,
    hidden: int = 128,
    ffn: int = 128,
    tile_m: int = 64,
    skew: float = 1.2,
    aics: int = 4,
    queues_per_aic: int = 4,
    assign: str = "expert",
    merge: bool = True,
    dtype: str = "float16",
    counts: tuple[int, ...] | None = None,
) -> CubeGroupProgram:
    """The grouped-matmul kernel.

    Args:
      seed: draws the counts (:func:`draw_counts`), X (``seed``) and W (``seed + 1``, uniform in
        [-1, 1) rounded to ``dtype``).
      experts, tokens: experts and routed token rows (tokens x top-k of the layer).
      hidden, ffn: K and N of every matmul (elements).
      tile_m: token rows per tile (M of a task).
      skew: Zipf exponent of the counts (0: uniform up to the multinomial noise).
      aics, queues_per_aic: the group: AICs ``0 .. aics - 1``, P queues each, AIV ``q`` bound to queue ``q``.
      assign: ``"expert"`` or ``"balanced"`` (module docstring).
      merge: merge adjacent tiles of one expert in a row into one task (skipCnt + FAKEs).
      dtype: X and W element type, ``"float16"`` or ``"bfloat16"``; Y is float32.
      counts: rows per expert, instead of drawing them (their sum replaces ``tokens``).
    """
    _check("experts", experts, 1, 256)
    _check("hidden", hidden, 16, 4096)
    _check("ffn", ffn, 16, 4096)
    _check("tile_m", tile_m, 1, 1024)
    _check("skew", skew, 0.0, 10.0, float)
    _check("aics", aics, 1, MAX_AICS)
    _check("queues_per_aic", queues_per_aic, 1, MAX_AIVS)
    if aics * queues_per_aic > MAX_AIVS:
        raise ConfigError("queues_per_aic", queues_per_aic, f"aics * queues_per_aic = {aics * queues_per_aic} AIVs "
                          f"exceed the chip's {MAX_AIVS} (one AIV per queue)", "lower aics or queues_per_aic")  # fmt: skip
    if assign not in ASSIGNS:
        raise ConfigError("assign", assign, f"must be one of {list(ASSIGNS)}", "'expert' or 'balanced'")
    if not isinstance(merge, bool):
        raise ConfigError("merge", merge, "must be true or false")
    if dtype not in DTYPES:
        raise ConfigError("dtype", dtype, f"must be one of {list(DTYPES)}")
    if counts is None:
        _check("tokens", tokens, 1, 1 << 20)
        counts = draw_counts(seed, experts, tokens, skew)
    else:
        counts = [int(c) for c in counts]
        if len(counts) != experts or min(counts) < 0 or sum(counts) < 1:
            raise ConfigError("counts", counts, f"must be {experts} non-negative row counts (one per expert), "
                              "not all zero", "give one count per expert")  # fmt: skip
    tokens = sum(counts)
    lay = plan(counts, tile_m, aics, queues_per_aic, assign, merge)
    m_single = min(tile_m, tokens)

    def base(n: int) -> int:
        return min(64, -(-n // 16) * 16)

    tiling = dict(M=tokens, N=ffn, Ka=hidden, Kb=hidden, singleCoreM=m_single, singleCoreN=ffn, singleCoreK=hidden,
                  baseM=base(m_single), baseN=base(ffn), baseK=base(hidden))  # fmt: skip
    name = f"moe_grouped_matmul-{assign}-{'merge' if merge else 'nomerge'}"
    k = CubeGroupKernel(chip="910B1", name=name, max_steps=1_000_000)
    x = k.alloc("x", (tokens, hidden), dtype, "random", seed)
    w = k.alloc("w", (experts, hidden, ffn), dtype, "random", seed + 1)
    y = k.alloc("y", (tokens, ffn), "float32")
    # the grouped matmul's group list: cumulative rows per expert (what expected() reads back)
    k.alloc("group_list", (experts,), "int32", np.cumsum(counts).astype(np.int32))
    g = k.create_cube_res_group("moe", 0, 2 * aics, aics * queues_per_aic, "matmul", CUBE_MATMUL_MSG,
                                matmul=dict(a=dtype, b=dtype, c="float32", bias="float32"), tiling=tiling)  # fmt: skip
    size = 2  # bytes per X / W element (float16 and bfloat16)
    # per column: the (row, message) entries it posts; a follower's message is None (FAKE)
    posts: dict[int, list[tuple[int, dict | None]]] = {q: [] for q in range(aics * queues_per_aic)}
    for t in lay.tasks:
        first, last = t.tiles[0], t.tiles[-1]
        q = t.aic * queues_per_aic + t.column
        posts[q].append((t.row, {
            "skipCnt": len(t.tiles) - 1,
            "tailM": first.rows,
            "tailN": ffn,
            "tailK": hidden,
            "lastTailM": last.rows if len(t.tiles) > 1 else 0,
            "aAddr": x.addr + first.first_row * hidden * size,
            "bAddr": w.addr + first.expert * hidden * ffn * size,
            "cAddr": y.addr + first.first_row * ffn * 4,
            "aGap": tile_m * hidden,
            "bGap": 0,
            "cGap": tile_m * ffn,
        }))  # fmt: skip
        for i in range(1, len(t.tiles)):
            posts[q + i].append((t.row, None))
    for q, entries in posts.items():
        aiv = k.aiv(q)
        aiv.assign_queue(g, q)
        for row, (r, fields) in enumerate(sorted(entries, key=lambda e: e[0])):
            assert r == row  # every column's entries fill rows 0, 1, ... without a gap
            if fields is None:
                aiv.fake(g)
            else:
                aiv.post(g, fields)
        aiv.quit(g)
    return k.compile()


def expected(program: CubeGroupProgram) -> dict[str, np.ndarray]:
    """Y in float64 numpy from X, W and the ``group_list`` tensor (cumulative rows per expert)."""
    ends = program.gm.read("group_list").astype(np.int64)
    counts = np.diff(np.concatenate([[0], ends])).tolist()
    return {"y": expected_y(program.gm.read("x"), program.gm.read("w"), counts)}


def expected_y(x: np.ndarray, w: np.ndarray, counts: list[int]) -> np.ndarray:
    """``Y[rows of e] = X[rows of e] @ W[e]`` in float64 (rows sorted by expert)."""
    out = np.zeros((x.shape[0], w.shape[2]))
    start = 0
    for e, n in enumerate(counts):
        out[start : start + n] = x[start : start + n].astype(np.float64) @ w[e].astype(np.float64)
        start += n
    return out

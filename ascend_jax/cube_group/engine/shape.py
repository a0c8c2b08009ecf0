"""The static shape of a batch: :class:`EngineShape` and :func:`make_shape`, which pads every lane's
encoded program to one common shape (and turns :class:`EngineOptions` into its fields).

Everything here is decided in Python before tracing: the shape is the jitted loop's static
argument, so two batches with equal shapes share one compilation.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

import ascend_jax.cube_group.engine.banks as banks
from ascend_jax.buckets import bucket, bucket_fine
from ascend_jax.cube_group.engine.banks import GmBanks
from ascend_jax.cube_group.engine.encode import VEC, EncodedProgram, MatmulDims, tile_variants
from ascend_jax.cube_group.engine.options import EngineOptions, resolve
from ascend_jax.cube_group.layout import GroupGeometry
from ascend_jax.cube_group.program import CubeGroupProgram
from ascend_jax.cube_group.status import ENCODED_KIND, AivCall, OpKind
from ascend_jax.errors import ConfigError
from ascend_jax.gm import row_margin
from ascend_jax.message import MAX_MSG_PER_AIV

#: low bits of word 0 holding the op kind
KIND_BITS = 4

#: widest row whose live columns ``State.aic_alive`` holds as int32 bits (shifts stay below bit 31)
ALIVE_BITS = 30

#: packed grid: most writes to one slot (a 6-bit write count must not wrap to a live one)
PACK_MAX_WRITES = 63
#: packed grid: bit of op word 0 where a WRITE's write count sits (x keeps its low 20 bits)
PACK_OP_COUNT_BIT = 24


_AIC_CONSTANTS: dict = {}


@dataclasses.dataclass(frozen=True)
class EngineShape:
    """Everything that fixes array shapes or trace structure (static, hashable).

    Lanes of one batch share it; programs that differ in ops, messages, callbacks' decisions,
    delays, ``max_steps`` or ``max_received`` share it after padding and reuse one compilation.
    """

    groups: tuple[GroupGeometry, ...]
    aiv_blocks: tuple[int, ...]  # block_idx of each AIV row
    max_ops: int  # L
    n_versions: int  # N
    n_actions: int  # F
    receive_capacity: int  # R: receive log entries carried (array size; the per-lane limit is traced)
    barrier_copies: tuple[int, ...]  # K_b per barrier
    schedule: str  # "lockstep" | "random" | "timed"
    matmuls: tuple[Any, ...] = ()  # per group: (MatmulType, TCubeTiling, MatmulDims over every lane) or None
    gm_size: int = 1  # G (bytes: gm_data, then a zero margin for row windows)
    #: bytes of the tensors, bucketed (:func:`ascend_jax.buckets.bucket_fine`: programs whose GM
    #: differs in size by a few percent share a compilation); the margin (and scratch) starts here
    gm_data: int = 0
    atomic_order: str = "fixed"  # "fixed" (AIC index order) | "random" (per lane and step)
    wait_tests: bool = False  # some AIV runs Wait<false>: carry its results
    aiv_home: tuple[int, ...] | None = None  # per AIV row: its queue row (c * W + col), -1 none;
    # None when some AIV serves two queues, lanes bind differently or a Wait targets another queue
    shared: bool = True  # every lane runs the same program: tables carry no batch axis
    build: str = "cpu"  # "cpu" | "npu-debug" | "release" (program.BUILDS: which asserts stop an AIC)
    n_vec_ops: int = 0  # Vn: rows of the vector op table (padded; 0: no AIV runs a vector op)
    #: (U, E, Rr, Cr) of the flat UB (``State.ub`` [B, V, U]): U elements per AIV (every buffer at
    #: its own size, bucketed, plus E), E the largest region an op writes (bucketed; every UB and GM
    #: window is E elements), Rr x Cr the largest row_max / row_sum (bucketed; 0 without)
    ub: tuple = (0, 0, 0, 0)
    ub_flat: bool = True  # every op's region is consecutive in its buffers and GM: windows are slices
    vec_kinds: tuple[int, ...] = ()  # codes of the vector op kinds some lane's program uses
    op_kinds: tuple[int, ...] = tuple(int(k) for k in OpKind)  # OpKinds some lane's program uses
    has_mte3: bool = True  # some AllocMessage / PostMessage runs in MTE3 mode (the flag matters)
    packed: bool = False  # the slot grid packs a queue's 4 depths in one word (see :func:`unpack_slots`)
    stray: bool = False  # a cursor (release) or a free (api_misuse) may leave its AIC's block
    banks: GmBanks | None = None  # typed GM banks (:mod:`ascend_jax.cube_group.engine.banks`), None: GM as bytes
    batched_stores: bool = True  # C tiles with disjoint windows share a store pass (compute.store_passes)
    #: R that holds every entry up to each program's limit (``max_received``, or writes + two laps);
    #: ``receive_capacity`` is the writes into one block, bucketed, and a lane that receives more is
    #: run again with this one (:meth:`whole_log`); 0: the same as ``receive_capacity``
    receive_full: int = 0

    def whole_log(self) -> EngineShape:
        """This shape with a receive log that holds every entry up to the programs' limits."""
        return dataclasses.replace(self, receive_capacity=max(self.receive_full, self.receive_capacity), receive_full=0)

    def uses(self, kind: OpKind) -> bool:
        """Whether some lane's program has an op of this kind (the step leaves out what none has)."""
        return int(kind) in self.op_kinds

    @property
    def has_sync(self) -> bool:
        """Some AIV calls SyncAll: the step carries its round counter."""
        return self.uses(OpKind.SYNC)

    @property
    def alive_bits(self) -> bool:
        """Whether ``State.aic_alive`` is a [C] bitmask (rows of at most :data:`ALIVE_BITS`
        columns) rather than [C, W] booleans."""
        return self.row_width <= ALIVE_BITS

    @property
    def release(self) -> bool:
        return self.build == "release"

    @property
    def notes_asserts(self) -> bool:
        """Whether the build lists the CPU twin's failed asserts (``npu-debug``, ``release``)."""
        return self.build != "cpu"

    @property
    def version_dtype(self):
        """The receive log's element type: int16 while version ids fit (half the memory traffic)."""
        return jnp.int16 if self.n_versions <= 2**15 else jnp.int32

    @property
    def grid_of_slot(self) -> np.ndarray:
        """[S] flat index in the ``[C, W, 4]`` slot grid of every global slot (cached per geometry)."""
        return _grid_maps(self.groups)[0]

    @property
    def queue_rows(self) -> np.ndarray:
        """[Q] the ``[C * W]`` queue row of every queue (groups in order; cached per geometry)."""
        return _grid_maps(self.groups)[1]

    @property
    def has_matmul(self) -> bool:
        return any(m is not None for m in self.matmuls)

    @property
    def has_vector(self) -> bool:
        return self.n_vec_ops > 0

    @property
    def has_gm(self) -> bool:
        """Whether anything reads or writes GM (a matmul or a vector op); else GM is one byte."""
        return self.has_matmul or self.has_vector

    @property
    def timed(self) -> bool:
        return self.schedule == "timed"

    @property
    def needs_key(self) -> bool:
        """Whether the loop draws random numbers (random schedule or random atomic order)."""
        return self.schedule == "random" or (self.has_matmul and self.atomic_order == "random")

    @property
    def total_queues(self) -> int:
        return sum(g.msg_queue_size for g in self.groups)

    def queue_of_slot(self) -> np.ndarray:
        """[S] global queue index (groups in order) of every slot; unused columns -> total_queues."""
        out = []
        base = 0
        for g in self.groups:
            for s in range(g.num_slots):
                k, c, _ = g.slot_queue_depth(s)
                out.append(base + k * g.aiv_per_aic + c if c < g.queues_of_aic(k) else self.total_queues)
            base += g.msg_queue_size
        return np.array(out, np.int32)

    @property
    def grid_size(self) -> int:
        """Positions of the ``[C, W, 4]`` slot grid."""
        return len(self.aics) * self.row_width * MAX_MSG_PER_AIV

    @property
    def num_slots(self) -> int:
        return sum(g.num_slots for g in self.groups)

    @property
    def aics(self) -> list[tuple[int, int]]:
        return [(gi, k) for gi, g in enumerate(self.groups) for k in range(g.aic_num)]

    @property
    def row_width(self) -> int:
        return max(g.aiv_per_aic for g in self.groups)

    def aic_constants(self) -> dict[str, np.ndarray]:
        """[C] per-AIC geometry: group, block base slot, P, n, absolute core index, and the group's
        slot range [group_lo, group_hi) (cached)."""
        hit = _AIC_CONSTANTS.get(self.groups)
        if hit is None:
            rows = [
                (
                    gi,
                    g.slot_base + k * g.aiv_per_aic * MAX_MSG_PER_AIV,
                    g.aiv_per_aic,
                    g.queues_of_aic(k),
                    g.first_aic + k,
                )
                for gi, k in self.aics
                for g in [self.groups[gi]]
            ]
            arr = np.array(rows, np.int32).reshape(-1, 5)
            lo = np.array([self.groups[gi].slot_base for gi, _ in self.aics], np.int32).reshape(-1)
            hi = np.array([self.groups[gi].slot_base + self.groups[gi].num_slots for gi, _ in self.aics], np.int32)
            hit = _AIC_CONSTANTS[self.groups] = dict(
                group=arr[:, 0],
                block=arr[:, 1],
                p=arr[:, 2],
                n=arr[:, 3],
                core=arr[:, 4],
                group_lo=lo,
                group_hi=hi.reshape(-1),
            )
        return hit


@functools.lru_cache(maxsize=64)
def _grid_maps(groups: tuple[GroupGeometry, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(grid index of every slot, queue row of every queue) for a tuple of group geometries."""
    w = max(g.aiv_per_aic for g in groups)
    slots, rows = [], []
    c0 = 0
    for g in groups:
        p = g.aiv_per_aic
        k, rem = np.divmod(np.arange(g.num_slots), p * MAX_MSG_PER_AIV)
        d, col = np.divmod(rem, p)
        slots.append(((c0 + k) * w + col) * MAX_MSG_PER_AIV + d)
        q = np.arange(g.msg_queue_size)
        rows.append((c0 + q // p) * w + q % p)
        c0 += g.aic_num
    out = np.concatenate(slots).astype(np.int64), np.concatenate(rows).astype(np.int64)
    for x in out:
        x.flags.writeable = False
    return out


def can_pack(shape: EngineShape, rows_per_program: list) -> bool:
    """Whether a batch can use the packed slot grid: every AIV writes only its own queue (one
    writer per slot, so a write's count is known when encoding), the workspace starts zeroed,
    head states fit in 2 bits and no slot is written more than :data:`PACK_MAX_WRITES` times."""
    if shape.aiv_home is None or shape.grid_size >= 1 << (PACK_OP_COUNT_BIT - KIND_BITS):
        return False
    for rows in rows_per_program:
        ops = np.array([op for row in rows for op in row], np.int64).reshape(-1, 5)
        writes = ops[ops[:, 0] == OpKind.WRITE]
        if len(writes) and (np.bincount(writes[:, 1]).max() > PACK_MAX_WRITES or not (writes[:, 2] <= 3).all()):
            return False
    return True


#: the smallest padded size of an op list, a version table, a receive log or a vector op table
#: (sizes are rounded up by :func:`ascend_jax.buckets.bucket`)
LEAST_BUCKET = 8


def make_shape(
    programs: Sequence[CubeGroupProgram],
    encoded: Sequence[EncodedProgram],
    schedule: str,
    atomic_order: str = "fixed",
    *,
    options: EngineOptions | None = None,
) -> EngineShape:
    """The common static shape of a batch; programs must share groups, matmul configs, barriers
    and GM tensor layout (ops, messages, callbacks and GM contents may differ per lane).
    ``options`` (default :class:`EngineOptions`) become the shape's ``packed``, ``banks`` and
    ``batched_stores``."""
    options = resolve(options)
    first = programs[0]
    for i, p in enumerate(programs[1:], 1):
        same = (
            p.groups == first.groups
            and p.barriers == first.barriers
            and p.matmuls == first.matmuls
            and p.gm.same_layout(first.gm)
            and p.build == first.build
            and p.zero_workspace == first.zero_workspace
        )
        if not same:
            raise ConfigError(
                f"programs[{i}]",
                p.name,
                "lanes of one batch must share groups, matmul configs, barriers, tensors, build and zero_workspace",
            )
    all_ops = [op for p in programs for _, ops in p.aivs for op in ops]
    has_mm = any(m is not None for m in first.matmuls)
    n_vec = max(len(e.vec_ops) for e in encoded)
    has_gm = has_mm or n_vec > 0
    ub, ub_flat, vec_kinds = _ub_shape(encoded) if n_vec else ((0, 0, 0, 0), True, ())
    shape = EngineShape(
        groups=first.groups,
        aiv_blocks=tuple(sorted({b for p in programs for b, _ in p.aivs})),
        max_ops=bucket(max((len(r) for e in encoded for r in e.rows), default=1), LEAST_BUCKET),
        n_versions=bucket(max(e.n_versions for e in encoded), LEAST_BUCKET),
        n_actions=max(e.n_actions for e in encoded),
        receive_capacity=bucket(max(e.receivable for e in encoded), LEAST_BUCKET),
        receive_full=bucket(max(e.capacity for e in encoded), LEAST_BUCKET),
        barrier_copies=tuple(b.copies for b in first.barriers),
        schedule=schedule,
        matmuls=_matmul_configs(first, encoded, options.tile_variants),
        gm_size=_gm_data(first) + row_margin(_widest(encoded, ub[1])) if has_gm else 1,
        gm_data=_gm_data(first) if has_gm else 0,
        atomic_order=atomic_order if has_mm else "fixed",
        batched_stores=options.batched_stores,
        wait_tests=any(op.kind == AivCall.WAIT and not op.sync for op in all_ops),
        shared=len(programs) == 1,
        build=first.build,
        stray=any(e.stray for e in encoded),
        op_kinds=tuple(sorted({int(ENCODED_KIND[op.kind]) for op in all_ops})),
        has_mte3=any(op.pipe == "MTE3" for op in all_ops),
        n_vec_ops=bucket(n_vec, LEAST_BUCKET) if n_vec else 0,
        ub=ub,
        ub_flat=ub_flat,
        vec_kinds=vec_kinds,
    )
    shape = dataclasses.replace(shape, aiv_home=_aiv_home(shape, programs, encoded))
    if options.typed_banks and has_gm:  # matmul operands or AIV GM copies (banks.plan decides)
        shape = dataclasses.replace(shape, banks=banks.plan(programs, encoded, _widest(encoded, ub[1])))
    packed = options.packed_grid and first.zero_workspace and can_pack(shape, [e.rows for e in encoded])
    return dataclasses.replace(shape, packed=packed)


def _ub_shape(encoded: Sequence[EncodedProgram]) -> tuple[tuple[int, int, int, int], bool, tuple[int, ...]]:
    """(:attr:`EngineShape.ub`, ``ub_flat``, ``vec_kinds``) of a batch with vector ops: sizes
    bucketed (:func:`ascend_jax.buckets.bucket`) so programs whose buffers differ only in extent
    within a power of two share one compilation."""
    dims = [e.ub_dims for e in encoded]
    window = bucket(max(d.window for d in dims), LEAST_BUCKET)
    size = bucket(max(d.size for d in dims), LEAST_BUCKET) + window  # a window from any buffer stays inside
    rr, cr = (max(getattr(d, k) for d in dims) for k in ("reduce_rows", "reduce_cols"))
    red = (bucket(rr), bucket(cr, LEAST_BUCKET)) if rr else (0, 0)
    kinds = {int(k) for e in encoded for k in e.vec_ops[:, VEC["kind"]]}
    return (size, window, *red), all(d.flat for d in dims), tuple(sorted(kinds))


def _gm_data(first: CubeGroupProgram) -> int:
    """:attr:`EngineShape.gm_data`: the tensors' bytes, bucketed. The engine carries GM as these
    bytes, then a zero margin that a row window starting in GM never crosses
    (:func:`ascend_jax.gm.row_margin` of the widest window; a vector copy reads a window of the
    largest vector op region), which is also the scratch of rows not written."""
    return bucket_fine(first.gm.size)


def _widest(encoded: Sequence[EncodedProgram], ub_window: int = 0) -> int:
    """The widest window in elements: a tile's M, N or K bound, or a vector op's region."""
    widest = max((max(d.m, d.n, d.kp) for e in encoded for d in e.mm_dims if d is not None), default=1)
    return max(widest, ub_window)


def _matmul_configs(first: CubeGroupProgram, encoded: Sequence[EncodedProgram], variants: bool = True) -> tuple:
    """Per group: (MatmulType, TCubeTiling, :class:`MatmulDims` over every lane: the largest bound,
    rows disjoint in every lane, a layout every lane shares or ``"both"``, and with ``variants``
    the smaller tile shapes its calls fit) or None."""
    if not first.matmuls:
        return (None,) * len(first.groups)
    out = []
    for gi, cfg in enumerate(first.matmuls):
        if cfg is None:
            out.append(None)
            continue
        lanes = [e.mm_dims[gi] for e in encoded]
        layouts = [{d.a_layout for d in lanes}, {d.b_layout for d in lanes}]
        dims = MatmulDims(
            m=int(max(d.m for d in lanes)),
            n=int(max(d.n for d in lanes)),
            kp=int(max(d.kp for d in lanes)),
            rows_disjoint=all(d.rows_disjoint for d in lanes),
            a_layout=layouts[0].pop() if len(layouts[0]) == 1 else "both",
            b_layout=layouts[1].pop() if len(layouts[1]) == 1 else "both",
            chunk=_chunk([d.chunk for d in lanes], int(max(d.n for d in lanes))),
        )
        if variants:  # from every performed IterateAll of the group, every lane
            words = [e.act_mmf[(e.ver_group == gi)[:, None] & (e.act_mm != 0) & (e.act_en != 0)] for e in encoded]
            dims = dims._replace(variants=tile_variants(cfg[1], dims, words))
        out.append((cfg[0], cfg[1], dims))
    return tuple(out)


#: the narrowest C window the engine writes in chunks (narrower: whole rows of N, ordered when
#: they may overlap): a window per few elements would cost more scatter updates than it saves
LEAST_CHUNK = 8


def _chunk(chunks: list[int], n: int) -> int:
    """:attr:`MatmulDims.chunk` of a batch: a divisor of ``n`` (the batch's N) and of every lane's
    chunk, or 0 (whole rows of N) when that is under :data:`LEAST_CHUNK` columns."""
    g = int(np.gcd.reduce(np.array([*chunks, n], np.int64)))
    return g if g >= LEAST_CHUNK else 0


def _aiv_home(shape: EngineShape, programs: Sequence[CubeGroupProgram], encoded: Sequence[EncodedProgram]):
    """Per AIV row, the queue row (``c * W + col``) of the one queue it touches (-1: none), when
    every AIV touches at most one queue and lanes agree; else None (the step's general path)."""
    grid = shape.grid_of_slot >> 2  # [S] queue row of every slot
    homes = [-1] * len(shape.aiv_blocks)
    for p, e in zip(programs, encoded, strict=True):
        rows = dict(zip((b for b, _ in p.aivs), e.rows, strict=True))
        for v, b in enumerate(shape.aiv_blocks):
            touched = {int(grid[slot]) for kind, slot, *_ in rows.get(b, []) if kind in _SLOT_OPS}
            if len(touched) > 1 or (touched and homes[v] not in (-1, *touched)):
                return None
            if touched:
                homes[v] = touched.pop()
    bound = [h for h in homes if h >= 0]
    if len(set(bound)) != len(bound):  # two AIVs on one queue row: no static row per AIV
        return None
    return tuple(homes)


_SLOT_OPS = (OpKind.ALLOC, OpKind.WRITE, OpKind.WAIT)

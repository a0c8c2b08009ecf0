"""The AIV program builder: a Python API mirroring Ascend C, producing a validated kernel program.

Usage::

    k = CubeGroupKernel(chip="910B1")
    g = k.create_cube_res_group("g", block_start=0, block_size=2, msg_queue_size=2, callback="merge")
    for q in range(2):
        aiv = k.aiv(q)
        aiv.assign_queue(g, q)
        off = aiv.post_message(aiv.alloc_message(g), fields={"skipCnt": 0})
        aiv.wait(g, off)
        aiv.send_quit_msg(aiv.alloc_message(g))
    program = k.compile()

Every rule that can be checked without running is checked here, when the call is made or in
:meth:`CubeGroupKernel.compile`, with a :class:`ConfigError` naming the field, value, rule and fix.
The result is a list of symbolic ops per AIV (:class:`AivOp`); the JAX engine encodes them into
arrays and the reference interpreter runs them directly.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from ascend_jax.chips import ChipSpec, get_chip
from ascend_jax.cube_group.barrier import (
    BARRIER_MAX_AIV,
    BARRIER_STRIDE,
    MAX_BARRIER_ROUNDS,
    BarrierGeometry,
)
from ascend_jax.cube_group.callbacks import MatmulCallback, resolve_callback
from ascend_jax.cube_group.layout import GroupGeometry, KfcWorkspace, check_group
from ascend_jax.cube_group.matmul import MatmulType, TCubeTiling
from ascend_jax.cube_group.status import AivCall
from ascend_jax.cube_group.vector import VectorBuilder, VectorOp
from ascend_jax.enums import BUILD_ALIASES, BUILDS
from ascend_jax.errors import ConfigError
from ascend_jax.gm import GlobalMemory, Tensor
from ascend_jax.message import CUBE_MSG_BODY, MAX_MSG_PER_AIV, CubeMsgState, check_message_dtype, pack_message

# BUILDS (the build modes) and BUILD_ALIASES (deprecated names) live in ascend_jax.enums, beside
# the Build enum the CLI and RunConfig use; asc-devkit ``kernel_log.h`` (the ``ASCENDC_ASSERT`` /
# ``ASCENDC_DEBUG_ASSERT`` macro definitions) is where the modes come from: ``cpu`` is the CPU twin,
# which checks both macros; ``npu-debug`` an NPU build with ``ASCENDC_DEBUG``, which checks only
# ``ASCENDC_DEBUG_ASSERT`` (``ASCENDC_ASSERT`` is empty on ``__NPU_DEVICE__``); ``release`` an NPU
# build without it, which checks nothing.


class BuildAliasWarning(DeprecationWarning):
    """A deprecated build name was used (``debug``: say ``cpu``)."""


def normalise_build(build: Any) -> str:
    """The build name ``build`` stands for; a deprecated alias warns (:class:`BuildAliasWarning`).

    Raises:
      ConfigError: ``build`` is not a build name.
    """
    if build in BUILD_ALIASES:
        new = BUILD_ALIASES[build]
        warnings.warn(
            f"build = {build!r} is deprecated and will be removed in the next release; it means {new!r} "
            "(the CPU twin: ASCENDC_ASSERT and ASCENDC_DEBUG_ASSERT both checked)",
            BuildAliasWarning,
            stacklevel=3,
        )
        return new
    if build not in BUILDS:
        raise ConfigError(
            "build",
            build,
            f"must be one of {list(BUILDS)}",
            "'cpu' checks every assert (the CPU twin), 'npu-debug' only ASCENDC_DEBUG_ASSERT, 'release' none",
        )
    return build


#: Bytes at the end of UB that CreateCubeResGroup takes besides sizeof(msg): GroupBarrier's 50
#: blocks of 32 B (group_barrier_impl.h, UB_START_ADDR; the API page's "1600 B + sizeof(msg)")
UB_RESERVE = 1600
#: AllocMessage / PostMessage pipe modes (PipeMode in kernel_utils_cube_group.h)
PIPES = ("SCALAR", "MTE3")


@dataclasses.dataclass(frozen=True)
class AivOp:
    """One AIV action, symbolic.

    Attributes:
      kind: the :class:`~ascend_jax.cube_group.status.AivCall` (``alloc``, ``post``, ``fake``,
        ``quit``, ``wait``, ``delay``, ``arrive``, ``barrier_wait``, ``sync_all``, ``vector``: a UB /
        vector-unit op, in ``vec``).
      group: group index (message ops) or barrier index (barrier ops); -1 otherwise.
      alloc: for post / fake / quit, which alloc of this AIV in this group it fills (0-based).
      state: post: the head state written (VALID unless the user says otherwise).
      aiv_id: post / quit: head aivID written.
      payload: post: the message (0-d struct array of the group's message type).
      offset: wait: message offset from the AIV's msgHead.
      sync: wait: True for ``Wait<true>`` (block until FREE), False for ``Wait<false>``.
      cycles: delay length.
      index: barrier ops: arrive / wait index.
      where: location for error messages, e.g. ``aiv[3].ops[2]``.
      pipe: alloc: ``"SCALAR"`` or ``"MTE3"`` (``AllocMessage<MTE3_MODE>`` first waits for the
        KfcWorkspace's MTE3->S flag); post: ``"MTE3"`` when ``PostMessage<MTE3_MODE>`` sets it again.
      vec: vector: the :class:`~ascend_jax.cube_group.vector.VectorOp`.
      aiv_only: sync_all: ``SyncAll<true>`` (the default: the AIVs only) or ``False`` for the
        all-core form, which also waits for every AIC.
    """

    kind: AivCall
    group: int = -1
    alloc: int = -1
    state: int = 0
    aiv_id: int = 0
    payload: Any = None
    offset: int = 0
    sync: bool = True
    cycles: int = 0
    index: int = 0
    where: str = ""
    pipe: str = "SCALAR"
    vec: VectorOp | None = None
    aiv_only: bool = True


@dataclasses.dataclass(frozen=True)
class MsgSlot:
    """What ``AllocMessage`` returned: the slot (queue, depth) and the alloc's ordinal."""

    group: int
    queue: int
    depth: int
    alloc: int
    block_idx: int
    pipe: str = "SCALAR"


@dataclasses.dataclass
class _AivGroupState:
    queue: int
    allocs: int = 0
    pending: set = dataclasses.field(default_factory=set)
    last_offset: int | None = None


class AivProgram:
    """The program of one AIV (``GetBlockIdx() == block_idx``), built call by call."""

    def __init__(self, kernel: CubeGroupKernel, block_idx: int):
        self.kernel = kernel
        self.block_idx = block_idx
        self.ops: list[AivOp] = []
        self._groups: dict[int, _AivGroupState] = {}
        self._barriers: dict[int, list[int]] = {}  # barrier -> [arrive count, wait count]
        self.location: str | None = None  # set by loaders so errors name their own paths
        self.vec = VectorBuilder(self)  # UB buffers and vector ops (ascend_jax.cube_group.vector)

    # -- helpers ---------------------------------------------------------------------------
    def _where(self) -> str:
        return self.location or f"aiv[{self.block_idx}].ops[{len(self.ops)}]"

    def _bound(self, group: GroupGeometry | str | int, what: str) -> tuple[int, _AivGroupState]:
        gi = self.kernel._group_index(group, f"{self._where()}.group")
        if gi not in self._groups:
            raise ConfigError(
                f"{self._where()}.group",
                self.kernel.groups[gi].name,
                f"{what} before assign_queue on this group (the AIV would act as queue 0)",
                "call assign_queue(group, queue) first",
            )
        return gi, self._groups[gi]

    # -- CubeResGroupHandle, AIV side ---------------------------------------------------------
    def assign_queue(self, group: GroupGeometry | str | int, queue: int) -> None:
        """``AssignQueue(queIdx)``: binds this AIV to ``queue`` of ``group`` (once per group)."""
        where = self._where()
        gi = self.kernel._group_index(group, f"{where}.group")
        g = self.kernel.groups[gi]
        if not isinstance(queue, (int, np.integer)) or not 0 <= queue < g.msg_queue_size:
            raise ConfigError(
                f"{where}.queue", queue, f"must be in 0..{g.msg_queue_size - 1} (msg_queue_size of group {g.name!r})"
            )
        queue = int(queue)
        if gi in self._groups:
            raise ConfigError(
                f"{where}.queue",
                queue,
                f"this AIV already called assign_queue on group {g.name!r} (queue {self._groups[gi].queue}); "
                "a second call adds the offset again on the device",
                "bind each AIV once per group",
            )
        other = self.kernel._bindings.get((gi, queue))
        if other is not None:
            raise ConfigError(
                f"{where}.queue",
                queue,
                f"queue {queue} of group {g.name!r} is already bound by aiv[{other}]; every queue is bound exactly once",
                "give each AIV a different queue",
            )
        self.kernel._bindings[(gi, queue)] = self.block_idx
        self._groups[gi] = _AivGroupState(queue)

    def alloc_message(self, group: GroupGeometry | str | int, pipe: str = "SCALAR") -> MsgSlot:
        """``AllocMessage<pipe>()``: waits until the ring slot is FREE, then advances the ring.

        ``pipe="MTE3"`` first waits for the KfcWorkspace's MTE3->S flag (set once when the workspace
        is built, and again by each ``PostMessage<MTE3_MODE>``; PostFakeMsg and SetQuit do not set
        it, so an MTE3 alloc followed by either leaves the next MTE3 alloc waiting forever, F13).
        """
        gi, st = self._bound(group, "alloc_message")
        if pipe not in PIPES:
            raise ConfigError(f"{self._where()}.pipe", pipe, f"must be one of {list(PIPES)}")
        slot = MsgSlot(gi, st.queue, st.allocs % MAX_MSG_PER_AIV, st.allocs, self.block_idx, pipe)
        self.ops.append(AivOp(AivCall.ALLOC, gi, alloc=st.allocs, where=self._where(), pipe=pipe))
        st.pending.add(st.allocs)
        st.allocs += 1
        return slot

    def _fill(self, slot: MsgSlot, what: str, latest: bool = True) -> _AivGroupState:
        where = self._where()
        if not isinstance(slot, MsgSlot) or slot.block_idx != self.block_idx:
            raise ConfigError(f"{where}.msg", slot, f"{what} needs a slot this AIV got from alloc_message")
        st = self._groups[slot.group]
        if slot.alloc not in st.pending:
            raise ConfigError(
                f"{where}.msg",
                f"alloc #{slot.alloc} (queue {slot.queue}, depth {slot.depth})",
                "this slot was already posted; each AllocMessage is followed by exactly one post",
                "call alloc_message again",
            )
        st.pending.discard(slot.alloc)
        if latest:  # a QUIT is not a post: the default wait stays on the latest post
            st.last_offset = slot.depth * self.kernel.groups[slot.group].aiv_per_aic
        return st

    def post_message(
        self,
        slot: MsgSlot,
        fields: Mapping[str, Any] | None = None,
        state: int | str = CubeMsgState.VALID,
        aiv_id: int | None = None,
    ) -> int:
        """``PostMessage(msg, in)``: publishes ``in`` including its head; returns the offset.

        ``state`` is ``in.head.msgState`` (VALID by default; FREE reproduces the forgotten-VALID
        pitfall F8, QUIT a hand-made quit). ``aiv_id`` is ``in.head.aivID`` (default: block_idx).
        """
        where = self._where()
        state = _state_value(state, f"{where}.state")
        aiv_id = self.block_idx if aiv_id is None else aiv_id
        if not isinstance(aiv_id, (int, np.integer)) or not 0 <= aiv_id <= 255:
            raise ConfigError(f"{where}.aiv_id", aiv_id, "must be an integer in 0..255 (uint8)")
        if fields is not None and not isinstance(fields, Mapping):
            raise ConfigError(f"{where}.fields", fields, "must be a table of payload field values")
        dtype = self.kernel.msg_dtypes[slot.group] if isinstance(slot, MsgSlot) else CUBE_MSG_BODY
        if fields:  # address fields may name a tensor: "a+1024"
            fields = {
                k: self.kernel.gm.address(v, f"{where}.fields.{k}") if isinstance(v, (str, Tensor)) else v
                for k, v in fields.items()
            }
            fields = {k: v.addr if isinstance(v, Tensor) else v for k, v in fields.items()}
        payload = pack_message(dtype, fields, field_path=f"{where}.fields")
        st = self._fill(slot, "post_message")
        self.ops.append(
            AivOp(
                AivCall.POST,
                slot.group,
                alloc=slot.alloc,
                state=state,
                aiv_id=int(aiv_id),
                payload=payload,
                where=where,
                pipe=slot.pipe,  # PostMessage in the alloc's mode (MTE3: sets the MTE3->S flag again)
            )
        )
        return st.last_offset

    def post_fake_msg(self, slot: MsgSlot) -> int:
        """``PostFakeMsg(msg)``: writes state FAKE; the payload stays stale. Returns the offset."""
        st = self._fill(slot, "post_fake_msg")
        self.ops.append(AivOp(AivCall.FAKE, slot.group, alloc=slot.alloc, where=self._where()))
        return st.last_offset

    def send_quit_msg(self, slot: MsgSlot) -> None:
        """``SetQuit(msg)`` (documented as SendQuitMsg): aivID = queue % P, then state QUIT."""
        self._fill(slot, "send_quit_msg", latest=False)
        g = self.kernel.groups[slot.group]
        self.ops.append(
            AivOp(AivCall.QUIT, slot.group, alloc=slot.alloc, aiv_id=slot.queue % g.aiv_per_aic, where=self._where())
        )

    set_quit = send_quit_msg

    def wait(self, group: GroupGeometry | str | int, offset: int | None = None, sync: bool = True) -> None:
        """``Wait<sync>(offset)``: on slot ``msgHead + offset``; sync blocks until it is FREE.

        ``offset`` defaults to this AIV's latest post in the group.
        """
        where = self._where()
        gi, st = self._bound(group, "wait")
        g = self.kernel.groups[gi]
        if offset is None:
            if st.last_offset is None:
                raise ConfigError(f"{where}.offset", None, "no post in this group yet to wait on", "give an offset")
            offset = st.last_offset
        p = g.aiv_per_aic
        col = st.queue % p
        target = col + offset
        k = g.aic_of_queue(st.queue)
        if not isinstance(offset, (int, np.integer)) or not 0 <= target < p * MAX_MSG_PER_AIV:
            raise ConfigError(
                f"{where}.offset",
                offset,
                f"msgHead + offset must stay in this AIC's 4 x {p} block (offsets are d*P for own slots)",
            )
        if target % p >= g.queues_of_aic(k):
            raise ConfigError(f"{where}.offset", offset, "targets a column that no queue uses")
        self.ops.append(AivOp(AivCall.WAIT, gi, offset=int(offset), sync=bool(sync), where=where))

    # -- other AIV actions -------------------------------------------------------------------
    def sync_all(self, aiv_only: bool = True) -> None:
        """``SyncAll<isAIVOnly>()``. The default form (``aiv_only=True``, as ``isAIVOnly = true``
        in asc-devkit ``kernel_operator_block_sync_intf.h``, ``SyncAll``) synchronises the AIVs
        only: it returns when every AIV with a program is at the same SyncAll. The all-core form
        (``aiv_only=False``) also waits for every AIC, which reaches its own ``SyncAll`` only after
        ``CreateCubeResGroup`` returns, that is after every column it serves has quit; so an AIV
        that calls that form before its QUITs deadlocks the kernel (F14)."""
        if not isinstance(aiv_only, bool):
            raise ConfigError(f"{self._where()}.aiv_only", aiv_only, "must be true or false", "leave it out: true")
        self.ops.append(AivOp(AivCall.SYNC_ALL, where=self._where(), aiv_only=aiv_only))

    def delay(self, cycles: int) -> None:
        """Busy for ``cycles`` cycles (one step per cycle in the lockstep schedule)."""
        if not isinstance(cycles, (int, np.integer)) or cycles < 1:
            raise ConfigError(f"{self._where()}.cycles", cycles, "must be an integer >= 1")
        self.ops.append(AivOp(AivCall.DELAY, cycles=int(cycles), where=self._where()))

    def _barrier_op(self, kind: str, barrier: BarrierGeometry | str, index: int, size_attr: str) -> None:
        where = self._where()
        b = self.kernel._barrier(barrier, f"{where}.barrier")
        size = getattr(b, size_attr)
        if not isinstance(index, (int, np.integer)) or not 0 <= index < size:
            raise ConfigError(f"{where}.index", index, f"must be in 0..{size - 1} ({size_attr} of {b.name!r})")
        counts = self._barriers.setdefault(b.index, [0, 0])
        slot = 0 if kind == AivCall.ARRIVE else 1
        counts[slot] += 1
        if counts[slot] > MAX_BARRIER_ROUNDS:
            raise ConfigError(where, kind, f"more than {MAX_BARRIER_ROUNDS} calls on one barrier (documented limit)")
        self.ops.append(AivOp(kind, b.index, index=int(index), where=where))

    def arrive(self, barrier: BarrierGeometry | str, index: int) -> None:
        """``GroupBarrier::Arrive(index)``."""
        self._barrier_op("arrive", barrier, index, "arrive_size")

    def barrier_wait(self, barrier: BarrierGeometry | str, index: int) -> None:
        """``GroupBarrier::Wait(index)``."""
        self._barrier_op("barrier_wait", barrier, index, "wait_size")

    def _vector(self, op: VectorOp) -> None:
        """Appends a checked vector op (called by :class:`VectorBuilder`)."""
        self.ops.append(AivOp(AivCall.VECTOR, where=self._where(), vec=op))

    # -- scenario conveniences ---------------------------------------------------------------
    def post(self, group, fields=None, state=CubeMsgState.VALID, aiv_id=None, pipe="SCALAR") -> int:
        """AllocMessage + PostMessage (both in ``pipe`` mode)."""
        return self.post_message(self.alloc_message(group, pipe), fields, state, aiv_id)

    def fake(self, group, pipe="SCALAR") -> int:
        """AllocMessage<pipe> + PostFakeMsg."""
        return self.post_fake_msg(self.alloc_message(group, pipe))

    def quit(self, group, pipe="SCALAR") -> None:
        """AllocMessage<pipe> + SendQuitMsg."""
        self.send_quit_msg(self.alloc_message(group, pipe))

    def queue_of(self, group_index: int) -> int | None:
        st = self._groups.get(group_index)
        return None if st is None else st.queue


def _state_value(state: int | str, field: str) -> int:
    if isinstance(state, str):
        try:
            return int(CubeMsgState[state.upper()])
        except KeyError:
            raise ConfigError(field, state, f"unknown state; one of {[s.name for s in CubeMsgState]}") from None
    if not isinstance(state, (int, np.integer)) or not 0 <= state <= 255:
        raise ConfigError(field, state, "must be a CubeMsgState name or a uint8")
    return int(state)


@dataclasses.dataclass(frozen=True)
class CubeGroupProgram:
    """A validated kernel: geometry, callbacks and every AIV's ops.

    Attributes:
      name: kernel / scenario name.
      chip: the chip it targets.
      groups: geometry of every group, in creation order.
      callbacks: callback object per group.
      msg_dtypes: message struct type per group.
      barriers: every GroupBarrier.
      aivs: block_idx -> ops, sorted by block_idx.
      queue_of: (group, block_idx) -> bound queue.
      max_steps: bound on the number of engine steps.
      max_received: per-AIC capacity of the received-message log (auto when None).
      build: ``"cpu"``, ``"npu-debug"`` or ``"release"`` (see :class:`CubeGroupKernel`; ``"debug"`` is
        a deprecated alias of ``"cpu"``, normalised here).
      zero_workspace: False: report a relaunch on the first launch's workspace (see :class:`CubeGroupKernel`).
      matmuls: per group, (MatmulType, TCubeTiling) or None.
      gm: the global memory (tensors and their initial bytes).
      tolerances: tensor name -> relative-L2 tolerance of the numerics report, where the kernel's
        own algorithm bounds the accuracy (e.g. operands rounded to float16 by vector ops) rather
        than the matmul's C type (see :meth:`CubeGroupKernel.set_tolerance`).
    """

    name: str
    chip: ChipSpec
    groups: tuple[GroupGeometry, ...]
    callbacks: tuple[Any, ...]
    msg_dtypes: tuple[np.dtype, ...]
    barriers: tuple[BarrierGeometry, ...]
    aivs: tuple[tuple[int, tuple[AivOp, ...]], ...]
    queue_of: Mapping[tuple[int, int], int]
    max_steps: int
    max_received: int | None = None
    build: str = "cpu"
    zero_workspace: bool = True
    matmuls: tuple[Any, ...] = ()
    gm: GlobalMemory = dataclasses.field(default_factory=GlobalMemory, compare=False)
    tolerances: Mapping[str, float] = dataclasses.field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.build not in BUILDS:  # a deprecated alias (dataclasses.replace, the CLI's --build)
            object.__setattr__(self, "build", normalise_build(self.build))

    @property
    def aics(self) -> list[tuple[int, int]]:
        """Every AIC that serves a group, as (group index, AIC index within the group)."""
        return [(gi, k) for gi, g in enumerate(self.groups) for k in range(g.aic_num)]

    def aic_core_index(self, gi: int, k: int) -> int:
        """Absolute AIC index of AIC ``k`` of group ``gi``."""
        return self.groups[gi].first_aic + k

    def writes_per_aic(self) -> list[int]:
        """Posts + fakes + quits into each AIC's block (sizing the receive log)."""
        counts = {ak: 0 for ak in self.aics}
        for b, ops in self.aivs:
            for op in ops:
                if op.kind in (AivCall.POST, AivCall.FAKE, AivCall.QUIT):
                    g = self.groups[op.group]
                    counts[(op.group, g.aic_of_queue(self.queue_of[(op.group, b)]))] += 1
        return [counts[ak] for ak in self.aics]

    def receive_capacity(self) -> int:
        """Entries the receive log of each AIC holds: ``max_received`` or writes + two laps."""
        if self.max_received is not None:
            return self.max_received
        p = max((g.aiv_per_aic for g in self.groups), default=1)
        return max(self.writes_per_aic(), default=0) + 2 * MAX_MSG_PER_AIV * p


class CubeGroupKernel:
    """Builder of a CubeResGroupHandle kernel: groups, barriers and AIV programs.

    Args:
      chip: chip preset name or :class:`ChipSpec` (core counts are checked against it).
      name: kernel name (the scenario name in results).
      max_steps: engine step bound.
      workspace_base: byte address of the zeroed KfcWorkspace.
      max_received: per-AIC receive-log capacity (default: enough for every write plus two laps).
      zero_workspace: False runs the kernel twice and reports the second launch, which starts from
        the first launch's slots and GroupBarrier counters, as when the host does not zero the
        workspace between launches (F10: old QUITs retire live columns, old slots block allocs).
        GM tensors start from their initial values in both launches.
      build: which asserts exist (asc-devkit ``kernel_log.h``): ``"cpu"`` (the CPU twin: a failed
        ``ASCENDC_ASSERT`` or ``ASCENDC_DEBUG_ASSERT`` stops that AIC where the call that holds it is
        made: status ``error``), ``"npu-debug"`` (only ``ASCENDC_DEBUG_ASSERT``) or ``"release"``
        (none). The weaker two do what the device does and list, in ``asserts_violated``, the
        assert the CPU twin would have stopped at. ``"debug"``: deprecated alias of ``"cpu"``.
    """

    def __init__(
        self,
        chip: str | ChipSpec = "910B1",
        name: str = "kernel",
        max_steps: int = 100_000,
        workspace_base: int = 0,
        max_received: int | None = None,
        build: str = "cpu",
        zero_workspace: bool = True,
    ):
        self.chip = get_chip(chip)
        if not isinstance(zero_workspace, bool):
            raise ConfigError("zero_workspace", zero_workspace, "must be true or false")
        self.zero_workspace = zero_workspace
        self.name = name
        self.build = normalise_build(build)
        if not isinstance(max_steps, int) or max_steps < 1:
            raise ConfigError("max_steps", max_steps, "must be an integer >= 1")
        if max_received is not None and (not isinstance(max_received, int) or max_received < 1):
            raise ConfigError("max_received", max_received, "must be an integer >= 1")
        self.max_steps = max_steps
        self.max_received = max_received
        self.workspace = KfcWorkspace(workspace_base)
        self.groups: list[GroupGeometry] = self.workspace.groups
        self.callbacks: list[Any] = []
        self.msg_dtypes: list[np.dtype] = []
        self.barriers: list[BarrierGeometry] = []
        self.matmuls: list[Any] = []
        self.gm = GlobalMemory()
        self.tolerances: dict[str, float] = {}
        self._aivs: dict[int, AivProgram] = {}
        self._bindings: dict[tuple[int, int], int] = {}

    def alloc(self, name: str, shape: Any, dtype: Any, init: Any = None, seed: int = 0) -> Tensor:
        """Allocates a GM tensor (see :meth:`GlobalMemory.alloc`); its ``addr`` goes into messages.
        Without ``init`` it is zero-filled but counts as undefined for the sanitizer's initcheck."""
        return self.gm.alloc(name, shape, dtype, init, seed)

    def set_tolerance(self, tensor: str | Tensor, rel_l2: float) -> None:
        """The numerics report's relative-L2 tolerance for ``tensor`` (default: by its type,
        :data:`ascend_jax.cube_group.matmul.TOLERANCE`), for kernels whose algorithm rounds more than a matmul."""
        t = self.gm.tensor(tensor, "tolerance.tensor")
        if isinstance(rel_l2, bool) or not isinstance(rel_l2, (int, float)) or not 0 <= rel_l2 < 1:
            raise ConfigError(f"tolerance[{t.name!r}]", rel_l2, "must be a number in [0, 1)")
        self.tolerances[t.name] = float(rel_l2)

    def create_cube_res_group(
        self,
        name: str,
        block_start: int,
        block_size: int,
        msg_queue_size: int,
        callback: Any = "merge",
        msg_dtype: np.dtype = CUBE_MSG_BODY,
        matmul: MatmulType | Mapping[str, Any] | None = None,
        tiling: TCubeTiling | Mapping[str, Any] | None = None,
    ) -> GroupGeometry:
        """``CreateCubeResGroup<groupID, MatmulApiType, CallBack, Msg>``: places the group at the
        workspace cursor (spec §2.2). ``matmul`` (the MatmulApiType's A/B/C/bias types) and
        ``tiling`` give the callback its ``mm`` object; both or neither."""
        field = f"group[{len(self.groups)}]"
        if (matmul is None) != (tiling is None):
            missing = "tiling" if tiling is None else "matmul"
            raise ConfigError(f"{field}.{missing}", None, "matmul and tiling go together", f"give {missing} too")
        mm_cfg = None
        if matmul is not None:
            mt = MatmulType.from_table(matmul, f"{field}.matmul")
            mm_cfg = (mt, TCubeTiling.from_table(tiling, f"{field}.tiling").check(mt, f"{field}.tiling"))
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{field}.name", name, "must be a non-empty string")
        if any(g.name == name for g in self.groups):
            raise ConfigError(f"{field}.name", name, "a group with this name already exists")
        cb = resolve_callback(callback, f"{field}.callback")
        probe = GroupGeometry(name, block_start, block_size, msg_queue_size, 64, 0, 0)
        check_group(probe, self.chip.aic_num, field)
        if msg_queue_size > self.chip.aiv_num:  # the CreateCubeResGroup API page: msgQueueSize <= the AIV count
            raise ConfigError(
                f"{field}.msg_queue_size",
                msg_queue_size,
                f"must be at most the chip's AIV count ({self.chip.aiv_num} on {self.chip.name}): the "
                "CreateCubeResGroup API page allows one queue per AIV (no code checks it)",
                f"use msg_queue_size <= {self.chip.aiv_num}",
            )
        for other in self.groups:
            lo, hi = other.first_aic, other.first_aic + other.aic_num
            if probe.first_aic < hi and lo < probe.first_aic + probe.aic_num:
                raise ConfigError(
                    f"{field}.block_start",
                    block_start,
                    f"AICs {probe.first_aic}..{probe.first_aic + probe.aic_num - 1} overlap group "
                    f"{other.name!r} (AICs {lo}..{hi - 1}); an AIC belongs to at most one group",
                    "move the group to free AICs",
                )
        # every check before the workspace moves, so a rejected call changes nothing
        msg_dtype = check_message_dtype(msg_dtype, field=f"{field}.msg_dtype")
        missing = [f for f in getattr(cb, "required_fields", ()) if f not in msg_dtype.names]
        if missing:
            raise ConfigError(
                f"{field}.callback", callback, f"needs message fields {missing} that the message type lacks"
            )
        if isinstance(cb, MatmulCallback) and mm_cfg is None:
            raise ConfigError(
                f"{field}.callback",
                "matmul",
                "the matmul callback needs the group's matmul type and tiling",
                "give matmul = {...} and tiling = {...}",
            )
        g = self.workspace.create_cube_res_group(name, block_start, block_size, msg_queue_size, msg_dtype)
        self.callbacks.append(cb)
        self.msg_dtypes.append(np.dtype(msg_dtype))
        self.matmuls.append(mm_cfg)
        return g

    def group_barrier(self, name: str, arrive_size: int, wait_size: int) -> BarrierGeometry:
        """``GroupBarrier<MTE3_MODE>(ws, arriveSize, waitSize)`` on its own zeroed 512 B-aligned workspace.

        Barrier workspaces are placed after the KfcWorkspace area, 512 B aligned, back to back.
        """
        field = f"barrier[{len(self.barriers)}]"
        if any(b.name == name for b in self.barriers):
            raise ConfigError(f"{field}.name", name, "a barrier with this name already exists")
        for attr, v in (("arrive_size", arrive_size), ("wait_size", wait_size)):
            limit = min(self.chip.aiv_num, BARRIER_MAX_AIV)
            if not isinstance(v, int) or not 1 <= v <= limit:
                raise ConfigError(f"{field}.{attr}", v, f"must be in 1..{limit} (block num, at most 50 copies)")
        if self.barriers:
            last = self.barriers[-1]
            base = last.base_addr + last.workspace_len
        else:
            end = self.workspace.get_kfc_workspace()
            base = -(-end // BARRIER_STRIDE) * BARRIER_STRIDE
        b = BarrierGeometry(name, arrive_size, wait_size, base, len(self.barriers))
        self.barriers.append(b)
        return b

    def aiv(self, block_idx: int) -> AivProgram:
        """The program of AIV ``block_idx`` (created on first use)."""
        if not isinstance(block_idx, (int, np.integer)) or not 0 <= block_idx < self.chip.aiv_num:
            raise ConfigError("aiv.block_idx", block_idx, f"must be in 0..{self.chip.aiv_num - 1} on {self.chip.name}")
        block_idx = int(block_idx)
        if block_idx not in self._aivs:
            self._aivs[block_idx] = AivProgram(self, block_idx)
        return self._aivs[block_idx]

    def _group_index(self, group: GroupGeometry | str | int, field: str) -> int:
        for i, g in enumerate(self.groups):
            if group is g or group == g.name or (isinstance(group, int) and not isinstance(group, bool) and group == i):
                return i
        raise ConfigError(
            field, getattr(group, "name", group), f"no such group; groups: {[g.name for g in self.groups]}"
        )

    def _barrier(self, barrier: BarrierGeometry | str, field: str) -> BarrierGeometry:
        for b in self.barriers:
            if barrier is b or barrier == b.name:
                return b
        raise ConfigError(
            field, getattr(barrier, "name", barrier), f"no such barrier; barriers: {[b.name for b in self.barriers]}"
        )

    def _check_ub_reserve(self, block_idx: int, aiv: AivProgram) -> None:
        """The CreateCubeResGroup API page reserves the last 1600 B + sizeof(msg) of an AIV's UB
        (GroupBarrier's 50 blocks of 32 B and the MTE3 post's staging copy; spec S1, S6): an AIV
        bound to a queue whose UB buffers reach into it is refused (the largest message of its
        groups counts)."""
        if not aiv._groups or not aiv.vec.buffers:
            return
        msg = max(self.msg_dtypes[gi].itemsize for gi in aiv._groups)
        limit = self.chip.ub_size - UB_RESERVE - msg
        used = aiv.vec._used
        if used > limit:
            raise ConfigError(
                f"aiv[{block_idx}] UB buffers",
                f"{used} B",
                f"the last {UB_RESERVE} B + sizeof(msg) = {UB_RESERVE + msg} B of the {self.chip.ub_size} B UB "
                "are reserved by CreateCubeResGroup (API page), leaving "
                f"{limit} B for buffers",
                "use smaller UB buffers",
            )

    def compile(self) -> CubeGroupProgram:
        """Checks the whole kernel (bindings, pending allocs) and freezes it."""
        if not self.groups:
            raise ConfigError("group", [], "a kernel needs at least one group", "add a [[group]]")
        for gi, g in enumerate(self.groups):
            unbound = [q for q in range(g.msg_queue_size) if (gi, q) not in self._bindings]
            if unbound:
                raise ConfigError(
                    f"group[{gi}] ({g.name!r})",
                    f"queues {unbound}",
                    "every queue must be bound by exactly one AIV's assign_queue; an unbound queue "
                    "blocks its AIC on a FREE slot forever",
                    "assign these queues or lower msg_queue_size",
                )
        for b, aiv in sorted(self._aivs.items()):
            self._check_ub_reserve(b, aiv)
            for gi, st in aiv._groups.items():
                if st.pending:
                    raise ConfigError(
                        f"aiv[{b}]",
                        f"alloc #{min(st.pending)} in group {self.groups[gi].name!r}",
                        "alloc_message was never followed by a post; the AIC would block on that FREE slot",
                        "post, post_fake_msg or send_quit_msg every allocated slot",
                    )
        return CubeGroupProgram(
            name=self.name,
            chip=self.chip,
            groups=tuple(self.groups),
            callbacks=tuple(self.callbacks),
            msg_dtypes=tuple(self.msg_dtypes),
            barriers=tuple(self.barriers),
            aivs=tuple((b, tuple(a.ops)) for b, a in sorted(self._aivs.items())),
            queue_of={(gi, b): q for (gi, q), b in self._bindings.items()},
            max_steps=self.max_steps,
            max_received=self.max_received,
            build=self.build,
            zero_workspace=self.zero_workspace,
            matmuls=tuple(self.matmuls),
            gm=self.gm.copy(),
            tolerances=dict(self.tolerances),
        )

"""Group geometry and the KfcWorkspace cursor (spec §2-3).

Symbols (spec §1): ``A`` AICs in the group (``block_size / 2``), ``Q`` queues (``msg_queue_size``),
``P = ceil(Q / A)`` row width of every AIC block (``aiv_per_aic``), ``n_k`` queues served by AIC ``k``
(``P`` except the last, which gets ``Q - (A - 1) * P``), ``S`` message size in bytes, depth ``d`` in
0..3. Each AIC block is a ``4 x P`` row-major matrix of slots; blocks follow each other.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from ascend_jax.errors import ConfigError
from ascend_jax.message import CUBE_MSG_BODY, MAX_MSG_PER_AIV, check_message_dtype

MIX_NUM = 2  # AIVs per AIC in a MIX 1:2 kernel; block_start / block_size are in AIV units
MAX_QUEUES_PER_AIC = 63  # aivWorkState = (1 << n) - 1 in a uint64: n = 64 overflows the shift


@dataclasses.dataclass(frozen=True)
class GroupGeometry:
    """Static geometry of one ``CubeResGroupHandle`` (hashable; fixes array shapes).

    Attributes:
      name: group name (scenario key).
      block_start: first AIC index * 2 ("AIV view").
      block_size: AIC count * 2.
      msg_queue_size: Q, number of queues.
      msg_size: S, bytes per slot.
      base_addr: byte offset of the group's area in the workspace (``GetKfcWorkspace()`` at creation).
      slot_base: index of the group's first slot among all groups' slots (engine numbering).
    """

    name: str
    block_start: int
    block_size: int
    msg_queue_size: int
    msg_size: int
    base_addr: int
    slot_base: int

    @functools.cached_property
    def aic_num(self) -> int:
        """A: AICs in the group."""
        return self.block_size // MIX_NUM

    @functools.cached_property
    def first_aic(self) -> int:
        """Absolute index of the group's first AIC."""
        return self.block_start // MIX_NUM

    @functools.cached_property
    def aiv_per_aic(self) -> int:
        """P = Ceil(Q, A): row width of each AIC block."""
        return -(-self.msg_queue_size // self.aic_num)

    @functools.cached_property
    def num_slots(self) -> int:
        """P * A * 4 slots (``msgSize`` in the implementation)."""
        return self.aiv_per_aic * self.aic_num * MAX_MSG_PER_AIV

    @property
    def area_bytes(self) -> int:
        """Bytes the group takes in the workspace: ``P * A * 4 * S``."""
        return self.num_slots * self.msg_size

    def queues_of_aic(self, k: int) -> int:
        """n_k: queues served by the group's AIC ``k`` (0-based within the group)."""
        p = self.aiv_per_aic
        return p if k < self.aic_num - 1 else self.msg_queue_size - (self.aic_num - 1) * p

    def aic_of_queue(self, q: int) -> int:
        """Group-relative AIC that serves queue ``q``."""
        return q // self.aiv_per_aic

    def slot_index(self, q: int, d: int) -> int:
        """Slot of queue ``q`` at depth ``d``, in messages from the group base (spec §2.3)."""
        p = self.aiv_per_aic
        return (q // p) * p * MAX_MSG_PER_AIV + d * p + q % p

    def slot_addr(self, q: int, d: int) -> int:
        """Byte address of slot (q, d) in the workspace."""
        return self.base_addr + self.slot_index(q, d) * self.msg_size

    def slot_queue_depth(self, index: int) -> tuple[int, int, int]:
        """Inverse of :meth:`slot_index`: ``(aic_sub, column, depth)`` of a group-relative slot."""
        p = self.aiv_per_aic
        k, rem = divmod(index, p * MAX_MSG_PER_AIV)
        d, c = divmod(rem, p)
        return k, c, d


def check_group(g: GroupGeometry, aic_num: int, field: str) -> None:
    """Checks the documented constraints on one group (spec §3.1, §9) against a chip."""
    for name, value in (("block_start", g.block_start), ("block_size", g.block_size)):
        if not isinstance(value, int) or value < 0:
            raise ConfigError(f"{field}.{name}", value, "must be a non-negative integer")
        if value % MIX_NUM:
            raise ConfigError(
                f"{field}.{name}",
                value,
                "must be even: it counts AIVs, 2 per AIC (block_start = first AIC * 2)",
                f"use {value - 1} or {value + 1}",
            )
    if g.block_size == 0:
        raise ConfigError(f"{field}.block_size", 0, "a group needs at least one AIC", "use block_size >= 2")
    if g.first_aic + g.aic_num > aic_num:
        raise ConfigError(
            f"{field}.block_size",
            g.block_size,
            f"AICs {g.first_aic}..{g.first_aic + g.aic_num - 1} exceed the chip's {aic_num} AICs "
            f"(block_start + block_size must be <= {aic_num * MIX_NUM})",
            "lower block_start or block_size",
        )
    q = g.msg_queue_size
    if not isinstance(q, int) or q < 1 or q > 255:
        raise ConfigError(f"{field}.msg_queue_size", q, "must be an integer in 1..255 (uint8 in Ascend C)")
    last = g.queues_of_aic(g.aic_num - 1)
    if last <= 0:
        raise ConfigError(
            f"{field}.msg_queue_size",
            q,
            f"with {g.aic_num} AICs, P = ceil({q}/{g.aic_num}) = {g.aiv_per_aic} leaves the last AIC "
            f"{last} queues; every AIC needs at least one queue",
            "choose msg_queue_size and block_size so that Q - (A-1)*ceil(Q/A) > 0",
        )
    if g.aiv_per_aic > MAX_QUEUES_PER_AIC:
        raise ConfigError(
            f"{field}.msg_queue_size",
            q,
            f"P = {g.aiv_per_aic} queues per AIC; the AIC's 64-bit aivWorkState mask allows at most "
            f"{MAX_QUEUES_PER_AIC}",
            "spread the queues over more AICs",
        )


class KfcWorkspace:
    """``AscendC::KfcWorkspace``: a byte cursor that places groups back to back (spec §2.1-2.2).

    Args:
      base_addr: byte address of the (zeroed, aligned) workspace.
    """

    def __init__(self, base_addr: int = 0):
        if base_addr < 0 or base_addr % 64:
            raise ConfigError("workspace.base_addr", base_addr, "must be >= 0 and 64-byte aligned")
        self._msg_start = base_addr
        self._base = base_addr
        self._slots = 0
        self.groups: list[GroupGeometry] = []

    def get_kfc_workspace(self) -> int:
        """``GetKfcWorkspace()``: the current cursor (bytes)."""
        return self._msg_start

    def update_kfc_workspace(self, offset: int) -> None:
        """``UpdateKfcWorkspace(off)``: ``msgStart += off`` (bytes)."""
        self._msg_start += offset

    def create_cube_res_group(
        self, name: str, block_start: int, block_size: int, msg_queue_size: int, msg_dtype=CUBE_MSG_BODY
    ) -> GroupGeometry:
        """Places a group at the cursor and advances it by ``P * A * 4 * S`` (``CreateCubeResGroup``).

        Only the geometry is checked here against nothing but itself; chip limits are checked by
        the kernel builder.
        """
        dtype = check_message_dtype(msg_dtype, field=f"group {name!r}.msg_dtype")
        g = GroupGeometry(
            name=name,
            block_start=block_start,
            block_size=block_size,
            msg_queue_size=msg_queue_size,
            msg_size=dtype.itemsize,
            base_addr=self._msg_start,
            slot_base=self._slots,
        )
        self.update_kfc_workspace(g.area_bytes if g.block_size > 0 and g.msg_queue_size > 0 else 0)
        self._slots += g.num_slots if g.block_size > 0 and g.msg_queue_size > 0 else 0
        self.groups.append(g)
        return g

    @property
    def used_bytes(self) -> int:
        """Bytes carved so far."""
        return self._msg_start - self._base


def workspace_image(
    groups: list[GroupGeometry],
    slot_state: np.ndarray,
    slot_aiv_id: np.ndarray,
    slot_payload: list[np.ndarray],
) -> np.ndarray:
    """Builds the workspace byte image (uint8) of the given groups.

    Args:
      groups: the geometry of every group, in creation order.
      slot_state: [total_slots] message state per slot.
      slot_aiv_id: [total_slots] aivID per slot.
      slot_payload: per group, [num_slots] bytes-like struct array of the group's message dtype
        holding the payload bytes (the head is overwritten from ``slot_state`` / ``slot_aiv_id``).
    Returns:
      [used bytes] uint8, byte ``i`` at workspace address ``groups[0].base_addr + i``.
    """
    if not groups:
        return np.zeros(0, np.uint8)
    base = groups[0].base_addr
    end = groups[-1].base_addr + groups[-1].area_bytes
    image = np.zeros(end - base, np.uint8)
    for g, payload in zip(groups, slot_payload, strict=True):
        raw = np.frombuffer(payload.tobytes(), np.uint8).reshape(g.num_slots, g.msg_size).copy()
        raw[:, 0] = slot_state[g.slot_base : g.slot_base + g.num_slots]
        raw[:, 1] = slot_aiv_id[g.slot_base : g.slot_base + g.num_slots]
        image[g.base_addr - base : g.base_addr - base + g.area_bytes] = raw.reshape(-1)
    return image

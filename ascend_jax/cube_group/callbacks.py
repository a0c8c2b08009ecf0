"""AIC callbacks (``CallBack::Init`` / ``CallBack::Call``) and the handle calls made inside them.

A callback is a class with ``init(mm, tiling)``, run once per AIC before its first message, and
``call(mm, msg, handle)``, run for every non-QUIT message the AIC receives (spec §6.1). ``mm`` is
the AIC's one Matmul object: what ``init`` and earlier calls set on it persists. The same
callback object serves both engines:

* the reference interpreter calls it with plain Python / numpy scalars, one message at a time;
* the JAX engine traces it once per group with JAX scalars and vmaps it over the group's AICs.

So ``call`` must not branch with Python ``if`` on message values. It describes what to do as data:
``handle.free_message(msg + i, wait_state, when=cond)`` and ``handle.set_skip_msg(k)`` record
requests, ``handle.xp`` is ``numpy`` or ``jax.numpy`` for ``where`` and friends. The engine then
performs the recorded frees in order, one per step, each blocking until its wait state holds
(``FreeMessage(msg, waitState)``, spec §6.4), and finally applies the skip and the release.

Fields past the message's first 64 bytes are read through the AIC's data cache, which may hold
them from an earlier lap; ``handle.data_cache_clean_and_invalid(msg, line)`` before the read makes
it fresh (``ascend_jax.cube_group.dcache``). The built-ins that read such fields do it first.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

import numpy as np

from ascend_jax.cube_group.dcache import check_line
from ascend_jax.errors import ConfigError
from ascend_jax.message import CubeMsgState

#: ``wait_state`` meaning "no wait": plain ``FreeMessage(msg)``.
NO_WAIT = -1


class MsgRef:
    """A message pointer: the received slot plus a whole-message offset (``rcvMsg + i``)."""

    __slots__ = ("offset",)

    def __init__(self, offset: Any = 0):
        self.offset = offset

    def __add__(self, i: Any) -> MsgRef:
        return MsgRef(self.offset + i)


class MsgView(MsgRef):
    """The received message as the callback sees it: head and payload fields by name.

    Attributes:
      state: ``head.msgState`` (VALID, FAKE, or any other non-FREE, non-QUIT value).
      aiv_id: ``head.aivID``.
      <field>: every payload field of the group's message type, e.g. ``msg.skipCnt``. A FAKE
        slot's payload is whatever was last posted there (stale), as on the device.
    """

    __slots__ = ("state", "aiv_id", "_fields")

    def __init__(self, state: Any, aiv_id: Any, fields: dict[str, Any]):
        super().__init__(0)
        self.state = state
        self.aiv_id = aiv_id
        self._fields = fields

    def __getattr__(self, name: str) -> Any:
        fields = object.__getattribute__(self, "_fields")
        if name in fields:
            return fields[name]
        raise AttributeError(f"message has no field {name!r}; fields: {sorted(fields)}")


class AicHandle:
    """What ``call`` may use of ``CubeResGroupHandle`` on an AIC (spec §6.4).

    Attributes:
      xp: ``numpy`` (reference) or ``jax.numpy`` (engine).
      aiv_per_aic: P, static Python int (use it for loop bounds).
      queues: n, queues served by this AIC (may be traced).
      column: ``aivWork``, the received message's column (may be traced).
      depth: the received message's row (may be traced).
    """

    def __init__(self, xp: Any, aiv_per_aic: int, queues: Any, column: Any, depth: Any, dcache: Any = None):
        self.xp = xp
        self.aiv_per_aic = aiv_per_aic
        self.queues = queues
        self.column = column
        self.depth = depth
        #: the received message's fields as read through the AIC's D-cache (``dcache.py``), or None
        self.dcache = dcache
        #: the call's ordered actions: ("free", offset, wait_state, when), ("matmul", words, keep,
        #: when), ("assert", detail, failed) (see :class:`ascend_jax.cube_group.matmul.Matmul`) or ("skip", k,
        #: total, True) (a SetSkipMsg call and its assert, see :meth:`set_skip_msg`)
        self.actions: list[tuple] = []
        self.skip: Any = 0

    @property
    def frees(self) -> list[tuple[Any, Any, Any]]:
        """The free actions as (offset, wait_state, when), in order."""
        return [a[1:] for a in self.actions if a[0] == "free"]

    def free_message(self, msg: MsgRef, wait_state: Any = None, *, when: Any = True) -> None:
        """``FreeMessage(msg)`` or ``FreeMessage(msg, waitState)``, performed only if ``when``.

        ``wait_state`` None (or NO_WAIT) frees without waiting; VALID or FAKE first blocks until the
        slot holds that state. FREE and QUIT are forbidden by the docs: a protocol error.
        """
        if not isinstance(msg, MsgRef):
            raise TypeError("free_message expects the received msg or msg + i")
        self.actions.append(("free", msg.offset, NO_WAIT if wait_state is None else wait_state, when))

    @property
    def msg_lines(self) -> int:
        """Number of 64-byte D-cache lines of the message type (``sizeof(T) / 64``), static."""
        return 1 if self.dcache is None else self.dcache.n_lines

    def data_cache_clean_and_invalid(self, msg: MsgRef, line: int) -> None:
        """``DataCacheCleanAndInvalid<int64_t, CacheLine::SINGLE_CACHE_LINE, DcciDst::CACHELINE_OUT>``
        on the 64-byte line ``line`` of the received message (1: bytes 64..127, the seed's
        ``rcvMsg + 64 B``).

        The framework refreshes only line 0 before ``Call`` (``__RcvMessage``), so a field in a
        later line reads the AIC's cached copy of that line, possibly loaded on an earlier lap,
        until this call drops it; the next read of the line then loads the slot as it is now
        (``ascend_jax.cube_group.dcache``). ``msg`` must be the received message itself (other
        slots' lines are not modelled); ``line`` is a Python int in ``0..msg_lines`` (``msg_lines``
        is the next slot's head line, a no-op).
        """
        if not isinstance(msg, MsgRef):
            raise TypeError("data_cache_clean_and_invalid expects the received msg")
        offset = msg.offset
        if isinstance(offset, (bool, np.bool_)) or not isinstance(offset, (int, np.integer)) or offset != 0:
            raise ConfigError(
                "callback: data_cache_clean_and_invalid(msg, line)",
                f"msg + {offset!r}",
                "only the received message's own lines can be invalidated here",
                "pass msg (a line of another slot is not modelled)",
            )
        line = check_line(line, self.msg_lines)
        if self.dcache is not None:
            self.dcache.invalidate(line)

    def set_skip_msg(self, skip_cnt: Any) -> None:
        """``SetSkipMsg(k)``: after this call the cursor skips the next k columns of the row.

        Calls accumulate (``aivWork += k`` each time). Each call holds the device's assert that
        the new ``aivWork`` stays in the row (``column + k >= queues`` fails, and so does a negative
        k: a uint8_t that wraps; spec F7): asc-devkit ``kernel_operator_cube_group_handle_impl.h``,
        ``SetSkipMsg``, an ``ASCENDC_DEBUG_ASSERT``. The call is recorded in ``actions`` as
        ``("skip", k, running total, True)`` so the assert fires where the call is made, after
        the frees requested before it.
        """
        self.skip = self.skip + skip_cnt
        self.actions.append(("skip", skip_cnt, self.skip, True))


class Callback(Protocol):
    """The AIC callback protocol (``CallBack::Init`` / ``CallBack::Call``)."""

    required_fields: tuple[str, ...]

    def init(self, mm: Any, tiling: Any) -> None: ...

    def call(self, mm: Any, msg: MsgView, handle: AicHandle) -> None: ...


class _StatelessCallback:
    """Built-ins carry no state: two instances behave identically, so they compare equal and
    hash alike (lanes of a batch and the jit cache can share them)."""

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))

    def init(self, mm: Any, tiling: Any) -> None:
        """``CallBack::Init``: the built-ins keep no state."""


class FreeCallback(_StatelessCallback):
    """Built-in ``free``: frees every received message, nothing else."""

    required_fields: tuple[str, ...] = ()

    def call(self, mm: Any, msg: MsgView, handle: AicHandle) -> None:
        handle.free_message(msg)


class MergeCallback(_StatelessCallback):
    """Built-in ``merge`` (DESIGN.md): message merging by ``skipCnt`` as in the seed's callback.

    A VALID message with ``skipCnt`` 0 is freed. With ``skipCnt = k > 0`` the leader is freed with
    wait state VALID, then ``msg + i`` for every i = 1..k with wait state FAKE, then
    ``SetSkipMsg(k)``: the seed's free loop exactly, so a k past the row end waits for a FAKE in
    the slot after the row (an unused column or the next row's first) before ``SetSkipMsg``'s
    assert can fire (issue 24.5; earlier versions stopped the frees at the row end). The loop runs
    to the largest k of the messages it is called with, ``when`` masking the rest. A FAKE that no skip covered is freed (its stale skipCnt is ignored). Like
    the seed's callback it first invalidates the message's lines past the first (none for a
    64-byte message), so it never reads a stale line.
    """

    required_fields: tuple[str, ...] = ("skipCnt",)

    def call(self, mm: Any, msg: MsgView, handle: AicHandle) -> None:
        xp = handle.xp
        for line in range(1, handle.msg_lines):
            handle.data_cache_clean_and_invalid(msg, line)
        k = xp.where(msg.state == CubeMsgState.VALID, msg.skipCnt, 0)
        handle.free_message(msg, xp.where(k > 0, int(CubeMsgState.VALID), NO_WAIT))
        # the seed: for i in 1..k, past the row end too; at least the row's P - 1 followers, so
        # programs of one geometry keep one action count (one compiled engine) unless a k passes it
        for i in range(1, max(int(xp.max(k)), handle.aiv_per_aic - 1) + 1):
            handle.free_message(msg + i, CubeMsgState.FAKE, when=k >= i)
        handle.set_skip_msg(k)


class MatmulCallback(_StatelessCallback):
    """Built-in ``matmul``: a tolerant variant of the seed's Matmul callback (``merge`` plus the
    Matmul of every message; see :class:`SeedCallback` for the exact one).

    For a VALID message with ``skipCnt = k`` (0 for a single task), for i = 0..k: SetOrgShape from
    the message (a value <= 0 takes the tiling's), SetTail(tailM, tailN, tailK) with ``lastTailM``
    instead of tailM for i == k (when lastTailM > 0) and a value <= 0 taking the tiling's
    singleCore (so no tail leaks from an earlier message through the persistent Matmul object),
    SetTensorA(aAddr + i*aGap*sizeof(A), isTransA), SetTensorB(bAddr + i*bGap*sizeof(B),
    isTransB), SetBias(biasAddr) (0: no bias), IterateAll(cAddr + i*cGap*sizeof(C), isAtomic),
    End, then FreeMessage(msg + i, VALID for i = 0 else FAKE); finally SetSkipMsg(k). A FAKE that
    no skip covered is freed without compute (the seed's callback would compute on its stale
    payload). Fields the message type lacks (e.g. with the 64-byte CubeMsgBody: lastTailM, org
    shapes, cGap, biasAddr) count as 0. Before reading anything it invalidates every line of the
    message past the first: the seed's callback does it for +64 B (all of the 128-byte
    CubeMatmulMsg), and the API docs ask it of any message over 64 B, so the tolerant variant
    never reads a stale cAddr, biasAddr or gap.
    """

    required_fields: tuple[str, ...] = (
        "skipCnt", "isTransA", "isTransB", "isAtomic", "tailM", "tailN", "tailK", "aAddr", "bAddr", "cAddr",
    )  # fmt: skip

    def call(self, mm: Any, msg: MsgView, handle: AicHandle) -> None:
        xp = handle.xp
        for line in range(1, handle.msg_lines):
            handle.data_cache_clean_and_invalid(msg, line)
        f = object.__getattribute__(msg, "_fields")

        def get(name: str) -> Any:
            return f.get(name, 0)

        t = mm.tiling
        valid = msg.state == CubeMsgState.VALID
        k = xp.where(valid, msg.skipCnt, 0)
        mm.set_org_shape(
            xp.where(get("mOrgShape") > 0, get("mOrgShape"), t.M),
            xp.where(get("nOrgShape") > 0, get("nOrgShape"), t.N),
            xp.where(get("kaOrgShape") > 0, get("kaOrgShape"), t.Ka),
            xp.where(get("kbOrgShape") > 0, get("kbOrgShape"), t.Kb),
            get("kcOrgShape"),
        )
        # what does not depend on i, computed once (the same values as computed in the loop: the
        # loop runs at least once, P >= 1, so the same fields are read, and nothing in it writes them)
        last_tail_m = get("lastTailM")
        has_last = last_tail_m > 0
        msg_tail_m = msg.tailM
        tail_n = xp.where(msg.tailN > 0, msg.tailN, t.singleCoreN)
        tail_k = xp.where(msg.tailK > 0, msg.tailK, t.singleCoreK)
        a_addr, a_gap, a_size, trans_a = msg.aAddr, get("aGap"), mm.a_itemsize, msg.isTransA
        b_addr, b_gap, b_size, trans_b = msg.bAddr, get("bGap"), mm.b_itemsize, msg.isTransB
        c_addr, c_gap, c_size, atomic = msg.cAddr, get("cGap"), mm.c_itemsize, msg.isAtomic
        bias = get("biasAddr")
        for i in range(handle.aiv_per_aic):
            run = valid & (i <= k)
            tail_m = xp.where((i == k) & has_last, last_tail_m, msg_tail_m)
            mm.set_tail(xp.where(tail_m > 0, tail_m, t.singleCoreM), tail_n, tail_k, when=run)
            mm.set_tensor_a(a_addr + i * a_gap * a_size, trans_a, when=run)
            mm.set_tensor_b(b_addr + i * b_gap * b_size, trans_b, when=run)
            mm.set_bias(bias, when=run)
            mm.iterate_all(c_addr + i * c_gap * c_size, atomic, when=run)
            mm.end()
            if i == 0:
                handle.free_message(msg, xp.where(valid, int(CubeMsgState.VALID), NO_WAIT))
            else:
                handle.free_message(msg + i, CubeMsgState.FAKE, when=k >= i)
        handle.set_skip_msg(k)


class SeedCallback(_StatelessCallback):
    """Built-in ``seed``: the seed document's Matmul callback exactly, including where it hangs.

    It does not look at the head state. For ``k = skipCnt`` (the payload as it is, stale on a
    FAKE) and i = 0..k: SetOrgShape from the message, SetTail(tailM, tailN, tailK) with
    ``lastTailM`` for i == k, SetTensorA(aAddr + i*aGap*sizeof(A), isTransA), SetTensorB(bAddr +
    i*bGap*sizeof(B), isTransB), IterateAll(cAddr + i*cGap*sizeof(C), isAtomic), End, then
    ``FreeMessage(rcvMsg + i, i > 0 ? FAKE : VALID)``; finally SetSkipMsg(k). The Matmul object
    persists across calls, so SetTail's -1 keeps the previous message's extent and 0 is an empty
    tile. An uncovered FAKE is computed on its stale payload and then ``FreeMessage(rcvMsg,
    VALID)`` waits for VALID on a FAKE slot forever: a deadlock whose witness is the AIC waiting
    for VALID. Needs the 128-byte message (``CubeMatmulMsg``). Like the seed it first runs
    DataCacheCleanAndInvalid on ``rcvMsg + 64 B`` (line 1) and on no other line, so with a longer
    message type the fields past byte 128 are read stale. Compare :class:`MatmulCallback`, the
    tolerant variant.
    """

    required_fields: tuple[str, ...] = (
        "skipCnt", "isTransA", "isTransB", "isAtomic", "tailM", "tailN", "tailK", "lastTailM", "mOrgShape",
        "nOrgShape", "kaOrgShape", "kbOrgShape", "kcOrgShape", "aAddr", "bAddr", "cAddr", "aGap", "bGap", "cGap",
    )  # fmt: skip

    def call(self, mm: Any, msg: MsgView, handle: AicHandle) -> None:
        handle.data_cache_clean_and_invalid(msg, 1)  # the seed: DataCacheCleanAndInvalid at rcvMsg + 64 B
        k = msg.skipCnt
        mm.set_org_shape(msg.mOrgShape, msg.nOrgShape, msg.kaOrgShape, msg.kbOrgShape, msg.kcOrgShape)
        # the seed's loop: i = 0..k, past the row end too (at least 0..P - 1: one action count per geometry)
        for i in range(max(int(handle.xp.max(k)), handle.aiv_per_aic - 1) + 1):
            run = i <= k
            mm.set_tail(handle.xp.where(i == k, msg.lastTailM, msg.tailM), msg.tailN, msg.tailK, when=run)
            mm.set_tensor_a(msg.aAddr + i * msg.aGap * mm.a_itemsize, msg.isTransA, when=run)
            mm.set_tensor_b(msg.bAddr + i * msg.bGap * mm.b_itemsize, msg.isTransB, when=run)
            mm.iterate_all(msg.cAddr + i * msg.cGap * mm.c_itemsize, msg.isAtomic, when=run)
            mm.end()
            handle.free_message(msg + i, CubeMsgState.FAKE if i else CubeMsgState.VALID, when=run)
        handle.set_skip_msg(k)


#: funcID of a merge leader in the official sample
SAMPLE_LEADER_FUNC_ID = 1
#: how many followers a merge leader of the official sample covers
SAMPLE_MERGE = 3


class SampleCallback(_StatelessCallback):
    """Built-in ``sample``: the official CubeGroupCustom sample's callback (no Matmul).

    It dispatches on the payload's ``funcId`` (the sample's own 128-byte message,
    ``message.SAMPLE_MSG_BODY``) or ``funcID`` (the seed's 64-byte one) (asc-devkit docs,
    ``CubeResGroupHandle`` usage page, and the sample's ``op_kernel/cube_group_custom.cpp``,
    ``MyCallbackFunc::Call`` and ``CubeGroupCallBack<funcId>``): 0 is a single task, freed with
    ``FreeMessage(rcvMsg)`` (no wait state) and SetSkipMsg(0); 1 is a merge leader that frees itself
    with wait state VALID and the next three columns with FAKE, then SetSkipMsg(3); any other funcID
    frees nothing and skips nothing. It does not look at the head state, so an uncovered FAKE is
    handled by its stale funcID: 0 frees it, 1 hangs in ``FreeMessage(rcvMsg, VALID)``. As in the
    sample, funcId is read before ``rcvMsg + 64 B`` is invalidated (line 1: with the sample's
    128-byte message its own second line; with a 64-byte message the next slot's head line, a
    no-op here).
    """

    required_fields: tuple[str, ...] = ()  # funcId or funcID: checked in call

    def call(self, mm: Any, msg: MsgView, handle: AicHandle) -> None:
        xp = handle.xp
        fields = object.__getattribute__(msg, "_fields")
        name = "funcId" if "funcId" in fields else "funcID"
        if name not in fields:
            raise ConfigError(
                "callback 'sample'",
                sorted(fields),
                "the message needs a funcId (or funcID) field",
                "use message SampleCubeMsgBody or CubeMsgBody",
            )
        func = fields[name]
        single, leader = func == 0, func == SAMPLE_LEADER_FUNC_ID
        k = xp.where(leader, SAMPLE_MERGE, 0)
        handle.data_cache_clean_and_invalid(msg, 1)
        handle.free_message(msg, xp.where(leader, int(CubeMsgState.VALID), NO_WAIT), when=single | leader)
        for i in range(1, SAMPLE_MERGE + 1):  # the sample's loop, whatever P is
            handle.free_message(msg + i, CubeMsgState.FAKE, when=leader)
        handle.set_skip_msg(k)


BUILTIN_CALLBACKS: dict[str, type] = {
    "free": FreeCallback,
    "merge": MergeCallback,
    "matmul": MatmulCallback,
    "seed": SeedCallback,
    "sample": SampleCallback,
}
#: built-ins that run a Matmul (need a ``matmul`` type and ``tiling``; default message CubeMatmulMsg)
MATMUL_CALLBACKS = ("matmul", "seed")


def resolve_callback(spec: Any, field: str = "callback") -> Any:
    """Returns a callback object from a built-in name, ``"python:pkg.module:Class"``, or an object."""
    if not isinstance(spec, str):
        if not (hasattr(spec, "call") and hasattr(spec, "init")):
            raise ConfigError(field, spec, "a callback needs init(mm, tiling) and call(mm, msg, handle)")
        return spec
    if spec in BUILTIN_CALLBACKS:
        return BUILTIN_CALLBACKS[spec]()
    if spec.startswith("python:"):
        target = spec.removeprefix("python:")
        mod_name, _, cls_name = target.partition(":")
        if not mod_name or not cls_name:
            raise ConfigError(field, spec, "must look like 'python:package.module:Class'")
        try:
            cls = getattr(importlib.import_module(mod_name), cls_name)
        except (ImportError, AttributeError) as e:
            raise ConfigError(field, spec, f"cannot be imported ({e})") from None
        return resolve_callback(cls(), field)
    raise ConfigError(
        field, spec, f"unknown callback; built-ins are {sorted(BUILTIN_CALLBACKS)}", "or use 'python:module:Class'"
    )

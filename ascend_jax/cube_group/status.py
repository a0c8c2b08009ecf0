"""Run status, protocol error codes and AIV op kinds: small integer enums carried in the state."""

from __future__ import annotations

import enum
import types


class Status(enum.IntEnum):
    """Outcome of a run (``status`` in the result JSON)."""

    RUNNING = 0
    OK = 1
    DEADLOCK = 2
    MAX_STEPS = 3
    ERROR = 4

    @property
    def label(self) -> str:
        return self.name.lower()


class ErrorCode(enum.IntEnum):
    """Protocol errors detected at run time: the device's asserts, simulator limits, and (as
    findings, never errors) documented misuse the device does not check.

    An assert fires where the call that holds it is made, in the callback's program order: the
    frees and matmuls requested before it are performed first (a free that waits for a state
    waits), then the AIC stops (:data:`ASSERT_MACRO` says which builds have it). The AIC's message
    is in its received log; the other cores run on until nothing can move, so the final state and
    the reported error (that of the lowest-index AIC that stopped) are the same under every
    schedule. :data:`API_MISUSE` codes are never errors: the run does what the device does and the
    result lists them in ``api_misuse``.
    """

    NONE = 0
    SKIP_CROSSES_ROW = 1  # SetSkipMsg: column + k >= n (spec §6.4, F7)
    SKIP_NEGATIVE = 2  # SetSkipMsg with k < 0
    FREE_OUT_OF_BLOCK = 3  # api_misuse: FreeMessage target outside the AIC's 4 x P block
    FREE_UNUSED_COLUMN = 4  # api_misuse: FreeMessage target in a column no queue uses (last AIC)
    BAD_WAIT_STATE = 5  # api_misuse: FreeMessage waitState FREE, QUIT or not a state (docs forbid it)
    RECEIVE_LOG_FULL = 6  # the AIC received more messages than the log holds (raise max_received)
    MATMUL_SHAPE = 7  # SetTail below -1 or SetOrgShape <= 0 (detail: matmul.SHAPE_DETAIL index)
    GM_OUT_OF_RANGE = 9  # a Matmul operand or result outside every GM tensor (detail: the address)

    def describe(self) -> str:
        return _DESCRIPTIONS[self]

    def stops(self, build: str) -> bool:
        """Whether a failed check of this code stops an AIC in ``build`` (``program.BUILDS``):
        an assert the build compiles in, or a simulator limit (every build)."""
        if self in API_MISUSE:
            return False
        macro = ASSERT_MACRO.get(self)
        if macro is None:
            return True  # RECEIVE_LOG_FULL, GM_OUT_OF_RANGE: the simulator's own limits
        return build == "cpu" or (build == "npu-debug" and macro == "ASCENDC_DEBUG_ASSERT")


#: The macro that holds each device assert (asc-devkit ``kernel_log.h`` defines which builds have
#: it: ``ASCENDC_DEBUG_ASSERT`` the CPU twin and NPU builds with ``ASCENDC_DEBUG``, ``ASCENDC_ASSERT``
#: the CPU twin only, being empty on ``__NPU_DEVICE__``).
ASSERT_MACRO = {
    # SetSkipMsg: aivWork += skipCnt, then asserts aivWork < aivNumForCurAic (skipCnt is a uint8_t,
    # so a negative count wraps and fails too): kernel_operator_cube_group_handle_impl.h, SetSkipMsg
    ErrorCode.SKIP_CROSSES_ROW: "ASCENDC_DEBUG_ASSERT",
    ErrorCode.SKIP_NEGATIVE: "ASCENDC_DEBUG_ASSERT",
    # Matmul SetTail / SetOrgShape argument checks (matmul_impl_base.h, CheckTailShape / SetOrgShape)
    ErrorCode.MATMUL_SHAPE: "ASCENDC_ASSERT",
}

#: Documented constraints that no assert checks (kernel_operator_cube_group_handle_impl.h has no
#: check in FreeMessage): findings of kind ``api_misuse``, the run goes on as on the device.
API_MISUSE = frozenset({ErrorCode.FREE_OUT_OF_BLOCK, ErrorCode.FREE_UNUSED_COLUMN, ErrorCode.BAD_WAIT_STATE})


_DESCRIPTIONS = {
    ErrorCode.NONE: "no error",
    ErrorCode.SKIP_CROSSES_ROW: "SetSkipMsg(k) would move the cursor past the end of the row (column + k >= n)",
    ErrorCode.SKIP_NEGATIVE: "SetSkipMsg(k) with k < 0",
    ErrorCode.FREE_OUT_OF_BLOCK: "FreeMessage may only free the received message or a later slot of its AIC's "
    "block (the device writes FREE wherever the pointer lands)",
    ErrorCode.FREE_UNUSED_COLUMN: "FreeMessage may only free slots of columns a queue uses (the device writes FREE "
    "into the unused column all the same)",
    ErrorCode.BAD_WAIT_STATE: "FreeMessage's waitState may only be VALID or FAKE; the API page rules out FREE and "
    "QUIT (the device spins until the slot holds that state, then frees it)",
    ErrorCode.RECEIVE_LOG_FULL: "the AIC received more messages than max_received; raise it",
    ErrorCode.MATMUL_SHAPE: "a Matmul SetTail argument is below -1 or a SetOrgShape argument is not positive",
    ErrorCode.GM_OUT_OF_RANGE: "a Matmul reads or writes GM outside every allocated tensor; nothing was written",
}


class OpKind(enum.IntEnum):
    """AIV op table entries. Fields of an op: ``slot`` and ``a``, ``b``, ``c`` as noted."""

    NOP = 0
    ALLOC = 1  # AllocMessage: block until slot is FREE
    WRITE = 2  # PostMessage / PostFakeMsg / SetQuit: a = state, b = aivID, c = msg id (-1: keep payload)
    WAIT = 3  # Wait<sync>(off) on slot: a = 1 sync (block until FREE), 0 test once
    DELAY = 4  # a = cycles (steps in the lockstep schedule)
    ARRIVE = 5  # GroupBarrier::Arrive: a = barrier, b = index, c = W threshold (-1: no wait)
    BWAIT = 6  # GroupBarrier::Wait: a = barrier, b = index, c = A threshold
    SYNC = 7  # SyncAll() over every core: every AIV at its same SyncAll, every AIC out of its loop
    VECTOR = 8  # an AIV vector op (vector.py): a = its row in the encoded program's ``vec_ops``


class AivCall(enum.StrEnum):
    """The Ascend C call an AIV program op stands for (:class:`ascend_jax.cube_group.program.AivOp`
    ``kind``; the scenario's op names). The encoder turns each into an :class:`OpKind`
    (:data:`ENCODED_KIND`): a post, a fake and a quit are all one slot WRITE there."""

    ALLOC = "alloc"  # AllocMessage<pipe>
    POST = "post"  # PostMessage: head state, aivID and payload
    FAKE = "fake"  # PostFakeMsg: head state FAKE, payload stale
    QUIT = "quit"  # SendQuitMsg / SetQuit
    WAIT = "wait"  # Wait<sync>(offset)
    DELAY = "delay"  # a busy stretch of cycles
    ARRIVE = "arrive"  # GroupBarrier::Arrive
    BARRIER_WAIT = "barrier_wait"  # GroupBarrier::Wait
    SYNC_ALL = "sync_all"  # SyncAll
    VECTOR = "vector"  # a UB / vector-unit op (vector.py)


#: the AivCall members as plain attributes, for inner loops: in Python 3.11 ``AivCall.POST`` costs
#: about 55 ns (the enum metaclass's attribute hook), ``CALL.POST`` about 15
CALL = types.SimpleNamespace(**AivCall.__members__)

#: the engine op each AIV call is encoded as (one home for the mapping)
ENCODED_KIND = {
    AivCall.ALLOC: OpKind.ALLOC,
    AivCall.POST: OpKind.WRITE,
    AivCall.FAKE: OpKind.WRITE,
    AivCall.QUIT: OpKind.WRITE,
    AivCall.WAIT: OpKind.WAIT,
    AivCall.DELAY: OpKind.DELAY,
    AivCall.ARRIVE: OpKind.ARRIVE,
    AivCall.BARRIER_WAIT: OpKind.BWAIT,
    AivCall.SYNC_ALL: OpKind.SYNC,
    AivCall.VECTOR: OpKind.VECTOR,
}


class AicPhase(enum.IntEnum):
    """Where an AIC is in its service loop."""

    RECEIVE = 0  # spinning on the cursor slot until it is not FREE
    CALL = 1  # performing the actions (frees, matmuls) its callback requested, one per step
    DONE = 2  # aivWorkState == 0: CreateCubeResGroup returned
    ERROR = 3  # stopped at a protocol error (an assert this build has, or a simulator limit); never acts again

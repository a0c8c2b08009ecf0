"""Message states, the message head and message struct types (spec §4).

A message struct is a numpy structured dtype laid out exactly as the C compiler lays out the
Ascend C struct (natural alignment, ``align=True``): ``head`` first (2 bytes: ``msgState`` then
``aivID``), user payload after it, total size a multiple of 64 bytes (one scalar D-cache line).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence

import numpy as np

from ascend_jax.errors import ConfigError

CACHE_LINE_BYTES = 64  # scalar D-cache line; every slot is a whole number of lines (spec §2.4)
MAX_MSG_PER_AIV = 4  # queue depth (spec §1)


class CubeMsgState(enum.IntEnum):
    """``AscendC::CubeMsgState`` (uint8), spec §4.1."""

    FREE = 0
    VALID = 1
    QUIT = 2
    FAKE = 3


#: The states as plain ints, for array code and inner loops (an IntEnum member costs a Python
#: attribute look-up and converts on every use).
FREE, VALID, QUIT, FAKE = (int(s) for s in CubeMsgState)

#: ``AscendC::CubeGroupMsgHead``: ``msgState`` (byte 0) and ``aivID`` (byte 1), spec §4.2.
CUBE_GROUP_MSG_HEAD = np.dtype([("msgState", np.uint8), ("aivID", np.uint8)])

#: The seed's 64-byte ``CubeMsgBody`` with the C field offsets (head @0, funcID @2, skipCnt @3,
#: value @4, isTransA..isLast @8..11, tailM/N/K @12/16/20, aAddr..bGap @24..56).
CUBE_MSG_BODY = np.dtype(
    [
        ("head", CUBE_GROUP_MSG_HEAD),
        ("funcID", np.uint8),
        ("skipCnt", np.uint8),
        ("value", np.uint32),
        ("isTransA", np.bool_),
        ("isTransB", np.bool_),
        ("isAtomic", np.bool_),
        ("isLast", np.bool_),
        ("tailM", np.int32),
        ("tailN", np.int32),
        ("tailK", np.int32),
        ("aAddr", np.uint64),
        ("bAddr", np.uint64),
        ("cAddr", np.uint64),
        ("aGap", np.uint64),
        ("bGap", np.uint64),
    ],
    align=True,
)


#: A 128-byte message carrying everything the seed's Matmul callback reads: the CubeMsgBody
#: fields (isAtomic widened to the uint8 ``enAtomic`` 0..3) plus ``lastTailM``, the five
#: SetOrgShape values, ``cGap`` and ``biasAddr`` (the seed's callback uses lastTailM, the org shapes
#: and cGap, which the 64-byte struct lacks; sample v2 uses a 128-byte message). Gaps are in elements.
CUBE_MATMUL_MSG = np.dtype(
    {
        "names": [
            "head", "funcID", "skipCnt", "value", "isTransA", "isTransB", "isAtomic", "isLast",
            "tailM", "tailN", "tailK", "lastTailM",
            "mOrgShape", "nOrgShape", "kaOrgShape", "kbOrgShape", "kcOrgShape",
            "aAddr", "bAddr", "cAddr", "biasAddr", "aGap", "bGap", "cGap",
        ],
        "formats": [
            CUBE_GROUP_MSG_HEAD, np.uint8, np.uint8, np.uint32, np.bool_, np.bool_, np.uint8, np.bool_,
            np.int32, np.int32, np.int32, np.int32,
            np.int32, np.int32, np.int32, np.int32, np.int32,
            np.uint64, np.uint64, np.uint64, np.uint64, np.uint64, np.uint64, np.uint64,
        ],
        "offsets": [0, 2, 3, 4, 8, 9, 10, 11, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 56, 64, 72, 80, 88, 96],
        "itemsize": 128,
    }
)  # fmt: skip

#: The official CubeGroupCustom sample's own 128-byte ``CubeMsgBody`` (asc-devkit examples,
#: ``op_kernel/cube_group_custom.cpp``, ``struct CubeMsgBody``), C offsets under natural alignment:
#: head @0, funcId @2, two reserved head fields @3/@4, isTransA..isLast @8..11, Time / tailN / tailK
#: @12..20, aivStartTime @24, aAddr..cGap @32..72, the five org shapes (int64) @80..112,
#: enPartialSum @120, reserved @122; 124 bytes padded to 128. It has no skipCnt: the sample's
#: leader callback skips a fixed 3. Its ``rcvMsg + 64 B`` invalidate is the message's own second line.
SAMPLE_MSG_BODY = np.dtype(
    {
        "names": [
            "head", "funcId", "reservedHead1", "reservedHead2", "isTransA", "isTransB", "isAtomic", "isLast",
            "Time", "tailN", "tailK", "aivStartTime", "aAddr", "bAddr", "cAddr", "aGap", "bGap", "cGap",
            "mOrgShape", "nOrgShape", "kaOrgShape", "kbOrgShape", "kcOrgShape", "enPartialSum", "reserved",
        ],
        "formats": [
            CUBE_GROUP_MSG_HEAD, np.uint8, np.uint8, np.uint32, np.bool_, np.bool_, np.bool_, np.bool_,
            np.int32, np.int32, np.int32, np.int64, np.uint64, np.uint64, np.uint64, np.uint64, np.uint64, np.uint64,
            np.int64, np.int64, np.int64, np.int64, np.int64, np.bool_, np.uint16,
        ],
        "offsets": [0, 2, 3, 4, 8, 9, 10, 11, 12, 16, 20, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104, 112, 120, 122],
        "itemsize": 128,
    }
)  # fmt: skip

#: Message types by name (scenario ``message = "..."``).
MESSAGE_TYPES = {"CubeMsgBody": CUBE_MSG_BODY, "CubeMatmulMsg": CUBE_MATMUL_MSG, "SampleCubeMsgBody": SAMPLE_MSG_BODY}


def check_message_dtype(dtype: np.dtype, *, field: str = "msg_dtype") -> np.dtype:
    """Checks that ``dtype`` can be a CubeResGroupHandle message type and returns it.

    Rules (spec §2.4): a structured dtype whose first member is named ``head`` and is a
    ``CubeGroupMsgHead`` at offset 0, with ``itemsize % 64 == 0``.
    """
    dtype = np.dtype(dtype)
    if dtype.names is None:
        raise ConfigError(field, str(dtype), "a message type must be a struct", "use message_dtype([...])")
    first = dtype.names[0]
    if first != "head" or dtype.fields["head"][1] != 0:
        raise ConfigError(
            field,
            list(dtype.names),
            "the first member must be the CubeGroupMsgHead named 'head' at offset 0",
            "put ('head', CUBE_GROUP_MSG_HEAD) first",
        )
    if dtype.fields["head"][0] != CUBE_GROUP_MSG_HEAD:
        raise ConfigError(
            f"{field}.head",
            str(dtype.fields["head"][0]),
            "head must be CubeGroupMsgHead (uint8 msgState, uint8 aivID)",
            "use CUBE_GROUP_MSG_HEAD",
        )
    if dtype.itemsize % CACHE_LINE_BYTES != 0:
        raise ConfigError(
            field,
            f"{dtype.itemsize} bytes",
            "sizeof(message) must be a multiple of 64 bytes (one D-cache line)",
            f"pad the struct to {-(-dtype.itemsize // CACHE_LINE_BYTES) * CACHE_LINE_BYTES} bytes",
        )
    return dtype


def message_dtype(fields: Sequence[tuple[str, object]], *, size: int | None = None) -> np.dtype:
    """Builds a message struct type: ``head`` first, then ``fields`` with C alignment.

    Args:
      fields: ``(name, numpy type)`` pairs of the user payload, in declaration order.
      size: total size in bytes; if given, the struct is padded to it (as an explicit
        ``uint8 reserved[]`` tail would). Without it the natural size must already be a multiple
        of 64, else :class:`ConfigError`.
    """
    names = [n for n, _ in fields]
    if "head" in names:
        raise ConfigError("fields", names, "'head' is added first automatically", "drop 'head' from fields")
    dtype = np.dtype([("head", CUBE_GROUP_MSG_HEAD), *fields], align=True)
    if size is not None:
        if size < dtype.itemsize:
            raise ConfigError("size", size, f"smaller than the fields need ({dtype.itemsize} bytes)")
        dtype = np.dtype(
            {
                "names": list(dtype.names),
                "formats": [dtype.fields[n][0] for n in dtype.names],
                "offsets": [dtype.fields[n][1] for n in dtype.names],
                "itemsize": size,
            }
        )
    return check_message_dtype(dtype, field="message")


def pack_message(
    dtype: np.dtype, fields: Mapping[str, object] | None = None, *, field_path: str = "fields"
) -> np.ndarray:
    """Returns one zero-initialised message of ``dtype`` with ``fields`` set (a 0-d struct array).

    ``head`` cannot be set here: the head is written by the post call (state and aivID).
    """
    msg = np.zeros((), dtype=dtype)
    for name, value in (fields or {}).items():
        if name == "head" or name not in dtype.names:
            raise ConfigError(
                f"{field_path}.{name}",
                value,
                f"not a payload field of the message type (fields: {list(dtype.names[1:])})",
                "head is set by the post call's state / aiv_id",
            )
        ftype = dtype.fields[name][0]
        if not _fits(value, ftype):
            raise ConfigError(f"{field_path}.{name}", value, f"does not fit the field type {ftype}")
        msg[name] = value
    return msg


def _fits(value: object, ftype: np.dtype) -> bool:
    """Whether a scalar ``value`` is representable exactly in the numeric field type ``ftype``."""
    if isinstance(value, (bool, np.bool_)):
        return ftype.kind in "biu"
    if isinstance(value, (int, np.integer)):
        if ftype.kind == "b":
            return value in (0, 1)
        if ftype.kind in "iu":
            info = np.iinfo(ftype)
            return info.min <= int(value) <= info.max
        return ftype.kind in "fc"
    if isinstance(value, (float, np.floating)):
        return ftype.kind in "fc"
    return False

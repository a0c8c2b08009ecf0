"""The scenario format as pydantic v2 models: one validation layer, strict types, JSON Schema.

Everything a scenario file (DESIGN.md contract) may contain is declared here, with strict types
(``true`` is not an integer, ``"false"`` is not a boolean, ``123`` is not a name) and size limits
that are checked before anything is allocated. :func:`validate_document` turns pydantic's errors
into :class:`~ascend_jax.errors.ConfigError` naming the field (``aiv[2].ops[3].group``), the value,
the rule and a fix (with a did-you-mean for unknown keys and op names). ``ascend-jax schema``
prints :func:`scenario_json_schema`, which TOML editors (Taplo, Even Better TOML) use for completion.

Checks that need the whole program (group geometry against the chip, queue ownership, tensor
addresses) stay with the builders in :mod:`ascend_jax.cube_group.program`; this module checks
types, keys, ranges and sizes.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ascend_jax.cube_group.matmul import TCubeTiling
from ascend_jax.cube_group.vector import UB_DTYPES, VECTOR_KINDS
from ascend_jax.errors import ConfigError
from ascend_jax.limits import (  # noqa: F401 (re-exported: the schema's limits)
    GEOMETRY_MAX,
    GM_LIMIT_BYTES,
    INT32_MAX,
    MAX_OPS,
    MAX_RECEIVED_LIMIT,
    MAX_SCENARIO_BYTES,
    MAX_STEPS_LIMIT,
    NAME_PATTERN,
    NAME_RULE,
    SEED_MAX,
    did_you_mean,
)

# -- limits (each message names the limit): in ascend_jax.limits, re-exported here -------------

STATE_NAMES = ("FREE", "VALID", "QUIT", "FAKE")
DTYPE_NAMES = ("float16", "bfloat16", "float32", "int8", "int32", "half", "float", "bfloat16_t", "int8_t", "int32_t")


class StrictModel(BaseModel):
    """Base of every table: strict types, unknown keys are errors, values are not coerced."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


Name = Annotated[str, Field(pattern=NAME_PATTERN, description="identifier: " + NAME_RULE)]
Geometry = Annotated[int, Field(ge=0, le=GEOMETRY_MAX)]
PositiveGeometry = Annotated[int, Field(ge=1, le=GEOMETRY_MAX)]
Int32 = Annotated[int, Field(ge=-(2**31), le=INT32_MAX)]
Tile = Annotated[int, Field(ge=1, le=INT32_MAX)]
FieldValue = Union[bool, int, float, str]  # noqa: UP007 (pydantic reads the union in this order)


# -- ops (one table per op kind, selected by "op") -------------------------------------------


class AssignQueueOp(StrictModel):
    """``AssignQueue(queue)``: this AIV's queue in ``group``."""

    op: Literal["assign_queue"]
    group: Name
    queue: Geometry


#: AllocMessage's pipe mode: MTE3 first waits for the MTE3->S flag, which only PostMessage<MTE3> sets again
Pipe = Annotated[
    Literal["SCALAR", "MTE3"],
    Field(description="AllocMessage mode: MTE3 waits for the MTE3->S flag that only an MTE3 PostMessage sets"),
]


class PostOp(StrictModel):
    """``AllocMessage`` + ``PostMessage``: head ``state`` (default VALID), payload ``fields``."""

    op: Literal["post"]
    group: Name
    fields: dict[str, FieldValue] | None = Field(
        None, description="message payload fields; address fields (…Addr) take 'tensor+byte_offset'"
    )
    state: Literal["FREE", "VALID", "QUIT", "FAKE"] | Annotated[int, Field(ge=0, le=3)] = "VALID"
    aiv_id: Annotated[int, Field(ge=0, le=255)] | None = None
    pipe: Pipe = "SCALAR"


class FakeOp(StrictModel):
    """``AllocMessage`` + ``PostFakeMsg``."""

    op: Literal["fake"]
    group: Name
    pipe: Pipe = "SCALAR"


class QuitOp(StrictModel):
    """``AllocMessage`` + ``SendQuitMsg``."""

    op: Literal["quit"]
    group: Name
    pipe: Pipe = "SCALAR"


class WaitOp(StrictModel):
    """``Wait<sync>(offset)`` (default: this AIV's latest post in ``group``)."""

    op: Literal["wait"]
    group: Name
    offset: Int32 | None = None
    sync: bool = True


class DelayOp(StrictModel):
    """``cycles`` idle cycles (one engine step each)."""

    op: Literal["delay"]
    cycles: Annotated[int, Field(ge=1, le=MAX_STEPS_LIMIT)]


class ArriveOp(StrictModel):
    """``GroupBarrier.Arrive(index)``."""

    op: Literal["arrive"]
    barrier: Name
    index: Geometry


class BarrierWaitOp(StrictModel):
    """``GroupBarrier.Wait(index)``."""

    op: Literal["barrier_wait"]
    barrier: Name
    index: Geometry


class SyncAllOp(StrictModel):
    """``SyncAll<isAIVOnly>()``: the AIVs only (the default, as in Ascend C), or every core, AICs
    included (``aiv_only = false``: they reach it only after their loop ends)."""

    op: Literal["sync_all"]
    aiv_only: bool = Field(True, description="true: SyncAll<true> over the AIVs; false: the all-core form")


class UbBufferOp(StrictModel):
    """A UB buffer of this AIV (``LocalTensor``): ``rows x cols`` elements of ``dtype``; vector ops name it."""

    op: Literal["ub_buffer"]
    name: Name
    rows: Tile
    cols: Tile
    dtype: Literal[UB_DTYPES] = "float32"  # type: ignore[valid-type]


class VectorOpTable(StrictModel):
    """An AIV vector op (docs/model/vector.md): ``kind`` and the operands it takes, by buffer name."""

    op: Literal["vector"]
    kind: Literal[VECTOR_KINDS]  # type: ignore[valid-type]
    dst: Name | None = None
    src0: Name | None = None
    src1: Name | None = Field(None, description="second operand; the row column of sub_row / mul_row; select's mask")
    addr: str | Annotated[int, Field(ge=0, le=INT32_MAX)] | None = Field(
        None, description="load / store: GM address, 'tensor+byte_offset' or an integer"
    )
    rows: Tile | None = None
    cols: Tile | None = None
    stride: Tile | None = Field(None, description="load / store: GM elements between rows (default cols)")
    atomic: bool = False
    scalar: float | int | None = Field(None, description="muls / adds operand, select's fill value")


OP_MODELS: dict[str, type[StrictModel]] = {
    "assign_queue": AssignQueueOp,
    "post": PostOp,
    "fake": FakeOp,
    "quit": QuitOp,
    "wait": WaitOp,
    "delay": DelayOp,
    "arrive": ArriveOp,
    "barrier_wait": BarrierWaitOp,
    "sync_all": SyncAllOp,
    "ub_buffer": UbBufferOp,
    "vector": VectorOpTable,
}
Op = Annotated[
    Union[  # noqa: UP007
        AssignQueueOp,
        PostOp,
        FakeOp,
        QuitOp,
        WaitOp,
        DelayOp,
        ArriveOp,
        BarrierWaitOp,
        SyncAllOp,
        UbBufferOp,
        VectorOpTable,
    ],  # fmt: skip
    Field(discriminator="op"),
]


# -- tables ----------------------------------------------------------------------------------


class MatmulTable(StrictModel):
    """``MatmulType`` element types of A, B, C and bias (GM, ND)."""

    a: Literal[DTYPE_NAMES] = "float16"  # type: ignore[valid-type]
    b: Literal[DTYPE_NAMES] = "float16"  # type: ignore[valid-type]
    c: Literal[DTYPE_NAMES] = "float32"  # type: ignore[valid-type]
    bias: Literal[DTYPE_NAMES] = "float32"  # type: ignore[valid-type]
    a_format: Literal["ND"] = "ND"
    b_format: Literal["ND"] = "ND"
    c_format: Literal["ND"] = "ND"


#: ``[group.tiling]``: the fields of :class:`~ascend_jax.cube_group.matmul.TCubeTiling` (its one
#: home), each an int32 > 0, required where the dataclass has no default
TilingTable = create_model(
    "TilingTable",
    __base__=StrictModel,
    __doc__="The ``TCubeTiling`` fields a single-core IterateAll uses, in elements (int32, > 0).",
    **{f.name: (Tile, ... if f.default is dataclasses.MISSING else f.default) for f in dataclasses.fields(TCubeTiling)},
)


class GroupTable(StrictModel):
    """``[[group]]``: ``CreateCubeResGroup(groupID, blockStart, blockSize, msgQueueSize)``."""

    name: Name
    block_start: Geometry = Field(description="AIV view: first AIC index * 2")
    block_size: PositiveGeometry = Field(description="AIC count * 2")
    msg_queue_size: PositiveGeometry
    callback: str = Field(
        "merge", description="built-in callback name, or 'python:package.module:Class' (needs --allow-python)"
    )
    message: Literal["CubeMsgBody", "CubeMatmulMsg", "SampleCubeMsgBody"] | None = None
    matmul: MatmulTable | None = None
    tiling: TilingTable | None = None

    @field_validator("callback")
    @classmethod
    def _callback_form(cls, v: str) -> str:
        if v.startswith("python:"):
            mod, _, attr = v.removeprefix("python:").partition(":")
            ident = r"[A-Za-z_][A-Za-z0-9_]*"
            if not (re.fullmatch(rf"{ident}(\.{ident})*", mod) and re.fullmatch(ident, attr)):
                raise PydanticCustomError("callback_form", "must look like 'python:package.module:Class'")
        return v


class BarrierTable(StrictModel):
    """``[[barrier]]``: a ``GroupBarrier`` with ``arrive_size`` arriving and ``wait_size`` waiting AIVs."""

    name: Name
    arrive_size: PositiveGeometry
    wait_size: PositiveGeometry


class AivTable(StrictModel):
    """``[[aiv]]``: the program of the AIV with ``block_idx``."""

    block_idx: Geometry
    ops: list[Op] = Field(max_length=MAX_OPS)


class TensorTable(StrictModel):
    """``[[tensor]]``: a GM tensor (``aclrtMalloc``) and its initial value."""

    name: Name
    shape: list[Annotated[int, Field(ge=1, le=INT32_MAX)]] = Field(min_length=1, max_length=8)
    dtype: Literal[DTYPE_NAMES]  # type: ignore[valid-type]
    init: str = Field(
        "zeros",
        description="'zeros', 'random' or a .npy path relative to the scenario's folder; absent: zero-filled, "
        "but the sanitizer's initcheck counts it as undefined (device memory is not zeroed)",
    )
    seed: Annotated[int, Field(ge=0, le=SEED_MAX)] = 0

    @field_validator("init")
    @classmethod
    def _init_form(cls, v: str) -> str:
        if v not in ("zeros", "random") and not v.endswith(".npy"):
            raise PydanticCustomError("init_form", "must be 'zeros', 'random' or a path ending in .npy")
        return v


class Scenario(StrictModel):
    """A scenario file: groups, barriers, AIV programs and GM tensors (DESIGN.md contract)."""

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        frozen=True,
        title="ascend_jax scenario",
        json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema"},
    )

    name: Annotated[str, Field(min_length=1, max_length=200)] = "scenario"
    chip: str = Field(
        "910B1",
        description="preset 910B1..910B4 or an Ascend 950PR/950DT bin (e.g. 950PR_9599), or a CANN platform .ini path (scenario-relative)",
    )
    max_steps: Annotated[int, Field(ge=1, le=MAX_STEPS_LIMIT)] = 100_000
    max_received: Annotated[int, Field(ge=1, le=MAX_RECEIVED_LIMIT)] | None = None
    build: Literal["cpu", "npu-debug", "release", "debug"] = Field(
        "cpu",
        description="cpu (the CPU twin): ASCENDC_ASSERT and ASCENDC_DEBUG_ASSERT stop that AIC (status error); "
        "npu-debug (NPU build with ASCENDC_DEBUG): only ASCENDC_DEBUG_ASSERT; release: no assert. The weaker "
        "builds list what the CPU twin would have hit in asserts_violated. debug: deprecated alias of cpu",
    )
    zero_workspace: bool = Field(
        True,
        description="false: report a relaunch that starts from the first launch's slots and barrier counters",
    )
    group: list[GroupTable] = Field(min_length=1)
    barrier: list[BarrierTable] = []
    aiv: list[AivTable] = []
    tensor: list[TensorTable] = []

    @model_validator(mode="after")
    def _sizes(self) -> Scenario:
        n_ops = sum(len(a.ops) for a in self.aiv)
        if n_ops > MAX_OPS:
            raise PydanticCustomError(
                "too_many_ops", "{n} ops in all AIVs; the limit is {limit}", {"n": n_ops, "limit": MAX_OPS}
            )
        return self


# -- errors ----------------------------------------------------------------------------------

_TABLE_MODELS: dict[str, type[BaseModel]] = {
    "group": GroupTable,
    "barrier": BarrierTable,
    "aiv": AivTable,
    "tensor": TensorTable,
}


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that validates the table at ``loc`` (a pydantic error location)."""
    model: type[BaseModel] | None = Scenario
    i = 0
    while i < len(loc) and model is not None:
        key = loc[i]
        if model is Scenario and key in _TABLE_MODELS:
            model, i = _TABLE_MODELS[key], i + 2  # skip the list index
        elif model is GroupTable and key in ("matmul", "tiling"):
            model, i = (MatmulTable if key == "matmul" else TilingTable), i + 1
        elif model is AivTable and key == "ops":
            if i + 2 < len(loc) and loc[i + 2] in OP_MODELS:
                model, i = OP_MODELS[loc[i + 2]], i + 3
            else:
                return None
        else:
            return None
    return model


#: Location parts pydantic adds for the member of a union that failed (not keys of the file).
_UNION_MEMBER = re.compile(r"^(int|str|bool|float|none|constrained-\w+|[\w-]+\[.*\])$", re.S)


def _path(loc: tuple[Any, ...]) -> str:
    """``('aiv', 2, 'ops', 3, 'post', 'group')`` -> ``aiv[2].ops[3].group`` (union tags dropped)."""
    out = ""
    for j, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif j >= 3 and loc[j - 2] == "ops" and isinstance(loc[j - 1], int) and part in OP_MODELS:
            continue  # the discriminator's tag, not a key of the file
        elif j > 0 and _UNION_MEMBER.match(str(part)):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "scenario"


def _describe(err: Mapping[str, Any]) -> tuple[str, Any, str, str]:
    """(field, value, rule, fix) for one pydantic error."""
    kind, loc, value, ctx = err["type"], tuple(err["loc"]), err.get("input"), err.get("ctx") or {}
    field = _path(loc)
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        allowed = sorted(model.model_fields) if model else []
        return field, value, "unknown key", f"{did_you_mean(loc[-1], allowed)}allowed keys: {allowed}"
    if kind == "missing":
        return field, None, "is required", f"add {loc[-1]} = ..."
    if kind == "union_tag_invalid":
        tag = ctx.get("tag")
        return (
            f"{field}.op",
            tag,
            f"must be one of {sorted(OP_MODELS)}",
            (did_you_mean(tag, OP_MODELS) or "use one of those").strip(),
        )
    if kind == "union_tag_not_found":
        return f"{field}.op", None, "is required", f"every op table needs op = one of {sorted(OP_MODELS)}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return field, value, "must be a table", "write it as { key = value, ... } or a [section]"
    if kind == "list_type":
        return field, value, "must be an array", "write it as [ ... ] (or [[tables]])"
    if kind == "int_type":
        fix = "write the number without quotes" if isinstance(value, str) else "write a whole number, e.g. 4"
        if isinstance(value, bool):
            fix = "write a number (true/false are not integers)"
        return field, value, "must be an integer", fix
    if kind in ("float_type",):
        return field, value, "must be a number", "true/false and quoted numbers are not numbers"
    if kind == "bool_type":
        return field, value, "must be true or false", "write it unquoted: true or false"
    if kind == "string_type":
        return field, value, "must be a string", "put it in double quotes"
    if kind == "greater_than_equal":
        return field, value, f"must be >= {ctx['ge']}", f"use a value of at least {ctx['ge']}"
    if kind == "less_than_equal":
        return field, value, f"must be <= {ctx['le']} (the limit)", "use a smaller value"
    if kind == "string_pattern_mismatch":
        return field, value, NAME_RULE, "rename it"
    if kind == "string_too_long":
        return field, value, f"must be at most {ctx['max_length']} characters", "shorten it"
    if kind == "string_too_short":
        return field, value, "must not be empty", "write at least one character"
    if kind == "too_short":
        return field, value, f"needs at least {ctx['min_length']} entries", f"add a [[{loc[-1]}]] table"
    if kind == "too_long":
        return field, f"{ctx.get('actual_length')} entries", f"at most {ctx['max_length']} (the limit)", "split it"
    if kind == "literal_error":
        options = [o.strip().strip("'") for o in str(ctx.get("expected", "")).replace(" or ", ", ").split(",")]
        return field, value, f"must be one of {options}", (did_you_mean(value, options) or "use one of those").strip()
    if kind == "too_many_ops":
        return "aiv", f"{ctx['n']} ops", f"at most {ctx['limit']} ops in all (the limit)", "split the scenario"
    # custom rules and anything else: pydantic's own message is already in words
    fix = "follow the rule; docs/reference/scenario.md lists every key and its rules"
    return field, value, str(err.get("msg", kind)).removeprefix("Value error, "), fix


def config_error(e: ValidationError) -> ConfigError:
    """The first error of a pydantic ``ValidationError`` as a :class:`ConfigError` (others counted)."""
    errs = e.errors(include_url=False)
    # an unknown key first: a misspelt key is usually why a required one is "missing"
    errs.sort(key=lambda err: err["type"] != "extra_forbidden")
    field, value, rule, fix = _describe(errs[0])
    others = len({_path(tuple(err["loc"])) for err in errs} - {_path(tuple(errs[0]["loc"]))})
    if others:
        rule += f" (and errors in {others} more field{'s' if others > 1 else ''})"
    return ConfigError(field, value, rule, fix)


def config_errors(e: ValidationError, limit: int | None = None) -> tuple[list[ConfigError], int]:
    """Every error of a pydantic ``ValidationError`` as a :class:`ConfigError`, one per field (unknown
    keys first), at most ``limit`` of them; also returns how many fields have errors."""
    errs = e.errors(include_url=False)
    errs.sort(key=lambda err: err["type"] != "extra_forbidden")
    seen: dict[str, dict[str, Any]] = {}
    for err in errs:
        seen.setdefault(_path(tuple(err["loc"])), err)
    shown = list(seen.values())[:limit] if limit is not None else list(seen.values())
    return [ConfigError(*_describe(err)) for err in shown], len(seen)


def validate_document(doc: Any) -> Scenario:
    """Validates a parsed scenario document; raises :class:`ConfigError` on the first problem."""
    if not isinstance(doc, Mapping):
        raise ConfigError("scenario", type(doc).__name__, "must be a table", "write key = value pairs and [tables]")
    try:
        return Scenario.model_validate(dict(doc))
    except ValidationError as e:
        raise config_error(e) from None


def scenario_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the scenario format."""
    return Scenario.model_json_schema()

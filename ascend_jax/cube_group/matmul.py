"""The Ascend C Matmul high-level API as the AIC callbacks see it, and its numerics.

Three layers:

* :class:`MatmulType` (``MatmulImpl<A_TYPE, B_TYPE, C_TYPE, BIAS_TYPE>``: element types and
  layouts) and :class:`TCubeTiling` (the tiling struct, validated against the documented
  constraints and the Atlas A2 buffer sizes).
* :class:`Matmul`: the ``mm`` object of an AIC, created before ``Init`` and passed to every
  ``call(mm, msg, handle)`` of that AIC. Its setters (``set_org_shape``, ``set_tail``,
  ``set_tensor_a``/``b``, ``set_bias``, ...) change state that persists across calls, as on the
  device; ``iterate_all`` appends a *matmul action* (the state it sees plus C and enAtomic,
  :data:`ACTION_FIELDS` words) to the handle's ordered action list, next to its
  ``free_message`` actions. The engines perform the actions in order, one per step.
* The compute: :func:`compute_tiles` (JAX, one batched ``dot_general`` per K chunk for every AIC
  of a step and every batch lane), :func:`hw_matmul` (numpy emulation of the same hardware numerics, used
  by the reference interpreter) and :func:`exact_matmul` (float64, the numerics reference).

Numerics of the cube unit (Atlas A2), as modelled:

* fp16 x fp16 and bf16 x bf16 products are exact in fp32, fp32 x fp32 is computed in fp32 and
  int8 x int8 in int32. The accumulator (L0C) is fp32, or int32 for int8.
* K is consumed in ``baseK`` chunks: each chunk's partial product is formed in the accumulator
  type and added to L0C chunk after chunk (the bias, when set, is L0C's initial value). The order
  of the additions inside one chunk is the hardware's and is not modelled (XLA's dot order).
* The one rounding to the C type (round to nearest even) happens when L0C is written out. An
  atomic write then combines with GM in the C type: ``add`` rounds once more to the C type,
  ``max`` / ``min`` compare in the C type.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ascend_jax.compare import rel_l2  # noqa: F401  (re-exported: the one definition is in compare)
from ascend_jax.errors import ConfigError
from ascend_jax.gm import GM_BASE, dtype_name, get_dtype

if TYPE_CHECKING:  # the JAX compute imports jax in its functions: the reference path never loads it
    import jax

# Atlas A2 (dav-c220) buffer sizes, bytes.
L0A_SIZE = 64 * 1024
L0B_SIZE = 64 * 1024
L0C_SIZE = 128 * 1024
L1_SIZE = 512 * 1024
#: Bytes per C0 block: C0 = 32 / sizeof(input element) (16 for fp16/bf16, 8 for fp32, 32 for int8).
C0_BYTES = 32
#: IterateAll ``enAtomic`` values.
ATOMIC_NONE, ATOMIC_ADD, ATOMIC_MAX, ATOMIC_MIN = 0, 1, 2, 3
ATOMIC_NAMES = {0: "none", 1: "add", 2: "max", 3: "min"}

_FLOATS = ("float16", "bfloat16", "float32")
#: (A/B input type) -> (accumulator type, allowed C types, allowed bias types).
#: Atlas A2: a float16, bfloat16 or float32 input takes a float32 or float16 bias; int8 inputs
#: give int32, or float16 through the dequantisation scale (``SetQuantScalar``), with an int32 bias.
SUPPORTED = {
    "float16": ("float32", _FLOATS, ("float16", "float32")),
    "bfloat16": ("float32", _FLOATS, ("float32", "float16")),
    "float32": ("float32", _FLOATS, ("float32", "float16")),
    "int8": ("int32", ("int32", "float16"), ("int32",)),
}

#: The narrower set a scenario (TOML) accepts, after docs/reference/scenario.md: (A type) -> (C types,
#: bias types). Nothing in a scenario sets the dequantisation scale (``SetQuantScalar`` is a Python
#: call), so int8 inputs give int32 only; bfloat16 and float32 inputs take a float32 bias.
SCENARIO_SUPPORTED = {
    "float16": (_FLOATS, ("float16", "float32")),
    "bfloat16": (_FLOATS, ("float32",)),
    "float32": (_FLOATS, ("float32",)),
    "int8": (("int32",), ("int32",)),
}

#: Relative-L2 tolerance against the float64 reference, by C type. fp16 / bf16: 8 unit roundoffs
#: of the output type (one rounding at write-out, one more per atomic add); fp32: fp32
#: accumulation over K (~sqrt(K) unit roundoffs for K up to ~10^4); int32: exact.
TOLERANCE = {"float16": 8 * 2.0**-11, "bfloat16": 8 * 2.0**-8, "float32": 1e-5, "int32": 0.0}


#: np.where's result dtype for two numpy operand dtypes (computed by np.where itself, once per pair)
_WHERE_DTYPE: dict[tuple[np.dtype, np.dtype], np.dtype] = {}


def _numpy_scalar_where(keep_if: Any, old: Any, value: Any, old_keep: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """``(np.where(keep_if, old, value), np.where(keep_if, old_keep, False))`` without np.where, for
    the reference's case: a 0-d boolean ``keep_if`` and two 0-d numpy operands (arrays or numpy
    scalars; no Python numbers, whose promotion depends on their value). The same result: a new 0-d
    array of np.where's dtype for the pair (asked of np.where once per dtype pair), holding the
    chosen operand cast to it, as np.where casts it. None for any other case (the caller uses np.where)."""
    if type(keep_if) is not np.bool_ and not (
        type(keep_if) is np.ndarray and keep_if.ndim == 0 and keep_if.dtype.kind == "b"
    ):
        return None
    if type(old_keep) is np.ndarray:
        if old_keep.ndim or old_keep.dtype.kind != "b":
            return None
    elif type(old_keep) is not bool:
        return None
    if type(old) is not np.ndarray and not isinstance(old, np.generic):
        return None
    if type(value) is not np.ndarray and not isinstance(value, np.generic):
        return None  # (ndarray subclasses, Python numbers: np.where)
    if old.ndim or value.ndim:
        return None
    pair = (old.dtype, value.dtype)
    dtype = _WHERE_DTYPE.get(pair)
    if dtype is None:
        dtype = _WHERE_DTYPE[pair] = np.where(keep_if, old, value).dtype
    if keep_if:
        return np.array(old, dtype), np.array(old_keep, bool)
    return np.array(value, dtype), np.array(False)


@dataclasses.dataclass(frozen=True)
class MatmulType:
    """``MatmulType<pos, format, T>`` for A, B, C and bias (position GM, format ND).

    Attributes:
      a, b, c, bias: element type names; A and B must match (Atlas A2 combinations, see
        :data:`SUPPORTED`).
      a_format, b_format, c_format: ``"ND"`` (row-major; the only layout modelled).
    """

    a: str = "float16"
    b: str = "float16"
    c: str = "float32"
    bias: str = "float32"
    a_format: str = "ND"
    b_format: str = "ND"
    c_format: str = "ND"

    def __post_init__(self) -> None:
        for key in ("a", "b", "c", "bias"):
            object.__setattr__(self, key, dtype_name(get_dtype(getattr(self, key), f"matmul.{key}")))
        for key in ("a_format", "b_format", "c_format"):
            if getattr(self, key) != "ND":
                raise ConfigError(
                    f"matmul.{key}", getattr(self, key), "only the ND layout is modelled", "store the tensor as ND"
                )
        if self.a not in SUPPORTED:
            raise ConfigError("matmul.a", self.a, f"A must be one of {sorted(SUPPORTED)} on Atlas A2")
        if self.b != self.a:
            raise ConfigError("matmul.b", self.b, f"B must have A's type ({self.a}) on Atlas A2")
        acc, cs, biases = SUPPORTED[self.a]
        if self.c not in cs:
            raise ConfigError("matmul.c", self.c, f"with {self.a} inputs C must be one of {list(cs)}")
        if self.bias not in biases:
            raise ConfigError("matmul.bias", self.bias, f"with {self.a} inputs the bias must be one of {list(biases)}")

    @property
    def acc(self) -> str:
        return SUPPORTED[self.a][0]

    def dtype(self, which: str) -> np.dtype:
        return get_dtype(getattr(self, which) if which != "acc" else self.acc)

    @property
    def dequant(self) -> bool:
        """int8 inputs with a float16 C: L0C (int32) is scaled by the quant scale on the way out."""
        return self.a == "int8" and self.c == "float16"

    @property
    def c0(self) -> int:
        return C0_BYTES // self.dtype("a").itemsize

    @property
    def tolerance(self) -> float:
        return TOLERANCE[self.c]

    @property
    def label(self) -> str:
        return f"{self.a}x{self.b}->{self.c}"

    @classmethod
    def from_table(cls, table: Any, field: str = "matmul") -> MatmulType:
        if isinstance(table, MatmulType):
            return table
        if not isinstance(table, Mapping):
            raise ConfigError(field, table, "must be a table like {a = 'float16', b = 'float16', c = 'float32'}")
        allowed = {f.name for f in dataclasses.fields(cls)}
        for key in table:
            if key not in allowed:
                raise ConfigError(f"{field}.{key}", table[key], f"unknown key; allowed: {sorted(allowed)}")
        return cls(**table)


def check_scenario_types(table: Any, field: str = "matmul") -> MatmulType:
    """The Matmul type of a scenario's ``[[group]] matmul`` table: :meth:`MatmulType.from_table`,
    then the scenario's narrower combinations (:data:`SCENARIO_SUPPORTED`). Raises
    :class:`ConfigError` naming ``{field}.c`` or ``{field}.bias``; returns the type."""
    mt = MatmulType.from_table(table, field)
    cs, biases = SCENARIO_SUPPORTED[mt.a]
    if mt.c not in cs:
        raise ConfigError(
            f"{field}.c",
            mt.c,
            f"in a scenario {mt.a} inputs give C in {list(cs)} (a float16 C from int8 needs SetQuantScalar, "
            "which nothing in a scenario calls)",
            f"use c = {cs[0]!r}, or build the kernel in Python and call mm.set_quant_scalar",
        )
    if mt.bias not in biases:
        raise ConfigError(
            f"{field}.bias",
            mt.bias,
            f"in a scenario {mt.a} inputs take a bias in {list(biases)}",
            f"use bias = {biases[-1]!r}",
        )
    return mt


@dataclasses.dataclass(frozen=True)
class TCubeTiling:
    """The subset of ``TCubeTiling`` that shapes a single-core IterateAll, validated.

    Attributes (elements):
      M, N, Ka, Kb: original shapes (the defaults of SetOrgShape).
      singleCoreM, singleCoreN, singleCoreK: the shape one IterateAll computes (tails may shrink it).
      baseM, baseN, baseK: the shape of one cube instruction; K is accumulated in baseK chunks.
      depthA1, depthB1, stepM, stepN, stepKa, stepKb: L1 buffering (checked for capacity only).
    """

    M: int
    N: int
    Ka: int
    Kb: int
    singleCoreM: int
    singleCoreN: int
    singleCoreK: int
    baseM: int
    baseN: int
    baseK: int
    depthA1: int = 1
    depthB1: int = 1
    stepM: int = 1
    stepN: int = 1
    stepKa: int = 1
    stepKb: int = 1

    @classmethod
    def from_table(cls, table: Any, field: str = "tiling") -> TCubeTiling:
        if isinstance(table, TCubeTiling):
            return table
        if not isinstance(table, Mapping):
            raise ConfigError(field, table, "must be a table of TCubeTiling fields")
        names = [f.name for f in dataclasses.fields(cls)]
        for key in table:
            if key not in names:
                raise ConfigError(f"{field}.{key}", table[key], f"unknown TCubeTiling field; fields: {names}")
        table = dict(table)
        if "K" in table:
            raise ConfigError(f"{field}.K", table["K"], "give Ka and Kb")
        for key in names[:10]:
            if key not in table:
                raise ConfigError(f"{field}.{key}", None, "is required")
        return cls(**table)

    def check(self, mt: MatmulType, field: str = "tiling") -> TCubeTiling:
        """Checks the documented constraints for ``mt``; returns self."""
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"{field}.{f.name}", v, "must be an integer > 0")
        for single, org, name in (
            (self.singleCoreM, self.M, "M"),
            (self.singleCoreN, self.N, "N"),
            (self.singleCoreK, min(self.Ka, self.Kb), "Ka and Kb"),
        ):
            if single > org:
                raise ConfigError(f"{field}.singleCore{name[0]}", single, f"must be <= {name} ({org})")
        in_size = mt.dtype("a").itemsize
        c0 = mt.c0
        for key, align, why in (
            ("baseM", 16, "16 (fractal rows)"),
            ("baseN", 16, "16 (fractal columns)"),
            ("baseK", c0, f"C0 = {c0} for {mt.a}"),
        ):
            if getattr(self, key) % align:
                raise ConfigError(f"{field}.{key}", getattr(self, key), f"must be a multiple of {why}")
        if self.baseM * self.baseK * in_size > L0A_SIZE:
            raise ConfigError(
                f"{field}.baseM",
                self.baseM,
                f"baseM*baseK*{in_size} B = {self.baseM * self.baseK * in_size} > L0A {L0A_SIZE}",
            )
        if self.baseK * self.baseN * in_size > L0B_SIZE:
            raise ConfigError(
                f"{field}.baseN",
                self.baseN,
                f"baseK*baseN*{in_size} B = {self.baseK * self.baseN * in_size} > L0B {L0B_SIZE}",
            )
        if self.baseM * self.baseN * 4 > L0C_SIZE:
            raise ConfigError(
                f"{field}.baseM", self.baseM, f"baseM*baseN*4 B = {self.baseM * self.baseN * 4} > L0C {L0C_SIZE}"
            )
        l1 = (self.depthA1 * self.baseM + self.depthB1 * self.baseN) * self.baseK * in_size
        if l1 > L1_SIZE:
            raise ConfigError(f"{field}.depthA1", self.depthA1, f"A1 + B1 buffers take {l1} B > L1 {L1_SIZE}")
        return self


class _NoMatmul:
    """``mm`` of a group configured without a Matmul type: any use is a configuration error."""

    def __init__(self, group: str):
        self._group = group

    def __getattr__(self, name: str) -> Any:
        raise ConfigError(
            f"group {self._group!r}",
            f"mm.{name}",
            "the callback uses the Matmul object but the group has no matmul type and tiling",
            "give the group matmul = {...} and tiling = {...}",
        )


#: The state a Matmul object keeps between calls (one int32 word each; asc-devkit
#: ``impl/adv_api/detail/matmul/param/matmul_shape_info.h`` MatmulShapeInfo holds the org and
#: singleCore shapes, ``CopyCubeIn::SetInput`` the A/B tensors, ``BiasScheduler`` the bias).
#: ``quant_scale`` is the float32 bit pattern of SetQuantScalar's scale.
MM_FIELDS = (
    "org_m",
    "org_n",
    "org_ka",
    "org_kb",
    "org_kc",
    "single_m",
    "single_n",
    "single_k",
    "a_addr",
    "trans_a",
    "b_addr",
    "trans_b",
    "bias_addr",
    "has_bias",
    "quant_scale",
)
N_MM = len(MM_FIELDS)
#: An IterateAll action: the Matmul state it sees, then its own two arguments.
ACTION_FIELDS = (*MM_FIELDS, "c_addr", "atomic")
AF = {name: i for i, name in enumerate(ACTION_FIELDS)}
N_ACTION = len(ACTION_FIELDS)
#: Fields holding GM byte addresses (the encoder keeps values outside int32 in a side table).
ADDRESS_FIELDS = ("a_addr", "b_addr", "bias_addr", "c_addr")
#: ``MATMUL_SHAPE`` details: which SetTail / SetOrgShape argument broke its debug assert.
SHAPE_DETAIL = ("", "M", "N", "K", "orgM", "orgN", "orgKa", "orgKb")
ONE_F32_BITS = int(np.float32(1.0).view(np.int32))


def initial_state(tiling: TCubeTiling) -> dict[str, int]:
    """The Matmul object right after ``Init``: org shapes and singleCore shapes from the tiling
    (``MatmulShapeInfo::InitParams``), no tensors (address 0: outside every GM tensor), no bias,
    quant scale 1.0."""
    out = dict.fromkeys(MM_FIELDS, 0)
    out.update(
        org_m=tiling.M,
        org_n=tiling.N,
        org_ka=tiling.Ka,
        org_kb=tiling.Kb,
        single_m=tiling.singleCoreM,
        single_n=tiling.singleCoreN,
        single_k=tiling.singleCoreK,
        quant_scale=ONE_F32_BITS,
    )
    return out


@functools.cache
def _itemsize(name: str) -> int:
    """``sizeof`` of the element type ``name`` (``get_dtype(name).itemsize``), looked up once."""
    return get_dtype(name).itemsize


class Matmul:
    """The ``mm`` object of an AIC (``MatmulImpl``): state that persists from ``Init`` across
    every ``Call`` of that AIC, as on the device.

    Persistence rules (asc-devkit ``impl/adv_api/detail/matmul/matmul_impl_base.h``):

    * ``set_org_shape`` replaces the five org shapes (``orgKc`` 0: C rows are ``orgN`` wide);
    * ``set_tail(m, n, k)`` (``SetTail`` / ``SetSingleShape``) replaces each singleCore extent
      whose argument is not -1; 0 is a real value (an empty tile). In the Norm configuration a
      tail larger than the tiling's singleCore is legal (``CheckTailShape`` bounds it only for
      IBShare); a debug build asserts ``tail >= -1`` and ``org > 0`` (``CheckTailShape``,
      ``CheckOrgShape`` in ``param/matmul_shape_info.h``);
    * ``set_tensor_a`` / ``set_tensor_b`` / ``set_bias`` / ``disable_bias`` persist until changed
      (``End`` only releases buffers: ``scheduler/base/scheduler_base.h`` ``End``);
    * ``iterate_all(c, en_atomic)`` uses the current state; ``enAtomic`` other than 1 (add),
      2 (max), 3 (min) is a plain store (``SchedulerBase::SetAtomic``).

    The object records what a call does in its handle, in call order: ``("matmul", words, keep,
    when)`` for an IterateAll (:data:`ACTION_FIELDS` words) and ``("assert", detail, failed)``
    for a debug assert (``MATMUL_SHAPE``; :data:`SHAPE_DETAIL`). Values may be Python ints, numpy
    arrays (the encoder evaluates a callback over many messages at once) or scalars.

    Symbolic use (``symbolic=True``, the encoder): the state before the call is unknown; each
    field carries a ``keep`` flag meaning "still the value the call started with", which the
    engine resolves from the AIC's carried state at run time.
    """

    def __init__(
        self, mtype: MatmulType, tiling: TCubeTiling, xp: Any = np, handle: Any = None, *, symbolic: bool = False
    ):
        self.mtype = mtype
        self.tiling = tiling
        self.xp = xp
        self.handle = handle
        self.sub_block_idx = 0
        self._val: dict[str, Any] = dict.fromkeys(MM_FIELDS, 0) if symbolic else initial_state(tiling)
        self._keep: dict[str, Any] = dict.fromkeys(MM_FIELDS, symbolic)
        #: asserts failed while no handle was bound (in ``Init``): (detail, argument name)
        self.init_asserts: list[tuple[int, str]] = []

    # Element sizes for address arithmetic (``sizeof(aType)`` ...).
    @property
    def a_itemsize(self) -> int:
        return _itemsize(self.mtype.a)

    @property
    def b_itemsize(self) -> int:
        return _itemsize(self.mtype.b)

    @property
    def c_itemsize(self) -> int:
        return _itemsize(self.mtype.c)

    @property
    def state(self) -> dict[str, Any]:
        """The current field values."""
        return dict(self._val)

    def state_keep(self) -> tuple[list[Any], list[Any]]:
        """(values, keep flags) in :data:`MM_FIELDS` order."""
        return [self._val[f] for f in MM_FIELDS], [self._keep[f] for f in MM_FIELDS]

    def _set(self, name: str, value: Any, keep_if: Any = False) -> None:
        """Sets a field, or keeps it where ``keep_if`` holds (SetTail's -1, a call not made)."""
        if keep_if is False:
            self._val[name], self._keep[name] = value, False
            return
        xp = self.xp
        if xp is np and (fast := _numpy_scalar_where(keep_if, self._val[name], value, self._keep[name])):
            self._val[name], self._keep[name] = fast
            return
        self._val[name] = xp.where(keep_if, self._val[name], value)
        self._keep[name] = xp.where(keep_if, self._keep[name], False)

    def _assert(self, detail: int, failed: Any) -> None:
        """A debug assert of the Matmul API (``MATMUL_SHAPE`` with ``detail``)."""
        if self.handle is None:
            if bool(np.any(failed)):
                self.init_asserts.append((detail, SHAPE_DETAIL[detail]))
            return
        self.handle.actions.append(("assert", detail, failed))

    def _skip(self, when: Any) -> Any:
        """``keep_if`` of a setter called with ``when``: False when the call is always made."""
        return False if when is True else ~self.xp.asarray(when, bool)

    def init(self, tiling: Any = None) -> None:
        """``mm.Init(&tiling)``: the tiling is the group's; accepted for source compatibility."""

    def set_sub_block_idx(self, idx: int) -> None:
        self.sub_block_idx = idx

    def set_org_shape(self, org_m, org_n, org_ka, org_kb=None, org_kc=0, *, when=True) -> None:
        """``SetOrgShape(M, N, K)`` or ``SetOrgShape(M, N, Ka, Kb, Kc=0)``; Kc 0 means C's width is N.

        Every setter takes ``when`` (keyword, may be traced): the call is made only where it holds,
        for callbacks that set state inside a loop the device runs a data-dependent number of times.
        """
        org_kb = org_ka if org_kb is None else org_kb
        values = (org_m, org_n, org_ka, org_kb, org_kc)
        skip = self._skip(when)
        for i, v in enumerate(values[:4]):
            self._assert(4 + i, (self.xp.asarray(v) <= 0) & ~self.xp.asarray(skip))
        for name, v in zip(("org_m", "org_n", "org_ka", "org_kb", "org_kc"), values, strict=True):
            self._set(name, v, skip)

    def set_tail(self, tail_m=-1, tail_n=-1, tail_k=-1, *, when=True) -> None:
        """``SetTail(m, n, k)``: replaces each singleCore extent whose argument is not -1."""
        xp = self.xp
        skip = xp.asarray(self._skip(when))
        not_skip = ~skip
        for i, (name, v) in enumerate(zip(("single_m", "single_n", "single_k"), (tail_m, tail_n, tail_k), strict=True)):
            a = xp.asarray(v)
            self._assert(1 + i, (a < -1) & not_skip)
            self._set(name, v, keep_if=(a == -1) | skip)

    set_single_shape = set_tail

    def set_tensor_a(self, addr, is_transpose_a=False, *, when=True) -> None:
        """``SetTensorA(gm, isTransposeA)``: A is [M, Ka] row-major, or [Ka, M] when transposed."""
        skip = self._skip(when)
        self._set("a_addr", addr, skip)
        self._set("trans_a", self.xp.asarray(is_transpose_a).astype(np.int32), skip)

    def set_tensor_b(self, addr, is_transpose_b=False, *, when=True) -> None:
        """``SetTensorB(gm, isTransposeB)``: B is [Kb, N] row-major, or [N, Kb] when transposed."""
        skip = self._skip(when)
        self._set("b_addr", addr, skip)
        self._set("trans_b", self.xp.asarray(is_transpose_b).astype(np.int32), skip)

    def set_bias(self, addr, *, when=True) -> None:
        """``SetBias(gm)``: a [N] bias row, L0C's initial value, until ``disable_bias``. Address 0
        (a null tensor) disables the bias instead: the project's convention for messages that
        carry an optional bias address."""
        skip = self._skip(when)
        self._set("bias_addr", addr, skip)
        self._set("has_bias", (self.xp.asarray(addr) != 0).astype(np.int32), skip)

    def disable_bias(self, *, when=True) -> None:
        """``DisableBias()`` / ``ClearBias()``."""
        self._set("has_bias", 0, self._skip(when))

    clear_bias = disable_bias

    def set_quant_scalar(self, scale: float, *, when=True) -> None:
        """``SetQuantScalar``: the dequantisation scale of int8 x int8 -> float16 (C = half(acc * scale))."""
        bits = np.asarray(scale, np.float32).view(np.int32)
        self._set("quant_scale", bits, self._skip(when))

    def end(self) -> None:
        """``End()``: releases buffers; the state above persists."""

    def iterate_all(self, c_addr, en_atomic=0, *, when=True) -> None:
        """``IterateAll(gmC, enAtomic)``: computes the current singleCore shape into C.

        ``en_atomic``: 1 atomic add, 2 atomic max, 3 atomic min, anything else a plain store.
        ``when`` (keyword, may be traced) makes the action conditional, since callbacks cannot
        branch on traced values.
        """
        if self.handle is None:
            raise ConfigError(
                "callback", "mm.iterate_all", "the Matmul object is not bound to a handle (used in init?)"
            )
        vals, keeps = self.state_keep()
        self.handle.actions.append(("matmul", [*vals, c_addr, en_atomic], [*keeps, False, False], when))


def check_init_asserts(mm: Matmul, group: str, build: str) -> str | None:
    """The Matmul assert ``Init`` broke, if any. The CPU twin cannot start (the kernel aborts
    before any message): raised. The NPU builds have no such assert (``ASCENDC_ASSERT`` is empty
    on ``__NPU_DEVICE__``, kernel_log.h) and keep the value (e.g. a negative singleCore: empty
    tiles): the name of the first broken argument (``SHAPE_DETAIL``) is returned, for the run's
    ``asserts_violated``; None when every assert holds."""
    if not mm.init_asserts:
        return None
    detail, name = mm.init_asserts[0]
    if build == "cpu":
        arg = f"SetOrgShape {name}" if detail >= 4 else f"SetTail {name}"
        raise ConfigError(
            f"group {group!r} callback init",
            arg,
            "breaks a Matmul ASCENDC_ASSERT, which the CPU twin checks (tails must be >= -1, org shapes > 0)",
            "fix the value, or run with build = 'release' to see what the device does",
        )
    return name


def descriptor(f: Any, xp: Any = np) -> dict[str, Any]:
    """The tile an IterateAll computes, from its :data:`ACTION_FIELDS` words ``f`` (indexable by
    position; arrays broadcast): addresses, extents m/n/k (<= 0: empty), element strides."""
    ta, tb = f[AF["trans_a"]] != 0, f[AF["trans_b"]] != 0
    kc = f[AF["org_kc"]]
    return {
        "a_addr": f[AF["a_addr"]],
        "b_addr": f[AF["b_addr"]],
        "c_addr": f[AF["c_addr"]],
        "bias_addr": f[AF["bias_addr"]],
        "m": f[AF["single_m"]],
        "n": f[AF["single_n"]],
        "k": f[AF["single_k"]],
        "stride_a": xp.where(ta, f[AF["org_m"]], f[AF["org_ka"]]),
        "stride_b": xp.where(tb, f[AF["org_kb"]], f[AF["org_n"]]),
        "stride_c": xp.where(kc > 0, kc, f[AF["org_n"]]),
        "trans_a": ta,
        "trans_b": tb,
        "atomic": f[AF["atomic"]],
        "has_bias": f[AF["has_bias"]] != 0,
        "quant_scale": f[AF["quant_scale"]],
    }


def empty_tile(d: dict[str, Any]) -> Any:
    """Whether an IterateAll computes nothing (an extent <= 0): it reads and writes no GM."""
    return (d["m"] <= 0) | (d["n"] <= 0) | (d["k"] <= 0)


# -- GM bounds, shared by both engines ------------------------------------------------------


def tile_inside(bounds: Any, addr: Any, rows: Any, cols: Any, stride: Any, trans: Any, itemsize: int, xp: Any = np):
    """Whether every element of a ``rows x cols`` tile (rows, cols >= 1) at byte ``addr`` lies in
    one tensor of ``bounds`` ([T, 2] byte ranges). Element (i, j) is at element offset
    ``i * stride + j`` (``j * stride + i`` when ``trans``). Written without products that could
    leave int32 (the JAX engine's type): the tile fits iff its stored row width fits in the
    tensor from ``addr`` and its stored rows fit in what is left, one stride at a time. A negative
    stride over several rows, or a negative address, is outside."""
    if xp is np and (fast := _tile_inside_ints(bounds, addr, rows, cols, stride, trans, itemsize)) is not None:
        return fast  # the reference: Python ints
    r = xp.where(trans, cols, rows)  # stored rows
    c = xp.where(trans, rows, cols)  # elements per stored row
    addr, r, c, stride = xp.broadcast_arrays(*(xp.asarray(x) for x in (addr, r, c, stride)))
    lead = (1,) * addr.ndim
    b0, b1 = bounds[:, 0].reshape(-1, *lead), bounds[:, 1].reshape(-1, *lead)
    addr, r, c, stride = (x[None] for x in (addr, r, c, stride))
    live = (b0 <= addr) & (addr < b1) & (b0 < b1)
    cap = xp.where(live, (b1 - addr) // itemsize, 0)  # elements from addr to the tensor's end
    room = cap - c
    rows_ok = (r == 1) | (stride == 0) | ((stride > 0) & (r - 1 <= room // xp.maximum(stride, 1)))
    return (live & (room >= 0) & rows_ok).any(axis=0)


#: |value| bound under which the int64 arithmetic of :func:`tile_inside` cannot overflow (every
#: intermediate stays below 2**62), so Python ints compute exactly what numpy int64 computes
_SMALL = 1 << 60


def _tile_inside_ints(bounds: Any, addr: Any, rows: Any, cols: Any, stride: Any, trans: Any, itemsize: int):
    """:func:`tile_inside` computed on Python ints, or None where it does not apply: it needs
    Python ints (not bools) ``addr``, ``rows``, ``cols``, ``stride``, an int or bool ``trans``,
    and int64 ``bounds``, every value under 2**60 in magnitude. Then no int64 intermediate can
    overflow and floor division agrees, so the result (a numpy bool) is the array form's; the
    reference interpreter's descriptors are such ints, and this skips numpy's per-call cost."""
    if type(trans) not in (int, bool) or not all(
        type(x) is int and -_SMALL < x < _SMALL for x in (addr, rows, cols, stride)
    ):
        return None
    if not isinstance(bounds, np.ndarray) or bounds.dtype != np.int64 or bounds.ndim != 2:
        return None
    pairs = bounds[:, :2].tolist()
    if not all(-_SMALL < b0 < _SMALL and -_SMALL < b1 < _SMALL for b0, b1 in pairs):
        return None
    r, c = (cols, rows) if trans else (rows, cols)  # stored rows, elements per stored row
    for b0, b1 in pairs:
        live = b0 <= addr < b1 and b0 < b1
        cap = (b1 - addr) // itemsize if live else 0  # elements from addr to the tensor's end
        room = cap - c
        rows_ok = r == 1 or stride == 0 or (stride > 0 and r - 1 <= room // max(stride, 1))
        if live and room >= 0 and rows_ok:
            return np.True_
    return np.False_


def check_operands(mt: MatmulType, bounds: Any, d: dict[str, Any], xp: Any = np):
    """(ok, first bad address) of a descriptor: A, B, C and the bias (when enabled) must each lie
    in one tensor. An empty tile (:func:`empty_tile`) touches nothing and is always ok."""
    m, n, k = d["m"], d["n"], d["k"]
    oks = [
        tile_inside(bounds, d["a_addr"], m, k, d["stride_a"], d["trans_a"], mt.dtype("a").itemsize, xp),
        tile_inside(bounds, d["b_addr"], k, n, d["stride_b"], d["trans_b"], mt.dtype("b").itemsize, xp),
        tile_inside(bounds, d["c_addr"], m, n, d["stride_c"], False, mt.dtype("c").itemsize, xp),
        tile_inside(bounds, d["bias_addr"], 1, n, n, False, mt.dtype("bias").itemsize, xp) | ~d["has_bias"],
    ]
    addrs = [d["a_addr"], d["b_addr"], d["c_addr"], d["bias_addr"]]
    bad = xp.zeros_like(xp.asarray(d["a_addr"]))
    for ok_i, addr in reversed(list(zip(oks, addrs, strict=True))):
        bad = xp.where(ok_i, bad, addr)
    ok = (oks[0] & oks[1] & oks[2] & oks[3]) | empty_tile(d)
    return ok, bad


def quiet_fp(fn):
    """Runs ``fn`` under ``np.errstate(all="ignore")``: NaN and Inf are data here (an injected NaN,
    an overflowing float16), counted by the numerics report, so numpy's RuntimeWarnings would only
    be noise on stderr."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with np.errstate(all="ignore"):
            return fn(*args, **kwargs)

    return wrapper


# -- JAX compute ---------------------------------------------------------------------------


def padded_k(tiling: TCubeTiling, k_max: int) -> int:
    """K extent of the engine's static operand tiles: ``k_max`` rounded up to whole baseK chunks."""
    return -(-k_max // tiling.baseK) * tiling.baseK


def compute_tiles(
    mt: MatmulType, tiling: TCubeTiling, a: jax.Array, b: jax.Array, bias: jax.Array, scale: jax.Array | None = None
) -> jax.Array:
    """The cube unit on a batch of tiles: ``a [..., M, Kp]``, ``b [..., Kp, N]``, ``bias [..., N]`` ->
    ``[..., M, N]`` in the C type. One ``dot_general`` per K chunk over all leading dims (each
    chunk's A is a slice of A's rows: one dot over a chunk axis needed A transposed chunk-major,
    a pass that cost about 11 % of the attention loop), the chunk partials added to L0C in
    order, then one rounding to C (int8 -> float16: ``half(acc * scale)``, ``scale`` [...]
    float32)."""
    import jax
    import jax.numpy as jnp

    acc_t = mt.dtype("acc")
    bk = tiling.baseK
    nk = a.shape[-1] // bk
    lead = a.shape[:-2]
    m, n = a.shape[-2], b.shape[-1]
    precision = jax.lax.Precision.HIGHEST
    acc = jnp.broadcast_to(bias.astype(acc_t)[..., None, :], (*lead, m, n))
    for j in range(nk):  # one dot per K chunk: A's chunk is a slice of its rows, not a transpose
        part = jnp.einsum(
            "...mk,...kn->...mn",
            a[..., j * bk : (j + 1) * bk],
            b[..., j * bk : (j + 1) * bk, :],
            preferred_element_type=acc_t,
            precision=precision,
        )
        acc = acc + part
    if mt.dequant:
        s = jnp.ones(lead, jnp.float32) if scale is None else scale
        return (acc.astype(jnp.float32) * s[..., None, None]).astype(mt.dtype("c"))
    return acc.astype(mt.dtype("c"))


@quiet_fp
def combine(mt: MatmulType, old: Any, new: Any, atomic: Any, xp: Any = None) -> Any:
    """GM write of a C tile: atomic add (1) / max (2) / min (3) in the C type, else a store
    (``xp``: the array module, ``jax.numpy`` by default, ``numpy`` in the reference)."""
    if xp is None:
        import jax.numpy as xp
    c_t = mt.dtype("c")
    added = old + new if c_t.kind == "i" else (old.astype(np.float32) + new.astype(np.float32)).astype(c_t)
    return xp.where(
        atomic == ATOMIC_ADD,
        added,
        xp.where(atomic == ATOMIC_MAX, xp.maximum(old, new), xp.where(atomic == ATOMIC_MIN, xp.minimum(old, new), new)),
    )


# -- numpy emulation (reference interpreter) ------------------------------------------------


def np_tile(image: np.ndarray, addr: int, rows: int, cols: int, stride: int, trans: bool, dtype: np.dtype):
    """Reads a logical ``rows x cols`` tile from a GM byte image (numpy)."""
    r = np.arange(rows)[:, None]
    c = np.arange(cols)[None, :]
    off = (c * stride + r) if trans else (r * stride + c)
    byte0 = addr - GM_BASE + off * dtype.itemsize
    idx = byte0[..., None] + np.arange(dtype.itemsize)
    return image[idx].copy().view(dtype)[..., 0]


def np_store(image: np.ndarray, addr: int, stride: int, value: np.ndarray) -> None:
    rows, cols = value.shape
    off = np.arange(rows)[:, None] * stride + np.arange(cols)[None, :]
    byte0 = addr - GM_BASE + off * value.dtype.itemsize
    idx = byte0[..., None] + np.arange(value.dtype.itemsize)
    image[idx] = np.ascontiguousarray(value).view(np.uint8).reshape(rows, cols, value.dtype.itemsize)


@quiet_fp
def hw_matmul(
    mt: MatmulType, tiling: TCubeTiling, a: np.ndarray, b: np.ndarray, bias: np.ndarray | None, scale: float = 1.0
) -> np.ndarray:
    """numpy emulation of :func:`compute_tiles` for one tile (a [m, k], b [k, n], bias [n] or None)."""
    acc_t = mt.dtype("acc")
    m, k = a.shape
    n = b.shape[1]
    acc = np.zeros((m, n), acc_t) if bias is None else np.broadcast_to(bias.astype(acc_t), (m, n)).copy()
    for j in range(0, k, tiling.baseK):
        part = a[:, j : j + tiling.baseK].astype(acc_t) @ b[j : j + tiling.baseK].astype(acc_t)
        acc = (acc + part).astype(acc_t)
    if mt.dequant:
        return (acc.astype(np.float32) * np.float32(scale)).astype(mt.dtype("c"))
    return acc.astype(mt.dtype("c"))


@quiet_fp
def exact_matmul(a: np.ndarray, b: np.ndarray, bias: np.ndarray | None, scale: float = 1.0) -> np.ndarray:
    """float64 reference of one tile: ``(bias + a @ b) * scale`` with no rounding."""
    out = a.astype(np.float64) @ b.astype(np.float64)
    out = out if bias is None else out + bias.astype(np.float64)
    return out * scale if scale != 1.0 else out


@quiet_fp
def exact_combine(old: np.ndarray, new: np.ndarray, atomic: int) -> np.ndarray:
    if atomic == ATOMIC_ADD:
        return old + new
    if atomic == ATOMIC_MAX:
        return np.maximum(old, new)
    if atomic == ATOMIC_MIN:
        return np.minimum(old, new)
    return new

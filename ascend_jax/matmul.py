"""The Ascend C Matmul high-level API as the AIC callbacks see it, and its numerics.

Three layers:

* :class:`MatmulType` (``MatmulImpl<A_TYPE, B_TYPE, C_TYPE, BIAS_TYPE>``: element types and
  layouts) and :class:`TCubeTiling` (the tiling struct, validated against the documented
  constraints and the Atlas A2 buffer sizes).
* :class:`Matmul`: the ``mm`` object passed to ``call(mm, msg, handle)``. Its methods
  (``set_org_shape``, ``set_tail``, ``set_tensor_a``/``b``, ``set_bias``, ``iterate_all``, ``end``)
  only record state; ``iterate_all`` appends a *matmul action* (a descriptor of int words,
  :data:`DESC_FIELDS`) to the handle's ordered action list, next to its ``free_message`` actions.
  The engines perform the actions in order, one per step.
* The compute: :func:`compute_tiles` (JAX, one batched ``dot_general`` for every AIC of a step
  and every batch lane), :func:`hw_matmul` (numpy emulation of the same hardware numerics, used
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
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ascend_jax.errors import ConfigError
from ascend_jax.gm import GM_BASE, dtype_name, element_offsets, get_dtype, in_bounds, load_tile, tile_extent

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

#: Words of a matmul action descriptor (int32 each, byte addresses as absolute GM addresses).
DESC_FIELDS = (
    "a_addr",
    "b_addr",
    "c_addr",
    "bias_addr",
    "m",
    "n",
    "k",
    "stride_a",
    "stride_b",
    "stride_c",
    "trans_a",
    "trans_b",
    "atomic",
    "has_bias",
)
D = {name: i for i, name in enumerate(DESC_FIELDS)}
N_DESC = len(DESC_FIELDS)

_FLOATS = ("float16", "bfloat16", "float32")
#: (A/B input type) -> (accumulator type, allowed C types, allowed bias types).
SUPPORTED = {
    "float16": ("float32", _FLOATS, ("float16", "float32")),
    "bfloat16": ("float32", _FLOATS, ("bfloat16", "float32")),
    "float32": ("float32", _FLOATS, ("float32",)),
    "int8": ("int32", ("int32",), ("int32",)),
}

#: Relative-L2 tolerance against the float64 reference, by C type. fp16 / bf16: 8 unit roundoffs
#: of the output type (one rounding at write-out, one more per atomic add); fp32: fp32
#: accumulation over K (~sqrt(K) unit roundoffs for K up to ~10^4); int32: exact.
TOLERANCE = {"float16": 8 * 2.0**-11, "bfloat16": 8 * 2.0**-8, "float32": 1e-5, "int32": 0.0}


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

    @property
    def k_chunks(self) -> int:
        """Number of baseK chunks covering singleCoreK."""
        return -(-self.singleCoreK // self.baseK)


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


class Matmul:
    """The ``mm`` object of a group (``MatmulImpl``), recording one call's matmul actions.

    Addresses are absolute GM byte addresses (``reinterpret_cast<__gm__ T*>(addr)``); shapes are
    elements. Methods that take values accept Python ints, numpy or traced JAX scalars.
    """

    def __init__(self, mtype: MatmulType, tiling: TCubeTiling, xp: Any = np, handle: Any = None):
        self.mtype = mtype
        self.tiling = tiling
        self.xp = xp
        self.handle = handle
        self.sub_block_idx = 0
        self._org = (tiling.M, tiling.N, tiling.Ka, tiling.Kb, 0)
        self._tail = (-1, -1, -1)
        self._a = self._b = None
        self._bias = None

    # Element sizes for address arithmetic (``sizeof(aType)`` ...).
    @property
    def a_itemsize(self) -> int:
        return self.mtype.dtype("a").itemsize

    @property
    def b_itemsize(self) -> int:
        return self.mtype.dtype("b").itemsize

    @property
    def c_itemsize(self) -> int:
        return self.mtype.dtype("c").itemsize

    def init(self, tiling: Any = None) -> None:
        """``mm.Init(&tiling)``: the tiling is the group's; accepted for source compatibility."""

    def set_sub_block_idx(self, idx: int) -> None:
        self.sub_block_idx = idx

    def set_org_shape(self, org_m, org_n, org_ka, org_kb=None, org_kc=0) -> None:
        """``SetOrgShape(M, N, K)`` or ``SetOrgShape(M, N, Ka, Kb, Kc=0)``; Kc 0 means C's width is N."""
        self._org = (org_m, org_n, org_ka, org_ka if org_kb is None else org_kb, org_kc)

    def set_tail(self, tail_m=-1, tail_n=-1, tail_k=-1) -> None:
        """``SetTail``: the shape of the next IterateAll; a value <= 0 keeps singleCoreM/N/K."""
        self._tail = (tail_m, tail_n, tail_k)

    set_single_shape = set_tail

    def set_tensor_a(self, addr, is_transpose_a=False) -> None:
        """``SetTensorA(gm, isTransposeA)``: A is [M, Ka] row-major, or [Ka, M] when transposed."""
        self._a = (addr, is_transpose_a)

    def set_tensor_b(self, addr, is_transpose_b=False) -> None:
        """``SetTensorB(gm, isTransposeB)``: B is [Kb, N] row-major, or [N, Kb] when transposed."""
        self._b = (addr, is_transpose_b)

    def set_bias(self, addr) -> None:
        """``SetBias(gm)``: a [N] bias row, L0C's initial value (address 0: no bias)."""
        self._bias = addr

    def disable_bias(self) -> None:
        self._bias = None

    def end(self) -> None:
        """``End()``: nothing to release in the model."""

    def iterate_all(self, c_addr, en_atomic=0, *, when=True) -> None:
        """``IterateAll(gmC, enAtomic)``: computes singleCoreM x singleCoreN (or the tail) into C.

        ``en_atomic``: 0 store, 1 atomic add, 2 atomic max, 3 atomic min. ``when`` (keyword, may be
        traced) makes the action conditional, since callbacks cannot branch on traced values.
        """
        if self._a is None or self._b is None:
            raise ConfigError(
                "callback", "mm.iterate_all", "called before set_tensor_a and set_tensor_b", "set both tensors first"
            )
        if self.handle is None:
            raise ConfigError(
                "callback", "mm.iterate_all", "the Matmul object is not bound to a handle (used in init?)"
            )
        xp = self.xp
        t = self.tiling
        org_m, org_n, org_ka, org_kb, org_kc = self._org
        tm, tn, tk = self._tail
        m = xp.where(xp.asarray(tm) > 0, tm, t.singleCoreM)
        n = xp.where(xp.asarray(tn) > 0, tn, t.singleCoreN)
        k = xp.where(xp.asarray(tk) > 0, tk, t.singleCoreK)
        a_addr, ta = self._a
        b_addr, tb = self._b
        ta = xp.asarray(ta).astype(bool)
        tb = xp.asarray(tb).astype(bool)
        desc = {
            "a_addr": a_addr,
            "b_addr": b_addr,
            "c_addr": c_addr,
            "bias_addr": 0 if self._bias is None else self._bias,
            "m": m,
            "n": n,
            "k": k,
            "stride_a": xp.where(ta, org_m, org_ka),
            "stride_b": xp.where(tb, org_kb, org_n),
            "stride_c": xp.where(xp.asarray(org_kc) > 0, org_kc, org_n),
            "trans_a": ta,
            "trans_b": tb,
            "atomic": en_atomic,
            "has_bias": False if self._bias is None else xp.asarray(self._bias) != 0,
        }
        words = [desc[name] for name in DESC_FIELDS]
        self.handle.record_matmul(words, when)


# -- checks shared by both engines -----------------------------------------------------------


def shape_error(tiling: TCubeTiling, m, n, k, atomic, xp=np):
    """Dispatch-time check of a descriptor: 0 ok, else the offending word index + 1 encoded as
    1 (m), 2 (n), 3 (k) for a tail larger than singleCore, 4 for enAtomic outside 0..3."""
    return xp.where(
        m > tiling.singleCoreM,
        1,
        xp.where(
            n > tiling.singleCoreN, 2, xp.where(k > tiling.singleCoreK, 3, xp.where((atomic < 0) | (atomic > 3), 4, 0))
        ),
    )


# -- JAX compute ---------------------------------------------------------------------------


def _operand_specs(mt: MatmulType, tiling: TCubeTiling):
    kp = tiling.k_chunks * tiling.baseK
    return kp, (tiling.singleCoreM, kp), (kp, tiling.singleCoreN)


def gather_operands(mt: MatmulType, tiling: TCubeTiling, gm: jax.Array, desc: jax.Array):
    """Loads one descriptor's A [M, Kp], B [Kp, N] and bias [N] (masked, zero padded) and returns
    them with the address checks: ``ok`` and the first bad address (0 if none)."""
    kp, (mm_, _), (_, nn) = _operand_specs(mt, tiling)
    m, n, k = desc[D["m"]], desc[D["n"]], desc[D["k"]]
    r_m = jnp.arange(mm_)[:, None]
    c_k = jnp.arange(kp)[None, :]
    a_valid = (r_m < m) & (c_k < k)
    a_off = element_offsets(mm_, kp, desc[D["stride_a"]], desc[D["trans_a"]] != 0)
    a = load_tile(gm, a_off, a_valid, desc[D["a_addr"]], mt.dtype("a"))
    b_valid = (jnp.arange(kp)[:, None] < k) & (jnp.arange(nn)[None, :] < n)
    b_off = element_offsets(kp, nn, desc[D["stride_b"]], desc[D["trans_b"]] != 0)
    b = load_tile(gm, b_off, b_valid, desc[D["b_addr"]], mt.dtype("b"))
    has_bias = desc[D["has_bias"]] != 0
    bias_valid = (jnp.arange(nn) < n) & has_bias
    bias = load_tile(gm, jnp.arange(nn, dtype=jnp.int32), bias_valid, desc[D["bias_addr"]], mt.dtype("bias"))
    return a, b, bias


def check_addresses(mt: MatmulType, tiling: TCubeTiling, bounds: jax.Array, desc: jax.Array):
    """Whether every byte A, B, C and bias touch lies in one tensor; and the first bad address."""
    m, n, k = desc[D["m"]], desc[D["n"]], desc[D["k"]]
    spans = [
        tile_extent(desc[D["a_addr"]], m, k, desc[D["stride_a"]], desc[D["trans_a"]] != 0, mt.dtype("a").itemsize),
        tile_extent(desc[D["b_addr"]], k, n, desc[D["stride_b"]], desc[D["trans_b"]] != 0, mt.dtype("b").itemsize),
        tile_extent(desc[D["c_addr"]], m, n, desc[D["stride_c"]], False, mt.dtype("c").itemsize),
    ]
    oks = [in_bounds(bounds, lo, hi) for lo, hi in spans]
    bias_lo, bias_hi = tile_extent(desc[D["bias_addr"]], 1, n, n, False, mt.dtype("bias").itemsize)
    oks.append(in_bounds(bounds, bias_lo, bias_hi) | (desc[D["has_bias"]] == 0))
    addrs = [desc[D["a_addr"]], desc[D["b_addr"]], desc[D["c_addr"]], desc[D["bias_addr"]]]
    bad = jnp.int32(0)
    for ok_i, addr in reversed(list(zip(oks, addrs, strict=True))):
        bad = jnp.where(ok_i, bad, addr)
    ok = oks[0] & oks[1] & oks[2] & oks[3]
    return ok, bad


def compute_tiles(mt: MatmulType, tiling: TCubeTiling, a: jax.Array, b: jax.Array, bias: jax.Array) -> jax.Array:
    """The cube unit on a batch of tiles: ``a [..., M, Kp]``, ``b [..., Kp, N]``, ``bias [..., N]`` ->
    ``[..., M, N]`` in the C type. One ``dot_general`` over all leading dims and the K chunks,
    then the chunk partials are added to L0C in order, then one rounding to C."""
    acc_t = mt.dtype("acc")
    nk, bk = tiling.k_chunks, tiling.baseK
    lead = a.shape[:-2]
    m, n = a.shape[-2], b.shape[-1]
    a4 = a.reshape(*lead, m, nk, bk)
    b4 = b.reshape(*lead, nk, bk, n)
    precision = jax.lax.Precision.HIGHEST
    parts = jnp.einsum("...mjk,...jkn->...jmn", a4, b4, preferred_element_type=acc_t, precision=precision)
    acc = jnp.broadcast_to(bias.astype(acc_t)[..., None, :], (*lead, m, n))
    for j in range(nk):
        acc = acc + parts[..., j, :, :]
    return acc.astype(mt.dtype("c"))


def combine(mt: MatmulType, old: Any, new: Any, atomic: Any, xp: Any = jnp) -> Any:
    """GM write of a C tile: store (0), or atomic add / max / min in the C type."""
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


def hw_matmul(mt: MatmulType, tiling: TCubeTiling, a: np.ndarray, b: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """numpy emulation of :func:`compute_tiles` for one tile (a [m, k], b [k, n], bias [n] or None)."""
    acc_t = mt.dtype("acc")
    m, k = a.shape
    n = b.shape[1]
    acc = np.zeros((m, n), acc_t) if bias is None else np.broadcast_to(bias.astype(acc_t), (m, n)).copy()
    for j in range(0, k, tiling.baseK):
        part = a[:, j : j + tiling.baseK].astype(acc_t) @ b[j : j + tiling.baseK].astype(acc_t)
        acc = (acc + part).astype(acc_t)
    return acc.astype(mt.dtype("c"))


def exact_matmul(a: np.ndarray, b: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """float64 reference of one tile: ``bias + a @ b`` with no rounding."""
    out = a.astype(np.float64) @ b.astype(np.float64)
    return out if bias is None else out + bias.astype(np.float64)


def exact_combine(old: np.ndarray, new: np.ndarray, atomic: int) -> np.ndarray:
    if atomic == ATOMIC_ADD:
        return old + new
    if atomic == ATOMIC_MAX:
        return np.maximum(old, new)
    if atomic == ATOMIC_MIN:
        return np.minimum(old, new)
    return new


def rel_l2(sim: np.ndarray, ref: np.ndarray) -> float:
    sim = sim.astype(np.float64)
    ref = ref.astype(np.float64)
    denom = float(np.linalg.norm(ref))
    diff = float(np.linalg.norm(sim - ref))
    return diff / denom if denom > 0 else (0.0 if diff == 0 else math.inf)

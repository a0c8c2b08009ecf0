"""Global memory (GM): one byte-addressed space, an allocator, and typed tile access.

Host side (:class:`GlobalMemory`): tensors are placed like ``aclrtMalloc`` places them (start
64-byte aligned, footprint ``ALIGN_UP(size, 32) + 32`` bytes), from :data:`GM_BASE` upwards, so
address 0 (a null pointer) and everything below :data:`GM_BASE` are unmapped. The image is a
numpy ``uint8`` array covering ``[GM_BASE, GM_BASE + size)``; tensors are read and written as
numpy arrays.

Device side (functions taking ``gm``, a ``[G] uint8`` JAX array): typed tiles are gathered byte by
byte and bit-cast, stored by scattering their bytes, and checked against the allocation table.
A tile is in range when its whole byte extent lies inside one tensor's requested bytes (stricter
than the device, whose 32-byte padding would hide a small overrun).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ascend_jax.errors import ConfigError

if TYPE_CHECKING:  # the device-side functions take and return JAX arrays; jax is imported in them
    import jax

#: First mapped GM byte address; lower addresses (null pointers included) are out of range.
GM_BASE = 0x10000
#: ``aclrtMalloc``: start address 64-byte aligned.
GM_ALIGN = 64


def acl_malloc_place(cursor: int, nbytes: int) -> tuple[int, int]:
    """Where ``aclrtMalloc`` puts ``nbytes`` bytes when the free space starts at byte ``cursor``.

    Returns ``(start, new_cursor)``: the start is 64-byte aligned and the footprint is
    ``ALIGN_UP(nbytes, 32) + 32`` bytes (a zero-byte request takes one 32-byte unit plus 32). The
    one placement rule of the package: GM tensors and the AI CPU ranks' device memory both use it.
    """
    start = -(-cursor // GM_ALIGN) * GM_ALIGN
    return start, start + -(-max(nbytes, 1) // 32) * 32 + 32


@functools.cache
def bfloat16() -> np.dtype:
    """numpy's bfloat16 (from ``ml_dtypes``, a JAX dependency; imported on first use, as its import
    takes a good part of a second)."""
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


class _Dtypes(Mapping[str, np.dtype]):
    """The read-only table :data:`DTYPES`: bfloat16 is resolved (:func:`bfloat16`) when first read."""

    _fixed = {
        "float16": np.dtype(np.float16),
        "bfloat16": None,
        "float32": np.dtype(np.float32),
        "int8": np.dtype(np.int8),
        "int32": np.dtype(np.int32),
    }

    def __getitem__(self, key: str) -> np.dtype:
        dt = self._fixed[key]
        return bfloat16() if dt is None else dt

    def __contains__(self, key: object) -> bool:
        return key in self._fixed

    def __iter__(self) -> Iterator[str]:
        return iter(self._fixed)

    def __len__(self) -> int:
        return len(self._fixed)

    def __repr__(self) -> str:
        return repr(dict(self))


#: Element types a tensor may have (numpy dtypes; bfloat16 comes from ml_dtypes, loaded on first use).
DTYPES: Mapping[str, np.dtype] = _Dtypes()
#: Ascend C spellings accepted as aliases.
DTYPE_ALIASES = {"half": "float16", "float": "float32", "bfloat16_t": "bfloat16", "int8_t": "int8", "int32_t": "int32"}


def get_dtype(name: Any, field: str = "dtype") -> np.dtype:
    """The numpy dtype for a name (``float16``, ``half``, ``bfloat16``, ``float32``, ``int8``, ``int32``)."""
    if isinstance(name, np.dtype) or (isinstance(name, type) and issubclass(name, np.generic)):
        dt = np.dtype(name)
        if dt.name in DTYPES and DTYPES[dt.name] == dt:  # by name: no bfloat16 import for other types
            return dt
        raise ConfigError(field, str(dt), f"unsupported element type; one of {sorted(DTYPES)}")
    key = DTYPE_ALIASES.get(name, name) if isinstance(name, str) else name
    if key not in DTYPES:
        raise ConfigError(
            field, name, f"unsupported element type; one of {sorted(DTYPES)} (or {sorted(DTYPE_ALIASES)})"
        )
    return DTYPES[key]


def dtype_name(dt: np.dtype) -> str:
    return _dtype_name(np.dtype(dt))


@functools.cache
def _dtype_name(dt: np.dtype) -> str:  # memoised: encoding calls it once per vector op
    return next(k for k in DTYPES if k == dt.name and DTYPES[k] == dt)


@dataclasses.dataclass(frozen=True)
class Tensor:
    """A GM tensor: ``shape`` elements of ``dtype``, row-major, starting at byte ``addr``."""

    name: str
    addr: int
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(math.prod(self.shape)) * self.dtype.itemsize

    @property
    def end(self) -> int:
        return self.addr + self.nbytes


_ADDR_EXPR = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(?:\+\s*(\d+|0x[0-9a-fA-F]+))?\s*$")


class GlobalMemory:
    """The GM of one kernel launch: allocator plus a byte image.

    Usage::

        gm = GlobalMemory()
        a = gm.alloc("a", (64, 32), "float16", init="random", seed=1)
        gm.write("a", np.ones((64, 32), np.float16))
        gm.read("a")            # -> numpy array
        gm.address("a+128")     # -> a.addr + 128
    """

    def __init__(self) -> None:
        self.tensors: dict[str, Tensor] = {}
        #: name -> whether ``alloc`` was given an ``init`` (False: zero-filled by default, which on a
        #: device is whatever the memory held; the sanitizer's initcheck treats it as undefined)
        self.init_given: dict[str, bool] = {}
        self._cursor = GM_BASE
        self._image = np.zeros(0, np.uint8)

    # -- allocation ------------------------------------------------------------------------
    def alloc(
        self,
        name: str,
        shape: Any,
        dtype: Any,
        init: Any = None,
        seed: int = 0,
        field: str | None = None,
    ) -> Tensor:
        """``aclrtMalloc`` + initialisation.

        Args:
          name: unique tensor name (used in address expressions and dumps).
          shape: tuple of positive ints.
          dtype: element type name (see :data:`DTYPES`).
          init: ``"zeros"``, ``"random"`` (uniform in [-1, 1) for floats, [-8, 8) for ints, rounded to
            the dtype; from ``seed``), a path to a ``.npy`` file, or a numpy array. None (the
            default): zero-filled too, so that runs are deterministic, but recorded as not given
            (:attr:`init_given`): on a device such memory holds whatever was there, and the
            sanitizer's initcheck reports a read of it that no earlier write covers. A kernel that
            relies on zeros (a host memset) says ``init="zeros"``.
          seed: seed of ``"random"``.
          field: location for error messages (default ``tensor[<name>]``).
        """
        where = field or f"tensor[{name!r}]"
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][\w.]*", name):
            raise ConfigError(f"{where}.name", name, "must be an identifier (letters, digits, _ and .)")
        if name in self.tensors:
            raise ConfigError(f"{where}.name", name, "a tensor with this name already exists")
        if isinstance(shape, int):
            shape = (shape,)
        if (
            not isinstance(shape, (list, tuple))
            or not shape
            or not all(isinstance(s, (int, np.integer)) and s > 0 for s in shape)
        ):
            raise ConfigError(f"{where}.shape", shape, "must be a non-empty list of positive integers")
        dt = get_dtype(dtype, f"{where}.dtype")
        shape = tuple(int(s) for s in shape)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        start, self._cursor = acl_malloc_place(self._cursor, nbytes)
        t = Tensor(name, start, shape, dt)
        if self._cursor >= 2**31:
            raise ConfigError(f"{where}.shape", shape, "GM beyond 2 GiB is not supported (addresses are int32)")
        grown = np.zeros(self._cursor - GM_BASE, np.uint8)
        grown[: self._image.size] = self._image
        self._image = grown
        self.tensors[name] = t
        self.init_given[name] = init is not None
        self.write(name, self._initial(t, "zeros" if init is None else init, seed, where))
        return t

    @staticmethod
    def _initial(t: Tensor, init: Any, seed: int, where: str) -> np.ndarray:
        if isinstance(init, np.ndarray):
            data = init
        elif init == "zeros":
            return np.zeros(t.shape, t.dtype)
        elif init == "random":
            if not isinstance(seed, (int, np.integer)):
                raise ConfigError(f"{where}.seed", seed, "must be an integer")
            rng = np.random.default_rng(seed)
            if t.dtype.kind == "f" or dtype_name(t.dtype) == "bfloat16":
                return rng.uniform(-1.0, 1.0, t.shape).astype(t.dtype)
            return rng.integers(-8, 8, t.shape).astype(t.dtype)
        elif isinstance(init, (str, Path)) and str(init).endswith(".npy"):
            try:
                data = np.load(init)
            except (OSError, ValueError) as e:
                raise ConfigError(f"{where}.init", str(init), f"cannot be loaded ({e})") from None
        else:
            raise ConfigError(f"{where}.init", init, "must be 'zeros', 'random' or a path to a .npy file")
        if tuple(data.shape) != t.shape:
            raise ConfigError(f"{where}.init", f"array of shape {tuple(data.shape)}", f"must have shape {t.shape}")
        with np.errstate(all="ignore"):  # a value beyond the type becomes Inf, as the device stores it
            return np.asarray(data).astype(t.dtype)

    # -- host access -----------------------------------------------------------------------
    def tensor(self, name: str | Tensor, field: str = "tensor") -> Tensor:
        if isinstance(name, Tensor):
            return name
        if name not in self.tensors:
            raise ConfigError(field, name, f"no such tensor; tensors: {sorted(self.tensors)}")
        return self.tensors[name]

    def write(self, name: str | Tensor, data: np.ndarray) -> None:
        """Copies ``data`` (cast to the tensor's dtype) into the tensor's bytes."""
        t = self.tensor(name)
        arr = np.ascontiguousarray(np.asarray(data).astype(t.dtype).reshape(t.shape))
        lo = t.addr - GM_BASE
        self._image[lo : lo + t.nbytes] = arr.view(np.uint8).reshape(-1)

    def read(self, name: str | Tensor, image: np.ndarray | None = None) -> np.ndarray:
        """The tensor's current value (from this GM's image, or from ``image``, e.g. a result's)."""
        t = self.tensor(name)
        src = self._image if image is None else np.asarray(image, np.uint8)
        lo = t.addr - GM_BASE
        return src[lo : lo + t.nbytes].copy().view(t.dtype).reshape(t.shape)

    @property
    def image(self) -> np.ndarray:
        """``[G] uint8``: bytes ``GM_BASE .. GM_BASE + G - 1`` (a copy)."""
        return self._image.copy()

    @property
    def size(self) -> int:
        return int(self._image.size)

    def bounds(self) -> np.ndarray:
        """``[T, 2] int64``: (start, end) byte addresses of every tensor, in allocation order."""
        return np.array([(t.addr, t.end) for t in self.tensors.values()], np.int64).reshape(-1, 2)

    def address(self, expr: Any, field: str = "address") -> int:
        """Resolves an address: an int, or ``"name"`` / ``"name+byte_offset"`` (offset decimal or 0x hex)."""
        if isinstance(expr, (int, np.integer)) and not isinstance(expr, bool):
            return int(expr)
        m = _ADDR_EXPR.match(expr) if isinstance(expr, str) else None
        if m is None:
            raise ConfigError(field, expr, "must be an integer address or 'tensor+byte_offset'")
        t = self.tensor(m.group(1), field)
        return t.addr + (int(m.group(2), 0) if m.group(2) else 0)

    def owner(self, addr: int) -> str | None:
        """Name of the tensor holding byte ``addr``, if any."""
        for t in self.tensors.values():
            if t.addr <= addr < t.end:
                return t.name
        return None

    def describe(self, addr: int) -> str:
        name = self.owner(addr)
        if name is None:
            return f"0x{addr:x} (outside every tensor)"
        return f"0x{addr:x} ({name}+{addr - self.tensors[name].addr})"

    def same_layout(self, other: GlobalMemory) -> bool:
        a = {k: (t.addr, t.shape, t.dtype) for k, t in self.tensors.items()}
        b = {k: (t.addr, t.shape, t.dtype) for k, t in other.tensors.items()}
        return a == b

    def copy(self) -> GlobalMemory:
        out = GlobalMemory()
        out.tensors = dict(self.tensors)
        out.init_given = dict(self.init_given)
        out._cursor = self._cursor
        out._image = self._image.copy()
        return out

    def dump(self, directory: str | Path, image: np.ndarray | None = None) -> list[Path]:
        """Writes every tensor to ``directory/<name>.npy``; returns the paths."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for name in self.tensors:
            p = out / f"{name}.npy"
            np.save(p, self.read(name, image))
            paths.append(p)
        return paths


def _inside(value: str, base_dir: Path | None, field: str) -> Path:
    """A relative data path resolved against ``base_dir`` (the working directory when None); an
    absolute path, or one that leaves that folder, is a :class:`ConfigError`."""
    root = (base_dir if base_dir is not None else Path.cwd()).resolve()
    if Path(value).is_absolute():
        raise ConfigError(field, value, "is an absolute path: data paths may not leave the scenario's folder",
                          "put the file beside the scenario and name it relatively")  # fmt: skip
    p = (root / value).resolve()
    if not p.is_relative_to(root):
        raise ConfigError(field, value, "leaves the scenario's folder", "put the file beside the scenario")
    return p


def tensors_from_tables(tables: Any, base_dir: Path | None = None, field: str = "tensor") -> GlobalMemory:
    """Builds a :class:`GlobalMemory` from scenario ``[[tensor]]`` tables (name, shape, dtype, init, seed)."""
    gm = GlobalMemory()
    if tables is None:
        return gm
    if not isinstance(tables, list):
        raise ConfigError(field, tables, "must be an array of tables ([[tensor]])")
    allowed = {"name", "shape", "dtype", "init", "seed"}
    for i, t in enumerate(tables):
        where = f"{field}[{i}]"
        if not isinstance(t, Mapping):
            raise ConfigError(where, t, "must be a table")
        unknown = set(t) - allowed
        if unknown:
            key = sorted(unknown)[0]
            raise ConfigError(f"{where}.{key}", t[key], f"unknown key; allowed: {sorted(allowed)}")
        for key in ("name", "shape", "dtype"):
            if key not in t:
                raise ConfigError(f"{where}.{key}", None, "is required")
        init = t.get("init")  # absent: zero-filled, but not given (GlobalMemory.alloc)
        if isinstance(init, str) and init.endswith(".npy"):
            init = str(_inside(init, base_dir, f"{where}.init"))
        gm.alloc(t["name"], t["shape"], t["dtype"], init, t.get("seed", 0), where)
    return gm


# -- device side (JAX, imported in each function) ----------------------------------------


def row_starts(addr: jax.Array, n_rows: int, stride: jax.Array, itemsize: int | jax.Array) -> jax.Array:
    """[n_rows] byte index in ``gm`` of each stored row of a tile at ``addr`` with ``stride``
    elements per stored row."""
    import jax.numpy as jnp

    return addr - GM_BASE + jnp.arange(n_rows, dtype=jnp.int32) * stride * itemsize


def load_windows(x: jax.Array, starts: jax.Array, width: int) -> jax.Array:
    """[R, width]: ``width`` consecutive elements of ``x`` [N] from each index of ``starts`` [R]
    (one windowed gather, a copy per row rather than a lookup per element). Windows are clamped
    into ``x``: callers keep a margin after anything that matters."""
    import jax

    return jax.vmap(lambda s: jax.lax.dynamic_slice(x, (s,), (width,)))(starts)


def store_windows(x: jax.Array, starts: jax.Array, value: jax.Array) -> jax.Array:
    """``x`` [N] with ``value`` [R, W] written as R runs of W elements at ``starts`` [R] (one
    windowed scatter). Runs must not overlap one another."""
    import jax

    dnums = jax.lax.ScatterDimensionNumbers(
        update_window_dims=(1,), inserted_window_dims=(), scatter_dims_to_operand_dims=(0,)
    )
    return jax.lax.scatter(
        x, starts[:, None], value, dnums, indices_are_sorted=False, unique_indices=False, mode="clip"
    )


def load_rows(gm: jax.Array, starts: jax.Array, width: int, dtype: np.dtype) -> jax.Array:
    """[R, width] elements: ``width`` contiguous elements of ``dtype`` from each byte index of
    ``starts`` [R] of ``gm`` [G] uint8 (:func:`load_windows` of bytes, then a bit cast). ``gm`` must
    extend at least ``width * itemsize`` bytes past any row that matters: windows are clamped
    into ``gm``, so a row starting too close to its end would be read from a shifted position
    (callers mask such rows, and the engine pads GM by :func:`row_margin`)."""
    import jax

    size = dtype.itemsize
    raw = load_windows(gm, starts, width * size).reshape(starts.shape[0], width, size)
    return jax.lax.bitcast_convert_type(raw if size > 1 else raw[..., 0], dtype)


def store_rows(gm: jax.Array, starts: jax.Array, value: jax.Array) -> jax.Array:
    """Writes ``value`` [R, W] (typed) as ``R`` contiguous rows at byte indices ``starts`` [R] of
    ``gm`` [G] uint8 (a bit cast, then :func:`store_windows`). Rows must not overlap one another."""
    import jax
    import jax.numpy as jnp

    raw = jax.lax.bitcast_convert_type(value, jnp.uint8)
    return store_windows(gm, starts, raw.reshape(value.shape[0], value.shape[1] * value.dtype.itemsize))


def row_margin(width_elements: int) -> int:
    """Bytes of zero padding after GM so that a window of ``width_elements`` of up to 4 bytes
    starting inside GM is never clamped."""
    return -(-width_elements * 4 // 64) * 64

"""Chip descriptions: core counts, clocks, buffer sizes and memory rates; CANN platform INI loader.

Presets for Ascend 910B1..B4 (Atlas A2) and every Ascend 950PR / 950DT bin. Every number is the
public platform INI's, as published in hicann/runtime (commit 681ef76, ``src/platform/
platform_config/cann/Ascend910B<n>.ini`` and ``cann-dev/Ascend950{PR,DT}_<bin>.ini``): ``[SoCInfo]``
core counts, L2 and memory size, ``[AICoreSpec]`` clock and buffer sizes, ``[AICoreMemoryRates]``
and ``[DtypeMKN]``. A preset equals what :func:`load_platform_ini` reads from that file. Load the INI
of your CANN installation the same way if it differs; every rate is also a calibratable parameter
of the cost model.
"""

from __future__ import annotations

import configparser
import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ascend_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class ChipSpec:
    """Static description of one Ascend chip.

    Attributes:
      name: SoC name as in CANN (``Ascend910B1``...).
      aic_num: cube cores (AIC), ``cube_core_cnt``.
      aiv_num: vector cores (AIV), ``vector_core_cnt``; 2 per AIC on Atlas A2.
      ub_size: unified buffer bytes per AIV.
      cube_freq_mhz: AI core clock (``cube_freq``), MHz.
      l0a_size, l0b_size, l0c_size, l1_size: per-AIC buffers, bytes.
      l2_size, memory_size: bytes.
      memory_rates: ``[AICoreMemoryRates]`` as bytes per cycle per core (``ddr_rate``,
        ``l2_read_rate``, ``l2_write_rate``, ``l1_to_l0_a_rate``...).
      dtype_mkn: ``[DtypeMKN]``: fractal (M, N, K) per cube instruction by input type
        (``default`` 16x16x16; ``int8`` 16x32x16, i.e. K = 32).
    """

    name: str
    aic_num: int
    aiv_num: int
    ub_size: int = 196608
    cube_freq_mhz: float = 1850.0
    l0a_size: int = 65536
    l0b_size: int = 65536
    l0c_size: int = 131072
    l1_size: int = 524288
    l2_size: int = 192 * 2**20
    memory_size: int = 64 * 2**30
    memory_rates: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: {"ddr_rate": 32.0, "l2_read_rate": 110.0, "l2_write_rate": 86.0}
    )
    dtype_mkn: Mapping[str, tuple[int, int, int]] = dataclasses.field(
        default_factory=lambda: {"default": (16, 16, 16), "int8": (16, 32, 16)}
    )

    def __hash__(self) -> int:
        return hash((self.name, self.aic_num, self.aiv_num, self.cube_freq_mhz))

    def rate(self, key: str, default: float | None = None) -> float:
        """A memory rate in bytes/cycle/core (``ddr_read_rate`` falls back to ``ddr_rate``)."""
        if key in self.memory_rates:
            return float(self.memory_rates[key])
        base = key.replace("_read", "").replace("_write", "")
        if base in self.memory_rates:
            return float(self.memory_rates[base])
        if default is None:
            raise ConfigError("chip.memory_rates", key, f"not in {sorted(self.memory_rates)}")
        return default

    def cycles_to_us(self, cycles: float) -> float:
        return cycles / self.cube_freq_mhz


#: ``[AICoreMemoryRates]`` and ``[DtypeMKN]`` of every 910B INI (the four files agree); the cost
#: model reads ``ddr_rate`` only (:mod:`ascend_jax.timing`).
A2_RATES = {
    "ddr_rate": 32.0,
    "ddr_read_rate": 32.0,
    "ddr_write_rate": 32.0,
    "l2_rate": 110.0,
    "l2_read_rate": 110.0,
    "l2_write_rate": 86.0,
    "l1_to_l0_a_rate": 512.0,
    "l1_to_l0_b_rate": 256.0,
    "l1_to_ub_rate": 128.0,
    "l0_c_to_ub_rate": 256.0,
    "ub_to_l2_rate": 64.0,
    "ub_to_ddr_rate": 64.0,
    "ub_to_l1_rate": 128.0,
}
A2_DTYPE_MKN = {
    "default": (16, 16, 16),
    "int8": (16, 32, 16),
    "uint8": (16, 32, 16),
    "int4": (16, 64, 16),
    "int2": (16, 128, 16),
    "uint2": (16, 128, 16),
    "uint1": (16, 256, 16),
}


def _a2(name: str, aic: int, freq: float, **kw: Any) -> ChipSpec:
    return ChipSpec(
        f"Ascend{name}",
        aic,
        2 * aic,
        cube_freq_mhz=freq,
        memory_rates=dict(A2_RATES),
        dtype_mkn=dict(A2_DTYPE_MKN),
        **kw,
    )


#: Atlas A2 (hicann/runtime ``platform_config/cann/Ascend910B<n>.ini``): UB 192 KiB, L0A / L0B 64 KiB,
#: L0C 128 KiB, L1 512 KiB, L2 192 MiB (910B4: 96 MiB), memory 64 GiB (910B4: 32 GiB). 910B2 runs at
#: 1800 MHz (``cube_freq=1800``), not 910B1's 1850.
CHIPS: dict[str, ChipSpec] = {
    "910B1": _a2("910B1", 24, 1850.0),
    "910B2": _a2("910B2", 24, 1800.0),
    "910B3": _a2("910B3", 20, 1800.0),
    "910B4": _a2("910B4", 20, 1500.0, l2_size=96 * 2**20, memory_size=32 * 2**30),
}

#: Ascend 950PR / 950DT bins, from hicann/runtime ``src/platform/platform_config/cann-dev/
#: Ascend950{PR,DT}_<bin>.ini`` (commit 681ef76): bin -> (``cube_core_cnt``, ``cube_freq`` MHz,
#: ``l2_size``, ``memory_size``, ``[AICoreMemoryRates] ddr_rate``). What every bin shares is below.
A950_BINS: dict[str, tuple[int, int, int, int, int]] = {
    "950DT_950x": (8, 1650, 33554432, 25769803776, 19),
    "950DT_950y": (8, 1650, 33554432, 17179869184, 14),
    "950DT_9571": (28, 1650, 134217728, 154618822656, 80),
    "950DT_9572": (28, 1650, 134217728, 103079215104, 80),
    "950DT_9573": (28, 1650, 117440512, 135291569824, 70),
    "950DT_9574": (28, 1650, 117440512, 90194313216, 70),
    "950DT_9575": (28, 1650, 134217728, 103079215104, 61),
    "950DT_9576": (28, 1650, 134217728, 68719476736, 61),
    "950DT_9577": (28, 1650, 117440512, 90194313216, 54),
    "950DT_9578": (28, 1650, 117440512, 60129542144, 54),
    "950DT_9581": (32, 1650, 134217728, 154618822656, 80),
    "950DT_9581x": (32, 1650, 134217728, 154618822656, 80),
    "950DT_9582": (32, 1650, 134217728, 103079215104, 80),
    "950DT_9582x": (32, 1650, 134217728, 103079215104, 80),
    "950DT_9583": (32, 1650, 117440512, 135291469824, 70),
    "950DT_9584": (32, 1650, 117440512, 90194313216, 70),
    "950DT_9585": (32, 1650, 134217728, 103079215104, 61),
    "950DT_9586": (32, 1650, 134217728, 68719476736, 61),
    "950DT_9587": (32, 1650, 117440512, 90194313216, 54),
    "950DT_9588": (32, 1650, 117440512, 60129542144, 54),
    "950DT_9591": (36, 1800, 134217728, 154618822656, 80),
    "950DT_9592": (36, 1800, 134217728, 103079215104, 80),
    "950DT_9595": (36, 1800, 134217728, 103079215104, 61),
    "950DT_9596": (36, 1800, 134217728, 68719476736, 61),
    "950DT_95A1": (36, 1800, 134217728, 154618822656, 80),
    "950DT_95A2": (36, 1800, 134217728, 103079215104, 80),
    "950PR_950z": (4, 1650, 16777216, 25769803776, 4),
    "950PR_9579": (28, 1650, 134217728, 137438953472, 31),
    "950PR_957b": (28, 1650, 117440512, 120259084288, 27),
    "950PR_957bx": (28, 1650, 117440512, 120259084288, 27),
    "950PR_957c": (28, 1650, 117440512, 90194313216, 27),
    "950PR_957d": (28, 1650, 100663296, 103079215104, 23),
    "950PR_9589": (32, 1650, 134217728, 137438953472, 31),
    "950PR_958b": (32, 1650, 117440512, 120259084288, 27),
    "950PR_9599": (36, 1800, 134217728, 137438953472, 31),
}
#: Shared by every 950 bin's INI: ``vector_core_cnt`` = 2 x ``cube_core_cnt``; ``ub_size`` 253952
#: (248 KiB); L0A / L0B 64 KiB, L0C 256 KiB, L1 512 KiB; these ``[AICoreMemoryRates]`` beside the
#: bin's ``ddr_rate`` (also its ``ddr_read_rate`` / ``ddr_write_rate``); and this ``[DtypeMKN]``.
A950_RATES = {
    "l2_rate": 100.0,
    "l2_read_rate": 100.0,
    "l2_write_rate": 100.0,
    "l1_to_l0_a_rate": 256.0,
    "l1_to_l0_b_rate": 256.0,
    "l1_to_ub_rate": 128.0,
    "l0_c_to_ub_rate": 128.0,
    "ub_to_l2_rate": 128.0,
    "ub_to_ddr_rate": 128.0,
    "ub_to_l1_rate": 128.0,
}
A950_DTYPE_MKN = {
    "default": (16, 16, 16),
    "float8_e4m3fn": (16, 32, 16),
    "hifloat8": (16, 32, 16),
    "hifloat4": (16, 64, 16),
    "float4_e2m1": (16, 64, 16),
    "float4_e1m2": (16, 64, 16),
    "int8": (16, 32, 16),
    "uint8": (16, 32, 16),
    "int4": (16, 64, 16),
    "int2": (16, 128, 16),
    "uint2": (16, 128, 16),
    "uint1": (16, 256, 16),
    "float": (16, 8, 16),
    "int32": (16, 8, 16),
}


def _a950(name: str, aic: int, freq: int, l2: int, memory: int, ddr: int) -> ChipSpec:
    rates = {"ddr_rate": float(ddr), "ddr_read_rate": float(ddr), "ddr_write_rate": float(ddr), **A950_RATES}
    return ChipSpec(
        f"Ascend{name}",
        aic,
        2 * aic,
        ub_size=253952,
        cube_freq_mhz=float(freq),
        l0c_size=262144,
        l2_size=l2,
        memory_size=memory,
        memory_rates=rates,
        dtype_mkn=dict(A950_DTYPE_MKN),
    )


CHIPS.update({name: _a950(name, *numbers) for name, numbers in A950_BINS.items()})


#: Chips ``CreateCubeResGroup`` is not documented for, with the reason (a name is matched on its
#: prefix, without "Ascend"; lower case). The API page lists Atlas A2 (910B) and Ascend 950PR/DT
#: only; Atlas A3 (SoC ``Ascend910_93xx``) is absent, though the platform code maps it to 910B.
REFUSED_CHIPS: dict[str, str] = {
    "910_93": "Atlas A3 (Ascend910_93xx): the CreateCubeResGroup API page does not list Atlas A3 among the "
    "supported products",
    "a3": "Atlas A3: the CreateCubeResGroup API page does not list Atlas A3 among the supported products",
}

#: Ascend 950: CreateCubeResGroup is documented for it and its handle code (asc-devkit ``dav_3510``)
#: is the same as Atlas A2's. Only a bin has numbers (4..36 AICs, 1650 or 1800 MHz): a family name
#: such as ``950PR`` is refused with the list of bins.
A950_PREFIXES = ("950pr", "950dt", "950")


def get_chip(name: str | ChipSpec, *, field: str = "chip") -> ChipSpec:
    """Returns the preset called ``name`` (``"910B1"`` or ``"Ascend910B1"``), or loads a ``.ini`` path.

    Raises:
      ConfigError: an unknown name; Atlas A3 (:data:`REFUSED_CHIPS`: no CreateCubeResGroup there);
        an Ascend 950 name that is no bin (``950PR``, ``950DT_9500``: :data:`A950_BINS` lists them).
    """
    if isinstance(name, ChipSpec):
        return name
    if isinstance(name, (str, Path)) and str(name).endswith(".ini"):
        return load_platform_ini(name, field=field)
    key = name.removeprefix("Ascend") if isinstance(name, str) else name
    low = key.lower().removeprefix("ascend") if isinstance(key, str) else ""
    for prefix, why in REFUSED_CHIPS.items():
        if low.startswith(prefix):
            raise ConfigError(
                field, name, f"is refused: {why}", "use an Atlas A2 preset (910B1..910B4) or an Ascend 950 bin"
            )
    if key not in CHIPS and any(low.startswith(p) for p in A950_PREFIXES):
        family = "950DT" if low.startswith("950dt") else "950PR" if low.startswith("950pr") else "950"
        bins = [b for b in A950_BINS if b.lower().startswith(family.lower())]
        match = [b for b in A950_BINS if b.lower() == low]
        raise ConfigError(
            field,
            name,
            f"is no Ascend {family} bin with a preset: the bins differ in core count (4..36 AICs) and clock, "
            "so the family name has no numbers",
            f"use {match[0]!r} (the spelling is case-sensitive)"
            if match
            else f"name a bin: {', '.join(bins)}; or pass the part's CANN platform_config .ini",
        )
    if key not in CHIPS:
        raise ConfigError(
            field,
            name,
            f"unknown chip; presets are 910B1..910B4 and {len(A950_BINS)} Ascend 950 bins such as 950PR_9599 "
            "(ascend_jax.chips.A950_BINS lists them), or a platform_config .ini path",
        )
    return CHIPS[key]


_NUMBER = re.compile(r"^\s*[0-9.eE+-]+(\s*/\s*[0-9.eE+-]+)?\s*$")


#: Largest INI file read, bytes (real platform_config files are a few KB).
MAX_INI_BYTES = 2**20
#: Largest AIC count accepted from an INI (far above any Ascend SoC: 910B has 20..24); AIVs up to twice this.
MAX_CORES = 1024

_KIB, _MIB, _GIB, _TIB = 2**10, 2**20, 2**30, 2**40

#: Physical limits of every number read from an INI: key -> (low, high, unit, why). Real 910B values
#: sit far inside: cube_freq 1500..1850 MHz, UB 192 KiB, L0A/L0B 64 KiB, L0C 128 KiB, L1 512 KiB,
#: L2 96..192 MiB, HBM 32..64 GiB. The bounds keep every derived figure (cycles, µs, buffer
#: placements, GM pages) finite and the host memory a run needs bounded.
INI_LIMITS: dict[str, tuple[float, float, str, str]] = {
    "cube_freq": (1.0, 10_000.0, "MHz", "an AI core clock between 1 MHz and 10 GHz"),
    "ub_size": (1 * _KIB, 16 * _MIB, "bytes", "a unified buffer of 1 KiB..16 MiB per AIV (910B: 192 KiB)"),
    "l0_a_size": (1 * _KIB, 16 * _MIB, "bytes", "an L0A of 1 KiB..16 MiB (910B: 64 KiB)"),
    "l0_b_size": (1 * _KIB, 16 * _MIB, "bytes", "an L0B of 1 KiB..16 MiB (910B: 64 KiB)"),
    "l0_c_size": (1 * _KIB, 16 * _MIB, "bytes", "an L0C of 1 KiB..16 MiB (910B: 128 KiB)"),
    "l1_size": (1 * _KIB, 256 * _MIB, "bytes", "an L1 of 1 KiB..256 MiB (910B: 512 KiB)"),
    "l2_size": (1 * _KIB, 64 * _GIB, "bytes", "an L2 of 1 KiB..64 GiB (910B: 96..192 MiB)"),
    "memory_size": (1 * _MIB, 1 * _TIB, "bytes", "a device memory of 1 MiB..1 TiB (910B: 32..64 GiB)"),
}
#: Bounds of every ``[AICoreMemoryRates]`` value, bytes per cycle per core (910B: 32..512).
RATE_LIMITS = (1.0 / 64, 65536.0)


def _number(value: str, where: str) -> float:
    """A positive, finite INI number; ``a/b`` quotients occur in real files
    (``ub_to_ddr_rate=21474836480/680000000``)."""
    rule = "must be a positive number or a quotient a/b of positive numbers"
    fix = "write a plain decimal number, e.g. 1850 or 21474836480/680000000"
    if len(value) > 64 or not _NUMBER.match(value):
        raise ConfigError(where, value, rule, fix)
    try:
        parts = [float(x) for x in value.split("/")]
        out = parts[0] / parts[1] if len(parts) == 2 else parts[0]
    except (ValueError, ZeroDivisionError, OverflowError):
        raise ConfigError(where, value, rule, fix) from None
    if not (0 < out < float("inf")):
        raise ConfigError(where, value, rule + " (finite, above 0)", fix)
    return out


def _plain(x: float) -> str:
    """``x`` as an integer when it is whole (``16777216``), else compactly (``0.015625``)."""
    return str(int(x)) if x == int(x) else f"{x:g}"


def _bounded(value: str, where: str, low: float, high: float, unit: str, why: str) -> float:
    """:func:`_number` within ``low..high`` (``unit``), else a :class:`ConfigError` naming the bounds."""
    x = _number(value, where)
    if not low <= x <= high:
        raise ConfigError(
            where,
            value,
            f"must be in {_plain(low)}..{_plain(high)} {unit} ({why})",
            "use the value of your CANN platform_config INI; these bounds hold for any Ascend SoC",
        )
    return x


def _count(value: str, where: str, limit: int = MAX_CORES) -> int:
    """A whole number in 1..limit (core counts)."""
    n = _number(value, where)
    if n != int(n) or not 1 <= n <= limit:
        raise ConfigError(
            where, value, f"must be a whole number in 1..{limit}", "give the SoC's core count (910B: 20..24 AICs)"
        )
    return int(n)


def _small_whole(text: str) -> bool:
    """``text`` is an ASCII whole number in 1..4096 (a fractal extent)."""
    s = text.strip()
    return s.isascii() and s.isdigit() and len(s) <= 4 and 1 <= int(s) <= 4096


def load_platform_ini(path: str | Path, *, field: str = "chip") -> ChipSpec:
    """Reads a CANN ``platform_config/<SoC>.ini``: ``[version] SoC_version``, ``[SoCInfo]``
    (``cube_core_cnt`` or ``ai_core_cnt``, ``vector_core_cnt``, ``memory_size``, ``l2_size``),
    ``[AICoreSpec]`` (``cube_freq``, ``l0_a_size``, ``l0_b_size``, ``l0_c_size``, ``l1_size``,
    ``ub_size``), ``[AICoreMemoryRates]`` (every numeric key) and ``[DtypeMKN]``.
    Missing optional keys keep the 910B1 defaults; a missing core count is an error.

    Every number is range-checked (a :class:`ConfigError` names the INI key, the value, the bounds
    and the fix): core counts 1.. :data:`MAX_CORES` (AIVs up to twice that), clock and buffer sizes
    within :data:`INI_LIMITS`, memory rates within :data:`RATE_LIMITS` bytes/cycle/core."""
    p = Path(path)
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # keys keep their case
    try:
        if not p.is_file():
            raise ConfigError(field, str(p), "is not a regular file", "give a platform_config .ini file")
        if p.stat().st_size > MAX_INI_BYTES:
            raise ConfigError(field, str(p), f"is larger than {MAX_INI_BYTES} bytes (the limit)")
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(field, str(p), f"cannot be read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise ConfigError(field, str(p), "is not UTF-8 text", "save it as UTF-8") from None
    try:
        cp.read_string(text)
    except configparser.Error as e:
        raise ConfigError(field, str(p), f"is not a valid INI file ({e.__class__.__name__})") from None

    def get(section: str, key: str) -> str | None:
        return cp.get(section, key, fallback=None) if cp.has_section(section) else None

    where = f"{p.name}"
    aic = get("SoCInfo", "cube_core_cnt") or get("SoCInfo", "ai_core_cnt")
    if aic is None:
        raise ConfigError(f"{where}[SoCInfo].cube_core_cnt", None, "is required (or ai_core_cnt)")
    kw: dict[str, Any] = {
        "name": get("version", "SoC_version") or p.stem,
        "aic_num": _count(aic, f"{where}[SoCInfo].cube_core_cnt"),
    }
    aiv = get("SoCInfo", "vector_core_cnt")
    kw["aiv_num"] = _count(aiv, f"{where}[SoCInfo].vector_core_cnt", 2 * MAX_CORES) if aiv else 2 * kw["aic_num"]
    for section, key, attr, conv in (
        ("SoCInfo", "memory_size", "memory_size", int),
        ("SoCInfo", "l2_size", "l2_size", int),
        ("AICoreSpec", "cube_freq", "cube_freq_mhz", float),
        ("AICoreSpec", "l0_a_size", "l0a_size", int),
        ("AICoreSpec", "l0_b_size", "l0b_size", int),
        ("AICoreSpec", "l0_c_size", "l0c_size", int),
        ("AICoreSpec", "l1_size", "l1_size", int),
        ("AICoreSpec", "ub_size", "ub_size", int),
    ):
        v = get(section, key)
        if v is not None:
            x = _bounded(v, f"{where}[{section}].{key}", *INI_LIMITS[key])
            if conv is int and x != int(x):
                raise ConfigError(
                    f"{where}[{section}].{key}", v, "must be a whole number of bytes", "drop the fraction"
                )
            kw[attr] = conv(x)
    if cp.has_section("AICoreMemoryRates"):
        rates = {}
        for key, v in cp.items("AICoreMemoryRates"):
            if key.startswith("Intrinsic_"):
                continue
            low, high = RATE_LIMITS
            rates[key] = _bounded(
                v, f"{where}[AICoreMemoryRates].{key}", low, high, "bytes/cycle/core", "910B: 32..512"
            )
        if rates:
            kw["memory_rates"] = rates
    if cp.has_section("DtypeMKN"):
        mkn = {}
        for key, v in cp.items("DtypeMKN"):
            parts = v.split(",")
            if len(parts) != 3 or not all(_small_whole(x) for x in parts):
                raise ConfigError(
                    f"{where}[DtypeMKN].{key}", v, "must be M,N,K: three whole numbers in 1..4096", "e.g. 16,16,16"
                )
            nums = [int(x) for x in parts]
            mkn["default" if key == "Default" else key.removeprefix("DT_").lower()] = tuple(nums)
        kw["dtype_mkn"] = {"default": (16, 16, 16), **mkn}
    return ChipSpec(**kw)

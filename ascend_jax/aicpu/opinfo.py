"""The op-info library (spec §1.1) and the registry of simulated device kernel libraries (§1.2).

An op-info JSON file maps kernel names (top-level keys, the names ``aclrtBinaryGetFunction`` looks
up) to ``{"opInfo": {"opKernelLib": "AICPUKernel", "kernelSo": "lib....so", "functionName": "..."}}``.
Device kernels are Python functions registered under ``(kernelSo, functionName)`` with
:func:`device_kernel`; a functionName the .so does not export fails only when the kernel runs
(``ACL_ERROR_RT_AICPU_EXCEPTION``), as on the device.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

#: kernelSo -> functionName -> Python kernel ``fn(dev, param) -> int``.
KERNEL_LIBRARIES: dict[str, dict[str, Callable[..., int]]] = {}


def device_kernel(kernel_so: str, function_name: str | None = None) -> Callable:
    """Decorator: exports ``fn`` as ``function_name`` (default: its name) of library ``kernel_so``.

    The kernel is called as ``fn(dev, param)`` with ``dev`` the device-side API
    (:class:`ascend_jax.aicpu.device.DeviceApi`) and ``param`` the copied argument blob as a 0-d
    structured array; it returns 0 on success (``extern "C" unsigned int fn(void *param)``).
    """

    def register(fn: Callable[..., int]) -> Callable[..., int]:
        KERNEL_LIBRARIES.setdefault(kernel_so, {})[function_name or fn.__name__] = fn
        return fn

    return register


@dataclasses.dataclass(frozen=True)
class OpInfo:
    """One entry of the library: kernel name (JSON key), kernelSo, functionName, opKernelLib."""

    name: str
    kernel_so: str
    function_name: str
    op_kernel_lib: str = "AICPUKernel"
    user_defined: bool = False


def parse_op_info(doc: Any, warnings: list[str] | None = None) -> dict[str, OpInfo]:
    """Registers the entries of a parsed op-info document as the runtime does; returns kernel name ->
    :class:`OpInfo`.

    Follows hicann/runtime ``src/runtime/core/src/kernel/json_parse.cc`` ``GetCpuKernelFromJson`` and
    ``program.cc`` ``Program::RegisterCpuKernel`` (nlohmann::json):

    * the top level is iterated as nlohmann's ``items()`` does: an object by key, an array by index
      (keys ``"0"``, ``"1"``, ...), a scalar as one keyless value that has no ``opInfo``;
    * an entry without an ``opInfo`` key (or that is no object) is skipped with a warning;
    * an ``opInfo`` that is no object registers with every field empty (``contains`` is false);
    * a missing ``functionName`` or ``kernelSo`` only warns (the entry registers with an empty name,
      so the kernel fails on the device when it runs); a missing ``opKernelLib`` is stored empty (the
      runtime logs an error when it sets the kernel type, ``program_common.cc``);
    * a present ``functionName``, ``kernelSo``, ``opKernelLib`` or ``userDefined`` that is not a
      string makes ``get<std::string>`` throw: that entry is skipped with a warning;
    * ``userDefined`` counts only as the string ``"True"``; unknown keys are ignored.

    ``warnings`` (if given) receives one line per skipped entry or missing field.
    """
    notes = warnings if warnings is not None else []
    if isinstance(doc, Mapping):
        items = [(str(k), v) for k, v in doc.items()]
    elif isinstance(doc, (list, tuple)):
        items = [(str(i), v) for i, v in enumerate(doc)]
    else:
        items = [("", doc)]
    out: dict[str, OpInfo] = {}
    for name, entry in items:
        if not isinstance(entry, Mapping) or "opInfo" not in entry:
            notes.append(f"{name!r}: no opInfo object; entry skipped")
            continue
        info = entry["opInfo"]
        if not isinstance(info, Mapping):
            info = {}
        fields, bad = {}, None
        for key in ("functionName", "kernelSo", "opKernelLib", "userDefined"):
            if key not in info:
                if key in ("functionName", "kernelSo"):
                    notes.append(f"{name!r}: opInfo.{key} missing")
                fields[key] = ""
            elif isinstance(info[key], str):
                fields[key] = info[key]
            else:
                bad = key
                break
        if bad is not None:
            notes.append(f"{name!r}: opInfo.{bad} is not a string; entry skipped")
            continue
        if name in out:  # an array cannot repeat an index, nor an object a key: kept for safety
            notes.append(f"{name!r}: already registered; duplicate skipped")
            continue
        out[name] = OpInfo(
            name, fields["kernelSo"], fields["functionName"], fields["opKernelLib"], fields["userDefined"] == "True"
        )
    return out


def _no_constant(text: str) -> float:
    raise ValueError(f"{text} is not JSON")


def load_op_info(path: str | Path | Any, warnings: list[str] | None = None) -> dict[str, OpInfo] | None:
    """Loads an op-info JSON file (or an already parsed document); None if the file cannot be read or
    does not parse (``aclrtBinaryLoadFromFile`` then returns 107000).

    Parsing is nlohmann's, as far as Python's ``json`` allows: a UTF-8 byte-order mark is skipped, and
    ``NaN`` / ``Infinity`` (which Python would accept) are errors. Python's nesting limit (about 1,000
    levels) is an error here although nlohmann has none: not modelled."""
    if not isinstance(path, (str, Path)):
        return parse_op_info(path, warnings)
    try:  # unreadable, not UTF-8, not JSON, nested past Python's limit, or a 100k-digit number
        doc = json.loads(Path(path).read_text(encoding="utf-8-sig"), parse_constant=_no_constant)
    except (OSError, ValueError, TypeError, RecursionError):
        return None
    return parse_op_info(doc, warnings)


def resolve_symbol(kernel_so: str, function_name: str) -> Callable[..., int] | None:
    """The registered Python kernel, or None if ``kernel_so`` does not export ``function_name``."""
    return KERNEL_LIBRARIES.get(kernel_so, {}).get(function_name)

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


def parse_op_info(doc: Any, warnings: list[str] | None = None) -> dict[str, OpInfo] | None:
    """Registers the entries of a parsed op-info document as the runtime does; returns kernel name ->
    :class:`OpInfo`, or None when ``doc`` is not a JSON object (the load then fails).

    Lenient like hicann/runtime ``src/runtime/core/src/kernel/json_parse.cc`` and ``program.cc``
    (``Program::RegisterCpuKernel``): an entry without an ``opInfo`` object is skipped with a
    warning; a missing ``kernelSo`` or ``functionName`` only warns (the entry is registered with an
    empty name, so the kernel fails on the device when it runs); ``opKernelLib`` is stored as free
    text. ``warnings`` (if given) receives one line per skipped entry or missing field.
    """
    if not isinstance(doc, Mapping):
        return None
    notes = warnings if warnings is not None else []
    out = {}
    for name, entry in doc.items():
        info = entry.get("opInfo") if isinstance(entry, Mapping) else None
        if not isinstance(info, Mapping):
            notes.append(f"{name!r}: no opInfo object; entry skipped")
            continue
        if name in out:
            notes.append(f"{name!r}: already registered; duplicate skipped")
            continue
        fields = {}
        for key in ("opKernelLib", "kernelSo", "functionName"):
            value = info.get(key)
            if not isinstance(value, str) or not value:
                notes.append(f"{name!r}: opInfo.{key} missing")
                value = ""
            fields[key] = value
        out[name] = OpInfo(
            name,
            fields["kernelSo"],
            fields["functionName"],
            fields["opKernelLib"],
            str(info.get("userDefined")) == "True",
        )
    return out


def load_op_info(path: str | Path | Mapping[str, Any], warnings: list[str] | None = None) -> dict[str, OpInfo] | None:
    """Loads an op-info JSON file (or an already parsed document); None if the file cannot be read
    or is not a JSON object (``aclrtBinaryLoadFromFile`` then returns 107000)."""
    if isinstance(path, Mapping):
        return parse_op_info(path, warnings)
    try:  # unreadable, not UTF-8, not JSON, nested past Python's limit, or a 100k-digit number
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError, RecursionError):
        return None
    return parse_op_info(doc, warnings)


def resolve_symbol(kernel_so: str, function_name: str) -> Callable[..., int] | None:
    """The registered Python kernel, or None if ``kernel_so`` does not export ``function_name``."""
    return KERNEL_LIBRARIES.get(kernel_so, {}).get(function_name)

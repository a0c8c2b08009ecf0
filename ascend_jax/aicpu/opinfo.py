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

from ascend_jax.errors import ConfigError

#: kernelSo -> functionName -> Python kernel ``fn(dev, param) -> int``.
KERNEL_LIBRARIES: dict[str, dict[str, Callable[..., int]]] = {}


def device_kernel(kernel_so: str, function_name: str | None = None) -> Callable:
    """Decorator: exports ``fn`` as ``function_name`` (default: its name) of library ``kernel_so``.

    The kernel is called as ``fn(dev, param)`` with ``dev`` the device-side API
    (:class:`ascend_jax.aicpu.world.DeviceApi`) and ``param`` the copied argument blob as a 0-d
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


def parse_op_info(doc: Any, source: str = "op-info") -> dict[str, OpInfo]:
    """Validates a parsed op-info document; returns kernel name -> :class:`OpInfo`."""
    if not isinstance(doc, Mapping) or not doc:
        raise ConfigError(source, type(doc).__name__, "must be a JSON object whose keys are kernel names")
    out = {}
    for name, entry in doc.items():
        where = f"{source}[{name!r}]"
        if not isinstance(entry, Mapping) or "opInfo" not in entry:
            raise ConfigError(f"{where}.opInfo", None, "is required (the runtime skips entries without it)")
        info = entry["opInfo"]
        if not isinstance(info, Mapping):
            raise ConfigError(f"{where}.opInfo", info, "must be an object")
        for key in ("opKernelLib", "kernelSo", "functionName"):
            if not isinstance(info.get(key), str) or not info.get(key):
                raise ConfigError(f"{where}.opInfo.{key}", info.get(key), "is required and must be a non-empty string")
        if info["opKernelLib"] != "AICPUKernel":
            raise ConfigError(f"{where}.opInfo.opKernelLib", info["opKernelLib"], "must be 'AICPUKernel'")
        if not info["kernelSo"].endswith(".so"):
            raise ConfigError(f"{where}.opInfo.kernelSo", info["kernelSo"], "must name a shared library (*.so)")
        if not info["functionName"].isidentifier():
            raise ConfigError(
                f"{where}.opInfo.functionName", info["functionName"], "must be a C identifier (the exported symbol)"
            )
        out[name] = OpInfo(
            name, info["kernelSo"], info["functionName"], info["opKernelLib"], str(info.get("userDefined")) == "True"
        )
    return out


def load_op_info(path: str | Path | Mapping[str, Any]) -> dict[str, OpInfo]:
    """Loads an op-info JSON file (or an already parsed document)."""
    if isinstance(path, Mapping):
        return parse_op_info(path)
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError("op-info", str(p), "file not found") from None
    except json.JSONDecodeError as e:
        raise ConfigError("op-info", str(p), f"is not valid JSON ({e})") from None
    return parse_op_info(doc, str(p))


def resolve_symbol(kernel_so: str, function_name: str) -> Callable[..., int] | None:
    """The registered Python kernel, or None if ``kernel_so`` does not export ``function_name``."""
    return KERNEL_LIBRARIES.get(kernel_so, {}).get(function_name)

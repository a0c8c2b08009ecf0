"""ascend_jax: simulate Ascend C AIC/AIV resource groups (CubeResGroupHandle) in JAX.

Public API; everything not listed in ``__all__`` is an implementation detail.

The names are loaded on first use (PEP 562 ``__getattr__``): ``import ascend_jax`` imports
neither JAX nor the engines, so the CLI and the reference interpreter start fast; JAX is imported
when something that needs it (``simulate``, ``lane_bytes``, ``init_distributed``) is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ascend_jax.xla_flags import prefer_fast_compile

if TYPE_CHECKING:  # the public names, for type checkers and documentation tools
    from ascend_jax.chips import CHIPS, ChipSpec, get_chip, load_platform_ini
    from ascend_jax.config import RunConfig
    from ascend_jax.cube_group.barrier import BarrierGeometry
    from ascend_jax.cube_group.callbacks import (
        NO_WAIT,
        SAMPLE_LEADER_FUNC_ID,
        SAMPLE_MERGE,
        AicHandle,
        FreeCallback,
        MatmulCallback,
        MergeCallback,
        MsgRef,
        MsgView,
        SampleCallback,
        SeedCallback,
    )
    from ascend_jax.cube_group.engine import BatchResult, EngineOptions, init_distributed, lane_bytes, simulate
    from ascend_jax.cube_group.layout import GroupGeometry, KfcWorkspace
    from ascend_jax.cube_group.matmul import Matmul, MatmulType, TCubeTiling
    from ascend_jax.cube_group.program import AivProgram, CubeGroupKernel, CubeGroupProgram, MsgSlot
    from ascend_jax.cube_group.reference import ReferenceInterpreter, run_reference
    from ascend_jax.cube_group.result import CubeGroupResult
    from ascend_jax.cube_group.status import ErrorCode, Status
    from ascend_jax.cube_group.vector import UbBuffer, VectorBuilder, VectorOp
    from ascend_jax.enums import AtomicOrder, Build, Engine, Schedule
    from ascend_jax.errors import ConfigError
    from ascend_jax.gm import GlobalMemory, Tensor
    from ascend_jax.message import (
        CUBE_GROUP_MSG_HEAD,
        CUBE_MATMUL_MSG,
        CUBE_MSG_BODY,
        MAX_MSG_PER_AIV,
        SAMPLE_MSG_BODY,
        CubeMsgState,
        check_message_dtype,
        message_dtype,
        pack_message,
    )
    from ascend_jax.models import available_models, load_model
    from ascend_jax.numerics import numerics_report
    from ascend_jax.runner import RunResult, run
    from ascend_jax.sanitizer import SanitizerReport, sanitize
    from ascend_jax.scenario import builtin_scenario_path, load_scenario
    from ascend_jax.timing import CostModel
    from ascend_jax.utilisation import AicTime, AivStall, Utilisation, compute_utilisation

#: module -> the public names it provides (resolved by :func:`__getattr__` on first use).
_EXPORTS: dict[str, tuple[str, ...]] = {
    "ascend_jax.chips": ("CHIPS", "ChipSpec", "get_chip", "load_platform_ini"),
    "ascend_jax.config": ("RunConfig",),
    "ascend_jax.cube_group.barrier": ("BarrierGeometry",),
    "ascend_jax.cube_group.callbacks": (
        "NO_WAIT",
        "SAMPLE_LEADER_FUNC_ID",
        "SAMPLE_MERGE",
        "AicHandle",
        "FreeCallback",
        "MatmulCallback",
        "MergeCallback",
        "MsgRef",
        "MsgView",
        "SampleCallback",
        "SeedCallback",
    ),
    "ascend_jax.cube_group.engine": ("BatchResult", "EngineOptions", "init_distributed", "lane_bytes", "simulate"),
    "ascend_jax.cube_group.layout": ("GroupGeometry", "KfcWorkspace"),
    "ascend_jax.cube_group.matmul": ("Matmul", "MatmulType", "TCubeTiling"),
    "ascend_jax.cube_group.program": ("AivProgram", "CubeGroupKernel", "CubeGroupProgram", "MsgSlot"),
    "ascend_jax.cube_group.reference": ("ReferenceInterpreter", "run_reference"),
    "ascend_jax.cube_group.result": ("CubeGroupResult",),
    "ascend_jax.cube_group.status": ("ErrorCode", "Status"),
    "ascend_jax.cube_group.vector": ("UbBuffer", "VectorBuilder", "VectorOp"),
    "ascend_jax.enums": ("AtomicOrder", "Build", "Engine", "Schedule"),
    "ascend_jax.errors": ("ConfigError",),
    "ascend_jax.gm": ("GlobalMemory", "Tensor"),
    "ascend_jax.message": (
        "CUBE_GROUP_MSG_HEAD",
        "CUBE_MATMUL_MSG",
        "CUBE_MSG_BODY",
        "MAX_MSG_PER_AIV",
        "SAMPLE_MSG_BODY",
        "CubeMsgState",
        "check_message_dtype",
        "message_dtype",
        "pack_message",
    ),
    "ascend_jax.models": ("available_models", "load_model"),
    "ascend_jax.numerics": ("numerics_report",),
    "ascend_jax.runner": ("RunResult", "run"),
    "ascend_jax.sanitizer": ("SanitizerReport", "sanitize"),
    "ascend_jax.scenario": ("builtin_scenario_path", "load_scenario"),
    "ascend_jax.timing": ("CostModel",),
    "ascend_jax.utilisation": ("AicTime", "AivStall", "Utilisation", "compute_utilisation"),
}
_ORIGIN = {name: module for module, names in _EXPORTS.items() for name in names}


prefer_fast_compile()  # XLA_FLAGS before JAX starts its backend (ascend_jax.xla_flags); imports no JAX


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value: Any = _version()
    elif name in _ORIGIN:
        value = getattr(importlib.import_module(_ORIGIN[name]), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | {"__version__"})


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("ascend_jax")
    except metadata.PackageNotFoundError:  # pragma: no cover (a source tree that was never installed)
        return "0+unknown"


#: every public name, in one sorted run (constants, classes, functions; ruff's RUF022 order), each
#: with an entry on the API page (docs/reference/api.md); tests/test_architecture.py checks that it
#: matches ``_EXPORTS``
__all__ = [
    "CHIPS",
    "CUBE_GROUP_MSG_HEAD",
    "CUBE_MATMUL_MSG",
    "CUBE_MSG_BODY",
    "MAX_MSG_PER_AIV",
    "NO_WAIT",
    "SAMPLE_LEADER_FUNC_ID",
    "SAMPLE_MERGE",
    "SAMPLE_MSG_BODY",
    "AicHandle",
    "AicTime",
    "AivProgram",
    "AivStall",
    "AtomicOrder",
    "BarrierGeometry",
    "BatchResult",
    "Build",
    "ChipSpec",
    "ConfigError",
    "CostModel",
    "CubeGroupKernel",
    "CubeGroupProgram",
    "CubeGroupResult",
    "CubeMsgState",
    "Engine",
    "EngineOptions",
    "ErrorCode",
    "FreeCallback",
    "GlobalMemory",
    "GroupGeometry",
    "KfcWorkspace",
    "Matmul",
    "MatmulCallback",
    "MatmulType",
    "MergeCallback",
    "MsgRef",
    "MsgSlot",
    "MsgView",
    "ReferenceInterpreter",
    "RunConfig",
    "RunResult",
    "SampleCallback",
    "SanitizerReport",
    "Schedule",
    "SeedCallback",
    "Status",
    "TCubeTiling",
    "Tensor",
    "UbBuffer",
    "Utilisation",
    "VectorBuilder",
    "VectorOp",
    "available_models",
    "builtin_scenario_path",
    "check_message_dtype",
    "compute_utilisation",
    "get_chip",
    "init_distributed",
    "lane_bytes",
    "load_model",
    "load_platform_ini",
    "load_scenario",
    "message_dtype",
    "numerics_report",
    "pack_message",
    "run",
    "run_reference",
    "sanitize",
    "simulate",
]

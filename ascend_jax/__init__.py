"""ascend_jax: simulate Ascend C AIC/AIV resource groups (CubeResGroupHandle) in JAX.

Public API; everything not listed in ``__all__`` is an implementation detail.
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("ascend_jax")
except _metadata.PackageNotFoundError:  # pragma: no cover (a source tree that was never installed)
    __version__ = "0+unknown"

from ascend_jax.chips import CHIPS, ChipSpec, get_chip, load_platform_ini
from ascend_jax.cube_group.barrier import BarrierGeometry
from ascend_jax.cube_group.callbacks import (
    NO_WAIT,
    AicHandle,
    FreeCallback,
    MatmulCallback,
    MergeCallback,
    MsgRef,
    MsgView,
    SampleCallback,
    SeedCallback,
)
from ascend_jax.cube_group.engine import init_distributed, lane_bytes, simulate
from ascend_jax.cube_group.layout import GroupGeometry, KfcWorkspace
from ascend_jax.cube_group.program import AivProgram, CubeGroupKernel, CubeGroupProgram, MsgSlot
from ascend_jax.cube_group.readout import BatchResult
from ascend_jax.cube_group.reference import ReferenceInterpreter, run_reference
from ascend_jax.cube_group.result import CubeGroupResult
from ascend_jax.cube_group.status import ErrorCode, Status
from ascend_jax.cube_group.vector import UbBuffer, VectorBuilder, VectorOp
from ascend_jax.errors import ConfigError
from ascend_jax.gm import GlobalMemory, Tensor
from ascend_jax.matmul import Matmul, MatmulType, TCubeTiling
from ascend_jax.message import (
    CUBE_GROUP_MSG_HEAD,
    CUBE_MATMUL_MSG,
    CUBE_MSG_BODY,
    CubeMsgState,
    check_message_dtype,
    message_dtype,
    pack_message,
)
from ascend_jax.numerics import numerics_report
from ascend_jax.scenario import builtin_scenario_path, load_scenario
from ascend_jax.timing import CostModel
from ascend_jax.utilisation import AicTime, AivStall, Utilisation, compute_utilisation

__all__ = [
    "CHIPS",
    "CUBE_MATMUL_MSG",
    "CostModel",
    "GlobalMemory",
    "Matmul",
    "MatmulCallback",
    "MatmulType",
    "TCubeTiling",
    "Tensor",
    "lane_bytes",
    "load_platform_ini",
    "numerics_report",
    "CUBE_GROUP_MSG_HEAD",
    "CUBE_MSG_BODY",
    "NO_WAIT",
    "AicHandle",
    "AivProgram",
    "BatchResult",
    "BarrierGeometry",
    "ChipSpec",
    "ConfigError",
    "CubeGroupKernel",
    "CubeGroupProgram",
    "CubeGroupResult",
    "CubeMsgState",
    "ErrorCode",
    "FreeCallback",
    "GroupGeometry",
    "KfcWorkspace",
    "MergeCallback",
    "MsgRef",
    "MsgSlot",
    "MsgView",
    "ReferenceInterpreter",
    "SampleCallback",
    "SeedCallback",
    "Status",
    "builtin_scenario_path",
    "check_message_dtype",
    "get_chip",
    "load_scenario",
    "message_dtype",
    "pack_message",
    "run_reference",
    "simulate",
    "UbBuffer",
    "VectorBuilder",
    "VectorOp",
    "AicTime",
    "AivStall",
    "Utilisation",
    "compute_utilisation",
    "init_distributed",
]

"""Scenario files (TOML, DESIGN.md contract) -> a validated :class:`CubeGroupProgram`.

Every table and key is checked; unknown keys are errors, so a typo never silently drops a
setting. Errors name the scenario path (``aiv[2].ops[3].group``), the value, the rule and a fix.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from ascend_jax.cube_group.program import CubeGroupKernel, CubeGroupProgram
from ascend_jax.errors import ConfigError
from ascend_jax.gm import tensors_from_tables
from ascend_jax.message import MESSAGE_TYPES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_TOP = {"name", "chip", "max_steps", "max_received", "group", "barrier", "aiv", "tensor"}
_GROUP = {"name", "block_start", "block_size", "msg_queue_size", "callback", "message", "matmul", "tiling"}
_GROUP_REQUIRED = {"name", "block_start", "block_size", "msg_queue_size"}
_BARRIER = {"name", "arrive_size", "wait_size"}
_AIV = {"block_idx", "ops"}
_OPS = {
    "assign_queue": ({"group", "queue"}, set()),
    "post": ({"group"}, {"fields", "state", "aiv_id"}),
    "fake": ({"group"}, set()),
    "quit": ({"group"}, set()),
    "wait": ({"group"}, {"offset", "sync"}),
    "delay": ({"cycles"}, set()),
    "arrive": ({"barrier", "index"}, set()),
    "barrier_wait": ({"barrier", "index"}, set()),
}

DEFAULT_SCENARIO = "default"


def _keys(table: Any, path: str, required: set[str], optional: set[str]) -> Mapping[str, Any]:
    if not isinstance(table, Mapping):
        raise ConfigError(path, table, "must be a table")
    unknown = set(table) - required - optional
    if unknown:
        raise ConfigError(
            f"{path}.{sorted(unknown)[0]}",
            table[sorted(unknown)[0]],
            f"unknown key; allowed: {sorted(required | optional)}",
        )
    missing = required - set(table)
    if missing:
        raise ConfigError(f"{path}.{sorted(missing)[0]}", None, "is required")
    return table


def load_scenario(source: str | Path | Mapping[str, Any], max_steps: int | None = None) -> CubeGroupProgram:
    """Loads and validates a scenario from a TOML file path or an already parsed document.

    Args:
      source: path to a ``.toml`` file, or the parsed document.
      max_steps: overrides the scenario's ``max_steps``.
    """
    base_dir = None
    if isinstance(source, Mapping):
        doc = source
    else:
        path = Path(source)
        base_dir = path.parent
        try:
            doc = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError("scenario", str(path), "file not found") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError("scenario", str(path), f"is not valid TOML ({e})") from None
    return build_kernel(doc, max_steps, base_dir).compile()


def builtin_scenario_path(name: str = DEFAULT_SCENARIO) -> Path:
    """Path of a scenario shipped with the package (``ascend_jax/scenarios/<name>.toml``)."""
    path = Path(str(resources.files("ascend_jax") / "scenarios" / f"{name}.toml"))
    if not path.exists():
        raise ConfigError("scenario", name, "no such built-in scenario")
    return path


def build_kernel(doc: Mapping[str, Any], max_steps: int | None = None, base_dir: Path | None = None) -> CubeGroupKernel:
    """Builds (without compiling) the kernel a parsed scenario describes.

    ``[[tensor]]`` tables are allocated first, in order; ``.npy`` paths are relative to
    ``base_dir`` (the scenario's folder). Message fields may be written ``"tensor+byte_offset"``.
    """
    _keys(doc, "scenario", set(), _TOP)
    kernel = CubeGroupKernel(
        chip=doc.get("chip", "910B1"),
        name=doc.get("name", "scenario"),
        max_steps=max_steps if max_steps is not None else doc.get("max_steps", 100_000),
        max_received=doc.get("max_received"),
    )
    kernel.gm = tensors_from_tables(doc.get("tensor"), base_dir)
    groups = doc.get("group", [])
    if not isinstance(groups, list) or not groups:
        raise ConfigError("group", groups, "a scenario needs at least one [[group]]")
    for i, g in enumerate(groups):
        _keys(g, f"group[{i}]", _GROUP_REQUIRED, _GROUP - _GROUP_REQUIRED)
        callback = g.get("callback", "merge")
        message = g.get("message", "CubeMatmulMsg" if callback == "matmul" else "CubeMsgBody")
        if message not in MESSAGE_TYPES:
            raise ConfigError(f"group[{i}].message", message, f"unknown message type; one of {sorted(MESSAGE_TYPES)}")
        kernel.create_cube_res_group(
            g["name"],
            g["block_start"],
            g["block_size"],
            g["msg_queue_size"],
            callback,
            MESSAGE_TYPES[message],
            matmul=g.get("matmul"),
            tiling=g.get("tiling"),
        )
    for i, b in enumerate(doc.get("barrier", [])):
        _keys(b, f"barrier[{i}]", _BARRIER, set())
        kernel.group_barrier(b["name"], b["arrive_size"], b["wait_size"])
    seen: dict[int, int] = {}
    for i, a in enumerate(doc.get("aiv", [])):
        _keys(a, f"aiv[{i}]", _AIV, set())
        block = a["block_idx"]
        if block in seen:
            raise ConfigError(f"aiv[{i}].block_idx", block, f"already used by aiv[{seen[block]}]", "merge their ops")
        program = kernel.aiv(block)
        seen[block] = i
        if not isinstance(a["ops"], list):
            raise ConfigError(f"aiv[{i}].ops", a["ops"], "must be an array of op tables")
        for j, op in enumerate(a["ops"]):
            path = f"aiv[{i}].ops[{j}]"
            if not isinstance(op, Mapping) or op.get("op") not in _OPS:
                raise ConfigError(
                    f"{path}.op", op.get("op") if isinstance(op, Mapping) else op, f"must be one of {sorted(_OPS)}"
                )
            required, optional = _OPS[op["op"]]
            _keys(op, path, required | {"op"}, optional)
            program.location = path
            _apply(program, op)
        program.location = None
    return kernel


def _apply(program, op: Mapping[str, Any]) -> None:
    kind = op["op"]
    if kind == "assign_queue":
        program.assign_queue(op["group"], op["queue"])
    elif kind == "post":
        program.post(op["group"], op.get("fields"), op.get("state", "VALID"), op.get("aiv_id"))
    elif kind == "fake":
        program.fake(op["group"])
    elif kind == "quit":
        program.quit(op["group"])
    elif kind == "wait":
        program.wait(op["group"], op.get("offset"), op.get("sync", True))
    elif kind == "delay":
        program.delay(op["cycles"])
    elif kind == "arrive":
        program.arrive(op["barrier"], op["index"])
    else:
        program.barrier_wait(op["barrier"], op["index"])

"""The settings of one run: :class:`RunConfig` and its enums.

One frozen record carries everything that reaches an engine (which engine, schedule, atomic
order, build override, lanes, seed, step bound, chunking, devices, the work budget switch), so the
CLI and :func:`ascend_jax.run` read the same values through the same checks. The CLI builds a
:class:`RunConfig` from its flags (``cli/parser.py``); Python code builds one directly::

    cfg = RunConfig(batch=64, schedule="random", seed=7)

Values are checked when the record is made: a bad one raises
:class:`~ascend_jax.errors.ConfigError` naming the field (``batch = 0: must be >= 1 ...``). The
numeric bounds are defined once here (:data:`Batch`, :data:`Seed`, ...); the CLI's flags use them.

A new setting that reaches an engine is one field here (with its entry in
:meth:`RunConfig.simulate_options`), one ``add_argument`` in ``cli/parser.py`` and its parameter in
the engine; :func:`ascend_jax.runner.run` passes it on unchanged.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ascend_jax.enums import BUILD_ALIASES, AtomicOrder, Build, Engine, Schedule
from ascend_jax.errors import ConfigError
from ascend_jax.limits import MAX_BATCH, MAX_STEPS_LIMIT, SEED_MAX, did_you_mean
from ascend_jax.schema import StrictModel, config_error

# -- the numeric bounds (the CLI's flags use the same types) ---------------------------------------
Batch = Annotated[int, Field(ge=1, le=MAX_BATCH)]
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
MaxSteps = Annotated[int, Field(ge=1, le=MAX_STEPS_LIMIT)]
Chunk = Annotated[int, Field(ge=1, le=MAX_BATCH)]
Devices = Annotated[int, Field(ge=1, le=4096)]


def check_lane_seeds(seed: int, batch: int, names: tuple[str, str] = ("seed", "batch")) -> None:
    """Lane seeds run from ``seed`` to ``seed + batch - 1``; each must fit in a uint32 (a pydantic
    error of type ``seed_range``; ``names``: how the message calls the two values)."""
    if seed + batch - 1 > SEED_MAX:
        raise PydanticCustomError(
            "seed_range",
            f"lane seeds run from {names[0]} to {names[0]} + {names[1]} - 1 = {{last}}, past {{limit}} (uint32)",
            {"last": seed + batch - 1, "limit": SEED_MAX},
        )


class RunConfig(StrictModel):
    """How to run a program (frozen; every value checked when the record is made).

    Attributes:
      engine: ``auto`` (default), ``jax`` or ``reference``.
      schedule: ``lockstep`` (default), ``random`` or ``timed``.
      atomic_order: ``fixed`` (default) or ``random`` (JAX engine only).
      build: overrides the program's build (``None``: keep it); ``"debug"`` means ``cpu`` and warns.
      batch: lanes, 1..MAX_BATCH; lane ``i`` uses seed ``seed + i``.
      seed: the first lane's seed, 0..2**32-1.
      max_steps: overrides the program's step bound (``None``: keep it).
      chunk: lanes per compiled call (JAX engine; ``None``: by memory budget).
      devices: shard the lanes over this many local devices (JAX engine; ``None``: all).
      allow_large: run even when the work estimate is over the engine's budget.

    Fields given explicitly are in ``model_fields_set``: a comm program refuses the cube-group
    settings (schedule, atomic order, devices, build) only when they were given.
    """

    engine: Annotated[Engine, Field(strict=False)] = Engine.AUTO
    schedule: Annotated[Schedule, Field(strict=False)] = Schedule.LOCKSTEP
    atomic_order: Annotated[AtomicOrder, Field(strict=False)] = AtomicOrder.FIXED
    build: Annotated[Build, Field(strict=False)] | None = None
    batch: Batch = 1
    seed: Seed = 0
    max_steps: MaxSteps | None = None
    chunk: Chunk | None = None
    devices: Devices | None = None
    allow_large: bool = False

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as e:
            raise _run_config_error(e, values) from None

    @field_validator("build", mode="before")
    @classmethod
    def _build_alias(cls, value: Any) -> Any:
        if isinstance(value, str) and value in BUILD_ALIASES:
            from ascend_jax.cube_group.program import normalise_build

            return normalise_build(value)  # warns BuildAliasWarning
        return value

    @model_validator(mode="after")
    def _lane_seeds_fit(self) -> RunConfig:
        check_lane_seeds(self.seed, self.batch)
        return self

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with ``changes`` applied and checked (the fields given stay given)."""
        return RunConfig(**{**{k: getattr(self, k) for k in self.model_fields_set}, **changes})

    def simulate_options(self) -> dict[str, Any]:
        """The keyword arguments of the JAX engine's ``simulate`` that come straight from this
        config (a new engine setting is a field above plus its entry here)."""
        return {
            "schedule": self.schedule.value,
            "seeds": self.seeds,
            "atomic_order": self.atomic_order.value,
            "chunk_size": self.chunk,
            "devices": self.devices,
        }

    def reference_options(self, lane: int = 0) -> dict[str, Any]:
        """The keyword arguments of ``run_reference`` for lane ``lane`` of this config."""
        return {"schedule": self.schedule.value, "seed": self.seed + lane}

    @property
    def seeds(self) -> list[int]:
        """The lanes' seeds: ``seed .. seed + batch - 1``."""
        return [self.seed + i for i in range(self.batch)]


def _run_config_error(e: ValidationError, values: dict[str, Any]) -> ConfigError:
    """The first problem of a :class:`RunConfig` as a :class:`ConfigError` naming the field."""
    errs = sorted(e.errors(include_url=False), key=lambda err: err["type"] != "extra_forbidden")
    err = errs[0]
    field = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        allowed = sorted(RunConfig.model_fields)
        return ConfigError(field, err.get("input"), "unknown field", f"{did_you_mean(field, allowed)}fields: {allowed}")
    if err["type"] == "enum":
        options = [m.value for m in _ENUMS[field]]
        fix = (did_you_mean(err.get("input"), options) or "use one of those").strip()
        return ConfigError(field, err.get("input"), f"must be one of {options}", fix)
    if err["type"] == "seed_range":
        return ConfigError("seed", values.get("seed"), err["msg"], "lower seed or batch")
    return config_error(e)


#: the enum of each enum-valued field
_ENUMS: dict[str, type[enum.Enum]] = {
    "engine": Engine,
    "schedule": Schedule,
    "atomic_order": AtomicOrder,
    "build": Build,
}


__all__ = [
    "AtomicOrder",
    "Batch",
    "Build",
    "Chunk",
    "Devices",
    "Engine",
    "MaxSteps",
    "RunConfig",
    "Schedule",
    "Seed",
    "check_lane_seeds",
]

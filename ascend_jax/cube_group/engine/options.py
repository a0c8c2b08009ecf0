"""``EngineOptions``: the JAX engine's choices of array form, passed to :func:`simulate` as an argument.

Each option picks between two forms of the same computation; results do not depend on them (tests
run both forms and compare). They are static: :func:`ascend_jax.cube_group.engine.shape.make_shape`
turns them into fields of the :class:`EngineShape` (``packed``, ``banks``, ``batched_stores``), which
is the jitted loop's static argument, so a change of options is a new compilation, never a stale one.
"""

from __future__ import annotations

import dataclasses

from ascend_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    """How the engine lays out a batch (static, hashable; the defaults are the fast forms).

    Attributes:
      packed_grid: a batch that allows it (:func:`ascend_jax.cube_group.engine.shape.can_pack`)
        keeps a queue's four depths in one word of the slot grid; False: always the wide grid.
      typed_banks: a batch with matmuls or AIV GM copies keeps GM as typed banks, one per element
        type (:mod:`ascend_jax.cube_group.engine.banks`) where the plan allows it; False: GM as bytes.
      batched_stores: C tiles whose row windows are disjoint share one store pass
        (:func:`ascend_jax.cube_group.engine.compute.store_passes`); False: one pass per AIC.
      tile_variants: a step whose tiles all fit a smaller shape than the group's bound runs its
        loads and dot at that shape (:func:`ascend_jax.cube_group.engine.encode.tile_variants`);
        False: every step at the bound.
    """

    packed_grid: bool = True
    typed_banks: bool = True
    batched_stores: bool = True
    tile_variants: bool = True

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, bool):
                raise ConfigError(f"options.{f.name}", value, "must be True or False")


#: the options :func:`simulate` uses when none are given
DEFAULT_OPTIONS = EngineOptions()


def resolve(options: EngineOptions | None) -> EngineOptions:
    """``options``, or the defaults for None; anything else is a :class:`ConfigError`."""
    if options is None:
        return DEFAULT_OPTIONS
    if not isinstance(options, EngineOptions):
        raise ConfigError("options", type(options).__name__, "must be an EngineOptions or None")
    return options


__all__ = ["DEFAULT_OPTIONS", "EngineOptions", "resolve"]

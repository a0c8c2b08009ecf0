"""Chip descriptions: the core counts the protocol checks need.

Only what the CubeResGroupHandle checks use is here (core counts, UB size); clocks, memory rates and
the CANN platform INI loader belong to the cost model.
"""

from __future__ import annotations

import dataclasses

from ascend_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class ChipSpec:
    """Static description of one Ascend chip.

    Attributes:
      name: SoC name as in CANN (``Ascend910B1``...).
      aic_num: cube cores (AIC).
      aiv_num: vector cores (AIV); 2 per AIC on Atlas A2 (``KERNEL_TYPE_MIX_AIC_1_2``).
      ub_size: unified buffer bytes per AIV.
    """

    name: str
    aic_num: int
    aiv_num: int
    ub_size: int = 196608


# 910B1/B2: 24 AIC / 48 AIV, UB 196608 B (spec §10, S15). 910B3/B4: 20 / 40 (spec §10, unconfirmed).
CHIPS: dict[str, ChipSpec] = {
    "910B1": ChipSpec("Ascend910B1", 24, 48),
    "910B2": ChipSpec("Ascend910B2", 24, 48),
    "910B3": ChipSpec("Ascend910B3", 20, 40),
    "910B4": ChipSpec("Ascend910B4", 20, 40),
}


def get_chip(name: str | ChipSpec, field: str = "chip") -> ChipSpec:
    """Returns the preset called ``name`` (``"910B1"`` or ``"Ascend910B1"``)."""
    if isinstance(name, ChipSpec):
        return name
    key = name.removeprefix("Ascend") if isinstance(name, str) else name
    if key not in CHIPS:
        raise ConfigError(field, name, f"unknown chip; presets are {sorted(CHIPS)}")
    return CHIPS[key]

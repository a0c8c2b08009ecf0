"""Errors for invalid static input.

Every static check raises :class:`ConfigError`, which names the field, the value, the rule that was
broken and how to fix it, so a user never has to read the simulator's code to repair a scenario.
Runtime protocol errors are not exceptions: they are status codes carried in the simulation state
(see :mod:`ascend_jax.cube_group.status`).
"""

from __future__ import annotations

#: Longest value repr an error message shows (a whole table would drown the message).
MAX_VALUE_CHARS = 120


class ConfigError(ValueError):
    """A static input (scenario, geometry, program) breaks a documented rule.

    Attributes:
      field: dotted path of the offending input, e.g. ``group[0].block_size`` or ``aiv[3].ops[2]``.
      value: the value that was given.
      rule: the rule it breaks, in words.
      fix: how to repair it.
    """

    def __init__(self, field: str, value: object, rule: str, fix: str = ""):
        self.field = field
        self.value = value
        self.rule = rule
        self.fix = fix
        shown = repr(value)
        if len(shown) > MAX_VALUE_CHARS:
            shown = shown[: MAX_VALUE_CHARS - 5] + " ...)"
        msg = f"{field} = {shown}: {rule}"
        if fix:
            msg += f" (fix: {fix})"
        super().__init__(msg)

"""Input limits and small helpers shared by the scenario schema and the CLI, without heavy imports.

``ascend-jax --version``, ``ascend-jax models`` and the start of every command read these numbers;
keeping them out of :mod:`ascend_jax.schema` (which builds pydantic models) means those commands
never import pydantic. :mod:`ascend_jax.schema` re-exports every name here.
"""

from __future__ import annotations

import difflib
from typing import Any

#: Largest scenario file read, bytes (a 1.7 M-op file took 96 s to check).
MAX_SCENARIO_BYTES = 4 * 2**20
#: Most ops in one scenario (all AIVs together).
MAX_OPS = 100_000
#: Largest ``max_steps``: the engines count steps in int32.
MAX_STEPS_LIMIT = 2**31 - 1
#: Largest per-AIC receive-log capacity (``max_received``): the log is a ``[lanes, AICs, N]`` array.
MAX_RECEIVED_LIMIT = 2**17
#: GM is addressed with int32 byte offsets.
GM_LIMIT_BYTES = 2**31
#: Largest value of any tiling field (TCubeTiling fields are int32).
INT32_MAX = 2**31 - 1
#: Seeds are uint32 (numpy and JAX PRNG keys).
SEED_MAX = 2**32 - 1
#: Geometry numbers (block_start, block_size, queues, barrier sizes) far above any chip's cores.
GEOMETRY_MAX = 4096
#: Names of groups, barriers and tensors: identifiers (they are printed and used as file names).
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"
NAME_RULE = "must be 1-64 characters: a letter or _ first, then letters, digits, _, . or -"
#: Most lanes one ``ascend-jax run`` accepts (lanes run in chunks; this bounds the per-lane result objects).
MAX_BATCH = 2**20


def did_you_mean(word: Any, options: Any) -> str:
    """``"did you mean 'x'? "`` for the closest option, or ``""``."""
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, [str(o) for o in options], n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""

"""Shared test helpers: run a program in both engines and insist they agree; hypothesis profiles.

Hypothesis profiles (``ASCEND_JAX_HYPOTHESIS_PROFILE``, default ``ci``):

- ``ci``: the README's test command. Derandomized (the same examples on every run, so CI is never
  flaky) and every property test capped at :data:`CI_MAX_EXAMPLES` examples, whatever its own
  ``@settings(max_examples=...)`` says, so the suite fits the 5-minute budget on 2 cores.
- ``nightly``: random examples, each property test runs :data:`NIGHTLY_FACTOR` times its own
  ``max_examples`` (at least :data:`NIGHTLY_MIN_EXAMPLES`).

A property test's own ``@settings`` keeps its other options (health checks, deadline); only the
example count is rescaled, in :func:`pytest_collection_modifyitems`.
"""

from __future__ import annotations

import os

import jax
import pytest
from hypothesis import HealthCheck, settings

from ascend_jax import CubeGroupProgram, run_reference, simulate

jax.config.update("jax_numpy_rank_promotion", "raise")

CI_MAX_EXAMPLES = 2
NIGHTLY_FACTOR = 8
NIGHTLY_MIN_EXAMPLES = 100
PROFILE_ENV = "ASCEND_JAX_HYPOTHESIS_PROFILE"

settings.register_profile(
    "ci",
    max_examples=CI_MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "nightly",
    max_examples=NIGHTLY_MIN_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
PROFILE = os.environ.get(PROFILE_ENV, "ci")
if PROFILE not in ("ci", "nightly"):
    raise pytest.UsageError(f"{PROFILE_ENV} = {PROFILE!r}: must be 'ci' or 'nightly'")
settings.load_profile(PROFILE)


def _scaled_examples(own: int) -> int:
    """Examples a property test runs under the active profile, given its own ``max_examples``."""
    if PROFILE == "ci":
        return min(own, CI_MAX_EXAMPLES)
    return max(own * NIGHTLY_FACTOR, NIGHTLY_MIN_EXAMPLES)


def pytest_collection_modifyitems(config, items):
    """Rescales every hypothesis test's example count for the active profile (see the module doc)."""
    seen = set()
    for item in items:
        fn = getattr(item, "obj", None)
        if fn is None or not hasattr(fn, "hypothesis") or id(fn) in seen:
            continue
        seen.add(id(fn))
        if not getattr(fn, "_hypothesis_internal_settings_applied", False):
            continue  # no @settings of its own: the profile applies as it is
        own = fn._hypothesis_internal_use_settings
        fn._hypothesis_internal_use_settings = settings(
            own,
            max_examples=_scaled_examples(own.max_examples),
            derandomize=settings.default.derandomize,
        )


def run_both(program: CubeGroupProgram, **kw):
    """Runs the reference (lockstep) and the jitted JAX engine; asserts identical outcomes and steps."""
    ref = run_reference(program, **kw)
    [eng] = simulate(program, **({"max_steps": kw["max_steps"]} if "max_steps" in kw else {}))
    assert eng.outcome() == ref.outcome(), (ref.to_json(), eng.to_json())
    assert eng.steps == ref.steps
    assert eng.wait_results == ref.wait_results
    return ref


@pytest.fixture
def both():
    return run_both

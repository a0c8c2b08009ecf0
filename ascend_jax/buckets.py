"""One rule for the padded sizes both JAX engines compile for: a size rounded up to a power of two,
so that programs and batches of similar size share one compilation (the true per-lane limits stay
in the traced tables)."""

from __future__ import annotations


def bucket(n: int, least: int = 1) -> int:
    """The smallest power of two >= ``n``, and at least ``least``."""
    return max(least, 1 << max(0, n - 1).bit_length())


__all__ = ["bucket"]

"""One rule for the padded sizes both JAX engines compile for: a size rounded up to a power of two,
so that programs and batches of similar size share one compilation (the true per-lane limits stay
in the traced tables)."""

from __future__ import annotations


def bucket(n: int, least: int = 1) -> int:
    """The smallest power of two >= ``n``, and at least ``least``."""
    return max(least, 1 << max(0, n - 1).bit_length())


def bucket_fine(n: int, steps: int = 8) -> int:
    """The smallest ``m * 2**k`` >= ``n`` with ``steps <= m < 2 * steps`` (or ``n`` itself below
    ``steps``): a bucket for sizes that cost memory per lane, at most ``1 / steps`` above ``n``
    (12.5 % by default) where :func:`bucket` may double it."""
    if n <= steps:
        return max(n, 0)
    shift = max(0, n.bit_length() - steps.bit_length())
    return -(-n // (1 << shift)) * (1 << shift)


__all__ = ["bucket", "bucket_fine"]

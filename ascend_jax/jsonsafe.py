"""Strict JSON for results: no ``NaN``, ``Infinity`` or ``-Infinity`` ever reaches the output.

Python's ``json.dumps`` writes non-finite floats as the bare words ``NaN`` and ``Infinity``, which
are not JSON (RFC 8259): ``jq``, JavaScript's ``JSON.parse`` and most other parsers reject the
whole document. :func:`strict_json` replaces every non-finite float (Python ``float``, numpy
floating scalars and the elements of numpy arrays) by ``None`` (JSON ``null``) and says why
beside it:

* a dict member ``"kernel_cycles": inf`` becomes ``"kernel_cycles": null`` plus the sibling
  ``"kernel_cycles_null_reason": "was Infinity: JSON has no infinities (an overflow or a division
  by zero upstream)"``;
* list (or array) elements become ``null`` and their reasons go into the sibling of the nearest
  enclosing dict member, keyed by the index path: ``"lanes_null_reason": {"[3]": "was NaN: ..."}``.

Pass ``notes=[]`` to also collect every replacement as ``(path, reason)`` (paths like
``timing.kernel_cycles`` or ``batch[3].steps``; this is the only record when the top-level value is
itself a list or a float). :func:`dumps_strict` is ``json.dumps(strict_json(obj), allow_nan=False)``:
anything non-finite that still got through is an error, never invalid output.

numpy scalars become Python numbers and arrays become lists, so results holding them dump without a
custom encoder; tuples become lists (as ``json.dumps`` writes them). Other objects pass through
unchanged (``json.dumps`` then rejects them as usual).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

#: Suffix of the sibling key that says why a member is ``null``.
REASON_SUFFIX = "_null_reason"


def _reason(x: float) -> str:
    if math.isnan(x):
        return "was NaN: JSON has no NaN (an undefined result, e.g. 0/0 or inf - inf, upstream)"
    sign = "-" if x < 0 else ""
    return f"was {sign}Infinity: JSON has no infinities (an overflow or a division by zero upstream)"


def _scalar(x: Any) -> tuple[Any, str | None]:
    """``(json value, reason or None)`` for a scalar; ``reason`` is set when ``x`` was non-finite."""
    if isinstance(x, (bool, np.bool_)):
        return bool(x), None
    if isinstance(x, (int, np.integer)):
        return int(x), None
    if isinstance(x, (float, np.floating)):
        f = float(x)
        return (f, None) if math.isfinite(f) else (None, _reason(f))
    return x, None


def _walk(obj: Any, path: str, local: str, reasons: dict[str, str], notes: list | None) -> Any:
    """Cleans ``obj``; the reasons of replaced list elements go to ``reasons`` keyed by ``local``
    (the index path below the nearest dict member)."""
    if isinstance(obj, dict):
        out: dict[Any, Any] = {}
        for k, v in obj.items():
            sub = f"{path}.{k}" if path else str(k)
            why: Any = None
            if isinstance(v, (dict, list, tuple, np.ndarray)):
                inner: dict[str, str] = {}
                out[k] = _walk(v, sub, "", inner, notes)
                why = inner or None
            else:
                out[k], why = _scalar(v)
                if why is not None and notes is not None:
                    notes.append((sub, why))
            side = f"{k}{REASON_SUFFIX}"
            if why is not None and side not in obj:  # right after the member; never over one the caller wrote
                out[side] = why
        return out
    if isinstance(obj, np.ndarray):
        obj = obj.tolist()
    if isinstance(obj, (list, tuple)):
        items = []
        for i, v in enumerate(obj):
            sub, loc = f"{path}[{i}]", f"{local}[{i}]"
            if isinstance(v, (dict, list, tuple, np.ndarray)):
                items.append(_walk(v, sub, loc, reasons, notes))
                continue
            value, why = _scalar(v)
            items.append(value)
            if why is not None:
                reasons[loc] = why
                if notes is not None:
                    notes.append((sub, why))
        return items
    value, why = _scalar(obj)
    if why is not None and notes is not None:
        notes.append((path, why))
    return value


def strict_json(obj: Any, notes: list[tuple[str, str]] | None = None) -> Any:
    """A copy of ``obj`` (dicts, lists, tuples, numpy arrays and scalars, nested) that
    ``json.dumps(..., allow_nan=False)`` accepts: every non-finite float is ``None`` with its
    reason beside it (see the module docstring). ``obj`` is not modified.

    Args:
      obj: a result document (e.g. the result JSON of ``ascend-jax run --json``).
      notes: if given, each replacement is appended as ``(path, reason)``.
    """
    return _walk(obj, "", "", {}, notes)


def dumps_strict(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`strict_json` ``(obj)`` with ``allow_nan=False`` (``kwargs``: e.g.
    ``indent=2``); the output is always valid JSON."""
    return json.dumps(strict_json(obj), allow_nan=False, **kwargs)

"""The sanitizer: racecheck, initcheck, synccheck and memcheck on the simulator's event log.

``sanitize(program)`` runs the program once in the reference interpreter with an observer that
logs every GM and UB access and every synchronisation (:mod:`.events`, :mod:`.observer`), then:

* :mod:`.racecheck`: overlapping GM accesses of two cores, one a write, with no happens-before;
* :mod:`.initcheck`: reads of GM no init or earlier write defines, and of UB never written;
* :mod:`.synccheck`: MTE3 flags, barriers, quits and waits that cannot pair, and the run's own
  deadlock witness and ``api_misuse``;
* :mod:`.memcheck`: tiles outside or across tensors, and overlapping tensors.

Findings are a property of the program, not of the schedule that ran (docs/model/sanitizer.md).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the public names, for type checkers and documentation tools
    from ascend_jax.sanitizer.api import SanitizerReport, analyse, parse_tools, sanitize
    from ascend_jax.sanitizer.events import EventLog, Site, TensorInfo
    from ascend_jax.sanitizer.findings import TOOLS, Finding, OpRef

#: public name -> the module defining it; loaded on first use (PEP 562), so that building the
#: command line (which registers ``sanitize`` from :mod:`.cli`) imports no interpreter
_HOME = {
    "SanitizerReport": "api",
    "analyse": "api",
    "parse_tools": "api",
    "sanitize": "api",
    "EventLog": "events",
    "Site": "events",
    "TensorInfo": "events",
    "TOOLS": "findings",
    "Finding": "findings",
    "OpRef": "findings",
}

#: the sanitizer's public names, sorted (constants, classes, functions); the same names as ``_HOME``
__all__ = [
    "TOOLS",
    "EventLog",
    "Finding",
    "OpRef",
    "SanitizerReport",
    "Site",
    "TensorInfo",
    "analyse",
    "parse_tools",
    "sanitize",
]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))

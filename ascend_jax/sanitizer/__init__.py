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

from ascend_jax.sanitizer.api import SanitizerReport, analyse, parse_tools, sanitize
from ascend_jax.sanitizer.events import EventLog, Site, TensorInfo
from ascend_jax.sanitizer.findings import TOOLS, Finding, OpRef

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

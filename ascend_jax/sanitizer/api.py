"""``sanitize(program)``: one observed reference run, then the four checks on its event log.

The analysis always runs on the reference interpreter's event log, whatever engine the user
runs: the JAX engine keeps no per-access history, and the findings do not depend on the
interleaving (module docstring of :mod:`ascend_jax.sanitizer.events`), so one observed run per
distinct program answers for every schedule and every lane that runs that program.

Reports are cached by content: the program's pickled bytes (every op, tensor, init mark and
callback state, a dataclass by its fields; a program that cannot be pickled is not cached) less
GM's bytes (tensor data), and every argument of the call. The observed run reads no tensor data
(it skips the arithmetic, and no decision of a reference run depends on data:
:mod:`ascend_jax.cube_group.reference.compute`), so two programs that differ only in their data
get the same findings, and the key leaves the data out: a sweep over inputs is analysed once.
The reference interpreter is deterministic, so a hit returns what the run would give again; it
makes a sanitized run of an already analysed program cost a hash of the program, which matters
beside the JAX engine, whose compiled runs are faster than one reference run. A hit's
:attr:`SanitizerReport.result` is the plain run of the program passed, its own data included.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import pickle
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from ascend_jax.cube_group.reference import ReferenceInterpreter, run_reference
from ascend_jax.cube_group.status import CALL
from ascend_jax.gm import GlobalMemory
from ascend_jax.sanitizer.events import EventLog
from ascend_jax.sanitizer.findings import TOOLS, Finding, render, report_json, sort_findings
from ascend_jax.sanitizer.initcheck import initcheck
from ascend_jax.sanitizer.memcheck import memcheck
from ascend_jax.sanitizer.observer import Observer
from ascend_jax.sanitizer.racecheck import racecheck
from ascend_jax.sanitizer.synccheck import run_synccheck, static_synccheck


@dataclasses.dataclass
class SanitizerReport:
    """What :func:`sanitize` found.

    Attributes:
      tools: the tools run, in :data:`TOOLS` order.
      findings: sorted findings.
      observed: the observed run's result. That run records accesses without doing the
        arithmetic (:mod:`ascend_jax.cube_group.reference.compute`), so its status, outcome and
        messages are the run's but its tensors hold their launch contents: read numbers from
        :attr:`result`.
      log: its event log.
      rerun: ``() -> result``: the plain reference run with the same arguments (None: none).
    """

    tools: tuple[str, ...]
    findings: list[Finding]
    observed: Any = None
    log: EventLog | None = None
    rerun: Callable[[], Any] | None = dataclasses.field(default=None, repr=False, compare=False)
    _result: Any = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def result(self) -> Any:
        """The reference run's result, numbers included: run (plainly, with the same schedule,
        seed, max_steps and cost) the first time it is asked for, then kept."""
        if self._result is None and self.rerun is not None:
            self._result = self.rerun()
        return self._result

    def to_json(self) -> dict[str, Any]:
        """The ``"sanitizer"`` object of the result JSON."""
        return report_json(self.tools, self.findings)

    def render(self) -> str:
        return render(self.tools, self.findings)

    @property
    def ok(self) -> bool:
        return not self.findings


def parse_tools(tools: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"all"`` / None -> every tool; ``"racecheck,initcheck"`` or a list -> those, in report order."""
    if tools is None or tools == "all":
        return TOOLS
    names = [t.strip() for t in tools.split(",")] if isinstance(tools, str) else list(tools)
    if "all" in names:
        return TOOLS
    unknown = [t for t in names if t not in TOOLS]
    if unknown or not names:
        from ascend_jax.errors import ConfigError

        raise ConfigError("tool", ",".join(unknown) or "", f"must be 'all' or a comma-separated list of {list(TOOLS)}")
    return tuple(t for t in TOOLS if t in names)


def touches_gm(program: Any) -> bool:
    """Whether any op of ``program`` reads or writes a GM tensor (a vector op or a Matmul)."""
    if any(cfg is not None for cfg in program.matmuls):
        return True
    return any(op.kind == CALL.VECTOR for _, ops in program.aivs for op in ops)


def analyse(
    log: EventLog,
    tools: tuple[str, ...] = TOOLS,
    program: Any = None,
    result: Any = None,
    pcs: dict[int, int] | None = None,
    source_of: Callable[[int, int], str] | None = None,
) -> list[Finding]:
    """The findings of ``tools`` on ``log`` (and, for synccheck and memcheck, on the program and
    the run's result when given)."""
    found: list[Finding] = []
    if "racecheck" in tools:
        found += racecheck(log)
    if "initcheck" in tools:
        found += initcheck(log, races_reported="racecheck" in tools)
    if "synccheck" in tools and program is not None:
        src = source_of or (lambda b, i: "")
        found += static_synccheck(program, src)
        if result is not None:
            found += run_synccheck(program, result, pcs or {}, src)
    if "memcheck" in tools:
        found += memcheck(log, program)
    return sort_findings(found)


#: the reports of the last few distinct sanitize calls, by :func:`_cache_key`
_CACHE: OrderedDict[bytes, SanitizerReport] = OrderedDict()
CACHE_SIZE = 16


def _fields(cls: type, *values: Any) -> None:
    """Stands for a dataclass in :class:`_ContentPickler`'s output (never called)."""


class _ContentPickler(pickle.Pickler):
    """Pickles a dataclass as its type and field values only: what a run caches on it later
    (``functools.cached_property`` values, such as a group's first AIC) does not change its key.
    GM counts by its tensors (names, addresses, shapes, types) and init marks, not its bytes
    (module docstring)."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, GlobalMemory):  # its layout and init marks, not its bytes (module docstring)
            return _fields, (GlobalMemory, obj.tensors, obj.init_given)
        names = _field_names(type(obj))
        if names is None:
            return NotImplemented
        return _fields, (type(obj), *(getattr(obj, name) for name in names))


@functools.cache
def _field_names(cls: type) -> tuple[str, ...] | None:
    """A dataclass's field names; None for any other type."""
    return tuple(f.name for f in dataclasses.fields(cls)) if dataclasses.is_dataclass(cls) else None


def _cache_key(program: Any, args: tuple, source_of: Callable[[int, int], str] | None) -> bytes | None:
    """A digest of the program's content and the call's arguments (None: not cacheable). A
    ``source_of`` counts by the source text it gives each AIV op."""
    buf = io.BytesIO()
    try:
        _ContentPickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump((program, args))
    except Exception:  # a user's callback or cost model that does not pickle: run every time
        return None
    h = hashlib.blake2b(buf.getbuffer(), digest_size=32)
    if source_of is not None:
        h.update(repr([source_of(b, i) for b, ops in program.aivs for i in range(len(ops))]).encode())
    return h.digest()


def sanitize(
    program: Any,
    *,
    schedule: str = "lockstep",
    seed: int = 0,
    max_steps: int | None = None,
    cost: Any = None,
    tools: str | Iterable[str] | None = None,
    uninitialised: Iterable[str] = (),
    source_of: Callable[[int, int], str] | None = None,
    cache: bool = True,
) -> SanitizerReport:
    """Runs ``program`` once in the reference interpreter with an observer and checks the log.

    Args:
      program: a :class:`~ascend_jax.cube_group.program.CubeGroupProgram`.
      schedule: as :func:`ascend_jax.run_reference`; the findings do not depend on it, seed,
        max_steps or cost (the run's own result, returned beside them, does).
      seed: as :func:`ascend_jax.run_reference`.
      max_steps: as :func:`ascend_jax.run_reference`.
      cost: as :func:`ascend_jax.run_reference` (the ``timed`` schedule's cost model).
      tools: ``"all"`` (default) or some of :data:`TOOLS`.
      uninitialised: tensors initcheck treats as undefined at launch although they have an
        ``init`` (is the init needed?); a tensor allocated without one is undefined anyway.
      source_of: ``(block_idx, op index) -> "file:line"`` for messages (default: the op's ``where``).
      cache: look the report up in, and add it to, the report cache (module docstring); False
        runs and analyses every time.

    Returns:
      a :class:`SanitizerReport` (from the cache when the same program was sanitized with the
      same arguments before: module docstring).
    """
    tools = parse_tools(tools)
    unknown = sorted(set(uninitialised) - set(program.gm.tensors))
    if unknown:
        from ascend_jax.errors import ConfigError

        raise ConfigError("uninitialised", unknown, f"no such tensor; tensors: {sorted(program.gm.tensors)}")
    args = (schedule, seed, max_steps, cost, tools, sorted(uninitialised))
    key = _cache_key(program, args, source_of) if cache else None
    hit = _CACHE.get(key) if key is not None else None
    if hit is not None:
        _CACHE.move_to_end(key)  # the findings hold; the plain run is this program's (its data)
        rerun = functools.partial(run_reference, program, schedule=schedule, seed=seed, max_steps=max_steps, cost=cost)
        return dataclasses.replace(hit, findings=list(hit.findings), rerun=rerun, _result=None)
    report = _run_and_analyse(program, schedule, seed, max_steps, cost, tools, uninitialised, source_of)
    if key is not None:
        _CACHE[key] = report
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
        return dataclasses.replace(report, findings=list(report.findings))
    return report


def _run_and_analyse(
    program: Any,
    schedule: str,
    seed: int,
    max_steps: int | None,
    cost: Any,
    tools: tuple[str, ...],
    uninitialised: Iterable[str],
    source_of: Callable[[int, int], str] | None,
    arithmetic: bool = False,
) -> SanitizerReport:
    """The observed run and the checks (``arithmetic=True``: the observed run computes the
    numbers too, as tests/sanitizer/test_models.py does to show that it changes nothing)."""
    # Both runs record accesses without the arithmetic (arithmetic=False, the default): no decision of a
    # reference run reads GM or UB data (reference.compute's docstring), so the log, the status and
    # the protocol state are those of a plain run; only the tensors' values are not computed.
    run = functools.partial(
        ReferenceInterpreter,
        program,
        schedule=schedule,
        seed=seed,
        max_steps=max_steps,
        cost=cost,
        arithmetic=arithmetic,
    )
    start = None
    if not program.zero_workspace:  # the reported launch starts from the first launch's workspace
        first = run()
        first.run()
        start = (first.proto.slots, first.proto.counters_a, first.proto.counters_w)
    obs = Observer(program, frozenset(uninitialised), source_of)
    watch = obs if touches_gm(program) else None  # without a GM access there is nothing to order
    interp = run(start=start, observer=watch)
    observed = interp.run()
    pcs = {a.block_idx: a.pc for a in interp.proto.aivs}
    findings = analyse(obs.log, tools, program, observed, pcs, obs.source_of)
    rerun = functools.partial(run_reference, program, schedule=schedule, seed=seed, max_steps=max_steps, cost=cost)
    return SanitizerReport(tools, findings, observed, obs.log, rerun)

"""Plots and a Markdown report of a run (``ascend-jax run --report DIR``), and the words the
terminal summary and the report use for witnesses and errors.

matplotlib is optional (the ``bench`` extra): it is imported only inside the plotting functions,
so the text helpers (:func:`describe_blocked`, :func:`describe_error`) work without it.

Cube groups (one recorded lane, see :func:`ascend_jax.trace.record_cube`):

* ``gantt.png``: per core, when it was busy (an action), blocked (spinning on a slot or a barrier
  before an action; ``timed`` only) or idle, over the kernel. Outside ``timed`` the axis is steps
  and the gaps before a core's last action are "waiting" (not enabled, or not drawn to act).
* ``occupancy.png``: a heatmap of every queue's non-FREE slots (0..4) over time.

A batch adds ``steps.png`` (histogram of steps per lane), ``kernel_cycles.png`` (``timed``:
histogram of kernel cycles per lane) and ``status.png`` (lanes per status); ``--atomic-order
random`` adds ``atomic_spread.png`` (each lane's relative L2 error against the float64 reference,
per written tensor). Comm models get ``comm_timeline.png`` (per rank and queue, each task's span).
Every run gets ``report.md`` linking the plots, with a summary.

A report never writes through a link: before drawing, :func:`check_report_folder` refuses a
folder where any of :data:`REPORT_FILES` is a link or not a plain file (as ``--dump`` and ``--trace``
do), and every file is opened with ``O_NOFOLLOW``. The folder itself may be a link (as for ``--dump``).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ascend_jax.errors import ConfigError

# -- words -----------------------------------------------------------------------------------------

_ERROR_HINTS = {
    "SKIP_CROSSES_ROW": "a merge covers only columns right of the leader in its AIC's row: with P queues per AIC, "
    "queue q can merge at most P - 1 - q % P followers (pitfall F7)",
    "SKIP_NEGATIVE": "SetSkipMsg takes the number of merged followers, 0 or more",
    "FREE_OUT_OF_BLOCK": "FreeMessage offsets must stay inside this AIC's 4 x P block of slots",
    "FREE_UNUSED_COLUMN": "the last AIC serves fewer queues: free only columns below its queue count",
    "BAD_WAIT_STATE": "pass VALID or FAKE as FreeMessage's waitState (or none)",
    "RECEIVE_LOG_FULL": "raise max_received in the scenario",
    "MATMUL_SHAPE": "pass SetTail -1 (keep) or an extent >= 0, and SetOrgShape positive shapes",
    "GM_OUT_OF_RANGE": "check the message's addresses and strides against the scenario's tensors",
}


def _slot_state(result, group: str, queue: int, depth: int) -> str | None:
    for gi, g in enumerate(result.program.groups):
        if g.name == group and 0 <= queue < g.msg_queue_size:
            return result.slot_states(gi)[depth][queue]
    return None


def describe_blocked(result) -> list[str]:
    """One sentence per deadlock witness entry of ``result`` (a :class:`CubeGroupResult`), e.g.
    ``aic0 waits on queue 1 depth 0 for FAKE (the slot holds QUIT)``, with a fix hint when the
    pattern is a known pitfall (docs/pitfalls.md)."""
    out = []
    for b in result.blocked:
        if "barrier" in b:
            out.append(
                f"{b['core']} waits on barrier {b['barrier']} index {b['index']} until {b['until']}; hint: every "
                "AIV of the barrier must call Arrive and Wait the same number of times"
            )
            continue
        if "queue" not in b:  # a core waiting on no slot: SyncAll
            out.append(
                f"{b['core']} waits in SyncAll until {b['until']}; hint: the AIC reaches SyncAll only after every "
                "column it serves has quit: call SyncAll after the QUITs (pitfall F14)"
            )
            continue
        q, d, until = b["queue"], b["depth"], b["until"]
        holds = _slot_state(result, b["group"], q, d)
        where = f"queue {q} depth {d}" + (f" of group {b['group']}" if len(result.program.groups) > 1 else "")
        held = f" (the slot holds {holds})" if holds else ""
        if until == "NOT_FREE":
            text = f"{b['core']} waits on {where} for a message{held}"
            below = _slot_state(result, b["group"], q, (d + 1) % 4)
            if below not in (None, "FREE"):
                text += (
                    f"; hint: the AIV of queue {q} has moved past this slot (depth {(d + 1) % 4} holds {below}): "
                    "did it post with head state FREE? set msgState = VALID (pitfall F8)"
                )
            else:
                text += (
                    f"; hint: queue {q}'s AIV never posts here: every bound queue posts in step and ends with a QUIT"
                )
        elif until == "FREE":
            text = f"{b['core']} waits on {where} for FREE{held}; hint: its AIC has not freed this slot: "
            text += "the AIV waits behind its AIC (backpressure, pitfall F2): fix what blocks the AIC"
        else:
            text = f"{b['core']} waits on {where} for {until}{held}"
            if until == "FAKE" and holds == "QUIT":
                text += (
                    "; hint: a merge covers a queue that only quits: post its FAKE first or leave it out (pitfall F5)"
                )
            elif until == "FAKE" and holds == "VALID":
                text += "; hint: the leader's skipCnt exceeds the followers that post a FAKE in this row (pitfall F5)"
        out.append(text)
    return out


def describe_error(error: dict[str, Any]) -> str:
    """The protocol error ``error`` (result JSON ``error``) in words, with a fix hint if one is known."""
    extra = {k: v for k, v in error.items() if k not in ("code", "core", "group", "queue", "depth", "message")}
    detail = ", ".join(f"{k} {v}" for k, v in extra.items())
    text = (
        f"{error['code']} at {error['core']} on queue {error['queue']} depth {error['depth']} of group "
        f"{error['group']}: {error['message']}" + (f" ({detail})" if detail else "")
    )
    hint = _ERROR_HINTS.get(error["code"])
    return text + (f"; hint: {hint}" if hint else "")


# -- plots -----------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


#: Every file a report may write into its folder (cube groups, batches, comm models).
REPORT_FILES = (
    "gantt.png",
    "occupancy.png",
    "utilisation.png",
    "steps.png",
    "kernel_cycles.png",
    "status.png",
    "atomic_spread.png",
    "comm_timeline.png",
    "report.md",
)


def _refuse_link(target: Path) -> None:
    """Raises :class:`ConfigError` if ``target`` is a link (to anything, dangling or not), or exists
    and is not a plain file, or would land outside its folder: the same rule as ``--dump``'s files
    and ``--trace``, so a planted link never redirects a write."""
    root = target.parent.resolve()
    if target.is_symlink() or (target.exists() and not target.is_file()) or target.resolve().parent != root:
        raise ConfigError(
            "--report",
            str(target),
            "would write outside the folder (a link, or not a plain file)",
            "remove it, or give another --report folder",
        )


def check_report_folder(directory: Path) -> None:
    """Checks, before anything is drawn or written, that no file a report may write in
    ``directory`` (:data:`REPORT_FILES`) is a link or a non-file; raises :class:`ConfigError`
    (``--report``) naming the first one that is."""
    for name in REPORT_FILES:
        _refuse_link(Path(directory) / name)


def _open_plain(path: Path):
    """Opens ``path`` for writing (binary, truncated) without following a link at its name
    (``O_NOFOLLOW``: a link planted after :func:`check_report_folder` still fails)."""
    _refuse_link(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    try:
        return os.fdopen(os.open(path, flags, 0o644), "wb")
    except OSError as e:
        raise ConfigError(
            "--report", str(path), f"cannot be written ({e.strerror or e})", "free space, permissions, or remove a link"
        ) from None


def _write_text(path: Path, text: str) -> None:
    with _open_plain(path) as f:
        f.write(text.encode("utf-8"))


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    try:
        with _open_plain(path) as f:
            fig.savefig(f, dpi=110, format="png")
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return path.name


#: what the AIV panel of utilisation.png says when no AIV stalled
NO_AIV_STALL = "no AIV stalled"


def _whole(values: Any) -> bool:
    """Whether every value is a whole number (kernel cycles are, unless a cost is fractional)."""
    v = np.asarray(values, dtype=np.float64)
    return bool(np.all(np.isfinite(v)) and np.all(v == np.round(v)))


_BUSY, _BLOCKED, _IDLE, _WAIT = "#2b7bba", "#d7301f", "#e0e0e0", "#fdae61"


def _core_key(core: str) -> tuple[int, int]:
    return (0 if core.startswith("aic") else 1, int(core[3:]))


def gantt(events: list[dict], timed: bool, scale: float, end: float, path: Path, title: str) -> str:
    """Per-core busy / blocked / idle bars (``scale``: event units -> plotted units; ``end``: the
    kernel's end in plotted units)."""
    plt = _plt()
    cores: dict[str, dict[str, list]] = {}
    for e in events:
        if e["name"] in ("occupancy", "error", "call") or not e["core"]:
            continue
        kind = "blocked" if e["name"] == "blocked" else "busy"
        cores.setdefault(e["core"], {"busy": [], "blocked": []})[kind].append((e["ts"] * scale, e["dur"] * scale))
    names = sorted(cores, key=_core_key)
    fig, ax = plt.subplots(figsize=(11, 1.2 + 0.16 * len(names)))
    for row, core in enumerate(names):
        spans = cores[core]
        last = max((s + d for s, d in spans["busy"] + spans["blocked"]), default=0.0)
        ax.broken_barh([(0, end)], (row - 0.4, 0.8), color=_IDLE)
        if not timed:  # waiting until the core's last action, finished after it
            ax.broken_barh([(0, last)], (row - 0.4, 0.8), color=_WAIT)
        ax.broken_barh(spans["blocked"], (row - 0.4, 0.8), color=_BLOCKED)
        ax.broken_barh(spans["busy"], (row - 0.4, 0.8), color=_BUSY)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=6 if len(names) > 30 else 8)
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.set_xlim(0, end)
    ax.set_xlabel("time (µs)" if timed else "time (engine steps)")
    ax.set_ylabel("core")
    ax.set_title(title)
    from matplotlib.patches import Patch

    handles = [Patch(color=_BUSY, label="busy (an action)")]
    if timed:
        handles += [
            Patch(color=_BLOCKED, label="blocked (spinning before an action)"),
            Patch(color=_IDLE, label="idle"),
        ]
    else:
        handles += [
            Patch(color=_WAIT, label="waiting (not enabled or not scheduled)"),
            Patch(color=_IDLE, label="finished"),
        ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return _save(fig, path)


def utilisation_plot(u, path: Path, title: str) -> str:
    """Writes :func:`utilisation_figure` to ``path``; returns the file name."""
    return _save(utilisation_figure(u, title), path)


def utilisation_figure(u, title: str):
    """Per AIC (left) busy / blocked / idle µs as stacked bars with the utilisation in %, per AIV
    (right) stall µs before AllocMessage and before waits / barriers (``u``: a
    :class:`ascend_jax.utilisation.Utilisation`). When no AIV stalled the right panel says so in
    words instead of drawing empty bars on a zero-width axis. Returns the matplotlib figure."""
    plt = _plt()
    aics = list(u.aic)
    aivs = list(u.aiv)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 1.6 + 0.22 * max(len(aics), len(aivs), 4)),
                                 gridspec_kw={"width_ratios": [3, 2]})  # fmt: skip
    rows = np.arange(len(aics))
    left = np.zeros(len(aics))
    for key, colour, label in (("busy_us", _BUSY, "busy"), ("blocked_us", _BLOCKED, "blocked"),
                               ("idle_us", _IDLE, "idle")):  # fmt: skip
        vals = np.array([getattr(u.aic[c], key) for c in aics])
        ax.barh(rows, vals, left=left, color=colour, label=label)
        left += vals
    for r, c in zip(rows, aics, strict=True):
        ax.text(u.kernel_us, r, f" {100 * u.aic[c].utilisation:.0f}%", va="center", fontsize=7)
    ax.set_yticks(rows)
    ax.set_yticklabels([f"aic{c}" for c in aics], fontsize=7 if len(aics) > 24 else 8)
    ax.set_ylim(len(aics) - 0.5, -0.5)
    ax.set_xlim(0, max(u.kernel_us, 1e-9) * 1.12)
    ax.set_xlabel("time (µs); label: utilisation = busy / kernel")
    ax.set_ylabel("AIC")
    ax.set_title(f"AICs: mean {100 * u.mean:.0f}%, imbalance {u.imbalance:.2f}", fontsize=9, loc="left")
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=3, fontsize=7, frameon=False)
    rows = np.arange(len(aivs))
    alloc = np.array([u.aiv[b].alloc_stall_us for b in aivs])
    wait = np.array([u.aiv[b].wait_stall_us for b in aivs])
    if not (alloc > 0).any() and not (wait > 0).any():
        bx.set_axis_off()
        bx.text(0.5, 0.5, NO_AIV_STALL, ha="center", va="center", fontsize=10, transform=bx.transAxes)
        bx.set_title(f"AIVs: {len(aivs)} AIVs, none stalled", fontsize=9, loc="left")
        fig.suptitle(title)
        return fig
    bx.barh(rows, alloc, color=_BLOCKED, label="AllocMessage")
    bx.barh(rows, wait, left=alloc, color=_WAIT, label="wait / barrier")
    bx.set_yticks(rows)
    bx.set_yticklabels([f"aiv{b}" for b in aivs], fontsize=6 if len(aivs) > 24 else 8)
    bx.set_ylim(len(aivs) - 0.5, -0.5)
    bx.set_xlim(0, u.aiv_stall_max_us * 1.1)
    bx.set_xlabel("stall (µs)")
    bx.set_ylabel("AIV")
    bx.set_title(f"AIVs: mean stall {u.aiv_stall_mean_us:.3g} µs", fontsize=9, loc="left")
    bx.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, fontsize=7, frameon=False)
    fig.suptitle(title)
    return fig


def occupancy_heatmap(
    program, events: list[dict], timed: bool, scale: float, end: float, path: Path, title: str
) -> str:
    """Queues (rows, all groups) by time (columns): non-FREE slots, a step function of the samples."""
    plt = _plt()
    rows = [(gi, q) for gi, g in enumerate(program.groups) for q in range(g.msg_queue_size)]
    index = {r: i for i, r in enumerate(rows)}
    bins = 400
    edges = np.linspace(0.0, max(end, 1e-9), bins + 1)
    grid = np.zeros((len(rows), bins))
    samples: dict[int, list[tuple[float, int]]] = {i: [(0.0, 0)] for i in range(len(rows))}
    for e in events:
        if e["name"] == "occupancy":
            samples[index[(e["group"], e["args"]["queue"])]].append((e["ts"] * scale, e["args"]["level"]))
    for i, pts in samples.items():
        times = np.array([t for t, _ in pts])
        levels = np.array([lv for _, lv in pts])
        order = np.argsort(times, kind="stable")
        times, levels = times[order], levels[order]
        at = np.searchsorted(times, edges[:-1], side="right") - 1  # level in force at each bin's start
        grid[i] = levels[np.maximum(at, 0)]
    fig, ax = plt.subplots(figsize=(11, max(3.5, 1.5 + 0.1 * len(rows))))
    cmap = plt.get_cmap("viridis", 5)
    img = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap=cmap, vmin=-0.5, vmax=4.5,
                    extent=(0.0, edges[-1], len(rows) - 0.5, -0.5))  # fmt: skip
    bar = fig.colorbar(img, ax=ax, ticks=range(5))
    bar.set_label("non-FREE slots of the queue (0..4)")
    labels = [f"{program.groups[gi].name}:{q}" if len(program.groups) > 1 else str(q) for gi, q in rows]
    step = max(1, len(rows) // 24)
    ax.set_yticks(range(0, len(rows), step))
    ax.set_yticklabels(labels[::step], fontsize=7)
    ax.set_xlabel("time (µs)" if timed else "time (engine steps)")
    ax.set_ylabel("queue")
    ax.set_title(title)
    return _save(fig, path)


def histogram(values: np.ndarray, xlabel: str, path: Path, title: str, label: str, integer: bool = False) -> str:
    """Writes :func:`histogram_figure` to ``path``; returns the file name."""
    return _save(histogram_figure(values, xlabel, title, label, integer), path)


def integer_bins(values: np.ndarray, most: int = 50) -> np.ndarray:
    """Integer bin edges for counts (steps, cycles): ``lo, lo + w, lo + 2w, ...`` with ``lo`` the
    smallest value, ``w >= 1`` whole values per bin and at most ``most`` bins, the last edge above
    the largest value. Each bin ``[e, e + w)`` holds exactly ``w`` possible counts, so no bin covers
    a fractional range of steps."""
    v = np.asarray(values, dtype=np.float64)
    lo, hi = int(np.floor(v.min())), int(np.floor(v.max()))
    width = max(1, -(-(hi - lo + 1) // most))
    n = -(-(hi - lo + 1) // width)
    return lo + width * np.arange(n + 1)


def histogram_figure(values: np.ndarray, xlabel: str, title: str, label: str, integer: bool = False):
    """Histogram of one value per lane (``values`` [lanes]). ``integer``: the values are counts
    (steps, cycles) and get :func:`integer_bins` and integer ticks; otherwise up to 50 equal bins.
    Returns the matplotlib figure."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    v = np.asarray(values, dtype=np.float64)
    if integer:
        from matplotlib.ticker import MaxNLocator

        nb: Any = integer_bins(v)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        nb = int(min(50, max(1, len(np.unique(v)))))
    ax.hist(v, bins=nb, color=_BUSY, label=f"{label} ({len(v)} lanes)")
    ax.axvline(float(np.mean(v)), color="black", linestyle="--", label=f"mean {np.mean(v):.4g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("lanes")
    ax.set_title(title)
    ax.legend()
    return fig


def status_bars(counts: dict[str, int], path: Path, title: str) -> str:
    plt = _plt()
    labels = ["ok", "deadlock", "max_steps", "error"]
    colours = ["#1a9850", "#d7301f", "#fdae61", "#762a83"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    bars = ax.bar(labels, [counts.get(s, 0) for s in labels], color=colours, label=labels)
    ax.bar_label(bars)
    ax.set_xlabel("status")
    ax.set_ylabel("lanes")
    ax.set_title(title)
    ax.legend(title="status")
    return _save(fig, path)


def spread_plot(errors: dict[str, np.ndarray], tolerances: dict[str, float], path: Path, title: str) -> str:
    """Per written tensor, each lane's relative L2 error against the float64 reference."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, err in errors.items():
        ax.plot(np.arange(len(err)), err, marker="o", linestyle="", markersize=3, label=f"{name}")
        if name in tolerances:
            ax.axhline(tolerances[name], linestyle=":", color="grey")
    if tolerances:
        ax.plot([], [], linestyle=":", color="grey", label="tolerance")
    ax.set_xlabel("lane")
    ax.set_ylabel("relative L2 error against float64 (dimensionless)")
    ax.set_title(title)
    ax.legend()
    return _save(fig, path)


def comm_timeline(result, path: Path) -> str:
    """Writes :func:`comm_timeline_figure` to ``path``; returns the file name."""
    return _save(comm_timeline_figure(result), path)


def comm_timeline_figure(result):
    """Per rank and queue (rows, labelled ``rank 0 stream0``), every executed task's span in µs,
    coloured by task kind. Returns the matplotlib figure."""
    from matplotlib.patches import Patch

    from ascend_jax.aicpu.reference import TaskKind
    from ascend_jax.trace import queue_row_label

    plt = _plt()
    p = result.program
    order = sorted(range(len(p.queues)), key=lambda q: (p.queues[q].rank, q))
    colours = {"record": "#1a9850", "wait": "#d7301f", "kernel": "#762a83", "copy": "#2b7bba", "reduce": "#fdae61"}
    fig, ax = plt.subplots(figsize=(11, 1.3 + 0.3 * len(order)))
    seen: set[str] = set()
    for row, q in enumerate(order):
        qu = p.queues[q]
        for i, t in enumerate(qu.tasks):
            s, e = float(result.start[q, i]), float(result.end[q, i])
            if np.isnan(s):
                continue
            kind = TaskKind(t.kind).name.lower()
            seen.add(kind)
            ax.broken_barh([(s * 1e6, max(e - s, 0.0) * 1e6)], (row - 0.4, 0.8), color=colours.get(kind, "grey"))
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels([queue_row_label(p.queues[q].rank, p.queues[q].name) for q in order], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("simulated time (µs)")
    ax.set_ylabel("rank and queue (stream or AI CPU thread)")
    ax.set_title(f"{p.name}: tasks per rank and queue ({result.status.label})")
    ax.legend(handles=[Patch(color=colours.get(k, "grey"), label=k) for k in sorted(seen)], fontsize=8,
              loc="upper left", bbox_to_anchor=(1.0, 1.0))  # fmt: skip
    return fig


# -- reports ---------------------------------------------------------------------------------------


def lane_errors(program, results) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Per tensor a matmul wrote: [lanes] relative L2 error of each lane against the float64
    reference, and the tensor's tolerance."""
    from ascend_jax.compare import rel_l2
    from ascend_jax.cube_group.matmul import TOLERANCE
    from ascend_jax.numerics import _name, exact_reference

    arrays = getattr(results, "arrays", None)
    images = [arrays["gm"][i, : program.gm.size] for i in range(len(results))] if arrays else [r.gm for r in results]
    refs, _ = exact_reference(program)
    errors, tol = {}, {}
    for name, ref in refs.items():
        errors[name] = np.array([rel_l2(program.gm.read(name, im), ref) for im in images])
        tol[name] = float(TOLERANCE[_name(program.gm.tensors[name].dtype)])
    return errors, tol


def write_cube_report(
    directory: Path,
    program,
    results,
    lane: int,
    recorded: tuple[Any, list[dict]],
    schedule: str,
    atomic_order: str,
    engine: str,
    elapsed: float,
    summary_lines: list[str],
) -> list[str]:
    """Writes the PNGs and ``report.md`` of a cube-group run into ``directory``; returns the file names.

    Args:
      results: the run's results (a :class:`BatchResult` or a list of :class:`CubeGroupResult`).
      lane: the lane the per-lane plots show; ``recorded``: its ``(result, events)`` from
        :func:`ascend_jax.trace.record_cube`.
      summary_lines: the terminal summary's lines (plain text), quoted in the report.
    """
    check_report_folder(directory)
    rec, events = recorded
    timed = schedule == "timed" and rec.timing is not None
    scale = 1.0 / rec.timing["freq_mhz"] if timed else 1.0
    end = max([(e["ts"] + e["dur"]) * scale for e in events] + [1e-9])
    if timed:
        end = max(end, rec.timing["kernel_us"])
    unit = "µs" if timed else "steps"
    made: list[tuple[str, str]] = []
    head = f"{program.name}, lane {lane}"
    made.append((gantt(events, timed, scale, end, directory / "gantt.png", f"{head}: cores over time ({schedule})"),
                 "Per core (AICs, then AIVs): busy in an action, " + ("blocked spinning on a slot or barrier, or idle"
                 if timed else "waiting (not enabled or not drawn), or finished") + f"; time in {unit}."))  # fmt: skip
    made.append((occupancy_heatmap(program, events, timed, scale, end, directory / "occupancy.png",
                                   f"{head}: queue occupancy ({schedule})"),
                 f"Per queue, the slots that are not FREE (0..4) over time ({unit})."))  # fmt: skip
    if timed:
        from ascend_jax.utilisation import compute_utilisation

        made.append((utilisation_plot(compute_utilisation(rec), directory / "utilisation.png",
                                      f"{head}: per-core utilisation ({schedule})"),
                     "Per AIC the busy, blocked and idle µs (they add up to the kernel time) and the "
                     "utilisation, busy / kernel; per AIV the µs stalled before AllocMessage and before "
                     "waits and barriers (the result JSON's `utilisation`)."))  # fmt: skip
    n = len(results)
    status = np.asarray(results.status if hasattr(results, "status") else [int(r.status) for r in results])
    steps = np.asarray(results.steps if hasattr(results, "steps") else [r.steps for r in results])
    if n > 1:
        made.append((histogram(steps, "engine steps per lane (steps)", directory / "steps.png",
                               f"{program.name}: steps across {n} lanes ({schedule})", "lanes by steps", True),
                     "How many engine steps each lane took."))  # fmt: skip
        cycles = results.kernel_cycles() if hasattr(results, "kernel_cycles") else None
        if cycles is not None:
            made.append((histogram(cycles, "kernel cycles per lane (cycles)", directory / "kernel_cycles.png",
                                   f"{program.name}: kernel cycles across {n} lanes", "lanes by kernel cycles",
                                   _whole(cycles)),
                         "When each lane's last core finished, in AI core cycles."))  # fmt: skip
        from ascend_jax.cube_group.status import Status

        counts = Counter(Status(int(s)).label for s in status)
        made.append((status_bars(dict(counts), directory / "status.png", f"{program.name}: status of {n} lanes"),
                     "Lanes per final status."))  # fmt: skip
    spread = ""
    if atomic_order == "random" and any(m is not None for m in program.matmuls):
        errors, tol = lane_errors(program, results)
        made.append((spread_plot(errors, tol, directory / "atomic_spread.png",
                                 f"{program.name}: error per lane with a random atomic order"),
                     "Each lane's relative L2 error against the float64 reference, per written tensor."))  # fmt: skip
        spread = "\n".join(
            f"- `{k}`: relative L2 error from {v.min():.3g} to {v.max():.3g} across {len(v)} lanes "
            f"(tolerance {tol[k]:.3g})"
            for k, v in errors.items()
        )
    lines = [f"# Run report: {program.name}", "", "```text", *summary_lines, "```", ""]
    lines += [f"Engine `{engine}`, schedule `{schedule}`, atomic order `{atomic_order}`, {n} lane(s), "
              f"wall time {elapsed:.2f} s. Per-lane plots show lane {lane} (seed {int(rec.seed or 0)}), "
              "recorded in the reference interpreter."]  # fmt: skip
    if schedule == "random":
        from ascend_jax.trace import lane_match

        same, why = lane_match(rec, results[lane], schedule)
        lines += ["", f"Under `random` the recording {'is' if same else 'is not'} lane {lane}'s run: {why}."]
    if spread:
        lines += ["", "## Order dependence of atomics", "", spread]
    lines += ["", "## Plots", ""]
    for name, text in made:
        lines += [f"### {name}", "", text, "", f"![{name}]({name})", ""]
    _write_text(directory / "report.md", "\n".join(lines))
    return [name for name, _ in made] + ["report.md"]


def write_comm_report(directory: Path, result, numerics: dict, elapsed: float, summary_lines: list[str]) -> list[str]:
    """Writes ``comm_timeline.png`` and ``report.md`` of a comm run into ``directory``."""
    check_report_folder(directory)
    name = comm_timeline(result, directory / "comm_timeline.png")
    lines = [f"# Run report: {result.program.name}", "", "```text", *summary_lines, "```", ""]
    lines += [f"{result.program.n_ranks} ranks, status `{result.status.label}`, {result.steps} steps, wall time "
              f"{elapsed:.2f} s.", ""]  # fmt: skip
    for k, e in numerics.items():
        lines.append(
            f"- numerics `{k}`: relative L2 {e['rel_l2_error']:.3g} (tolerance {e['tolerance']:.3g}), ok {e['ok']}"
        )
    lines += ["", "## Plots", "", f"### {name}", "", "Every executed task per rank and queue (stream or AI CPU thread), "
              "coloured by kind, in simulated µs.", "", f"![{name}]({name})", ""]  # fmt: skip
    _write_text(directory / "report.md", "\n".join(lines))
    return [name, "report.md"]

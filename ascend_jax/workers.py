"""Chunks of lanes run at once on a CPU: one Python thread per chunk in flight.

On the CPU backend XLA splits each large kernel of a compiled loop over its thread pool, and a
single call then waits at the end of every kernel for its slowest part: the engines' loops run
hundreds of small kernels a step, and one call kept a 2-core AMD EPYC about half idle (the
protocol loop at 2,048 lanes: 8.6 ms wall whether one call or two ran at once). JAX runs calls
dispatched from different threads at the same time, so a batch split into one chunk per CPU and
run from that many threads fills the waits of one call with the work of another
(``benchmarks/README.md``, "Session 19", has the measurements). Calls dispatched from one thread
run one after another.

Results never depend on this: lanes are independent, and every chunk's results go back to their
own lanes. An accelerator, a device mesh, and the eager loop run one chunk at a time.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from ascend_jax.errors import ConfigError

#: The fewest bytes of lane state a thread's chunk is given: a smaller batch runs in one call,
#: which was as fast (the protocol loop, 1,345 B a lane, 2-core EPYC: 64 lanes 0.68 ms in one
#: call against 0.90 ms in two of 32; 256 lanes 1.52 ms against 1.11 ms in two of 128). An
#: attention_grad lane (megabytes) is split alone: 8 lanes at S = 2,048 ran 1.18 s in one call
#: and 0.81 s in two of 4.
MIN_CHUNK_BYTES = 128 << 10


T = TypeVar("T")
R = TypeVar("R")


def cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - no affinity masks (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def check(workers: int | None) -> int | None:
    """``workers`` as given to an engine: None (automatic) or an integer >= 1; raises
    :class:`ascend_jax.errors.ConfigError` otherwise."""
    if workers is None:
        return None
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError("workers", workers, "must be an integer >= 1", "leave it out for one per CPU")
    return workers


def count(lanes: int, workers: int | None, *, cpu_backend: bool, lane_bytes: int = MIN_CHUNK_BYTES) -> int:
    """Threads to run a batch of ``lanes`` with, on the CPU backend only: ``workers`` if given,
    else one per CPU but no more than gives each thread :data:`MIN_CHUNK_BYTES` of lanes of
    ``lane_bytes`` (the default: any lane is enough)."""
    if not cpu_backend:
        return 1
    if workers is not None:
        return workers
    per_thread = max(1, -(-MIN_CHUNK_BYTES // max(1, lane_bytes)))
    return max(1, min(cpus(), lanes // per_thread))


def split(chunk: int, lanes: int, workers: int) -> int:
    """Lanes per chunk so that ``workers`` threads each get one: ``chunk`` (the most a call may
    take), or fewer when the batch would otherwise not reach every thread."""
    return max(1, min(chunk, -(-lanes // workers)))


def run(
    start: Callable[[T], R],
    finish: Callable[[R], object],
    items: Sequence[T],
    workers: int,
    warm: Callable[[T], object] | None = None,
) -> list:
    """``[finish(start(x)) for x in items]``, in that order.

    ``start`` dispatches a chunk (it compiles on the first call and returns before the chunk has
    run); ``finish`` waits for it and reads it back. With one worker the next chunk is dispatched
    before the previous one is read back. With more, every chunk is dispatched from a pool of
    ``workers`` threads, once ``warm(items[0])`` (compiling without running) returned here, so
    that the loop compiles once. Without ``warm`` the first chunk is dispatched here instead: the
    threads then start while it runs, which delayed them by up to 2 ms on two busy cores.
    """
    if not items:
        return []
    if workers <= 1 or len(items) == 1:
        out, pending = [], start(items[0])
        for x in items[1:]:
            started = start(x)
            out.append(finish(pending))
            pending = started
        out.append(finish(pending))
        return out
    pool = _pool(workers)
    if warm is not None:
        warm(items[0])
        futures = [pool.submit(lambda x: finish(start(x)), x) for x in items]
    else:
        first = start(items[0])
        futures = [pool.submit(finish, first)] + [pool.submit(lambda x: finish(start(x)), x) for x in items[1:]]
    try:
        return [f.result() for f in futures]
    except BaseException:  # an error or Ctrl-C: the chunks not started yet are dropped, not run
        for f in futures:
            f.cancel()
        raise


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    """A pool of ``workers`` threads, kept for the next batch (starting threads per batch delayed
    the second chunk by milliseconds). Per process: a forked child has none of its parent's
    threads, so it starts its own pool."""
    key = (os.getpid(), workers)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ascend_jax_chunk")
        return pool

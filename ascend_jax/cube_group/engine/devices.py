"""Devices: joining a multi-process run (:func:`init_distributed`), the 1-D mesh the batch axis is
sharded over (:func:`_mesh`), placing a chunk's arrays on it (:func:`_place`; :func:`place_lanes`
for callers outside the engine) and fetching the final state back (:func:`_fetch`), plus the checks
and the stdout guard a multi-process run needs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import sys
import weakref
import zlib
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from ascend_jax.cube_group.engine.shape import EngineShape
from ascend_jax.cube_group.engine.state import Tables
from ascend_jax.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from ascend_jax.cube_group.engine.batch import Prepared

#: Largest number of processes of a multi-process run (JAX's distributed runtime takes an int32 count).
MAX_PROCESSES = 65536
#: Environment variables that join this process to a multi-process run (see :func:`init_distributed`).
DISTRIBUTED_ENV = ("ASCEND_JAX_COORDINATOR", "ASCEND_JAX_NUM_PROCESSES", "ASCEND_JAX_PROCESS_ID")


def init_distributed(
    *, coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> bool:
    """Joins this process to a multi-process run (``jax.distributed.initialize``), so that
    :func:`simulate` shards its lanes over the devices of every process.

    Each argument left out is read from its environment variable (:data:`DISTRIBUTED_ENV`):
    ``ASCEND_JAX_COORDINATOR`` (``host:port`` of process 0, reachable from every process),
    ``ASCEND_JAX_NUM_PROCESSES`` (an integer in 1..:data:`MAX_PROCESSES`) and ``ASCEND_JAX_PROCESS_ID`` (0..N-1, distinct
    per process). Give all three or none. Must run before anything else in the process uses JAX;
    :func:`simulate` calls it first, so setting the variables is enough for the CLI. Idempotent.

    Returns:
      True if this process is part of an initialised ``jax.distributed`` run (by this call, an
      earlier one or the user's own ``jax.distributed.initialize``), False if nothing was asked.
    """
    if jax.distributed.is_initialized():
        return True
    names = dict(zip(("coordinator", "num_processes", "process_id"), DISTRIBUTED_ENV, strict=True))
    given = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    field = {k: k for k in given}
    for k, env in names.items():
        if given[k] is None and os.environ.get(env, "") != "":
            given[k], field[k] = os.environ[env], env
    if all(v is None for v in given.values()):
        return False
    from_env = any(field[k] != k for k in given)
    for k, v in given.items():
        if v is None:
            have = " and ".join(field[o] for o in given if given[o] is not None)
            raise ConfigError(
                names[k] if from_env else k,
                None,
                "a multi-process run needs a coordinator, a number of processes and a process id "
                f"(arguments coordinator, num_processes, process_id or variables {', '.join(DISTRIBUTED_ENV)}), "
                f"but only {have} given",
                f"set {names[k] if from_env else k} too, or unset the others for a single-process run",
            )
    addr = str(given["coordinator"])
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(
            field["coordinator"], addr, "must be HOST:PORT with a port in 1..65535", "e.g. localhost:12345"
        )
    n = _whole(field["num_processes"], given["num_processes"], 1, MAX_PROCESSES, "the number of processes, e.g. 2")
    pid = _whole(
        field["process_id"],
        given["process_id"],
        0,
        n - 1,
        f"one of 0..{n - 1}, a different one in each process (0: the coordinator's)",
    )
    timeout = _whole(INIT_TIMEOUT_ENV, os.environ.get(INIT_TIMEOUT_ENV) or str(DEFAULT_INIT_TIMEOUT_S), 1, 86400,
                     f"a whole number of seconds, e.g. {DEFAULT_INIT_TIMEOUT_S}")  # fmt: skip
    from jax._src import xla_bridge  # private, hence the getattr: has JAX already started here?

    if not getattr(xla_bridge, "backends_are_initialized", lambda: False)():  # else initialize says so at once
        whom = f"the coordinator (process 0) at {addr}" if pid else f"{n - 1} other process(es) to join at {addr}"
        print(f"ascend-jax: process {pid} of {n} is waiting for {whom} (gives up after {timeout} s; "
              f"{INIT_TIMEOUT_ENV} sets it)", file=sys.stderr, flush=True)  # fmt: skip
        if pid:  # JAX aborts the whole process when the coordinator never answers: look first
            _wait_for_coordinator(field["coordinator"], addr, host, int(port), timeout, f"process {pid} of {n}")
    try:
        jax.distributed.initialize(
            coordinator_address=addr, num_processes=n, process_id=pid, initialization_timeout=timeout
        )
    except RuntimeError as e:
        if "must be called before" not in str(e):
            raise
        raise ConfigError(
            field["coordinator"],
            addr,
            "JAX had already started in this process, so it can no longer join a multi-process run",
            "join first (init_distributed() before any other JAX call); on the command line leave --devices out",
        ) from None
    return True


#: Seconds ``init_distributed`` waits for the other processes (``ASCEND_JAX_INIT_TIMEOUT`` overrides).
DEFAULT_INIT_TIMEOUT_S = 60
INIT_TIMEOUT_ENV = "ASCEND_JAX_INIT_TIMEOUT"


def _wait_for_coordinator(field: str, addr: str, host: str, port: int, timeout: float, who: str) -> None:
    """Returns once something accepts a TCP connection at ``host:port``; raises :class:`ConfigError`
    after ``timeout`` seconds (JAX's own wait ends by aborting the process, with no message)."""
    import socket
    import time

    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((host.strip("[]"), port), timeout=max(0.05, min(1.0, left))):
                return
        except OSError:
            if left <= 0:
                raise ConfigError(
                    field, addr, f"no coordinator answered there within {timeout} s ({who} waits for process 0)",
                    f"start process 0 first, check the address, or raise {INIT_TIMEOUT_ENV} (seconds)",
                ) from None  # fmt: skip
            time.sleep(min(0.2, max(0.0, left)))


def _whole(field: str, value: Any, lo: int, hi: int | None, fix: str) -> int:
    """``value`` (an int or its decimal text) as an int in lo..hi, else a ConfigError."""
    text = value.strip() if isinstance(value, str) else value
    ok = isinstance(text, int) and not isinstance(text, bool)
    if isinstance(text, str) and text.isdigit():
        text, ok = int(text), True
    if not ok or text < lo or (hi is not None and text > hi):
        rule = f"must be an integer in {lo}..{hi}" if hi is not None else f"must be an integer >= {lo}"
        raise ConfigError(field, value, rule, fix)
    return text


def _mesh(devices: int | None):
    """A 1-D mesh over the first ``devices`` devices (all by default), or None for one device.

    In a multi-process run (``jax.process_count() > 1``) the mesh spans every device of every
    process (``jax.devices()`` is global there), so ``devices`` must be left out or name them all."""
    avail = jax.devices()
    n = len(avail) if devices is None else devices
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(avail):
        raise ConfigError("devices", devices, f"must be an integer in 1..{len(avail)} (devices available)")
    if jax.process_count() > 1 and n != len(avail):
        raise ConfigError(
            "devices",
            devices,
            f"a multi-process run shards the lanes over all {len(avail)} devices of its {jax.process_count()} processes",
            "leave devices (--devices) out",
        )
    if n == 1:
        return None
    return jax.sharding.Mesh(np.array(avail[:n]), ("lanes",))


def _place(mesh, shape: EngineShape, tab: Tables, cost: np.ndarray, keys: np.ndarray):
    """Device arrays for one chunk: lane axes sharded over ``mesh``, shared tables replicated.

    Every process holds the whole chunk in host memory (all run :func:`prepare` on the same
    programs) and copies only the lanes of its own devices (``jax.make_array_from_callback`` asks
    for the addressable shards only), so this serves one process and many alike."""
    if mesh is None:
        return _device_tables(tab), jnp.asarray(cost), jnp.asarray(keys)
    from jax.sharding import NamedSharding, PartitionSpec

    def put(x: np.ndarray, spec: PartitionSpec) -> jax.Array:
        return jax.make_array_from_callback(x.shape, NamedSharding(mesh, spec), lambda index: x[index])

    def first(x):
        return put(x, PartitionSpec("lanes"))

    def last(x):
        return put(x, PartitionSpec(*([None] * (x.ndim - 1)), "lanes"))

    def table(name, x):
        if shape.shared or name in Tables.BATCH_SHARED:
            return jax.tree.map(lambda y: put(y, PartitionSpec()), x)
        return jax.tree.map(first, x) if name in Tables.LANE_MAJOR else last(x)

    tab = Tables(**{f.name: table(f.name, getattr(tab, f.name)) for f in dataclasses.fields(Tables)})
    return tab, last(cost), first(keys)


#: id(numpy Tables) -> (the object, its device copy), while the object lives: a program's tables
#: are one object across calls while :mod:`ascend_jax.cube_group.engine.memo` keeps its encoding,
#: and every chunk of a batch of one program passes the same object (a dozen small arrays cost a
#: millisecond to place, each time)
_ON_DEVICE: dict[int, tuple[weakref.ref, Tables]] = {}


def _device_tables(tab: Tables) -> Tables:
    """``tab`` on the default device, placed once per object."""
    key = id(tab)
    hit = _ON_DEVICE.get(key)
    if hit is not None and hit[0]() is tab:
        return hit[1]
    placed = jax.device_put(tab)
    _ON_DEVICE[key] = (weakref.ref(tab), placed)
    weakref.finalize(tab, _ON_DEVICE.pop, key, None)
    return placed


def place_lanes(prep: Prepared, lanes: Any, *, devices: int | None = None):
    """The device arguments of lanes ``lanes`` (indices into ``prep``'s batch) for the function
    :func:`~ascend_jax.cube_group.engine.compile_batch` returns: tables, costs and keys, the lane
    axes sharded over the first ``devices`` devices (all by default) as :func:`simulate` places a
    chunk. Give as many lanes as the compiled chunk has."""
    return _place(_mesh(devices), prep.shape, *prep.chunk(np.asarray(lanes)))


def _fetch(mesh, st):
    """The final state as host numpy arrays, whole on every process: a multi-process run first
    replicates every field over the mesh (one compiled all-gather), then reads the local copy."""
    if mesh is not None and jax.process_count() > 1:
        from jax.sharding import NamedSharding, PartitionSpec

        st = _replicate(NamedSharding(mesh, PartitionSpec()))(st)
        return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), st)
    if jax.default_backend() == "cpu":  # host arrays are views of the buffers: no copies to start
        return jax.tree.map(np.asarray, st)
    return jax.device_get(st)  # every copy started before the first is waited for


@functools.cache
def _replicate(sharding):
    return jax.jit(lambda s: s, out_shardings=sharding)


@contextlib.contextmanager
def _native_stdout_to_stderr(mesh):
    """In a multi-process run, points file descriptor 1 at stderr while the batch runs: JAX's CPU
    collectives (Gloo) print a line per connection to the process's stdout, which ``--json``
    output must not contain. Python's own ``sys.stdout`` is flushed before and after."""
    if mesh is None or jax.process_count() == 1:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _check_same_call(mesh, prep: Prepared, chunk_size: int) -> None:
    """In a multi-process run, insists that every process called :func:`simulate` alike (the
    processes run one SPMD program: different lanes would hang or mix batches)."""
    if mesh is None or jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    tables = 0  # every encoded program (ops, messages, callback decisions, GM contents) of every lane
    for x in jax.tree.leaves(prep.tables):
        tables = zlib.crc32(np.ascontiguousarray(x), tables)
    parts = [repr(prep.shape).encode(), prep.seeds.tobytes(), prep.costs.tobytes(), prep.keys.tobytes()]
    mine = np.array([len(prep.seeds), chunk_size, tables, *(zlib.crc32(b) for b in parts)], np.uint32)
    every = np.asarray(multihost_utils.process_allgather(mine))  # [processes, 7]
    if not (every == mine).all():
        raise ConfigError(
            "programs",
            f"process {jax.process_index()} of {jax.process_count()}",
            "every process of a multi-process run must call simulate with the same programs, seeds and options",
            "give every process the same arguments (each copies only its own lanes to its devices)",
        )

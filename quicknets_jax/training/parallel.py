"""Data parallelism: the batch split over a 1-D device mesh (axis "data"), params replicated.

Choice (see BUILD.md): plain `jax.jit` with `NamedSharding`, not `pmap` (legacy since JAX 0.8) nor
`shard_map`. The trainer's step stays the single-device program; a sharding constraint on the
gathered batch tells XLA's SPMD partitioner to split it, and the partitioner inserts the gradient
all-reduce itself — so there is no hand-written `pmean` to get wrong (notes-jax.md's shard_map trap),
and batch norm's batch statistics are computed over the *global* batch (synchronised BN), exactly as
on one device. Multi-host (a TPU pod slice): `initialize_distributed()` before anything touches a
device; the mesh then spans every host's devices, each host holds the same in-memory data (the
arrays are replicated), draws the same batch indices from the same key, and computes only the rows
of each batch that land on its own devices.

`fit` takes `mesh=`; code that calls `fit` without one (Algorithm 1's per-block fits) picks up the
mesh of an enclosing `with data_parallel(mesh):`. Outside such a block nothing changes.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"
_CURRENT: contextvars.ContextVar[Optional[Mesh]] = contextvars.ContextVar("quicknets_mesh", default=None)


def initialize_distributed(
  coordinator_address: Optional[str] = None,
  num_processes: Optional[int] = None,
  process_id: Optional[int] = None,
  heartbeat_timeout_seconds: int = 100,
  initialization_timeout: int = 60,
) -> None:
  """Multi-process setup: `jax.distributed.initialize(...)`. Call before anything touches a device.

  On Cloud TPU (and SLURM, Open MPI) jax finds the coordinator itself: leave the arguments None.
  Elsewhere give the coordinator's host:port, the number of processes and this one's id (0..n−1).
  CPU processes exchange collectives through gloo.

  Both timeouts end the process from C++ (jax aborts it: no Python exception, nothing to catch), which
  is why the entry points run a `--distributed` run under a supervising parent (experiments/supervise.py).

  Args:
    coordinator_address: process 0's host:port (None: found by jax).
    num_processes: how many processes (None: found by jax).
    process_id: this process's id, 0..num_processes−1 (None: found by jax).
    heartbeat_timeout_seconds: a process that stops sending heartbeats this long is declared dead, and
      the others stop instead of waiting for it.
    initialization_timeout: seconds to wait for every process to join the coordinator.

  Raises:
    RuntimeError: the coordinator could not be started (e.g. its port is in use).
  """
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU only; GPU/TPU keep theirs
  jax.distributed.initialize(
    coordinator_address=coordinator_address,
    num_processes=num_processes,
    process_id=process_id,
    initialization_timeout=initialization_timeout,
    heartbeat_timeout_seconds=heartbeat_timeout_seconds,
  )


def is_writer() -> bool:
  """Whether this process writes the run's files (results, metrics, config): process 0 only, so that
  the processes of a multi-host run sharing a workdir do not write each file once each."""
  return jax.process_index() == 0


def make_mesh(num_devices: Optional[int] = None) -> Mesh:
  """A 1-D mesh named "data" over the first `num_devices` devices (default: all, on every host)."""
  devices = jax.devices()
  n = len(devices) if num_devices is None else num_devices
  if not 1 <= n <= len(devices):
    raise ValueError(f"asked for {n} devices but {len(devices)} are visible: pass --num_devices ≤ {len(devices)}")
  return Mesh(np.asarray(devices[:n]), (AXIS,))


@contextlib.contextmanager
def data_parallel(mesh: Optional[Mesh]):
  """Within this block, `train.fit` calls without a `mesh=` run data parallel on `mesh` (None: off)."""
  token = _CURRENT.set(mesh)
  try:
    yield mesh
  finally:
    _CURRENT.reset(token)


def current_mesh() -> Optional[Mesh]:
  """The mesh of the enclosing `data_parallel` block, or None."""
  return _CURRENT.get()


def mesh_size(mesh: Optional[Mesh]) -> int:
  return 1 if mesh is None else int(mesh.devices.size)


def round_up_batch(batch_size: int, mesh: Optional[Mesh]) -> int:
  """The smallest multiple of the device count ≥ batch_size (the extra rows are padding, masked out)."""
  n = mesh_size(mesh)
  return int(math.ceil(batch_size / n) * n)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(AXIS))


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places every array of `tree` on all devices of `mesh` (on every host: each passes the same values)."""
  sharding = replicated(mesh)

  def put(x):
    if jax.process_count() == 1:
      return jax.device_put(x, sharding)
    host = np.asarray(x)  # multi-host: build the global array from this host's identical copy
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  return jax.tree.map(put, tree)


def shard_batch(tree: Any, mesh: Mesh) -> Any:
  """Inside jit: splits the leading (batch) axis of every array of `tree` over the mesh."""
  return jax.lax.with_sharding_constraint(tree, batch_sharding(mesh))


def local_batch_rows(rows: np.ndarray, mesh: Optional[Mesh]) -> np.ndarray:
  """The part of a global batch's `rows` this process reads on the streamed input path: all of them
  on one process; on several, the contiguous slice its own devices hold under `batch_sharding` (the
  mesh's devices come process by process, so that slice is this process's 1/process_count)."""
  if mesh is None or jax.process_count() == 1:
    return rows
  per_process = len(rows) // jax.process_count()
  start = jax.process_index() * per_process
  return rows[start : start + per_process]


def global_batch(local: np.ndarray, batch_size: int, mesh: Mesh) -> jax.Array:
  """The batch as one array split over `mesh`, from this process's part of it (`local_batch_rows`)."""
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(local, sharding)
  return jax.make_array_from_process_local_data(sharding, local, (batch_size, *local.shape[1:]))

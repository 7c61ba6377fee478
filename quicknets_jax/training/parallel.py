"""Data parallelism: the batch split over a 1-D device mesh (axis "data"), params replicated.

Choice (see BUILD.md): plain `jax.jit` with `NamedSharding`, not `pmap` (legacy since JAX 0.8) nor
`shard_map`. The trainer's step stays the single-device program; a sharding constraint on the
gathered batch tells XLA's SPMD partitioner to split it, and the partitioner inserts the gradient
all-reduce itself — so there is no hand-written `pmean` to get wrong (a `shard_map` step without
one trains each device on its own gradients), and batch norm's batch statistics are computed over
the *global* batch (synchronised BN), exactly as on one device. Multi-host (a TPU pod slice):
`initialize_distributed()` before anything touches a device; the mesh then spans every host's devices,
each host holds the same in-memory data (the arrays are replicated), draws the same batch indices from
the same key, and computes only the rows of each batch that land on its own devices.

`trainer.fit` takes no mesh argument: it (and so every per-block fit of Algorithm 1) picks up the
mesh of an enclosing `with data_parallel(mesh):` (`current_mesh`). Outside such a block nothing changes.
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
  """Whether this process writes the run's files (results, metrics, config).

  Process 0 only, so that the processes of a multi-host run sharing a workdir do not write each file
  once each.

  Returns:
    True in process 0 (and in a single-process run), else False.
  """
  return jax.process_index() == 0


def make_mesh(num_devices: Optional[int] = None) -> Mesh:
  """A 1-D mesh named "data" over the first `num_devices` devices (default: all, on every host).

  Args:
    num_devices: how many of `jax.devices()` the mesh spans; None: all of them.

  Returns:
    The mesh, with the one axis `AXIS`.

  Raises:
    ValueError: `num_devices` is below 1 or above the number of visible devices.
  """
  devices = jax.devices()
  n = len(devices) if num_devices is None else num_devices
  if not 1 <= n <= len(devices):
    raise ValueError(f"asked for {n} devices but {len(devices)} are visible: pass --num_devices ≤ {len(devices)}")
  return Mesh(np.asarray(devices[:n]), (AXIS,))


@contextlib.contextmanager
def data_parallel(mesh: Optional[Mesh]):
  """Within this block, `trainer.fit` runs data parallel on `mesh` (None: on one device).

  The mesh is held in a context variable (`current_mesh`); the enclosing block's comes back on exit.

  Args:
    mesh: a mesh from `make_mesh`, or None to turn data parallelism off inside the block.

  Yields:
    The mesh given.
  """
  token = _CURRENT.set(mesh)
  try:
    yield mesh
  finally:
    _CURRENT.reset(token)


def current_mesh() -> Optional[Mesh]:
  """The mesh of the enclosing `data_parallel` block, or None.

  Returns:
    The innermost enclosing block's mesh, or None outside any (or inside `data_parallel(None)`).
  """
  return _CURRENT.get()


def mesh_size(mesh: Optional[Mesh]) -> int:
  """The number of devices a batch is split over.

  Args:
    mesh: a mesh, or None for one device.

  Returns:
    The mesh's device count, or 1 for None.
  """
  return 1 if mesh is None else int(mesh.devices.size)


def round_up_batch(batch_size: int, mesh: Optional[Mesh]) -> int:
  """The smallest multiple of the device count ≥ batch_size (the extra rows are padding, masked out).

  Args:
    batch_size: the batch size asked for.
    mesh: the mesh the batch is split over, or None for one device.

  Returns:
    `batch_size` rounded up to a multiple of `mesh_size(mesh)`.
  """
  n = mesh_size(mesh)
  return int(math.ceil(batch_size / n) * n)


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding that puts a whole copy of an array on every device of `mesh`.

  Args:
    mesh: the device mesh.

  Returns:
    A `NamedSharding` with an empty partition spec.
  """
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """The sharding that splits an array's leading (batch) axis over the mesh's "data" axis.

  Args:
    mesh: the device mesh.

  Returns:
    A `NamedSharding` whose partition spec shards the first axis over `AXIS`.
  """
  return NamedSharding(mesh, P(AXIS))


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places every array of `tree` on all devices of `mesh` (on every host: each passes the same values).

  Args:
    tree: a pytree of arrays (host or device arrays).
    mesh: the device mesh.

  Returns:
    The same tree of global arrays, each replicated over the mesh (`replicated`).
  """
  sharding = replicated(mesh)

  def put(x):
    if jax.process_count() == 1:
      return jax.device_put(x, sharding)
    host = np.asarray(x)  # multi-host: build the global array from this host's identical copy
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  return jax.tree.map(put, tree)


def shard_batch(tree: Any, mesh: Mesh) -> Any:
  """Inside jit: splits the leading (batch) axis of every array of `tree` over the mesh.

  Args:
    tree: a pytree of traced arrays whose first axis is the batch (divisible by the device count).
    mesh: the device mesh.

  Returns:
    The same tree under a `batch_sharding` constraint (`jax.lax.with_sharding_constraint`).
  """
  return jax.lax.with_sharding_constraint(tree, batch_sharding(mesh))


def local_batch_rows(rows: np.ndarray, mesh: Optional[Mesh]) -> np.ndarray:
  """The part of a global batch's `rows` this process reads on the streamed input path.

  All of them on one process (or without a mesh); on several, the contiguous slice its own devices hold
  under `batch_sharding` (the mesh's devices come process by process, so that slice is this process's
  1/process_count).

  Args:
    rows: the global batch's row indices, [B].
    mesh: the mesh the batch is split over, or None.

  Returns:
    `rows` itself, or this process's slice of it.
  """
  if mesh is None or jax.process_count() == 1:
    return rows
  per_process = len(rows) // jax.process_count()
  start = jax.process_index() * per_process
  return rows[start : start + per_process]


def global_batch(local: np.ndarray, batch_size: int, mesh: Mesh) -> jax.Array:
  """The batch as one array split over `mesh`, from this process's part of it (`local_batch_rows`).

  Args:
    local: the rows this process read, [B / process_count, ...] (the whole batch on one process).
    batch_size: the global batch's size B.
    mesh: the device mesh.

  Returns:
    A global array [B, ...] whose first axis is split over the mesh (`batch_sharding`).
  """
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(local, sharding)
  return jax.make_array_from_process_local_data(sharding, local, (batch_size, *local.shape[1:]))

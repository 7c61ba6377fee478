"""The streamed input path (`--input=stream`): images stay on disk and are read batch by batch with Grain.

`StreamedImages` stands where the in-memory path holds a float32 image array: a lazy view of rows of
a random-access source (`records.RecordImages`, `records.TfdsImages`) with the split's normalisation.
Taking rows of it (`take`, `view[rows]`, `view[a:b]`) gives another view and reads nothing; `batches`
and `stream` read fixed batches through a Grain pipeline (reads and decoding in Grain's reader threads,
or in `workers` processes) that keeps at most a memory budget's worth of batches in flight;
`np.asarray(view)` reads it whole, and refuses to where that exceeds the budget. The training loop
(`training.trainer`) draws each epoch's order exactly as the in-memory path does and streams the rows
of each batch, so the two paths train on the same images in the same order and give the same results.
Labels, index arrays and the features blocks compute stay in memory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Optional

import jax
import numpy as np
from absl import flags

from quicknets_jax.data.errors import DataError
from quicknets_jax.data.normalisation import STATS_CHUNK, channel_stats, standardise
from quicknets_jax.data.split import Split


@dataclasses.dataclass(frozen=True)
class StreamOptions:
  """How batches are read: Grain reader threads, worker processes, and the memory they may hold.

  Attributes:
    threads: Grain's reader threads in this process (reads and decoding run there).
    workers: Grain worker processes (0: none); each starts in a few seconds per pass.
    memory_budget_mb: decoded batches in flight (and whole reads) stay under this many MiB.
  """

  threads: int = 4  # Grain's reader threads in this process (reads and decoding run there)
  workers: int = 0  # Grain worker processes (0: none); each starts in a few seconds per pass
  memory_budget_mb: float = 256.0  # decoded batches in flight (and whole reads) stay under this

  def plan(self, batch_bytes: int) -> tuple[int, int]:
    """(batches Grain reads ahead, batches copied to the device ahead) for batches of `batch_bytes`:
    together at most the budget, besides the batch a step is computing on.

    Args:
      batch_bytes: bytes of one decoded batch.

    Returns:
      (read-ahead batches, device-ahead batches).

    Raises:
      DataError: one batch alone exceeds the budget; the message names the flags to change.
    """
    slots = int(self.memory_budget_mb * 2**20 // max(batch_bytes, 1))
    if slots < 1:
      raise DataError(
        f"one batch of streamed images takes {batch_bytes / 2**20:.1f} MiB > --memory_budget_mb="
        f"{self.memory_budget_mb:g}: raise the budget or lower the batch size (and --eval_batch_size)"
      )
    device_ahead = min(2, slots // 3)  # device copies ahead only where reading ahead keeps most slots
    return slots - device_ahead, device_ahead


def prefetch_to_device(batches: Iterator, put, depth: int) -> Iterator:
  """`put` of each item of `batches`, `depth` items ahead: the next batches' host-to-device copies run
  while the current step computes (jax dispatches asynchronously).

  Args:
    batches: host batches, in order.
    put: the transfer (e.g. `jax.device_put`).
    depth: how many transferred batches wait ahead of the one in use.

  Yields:
    `put(batch)` for every batch, in order.
  """
  queue = []
  for item in batches:
    queue.append(put(item))
    if len(queue) > depth:
      yield queue.pop(0)
  yield from queue


class _Batches:
  """Grain's random-access view of a pass: element i is the decoded, normalised batch of `row_batches[i]`."""

  def __init__(self, source, row_batches: Sequence[np.ndarray], mean, std):
    self.source, self.row_batches, self.mean, self.std = source, row_batches, mean, std

  def __len__(self) -> int:
    return len(self.row_batches)

  def __getitem__(self, i: int) -> np.ndarray:
    pixels, _ = self.source.read(self.row_batches[i])
    return standardise(pixels, self.mean, self.std)


def _grain_flags_ready() -> None:
  """Grain's worker processes read absl flags: parse them (none of ours) when no absl app has."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


class StreamedImages:
  """Rows `rows` of `source`, standardised with `mean`/`std`: float32 [len(rows), H, W, C], read lazily.

  Args:
    source: a random-access source (`records.RecordImages`, `records.TfdsImages`).
    rows: the source's record numbers this view holds.
    mean: float32 [C] channel means.
    std: float32 [C] channel standard deviations.
    options: the pipeline's threads, workers and memory budget.

  Attributes:
    source: as given.
    rows: int64 record numbers.
    mean: as given, float32.
    std: as given, float32.
    options: as given.
  """

  dtype = np.dtype(np.float32)

  def __init__(self, source, rows: np.ndarray, mean, std, options: StreamOptions = StreamOptions()):
    self.source, self.rows = source, np.asarray(rows, np.int64)
    self.mean, self.std, self.options = np.asarray(mean, np.float32), np.asarray(std, np.float32), options

  @property
  def shape(self) -> tuple:
    """(rows, H, W, C), as an array of the view's images would have."""
    return (len(self.rows), *self.source.image_shape)

  @property
  def ndim(self) -> int:
    """The number of dimensions of `shape` (4)."""
    return len(self.shape)

  @property
  def image_bytes(self) -> int:
    """Bytes one decoded float32 image takes."""
    return 4 * int(np.prod(self.source.image_shape))

  @property
  def nbytes(self) -> int:
    """Bytes the whole view takes decoded (float32)."""
    return self.image_bytes * len(self.rows)

  def __len__(self) -> int:
    return len(self.rows)

  def take(self, positions) -> StreamedImages:
    """The view of `positions` (indices into this view's rows); nothing is read.

    Args:
      positions: an index array into this view.

    Returns:
      A new view.
    """
    return StreamedImages(self.source, self.rows[np.asarray(positions)], self.mean, self.std, self.options)

  def __getitem__(self, key) -> StreamedImages:
    if isinstance(key, (int, np.integer)):
      raise TypeError("index a streamed view with a slice or an index array (one image: view[i : i + 1])")
    return StreamedImages(self.source, self.rows[key], self.mean, self.std, self.options)

  def read(self) -> np.ndarray:
    """Every image of the view, decoded and standardised (float32).

    Returns:
      float32 [len(view), H, W, C] images.

    Raises:
      DataError: the view is larger than the memory budget.
    """
    if self.nbytes > self.options.memory_budget_mb * 2**20:
      raise DataError(
        f"reading {len(self)} streamed images at once takes {self.nbytes / 2**20:.0f} MiB > --memory_budget_mb="
        f"{self.options.memory_budget_mb:g}: this step needs them in memory; raise the budget or use --input=memory"
      )
    if len(self) == 0:
      return np.zeros(self.shape, np.float32)
    return standardise(self.source.read(self.rows)[0], self.mean, self.std)

  def __array__(self, dtype=None, copy=None):
    out = self.read()
    return out if dtype is None else out.astype(dtype)

  def stream(self, position_batches: Sequence[np.ndarray], put=None) -> Iterator:
    """The decoded batches of `position_batches` (each an index array into this view), in order, read
    ahead through Grain (threads, or `options.workers` processes) and, given `put` (e.g. a device
    transfer), handed to it ahead of use: all within the memory budget (`StreamOptions.plan`).

    Args:
      position_batches: one index array into this view per batch.
      put: a transfer applied to each batch ahead of use, or None for host arrays.

    Returns:
      An iterator over the batches (float32 [n, H, W, C] each, or what `put` makes of them).

    Raises:
      DataError: one batch alone exceeds the memory budget.
    """
    import grain

    row_batches = [self.rows[np.asarray(p)] for p in position_batches]
    if not row_batches:
      return iter(())
    read_ahead, device_ahead = self.options.plan(max(len(r) for r in row_batches) * self.image_bytes)
    workers = self.options.workers
    # worker processes each hold a batch in their own buffer: they share the read-ahead slots
    buffer = max(1, read_ahead - workers)
    dataset = grain.MapDataset.source(_Batches(self.source, row_batches, self.mean, self.std))
    dataset = dataset.to_iter_dataset(
      grain.ReadOptions(num_threads=max(1, min(self.options.threads, buffer)), prefetch_buffer_size=buffer)
    )
    if workers:
      _grain_flags_ready()
      dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=1))
    if put is None:
      return iter(dataset)
    return prefetch_to_device(iter(dataset), put, device_ahead)

  def batches(self, batch_size: int) -> Iterator[np.ndarray]:
    """The view in consecutive batches of `batch_size` rows (the last one shorter).

    Args:
      batch_size: rows per batch.

    Returns:
      An iterator over float32 [n, H, W, C] batches.
    """
    return self.stream([np.arange(s, min(s + batch_size, len(self))) for s in range(0, len(self), batch_size)])


def is_streamed(x) -> bool:
  """Whether `x` is a streamed view rather than an array.

  Args:
    x: an image array or a `StreamedImages` view.

  Returns:
    True for a `StreamedImages`.
  """
  return isinstance(x, StreamedImages)


def device_array(images, dtype=None):
  """`images` on the default device (a device array stays as it is; a streamed view stays a view: the
  trainer streams it). `jax.device_put`, not `jnp.asarray`: the latter compiles a program per new shape.

  Args:
    images: a numpy array, a jax array or a streamed view.
    dtype: the dtype wanted (None: keep it).

  Returns:
    A jax array on the default device, or the streamed view itself.
  """
  if is_streamed(images) or (isinstance(images, jax.Array) and dtype in (None, images.dtype)):
    return images
  return jax.device_put(np.asarray(images, dtype))


def take(images, rows):
  """`images[rows]`: an array for arrays, a view (nothing read) for streamed images.

  Args:
    images: an image array or a streamed view.
    rows: an index array.

  Returns:
    The selected rows: `images` itself (read-only use) when `rows` is every row in order, which a first
    block's working set is (a copy of a whole training split costs a tenth of a second).
  """
  if is_streamed(images):
    return images.take(rows)
  images, rows = np.asarray(images), np.asarray(rows)
  if rows.ndim == 1 and len(rows) == len(images) and np.array_equal(rows, np.arange(len(images))):
    return images
  return images[rows]


@dataclasses.dataclass(frozen=True)
class StreamedSplits:
  """The three splits of a streamed dataset: views, labels in memory, and the normalisation.

  Attributes:
    train: the training split; its images are `StreamedImages` views, its labels in memory.
    val: the validation split, likewise.
    test: the test split, likewise.
    mean: float32 [C] channel means of the training part.
    std: float32 [C] channel standard deviations of the training part.
  """

  train: Split  # images are `StreamedImages` views, labels in memory
  val: Split
  test: Split
  mean: np.ndarray
  std: np.ndarray


def streamed_splits(
  train_source,
  test_source,
  val_fraction: float,
  max_train: Optional[int],
  max_test: Optional[int],
  options: StreamOptions,
) -> StreamedSplits:
  """The in-memory path's splits as views: the first `max_train` training records, the last
  round(n · val_fraction) of them for validation, the first `max_test` test records; statistics from
  the training part (docs/method.md, the validation split).

  Args:
    train_source: the random-access source of the training records.
    test_source: the random-access source of the test records.
    val_fraction: the last fraction of the training records kept for validation, in (0, 1).
    max_train: use only the first N training records (None: all).
    max_test: use only the first N test records (None: all).
    options: the pipeline's threads, workers and memory budget.

  Returns:
    The `StreamedSplits`.

  Raises:
    DataError: the fraction leaves either split empty.
  """
  n = len(train_source) if max_train is None else min(max_train, len(train_source))
  n_test = len(test_source) if max_test is None else min(max_test, len(test_source))
  n_val = int(round(n * float(val_fraction)))
  if not 0.0 < float(val_fraction) < 1.0 or n_val < 1 or n - n_val < 1:
    raise DataError(
      f"val_fraction={val_fraction} of {n} training samples leaves {n - n_val} train and {n_val} validation "
      "samples; each needs at least 1: change val_fraction or use more data"
    )
  cut = n - n_val
  labels, test_labels = train_source.labels(n), test_source.labels(n_test)
  # The in-memory path sums statistics over 4096-image chunks; so does this one where such a chunk (uint8
  # and its float64 copy) fits the budget, and gives the same float32 mean and std, bit for bit. Larger
  # images sum in smaller chunks: the float64 sums then round differently, the float32 results by ≤ 1 ulp.
  pixels = int(np.prod(train_source.image_shape))
  chunk = int(max(1, min(STATS_CHUNK, options.memory_budget_mb * 2**20 // (9 * pixels))))
  mean, std = channel_stats(train_source.read(np.arange(s, min(s + chunk, cut)))[0] for s in range(0, cut, chunk))
  view = lambda source, rows: StreamedImages(source, rows, mean, std, options)
  return StreamedSplits(
    train=Split(view(train_source, np.arange(cut)), labels[:cut]),
    val=Split(view(train_source, np.arange(cut, n)), labels[cut:]),
    test=Split(view(test_source, np.arange(n_test)), test_labels),
    mean=mean,
    std=std,
  )

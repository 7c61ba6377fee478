"""A dataset's fingerprint: each split's row count and a hash of what the run reads, so a run resumed, or
trained again, on changed data is caught instead of mixing blocks trained on two data sets.

A split in memory is hashed whole (its labels, then its images as the run reads them: after loading and
normalisation); a streamed split (`streaming.StreamedImages`) by its labels, record numbers and
normalisation, not its pixels (reading every record back would cost a pass over the data).
"""

from __future__ import annotations

import hashlib
from typing import Optional

import numpy as np

from quicknets_jax.data.split import Split

SPLITS = ("train", "val", "test")
_CHUNK_ROWS = 4096  # hashed in slices: no copy of a whole split in memory at once


def split_fingerprint(split: Split) -> dict:
  """The row count and sha256 of one split.

  Args:
    split: the split's images (an array or a streamed view) and labels.

  Returns:
    A dict `{"rows": N, "sha256": hex}`.
  """
  digest = hashlib.sha256()
  labels = np.ascontiguousarray(np.asarray(split.labels))
  digest.update(str(labels.dtype).encode())
  digest.update(labels.tobytes())
  images = split.images
  if hasattr(images, "rows") and hasattr(images, "source"):  # a streamed view: what it reads, not pixels
    for part in (images.rows, images.mean, images.std):
      digest.update(np.ascontiguousarray(part).tobytes())
  else:
    digest.update(f"{images.dtype}{tuple(images.shape)}".encode())
    for start in range(0, len(labels), _CHUNK_ROWS):
      digest.update(np.ascontiguousarray(np.asarray(images[start : start + _CHUNK_ROWS])).tobytes())
  return dict(rows=int(len(labels)), sha256=digest.hexdigest())


def dataset_fingerprint(dataset) -> dict:
  """Every split's `split_fingerprint` and the class count.

  Args:
    dataset: a `datasets.Dataset`.

  Returns:
    A JSON-ready dict: {"train": ..., "val": ..., "test": ..., "num_classes": C}.
  """
  return dict(
    {name: split_fingerprint(getattr(dataset, name)) for name in SPLITS}, num_classes=int(dataset.num_classes)
  )


def differences(stored: Optional[dict], current: dict) -> list[str]:
  """What changed between two fingerprints, one phrase per split (empty: the same data).

  Args:
    stored: the fingerprint a run recorded (None: it recorded none, so nothing to compare).
    current: the fingerprint of the data now.

  Returns:
    Phrases like "train: 600 rows (sha256 1a2b3c4d) → 600 rows (sha256 9f8e7d6c)".
  """
  if not stored:
    return []
  changed = []
  for name in SPLITS:
    before, after = stored.get(name), current[name]
    if before is not None and before != after:
      changed.append(
        f"{name}: {before['rows']} rows (sha256 {before['sha256'][:8]}) → "
        f"{after['rows']} rows (sha256 {after['sha256'][:8]})"
      )
  if stored.get("num_classes", current["num_classes"]) != current["num_classes"]:
    changed.append(f"classes: {stored['num_classes']} → {current['num_classes']}")
  return changed

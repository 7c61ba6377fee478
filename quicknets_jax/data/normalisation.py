"""Per-channel standardisation, shared by the in-memory and the streamed input paths so that both give
the same float32 images, bit for bit: statistics summed in float64 over 4096-image chunks, then
`(pixels / 255 − mean) / std` in float32 in one order of operations."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from quicknets_jax.data.errors import DataError

STATS_CHUNK = 4096


def with_channel(images: np.ndarray) -> np.ndarray:
  """[N, H, W] images with a channel axis appended; [N, H, W, C] unchanged."""
  return images[..., None] if images.ndim == 3 else images


def channel_stats(chunks: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """(mean, std), float32 [C] in [0, 1] pixel units, of the pixels in `chunks` (uint8 [n, H, W, C] each)."""
  total = total_sq = None
  count = 0
  for chunk in chunks:
    c = chunk.shape[-1]
    # float64 per chunk: one float64 copy of CIFAR's training set would take ~1 GB
    x = chunk.reshape(-1, c).astype(np.float64) / 255.0
    total = x.sum(0) if total is None else total + x.sum(0)
    total_sq = (x * x).sum(0) if total_sq is None else total_sq + (x * x).sum(0)
    count += x.shape[0]
  if count == 0:
    raise DataError("cannot normalise an empty training set: use more training samples")
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
  # A constant channel (std 0) would divide by zero; leaving it unscaled keeps it at 0.
  std = np.where(std < 1e-6, 1.0, std)
  return mean.astype(np.float32), std.astype(np.float32)


def standardise(x: np.ndarray, mean32: np.ndarray, std32: np.ndarray) -> np.ndarray:
  """float32 `(x / 255 − mean) / std` for integer pixels (`(x − mean) / std` for float inputs)."""
  out = x.astype(np.float32)
  if np.issubdtype(x.dtype, np.integer):
    out *= np.float32(1.0 / 255.0)
  out -= mean32
  out /= std32
  return out

"""Per-channel standardisation, shared by the in-memory and the streamed input paths so that both give
the same float32 images, bit for bit: statistics summed in float64 over 4096-image chunks, then
`(pixels / 255 − mean) / std` in float32 in one order of operations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

from quicknets_jax.data.errors import DataError

STATS_CHUNK = 4096


def with_channel(images: np.ndarray) -> np.ndarray:
  """[N, H, W] images with a channel axis appended; [N, H, W, C] unchanged.

  Args:
    images: [N, H, W] or [N, H, W, C] images.

  Returns:
    [N, H, W, C] images (a view).
  """
  return images[..., None] if images.ndim == 3 else images


def channel_stats(chunks: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """(mean, std), float32 [C] in [0, 1] pixel units, of the pixels in `chunks` (uint8 [n, H, W, C] each).

  A constant channel (std 0) gets std 1, so it stays at 0 instead of dividing by zero.

  Args:
    chunks: the training images, chunk by chunk.

  Returns:
    (mean, std), each float32 [C].

  Raises:
    DataError: there are no pixels (an empty training set).
  """
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
  """float32 `(x / 255 − mean) / std` for integer pixels (`(x − mean) / std` for float inputs).

  Args:
    x: [N, H, W, C] images, integer pixels or floats.
    mean32: float32 [C] channel means.
    std32: float32 [C] channel standard deviations.

  Returns:
    float32 [N, H, W, C] standardised images.
  """
  out = x.astype(np.float32)
  if np.issubdtype(x.dtype, np.integer):
    out *= np.float32(1.0 / 255.0)
  out -= mean32
  out /= std32
  return out


@dataclasses.dataclass(frozen=True)
class Normalisation:
  """How raw inputs become the network's: `(raw / divisor − mean) / std`, per channel, in float32.

  The built-in datasets read uint8 pixels (divisor 255, their training split's mean and std); arrays a
  user trains on as they are have the identity (`Normalisation.identity`). Prediction and the exported
  cascade apply it to what they are given.

  Attributes:
    mean: per channel (one value each for all channels alike).
    std: per channel, likewise.
    divisor: what raw values are divided by first.
  """

  mean: tuple[float, ...]
  std: tuple[float, ...]
  divisor: float = 255.0

  @classmethod
  def identity(cls, channels: int = 1) -> Normalisation:
    """Inputs used as they are: divisor 1, mean 0, std 1 (exact in float32).

    Args:
      channels: the number of channels.

    Returns:
      The identity normalisation.
    """
    return cls((0.0,) * channels, (1.0,) * channels, 1.0)

  @classmethod
  def of(cls, mean: Sequence[float], std: Sequence[float], divisor: float = 255.0) -> Normalisation:
    """From array-likes (e.g. a dataset's float32 statistics).

    Args:
      mean: per-channel means.
      std: per-channel standard deviations.
      divisor: what raw values are divided by first.

    Returns:
      The normalisation, with plain Python floats.
    """
    flat = lambda a: tuple(float(v) for v in np.asarray(a, np.float64).reshape(-1))
    return cls(flat(mean), flat(std), float(divisor))

  def apply(self, raw) -> np.ndarray:
    """float32 inputs for `raw` ([N, H, W, C], any numeric dtype).

    Args:
      raw: [N, H, W, C] raw inputs.

    Returns:
      float32 [N, H, W, C] network inputs.
    """
    mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
    return ((np.asarray(raw, np.float32) / np.float32(self.divisor)) - mean) / std

  def card(self) -> dict:
    """The JSON form (a workdir's data.json, an exported cascade's manifest).

    Returns:
      {"mean", "std", "divisor"}.
    """
    return dict(mean=list(self.mean), std=list(self.std), divisor=self.divisor)

  @classmethod
  def from_card(cls, card: dict) -> Normalisation:
    """From `card()`'s form; a card without a divisor is of uint8 pixels (255).

    Args:
      card: a dict with "mean", "std" and optionally "divisor".

    Returns:
      The normalisation.
    """
    return cls.of(card["mean"], card["std"], card.get("divisor", 255.0))

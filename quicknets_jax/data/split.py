"""`Split`: one labelled array pair — the bundle every function that trains or evaluates takes."""

from __future__ import annotations

from typing import Any, NamedTuple


class Split(NamedTuple):
  """Inputs and their labels, row for row.

  Attributes:
    images: float32 [N, ...]: images, features computed from them, or a streamed view of images
      (`data.streaming.StreamedImages`).
    labels: int32 [N] targets (class indices; 0/1 for a commitment head).
  """

  images: Any
  labels: Any

  @classmethod
  def of(cls, pair) -> Split:
    """A `Split` from a Split or an (images, labels) pair.

    Args:
      pair: a `Split`, or an (images, labels) pair of arrays of the same length.

    Returns:
      `pair` itself when it is a `Split`, else a new one.

    Raises:
      ValueError: `pair` is not two arrays of the same length.
    """
    if isinstance(pair, cls):
      return pair
    try:
      images, labels = pair
    except (TypeError, ValueError):
      raise ValueError(f"expected (images, labels), got {type(pair).__name__}") from None
    if len(images) != len(labels):
      raise ValueError(f"images and labels differ in length: {len(images)} images, {len(labels)} labels")
    return cls(images, labels)

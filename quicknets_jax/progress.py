"""Progress lines for long loops: what is running, how fast, and how long it may still take."""

from __future__ import annotations

import sys
import time
from typing import Callable


def format_seconds(seconds: float) -> str:
  seconds = max(0.0, seconds)
  if seconds < 60:
    return f"{seconds:.0f}s"
  if seconds < 3600:
    return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
  return f"{seconds // 3600:.0f}h{(seconds % 3600) // 60:02.0f}m"


class EpochProgress:
  """Formats one line per epoch of a fit: samples left, losses, accuracies, rate and ETA.

  The ETA is an upper bound — early stopping usually ends a fit well before `max_epochs`.
  """

  def __init__(self, prefix: str, max_epochs: int, log: Callable[[str], None] = print):
    self.prefix, self.max_epochs, self.log = prefix, max_epochs, log

  def __call__(self, kind: str, state, record: dict) -> None:
    rate = record["samples"] / max(record["seconds"], 1e-9)
    remaining = 0 if record["stopped"] else (self.max_epochs - record["epoch"]) * record["seconds"]
    self.log(f"{self.prefix} {kind} epoch {record['epoch']:3d} | {record['samples']:6d} samples | "
             f"loss {record['train_loss']:.4f} acc {record['train_accuracy']:.4f} | "
             f"val loss {record['val_loss']:.4f} acc {record['val_accuracy']:.4f} | "
             f"lr {record['learning_rate']:.2g} | {rate / 1e3:.1f}k samples/s | "
             + ("stopped early" if record["stopped"] else f"eta ≤ {format_seconds(remaining)}"))


def stderr_log(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


class Timer:
  def __enter__(self):
    self.start = time.perf_counter()
    return self

  def __exit__(self, *exc):
    self.seconds = time.perf_counter() - self.start

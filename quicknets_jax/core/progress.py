"""Progress lines for long loops: what is running, how fast, and how long it may still take."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Optional, TextIO

# Where a run's progress and messages go: `print`, a logger's method, a list's `append` in tests.
Log = Callable[[str], None]


def format_seconds(seconds: float) -> str:
  """A duration as a short string: "42s", "3m05s" or "2h07m".

  Args:
    seconds: the duration; negative values read as 0.

  Returns:
    The formatted duration.
  """
  seconds = max(0.0, seconds)
  if seconds < 60:
    return f"{seconds:.0f}s"
  if seconds < 3600:
    return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
  return f"{seconds // 3600:.0f}h{(seconds % 3600) // 60:02.0f}m"


class EpochProgress:
  """Formats one line per epoch of a fit: samples left, losses, accuracies, rate and ETA.

  The ETA is an upper bound — early stopping usually ends a fit well before `max_epochs`. An instance
  is called with (kind, fit state, epoch record) after every epoch.

  Args:
    prefix: what starts every line (e.g. "[seed 0 quicknet]").
    max_epochs: the fit's epoch limit, for the ETA.
    log: where the lines go.

  Attributes:
    prefix: as given.
    max_epochs: as given.
    log: as given.
  """

  def __init__(self, prefix: str, max_epochs: int, log: Callable[[str], None] = print):
    self.prefix, self.max_epochs, self.log = prefix, max_epochs, log

  def __call__(self, kind: str, state, record: dict) -> None:
    rate = record["samples"] / max(record["seconds"], 1e-9)
    remaining = 0 if record["stopped"] else (self.max_epochs - record["epoch"]) * record["seconds"]
    self.log(
      f"{self.prefix} {kind} epoch {record['epoch']:3d} | {record['samples']:6d} samples | "
      f"loss {record['train_loss']:.4f} acc {record['train_accuracy']:.4f} | "
      f"val loss {record['val_loss']:.4f} acc {record['val_accuracy']:.4f} | "
      f"lr {record['learning_rate']:.2g} | {rate / 1e3:.1f}k samples/s | "
      + ("stopped early" if record["stopped"] else f"eta ≤ {format_seconds(remaining)}")
    )


class Progress:
  """A progress line for any long loop (sweeps, benchmarks, seeds): done/total, rate and ETA.

  On a terminal the line is redrawn in place at most every `min_interval` seconds and finished with a
  newline by `close()`; when `stream` is not a terminal (a log file, CI, a pipe) it writes nothing, so
  logs hold only the loop's own messages. `enabled=True` forces it on (tests), `False` off::

      with Progress(len(thresholds), "sweep", unit="thresholds") as progress:
        for t in thresholds:
          ...
          progress.update()

  Args:
    total: the number of items, or None when unknown.
    description: what the line starts with.
    unit: what an item is called.
    stream: where the line goes (default: stderr).
    enabled: force the line on (True) or off (False); None: on when `stream` is a terminal.
    min_interval: the shortest time between two redraws, in seconds.

  Attributes:
    total: as given.
    description: as given.
    unit: as given.
    stream: where the line goes.
    enabled: whether the line is drawn.
    min_interval: as given.
    done: items counted so far.
    start: `time.perf_counter()` when the loop started.
  """

  def __init__(
    self,
    total: Optional[int],
    description: str = "",
    unit: str = "it",
    stream: TextIO = None,
    enabled: Optional[bool] = None,
    min_interval: float = 0.2,
  ):
    self.total, self.description, self.unit = total, description, unit
    self.stream = sys.stderr if stream is None else stream
    if enabled is None:
      isatty = getattr(self.stream, "isatty", None)
      enabled = bool(isatty and isatty())
    self.enabled, self.min_interval = enabled, min_interval
    self.done = 0
    self.start = time.perf_counter()
    self._last_draw = -float("inf")
    self._width = 0

  def line(self) -> str:
    """The current progress line: `description done/total unit | rate | elapsed | eta`.

    Returns:
      The line, without a carriage return.
    """
    elapsed = time.perf_counter() - self.start
    rate = self.done / elapsed if elapsed > 0 else 0.0
    count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
    text = f"{self.description} {count} {self.unit} | {rate:.3g} {self.unit}/s | {format_seconds(elapsed)}"
    if self.total and rate > 0:
      text += f" | eta {format_seconds((self.total - self.done) / rate)}"
    return text.strip()

  def update(self, n: int = 1, note: str = "") -> None:
    """Counts `n` more items done; redraws the line (with `note` after it) when enough time passed.

    Args:
      n: items done since the last call.
      note: text shown after the line.
    """
    self.done += n
    now = time.perf_counter()
    if not self.enabled or (now - self._last_draw < self.min_interval and self.done != self.total):
      return
    self._last_draw = now
    text = self.line() + (f" | {note}" if note else "")
    self.stream.write("\r" + text.ljust(self._width))  # pad: a shorter line must cover the last one
    self.stream.flush()
    self._width = len(text)

  def close(self) -> None:
    """Ends the line on a terminal (nothing otherwise)."""
    if self.enabled and self._width:
      self.stream.write("\n")
      self.stream.flush()
      self._width = 0

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def track(
  iterable: Iterable,
  description: str = "",
  total: Optional[int] = None,
  unit: str = "it",
  stream: TextIO = None,
  enabled: Optional[bool] = None,
) -> Iterator:
  """Yields from `iterable` while showing a `Progress` line (on a terminal only).

  Args:
    iterable: the items.
    description: what the line starts with.
    total: the number of items (default: `len(iterable)` where it has one).
    unit: what an item is called.
    stream: where the line goes (default: stderr).
    enabled: as `Progress`'s.

  Yields:
    The items of `iterable`, in order.
  """
  if total is None and hasattr(iterable, "__len__"):
    total = len(iterable)
  with Progress(total, description, unit, stream, enabled) as progress:
    for item in iterable:
      yield item
      progress.update()


def stderr_log(message: str) -> None:
  """Prints `message` on stderr at once (the library's default log for progress lines).

  Args:
    message: one line.
  """
  print(message, file=sys.stderr, flush=True)

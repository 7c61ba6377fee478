"""What a run reports while it trains: progress lines, JSON lines a script can read, TensorBoard events
a person can browse.

`MetricsWriter(workdir)` appends one JSON object per epoch to `WORKDIR/metrics.jsonl` and writes the
same numbers as TensorBoard scalars under `WORKDIR/tensorboard/<run>/` with tensorboardX's protos, which
need no TensorFlow (`tensorboard --logdir WORKDIR/tensorboard` shows them; TensorBoard itself is not
a dependency). Both are written in the training thread, one unbuffered write per line or event: a
reader sees every finished epoch, and a full disk is the run's own error, not a writer thread's. Every line carries the keys of `REQUIRED_KEYS`: which block, which epoch, how many
training samples are left in the working set, train loss and accuracy, the learning rate, the
cumulative training FLOPs so far (counted as the method page, docs/method.md, describes) and the wall
time so far.

The cumulative FLOPs are those the algorithms report with each epoch (`training.events`), counted by
the same cost model as the results, so the last line of a finished block or baseline equals its total
in the results (up to the block's final selection pass, which runs after its last epoch).
`QuickNetMetrics`, `EndToEndMetrics` and `ProgressLines` are the listeners.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Optional

from quicknets_jax.core import costs, files
from quicknets_jax.core.progress import EpochProgress
from quicknets_jax.training import parallel
from quicknets_jax.training.events import BlockFrozen, EpochDone, Events

# Keys every line of metrics.jsonl has; `val_*`, `test_accuracy`, `phase`, ... come on top.
REQUIRED_KEYS = (
  "run",
  "seed",
  "model",
  "phase",
  "block",
  "epoch",
  "samples_left",
  "loss",
  "accuracy",
  "learning_rate",
  "training_flops",
  "wall_seconds",
)
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class _EventFile:
  """A TensorBoard event file (TFRecord framing, tensorboardX's protos) written in the caller's thread,
  opened for each event and written in one unbuffered call. tensorboardX's SummaryWriter writes from a thread of its own and again
  at exit, where a full disk becomes tracebacks after the run's own one-line error; here a failed write
  is the caller's `OSError`, naming this file."""

  def __init__(self, folder: str):
    from tensorboardX.proto import event_pb2

    os.makedirs(folder, exist_ok=True)
    self.path = os.path.join(folder, f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}")
    self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

  def _write(self, event) -> None:
    from tensorboardX.record_writer import masked_crc32c

    data = event.SerializeToString()
    header = struct.pack("<Q", len(data))
    with files.named_errors(self.path), open(self.path, "ab", buffering=0) as f:
      f.write(header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data)))

  def write(self, scalars: dict, step: int, wall_time: float) -> None:
    """Writes `scalars` ({tag: number}) as one event at `step`."""
    from tensorboardX.proto import event_pb2, summary_pb2

    values = [summary_pb2.Summary.Value(tag=tag, simple_value=float(v)) for tag, v in scalars.items()]
    self._write(event_pb2.Event(summary=summary_pb2.Summary(value=values), step=step, wall_time=wall_time))


class MetricsWriter:
  """Appends metric lines to WORKDIR/metrics.jsonl and mirrors them as TensorBoard scalars.

  A resumed run appends: lines of a block that was interrupted and retrained appear twice, the later
  ones are the block that counts (they carry a later `time`). In a multi-process run only process 0
  writes (`parallel.is_writer`); on the others every call is a no-op.

  Args:
    workdir: the run's folder (created if missing).
    tensorboard: also write TensorBoard event files.

  Attributes:
    workdir: as given.
    path: the metrics.jsonl file.

  Raises:
    ImportError: `tensorboard` is True and tensorboardX is not installed (raised before any training).
  """

  def __init__(self, workdir: str, tensorboard: bool = True):
    self.workdir = workdir
    self.path = os.path.join(workdir, METRICS_FILE)
    self._writes = parallel.is_writer()
    if self._writes:
      os.makedirs(workdir, exist_ok=True)
      _drop_a_cut_off_line(self.path)
    self._tensorboard = tensorboard and self._writes
    self._writers = {}
    if tensorboard:
      try:
        import tensorboardX  # noqa: F401  (fail here, before training, not at the first epoch)
      except ImportError as e:
        raise ImportError(
          "tensorboardX is missing: pip install tensorboardX (or -r requirements.txt), or pass tensorboard=False"
        ) from e

  def _writer(self, run: str) -> _EventFile:
    if run not in self._writers:
      self._writers[run] = _EventFile(os.path.join(self.workdir, TENSORBOARD_DIR, run))
    return self._writers[run]

  def write(self, line: dict, step: Optional[int] = None) -> None:
    """Writes one metrics line (a flat dict with at least `run`); numbers also go to TensorBoard.

    Tags are `<phase>/<key>`, so the QuickNet's block epochs and the end-to-end epochs overlay under the
    same tag.

    Args:
      line: the metrics, a flat dict with at least `run`; a `time` is added.
      step: the TensorBoard step (default: the line's `epoch`).
    """
    if not self._writes:
      return
    line = dict(line, time=time.time())
    # opened for each line, one unbuffered write: a line is whole or absent, a reader sees every finished
    # epoch, and no file stays open for writing between epochs
    with files.named_errors(self.path), open(self.path, "ab", buffering=0) as f:
      f.write((json.dumps(line) + "\n").encode())
    if not self._tensorboard:
      return
    step = int(line.get("epoch", 0) if step is None else step)
    phase = line.get("phase", "train")
    scalars = {
      f"{phase}/{key}": value
      for key, value in line.items()
      if key not in ("run", "seed", "model", "phase", "epoch", "time")
      and isinstance(value, (int, float))
      and not isinstance(value, bool)
    }
    self._writer(line["run"]).write(scalars, step, line["time"])

  def close(self) -> None:
    """Ends the writer (each line and event was written whole when it came; no file is held open)."""
    self._writers = {}

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _drop_a_cut_off_line(path: str) -> None:
  """Truncates `path` after its last newline: a run killed while writing a line leaves part of it, which
  the next line would otherwise be glued onto."""
  if not os.path.exists(path) or os.path.getsize(path) == 0:
    return
  with open(path, "rb+") as f:
    data = f.read()
    if not data.endswith(b"\n"):
      f.truncate(data.rfind(b"\n") + 1)


def read_metrics(workdir: str) -> list:
  """Every line of WORKDIR/metrics.jsonl as a dict ([] when there is none).

  A last line without its newline (a run killed while writing it, or one still writing) is left out.

  Args:
    workdir: the run's folder.

  Returns:
    The lines, in the order written.

  Raises:
    ValueError: a line is not JSON (one line naming the file, the line number and the fix).
  """
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  lines = []
  with open(path) as f:
    for number, text in enumerate(f, 1):
      if not text.endswith("\n") or not text.strip():
        continue
      try:
        lines.append(json.loads(text))
      except json.JSONDecodeError:
        raise ValueError(
          f"{path}, line {number}, is not a metrics record: delete that line (the others stay readable)"
        ) from None
  return lines


def _epoch_fields(record: dict) -> dict:
  return dict(
    epoch=record["epoch"],
    samples_left=record.get("working_set", record["samples"]),  # an epoch may draw more than are left
    loss=record["train_loss"],
    accuracy=record["train_accuracy"],
    val_loss=record["val_loss"],
    val_accuracy=record["val_accuracy"],
    learning_rate=record["learning_rate"],
    epoch_seconds=record["seconds"],
    compile_seconds=record.get("compile_seconds", 0.0),  # of the epoch's seconds (records before it: 0)
  )


class ProgressLines(Events):
  """One progress line per epoch (`core.progress.EpochProgress`) for every fit of a run.

  Args:
    prefix: what starts every line (e.g. "[seed 0 quicknet]").
    max_epochs: the fits' epoch limit, for the ETA.
    log: where the lines go.

  Attributes:
    progress: the line formatter.
  """

  def __init__(self, prefix: str, max_epochs: int, log: Callable[[str], None]):
    self.progress = EpochProgress(prefix, max_epochs, log)

  def epoch_done(self, event: EpochDone) -> None:
    """Writes the epoch's line.

    Args:
      event: the finished epoch.
    """
    self.progress(event.phase, event.state, event.record)


class QuickNetMetrics(Events):
  """One metrics line per epoch of one seed's QuickNet, with the training FLOPs and seconds so far.

  Args:
    writer: where the lines go.
    seed: the seed whose QuickNet this is.

  Attributes:
    writer: as given.
    seed: as given.
    run: the run's name in the log, "seed_<s>/quicknet".
    done_seconds: the seconds of the frozen blocks (their records').
  """

  def __init__(self, writer: MetricsWriter, seed: int):
    self.writer, self.seed = writer, seed
    self.run = f"seed_{seed}/quicknet"
    self.done_seconds = 0.0  # the seconds of the frozen blocks (their records')
    self.start = time.perf_counter()
    self.step = 0

  def block_frozen(self, event: BlockFrozen) -> None:
    """Adds the frozen block's seconds to the run's clock.

    Args:
      event: the frozen block.
    """
    self.done_seconds += float(event.record.seconds)
    self.start = time.perf_counter()

  def epoch_done(self, event: EpochDone) -> None:
    """Writes the epoch's line (with the deployable cascade's test accuracy where the epoch measured it).

    Args:
      event: the finished epoch.
    """
    self.step += 1
    line = dict(
      **{k: event.record[k] for k in ("cascade_test_accuracy", "cascade_threshold") if k in event.record},
      run=self.run,
      seed=self.seed,
      model="quicknet",
      phase=event.phase,
      block=event.block,
      **_epoch_fields(event.record),
      training_flops=event.training_flops,
      wall_seconds=self.done_seconds + (time.perf_counter() - self.start),
    )
    self.writer.write(line, step=self.step)

  def after_blocks(self, result: dict) -> None:
    """One line per trained block with the test accuracy of the QuickNet cut after it (from the
    evaluation of the finished seed), at the cumulative training FLOPs up to that block.

    Args:
      result: the finished seed's QuickNet results.
    """
    parts = result.get("training_flops_parts", [])
    accuracies = result.get("test_accuracy_after_block", [])
    total = 0.0
    for j, (part, accuracy) in enumerate(zip(parts, accuracies)):
      total += costs.total(part)
      self.writer.write(
        dict(
          run=self.run,
          seed=self.seed,
          model="quicknet",
          phase="after_block",
          block=j,
          epoch=j + 1,
          samples_left=result["train_samples_per_block"][j],
          test_accuracy=accuracy,
          training_flops=total,
        ),
        step=j + 1,
      )


class EndToEndMetrics(Events):
  """One metrics line per epoch of one seed's end-to-end network; with `test_eval`, the test accuracy
  after every epoch too (added to the epoch's record, i.e. its history entry; kept off the reported
  training time through `seconds`).

  Args:
    writer: where the lines go (None: only the test accuracy is recorded).
    seed: the seed whose network this is.
    test_eval: (params, model state) -> test accuracy, or None.

  Attributes:
    writer: as given.
    seed: as given.
    run: the run's name in the log, "seed_<s>/end_to_end".
    test_eval: as given.
    seconds: time spent here, which the caller takes off the run's training seconds.
  """

  def __init__(self, writer: Optional[MetricsWriter], seed: int, test_eval=None):
    self.writer, self.seed = writer, seed
    self.run = f"seed_{seed}/end_to_end"
    self.test_eval = test_eval
    self.start = time.perf_counter()
    self.seconds = 0.0  # time spent here, which the caller takes off the run's training seconds

  def epoch_done(self, event: EpochDone) -> None:
    """Measures the test accuracy (with `test_eval`) and writes the epoch's line.

    Args:
      event: the finished epoch.
    """
    start = time.perf_counter()
    record = event.record
    if self.test_eval is not None:
      record["test_accuracy"] = float(self.test_eval(event.state.params, event.state.model_state))
    line = dict(
      run=self.run,
      seed=self.seed,
      model="end_to_end",
      phase=event.phase,
      block=None,
      **_epoch_fields(record),
      training_flops=event.training_flops,
      wall_seconds=time.perf_counter() - self.start - self.seconds,
    )
    if "test_accuracy" in record:
      line["test_accuracy"] = record["test_accuracy"]
    if self.writer is not None:
      self.writer.write(line)
    self.seconds += time.perf_counter() - start

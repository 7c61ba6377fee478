"""Per-epoch metrics while a run trains: JSON lines a script can read, TensorBoard events a person can browse.

`MetricsWriter(workdir)` appends one JSON object per epoch to `WORKDIR/metrics.jsonl` and writes the
same numbers as TensorBoard scalars under `WORKDIR/tensorboard/<run>/` through tensorboardX, which
needs no TensorFlow (`tensorboard --logdir WORKDIR/tensorboard` shows them; TensorBoard itself is not
a dependency). Every line carries the keys of `REQUIRED_KEYS`: which block, which epoch, how many
training samples are left in the working set, train loss and accuracy, the learning rate, the
cumulative training FLOPs so far (design.md §2's convention) and the wall time so far.

The cumulative FLOPs are counted as `quicknet.train_block` and `train_end_to_end` count them, epoch by
epoch, so the last line of a finished block or baseline equals its total in the results (up to the
block's final selection pass, which runs after its last epoch). `QuickNetTracker` and
`EndToEndTracker` turn the trainer's `on_epoch(kind, state, record)` callbacks into such lines.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from quicknets_jax.quicknet import finetune_epoch_flops, uses_feature_cache

# Keys every line of metrics.jsonl has (issue 7); `val_*`, `test_accuracy`, `phase`, ... come on top.
REQUIRED_KEYS = ("run", "seed", "model", "phase", "block", "epoch", "samples_left", "loss", "accuracy",
                 "learning_rate", "training_flops", "wall_seconds")
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricsWriter:
  """Appends metric lines to WORKDIR/metrics.jsonl and mirrors them as TensorBoard scalars.

  A resumed run appends: lines of a block that was interrupted and retrained appear twice, the later
  ones are the block that counts (they carry a later `time`).
  """

  def __init__(self, workdir: str, tensorboard: bool = True):
    os.makedirs(workdir, exist_ok=True)
    self.workdir = workdir
    self.path = os.path.join(workdir, METRICS_FILE)
    self._file = open(self.path, "a")
    self._tensorboard = tensorboard
    self._writers = {}
    if tensorboard:
      try:
        import tensorboardX  # noqa: F401  (fail here, before training, not at the first epoch)
      except ImportError as e:
        raise ImportError("tensorboardX is missing: pip install tensorboardX (or -r requirements.txt), "
                          "or pass tensorboard=False") from e

  def _writer(self, run: str):
    if run not in self._writers:
      from tensorboardX import SummaryWriter
      self._writers[run] = SummaryWriter(os.path.join(self.workdir, TENSORBOARD_DIR, run), flush_secs=10)
    return self._writers[run]

  def write(self, line: dict, step: Optional[int] = None) -> None:
    """Writes one metrics line (a flat dict with at least `run`); numbers also go to TensorBoard.

    `step` is the TensorBoard step (default: the line's `epoch`). Tags are `<phase>/<key>`, so the
    QuickNet's block epochs and the end-to-end epochs overlay under the same tag.
    """
    line = dict(line, time=time.time())
    self._file.write(json.dumps(line) + "\n")
    self._file.flush()  # a reader (or a killed run) sees every finished epoch
    if not self._tensorboard:
      return
    writer = self._writer(line["run"])
    step = int(line.get("epoch", 0) if step is None else step)
    phase = line.get("phase", "train")
    for key, value in line.items():
      if key in ("run", "seed", "model", "phase", "epoch", "time") or isinstance(value, bool):
        continue
      if isinstance(value, (int, float)):
        writer.add_scalar(f"{phase}/{key}", value, step, walltime=line["time"])

  def flush(self) -> None:
    self._file.flush()
    for writer in self._writers.values():
      writer.flush()

  def close(self) -> None:
    """Flushes and closes the log file and every event file."""
    for writer in self._writers.values():
      writer.close()
    self._writers = {}
    self._file.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def read_metrics(workdir: str) -> list:
  """Every line of WORKDIR/metrics.jsonl as a dict ([] when there is none)."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  lines = []
  with open(path) as f:
    for text in f:
      if text.strip():
        lines.append(json.loads(text))
  return lines


def _epoch_fields(record: dict) -> dict:
  return dict(epoch=record["epoch"], samples_left=record["samples"], loss=record["train_loss"],
              accuracy=record["train_accuracy"], val_loss=record["val_loss"],
              val_accuracy=record["val_accuracy"], learning_rate=record["learning_rate"],
              epoch_seconds=record["seconds"])


class QuickNetTracker:
  """Turns one seed's QuickNet `on_epoch` callbacks into metric lines with cumulative FLOPs.

  The trainer's callback does not say which block is training nor how large the block's validation
  working set is; both follow from the checkpoints: `wrap(checkpointer)` returns a checkpointer that
  tells the tracker when a block is frozen (and what is left of the working sets) and which blocks a
  resumed run restored.
  """

  def __init__(self, writer: MetricsWriter, model, seed: int, num_train: int, num_val: int, config):
    """`config`: the run's QuickNetConfig (it says whether each block's prefix features are cached)."""
    self.writer, self.model, self.seed = writer, model, seed
    self.run = f"seed_{seed}/quicknet"
    self.num_train_total, self.num_val_total = num_train, num_val
    self.config = config
    self.block = 0
    self.num_val = num_val
    self.done_flops = 0.0  # exact totals of frozen blocks (BlockRecord.flops)
    self.done_seconds = 0.0
    self.block_epochs = 0
    self.step = 0
    self.start = time.perf_counter()
    self.seconds = 0.0  # time spent in this tracker, kept off the reported training time

  # -- checkpointer hooks -------------------------------------------------------------------------
  def wrap(self, checkpointer):
    """A checkpointer that forwards to `checkpointer` and keeps this tracker in step with the blocks."""
    return _TrackingCheckpointer(checkpointer, self)

  def _block_frozen(self, record, num_val_next: int) -> None:
    self.done_flops += float(sum(record.flops.values()))
    self.done_seconds += float(record.seconds)
    self.block = record.block + 1
    # train_quicknet validates on the whole split again once every validation sample was learned
    self.num_val = num_val_next or self.num_val_total
    self.block_epochs = 0
    self.start = time.perf_counter()

  # -- per epoch ----------------------------------------------------------------------------------
  def _flops(self, kind: str, epoch: int, num_train: int) -> float:
    """Cumulative training FLOPs after `epoch` of `kind`, by train_block's accounting."""
    j, n_val = self.block, self.num_val
    costs = self.model.block_costs
    prefix = float(sum(c.subnet for c in costs[:j]))
    trainable = costs[j].subnet + costs[j].exit_head
    cached = uses_feature_cache(self.model, j, self.config, self.num_train_total, self.num_val_total)
    recompute = 0.0 if cached else prefix
    cache = n_val * prefix + (num_train * prefix if cached else 0.0)
    per_epoch = num_train * (3 * trainable + recompute) + n_val * (trainable + recompute)
    if kind == "block":
      return self.done_flops + cache + epoch * per_epoch
    # commitment: the block's epochs are done, its outputs on T_j and V_j were computed once
    commit = costs[j].commit_head
    cache += (0.0 if cached else num_train * prefix) + (num_train + n_val) * trainable
    return (self.done_flops + cache + self.block_epochs * per_epoch
            + epoch * (num_train * 3 * commit + n_val * commit))

  def on_epoch(self, kind: str, state, record: dict) -> None:
    """The trainer's callback: one metrics line per block or commitment epoch."""
    del state
    start = time.perf_counter()
    if kind == "block":
      self.block_epochs = record["epoch"]
    self.step += 1
    if kind == "finetune":  # QuickNet+: every trained block at once, after the last was frozen
      self.finetune_flops = finetune_epoch_flops(self.model, self.block, record["samples"], self.num_val_total)
      flops = self.done_flops + record["epoch"] * self.finetune_flops
    elif kind == "recommit":  # the heads' own FLOPs are small; the total is exact in results.json
      flops = None
    else:
      flops = self._flops(kind, record["epoch"], record["samples"])
    line = dict(run=self.run, seed=self.seed, model="quicknet", phase=kind, block=self.block,
                **_epoch_fields(record),
                training_flops=flops,
                wall_seconds=self.done_seconds + (time.perf_counter() - self.start))
    self.writer.write(line, step=self.step)
    self.seconds += time.perf_counter() - start

  def after_blocks(self, result: dict) -> None:
    """One line per trained block with the test accuracy of the QuickNet cut after it (from the
    evaluation of the finished seed), at the cumulative training FLOPs up to that block."""
    parts = result.get("training_flops_parts", [])
    accuracies = result.get("test_accuracy_after_block", [])
    total = 0.0
    for j, (part, accuracy) in enumerate(zip(parts, accuracies)):
      total += sum(v for k, v in part.items() if k != "block")
      self.writer.write(dict(run=self.run, seed=self.seed, model="quicknet", phase="after_block", block=j,
                             epoch=j + 1, samples_left=result["train_samples_per_block"][j],
                             test_accuracy=accuracy, training_flops=total), step=j + 1)


class _TrackingCheckpointer:
  """Forwards to a BlockCheckpointer and reports saves and restores to a QuickNetTracker."""

  def __init__(self, inner, tracker: QuickNetTracker):
    self._inner, self._tracker = inner, tracker

  def save(self, block, variables, record, train_idx, val_idx):
    self._inner.save(block, variables, record, train_idx, val_idx)
    self._tracker._block_frozen(record, len(val_idx))

  def restore(self, init_variables):
    variables, records, remaining = self._inner.restore(init_variables)
    for record in records:
      self._tracker._block_frozen(record, len(remaining[1]) if record is records[-1] else 0)
    return variables, records, remaining

  def fit_checkpointer(self, kind, block):
    checkpoint = self._inner.fit_checkpointer(kind, block)
    if kind == "block":  # a block fit that had finished before a restart reports no epoch again
      self._tracker.block_epochs = checkpoint.latest_epoch() or 0
    return checkpoint

  def close(self):
    return self._inner.close()

  def __getattr__(self, name):
    return getattr(self._inner, name)


class EndToEndTracker:
  """Turns one seed's end-to-end `on_epoch` callbacks into metric lines; optionally measures the test
  accuracy after every epoch (one forward pass over the test split, kept off the reported time)."""

  def __init__(self, writer: Optional[MetricsWriter], model, seed: int, num_train: int, num_val: int,
               test_eval=None):
    self.writer, self.seed = writer, seed
    self.run = f"seed_{seed}/end_to_end"
    forward = model.end_to_end_cost()
    self.per_epoch = num_train * 3 * forward + num_val * forward  # train_end_to_end's accounting
    self.test_eval = test_eval
    self.start = time.perf_counter()
    self.seconds = 0.0

  def on_epoch(self, kind: str, state, record: dict) -> None:
    """The trainer's callback; adds `test_accuracy` to `record` (it is the history entry)."""
    start = time.perf_counter()
    if self.test_eval is not None:
      record["test_accuracy"] = float(self.test_eval(state.params, state.model_state))
    line = dict(run=self.run, seed=self.seed, model="end_to_end", phase=kind, block=None,
                **_epoch_fields(record), training_flops=record["epoch"] * self.per_epoch,
                wall_seconds=time.perf_counter() - self.start - self.seconds)
    if "test_accuracy" in record:
      line["test_accuracy"] = record["test_accuracy"]
    if self.writer is not None:
      self.writer.write(line)
    self.seconds += time.perf_counter() - start


def end_to_end_test_eval(model, images, labels, batch_size: int):
  """(params, model_state) -> test accuracy of the end-to-end network's final exit.

  The test split is padded once to whole chunks of `batch_size` rows and a masked count runs per
  chunk, so the jitted count compiles once per process, whatever the split's size.
  """
  from quicknets_jax import losses
  loss_fn = losses.end_to_end_loss(model)
  n = len(labels)
  batch_size = min(batch_size, n)
  padded = -(-n // batch_size) * batch_size
  rows = np.minimum(np.arange(padded), n - 1)
  images = jnp.asarray(np.asarray(images)[rows])
  labels = jnp.asarray(np.asarray(labels, np.int32)[rows])
  mask = jnp.asarray(np.arange(padded) < n, jnp.float32)

  def accuracy(params, model_state):
    correct = sum(_correct_count(loss_fn, params, model_state, images[s:s + batch_size],
                                 labels[s:s + batch_size], mask[s:s + batch_size])
                  for s in range(0, padded, batch_size))
    return float(correct) / n

  return accuracy


@functools.partial(jax.jit, static_argnums=0)
def _correct_count(loss_fn, params, model_state, x, y, mask):
  _, correct, _ = loss_fn(params, model_state, x, y, None, False)
  return jnp.sum(correct * mask)

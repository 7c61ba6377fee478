"""The one trainer: QuickNet blocks, commitment heads, end-to-end baselines, SDN joint training and
decoupled blocks.

`run_epochs` is the one epoch loop. Around every epoch it times the steps and the validation pass,
stops on a non-finite loss, writes the epoch's record, tells the run's `Events` and saves its
checkpoint; a run resumed from that checkpoint ends exactly where an uninterrupted one would (every
random choice comes from `fold_in(key, epoch)` and then the step number). What an epoch trains and how
the schedule moves on is an `EpochRunner`'s:

- `SequentialRunner` (`fit`): Appendix A's schedule over one fit — Adam, reduce-on-plateau ×0.5 with
  patience 1, early stopping after 3 epochs without a new validation minimum, at most 100 epochs,
  best-validation params kept. Fits differ only in their `Objective` — a loss, the mask of the leaves
  that train, the loss's traced hyperparameters — never in the loop.
- `algorithms.decoupled.DecoupledRunner`: every block at once, a schedule per block
  (`schedule.BlockSchedules`), on one device or pipelined over several (`algorithms.pipeline`).

Every epoch runs the same pure step (`step.train_step`) over batches drawn on device from the working
set's index array (shuffled, or class-balanced), the last partial batch padded and masked. The drivers
that run it are chosen once per fit (`choose_drivers`), from what the loss declares (`convolves`) and
the settings:

- `steps_on_device`: the whole epoch inside one jit (`lax.fori_loop` over the steps);
- `steps_in_host_loop`: the same jitted step called from a Python loop, for losses that convolve on CPU
  (XLA:CPU runs convolutions inside a while loop ~40× slower than at the top level of a program);
- `steps_streamed`: the images of each step read from disk (`--input=stream`), the same rows in the
  same order as in memory;

with the matching validation passes. Each driver compiles its own programs ahead of a fit
(`compile_ahead`). The jitted programs are module-level functions whose non-array arguments
(`EpochPlan`, `EvalPlan`) are static and hashable: jax's own cache compiles each once per process for
every fit that shares them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple, Optional, Protocol, Union

import jax
import jax.numpy as jnp
import numpy as np

from quicknets_jax.core.progress import Log
from quicknets_jax.data.sampling import draw_epoch_padded, shuffle_keys_padded, stable_order
from quicknets_jax.data.split import Split
from quicknets_jax.data.streaming import device_array, is_streamed
from quicknets_jax.models import layers
from quicknets_jax.training import parallel
from quicknets_jax.training.checkpoint import FitCheckpointer
from quicknets_jax.training.compilation import CompileMeter
from quicknets_jax.training.events import EpochDone, Events
from quicknets_jax.training.optimizer import Adam, Mask
from quicknets_jax.training.schedule import BlockSchedules, FitConfig, Schedule, advance, monitored_score
from quicknets_jax.training.step import Batch, Loss, Statics, TrainState, eval_sums, train_step

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Objective:
  """What a fit optimises.

  Attributes:
    loss: the per-sample loss (`step.Loss`; the losses of `training.losses` are hashable by value, so
      fits with equal losses share compiled steps).
    trainable: a bool tree shaped like the params, True on the leaves that train; None: all of them.
    hparams: the loss's traced hyperparameters for training and validation (e.g. a commitment head's
      class weights), so fits that differ only in them share one compiled step; None: none.
    hparams_at: epoch number (1-based, the epoch about to run) → the hyperparameters of that epoch's
      training steps (SDN's growing exit weights); validation keeps `hparams`. Called on the host before
      each epoch, never traced; None: every epoch trains with `hparams`.
  """

  loss: Loss
  trainable: PyTree = None
  hparams: PyTree = None
  hparams_at: Optional[Callable[[int], PyTree]] = None


@dataclasses.dataclass(frozen=True)
class FitData:
  """The arrays a fit reads. Batches are gathered on device as `train.images[rows[order]]`.

  Attributes:
    train: training inputs (images, or features cached from a frozen prefix; a streamed view of images
      with `--input=stream`) and their targets.
    val: the validation inputs and targets (every row up to `num_val` is used).
    rows: int32 [n] the working set: rows of `train` that train.
    row_classes: int32 [n] the class of each working-set row, for class-balanced sampling.
    num_classes: the number of classes the targets take.
    num_val: validation rows that exist when `val` is padded (None: all of them).
    epoch_draws: samples an epoch draws from the working set (None: its size). More than its size needs
      class-balanced sampling, which draws with replacement (the authors' full-size epochs).
    bucket: the length the working set is padded to (None: `bucket_size` of its size). Fits whose working
      sets differ in size but not in bucket share one compiled epoch.
  """

  train: Split
  val: Split
  rows: Any
  row_classes: Any
  num_classes: int
  num_val: Optional[int] = None
  epoch_draws: Optional[int] = None
  bucket: Optional[int] = None

  @classmethod
  def whole(cls, train: Split, val: Split, num_classes: int, rows=None) -> FitData:
    """A fit on `rows` of `train` (default: every row), validated on all of `val`.

    Args:
      train: the training inputs and their integer class labels.
      val: the validation inputs and targets.
      num_classes: the number of classes the labels take.
      rows: the working set, indices of rows of `train`; None: every row.

    Returns:
      A `FitData` whose `rows` and `row_classes` (the labels of those rows) are int32 arrays on the
      default device; the other fields keep their defaults.
    """
    labels = np.asarray(train.labels, np.int32)
    rows = np.arange(len(labels), dtype=np.int32) if rows is None else np.asarray(rows, np.int32)
    return cls(train, val, device_array(rows), device_array(labels[rows]), num_classes)


@dataclasses.dataclass(frozen=True)
class FitHooks:
  """What a fit tells and keeps besides its result.

  Attributes:
    events: told `epoch_done` after every epoch (progress lines, metrics); a listener may add keys to
      the epoch's record before it is checkpointed.
    checkpoint: the fit resumes from its newest state (a finished fit comes back at once) and saves
      the state after every epoch — after `events`, also when a listener raises, so the history on
      disk holds what an uninterrupted run's holds.
    log: where the resume line goes (None: nowhere).
  """

  events: Optional[Events] = None
  checkpoint: Optional[FitCheckpointer] = None
  log: Optional[Log] = None


@dataclasses.dataclass(frozen=True)
class FitState:
  """Where a fit is: its train state on device, the best-validation variables, its host-side schedule
  and the record of every epoch. Immutable: `fit` makes a new one after every epoch.

  Attributes:
    train: the `TrainState` after the last epoch (params, optimizer state, model state).
    best_params: the params of the best epoch (`schedule.best_epoch`); with a schedule per block, each
      block's best epoch's.
    best_model_state: the model state of the best epoch (likewise).
    schedule: the learning rate, best score, patience counters and whether the fit has stopped: a
      `Schedule`, or a `BlockSchedules` for runs whose blocks train at once.
    history: one dict per epoch (losses, accuracies, learning rate, seconds; listeners may add keys).
  """

  train: TrainState
  best_params: PyTree
  best_model_state: PyTree
  schedule: Union[Schedule, BlockSchedules]
  history: tuple = ()

  @property
  def params(self) -> PyTree:
    """The params after the last epoch (`train.params`), not necessarily the best epoch's."""
    return self.train.params

  @property
  def model_state(self) -> PyTree:
    """The model state after the last epoch (`train.model_state`), e.g. batch-norm statistics."""
    return self.train.model_state

  @property
  def epoch(self) -> int:
    """Epochs completed."""
    return self.schedule.epoch

  @property
  def best_epoch(self) -> int:
    """The epoch whose variables are `best_params` and `best_model_state` (0 before any epoch)."""
    return self.schedule.best_epoch

  @property
  def best_score(self) -> float:
    """The best monitored score so far, lower is better.

    The validation or training loss, or minus the validation accuracy, as `FitConfig.monitor` says
    (`schedule.monitored_score`); inf before any epoch.
    """
    return self.schedule.best_score

  @property
  def stopped(self) -> bool:
    """Whether early stopping has ended the fit (reaching the epoch cap does not set it)."""
    return self.schedule.stopped

  def checkpoint(self) -> tuple[dict, dict]:
    """(the arrays a checkpoint holds, its JSON meta), the form `restored` reads back.

    The loss's hyperparameters are left out of the train state: each fit sets them anew.

    Returns:
      A tuple `(tree, meta)`. `tree` is a dict with "train" (the train state's "step", "params",
      "opt_state" and "model_state"), "best_params" and "best_model_state"; `meta` is a JSON-ready dict
      with "schedule" (the `Schedule`'s fields) and "history" (the list of epoch records).
    """
    train = {name: getattr(self.train, name) for name in ("step", "params", "opt_state", "model_state")}
    tree = dict(train=train, best_params=self.best_params, best_model_state=self.best_model_state)
    return tree, dict(schedule=dataclasses.asdict(self.schedule), history=list(self.history))

  def restored(self, tree: dict, meta: dict) -> FitState:
    """This (fresh) state with what a checkpoint holds (`checkpoint`'s form).

    Args:
      tree: the arrays, shaped as `checkpoint` returns them (host or device arrays).
      meta: the JSON meta, as `checkpoint` returns it.

    Returns:
      A new `FitState` holding this one's train state with the saved step, params, optimizer and model
      state (its hyperparameters kept), and the saved best variables, schedule and history.
    """
    return dataclasses.replace(
      self,
      train=self.train.replace(**tree["train"]),
      best_params=tree["best_params"],
      best_model_state=tree["best_model_state"],
      schedule=type(self.schedule).from_dict(meta["schedule"]),
      history=tuple(meta["history"]),
    )


class NonFiniteLossError(FloatingPointError, ValueError):
  """A fit met a NaN/inf loss; also a ValueError, so entry points print it as their one-line error."""


def bucket_size(n: int, minimum: int = 256) -> int:
  """The padded length a working set of n rows is compiled for: the next power of two (≥ minimum).

  Every size in (bucket/2, bucket] shares one compiled epoch: blocks of the same shape, the
  commitment heads of every block, and every seed reuse it instead of compiling their own.

  Args:
    n: the number of rows.
    minimum: the smallest bucket.

  Returns:
    The smallest power of two that is at least `n`, or `minimum` when that is larger.
  """
  return max(minimum, 1 << max(0, n - 1).bit_length())


def pad_rows(array, rows: int, value=0):
  """`array` with its first axis padded to `rows` (never truncated).

  Args:
    array: an array-like, padded on the host.
    rows: the length the first axis is padded to; an array already as long or longer is kept whole.
    value: the fill value of the padding rows.

  Returns:
    The padded array on the default device (`data.streaming.device_array`), with `array`'s dtype; for a
    `jax.ShapeDtypeStruct` (an array's shape alone, `compile_ahead`), the struct of the padded array.
  """
  if isinstance(array, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct((max(rows, array.shape[0]), *array.shape[1:]), array.dtype)
  array = np.asarray(array)  # padded on the host: an eager jnp concat compiles for every new length
  missing = rows - array.shape[0]
  if missing > 0:
    array = np.concatenate([array, np.full((missing, *array.shape[1:]), value, array.dtype)])
  return device_array(array)


# ------------------------------------------------------------------------------------ training


@dataclasses.dataclass(frozen=True)
class EpochPlan:
  """The static part of an epoch: the step's statics and how batches are drawn.

  Hashable: the jitted epochs take it as a static argument.

  Attributes:
    statics: the step's loss, optimizer, mesh and convolution lowering.
    batch_size: rows per step (a multiple of the mesh's device count).
    num_classes: the number of classes, for class-balanced draws.
    balanced: draw every class equally often (with replacement) instead of a shuffled order.
    inputs_per_epoch: gather the epoch's rows once, in its order, before its steps (each step then slices
      its batch) instead of in every step (`gathers_per_epoch`).
  """

  statics: Statics
  batch_size: int
  num_classes: int
  balanced: bool
  inputs_per_epoch: bool = False


class EpochArrays(NamedTuple):
  """The arrays an epoch gathers its batches from (device arrays; `inputs` may be a streamed view).

  Attributes:
    inputs: the training inputs, indexed by the working set's rows.
    targets: the training targets, indexed likewise.
    positions: int32 [bucket], the working set (rows of `inputs`) padded to its bucket.
    sample_classes: int32 [bucket], the class of each entry of `positions`.
    num_samples: int32 scalar, the samples the epoch trains on.
    num_valid: int32 scalar, the entries of `positions` that exist.
  """

  inputs: Any
  targets: Any
  positions: Any  # int32 [bucket]: the working set padded to its bucket
  sample_classes: Any  # int32 [bucket]: their classes
  num_samples: Any  # int32: samples the epoch trains on
  num_valid: Any  # int32: rows of `positions` that exist


@functools.partial(jax.jit, static_argnames=("num_classes", "balanced", "batch_size", "sort_on_host"))
def _draw_on_device(
  key, sample_classes, num_valid, *, num_classes: int, balanced: bool, batch_size: int, sort_on_host: bool
):
  """`draw_order` on the device: the padded order and the step key, or the shuffle's sort keys (for the host
  to sort) and the step key."""
  draw_key, step_key = jax.random.split(key)
  if sort_on_host and not balanced:
    return shuffle_keys_padded(draw_key, sample_classes.shape[0], num_valid), step_key
  order = draw_epoch_padded(draw_key, sample_classes, num_valid, num_classes, balanced)
  return jnp.concatenate([order, jnp.zeros((batch_size,), order.dtype)]), step_key


def sorts_on_host(backend: Optional[str] = None) -> bool:
  """Whether an epoch's shuffle is sorted by numpy rather than by XLA on `backend` (default: jax's).

  XLA:CPU sorts through a compiled comparator it calls once per comparison: the 65,536 keys of a
  Fashion-MNIST working set take it ~12 ms, `data.sampling.stable_order` under 1 ms, in the same order
  (equal keys stay in position order in both); an epoch draws once. Accelerators sort on the device.

  Args:
    backend: a jax backend name; None: `jax.default_backend()`.

  Returns:
    True on CPU.
  """
  return (backend or jax.default_backend()) == "cpu"


def draw_order(key, sample_classes, num_valid, *, num_classes: int, balanced: bool, batch_size: int):
  """The epoch's order of working-set positions (with room for the last padded batch) and its step key.

  One program, shared by every fit with the same bucket, class count and batch size (the blocks after
  the first and their commitment heads draw from the full split's bucket); on CPU a shuffle's keys are
  sorted by numpy (`sorts_on_host`), into the order XLA's sort gives.

  Args:
    key: the epoch's key; split into the draw's key and the step key.
    sample_classes: int32 [bucket], the class of each position of the padded working set.
    num_valid: int32 scalar, the positions that exist.
    num_classes: the number of classes.
    balanced: class-balanced draws with replacement, instead of a shuffle of the valid positions.
    batch_size: rows per step.

  Returns:
    A tuple `(order, step_key)`. `order` is int32 [bucket + batch_size], indices into the padded working
    set in the order the epoch's steps take them, followed by `batch_size` zeros so the last batch's
    slice stays in bounds; `step_key` is the key each step folds its number into.
  """
  sort_on_host = sorts_on_host()
  drawn, step_key = _draw_on_device(
    key,
    sample_classes,
    num_valid,
    num_classes=num_classes,
    balanced=balanced,
    batch_size=batch_size,
    sort_on_host=sort_on_host,
  )
  if balanced or not sort_on_host:
    return drawn, step_key
  order = stable_order(np.asarray(drawn))
  return device_array(np.concatenate([order, np.zeros((batch_size,), np.int32)])), step_key


def _draw(key, arrays, plan: EpochPlan):
  return draw_order(
    key,
    arrays.sample_classes,
    arrays.num_valid,
    num_classes=plan.num_classes,
    balanced=plan.balanced,
    batch_size=plan.batch_size,
  )


def _batch_mask(i, num_samples, batch_size: int):
  return ((i * batch_size + jnp.arange(batch_size)) < num_samples).astype(jnp.float32)


def gathers_per_epoch(row_shape: tuple, dtype, batch_size: int) -> bool:
  """Whether an epoch gathers its input rows once, before its steps, rather than in every step.

  On CPU a step's gather is one of XLA's parallel loops, split over the cores by the bytes it may read
  (the whole input array), so a batch of narrow rows — a commitment head's logits, a later block's
  cached features — pays a thread hand-off (~30 µs on 2 cores) larger than the copy itself. Gathering
  the epoch's rows in one pass, then slicing each step's batch out of them, reads and computes the same
  numbers. Rows wide enough that a batch fills a core's cache (≥ 256 KiB) keep the per-step gather: an
  epoch-sized copy of them would cost more memory traffic than the hand-offs it saves.

  Args:
    row_shape: the shape of one input row.
    dtype: the inputs' dtype.
    batch_size: rows per step.

  Returns:
    True when a batch of these rows is under 256 KiB.
  """
  return batch_size * int(np.prod(row_shape)) * np.dtype(dtype).itemsize < 256 * 1024


@jax.jit
def epoch_rows(arrays: EpochArrays, order) -> EpochArrays:
  """`arrays` with the inputs and targets of an epoch's steps gathered in their order (one gather each).

  Args:
    arrays: the working set and the arrays its batches are gathered from.
    order: int32, the epoch's order of positions (`draw_order`).

  Returns:
    `arrays` whose `inputs` and `targets` are `inputs[positions[order]]` and `targets[positions[order]]`:
    step i's batch is rows [i·B, (i+1)·B) of them.
  """
  rows = arrays.positions[order]
  return arrays._replace(inputs=arrays.inputs[rows], targets=arrays.targets[rows])


def _gathered_step(state: TrainState, sums, arrays: EpochArrays, order, step_key, i, plan: EpochPlan):
  """Step i of an epoch: gather its rows on device, then `train_step`; adds its metrics to `sums`.

  With `plan.inputs_per_epoch`, `arrays` holds the epoch's rows in order (`epoch_rows`): the step slices.
  """
  if plan.inputs_per_epoch:
    inputs, targets = (
      jax.lax.dynamic_slice_in_dim(a, i * plan.batch_size, plan.batch_size) for a in (arrays.inputs, arrays.targets)
    )
  else:
    batch_order = jax.lax.dynamic_slice(order, (i * plan.batch_size,), (plan.batch_size,))
    rows = arrays.positions[batch_order]
    inputs, targets = arrays.inputs[rows], arrays.targets[rows]
  batch = Batch(inputs, targets, _batch_mask(i, arrays.num_samples, plan.batch_size))
  state, metrics = train_step(state, batch, jax.random.fold_in(step_key, i), statics=plan.statics)
  return state, (sums[0] + metrics["loss_sum"], sums[1] + metrics["correct_sum"])


def _zero_sums():
  return device_array(np.float32(0.0)), device_array(np.float32(0.0))


# params, optimizer and model state are donated: XLA writes the new ones into their buffers
@functools.partial(jax.jit, static_argnames=("plan",), donate_argnames=("state",))
def steps_on_device(state: TrainState, arrays: EpochArrays, order, step_key, *, plan: EpochPlan):
  """An epoch's steps inside one jit (`lax.fori_loop`).

  Args:
    state: the train state before the epoch; its buffers are donated (do not use it afterwards).
    arrays, order, step_key: what `prepare_epoch` returned.
    plan: the epoch's static part.

  Returns:
    A tuple `(state, (mean_loss, accuracy))` of the state after the epoch and two float32 scalars
    averaged over the samples it trained on (accuracy is the mean of the loss's per-sample correct flags).
  """
  num_steps = (arrays.num_samples + plan.batch_size - 1) // plan.batch_size
  state, (loss_sum, correct_sum) = jax.lax.fori_loop(
    0,
    num_steps,
    lambda i, carry: _gathered_step(*carry, arrays, order, step_key, i, plan),
    (state, _zero_sums()),
  )
  return state, (loss_sum / arrays.num_samples, correct_sum / arrays.num_samples)


def prepare_epoch(arrays: EpochArrays, key, plan: EpochPlan):
  """An epoch's draw (`draw_order`), and with `plan.inputs_per_epoch` its rows gathered in order.

  Args:
    arrays: the working set and the arrays its batches are gathered from.
    key: the epoch's key (the draw, then each step's key).
    plan: the epoch's static part (statics, batch size, sampling).

  Returns:
    A tuple `(arrays, order, step_key)`: the arrays as the epoch's steps read them, the order of
    working-set positions and the key every step folds its number into.
  """
  order, step_key = _draw(key, arrays, plan)
  return (epoch_rows(arrays, order) if plan.inputs_per_epoch else arrays), order, step_key


_step_jitted = jax.jit(_gathered_step, static_argnames=("plan",), donate_argnames=("state", "sums"))


def steps_in_host_loop(state: TrainState, arrays: EpochArrays, order, step_key, *, plan: EpochPlan):
  """An epoch's steps, each a jitted call from a Python loop (the same batches and keys as `steps_on_device`).

  For models that convolve on CPU, where XLA runs convolutions inside a loop far slower.

  Args:
    state: the train state before the epoch (donated, step by step).
    arrays, order, step_key: what `prepare_epoch` returned.
    plan: the epoch's static part.

  Returns:
    What `steps_on_device` returns for the same arguments, to round-off.
  """
  sums = _zero_sums()
  for i in range(-(-int(arrays.num_samples) // plan.batch_size)):
    state, sums = _step_jitted(state, sums, arrays, order, step_key, device_array(np.int32(i)), plan=plan)
  return state, (sums[0] / arrays.num_samples, sums[1] / arrays.num_samples)


def _streamed_step(state: TrainState, sums, x, rows, targets, num_samples, step_key, i, plan: EpochPlan):
  batch = Batch(x, targets[rows], _batch_mask(i, num_samples, plan.batch_size))
  state, metrics = train_step(state, batch, jax.random.fold_in(step_key, i), statics=plan.statics)
  # the third output (never donated) tells when the step has run
  return state, (sums[0] + metrics["loss_sum"], sums[1] + metrics["correct_sum"]), i + 1


_streamed_step_jitted = jax.jit(_streamed_step, static_argnames=("plan",), donate_argnames=("state", "sums"))


def steps_streamed(state: TrainState, arrays: EpochArrays, order, step_key, *, plan: EpochPlan):
  """An epoch's steps with the images of each read from disk (`arrays.inputs` is a streamed view).

  The rows of step i are `positions[order[i·B : (i+1)·B]]`, padding included, exactly the rows the
  in-memory epoch gathers; a multi-process run reads only the part of each batch its own devices take
  (`parallel.local_batch_rows`) and assembles the global batch from every process's part. At most two
  dispatched steps are left waiting to run, each holding its batch.

  Args:
    state: the train state before the epoch; its buffers are donated (do not use it afterwards).
    arrays: the working set; `inputs` is a streamed view, `targets` an array.
    order, step_key: what `prepare_epoch` returned.
    plan: the epoch's static part.

  Returns:
    A tuple `(state, (mean_loss, accuracy))`, as `steps_on_device` returns it.
  """
  mesh, batch_size = plan.statics.mesh, plan.batch_size
  order, host_positions = np.asarray(order), np.asarray(arrays.positions)
  num_steps = -(-int(arrays.num_samples) // batch_size)
  batch_rows = [host_positions[order[i * batch_size : (i + 1) * batch_size]] for i in range(num_steps)]
  local = [parallel.local_batch_rows(rows, mesh) for rows in batch_rows]
  put = jnp.asarray if mesh is None else (lambda x: parallel.global_batch(x, batch_size, mesh))
  sums = _zero_sums()
  running = []  # steps dispatched but maybe not run: each holds its batch, so at most 2 are let wait
  for i, x in enumerate(arrays.inputs.stream(local, put)):
    if len(running) == 2:
      running.pop(0).block_until_ready()
    state, sums, done = _streamed_step_jitted(
      state,
      sums,
      x,
      device_array(batch_rows[i]),
      arrays.targets,
      arrays.num_samples,
      step_key,
      device_array(np.int32(i)),
      plan=plan,
    )
    running.append(done)
  return state, (sums[0] / arrays.num_samples, sums[1] / arrays.num_samples)


# ---------------------------------------------------------------------------------- validation


@dataclasses.dataclass(frozen=True)
class EvalPlan:
  """The static part of a validation pass: the step's statics and the chunk size.

  Attributes:
    statics: the loss, optimizer, mesh and convolution lowering the pass evaluates with.
    batch_size: rows per chunk (a multiple of the mesh's device count).
    rows_per_pass: rows of a chunk computed at once (`step.eval_sums`; None: the whole chunk).
  """

  statics: Statics
  batch_size: int
  rows_per_pass: Optional[int] = None


def _chunks(size: int, num_rows, batch_size: int, xp):
  """Row indices [chunks, B] covering `size` padded rows, and the mask of the first `num_rows`."""
  chunks = max(1, -(-size // batch_size))
  padded = chunks * batch_size
  rows = xp.minimum(xp.arange(padded), size - 1).reshape(chunks, batch_size)
  return rows, (xp.arange(padded) < num_rows).reshape(chunks, batch_size)


def _chunk_sums(state: TrainState, inputs, targets, rows, mask, plan: EvalPlan):
  return eval_sums(
    state, Batch(inputs[rows], targets[rows], mask), statics=plan.statics, rows_per_pass=plan.rows_per_pass
  )


@functools.partial(jax.jit, static_argnames=("plan",))
def evaluate_on_device(state: TrainState, val: Split, num_rows, *, plan: EvalPlan):
  """(mean loss, accuracy) over the first `num_rows` rows of `val`, in fixed-size masked chunks inside one jit.

  Padded inputs of any `num_rows` up to their length share one compile. Chunks wholly past `num_rows`
  would add exact zeros: they are not computed (a later block's V_j is a fraction of the split its
  arrays are padded for).

  Args:
    state: the train state evaluated (in inference mode).
    val: the validation inputs and targets, padded to a fixed length.
    num_rows: int32 scalar (traced), the rows of `val` that exist.
    plan: the pass's static part (statics, chunk size).

  Returns:
    A tuple `(mean_loss, accuracy)` of float32 scalars over the first `num_rows` rows.
  """
  rows, mask = _chunks(val.images.shape[0], num_rows, plan.batch_size, jnp)
  live = (num_rows + plan.batch_size - 1) // plan.batch_size

  def chunk(k, sums):
    loss_sum, correct_sum = _chunk_sums(state, val.images, val.labels, rows[k], mask[k], plan)
    return sums[0].at[k].set(loss_sum), sums[1].at[k].set(correct_sum)

  zeros = jnp.zeros((rows.shape[0],), jnp.float32)
  loss_sums, correct_sums = jax.lax.fori_loop(0, live, chunk, (zeros, zeros))
  return jnp.sum(loss_sums) / num_rows, jnp.sum(correct_sums) / num_rows


_chunk_sums_jitted = jax.jit(_chunk_sums, static_argnames=("plan",))


def evaluate_from_host(state: TrainState, val: Split, num_rows, *, plan: EvalPlan):
  """`evaluate_on_device`'s chunks, each a jitted call from a Python loop (see `steps_in_host_loop`).

  Args:
    state: the train state evaluated (in inference mode).
    val: the validation inputs and targets, padded to a fixed length.
    num_rows: the rows of `val` that exist (an int or a scalar array).
    plan: the pass's static part.

  Returns:
    A tuple `(mean_loss, accuracy)` of Python floats over the first `num_rows` rows.
  """
  rows, mask = _chunks(val.images.shape[0], int(num_rows), plan.batch_size, np)
  live = [(r, m) for r, m in zip(rows, mask) if m.any()]  # chunks past num_rows add exact zeros: not run
  sums = [_chunk_sums_jitted(state, val.images, val.labels, r, m, plan=plan) for r, m in live]
  return (sum(float(l) for l, _ in sums) / int(num_rows), sum(float(c) for _, c in sums) / int(num_rows))


@functools.partial(jax.jit, static_argnames=("plan",))
def _streamed_chunk_sums(state: TrainState, x, targets, rows, mask, *, plan: EvalPlan):
  return eval_sums(state, Batch(x, targets[rows], mask), statics=plan.statics, rows_per_pass=plan.rows_per_pass)


@jax.jit
def _mean_of_sums(loss_sums, correct_sums, n):
  return jnp.sum(loss_sums) / n, jnp.sum(correct_sums) / n


def evaluate_streamed(state: TrainState, val: Split, num_rows, *, plan: EvalPlan):
  """`evaluate_on_device` over a streamed view (unpadded), read chunk by chunk.

  Its chunks and their sums are reduced as `evaluate_on_device` reduces those of the same rows padded
  to their bucket.

  Args:
    state: the train state evaluated (in inference mode).
    val: the validation split; `images` is a streamed view, `labels` an array.
    num_rows: the rows of `val` that exist (an int or a scalar array).
    plan: the pass's static part.

  Returns:
    A tuple `(mean_loss, accuracy)` of float32 scalars over the first `num_rows` rows.
  """
  n, mesh = int(num_rows), plan.statics.mesh
  rows, mask = _chunks(bucket_size(len(val.images)), n, plan.batch_size, np)
  live = [k for k in range(len(rows)) if mask[k].any()]  # chunks past n add exact zeros: not read
  read = [np.minimum(rows[k], n - 1) for k in live]
  put = jnp.asarray if mesh is None else (lambda x: parallel.replicate(x, mesh))
  loss_sums = np.zeros(len(rows), np.float32)
  correct_sums = np.zeros(len(rows), np.float32)
  for k, r, x in zip(live, read, val.images.stream(read, put)):
    loss_sums[k], correct_sums[k] = _streamed_chunk_sums(state, x, val.labels, device_array(r), mask[k], plan=plan)
  return _mean_of_sums(loss_sums, correct_sums, device_array(np.int32(n)))


# ------------------------------------------------------------------------- where steps run


def loop_conv_implementation(backend: Optional[str] = None) -> str:
  """How convolutions inside the trainer's loops convolve on `backend` (default: jax's).

  As patch products on CPU, where XLA's own convolution runs far slower inside loops (`models.layers`);
  XLA's (cuDNN's, the TPU's) everywhere else.

  Args:
    backend: a jax backend name ("cpu", "gpu", "tpu"); None: `jax.default_backend()`.

  Returns:
    "patches" on CPU, else "native" (a name of `models.layers.IMPLEMENTATIONS`).
  """
  return "patches" if (backend or jax.default_backend()) == "cpu" else "native"


def loop_convolutions():
  """The convolution context of the trainer's epochs and validation passes (`loop_conv_implementation`).

  Returns:
    A context manager (`models.layers.conv_implementation`) under which convolutions are lowered as
    the trainer's loops lower them on the default backend.
  """
  return layers.conv_implementation(loop_conv_implementation())


def steps_from_host(backend: str, convolves: bool) -> bool:
  """Whether `fit` runs an epoch's steps from a Python loop (`steps_in_host_loop`) on `backend`.

  Only for models that convolve, only on CPU, where XLA runs convolutions inside a while loop ~40×
  slower. On GPU and TPU every epoch is one jitted call over data already on the device: no host round
  trip per step.

  Args:
    backend: a jax backend name ("cpu", "gpu", "tpu").
    convolves: whether the loss convolves (`convolutions`).

  Returns:
    True on CPU for a loss that convolves, else False.
  """
  return backend == "cpu" and convolves


def eval_rows_per_pass(backend: str, convolves: bool) -> Optional[int]:
  """Rows a validation chunk computes at once (`step.eval_sums`) on `backend`.

  Args:
    backend: a jax backend name ("cpu", "gpu", "tpu").
    convolves: whether the loss convolves (`convolutions`).

  Returns:
    `models.layers.CPU_ROWS_PER_PASS` on CPU for a loss that convolves, else None (the whole chunk at
    once).
  """
  return layers.CPU_ROWS_PER_PASS if backend == "cpu" and convolves else None


def convolutions(loss: Loss) -> str:
  """What convolutions a loss runs, as it declares them (its `convolutions` attribute).

  The library's losses take it from the blocks they run (`models.base.Block.convolutions`, declared by
  each model); a loss that declares nothing runs none.

  Args:
    loss: a loss (`step.Loss`).

  Returns:
    One of `models.base.CONVOLUTIONS`: "none", "patchable" or "native".
  """
  return getattr(loss, "convolutions", "none")


@dataclasses.dataclass(frozen=True)
class EpochDriver:
  """One way to run an epoch's steps, and the programs it compiles.

  Attributes:
    steps: the epoch's steps from what `prepare_epoch` returned (`steps_on_device`,
      `steps_in_host_loop` or `steps_streamed`).
    lower: compiles the epoch's programs for (train state, arrays, key, plan) without running them;
      None for a driver that compiles nothing ahead (streamed inputs).
  """

  steps: Callable
  lower: Optional[Callable] = None

  def run(self, state: TrainState, arrays: EpochArrays, key, *, plan: EpochPlan):
    """One epoch: `prepare_epoch`, then `steps`.

    Args:
      state: the train state before the epoch; its buffers are donated (do not use it afterwards).
      arrays: the working set and the arrays its batches are gathered from.
      key: the epoch's key.
      plan: the epoch's static part.

    Returns:
      A tuple `(state, (mean_loss, accuracy))` of the state after the epoch and two float32 scalars
      averaged over the samples it trained on.
    """
    return self.steps(state, *prepare_epoch(arrays, key, plan), plan=plan)


@dataclasses.dataclass(frozen=True)
class EvalDriver:
  """One way to run a validation pass, and the programs it compiles.

  Attributes:
    run: the pass (`evaluate_on_device`, `evaluate_from_host` or `evaluate_streamed`).
    lower: compiles `run`'s programs for (train state, split, rows, plan) without running them; None
      for a driver that compiles nothing ahead.
  """

  run: Callable
  lower: Optional[Callable] = None


def _lower_draw(arrays: EpochArrays, key, plan: EpochPlan):
  """Compiles an epoch's draw (and its gather of the epoch's rows); (arrays as the steps read them, the
  order's shape, the step key's shape)."""
  draw = dict(num_classes=plan.num_classes, balanced=plan.balanced, batch_size=plan.batch_size)
  draw_args = (key, arrays.sample_classes, arrays.num_valid)
  _draw_on_device.lower(*draw_args, **draw, sort_on_host=sorts_on_host()).compile()
  _, step_key = jax.eval_shape(functools.partial(_draw_on_device, **draw, sort_on_host=False), *draw_args)
  order = jax.ShapeDtypeStruct((arrays.positions.shape[0] + plan.batch_size,), np.int32)
  if plan.inputs_per_epoch:
    epoch_rows.lower(arrays, order).compile()
    arrays = jax.eval_shape(epoch_rows, arrays, order)
  return arrays, order, step_key


def _lower_on_device(train: TrainState, arrays: EpochArrays, key, plan: EpochPlan) -> None:
  arrays, order, step_key = _lower_draw(arrays, key, plan)
  steps_on_device.lower(train, arrays, order, step_key, plan=plan).compile()


def _lower_from_host(train: TrainState, arrays: EpochArrays, key, plan: EpochPlan) -> None:
  arrays, order, step_key = _lower_draw(arrays, key, plan)
  _step_jitted.lower(train, _zero_sums(), arrays, order, step_key, device_array(np.int32(0)), plan=plan).compile()


def _lower_evaluate_on_device(state: TrainState, val: Split, num_rows, plan: EvalPlan) -> None:
  evaluate_on_device.lower(state, val, device_array(np.int32(num_rows)), plan=plan).compile()


def _lower_evaluate_from_host(state: TrainState, val: Split, num_rows, plan: EvalPlan) -> None:
  rows, mask = _chunks(val.images.shape[0], num_rows, plan.batch_size, np)
  _chunk_sums_jitted.lower(state, val.images, val.labels, rows[0], mask[0], plan=plan).compile()


ON_DEVICE = EpochDriver(steps_on_device, _lower_on_device)
FROM_HOST = EpochDriver(steps_in_host_loop, _lower_from_host)
STREAMED = EpochDriver(steps_streamed)
EVAL_ON_DEVICE = EvalDriver(evaluate_on_device, _lower_evaluate_on_device)
EVAL_FROM_HOST = EvalDriver(evaluate_from_host, _lower_evaluate_from_host)
EVAL_STREAMED = EvalDriver(evaluate_streamed)


class Drivers(NamedTuple):
  """How a fit runs on this backend, chosen once per fit (`choose_drivers`).

  Attributes:
    epoch: how an epoch's steps run.
    evaluate: how a validation pass runs.
    conv: how convolutions are lowered inside them (`models.layers.IMPLEMENTATIONS`).
    rows_per_pass: rows a validation chunk computes at once (`step.eval_sums`; None: the whole chunk).
  """

  epoch: EpochDriver
  evaluate: EvalDriver
  conv: str
  rows_per_pass: Optional[int]


def choose_drivers(
  loss_convolutions: str,
  config: FitConfig,
  *,
  streamed_train: bool = False,
  streamed_val: bool = False,
  backend: Optional[str] = None,
) -> Drivers:
  """The drivers of a fit, from what its loss declares, its settings and the backend.

  On CPU, where the trainer's loops convolve as patch products, a loss whose convolutions stay XLA's
  own there steps from the host (`steps_from_host`), and a loss that convolves validates in passes of
  `models.layers.CPU_ROWS_PER_PASS` rows; everything else runs each epoch inside one jit. Streamed
  inputs are read batch by batch. `config.host_loop` and `config.eval_rows_per_pass`, when set,
  override the backend's choice.

  Args:
    loss_convolutions: what convolutions the fit's loss runs (`convolutions`).
    config: the fit's settings.
    streamed_train: the training inputs are a streamed view (`--input=stream`).
    streamed_val: the validation inputs are a streamed view.
    backend: a jax backend name; None: `jax.default_backend()`.

  Returns:
    The chosen `Drivers`.
  """
  backend = backend or jax.default_backend()
  conv = loop_conv_implementation(backend)
  convolves = loss_convolutions != "none" and backend == "cpu"
  # what the loops' lowering leaves as XLA's own convolutions
  left_convolving = convolves and (conv == "native" or loss_convolutions == "native")
  host_loop = steps_from_host(backend, left_convolving) if config.host_loop is None else config.host_loop
  rows_per_pass = config.eval_rows_per_pass
  if rows_per_pass is None:
    rows_per_pass = eval_rows_per_pass(backend, convolves)
  epoch = STREAMED if streamed_train else (FROM_HOST if host_loop else ON_DEVICE)
  evaluate = EVAL_STREAMED if streamed_val else (EVAL_FROM_HOST if host_loop else EVAL_ON_DEVICE)
  return Drivers(epoch, evaluate, conv, rows_per_pass or None)


def _private_copy(tree):
  """Fresh device buffers holding `tree` (a donated epoch consumes its inputs; callers keep theirs)."""
  # onto the array's own sharding: a multi-process run's arrays span devices of other processes
  return jax.tree.map(
    lambda x: jax.device_put(x, x.sharding if isinstance(x, jax.Array) else None, may_alias=False), tree
  )


# ----------------------------------------------------------------------------------------- fit


def init_fit_state(objective: Objective, params: PyTree, model_state: PyTree, config: FitConfig) -> FitState:
  """A fresh FitState: Adam moments at zero, the configured learning rate, nothing trained yet.

  Args:
    objective: the loss, the leaves that train and the loss's hyperparameters.
    params: the params to start from (also the best params until an epoch beats them).
    model_state: the model state to start from.
    config: the fit's schedule (its learning rate and weight decay are used here).

  Returns:
    A `FitState` at epoch 0 with the schedule at `config.learning_rate`.

  Raises:
    ValueError: `objective.trainable` is not shaped like `params`.
  """
  train = TrainState.create(
    Adam(Mask.of(objective.trainable), config.weight_decay),
    params,
    model_state,
    config.learning_rate,
    objective.hparams,
  )
  return FitState(train, params, model_state, Schedule(learning_rate=config.learning_rate))


def _sizes(data: FitData, config: FitConfig, name: str) -> tuple[int, int, int]:
  """(working-set rows, samples an epoch trains on, validation rows) of a fit; refuses empty ones."""
  num_rows = int(data.rows.shape[0])  # the working set
  num_samples = num_rows if data.epoch_draws is None else int(data.epoch_draws)  # what an epoch trains on
  num_val = int(data.val.images.shape[0] if data.num_val is None else data.num_val)
  if num_rows == 0:
    raise ValueError(f"{name}: the working set is empty; nothing to train")
  if num_val == 0:
    raise ValueError(f"{name}: the validation set is empty; raise --val_fraction")
  if num_samples > num_rows and not config.balanced_sampling:
    raise ValueError(
      f"{name}: an epoch of {num_samples} draws from {num_rows} rows needs draws with "
      "replacement: pass --balanced_sampling"
    )
  return num_rows, num_samples, num_val


class EpochScores(NamedTuple):
  """An epoch's mean loss and accuracy, on the training samples or the validation split.

  Attributes:
    loss: the mean loss (non-finite when a loss overflowed).
    accuracy: the mean of the per-sample correct flags.
    details: what the runner keeps of the pass for its `advance` (e.g. per-block sums); {} if nothing.
  """

  loss: float
  accuracy: float
  details: Any = None


class EpochRunner(Protocol):
  """A schedule of epochs that `run_epochs` drives: what an epoch trains, how it is validated, and how
  the schedule moves on. The loop around it (timing, the non-finite check, records, events,
  checkpoints, resuming) is `run_epochs`'s alone.

  `SequentialRunner` is Appendix A's schedule over one fit (QuickNet blocks, commitment heads,
  end-to-end and SDN training); `algorithms.decoupled.DecoupledRunner` trains every block at once with
  a schedule per block (`schedule.BlockSchedules`), on one device or pipelined over several.

  Attributes:
    phase: what its epochs are called in `events.EpochDone` ("fit", "decoupled").
  """

  phase: str

  def finished(self, state: FitState) -> bool:
    """Whether no epoch is left to run."""

  def start(self, state: FitState) -> FitState:
    """The state the first epoch of this call reads (e.g. on the fit's devices, as private copies)."""

  def train_epoch(self, state: FitState, key: jax.Array) -> tuple[TrainState, EpochScores]:
    """One epoch's steps from `state` under the epoch's `key`: (the train state after it, its scores)."""

  def validate(self, state: FitState, train: TrainState) -> EpochScores:
    """The validation scores of `train`, the state the epoch from `state` ended in."""

  def advance(
    self, state: FitState, train: TrainState, trained: EpochScores, validated: EpochScores
  ) -> tuple[FitState, dict, dict]:
    """The state after the epoch, and what its record holds besides the loop's own keys.

    Returns (state, head, tail): `head` ("learning_rate", "samples") goes after the scores, `tail`
    after the timings, before "stopped".
    """

  def learning_rate(self, state: FitState) -> float:
    """The learning rate a non-finite loss's message names."""

  def training_flops(self, state: FitState) -> Optional[float]:
    """Training FLOPs spent so far, for `events.EpochDone` (None where the runner does not count them)."""


@dataclasses.dataclass(frozen=True)
class SequentialRunner:
  """Appendix A's schedule over one fit: one learning rate, plateau cuts, early stopping on one score.

  Made by `SequentialRunner.create`, which places the fit's arrays and chooses its drivers once.

  Attributes:
    objective: the loss, the leaves that train and the loss's hyperparameters.
    config: the fit's settings.
    arrays: the padded working set and the arrays its batches are gathered from.
    val: the validation split, padded to its bucket (or a streamed view).
    plan: the epoch's static part.
    eval_plan: the validation pass's static part.
    drivers: how epochs and validation passes run.
    num_rows: working-set rows.
    num_samples: samples an epoch trains on.
    num_val: validation rows.
  """

  objective: Objective
  config: FitConfig
  arrays: EpochArrays
  val: Split
  plan: EpochPlan
  eval_plan: EvalPlan
  drivers: Drivers
  num_rows: int
  num_samples: int
  num_val: int
  phase: str = "fit"

  @classmethod
  def create(cls, objective: Objective, data: FitData, config: FitConfig, name: str = "fit") -> SequentialRunner:
    """The runner of a fit: its arrays placed and padded, its drivers chosen (once, here).

    The inputs of `data` may be `jax.ShapeDtypeStruct`s (`compile_ahead`): the arrays are then structs.

    Args:
      objective: the fit's objective.
      data: its working set, training and validation arrays.
      config: its settings.
      name: what the fit is called in messages.

    Returns:
      The `SequentialRunner`.

    Raises:
      ValueError: the working set or the validation set is empty, or an epoch draws more samples than
        the working set holds without class-balanced sampling.
    """
    num_rows, num_samples, num_val = _sizes(data, config, name)
    mesh = parallel.current_mesh()
    batch_size = parallel.round_up_batch(min(config.batch_size, num_samples), mesh)
    eval_batch_size = parallel.round_up_batch(config.eval_batch_size, mesh)
    # streamed views (`--input=stream`) stay on disk: the epoch and the validation pass read them in batches
    streamed_train, streamed_val = is_streamed(data.train.images), is_streamed(data.val.images)
    train_inputs, targets = _placed(data, mesh)
    drivers = choose_drivers(
      convolutions(objective.loss), config, streamed_train=streamed_train, streamed_val=streamed_val
    )
    statics = Statics(objective.loss, Adam(Mask.of(objective.trainable), config.weight_decay), mesh, drivers.conv)
    per_epoch = not streamed_train and mesh is None
    per_epoch = per_epoch and gathers_per_epoch(train_inputs.shape[1:], train_inputs.dtype, batch_size)
    plan = EpochPlan(statics, batch_size, data.num_classes, config.balanced_sampling, per_epoch)
    eval_plan = EvalPlan(statics, eval_batch_size, drivers.rows_per_pass)
    # Pad the working set and the validation arrays to their buckets; the true sizes are traced.
    bucket = max(data.bucket or 0, bucket_size(max(num_rows, num_samples)))
    arrays = EpochArrays(
      train_inputs,
      targets,
      pad_rows(np.asarray(data.rows, np.int32), bucket),
      pad_rows(np.asarray(data.row_classes, np.int32), bucket),
      device_array(np.int32(num_samples)),
      device_array(np.int32(num_rows)),
    )
    val_rows = bucket_size(int(data.val.images.shape[0]))
    val_images = data.val.images if streamed_val else pad_rows(data.val.images, val_rows)
    val = Split(val_images, pad_rows(data.val.labels, val_rows))
    return cls(objective, config, arrays, val, plan, eval_plan, drivers, num_rows, num_samples, num_val)

  def finished(self, state: FitState) -> bool:
    return state.schedule.finished(self.config)

  def start(self, state: FitState) -> FitState:
    train, mesh = state.train, self.plan.statics.mesh
    if mesh is not None:  # every device gets the same rows; the extra ones of a rounded-up batch are masked
      train = parallel.replicate(train, mesh)
    # The epoch donates these buffers: the fit works on its own copies, so the caller's params (e.g. a
    # model's init variables, reused by other fits) and a resumed state's arrays stay valid.
    return dataclasses.replace(state, train=_private_copy(train))

  def _epoch_state(self, state: FitState) -> TrainState:
    """The train state an epoch starts from: the schedule's learning rate, the epoch's hyperparameters."""
    train = state.train.with_learning_rate(state.schedule.learning_rate)
    if self.objective.hparams_at is not None:
      train = train.replace(hparams=jax.tree.map(device_array, self.objective.hparams_at(state.schedule.epoch + 1)))
    return train

  def _val_state(self, train: TrainState) -> TrainState:
    """Validation reads the loss's fixed hyperparameters, not an epoch's."""
    return train if self.objective.hparams_at is None else train.replace(hparams=self.objective.hparams)

  def train_epoch(self, state: FitState, key: jax.Array) -> tuple[TrainState, EpochScores]:
    # `EpochDriver.run`'s two parts, called here: the jitted steps one frame below the epoch loop
    arrays, order, step_key = prepare_epoch(self.arrays, key, self.plan)
    train, (loss, accuracy) = self.drivers.epoch.steps(
      self._epoch_state(state), arrays, order, step_key, plan=self.plan
    )
    return train, EpochScores(float(loss), float(accuracy))

  def validate(self, state: FitState, train: TrainState) -> EpochScores:
    del state
    num_val = device_array(np.int32(self.num_val))
    loss, accuracy = self.drivers.evaluate.run(self._val_state(train), self.val, num_val, plan=self.eval_plan)
    return EpochScores(float(loss), float(accuracy))

  def advance(
    self, state: FitState, train: TrainState, trained: EpochScores, validated: EpochScores
  ) -> tuple[FitState, dict, dict]:
    schedule = state.schedule
    score = monitored_score(self.config, trained.loss, validated.loss, validated.accuracy)
    next_schedule = advance(schedule, self.config, score)
    best = (state.best_params, state.best_model_state)
    if next_schedule.best_epoch == next_schedule.epoch:
      # copies: the next epoch donates (and so overwrites) the state's buffers
      best = _private_copy((train.params, train.model_state))
    head = dict(learning_rate=schedule.learning_rate, samples=self.num_samples)
    tail = dict(working_set=self.num_rows) if self.num_samples != self.num_rows else {}
    return FitState(train, *best, next_schedule, state.history), head, tail

  def learning_rate(self, state: FitState) -> float:
    return state.schedule.learning_rate

  def training_flops(self, state: FitState) -> Optional[float]:
    return None

  def compile(self, state: FitState, key: jax.Array) -> None:
    """Compiles the programs the first epoch and its validation pass run, without running them.

    Args:
      state: the state `create` returned.
      key: a key of the kind the fit gets (its value is not read).
    """
    train = self._epoch_state(state)
    if self.drivers.epoch.lower is not None:
      self.drivers.epoch.lower(train, self.arrays, jax.random.fold_in(key, 0), self.plan)
    if self.drivers.evaluate.lower is not None:
      self.drivers.evaluate.lower(self._val_state(train), self.val, self.num_val, self.eval_plan)


def run_epochs(
  runner: EpochRunner, state: FitState, config: FitConfig, key: jax.Array, *, name: str, hooks: FitHooks
) -> FitState:
  """The one epoch loop: runs `runner`'s epochs from `state` until it is finished.

  Around every epoch it times the training steps and the validation pass (compiles included), stops on
  a non-finite loss, writes the epoch's record, tells `hooks.events` and saves `hooks.checkpoint`. Epoch
  e draws from `fold_in(key, e)`, so a run resumed from its checkpoint ends where an uninterrupted one
  would.

  Args:
    runner: what the epochs train and how the schedule moves on (`EpochRunner`).
    state: the state to start from (fresh: the checkpoint's newest state replaces it, if any).
    config: the run's settings (the checkpoint's finished test reads its `max_epochs`).
    key: every random choice of the run derives from it.
    name: what the run is called in messages ("block 1", "end-to-end", "decoupled").
    hooks: its listeners, its checkpoint and its log (`FitHooks`).

  Returns:
    The final `FitState`.

  Raises:
    NonFiniteLossError: a loss became NaN or inf (the message names the epoch and the checkpoint kept).
    quicknets_jax.training.checkpoint.CheckpointError: the checkpoint to resume from is unreadable, or
      an epoch's checkpoint could not be saved.
  """
  events, checkpoint, log = hooks.events, hooks.checkpoint, hooks.log
  if checkpoint is not None:
    resumed = checkpoint.restore(state)
    if resumed is not None:
      state = resumed
      if log is not None:
        log(f"{name}: resumed after epoch {state.epoch}" + (" (finished)" if state.schedule.finished(config) else ""))
  state = runner.start(state)
  try:
    while not runner.finished(state):
      start = time.perf_counter()
      with CompileMeter() as compiled:
        with CompileMeter() as train_compiled:
          train, trained = runner.train_epoch(state, jax.random.fold_in(key, state.epoch))  # waits for the epoch
        trained_at = time.perf_counter()
        validated = runner.validate(state, train)
      validated_at = time.perf_counter()
      if not (math.isfinite(trained.loss) and math.isfinite(validated.loss)):
        raise NonFiniteLossError(
          f"{name}: non-finite loss at epoch {state.epoch + 1} (train {trained.loss}, val {validated.loss}); "
          f"the last good parameters are kept — lower --learning_rate (now {runner.learning_rate(state):g})"
          + _kept(checkpoint)
        )
      state, head, tail = runner.advance(state, train, trained, validated)
      record = dict(
        epoch=state.epoch,
        train_loss=trained.loss,
        train_accuracy=trained.accuracy,
        val_loss=validated.loss,
        val_accuracy=validated.accuracy,
        **head,
        seconds=validated_at - start,
        train_seconds=trained_at - start,  # the epoch's steps, their compile included
        val_seconds=validated_at - trained_at,
        compile_seconds=compiled.seconds,  # tracing + XLA compile (or the persistent cache's read) within it
        train_compile_seconds=train_compiled.seconds,
        **tail,
        stopped=state.schedule.stopped,
      )
      state = dataclasses.replace(state, history=(*state.history, record))
      try:
        if events is not None:
          events.epoch_done(EpochDone(runner.phase, None, state, record, runner.training_flops(state)))
      finally:
        if checkpoint is not None:
          saving = time.perf_counter()
          checkpoint.save(state)
          # kept in memory only (the record on disk was written before the save could be timed)
          record["checkpoint_seconds"] = time.perf_counter() - saving
  except BaseException:
    if checkpoint is not None:  # the epoch being written reaches the disk before the error goes on
      checkpoint.wait(raise_failure=False)
    raise
  if checkpoint is not None:  # every epoch of the run is on disk when it returns
    waiting = time.perf_counter()
    checkpoint.wait()
    if state.history:
      last = state.history[-1]
      last["checkpoint_seconds"] = last.get("checkpoint_seconds", 0.0) + time.perf_counter() - waiting
  return state


def fit(
  objective: Objective,
  params: PyTree,
  model_state: PyTree,
  data: FitData,
  config: FitConfig,
  key: jax.Array,
  *,
  name: str = "fit",
  hooks: FitHooks = FitHooks(),
) -> FitState:
  """Trains `params` on `data` under Appendix A's schedule (`run_epochs` over a `SequentialRunner`).

  Runs data parallel on the mesh of an enclosing `parallel.data_parallel(mesh)` block, if any (batches
  split over its devices, params replicated).

  Args:
    objective: the loss, the leaves that train and the loss's hyperparameters.
    params: the params to start from (the caller's arrays are never consumed).
    model_state: the model state to start from (likewise never consumed).
    data: the working set, its training and validation arrays.
    config: the schedule (learning rate, batch size, plateau and early stopping, epoch cap, ...).
    key: every random choice of the fit derives from it (the epoch's draw, then each step's key).
    name: what the fit is called in messages ("block 1", "end-to-end").
    hooks: its listeners, its checkpoint (resume from it, save every epoch) and its log (`FitHooks`).

  Returns:
    The final `FitState`; `best_params` / `best_model_state` are the best epoch's.

  Raises:
    ValueError: the working set or the validation set is empty, or an epoch draws more samples than
      the working set holds without class-balanced sampling.
    NonFiniteLossError: a loss became NaN or inf (the message names the epoch and the checkpoint kept).
    quicknets_jax.training.checkpoint.CheckpointError: the checkpoint to resume from is unreadable, or
      an epoch's checkpoint could not be saved.
  """
  runner = SequentialRunner.create(objective, data, config, name)
  state = init_fit_state(objective, params, model_state, config)
  return run_epochs(runner, state, config, key, name=name, hooks=hooks)


def compile_ahead(
  objective: Objective, params: PyTree, model_state: PyTree, data: FitData, config: FitConfig, key: jax.Array
) -> None:
  """Compiles the programs `fit` would run for these arguments, without running any.

  Meant for a thread that compiles a fit's epoch, its draw and its validation pass while an earlier fit
  trains: `fit` then finds them in jax's cache and starts at once. The fit's runner lowers its own
  drivers' programs (`SequentialRunner.compile`) from the arguments `fit` passes its first epoch (the
  same shapes, dtypes and placements), so they are the ones `fit` looks up. The training and validation
  inputs of `data` may be `jax.ShapeDtypeStruct`s: only their shapes are read. Nothing is compiled on a
  mesh (its context is not the calling thread's) or for streamed inputs; a fit left out here compiles
  its own programs as usual.

  Args:
    objective: the fit's objective.
    params: its starting params (their shapes and placement; the values are not read).
    model_state: its starting model state.
    data: its data, or one shaped like it (row values are not read).
    config: its schedule.
    key: a key of the kind the fit gets (its value is not read).

  Raises:
    ValueError: the data would be refused by `fit` (an empty working set or validation set).
  """
  if parallel.current_mesh() is not None:
    return
  runner = SequentialRunner.create(objective, data, config, "compile_ahead")
  runner.compile(runner.start(init_fit_state(objective, params, model_state, config)), key)


def _placed(data: FitData, mesh):
  """(training inputs, training targets) where the fit's steps read them: replicated over `mesh`, or on
  the default device. A streamed view stays a view: the epoch reads it batch by batch."""
  streamed = is_streamed(data.train.images)
  inputs = None if streamed else data.train.images
  if mesh is not None:  # every device gets the same rows; the extra ones of a rounded-up batch are masked
    inputs, targets = parallel.replicate((inputs, data.train.labels), mesh)
  else:  # the training arrays go to the device once (a no-op for device arrays): batches gather there
    inputs, targets = (
      x if isinstance(x, jax.ShapeDtypeStruct) else jax.device_put(x) for x in (inputs, data.train.labels)
    )
  return (data.train.images if streamed else inputs), targets


def _kept(checkpoint: Optional[FitCheckpointer]) -> str:
  """Where the last good state of a failed fit is, for its error message ("" without checkpoints)."""
  if checkpoint is None:
    return ""
  kept = checkpoint.latest_epoch()
  if kept is None:
    return "; nothing was checkpointed"
  return f"; the checkpoint of epoch {kept} in {checkpoint.directory} is kept"

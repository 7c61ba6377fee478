"""The end-to-end baseline: the QuickNet's backbone with only its final exit, trained as one network by
the same trainer and schedule, and the test accuracy of such a network after any epoch."""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from quicknets_jax.core import costs, rng
from quicknets_jax.core.progress import Log
from quicknets_jax.data.split import Split
from quicknets_jax.data.streaming import device_array, is_streamed, take
from quicknets_jax.models.base import EXIT, SUBNET, MultiExitModel, merge_blocks, parts_mask, split_blocks
from quicknets_jax.training import losses, timing
from quicknets_jax.training.checkpoint import FitCheckpointer
from quicknets_jax.training.events import Events, InPhase
from quicknets_jax.training.schedule import FitConfig
from quicknets_jax.training.step import Batch
from quicknets_jax.training.trainer import FitData, FitHooks, Objective, fit


@dataclasses.dataclass
class EndToEndRun:
  """A network trained as a whole (end to end, or jointly): its best-validation variables, how long it
  trained and its training FLOPs by part (`costs.fit_flops`)."""

  variables: list
  epochs: int
  best_epoch: int
  training_flops: float
  flops: dict
  history: list
  seconds: float
  phase_seconds: dict = dataclasses.field(default_factory=dict)  # `training.timing.fit_seconds` + "other"


def fit_whole_network(
  model: MultiExitModel,
  data: tuple[Split, Split],
  objective_of: Callable[[list], Objective],
  config: FitConfig,
  seed: int,
  *,
  phase: str,
  forward_cost: float,
  hooks: FitHooks = FitHooks(log=print),
) -> EndToEndRun:
  """Trains every block of `model` at once on the whole training split: the end-to-end baseline and SDN's
  joint training differ only in `objective_of(params)` (which parts train, which loss) and in the
  forward FLOPs per sample a step costs (`costs.fit_flops`).

  Initialisation follows `train_quicknet` (the seed's `rng.Stream.INIT`), so every method of a seed starts
  from the same weights.

  Args:
    model: the multi-exit model.
    data: the (train, val) splits.
    objective_of: the per-block params → the fit's `Objective`.
    config: the schedule.
    seed: fixes initialisation, batch order and every other random choice.
    phase: the fit's name in events and messages ("end_to_end", "joint").
    forward_cost: forward FLOPs per sample of what a step runs.
    hooks: its listeners (told after every epoch, as epochs of `phase`, with the run's FLOPs so far), its
      checkpoint (resume from it, save every epoch) and where the summary line goes.

  Returns:
    The best-validation variables, epochs, FLOPs by part and seconds.
  """
  start = time.perf_counter()
  checkpoint, log = hooks.checkpoint, hooks.log or (lambda message: None)
  train, val = (Split.of(split) for split in data)
  key = rng.seed_key(seed)
  params, state = split_blocks(model.init(rng.stream(key, rng.Stream.INIT)))
  n, n_val = len(train.labels), len(val.labels)
  fit_data = FitData.whole(
    Split(device_array(train.images), device_array(train.labels)),
    Split(device_array(val.images), device_array(val.labels)),
    model.num_classes,
  )
  name = phase.replace("_", "-")
  epoch_events = InPhase(
    hooks.events,
    phase,
    flops_so_far=lambda record: costs.total(costs.fit_flops(record["epoch"], n, n_val, forward_cost)),
  )
  result = fit(
    objective_of(params),
    params,
    state,
    fit_data,
    config,
    rng.stream(key, rng.Stream.BLOCKS),
    name=name,
    hooks=dataclasses.replace(hooks, events=epoch_events),
  )
  flops = costs.fit_flops(result.epoch, n, n_val, forward_cost)
  seconds = time.perf_counter() - start + (checkpoint.resumed_seconds if checkpoint is not None else 0.0)
  log(f"{name}: {result.epoch} epochs (best {result.best_epoch}), {costs.total(flops):.3g} FLOPs, {seconds:.1f}s")
  return EndToEndRun(
    merge_blocks(result.best_params, result.best_model_state),
    result.epoch,
    result.best_epoch,
    costs.total(flops),
    flops,
    list(result.history),
    seconds,
    timing.with_other(timing.fit_seconds(result.history), seconds),
  )


def end_to_end_parts(params: list) -> list:
  """Which parameters end-to-end training updates: every block's subnet and the last block's exit.

  Args:
    params: one params tree per block.

  Returns:
    One boolean mask tree per block (`models.base.parts_mask`), for `Objective.trainable`.
  """
  last = len(params) - 1
  return [parts_mask(p, (SUBNET,) + ((EXIT,) if k == last else ())) for k, p in enumerate(params)]


def train_end_to_end(
  model: MultiExitModel,
  train: Split,
  val: Split,
  config: FitConfig,
  seed: int,
  *,
  log: Log = print,
  events: Optional[Events] = None,
  checkpoint: Optional[FitCheckpointer] = None,
) -> EndToEndRun:
  """The baseline: the same backbone with only the final exit, trained end to end by the same trainer.

  Initialisation follows `train_quicknet`, so both start from the same weights.

  Args:
    model: the multi-exit model whose backbone and final exit train.
    train, val: the training and validation splits (`Split`s or (images, labels) pairs).
    config: the schedule.
    seed: fixes initialisation, batch order and every other random choice.
    log: where the summary line goes.
    events: told after every epoch (phase "end_to_end").
    checkpoint: resume from it and save every epoch.

  Returns:
    The trained network (`EndToEndRun`).
  """
  loss = losses.EndToEndLoss(model, config.augmentation_name, config.compute_dtype)

  def objective(params):
    return Objective(loss, end_to_end_parts(params))

  return fit_whole_network(
    model,
    (train, val),
    objective,
    config,
    seed,
    phase="end_to_end",
    forward_cost=model.end_to_end_cost(),
    hooks=FitHooks(events, checkpoint, log),
  )


def test_accuracy_fn(model: MultiExitModel, images, labels, batch_size: int):
  """(params, model_state) -> test accuracy of the end-to-end network's final exit.

  The test split is padded once to whole chunks of `batch_size` rows and a masked count runs per
  chunk, so the jitted count compiles once per process, whatever the split's size.

  Args:
    model: the multi-exit model (its final exit answers).
    images: [N, ...] test inputs, in memory or streamed.
    labels: [N] their classes.
    batch_size: rows per chunk (at most N are used).

  Returns:
    A function of (params, model_state) that returns the test accuracy as a float.
  """
  loss_fn = losses.EndToEndLoss(model)
  n = len(labels)
  batch_size = min(batch_size, n)
  padded = -(-n // batch_size) * batch_size
  rows = np.minimum(np.arange(padded), n - 1)
  starts = range(0, padded, batch_size)
  images = take(images, rows)
  labels = jnp.asarray(np.asarray(labels, np.int32)[rows])
  mask = jnp.asarray(np.arange(padded) < n, jnp.float32)
  if is_streamed(images):  # read chunk by chunk at every call: the split stays on disk
    chunks = lambda: images.stream([np.arange(s, s + batch_size) for s in starts])
  else:
    images = jnp.asarray(images)
    chunks = lambda: (images[s : s + batch_size] for s in starts)

  def accuracy(params, model_state):
    correct = sum(
      _correct_count(params, model_state, x, labels[s : s + batch_size], mask[s : s + batch_size], loss=loss_fn)
      for s, x in zip(starts, chunks())
    )
    return float(correct) / n

  return accuracy


@functools.partial(jax.jit, static_argnames=("loss",))
def _correct_count(params, model_state, x, y, mask, *, loss):
  _, aux = loss(params, Batch(x, y, mask), None, model_state=model_state)
  return jnp.sum(aux.correct * mask)

"""The end-to-end baseline: the QuickNet's backbone with only its final exit, trained as one network by
the same trainer and schedule (design.md §1), and the test accuracy of such a network after any epoch."""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from quicknets_jax.algorithms.events import EpochDone, Events
from quicknets_jax.core import costs
from quicknets_jax.data.streaming import device_array, is_streamed, take
from quicknets_jax.models.base import EXIT, SUBNET, MultiExitModel, merge_blocks, parts_mask, split_blocks
from quicknets_jax.training import losses
from quicknets_jax.training.checkpoint import FitCheckpointer
from quicknets_jax.training.schedule import FitConfig
from quicknets_jax.training.trainer import FitData, Objective, fit

Log = Callable[[str], None]


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


def fit_whole_network(
  model: MultiExitModel,
  images,
  labels,
  val_images,
  val_labels,
  make_objective: Callable[[list], Objective],
  config: FitConfig,
  seed: int,
  *,
  forward_cost: float,
  phase: str,
  name: str,
  log: Log = print,
  events: Optional[Events] = None,
  checkpoint: Optional[FitCheckpointer] = None,
  annotate: Optional[Callable[[dict], None]] = None,
) -> EndToEndRun:
  """Trains every block of `model` at once on the whole training split: the end-to-end baseline and SDN's
  joint training differ only in `make_objective(params)` (which parts train, which loss) and in the
  forward FLOPs per sample a step costs (`costs.fit_flops`).

  Initialisation follows `train_quicknet` (`model.init(fold_in(PRNGKey(seed), 0))`), so every method of a
  seed starts from the same weights. `annotate(record)` may add to each epoch's record (its history
  entry) before the epoch event; `checkpoint`: resume from it and save every epoch.
  """
  start = time.perf_counter()
  key = jax.random.PRNGKey(seed)
  params, state = split_blocks(model.init(jax.random.fold_in(key, 0)))
  labels = jnp.asarray(labels)
  n, n_val = int(labels.shape[0]), int(len(val_labels))
  data = FitData(
    device_array(images),
    labels,
    jnp.arange(n, dtype=jnp.int32),
    labels,
    device_array(val_images),
    jnp.asarray(val_labels),
  )

  def on_epoch(fit_state, record):
    if annotate is not None:
      annotate(record)
    if events is not None:
      spent = costs.total(costs.fit_flops(record["epoch"], n, n_val, forward_cost))
      events.epoch_done(EpochDone(phase, None, fit_state, record, spent))

  result = fit(
    make_objective(params),
    params,
    state,
    data,
    config,
    jax.random.fold_in(key, 1),
    num_classes=model.num_classes,
    name=name,
    checkpoint=checkpoint,
    log=log,
    on_epoch=on_epoch,
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
    result.history,
    seconds,
  )


def train_end_to_end(
  model: MultiExitModel,
  images,
  labels,
  val_images,
  val_labels,
  config: FitConfig,
  seed: int,
  log: Log = print,
  events: Optional[Events] = None,
  checkpoint: Optional[FitCheckpointer] = None,
) -> EndToEndRun:
  """The baseline: the same backbone with only the final exit, trained end to end by the same trainer.

  Initialisation follows `train_quicknet`, so both start from the same weights. `checkpoint`: resume
  from it and save every epoch.
  """
  last = model.num_blocks - 1
  loss = losses.end_to_end_loss(model, config.augmentation_name, config.compute_dtype)

  def objective(params):
    return Objective(loss, [parts_mask(p, (SUBNET,) + ((EXIT,) if k == last else ())) for k, p in enumerate(params)])

  return fit_whole_network(
    model,
    images,
    labels,
    val_images,
    val_labels,
    objective,
    config,
    seed,
    forward_cost=model.end_to_end_cost(),
    phase="end_to_end",
    name="end-to-end",
    log=log,
    events=events,
    checkpoint=checkpoint,
  )


def test_accuracy_fn(model: MultiExitModel, images, labels, batch_size: int):
  """(params, model_state) -> test accuracy of the end-to-end network's final exit.

  The test split is padded once to whole chunks of `batch_size` rows and a masked count runs per
  chunk, so the jitted count compiles once per process, whatever the split's size.
  """
  loss_fn = losses.end_to_end_loss(model)
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
      _correct_count(loss_fn, params, model_state, x, labels[s : s + batch_size], mask[s : s + batch_size])
      for s, x in zip(starts, chunks())
    )
    return float(correct) / n

  return accuracy


@functools.partial(jax.jit, static_argnums=0)
def _correct_count(loss_fn, params, model_state, x, y, mask):
  _, correct, _ = loss_fn(params, model_state, x, y, None, False)
  return jnp.sum(correct * mask)

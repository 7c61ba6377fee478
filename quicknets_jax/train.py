"""The one trainer: QuickNet blocks, commitment heads and end-to-end baselines all train here.

They differ only in the `Objective` — a per-sample loss over a param tree plus a mask of which leaves
train — never in the loop. An epoch runs inside one jit: the batch order is drawn on device from the
working set's index array (shuffled, or class-balanced as design.md §1 asks), the last partial batch
is padded and masked, and `lax.scan` runs the steps. Around it, on the host, sit Appendix A's
schedule (Adam, reduce-on-plateau ×0.5 with patience 1, early stopping after 3 epochs without a new
validation minimum, at most 100 epochs, best-validation params kept) and a NaN guard.

Every random choice comes from `fold_in(key, epoch)` and then the step number, so a fit resumed from
its `FitState` ends exactly where an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from quicknets_jax.data.sampling import draw_epoch

PyTree = Any
# loss_fn(params, model_state, inputs, targets, rng, train) -> (per-sample loss [B],
#                                                              per-sample correct [B], new model_state)
LossFn = Callable[..., tuple[jnp.ndarray, jnp.ndarray, PyTree]]


@dataclasses.dataclass(frozen=True)
class FitConfig:
  """Appendix A's schedule. Defaults: the paper's MLP setting."""

  learning_rate: float = 1e-3
  batch_size: int = 128
  max_epochs: int = 100
  plateau_factor: float = 0.5
  plateau_patience: int = 1
  early_stop_patience: int = 3
  balanced_sampling: bool = True
  eval_batch_size: int = 2048

  def __post_init__(self):
    if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
      raise ValueError(f"learning_rate must be a positive number, got {self.learning_rate}")
    if self.batch_size < 1 or self.eval_batch_size < 1:
      raise ValueError(f"batch sizes must be ≥ 1, got {self.batch_size}, {self.eval_batch_size}")
    if self.max_epochs < 1:
      raise ValueError(f"max_epochs must be ≥ 1, got {self.max_epochs}")
    if not 0 < self.plateau_factor <= 1:
      raise ValueError(f"plateau_factor must be in (0, 1], got {self.plateau_factor}")
    if self.plateau_patience < 0 or self.early_stop_patience < 1:
      raise ValueError("plateau_patience must be ≥ 0 and early_stop_patience ≥ 1, got "
                       f"{self.plateau_patience}, {self.early_stop_patience}")


@dataclasses.dataclass(frozen=True)
class Objective:
  """What to optimise: a per-sample loss and a bool mask (same tree as params) of the leaves that train.

  `eq=False` keeps identity hashing, so a jitted epoch is cached per objective object.
  """

  loss_fn: LossFn
  trainable: PyTree = None  # None: every leaf trains

  __hash__ = object.__hash__
  __eq__ = object.__eq__


class FitData(NamedTuple):
  """Arrays a fit reads. Batches are gathered on device as `inputs[positions[order]]`.

  Attributes:
    inputs, targets: the in-memory training arrays (images or cached features) and their targets.
    positions: int32 [n] the working set — rows of `inputs` that train.
    sample_classes: int32 [n] the class of each working-set row, for class-balanced sampling.
    val_inputs, val_targets: the validation arrays (every row is used).
  """

  inputs: jnp.ndarray
  targets: jnp.ndarray
  positions: jnp.ndarray
  sample_classes: jnp.ndarray
  val_inputs: jnp.ndarray
  val_targets: jnp.ndarray


@dataclasses.dataclass
class FitState:
  """Everything a fit needs to go on after an interruption (all host-side or device arrays)."""

  params: PyTree
  opt_state: PyTree
  model_state: PyTree
  best_params: PyTree
  best_model_state: PyTree
  best_val_loss: float = float("inf")
  best_epoch: int = 0
  learning_rate: float = 0.0
  epoch: int = 0  # epochs completed
  epochs_since_best: int = 0
  plateau_bad_epochs: int = 0
  stopped: bool = False
  history: list = dataclasses.field(default_factory=list)


def make_optimizer(trainable: PyTree, params: PyTree) -> optax.GradientTransformation:
  """Adam on the trainable leaves, nothing on the rest (big_vision's frozen-by-mask).

  The learning rate is applied outside, as a traced scalar, so reduce-on-plateau never recompiles.
  """
  if trainable is None:
    return optax.scale_by_adam()
  labels = jax.tree.map(lambda t: "train" if t else "freeze", trainable)
  jax.tree.map(lambda _, __: None, params, labels)  # fails early on a mask that does not fit
  return optax.multi_transform({"train": optax.scale_by_adam(), "freeze": optax.set_to_zero()}, labels)


def _pad_to_multiple(n: int, multiple: int) -> int:
  return max(1, math.ceil(n / multiple)) * multiple


def make_epoch_fn(objective: Objective, tx: optax.GradientTransformation, batch_size: int,
                  num_samples: int, num_classes: int, balanced: bool):
  """Jitted (params, opt_state, state, lr, data arrays, key) -> one epoch of steps, inside one XLA call."""
  num_steps = max(1, math.ceil(num_samples / batch_size))
  padded = num_steps * batch_size

  def epoch_fn(params, opt_state, model_state, learning_rate, inputs, targets, positions, sample_classes,
               key):
    draw_key, step_key = jax.random.split(key)
    order = draw_epoch(draw_key, sample_classes, num_classes, balanced)
    pad = padded - num_samples
    order = jnp.concatenate([order, jnp.zeros((pad,), order.dtype)]).reshape(num_steps, batch_size)
    mask = jnp.concatenate([jnp.ones((num_samples,)), jnp.zeros((pad,))]).reshape(num_steps, batch_size)

    def step(carry, xs):
      params, opt_state, model_state = carry
      batch_order, batch_mask, step_index = xs
      rows = positions[batch_order]
      x, y = inputs[rows], targets[rows]
      rng = jax.random.fold_in(step_key, step_index)

      def mean_loss(p):
        losses, correct, new_state = objective.loss_fn(p, model_state, x, y, rng, True)
        return jnp.sum(losses * batch_mask) / jnp.maximum(jnp.sum(batch_mask), 1.0), (losses, correct,
                                                                                       new_state)

      (_, (losses, correct, new_state)), grads = jax.value_and_grad(mean_loss, has_aux=True)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, jax.tree.map(lambda u: -learning_rate * u, updates))
      return (params, opt_state, new_state), (jnp.sum(losses * batch_mask), jnp.sum(correct * batch_mask))

    (params, opt_state, model_state), (loss_sums, correct_sums) = jax.lax.scan(
        step, (params, opt_state, model_state), (order, mask, jnp.arange(num_steps)))
    return params, opt_state, model_state, jnp.sum(loss_sums) / num_samples, jnp.sum(correct_sums) / num_samples

  return jax.jit(epoch_fn)


def make_eval_fn(loss_fn: LossFn, eval_batch_size: int):
  """Jitted (params, state, inputs, targets) -> (mean loss, accuracy); scans padded, masked chunks."""

  def eval_fn(params, model_state, inputs, targets):
    n = inputs.shape[0]
    padded = _pad_to_multiple(n, eval_batch_size)
    chunks = padded // eval_batch_size
    rows = jnp.minimum(jnp.arange(padded), n - 1).reshape(chunks, eval_batch_size)
    mask = (jnp.arange(padded) < n).reshape(chunks, eval_batch_size)

    def chunk(carry, xs):
      r, m = xs
      losses, correct, _ = loss_fn(params, model_state, inputs[r], targets[r], None, False)
      return carry, (jnp.sum(losses * m), jnp.sum(correct * m))

    _, (loss_sums, correct_sums) = jax.lax.scan(chunk, None, (rows, mask))
    return jnp.sum(loss_sums) / n, jnp.sum(correct_sums) / n

  return jax.jit(eval_fn)


def init_fit_state(objective: Objective, params: PyTree, model_state: PyTree, config: FitConfig) -> FitState:
  """A fresh FitState: Adam moments at zero, the configured learning rate."""
  tx = make_optimizer(objective.trainable, params)
  return FitState(params=params, opt_state=tx.init(params), model_state=model_state, best_params=params,
                  best_model_state=model_state, learning_rate=config.learning_rate)


def fit(objective: Objective, params: PyTree, model_state: PyTree, data: FitData, config: FitConfig,
        key: jax.Array, *, num_classes: int, name: str = "fit",
        on_epoch: Optional[Callable[[FitState, dict], None]] = None,
        resume: Optional[FitState] = None) -> FitState:
  """Trains `params` on `data` under Appendix A's schedule; returns the final FitState.

  `state.best_params` / `best_model_state` hold the best-validation parameters. `on_epoch(state,
  record)` is called after every epoch (progress, checkpoints). `resume` continues an interrupted fit.
  Raises FloatingPointError naming `name` and the epoch on a non-finite loss.
  """
  num_samples = int(data.positions.shape[0])
  if num_samples == 0:
    raise ValueError(f"{name}: the working set is empty; nothing to train")
  if data.val_inputs.shape[0] == 0:
    raise ValueError(f"{name}: the validation set is empty; raise --val_fraction")
  tx = make_optimizer(objective.trainable, params)
  state = resume if resume is not None else init_fit_state(objective, params, model_state, config)
  batch_size = min(config.batch_size, num_samples)
  epoch_fn = make_epoch_fn(objective, tx, batch_size, num_samples, num_classes, config.balanced_sampling)
  eval_fn = make_eval_fn(objective.loss_fn, config.eval_batch_size)

  while not state.stopped and state.epoch < config.max_epochs:
    start = time.perf_counter()
    epoch_key = jax.random.fold_in(key, state.epoch)
    params, opt_state, new_model_state, train_loss, train_acc = epoch_fn(
        state.params, state.opt_state, state.model_state, jnp.float32(state.learning_rate), data.inputs,
        data.targets, data.positions, data.sample_classes, epoch_key)
    val_loss, val_acc = eval_fn(params, new_model_state, data.val_inputs, data.val_targets)
    train_loss, train_acc, val_loss, val_acc = (float(v) for v in (train_loss, train_acc, val_loss, val_acc))
    if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
      raise FloatingPointError(
          f"{name}: non-finite loss at epoch {state.epoch + 1} (train {train_loss}, val {val_loss}); "
          f"the last good parameters are kept — lower --learning_rate (now {state.learning_rate:g})")
    state.params, state.opt_state, state.model_state = params, opt_state, new_model_state
    state.epoch += 1
    record = dict(epoch=state.epoch, train_loss=train_loss, train_accuracy=train_acc, val_loss=val_loss,
                  val_accuracy=val_acc, learning_rate=state.learning_rate, samples=num_samples,
                  seconds=time.perf_counter() - start)
    if val_loss < state.best_val_loss:
      state.best_val_loss, state.best_epoch = val_loss, state.epoch
      state.best_params, state.best_model_state = params, new_model_state
      state.epochs_since_best = state.plateau_bad_epochs = 0
    else:
      state.epochs_since_best += 1
      state.plateau_bad_epochs += 1
      if state.plateau_bad_epochs > config.plateau_patience:  # torch ReduceLROnPlateau semantics
        state.learning_rate *= config.plateau_factor
        state.plateau_bad_epochs = 0
    if state.epochs_since_best >= config.early_stop_patience:
      state.stopped = True
    record["stopped"] = state.stopped
    state.history.append(record)
    if on_epoch is not None:
      on_epoch(state, record)
  return state

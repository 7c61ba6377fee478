"""The one training step every fit takes: `train_step(state, batch, key) -> (state, metrics)`.

`TrainState` is a `flax.struct` pytree (step count, params, optimizer state with the learning rate
inside it, model state such as batch-norm statistics, and the loss's traced hyperparameters). What
does not change during a fit is bound once as `Statics` (scenic's `functools.partial` idiom): the
loss, the optimizer (`optimizer.Adam`: which leaves train), the device mesh and how convolutions are
lowered. `Statics` is hashable by value, so every fit with the same loss and mask reuses one
compiled step — blocks of one shape, the commitment heads of every block and every seed.

A `Batch` is padded to a fixed size and carries a 0/1 `mask`: the loss averages over the real rows
only, and the returned metrics are masked sums, so an epoch's mean is exact whatever its last batch
holds. A loss has flax's shape, `loss(params, batch, rng, hparams, *, model_state) -> (loss, aux)`
(see `Loss`); `train_step` is the one place that differentiates one. The drivers that run the step
(one jit per epoch, a Python loop, a streamed loop) are in `trainer`; `eval_sums` is the validation
counterpart.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Optional, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from quicknets_jax.models import layers
from quicknets_jax.training import parallel
from quicknets_jax.training.optimizer import Adam, with_learning_rate

PyTree = Any


@struct.dataclass
class TrainState:
  """Everything a training step reads and writes (a pytree: jit donates and checkpoints save it).

  Attributes:
    step: optimizer steps taken (int32).
    params: the parameters (trainable and frozen leaves alike; the optimizer's mask tells them apart).
    opt_state: the optimizer's state; the learning rate is inside it (`optimizer.learning_rate_of`).
    model_state: non-trained variables the model updates, e.g. batch-norm statistics ({} if none).
    hparams: values the loss reads that may change between epochs or fits without recompiling (SDN's
      per-epoch exit weights, a commitment head's class weights); None when the loss reads none.
  """

  step: jax.Array
  params: PyTree
  opt_state: optax.OptState
  model_state: PyTree
  hparams: PyTree = None

  @classmethod
  def create(
    cls, optimizer: Adam, params: PyTree, model_state: PyTree, learning_rate: float, hparams: PyTree = None
  ) -> TrainState:
    """A fresh state: step 0, zero Adam moments, `learning_rate` in the optimizer state.

    Args:
      optimizer: the optimizer whose state is initialised (`optimizer.Adam`, with its trainable mask).
      params: the parameters to start from.
      model_state: the model's non-trained variables ({} if none).
      learning_rate: the learning rate the optimizer state starts with.
      hparams: the loss's traced hyperparameters, or None when the loss reads none.

    Returns:
      A `TrainState` whose step is an int32 zero on the default device and whose optimizer state holds
      zero Adam moments and `learning_rate`.

    Raises:
      ValueError: the optimizer's trainable mask is not shaped like `params`.
    """
    return cls(
      step=jax.device_put(np.zeros((), np.int32)),
      params=params,
      opt_state=optimizer.init(params, learning_rate),
      model_state=model_state,
      hparams=hparams,
    )

  def with_learning_rate(self, learning_rate: float) -> TrainState:
    """This state with the optimizer's learning rate set to `learning_rate`.

    Args:
      learning_rate: the new learning rate (stored as float32, the value the step applies).

    Returns:
      A new `TrainState`; only its optimizer state differs from this one.
    """
    return self.replace(opt_state=with_learning_rate(self.opt_state, learning_rate))


class Batch(NamedTuple):
  """One padded batch: inputs, targets, and a float 0/1 mask of the rows that are real.

  Attributes:
    x: the inputs, [B, ...] (images or features entering a block).
    y: the targets, [B] (class labels, or a commitment head's 0/1 targets).
    mask: float [B], 1 for the rows that exist and 0 for the padding.
  """

  x: jax.Array
  y: jax.Array
  mask: jax.Array


class LossAux(NamedTuple):
  """What a loss returns beside the scalar it is differentiated by (`Loss`).

  Attributes:
    per_sample: float32 [B], each row's loss (padding rows included; the mask is applied by the reader).
    correct: float32 0/1 [B], whether each row was answered right.
    model_state: the model state after the pass (batch-norm statistics updated in training).
  """

  per_sample: jax.Array
  correct: jax.Array
  model_state: PyTree

  def metrics(self, mask: jax.Array) -> dict:
    """The step's metrics: "loss_sum" and "correct_sum", the per-sample values summed over `mask`'s rows.

    Args:
      mask: float 0/1 [B], the batch's real rows.

    Returns:
      A dict of two float32 scalars.
    """
    return dict(loss_sum=jnp.sum(self.per_sample * mask), correct_sum=jnp.sum(self.correct * mask))


def masked_mean(per_sample: jax.Array, mask: jax.Array) -> jax.Array:
  """The mean of `per_sample` over the rows whose `mask` is set (0 for an all-padding batch).

  The scalar every per-sample loss returns for `train_step` to differentiate.

  Args:
    per_sample: float [B], each row's loss.
    mask: float 0/1 [B], the batch's real rows.

  Returns:
    A float32 scalar, sum(per_sample · mask) / max(sum(mask), 1).
  """
  return jnp.sum(per_sample * mask) / jnp.maximum(jnp.sum(mask), 1.0)


class Loss(Protocol):
  """A loss in flax's shape: `loss(params, batch, rng, hparams, *, model_state) -> (loss, aux)`.

  `train_step` binds `model_state` and differentiates `loss` with respect to `params`. The losses of
  `training.losses` and `algorithms.decoupled` are frozen dataclasses, so equal settings make equal
  (and equally hashed) `Statics`, and the jit cache is shared. A loss that convolves declares what
  convolutions it runs in a `convolutions` attribute (`models.base.CONVOLUTIONS`), from which the
  trainer chooses how its steps run (`trainer.choose_drivers`); one that declares nothing runs none.

  Args:
    params: the parameters the gradient is taken of.
    batch: the padded `Batch` (inputs, targets, 0/1 mask of the real rows).
    rng: the step's key (augmentation, dropout) in training; None means inference mode (no
      augmentation, batch-norm statistics read and not updated).
    hparams: the train state's traced hyperparameters (None for most losses).
    model_state: the model's non-trained variables (batch-norm statistics; {} if none).

  Returns:
    A tuple `(loss, aux)`: the float32 scalar differentiated (for a per-sample loss, its `masked_mean`
    over the real rows) and the pass's auxiliary outputs: a `LossAux`, or any pytree with a
    `model_state` (the new model state) and a `metrics(mask)` method (what `train_step` returns).
  """

  def __call__(
    self, params: PyTree, batch: Batch, rng: Optional[jax.Array], hparams: PyTree, *, model_state: PyTree
  ) -> tuple[jax.Array, Any]: ...


@dataclasses.dataclass(frozen=True)
class Statics:
  """What a step needs that is not an array: bound once per fit, hashable, the jit cache's key.

  Attributes:
    loss: the loss (`Loss`: those of `losses`, frozen dataclasses, are equal when their settings are).
    optimizer: Adam and the mask of the leaves that train.
    mesh: a data-parallel device mesh (`parallel.make_mesh`), or None for one device.
    conv: how convolutions are lowered while the step is traced (`models.layers.IMPLEMENTATIONS`).
  """

  loss: Loss
  optimizer: Adam = Adam()
  mesh: Optional[Any] = None
  conv: str = "auto"


def train_step(state: TrainState, batch: Batch, key: jax.Array, *, statics: Statics) -> tuple[TrainState, dict]:
  """One optimizer step on the loss over `batch`: the one place a gradient is taken.

  The gradient is that of the scalar the loss returns (for a per-sample loss, its mean over the rows
  whose `mask` is set, `masked_mean`), with respect to the params, with the state's model state bound;
  with a mesh, the batch is first split over its devices (`parallel.shard_batch`).

  Args:
    state: the train state before the step.
    batch: the padded batch; rows whose `mask` is 0 add nothing to the loss or the metrics.
    key: this step's key (augmentation, dropout).
    statics: the loss, optimizer and mesh (bind with `functools.partial`).

  Returns:
    A tuple `(new_state, metrics)`. `new_state` has its step count raised by one, the optimizer's update
    applied to its params and the model state the loss returned; `metrics` is the loss's
    `aux.metrics(mask)`: for a `LossAux`, a dict whose "loss_sum" and "correct_sum" are float32 scalars,
    the per-sample losses and correct flags summed over the real rows of the batch.
  """
  if statics.mesh is not None:  # data parallel: each device takes its rows of the batch (parallel.py)
    batch = Batch(*parallel.shard_batch(tuple(batch), statics.mesh))
  loss_fn = functools.partial(statics.loss, model_state=state.model_state)
  with layers.conv_implementation(statics.conv):  # how the loss's convolutions are traced
    (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, key, state.hparams)
  updates, opt_state = statics.optimizer.transform().update(grads, state.opt_state, state.params)
  new_state = state.replace(
    step=state.step + 1,
    params=optax.apply_updates(state.params, updates),
    opt_state=opt_state,
    model_state=aux.model_state,
  )
  return new_state, aux.metrics(batch.mask)


def eval_sums(
  state: TrainState, batch: Batch, *, statics: Statics, rows_per_pass: Optional[int] = None
) -> tuple[jax.Array, jax.Array]:
  """(loss sum, correct sum) over the rows of `batch` whose `mask` is set, in inference mode.

  The loss runs with no rng (inference mode), so nothing is augmented and the model state is not
  updated; the validation counterpart of `train_step`. Its `aux` must be a `LossAux`.

  With `rows_per_pass`, the per-sample losses are computed that many rows at a time (a loop inside the
  program) and passes whose rows are all masked out are skipped; the sums are then taken over the whole
  batch as without it. A convolution's patch products over a large batch do not fit the CPU's caches
  (2–4× slower per row at 2,048 rows than at 256). XLA rounds a row's loss slightly differently in a
  smaller batch, so the sums agree with a whole-batch pass to float round-off (the last bits).

  Args:
    state: the train state whose params, model state and hparams are evaluated.
    batch: the padded batch; rows whose `mask` is 0 add nothing.
    statics: the loss, optimizer and mesh (bind with `functools.partial`).
    rows_per_pass: rows computed at once (None: the whole batch). Ignored with a mesh, or when it does
      not divide the batch.

  Returns:
    A tuple `(loss_sum, correct_sum)` of float32 scalars.
  """
  if statics.mesh is not None:
    batch = Batch(*parallel.shard_batch(tuple(batch), statics.mesh))
  mask = batch.mask

  def per_sample(batch):
    with layers.conv_implementation(statics.conv):
      _, aux = statics.loss(state.params, batch, None, state.hparams, model_state=state.model_state)
    return aux.per_sample, aux.correct

  size = mask.shape[0]
  if rows_per_pass is None or statics.mesh is not None or size <= rows_per_pass or size % rows_per_pass:
    losses, correct = per_sample(batch)
  else:
    losses, correct = _in_passes(per_sample, batch, mask, rows_per_pass)
  return jnp.sum(jnp.where(mask, losses, 0.0)), jnp.sum(jnp.where(mask, correct, 0.0))


def _in_passes(per_sample, batch: Batch, mask, rows: int):
  """`per_sample(batch)` computed `rows` rows at a time; passes with no masked-in row give zeros."""
  passes = mask.shape[0] // rows
  pieces = jax.tree.map(lambda a: a.reshape(passes, rows, *a.shape[1:]), batch)
  live = jnp.any(mask.reshape(passes, rows) > 0, axis=1)
  shapes = jax.eval_shape(per_sample, jax.tree.map(lambda a: a[0], pieces))

  def one(args):
    piece, alive = args
    return jax.lax.cond(
      alive, lambda: per_sample(piece), lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    )

  outputs = jax.lax.map(one, (pieces, live))
  return jax.tree.map(lambda o: o.reshape(passes * rows, *o.shape[2:]), outputs)

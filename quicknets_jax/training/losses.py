"""Per-sample losses the trainer optimises, for a block, a commitment head or a whole network.

Each is a frozen dataclass in flax's shape (`step.Loss`): `loss(params, batch, rng, hparams, *,
model_state)` returns `(loss, aux)`, the mean of its per-sample values over the batch's real rows
(`step.masked_mean`, what `step.train_step` differentiates) and a `step.LossAux` (per-sample loss,
per-sample correct, new model state). `rng` None means inference mode. Equal settings make equal (and
equally hashed) losses, so the jitted steps that take one as a static argument compile once per
process for every fit that trains with it — blocks of one shape, every seed.

Each takes the run's training-time augmentation by name (`augment`, `data.augment.AUGMENTATIONS`, or
None) and applies it to the raw images with the step's rng before they enter the network — only in
training, and only where raw images enter (block 0, a recomputed frozen prefix, a whole network).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from quicknets_jax.core import exits
from quicknets_jax.data.augment import augment as augment_images
from quicknets_jax.models.base import COMMIT, Block, MultiExitModel, cast_floating, most_convolutions, run_block
from quicknets_jax.training.step import Batch, LossAux, masked_mean


def augment_inputs(augment: Optional[str], x, rng, train):
  """The augmentation called `augment` (e.g. "crop_flip") applied to raw images `x` with the step's rng.

  The identity for evaluation (`train` False or no rng) and when `augment` is None.

  Args:
    augment: the augmentation's name (`data.augment.AUGMENTATIONS`), or None.
    x: a batch of raw images, [B, ...].
    rng: the step's key, or None.
    train: whether the step trains.

  Returns:
    The augmented batch, or `x` itself.
  """
  if not train or rng is None or augment is None:
    return x
  return augment_images(augment, x, rng)


def cross_entropy(logits, labels):
  """Per-sample softmax cross-entropy and correctness.

  Args:
    logits: float [B, C].
    labels: int class labels, [B].

  Returns:
    A tuple `(losses, correct)` of the cross-entropies [B] and a float32 [B] that is 1.0 where the arg
    max of the logits is the label.
  """
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return losses, (jnp.argmax(logits, -1) == labels).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class BlockLoss:
  """CE of one block's exit on the features entering it (its frozen prefix already applied or cached).

  Attributes:
    block: the block that trains.
    augment: the augmentation of the raw images, for a block that reads them (block 0); None: none.
    learned_threshold: with τ, the per-sample "correct" it reports is "correct with confidence > τ":
      the fit's accuracy is then the fraction of samples the block would remove (before its commitment
      head exists), which QuickNet+'s learned-set budget monitors on validation.
    compute_dtype: the dtype the network runs in (every loss here takes it; None: float32); the loss
      itself is float32 (`models.base.run_block`).
  """

  block: Block
  augment: Optional[str] = None
  learned_threshold: Optional[float] = None
  compute_dtype: Optional[str] = None

  @property
  def convolutions(self) -> str:
    """What convolutions the loss runs (`models.base.CONVOLUTIONS`): its block declares it."""
    return self.block.convolutions

  def __call__(self, params, batch: Batch, rng, hparams=None, *, model_state):
    """The block's loss on a batch.

    Args:
      params: the block's params.
      batch: the features entering the block (raw images for block 0), [B, ...], int class labels [B]
        and the 0/1 mask of the real rows.
      rng: the step's key (augmentation); None: inference mode (no augmentation, batch-norm statistics
        read, not updated).
      hparams: unused.
      model_state: the block's model state (batch-norm statistics; {} if none).

    Returns:
      A tuple `(loss, aux)`: the mean cross-entropy over the real rows, and a `LossAux` of the float32
      per-sample cross-entropies [B], the float32 0/1 per-sample correctness [B] (with
      `learned_threshold`, correct and confident) and the block's new model state.
    """
    del hparams
    x, y, mask = batch
    train = rng is not None
    x = augment_inputs(self.augment, x, rng, train)
    (_, logits), new_state = run_block(
      self.block, params, model_state, x, train, method=Block.features_and_logits, compute_dtype=self.compute_dtype
    )
    losses, correct = cross_entropy(logits, y)
    if self.learned_threshold is not None:
      correct = correct * (exits.confidence(jax.nn.softmax(logits)) > self.learned_threshold)
    return masked_mean(losses, mask), LossAux(losses, correct, new_state)


@dataclasses.dataclass(frozen=True)
class BlockLossThroughPrefix:
  """CE of block j on raw inputs, recomputing the frozen blocks 0..j−1 every step (no feature cache).

  The raw images are augmented before they enter the prefix. The frozen prefix's variables are arrays,
  so they travel in the train state's `hparams` (a pair (params per block, model state per block)): the
  loss stays hashable, and every seed's block j shares one compiled step.

  Attributes:
    model: the multi-exit model.
    j: the block that trains.
    augment: as `BlockLoss`.
    learned_threshold: as `BlockLoss`.
    compute_dtype: as `BlockLoss`.
  """

  model: MultiExitModel
  j: int
  augment: Optional[str] = None
  learned_threshold: Optional[float] = None
  compute_dtype: Optional[str] = None

  @property
  def convolutions(self) -> str:
    """What convolutions the loss runs (`models.base.CONVOLUTIONS`): block j or its prefix declares it."""
    return most_convolutions(self.model.blocks[: self.j + 1])

  def __call__(self, params, batch: Batch, rng, hparams, *, model_state):
    """Block j's loss on a batch of raw inputs, through the frozen prefix.

    Args:
      params: block j's params.
      batch: raw images [B, ...], int class labels [B] and the 0/1 mask of the real rows.
      rng: the step's key (augmentation); None: inference mode. In training, block j's batch-norm
        statistics update; the prefix always runs in inference mode and gets no gradient.
      hparams: a pair `(frozen_params, frozen_state)`, lists indexed by block, for blocks 0..j−1.
      model_state: block j's model state.

    Returns:
      A tuple `(loss, aux)`, as `BlockLoss` returns it, with block j's new model state.
    """
    frozen_params, frozen_state = hparams
    x, y, mask = batch
    x = augment_inputs(self.augment, x, rng, rng is not None)
    for k in range(self.j):
      x, _ = run_block(
        self.model.blocks[k],
        frozen_params[k],
        frozen_state[k],
        x,
        False,
        method=Block.features,
        compute_dtype=self.compute_dtype,
      )
    inner = BlockLoss(self.model.blocks[self.j], None, self.learned_threshold, self.compute_dtype)
    return inner(params, Batch(jax.lax.stop_gradient(x), y, mask), rng, model_state=model_state)


@dataclasses.dataclass(frozen=True)
class CommitmentLoss:
  """Weighted binary CE of the commitment logit against "the exit was right" (targets in {0, 1}), on the
  head's own inputs (`Block.commit_inputs` of the frozen block's features).

  Only the head is part of the loss (its params are `params["commit_head"]`), so heads of the same
  shape — the logits heads of every block, a block's head in every seed — are equal losses and share
  one compiled epoch. `hparams` = (positive weight, negative weight) balances the classes (most targets
  are 1); they are traced, so heads that differ only in them share it too. `correct` reports whether
  the sign of the logit matches the target.

  Attributes:
    head: the commitment head module (`Block.commit_head`).
    compute_dtype: the dtype the head runs in (None: float32); the loss itself is float32.
  """

  head: nn.Module
  compute_dtype: Optional[str] = None

  @property
  def convolutions(self) -> str:
    """What convolutions the loss runs (`models.base.CONVOLUTIONS`): a commitment head reads features through dense layers and pooling: none."""
    return "none"

  @classmethod
  def of(cls, block: Block, compute_dtype: Optional[str] = None) -> CommitmentLoss:
    """The commitment loss of `block`'s head.

    Args:
      block: the block whose `commit_head` the loss trains.
      compute_dtype: the dtype the head runs in (None: float32).

    Returns:
      The `CommitmentLoss` of that head.
    """
    return cls(block.commit_head, compute_dtype)

  def __call__(self, params, batch: Batch, rng, hparams, *, model_state):
    """The head's weighted binary cross-entropy on a batch.

    Args:
      params: params holding the head's under `"commit_head"` (`models.base.COMMIT`).
      batch: the head's inputs [B, ...] (`Block.commit_inputs` of the frozen block's features), the
        targets [B] (1 where the block's exit was right and 0 where it was wrong) and the 0/1 mask of the
        real rows.
      rng: unused (the head has no training-mode behaviour).
      hparams: a pair `(positive_weight, negative_weight)`, the weights of targets 1 and 0.
      model_state: the model state, returned as it is.

    Returns:
      A tuple `(loss, aux)`: the mean weighted loss over the real rows, and a `LossAux` of the float32
      weighted losses [B], a float32 [B] that is 1.0 where the logit's sign matches the target, and
      `model_state` unchanged.
    """
    del rng
    features, target, mask = batch
    positive_weight, negative_weight = hparams
    head_params, x = params[COMMIT], features
    if self.compute_dtype is not None:
      head_params, x = cast_floating(head_params, self.compute_dtype), jnp.asarray(x).astype(self.compute_dtype)
    logit = self.head.apply({"params": head_params}, x)
    if self.compute_dtype is not None:
      logit = logit.astype(jnp.float32)
    target = target.astype(jnp.float32)
    weights = jnp.where(target > 0.5, positive_weight, negative_weight)
    losses = weights * optax.sigmoid_binary_cross_entropy(logit, target)
    correct = ((logit > 0) == (target > 0.5)).astype(jnp.float32)
    return masked_mean(losses, mask), LossAux(losses, correct, model_state)


@dataclasses.dataclass(frozen=True)
class EndToEndLoss:
  """CE of the final exit through every block, all trained together (the end-to-end baseline).

  Attributes:
    model: the multi-exit model; only its last exit is trained on.
    augment: as `BlockLoss`.
    compute_dtype: as `BlockLoss`.
  """

  model: MultiExitModel
  augment: Optional[str] = None
  compute_dtype: Optional[str] = None

  @property
  def convolutions(self) -> str:
    """What convolutions the loss runs (`models.base.CONVOLUTIONS`): a block of the model declares it."""
    return self.model.convolutions

  def __call__(self, params, batch: Batch, rng, hparams=None, *, model_state):
    """The final exit's loss on a batch, through every block.

    Args:
      params: a sequence of params, one per block.
      batch: raw images [B, ...], int class labels [B] and the 0/1 mask of the real rows.
      rng: the step's key (augmentation); None: inference mode (no augmentation, batch-norm statistics
        read, not updated).
      hparams: unused.
      model_state: a sequence of model states, one per block.

    Returns:
      A tuple `(loss, aux)`: the final exit's mean cross-entropy over the real rows, and a `LossAux` of
      its float32 per-sample cross-entropies [B] and 0/1 correctness [B], and the list of every block's
      new model state.
    """
    del hparams
    x, y, mask = batch
    train = rng is not None
    x = augment_inputs(self.augment, x, rng, train)
    state = model_state
    new_state = list(state)
    for k, block in enumerate(self.model.blocks[:-1]):
      x, new_state[k] = run_block(block, params[k], state[k], x, train, Block.features, self.compute_dtype)
    (_, logits), new_state[-1] = run_block(
      self.model.blocks[-1], params[-1], state[-1], x, train, Block.features_and_logits, self.compute_dtype
    )
    losses, correct = cross_entropy(logits, y)
    return masked_mean(losses, mask), LossAux(losses, correct, new_state)


@dataclasses.dataclass(frozen=True)
class JointLoss:
  """SDN's weighted joint loss (Kaya et al. 2019): Σ_i τ_i·CE_i over the internal exits + CE of the final exit.

  Every block runs (and trains) together, on the augmented images. In training τ comes from `hparams`
  ([E−1] weights per epoch, see `sdn.loss_weights`); in validation (and when `hparams` is None) the
  maximum weights `max_weights` apply, so validation losses of different epochs compare. `correct` is
  the final exit's.

  Attributes:
    model: the multi-exit model.
    max_weights: τ^max, one weight per internal exit (any array-like is stored as a tuple of floats).
    augment: as `BlockLoss`.
    compute_dtype: as `BlockLoss`.

  Raises:
    ValueError: `max_weights` does not hold one weight per internal exit.
  """

  model: MultiExitModel
  max_weights: tuple[float, ...]
  augment: Optional[str] = None
  compute_dtype: Optional[str] = None

  @property
  def convolutions(self) -> str:
    """What convolutions the loss runs (`models.base.CONVOLUTIONS`): a block of the model declares it."""
    return self.model.convolutions

  def __post_init__(self):
    object.__setattr__(self, "max_weights", tuple(float(w) for w in np.asarray(self.max_weights).reshape(-1)))
    if len(self.max_weights) != self.model.num_blocks - 1:
      raise ValueError(
        f"max_weights needs one weight per internal exit ({self.model.num_blocks - 1}), got {len(self.max_weights)}"
      )

  def __call__(self, params, batch: Batch, rng, hparams=None, *, model_state):
    """The weighted sum of every exit's loss on a batch.

    Args:
      params: a sequence of params, one per block.
      batch: raw images [B, ...], int class labels [B] and the 0/1 mask of the real rows.
      rng: the step's key (augmentation); None: inference mode (no augmentation, batch-norm statistics
        read, not updated, `max_weights` applied).
      hparams: float [E−1], this epoch's weights of the internal exits (in training); None: `max_weights`.
      model_state: a sequence of model states, one per block.

    Returns:
      A tuple `(loss, aux)`: the mean weighted total over the real rows, and a `LossAux` of the float32
      per-sample weighted totals [B], the final exit's 0/1 correctness [B], and the list of every block's
      new model state.
    """
    x, y, mask = batch
    train = rng is not None
    x = augment_inputs(self.augment, x, rng, train)
    weights = jnp.asarray(self.max_weights, jnp.float32) if hparams is None or not train else hparams
    state = model_state
    new_state = list(state)
    total = 0.0
    for k, block in enumerate(self.model.blocks):
      (x, logits), new_state[k] = run_block(
        block, params[k], state[k], x, train, Block.features_and_logits, self.compute_dtype
      )
      losses, correct = cross_entropy(logits, y)
      total = total + (losses if k == self.model.num_blocks - 1 else weights[k] * losses)
    return masked_mean(total, mask), LossAux(total, correct, new_state)

"""Per-sample losses the trainer optimises, built for a block, a commitment head or a whole network.

Each takes the run's training-time augmentation by name (`augment`, `data.augment.AUGMENTATIONS`, or
None) and applies it to the raw images with the step's rng before they enter the network — only in
training, and only where raw images enter (block 0, a recomputed frozen prefix, a whole network).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from quicknets_jax.core import exits
from quicknets_jax.data.augment import augment as augment_images
from quicknets_jax.models.base import Block, MultiExitModel, run_block


def augment_inputs(augment: Optional[str], x, rng, train):
  """The augmentation called `augment` (e.g. "crop_flip") applied to raw images `x` with the step's rng;
  identity for evaluation (train False or no rng) and when `augment` is None."""
  if not train or rng is None or augment is None:
    return x
  return augment_images(augment, x, rng)


def cross_entropy(logits, labels):
  """Per-sample softmax cross-entropy and correctness."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return losses, (jnp.argmax(logits, -1) == labels).astype(jnp.float32)


@functools.cache  # one loss object per block config, so jitted epochs are reused
def block_loss(
  block: Block,
  augment: Optional[str] = None,
  learned_threshold: Optional[float] = None,
  compute_dtype: Optional[str] = None,
):
  """CE of one block's exit on the features entering it (its frozen prefix already applied or cached).

  `augment` only for a block that reads raw images (block 0). With `learned_threshold` τ, the
  per-sample "correct" it reports is "correct with confidence > τ": the fit's accuracy is then the
  fraction of samples the block would remove (before its commitment head exists), which QuickNet+'s
  learned-set budget monitors on validation.

  `compute_dtype` (every loss here takes it; None: float32): the network runs in it, the loss in float32
  (`models.base.run_block`).
  """

  def loss_fn(params, state, x, y, rng, train):
    x = augment_inputs(augment, x, rng, train)
    (_, logits), new_state = run_block(
      block, params, state, x, train, method=Block.features_and_logits, compute_dtype=compute_dtype
    )
    losses, correct = cross_entropy(logits, y)
    if learned_threshold is not None:
      correct = correct * (exits.confidence(jax.nn.softmax(logits)) > learned_threshold)
    return losses, correct, new_state

  return loss_fn


def block_loss_through_prefix(
  model: MultiExitModel,
  j: int,
  frozen_params: Sequence[dict],
  frozen_state: Sequence[dict],
  augment: Optional[str] = None,
  learned_threshold: Optional[float] = None,
  compute_dtype: Optional[str] = None,
):
  """CE of block j on raw inputs, recomputing the frozen blocks 0..j−1 every step (no feature cache);
  the raw images are augmented before they enter the prefix."""
  inner = block_loss(model.blocks[j], None, learned_threshold, compute_dtype)

  def loss_fn(params, state, x, y, rng, train):
    x = augment_inputs(augment, x, rng, train)
    for k in range(j):
      x, _ = run_block(
        model.blocks[k], frozen_params[k], frozen_state[k], x, False, method=Block.features, compute_dtype=compute_dtype
      )
    return inner(params, state, jax.lax.stop_gradient(x), y, rng, train)

  return loss_fn


@functools.cache
def commitment_loss(block: Block, compute_dtype: Optional[str] = None):
  """Weighted binary CE of the commitment logit against "the exit was right" (targets in {0, 1}), on the
  head's own inputs (`Block.commit_inputs` of the frozen block's features).

  `loss_args` = (positive weight, negative weight) balances the classes (most targets are 1); they
  are traced, so every block's commitment head shares one compiled epoch. `correct` reports whether
  the sign of the logit matches the target.
  """

  def loss_fn(params, state, features, target, rng, train, loss_args):
    del rng, train
    positive_weight, negative_weight = loss_args
    logit, _ = run_block(block, params, state, features, False, Block.commit_from_inputs, compute_dtype)
    target = target.astype(jnp.float32)
    weights = jnp.where(target > 0.5, positive_weight, negative_weight)
    losses = weights * optax.sigmoid_binary_cross_entropy(logit, target)
    return losses, ((logit > 0) == (target > 0.5)).astype(jnp.float32), state

  return loss_fn


@functools.cache
def end_to_end_loss(model: MultiExitModel, augment: Optional[str] = None, compute_dtype: Optional[str] = None):
  """CE of the final exit through every block, all trained together (the end-to-end baseline)."""

  def loss_fn(params, state, x, y, rng, train):
    x = augment_inputs(augment, x, rng, train)
    new_state = list(state)
    for k, block in enumerate(model.blocks[:-1]):
      x, new_state[k] = run_block(block, params[k], state[k], x, train, Block.features, compute_dtype)
    (_, logits), new_state[-1] = run_block(
      model.blocks[-1], params[-1], state[-1], x, train, Block.features_and_logits, compute_dtype
    )
    return (*cross_entropy(logits, y), new_state)

  return loss_fn


def joint_loss(model: MultiExitModel, max_weights, augment: Optional[str] = None, compute_dtype: Optional[str] = None):
  """SDN's weighted joint loss (Kaya et al. 2019): Σ_i τ_i·CE_i over the internal exits + CE of the final exit.

  Every block runs (and trains) together, on the augmented images. τ arrives per epoch as the keyword
  `hparams` ([E−1] weights, see `sdn.loss_weights`); without it — validation — the maximum weights
  `max_weights` apply, so validation losses of different epochs compare. `correct` is the final exit's.
  """
  max_weights = jnp.asarray(max_weights, jnp.float32)
  if max_weights.shape != (model.num_blocks - 1,):
    raise ValueError(
      f"max_weights needs one weight per internal exit ({model.num_blocks - 1}), got shape {max_weights.shape}"
    )

  def loss_fn(params, state, x, y, rng, train, hparams=None):
    x = augment_inputs(augment, x, rng, train)
    weights = max_weights if hparams is None else hparams
    new_state = list(state)
    total = 0.0
    for k, block in enumerate(model.blocks):
      (x, logits), new_state[k] = run_block(
        block, params[k], state[k], x, train, Block.features_and_logits, compute_dtype
      )
      losses, correct = cross_entropy(logits, y)
      total = total + (losses if k == model.num_blocks - 1 else weights[k] * losses)
    return total, correct, new_state

  return loss_fn

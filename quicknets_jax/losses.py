"""Per-sample losses the trainer optimises, built for a block, a commitment head or a whole network."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import optax

from quicknets_jax.models.base import Block, MultiExitModel, run_block


def cross_entropy(logits, labels):
  """Per-sample softmax cross-entropy and correctness."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return losses, (jnp.argmax(logits, -1) == labels).astype(jnp.float32)


def block_loss(block: Block):
  """CE of one block's exit on the features entering it (its frozen prefix already applied or cached)."""

  def loss_fn(params, state, x, y, rng, train):
    del rng
    (_, logits), new_state = run_block(block, params, state, x, train, method=Block.features_and_logits)
    return (*cross_entropy(logits, y), new_state)

  return loss_fn


def block_loss_through_prefix(model: MultiExitModel, j: int, frozen_params: Sequence[dict],
                              frozen_state: Sequence[dict]):
  """CE of block j on raw inputs, recomputing the frozen blocks 0..j−1 every step (no feature cache)."""
  inner = block_loss(model.blocks[j])

  def loss_fn(params, state, x, y, rng, train):
    for k in range(j):
      x, _ = run_block(model.blocks[k], frozen_params[k], frozen_state[k], x, False, method=Block.features)
    return inner(params, state, jax.lax.stop_gradient(x), y, rng, train)

  return loss_fn


def commitment_loss(block: Block, positive_weight: float, negative_weight: float):
  """Weighted binary CE of the commitment logit against "the exit was right" (targets in {0, 1}).

  The weights balance the classes (most targets are 1); `correct` reports whether the sign of the
  logit matches the target.
  """

  def loss_fn(params, state, features, target, rng, train):
    del rng, train
    logit = block.apply({"params": params, **state}, features, method=Block.commit)
    target = target.astype(jnp.float32)
    weights = jnp.where(target > 0.5, positive_weight, negative_weight)
    losses = weights * optax.sigmoid_binary_cross_entropy(logit, target)
    return losses, ((logit > 0) == (target > 0.5)).astype(jnp.float32), state

  return loss_fn


def end_to_end_loss(model: MultiExitModel):
  """CE of the final exit through every block, all trained together (the end-to-end baseline)."""

  def loss_fn(params, state, x, y, rng, train):
    del rng
    new_state = list(state)
    for k, block in enumerate(model.blocks[:-1]):
      x, new_state[k] = run_block(block, params[k], state[k], x, train, method=Block.features)
    (_, logits), new_state[-1] = run_block(model.blocks[-1], params[-1], state[-1], x, train,
                                           method=Block.features_and_logits)
    return (*cross_entropy(logits, y), new_state)

  return loss_fn

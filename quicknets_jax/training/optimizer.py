"""The optimizer every fit uses: Adam on the trainable leaves, nothing on the frozen ones.

Frozen leaves are masked out with `optax.multi_transform` (big_vision's frozen-by-mask), and the
learning rate lives in the optimizer state (`optax.inject_hyperparams`), so a plateau schedule
changes a value of the state between epochs and never recompiles a step. `Adam` is a hashable
description of the transform: equal descriptions build equal transforms, so jitted steps that take it
as a static argument compile once for every fit that trains the same leaves the same way.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import numpy as np
import optax

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Mask:
  """A bool pytree (True: the leaf trains) in a hashable form: its structure and its leaves.

  Attributes:
    treedef: the tree's structure (`jax.tree.flatten`'s treedef).
    leaves: one flag per leaf, in flattening order; True where the leaf trains.
  """

  treedef: Any
  leaves: tuple[bool, ...]

  @classmethod
  def of(cls, tree: PyTree) -> Optional[Mask]:
    """The mask of a bool tree (None stays None: every leaf trains).

    Args:
      tree: a pytree of bools shaped like the params, a `Mask` (returned as it is), or None.

    Returns:
      The `Mask` of `tree`, or None when `tree` is None.
    """
    if tree is None or isinstance(tree, Mask):
      return tree
    leaves, treedef = jax.tree.flatten(tree)
    return cls(treedef, tuple(bool(leaf) for leaf in leaves))

  def tree(self) -> PyTree:
    """The bool tree again.

    Returns:
      The pytree of Python bools with the structure `treedef` describes.
    """
    return jax.tree.unflatten(self.treedef, list(self.leaves))


@dataclasses.dataclass(frozen=True)
class Adam:
  """Adam (optax's moments) on the leaves `trainable` marks, with PyTorch's L2 `weight_decay`.

  Attributes:
    trainable: which leaves train (`Mask`); None: every leaf.
    weight_decay: wd·param added to the gradient before the moments (L2, as PyTorch's Adam; not
      AdamW's decoupled decay).
  """

  trainable: Optional[Mask] = None
  weight_decay: float = 0.0

  def transform(self) -> optax.GradientTransformation:
    """The optax transform; its state holds the learning rate (`learning_rate_of`, `with_learning_rate`).

    Adam's moment scaling (after the L2 term when `weight_decay` is set), then the learning rate, on
    the trainable leaves; the frozen leaves' updates are zeros (`optax.multi_transform`).

    Returns:
      An `optax.GradientTransformation` made by `optax.inject_hyperparams`; its learning rate starts at
      0.0 and is set by `init` or `with_learning_rate`.
    """
    return optax.inject_hyperparams(self._build)(learning_rate=0.0)

  def _build(self, learning_rate) -> optax.GradientTransformation:
    adam = optax.scale_by_adam()
    if self.weight_decay:
      adam = optax.chain(optax.add_decayed_weights(self.weight_decay), adam)
    adam = optax.chain(adam, optax.scale_by_learning_rate(learning_rate))
    if self.trainable is None:
      return adam
    labels = jax.tree.map(lambda t: "train" if t else "freeze", self.trainable.tree())
    return optax.multi_transform({"train": adam, "freeze": optax.set_to_zero()}, labels)

  def init(self, params: PyTree, learning_rate: float) -> optax.OptState:
    """The optimizer state of `params`: zero moments, the given learning rate.

    The state is built on the host and put on the default device, so no program is compiled.

    Args:
      params: the parameter pytree the optimizer will update.
      learning_rate: the learning rate the state holds.

    Returns:
      The state of `transform()` for `params`, with zero moments and counts and `learning_rate` in its
      hyperparameters.

    Raises:
      ValueError: the trainable mask is not shaped like `params`.
    """
    if self.trainable is not None:
      try:  # fails early, naming both structures, on a mask that does not fit
        jax.tree.map(lambda _, __: None, params, self.trainable.tree())
      except ValueError as e:
        raise ValueError(f"the trainable mask does not have the structure of the params: {e}") from None
    # Adam's moments and counts start at zero: made on the host and put on the device, which compiles
    # nothing (optax's eager init compiles a small program per new parameter shape)
    shapes = jax.eval_shape(self.transform().init, params)
    zeros = jax.tree.map(lambda s: jax.device_put(np.zeros(s.shape, s.dtype)), shapes)
    return with_learning_rate(zeros, learning_rate)


def learning_rate_of(opt_state: optax.OptState) -> jax.Array:
  """The learning rate an `Adam` optimizer state applies.

  Args:
    opt_state: a state made by `Adam.init` (or updated by `Adam.transform()`).

  Returns:
    The learning rate, a float32 scalar array.
  """
  return opt_state.hyperparams["learning_rate"]


def with_learning_rate(opt_state: optax.OptState, learning_rate: float) -> optax.OptState:
  """`opt_state` with its learning rate set to `learning_rate` (as float32, what the step applies).

  Args:
    opt_state: a state made by `Adam.init` (an `optax.inject_hyperparams` state).
    learning_rate: the new learning rate.

  Returns:
    A copy of `opt_state` whose learning rate is `learning_rate`, put on the default device; `opt_state`
    itself is unchanged.
  """
  # put, not jnp.asarray: a device array from host data compiles nothing
  hyperparams = dict(opt_state.hyperparams, learning_rate=jax.device_put(np.float32(learning_rate)))
  return opt_state._replace(hyperparams=hyperparams)


@dataclasses.dataclass(frozen=True)
class BlockwiseAdam:
  """Adam per block of a list-of-blocks params tree, each block with its own learning rate (its own
  plateau schedule), the frozen ones untouched: the optimizer of blocks that train side by side.

  Attributes:
    frozen: one flag per block; a frozen block's params get no update (and its gradients are never
      computed: the mask is static).
    weight_decay: as `Adam`'s.
  """

  frozen: tuple[bool, ...]
  weight_decay: float = 0.0

  def transform(self) -> optax.GradientTransformation:
    """optax's multi_transform of one `Adam` (learning rate in its state) per block.

    The params it updates are a list with one tree per block; block j's leaves are labelled "block_j",
    a frozen block's "frozen" (zero updates).

    Returns:
      An `optax.GradientTransformation` whose state holds one inner `Adam` state per block, under the
      key "block_j".
    """
    transforms = {f"block_{j}": Adam(None, self.weight_decay).transform() for j in range(len(self.frozen))}
    transforms["frozen"] = optax.set_to_zero()
    return optax.multi_transform(transforms, self._labels)

  def _labels(self, params):
    return [
      jax.tree.map(lambda _: "frozen" if f else f"block_{j}", p) for j, (p, f) in enumerate(zip(params, self.frozen))
    ]

  def init(self, params: PyTree, learning_rates) -> optax.OptState:
    """The optimizer state of per-block `params`: zero moments, block j at `learning_rates[j]`.

    Args:
      params: a list with one parameter tree per block (as many as `frozen` has flags).
      learning_rates: a sequence with one learning rate per block.

    Returns:
      The state of `transform()` for `params`, built on the host and put on the default device.
    """
    shapes = jax.eval_shape(self.transform().init, params)
    zeros = jax.tree.map(lambda s: jax.device_put(np.zeros(s.shape, s.dtype)), shapes)
    return with_block_learning_rates(zeros, learning_rates)


def with_block_learning_rates(opt_state: optax.OptState, learning_rates) -> optax.OptState:
  """A `BlockwiseAdam` state with block j's learning rate set to `learning_rates[j]`.

  Args:
    opt_state: a state made by `BlockwiseAdam.init`.
    learning_rates: a sequence with one learning rate per block (block j's at position j).

  Returns:
    A copy of `opt_state` with the new learning rates; `opt_state` itself is unchanged.
  """
  inner = dict(opt_state.inner_states)
  for j, rate in enumerate(learning_rates):
    masked = inner[f"block_{j}"]
    inner[f"block_{j}"] = masked._replace(inner_state=with_learning_rate(masked.inner_state, rate))
  return opt_state._replace(inner_states=inner)

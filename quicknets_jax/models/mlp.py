"""The paper's fully connected QuickNet (Appendix A): blocks of Dense(width)+ReLU, one output layer per exit."""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import numpy as np

from quicknets_jax.core import costs
from quicknets_jax.core.costs import BlockCost
from quicknets_jax.models.base import Block, CommitmentHead, MultiExitModel


class DenseSubnet(nn.Module):
  """`layers` × (Dense(width) → ReLU); flattens its input first."""

  width: int
  layers: int = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    x = x.reshape((x.shape[0], -1))
    for i in range(self.layers):
      x = nn.relu(nn.Dense(self.width, name=f"dense_{i}")(x))
    return x


class LinearExit(nn.Module):
  """The fully connected exit: a single output layer."""

  num_classes: int

  @nn.compact
  def __call__(self, features, train: bool = False):
    del train
    return nn.Dense(self.num_classes, name="out")(features.reshape((features.shape[0], -1)))


def mlp(
  input_shape: tuple[int, ...],
  num_classes: int,
  width: int = 150,
  num_blocks: int = 3,
  layers_per_block: int = 1,
  later_width: Optional[int] = None,
) -> MultiExitModel:
  """The paper's MLP QuickNet: `num_blocks` blocks of `layers_per_block` Dense(width)+ReLU layers.

  Defaults are Appendix A's Fashion-MNIST/MNIST network: three blocks, one 150-unit layer each.
  `later_width` (QuickNet+, the paper's §5): blocks after the first get this many units instead —
  they train and run only on the samples earlier exits did not take, so widening them is cheap.
  """
  if num_blocks < 1:
    raise ValueError(f"num_blocks must be ≥ 1 (got {num_blocks}): pass --num_blocks=3 for the paper's MLP")
  if width < 1 or layers_per_block < 1 or (later_width is not None and later_width < 1):
    raise ValueError(
      f"width, later_width and layers_per_block must be ≥ 1 (got {width}, {later_width}, {layers_per_block})"
    )
  blocks, block_costs = [], []
  in_features = int(np.prod(input_shape))
  for j in range(num_blocks):
    block_width = later_width if j > 0 and later_width is not None else width
    blocks.append(
      Block(
        subnet=DenseSubnet(block_width, layers_per_block),
        exit_head=LinearExit(num_classes),
        commit_head=CommitmentHead(num_classes),
      )
    )
    subnet_cost = costs.dense_flops(in_features, block_width, activation=True)
    subnet_cost += (layers_per_block - 1) * costs.dense_flops(block_width, block_width, activation=True)
    commit_cost = costs.dense_flops(block_width, num_classes, activation=True) + costs.dense_flops(num_classes, 1)
    block_costs.append(
      BlockCost(subnet=subnet_cost, exit_head=costs.dense_flops(block_width, num_classes), commit_head=commit_cost)
    )
    in_features = block_width
  return MultiExitModel(
    name="mlp",
    blocks=tuple(blocks),
    input_shape=tuple(input_shape),
    num_classes=num_classes,
    block_costs=tuple(block_costs),
  )

"""The paper's fully connected QuickNet (Appendix A): blocks of Dense(width)+ReLU, one output layer per exit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import flax.linen as nn
import numpy as np

from quicknets_jax.core import costs
from quicknets_jax.core.costs import BlockCost
from quicknets_jax.models.base import Block, MultiExitModel, commitment_head, commitment_head_flops


class DenseSubnet(nn.Module):
  """`layers` × (Dense(width) → ReLU); flattens its input first.

  Attributes:
    width: units per layer.
    layers: how many layers.
  """

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
  """The fully connected exit: a single output layer.

  Attributes:
    num_classes: the classes it predicts.
  """

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
  hidden: Optional[Sequence[int]] = None,
  commit_head: str = "features",
) -> MultiExitModel:
  """The paper's MLP QuickNet: blocks of `layers_per_block` Dense(width)+ReLU layers, one exit each.

  Defaults are Appendix A's Fashion-MNIST/MNIST network as its text reads: three blocks, one 150-unit
  layer each. The model also counts its costs in weight multiply-adds (`block_macs`), the paper's
  convention.

  Args:
    input_shape: one sample's shape (flattened by the first block).
    num_classes: the classes every exit predicts.
    width: units per hidden layer.
    num_blocks: blocks (= exits).
    layers_per_block: hidden layers per block.
    later_width: QuickNet+ (the paper's §5): the width of the blocks after the first — they train and
      run only on the samples earlier exits did not take. None: `width`.
    hidden: each block's own width instead (e.g. (150, 100, 50): the network whose parameter counts and
      inference cost match the paper's Table 1); sets the number of blocks.
    commit_head: "features" (the paper's head on the block's features) or "logits" (the authors'
      Dense(C → C) on ReLU(exit logits)).

  Returns:
    The `MultiExitModel`, with analytic block costs and multiply-adds.

  Raises:
    ValueError: `hidden` disagrees with `num_blocks` or is combined with `later_width`, or a size is
      below 1 (the message names the flag to pass).
  """
  if hidden is not None:
    hidden = tuple(int(h) for h in hidden)
    if later_width is not None:
      raise ValueError("hidden sets every block's width: drop --later_width")
    if num_blocks != len(hidden):
      raise ValueError(
        f"hidden={','.join(map(str, hidden))} has {len(hidden)} blocks but num_blocks={num_blocks}: "
        f"pass --num_blocks={len(hidden)}"
      )
  if num_blocks < 1:
    raise ValueError(f"num_blocks must be ≥ 1 (got {num_blocks}): pass --num_blocks=3 for the paper's MLP")
  widths = hidden or tuple(later_width if j > 0 and later_width is not None else width for j in range(num_blocks))
  if min(widths) < 1 or layers_per_block < 1:
    raise ValueError(
      f"width, later_width, hidden and layers_per_block must be ≥ 1 (got block widths {widths}, "
      f"layers_per_block {layers_per_block})"
    )
  blocks, block_costs, block_macs = [], [], []
  in_features = int(np.prod(input_shape))
  for block_width in widths:
    blocks.append(
      Block(
        subnet=DenseSubnet(block_width, layers_per_block),
        exit_head=LinearExit(num_classes),
        commit_head=commitment_head(commit_head, num_classes),
      )
    )
    subnet_cost = costs.dense_flops(in_features, block_width, activation=True)
    subnet_cost += (layers_per_block - 1) * costs.dense_flops(block_width, block_width, activation=True)
    block_costs.append(
      BlockCost(
        subnet=subnet_cost,
        exit_head=costs.dense_flops(block_width, num_classes),
        commit_head=commitment_head_flops(commit_head, block_width, num_classes),
      )
    )
    commit_macs = num_classes * num_classes if commit_head == "logits" else block_width * num_classes + num_classes
    block_macs.append(
      BlockCost(
        subnet=float(in_features * block_width + (layers_per_block - 1) * block_width * block_width),
        exit_head=float(block_width * num_classes),
        commit_head=float(commit_macs),
      )
    )
    in_features = block_width
  return MultiExitModel(
    name="mlp",
    blocks=tuple(blocks),
    input_shape=tuple(input_shape),
    num_classes=num_classes,
    block_costs=tuple(block_costs),
    block_macs=tuple(block_macs),
  )

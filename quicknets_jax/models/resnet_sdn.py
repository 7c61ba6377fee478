"""ResNet-56 Shallow-Deep Network for CIFAR-10 (Kaya et al. 2019), cut into blocks at its internal classifiers.

The backbone is SDN's `ResNet_SDN` with `num_blocks=[9, 9, 9]`: a 3×3 stem conv (16 channels) then
3 stages × 9 basic blocks (16/32/64 channels, the first block of stages 2 and 3 strides by 2 with a
1×1-conv projection shortcut), batch norm everywhere, no conv biases, Kaiming-normal (fan-out) convs.
SDN's `add_ic` for ResNet-56 — [[0,0,0,1,0,0,0,1,0], [0,0,1,0,0,0,1,0,0], [0,1,0,0,0,1,0,0,0]] — puts
internal classifiers after basic blocks 4, 8, 12, 16, 20 and 24 of 27 (≈15, 30, …, 90 % of the FLOPs),
each a `MixedPoolClassifier` (pooling to 4×4); the final exit is SDN's `end_layers`: global average
pooling and one linear layer. So the model has 7 blocks, block j ending at an exit.

As in SDN's `BasicBlockWOutput.forward`, an internal classifier reads the residual sum *before* the
block's closing ReLU; here that sum is the block's features (what its exit and commitment head see) and
the next block starts with the ReLU. FLOPs are analytic per layer (`core.costs.conv_flops` and friends:
padding taps excluded, as XLA counts them) and checked against XLA in the tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from quicknets_jax.core import costs
from quicknets_jax.core.costs import BlockCost
from quicknets_jax.models import layers
from quicknets_jax.models.base import Block, MultiExitModel, commitment_head, commitment_head_flops

# 1-based basic blocks after which SDN's ResNet-56 has an internal classifier.
SDN_RESNET56_EXITS = (4, 8, 12, 16, 20, 24)
# SDN places its internal classifiers at these fractions of the depth (≈ of the FLOPs).
SDN_EXIT_FRACTIONS = (0.15, 0.3, 0.45, 0.6, 0.75, 0.9)


def default_exits(total_blocks: int) -> tuple[int, ...]:
  """SDN's placement: after basic block round(f·total) for f = 0.15, 0.3, …, 0.9 (duplicates merged).

  For ResNet-56 (27 basic blocks) this is SDN's `add_ic`: 4, 8, 12, 16, 20, 24.

  Args:
    total_blocks: the network's number of basic blocks.

  Returns:
    The 1-based basic blocks followed by an internal classifier, increasing.
  """
  return tuple(sorted({min(max(round(f * total_blocks), 1), total_blocks - 1) for f in SDN_EXIT_FRACTIONS}))


_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # torch kaiming_normal_(fan_out)


def _batch_norm(train: bool, name: str):
  # torch BatchNorm2d defaults: momentum 0.1 (flax counts the other way: 0.9), eps 1e-5
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


class BasicBlock(nn.Module):
  """conv3×3-BN-ReLU-conv3×3-BN + shortcut (1×1 conv + BN where the shape changes); returns the sum
  before the closing ReLU.

  Attributes:
    channels: output channels.
    stride: the first convolution's (and the shortcut's) stride.
  """

  channels: int
  stride: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = lambda k, s, name: layers.Conv(
      self.channels,
      (k, k),
      (s, s),
      padding="SAME" if k > 1 else "VALID",
      use_bias=False,
      kernel_init=_conv_init,
      name=name,
    )
    h = conv(3, self.stride, "conv1")(x)
    h = nn.relu(_batch_norm(train, "bn1")(h))
    h = _batch_norm(train, "bn2")(conv(3, 1, "conv2")(h))
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.channels:
      shortcut = _batch_norm(train, "shortcut_bn")(conv(1, self.stride, "shortcut_conv")(x))
    return h + shortcut


class ResNetSubnet(nn.Module):
  """A run of basic blocks (with the stem in front for the first block of the network).

  `blocks` holds (channels, stride) per basic block. Input that comes from an earlier subnet is a
  pre-ReLU sum, so it is activated first; the output is pre-ReLU unless `relu_out` (the last block,
  whose exit is SDN's average-pool classifier on the activated map).

  Attributes:
    blocks: (channels, stride) per basic block.
    stem_channels: > 0: this subnet starts the network with the stem conv of that many channels.
    relu_out: apply the closing ReLU to the output (the network's last subnet).
  """

  blocks: tuple
  stem_channels: int = 0  # > 0: this subnet starts the network with the stem conv
  relu_out: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.stem_channels:
      x = layers.Conv(
        self.stem_channels, (3, 3), padding="SAME", use_bias=False, kernel_init=_conv_init, name="stem_conv"
      )(x)
      x = _batch_norm(train, "stem_bn")(x)
    x = nn.relu(x)
    for i, (channels, stride) in enumerate(self.blocks):
      if i:
        x = nn.relu(x)
      x = BasicBlock(channels, stride, name=f"basic_{i}")(x, train=train)
    return nn.relu(x) if self.relu_out else x


class AvgPoolClassifier(nn.Module):
  """SDN's final exit (`end_layers`): average pooling over the whole map, then one linear layer.

  Attributes:
    num_classes: the classes it predicts.
  """

  num_classes: int

  @nn.compact
  def __call__(self, features, train: bool = False):
    del train
    return nn.Dense(self.num_classes, name="out")(jnp.mean(features, axis=(1, 2)))


def _basic_block_flops(size: tuple[int, int], in_channels: int, channels: int, stride: int) -> tuple[float, tuple]:
  out = costs.conv_out(size, 3, stride)
  elems = out[0] * out[1] * channels
  total = costs.conv_flops(size, 3, in_channels, channels, stride) + costs.batch_norm_flops(elems, channels)
  total += elems  # ReLU
  total += costs.conv_flops(out, 3, channels, channels) + costs.batch_norm_flops(elems, channels)
  if stride != 1 or in_channels != channels:
    total += costs.conv_flops(size, 1, in_channels, channels, stride, padding="VALID")
    total += costs.batch_norm_flops(elems, channels)
  return total + elems, out  # + the residual add


def resnet_sdn(
  input_shape: tuple[int, ...],
  num_classes: int,
  blocks_per_stage: int = 9,
  channels: Sequence[int] = (16, 32, 64),
  exit_after: Sequence[int] | None = None,
  commit_head: str = "features",
) -> MultiExitModel:
  """SDN's ResNet (ResNet-56 by default: 3 × 9 basic blocks) as a multi-exit model, one block per exit.

  Args:
    input_shape: (H, W, C) of one image, e.g. (32, 32, 3).
    num_classes: the classes every exit predicts.
    blocks_per_stage: basic blocks per stage (9 for ResNet-56: depth 6n + 2).
    channels: channels of the stem and of each stage.
    exit_after: 1-based basic blocks followed by an internal classifier (default `default_exits`:
      SDN's placement); the final exit always follows the last block.
    commit_head: what the commitment heads read (`base.COMMIT_HEADS`): the block's features or its exit's logits.

  Returns:
    The `MultiExitModel`, with analytic block costs.

  Raises:
    ValueError: the input is not an image shape, a size is out of range, or `exit_after` is not an
      increasing list of basic-block numbers.
  """
  if len(input_shape) != 3:
    raise ValueError(f"resnet_sdn needs images (H, W, C), got input shape {input_shape}: pass image data")
  if blocks_per_stage < 1 or not channels:
    raise ValueError(f"blocks_per_stage must be ≥ 1 and channels non-empty, got {blocks_per_stage}, {channels}")
  total = len(channels) * blocks_per_stage
  if total < 2:
    raise ValueError(f"a multi-exit ResNet needs ≥ 2 basic blocks, got {total}: raise blocks_per_stage")
  exit_after = default_exits(total) if exit_after is None else tuple(int(e) for e in exit_after)
  if list(exit_after) != sorted(set(exit_after)) or any(not 1 <= e < total for e in exit_after):
    raise ValueError(
      f"exit_after must be increasing basic-block numbers in 1..{total - 1}, got {exit_after}: "
      f"SDN's ResNet-56 uses {SDN_RESNET56_EXITS}"
    )
  plan = []  # (channels, stride) per basic block
  for stage, c in enumerate(channels):
    for i in range(blocks_per_stage):
      plan.append((c, 2 if (i == 0 and stage > 0) else 1))
  bounds = (0,) + exit_after + (total,)
  size = tuple(input_shape[:2])
  in_channels = input_shape[2]
  blocks, block_costs = [], []
  for j in range(len(bounds) - 1):
    part = tuple(plan[bounds[j] : bounds[j + 1]])
    last = j == len(bounds) - 2
    subnet_cost = 0.0
    if j == 0:
      elems = size[0] * size[1] * channels[0]
      subnet_cost += costs.conv_flops(size, 3, in_channels, channels[0]) + costs.batch_norm_flops(elems, channels[0])
      in_channels = channels[0]
    subnet_cost += size[0] * size[1] * in_channels  # the ReLU that opens the subnet
    for i, (c, stride) in enumerate(part):
      if i:
        subnet_cost += size[0] * size[1] * in_channels
      block_cost, size = _basic_block_flops(size, in_channels, c, stride)
      subnet_cost += block_cost
      in_channels = c
    elems = size[0] * size[1] * in_channels
    if last:
      subnet_cost += elems  # closing ReLU
      exit_head = AvgPoolClassifier(num_classes)
      exit_cost = costs.global_mean_flops(*size, in_channels) + costs.dense_flops(in_channels, num_classes)
    else:
      exit_head = layers.MixedPoolClassifier(num_classes)
      exit_cost = layers.mixed_pool_classifier_flops(size[0], size[1], in_channels, num_classes)
    commit_cost = commitment_head_flops(commit_head, elems, num_classes)
    blocks.append(
      Block(
        subnet=ResNetSubnet(part, stem_channels=channels[0] if j == 0 else 0, relu_out=last),
        exit_head=exit_head,
        commit_head=commitment_head(commit_head, num_classes),
        convolutions="patchable",
      )
    )
    block_costs.append(BlockCost(subnet=subnet_cost, exit_head=exit_cost, commit_head=commit_cost))
  return MultiExitModel(
    name="resnet_sdn",
    blocks=tuple(blocks),
    input_shape=tuple(input_shape),
    num_classes=num_classes,
    block_costs=tuple(block_costs),
  )

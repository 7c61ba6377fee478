"""DenseNet-121 as a 4-block QuickNet (paper §4.5, Table 2): one block per dense block, an exit after each.

Backbone (Huang et al. 2017, torchvision's `densenet121`): growth rate k = 32, dense blocks of
6/12/24/16 layers; every layer is BN-ReLU-conv1×1 (4k channels, the bottleneck) then BN-ReLU-conv3×3
(k channels), and its output is concatenated to its input; a transition is BN-ReLU-conv1×1 that halves
the channels (compression 0.5) then a 2×2 average pool; the ImageNet stem is a 7×7/2 conv (2k = 64
channels, padding 3) + BN + ReLU + a 3×3/2 max pool (padding 1). No conv biases; convs are
Kaiming-normal (fan-in) and the exits' linear layers U(±1/√fan_in) with zero bias, as in torchvision;
BatchNorm as PyTorch's (momentum 0.1, ε 1e-5). Initializers draw through `base.flat_draw` (the same values,
compiled once for many kernel sizes: model init on CPU is mostly that compile).

Blocks: block j = (the stem, for j = 0) + dense block j + (the transition, for j < 3). So on 224×224
images block j outputs 28²×128, 14²×256, 7²×512 and 7²×1024 maps. Small inputs work too (the
tests use 32×32): a transition pool on a map narrower than 2 is skipped (as in `vgg.py`), so
32×32 gives 4², 2², 1², 1² maps.

Exits (our choice; the paper names none for DenseNet): every exit is DenseNet's own classifier —
BN → ReLU → global average pool → Dense(num_classes) — on the block's output; exit 3 *is*
DenseNet-121's `norm5` + `classifier`, so the end-to-end baseline is the plain DenseNet-121
(7,978,856 parameters with 1000 classes, as torchvision's).

Commitment heads: the paper's Dense(C) → ReLU → Dense(1) (`base.CommitmentHead`) on the block's
features, *globally average-pooled first*. Flattened, block 0's 28×28×128 map would need a
100 M-parameter Dense(1000) (225 M over the four heads, 28× DenseNet-121 itself); pooled, the four
heads hold 1.9 M and cost ≤ 2.1 MFLOPs. With the 0.9 M of exits 0..2 the QuickNet has 10.8 M
parameters (the paper's Table 2 says 12.06 M without saying how its heads are built).

FLOPs are analytic per layer (one multiply-add = 2; conv taps on zero padding are not counted, as
XLA does not count them — see `core/costs.py`) and checked against XLA's `cost_analysis()` in the tests.
The paper's Table 2 reports 2882.62 "M" for end-to-end DenseNet-121 at 224², i.e. multiply-adds:
our convention gives about twice that.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from quicknets_jax.core import costs
from quicknets_jax.core.costs import BlockCost
from quicknets_jax.models import layers
from quicknets_jax.models.base import (
  COMMIT_HEADS,
  Block,
  CommitmentHead,
  LogitsCommitmentHead,
  MultiExitModel,
  commitment_head_flops,
  flat_draw,
  spec_items,
)

# Layers per dense block of the DenseNets of Huang et al. (2017), all with growth rate 32.
CONFIGS = {
  "densenet121": (6, 12, 24, 16),
  "densenet169": (6, 12, 32, 32),
  "densenet201": (6, 12, 48, 32),
}


def _conv_init(key, shape, dtype=jnp.float32):
  """torch's kaiming_normal_ (fan-in, gain √2) for an HWIO kernel (drawn flat: `base.flat_draw`)."""
  std = jnp.asarray(math.sqrt(2.0 / math.prod(shape[:-1])), dtype)
  return flat_draw(jax.random.normal, key, shape, dtype, std)


def _linear_init(key, shape, dtype=jnp.float32):
  """torch nn.Linear's default weight, U(±1/√fan_in) (drawn flat)."""
  bound = 1.0 / math.sqrt(shape[0])
  return flat_draw(lambda k, s, d: jax.random.uniform(k, s, d, -bound, bound), key, shape, dtype)


def _batch_norm(train: bool, name: str):
  # torch BatchNorm2d defaults: momentum 0.1 (flax counts the other way: 0.9), eps 1e-5
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


class DenseLayer(nn.Module):
  """BN-ReLU-conv1×1 (`bottleneck` channels) → BN-ReLU-conv3×3 (`growth` channels), concatenated to x.

  Attributes:
    growth: the channels the layer adds (k).
    bottleneck: the 1×1 convolution's channels (4k).
  """

  growth: int
  bottleneck: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.relu(_batch_norm(train, "bn1")(x))
    h = layers.Conv(self.bottleneck, (1, 1), use_bias=False, kernel_init=_conv_init, name="conv1")(h)
    h = nn.relu(_batch_norm(train, "bn2")(h))
    h = layers.Conv(
      self.growth, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, kernel_init=_conv_init, name="conv2"
    )(h)
    return jnp.concatenate([x, h], axis=-1)


class DenseNetSubnet(nn.Module):
  """One QuickNet block's backbone: [stem] → dense block → [transition].

  `stem_channels` > 0 puts the ImageNet stem in front (block 0); `transition_channels` > 0 puts a
  transition behind (blocks 0..2), pooled unless `transition_pool` is False (maps narrower than 2).

  Attributes:
    num_layers: dense layers in the dense block.
    growth: the growth rate k.
    bottleneck: the bottleneck's channels (4k).
    stem_channels: the stem's channels, 0 for no stem.
    transition_channels: the transition's output channels, 0 for no transition.
    transition_pool: whether the transition ends with its 2×2 average pool.
  """

  num_layers: int
  growth: int
  bottleneck: int
  stem_channels: int = 0
  transition_channels: int = 0
  transition_pool: bool = True

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.stem_channels:
      x = layers.Conv(
        self.stem_channels,
        (7, 7),
        (2, 2),
        padding=((3, 3), (3, 3)),
        use_bias=False,
        kernel_init=_conv_init,
        name="stem_conv",
      )(x)
      x = nn.relu(_batch_norm(train, "stem_bn")(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i in range(self.num_layers):
      x = DenseLayer(self.growth, self.bottleneck, name=f"layer_{i}")(x, train=train)
    if self.transition_channels:
      x = nn.relu(_batch_norm(train, "transition_bn")(x))
      x = layers.Conv(self.transition_channels, (1, 1), use_bias=False, kernel_init=_conv_init, name="transition_conv")(
        x
      )
      if self.transition_pool:
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    return x


class PoolClassifier(nn.Module):
  """DenseNet's classifier as an exit: BN → ReLU → global average pool → Dense(num_classes).

  Attributes:
    num_classes: the classes it predicts.
  """

  num_classes: int

  @nn.compact
  def __call__(self, features, train: bool = False):
    x = nn.relu(_batch_norm(train, "bn")(features))
    return nn.Dense(self.num_classes, kernel_init=_linear_init, name="out")(jnp.mean(x, axis=(1, 2)))


class PooledCommitmentHead(CommitmentHead):
  """`base.CommitmentHead` (Dense(C) → ReLU → Dense(1)) on the globally average-pooled features."""

  def __call__(self, features):
    return super().__call__(jnp.mean(features, axis=(1, 2)))


def _bn_relu_flops(hw: tuple[int, int], channels: int) -> float:
  elems = hw[0] * hw[1] * channels
  return costs.batch_norm_flops(elems, channels) + elems


def stem_flops(hw: tuple[int, int], c_in: int, channels: int) -> tuple[float, tuple[int, int]]:
  """FLOPs of the stem (conv 7×7/2 + BN + ReLU + max pool 3×3/2) and its output H×W.

  Args:
    hw: the input's (H, W).
    c_in: input channels.
    channels: the stem's channels.

  Returns:
    (FLOPs per sample, the output's (H, W)).
  """
  conv_hw = costs.conv_out(hw, 7, 2, padding=3)
  total = costs.conv_flops(hw, 7, c_in, channels, 2, padding=3) + _bn_relu_flops(conv_hw, channels)
  pool_hw = costs.conv_out(conv_hw, 3, 2, padding=1)
  return total + costs.max_pool_flops(pool_hw[0] * pool_hw[1] * channels, 3), pool_hw


def dense_layer_flops(hw: tuple[int, int], c_in: int, growth: int, bottleneck: int) -> float:
  """FLOPs of one dense layer on an H×W×c_in map (the concatenation is a copy: 0 FLOPs).

  Args:
    hw: the map's (H, W).
    c_in: its channels.
    growth: the channels the layer adds.
    bottleneck: the bottleneck's channels.

  Returns:
    FLOPs per sample.
  """
  total = _bn_relu_flops(hw, c_in) + costs.conv_flops(hw, 1, c_in, bottleneck, padding=0)
  return total + _bn_relu_flops(hw, bottleneck) + costs.conv_flops(hw, 3, bottleneck, growth, padding=1)


def transition_flops(hw: tuple[int, int], c_in: int, c_out: int, pool: bool) -> tuple[float, tuple[int, int]]:
  """FLOPs of a transition (BN-ReLU-conv1×1, 2×2 average pool) and its output H×W.

  Args:
    hw: the input's (H, W).
    c_in: input channels.
    c_out: output channels.
    pool: whether the transition pools.

  Returns:
    (FLOPs per sample, the output's (H, W)).
  """
  total = _bn_relu_flops(hw, c_in) + costs.conv_flops(hw, 1, c_in, c_out, padding=0)
  if pool:
    hw = (hw[0] // 2, hw[1] // 2)
    total += costs.avg_pool_flops(hw[0] * hw[1] * c_out, 2)
  return total, hw


def pool_classifier_flops(hw: tuple[int, int], channels: int, num_classes: int) -> float:
  """BN + ReLU, the global mean and the linear layer.

  Args:
    hw: the features' (H, W).
    channels: their channels.
    num_classes: the classes predicted.

  Returns:
    FLOPs per sample of a `PoolClassifier`.
  """
  return (
    _bn_relu_flops(hw, channels) + costs.global_mean_flops(*hw, channels) + costs.dense_flops(channels, num_classes)
  )


def pooled_commit_flops(hw: tuple[int, int], channels: int, num_classes: int) -> float:
  """The global mean, then Dense(C) + ReLU and Dense(1).

  Args:
    hw: the features' (H, W).
    channels: their channels.
    num_classes: C.

  Returns:
    FLOPs per sample of a `PooledCommitmentHead`.
  """
  return (
    costs.global_mean_flops(*hw, channels)
    + costs.dense_flops(channels, num_classes, activation=True)
    + costs.dense_flops(num_classes, 1)
  )


def parse_layers(block_layers: Union[str, Sequence[int]]) -> tuple[int, ...]:
  """ "densenet121" (or another `CONFIGS` name), "6,12,24,16" or a sequence → a tuple of layer counts.

  Args:
    block_layers: a `CONFIGS` name, a comma-separated string, or a sequence of integers.

  Returns:
    The layer count of every dense block.

  Raises:
    ValueError: the spec is not layer counts, or a count is below 1.
  """
  items = spec_items(block_layers, CONFIGS)
  try:
    layers = tuple(int(s) for s in items)
  except (TypeError, ValueError):
    raise ValueError(
      f"bad DenseNet block_layers {block_layers!r}: use {sorted(CONFIGS)} or layer counts such as '6,12,24,16'"
    ) from None
  if not layers or any(n < 1 for n in layers):
    raise ValueError(
      f"DenseNet block_layers {block_layers!r} needs ≥ 1 dense block of ≥ 1 layer each, "
      "e.g. '6,12,24,16' (DenseNet-121)"
    )
  return layers


def densenet(
  input_shape: tuple[int, ...],
  num_classes: int,
  width: int = 32,
  num_blocks: Optional[int] = None,
  layers_per_block: int = 1,
  block_layers: Union[str, Sequence[int]] = "densenet121",
  compression: float = 0.5,
  commit_head: str = "features",
) -> MultiExitModel:
  """DenseNet QuickNet: one block (and exit) per dense block; DenseNet-121 by default.

  Args:
    input_shape: (H, W, C) of one image, e.g. (224, 224, 3); ≥ 4 wide (the stem divides by 4).
    num_classes: the classes every exit predicts.
    width: the growth rate k (32 for DenseNet-121); the stem has 2k channels, bottlenecks 4k.
    num_blocks: must equal the number of dense blocks when given (4 for DenseNet-121).
    layers_per_block: must be 1; accepted so every model takes the same flags (the dense layers per
      block come from `block_layers`).
    block_layers: layers per dense block: "densenet121" (6,12,24,16), another `CONFIGS` name, or a
      list such as (1, 1, 1, 1) for a small test variant.
    compression: a transition's output channels = floor(compression · input channels).
    commit_head: "features" (pooled, as above) or "logits" (the authors' head on the exit's logits).

  Returns:
    The `MultiExitModel`, with analytic block costs.

  Raises:
    ValueError: an argument is out of range or inconsistent (the message names the flag to pass).
  """
  if commit_head not in COMMIT_HEADS:
    raise ValueError(f"commit_head must be one of {', '.join(COMMIT_HEADS)}, got {commit_head!r}")
  layers = parse_layers(block_layers)
  if num_blocks is not None and num_blocks != len(layers):
    raise ValueError(
      f"this DenseNet has {len(layers)} dense blocks = {len(layers)} blocks, got num_blocks="
      f"{num_blocks}: pass --num_blocks={len(layers)}"
    )
  if layers_per_block != 1:
    raise ValueError(
      f"DenseNet blocks are set by --block_layers, got layers_per_block={layers_per_block}: pass --layers_per_block=1"
    )
  if width < 1 or not 0 < compression <= 1:
    raise ValueError(f"width (growth rate) must be ≥ 1 and compression in (0, 1], got {width}, {compression}")
  if len(input_shape) != 3 or min(input_shape[:2]) < 4:
    raise ValueError(f"DenseNet needs (H, W, C) images at least 4×4, got input shape {tuple(input_shape)}")
  growth, bottleneck = width, 4 * width
  hw, channels = tuple(int(s) for s in input_shape[:2]), int(input_shape[2])
  blocks, block_costs = [], []
  for j, num_layers in enumerate(layers):
    subnet_cost = 0.0
    stem = 2 * growth if j == 0 else 0
    if stem:
      subnet_cost, hw = stem_flops(hw, channels, stem)
      channels = stem
    for _ in range(num_layers):
      subnet_cost += dense_layer_flops(hw, channels, growth, bottleneck)
      channels += growth
    transition, pool = 0, False
    if j < len(layers) - 1:
      transition = max(1, int(channels * compression))
      pool = min(hw) >= 2
      cost, hw = transition_flops(hw, channels, transition, pool)
      subnet_cost += cost
      channels = transition
    blocks.append(
      Block(
        subnet=DenseNetSubnet(num_layers, growth, bottleneck, stem, transition, pool),
        exit_head=PoolClassifier(num_classes),
        commit_head=PooledCommitmentHead(num_classes)
        if commit_head == "features"
        else LogitsCommitmentHead(num_classes),
        convolutions="patchable",
      )
    )
    block_costs.append(
      BlockCost(
        subnet=subnet_cost,
        exit_head=pool_classifier_flops(hw, channels, num_classes),
        commit_head=pooled_commit_flops(hw, channels, num_classes)
        if commit_head == "features"
        else commitment_head_flops(commit_head, channels, num_classes),
      )
    )
  return MultiExitModel(
    name="densenet",
    blocks=tuple(blocks),
    input_shape=tuple(int(s) for s in input_shape),
    num_classes=num_classes,
    block_costs=tuple(block_costs),
  )

"""VGG-11 as an 8-exit QuickNet (paper §4, Appendix A): one block per convolutional layer.

Backbone: the CIFAR variant of VGG-11 with batch norm, configuration A of Simonyan & Zisserman,
`[64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M]`; each conv is 3×3 SAME without bias, then
BatchNorm (PyTorch defaults: momentum 0.1, ε 1e-5) and ReLU. Block j is conv j together with the
2×2 max pool that follows it in the configuration, so its exit sees the pooled map (as SDN's
`ConvBlockWOutput` does). On 32×32 inputs the blocks output 16², 8², 8², 4², 4², 2², 2², 1² maps.
Pools on maps smaller than 2 are skipped, so 28×28 inputs work too (28 → 14 → 7 → 3 → 1).

Exits 0..6 are SDN's mixed max-average pooling classifiers (`layers.MixedPoolClassifier`); the last
exit *is* VGG's classifier: `classifier_layers` × (Dense(classifier_width) + ReLU) then Dense(C). The
paper's 28.14 M parameters for end-to-end VGG-11 on CIFAR-10 match 9.2 M conv weights plus a
512-4096-4096-10 classifier, so 4096 is the default. No dropout: Linen dropout needs an rng stream
the block runner does not thread, and Appendix A names none. Commitment heads are the paper's
Dense(C) → ReLU → Dense(1) on the block's (flattened) features.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Union

import flax.linen as nn

from quicknets_jax.core import costs
from quicknets_jax.core.costs import BlockCost
from quicknets_jax.models import layers
from quicknets_jax.models.base import (
  Block,
  MultiExitModel,
  commitment_head,
  commitment_head_flops,
  lecun_normal,
  spec_items,
)

# VGG configuration A (VGG-11): conv output channels, "M" = 2×2 max pool.
CONFIGS = {
  "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
}


class ConvBNReLU(nn.Module):
  """3×3 SAME conv (no bias) → BatchNorm → ReLU → optional 2×2 max pool: one VGG block's subnet.

  Attributes:
    features: the conv's output channels.
    pool: whether the 2×2 max pool follows.
  """

  features: int
  pool: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = layers.Conv(self.features, (3, 3), padding="SAME", use_bias=False, kernel_init=lecun_normal, name="conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name="bn")(x)
    x = nn.relu(x)
    if self.pool:
      x = layers.max_pool(x, 2)
    return x


class MLPClassifier(nn.Module):
  """VGG's classifier: flatten → `layers` × (Dense(width) + ReLU) → Dense(num_classes).

  Attributes:
    num_classes: the classes it predicts.
    width: hidden units per layer.
    layers: hidden layers.
  """

  num_classes: int
  width: int = 4096
  layers: int = 2

  @nn.compact
  def __call__(self, features, train: bool = False):
    del train
    x = features.reshape((features.shape[0], -1))
    for i in range(self.layers):
      x = nn.relu(nn.Dense(self.width, kernel_init=lecun_normal, name=f"hidden_{i}")(x))
    return nn.Dense(self.num_classes, kernel_init=lecun_normal, name="out")(x)


def mlp_classifier_flops(in_features: int, num_classes: int, width: int, layers: int) -> float:
  """Analytic FLOPs per sample of `MLPClassifier`.

  Args:
    in_features: the flattened features' size.
    num_classes: the classes predicted.
    width: hidden units per layer.
    layers: hidden layers.

  Returns:
    FLOPs per sample.
  """
  total, n = 0.0, in_features
  for _ in range(layers):
    total += costs.dense_flops(n, width, activation=True)
    n = width
  return total + costs.dense_flops(n, num_classes)


def parse_config(cfg: Union[str, Sequence]) -> tuple:
  """A named configuration ("vgg11") or a comma list like "64,M,128,M" → tuple of ints and "M".

  Args:
    cfg: a `CONFIGS` name, a comma-separated string, or a sequence.

  Returns:
    The configuration: conv widths and "M" pools.

  Raises:
    ValueError: an entry is neither a width nor "M", or the configuration does not start with a width.
  """
  items = spec_items(cfg, CONFIGS)
  out = []
  for c in items:
    if str(c).upper() == "M":
      out.append("M")
    else:
      try:
        out.append(int(c))
      except ValueError:
        raise ValueError(
          f"bad VGG configuration entry {c!r}: use {sorted(CONFIGS)} or a list such as '64,M,128,M,256'"
        ) from None
  if not any(isinstance(c, int) for c in out) or out[0] == "M":
    raise ValueError(f"VGG configuration {cfg!r} must start with a conv width, e.g. '64,M,128,M'")
  return tuple(out)


def vgg(
  input_shape: tuple[int, ...],
  num_classes: int,
  width: int = 64,
  num_blocks: Optional[int] = None,
  layers_per_block: int = 1,
  cfg: Union[str, Sequence] = "vgg11",
  classifier_width: int = 4096,
  classifier_layers: int = 2,
  commit_head: str = "features",
) -> MultiExitModel:
  """VGG QuickNet: one block (conv + BN + ReLU [+ pool]) and one exit per conv layer.

  Args:
    input_shape: (H, W, C) of one image, e.g. (32, 32, 3).
    num_classes: the classes every exit predicts.
    width: channels of the first conv; every conv's channels scale by width / 64 (64: VGG-11 itself).
    num_blocks: must equal the number of convs in `cfg` when given (8 for VGG-11).
    layers_per_block: must be 1 (one conv per block); accepted so every model takes the same flags.
    cfg: "vgg11" or an explicit list of conv widths and "M" pools (widths are scaled by width / 64).
    classifier_width: hidden units of the final exit (VGG's classifier).
    classifier_layers: hidden layers of the final exit.
    commit_head: what the commitment heads read (`base.COMMIT_HEADS`): the block's features or its exit's logits.

  Returns:
    The `MultiExitModel`, with analytic block costs.

  Raises:
    ValueError: the configuration is malformed, or a size is out of range or inconsistent (the message
      names the flag to pass).
  """
  config = parse_config(cfg)
  convs = [c for c in config if c != "M"]
  if num_blocks is not None and num_blocks != len(convs):
    raise ValueError(
      f"this VGG has {len(convs)} conv layers = {len(convs)} blocks, got num_blocks="
      f"{num_blocks}: pass --num_blocks={len(convs)}"
    )
  if layers_per_block != 1:
    raise ValueError(
      f"VGG blocks hold one conv each, got layers_per_block={layers_per_block}: pass --layers_per_block=1"
    )
  if width < 1 or classifier_width < 1 or classifier_layers < 0:
    raise ValueError(
      f"width and classifier_width must be ≥ 1 and classifier_layers ≥ 0, got {width}, "
      f"{classifier_width}, {classifier_layers}"
    )
  if len(input_shape) != 3:
    raise ValueError(f"VGG needs (H, W, C) images, got input shape {tuple(input_shape)}")
  h, w, c = input_shape
  blocks, block_costs = [], []
  for j, conv_width in enumerate(convs):
    channels = max(1, conv_width * width // 64)
    index = [i for i, x in enumerate(config) if x != "M"][j]
    pool = index + 1 < len(config) and config[index + 1] == "M" and min(h, w) >= 2
    subnet_cost = costs.conv_flops((h, w), 3, c, channels)
    subnet_cost += costs.batch_norm_flops(h * w * channels, channels) + h * w * channels  # BN, ReLU
    if pool:
      h, w = h // 2, w // 2
      subnet_cost += costs.max_pool_flops(h * w * channels, 2)
    c = channels
    features = h * w * c
    last = j == len(convs) - 1
    if last:
      exit_head = MLPClassifier(num_classes, classifier_width, classifier_layers)
      exit_cost = mlp_classifier_flops(features, num_classes, classifier_width, classifier_layers)
    else:
      exit_head = layers.MixedPoolClassifier(num_classes)
      exit_cost = layers.mixed_pool_classifier_flops(h, w, c, num_classes)
    commit_cost = commitment_head_flops(commit_head, features, num_classes)
    blocks.append(
      Block(
        subnet=ConvBNReLU(channels, pool),
        exit_head=exit_head,
        commit_head=commitment_head(commit_head, num_classes),
        convolutions="patchable",
      )
    )
    block_costs.append(BlockCost(subnet=subnet_cost, exit_head=exit_cost, commit_head=commit_cost))
  return MultiExitModel(
    name="vgg",
    blocks=tuple(blocks),
    input_shape=tuple(int(s) for s in input_shape),
    num_classes=num_classes,
    block_costs=tuple(block_costs),
  )

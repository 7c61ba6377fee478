"""Networks a user might bring (importable by name, as a run's workdir records them): plain Linen modules
without a `train` argument, and Flax NNX modules."""

import math

import flax.linen as nn
from flax import nnx

import quicknets_jax as qn


class ConvBlock(nn.Module):
  """3×3 conv + ReLU, then a 2×2 max pool while the map is at least 4 wide; no `train` argument."""

  features: int

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(self.features, (3, 3))(x))
    return nn.max_pool(x, (2, 2), strides=(2, 2)) if x.shape[1] >= 4 else x


def linen_cnn(input_shape, num_classes, width=16):
  """Three conv blocks of width, 2·width, 4·width channels; default exits and commitment heads."""
  blocks = [ConvBlock(width), ConvBlock(2 * width), ConvBlock(4 * width)]
  return qn.multi_exit_model(blocks, input_shape=input_shape, num_classes=num_classes, name="linen_cnn")


class NNXBlock(nnx.Module):
  """Flatten, Linear, BatchNorm, ReLU — an NNX module with batch statistics."""

  def __init__(self, din: int, dout: int, rngs: nnx.Rngs):
    self.linear = nnx.Linear(din, dout, rngs=rngs)
    self.norm = nnx.BatchNorm(dout, rngs=rngs)

  def __call__(self, x):
    return nnx.relu(self.norm(self.linear(x.reshape(x.shape[0], -1))))


def nnx_mlp(input_shape, num_classes, width=64):
  """Three NNX blocks with NNX exits (nnx.Linear)."""
  rngs = nnx.Rngs(0)
  din = math.prod(input_shape)
  blocks = [NNXBlock(din, width, rngs), NNXBlock(width, width, rngs), NNXBlock(width, width, rngs)]
  exits = [nnx.Linear(width, num_classes, rngs=rngs) for _ in blocks]
  return qn.multi_exit_model(blocks, exits, input_shape=input_shape, num_classes=num_classes, name="nnx_mlp")

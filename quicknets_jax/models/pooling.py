"""Pieces the convolutional QuickNets share: SDN's mixed max-average pooling exit, and FLOP counts of
conv-net layers that match how XLA's `cost_analysis()` counts them.

Exit head (Kaya et al. 2019, Shallow-Deep Networks, `aux_funcs.py` `InternalClassifier` and
`feature_reduction_formula`): a feature map of side s is pooled with kernel = stride = s // 4 as
`α·maxpool + (1−α)·avgpool`, with α a learned scalar per exit initialised uniformly in [0, 1] and left
unconstrained, as in SDN, then one linear layer. Where we differ: SDN also "pools" maps of side 4..7
with kernel 1 (a no-op that still carries an α); here every map whose kernel would be ≤ 1 (side < 8)
goes straight to the linear layer, as the issue asks. Odd sides pool with floor (VALID), as
PyTorch's MaxPool2d/AvgPool2d do.

FLOPs (one multiply-add = 2): a SAME-padded convolution is counted over the taps that touch the image
only — XLA skips the zero padding, so this is what the XLA cross-check can confirm; the all-taps count
of design.md §2 (`flops.conv_flops`) is 4% higher at 32×32 and 2.25× higher for a 3×3 conv on a 2×2 map.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from quicknets_jax import flops
from quicknets_jax.models.base import lecun_normal


def _windows(x, kernel: int):
  """NHWC `x` cropped to whole k×k windows (VALID, floor) and split into them: [N, H/k, k, W/k, k, C]."""
  n, h, w, c = x.shape
  out_h, out_w = h // kernel, w // kernel
  return x[:, :out_h * kernel, :out_w * kernel].reshape(n, out_h, kernel, out_w, kernel, c)


def max_pool(x, kernel: int):
  """k×k max pool with stride k (VALID), the same numbers as `nn.max_pool`.

  Written as a reshape + max because XLA:CPU differentiates `reduce_window` max pooling with
  select-and-scatter, which is ~9× slower here (a 2×2 pool's backward on a 128×28×28×16 batch:
  109 ms vs 12 ms); the gradient only differs on exact ties, which after a ReLU are zeros whose
  gradient is zero either way.
  """
  return jnp.max(_windows(x, kernel), axis=(2, 4))


def avg_pool(x, kernel: int):
  """k×k average pool with stride k (VALID), the same numbers as `nn.avg_pool` (and ~6× faster on CPU)."""
  return jnp.mean(_windows(x, kernel), axis=(2, 4))


def reduction_kernel(size: int) -> int:
  """SDN's `feature_reduction_formula` (side // 4), or 0 where that kernel would be ≤ 1 (no pooling)."""
  kernel = size // 4
  return kernel if kernel > 1 else 0


def pooled_size(size: int) -> int:
  """Side of the map after the exit's pooling."""
  kernel = reduction_kernel(size)
  return size // kernel if kernel else size


class MixedPoolClassifier(nn.Module):
  """Mixed max-average pooling (learned α) then Dense(num_classes), on NHWC features."""

  num_classes: int

  @nn.compact
  def __call__(self, features, train: bool = False):
    del train
    kernel = reduction_kernel(features.shape[1])
    x = features
    if kernel:
      alpha = self.param("alpha", nn.initializers.uniform(scale=1.0), (1,))
      x = alpha * max_pool(x, kernel) + (1 - alpha) * avg_pool(x, kernel)
    return nn.Dense(self.num_classes, kernel_init=lecun_normal, name="out")(x.reshape((x.shape[0], -1)))


def mixed_pool_classifier_flops(height: int, width: int, channels: int, num_classes: int) -> float:
  """Analytic FLOPs per sample of `MixedPoolClassifier` on an H×W×C map (checked against XLA in tests).

  Per pooled element: k²−1 comparisons for the max, k²−1 adds for the sum, then α·max, c·sum and
  their sum (3); the average's 1/k² folds into the scalar c = (1−α)/k² (2 scalar ops per sample).
  """
  kernel = reduction_kernel(height)
  if not kernel:
    return flops.dense_flops(height * width * channels, num_classes)
  out_h, out_w = height // kernel, width // kernel
  pooled = out_h * out_w * channels
  pool_ops = pooled * (2 * (kernel * kernel - 1) + 3) + 2
  return pool_ops + flops.dense_flops(pooled, num_classes)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """(output side, padding before) of XLA's SAME padding along one axis."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return out, total // 2


def valid_taps(size: int, kernel: int, stride: int = 1, padding: str = "SAME") -> int:
  """Σ over output positions of the kernel taps that land inside the image, along one axis."""
  if padding == "SAME":
    out, lo = same_padding(size, kernel, stride)
  else:
    out, lo = (size - kernel) // stride + 1, 0
  return sum(sum(1 for k in range(kernel) if 0 <= o * stride + k - lo < size) for o in range(out))


def conv_flops(size: tuple[int, int], kernel: int, in_channels: int, out_channels: int, stride: int = 1,
               padding: str = "SAME", bias: bool = False) -> float:
  """FLOPs per sample of a square-kernel 2-D convolution on an H×W map, padding taps excluded."""
  taps = valid_taps(size[0], kernel, stride, padding) * valid_taps(size[1], kernel, stride, padding)
  out_h, out_w = conv_out(size, kernel, stride, padding)
  return 2.0 * taps * in_channels * out_channels + (out_h * out_w * out_channels if bias else 0)


def conv_out(size: tuple[int, int], kernel: int, stride: int = 1, padding: str = "SAME") -> tuple[int, int]:
  """Output H×W of a convolution or pooling window."""
  if padding == "SAME":
    return tuple(same_padding(s, kernel, stride)[0] for s in size)
  return tuple((s - kernel) // stride + 1 for s in size)


def batch_norm_flops(elements: int, channels: int) -> float:
  """Inference-mode batch norm: (x − mean)·scale' + bias per element, scale' = γ/√(var+ε) per channel."""
  return 3.0 * elements + 2.0 * channels


def max_pool_flops(out_elements: int, kernel: int) -> float:
  """k²−1 comparisons per output element."""
  return float(out_elements * (kernel * kernel - 1))


def avg_pool_flops(out_elements: int, kernel: int) -> float:
  """k²−1 adds and one divide per output element."""
  return float(out_elements * kernel * kernel)

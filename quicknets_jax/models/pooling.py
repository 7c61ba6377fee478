"""Exit heads for convolutional blocks: SDN's mixed max-average pooling followed by one linear layer.

Kaya et al. 2019 (Shallow-Deep Networks, `aux_funcs.py` `InternalClassifier`): a feature map of
size s ≥ 4 is pooled with kernel = stride = s // 4 (so to 4×4 for sizes divisible by 4) as
`α·maxpool + (1−α)·avgpool`, with α a learned scalar per exit initialised uniformly in [0, 1] and
left unconstrained as in SDN; maps smaller than 4 go straight to the linear layer.
"""

from __future__ import annotations

import flax.linen as nn

from quicknets_jax import flops


def reduction_kernel(size: int) -> int:
  """SDN's `feature_reduction_formula`: pooling kernel for a map of side `size`, or 0 for none."""
  return size // 4 if size >= 4 else 0


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
      window = (kernel, kernel)
      x = alpha * nn.max_pool(x, window, strides=window) + (1 - alpha) * nn.avg_pool(x, window, strides=window)
    return nn.Dense(self.num_classes, name="out")(x.reshape((x.shape[0], -1)))


def mixed_pool_classifier_flops(height: int, width: int, channels: int, num_classes: int) -> float:
  """Analytic FLOPs per sample of `MixedPoolClassifier` on an H×W×C map.

  Each pooling window of k×k taps costs k² element ops for the max and k² for the sum (plus one
  divide), and mixing costs 3 ops per pooled element (two scales and an add).
  """
  kernel = reduction_kernel(height)
  if not kernel:
    return flops.dense_flops(height * width * channels, num_classes)
  out_h, out_w = height // kernel, width // kernel
  pooled = out_h * out_w * channels
  pool_ops = pooled * (2 * kernel * kernel + 1)
  return pool_ops + 3 * pooled + flops.dense_flops(pooled, num_classes)


def pooled_size(size: int) -> int:
  kernel = reduction_kernel(size)
  return size // kernel if kernel else size


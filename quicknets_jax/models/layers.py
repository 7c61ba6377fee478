"""Layers the convolutional QuickNets share: convolutions, fast pooling and SDN's mixed max-average
pooling exit.

`Conv` is `flax.linen.Conv` (the same parameters, names and values) that convolves one of two ways: with
XLA's convolution, or as a matrix product of image patches (im2col). Measured on 2 CPU cores (BUILD.md
"Speed"), XLA:CPU's convolution inside a `fori_loop`/`scan` — where the trainer's whole epoch runs — is
15–120× slower than at the top level of a program, while the patch product runs as fast there as
anywhere; so the trainer traces its training and validation loops with patch products on CPU
(`training.trainer.loop_convolutions`), which trains the reduced VGG-11 1.8× faster than XLA's
convolution stepped from Python. Elsewhere ("auto") XLA's convolution is kept — it is 1.4–3× faster for
a forward pass at the top level — except on maps of side ≤ 3, where XLA:CPU's is pathologically slow
(a 3×3 conv on a 2×2×512 map at batch 128: 1.1 s, against 17 ms as patches). GPU/TPU always get XLA's
convolution. The two ways sum in different orders: they agree to float round-off.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Sequence
from typing import Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from quicknets_jax.core import costs
from quicknets_jax.models.base import lecun_normal

IMPLEMENTATIONS = ("auto", "native", "patches")
_IMPLEMENTATION: contextvars.ContextVar[str] = contextvars.ContextVar("quicknets_conv", default="auto")
SMALL_MAP = 3  # "auto" on CPU: patch products for output maps this wide or narrower
# Rows a convolving network's validation passes compute at once on CPU (`training.step.eval_sums`):
# the patch products of 2,048 rows overflow the caches, 2–4× slower per row than 256 rows (VGG-11/8
# on 28×28 images); 128–512 rows run alike. A row's loss then rounds as in a batch of that size: the
# last float bits of a validation loss can move, nothing else.
CPU_ROWS_PER_PASS = 256


@contextlib.contextmanager
def conv_implementation(name: str):
  """Within this block, `Conv` layers traced use `name`: "auto" (see the module doc), "native" (XLA's
  convolution) or "patches" (im2col + matrix product) — and so do the plain `flax.linen.Conv` layers of
  a user's own network (`flax_conv_interceptor`). A jitted function keeps what its first trace saw.

  Args:
    name: one of `IMPLEMENTATIONS`.

  Yields:
    Nothing: a context manager.

  Raises:
    ValueError: `name` is not one of `IMPLEMENTATIONS`.
  """
  if name not in IMPLEMENTATIONS:
    raise ValueError(f"conv implementation must be one of {IMPLEMENTATIONS}, got {name!r}")
  token = _IMPLEMENTATION.set(name)
  try:
    with nn.intercept_methods(flax_conv_interceptor):
      yield
  finally:
    _IMPLEMENTATION.reset(token)


def _flax_padding(padding, kernel_size):
  """`nn.Conv`'s padding in the form `convolve` takes, or None where it is one `convolve` does not do."""
  if isinstance(padding, str):
    return padding if padding in ("SAME", "VALID") else None
  if isinstance(padding, int):
    return ((padding, padding),) * len(kernel_size)
  pairs = [(p, p) if isinstance(p, int) else tuple(p) for p in padding]
  return tuple(pairs) if all(len(p) == 2 for p in pairs) else None


def flax_conv_interceptor(next_fun, args, kwargs, context):
  """Runs a plain 2-D `flax.linen.Conv` (the layer a user's own network is built from) through `convolve`,
  so it too becomes a patch product where the trainer's loops want one: the same params, the same
  numbers up to float round-off. Anything else — initialisation, dilation, groups, masks, 1-D or 3-D
  convolutions, circular padding — runs as flax runs it.

  Args:
    next_fun: the intercepted method (flax's interceptor protocol).
    args: its positional arguments.
    kwargs: its keyword arguments.
    context: flax's interception context (the module and the method's name).

  Returns:
    What the convolution returns.
  """
  module = context.module
  if type(module) is not nn.Conv or context.method_name != "__call__" or module.is_initializing():
    return next_fun(*args, **kwargs)
  (x,) = args
  kernel_size = tuple(module.kernel_size)
  padding = _flax_padding(module.padding, kernel_size)
  plain = all(getattr(module, name) in (None, 1) for name in ("input_dilation", "kernel_dilation"))
  plain = plain and module.feature_group_count == 1 and module.mask is None and module.shared_weights
  if kwargs or x.ndim != 4 or len(kernel_size) != 2 or padding is None or not plain:
    return next_fun(*args, **kwargs)
  kernel = module.get_variable("params", "kernel")
  bias = module.get_variable("params", "bias") if module.use_bias else None
  x, kernel, bias = module.promote_dtype(x, kernel, bias, dtype=module.dtype)
  strides = module.strides or (1, 1)
  strides = (strides, strides) if isinstance(strides, int) else tuple(strides)
  y = convolve(x, kernel, strides, padding)
  return y if bias is None else y + bias.reshape((1, 1, 1, -1))


def _use_patches(out_side: int) -> bool:
  name = _IMPLEMENTATION.get()
  if name == "auto":
    return jax.default_backend() == "cpu" and out_side <= SMALL_MAP
  return name == "patches"


def _explicit_padding(padding, size: Sequence[int], kernel: Sequence[int], strides: Sequence[int]) -> list:
  """[(before, after)] per spatial axis for "SAME", "VALID" or explicit ((lo, hi), ...) padding."""
  if padding == "VALID":
    return [(0, 0)] * len(size)
  if padding == "SAME":
    out = []
    for n, k, s in zip(size, kernel, strides):
      total = max((-(-n // s) - 1) * s + k - n, 0)
      out.append((total // 2, total - total // 2))
    return out
  return [tuple(p) for p in padding]


def patch_conv(x, kernel, strides: Sequence[int], padding) -> jnp.ndarray:
  """The NHWC × HWIO convolution `lax.conv_general_dilated` computes, as patches @ kernel.

  Args:
    x: [N, H, W, C_in] inputs.
    kernel: [kh, kw, C_in, C_out] kernel.
    strides: (stride_h, stride_w).
    padding: "SAME", "VALID" or ((lo, hi), (lo, hi)).

  Returns:
    [N, H', W', C_out] outputs.
  """
  kh, kw, c_in, c_out = kernel.shape
  (lo_h, hi_h), (lo_w, hi_w) = _explicit_padding(padding, x.shape[1:3], (kh, kw), strides)
  x = jnp.pad(x, ((0, 0), (lo_h, hi_h), (lo_w, hi_w), (0, 0)))
  sh, sw = strides
  out_h, out_w = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
  if kh == kw == 1:
    patches = x[:, : sh * (out_h - 1) + 1 : sh, : sw * (out_w - 1) + 1 : sw, :]
  else:  # taps in (row, column, channel) order: the kernel's own layout
    patches = jnp.concatenate(
      [
        x[:, i : i + sh * (out_h - 1) + 1 : sh, j : j + sw * (out_w - 1) + 1 : sw, :]
        for i in range(kh)
        for j in range(kw)
      ],
      axis=-1,
    )
  return (patches.reshape(-1, kh * kw * c_in) @ kernel.reshape(kh * kw * c_in, c_out)).reshape(
    x.shape[0], out_h, out_w, c_out
  )


def convolve(x, kernel, strides: Sequence[int], padding) -> jnp.ndarray:
  """The NHWC × HWIO convolution, as a patch product or XLA's own as `conv_implementation` says.

  Args:
    x: [N, H, W, C_in] inputs.
    kernel: [kh, kw, C_in, C_out] kernel.
    strides: (stride_h, stride_w).
    padding: "SAME", "VALID" or ((lo, hi), (lo, hi)).

  Returns:
    [N, H', W', C_out] outputs.
  """
  kh, kw = kernel.shape[:2]
  pads = _explicit_padding(padding, x.shape[1:3], (kh, kw), strides)
  out_side = min((n + lo + hi - k) // s + 1 for n, (lo, hi), k, s in zip(x.shape[1:3], pads, (kh, kw), strides))
  if _use_patches(out_side):
    return patch_conv(x, kernel, tuple(strides), padding)
  return jax.lax.conv_general_dilated(x, kernel, tuple(strides), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


class Conv(nn.Module):
  """`nn.Conv` for NHWC images (same params and initialisation), convolving as `conv_implementation` says.

  Attributes:
    features: output channels.
    kernel_size: (kh, kw).
    strides: (stride_h, stride_w).
    padding: "SAME", "VALID" or ((lo, hi), (lo, hi)).
    use_bias: whether a bias is added.
    kernel_init: the kernel's initializer.
    bias_init: the bias's initializer.
  """

  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] = (1, 1)
  padding: Union[str, Sequence[tuple[int, int]]] = "SAME"
  use_bias: bool = True
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x):
    kh, kw = self.kernel_size
    kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features), jnp.float32)
    padding = self.padding if isinstance(self.padding, str) else tuple(tuple(p) for p in self.padding)
    y = convolve(x, kernel, tuple(self.strides), padding)
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,), jnp.float32)
    return y


def _windows(x, kernel: int):
  """NHWC `x` cropped to whole k×k windows (VALID, floor) and split into them: [N, H/k, k, W/k, k, C]."""
  n, h, w, c = x.shape
  out_h, out_w = h // kernel, w // kernel
  return x[:, : out_h * kernel, : out_w * kernel].reshape(n, out_h, kernel, out_w, kernel, c)


def max_pool(x, kernel: int):
  """k×k max pool with stride k (VALID), the same numbers as `nn.max_pool`.

  Written as a reshape + max because XLA:CPU differentiates `reduce_window` max pooling with
  select-and-scatter, which is ~9× slower here (a 2×2 pool's backward on a 128×28×28×16 batch:
  109 ms vs 12 ms); the gradient only differs on exact ties, which after a ReLU are zeros whose
  gradient is zero either way.

  Args:
    x: [N, H, W, C] inputs.
    kernel: the window's side k (also the stride).

  Returns:
    [N, H // k, W // k, C] maxima.
  """
  return jnp.max(_windows(x, kernel), axis=(2, 4))


def avg_pool(x, kernel: int):
  """k×k average pool with stride k (VALID), the same numbers as `nn.avg_pool` (and ~6× faster on CPU).

  Args:
    x: [N, H, W, C] inputs.
    kernel: the window's side k (also the stride).

  Returns:
    [N, H // k, W // k, C] means.
  """
  return jnp.mean(_windows(x, kernel), axis=(2, 4))


def reduction_kernel(size: int) -> int:
  """SDN's `feature_reduction_formula` (side // 4), or 0 where that kernel would be ≤ 1 (no pooling).

  Args:
    size: the feature map's side.

  Returns:
    The pooling kernel's side, or 0.
  """
  kernel = size // 4
  return kernel if kernel > 1 else 0


class MixedPoolClassifier(nn.Module):
  """Mixed max-average pooling (learned α) then Dense(num_classes), on NHWC features.

  Attributes:
    num_classes: the classes it predicts.
  """

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

  Args:
    height: the map's height.
    width: its width.
    channels: its channels.
    num_classes: the classes predicted.

  Returns:
    FLOPs per sample.
  """
  kernel = reduction_kernel(height)
  if not kernel:
    return costs.dense_flops(height * width * channels, num_classes)
  pooled = (height // kernel) * (width // kernel) * channels
  return costs.mixed_pool_flops(pooled, kernel) + costs.dense_flops(pooled, num_classes)

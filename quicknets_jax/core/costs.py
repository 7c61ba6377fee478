"""The cost model: every FLOP formula of the project, once (one multiply-add = 2 FLOPs, docs/method.md).

Layers: dense `2·in·out`, convolution `2·taps·C_in·C_out` over the kernel taps that land on the image
(XLA's `cost_analysis()` does not count taps on zero padding, so this is what the cross-check can
confirm), plus one FLOP per element for bias, activation and each pooling tap, as XLA counts them.
Models add these up into a `BlockCost` per block (`models/`).

Inference: `cascade_costs` — what reaching and deciding at exit e costs a sample.

Training (the paper's "training cost"): for every optimizer step, 3 × the forward FLOPs of what
trains plus 1 × the frozen prefix when it is recomputed; every forward pass that builds a feature
cache, validates or selects the learned set counts once. `quicknet_block_flops`, `fit_flops`,
`commitment_head_flops` and `finetune_flops` are the whole accounting: the results and the per-epoch
metrics both read them, so they cannot drift apart.

`xla_flops` is XLA's count of a function, for the tests and `models.xla_check`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import NamedTuple, Union

import jax
import numpy as np

Padding = Union[str, int]  # "SAME", "VALID", or an explicit symmetric padding in pixels


# ---------------------------------------------------------------------------------------- layers


def dense_flops(in_features: int, out_features: int, bias: bool = True, activation: bool = False) -> float:
  """FLOPs per sample of a dense layer (and its elementwise bias/activation).

  Args:
    in_features: the layer's input width.
    out_features: its output width.
    bias: count one FLOP per output element for the bias.
    activation: count one FLOP per output element for an activation.

  Returns:
    2·in·out, plus out for the bias and out for the activation.
  """
  flops = 2.0 * in_features * out_features
  flops += out_features if bias else 0
  flops += out_features if activation else 0
  return flops


def _axis_window(size: int, kernel: int, stride: int, padding: Padding) -> tuple[int, int]:
  """(output side, padding before) of a convolution or pooling window along one axis."""
  if padding == "SAME":  # XLA's SAME: the extra padding goes after
    out = -(-size // stride)
    return out, max((out - 1) * stride + kernel - size, 0) // 2
  if padding == "VALID":
    return (size - kernel) // stride + 1, 0
  if isinstance(padding, int) and padding >= 0:
    return (size + 2 * padding - kernel) // stride + 1, padding
  raise ValueError(f"padding must be 'SAME', 'VALID' or a number of pixels ≥ 0, got {padding!r}")


def conv_out(size: tuple[int, int], kernel: int, stride: int = 1, padding: Padding = "SAME") -> tuple[int, int]:
  """Output H×W of a square-kernel convolution or pooling window on an H×W map.

  Args:
    size: the input's (H, W).
    kernel: the window's side.
    stride: the step between windows.
    padding: "SAME", "VALID" or a symmetric padding in pixels.

  Returns:
    The output's (H, W).

  Raises:
    ValueError: `padding` is none of those.
  """
  return tuple(_axis_window(s, kernel, stride, padding)[0] for s in size)


def valid_taps(size: int, kernel: int, stride: int = 1, padding: Padding = "SAME") -> int:
  """Σ over output positions of the kernel taps that land inside the image, along one axis.

  Args:
    size: the input's side along the axis.
    kernel: the window's side.
    stride: the step between windows.
    padding: "SAME", "VALID" or a symmetric padding in pixels.

  Returns:
    The number of (output position, tap) pairs whose tap reads a real pixel.

  Raises:
    ValueError: `padding` is none of those.
  """
  out, lo = _axis_window(size, kernel, stride, padding)
  return sum(sum(1 for k in range(kernel) if 0 <= o * stride + k - lo < size) for o in range(out))


def conv_flops(
  size: tuple[int, int],
  kernel: int,
  in_channels: int,
  out_channels: int,
  stride: int = 1,
  padding: Padding = "SAME",
  bias: bool = False,
) -> float:
  """FLOPs per sample of a square-kernel 2-D convolution on an H×W map, padding taps excluded.

  Args:
    size: the input's (H, W).
    kernel: the kernel's side.
    in_channels: input channels.
    out_channels: output channels.
    stride: the step between windows.
    padding: "SAME", "VALID" or a symmetric padding in pixels.
    bias: count one FLOP per output element for the bias.

  Returns:
    2 · taps · C_in · C_out (taps on zero padding left out, as XLA counts), plus the bias.

  Raises:
    ValueError: `padding` is none of those.
  """
  taps = valid_taps(size[0], kernel, stride, padding) * valid_taps(size[1], kernel, stride, padding)
  out_h, out_w = conv_out(size, kernel, stride, padding)
  return 2.0 * taps * in_channels * out_channels + (out_h * out_w * out_channels if bias else 0)


def batch_norm_flops(elements: int, channels: int) -> float:
  """Inference-mode batch norm: (x − mean)·scale' + bias per element, scale' = γ/√(var+ε) per channel.

  Args:
    elements: elements of the normalised map per sample (H·W·C).
    channels: its channels.

  Returns:
    3 FLOPs per element plus 2 per channel.
  """
  return 3.0 * elements + 2.0 * channels


def max_pool_flops(out_elements: int, kernel: int) -> float:
  """k²−1 comparisons per output element.

  Args:
    out_elements: elements of the pooled map per sample.
    kernel: the window's side k.

  Returns:
    The FLOPs per sample.
  """
  return float(out_elements * (kernel * kernel - 1))


def avg_pool_flops(out_elements: int, kernel: int) -> float:
  """k²−1 adds and one divide per output element.

  Args:
    out_elements: elements of the pooled map per sample.
    kernel: the window's side k.

  Returns:
    The FLOPs per sample.
  """
  return float(out_elements * kernel * kernel)


def mixed_pool_flops(out_elements: int, kernel: int) -> float:
  """SDN's α·maxpool + (1−α)·avgpool: per output element k²−1 comparisons, k²−1 adds, then α·max,
  c·sum and their sum (3); the average's 1/k² folds into the scalar c = (1−α)/k² (2 ops per sample).

  Args:
    out_elements: elements of the pooled map per sample.
    kernel: the window's side k.

  Returns:
    The FLOPs per sample.
  """
  return float(out_elements * (2 * (kernel * kernel - 1) + 3) + 2)


def global_mean_flops(height: int, width: int, channels: int) -> float:
  """(HW−1)·C adds + C divides; on a 1×1 map the mean is a reshape (XLA counts nothing).

  Args:
    height: the map's height.
    width: its width.
    channels: its channels.

  Returns:
    The FLOPs per sample.
  """
  return float(height * width * channels) if height * width > 1 else 0.0


# --------------------------------------------------------------------------------------- blocks


@dataclasses.dataclass(frozen=True)
class BlockCost:
  """Analytic forward FLOPs of one block's parts, per sample.

  Attributes:
    subnet: the block's subnet on its input.
    exit_head: its exit classifier on the subnet's features.
    commit_head: its commitment head on what it reads.
  """

  subnet: float
  exit_head: float
  commit_head: float

  @property
  def total(self) -> float:
    """The three parts together: what one sample costs to run the block and both its heads."""
    return self.subnet + self.exit_head + self.commit_head


def cascade_costs(block_costs: Sequence[BlockCost], with_commitment: bool = True) -> np.ndarray:
  """[E] forward FLOPs per sample to reach and decide at exit e: subnets, exits (and, when the rule
  uses them, commitment heads) 0..e.

  Args:
    block_costs: one `BlockCost` per block, in order.
    with_commitment: count the commitment heads (False for the confidence-only rule).

  Returns:
    [E] float64 cumulative costs.
  """
  per_block = [c.subnet + c.exit_head + (c.commit_head if with_commitment else 0.0) for c in block_costs]
  return np.cumsum(np.asarray(per_block, np.float64))


def end_to_end_cost(block_costs: Sequence[BlockCost]) -> float:
  """Forward FLOPs per sample of the plain network: every subnet and the final exit only.

  Args:
    block_costs: one `BlockCost` per block, in order.

  Returns:
    The cost of one forward pass of the end-to-end network.
  """
  return float(sum(c.subnet for c in block_costs) + block_costs[-1].exit_head)


def prefix_cost(block_costs: Sequence[BlockCost], upto: int) -> float:
  """Forward FLOPs per sample of the subnets before block `upto` (its frozen prefix).

  Args:
    block_costs: one `BlockCost` per block, in order.
    upto: the block whose prefix is meant.

  Returns:
    The sum of the subnets' costs of blocks 0..upto−1.
  """
  return float(sum(c.subnet for c in block_costs[:upto]))


def joint_forward_cost(block_costs: Sequence[BlockCost]) -> float:
  """FLOPs per sample of one forward pass through every subnet and exit head (no commitment heads).

  Args:
    block_costs: one `BlockCost` per block, in order.

  Returns:
    The cost of a joint forward pass (what joint training and fine-tuning run).
  """
  return float(sum(c.subnet + c.exit_head for c in block_costs))


# ------------------------------------------------------------------------------------- training


def fit_flops(epochs: int, n_train: int, n_val: int, forward: float) -> dict:
  """A fit that trains everything it runs (end to end, jointly): 3 × `forward` per training sample
  step, 1 × per validation sample, every epoch.

  Args:
    epochs: epochs trained.
    n_train: training samples per epoch.
    n_val: validation samples per epoch.
    forward: forward FLOPs per sample of what trains.

  Returns:
    {"training": ..., "validation": ...} in FLOPs.
  """
  return dict(training=epochs * n_train * 3 * forward, validation=epochs * n_val * forward)


QUICKNET_BLOCK_PARTS = (
  "block_training",
  "block_validation",
  "cache",
  "commit_training",
  "commit_validation",
  "selection",
)
# How far a block has come: its own fit, its commitment head's fit, or frozen (selection done).
STAGES = ("block", "commitment", "done")


class BlockSamples(NamedTuple):
  """The sample counts a QuickNet block's training FLOPs scale with (`quicknet_block_flops`).

  Attributes:
    n_train: |T_j|, the block's working set.
    n_fit: the samples its fit trains on (T_j minus a commitment holdout).
    n_val: |V_j|, its validation set.
    n_commit: the samples its commitment head trains on.
  """

  n_train: int
  n_fit: int
  n_val: int
  n_commit: int


def quicknet_block_flops(
  cost: BlockCost,
  prefix: float,
  samples: BlockSamples,
  *,
  cached: bool,
  epochs: int,
  commit_epochs: int = 0,
  stage: str = "done",
) -> dict:
  """Training FLOPs of QuickNet block j by part, after `epochs` of its fit and `commit_epochs` of its
  commitment head's (docs/method.md, FLOP accounting).

  Args:
    cost: the block's forward costs.
    prefix: its frozen prefix's (`prefix_cost`).
    samples: its working set, fit, validation and commitment-head sample counts (`BlockSamples`).
    cached: the prefix's features were computed once (True) or are recomputed every step (False).
    epochs: epochs of the block's fit so far.
    commit_epochs: epochs of its commitment head's fit so far.
    stage: "block" (its fit is running: only what that has spent), "commitment" (the head's fit is
      running) or "done" (frozen: everything, the learned-set selection included).

  Returns:
    A dict with one entry per name of `QUICKNET_BLOCK_PARTS`, in FLOPs.

  Raises:
    ValueError: `stage` is not one of `STAGES`.
  """
  if stage not in STAGES:
    raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
  n_train, n_fit, n_val, n_commit = samples
  trainable = cost.subnet + cost.exit_head
  recompute = 0.0 if cached else prefix
  parts = dict.fromkeys(QUICKNET_BLOCK_PARTS, 0.0)
  parts["block_training"] = epochs * n_fit * (3 * trainable + recompute)
  parts["block_validation"] = epochs * n_val * (trainable + recompute)
  # the prefix's features of V_j (always) and of T_j (before the fit if cached, after it if not), then
  # the block's outputs on both, which its commitment head learns from
  parts["cache"] = n_val * prefix + (n_train * prefix if cached or stage != "block" else 0.0)
  if stage != "block":  # the block's outputs on all of T_j and V_j: its head and the selection read them
    parts["cache"] += (n_train + n_val) * trainable
    head = commitment_head_flops(cost, epochs=commit_epochs, n_train=n_commit, n_val=n_val)
    parts["commit_training"], parts["commit_validation"] = head["commit_training"], head["commit_validation"]
  if stage == "done":
    parts["selection"] = (n_train + n_val) * cost.commit_head
  return parts


def commitment_head_flops(cost: BlockCost, *, epochs: int, n_train: int, n_val: int) -> dict:
  """A commitment head trained on a frozen block, by part: the block's outputs on its training and
  validation rows (the features and correctness it learns from), then 3 × / 1 × the head per
  training / validation sample and epoch.

  Args:
    cost: the block's forward costs.
    epochs: epochs of the head's fit.
    n_train: the samples the head trains on.
    n_val: its validation samples.

  Returns:
    {"cache", "commit_training", "commit_validation"} in FLOPs.
  """
  return dict(
    cache=(n_train + n_val) * (cost.subnet + cost.exit_head),
    commit_training=epochs * n_train * 3 * cost.commit_head,
    commit_validation=epochs * n_val * cost.commit_head,
  )


def finetune_flops(block_costs: Sequence[BlockCost], *, epochs: int, n_train: int, n_val: int) -> dict:
  """QuickNet+ joint fine-tuning of the trained blocks: every sample runs every subnet and exit.

  Args:
    block_costs: one `BlockCost` per block, in order.
    epochs: fine-tuning epochs.
    n_train: training samples per epoch.
    n_val: validation samples per epoch.

  Returns:
    {"finetune_training", "finetune_validation"} in FLOPs.
  """
  forward = joint_forward_cost(block_costs)
  return dict(finetune_training=epochs * (3 * n_train) * forward, finetune_validation=epochs * n_val * forward)


def add_parts(*parts: dict) -> dict:
  """Parts dicts summed part by part (their non-numeric entries, e.g. "block", left out).

  Args:
    *parts: dicts of FLOPs by part.

  Returns:
    One dict with the sum of every numeric part.
  """
  out: dict = {}
  for p in parts:
    for key, value in p.items():
      if isinstance(value, (int, float)) and not isinstance(value, bool):
        out[key] = out.get(key, 0.0) + float(value)
  return out


def total(parts: dict) -> float:
  """The sum of a parts dict (its non-numeric entries, e.g. "block", left out).

  Args:
    parts: a dict of FLOPs by part.

  Returns:
    The total FLOPs.
  """
  return float(sum(v for v in parts.values() if isinstance(v, (int, float)) and not isinstance(v, bool)))


# ------------------------------------------------------------------------------------------ XLA


def xla_flops(fn: Callable, *args) -> float:
  """FLOPs XLA counts for `fn(*args)` on this backend (per device under sharding).

  Args:
    fn: the function to compile.
    *args: its arguments (arrays or `jax.ShapeDtypeStruct`s: nothing runs).

  Returns:
    `cost_analysis()["flops"]` of the compiled program.
  """
  analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jax returned one dict per device
    analysis = analysis[0]
  return float(analysis["flops"])

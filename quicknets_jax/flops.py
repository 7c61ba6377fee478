"""Analytic FLOP counts (one multiply-add = 2 FLOPs) and the XLA cross-check.

Per layer: dense `2·in·out`, conv `2·k_h·k_w·C_in·C_out·H_out·W_out`, plus one FLOP per element for
bias, activation and each pooling tap, matching how XLA's `cost_analysis()` counts them. Block costs
add these up; `training_cost_*` turn them into the paper's "training cost" by the convention of
design.md §2 (3 × forward per trained sample, 1 × forward for every recomputed frozen prefix, cache
building, selection and validation passes).
"""

from __future__ import annotations

from typing import Callable

import jax


def dense_flops(in_features: int, out_features: int, bias: bool = True, activation: bool = False) -> float:
  """FLOPs per sample of a dense layer (and its elementwise bias/activation)."""
  flops = 2.0 * in_features * out_features
  flops += out_features if bias else 0
  flops += out_features if activation else 0
  return flops


def conv_flops(kernel: tuple[int, int], in_channels: int, out_channels: int,
               out_hw: tuple[int, int], bias: bool = True, activation: bool = False) -> float:
  """FLOPs per sample of a 2-D convolution (every tap counted, also padding ones)."""
  h, w = out_hw
  flops = 2.0 * kernel[0] * kernel[1] * in_channels * out_channels * h * w
  elems = out_channels * h * w
  flops += elems if bias else 0
  flops += elems if activation else 0
  return flops


def xla_flops(fn: Callable, *args) -> float:
  """FLOPs XLA counts for `fn(*args)` on this backend (per device under sharding)."""
  analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jax returned one dict per device
    analysis = analysis[0]
  return float(analysis["flops"])

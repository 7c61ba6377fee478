"""Analytic FLOP counts (one multiply-add = 2 FLOPs) and the XLA cross-check.

Per layer: dense `2·in·out`, conv `2·k_h·k_w·C_in·C_out·H_out·W_out`, plus one FLOP per element for
bias, activation and each pooling tap, matching how XLA's `cost_analysis()` counts them. Block costs
add these up; `training_cost_*` turn them into the paper's "training cost" by the convention of
design.md §2 (3 × forward per trained sample, 1 × forward for every recomputed frozen prefix, cache
building, selection and validation passes). `flops_check(model)` sets every block's analytic count
beside XLA's (the experiments write it into results.json).
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


def flops_check(model) -> dict:
  """Analytic vs XLA (`cost_analysis`) forward FLOPs per sample of each block and of the end-to-end
  network, with their relative difference.

  A block is compiled as two programs, its subnet and its two heads (exit + commitment, on the
  subnet's features): compiled as one, XLA fuses the subnet's last elementwise ops (BN, ReLU) into each
  head that reads them and counts them once per head (VGG-11's block 2 then reads 2.9% high), which is
  a fusion artefact, not work the network defines. Only compiles (abstract inputs, batch 1): nothing
  runs, so it is cheap even for DenseNet-121 at 224².
  """
  import jax.numpy as jnp

  from quicknets_jax.models.base import Block

  def heads(block, v, h):
    return block.apply(v, h, method=Block.classify), block.apply(v, h, method=Block.commit)

  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0)))
  x = jax.ShapeDtypeStruct((1, *model.input_shape), jnp.float32)
  blocks = []
  for block, v, cost in zip(model.blocks, variables, model.block_costs):
    h = jax.eval_shape(lambda v, a, b=block: b.apply(v, a, method=Block.features), v, x)
    subnet = xla_flops(lambda v, a, b=block: b.apply(v, a, method=Block.features), v, x)
    head = xla_flops(lambda v, a, b=block: heads(b, v, a), v, h)
    counted = subnet + head
    blocks.append(dict(analytic=cost.total, xla=counted, relative_difference=cost.total / counted - 1,
                       analytic_parts=dict(subnet=cost.subnet, exit_head=cost.exit_head,
                                           commit_head=cost.commit_head),
                       xla_parts=dict(subnet=subnet, heads=head)))
    x = h

  def end_to_end(variables, a):
    for block, v in zip(model.blocks[:-1], variables[:-1]):
      a = block.apply(v, a, method=Block.features)
    return model.blocks[-1].apply(variables[-1], a, method=Block.features_and_logits)[1]

  counted = xla_flops(end_to_end, variables, jax.ShapeDtypeStruct((1, *model.input_shape), jnp.float32))
  analytic = model.end_to_end_cost()
  return dict(convention="forward FLOPs per sample; conv taps on zero padding are not counted (as XLA); "
                         "XLA's count of a block = its subnet + its two heads, compiled apart",
              blocks=blocks, end_to_end=dict(analytic=analytic, xla=counted,
                                             relative_difference=analytic / counted - 1))

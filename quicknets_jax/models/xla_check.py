"""Each block's forward FLOPs as XLA counts them: the costs of a user's own network (`measured_costs`),
and the check of the built-in models' analytic counts (`core.costs`, summed in the model builders)
against XLA's (`flops_check`), which the experiments write into results.json.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from quicknets_jax.core.costs import BlockCost, xla_flops
from quicknets_jax.models import layers
from quicknets_jax.models.base import Block, MultiExitModel


def convolutions(block: Block, variables, x) -> str:
  """What convolutions a block runs (`Block.convolutions`): what a model built from a user's modules
  declares, read once when the model is built from the primitives of the block's program, traced with
  XLA's convolutions and with patch products (nothing runs).

  Args:
    block: the block.
    variables: its variables (or their shapes).
    x: its input, one row (or its shape, a `jax.ShapeDtypeStruct`).

  Returns:
    "none" when the block's forward pass (subnet and exit) holds no convolution, "native" when one is
    left under patch products (`models.layers.conv_implementation`), else "patchable".
  """

  def convolves(implementation: str) -> bool:
    with layers.conv_implementation(implementation):
      program = jax.make_jaxpr(lambda v, a: block.apply(v, a, method=Block.features_and_logits))(variables, x)
    return any(eqn.primitive.name == "conv_general_dilated" for eqn in _equations(program.jaxpr))

  if not convolves("native"):
    return "none"
  return "native" if convolves("patches") else "patchable"


def _equations(jaxpr):
  """Every equation of `jaxpr` and of the programs nested in it (loops, conditionals, remat, calls)."""
  for eqn in jaxpr.eqns:
    yield eqn
    for param in eqn.params.values():
      for inner in param if isinstance(param, (tuple, list)) else (param,):
        inner = getattr(inner, "jaxpr", inner)  # a ClosedJaxpr holds its Jaxpr
        if hasattr(inner, "eqns"):
          yield from _equations(inner)


def measured_costs(blocks, input_shape, variables) -> list[BlockCost]:
  """XLA's count (`cost_analysis`) of each block's parts, forward FLOPs per sample: the subnet on the
  block's input, the exit on its features, and the commitment head on what it reads (the features, or
  the exit's logits). Each part compiles alone, on abstract inputs of batch 1 (nothing runs), with XLA's
  own convolutions (the network's work, not a patch product's).

  Args:
    blocks: the model's `Block`s, in order.
    input_shape: one sample's input shape.
    variables: the blocks' variables (or their shapes, `jax.eval_shape` of the model's init).

  Returns:
    One `BlockCost` per block.
  """
  with layers.conv_implementation("native"):
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    out = []
    for block, v in zip(blocks, variables):
      h = jax.eval_shape(lambda v, a, b=block: b.apply(v, a, method=Block.features), v, x)
      read = jax.eval_shape(lambda v, a, b=block: b.apply(v, a, method=Block.commit_inputs), v, h)
      out.append(
        BlockCost(
          subnet=xla_flops(lambda v, a, b=block: b.apply(v, a, method=Block.features), v, x),
          exit_head=xla_flops(lambda v, a, b=block: b.apply(v, a, method=Block.classify), v, h),
          commit_head=xla_flops(lambda v, a, b=block: b.apply(v, a, method=Block.commit_from_inputs), v, read),
        )
      )
      x = h
    return out


def flops_check(model: MultiExitModel) -> dict:
  """Analytic vs XLA (`cost_analysis`) forward FLOPs per sample of each block and of the end-to-end
  network, with their relative difference.

  A block is compiled as two programs, its subnet and its two heads (exit + commitment, on the
  subnet's features): compiled as one, XLA fuses the subnet's last elementwise ops (BN, ReLU) into each
  head that reads them and counts them once per head (VGG-11's block 2 then reads 2.9% high), which is
  a fusion artefact, not work the network defines. Only compiles (abstract inputs, batch 1): nothing
  runs, so it is cheap even for DenseNet-121 at 224². Convolutions compile as XLA's own
  (`layers.conv_implementation("native")`): the count is the network's work, not the patch product's
  multiplications by zero padding.

  Args:
    model: a model with analytic block costs.

  Returns:
    A JSON-ready dict: the `convention`, per block the analytic and XLA counts, their parts and
    relative difference, and the same for the `end_to_end` network.
  """
  with layers.conv_implementation("native"):
    return _flops_check(model)


def _flops_check(model: MultiExitModel) -> dict:

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
    blocks.append(
      dict(
        analytic=cost.total,
        xla=counted,
        relative_difference=cost.total / counted - 1,
        analytic_parts=dict(subnet=cost.subnet, exit_head=cost.exit_head, commit_head=cost.commit_head),
        xla_parts=dict(subnet=subnet, heads=head),
      )
    )
    x = h

  def end_to_end(variables, a):
    for block, v in zip(model.blocks[:-1], variables[:-1]):
      a = block.apply(v, a, method=Block.features)
    return model.blocks[-1].apply(variables[-1], a, method=Block.features_and_logits)[1]

  counted = xla_flops(end_to_end, variables, jax.ShapeDtypeStruct((1, *model.input_shape), jnp.float32))
  analytic = model.end_to_end_cost()
  return dict(
    convention="forward FLOPs per sample; conv taps on zero padding are not counted (as XLA); "
    "XLA's count of a block = its subnet + its two heads, compiled apart",
    blocks=blocks,
    end_to_end=dict(analytic=analytic, xla=counted, relative_difference=analytic / counted - 1),
  )

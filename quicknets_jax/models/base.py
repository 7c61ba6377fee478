"""Multi-exit models as a list of blocks: the shapes every architecture in `models/` shares.

A block is one Linen module with three parts, each its own param subtree:
`subnet` (the slice of the backbone, θ_j), `exit_head` (the classifier exit, γ_j) and `commit_head`
(the commitment head, δ_j). A model is a tuple of blocks plus the input shape; its variables are a
list with one Linen variable dict per block (`{"params": ..., "batch_stats": ...}`), so a block is
frozen simply by not handing its tree to the optimizer.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Sequence
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from quicknets_jax.core import costs
from quicknets_jax.core.costs import BlockCost

PyTree = Any

SUBNET, EXIT, COMMIT = "subnet", "exit_head", "commit_head"


def flat_draw(sampler, key, shape, dtype=jnp.float32, scale=None):
  """`sampler(key, shape, dtype) * scale` (a `jax.random` sampler with its other arguments bound), bit
  for bit, at a fraction of the compile time.

  JAX's default (partitionable) threefry draws element i from (key, i) alone, so a draw for a shape is
  the flat draw reshaped, and a flat draw is the prefix of any longer one. XLA on CPU compiles the
  random-bit program 5–10× slower for a 2-D or 4-D shape than for a 1-D one (2 cores: 3.6 s vs 0.4 s
  for a 3×3×16×4 kernel), and eager initialisation compiles it once per kernel size: ~40 s of the
  VGG-11 smoke. Here every draw is 1-D at a power-of-two length (≥ 4096), so one program serves many
  kernel sizes. (Were threefry made non-partitionable, the values would change but not their law.)

  Args:
    sampler: a function (key, shape, dtype) -> array, e.g. a `jax.random` sampler with its other
      arguments bound.
    key: the random key.
    shape: the shape wanted.
    dtype: the dtype wanted.
    scale: a factor applied to the draw (None: 1).

  Returns:
    The array of `shape`, equal to `sampler(key, shape, dtype) * scale`.
  """
  shape = tuple(shape)
  n = math.prod(shape)
  length = max(_MIN_DRAW, 1 << max(n - 1, 0).bit_length())
  scale = jnp.ones((), dtype) if scale is None else scale
  return _take(sampler(key, (length,), dtype), scale, n, shape)


_MIN_DRAW = 4096


@functools.partial(jax.jit, static_argnames=("n", "shape"))
def _take(flat, scale, n, shape):
  return (flat[:n] * scale).reshape(shape)


def lecun_normal(key, shape, dtype=jnp.float32):
  """Flax's default kernel initializer (`nn.initializers.lecun_normal()`), bit for bit, drawn through
  `flat_draw` (that compile is most of what initialising a model costs on CPU).

  Args:
    key: the random key.
    shape: the kernel's shape (inputs on axis −2, outputs last).
    dtype: the kernel's dtype.

  Returns:
    The kernel.
  """
  shape = tuple(shape)
  fan_in = math.prod(shape[:-1])  # in_axis=-2 times the receptive field, as flax's _compute_fans
  variance = jnp.array(1.0 / fan_in, dtype=dtype)
  stddev = jnp.sqrt(variance) / jnp.array(0.87962566103423978, dtype)
  return flat_draw(lambda k, s, d: jax.random.truncated_normal(k, -2, 2, s, d), key, shape, dtype, stddev)


class CommitmentHead(nn.Module):
  """δ_j: Dense(C) → ReLU → Dense(1) on the block's features; returns one logit per sample.

  Attributes:
    hidden: the hidden layer's width (the number of classes C).
  """

  hidden: int

  @nn.compact
  def __call__(self, features):
    h = features.reshape((features.shape[0], -1))
    h = nn.relu(nn.Dense(self.hidden, kernel_init=lecun_normal, name="hidden")(h))
    return nn.Dense(1, kernel_init=lecun_normal, name="out")(h)[:, 0]


class LogitsCommitmentHead(nn.Module):
  """The authors' commitment head: Dense(C → C) on ReLU(the exit's logits); its first output is the
  logit (C·C + C parameters: the 3 × 110 in Table 1's 0.141 M).

  Attributes:
    num_classes: C, the exit's number of classes.
  """

  num_classes: int

  @nn.compact
  def __call__(self, logits):
    return nn.Dense(self.num_classes, kernel_init=lecun_normal, name="out")(nn.relu(logits))[:, 0]


# What a commitment head reads: the block's features (the paper's head, docs/method.md) or its exit's logits (the authors').
COMMIT_HEADS = ("features", "logits")


def commitment_head(kind: str, num_classes: int) -> nn.Module:
  """The commitment head of `kind` (`COMMIT_HEADS`) for `num_classes` classes.

  Args:
    kind: "features" (`CommitmentHead` on the block's features) or "logits" (`LogitsCommitmentHead`).
    num_classes: the number of classes C.

  Returns:
    The head, a Linen module.

  Raises:
    ValueError: `kind` is not one of `COMMIT_HEADS`.
  """
  if kind not in COMMIT_HEADS:
    raise ValueError(f"commit_head must be one of {', '.join(COMMIT_HEADS)}, got {kind!r}")
  return CommitmentHead(num_classes) if kind == "features" else LogitsCommitmentHead(num_classes)


def commitment_head_flops(kind: str, feature_elements: int, num_classes: int) -> float:
  """Forward FLOPs per sample of a `kind` commitment head on `feature_elements` numbers of features (the
  exit's logits, which a "logits" head reads, are computed anyway).

  Args:
    kind: "features" or "logits".
    feature_elements: the number of feature values per sample a "features" head reads.
    num_classes: the number of classes C.

  Returns:
    The head's forward FLOPs per sample.
  """
  if kind == "logits":
    return num_classes + costs.dense_flops(num_classes, num_classes)  # ReLU, Dense(C → C)
  return costs.dense_flops(feature_elements, num_classes, activation=True) + costs.dense_flops(num_classes, 1)


def takes_train(module: nn.Module) -> bool:
  """Whether a Linen module's `__call__` accepts a `train` keyword (or any keyword).

  Args:
    module: a Linen module.

  Returns:
    True when it can be called with `train=`.
  """
  parameters = inspect.signature(type(module).__call__).parameters.values()
  return any(p.name == "train" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def call_part(module: nn.Module, x, train: bool):
  """`module(x, train=train)`, or `module(x)` for a module whose `__call__` takes no `train`.

  Args:
    module: a block's part (a Linen module).
    x: its input.
    train: training mode, passed where the module takes it.

  Returns:
    The module's output.
  """
  return module(x, train=train) if takes_train(module) else module(x)


# What convolutions a block runs (`Block.convolutions`), from none to ones only XLA can run.
CONVOLUTIONS = ("none", "patchable", "native")


def most_convolutions(blocks) -> str:
  """The `Block.convolutions` of blocks run together: the most demanding of theirs.

  Args:
    blocks: the blocks (an empty sequence runs none).

  Returns:
    One of `CONVOLUTIONS`.
  """
  return max((block.convolutions for block in blocks), key=CONVOLUTIONS.index, default="none")


class Block(nn.Module):
  """One QuickNet block: subnet → (exit logits, commitment logit).

  The commitment head reads the block's features, or (a `LogitsCommitmentHead`) the exit's logits. The
  subnet and the exit are called with `train=` where their `__call__` takes it (`call_part`). Called on
  an input batch (and `train`), a block returns (features, exit logits, commitment logits).

  Attributes:
    subnet: θ_j, the slice of the backbone.
    exit_head: γ_j, the exit classifier on the subnet's features.
    commit_head: δ_j, the commitment head.
    convolutions: what convolutions the subnet and the exit run, as the model declares it (one of
      `CONVOLUTIONS`): "none"; "patchable", every one of them can run as a patch product
      (`models.layers`); "native", some stay XLA's own (dilated or grouped convolutions). The trainer
      chooses its drivers by it (`training.trainer.choose_drivers`): XLA:CPU runs its own convolutions
      inside a loop far slower than at the top level of a program.
  """

  subnet: nn.Module
  exit_head: nn.Module
  commit_head: nn.Module
  convolutions: str = "none"

  def __call__(self, x, train: bool = False):
    features = call_part(self.subnet, x, train)
    logits = call_part(self.exit_head, features, train)
    return features, logits, self.commit_head(logits if self._reads_logits else features)

  @property
  def _reads_logits(self) -> bool:
    return isinstance(self.commit_head, LogitsCommitmentHead)

  def features(self, x, train: bool = False):
    """The subnet's features of `x`.

    Args:
      x: the block's input batch.
      train: training mode (batch norm, dropout).

    Returns:
      The features.
    """
    return call_part(self.subnet, x, train)

  def classify(self, features, train: bool = False):
    """The exit's logits on `features`.

    Args:
      features: the subnet's features.
      train: training mode.

    Returns:
      [B, C] logits.
    """
    return call_part(self.exit_head, features, train)

  def commit(self, features):
    """The commitment logit on `features` (through the exit's logits for a logits head).

    Args:
      features: the subnet's features.

    Returns:
      [B] commitment logits.
    """
    return self.commit_head(self.commit_inputs(features))

  def commit_inputs(self, features, train: bool = False):
    """What the commitment head reads: the features, or the exit's logits on them (inference mode).

    Args:
      features: the subnet's features.
      train: ignored: the exit runs in inference mode here (it is trained through its own loss).

    Returns:
      The head's inputs.
    """
    del train  # the exit runs in inference mode here: it is trained through its own loss
    return call_part(self.exit_head, features, False) if self._reads_logits else features

  def commit_from_inputs(self, inputs, train: bool = False):
    """The commitment logit from the head's own inputs (`commit_inputs`): only the head's params needed.

    Args:
      inputs: what `commit_inputs` returned.
      train: ignored: the heads have no batch statistics or dropout.

    Returns:
      [B] commitment logits.
    """
    del train  # the heads have no batch statistics or dropout
    return self.commit_head(inputs)

  def features_and_logits(self, x, train: bool = False):
    """The subnet's features of `x` and the exit's logits on them, in one pass.

    Args:
      x: the block's input batch.
      train: training mode.

    Returns:
      (features, [B, C] logits).
    """
    features = call_part(self.subnet, x, train)
    return features, call_part(self.exit_head, features, train)


def spec_items(spec, named: dict) -> list:
  """The items of an architecture spec: a `named` configuration's entries, a comma list's stripped
  items ("64,M,128"), or a sequence's elements — for the caller to check and convert.

  Args:
    spec: a name of `named`, a comma-separated string, or a sequence.
    named: named configurations.

  Returns:
    The items, as a list.
  """
  if isinstance(spec, str):
    if spec in named:
      return list(named[spec])
    return [item.strip() for item in spec.split(",") if item.strip()]
  return list(spec)


def split_variables(variables: dict) -> tuple[dict, dict]:
  """Splits a Linen variable dict into (params, model_state) — state is e.g. batch-norm statistics.

  Args:
    variables: a Linen variable dict.

  Returns:
    (params, model_state).
  """
  params = variables.get("params", {})
  state = {k: v for k, v in variables.items() if k != "params"}
  return params, state


def merge_variables(params: dict, state: dict) -> dict:
  """The Linen variable dict of (params, model_state): the inverse of `split_variables`.

  Args:
    params: the params tree.
    state: the other collections (e.g. batch_stats).

  Returns:
    The variable dict.
  """
  return {"params": params, **state}


def split_blocks(variables: Sequence[dict]) -> tuple[list, list]:
  """Per-block (params, model_state) lists of a model's variables: what the trainer optimises.

  Args:
    variables: one Linen variable dict per block.

  Returns:
    (params per block, model state per block).
  """
  pairs = [split_variables(v) for v in variables]
  return [p for p, _ in pairs], [s for _, s in pairs]


def merge_blocks(params: Sequence[dict], states: Sequence[dict]) -> list:
  """A model's variables from per-block params and model states: the inverse of `split_blocks`.

  Args:
    params: params per block.
    states: model state per block.

  Returns:
    One Linen variable dict per block.
  """
  return [merge_variables(p, s) for p, s in zip(params, states)]


def parts_mask(params: dict, parts: Sequence[str]) -> dict:
  """A bool tree shaped like one block's `params`: True on the leaves of the named parts
  (`SUBNET`, `EXIT`, `COMMIT`) — the trainable mask that freezes the rest.

  Args:
    params: one block's params.
    parts: the names of the parts that train.

  Returns:
    The mask.
  """
  return {name: jax.tree.map(lambda _: name in parts, sub) for name, sub in params.items()}


def _init_block(block: Block, key, dummy):
  # Eager on purpose: under jit, XLA takes longer to compile the truncated-normal initializers than
  # eager mode takes to compile and run them op by op (measured on 2 CPU cores). `lazy_init` runs only
  # the initializers, not the forward pass on the dummy input, whose eager ops would each compile too.
  # The values are those of `block.init`.
  shape = jax.ShapeDtypeStruct(dummy.shape, dummy.dtype)
  return jax.tree.map(jnp.asarray, block.lazy_init(key, shape, train=False))


@dataclasses.dataclass(frozen=True)
class MultiExitModel:
  """A backbone cut into blocks, each with an exit and a commitment head.

  Attributes:
    name: model name, e.g. "mlp".
    blocks: one `Block` per exit, in order.
    input_shape: shape of one input sample (without the batch axis).
    num_classes: classes of every exit.
    block_costs: analytic forward FLOPs per sample of each block's parts (`core.costs`).
    block_macs: the same in multiply-adds of weights only — the paper's convention (its Table 1
      counts 138,100 for the 784-150-100-50-10 MLP) — where the model provides it (the MLP), else None.
  """

  name: str
  blocks: tuple[Block, ...]
  input_shape: tuple[int, ...]
  num_classes: int
  block_costs: tuple[BlockCost, ...]
  block_macs: Optional[tuple[BlockCost, ...]] = None

  @property
  def num_blocks(self) -> int:
    """The number of blocks (and exits)."""
    return len(self.blocks)

  @property
  def convolutions(self) -> str:
    """What convolutions the model's blocks run together (`most_convolutions`)."""
    return most_convolutions(self.blocks)

  def init(self, key: jax.Array) -> list[dict]:
    """Initialises every block; block j's input shape is block j−1's feature shape.

    Args:
      key: the random key; block j draws from `fold_in(key, j)`.

    Returns:
      One Linen variable dict per block.
    """
    variables = []
    x = jax.ShapeDtypeStruct((1, *self.input_shape), jnp.float32)
    for j, block in enumerate(self.blocks):
      block_key = jax.random.fold_in(key, j)
      dummy = jnp.zeros(x.shape, x.dtype)
      block_vars = _init_block(block, block_key, dummy)
      variables.append(block_vars)
      x = jax.eval_shape(lambda v, a, b=block: b.apply(v, a, method=Block.features), block_vars, dummy)
    return variables

  def feature_shapes(self) -> list[tuple[int, ...]]:
    """The shape of one sample's features out of each block (shapes only: nothing runs).

    Returns:
      One shape per block, without the batch axis.
    """
    return list(self._feature_shapes)

  @functools.cached_property
  def _feature_shapes(self) -> tuple[tuple[int, ...], ...]:  # the model is immutable: traced once
    variables = jax.eval_shape(self.init, jax.random.PRNGKey(0))
    x = jax.ShapeDtypeStruct((1, *self.input_shape), jnp.float32)
    shapes = []
    for block, v in zip(self.blocks, variables):
      x = jax.eval_shape(lambda v, a, b=block: b.apply(v, a, method=Block.features), v, x)
      shapes.append(tuple(x.shape[1:]))
    return tuple(shapes)

  def cascade_costs(self) -> np.ndarray:
    """[E] forward FLOPs per sample to reach and decide at exit e (subnets, exits, commit heads 0..e).

    Returns:
      [E] float64 cumulative costs.
    """
    return costs.cascade_costs(self.block_costs)

  def end_to_end_cost(self) -> float:
    """Forward FLOPs per sample of the plain network: every subnet and the final exit only.

    Returns:
      The cost.
    """
    return costs.end_to_end_cost(self.block_costs)

  def cascade_macs(self) -> Optional[np.ndarray]:
    """`cascade_costs` in weight multiply-adds (the paper's convention), where the model counts them.

    Returns:
      [E] cumulative multiply-adds, or None.
    """
    return None if self.block_macs is None else costs.cascade_costs(self.block_macs)

  def end_to_end_macs(self) -> Optional[float]:
    """`end_to_end_cost` in weight multiply-adds (the paper's convention), where the model counts them.

    Returns:
      The multiply-adds, or None.
    """
    return None if self.block_macs is None else costs.end_to_end_cost(self.block_macs)


def cast_floating(tree, dtype):
  """`tree` with every floating-point leaf cast to `dtype` (integer and bool leaves as they are).

  Args:
    tree: a tree of arrays.
    dtype: the floating dtype wanted.

  Returns:
    The cast tree.
  """
  return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def run_block(block: Block, params: dict, state: dict, x, train: bool, method=None, compute_dtype=None):
  """Applies a block (or one of its methods) and returns (output, new model state).

  Batch-norm statistics update only when `train` is True and the block has any; frozen blocks are
  always run with train=False so their statistics stay frozen.

  `compute_dtype` (e.g. "bfloat16"; None: float32) is mixed precision: the params and the input are
  cast to it, so every dense layer and convolution runs in it, and the outputs come back as float32
  for the losses and softmax. The cast is inside the differentiated function, so gradients (and the
  optimizer) stay float32. Batch-norm statistics stay float32: flax reduces them in float32 and only
  the normalised activations take the input's dtype.

  Args:
    block: the block.
    params: its params.
    state: its model state (e.g. batch_stats; empty for none).
    x: the input batch.
    train: training mode.
    method: the block's method to apply (default: `Block.__call__`).
    compute_dtype: the dtype the block computes in, or None for float32.

  Returns:
    (output, new model state).
  """
  method = method or Block.__call__
  if compute_dtype is not None:
    params, x = cast_floating(params, compute_dtype), jnp.asarray(x).astype(compute_dtype)
  variables = merge_variables(params, state)
  if train and state:
    out, new_state = block.apply(variables, x, train=True, method=method, mutable=list(state.keys()))
    new_state = dict(new_state)
  else:
    out, new_state = block.apply(variables, x, train=train, method=method), state
  if compute_dtype is not None:
    out = cast_floating(out, jnp.float32)
  return out, new_state

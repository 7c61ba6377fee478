"""Forward passes of trained or frozen blocks over whole arrays, in fixed-size jitted chunks.

Every algorithm reads its networks through these: the features entering block j (a QuickNet's frozen
prefix, or its feature cache), a block's outputs (features, exit probabilities, commitment logits),
the commitment logits alone, and every exit at once (`all_exit_outputs`, what evaluation sweeps).
Chunks have one shape (the last is padded), so results do not depend on how many rows there are; the
jitted functions take the model (or block) as a static argument, so each compiles once per model and
depth.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from quicknets_jax.data.streaming import is_streamed, take
from quicknets_jax.models.base import Block, MultiExitModel


def batched(fn, arrays: Sequence, batch_size: int):
  """Applies a jitted `fn` to fixed-size chunks of `arrays` (the last one padded) and concatenates the
  outputs.

  Args:
    fn: a function of one chunk of each array, returning a pytree of arrays with the chunk's rows first.
    arrays: arrays with the same number of rows, or one streamed view (read chunk by chunk).
    batch_size: rows per chunk.

  Returns:
    `fn`'s outputs over all rows as numpy arrays (the padding dropped); None for zero rows.

  Raises:
    ValueError: a streamed view is given together with other arrays.
  """
  # Slicing, padding and concatenating happen in numpy on the host: eager jnp ops on arrays of a new
  # length would each compile a small XLA program, and those add up to seconds per block.
  if any(is_streamed(a) for a in arrays):  # images left on disk: read chunk by chunk (data.streaming)
    if len(arrays) != 1:
      raise ValueError("batched over a streamed view takes that view alone")
    chunks = ([c] for c in arrays[0].batches(batch_size))
  else:
    arrays = [np.asarray(a) for a in arrays]
    chunks = ([a[s : s + batch_size] for a in arrays] for s in range(0, arrays[0].shape[0], batch_size))
  outs = []
  for chunk in chunks:
    size = chunk[0].shape[0]
    if size < batch_size:
      chunk = [np.concatenate([c, np.zeros((batch_size - size, *c.shape[1:]), c.dtype)]) for c in chunk]
    out = fn(*chunk)
    outs.append(jax.tree.map(lambda o, s=size: np.asarray(o)[:s], out))
  if not outs:
    return None
  return jax.tree.map(lambda *o: np.concatenate(o), *outs)


@functools.partial(jax.jit, static_argnames=("model", "upto"))
def prefix_apply(variables, x, *, model: MultiExitModel, upto: int):
  """The features entering block `upto` (frozen blocks 0..upto−1 in inference mode) for inputs `x`.

  Args:
    variables: the variables of blocks 0..upto−1.
    x: [B, ...] inputs.
    model: the multi-exit model (static).
    upto: the block whose input is wanted (static).

  Returns:
    [B, ...] the features entering block `upto`.
  """
  for k in range(upto):
    x = model.blocks[k].apply(variables[k], x, method=Block.features)
  return x


def feature_elements(model: MultiExitModel, upto: int) -> int:
  """How many numbers one sample's features entering block `upto` hold (shapes only, nothing runs).

  Args:
    model: the multi-exit model.
    upto: the block.

  Returns:
    The number of elements per sample.
  """
  shapes = model.feature_shapes()
  return int(np.prod(model.input_shape if upto == 0 else shapes[upto - 1]))


def prefix_features(model: MultiExitModel, variables: Sequence[dict], images, rows, upto: int, batch_size: int):
  """Features entering block `upto` for `images[rows]`, computed in fixed-size chunks.

  Args:
    model: the multi-exit model.
    variables: the frozen blocks' variables (at least `upto` of them).
    images: [N, ...] inputs, in memory or streamed.
    rows: the rows of `images` wanted.
    upto: the block whose input is wanted.
    batch_size: rows per chunk.

  Returns:
    [len(rows), ...] features as numpy; for `upto == 0` the images themselves (a streamed view of those
    rows when `images` is streamed).
  """
  gathered = take(images, rows)  # a streamed view stays one: nothing is read here
  if upto == 0:
    return gathered
  if gathered.shape[0] == 0:
    return np.zeros((0, *model.feature_shapes()[upto - 1]), np.float32)
  prefix = list(variables[:upto])
  return batched(lambda x: prefix_apply(prefix, x, model=model, upto=upto), [gathered], batch_size)


@functools.partial(jax.jit, static_argnums=0)
def _apply_block(block: Block, variables, x):
  features, logits, commit = block.apply(variables, x)
  return features, jax.nn.softmax(logits), commit


@functools.partial(jax.jit, static_argnums=0)
def _apply_commit(block: Block, variables, features):
  return block.apply(variables, features, method=Block.commit)


@functools.partial(jax.jit, static_argnums=0)
def _apply_commit_inputs(block: Block, variables, features):
  return block.apply(variables, features, method=Block.commit_inputs)


def commit_inputs(block: Block, variables: dict, features, batch_size: int):
  """What the block's commitment head reads for `features`.

  Args:
    block: the block.
    variables: its variables.
    features: [N, ...] the block's output features.
    batch_size: rows per chunk.

  Returns:
    The features themselves (as they are) or, for a head on the exit's logits, those logits (numpy).
  """
  if not block._reads_logits:
    return features
  return batched(lambda h: _apply_commit_inputs(block, variables, h), [features], batch_size)


def block_outputs(block: Block, variables: dict, features, batch_size: int):
  """One block's outputs on its input features.

  Args:
    block: the block.
    variables: its variables.
    features: [N, ...] the features entering it.
    batch_size: rows per chunk.

  Returns:
    (output features, exit probabilities [N, C], commitment logits [N]) as numpy arrays.
  """
  return batched(lambda x: _apply_block(block, variables, x), [features], batch_size)


def commit_logits(block: Block, variables: dict, features, batch_size: int):
  """The commitment logits of one block on its output features.

  Args:
    block: the block.
    variables: its variables.
    features: [N, ...] the block's output features.
    batch_size: rows per chunk.

  Returns:
    [N] commitment logits (numpy).
  """
  return batched(lambda h: _apply_commit(block, variables, h), [features], batch_size)


@functools.partial(jax.jit, static_argnums=0)
def _all_exits(model: MultiExitModel, variables, x):
  probs, commits = [], []
  for k, v in enumerate(variables):
    x, logits, commit = model.blocks[k].apply(v, x)
    probs.append(jax.nn.softmax(logits))
    commits.append(commit)
  return jnp.stack(probs, axis=1), jnp.stack(commits, axis=1)  # batch first, for `batched`


def all_exit_outputs(model: MultiExitModel, variables: Sequence[dict], images, batch_size: int = 2048):
  """Every trained exit on `images`.

  Args:
    model: the multi-exit model.
    variables: the trained blocks' variables (E of them).
    images: [N, ...] inputs, in memory or streamed.
    batch_size: rows per chunk.

  Returns:
    (probabilities [E, N, C], commitment logits [E, N]) as jax arrays.
  """
  variables = list(variables)
  images = images if is_streamed(images) else jnp.asarray(images)
  probs, commits = batched(lambda x: _all_exits(model, variables, x), [images], batch_size)
  return jnp.moveaxis(probs, 0, 1), jnp.moveaxis(commits, 0, 1)

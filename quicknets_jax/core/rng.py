"""The named PRNG streams: every random choice of a run, derived from its seed in one place.

A run's key is `jax.random.PRNGKey(seed)`; each use of randomness folds in the number of its stream
(and, where a choice repeats, the block, head or epoch it belongs to), so that two uses never share
bits and a resumed run draws exactly what an uninterrupted one would. The numbers are part of the
results: changing one changes every run that uses it.
"""

from __future__ import annotations

import enum

import jax


class Stream(enum.IntEnum):
  """What each stream of a run's key is for (the value is what `fold_in` folds in).

  Attributes:
    INIT: the model's initial variables (every method of a seed starts from them).
    BLOCKS: QuickNet blocks (then the block index); the one fit of end-to-end, SDN or fine-tuning.
    FINETUNE: QuickNet+ joint fine-tuning after the blocks.
    HEADS_AFTER_JOINT: the commitment heads added to a jointly trained network (on the seed's key).
    COMMIT_HOLDOUT: QuickNet+: the slice of a working set held out for the commitment head.
    KEEP_LEARNED_TRAIN: QuickNet+ soft removal: learned training samples kept for later blocks.
    KEEP_LEARNED_VAL: the same for validation samples.
    RECOMMIT: commitment heads retrained after fine-tuning (then + the block index): it takes every
      number from 10 up, so it stays the last stream.
  """

  INIT = 0  # the model's initial variables (every method of a seed starts from them)
  BLOCKS = 1  # QuickNet blocks (then the block index); the one fit of end-to-end, SDN or fine-tuning
  FINETUNE = 2  # QuickNet+ joint fine-tuning after the blocks
  HEADS_AFTER_JOINT = 3  # the commitment heads added to a jointly trained network (on the seed's key)
  COMMIT_HOLDOUT = 7  # QuickNet+: the slice of a working set held out for the commitment head
  KEEP_LEARNED_TRAIN = 8  # QuickNet+ soft removal: learned training samples kept for later blocks
  KEEP_LEARNED_VAL = 9  # the same for validation samples
  RECOMMIT = 10  # commitment heads retrained after fine-tuning (then + the block index)


def seed_key(seed: int) -> jax.Array:
  """The key every random choice of a run with this seed derives from.

  Args:
    seed: the run's seed, a non-negative integer.

  Returns:
    `jax.random.PRNGKey(seed)`.
  """
  return jax.random.PRNGKey(seed)


def stream(key: jax.Array, name: Stream, index: int = 0) -> jax.Array:
  """The key of stream `name` (+ `index`, for streams numbered from a base such as RECOMMIT) of `key`.

  Args:
    key: a run's key (`seed_key`) or a key derived from it.
    name: the stream.
    index: added to the stream's number, for streams numbered from a base.

  Returns:
    `key` with the stream's number folded in.
  """
  return jax.random.fold_in(key, int(name) + index)


def per_item(key: jax.Array, index: int) -> jax.Array:
  """The key of item `index` (a block, an exit, an epoch) of a stream's key.

  Args:
    key: a stream's key.
    index: the item's number.

  Returns:
    `key` with `index` folded in.
  """
  return jax.random.fold_in(key, index)

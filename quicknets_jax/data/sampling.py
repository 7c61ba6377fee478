"""Per-epoch sample orders for a working set T_j, optionally class-rebalanced (paper §3.2; docs/method.md).

The epoch draws are pure JAX and jittable with `num_classes` and `balanced` static, so a whole
epoch's order can be drawn inside the jitted training loop. Positions index the working set (0..n-1);
the caller maps them through its own index array into the full training arrays. `seeded_subset` and
`seeded_mask` are the host-side seeded selections of QuickNet+ (a commitment holdout, soft removal).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def class_counts(labels: jax.Array, num_classes: int) -> jax.Array:
  """Number of samples of each class in `labels`: int32 [num_classes].

  Args:
    labels: class indices, any shape.
    num_classes: the number of classes (labels outside [0, num_classes) are not counted).

  Returns:
    int32 [num_classes] counts.
  """
  return jnp.bincount(jnp.asarray(labels, jnp.int32).reshape(-1), length=num_classes).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("num_classes", "balanced"))
def draw_epoch(key: jax.Array, labels: jax.Array, num_classes: int, balanced: bool) -> jax.Array:
  """One epoch's order of positions into a working set whose labels are `labels` ([n]).

  Args:
    key: the epoch's random key.
    labels: [n] the working set's labels.
    num_classes: the number of classes (static).
    balanced: False: a random permutation of 0..n-1 (each sample once). True: n draws with
      replacement, each sample weighted 1 / count(its class), so every class present in `labels` is
      drawn equally often in expectation, whatever the imbalance (static).

  Returns:
    int32 [n] positions.
  """
  labels = jnp.asarray(labels, jnp.int32).reshape(-1)
  n = labels.shape[0]
  if n == 0:
    return jnp.zeros((0,), jnp.int32)
  if not balanced:
    return jax.random.permutation(key, n).astype(jnp.int32)
  counts = class_counts(labels, num_classes)
  # Every label in `labels` has count >= 1, so the division is safe; the maximum guards stray
  # out-of-range labels, which bincount drops.
  weights = 1.0 / jnp.maximum(counts[jnp.clip(labels, 0, num_classes - 1)], 1).astype(jnp.float32)
  # choice with p is an inverse-CDF search, O(n log n) memory-light; categorical with shape (n,)
  # would materialise an n x n Gumbel matrix.
  return jax.random.choice(key, n, shape=(n,), replace=True, p=weights / weights.sum()).astype(jnp.int32)


def draw_epoch_padded(
  key: jax.Array, labels: jax.Array, num_valid: jax.Array, num_classes: int, balanced: bool
) -> jax.Array:
  """`draw_epoch` over a working set padded to a fixed length: only the first `num_valid` rows exist.

  The length of `labels` is a bucket (so one compiled epoch serves every working-set size up to
  it) and `num_valid` is traced.

  Args:
    key: the epoch's random key.
    labels: [size] labels of the padded working set.
    num_valid: how many of its rows exist (traced).
    num_classes: the number of classes.
    balanced: class-rebalanced draws with replacement (True) or a permutation (False).

  Returns:
    int32 [len(labels)] positions whose first `num_valid` entries are the epoch's order (all
    < num_valid); the rest are padding.
  """
  labels = jnp.asarray(labels, jnp.int32).reshape(-1)
  size = labels.shape[0]
  valid = jnp.arange(size) < num_valid
  if not balanced:
    return jnp.argsort(shuffle_keys_padded(key, size, num_valid)).astype(jnp.int32)
  clipped = jnp.clip(labels, 0, num_classes - 1)
  counts = jnp.zeros((num_classes,), jnp.float32).at[clipped].add(valid.astype(jnp.float32))
  weights = jnp.where(valid, 1.0 / jnp.maximum(counts[clipped], 1.0), 0.0)
  return jax.random.choice(key, size, shape=(size,), replace=True, p=weights / weights.sum()).astype(jnp.int32)


def shuffle_keys_padded(key: jax.Array, size: int, num_valid: jax.Array) -> jax.Array:
  """The sort keys of `draw_epoch_padded`'s shuffle: a uniform random key for each of the first `num_valid`
  rows, 2 (behind every one of them) for the padding.

  A stable argsort of the keys is the shuffle: the valid rows in a uniform random order, then the
  padding in its own order.

  Args:
    key: the epoch's random key.
    size: the padded length.
    num_valid: how many rows exist (traced).

  Returns:
    float32 [size] keys.
  """
  return jnp.where(jnp.arange(size) < num_valid, jax.random.uniform(key, (size,)), 2.0)


def stable_order(keys: np.ndarray) -> np.ndarray:
  """The positions that sort non-negative float32 `keys`, equal keys in position order: the order of a
  stable argsort (`jnp.argsort`'s, numpy's "stable"), ~6× faster than numpy's on 65,536 keys.

  A non-negative float's bits, read as an integer, order as its value does; with the position in the
  low bits every key is distinct, so one plain integer sort gives the stable order.

  Args:
    keys: float32 [n] keys, each ≥ 0 (no NaN).

  Returns:
    int32 [n] positions.

  Raises:
    ValueError: a key is negative or NaN, or `keys` is not a float32 vector of at most 2**32 entries.
  """
  keys = np.asarray(keys)
  if keys.dtype != np.float32 or keys.ndim != 1 or len(keys) > 2**32:
    raise ValueError(f"stable_order takes a float32 vector of at most 2**32 keys, got {keys.dtype} {keys.shape}")
  if len(keys) and not keys.min() >= 0:  # also refuses NaN
    raise ValueError("stable_order takes keys ≥ 0 (a float's bits order as its value only for those)")
  bits = max(1, (len(keys) - 1).bit_length())
  distinct = (keys.view(np.int32).astype(np.int64) << bits) | np.arange(len(keys), dtype=np.int64)
  return (np.sort(distinct) & ((1 << bits) - 1)).astype(np.int32)


def seeded_subset(n: int, fraction: float, key: jax.Array) -> np.ndarray:
  """Sorted positions of a seeded random `fraction` of range(n) (none when the fraction is 0); at
  least one position is always left out, so a working set never loses its last sample to it.

  Args:
    n: the number of positions.
    fraction: the share to choose, in [0, 1].
    key: the random key that fixes the choice.

  Returns:
    int32 sorted positions.
  """
  count = int(round(fraction * n))
  if count == 0 or n < 2:
    return np.zeros(0, np.int32)
  count = min(count, n - 1)
  return np.sort(np.asarray(jax.random.permutation(key, n))[:count]).astype(np.int32)


def seeded_mask(mask: np.ndarray, fraction: float, key: jax.Array) -> np.ndarray:
  """A seeded random `fraction` of the True entries of `mask`, as a mask of the same shape.

  Args:
    mask: a boolean mask.
    fraction: the share of its True entries to choose.
    key: the random key that fixes the choice.

  Returns:
    A boolean mask with the chosen entries True.
  """
  chosen = np.zeros_like(mask)
  where = np.flatnonzero(mask)
  chosen[where[seeded_subset(len(where), fraction, key)]] = True
  return chosen

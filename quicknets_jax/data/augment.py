"""Training-time image augmentation as pure functions of (images, key), run on device inside a loss.

The trainer stays generic: a loss that wants augmentation draws it from the per-step key it
receives (train.py folds it from seed, block, epoch and step), so a resumed fit sees the same
augmented batches. Models ask for an augmentation by name (`AUGMENTATIONS`), which keeps the
module fields that carry it hashable and printable.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def random_crop_flip(images, key: jax.Array, pad: int = 4, flip: bool = True):
  """Standard CIFAR augmentation on NHWC images: a random H×W crop of the image padded by `pad`
  pixels on each side, then a horizontal flip with probability 1/2; one draw per image.

  Images are already standardised, so the zero padding is the training set's mean colour (torchvision
  pads raw pixels with black before normalising; the difference is only the padding's value).
  """
  n, h, w, c = images.shape
  crop_key, flip_key = jax.random.split(key)
  offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * pad + 1)
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c))
  out = jax.vmap(crop)(padded, offsets)
  if flip:
    flips = jax.random.bernoulli(flip_key, 0.5, (n,))
    out = jnp.where(flips[:, None, None, None], out[:, :, ::-1, :], out)
  return out


def random_flip(images, key: jax.Array):
  """Horizontal flip with probability 1/2 per image (for inputs where cropping makes no sense)."""
  flips = jax.random.bernoulli(key, 0.5, (images.shape[0],))
  return jnp.where(flips[:, None, None, None], images[:, :, ::-1, :], images)


AUGMENTATIONS = {"crop_flip": random_crop_flip, "flip": random_flip}


def augment(name, images, key: jax.Array):
  """Applies the augmentation called `name` (None: none) to a batch of NHWC images."""
  if name is None:
    return images
  if name not in AUGMENTATIONS:
    raise ValueError(f"unknown augmentation {name!r}: choose one of {sorted(AUGMENTATIONS)} or None")
  return AUGMENTATIONS[name](images, key)

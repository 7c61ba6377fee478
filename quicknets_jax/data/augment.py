"""Training-time image augmentation as pure functions of (images, key), run on device inside a loss.

The trainer stays generic: a loss that wants augmentation draws it from the per-step key it
receives (the trainer folds it from seed, block, epoch and step), so a resumed fit sees the same
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

  Args:
    images: [N, H, W, C] standardised images.
    key: the step's random key.
    pad: pixels of padding on each side before the crop.
    flip: also flip horizontally with probability 1/2.

  Returns:
    [N, H, W, C] augmented images.
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
  """Horizontal flip with probability 1/2 per image (for inputs where cropping makes no sense).

  Args:
    images: [N, H, W, C] images.
    key: the step's random key.

  Returns:
    [N, H, W, C] images, some of them mirrored.
  """
  flips = jax.random.bernoulli(key, 0.5, (images.shape[0],))
  return jnp.where(flips[:, None, None, None], images[:, :, ::-1, :], images)


def random_affine(
  images, key: jax.Array, degrees: float = 7.0, translate: float = 0.05, scale: tuple[float, float] = (0.9, 1.1)
):
  """torchvision's `RandomAffine(degrees, translate=(t, t), scale=scale)` on NHWC images, one draw per
  image: a rotation in ±`degrees`, a whole-pixel shift of up to `translate` of the side (rounded, as
  torchvision does) and a zoom in `scale`, about the image centre; nearest-neighbour sampling, as
  torchvision's default. Pixels that come from outside the image take the image's smallest value: the
  authors' transform fills black before normalising, and black is the darkest value of a normalised
  Fashion-MNIST image.

  Args:
    images: [N, H, W, C] standardised images.
    key: the step's random key.
    degrees: the largest rotation, in degrees either way.
    translate: the largest shift, as a fraction of the image's side.
    scale: the range (low, high) of the zoom factor.

  Returns:
    [N, H, W, C] transformed images.
  """
  n, h, w, _ = images.shape
  k_angle, k_shift, k_scale = jax.random.split(key, 3)
  angle = jnp.deg2rad(jax.random.uniform(k_angle, (n,), minval=-degrees, maxval=degrees))
  limits = jnp.asarray([translate * w, translate * h])
  shift = jnp.round(jax.random.uniform(k_shift, (n, 2), minval=-limits, maxval=limits))
  zoom = jax.random.uniform(k_scale, (n,), minval=scale[0], maxval=scale[1])
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0

  def one(image, a, t, s):
    # the inverse map: where each output pixel comes from
    dx, dy = (xs - cx - t[0]) / s, (ys - cy - t[1]) / s
    src_x = jnp.round(cx + jnp.cos(a) * dx + jnp.sin(a) * dy).astype(jnp.int32)
    src_y = jnp.round(cy - jnp.sin(a) * dx + jnp.cos(a) * dy).astype(jnp.int32)
    inside = (src_x >= 0) & (src_x < w) & (src_y >= 0) & (src_y < h)
    gathered = image[jnp.clip(src_y, 0, h - 1), jnp.clip(src_x, 0, w - 1)]
    return jnp.where(inside[..., None], gathered, jnp.min(image))

  return jax.vmap(one)(images, angle, shift, zoom)


AUGMENTATIONS = {"crop_flip": random_crop_flip, "flip": random_flip, "affine": random_affine}


def augment(name, images, key: jax.Array):
  """Applies the augmentation called `name` (None: none) to a batch of NHWC images.

  Args:
    name: a key of `AUGMENTATIONS`, or None.
    images: [N, H, W, C] images.
    key: the step's random key.

  Returns:
    The augmented images (`images` itself for None).

  Raises:
    ValueError: `name` is not a known augmentation.
  """
  if name is None:
    return images
  if name not in AUGMENTATIONS:
    raise ValueError(f"unknown augmentation {name!r}: choose one of {sorted(AUGMENTATIONS)} or None")
  return AUGMENTATIONS[name](images, key)

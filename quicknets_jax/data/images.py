"""New images for a trained model: an IDX file, a .npy array or a folder of PNG/JPEG files, read as
uint8 pixels [N, H, W, C] and checked against the shape the model was trained on."""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from quicknets_jax.data.errors import DataError
from quicknets_jax.data.idx import read_idx

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
# PIL modes read as 8-bit grayscale (L) or RGB; alpha is dropped
_CONVERT = {"1": "L", "LA": "L", "I": "L", "I;16": "L", "F": "L", "P": "RGB", "RGBA": "RGB", "CMYK": "RGB"}
_FORMATS = "IDX images (e.g. t10k-images-idx3-ubyte[.gz]), a .npy array, or a folder of PNG/JPEG files"


def _with_channels(images: np.ndarray) -> np.ndarray:
  return images[..., None] if images.ndim == 3 else images


def _pixels(array: np.ndarray, where: str) -> np.ndarray:
  """`array` as uint8 pixels, refusing values that are not pixel values 0..255."""
  if array.dtype == np.uint8:
    return array
  if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
    raise DataError(f"{where} holds {array.dtype} values: give pixel values 0..255 (uint8)")
  if array.size and (np.nanmin(array) < 0 or np.nanmax(array) > 255 or np.isnan(array).any()):
    raise DataError(
      f"{where} holds values outside 0..255 ({np.nanmin(array):.3g} to {np.nanmax(array):.3g}): give raw pixel "
      "values 0..255, not normalised ones (the model's normalisation is applied for you)"
    )
  return np.rint(array).astype(np.uint8)


def _read_folder(path: str) -> tuple[np.ndarray, list]:
  from PIL import Image, UnidentifiedImageError  # optional: only folders of image files need it

  names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS))
  if not names:
    raise DataError(f"{path} holds no {'/'.join(e[1:].upper() for e in IMAGE_EXTENSIONS)} files: {_FORMATS}")
  images = []
  for name in names:
    file = os.path.join(path, name)
    try:
      with Image.open(file) as image:
        image.load()
        if image.mode in _CONVERT:
          image = image.convert(_CONVERT[image.mode])
        pixels = np.asarray(image)
    except (OSError, UnidentifiedImageError, ValueError) as e:
      raise DataError(f"cannot read image {file} ({type(e).__name__}: {e}): replace or remove it") from None
    pixels = pixels[..., None] if pixels.ndim == 2 else pixels
    if images and pixels.shape != images[0].shape:
      raise DataError(
        f"{file} is {'x'.join(map(str, pixels.shape))} but {names[0]} is "
        f"{'x'.join(map(str, images[0].shape))}: give images of one size (H x W x channels)"
      )
    images.append(pixels)
  return np.stack(images), names


def read_images(path: str, pixels: bool = True, shape: Optional[tuple] = None) -> tuple[np.ndarray, list]:
  """(images [N, H, W, C], a name per image) from an IDX image file, a .npy array ([N, H, W] or
  [N, H, W, C]) or a folder of PNG/JPEG files (sorted by name; names are the file names, else the row
  numbers). For a model trained on arrays of another rank (tabular rows: `shape` (F,)), a .npy array
  [N, *shape] is taken as it is.

  Args:
    path: the file or folder.
    pixels: read uint8 pixel values 0..255 (what the built-in datasets' models read), refusing other
      values; False: a .npy array's values as they are (float32), for a model trained on arrays.
    shape: the model's input shape per sample, when known (a .npy array of exactly that shape per row
      is read as it is; with `pixels` False and a shape of rank 1, [N, F] rows are required).

  Returns:
    (images, names).

  Raises:
    DataError: one line naming the fix for anything else.
  """
  if not os.path.exists(path):
    raise DataError(f"{path} does not exist: pass {_FORMATS}")
  if os.path.isdir(path):
    return _read_folder(path)
  if path.endswith(".npy"):
    try:
      array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:  # EOFError: an empty or cut-off file
      raise DataError(f"{path} is not a readable .npy array ({e or 'empty'}): save it with numpy.save") from None
    where = path
    if not pixels and shape is not None and len(shape) == 1:  # a model of tabular rows
      if array.ndim != 2 or array.shape[1] != shape[0]:
        raise DataError(
          f"{where} holds an array of shape {array.shape}: the model reads rows of {shape[0]} features, [N, {shape[0]}]"
        )
      if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise DataError(f"{where} holds {array.dtype} values: give a numeric array")
      return np.asarray(array, np.float32), [str(i) for i in range(len(array))]
  else:
    array, where = read_idx(path), path
  if array.ndim not in (3, 4):
    raise DataError(
      f"{where} holds an array of shape {array.shape}: images are [N, H, W] or [N, H, W, C] (an IDX label "
      "file or a single image?)"
    )
  if pixels:
    images = _with_channels(_pixels(array, where))
  elif np.issubdtype(array.dtype, np.number) and not np.issubdtype(array.dtype, np.complexfloating):
    images = _with_channels(np.asarray(array, np.float32))
  else:
    raise DataError(f"{where} holds {array.dtype} values: give a numeric array")
  return images, [str(i) for i in range(len(images))]


def check_image_shape(images: np.ndarray, expected: tuple, where: str) -> None:
  """Refuses images whose (H, W, C) differ from what the model was trained on, naming the fix.

  Args:
    images: [N, H, W, C] images.
    expected: the model's (H, W, C).
    where: what the message calls the images (their path).

  Raises:
    DataError: the size or the channel count differs.
  """
  got, expected = tuple(images.shape[1:]), tuple(expected)
  if got == expected:
    return
  if got[:2] != expected[:2]:
    raise DataError(
      f"{where}: images are {got[0]}x{got[1]} but the model reads {expected[0]}x{expected[1]}: resize them to "
      f"{expected[0]}x{expected[1]}"
    )
  fix = "convert them to grayscale" if expected[2] == 1 else f"give {expected[2]}-channel (RGB) images"
  raise DataError(f"{where}: images have {got[2]} channel(s) but the model reads {expected[2]}: {fix}")

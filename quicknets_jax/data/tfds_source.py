"""Loading MNIST, Fashion-MNIST, CIFAR-10 and ImageNet through `tfds.data_source` (array_record, no TensorFlow).

Reading works without TensorFlow; *preparing* a dataset (download_and_prepare) needs it, so this
module never downloads: an unprepared dataset is a DataError that says how to prepare it or which
other source to use. `tfds.data_source` reads array_record only, hence `--file_format=array_record`
in every `tfds build` the messages name.

ImageNet (`imagenet2012`, `load_tfds_resized`): images come in every size, so each is resized (shorter
side to `image_size`, bilinear with antialiasing, then the centre `image_size`² crop) as it is read,
into one preallocated uint8 array. Everything is held in memory (and later on the device) — the whole
training split at 224² would be 193 GB as uint8 and 4× that as float32 — so only the *first*
`max_train` training records are read (TFDS shuffles records when it prepares a dataset, so they
cover the classes roughly uniformly) and the loader refuses, naming --max_train and --image_size,
a request that cannot fit in this machine's RAM. ImageNet's own test split has no labels, so its
50,000-image `validation` split serves as the test split; the validation split proper is carved
from the end of the training records, as for every dataset.
"""

from __future__ import annotations

import concurrent.futures
import os

import numpy as np

from quicknets_jax.data.errors import DataError


def default_tfds_dir(data_dir=None) -> str:
  """The directory TFDS reads from: `data_dir`, else $TFDS_DATA_DIR, else ~/tensorflow_datasets.

  Args:
    data_dir: an explicit TFDS data dir, or None.

  Returns:
    The directory.
  """
  if data_dir is not None:
    return os.fspath(data_dir)
  return os.path.expanduser(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")


# TFDS datasets with images of many sizes, read through `load_tfds_resized`: (train split, test split).
RESIZED_SPLITS = {"imagenet2012": ("train", "validation")}


def _not_prepared(name: str, data_dir) -> DataError:
  where = default_tfds_dir(data_dir)
  if name in RESIZED_SPLITS:  # ImageNet cannot be downloaded by TFDS: the tarballs come from image-net.org
    return DataError(
      f"TFDS dataset {name} is not prepared in {where} and needs a manual download: put "
      f"ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (https://image-net.org) into "
      f"{os.path.join(where, 'downloads', 'manual')}/, then `pip install tensorflow-cpu` and run "
      f"`tfds build {name} --data_dir={where} --file_format=array_record`, or pass --data_dir=DIR "
      f"holding a prepared copy"
    )
  local = (
    "--data_source=cifar_tar --data_dir=DIR with cifar-10-python.tar.gz"
    if name == "cifar10"
    else "--data_source=idx --data_dir=DIR with the IDX files"
  )
  return DataError(
    f"TFDS dataset {name} is not prepared in {where}: on a networked machine "
    f"`pip install tensorflow-cpu` and run `tfds build {name} --file_format=array_record`, "
    f"or pass {local}"
  )


def _import_tfds():
  try:
    import tensorflow_datasets as tfds  # Slow to import (~0.5 s+): only when TFDS is asked for.
  except ImportError as e:
    raise DataError(
      f"tensorflow-datasets cannot be imported ({e}): `pip install "
      f"tensorflow-datasets importlib_resources pillow`, or use --data_source=idx "
      f"or cifar_tar"
    ) from None
  return tfds


def _open_split(tfds, name: str, split: str, data_dir):
  try:
    # download=False: without TensorFlow a download attempt can only fail, after long retries.
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except Exception as e:  # TFDS raises assorted types (AssertionError, NotImplementedError, ...)
    raise _not_prepared(name, data_dir) from e


def open_data_source(name: str, split: str, data_dir=None):
  """`tfds.data_source` of a prepared split (random access, picklable); a DataError naming how to
  prepare it when it is not there.

  Args:
    name: the TFDS dataset.
    split: its split.
    data_dir: the TFDS data dir (None: TFDS's default).

  Returns:
    The data source.

  Raises:
    DataError: tensorflow-datasets cannot be imported, or the split is not prepared.
  """
  return _open_split(_import_tfds(), name, split, data_dir)


def _read_split(tfds, name: str, split: str, data_dir) -> tuple[np.ndarray, np.ndarray]:
  ds = _open_split(tfds, name, split, data_dir)
  n = len(ds)
  if n == 0:
    raise DataError(
      f"TFDS dataset {name} split {split} in {default_tfds_dir(data_dir)} is empty: rebuild it with `tfds build {name}`"
    )
  images, labels = [], []
  # One record at a time: __getitems__ is broken under tfds.testing.mock_data.
  for i in range(n):
    record = ds[i]
    images.append(np.asarray(record["image"]))
    labels.append(int(record["label"]))
  shapes = {im.shape for im in images}
  if len(shapes) != 1:
    raise DataError(
      f"TFDS dataset {name} split {split} mixes image shapes {sorted(shapes)}: rebuild it with `tfds build {name}`"
    )
  x = np.stack(images).astype(np.uint8, copy=False)
  if x.ndim == 4 and x.shape[-1] == 1:
    # Grayscale comes as [H, W, 1]; drop the channel so TFDS and IDX give the same [N, H, W].
    x = x[..., 0]
  y = np.asarray(labels, dtype=np.int64)
  bad = y[(y < 0) | (y > 255)]
  if bad.size:
    raise DataError(
      f"TFDS dataset {name} split {split} has label {int(bad[0])} outside 0..255: rebuild it with `tfds build {name}`"
    )
  return x, y.astype(np.uint8)


def load_tfds(name: str, data_dir=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Loads (train_images, train_labels, test_images, test_labels) from a prepared TFDS dataset.

  Images are uint8, [N, 28, 28] for mnist/fashion_mnist and [N, 32, 32, 3] for cifar10; labels
  uint8 [N].

  Args:
    name: the TFDS dataset (mnist, fashion_mnist or cifar10).
    data_dir: the TFDS data directory (default: TFDS's own).

  Returns:
    (train_images, train_labels, test_images, test_labels).

  Raises:
    DataError: the dataset's images vary in size (use `load_tfds_resized`), tensorflow-datasets cannot
      be imported, or a split is missing, empty, mixed in shape or has out-of-range labels.
  """
  if name in RESIZED_SPLITS:
    raise DataError(
      f"{name} images come in many sizes: load it with load_tfds_resized (or data.load_dataset with image_size=...)"
    )
  tfds = _import_tfds()
  train_x, train_y = _read_split(tfds, name, "train", data_dir)
  test_x, test_y = _read_split(tfds, name, "test", data_dir)
  return train_x, train_y, test_x, test_y


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 [H, W, C] → [size, size, 3]: shorter side to `size` (PIL bilinear, antialiased when
  shrinking), then the centre crop; grayscale is repeated to RGB, an alpha channel dropped.

  Args:
    image: uint8 [H, W], [H, W, 1], [H, W, 3] or [H, W, 4].
    size: the output's side.

  Returns:
    uint8 [size, size, 3].
  """
  from PIL import Image  # pillow: already needed by TFDS to decode images

  image = np.asarray(image, np.uint8)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  image = image[..., :3]
  h, w = image.shape[:2]
  scale = size / min(h, w)
  new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
  if (new_h, new_w) != (h, w):
    image = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
  top, left = (new_h - size) // 2, (new_w - size) // 2
  return image[top : top + size, left : left + size]


def _physical_memory() -> int | None:
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError, AttributeError):
    return None


def _read_resized(
  tfds, name: str, split: str, data_dir, size: int, limit: int | None, num_classes: int, workers: int
) -> tuple[np.ndarray, np.ndarray]:
  ds = _open_split(tfds, name, split, data_dir)
  n = len(ds) if limit is None else min(len(ds), int(limit))
  if n == 0:
    raise DataError(
      f"TFDS dataset {name} split {split} in {default_tfds_dir(data_dir)} is empty: "
      f"rebuild it with `tfds build {name} --file_format=array_record`"
    )
  images = np.empty((n, size, size, 3), np.uint8)
  labels = np.empty((n,), np.int64)

  def read(i):
    record = ds[i]  # one record at a time: __getitems__ is broken under tfds.testing.mock_data
    images[i] = resize_image(record["image"], size)
    labels[i] = int(record["label"])

  # JPEG decoding and resizing release the GIL; array_record sources take concurrent reads.
  with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
    for _ in pool.map(read, range(n)):
      pass
  bad = labels[(labels < 0) | (labels >= num_classes)]
  if bad.size:
    raise DataError(
      f"TFDS dataset {name} split {split} has label {int(bad[0])} outside 0..{num_classes - 1} "
      f"(unlabelled split?): rebuild it with `tfds build {name} --file_format=array_record`"
    )
  return images, labels.astype(np.int32)


def load_tfds_resized(
  name: str,
  data_dir=None,
  image_size: int = 224,
  max_train: int | None = None,
  max_test: int | None = None,
  num_classes: int = 1000,
  workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Loads (train_images, train_labels, test_images, test_labels) of a prepared TFDS dataset whose
  images vary in size (`RESIZED_SPLITS`: imagenet2012), resized to `image_size`² as they are read.

  Only the first `max_train` / `max_test` records of the train / test split are read (all when None).
  Images are uint8 [N, image_size, image_size, 3], labels int32 [N].

  Args:
    name: the dataset, a key of `RESIZED_SPLITS`.
    data_dir: the TFDS data dir (None: TFDS's default).
    image_size: the side images are resized and cropped to.
    max_train: training records to read (None: all).
    max_test: test records to read (None: all).
    num_classes: the number of classes; labels outside them are refused.
    workers: reader threads (default: the CPU count, at most 32).

  Returns:
    (train_images, train_labels, test_images, test_labels).

  Raises:
    DataError: naming --max_train and --image_size when the arrays (uint8, plus the float32 copy that
      normalisation makes) would not fit in this machine's RAM; naming the manual download when the
      dataset is not prepared; or for a bad argument, an empty split or out-of-range labels.
  """
  if name not in RESIZED_SPLITS:
    raise DataError(f"load_tfds_resized serves {sorted(RESIZED_SPLITS)}, not {name}: use load_tfds")
  if int(image_size) != image_size or image_size < 4:
    raise DataError(f"image_size={image_size} must be an integer ≥ 4, e.g. --image_size=224")
  image_size = int(image_size)
  tfds = _import_tfds()
  train_split, test_split = RESIZED_SPLITS[name]
  sizes = []
  for split, limit in ((train_split, max_train), (test_split, max_test)):
    available = len(_open_split(tfds, name, split, data_dir))
    sizes.append(available if limit is None else min(available, int(limit)))
  need = sum(sizes) * image_size * image_size * 3 * 5  # uint8 + float32 per pixel channel
  memory = _physical_memory()
  if memory is not None and need > 0.8 * memory:
    fits = int(0.8 * memory / (image_size * image_size * 3 * 5)) - sizes[1]
    raise DataError(
      f"{name} at {image_size}x{image_size} with {sizes[0]} train + {sizes[1]} test images "
      f"needs ~{need / 2**30:.0f} GiB in memory but this machine has {memory / 2**30:.0f} GiB: "
      f"pass --max_train={max(fits, 0)} or less (and/or --max_test), or a smaller --image_size"
    )
  workers = workers or min(32, os.cpu_count() or 1)
  train_x, train_y = _read_resized(tfds, name, train_split, data_dir, image_size, sizes[0], num_classes, workers)
  test_x, test_y = _read_resized(tfds, name, test_split, data_dir, image_size, sizes[1], num_classes, workers)
  return train_x, train_y, test_x, test_y

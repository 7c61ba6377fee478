"""Datasets in memory: loading (IDX files, TFDS, CIFAR-10 tarball), checks, splits, normalisation.

`load_dataset(name)` is the entry point: it finds the data (`data_source` auto | idx | tfds |
cifar_tar), checks it, carves the validation split deterministically from the end of the training
data (the last 10 % by default; docs/method.md), and standardises images per channel with the training
part's statistics. ImageNet (`imagenet2012`) comes only from a prepared TFDS copy, resized to
`image_size`² and held in memory: pass max_train for a subset (see `tfds_source.load_tfds_resized` for
what is read and why). Class-rebalanced epoch sampling lives in `quicknets_jax.data.sampling`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Optional

import numpy as np

from quicknets_jax.core import options
from quicknets_jax.core.options import option
from quicknets_jax.data import records, streaming
from quicknets_jax.data.cifar import LABEL_NAMES as _CIFAR10_NAMES
from quicknets_jax.data.cifar import load_cifar_tar
from quicknets_jax.data.download import REMOTE, cached, default_cache_dir, fetch, on_process_zero
from quicknets_jax.data.errors import DataError
from quicknets_jax.data.idx import find_idx_files, load_idx_dir
from quicknets_jax.data.normalisation import STATS_CHUNK, Normalisation, channel_stats, standardise, with_channel
from quicknets_jax.data.split import Split
from quicknets_jax.data.tfds_source import RESIZED_SPLITS, default_tfds_dir, load_tfds, load_tfds_resized

KNOWN = ("mnist", "fashion_mnist", "cifar10", "imagenet2012")
ARRAYS = "arrays"  # the dataset of a run on arrays a user passed (`quicknets_jax.train`)
SOURCES = ("auto", "idx", "tfds", "cifar_tar")
# Local copies `auto` looks at before TFDS (Debian/Ubuntu: apt-get install dataset-fashion-mnist).
DEFAULT_LOCAL_DIRS = {"fashion_mnist": "/usr/share/datasets/fashion-mnist"}
# TFDS data directory `auto` tries when no local copy is found; None means TFDS's default.
TFDS_DATA_DIR: str | None = None
# Side of the square images datasets of many image sizes are resized to, unless image_size says otherwise.
DEFAULT_IMAGE_SIZE = {"imagenet2012": 224}


def _imagenet_class_names() -> tuple[str, ...]:
  """The 1000 WordNet ids of ILSVRC2012 in TFDS's label order, read from the installed
  tensorflow-datasets package without importing it; generic names when it is not installed."""
  try:
    spec = importlib.util.find_spec("tensorflow_datasets")
    for root in (spec.submodule_search_locations or []) if spec else []:
      path = os.path.join(root, "datasets", "imagenet2012", "labels.txt")
      if os.path.exists(path):
        with open(path) as f:
          names = tuple(line.strip() for line in f if line.strip())
        if len(names) == 1000:
          return names
  except (ImportError, ValueError, OSError):
    pass
  return tuple(f"class_{i}" for i in range(1000))


CLASS_NAMES = {
  "fashion_mnist": (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
  ),
  "mnist": tuple(str(d) for d in range(10)),
  "cifar10": _CIFAR10_NAMES,
  "imagenet2012": _imagenet_class_names(),
}
PRETTY_NAMES = {"fashion_mnist": "Fashion-MNIST", "mnist": "MNIST", "cifar10": "CIFAR-10", "imagenet2012": "ImageNet"}

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: == on numpy fields would be ambiguous.
class Dataset:
  """A loaded, split and normalised dataset: the training, validation and test splits (`Split`).

  Images are float32 [N, H, W, C] numpy arrays (or streamed views, `streaming.StreamedImages`),
  standardised per channel with the training part's `mean` and `std` (in [0, 1] pixel units); labels
  are int32 [N].

  Attributes:
    name: the dataset's name (one of `KNOWN`, or "arrays" for arrays a user passed).
    train: the training split (what remains after the validation split is carved off).
    val: the validation split.
    test: the test split (only ever reported).
    num_classes: the number of classes.
    class_names: one name per class.
    mean: float32 [C] per-channel mean of the training part, in [0, 1] pixel units (None: the images
      came already normalised).
    std: float32 [C] per-channel standard deviation, likewise.
    source: where the data came from, for the log (e.g. "idx:/usr/share/datasets/fashion-mnist").
    divisor: raw inputs are divided by it before the mean and std apply (`Normalisation`).
    kept_splits: for arrays a user passed, where their run's workdir keeps the validation and test
      splits (for thresholds); None otherwise.
  """

  name: str
  train: Split
  val: Split
  test: Split
  num_classes: int
  class_names: tuple[str, ...]
  mean: np.ndarray | None = None
  std: np.ndarray | None = None
  source: str = ""
  divisor: float = 255.0  # raw inputs are divided by it before the mean and std apply (`Normalisation`)
  # arrays a user passed: where their run's workdir keeps the validation and test splits (for thresholds)
  kept_splits: Optional[dict] = None

  @property
  def image_shape(self) -> tuple[int, ...]:
    """Shape of one image, (H, W, C)."""
    return tuple(self.train.images.shape[1:])

  @property
  def normalisation(self) -> Optional[Normalisation]:
    """How raw images become this dataset's inputs (None when it was passed in already normalised)."""
    return None if self.mean is None else Normalisation.of(self.mean, self.std, self.divisor)

  def card(self) -> dict:
    """What a trained model needs of its dataset to read new images (JSON-ready): name, image shape,
    class names and the per-channel normalisation, `(raw / divisor − mean) / std`.

    Returns:
      A dict with `name`, `image_shape`, `num_classes`, `class_names`, the normalisation's `mean`, `std`
      (and `divisor`) and, for arrays a user passed, `splits`.
    """
    norm = self.normalisation
    return dict(
      name=self.name,
      image_shape=list(self.image_shape),
      num_classes=int(self.num_classes),
      class_names=list(self.class_names),
      **(dict(mean=None, std=None) if norm is None else norm.card()),
      **({} if self.kept_splits is None else dict(splits=dict(self.kept_splits))),
    )

  def summary(self) -> str:
    """One line: name, source, split sizes, image shape and class count.

    Returns:
      The line.
    """
    src = f" from {self.source}" if self.source else ""
    return (
      f"{self.name}{src}: train {len(self.train.labels)}, val {len(self.val.labels)}, "
      f"test {len(self.test.labels)}, images {'x'.join(map(str, self.image_shape))}, "
      f"{self.num_classes} classes"
    )


def _check_name(name: str) -> str:
  canon = str(name).lower().replace("-", "_")
  if canon not in KNOWN:
    raise DataError(f"unknown dataset {name!r}: choose one of {', '.join(KNOWN)}")
  return canon


def _local_source(name: str, data_dir) -> tuple[Arrays, str]:
  """Loads `name` from a local directory: IDX files, or the tarball for cifar10."""
  if name == "cifar10":
    return load_cifar_tar(data_dir), f"cifar_tar:{data_dir}"
  return load_idx_dir(data_dir), f"idx:{data_dir}"


def _load(
  name: str,
  data_source: str,
  data_dir,
  image_size: int | None = None,
  max_train: int | None = None,
  max_test: int | None = None,
  download: bool = False,
  cache_dir: str | None = None,
) -> tuple[Arrays, str]:
  """load_arrays plus a short description of where the data came from.

  image_size, max_train, max_test matter to datasets read resized (imagenet2012) only: there they
  decide how much is read at all.
  """
  name = _check_name(name)
  if data_source not in SOURCES:
    raise DataError(f"unknown data_source {data_source!r}: choose one of {', '.join(SOURCES)}")
  pretty = PRETTY_NAMES[name]
  if name in RESIZED_SPLITS:
    if data_source not in ("auto", "tfds"):
      raise DataError(
        f"{name} is read from a prepared TFDS copy only, not data_source={data_source}: "
        f"pass --data_source=tfds (and --data_dir=DIR, the TFDS data dir, if it is not "
        f"in {default_tfds_dir()})"
      )
    size = DEFAULT_IMAGE_SIZE[name] if image_size is None else image_size
    tfds_dir = data_dir if data_dir is not None else (TFDS_DATA_DIR if data_source == "auto" else None)
    arrays = load_tfds_resized(name, tfds_dir, size, max_train, max_test, num_classes=len(CLASS_NAMES[name]))
    return arrays, f"tfds:{default_tfds_dir(tfds_dir)} ({size}x{size})"
  if image_size is not None:
    raise DataError(
      f"image_size applies to {', '.join(RESIZED_SPLITS)} only ({pretty} images have one size): drop --image_size"
    )
  if data_source == "tfds":
    return load_tfds(name, data_dir), f"tfds:{default_tfds_dir(data_dir)}"
  if data_source == "cifar_tar":
    if name != "cifar10":
      raise DataError(f"data_source=cifar_tar only serves cifar10, not {name}: use --data_source=idx or tfds")
    if data_dir is None:
      raise DataError(
        "data_source=cifar_tar needs --data_dir=DIR holding cifar-10-python.tar.gz (or the path of the tarball itself)"
      )
    return _local_source(name, data_dir)
  if data_source == "idx":
    if name == "cifar10":
      raise DataError("cifar10 has no IDX form: use --data_source=cifar_tar --data_dir=DIR or --data_source=tfds")
    directory = data_dir if data_dir is not None else DEFAULT_LOCAL_DIRS.get(name)
    if directory is None:
      raise DataError(f"data_source=idx for {name} needs --data_dir=DIR with the four IDX files")
    return _local_source(name, directory)

  # auto: an explicit directory wins and its errors are the user's to see, not to fall past.
  if data_dir is not None:
    return _local_source(name, data_dir)
  local = DEFAULT_LOCAL_DIRS.get(name)
  local_missing = ""
  if local is not None:
    if name != "cifar10" and os.path.isdir(local):
      missing = find_idx_files(local)[1]
      if not missing:
        return _local_source(name, local)
      local_missing = f" (missing {', '.join(missing)})"
    elif name == "cifar10" and os.path.exists(local):
      return _local_source(name, local)
  if name in REMOTE and cached(name, cache_dir):  # downloaded by an earlier run
    return _local_source(name, cached(name, cache_dir))
  try:
    return load_tfds(name, TFDS_DATA_DIR), f"tfds:{default_tfds_dir(TFDS_DATA_DIR)}"
  except DataError:
    pass
  if download and name in REMOTE:
    return _local_source(name, fetch(name, cache_dir))
  tfds_dir = default_tfds_dir(TFDS_DATA_DIR)
  tfds_way = (
    "or --data_source=tfds on a networked machine (needs `pip install tensorflow-cpu` "
    f"to prepare; nothing prepared in {tfds_dir})"
  )
  if name in REMOTE and not download:
    tfds_way += ", or allow the download (--download)"
  if name == "fashion_mnist" and local is not None:
    raise DataError(
      f"no {pretty} found at {local}{local_missing}: `apt-get install dataset-fashion-mnist`, or "
      f"pass --data_dir=DIR with the four IDX files, {tfds_way}"
    )
  if name == "cifar10":
    raise DataError(f"no {pretty} found: pass --data_dir=DIR holding cifar-10-python.tar.gz, {tfds_way}")
  where = f" at {local}{local_missing}" if local is not None else ""
  raise DataError(f"no {pretty} found{where}: pass --data_dir=DIR with the four IDX files, {tfds_way}")


def load_arrays(
  name: str,
  data_source: str = "auto",
  data_dir=None,
  image_size: int | None = None,
  download: bool = False,
  cache_dir: str | None = None,
) -> Arrays:
  """Loads raw (train_images, train_labels, test_images, test_labels) as uint8 numpy arrays.

  Grayscale images are [N, H, W], colour [N, H, W, 3]. With `download`, `auto` finally downloads mnist,
  fashion_mnist or cifar10 from their published URLs into `cache_dir` (default
  `download.default_cache_dir()`), where later calls find them (`data.download`: checksums, atomic
  writes, retries).

  Args:
    name: the dataset, one of `KNOWN`.
    data_source: "idx" (an MNIST-style directory; default: DEFAULT_LOCAL_DIRS), "cifar_tar" (the
      CIFAR-10 python tarball in `data_dir`), "tfds" (a prepared TFDS dataset; `data_dir` is the
      TFDS data dir), or "auto": `data_dir` if given (IDX, or the tarball for cifar10), else the
      DEFAULT_LOCAL_DIRS copy if its files are there, else an earlier download, else a prepared TFDS
      copy in TFDS_DATA_DIR, else (with `download`) the published files.
    data_dir: the directory (or tarball) to read; for "tfds", the TFDS data dir.
    image_size: imagenet2012 only (it comes from TFDS only): the side it is resized to (default 224).
    download: let "auto" download mnist, fashion_mnist or cifar10 when no local copy is found.
    cache_dir: where downloads are kept.

  Returns:
    (train_images, train_labels, test_images, test_labels).

  Raises:
    DataError: the name or source is unknown, the data is not found (the message names every way to
      provide it), or a file is malformed.
  """
  return _load(name, data_source, data_dir, image_size, download=download, cache_dir=cache_dir)[0]


def validate_arrays(train_images, train_labels, test_images, test_labels, num_classes: int) -> None:
  """Raises DataError unless image and label counts match and every label is in [0, num_classes).

  Args:
    train_images: [N, H, W] or [N, H, W, C] training images.
    train_labels: [N] their labels.
    test_images: [M, H, W] or [M, H, W, C] test images.
    test_labels: [M] their labels.
    num_classes: the dataset's number of classes.

  Raises:
    DataError: labels are not 1-D, images are not 3-D or 4-D, counts differ, or a label is out of range.
  """
  for split, images, labels in (("train", train_images, train_labels), ("test", test_images, test_labels)):
    labels = np.asarray(labels)
    if labels.ndim != 1:
      raise DataError(
        f"{split} labels have shape {labels.shape}, expected 1-D: check the "
        f"label files are not swapped with the image files"
      )
    if np.asarray(images).ndim not in (3, 4):
      raise DataError(
        f"{split} images have shape {np.shape(images)}, expected [N, H, W] or [N, H, W, C]: check the image files"
      )
    if len(images) != len(labels):
      raise DataError(
        f"{split} has {len(images)} images but {len(labels)} labels: use image and label files from the same dataset"
      )
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
      values = np.unique(labels[bad])
      raise DataError(
        f"{split} labels have {int(bad.sum())} value(s) outside [0, "
        f"{num_classes}), e.g. {int(values[0])} (distinct bad values: "
        f"{values[:5].tolist()}): the files do not belong to a "
        f"{num_classes}-class dataset; use the right --data_dir / dataset name"
      )


def split_validation(images, labels, val_fraction: float = 0.1) -> tuple[Split, Split]:
  """Splits training data into (train, validation) splits (`Split`).

  Deterministic: the LAST round(N * val_fraction) samples are the validation split (60,000 ->
  54,000 + 6,000). The results are views, not copies.

  Args:
    images: the training images.
    labels: their labels, row for row.
    val_fraction: the fraction of it that becomes the validation split, in (0, 1).

  Returns:
    (train, val).

  Raises:
    DataError: the lengths differ, or the fraction leaves either split empty.
  """
  n = len(images)
  if len(labels) != n:
    raise DataError(f"{n} images but {len(labels)} labels: pass matching arrays")
  if not 0.0 < float(val_fraction) < 1.0:
    raise DataError(f"val_fraction={val_fraction} must be strictly between 0 and 1, e.g. 0.1")
  n_val = int(round(n * float(val_fraction)))
  if n_val < 1 or n - n_val < 1:
    raise DataError(
      f"val_fraction={val_fraction} of {n} training samples leaves {n - n_val} "
      f"train and {n_val} validation samples; each needs at least 1: change "
      f"val_fraction or use more data"
    )
  cut = n - n_val
  return Split(images[:cut], labels[:cut]), Split(images[cut:], labels[cut:])


def normalise(train, *others, chunk: int = STATS_CHUNK):
  """Scales uint8 images to [0, 1] float32, then standardises each channel with `train`'s stats.

  Inputs are [N, H, W, C] (or [N, H, W], which gets a channel axis).

  Args:
    train: the training images, whose statistics are used.
    *others: more image arrays of the same shape (validation, test), standardised the same way.
    chunk: images per chunk of the statistics pass (the streamed path uses the same chunks, so both
      paths get bit-identical statistics).

  Returns:
    ((train_n, *others_n), (mean, std)) with mean and std float32 [C] in [0, 1] pixel units.

  Raises:
    DataError: the training set is empty, or the image shapes differ.
  """
  train = with_channel(np.asarray(train))
  others = [with_channel(np.asarray(o)) for o in others]
  if len(train) == 0:
    raise DataError("cannot normalise an empty training set: use more training samples")
  for o in others:
    if o.shape[1:] != train.shape[1:]:
      raise DataError(f"image shapes differ ({train.shape[1:]} vs {o.shape[1:]}): pass splits of the same dataset")
  mean32, std32 = channel_stats(train[start : start + chunk] for start in range(0, len(train), chunk))
  return tuple(standardise(x, mean32, std32) for x in [train, *others]), (mean32, std32)


def load_dataset(
  name: str,
  data_source: str = "auto",
  data_dir=None,
  val_fraction: float = 0.1,
  max_train: int | None = None,
  max_test: int | None = None,
  image_size: int | None = None,
  download: bool = False,
  cache_dir: str | None = None,
) -> Dataset:
  """Loads, checks, splits and normalises a dataset (see load_arrays for the sources and `download`).

  Args:
    name: the dataset, one of `KNOWN`.
    data_source: "auto", "idx", "tfds" or "cifar_tar" (`load_arrays`).
    data_dir: the directory (or tarball, or TFDS data dir) to read.
    val_fraction: the last fraction of the training split that becomes the validation split.
    max_train: keep only the first N samples of the training split (before the validation split is
      carved off its end); for smoke runs and tests, and for imagenet2012, where only that many records
      are read at all.
    max_test: keep only the first N samples of the test split.
    image_size: the side imagenet2012 is resized to (default 224); other datasets refuse it.
    download: let "auto" download the published files when no local copy is found.
    cache_dir: where downloads are kept.

  Returns:
    The `Dataset`.

  Raises:
    DataError: an argument is out of range, or the data cannot be found or read (one line naming the
      fix).
  """
  name = _check_name(name)
  for flag, value in (("max_train", max_train), ("max_test", max_test)):
    if value is not None and (int(value) != value or value < 1):
      raise DataError(f"{flag}={value} must be a positive integer or None")
  (train_x, train_y, test_x, test_y), source = _load(
    name, data_source, data_dir, image_size, max_train, max_test, download, cache_dir
  )
  num_classes = len(CLASS_NAMES[name])
  validate_arrays(train_x, train_y, test_x, test_y, num_classes)
  if max_train is not None:
    train_x, train_y = train_x[:max_train], train_y[:max_train]
  if max_test is not None:
    test_x, test_y = test_x[:max_test], test_y[:max_test]
  train, val = split_validation(train_x, train_y, val_fraction)
  (tr_x, va_x, te_x), (mean, std) = normalise(train.images, val.images, test_x)
  as_labels = lambda y: np.asarray(y, np.int32)
  return Dataset(
    name=name,
    train=Split(tr_x, as_labels(train.labels)),
    val=Split(va_x, as_labels(val.labels)),
    test=Split(te_x, as_labels(test_y)),
    num_classes=num_classes,
    class_names=CLASS_NAMES[name],
    mean=mean,
    std=std,
    source=source,
  )


INPUTS = ("memory", "stream")


def default_records_dir(name: str, cache_dir: Optional[str] = None) -> str:
  """Where `--input=stream` keeps a dataset's record directory when --records_dir is not given.

  Args:
    name: the dataset.
    cache_dir: the data cache (default: `download.default_cache_dir()`).

  Returns:
    `<cache_dir>/records/<name>`.
  """
  return os.path.join(cache_dir or default_cache_dir(), "records", name)


def write_dataset_records(name: str, directory: str, data_source: str = "auto", data_dir=None, **load_args) -> dict:
  """Reads dataset `name` from its local copy (`load_arrays`) and writes it as a record directory
  (`records.write_records`); returns its meta.

  Args:
    name: the dataset, one of `KNOWN`.
    directory: the record directory to write.
    data_source: where to read it from (`load_arrays`).
    data_dir: the directory (or tarball) to read.
    **load_args: more arguments of `load_arrays` (image_size, download, cache_dir).

  Returns:
    The directory's meta.json contents.

  Raises:
    DataError: the data cannot be found or is malformed.
  """
  name = _check_name(name)
  train_x, train_y, test_x, test_y = load_arrays(name, data_source, data_dir, **load_args)
  validate_arrays(train_x, train_y, test_x, test_y, len(CLASS_NAMES[name]))
  return records.write_records(directory, name, train_x, train_y, test_x, test_y, CLASS_NAMES[name])


def load_streamed_dataset(config: DataConfig, log=print) -> Dataset:
  """`load_dataset`'s splits and normalisation with the images left on disk (`streaming.StreamedImages`).

  Reads a record directory (`config.records_dir`, default `default_records_dir(dataset, data_cache)`);
  where it does not exist yet, writes it once from the dataset's local copy (as `load_arrays` finds it
  from `data_source` and `data_dir`, downloading it if `download` allows). With `data_source="tfds"`
  and no records_dir, reads the prepared TFDS copy's array_record files in `data_dir`
  (`tfds.data_source`) instead; imagenet2012 only that way, resized to `image_size` as read.

  Args:
    config: which dataset, from where and how much of it (`DataConfig`: `val_fraction`, `max_train`,
      `max_test` as for `load_dataset`; the pipeline's threads, workers and memory budget as
      `DataConfig.stream_options`; its `input` is not read).
    log: where the one-line note about writing records goes.

  Returns:
    A `Dataset` whose images are `streaming.StreamedImages` views.

  Raises:
    DataError: the source does not stream this dataset, the record directory holds another dataset,
      or labels fall outside the dataset's classes.
  """
  name = _check_name(config.dataset)
  data_source, data_dir = config.data_source, config.data_dir
  if data_source == "tfds" and config.records_dir is None or name in RESIZED_SPLITS:
    if data_source not in ("auto", "tfds"):
      raise DataError(f"{name} streams from a prepared TFDS copy only: pass --data_source=tfds")
    size = DEFAULT_IMAGE_SIZE.get(name) if config.image_size is None else config.image_size
    splits = RESIZED_SPLITS.get(name, ("train", "test"))
    train, test = (records.TfdsImages(name, split, data_dir, size) for split in splits)
    source = f"tfds:{default_tfds_dir(data_dir)} (streamed)"
  else:
    directory = config.records_dir or default_records_dir(name, config.data_cache)
    if not records.has_records(directory):  # written once, by process 0 of a multi-process run

      def write():
        log(f"writing {PRETTY_NAMES[name]} as array_record files into {directory} (once)")
        write_dataset_records(
          name, directory, data_source, data_dir, download=config.download, cache_dir=config.data_cache
        )

      on_process_zero(write, f"quicknets_jax records {name}")
    meta = records.read_meta(directory)
    if meta["name"] != name:
      raise DataError(f"{directory} holds {meta['name']}, not {name}: pass the --records_dir of {name}")
    train, test = (records.RecordImages(directory, split) for split in records.SPLITS)
    source = f"records:{directory} (streamed)"
  splits = streaming.streamed_splits(
    train, test, config.val_fraction, config.max_train, config.max_test, config.stream_options()
  )
  num_classes = len(CLASS_NAMES[name])
  for split, labels in (("train", splits.train.labels), ("val", splits.val.labels), ("test", splits.test.labels)):
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
      raise DataError(f"{split} labels fall outside [0, {num_classes}): the records do not belong to {name}")
  return Dataset(
    name=name,
    train=splits.train,
    val=splits.val,
    test=splits.test,
    num_classes=num_classes,
    class_names=CLASS_NAMES[name],
    mean=splits.mean,
    std=splits.std,
    source=source,
  )


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Which dataset, from where, and how much of it.

  Attributes:
    dataset: the dataset, one of `KNOWN`, or "arrays" (the arrays passed to `quicknets_jax.train`).
    data_source: "auto" (a local IDX copy if found, else TFDS), "idx", "tfds" or "cifar_tar".
    data_dir: the directory with the four IDX files; for cifar10 the tarball's directory; with
      `data_source="tfds"` the TFDS data dir.
    val_fraction: the last fraction of the training split kept for validation.
    max_train: use only the first N training samples (smoke runs).
    max_test: use only the first N test samples (smoke runs).
    image_size: imagenet2012: the side the images are resized (shorter side) and centre-cropped to.
    download: with `data_source="auto"` and no local copy, download mnist, fashion_mnist or cifar10
      (checked against their published checksums) into `data_cache`.
    data_cache: where downloaded datasets are kept.
    input: "memory" (every split held in memory as float32 arrays) or "stream" (images read from
      array_record files batch by batch with Grain; same results).
    records_dir: with `input="stream"`, the record directory.
    stream_threads: with `input="stream"`, Grain reader threads.
    stream_workers: with `input="stream"`, Grain worker processes for decoding (0: threads only).
    memory_budget_mb: with `input="stream"`, MiB of decoded images the input pipeline may hold.
  """

  dataset: str = option(
    "fashion_mnist", f"Dataset ({ARRAYS}: the arrays passed to quicknets_jax.train).", choices=(*KNOWN, ARRAYS)
  )
  data_source: str = option(
    "auto",
    "auto: a local IDX copy if found (--data_dir, or Debian's dataset-fashion-mnist), else TFDS.",
    choices=SOURCES,
  )
  data_dir: Optional[str] = option(
    None,
    "Directory with the four IDX files (train/t10k images/labels); "
    "cifar10: the tarball's directory; with --data_source=tfds: the TFDS data dir.",
  )
  val_fraction: float = option(0.1, "Last fraction of the training split kept for validation.", lower=0.0, upper=1.0)
  max_train: Optional[int] = option(None, "Use only the first N training samples (smoke runs).", lower=1)
  max_test: Optional[int] = option(None, "Use only the first N test samples (smoke runs).", lower=1)
  image_size: Optional[int] = option(
    None, "imagenet2012: side the images are resized (shorter side) and centre-cropped to (default 224).", lower=4
  )
  download: bool = option(
    True,
    "With --data_source=auto and no local copy: download mnist, fashion_mnist or cifar10 (checked "
    "against their published checksums) into --data_cache; --nodownload never downloads.",
    resumable=True,
  )
  data_cache: Optional[str] = option(
    None,
    "Where downloaded datasets are kept (default $QUICKNETS_JAX_DATA or ~/.cache/quicknets_jax/datasets).",
    resumable=True,
  )

  input: str = option(
    "memory",
    "memory: every split held in memory as float32 arrays; stream: images read from array_record files "
    "batch by batch with Grain (datasets that do not fit; same results as memory).",
    choices=INPUTS,
    resumable=True,
  )
  records_dir: Optional[str] = option(
    None,
    "--input=stream: the record directory (written there once from the local copy when missing; default "
    "<data_cache>/records/<dataset>). Write one with python -m experiments.write_records.",
    resumable=True,
  )
  stream_threads: int = option(4, "--input=stream: Grain reader threads (reads and decoding).", lower=1, resumable=True)
  stream_workers: int = option(
    0, "--input=stream: Grain worker processes for decoding (0: threads only).", lower=0, resumable=True
  )
  memory_budget_mb: float = option(
    256.0,
    "--input=stream: MiB of decoded images the input pipeline may hold (batches in flight, whole-split reads).",
    lower=1.0,
    resumable=True,
  )

  def __post_init__(self):
    options.validate(self)

  def stream_options(self) -> streaming.StreamOptions:
    """The streamed input pipeline's settings.

    Returns:
      A `streaming.StreamOptions` of this config's threads, workers and memory budget.
    """
    return streaming.StreamOptions(self.stream_threads, self.stream_workers, self.memory_budget_mb)

  def load(self, log=print) -> Dataset:
    """The dataset this config names, loaded, split and normalised (`load_dataset`), or with
    `input="stream"` left on disk as streamed views (`load_streamed_dataset`).

    Args:
      log: where one-line notes go (writing records).

    Returns:
      The `Dataset`.

    Raises:
      DataError: the config names "arrays" (those must be passed again), or the data cannot be found
        or read.
    """
    if self.dataset == ARRAYS:
      raise DataError(
        f"dataset {ARRAYS!r} is the arrays a run was given: pass them again (quicknets_jax.train(train=..., "
        "test=...)), or read the run with quicknets_jax.load(workdir)"
      )
    if self.input == "stream":
      return load_streamed_dataset(self, log=log)
    return load_dataset(
      self.dataset,
      data_source=self.data_source,
      data_dir=self.data_dir,
      val_fraction=self.val_fraction,
      max_train=self.max_train,
      max_test=self.max_test,
      image_size=self.image_size,
      download=self.download,
      cache_dir=self.data_cache,
    )

  def image_shape(self) -> tuple:
    """(H, W, C) of this dataset's images, without reading them.

    Returns:
      The shape of one image as the model sees it.
    """
    if self.dataset in DEFAULT_IMAGE_SIZE:  # resized as read (imagenet2012)
      size = self.image_size or DEFAULT_IMAGE_SIZE[self.dataset]
      return (size, size, 3)
    return (32, 32, 3) if self.dataset == "cifar10" else (28, 28, 1)

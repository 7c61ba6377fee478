"""Datasets on disk as array_record files, read one record at a time: what `--input=stream` reads.

A record directory holds `train.array_record` and `test.array_record` (one record per image: the label
as a little-endian int32, then the image's uint8 pixels, row-major H×W×C), the labels alone as
`{train,test}_labels.npy`, and `meta.json` (dataset
name, image shape, class names, record counts). `write_records` builds one from arrays (what an IDX
directory or the CIFAR-10 tarball loads as), `datasets.write_dataset_records` from a dataset's local copy.
`RecordImages` is the random-access reader Grain draws from; `TfdsImages` reads a prepared TFDS copy
through `tfds.data_source` (its array_record files) the same way. Both are picklable, so Grain's
worker processes open their own readers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Optional

import numpy as np

from quicknets_jax.data import tfds_source
from quicknets_jax.data.errors import DataError

FORMAT = "quicknets_jax.records/1"
SPLITS = ("train", "test")
_LABEL_BYTES = 4


def records_path(directory: str, split: str) -> str:
  """The array_record file of `split` ("train" or "test") in a record directory.

  Args:
    directory: the record directory.
    split: "train" or "test".

  Returns:
    The file's path.
  """
  return os.path.join(directory, f"{split}.array_record")


def labels_path(directory: str, split: str) -> str:
  """The labels of `split` as an int32 .npy file beside its records.

  Args:
    directory: the record directory.
    split: "train" or "test".

  Returns:
    The file's path.
  """
  return os.path.join(directory, f"{split}_labels.npy")


def has_records(directory: Optional[str]) -> bool:
  """Whether `directory` holds a complete record directory (both splits and meta.json).

  Args:
    directory: the folder to look at, or None.

  Returns:
    True when every file of a record directory is there.
  """
  return bool(directory) and all(
    os.path.exists(p)
    for p in [os.path.join(directory, "meta.json")]
    + [p(directory, s) for s in SPLITS for p in (records_path, labels_path)]
  )


def _writer(path: str):
  from array_record.python.array_record_module import ArrayRecordWriter

  # group_size:1 makes every record its own chunk (a random read decodes one image, not a group);
  # uncompressed: a read is a copy, and the file is the pixels
  return ArrayRecordWriter(path, "group_size:1,uncompressed")


def write_records(
  directory: str,
  name: str,
  train_images: np.ndarray,
  train_labels: np.ndarray,
  test_images: np.ndarray,
  test_labels: np.ndarray,
  class_names: Sequence[str],
  chunk: int = 4096,
) -> dict:
  """Writes the two splits as array_record files plus meta.json into `directory`; returns the meta.

  Images are uint8 [N, H, W] or [N, H, W, C]. Each file is written under a `.part` name and renamed
  when complete, meta.json last, so a directory that `has_records` is never half written.

  Args:
    directory: the record directory (created if missing).
    name: the dataset's name, recorded in meta.json.
    train_images: uint8 training images.
    train_labels: their labels.
    test_images: uint8 test images, of the training images' shape.
    test_labels: their labels.
    class_names: one name per class.
    chunk: images converted to records at a time.

  Returns:
    The meta.json contents: format, name, image shape, class names and record counts.

  Raises:
    DataError: the images are not uint8, the two splits' image shapes differ, or image and label
      counts differ.
  """
  os.makedirs(directory, exist_ok=True)
  shape = None
  counts = {}
  for split, images, labels in (("train", train_images, train_labels), ("test", test_images, test_labels)):
    images = np.asarray(images)
    if images.dtype != np.uint8:
      raise DataError(f"{split} images are {images.dtype}, expected uint8 pixels: write the raw images, not normalised")
    if images.ndim == 3:
      images = images[..., None]
    if shape is not None and images.shape[1:] != shape:
      raise DataError(f"train and test images differ in shape ({shape} vs {images.shape[1:]})")
    shape = images.shape[1:]
    labels = np.asarray(labels, np.int32)
    if len(labels) != len(images):
      raise DataError(f"{split}: {len(images)} images but {len(labels)} labels")
    path = records_path(directory, split)
    writer = _writer(path + ".part")
    for start in range(0, len(images), chunk):
      pixels = images[start : start + chunk]
      for label, image in zip(labels[start : start + chunk].astype("<i4"), pixels):
        writer.write(label.tobytes() + image.tobytes())
    writer.close()
    os.replace(path + ".part", path)
    np.save(labels_path(directory, split), labels)  # labels without reading the images
    counts[split] = int(len(images))
  meta = dict(format=FORMAT, name=name, image_shape=list(shape), class_names=list(class_names), counts=counts)
  with open(os.path.join(directory, "meta.json.part"), "w") as f:
    json.dump(meta, f, indent=1)
  os.replace(os.path.join(directory, "meta.json.part"), os.path.join(directory, "meta.json"))
  return meta


def read_meta(directory: str) -> dict:
  """meta.json of a record directory; a DataError naming the way to write one when it is missing.

  Args:
    directory: the record directory.

  Returns:
    The meta.json contents.

  Raises:
    DataError: the directory is incomplete or its meta.json is of another format.
  """
  if not has_records(directory):
    raise DataError(
      f"no record directory at {directory} (train.array_record, test.array_record, meta.json): write one "
      f"with `python -m experiments.write_records --dataset=NAME --out={directory}`"
    )
  with open(os.path.join(directory, "meta.json")) as f:
    meta = json.load(f)
  if meta.get("format") != FORMAT:
    raise DataError(f"{directory}/meta.json is format {meta.get('format')!r}, not {FORMAT!r}: write it again")
  return meta


class RecordImages:
  """Random access to one split of a record directory: `read(rows)` -> (uint8 images [n,H,W,C], labels).

  The reader opens on first use in each process (Grain's workers unpickle it without an open file).

  Args:
    directory: the record directory.
    split: "train" or "test".

  Attributes:
    directory: as given.
    split: as given.
    image_shape: (H, W, C) of one image.
    count: the number of records.

  Raises:
    DataError: the directory is not a complete record directory (`read_meta`).
  """

  def __init__(self, directory: str, split: str):
    meta = read_meta(directory)
    self.directory, self.split = directory, split
    self.image_shape = tuple(meta["image_shape"])
    self.count = int(meta["counts"][split])
    self._source = None

  def __getstate__(self):
    return {**self.__dict__, "_source": None}

  def __len__(self) -> int:
    return self.count

  def _records(self, rows: Sequence[int]) -> list:
    if self._source is None:
      from grain.python import ArrayRecordDataSource

      self._source = ArrayRecordDataSource(records_path(self.directory, self.split))
    return self._source.__getitems__([int(r) for r in rows])

  def read(self, rows) -> tuple[np.ndarray, np.ndarray]:
    """The uint8 images and int32 labels of records `rows`, in that order.

    Args:
      rows: record numbers.

    Returns:
      (uint8 [n, H, W, C] images, int32 [n] labels).
    """
    records = self._records(rows)
    size = int(np.prod(self.image_shape))
    raw = np.frombuffer(b"".join(records), np.uint8).reshape(len(records), _LABEL_BYTES + size)
    labels = raw[:, :_LABEL_BYTES].copy().view("<i4").reshape(-1).astype(np.int32)
    return raw[:, _LABEL_BYTES:].reshape(len(records), *self.image_shape), labels

  def labels(self, stop: Optional[int] = None) -> np.ndarray:
    """The labels of records [0, stop) (int32; default all), from the .npy file beside the records.

    Args:
      stop: one past the last record wanted (None: all).

    Returns:
      int32 labels.

    Raises:
      DataError: the .npy file holds another number of labels than there are records.
    """
    labels = np.load(labels_path(self.directory, self.split)).astype(np.int32)
    if len(labels) != self.count:
      raise DataError(
        f"{labels_path(self.directory, self.split)} holds {len(labels)} labels for {self.count} records: "
        "write the record directory again"
      )
    return labels[:stop]


class TfdsImages:
  """Random access to a prepared TFDS split through `tfds.data_source` (array_record; no TensorFlow),
  optionally resized to `image_size`² as read (`tfds_source.resize_image`: imagenet2012).

  Args:
    name: the TFDS dataset.
    split: its split ("train", "test", or imagenet2012's "validation").
    data_dir: the TFDS data dir (None: TFDS's default).
    image_size: the side images are resized to as read, or None to keep them as they are.

  Attributes:
    name: as given.
    split: as given.
    data_dir: as given.
    image_size: as given.
    image_shape: (H, W, C) of one image as read.
    count: the number of records.

  Raises:
    DataError: the dataset is not prepared there (`tfds_source.open_data_source`).
  """

  def __init__(self, name: str, split: str, data_dir: Optional[str] = None, image_size: Optional[int] = None):
    self.name, self.split, self.data_dir, self.image_size = name, split, data_dir, image_size
    self._source = tfds_source.open_data_source(name, split, data_dir)
    image = self._image(self._source[0])
    self.image_shape = image.shape
    self.count = len(self._source)

  def _image(self, record) -> np.ndarray:
    image = np.asarray(record["image"], np.uint8)
    image = image if image.ndim == 3 else image[..., None]
    return image if self.image_size is None else tfds_source.resize_image(image, self.image_size)

  def __len__(self) -> int:
    return self.count

  def read(self, rows) -> tuple[np.ndarray, np.ndarray]:
    """The uint8 images and int32 labels of records `rows`, in that order.

    Args:
      rows: record numbers.

    Returns:
      (uint8 [n, H, W, C] images, int32 [n] labels).
    """
    records = [self._source[int(r)] for r in rows]
    images = np.stack([self._image(r) for r in records]) if records else np.zeros((0, *self.image_shape), np.uint8)
    return images, np.asarray([int(r["label"]) for r in records], np.int32)

  def labels(self, stop: Optional[int] = None) -> np.ndarray:
    """The labels of records [0, stop) (int32; default all). TFDS decodes each record whole, so this
    reads (and decodes) those records once.

    Args:
      stop: one past the last record wanted (None: all).

    Returns:
      int32 labels.
    """
    stop = self.count if stop is None else min(stop, self.count)
    return np.asarray([int(self._source[i]["label"]) for i in range(stop)], np.int32)

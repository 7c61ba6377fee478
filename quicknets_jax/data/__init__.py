"""Datasets for QuickNets: loading (IDX files, TFDS, CIFAR-10 tarball), checks, splits, normalisation.

Layer 1 (beside `models/`): imports only `core/`. `datasets.load_dataset(name)` (or
`DataConfig(...).load()`) is the entry point: it finds the data (`data_source` auto | idx | tfds |
cifar_tar), checks it, carves the validation split deterministically from the end of the training data
(design §1), and standardises images per channel with the training part's statistics. Class-rebalanced
epoch sampling is `sampling`, training-time augmentation `augment`.
"""

from quicknets_jax.data.cifar import load_cifar_tar, write_cifar_tar
from quicknets_jax.data.datasets import (
  CLASS_NAMES,
  DEFAULT_IMAGE_SIZE,
  DEFAULT_LOCAL_DIRS,
  KNOWN,
  PRETTY_NAMES,
  SOURCES,
  TFDS_DATA_DIR,
  DataConfig,
  Dataset,
  load_arrays,
  load_dataset,
  normalise,
  split_validation,
  validate_arrays,
)
from quicknets_jax.data.errors import DataError
from quicknets_jax.data.idx import load_idx_dir, read_idx, write_idx
from quicknets_jax.data.sampling import class_counts, draw_epoch
from quicknets_jax.data.tfds_source import load_tfds, load_tfds_resized

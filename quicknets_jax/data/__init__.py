"""Datasets: loading (IDX, TFDS, CIFAR-10 tarball, record files), checks, splits, normalisation, sampling."""

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
from quicknets_jax.data.normalisation import Normalisation
from quicknets_jax.data.sampling import class_counts, draw_epoch
from quicknets_jax.data.split import Split
from quicknets_jax.data.tfds_source import load_tfds, load_tfds_resized

"""Loading MNIST, Fashion-MNIST and CIFAR-10 through `tfds.data_source` (array_record, no TensorFlow).

Reading works without TensorFlow; *preparing* a dataset (download_and_prepare) needs it, so this
module never downloads: an unprepared dataset is a DataError that says how to prepare it or which
other source to use.
"""

from __future__ import annotations

import os

import numpy as np

from quicknets_jax.data.errors import DataError


def default_tfds_dir(data_dir=None) -> str:
    """The directory TFDS reads from: `data_dir`, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    if data_dir is not None:
        return os.fspath(data_dir)
    return os.path.expanduser(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")


def _not_prepared(name: str, data_dir) -> DataError:
    where = default_tfds_dir(data_dir)
    local = ("--data_source=cifar_tar --data_dir=DIR with cifar-10-python.tar.gz"
             if name == "cifar10" else "--data_source=idx --data_dir=DIR with the IDX files")
    return DataError(f"TFDS dataset {name} is not prepared in {where}: on a networked machine "
                     f"`pip install tensorflow-cpu` and run `tfds build {name}`, or pass {local}")


def _read_split(tfds, name: str, split: str, data_dir) -> tuple[np.ndarray, np.ndarray]:
    try:
        # download=False: without TensorFlow a download attempt can only fail, after long retries.
        ds = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # TFDS raises assorted types (AssertionError, NotImplementedError, ...)
        raise _not_prepared(name, data_dir) from e
    n = len(ds)
    if n == 0:
        raise DataError(f"TFDS dataset {name} split {split} in {default_tfds_dir(data_dir)} is empty: "
                        f"rebuild it with `tfds build {name}`")
    images, labels = [], []
    # One record at a time: __getitems__ is broken under tfds.testing.mock_data.
    for i in range(n):
        record = ds[i]
        images.append(np.asarray(record["image"]))
        labels.append(int(record["label"]))
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise DataError(f"TFDS dataset {name} split {split} mixes image shapes {sorted(shapes)}: "
                        f"rebuild it with `tfds build {name}`")
    x = np.stack(images).astype(np.uint8, copy=False)
    if x.ndim == 4 and x.shape[-1] == 1:
        # Grayscale comes as [H, W, 1]; drop the channel so TFDS and IDX give the same [N, H, W].
        x = x[..., 0]
    y = np.asarray(labels, dtype=np.int64)
    bad = y[(y < 0) | (y > 255)]
    if bad.size:
        raise DataError(f"TFDS dataset {name} split {split} has label {int(bad[0])} outside 0..255: "
                        f"rebuild it with `tfds build {name}`")
    return x, y.astype(np.uint8)


def load_tfds(name: str, data_dir=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Loads (train_images, train_labels, test_images, test_labels) from a prepared TFDS dataset.

    Images are uint8, [N, 28, 28] for mnist/fashion_mnist and [N, 32, 32, 3] for cifar10; labels
    uint8 [N]. `data_dir` is the TFDS data directory (default: TFDS's own).
    """
    try:
        import tensorflow_datasets as tfds  # Slow to import (~0.5 s+): only when TFDS is asked for.
    except ImportError as e:
        raise DataError(f"tensorflow-datasets cannot be imported ({e}): `pip install "
                        f"tensorflow-datasets importlib_resources pillow`, or use --data_source=idx "
                        f"or cifar_tar") from None
    train_x, train_y = _read_split(tfds, name, "train", data_dir)
    test_x, test_y = _read_split(tfds, name, "test", data_dir)
    return train_x, train_y, test_x, test_y

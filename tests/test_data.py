"""Tests for quicknets_jax.data: IDX / CIFAR / TFDS sources, checks, splits, normalisation, sampling."""

import gzip
import io
import os
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quicknets_jax import data
from quicknets_jax.data import DataError, cifar, datasets, idx, sampling, tfds_source

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


def _make_idx_dir(directory, n_train=12, n_test=5, dotted=False, gz=True, seed=0):
  rng = np.random.default_rng(seed)
  arrays = (
    rng.integers(0, 256, (n_train, 4, 3), dtype=np.uint8),
    rng.integers(0, 10, n_train, dtype=np.uint8),
    rng.integers(0, 256, (n_test, 4, 3), dtype=np.uint8),
    rng.integers(0, 10, n_test, dtype=np.uint8),
  )
  for base, a in zip(idx.IDX_FILES, arrays):
    fname = base.replace("-idx", ".idx") if dotted else base
    idx.write_idx(os.path.join(directory, fname + (".gz" if gz else "")), a)
  return arrays


# --- IDX ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_idx_round_trip(tmp_path, suffix, dtype):
  a = (np.arange(2 * 3 * 5) % 251).astype(dtype).reshape(2, 3, 5)
  path = tmp_path / f"x-idx3-ubyte{suffix}"
  idx.write_idx(path, a)
  b = idx.read_idx(path)
  assert b.dtype == a.dtype and b.shape == a.shape
  np.testing.assert_array_equal(a, b)
  raw = gzip.decompress(path.read_bytes()) if suffix else path.read_bytes()
  assert raw[:4] == bytes([0, 0, idx._DTYPE_TO_CODE[np.dtype(dtype)], 3])


@pytest.mark.parametrize("dotted,gz", [(False, True), (True, False), (True, True)])
def test_load_idx_dir(tmp_path, dotted, gz):
  arrays = _make_idx_dir(tmp_path, dotted=dotted, gz=gz)
  loaded = idx.load_idx_dir(tmp_path)
  assert len(loaded) == 4
  for want, got in zip(arrays, loaded):
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(want, got)


def test_wrong_magic(tmp_path):
  path = tmp_path / "bad-idx1-ubyte"
  path.write_bytes(b"\x12\x34\x08\x01" + b"\x00\x00\x00\x02" + b"\x01\x02")
  with pytest.raises(DataError, match="magic") as e:
    idx.read_idx(path)
  assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_unknown_dtype_code(tmp_path):
  path = tmp_path / "bad-idx1-ubyte"
  path.write_bytes(b"\x00\x00\x07\x01" + b"\x00\x00\x00\x02" + b"\x01\x02")
  with pytest.raises(DataError, match="dtype code 0x07"):
    idx.read_idx(path)


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("delta", [-7, 3])
def test_truncated_or_extra_payload(tmp_path, suffix, delta):
  a = np.zeros((4, 5, 6), np.uint8)
  good = tmp_path / "good"
  idx.write_idx(good, a)
  raw = good.read_bytes()
  raw = raw[:delta] if delta < 0 else raw + b"\x00" * delta
  path = tmp_path / f"train-images-idx3-ubyte{suffix}"
  path.write_bytes(gzip.compress(raw) if suffix else raw)
  with pytest.raises(DataError) as e:
    idx.read_idx(path)
  msg = str(e.value)
  assert str(path) in msg and "120" in msg and str(120 + delta) in msg
  assert "re-download" in msg and "dataset-fashion-mnist" in msg
  assert ("truncated" if delta < 0 else "extra") in msg


def test_truncated_gzip(tmp_path):
  src = tmp_path / "src.gz"
  idx.write_idx(src, np.random.default_rng(0).integers(0, 256, (50, 28, 28), dtype=np.uint8))
  blob = src.read_bytes()
  path = tmp_path / "train-images-idx3-ubyte.gz"
  path.write_bytes(blob[: len(blob) // 2])
  with pytest.raises(DataError, match="re-download") as e:
    idx.read_idx(path)
  assert str(path) in str(e.value)
  path.write_bytes(b"\x1f\x8b\x08\x00garbage-not-deflate-data")
  with pytest.raises(DataError, match="gzip"):
    idx.read_idx(path)


def test_count_mismatch(tmp_path):
  _make_idx_dir(tmp_path, n_train=12)
  idx.write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(11, np.uint8))
  with pytest.raises(DataError) as e:
    idx.load_idx_dir(tmp_path)
  assert "12" in str(e.value) and "11" in str(e.value)


def test_missing_file(tmp_path):
  _make_idx_dir(tmp_path)
  os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
  with pytest.raises(DataError) as e:
    idx.load_idx_dir(tmp_path)
  msg = str(e.value)
  assert "t10k-labels-idx1-ubyte" in msg and str(tmp_path) in msg
  assert "train-images" not in msg.split(":")[0]  # only the missing one is reported as missing
  with pytest.raises(DataError, match="does not exist"):
    idx.load_idx_dir(tmp_path / "nope")


def test_swapped_files(tmp_path):
  _make_idx_dir(tmp_path)
  idx.write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros((12, 4, 3), np.uint8))
  with pytest.raises(DataError, match="1-D"):
    idx.load_idx_dir(tmp_path)


def test_label_out_of_range(tmp_path):
  _make_idx_dir(tmp_path)
  labels = np.zeros(12, np.uint8)
  labels[[2, 5]] = 17
  idx.write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
  with pytest.raises(DataError) as e:
    data.load_dataset("fashion_mnist", data_source="idx", data_dir=tmp_path)
  msg = str(e.value)
  assert "17" in msg and "2 value" in msg and "[0, 10)" in msg


# --- CIFAR tarball -----------------------------------------------------------------------------


def _cifar_arrays(n_train=20, n_test=6, seed=0):
  rng = np.random.default_rng(seed)
  return (
    rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
    rng.integers(0, 10, n_train, dtype=np.uint8),
    rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
    rng.integers(0, 10, n_test, dtype=np.uint8),
  )


def test_cifar_round_trip(tmp_path):
  arrays = _cifar_arrays()
  path = tmp_path / cifar.TARBALL
  cifar.write_cifar_tar(path, *arrays)
  with tarfile.open(path) as tar:
    names = set(tar.getnames())
  assert {f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)} <= names
  for source in (path, tmp_path):  # the tarball itself, or its directory
    loaded = cifar.load_cifar_tar(source)
    for want, got in zip(arrays, loaded):
      assert got.dtype == np.uint8
      np.testing.assert_array_equal(want, got)
  # The on-disk layout is channel-major, as in the official file.
  with tarfile.open(path) as tar:
    raw = tar.extractfile("cifar-10-batches-py/data_batch_1").read()
  batch = cifar._RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
  np.testing.assert_array_equal(batch[b"data"][0, :1024].reshape(32, 32), arrays[0][0, :, :, 0])
  ds = data.load_dataset("cifar10", data_source="cifar_tar", data_dir=tmp_path, val_fraction=0.25)
  assert ds.train.images.shape == (15, 32, 32, 3) and ds.val.images.shape == (5, 32, 32, 3)
  assert ds.test.images.shape == (6, 32, 32, 3) and ds.class_names[0] == "airplane"
  ds_auto = data.load_dataset("cifar10", data_dir=path, val_fraction=0.25)
  np.testing.assert_array_equal(ds.test.images, ds_auto.test.images)


def test_cifar_missing_batch(tmp_path):
  good = tmp_path / "good.tar.gz"
  cifar.write_cifar_tar(good, *_cifar_arrays())
  bad = tmp_path / "bad.tar.gz"
  with tarfile.open(good) as src, tarfile.open(bad, "w:gz") as dst:
    for m in src.getmembers():
      if not m.name.endswith("data_batch_3"):
        dst.addfile(m, src.extractfile(m))
  with pytest.raises(DataError, match="data_batch_3") as e:
    cifar.load_cifar_tar(bad)
  assert "data_batch_2" not in str(e.value)
  # An official-style tarball (no write_cifar_tar meta) needs all five training batches.
  with tarfile.open(good) as src, tarfile.open(bad, "w:gz") as dst:
    for m in src.getmembers():
      if not m.name.endswith(("data_batch_5", "batches.meta")):
        dst.addfile(m, src.extractfile(m))
  with pytest.raises(DataError, match="data_batch_5"):
    cifar.load_cifar_tar(bad)


def test_cifar_rejects_foreign_pickle(tmp_path):
  import pickle

  path = tmp_path / "evil.tar.gz"
  cifar.write_cifar_tar(path, *_cifar_arrays())
  evil = pickle.dumps(os.getcwd, protocol=2)  # references a non-numpy global
  out = tmp_path / "evil2.tar.gz"
  with tarfile.open(path) as src, tarfile.open(out, "w:gz") as dst:
    for m in src.getmembers():
      if m.name.endswith("test_batch"):
        m.size = len(evil)
        dst.addfile(m, io.BytesIO(evil))
      else:
        dst.addfile(m, src.extractfile(m))
  with pytest.raises(DataError, match="not allowed"):
    cifar.load_cifar_tar(out)


# --- TFDS (mock) -------------------------------------------------------------------------------


@pytest.mark.parametrize("name,shape", [("mnist", (28, 28)), ("fashion_mnist", (28, 28)), ("cifar10", (32, 32, 3))])
def test_tfds_mock(name, shape):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=6):
    train_x, train_y, test_x, test_y = tfds_source.load_tfds(name)
    ds = data.load_dataset(name, data_source="tfds", val_fraction=0.5)
  assert train_x.shape == (6,) + shape and test_x.shape == (6,) + shape
  assert train_x.dtype == np.uint8 and train_y.dtype == np.uint8 and test_y.shape == (6,)
  assert train_y.max() < 10
  channels = shape[2] if len(shape) == 3 else 1
  assert ds.train.images.shape == (3,) + shape[:2] + (channels,)
  assert ds.train.images.dtype == np.float32 and ds.num_classes == 10


def test_tfds_not_prepared(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(DataError) as e:
    tfds_source.load_tfds("fashion_mnist", data_dir=tmp_path)
  msg = str(e.value)
  assert str(tmp_path) in msg and "tensorflow-cpu" in msg and "tfds build fashion_mnist" in msg
  assert "--data_source=idx" in msg and "\n" not in msg


# --- splits, normalisation, arguments ----------------------------------------------------------


def test_split_validation():
  x = np.arange(60000)
  (tr_x, tr_y), (va_x, va_y) = data.split_validation(x, x * 2)
  assert len(tr_x) == 54000 and len(va_x) == 6000
  np.testing.assert_array_equal(va_x, np.arange(54000, 60000))
  np.testing.assert_array_equal(va_y, 2 * va_x)
  assert len(data.split_validation(x[:10], x[:10], 0.25)[1].images) == 2  # round(2.5) -> 2
  for bad in (0.0, 1.0, -0.1, 1.5):
    with pytest.raises(DataError, match="val_fraction"):
      data.split_validation(x, x, bad)
  with pytest.raises(DataError, match="at least 1"):
    data.split_validation(x[:3], x[:3], 0.01)


def test_normalise():
  rng = np.random.default_rng(0)
  train = rng.integers(0, 256, (500, 8, 8, 3), dtype=np.uint8)
  train[..., 1] //= 4  # channels with different statistics
  other = rng.integers(0, 256, (7, 8, 8, 3), dtype=np.uint8)
  (tn, on), (mean, std) = data.normalise(train, other, chunk=64)
  assert tn.dtype == np.float32 and on.shape == other.shape
  np.testing.assert_allclose(tn.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
  np.testing.assert_allclose(tn.std(axis=(0, 1, 2)), 1.0, atol=1e-4)
  np.testing.assert_allclose(mean, (train / 255.0).mean(axis=(0, 1, 2)), rtol=1e-5)
  np.testing.assert_allclose(on, (other / 255.0 - mean) / std, rtol=1e-4, atol=1e-5)
  (g,), (gm, gs) = data.normalise(train[..., 0])  # grayscale gets a channel axis
  assert g.shape == (500, 8, 8, 1) and gm.shape == (1,)


def test_unknown_name_and_source():
  with pytest.raises(DataError, match="fashion_mnist"):
    data.load_arrays("imagenet")
  with pytest.raises(DataError, match="cifar_tar"):
    data.load_arrays("mnist", data_source="http")


def test_auto_nothing_found(tmp_path, monkeypatch):
  pytest.importorskip("tensorflow_datasets")
  monkeypatch.setitem(data.DEFAULT_LOCAL_DIRS, "fashion_mnist", str(tmp_path / "missing"))
  monkeypatch.setattr(datasets, "TFDS_DATA_DIR", str(tmp_path / "tfds"))
  with pytest.raises(DataError) as e:
    data.load_arrays("fashion_mnist")
  msg = str(e.value)
  assert str(tmp_path / "missing") in msg
  assert "apt-get install dataset-fashion-mnist" in msg
  assert "--data_dir" in msg and "--data_source=tfds" in msg and "tensorflow-cpu" in msg
  assert "\n" not in msg


def test_auto_uses_default_local_dir(tmp_path, monkeypatch):
  arrays = _make_idx_dir(tmp_path, n_train=20)
  monkeypatch.setitem(data.DEFAULT_LOCAL_DIRS, "fashion_mnist", str(tmp_path))
  loaded = data.load_arrays("fashion_mnist")
  np.testing.assert_array_equal(loaded[0], arrays[0])
  ds = data.load_dataset("fashion_mnist", max_train=10, max_test=3)
  assert ds.train.images.shape == (9, 4, 3, 1) and ds.val.labels.shape == (1,)
  assert ds.test.labels.shape == (3,) and ds.test.labels.dtype == np.int32
  assert "train 9, val 1, test 3" in ds.summary()
  # The validation split is the end of the (truncated) training split.
  np.testing.assert_array_equal(ds.val.labels, arrays[1][9:10])


@pytest.mark.skipif(not os.path.isdir(FASHION_DIR), reason="no local Fashion-MNIST")
def test_real_fashion_mnist():
  ds = data.load_dataset("fashion_mnist")
  assert ds.train.images.shape == (54000, 28, 28, 1)
  assert ds.val.images.shape == (6000, 28, 28, 1)
  assert ds.test.images.shape == (10000, 28, 28, 1)
  assert ds.num_classes == 10 and len(ds.class_names) == 10
  assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"
  assert abs(float(ds.train.images.mean())) < 1e-3 and abs(float(ds.train.images.std()) - 1) < 1e-3
  # Fashion-MNIST is balanced: 6,000 of each class in train, 1,000 in test.
  counts = np.bincount(np.concatenate([ds.train.labels, ds.val.labels]), minlength=10)
  assert counts.tolist() == [6000] * 10
  assert np.bincount(ds.test.labels, minlength=10).tolist() == [1000] * 10


# --- sampling ----------------------------------------------------------------------------------


def test_class_counts():
  counts = sampling.class_counts(jnp.array([0, 2, 2, 5]), 6)
  assert counts.dtype == jnp.int32
  assert counts.tolist() == [1, 0, 2, 0, 0, 1]


def test_draw_epoch_permutation():
  labels = jnp.array(np.r_[np.zeros(90), np.ones(10)].astype(np.int32))
  order = sampling.draw_epoch(jax.random.PRNGKey(0), labels, 10, False)
  assert order.dtype == jnp.int32 and order.shape == (100,)
  assert sorted(order.tolist()) == list(range(100))
  assert order.tolist() != list(range(100))


def test_draw_epoch_balanced():
  labels = jnp.array(np.r_[np.zeros(900), np.ones(100)].astype(np.int32))
  draw = jax.jit(sampling.draw_epoch, static_argnames=("num_classes", "balanced"))
  picks = []
  for seed in range(8):
    order = draw(jax.random.PRNGKey(seed), labels, num_classes=10, balanced=True)
    assert order.shape == (1000,) and order.dtype == jnp.int32
    assert int(order.min()) >= 0 and int(order.max()) < 1000
    picks.append(np.asarray(labels)[np.asarray(order)])
  freq = np.bincount(np.concatenate(picks), minlength=10) / 8000
  assert abs(freq[0] - 0.5) < 0.03 and abs(freq[1] - 0.5) < 0.03 and freq[2:].sum() == 0
  # Three classes present, very unequal: each still about a third.
  labels3 = jnp.array(np.r_[np.zeros(700), np.full(250, 4), np.full(50, 7)].astype(np.int32))
  order = sampling.draw_epoch(jax.random.PRNGKey(1), labels3, 10, True)
  freq3 = np.bincount(np.asarray(labels3)[np.asarray(order)], minlength=10)[[0, 4, 7]] / 1000
  assert np.all(np.abs(freq3 - 1 / 3) < 0.06)
  # Inside a caller's jit as well.
  inner = jax.jit(lambda k, y: sampling.draw_epoch(k, y, 10, True))
  assert inner(jax.random.PRNGKey(2), labels).shape == (1000,)


def test_stable_order_is_a_stable_argsort():
  rs = np.random.RandomState(0)
  for n in (0, 1, 2, 7, 256, 5000, 70000):
    keys = (rs.randint(0, 40, n) / 8).astype(np.float32)  # many equal keys
    keys[::5] = 2.0
    order = sampling.stable_order(keys)
    assert order.dtype == np.int32
    np.testing.assert_array_equal(order, np.argsort(keys, kind="stable"))
    if 0 < n <= 5000:
      np.testing.assert_array_equal(order, np.asarray(jnp.argsort(jnp.asarray(keys))))
  for bad in (np.array([0.5, -1.0], np.float32), np.array([0.5, np.nan], np.float32), np.arange(3.0)):
    with pytest.raises(ValueError, match="stable_order"):
      sampling.stable_order(bad)


def test_an_epoch_order_sorted_on_the_host_is_the_device_sort():
  """On CPU an epoch's shuffle is sorted by numpy: the order XLA's sort gives, padding included."""
  from quicknets_jax.training import trainer

  classes = jnp.asarray(np.arange(4096) % 10, jnp.int32)
  for num_valid in (1, 1000, 4096):
    draw = dict(num_classes=10, balanced=False, batch_size=64)
    key = jax.random.PRNGKey(num_valid)
    on_device, step_key = trainer._draw_on_device(key, classes, jnp.int32(num_valid), **draw, sort_on_host=False)
    order, host_step_key = trainer.draw_order(key, classes, jnp.int32(num_valid), **draw)
    assert order.shape == (4096 + 64,) and order.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(order), np.asarray(on_device))
    np.testing.assert_array_equal(jax.random.key_data(host_step_key), jax.random.key_data(step_key))
    assert sorted(np.asarray(order)[:num_valid].tolist()) == list(range(num_valid))


def test_labels_outside_the_class_count_are_refused_naming_the_split_row_and_value():
  from quicknets_jax.workflows.api import absent_classes, arrays_dataset

  x, y = np.zeros((20, 4), np.float32), np.arange(20) % 4
  stray = y.copy()
  stray[3] = 99  # one test label of 99 would make the task 100 classes
  with pytest.raises(ValueError, match=r"test label 99 \(row 3\) is outside \[0, 4\) \(4 classes, from the largest"):
    arrays_dataset((x, y), (x, stray), 0.25)
  with pytest.raises(ValueError, match=r"train label 3 \(row 3\) is outside \[0, 3\) \(num_classes=3\).*num_classes=C"):
    arrays_dataset((x, y), (x, y), 0.25, num_classes=3)
  declared = arrays_dataset((x, y), (x, y), 0.25, num_classes=6)
  assert declared.num_classes == 6 and absent_classes(declared) == [4, 5]
  from_one = arrays_dataset((x, y + 1), (x, y + 1), 0.25)  # labels 1 .. 4: class 0 is never seen
  assert from_one.num_classes == 5 and absent_classes(from_one) == [0]


def test_train_warns_of_a_class_without_training_samples(monkeypatch, tmp_path):
  import own_networks

  from quicknets_jax.workflows import api

  monkeypatch.setattr(api, "train_and_evaluate", lambda *args, **kwargs: {})
  x, y = np.zeros((20, 8, 8, 1), np.float32), np.arange(20) % 4 + 1
  lines = []
  api.train(own_networks.linen_cnn, train=(x, y), test=(x, y), workdir=str(tmp_path), log=lines.append)
  assert lines == [
    "warning: 1 of 5 classes have no training sample (e.g. class 0): the exits can never answer them; labels "
    "1 .. C train as C + 1 classes, so start them at 0"
  ]


def test_nan_or_inf_among_the_images_is_refused_naming_the_split_and_row():
  from quicknets_jax.workflows.api import arrays_dataset

  x, y = np.zeros((20, 4), np.float32), np.arange(20) % 4
  bad = x.copy()
  bad[5, 2], bad[9, 0] = np.nan, np.inf
  with pytest.raises(ValueError, match=r"train images hold NaN or inf values \(first in row 5, 2 rows in all\)"):
    arrays_dataset((bad, y), (x, y), 0.25)

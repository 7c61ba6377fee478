"""The streamed input path (`--input=stream`): record directories written from IDX files and the CIFAR-10
tarball, TFDS `data_source` reads, views that read nothing until asked, the memory budget, and fits and
whole experiments that give exactly the in-memory path's results."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.fault_injection import write_tiny_idx
from quicknets_jax.data import datasets, records, streaming
from quicknets_jax.data.cifar import write_cifar_tar
from quicknets_jax.data.errors import DataError
from quicknets_jax.data.split import Split
from quicknets_jax.models.registry import build_model
from quicknets_jax.training import losses
from quicknets_jax.training.schedule import FitConfig
from quicknets_jax.training.trainer import FitData, Objective, fit
from quicknets_jax.workflows.experiment import train_and_evaluate
from quicknets_jax.workflows.experiment_config import ExperimentConfig
from scripts import compare_results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("idx"))
  write_tiny_idx(directory, n_train=600, n_test=200, noise=40.0)
  return directory


def test_records_hold_the_pixels_and_labels_of_idx_files_and_the_cifar_tarball(tmp_path, idx_dir):
  meta = datasets.write_dataset_records("mnist", str(tmp_path / "mnist"), "idx", idx_dir)
  assert meta["counts"] == {"train": 600, "test": 200} and meta["image_shape"] == [28, 28, 1]
  train_x, train_y, test_x, test_y = datasets.load_arrays("mnist", "idx", idx_dir)
  train = records.RecordImages(str(tmp_path / "mnist"), "train")
  rows = np.array([599, 0, 17, 17])
  pixels, labels = train.read(rows)
  np.testing.assert_array_equal(pixels[..., 0], train_x[rows])
  np.testing.assert_array_equal(labels, train_y[rows])
  np.testing.assert_array_equal(records.RecordImages(str(tmp_path / "mnist"), "test").labels(), test_y)

  rng = np.random.default_rng(0)
  cifar = [rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8) for n in (50, 20)]
  cifar_labels = [rng.integers(0, 10, n) for n in (50, 20)]
  tar = tmp_path / "cifar-10-python.tar.gz"
  write_cifar_tar(str(tar), cifar[0], cifar_labels[0], cifar[1], cifar_labels[1])
  datasets.write_dataset_records("cifar10", str(tmp_path / "cifar"), "cifar_tar", str(tmp_path))
  test = records.RecordImages(str(tmp_path / "cifar"), "test")
  np.testing.assert_array_equal(test.read(np.arange(20))[0], cifar[1])
  np.testing.assert_array_equal(test.labels(), cifar_labels[1])


def test_a_streamed_dataset_equals_the_in_memory_one_bit_for_bit(tmp_path, idx_dir):
  memory = datasets.DataConfig(dataset="mnist", data_dir=idx_dir, max_train=500).load()
  streamed = datasets.DataConfig(
    dataset="mnist", data_dir=idx_dir, max_train=500, input="stream", records_dir=str(tmp_path / "r")
  ).load(log=lambda m: None)
  assert streaming.is_streamed(streamed.train.images) and streamed.train.images.shape == memory.train.images.shape
  np.testing.assert_array_equal(streamed.mean, memory.mean)
  np.testing.assert_array_equal(streamed.std, memory.std)
  for name in ("train", "val", "test"):
    np.testing.assert_array_equal(np.asarray(getattr(streamed, name).images), getattr(memory, name).images)
    np.testing.assert_array_equal(getattr(streamed, name).labels, getattr(memory, name).labels)
  rows = np.array([3, 1, 400])
  view = streaming.take(streamed.train.images, rows)
  assert streaming.is_streamed(view)  # taking rows reads nothing
  np.testing.assert_array_equal(np.asarray(view), memory.train.images[rows])
  batches = list(streamed.test.images.batches(64))
  assert [len(b) for b in batches] == [64, 64, 64, 8]
  np.testing.assert_array_equal(np.concatenate(batches), memory.test.images)


def test_grain_worker_processes_read_the_same_batches(tmp_path, idx_dir):
  directory = str(tmp_path / "r")
  datasets.write_dataset_records("mnist", directory, "idx", idx_dir)
  source = records.RecordImages(directory, "train")
  options = streaming.StreamOptions(workers=1)
  view = streaming.StreamedImages(source, np.arange(600), np.zeros(1), np.ones(1), options)
  order = [np.random.default_rng(k).permutation(600)[:50] for k in range(4)]
  got = list(view.stream(order))
  want = [
    streaming.standardise(source.read(rows)[0], np.zeros(1, np.float32), np.ones(1, np.float32)) for rows in order
  ]
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g, w)


def test_the_memory_budget_bounds_what_is_read_and_names_the_flag(tmp_path, idx_dir):
  config = dict(dataset="mnist", data_dir=idx_dir, input="stream", records_dir=str(tmp_path / "r"))
  streamed = datasets.DataConfig(**config, memory_budget_mb=1.0).load(log=lambda m: None)
  with pytest.raises(DataError, match="memory_budget_mb=1"):
    np.asarray(streamed.train.images)  # 540 × 3 KiB = 1.6 MiB
  with pytest.raises(DataError, match="one batch .* --memory_budget_mb=1"):
    next(streamed.train.images.batches(400))
  assert len(np.asarray(streamed.test.images[:100])) == 100  # small reads are fine
  read_ahead, device_ahead = streaming.StreamOptions(memory_budget_mb=10).plan(2**20)
  assert read_ahead + device_ahead == 10 and device_ahead == 2
  with pytest.raises(DataError, match="holds mnist, not fashion_mnist"):
    datasets.load_streamed_dataset(datasets.DataConfig(dataset="fashion_mnist", records_dir=str(tmp_path / "r")))
  with pytest.raises(DataError, match="write_records"):
    records.read_meta(str(tmp_path / "nothing"))


def _fit_both_ways(tmp_path, model_name, shape, **model_args):
  """The same fit on in-memory arrays and on streamed views of the same images."""
  rng = np.random.default_rng(0)
  n, n_val = 300, 100
  pixels = rng.integers(0, 256, (n + n_val, *shape), dtype=np.uint8)
  labels = (pixels.reshape(n + n_val, -1).mean(1) > 127.5).astype(np.int32) + 2 * (pixels[:, 0, 0, 0] > 127)
  records.write_records(str(tmp_path), "mnist", pixels, labels, pixels[:10], labels[:10], [str(i) for i in range(10)])
  source = records.RecordImages(str(tmp_path), "train")
  splits = streaming.streamed_splits(
    source, records.RecordImages(str(tmp_path), "test"), 0.25, None, None, streaming.StreamOptions()
  )
  model = build_model(model_name, shape, 10, **model_args)
  params = jax.tree.map(lambda v: v, [v["params"] for v in model.init(jax.random.PRNGKey(0))])
  state = [{k: v for k, v in b.items() if k != "params"} for b in model.init(jax.random.PRNGKey(0))]
  objective = Objective(losses.EndToEndLoss(model))
  config = FitConfig(max_epochs=3, batch_size=64, eval_batch_size=64)
  results = []
  for images, val_images in (
    (np.asarray(splits.train.images), np.asarray(splits.val.images)),
    (splits.train.images, splits.val.images),
  ):
    data = FitData.whole(
      Split(streaming.device_array(images), jnp.asarray(splits.train.labels)),
      Split(streaming.device_array(val_images), jnp.asarray(splits.val.labels)),
      10,
    )
    results.append(fit(objective, params, state, data, config, jax.random.PRNGKey(1)))
  return results


@pytest.mark.parametrize(
  "model_name, shape, model_args",
  [
    ("mlp", (8, 8, 1), dict(width=16)),  # the in-memory epoch is one jit; the streamed one steps from the host
    ("vgg", (8, 8, 1), dict(cfg="4,M,8", classifier_width=8)),  # both step from the host
  ],
)
def test_a_streamed_fit_trains_as_the_in_memory_fit(tmp_path, model_name, shape, model_args):
  memory, streamed = _fit_both_ways(tmp_path, model_name, shape, **model_args)
  drop = lambda h: [{k: v for k, v in r.items() if "seconds" not in k} for r in h]
  assert drop(memory.history) == drop(streamed.history)  # losses and accuracies, float for float
  for a, b in zip(jax.tree.leaves(memory.best_params), jax.tree.leaves(streamed.best_params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow  # two whole runs
def test_a_streamed_experiment_writes_the_in_memory_results_json(tmp_path, idx_dir):
  base = ExperimentConfig().replace(
    dataset="mnist", data_dir=idx_dir, width=16, seeds=(0,), max_epochs=3, batch_size=64, eval_batch_size=128
  )
  train_and_evaluate(base, str(tmp_path / "memory"), log=lambda m: None)
  streamed = base.replace(input="stream", records_dir=str(tmp_path / "records"), memory_budget_mb=8.0)
  train_and_evaluate(streamed, str(tmp_path / "stream"), log=lambda m: None)
  before, after = (json.loads((tmp_path / w / "results.json").read_text()) for w in ("memory", "stream"))
  differences, _ = compare_results.compare(before, after)
  # only the settings that chose the input path differ
  assert sorted(d.split(":")[0] for d in differences) == [
    "/config/input",
    "/config/memory_budget_mb",
    "/config/records_dir",
  ], differences
  assert after["quicknet"]["trained_blocks"] >= 2


def test_mnist_streams_from_a_tfds_data_source(tmp_path):
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=120):
    streamed = datasets.load_streamed_dataset(
      datasets.DataConfig(dataset="mnist", data_source="tfds"), log=lambda m: None
    )
    memory = datasets.load_dataset("mnist", data_source="tfds")
    assert "streamed" in streamed.source
    np.testing.assert_array_equal(np.asarray(streamed.val.images), memory.val.images)
    np.testing.assert_array_equal(streamed.train.labels, memory.train.labels)


def test_imagenet_streams_resized_from_a_tfds_data_source():
  import tensorflow_datasets as tfds

  args = dict(image_size=16, max_train=40, max_test=10)
  with tfds.testing.mock_data(num_examples=60):
    config = datasets.DataConfig(dataset="imagenet2012", data_source="tfds", **args)
    streamed = datasets.load_streamed_dataset(config, log=lambda m: None)
    memory = datasets.load_dataset("imagenet2012", data_source="tfds", **args)
  assert streamed.train.images.shape == memory.train.images.shape == (36, 16, 16, 3)
  np.testing.assert_array_equal(np.asarray(streamed.test.images), memory.test.images)
  np.testing.assert_array_equal(streamed.val.labels, memory.val.labels)


def test_write_records_cli_writes_a_directory_and_fails_in_one_line(tmp_path, idx_dir):
  run = lambda *a: subprocess.run(
    [sys.executable, "-m", "experiments.write_records", *a], cwd=ROOT, capture_output=True, text=True, timeout=120
  )
  ok = run("--dataset=mnist", f"--data_dir={idx_dir}", f"--out={tmp_path / 'r'}")
  assert ok.returncode == 0, ok.stderr[-1500:]
  assert "wrote mnist (train 600, test 200 records)" in ok.stderr and records.has_records(str(tmp_path / "r"))
  bad = run("--dataset=mnist", f"--data_dir={tmp_path / 'missing'}", f"--out={tmp_path / 'r2'}")
  assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith("error: ")


def test_the_memory_benchmark_child_trains_one_streamed_epoch(tmp_path, idx_dir):
  from benchmarks import stream_memory

  datasets.write_dataset_records("mnist", str(tmp_path / "r"), "idx", idx_dir)
  streamed = stream_memory.child("stream", str(tmp_path / "r"), 8.0, 64)
  assert streamed["images"] == 540 and streamed["peak_rss_mb"] > 0 and 0 <= streamed["val_accuracy"] <= 1
  with pytest.raises(DataError, match="--memory_budget_mb=0.01"):  # one 64-image batch is 0.2 MiB
    stream_memory.child("stream", str(tmp_path / "r"), 0.01, 64)


def test_take_of_every_row_in_order_is_the_array_itself_and_any_other_rows_a_copy():
  images = np.arange(24, dtype=np.float32).reshape(6, 2, 2, 1)
  assert streaming.take(images, np.arange(6, dtype=np.int32)) is images  # a first block's working set
  picked = streaming.take(images, np.array([4, 1], np.int32))
  np.testing.assert_array_equal(picked, images[[4, 1]])
  picked[0] = -1  # a copy: the split is untouched
  assert images.min() == 0
  np.testing.assert_array_equal(streaming.take(images, np.array([0, 1, 2, 3, 5, 4])), images[[0, 1, 2, 3, 5, 4]])
  assert streaming.take(images, np.arange(5)).shape == (5, 2, 2, 1)

"""Using a trained workdir: images in, thresholds for a target, predictions out, an exported cascade.

The workdir is the session's small QuickNet on the real Fashion-MNIST (`conftest.fashion_mnist_run`: first
6,000 training images, 2 epochs per block); the exported cascade must decide exactly like the in-process one on 1,000 real test
images, run by its loader in a process that never imports quicknets_jax.
"""

import csv
import json
import os
import shutil
import subprocess
import sys

import fresh_process_checks
import jax
import numpy as np
import pytest
from PIL import Image

from quicknets_jax import models
from quicknets_jax.algorithms.cascade import cascade_predict
from quicknets_jax.core import exits
from quicknets_jax.data.errors import DataError
from quicknets_jax.data.idx import read_idx, write_idx
from quicknets_jax.data.images import check_image_shape, read_images
from quicknets_jax.data.normalisation import Normalisation
from quicknets_jax.workflows import cascade_loader as loader
from quicknets_jax.workflows import predict as predict_lib
from quicknets_jax.workflows.export import export_cascade, export_trained
from quicknets_jax.workflows.trained import TrainedRunError, load_trained

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
real_data = pytest.mark.skipif(not os.path.isdir(FASHION_DIR), reason="apt-get install dataset-fashion-mnist")


def _test_pixels(n):
  return read_idx(os.path.join(FASHION_DIR, "t10k-images-idx3-ubyte.gz"))[:n, :, :, None]


@pytest.fixture
def workdir(fashion_mnist_run):
  """The session's finished 3-block MLP QuickNet on real Fashion-MNIST (`conftest.fashion_mnist_run`)."""
  return fashion_mnist_run[0]


# --- thresholds for a target --------------------------------------------------------------------------


def _toy_exits():
  """Two exits over 4 samples. Exit 0 is sure of samples 0 (right) and 1 (wrong) and unsure and wrong on 2
  and 3 (whose commitment at exit 0 is negative); exit 1 is right on all, surest on sample 1. So: a low
  threshold costs 1.5 FLOPs at accuracy 0.5, a middle one 2 at 0.75, a high one 3 at 1.0."""
  sure, unsure = [0.97, 0.01, 0.01, 0.01], [0.1, 0.4, 0.3, 0.2]
  probs = np.asarray([[sure, sure, unsure, unsure], [sure, [0.005, 0.985, 0.005, 0.005], sure, sure]], np.float32)
  commits = np.asarray([[1, 1, 1, -1], [1, 1, 1, 1]], np.float32)
  labels = np.asarray([0, 1, 0, 0])
  return probs, commits, labels, np.asarray([1.0, 3.0])


def test_threshold_for_a_compute_budget_accuracy_or_early_exit_share():
  probs, commits, labels, costs = _toy_exits()
  budget = exits.threshold_for_target(probs, commits, labels, costs, max_flops=2.0)
  assert (budget.accuracy, budget.inference_flops, budget.early_exit_fraction) == (0.75, 2.0, 0.5)
  accurate = exits.threshold_for_target(probs, commits, labels, costs, min_accuracy=0.9)
  assert (accurate.accuracy, accurate.inference_flops, accurate.early_exit_fraction) == (1.0, 3.0, 0.0)
  share = exits.threshold_for_target(probs, commits, labels, costs, min_early_exit=0.5)
  assert share.threshold == budget.threshold  # the most accurate of those letting half leave early
  cheap = exits.threshold_for_target(probs, commits, labels, costs, min_early_exit=0.75)
  assert (cheap.accuracy, cheap.inference_flops) == (0.5, 1.5)
  # each agrees with the vectorized evaluator at the threshold it chose
  for point in (budget, accurate, cheap):
    accuracy, cost, _ = exits.evaluate_rule(probs, commits, labels, point.threshold, costs)
    assert (float(accuracy), float(cost)) == (point.accuracy, point.inference_flops)


@pytest.mark.parametrize(
  "targets,phrase",
  [
    (dict(max_flops=1.0), "the cheapest threshold costs 1.5e-06 MFLOPs"),
    (dict(min_early_exit=0.9), "at most 75.0% leave early"),
    (dict(min_accuracy=1.5), "a fraction in [0, 1]"),
    (dict(max_flops=2.0, min_accuracy=0.5), "exactly one target"),
    ({}, "exactly one target"),
  ],
)
def test_a_target_no_threshold_reaches_is_refused_naming_what_is_reachable(targets, phrase):
  probs, commits, labels, costs = _toy_exits()
  with pytest.raises(ValueError, match=phrase.replace("[", r"\[").replace("]", r"\]")):
    exits.threshold_for_target(probs, commits, labels, costs, **targets)


# --- reading images ------------------------------------------------------------------------------------


def test_images_from_idx_npy_and_image_folders(tmp_path):
  pixels = np.random.default_rng(0).integers(0, 256, (5, 8, 8), dtype=np.uint8)
  write_idx(str(tmp_path / "images-idx3-ubyte"), pixels)
  np.save(tmp_path / "images.npy", pixels)
  np.save(tmp_path / "floats.npy", pixels.astype(np.float32))
  folder = tmp_path / "pngs"
  folder.mkdir()
  for i, p in enumerate(pixels):
    Image.fromarray(p).save(folder / f"img_{i}.png")
  (folder / "notes.txt").write_text("not an image")
  for path in ("images-idx3-ubyte", "images.npy", "floats.npy", "pngs"):
    images, names = read_images(str(tmp_path / path))
    assert images.dtype == np.uint8 and images.shape == (5, 8, 8, 1)
    np.testing.assert_array_equal(images[..., 0], pixels)
  assert read_images(str(folder))[1] == [f"img_{i}.png" for i in range(5)]
  check_image_shape(images, (8, 8, 1), "pngs")  # accepted


def test_tabular_rows_are_read_as_they_are_for_a_model_of_rows(tmp_path):
  rows = np.linspace(-3, 3, 12, dtype=np.float64).reshape(4, 3)  # a run trained on [N, 3] arrays
  np.save(tmp_path / "rows.npy", rows)
  got, names = read_images(str(tmp_path / "rows.npy"), pixels=False, shape=(3,))
  assert got.dtype == np.float32 and got.shape == (4, 3) and names == ["0", "1", "2", "3"]
  np.testing.assert_array_equal(got, rows.astype(np.float32))
  check_image_shape(got, (3,), "rows.npy")  # accepted
  with pytest.raises(DataError, match=r"shape \(4, 3\): the model reads rows of 5 features, \[N, 5\]"):
    read_images(str(tmp_path / "rows.npy"), pixels=False, shape=(5,))


@pytest.mark.parametrize(
  "make,phrase",
  [
    (lambda d: np.save(d / "x.npy", np.full((2, 8, 8), 0.5, np.float32) - 1), "not normalised ones"),
    (lambda d: write_idx(str(d / "labels-idx1-ubyte"), np.zeros(4, np.uint8)), "an IDX label file"),
    (lambda d: (d / "garbage").mkdir() or (d / "garbage" / "a.png").write_bytes(b"not a png"), "cannot read image"),
    (lambda d: (d / "empty").mkdir(), "holds no PNG/JPG/JPEG files"),
    (lambda d: None, "does not exist"),
  ],
)
def test_unreadable_images_are_refused_with_the_fix(tmp_path, make, phrase):
  make(tmp_path)
  names = [n for n in os.listdir(tmp_path)] or ["missing.npy"]
  with pytest.raises(DataError, match=phrase):
    read_images(str(tmp_path / names[0]))


def test_mixed_sizes_and_wrong_shapes_are_refused(tmp_path):
  folder = tmp_path / "mixed"
  folder.mkdir()
  Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "a.png")
  Image.fromarray(np.zeros((9, 8), np.uint8)).save(folder / "b.png")
  with pytest.raises(DataError, match="give images of one size"):
    read_images(str(folder))
  rgb = np.zeros((2, 28, 28, 3), np.uint8)
  with pytest.raises(DataError, match="3 channel.*reads 1: convert them to grayscale"):
    check_image_shape(rgb, (28, 28, 1), "x")
  with pytest.raises(DataError, match="resize them to 28x28"):
    check_image_shape(np.zeros((2, 32, 32, 1), np.uint8), (28, 28, 1), "x")


# --- a trained workdir ------------------------------------------------------------------------------


@real_data
def test_predictions_from_a_workdir_equal_the_vectorized_rule(workdir):
  trained = load_trained(workdir)
  assert trained.num_blocks == 3 and trained.class_names[0] == "T-shirt/top"
  with open(os.path.join(workdir, "seed_0", "quicknet.json")) as f:
    assert trained.threshold() == json.load(f)["exit_threshold"]  # the run's own
  pixels = _test_pixels(700)
  result = trained.predict(pixels, trained.threshold(), batch_size=128, chunk=300)
  probs, commits = trained.exit_outputs(trained.normalise(pixels))
  want = exits.select_exits(probs, commits, trained.threshold())
  np.testing.assert_array_equal(result.prediction, np.asarray(want.prediction))
  np.testing.assert_array_equal(result.exit_index, np.asarray(want.exit_index))
  rows = predict_lib.prediction_rows(result, [str(i) for i in range(700)], trained.class_names)
  assert rows[0].keys() == set(predict_lib.COLUMNS)
  assert rows[0]["class_name"] == trained.class_names[rows[0]["class"]]
  # the normalisation is the run's: the training split's statistics, recorded in data.json
  dataset = trained.load_dataset()
  np.testing.assert_allclose(trained.normalise(pixels[:10]), dataset.test.images[:10], atol=1e-5)


@real_data
def test_a_target_is_met_on_validation_and_reported_on_test(workdir):
  trained = load_trained(workdir)
  lines = []
  budget = (trained.cascade_costs()[0] + trained.cascade_costs()[-1]) / 2  # between exit 0's and the whole's
  threshold, info = predict_lib.operating_threshold(trained, target_mflops=budget / 1e6, log=lines.append)
  assert info["validation"]["inference_flops"] <= budget and info["validation"]["threshold"] == threshold
  assert "expected on the 2000 test images" in lines[0]  # the run keeps 2,000 test images
  _, info = predict_lib.operating_threshold(trained, target_exit_fraction=0.5, log=lines.append)
  assert info["validation"]["early_exit_fraction"] >= 0.5
  with pytest.raises(ValueError, match="no threshold reaches"):
    predict_lib.operating_threshold(trained, target_mflops=0.01, log=lines.append)
  # with a confidence: a threshold whose validation accuracy bounds the target from above at 90 %
  val = len(trained.load_dataset().val.labels)
  threshold, info = predict_lib.operating_threshold(trained, target_accuracy=0.6, confidence=0.9, log=lines.append)
  correct = round(info["validation"]["accuracy"] * val)
  assert exits.accuracy_lower_bound(correct, val, 0.9) >= 0.6 and "with probability 0.90" in lines[-1]
  with pytest.raises(ValueError, match=r"at least 0\.9990 with confidence 0\.90 on \d+ validation samples"):
    predict_lib.operating_threshold(trained, target_accuracy=0.999, confidence=0.9, log=lines.append)
  with pytest.raises(ValueError, match="a confidence goes with target_accuracy"):
    predict_lib.operating_threshold(trained, target_mflops=budget / 1e6, confidence=0.9, log=lines.append)


@real_data
def test_a_workdir_still_training_serves_the_blocks_frozen_so_far(workdir, tmp_path):
  running = tmp_path / "running"
  shutil.copytree(workdir, running)
  seed_dir = running / "seed_0"
  for name in ("quicknet.json", "quicknet_checkpoints/1", "quicknet_checkpoints/2"):
    target = seed_dir / name
    shutil.rmtree(target) if target.is_dir() else target.unlink()
  trained = load_trained(str(running))
  assert trained.num_blocks == 1 and trained.run_threshold is None  # chosen on validation instead
  threshold, info = predict_lib.operating_threshold(trained, log=lambda m: None)
  assert info["source"] == "chosen on validation" and 0.0 <= threshold <= 1.0
  result = trained.predict(_test_pixels(50), threshold)
  assert set(result.exit_index) == {0}
  with pytest.raises(TrainedRunError, match="choose 1 to 1 blocks"):
    load_trained(str(running), blocks=3)
  shutil.rmtree(seed_dir / "quicknet_checkpoints")
  with pytest.raises(TrainedRunError, match="no frozen block yet"):
    load_trained(str(running))
  with pytest.raises(TrainedRunError, match="holds no run"):
    load_trained(str(tmp_path / "nowhere"))


@real_data
def test_the_predict_command_writes_csv_and_refuses_bad_input_in_one_line(workdir, tmp_path):
  np.save(tmp_path / "images.npy", _test_pixels(40)[..., 0])
  np.save(tmp_path / "rgb.npy", np.zeros((3, 28, 28, 3), np.uint8))
  env = {**os.environ, "PYTHONPATH": ROOT}

  def predict(*args):  # started at once, waited for below: the four runs share the two cores
    return subprocess.Popen(
      [sys.executable, "-m", "experiments.predict", f"--workdir={workdir}", *args],
      cwd=ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )

  written = predict(f"--images={tmp_path / 'images.npy'}", f"--out={tmp_path / 'out.csv'}")
  refused = [
    (predict(*args), phrase)
    for args, phrase in [
      ((f"--images={tmp_path / 'rgb.npy'}",), "3 channel(s) but the model reads 1"),
      ((f"--images={tmp_path / 'images.npy'}", "--blocks=5"), "choose 1 to 3 blocks"),
      ((f"--images={tmp_path / 'images.npy'}", "--target_mflops=0.001"), "no threshold reaches"),
    ]
  ]
  _, err = written.communicate(timeout=300)
  assert written.returncode == 0, err
  with open(tmp_path / "out.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 40 and set(rows[0]) == set(predict_lib.COLUMNS)
  assert "40 images; leaving at exits 0..2" in err
  for proc, phrase in refused:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert phrase in err.strip().splitlines()[-1], err


# --- the exported cascade ------------------------------------------------------------------------------


# run by its path from tmp_path (not with -m from the root): nothing of the repository but the loader is imported
LOADER_CHECK = os.path.join(ROOT, "tests", "exported_cascade_check.py")


@real_data
def test_the_exported_cascade_decides_like_the_in_process_one_with_jax_alone(workdir, tmp_path):
  trained = load_trained(workdir)
  out = tmp_path / "exported"
  export_trained(trained, str(out), trained.threshold())
  assert sorted(os.listdir(out)) == ["block_0.jax", "block_1.jax", "block_2.jax", "cascade_loader.py", "manifest.json"]
  pixels = _test_pixels(1000)
  np.save(tmp_path / "pixels.npy", pixels)
  want = cascade_predict(trained.model, trained.variables, trained.normalise(pixels), trained.threshold())
  for batch_size in (1000, 64):
    subprocess.run(
      [
        sys.executable,
        LOADER_CHECK,
        str(out),
        str(tmp_path / "pixels.npy"),
        str(tmp_path / "a.npz"),
        str(batch_size),
      ],
      cwd=str(tmp_path),
      env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
      check=True,
      timeout=300,
    )
    got = np.load(tmp_path / "a.npz")
    np.testing.assert_array_equal(got["class"], want.prediction)
    np.testing.assert_array_equal(got["exit"], want.exit_index)
  # a damaged export is one error naming the file, never a cascade that answers wrong
  flipped = bytearray((out / "block_1.jax").read_bytes())
  flipped[len(flipped) // 2] ^= 0x10
  (out / "block_1.jax").write_bytes(bytes(flipped))
  with pytest.raises(ValueError, match=r"block_1\.jax is damaged \(it does not match its sha256"):
    loader.load(str(out))
  manifest = json.loads((out / "manifest.json").read_text())
  for block in manifest["blocks"]:
    block.pop("sha256")  # an export without checksums: a cut-off file is still named
  (out / "manifest.json").write_text(json.dumps(manifest))
  (out / "block_1.jax").write_bytes(bytes(flipped[:100]))
  with pytest.raises(ValueError, match=r"block_1\.jax is damaged \(\w+: it is not a whole exported block"):
    loader.load(str(out))
    np.testing.assert_array_equal(got["qualified"], want.qualified)
    np.testing.assert_array_equal(got["blocks_run"], want.blocks_run)
    np.testing.assert_allclose(got["confidence"], want.confidence, atol=1e-5)
  assert len(set(want.exit_index)) > 1  # the cascade really exits early on real images


@pytest.mark.parametrize("num_blocks", [1, 3])
def test_an_exported_conv_cascade_runs_any_batch_size(tmp_path, num_blocks):
  model = models.vgg((8, 8, 1), 3, width=64, num_blocks=3, cfg="4,M,8,8", classifier_width=8)
  variables = model.init(jax.random.PRNGKey(0))[:num_blocks]
  for v in variables:  # spread the confidences so that every exit is used
    head = v["params"]["exit_head"]["out"]
    head["kernel"] = head["kernel"] * 30.0
  normalisation = Normalisation.of([0.5], [0.25])
  export_cascade(model, variables, 0.4, normalisation, str(tmp_path), class_names=["a", "b", "c"])
  cascade = loader.load(str(tmp_path))
  pixels = np.random.default_rng(0).integers(0, 256, (37, 8, 8, 1), dtype=np.uint8)
  want = cascade_predict(model, variables, normalisation.apply(pixels), 0.4)
  for batch_size in (1, 7, 64):
    got = cascade.predict(pixels, batch_size=batch_size)
    np.testing.assert_array_equal(got["class"], want.prediction)
    np.testing.assert_array_equal(got["exit"], want.exit_index)
  with pytest.raises(ValueError, match=r"the cascade reads \(8, 8, 1\)"):
    cascade.predict(np.zeros((2, 9, 9, 1), np.uint8))


def test_padded_sizes_are_few():
  sizes = {loader.padded_size(n) for n in range(1, 4097)}
  assert all(loader.padded_size(n) >= n for n in range(1, 4097))
  assert all(loader.padded_size(n) <= 1.25 * n for n in range(17, 4097))
  assert len(sizes) <= 16 + 4 * 9


@pytest.mark.parametrize("signal_name,status,what", [("SIGTERM", 143, "SIGTERM"), ("SIGINT", 130, "Ctrl-C")])
def test_an_interrupted_predict_is_one_line_and_keeps_the_previous_output(workdir, tmp_path, signal_name, status, what):
  np.save(tmp_path / "pixels.npy", _test_pixels(10))
  out = tmp_path / "answers.jsonl"
  out.write_text("the previous answers\n")
  proc = fresh_process_checks.run("interrupted_predict", signal_name, workdir, tmp_path / "pixels.npy", out)
  last = proc.stderr.strip().splitlines()[-1]
  assert proc.returncode == status and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert last.startswith(f"interrupted by {what}; nothing was written (an earlier output is kept whole)"), last
  assert out.read_text() == "the previous answers\n"

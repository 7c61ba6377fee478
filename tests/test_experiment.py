"""The experiment runner end to end: real Fashion-MNIST slice, MNIST via IDX files and TFDS mock data,
results.json schema, the workdir guard, and one-line errors for bad input before any training."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from benchmarks.fault_injection import write_tiny_idx
from quicknets_jax.workflows.experiment import train_and_evaluate
from quicknets_jax.workflows.experiment_config import ExperimentConfig
from quicknets_jax.workflows.workdir import guard_workdir

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(width=32, seeds=(0,), max_epochs=2, batch_size=64)
QUICKNET_KEYS = {
  "test_accuracy",
  "test_accuracy_std",
  "per_seed",
  "params",
  "inference_flops",
  "training_flops",
  "train_seconds",
  "exit_fractions",
  "train_samples_per_block",
  "epochs_per_block",
  "curve",
}
E2E_KEYS = {
  "test_accuracy",
  "test_accuracy_std",
  "params",
  "inference_flops",
  "training_flops",
  "train_seconds",
  "epochs",
}


def _check_schema(results, num_blocks):
  assert {"dataset", "model", "seeds", "exit_threshold", "train_threshold", "quicknet", "end_to_end", "ratios"} <= set(
    results
  )
  q, e = results["quicknet"], results["end_to_end"]
  assert QUICKNET_KEYS <= set(q) and E2E_KEYS <= set(e)
  assert QUICKNET_KEYS - {"per_seed", "test_accuracy_std"} <= set(q["per_seed"][0])
  assert len(q["exit_fractions"]) == num_blocks and abs(sum(q["exit_fractions"]) - 1) < 1e-5
  assert 0 <= q["test_accuracy"] <= 1 and 0 <= e["test_accuracy"] <= 1
  assert (
    {"training_flops", "inference_flops", "train_seconds"}
    <= set(results["ratios"])
    <= {
      "training_flops",
      "inference_flops",
      "train_seconds",
      "inference_macs",  # models that count multiply-adds (the MLP) add the paper's convention
    }
  )
  assert results["ratios"]["inference_flops"] == pytest.approx(e["inference_flops"] / q["inference_flops"])
  point = q["curve"][0]
  assert {"threshold", "test_accuracy", "inference_flops", "exit_fractions"} <= set(point)


def test_real_fashion_mnist_slice_every_exit_beats_chance(fashion_mnist_run):
  workdir, results = fashion_mnist_run
  _check_schema(results, 3)
  per_exit = results["quicknet"]["per_seed"][0]["per_exit_test_accuracy"]
  assert len(per_exit) == results["quicknet"]["trained_blocks"] >= 2
  assert min(per_exit) > 0.5, per_exit  # chance is 0.1
  assert results["end_to_end"]["test_accuracy"] > 0.6
  # the threshold was chosen on validation, and the curve is on test
  assert results["exit_threshold_chosen_on"] == "validation"
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)["quicknet"]["test_accuracy"] == results["quicknet"]["test_accuracy"]
  with open(os.path.join(workdir, "results.md")) as f:
    table = f.read()
  assert "| Fashion-MNIST | QuickNet |" in table and "| Fashion-MNIST | End-to-End |" in table


def test_a_finished_run_is_read_back_not_redone(fashion_mnist_run, tmp_path):
  workdir, results = fashion_mnist_run
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  config = ExperimentConfig.from_json(json.loads((copy / "config.json").read_text()))
  lines = []
  again = train_and_evaluate(config, str(copy), log=lines.append)
  assert again["quicknet"]["test_accuracy"] == results["quicknet"]["test_accuracy"]
  assert not any("epoch" in line for line in lines), lines  # nothing trained


def _write_mnist_like(directory, seed=0):
  """Small IDX files in the real MNIST format (test data only)."""
  write_tiny_idx(str(directory), noise=40.0, seed=seed)


def _run_cli(module, *args):
  return subprocess.run(
    [sys.executable, "-m", module, *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "PYTHONPATH": ROOT},
  )


def test_mnist_cli_on_an_idx_directory(tmp_path):
  data_dir = tmp_path / "mnist"
  data_dir.mkdir()
  _write_mnist_like(data_dir)
  workdir = tmp_path / "run"
  proc = _run_cli(
    "experiments.mnist", f"--data_dir={data_dir}", f"--workdir={workdir}", "--seeds=0", "--max_epochs=2", "--width=16"
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  results = json.loads((workdir / "results.json").read_text())
  _check_schema(results, 3)
  assert results["dataset"] == "mnist" and results["num_train"] == 540 and results["num_val"] == 60
  assert "block 0" in proc.stderr and "samples/s" in proc.stderr  # progress lines
  assert "| MNIST | QuickNet |" in proc.stdout
  # the same command on changed data files is refused before anything trains: one line naming the split
  _write_mnist_like(data_dir, seed=1)
  again = _run_cli(*proc.args[2:])
  last = again.stderr.strip().splitlines()[-1]
  assert again.returncode == 1 and "Traceback" not in again.stderr and "epoch" not in again.stderr, again.stderr
  assert "holds a run trained on other data (train: 540 rows" in last and "--overwrite" in last, last
  assert json.loads((workdir / "results.json").read_text()) == results


@pytest.mark.slow  # a whole run through TFDS's mock data
def test_mnist_through_tfds_mock_data(tmp_path):
  import tensorflow_datasets as tfds

  config = ExperimentConfig().replace(dataset="mnist", data_source="tfds", **TINY)
  with tfds.testing.mock_data(num_examples=300):
    results = train_and_evaluate(config, str(tmp_path), log=lambda m: None)
  _check_schema(results, 3)
  assert results["num_train"] + results["num_val"] == 300


def test_workdir_guard_names_the_differing_flags(tmp_path):
  guard_workdir(ExperimentConfig().replace(width=32), str(tmp_path))
  guard_workdir(ExperimentConfig().replace(width=32, seeds=(0, 1, 2, 3)), str(tmp_path))  # more seeds: fine
  with pytest.raises(ValueError, match=r"width: 32 → 64.*--overwrite"):
    guard_workdir(ExperimentConfig().replace(width=64), str(tmp_path))
  guard_workdir(ExperimentConfig().replace(width=64), str(tmp_path), overwrite=True)


BAD_INPUTS = [
  (["--exit_threshold=1.5"], "exit_threshold must be in [0, 1]"),
  (["--train_threshold=-0.2"], "train_threshold"),
  (["--num_blocks=0"], "num_blocks"),
  (["--dataset=cifar100"], "dataset"),
  (["--model=transformer"], "model"),
  (["--seeds=a,b"], "--seeds must be integers"),
  (["--data_source=idx", "--data_dir=/nonexistent"], "/nonexistent"),
]


@pytest.fixture(scope="module")
def refusals(tmp_path_factory):
  """stderr of the command line with each of BAD_INPUTS's arguments, by arguments: all started at once
  (most of each run is importing jax, which the two cores share)."""
  root = tmp_path_factory.mktemp("refused")
  procs = {
    tuple(args): subprocess.Popen(
      [sys.executable, "-m", "experiments.fashion_mnist", f"--workdir={root / str(i)}", *args],
      cwd=ROOT,
      env={**os.environ, "PYTHONPATH": ROOT},
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i, (args, _) in enumerate(BAD_INPUTS)
  }
  return {args: (proc.communicate(timeout=300)[1], proc.returncode) for args, proc in procs.items()}


@pytest.mark.parametrize("args,message", BAD_INPUTS)
def test_bad_input_fails_in_one_line_before_training(refusals, args, message):
  stderr, returncode = refusals[tuple(args)]
  assert returncode != 0
  assert message in stderr, stderr[-1500:]
  assert "epoch" not in stderr  # nothing trained
  assert "Traceback" not in stderr

"""`python -m experiments.cifar10` offline on a small SYNTHETIC tarball in the real format (pipeline check,
never a result): results.json has 8 exits, analytic FLOPs agree with XLA within 2%, and the same run on 8
fake devices (data parallel) gives the accuracies of the 1-device run; the paper's flags parse."""

import json
import os
import subprocess
import sys

import fresh_process_checks
import pytest
from conftest import xla_flags

from quicknets_jax.workflows.experiment_config import ExperimentConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

from make_cifar_smoke_data import main as make_smoke_data  # noqa: E402

# The smoke flags plus what the smoke leaves out for speed, the paper config's augmentation (crop + flip,
# frozen prefix recomputed): the 8-device run must reproduce it too.
SMALLER = ["--max_train=300", "--max_test=100", "--augment", "--nocache_features"]


def _run(workdir, data_dir, devices):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = xla_flags(devices)
  cmd = [
    sys.executable,
    "-m",
    "experiments.cifar10",
    "--flagfile=experiments/configs/cifar10_smoke.flags",
    f"--data_dir={data_dir}",
    f"--workdir={workdir}",
    *SMALLER,
  ]
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("cifar_smoke")
  make_smoke_data([f"--out={out}", "--num_train=400", "--num_test=100"])
  return str(out)


@pytest.mark.slow  # two full smoke runs (~6 min on 2 cores): `python -m pytest -q tests -m slow`
def test_smoke_run_on_one_and_eight_devices(data_dir, tmp_path):
  one = _run(tmp_path / "one", data_dir, 1)
  q = one["quicknet"]
  assert one["model"] == "vgg" and len(q["exit_fractions"]) == 8
  assert abs(sum(q["exit_fractions"]) - 1) < 1e-5 and len(q["train_samples_per_block"]) >= 1
  check = one["flops_check"]
  assert len(check["blocks"]) == 8
  assert all(abs(b["relative_difference"]) < 0.02 for b in check["blocks"]), check["blocks"]
  assert abs(check["end_to_end"]["relative_difference"]) < 0.02
  assert one["end_to_end"]["inference_flops"] == pytest.approx(check["end_to_end"]["analytic"])
  eight = _run(tmp_path / "eight", data_dir, 8)
  assert "8 x cpu" in eight["machine"]
  for method in ("quicknet", "end_to_end"):
    assert eight[method]["test_accuracy"] == pytest.approx(one[method]["test_accuracy"], abs=1e-3), method
  assert eight["quicknet"]["per_seed"][0]["per_exit_test_accuracy"] == pytest.approx(
    q["per_seed"][0]["per_exit_test_accuracy"], abs=1e-3
  )


def test_paper_flags_parse_into_the_paper_config():
  proc = fresh_process_checks.run("cifar10_paper_flags")  # its own process: importing cifar10 defines the flags
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split() == ["vgg", "64", "8", "0.0003", "True", "False", "4096", "vgg11"]


def test_augment_with_cached_features_is_refused_with_the_fix():
  with pytest.raises(ValueError, match="--nocache_features"):
    ExperimentConfig().replace(model="vgg", augment=True)

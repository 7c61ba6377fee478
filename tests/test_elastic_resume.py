"""Elastic resume: a run checkpointed on 8 (fake CPU) devices and stopped by SIGTERM resumes on 1, on 4 and
on 8 devices and ends with the results of the uninterrupted 8-device run.

Each run is its own process (XLA_FLAGS must be set before jax starts). Checkpoints hold host (numpy)
arrays, and `trainer.fit` replicates a restored state onto whatever mesh the resuming process has, so no
saved sharding has to match the new device count. Resumed on 8 devices the results are identical (wall
clock aside); on another count they are identical in everything discrete (accuracies, exit fractions,
sample counts, epochs, FLOPs) and the float losses differ in the last bits: the gradient, loss and
batch-norm sums over a batch are reduced per device and then across devices, so the order of the
float32 additions depends on the device count — an uninterrupted 1- or 4-device run differs from the
8-device one by as much (measured on the MLP: losses ≤ 5e-7, parameters ≤ 3e-8). Batch norm (the VGG
variant, slow) uses the statistics of the global batch on any device count (synchronised BN); they see
other padding rows only where a batch smaller than `batch_size` is padded to a multiple of the device
count. Adam (most likely) turns rounding-level noise in a near-zero gradient into steps of up to the
learning rate, so the VGG's parameters drift further apart (measured ≤ 8e-4 at lr 1e-3) while its
results.json floats stay within 4e-6.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
from conftest import xla_flags

from benchmarks.fault_injection import saved_arrays, untimed, write_tiny_idx
from scripts.compare_results import TIMING_KEYS, compare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

from make_cifar_smoke_data import main as make_cifar_smoke_data  # noqa: E402

# The fault-injection test's tiny MLP (2 blocks of width 8, 2 epochs per fit) on 600 blob images.
MLP = ["--dataset=mnist", "--width=8", "--num_blocks=2", "--seeds=0", "--max_epochs=2", "--eval_batch_size=256"]
CIFAR = ["--flagfile=experiments/configs/cifar10_smoke.flags"]
TOLERANCE = 1e-3  # on every float of results.json when the device count changed


def _env(devices: int, cache: str) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  env["XLA_FLAGS"] = xla_flags(devices)
  # compiles dominate these tiny runs; a cache kept across test sessions pays them once per machine
  env.update(
    JAX_COMPILATION_CACHE_DIR=cache,
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
  )
  return env


def _command(module: str, flags, workdir: str, extra=()) -> list:
  return [sys.executable, "-m", f"experiments.{module}", *flags, f"--workdir={workdir}", *extra]


def _has_checkpoint(workdir: str) -> bool:
  """Whether some orbax manager under `workdir` holds a finished step (a directory named by a number;
  one still being written is `<step>.orbax-checkpoint-tmp...`)."""
  for parent, dirs, _ in os.walk(workdir):
    if "checkpoints" in os.path.relpath(parent, workdir):
      if any(d.isdigit() for d in dirs):
        return True
  return False


def _results(workdir: str) -> dict:
  """results.json less what no rerun reproduces: wall clock ("...seconds...") and the machine line."""
  with open(os.path.join(workdir, "results.json")) as f:
    results = untimed(json.load(f))
  return {k: v for k, v in results.items() if k not in TIMING_KEYS}


def _float_differences(before, after, path=""):
  """[(path, |before - after|)] for the floats of two results trees that differ; raises AssertionError
  on anything else that differs (structure, ints, strings, booleans)."""
  if isinstance(before, dict):
    assert isinstance(after, dict) and set(before) == set(after), (path, sorted(set(before) ^ set(after)))
    return [d for k in before for d in _float_differences(before[k], after[k], f"{path}/{k}")]
  if isinstance(before, list):
    assert isinstance(after, list) and len(before) == len(after), path
    return [d for i, (b, a) in enumerate(zip(before, after)) for d in _float_differences(b, a, f"{path}[{i}]")]
  if isinstance(before, float) and isinstance(after, float):
    return [] if before == after else [(path, abs(before - after))]
  assert before == after and type(before) is type(after), (path, before, after)
  return []


def _interrupted_setup(tmp_path_factory, module, flags, cache):
  """(reference workdir, workdir of a run stopped by SIGTERM once a checkpoint exists), both on 8 devices."""
  root = tmp_path_factory.mktemp(f"elastic_{module}")
  reference = str(root / "reference")
  start = time.monotonic()
  proc = subprocess.run(
    _command(module, flags, reference), cwd=ROOT, env=_env(8, cache), capture_output=True, text=True
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  print(f"{module}: uninterrupted 8-device run {time.monotonic() - start:.1f}s")
  interrupted = str(root / "interrupted")
  log = root / "interrupted.log"
  with open(log, "w") as err:
    proc = subprocess.Popen(
      _command(module, flags, interrupted), cwd=ROOT, env=_env(8, cache), stdout=subprocess.DEVNULL, stderr=err
    )
    while proc.poll() is None and not _has_checkpoint(interrupted):
      time.sleep(0.01)
    assert proc.poll() is None, "the run finished before its first checkpoint was seen"
    proc.send_signal(signal.SIGTERM)  # the experiments stop within a step and name the resume command
    assert proc.wait(timeout=30) == 143, log.read_text()[-4000:]
  last = log.read_text().strip().splitlines()[-1]
  assert last.startswith("interrupted by SIGTERM") and "resume with:" in last, last
  assert not os.path.exists(os.path.join(interrupted, "results.json"))
  return reference, interrupted


def _resume_and_compare(module, flags, cache, reference, interrupted, workdir, devices, num_devices):
  """Resumes a copy of `interrupted` with `devices` visible and --num_devices; returns (float
  differences of results.json, max |parameter difference|), after checking the resume resumed."""
  shutil.copytree(interrupted, workdir)
  extra = [f"--num_devices={num_devices}"] if num_devices else []
  proc = subprocess.run(
    _command(module, flags, workdir, extra), cwd=ROOT, env=_env(devices, cache), capture_output=True, text=True
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "resumed after" in proc.stderr, proc.stderr[-4000:]  # it went on from the checkpoint, not afresh
  diffs = _float_differences(_results(reference), _results(workdir))
  want, got = saved_arrays(reference), saved_arrays(workdir)
  assert set(want) == set(got) and want
  worst = max(float(np.max(np.abs(want[k].astype(np.float64) - got[k]), initial=0.0)) for k in want)
  return diffs, worst


@pytest.fixture(scope="module")
def cache():
  return os.path.join(tempfile.gettempdir(), "quicknets_jax_elastic_xla_cache")


@pytest.fixture(scope="module")
def mlp_runs(tmp_path_factory, cache):
  data_dir = str(tmp_path_factory.mktemp("tiny_idx"))
  write_tiny_idx(data_dir)
  flags = [f"--data_dir={data_dir}", *MLP]
  return (flags, *_interrupted_setup(tmp_path_factory, "mnist", flags, cache))


# (devices the resuming process sees, --num_devices): 8 → 1 with the flag, 8 → 4 on a machine that has
# only 4 (the 8 devices the checkpoint was written on are gone), and 8 → 8 as the control.
COUNTS = [(8, 1), (4, None), (8, None)]


def _resume_problems(module, runs, cache, tmp_path, devices, num_devices, params_bound) -> list:
  """Resumes the interrupted run on `devices` (`--num_devices`) and compares it with the reference: what
  differs beyond what is allowed (bit for bit on the same count, else floats within TOLERANCE and
  parameters within `params_bound`); [] when the resumed run is the reference."""
  flags, reference, interrupted = runs
  resumed = str(tmp_path / "resumed")
  diffs, worst = _resume_and_compare(module, flags, cache, reference, interrupted, resumed, devices, num_devices)
  count = num_devices or devices
  print(
    f"8 -> {count} devices: {len(diffs)} floats differ, max {max((d for _, d in diffs), default=0):.3g}; "
    f"parameters max |diff| {worst:.3g}"
  )
  if count == 8:  # same device count: bit for bit, parameters too
    problems = [f"floats differ: {diffs[:5]}"] if diffs else []
    problems += [f"parameters differ by {worst:.3g}"] if worst != 0.0 else []
    return problems + compare(_results(reference), _results(resumed))[0]
  # reduction order: float32 sums split over another number of devices
  over = sorted((d for d in diffs if not d[1] <= TOLERANCE), key=lambda d: -d[1])[:5]
  problems = [f"floats beyond {TOLERANCE:g}: {over}"] if over else []
  return problems + ([f"parameters differ by {worst:.3g} (bound {params_bound:g})"] if not worst < params_bound else [])


@pytest.mark.parametrize(
  "devices,num_devices",
  [COUNTS[0], *(pytest.param(*c, marks=pytest.mark.slow) for c in COUNTS[1:])],  # 8 → 4 and the 8 → 8 control: slow
  ids=["8to1", "8to4", "8to8"],
)
def test_mlp_checkpointed_on_8_devices_resumes_on_1_4_and_8(mlp_runs, cache, tmp_path, devices, num_devices):
  problems = _resume_problems("mnist", mlp_runs, cache, tmp_path, devices, num_devices, params_bound=1e-5)
  assert problems == [], problems


@pytest.fixture(scope="module")
def cifar_runs(tmp_path_factory, cache):
  data_dir = str(tmp_path_factory.mktemp("cifar_smoke"))
  make_cifar_smoke_data([f"--out={data_dir}", "--num_train=400", "--num_test=100"])
  flags = [*CIFAR, f"--data_dir={data_dir}"]
  return (flags, *_interrupted_setup(tmp_path_factory, "cifar10", flags, cache))


@pytest.mark.slow  # the VGG smoke (8 blocks, batch norm) five times on fake devices: several minutes
@pytest.mark.parametrize("devices,num_devices", COUNTS, ids=["8to1", "8to4", "8to8"])
def test_vgg_checkpointed_on_8_devices_resumes_on_1_4_and_8(cifar_runs, cache, tmp_path, devices, num_devices):
  # Adam: a few learning-rate-sized steps at most (see the docstring)
  problems = _resume_problems("cifar10", cifar_runs, cache, tmp_path, devices, num_devices, params_bound=1e-2)
  assert problems == [], problems

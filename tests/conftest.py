"""Shared fixtures: small synthetic classification data (for unit tests only, never for results), and one
small QuickNet trained once per session on the real Fashion-MNIST for the tests that read a finished run."""

import contextlib
import fcntl
import os
import shutil
import tempfile

import numpy as np
import pytest

import quicknets_jax

# The tests compile far more programs than they run steps: XLA:CPU is told to skip its expensive LLVM
# passes and to emit fusions the older way, which compiles faster (the programs and their results are the
# same up to round-off; no test compares against numbers computed outside the tests). Processes the tests
# start inherit the setting. (`--xla_backend_optimization_level=0` would save more, but it turns a VGG's
# block-2 loss on 8 host devices into NaN: XLA:CPU at level 0 is not a configuration the library runs in.)
TEST_XLA_FLAGS = (
  "--xla_llvm_disable_expensive_passes=true",
  "--xla_cpu_use_fusion_emitters=false",
)
os.environ["XLA_FLAGS"] = " ".join(
  [
    os.environ.get("XLA_FLAGS", ""),
    *(f for f in TEST_XLA_FLAGS if f.split("=")[0] not in os.environ.get("XLA_FLAGS", "")),
  ]
).strip()


def xla_flags(devices: int = 1) -> str:
  """XLA_FLAGS for a process a test starts with its own flags: the tests' compile settings, and `devices`
  host devices."""
  count = [f"--xla_force_host_platform_device_count={devices}"] if devices > 1 else []
  return " ".join([*TEST_XLA_FLAGS, *count])


# The tests use the library as a user who made its one set-up call (before JAX starts its backend).
quicknets_jax.configure_cpu()

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
_OWN_FOLDER = pytest.StashKey[str]()


def make_blobs(n, num_classes=4, shape=(6, 6, 1), seed=0, noise=1.0):
  """Gaussian class blobs: easy classes (far apart) and hard ones (close together)."""
  dim = int(np.prod(shape))
  # the same centres for every split; only the samples depend on the seed
  centres = np.random.default_rng(1234).normal(size=(num_classes, dim)) * np.linspace(2.0, 0.3, num_classes)[:, None]
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, size=n).astype(np.int32)
  x = centres[labels] + noise * rng.normal(size=(n, dim))
  return x.reshape((n, *shape)).astype(np.float32), labels


@pytest.fixture(scope="session")
def blobs():
  x, y = make_blobs(1200, seed=0)
  vx, vy = make_blobs(300, seed=1)
  return x, y, vx, vy


@pytest.fixture
def native_convs():
  """XLA's own convolutions (not the CPU patch products): what FLOP cross-checks count against."""
  from quicknets_jax.models import layers

  with layers.conv_implementation("native"):
    yield


RUN_FOLDER_ENV = "QUICKNETS_JAX_TEST_RUN_FOLDER"  # the test run's folder, shared by the xdist workers


def pytest_configure(config):
  """One folder for the whole test run (the xdist workers inherit the controller's): `shared/` for what the
  workers build once between them (`shared_between_workers`), and `xla/`, the persistent compilation cache
  of every process of the run. The tests build many small networks of the same shapes, in this process,
  in the other worker and in the processes they start (entry points with `--compile_cache=auto` read
  $JAX_COMPILATION_CACHE_DIR): each program is compiled once, and a cache hit runs the executable XLA
  compiled, so results are those of a fresh compile. A user's own $JAX_COMPILATION_CACHE_DIR is used as it
  is. The folder is removed at the end."""
  from quicknets_jax.training import compilation

  if not os.environ.get(RUN_FOLDER_ENV):  # the controller, or a run without xdist
    os.environ[RUN_FOLDER_ENV] = tempfile.mkdtemp(prefix="quicknets-jax-tests-")
    config.stash[_OWN_FOLDER] = os.environ[RUN_FOLDER_ENV]
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.environ[RUN_FOLDER_ENV], "xla"))
  compilation.enable_persistent_cache(os.environ["JAX_COMPILATION_CACHE_DIR"])


def pytest_unconfigure(config):
  folder = config.stash.get(_OWN_FOLDER, None)
  if folder:
    shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def shared_between_workers(name: str):
  """A folder of this test run that one process at a time holds (`with shared_between_workers("x") as
  folder:`): what the first one builds there, the next one finds."""
  folder = os.path.join(os.environ[RUN_FOLDER_ENV], "shared", name)
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, ".lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield folder
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def fit_data_of(x, y, vx, vy, num_classes=4):
  """A `trainer.FitData` whose working set is every training row (validation: every val row)."""
  import jax.numpy as jnp

  from quicknets_jax.data.split import Split
  from quicknets_jax.training.trainer import FitData

  return FitData.whole(Split(jnp.asarray(x), jnp.asarray(y)), Split(jnp.asarray(vx), jnp.asarray(vy)), num_classes)


@pytest.fixture
def blobs_fit_data(blobs):
  """`blobs` as the FitData of a fit on all of it."""
  return fit_data_of(*blobs)


@pytest.fixture(scope="session")
def fashion_mnist_run():
  """A finished run on the real Fashion-MNIST, trained once per session: a 3-block MLP QuickNet (width 32,
  2 epochs per fit, seed 0) and its end-to-end baseline on the first 6,000 training images, 2,000 test
  images. Returns (workdir, results); tests read the workdir, never write to it."""
  if not os.path.isdir(FASHION_DIR):
    pytest.skip("apt-get install dataset-fashion-mnist")
  from quicknets_jax.workflows.experiment import train_and_evaluate
  from quicknets_jax.workflows.experiment_config import ExperimentConfig

  config = ExperimentConfig().replace(
    dataset="fashion_mnist", max_train=6000, max_test=2000, width=32, seeds=(0,), max_epochs=2, batch_size=64
  )
  # the first worker trains it; the other reads the finished run back (a finished run is not redone)
  with shared_between_workers("fashion_mnist_run") as folder:
    workdir = os.path.join(folder, "run")
    return workdir, train_and_evaluate(config, workdir, log=lambda m: None)

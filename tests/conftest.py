"""Shared fixtures: small synthetic classification data (for unit tests only, never for results), and one
small QuickNet trained once per session on the real Fashion-MNIST for the tests that read a finished run."""

import os

import numpy as np
import pytest

import quicknets_jax

# The tests compile far more programs than they run steps: XLA:CPU is told to skip its expensive LLVM
# passes on the machine code it compiles (the programs and their results are the same up to round-off; no
# test compares against numbers computed outside the tests). Processes the tests start inherit the setting.
# (`--xla_backend_optimization_level=0` would save more, but it turns a VGG's block-2 loss on 8 host
# devices into NaN: XLA:CPU at level 0 is not a configuration the library runs in.)
TEST_XLA_FLAGS = ("--xla_llvm_disable_expensive_passes=true",)
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


@pytest.fixture(scope="session", autouse=True)
def compile_cache_in_tmp(tmp_path_factory):
  """Entry points the tests start keep their persistent compilation cache (`--compile_cache=auto`:
  $XDG_CACHE_HOME/quicknets_jax/xla) in a folder of this test session, not in the user's home."""
  import os

  if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg_cache"))
  yield


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
def fashion_mnist_run(tmp_path_factory):
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
  workdir = str(tmp_path_factory.mktemp("fashion_mnist_run") / "run")
  return workdir, train_and_evaluate(config, workdir, log=lambda m: None)

"""Shared fixtures: small synthetic classification data (for unit tests only, never for results)."""

import numpy as np
import pytest


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

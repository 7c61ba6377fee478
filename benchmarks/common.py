"""Shared pieces of the benchmarks: the machine, a matmul peak, timing, and writing JSON + Markdown."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from quicknets_jax import data
from quicknets_jax.runs.workdir import machine_description

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def time_call(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
  """Median wall-clock seconds of `fn()` (blocking on its result), after `warmup` untimed calls."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def matmul_peak(size: int = 2048, repeats: int = 10) -> float:
  """Measured f32 FLOP/s of a size² × size² matmul on the default device (2·n³ FLOPs)."""
  a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (size, size), jnp.float32)
  fn = jax.jit(lambda x, y: x @ y)
  seconds = time_call(lambda: fn(a, b), repeats=repeats, warmup=2)
  return 2.0 * size**3 / seconds


def write(name: str, payload: dict, markdown: str, out_dir: str = DEFAULT_OUT) -> None:
  """Writes OUT_DIR/<name>.json and <name>.md and prints the Markdown."""
  os.makedirs(out_dir, exist_ok=True)
  payload = dict(benchmark=name, machine=machine_description(), **payload)
  with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
    json.dump(payload, f, indent=1)
  with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
    f.write(markdown + f"\n\nMachine: {payload['machine']}.\n")
  print(markdown)
  print(f"\nwrote {os.path.join(out_dir, name)}.json/.md")


def load_fashion_mnist(max_train=None):
  """The real Fashion-MNIST if installed (speed does not depend on it, but it is what users run)."""
  return data.load_dataset("fashion_mnist", max_train=max_train)

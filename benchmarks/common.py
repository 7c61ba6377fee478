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
from quicknets_jax.core.platform import configure_cpu
from quicknets_jax.training.compilation import CompileMeter
from quicknets_jax.training.optimizer import Adam, Mask
from quicknets_jax.training.schedule import FitConfig
from quicknets_jax.training.step import Statics, TrainState
from quicknets_jax.training.trainer import EpochArrays, EpochPlan, bucket_size, choose_drivers, convolutions, pad_rows
from quicknets_jax.workflows.workdir import machine_description

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def start() -> None:
  """What a benchmark's main does first, before JAX starts: the XLA:CPU flags the entry points set too
  (`quicknets_jax.configure_cpu`), so the numbers are what a user's runs get."""
  configure_cpu()


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


def matmul_peak(size: int = 2048, repeats: int = 10, dtype=jnp.float32) -> float:
  """Measured FLOP/s of a size² × size² matmul in `dtype` on the default device (2·n³ FLOPs)."""
  a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32).astype(dtype)
  b = jax.random.normal(jax.random.PRNGKey(1), (size, size), jnp.float32).astype(dtype)
  fn = jax.jit(lambda x, y: x @ y)
  seconds = time_call(lambda: fn(a, b), repeats=repeats, warmup=2)
  return 2.0 * size**3 / seconds


def epoch_runner(
  objective, params, state, inputs, labels, batch_size: int, steps: int, host_loop=None, samples=None
) -> Callable[[], tuple]:
  """A zero-argument function that runs `steps` training steps (one epoch; or an epoch of `samples`
  samples, the last batch partial) through the trainer's own epoch driver, on the path `fit` takes on
  this backend (`trainer.choose_drivers`; `host_loop` overrides it), carrying the train state from
  call to call. Call it in the convolution context of the trainer's loops (`trainer.loop_convolutions()`),
  as `fit` does."""
  drivers = choose_drivers(convolutions(objective.loss), FitConfig(host_loop=host_loop))
  n = steps * batch_size if samples is None else samples
  statics = Statics(objective.loss, Adam(Mask.of(objective.trainable)), None, drivers.conv)
  plan = EpochPlan(statics, batch_size, 10, True)
  rows = bucket_size(n)
  positions = pad_rows(np.arange(n, dtype=np.int32) % inputs.shape[0], rows)
  classes = pad_rows(np.asarray(labels)[np.arange(n) % inputs.shape[0]], rows)
  arrays = EpochArrays(inputs, labels, positions, classes, jnp.int32(n), jnp.int32(n))
  driver = drivers.epoch.run
  # the epoch donates its state, as in `fit`: each call takes the previous call's
  carry = [TrainState.create(statics.optimizer, jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, state), 1e-3)]

  def run():
    carry[0], metrics = driver(carry[0], arrays, jax.random.PRNGKey(0), plan=plan)
    return metrics

  return run


def epoch_rate(objective, params, state, inputs, labels, batch_size: int, steps: int) -> tuple[float, float]:
  """(samples/s of `steps` training steps, compile seconds) of `epoch_runner`'s epochs: compile seconds are
  what jax reports while the first call runs (`training.compilation.CompileMeter`), the rate the
  median of 3 calls after it."""
  run = epoch_runner(objective, params, state, inputs, labels, batch_size, steps)
  with CompileMeter() as compiled:
    jax.block_until_ready(run())
  seconds = time_call(run, repeats=3, warmup=0)
  return steps * batch_size / seconds, compiled.seconds


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

"""Checks that need 8 fake CPU devices, each run in its own process by the tests (XLA_FLAGS must be set
before JAX starts its backend, and 8 fake devices would slow every other test):

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.multidevice_checks NAME [ARG ...]

from the repository root. `run` starts one the way the tests do. Not collected by pytest (no `test_`
prefix); a failed check exits non-zero with its assertion."""

import dataclasses
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from quicknets_jax import models
from quicknets_jax.algorithms import decoupled, pipeline
from quicknets_jax.models.base import split_blocks, split_variables
from quicknets_jax.training import losses, parallel, trainer
from quicknets_jax.training.optimizer import BlockwiseAdam, with_learning_rate
from quicknets_jax.training.step import Statics, TrainState

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(name: str, *args, timeout: int = 600) -> subprocess.CompletedProcess:
  """Runs check `name` with `args` on 8 host devices in a fresh process; returns the finished process."""
  from conftest import xla_flags  # the tests' process: tests/ is on its path

  env = dict(os.environ, XLA_FLAGS=xla_flags(8), JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "tests.multidevice_checks", name, *map(str, args)]
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def pipelined_epoch(*stages: str) -> None:
  """The pipelined epoch (the blocks as `stages` pipeline stages: 8 blocks, or 4 when no count exceeds 4)
  trains what the one-device decoupled epoch trains; with 2 stages, a stage buffer of 8 rows drops rows and
  still trains. Prints one `stages` line per stage count, then `ok`."""
  # importing conftest makes the tests' set-up call (quicknets_jax.configure_cpu) before JAX starts its backend
  from tests.conftest import make_blobs

  stages = tuple(int(s) for s in stages)
  assert jax.device_count() == 8, jax.devices()
  x, y = make_blobs(300)
  blocks = 8 if max(stages) > 4 else 4
  model = models.mlp((6, 6, 1), 4, hidden=(16, 12, 12, 10, 10, 8, 8, 8)[:blocks], num_blocks=blocks)
  params, state = split_blocks(model.init(jax.random.PRNGKey(0)))
  loss = decoupled.DecoupledLoss(model, blocks, (False,) * blocks, 0.5, 0.0)
  optimizer = BlockwiseAdam((False,) * blocks)
  plan = trainer.EpochPlan(Statics(loss, optimizer, None, "patches"), 64, 4, True)
  bucket = trainer.bucket_size(300)
  arrays = trainer.EpochArrays(
    jnp.asarray(x),
    jnp.asarray(y),
    trainer.pad_rows(np.arange(300, dtype=np.int32), bucket),
    trainer.pad_rows(y, bucket),
    jnp.int32(300),
    jnp.int32(300),
  )

  def fresh():
    return TrainState.create(optimizer, jax.tree.map(jnp.copy, params), state, [1e-2] * blocks)

  def max_difference(a, b):
    return max(float(jnp.max(jnp.abs(u - v))) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

  key = jax.random.PRNGKey(4)
  want, want_metrics = trainer.ON_DEVICE.run(fresh(), arrays, key, plan=plan)
  for count in stages:
    pplan = pipeline.PipelinePlan(plan, pipeline.stage_mesh(count), pipeline.block_stages(blocks, count), 64)
    got, metrics = pipeline.pipelined_epoch(fresh(), arrays, key, plan=pplan)
    worst = max_difference(want.params, got.params)
    moments = max_difference(want.opt_state, got.opt_state)
    print("stages", count, "params", worst, "optimizer", moments, "loss", float(metrics[0]), float(want_metrics[0]))
    assert worst < 1e-5 and moments < 1e-5, (count, worst, moments)
    assert float(metrics[2]) == 0.0  # the whole batch fits: nothing dropped
    assert abs(float(metrics[0]) - float(want_metrics[0])) < 1e-4 and float(metrics[1]) == float(want_metrics[1])
  if 2 in stages:
    # a buffer of 8 rows of 64: the first stage sends on only 8 of the rows later blocks still need
    small = pipeline.PipelinePlan(plan, pipeline.stage_mesh(2), pipeline.block_stages(blocks, 2), 8)
    got, metrics = pipeline.pipelined_epoch(fresh(), arrays, key, plan=small)
    assert float(metrics[2]) > 0 and all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(got.params))
    moved = max_difference(params, want.params)
    assert moved > 1e-3, moved
  print("ok")


@dataclasses.dataclass(frozen=True)
class Sgd:
  """Plain SGD: the update is -lr * gradient (Adam's first step magnifies round-off)."""

  def transform(self):
    return optax.inject_hyperparams(optax.sgd)(learning_rate=0.0)

  def init(self, params, learning_rate):
    return with_learning_rate(self.transform().init(params), learning_rate)


def data_parallel_step(model_name: str, batch: str) -> None:
  """One data-parallel SGD epoch step on 8 devices equals the single-device step (parameters, model state
  and loss) for `model_name` ("vgg" or "mlp") and a batch of `batch` rows. Prints the differences."""
  batch = int(batch)
  assert jax.device_count() == 8, jax.devices()
  if model_name == "vgg":
    model = models.build_model("vgg", (8, 8, 3), 4, width=64, cfg="8,M,16", classifier_width=16)
    augment = "crop_flip"
  else:
    model = models.build_model("mlp", (8, 8, 3), 4, width=16, num_blocks=2)
    augment = None
  params, model_state = split_variables(model.init(jax.random.PRNGKey(0))[0])
  loss = losses.BlockLoss(model.blocks[0], augment)
  x = jax.random.normal(jax.random.PRNGKey(1), (64, 8, 8, 3))
  y = jax.random.randint(jax.random.PRNGKey(2), (64,), 0, 4)
  bucket = trainer.bucket_size(batch)
  positions = trainer.pad_rows(jnp.arange(batch, dtype=jnp.int32), bucket)
  classes = trainer.pad_rows(y[:batch], bucket)
  arrays = trainer.EpochArrays(x, y, positions, classes, jnp.int32(batch), jnp.int32(batch))
  state = TrainState.create(Sgd(), params, model_state, 0.1)
  key = jax.random.PRNGKey(3)
  # the epoch donates its state: each call gets its own copy
  plan = trainer.EpochPlan(Statics(loss, Sgd(), None, "auto"), batch, 4, False)
  single, single_metrics = trainer.ON_DEVICE.run(jax.tree.map(jnp.copy, state), arrays, key, plan=plan)
  mesh = parallel.make_mesh()
  plan8 = trainer.EpochPlan(Statics(loss, Sgd(), mesh, "auto"), parallel.round_up_batch(batch, mesh), 4, False)
  sharded, sharded_metrics = trainer.ON_DEVICE.run(
    parallel.replicate(jax.tree.map(jnp.copy, state), mesh), parallel.replicate(arrays, mesh), key, plan=plan8
  )
  assert all(leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(sharded.params))
  difference = lambda a, b: float(jnp.max(jnp.abs(a - b)))
  diffs = jax.tree.map(difference, (single.params, single.model_state), (sharded.params, sharded.model_state))
  worst = max(jax.tree.leaves(diffs))
  moved = max(jax.tree.leaves(jax.tree.map(difference, params, single.params)))
  print(
    "max |params_1 - params_8| =",
    worst,
    "update size",
    moved,
    "loss",
    float(single_metrics[0]),
    float(sharded_metrics[0]),
  )
  assert moved > 1e-3, moved
  assert worst < 1e-6, diffs
  assert abs(float(single_metrics[0]) - float(sharded_metrics[0])) < 1e-6


CHECKS = {"pipelined_epoch": pipelined_epoch, "data_parallel_step": data_parallel_step}

if __name__ == "__main__":
  CHECKS[sys.argv[1]](*sys.argv[2:])

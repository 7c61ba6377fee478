"""Data parallel on 8 fake CPU devices (each check in its own process: XLA_FLAGS must be set before jax
starts, and 8 fake devices slow every other test): one data-parallel SGD step equals the single-device
step, batch norm statistics included; odd batches are padded to the device count and masked."""

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STEP_CHECK = textwrap.dedent("""
  import dataclasses
  import jax, jax.numpy as jnp, numpy as np, optax
  assert jax.device_count() == 8, jax.devices()
  from quicknets_jax import models
  from quicknets_jax.models.base import split_variables
  from quicknets_jax.training import losses, parallel
  from quicknets_jax.training import trainer as train
  from quicknets_jax.training.optimizer import with_learning_rate
  from quicknets_jax.training.step import Statics, TrainState

  @dataclasses.dataclass(frozen=True)
  class Sgd:  # plain SGD: the update is -lr * gradient (Adam's first step magnifies round-off)
    def transform(self):
      return optax.inject_hyperparams(optax.sgd)(learning_rate=0.0)

    def init(self, params, learning_rate):
      return with_learning_rate(self.transform().init(params), learning_rate)

  if MODEL == "vgg":
    model = models.build_model("vgg", (8, 8, 3), 4, width=64, cfg="8,M,16", classifier_width=16)
    augment = "crop_flip"
  else:
    model = models.build_model("mlp", (8, 8, 3), 4, width=16, num_blocks=2)
    augment = None
  params, model_state = split_variables(model.init(jax.random.PRNGKey(0))[0])
  loss = losses.BlockLoss(model.blocks[0], augment)
  x = jax.random.normal(jax.random.PRNGKey(1), (64, 8, 8, 3))
  y = jax.random.randint(jax.random.PRNGKey(2), (64,), 0, 4)
  bucket = train.bucket_size(BATCH)
  positions = train.pad_rows(jnp.arange(BATCH, dtype=jnp.int32), bucket)
  classes = train.pad_rows(y[:BATCH], bucket)
  arrays = train.EpochArrays(x, y, positions, classes, jnp.int32(BATCH), jnp.int32(BATCH))
  state = TrainState.create(Sgd(), params, model_state, 0.1)
  key = jax.random.PRNGKey(3)
  # the epoch donates its state: each call gets its own copy
  plan = train.EpochPlan(Statics(loss, Sgd(), None, "auto"), BATCH, 4, False)
  single, single_metrics = train.epoch_on_device(jax.tree.map(jnp.copy, state), arrays, key, plan=plan)
  mesh = parallel.make_mesh()
  plan8 = train.EpochPlan(Statics(loss, Sgd(), mesh, "auto"), parallel.round_up_batch(BATCH, mesh), 4, False)
  sharded, sharded_metrics = train.epoch_on_device(
    parallel.replicate(jax.tree.map(jnp.copy, state), mesh), parallel.replicate(arrays, mesh), key, plan=plan8
  )
  assert all(leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(sharded.params))
  diffs = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), (single.params, single.model_state),
                       (sharded.params, sharded.model_state))
  worst = max(jax.tree.leaves(diffs))
  moved = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), params, single.params)))
  print("max |params_1 - params_8| =", worst, "update size", moved, "loss", float(single_metrics[0]),
        float(sharded_metrics[0]))
  assert moved > 1e-3, moved
  assert worst < 1e-6, diffs
  assert abs(float(single_metrics[0]) - float(sharded_metrics[0])) < 1e-6
""")


def _run(code: str) -> str:
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
  return proc.stdout


@pytest.mark.parametrize("model,batch", [("vgg", 32), ("mlp", 30)])
def test_one_data_parallel_sgd_step_equals_the_single_device_step(model, batch):
  """VGG (batch norm over the global batch, crop + flip drawn from the step's key): 32 rows, 4 per
  device. MLP: 30 rows padded to 32 and the 2 extra rows masked out of the loss. (Batch norm would
  see padding rows in its batch statistics — as the single-device trainer's last partial batch does.)"""
  out = _run(f"BATCH = {batch}\nMODEL = {model!r}\n" + STEP_CHECK)
  assert "max |params_1 - params_8|" in out

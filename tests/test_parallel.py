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
  import jax, jax.numpy as jnp, numpy as np, optax
  assert jax.device_count() == 8, jax.devices()
  from quicknets_jax import models
  from quicknets_jax.models.base import split_variables
  from quicknets_jax.training import losses, parallel
  from quicknets_jax.training import trainer as train

  if MODEL == "vgg":
    model = models.build_model("vgg", (8, 8, 3), 4, width=64, cfg="8,M,16", classifier_width=16)
    augment = "crop_flip"
  else:
    model = models.build_model("mlp", (8, 8, 3), 4, width=16, num_blocks=2)
    augment = None
  params, state = split_variables(model.init(jax.random.PRNGKey(0))[0])
  objective = train.Objective(losses.block_loss(model.blocks[0], augment))
  x = jax.random.normal(jax.random.PRNGKey(1), (64, 8, 8, 3))
  y = jax.random.randint(jax.random.PRNGKey(2), (64,), 0, 4)
  bucket = train.bucket_size(BATCH)
  positions = train.pad_rows(jnp.arange(BATCH, dtype=jnp.int32), bucket)
  classes = train.pad_rows(y[:BATCH], bucket)
  tx = optax.identity()  # plain SGD: the update is -lr * gradient
  args = (params, tx.init(params), state, jnp.float32(0.1), x, y, positions, classes, jnp.int32(BATCH),
          jax.random.PRNGKey(3))
  # the epoch donates params and states: each call gets its own copies
  single = train.make_epoch_fn(objective, tx, BATCH, 4, False)(*jax.tree.map(jnp.copy, args))
  mesh = parallel.make_mesh()
  batch = parallel.round_up_batch(BATCH, mesh)
  sharded = train.make_epoch_fn(objective, tx, batch, 4, False, mesh=mesh)(
      *parallel.replicate(jax.tree.map(jnp.copy, args), mesh))
  assert all(leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(sharded[0]))
  diffs = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), single[:3], sharded[:3])
  worst = max(jax.tree.leaves(diffs))
  moved = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), params, single[0])))
  print("max |params_1 - params_8| =", worst, "update size", moved, "loss", float(single[3]), float(sharded[3]))
  assert moved > 1e-3, moved
  assert worst < 1e-6, diffs
  assert abs(float(single[3]) - float(sharded[3])) < 1e-6
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

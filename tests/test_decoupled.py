"""Decoupled QuickNet training: a one-block run is the sequential one, gradients stop between blocks,
learned samples add nothing to later blocks' losses, and a stopped run resumes to the same result."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_blobs

from quicknets_jax import models
from quicknets_jax.algorithms.decoupled import DecoupledLoss
from quicknets_jax.algorithms.quicknet import QuickNetConfig, train_quicknet
from quicknets_jax.models.base import split_blocks
from quicknets_jax.training import losses
from quicknets_jax.training.checkpoint import BlockCheckpointer
from quicknets_jax.training.events import Events
from quicknets_jax.training.schedule import FitConfig

CONFIG = QuickNetConfig(fit=FitConfig(batch_size=64, max_epochs=4), train_threshold=0.5, schedule="decoupled")


def _model(blocks=3):
  return models.mlp((6, 6, 1), 4, hidden=(16, 12, 8)[:blocks], num_blocks=blocks)


def test_a_one_block_decoupled_run_is_the_sequential_run(blobs):
  x, y, vx, vy = blobs
  model = _model(1)
  sequential = train_quicknet(model, (x, y), (vx, vy), dataclasses.replace(CONFIG, schedule="sequential"), 0, log=print)
  decoupled = train_quicknet(model, (x, y), (vx, vy), CONFIG, 0, log=print)
  assert decoupled.schedule == "decoupled" and decoupled.records[0].epochs == sequential.records[0].epochs
  for part in ("subnet", "exit_head"):  # the commitment head trains alongside instead of afterwards
    chex.assert_trees_all_close(
      decoupled.variables[0]["params"][part], sequential.variables[0]["params"][part], rtol=1e-5, atol=1e-6
    )
  val = [r["val_loss"] for r in sequential.records[0].history]
  np.testing.assert_allclose([r["val_loss"] for r in decoupled.records[0].history], val, rtol=1e-5)


def _batch(n=64, seed=3):
  x, y = make_blobs(n, seed=seed)
  return jnp.asarray(x), jnp.asarray(y), jnp.ones(n)


def test_no_gradient_reaches_a_block_from_a_later_blocks_loss_nor_from_its_commitment_head():
  model = _model()
  params, state = split_blocks(model.init(jax.random.PRNGKey(0)))
  x, y, mask = _batch()

  def grads(frozen):
    loss = DecoupledLoss(model, 3, frozen, 0.5, 0.0)
    return jax.grad(lambda p: loss(p, state, x, y, None, True, None, mask)[0][0])(params)

  only_later = grads((True, False, False))  # block 0 adds nothing itself: only later blocks' losses remain
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(only_later[0]))
  assert any(float(jnp.abs(g).max()) > 0.0 for g in jax.tree.leaves(only_later[1]["subnet"]))
  one = _model(1)
  p1, s1 = split_blocks(one.init(jax.random.PRNGKey(0)))
  total = jax.grad(lambda p: DecoupledLoss(one, 1, (False,), 0.5, 0.0)(p, s1, x, y, None, True, None, mask)[0][0])(p1)
  ce = jax.grad(lambda p: jnp.mean(losses.BlockLoss(one.blocks[0])(p[0], s1[0], x, y, None, True)[0]))(p1)
  chex.assert_trees_all_close(total[0]["subnet"], ce[0]["subnet"], rtol=1e-5, atol=1e-7)  # the head's BCE adds 0


def test_samples_earlier_blocks_learned_add_nothing_to_later_losses():
  """Take the rows block 0 learns out of the batch (mask 0): block 1's and 2's loss is the same, bit for bit."""
  model = _model()
  params, state = split_blocks(model.init(jax.random.PRNGKey(0)))
  x, y, mask = _batch(128)
  block0 = model.blocks[0]
  _, logits, _ = block0.apply({"params": params[0]}, x)
  y = jnp.where(jnp.arange(128) % 2 == 0, jnp.argmax(logits, -1), y)  # half the rows: block 0 right
  loss = DecoupledLoss(model, 3, (True, False, False), 0.0, -1e9)  # learned = right (τ 0, any commitment)
  learned = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
  assert 0 < float(learned.sum()) < 128
  full = loss(params, state, x, y, None, True, None, mask)[0][0]
  without = loss(params, state, x, y, None, True, None, mask * (1 - learned))[0][0]
  assert float(full) == float(without)


class Stop(Exception):
  pass


class StopAt(Events):
  def __init__(self, epoch):
    self.epoch = epoch

  def epoch_done(self, event):
    if event.record["epoch"] == self.epoch:
      raise Stop


def test_a_stopped_decoupled_run_resumes_to_the_same_result(blobs, tmp_path):
  x, y, vx, vy = blobs
  full = train_quicknet(
    _model(), (x, y), (vx, vy), CONFIG, 2, checkpointer=BlockCheckpointer(tmp_path / "a"), log=print
  )
  with pytest.raises(Stop):
    train_quicknet(
      _model(), (x, y), (vx, vy), CONFIG, 2, checkpointer=BlockCheckpointer(tmp_path / "b"), log=print, events=StopAt(2)
    )
  messages = []
  resumed = train_quicknet(
    _model(), (x, y), (vx, vy), CONFIG, 2, checkpointer=BlockCheckpointer(tmp_path / "b"), log=messages.append
  )
  assert any("resumed after epoch 2" in m for m in messages), messages
  chex.assert_trees_all_equal(jax.device_get(full.variables), jax.device_get(resumed.variables))
  assert [r.learned for r in full.records] == [r.learned for r in resumed.records]
  assert [r.flops for r in full.records] == [r.flops for r in resumed.records]


PIPELINE_CHECK = """
import sys
sys.path.insert(0, "tests")
from conftest import make_blobs  # first: it makes the library's set-up call before JAX starts
import jax, jax.numpy as jnp, numpy as np
assert jax.device_count() == 8, jax.devices()
from quicknets_jax import models
from quicknets_jax.algorithms import decoupled, pipeline
from quicknets_jax.models.base import split_blocks
from quicknets_jax.training import trainer
from quicknets_jax.training.optimizer import BlockwiseAdam
from quicknets_jax.training.step import Statics, TrainState

x, y = make_blobs(300)
model = models.mlp((6, 6, 1), 4, hidden=(16, 12, 12, 10, 10, 8, 8, 8), num_blocks=8)
params, state = split_blocks(model.init(jax.random.PRNGKey(0)))
loss = decoupled.DecoupledLoss(model, 8, (False,) * 8, 0.5, 0.0)
optimizer = BlockwiseAdam((False,) * 8)
plan = trainer.EpochPlan(Statics(loss, optimizer, None, "patches"), 64, 4, True)
bucket = trainer.bucket_size(300)
arrays = trainer.EpochArrays(
  jnp.asarray(x), jnp.asarray(y), trainer.pad_rows(np.arange(300, dtype=np.int32), bucket),
  trainer.pad_rows(y, bucket), jnp.int32(300), jnp.int32(300),
)
fresh = lambda: TrainState.create(optimizer, jax.tree.map(jnp.copy, params), state, [1e-2] * 8)
key = jax.random.PRNGKey(4)
want, want_metrics = trainer.epoch_on_device(fresh(), arrays, key, plan=plan)
for stages in (1, 2, 4, 8):
  pplan = pipeline.PipelinePlan(plan, pipeline.stage_mesh(stages), pipeline.block_stages(8, stages), 64)
  got, metrics = pipeline.pipelined_epoch(fresh(), arrays, key, plan=pplan)
  worst = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(want.params), jax.tree.leaves(got.params)))
  moments = max(
    float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(want.opt_state), jax.tree.leaves(got.opt_state))
  )
  print("stages", stages, "params", worst, "optimizer", moments, "loss", float(metrics[0]), float(want_metrics[0]))
  assert worst < 1e-5 and moments < 1e-5, (stages, worst, moments)
  assert abs(float(metrics[0]) - float(want_metrics[0])) < 1e-4 and float(metrics[1]) == float(want_metrics[1])
moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want.params)))
assert moved > 1e-3, moved
print("ok")
"""


def test_the_pipelined_epoch_is_the_decoupled_epoch_on_1_2_4_and_8_host_devices():
  """Eight blocks as 1, 2, 4 or 8 pipeline stages (8 host devices, in their own process): the epoch trains
  what the one-device decoupled epoch trains, parameters and optimizer state within float round-off."""
  import os
  import subprocess
  import sys

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  out = subprocess.run(
    [sys.executable, "-c", PIPELINE_CHECK], cwd=root, env=env, capture_output=True, text=True, timeout=900
  )
  assert out.returncode == 0 and "ok" in out.stdout, out.stdout + out.stderr[-3000:]

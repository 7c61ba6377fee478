"""Decoupled QuickNet training: a one-block run is the sequential one, gradients stop between blocks,
learned samples add nothing to later blocks' losses, and a stopped run resumes to the same result."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import multidevice_checks
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
from quicknets_jax.training.step import Batch

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
    return jax.grad(lambda p: loss(p, Batch(x, y, mask), jax.random.PRNGKey(0), model_state=state)[1].per_sample[0])(
      params
    )

  only_later = grads((True, False, False))  # block 0 adds nothing itself: only later blocks' losses remain
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(only_later[0]))
  assert any(float(jnp.abs(g).max()) > 0.0 for g in jax.tree.leaves(only_later[1]["subnet"]))
  one = _model(1)
  p1, s1 = split_blocks(one.init(jax.random.PRNGKey(0)))
  total = jax.grad(
    lambda p: DecoupledLoss(one, 1, (False,), 0.5, 0.0)(p, Batch(x, y, mask), jax.random.PRNGKey(0), model_state=s1)[0]
  )(p1)
  ce = jax.grad(
    lambda p: losses.BlockLoss(one.blocks[0])(p[0], Batch(x, y, mask), jax.random.PRNGKey(0), model_state=s1[0])[0]
  )(p1)
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
  full = loss(params, Batch(x, y, mask), jax.random.PRNGKey(0), model_state=state)[1].per_sample[0]
  without = loss(params, Batch(x, y, mask * (1 - learned)), jax.random.PRNGKey(0), model_state=state)[1].per_sample[0]
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


def test_the_pipelined_epoch_is_the_decoupled_epoch_on_4_host_devices():
  """Four blocks as 4 pipeline stages (8 host devices, in their own process): the epoch trains what the
  one-device decoupled epoch trains, parameters and optimizer state within float round-off."""
  out = multidevice_checks.run("pipelined_epoch", 4, timeout=900)
  assert out.returncode == 0 and "ok" in out.stdout, out.stdout + out.stderr[-3000:]
  assert [line.split()[1] for line in out.stdout.splitlines() if line.startswith("stages")] == ["4"]


@pytest.mark.slow  # three more meshes to compile
def test_the_pipelined_epoch_is_the_decoupled_epoch_on_1_2_and_8_host_devices_and_a_small_buffer_drops_rows():
  """The same on 1, 2 and 8 stages; with a stage buffer of 8 rows the first stage drops rows, and says so."""
  out = multidevice_checks.run("pipelined_epoch", 1, 2, 8, timeout=900)
  assert out.returncode == 0 and "ok" in out.stdout, out.stdout + out.stderr[-3000:]
  assert [line.split()[1] for line in out.stdout.splitlines() if line.startswith("stages")] == ["1", "2", "8"]


def _steps(block_train, block_forward, **kw):
  from quicknets_jax.algorithms.pipeline_cost import MeasuredSteps

  args = dict(
    batch_size=100,
    block_train=block_train,
    block_forward=block_forward,
    end_to_end_train={100: 1.0, 50: 0.6, 34: 0.45, 25: 0.4},
    end_to_end_forward=0.3,
    feature_bytes=(400, 400, 400, 400)[: len(block_train)],
    param_bytes=1_000_000,
    device="test",
  )
  return MeasuredSteps(**{**args, **kw})


def test_the_wall_clock_model_counts_ticks_bubbles_transfers_and_the_all_reduce():
  from quicknets_jax.algorithms.pipeline_cost import Interconnect, data_parallel_seconds, pipelined_seconds

  steps = _steps((0.4, 0.2, 0.2, 0.1), (0.1, 0.05, 0.05, 0.02))
  free = Interconnect(bytes_per_second=float("inf"), latency_seconds=0.0)
  epochs = [[True] * 4, [False, True, True, True]]  # block 0 frozen in the second epoch: only its forward
  one = pipelined_seconds(steps, epochs, num_train=1000, num_val=200, num_devices=1, link=free)
  val = 2 * (0.1 + 0.05 + 0.05 + 0.02)  # 2 validation batches through every block
  assert one["seconds"] == pytest.approx(10 * 0.9 + val + 10 * 0.6 + val) and one["bubble_seconds"] == 0.0
  two = pipelined_seconds(steps, epochs, num_train=1000, num_val=200, num_devices=2, link=free)
  assert two["stages"] == [[0, 2], [2, 4]] and two["tick_seconds"] == pytest.approx([0.6, 0.3])
  assert two["seconds"] == pytest.approx(11 * 0.6 + val / 2 + 11 * 0.3 + val / 2)  # T + K - 1 ticks
  assert two["bubble_seconds"] == pytest.approx(0.6 + 0.3)
  slow = Interconnect(bytes_per_second=4e5, latency_seconds=0.01)  # 100 rows x 400 bytes: 0.1 s + 0.01 s
  linked = pipelined_seconds(steps, epochs[:1], num_train=1000, num_val=200, num_devices=2, link=slow)
  assert linked["tick_seconds"] == pytest.approx([0.6 + 0.11]) and linked["transfer_seconds"] == pytest.approx(1.1)
  eight = pipelined_seconds(steps, epochs[:1], num_train=1000, num_val=200, num_devices=8, link=free)
  assert len(eight["stages"]) == 4  # one stage per block at most
  assert data_parallel_seconds(steps, 3, 1000, 200, 1, free)["seconds"] == pytest.approx(3 * (10 * 1.0 + 2 * 0.3))
  dp = data_parallel_seconds(steps, 3, 1000, 200, 2, slow)
  assert dp["all_reduce_seconds"] == pytest.approx(2 * 0.01 + 1e6 / 4e5)
  assert dp["seconds"] == pytest.approx(3 * (10 * (0.6 + dp["all_reduce_seconds"]) + 2 * 0.3 / 2))
  with pytest.raises(KeyError, match="per-device batch of 15"):
    data_parallel_seconds(steps, 3, 1000, 200, 7, free)


def test_measured_steps_cover_every_block_and_the_end_to_end_network_and_read_back():
  from quicknets_jax.algorithms.pipeline_cost import MeasuredSteps, measure_steps, per_device_batches

  model = _model()
  assert per_device_batches(64, 4) == [64, 32, 22, 16]
  steps = measure_steps(model, 64, per_device_batches(64, 2), repeats=2)
  assert len(steps.block_train) == len(steps.block_forward) == 3 and set(steps.end_to_end_train) == {64, 32}
  assert all(t > 0 for t in (*steps.block_train, *steps.block_forward, steps.end_to_end_forward))
  assert steps.feature_bytes == (4 * 16 + 12, 4 * 12 + 12, 4 * 8 + 12)
  params, _ = split_blocks(model.init(jax.random.PRNGKey(0)))
  e2e = [p["subnet"] for p in params] + [params[-1]["exit_head"]]  # every subnet and the last exit
  assert steps.param_bytes == 4 * (36 * 16 + 16 + 16 * 12 + 12 + 12 * 8 + 8 + 8 * 4 + 4)
  assert steps.param_bytes == 4 * sum(x.size for x in jax.tree.leaves(e2e))
  assert MeasuredSteps.from_json(steps.to_json()) == steps


def test_a_smaller_stage_buffer_shortens_the_later_stages_in_the_model():
  from quicknets_jax.algorithms.pipeline_cost import Interconnect, pipelined_seconds

  steps = _steps((0.4, 0.2, 0.2, 0.1), (0.1, 0.05, 0.05, 0.02))
  free = Interconnect(bytes_per_second=float("inf"), latency_seconds=0.0)
  full = pipelined_seconds(steps, [[True] * 4], 1000, 200, num_devices=4, link=free)
  half = pipelined_seconds(steps, [[True] * 4], 1000, 200, num_devices=4, link=free, capacity=0.5)
  assert full["tick_seconds"] == pytest.approx([0.4]) and half["tick_seconds"] == pytest.approx([0.4])  # block 0
  two = pipelined_seconds(steps, [[False, True, True, True]], 1000, 200, num_devices=2, link=free, capacity=0.5)
  assert two["tick_seconds"] == pytest.approx([max(0.1 + 0.2, 0.5 * (0.2 + 0.1))])

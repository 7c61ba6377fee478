"""Algorithm 1: learned-set removal, frozen earlier blocks, checkpoints and resume equality."""

import dataclasses
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quicknets_jax import models
from quicknets_jax.algorithms.end_to_end import train_end_to_end
from quicknets_jax.algorithms.forward import all_exit_outputs
from quicknets_jax.algorithms.quicknet import QuickNetConfig, learned_mask, train_quicknet
from quicknets_jax.training.checkpoint import BlockCheckpointer, CheckpointError
from quicknets_jax.training.events import Events
from quicknets_jax.training.schedule import FitConfig
from quicknets_jax.workflows.deployable_curve import DeployableCurve

SMALL = QuickNetConfig(
  fit=FitConfig(batch_size=64, max_epochs=4),
  commit_fit=FitConfig(batch_size=64, max_epochs=4, balanced_sampling=False),
  train_threshold=0.5,
)


def test_learned_mask_needs_all_three_conditions():
  confident_right = [0.97, 0.01, 0.01, 0.01]
  probs = jnp.array([confident_right, confident_right, confident_right, [0.4, 0.2, 0.2, 0.2]])
  labels = jnp.array([0, 1, 0, 0])  # sample 1 is wrong
  commit = jnp.array([1.0, 1.0, -1.0, 1.0])  # sample 2 not committed; sample 3 not confident
  np.testing.assert_array_equal(learned_mask(probs, commit, labels, 0.5), [True, False, False, False])


def _model():
  return models.mlp((6, 6, 1), 4, width=16, num_blocks=3)


@pytest.fixture(scope="module")
def seed0_run(blobs, tmp_path_factory):
  """One checkpointed seed-0 run shared by the tests that only read it (compiles are the slow part)."""
  x, y, vx, vy = blobs
  directory = tmp_path_factory.mktemp("seed0") / "ckpt"
  run = train_quicknet(
    _model(), (x, y), (vx, vy), SMALL, seed=0, checkpointer=BlockCheckpointer(directory), log=lambda m: None
  )
  return run, directory


def test_removal_shrinks_the_working_set_and_freezes_earlier_blocks(blobs, seed0_run):
  x, y, vx, vy = blobs
  model = _model()
  run, _ = seed0_run
  sizes = [r.train_samples for r in run.records]
  assert sizes[0] == len(y)
  for a, b, r in zip(sizes, sizes[1:], run.records):
    assert b == a - r.learned  # T_{j+1} = T_j − L_j
  assert sizes[1] < sizes[0]
  # what block 0 learned is consistent with its outputs: recompute L_0 from the frozen block 0
  probs, commit = all_exit_outputs(model, run.variables[:1], x)
  l0 = np.asarray(learned_mask(probs[0], commit[0], y, SMALL.train_threshold))
  assert l0.sum() == run.records[0].learned
  # class counts of T_1 are those of the samples block 0 did not learn
  np.testing.assert_array_equal(run.records[1].class_counts, np.bincount(y[~l0], minlength=4))
  # block 0's parameters are the same whether or not later blocks were trained
  only_first = train_quicknet(
    models.mlp((6, 6, 1), 4, width=16, num_blocks=1), (x, y), (vx, vy), SMALL, seed=0, log=lambda m: None
  )
  chex.assert_trees_all_equal(only_first.variables[0], run.variables[0])


def test_flops_parts_are_counted(blobs, seed0_run):
  x, y, vx, vy = blobs
  model = _model()
  run, _ = seed0_run
  r0, r1 = run.records[:2]
  cost0, cost1 = model.block_costs[:2]
  assert r0.flops["block_training"] == r0.epochs * len(y) * 3 * (cost0.subnet + cost0.exit_head)
  assert r0.flops["cache"] == (len(y) + len(vy)) * (cost0.subnet + cost0.exit_head)  # block 0 has no prefix
  # block 1's cache includes running frozen block 0 over T_1 and V_1
  assert r1.flops["cache"] >= (r1.train_samples + r1.val_samples) * cost0.subnet
  assert run.training_flops == pytest.approx(sum(sum(r.flops.values()) for r in run.records))


def test_recomputed_prefix_gives_the_same_blocks_and_counts_more_flops(blobs, seed0_run):
  x, y, vx, vy = blobs
  model = _model()
  cached, _ = seed0_run
  recomputed = train_quicknet(
    model, (x, y), (vx, vy), dataclasses.replace(SMALL, cache_features=False), seed=0, log=lambda m: None
  )
  assert [r.train_samples for r in cached.records] == [r.train_samples for r in recomputed.records]
  chex.assert_trees_all_close(cached.variables, recomputed.variables, atol=1e-5)
  assert recomputed.records[1].flops["block_training"] > cached.records[1].flops["block_training"]


class Interrupt(Exception):
  pass


class StopAt(Events):
  """Raises Interrupt at the first epoch event for which `when(event)` is true."""

  def __init__(self, when):
    self.when = when

  def epoch_done(self, event):
    if self.when(event):
      raise Interrupt


def test_resume_after_a_stop_inside_a_block_equals_an_uninterrupted_run(blobs, tmp_path):
  x, y, vx, vy = blobs
  model = _model()
  full = train_quicknet(
    model, (x, y), (vx, vy), SMALL, seed=3, checkpointer=BlockCheckpointer(tmp_path / "full"), log=lambda m: None
  )

  stop_in_block_1 = StopAt(lambda event: event.phase == "block" and event.block == 1)
  ckpt_dir = tmp_path / "interrupted"
  with pytest.raises(Interrupt):
    train_quicknet(
      model,
      (x, y),
      (vx, vy),
      SMALL,
      seed=3,
      checkpointer=BlockCheckpointer(ckpt_dir),
      log=lambda m: None,
      events=stop_in_block_1,
    )
  messages = []
  resumed = train_quicknet(
    model, (x, y), (vx, vy), SMALL, seed=3, checkpointer=BlockCheckpointer(ckpt_dir), log=messages.append
  )
  assert any("resumed after block 0" in m for m in messages)
  chex.assert_trees_all_equal(jax.device_get(full.variables), jax.device_get(resumed.variables))
  assert [r.train_samples for r in full.records] == [r.train_samples for r in resumed.records]


def test_checkpoint_round_trip_and_corruption(seed0_run, tmp_path):
  run, directory = seed0_run
  model = _model()
  variables, records, (train_idx, val_idx) = BlockCheckpointer(directory).restore(model.init(jax.random.PRNGKey(0)))
  chex.assert_trees_all_equal(jax.device_get(run.variables), variables)
  assert [r["learned"] for r in records] == [r.learned for r in run.records]
  assert len(train_idx) == run.records[2].train_samples - run.records[2].learned
  assert np.all(np.diff(train_idx) > 0)  # still sorted indices into the training arrays
  # corrupt block 1's files: the error names the block, nothing silently falls back to random weights
  copy = tmp_path / "c"
  shutil.copytree(directory, copy)
  for f in (copy / "1").rglob("*"):
    if f.is_file() and f.stat().st_size > 0 and "variables" in str(f):
      f.write_bytes(b"garbage")
  with pytest.raises(CheckpointError, match="block 1"):
    BlockCheckpointer(copy).restore(model.init(jax.random.PRNGKey(0)))


def test_end_to_end_trains_only_the_backbone_and_final_exit(blobs):
  x, y, vx, vy = blobs
  model = _model()
  init = model.init(jax.random.fold_in(jax.random.PRNGKey(0), 0))  # the init train_end_to_end uses
  run = train_end_to_end(model, (x, y), (vx, vy), FitConfig(batch_size=64, max_epochs=2), seed=0, log=lambda m: None)
  for k in range(2):  # intermediate exits and all commitment heads are untouched
    chex.assert_trees_all_equal(run.variables[k]["params"]["exit_head"], init[k]["params"]["exit_head"])
  chex.assert_trees_all_equal(run.variables[2]["params"]["commit_head"], init[2]["params"]["commit_head"])
  assert not np.allclose(
    run.variables[2]["params"]["exit_head"]["out"]["kernel"], init[2]["params"]["exit_head"]["out"]["kernel"]
  )
  assert run.training_flops == run.epochs * (len(y) * 3 + len(vy)) * model.end_to_end_cost()


def test_every_sample_learned_skips_later_blocks(blobs):
  x, y, vx, vy = blobs
  model = _model()
  fast = FitConfig(batch_size=64, max_epochs=2, learning_rate=0.05)
  config = QuickNetConfig(fit=fast, commit_fit=fast, train_threshold=0.0)
  # with τ = 0 and a committed, correct exit everything counts as learned; force that with an easy task
  easy_y = np.zeros_like(y)
  messages = []
  run = train_quicknet(model, (x, easy_y), (vx, np.zeros_like(vy)), config, seed=0, log=messages.append)
  assert run.num_trained_blocks < 3
  assert any("skipped" in m for m in messages)
  probs, commit = all_exit_outputs(model, run.variables, vx)
  assert probs.shape[0] == run.num_trained_blocks


def test_deploy_curve_measures_the_cascade_after_every_block_epoch(blobs):
  """After block 0's only epoch, the deployable cascade is block 0 alone: with threshold 0 every sample
  leaves there, so its accuracy is exit 0's."""
  x, y, vx, vy = blobs
  tx, ty = x[:300], y[:300]
  model = _model()
  one_epoch = QuickNetConfig(fit=FitConfig(batch_size=64, max_epochs=1), train_threshold=0.5)
  curve = DeployableCurve(model, (vx, vy), (tx, ty), exit_threshold=0.0)
  run = train_quicknet(model, (x, y), (vx, vy), one_epoch, seed=0, log=lambda m: None, events=curve)
  points = [e for r in run.records for e in r.history]
  assert len(points) == 3 and all(0.0 <= e["cascade_test_accuracy"] <= 1.0 for e in points)
  flops = [e["training_flops_so_far"] for e in points]
  assert flops == sorted(flops) and flops[-1] < run.training_flops  # later parts come after the last epoch
  probs, _ = all_exit_outputs(model, run.variables[:1], tx)
  assert points[0]["cascade_test_accuracy"] == pytest.approx(float(np.mean(np.argmax(probs[0], -1) == ty)))
  # chosen on validation instead
  chosen = DeployableCurve(model, (vx, vy), (tx, ty))
  run = train_quicknet(model, (x, y), (vx, vy), one_epoch, seed=0, log=lambda m: None, events=chosen)
  assert all(0.0 <= e["cascade_threshold"] <= 1.0 for r in run.records for e in r.history)


def test_later_fits_find_their_programs_compiled_ahead(blobs):
  """While block 0 trains, a thread compiles the commitment heads' fits and the later blocks' fits
  (`CompilingAhead`): those fits then compile nothing, and each block records the thread's seconds."""
  x, y, vx, vy = blobs
  # a threshold no other test uses: every program of this run is compiled in it
  config = dataclasses.replace(SMALL, train_threshold=0.4321, budget="learned_set")
  run = train_quicknet(_model(), (x, y), (vx, vy), config, seed=0, log=lambda _: None)
  assert run.num_trained_blocks == 3
  records = run.records
  assert sum(r["compile_seconds"] for r in records[0].history) > 0  # block 0 compiles its own fit
  assert [sum(h["compile_seconds"] for h in r.history) for r in records[1:]] == [0.0, 0.0]
  assert [sum(h["compile_seconds"] for h in r.commit_history) for r in records] == [0.0, 0.0, 0.0]
  assert all(r.background_compile_seconds > 0 for r in records)

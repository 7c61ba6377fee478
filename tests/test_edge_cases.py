"""Working sets at their extremes are handled, not crashed on: everything learned before the last
block (later blocks skipped with a note, inference still works), a class gone from T_j, T_j smaller
than a batch (down to one sample), a single class left, every validation sample learned."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quicknets_jax import data, models
from quicknets_jax.algorithms import quicknet
from quicknets_jax.algorithms.forward import all_exit_outputs
from quicknets_jax.algorithms.quicknet import QuickNetConfig, Task, WorkingSets, train_block, train_quicknet
from quicknets_jax.core import exits
from quicknets_jax.data.split import Split
from quicknets_jax.training.schedule import FitConfig
from quicknets_jax.workflows.experiment import evaluate_quicknet
from quicknets_jax.workflows.experiment_config import ExperimentConfig
from tests.conftest import make_blobs

CONFIG = QuickNetConfig(
  fit=FitConfig(batch_size=64, max_epochs=2),
  commit_fit=FitConfig(batch_size=64, max_epochs=2, balanced_sampling=False),
  train_threshold=0.5,
)


def _model(num_blocks=3):
  return models.mlp((6, 6, 1), 4, width=16, num_blocks=num_blocks)


@pytest.fixture(scope="module")
def split():
  x, y = make_blobs(600, seed=0)
  vx, vy = make_blobs(150, seed=1)
  return x, y, vx, vy


def _block0(split, train_idx, val_idx=None, config=CONFIG):
  """Trains block 0 of a fresh model on the given working sets; returns (record, T_1, V_1)."""
  x, y, vx, vy = split
  model = _model()
  init = model.init(jax.random.PRNGKey(0))
  val_idx = np.arange(len(vy), dtype=np.int32) if val_idx is None else val_idx
  task = Task(model, Split(x, y), Split(vx, vy), config, init, log=lambda m: None)
  variables, record, (next_train, next_val) = train_block(
    task, 0, [], WorkingSets(np.asarray(train_idx, np.int32), np.asarray(val_idx, np.int32)), jax.random.PRNGKey(1)
  )
  return variables, record, next_train, next_val


def _finite_history(record):
  return all(
    np.isfinite(r["train_loss"]) and np.isfinite(r["val_loss"]) for r in record.history + record.commit_history
  )


def test_everything_learned_before_the_last_block_skips_it_and_inference_works():
  x, y = make_blobs(400, seed=0, noise=0.02)  # far-apart blobs: block 0 gets every sample right
  vx, vy = make_blobs(100, seed=1, noise=0.02)
  tx, ty = make_blobs(100, seed=2, noise=0.02)
  fast = FitConfig(batch_size=32, max_epochs=3, learning_rate=0.02)
  config = QuickNetConfig(fit=fast, commit_fit=fast, train_threshold=0.3)
  messages = []
  model = _model()
  run = train_quicknet(model, (x, y), (vx, vy), config, seed=0, log=messages.append)
  assert run.num_trained_blocks < model.num_blocks, [r.learned for r in run.records]
  assert run.records[-1].learned == run.records[-1].train_samples  # the last trained block took the rest
  assert any("every training sample was learned" in m and "skipped" in m for m in messages), messages
  # inference over the trained blocks only: the exit rule, the threshold choice and the report
  ds = data.Dataset("toy", data.Split(x, y), data.Split(vx, vy), data.Split(tx, ty), 4, tuple("abcd"))
  result = evaluate_quicknet(model, run.variables, ds, ExperimentConfig().replace(num_blocks=3, width=16, seeds=(0,)))
  assert len(result["exit_fractions"]) == model.num_blocks
  assert sum(result["exit_fractions"][run.num_trained_blocks :]) == 0.0
  assert abs(sum(result["exit_fractions"]) - 1.0) < 1e-6
  assert result["test_accuracy"] > 0.9
  probs, commit = all_exit_outputs(model, run.variables, tx)
  decision = exits.select_exits(probs, commit, 0.5)
  assert int(jnp.max(decision.exit_index)) < run.num_trained_blocks


def test_a_class_removed_entirely_from_the_working_set(split):
  x, y, vx, vy = split
  train_idx = np.flatnonzero(y != 2)  # as if block j−1 had learned every sample of class 2
  _, record, next_train, _ = _block0(split, train_idx)
  assert record.class_counts[2] == 0 and sum(record.class_counts) == len(train_idx)
  assert _finite_history(record)
  assert not np.isin(next_train, np.flatnonzero(y == 2)).any()  # nothing comes back
  assert set(next_train) <= set(train_idx)


@pytest.mark.parametrize("n", [1, 10])
def test_working_set_smaller_than_a_batch(split, n):
  x, y, vx, vy = split
  train_idx = np.arange(n)  # batch size 64: one padded, masked batch per epoch
  _, record, next_train, _ = _block0(split, train_idx)
  assert record.train_samples == n and record.epochs >= 1 and _finite_history(record)
  assert all(r["samples"] == n for r in record.history)
  assert len(next_train) == n - record.learned
  cost = _model().block_costs[0]
  assert record.flops["block_training"] == record.epochs * n * 3 * (cost.subnet + cost.exit_head)


def test_a_single_class_left(split):
  x, y, vx, vy = split
  train_idx = np.flatnonzero(y == 1)
  val_idx = np.flatnonzero(vy == 1)
  variables, record, next_train, next_val = _block0(split, train_idx, val_idx)
  assert np.count_nonzero(record.class_counts) == 1 and _finite_history(record)
  # one class only: the exit soon answers it for everything; the commitment head (all targets alike)
  # still trains with its balanced weights and the learned set is still well defined
  assert 0 <= record.learned <= len(train_idx)
  assert set(next_train) <= set(train_idx) and set(next_val) <= set(val_idx)


def test_every_validation_sample_learned_falls_back_to_the_whole_split(split, monkeypatch):
  """An empty V_j would leave nothing to validate on: the next block validates on the whole split."""
  x, y, vx, vy = split
  seen = []
  real = quicknet.train_block

  def spy(task, j, frozen, working, *a, **k):
    seen.append(len(working.val_idx))
    variables, record, next_sets = real(task, j, frozen, working, *a, **k)
    if j == 0:  # block 0 "learned" all of V
      next_sets = next_sets._replace(val_idx=np.zeros((0,), np.int32))
    return variables, record, next_sets

  monkeypatch.setattr(quicknet, "train_block", spy)
  run = quicknet.train_quicknet(_model(2), (x, y), (vx, vy), CONFIG, seed=0, log=lambda m: None)
  assert seen == [len(vy), len(vy)] and run.num_trained_blocks == 2


def test_seeds_whose_cascades_kept_different_numbers_of_blocks_average_their_curves():
  """An early block that learns every training sample leaves a one-block cascade: averaged with seeds that
  kept three blocks, it sends no samples to the exits it lacks."""
  from quicknets_jax.workflows.aggregate import average_curves

  three = [dict(threshold=0.5, test_accuracy=0.9, exit_fractions=[0.5, 0.3, 0.2])]
  one = [dict(threshold=0.5, test_accuracy=0.8, exit_fractions=[1.0])]
  (point,) = average_curves([three, one])
  assert point["threshold"] == 0.5 and abs(point["test_accuracy"] - 0.85) < 1e-12
  assert point["exit_fractions"] == [0.75, 0.15, 0.1]


def test_per_block_numbers_of_a_shorter_cascade_aggregate_by_what_they_mean():
  """Amounts (epochs, samples) count 0 for a block the seed does not have; accuracies average over the
  seeds that have the block."""
  from quicknets_jax.workflows.aggregate import aggregate

  three = dict(test_accuracy=0.9, epochs_per_block=[30, 20, 10], per_exit_test_accuracy=[0.8, 0.85, 0.9])
  one = dict(test_accuracy=0.8, epochs_per_block=[100], per_exit_test_accuracy=[0.7])
  out = aggregate([three, one])
  assert out["epochs_per_block"] == [65.0, 10.0, 5.0]
  assert out["per_exit_test_accuracy"] == [0.75, 0.85, 0.9]

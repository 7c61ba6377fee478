"""QuickNet+ levers: each is off by default, and each changes exactly what it says it changes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import fit_data_of

from quicknets_jax import models
from quicknets_jax.algorithms.finetune import FinetuneHooks, finetune_quicknet
from quicknets_jax.algorithms.forward import all_exit_outputs
from quicknets_jax.algorithms.quicknet import (
  QuickNetConfig,
  feature_cache_bytes,
  learned_mask,
  train_quicknet,
  uses_feature_cache,
)
from quicknets_jax.core.costs import xla_flops
from quicknets_jax.data.sampling import seeded_mask, seeded_subset
from quicknets_jax.models.base import Block, parts_mask, split_variables
from quicknets_jax.training import losses
from quicknets_jax.training.checkpoint import BlockCheckpointer
from quicknets_jax.training.schedule import FitConfig
from quicknets_jax.training.step import Batch
from quicknets_jax.training.trainer import Objective, fit
from quicknets_jax.workflows import ablation

SMALL = QuickNetConfig(
  fit=FitConfig(batch_size=64, max_epochs=2),
  commit_fit=FitConfig(batch_size=64, max_epochs=2, balanced_sampling=False),
  train_threshold=0.5,
)


def _model(**kwargs):
  return models.mlp((6, 6, 1), 4, width=16, num_blocks=3, **kwargs)


def _train(blobs, config, model=None, seed=0):
  x, y, vx, vy = blobs
  return train_quicknet(model or _model(), (x, y), (vx, vy), config, seed=seed, log=lambda m: None)


@pytest.fixture(scope="module")
def faithful(blobs):
  return _train(blobs, SMALL)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(budget="epochs"), "budget must be one of"),
    (dict(budget_patience=0), "budget_patience"),
    (dict(commit_holdout=1.0), "commit_holdout must be in"),
    (dict(keep_learned=-0.1), "keep_learned must be in"),
  ],
)
def test_bad_lever_values_are_refused(kwargs, message):
  with pytest.raises(ValueError, match=message):
    QuickNetConfig(**kwargs)


def test_bad_monitor_is_refused():
  with pytest.raises(ValueError, match="monitor must be one of"):
    FitConfig(monitor="val_acc")
  with pytest.raises(ValueError, match="min_delta"):
    FitConfig(min_delta=-1.0)


def test_seeded_subsets_are_deterministic_and_sized():
  key = jax.random.PRNGKey(3)
  a, b = seeded_subset(100, 0.2, key), seeded_subset(100, 0.2, key)
  np.testing.assert_array_equal(a, b)
  assert len(a) == 20 and len(np.unique(a)) == 20 and np.all(np.diff(a) > 0)
  assert len(seeded_subset(100, 0.0, key)) == 0
  mask = np.zeros(50, bool)
  mask[::2] = True
  chosen = seeded_mask(mask, 0.4, key)
  assert chosen.sum() == 10 and not np.any(chosen & ~mask)


def test_block_loss_with_learned_threshold_reports_confident_correct_samples():
  model = _model()
  block = model.blocks[0]
  variables = model.init(jax.random.PRNGKey(0))[0]
  params, state = split_variables(variables)
  x = jax.random.normal(jax.random.PRNGKey(1), (32, 6, 6, 1))
  y = jnp.zeros(32, jnp.int32)
  batch = Batch(x, y, jnp.ones(32))
  plain = losses.BlockLoss(block)(params, batch, None, model_state=state)[1]
  strict = losses.BlockLoss(block, learned_threshold=0.99)(params, batch, None, model_state=state)[1]
  np.testing.assert_allclose(plain[0], strict[0])  # the loss itself does not change
  # an untrained exit is never confident above 0.99: nothing counts as learned
  assert float(jnp.sum(strict[1])) == 0.0 and float(jnp.sum(plain[1])) > 0
  loose = losses.BlockLoss(block, learned_threshold=0.0)(params, batch, None, model_state=state)[1]
  np.testing.assert_array_equal(loose[1], plain[1])


def test_monitoring_accuracy_keeps_the_most_accurate_epoch(blobs):
  x, y, vx, vy = blobs
  model = _model()
  params, state = split_variables(model.init(jax.random.PRNGKey(0))[0])
  objective = Objective(losses.BlockLoss(model.blocks[0]), parts_mask(params, ("subnet", "exit_head")))
  data = fit_data_of(x, y, vx, vy)
  config = FitConfig(batch_size=64, max_epochs=6, monitor="val_accuracy", early_stop_patience=2)
  result = fit(objective, params, state, data, config, jax.random.PRNGKey(1))
  accuracies = [r["val_accuracy"] for r in result.history]
  assert result.best_epoch == int(np.argmax(accuracies)) + 1
  assert result.best_score == pytest.approx(-max(accuracies))
  # a min_delta larger than any possible gain: no epoch after the first is progress, so the fit stops
  # after `early_stop_patience` more epochs — and still keeps the best of the epochs it ran
  config = dataclasses.replace(config, min_delta=1.0)
  result = fit(objective, params, state, data, config, jax.random.PRNGKey(1))
  accuracies = [r["val_accuracy"] for r in result.history]
  assert result.epoch == 3 and result.best_epoch == int(np.argmax(accuracies)) + 1


def test_learned_set_budget_changes_only_the_stopping_rule(blobs, faithful):
  config = dataclasses.replace(
    SMALL,
    fit=dataclasses.replace(SMALL.fit, max_epochs=5),
    budget="learned_set",
    budget_min_delta=0.999,
    budget_patience=1,
  )
  run = _train(blobs, config)
  # with a growth no epoch can reach, every block stops after its second epoch of 5 (and keeps the better)
  assert [r.epochs for r in run.records] == [2] * len(run.records)
  assert all(r.history[-1]["stopped"] for r in run.records)
  for r in run.records:
    learned = [e["val_accuracy"] for e in r.history]  # the fraction it would remove
    assert r.best_epoch == int(np.argmax(learned)) + 1


def test_commit_holdout_keeps_a_slice_out_of_block_training(blobs, faithful):
  x, y, vx, vy = blobs
  model = _model()
  run = _train(blobs, dataclasses.replace(SMALL, commit_holdout=0.25))
  r0 = run.records[0]
  cost = model.block_costs[0]
  n_fit = len(y) - round(0.25 * len(y))
  assert r0.train_samples == len(y)  # the held-out slice is still part of T_0 ...
  assert r0.flops["block_training"] == r0.epochs * n_fit * 3 * (cost.subnet + cost.exit_head)  # ... not trained on
  assert r0.flops["commit_training"] == r0.commit_epochs * (len(y) - n_fit) * 3 * cost.commit_head
  assert not np.allclose(
    run.variables[0]["params"]["subnet"]["dense_0"]["kernel"],
    faithful.variables[0]["params"]["subnet"]["dense_0"]["kernel"],
  )
  # selection still covers all of T_0: the learned set is what the frozen block + head say
  probs, commit = all_exit_outputs(model, run.variables[:1], x)
  assert int(np.sum(learned_mask(probs[0], commit[0], y, SMALL.train_threshold))) == r0.learned
  again = _train(blobs, dataclasses.replace(SMALL, commit_holdout=0.25))
  assert [r.learned for r in again.records] == [r.learned for r in run.records]


def test_soft_removal_keeps_a_fraction_of_each_learned_set(blobs):
  run = _train(blobs, dataclasses.replace(SMALL, keep_learned=0.5))
  for a, b in zip(run.records, run.records[1:]):
    kept = round(0.5 * a.learned)
    assert b.train_samples == a.train_samples - a.learned + kept


def test_faithful_defaults_are_unchanged_by_the_levers_code(blobs, faithful):
  explicit = dataclasses.replace(SMALL, budget="val_loss", commit_holdout=0.0, keep_learned=0.0)
  run = _train(blobs, explicit)
  assert [r.learned for r in run.records] == [r.learned for r in faithful.records]
  np.testing.assert_array_equal(
    run.variables[-1]["params"]["exit_head"]["out"]["kernel"],
    faithful.variables[-1]["params"]["exit_head"]["out"]["kernel"],
  )


def test_wider_later_blocks_shapes_and_flops():
  model = _model(later_width=40)
  variables = model.init(jax.random.PRNGKey(0))
  assert variables[0]["params"]["subnet"]["dense_0"]["kernel"].shape == (36, 16)
  assert variables[1]["params"]["subnet"]["dense_0"]["kernel"].shape == (16, 40)
  assert variables[2]["params"]["subnet"]["dense_0"]["kernel"].shape == (40, 40)
  x = jnp.zeros((8, 6, 6, 1))
  for j, block in enumerate(model.blocks):
    measured = xla_flops(lambda v, h, b=block: b.apply(v, h, method=Block.features), variables[j], x) / 8
    assert measured == pytest.approx(model.block_costs[j].subnet, rel=0.02)
    x = block.apply(variables[j], x, method=Block.features)
  with pytest.raises(ValueError, match="later_width"):
    models.mlp((6, 6, 1), 4, later_width=0)


def test_joint_finetune_trains_every_block_then_the_heads_and_counts_its_cost(blobs, faithful, tmp_path):
  x, y, vx, vy = blobs
  model = _model()
  config = dataclasses.replace(SMALL, finetune_epochs=1)
  run = train_quicknet(
    model, (x, y), (vx, vy), config, seed=0, checkpointer=BlockCheckpointer(tmp_path / "c"), log=lambda m: None
  )
  assert run.finetune["epochs"] == 1 and len(run.finetune["commit_epochs"]) == 3
  # the block-wise part is the faithful run's, bit for bit; fine-tuning comes on top
  assert [r.learned for r in run.records] == [r.learned for r in faithful.records]
  forward = sum(c.subnet + c.exit_head for c in model.block_costs)
  assert run.finetune["flops"]["finetune_training"] == 3 * len(y) * forward
  assert run.finetune["flops"]["finetune_validation"] == len(vy) * forward
  assert run.training_flops == pytest.approx(faithful.training_flops + sum(run.finetune["flops"].values()))
  for j in range(3):
    for part in ("subnet", "commit_head"):
      assert not np.allclose(
        jax.tree.leaves(run.variables[j]["params"][part])[0], jax.tree.leaves(faithful.variables[j]["params"][part])[0]
      )
  # a rerun on the same checkpoints restores the blocks and the finished fine-tuning: same variables
  again = train_quicknet(
    model, (x, y), (vx, vy), config, seed=0, checkpointer=BlockCheckpointer(tmp_path / "c"), log=lambda m: None
  )
  for a, b in zip(jax.tree.leaves(again.variables), jax.tree.leaves(run.variables)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_joint_loss_augments_the_images_it_trains_on(blobs):
  """The bug this guards against: QuickNet+ fine-tuning trained without --augment (its joint loss never
  read the augmentation), while the blocks it fine-tunes had trained with it."""
  x, y, _, _ = blobs
  model = _model()
  params, state = (list(t) for t in zip(*(split_variables(v) for v in model.init(jax.random.PRNGKey(0)))))
  xb, yb, rng = jnp.asarray(x[:64]), jnp.asarray(y[:64]), jax.random.PRNGKey(5)
  batch = Batch(xb, yb, jnp.ones(64))
  plain = losses.JointLoss(model, [1.0, 1.0])(params, batch, rng, model_state=state)[1].per_sample
  augmented = losses.JointLoss(model, [1.0, 1.0], "crop_flip")(params, batch, rng, model_state=state)[1].per_sample
  assert not np.allclose(plain, augmented)
  # evaluation never augments
  evaluated = losses.JointLoss(model, [1.0, 1.0], "crop_flip")(params, batch, None, model_state=state)[1].per_sample
  np.testing.assert_allclose(
    evaluated, losses.JointLoss(model, [1.0, 1.0])(params, batch, None, model_state=state)[1].per_sample
  )


def test_finetuning_follows_the_runs_augmentation(blobs, faithful):
  x, y, vx, vy = blobs
  model = _model()
  plain = dataclasses.replace(SMALL, cache_features=False, finetune_epochs=1)
  augmented = dataclasses.replace(plain, fit=dataclasses.replace(plain.fit, augment=True))
  key = jax.random.PRNGKey(2)
  tuned = [
    finetune_quicknet(model, faithful.variables, ((x, y), (vx, vy)), c, key, hooks=FinetuneHooks(log=lambda m: None))
    for c in (plain, augmented, augmented)
  ]
  (plain_vars, plain_record), (aug_vars, aug_record), (again_vars, _) = tuned
  assert plain_record["history"][0]["train_loss"] != aug_record["history"][0]["train_loss"]
  assert not np.allclose(
    plain_vars[0]["params"]["subnet"]["dense_0"]["kernel"], aug_vars[0]["params"]["subnet"]["dense_0"]["kernel"]
  )
  for a, b in zip(jax.tree.leaves(aug_vars), jax.tree.leaves(again_vars)):  # the augmentation is seeded
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_feature_cache_budget_falls_back_to_recomputation(blobs):
  x, y, vx, vy = blobs
  model = _model()
  # 16 floats per sample, (2048 + 512) padded rows: 160 KiB per block
  assert feature_cache_bytes(model, 1, len(y), len(vy)) == 4 * 16 * (2048 + 512)
  assert uses_feature_cache(model, 0, dataclasses.replace(SMALL, feature_cache_mb=0.0), len(y), len(vy))
  assert not uses_feature_cache(model, 1, dataclasses.replace(SMALL, feature_cache_mb=0.1), len(y), len(vy))
  assert uses_feature_cache(model, 1, dataclasses.replace(SMALL, feature_cache_mb=0.2), len(y), len(vy))
  short = dataclasses.replace(
    SMALL,
    fit=dataclasses.replace(SMALL.fit, max_epochs=1),
    commit_fit=dataclasses.replace(SMALL.commit_fit, max_epochs=1),
  )
  over = train_quicknet(
    model, (x, y), (vx, vy), dataclasses.replace(short, feature_cache_mb=0.1), seed=0, log=lambda m: None
  )
  off = train_quicknet(
    model, (x, y), (vx, vy), dataclasses.replace(short, cache_features=False), seed=0, log=lambda m: None
  )
  assert [r.flops for r in over.records] == [r.flops for r in off.records]  # the recompute path, counted so
  assert [r.learned for r in over.records] == [r.learned for r in off.records]
  with pytest.raises(ValueError, match="feature_cache_mb"):
    QuickNetConfig(feature_cache_mb=-1.0)


def _seed_curves(commit_acc, conf_acc, costs=(0.8, 0.9, 1.0)):
  curve = lambda accs: [dict(inference_flops=c, test_accuracy=a) for c, a in zip(costs, accs)]
  return dict(curve=curve(commit_acc), curve_confidence_only=curve(conf_acc))


def test_ablation_choice_uses_validation_only_and_margins_read_the_curves():
  results = lambda val, test: {"quicknet": {"val_accuracy_at_threshold": val, "test_accuracy": test}}
  faithful = results(0.89, 0.88)
  levers = {"budget": results(0.85, 0.99), "holdout": results(0.90, 0.10), "soft_removal": results(0.88, 0.99)}
  # the test accuracies are deliberately the opposite of the validation ones: only validation counts
  assert ablation.choose_combination(faithful, levers) == ["budget", "holdout"]
  above = [_seed_curves([0.9, 0.9, 0.9], [0.8, 0.85, 0.9])]
  assert ablation.commitment_margin(above, full_cost=1.0) == pytest.approx(0.0)
  below = [_seed_curves([0.8, 0.85, 0.9], [0.9, 0.9, 0.9])]
  assert ablation.commitment_margin(below, full_cost=1.0) == pytest.approx(-0.1)
  # mean accuracy over the curve's cost range: trapezoids of (0.8, 0.85, 0.9) over [0.8, 1.0]
  assert ablation.curve_mean_accuracy(below, full_cost=1.0) == pytest.approx(0.85)

"""The Table-1 network and the authors' schedule: parameter counts, the commitment head on the
exit's logits, and each switch of the authors' code doing exactly what it says (and refusing bad values
with the fix in the message)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import fit_data_of

from benchmarks.fault_injection import untimed
from experiments import table1
from quicknets_jax import models
from quicknets_jax.algorithms.commitment import train_commitment_head
from quicknets_jax.algorithms.quicknet import learned_mask, train_quicknet
from quicknets_jax.algorithms.settings import QuickNetConfig
from quicknets_jax.core.costs import xla_flops
from quicknets_jax.data import augment
from quicknets_jax.data.split import Split
from quicknets_jax.models.base import Block, split_variables
from quicknets_jax.reporting.tables import table1_markdown, table1_row
from quicknets_jax.training import losses
from quicknets_jax.training.optimizer import Adam, Mask
from quicknets_jax.training.schedule import FitConfig
from quicknets_jax.training.trainer import Objective, fit
from quicknets_jax.workflows.experiment_config import ExperimentConfig

SMALL = QuickNetConfig(
  fit=FitConfig(batch_size=64, max_epochs=2),
  commit_fit=FitConfig(batch_size=64, max_epochs=2, balanced_sampling=False),
  train_threshold=0.5,
)


def _count(tree) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(tree)))


def test_the_table1_network_has_the_papers_parameter_counts_and_cost():
  model = models.mlp((28, 28, 1), 10, hidden=(150, 100, 50), commit_head="logits")
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0))
  end_to_end = [v["params"]["subnet"] for v in variables] + [variables[-1]["params"]["exit_head"]]
  assert _count(end_to_end) == 138_410  # Table 1, end-to-end: 0.138 M
  assert _count([v["params"] for v in variables]) == 141_260  # Table 1, QuickNet: 0.141 M
  assert [_count(v["params"]["commit_head"]) for v in variables] == [110, 110, 110]  # Dense(10 -> 10)
  assert model.end_to_end_macs() == 138_100  # Table 1's end-to-end inference cost: 0.138 (M multiply-adds)
  # the same network through the flags the study uses
  config = table1.cell_config("fashion_mnist", "150-100-50", "appendix", (0,))
  built = config.model.build((28, 28, 1), 10)
  assert built.block_costs == model.block_costs and built.block_macs == model.block_macs


def test_the_logits_commitment_head_reads_the_exit_and_its_flops_match_xla():
  model = models.mlp((6, 6, 1), 4, hidden=(16, 8), num_blocks=2, commit_head="logits")
  variables = model.init(jax.random.PRNGKey(0))
  block, v = model.blocks[0], variables[0]
  x = jax.random.normal(jax.random.PRNGKey(1), (5, 6, 6, 1))
  features, logits, commit = block.apply(v, x)
  head = v["params"]["commit_head"]["out"]
  expected = (jax.nn.relu(logits) @ head["kernel"] + head["bias"])[:, 0]  # the first of C outputs
  np.testing.assert_allclose(commit, expected, rtol=1e-6)
  np.testing.assert_allclose(block.apply(v, features, method=Block.commit), expected, rtol=1e-6)
  measured = xla_flops(lambda p, h: block.apply(p, h, method=Block.commit_from_inputs), v, logits[:1])
  assert measured == model.block_costs[0].commit_head  # ReLU(4 logits) + Dense(4 -> 4)
  with pytest.raises(ValueError, match="commit_head must be one of"):
    models.mlp((6, 6, 1), 4, commit_head="gate")


def test_a_logits_head_trains_on_the_frozen_exits_logits(blobs):
  x, y, vx, vy = blobs
  model = models.mlp((6, 6, 1), 4, width=16, num_blocks=1, commit_head="logits")
  variables = model.init(jax.random.PRNGKey(0))[0]
  block = model.blocks[0]
  h, probs, _ = block.apply(variables, jnp.asarray(x))
  vh, vprobs, _ = block.apply(variables, jnp.asarray(vx))
  correct = (np.argmax(probs, -1) == y).astype(np.int32)
  val_correct = (np.argmax(vprobs, -1) == vy).astype(np.int32)
  state = train_commitment_head(
    block,
    variables,
    Split(np.asarray(h), correct),
    Split(np.asarray(vh), val_correct),
    FitConfig(batch_size=64, max_epochs=2),
    jax.random.PRNGKey(1),
  )
  for part in ("subnet", "exit_head"):  # only the head moved
    for a, b in zip(jax.tree.leaves(state.best_params[part]), jax.tree.leaves(variables["params"][part])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.allclose(
    state.best_params["commit_head"]["out"]["kernel"], variables["params"]["commit_head"]["out"]["kernel"]
  )


def test_weight_decay_is_pytorch_adams_l2():
  params = {"w": jnp.asarray([1.0, -2.0]), "b": jnp.asarray([0.5])}
  grads = {"w": jnp.asarray([0.1, 0.2]), "b": jnp.asarray([0.3])}
  adam = Adam(Mask.of({"w": True, "b": False}), weight_decay=0.1)
  updates, _ = adam.transform().update(grads, adam.init(params, learning_rate=1.0), params)
  # torch: g + wd·p, then Adam's first step (m/√v → sign), times −lr
  expected, _ = optax.scale_by_adam().update(
    {"w": grads["w"] + 0.1 * params["w"]}, optax.scale_by_adam().init({"w": params["w"]})
  )
  np.testing.assert_allclose(-updates["w"], expected["w"], rtol=1e-6)
  assert float(updates["b"][0]) == 0.0  # frozen leaves get nothing, decay included
  with pytest.raises(ValueError, match="weight_decay"):
    ExperimentConfig().replace(weight_decay=-1.0)


def test_monitoring_the_training_loss_keeps_the_lowest_training_loss(blobs):
  x, y, vx, vy = blobs
  model = models.mlp((6, 6, 1), 4, width=16, num_blocks=1)
  params, state = split_variables(model.init(jax.random.PRNGKey(0))[0])
  data = fit_data_of(x, y, vx, vy)
  config = FitConfig(batch_size=64, max_epochs=5, monitor="train_loss", early_stop_patience=5, learning_rate=0.05)
  result = fit(Objective(losses.BlockLoss(model.blocks[0])), params, state, data, config, jax.random.PRNGKey(1))
  train_losses = [r["train_loss"] for r in result.history]
  assert result.best_epoch == int(np.argmin(train_losses)) + 1
  assert result.best_score == pytest.approx(min(train_losses))
  with pytest.raises(ValueError, match="monitor must be one of"):
    FitConfig(monitor="test_loss")


def test_affine_augmentation_is_seeded_in_range_and_only_in_training():
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 28, 28, 1))
  a, b = (augment.random_affine(x, jax.random.PRNGKey(1)) for _ in range(2))
  np.testing.assert_array_equal(a, b)
  assert a.shape == x.shape and not np.allclose(a, x)
  identity = augment.random_affine(x, jax.random.PRNGKey(1), degrees=0.0, translate=0.0, scale=(1.0, 1.0))
  np.testing.assert_array_equal(identity, x)
  # every pixel comes from the image or is its darkest value (the fill)
  for image, out in zip(np.asarray(x), np.asarray(a)):
    assert np.isin(out, image).all()
  np.testing.assert_array_equal(losses.augment_inputs("affine", x, jax.random.PRNGKey(1), False), x)
  np.testing.assert_array_equal(losses.augment_inputs("affine", x, jax.random.PRNGKey(1), True), a)


def test_full_size_epochs_draw_the_whole_split_from_later_working_sets(blobs):
  x, y, vx, vy = blobs
  model = models.mlp((6, 6, 1), 4, width=16, num_blocks=2)
  run = train_quicknet(
    model, (x, y), (vx, vy), dataclasses.replace(SMALL, epoch_draws="full"), seed=0, log=lambda m: None
  )
  first, later = run.records
  assert all(r["samples"] == len(y) and "working_set" not in r for r in first.history)
  assert later.train_samples < len(y)  # T_1 is smaller ...
  assert all(
    r["samples"] == len(y) and r["working_set"] == later.train_samples for r in later.history
  )  # ... its epochs not
  cost = model.block_costs[1]
  assert later.flops["block_training"] == later.epochs * len(y) * 3 * (cost.subnet + cost.exit_head)
  with pytest.raises(ValueError, match="balanced_sampling"):
    QuickNetConfig(fit=FitConfig(balanced_sampling=False), epoch_draws="full")
  with pytest.raises(ValueError, match="epoch_draws must be one of"):
    QuickNetConfig(epoch_draws="half")


def test_sampled_commitment_balance_draws_right_and_wrong_equally(blobs):
  x, y, vx, vy = blobs
  model = models.mlp((6, 6, 1), 4, width=16, num_blocks=1)
  weighted = train_quicknet(model, (x, y), (vx, vy), SMALL, seed=0, log=lambda m: None)
  sampled = train_quicknet(
    model, (x, y), (vx, vy), dataclasses.replace(SMALL, commit_balance="sampled"), seed=0, log=lambda m: None
  )
  assert untimed(weighted.records[0].history) == untimed(sampled.records[0].history)  # the block is the same
  assert untimed(weighted.records[0].commit_history) != untimed(sampled.records[0].commit_history)
  with pytest.raises(ValueError, match="commit_balance must be one of"):
    QuickNetConfig(commit_balance="oversampled")


def test_the_learned_commitment_probability_raises_the_bar():
  probs = jnp.asarray([[0.97, 0.01, 0.01, 0.01]] * 3)
  labels = jnp.asarray([0, 0, 0])
  commit = jnp.asarray([0.5, 1.0, 2.0])  # sigmoid: 0.62, 0.73, 0.88
  strict = QuickNetConfig(learned_commit_prob=0.8)
  np.testing.assert_array_equal(learned_mask(probs, commit, labels, 0.5), [True, True, True])
  np.testing.assert_array_equal(
    learned_mask(probs, commit, labels, 0.5, strict.learned_commit_logit()), [False, False, True]
  )
  assert QuickNetConfig().learned_commit_logit() == 0.0  # 0.5 is "positive commitment" (docs/method.md)
  for bad in (0.0, 1.0):
    with pytest.raises(ValueError, match="learned_commit_prob"):
      QuickNetConfig(learned_commit_prob=bad)


def test_per_block_widths_are_checked_with_the_fix():
  with pytest.raises(ValueError, match="--num_blocks=2"):
    models.mlp((28, 28, 1), 10, hidden=(150, 100), num_blocks=3)
  with pytest.raises(ValueError, match="drop --later_width"):
    models.mlp((28, 28, 1), 10, hidden=(150, 100, 50), later_width=300)
  with pytest.raises(ValueError, match="hidden is only implemented for the mlp model"):
    ExperimentConfig().replace(model="vgg", hidden=(8, 8))


def test_the_authors_schedule_is_the_flagfiles_switches():
  config = table1.cell_config("fashion_mnist", "150-100-50", "authors", (0, 1, 2))
  fit_config, quicknet = config.fit, config.quicknet
  assert (fit_config.monitor, fit_config.weight_decay, fit_config.augmentation_name, fit_config.batch_size) == (
    "train_loss",
    5e-4,
    "affine",
    64,
  )
  assert (quicknet.epoch_draws, quicknet.commit_balance, quicknet.learned_commit_prob, quicknet.cache_features) == (
    "full",
    "sampled",
    0.8,
    False,
  )
  assert config.model.hidden == (150, 100, 50) and config.model.commit_head == "logits"
  assert table1.cell_config("fashion_mnist", "150-150-150", "appendix", (0,)) == ExperimentConfig().replace(seeds=(0,))
  assert [c[0] for c in table1.cells(True, ["150-100-50"])] == ["fashion_mnist"] * 7 + ["mnist"] * 5
  assert table1.cells(False, [], ("appendix", "authors")) == [
    ("fashion_mnist", n, r) for n in ("150-150-150", "150-100-50") for r in ("appendix", "authors")
  ]


def test_the_recipes_that_separate_stopping_from_augmentation_change_one_thing_each():
  cell = lambda recipe: table1.cell_config("mnist", "150-100-50", recipe, (0, 1, 2))
  authors, no_affine = cell("authors"), cell("authors_no_affine")
  assert authors.fit.augmentation_name == "affine" and no_affine.fit.augmentation_name is None
  assert no_affine.replace(augment=True, augmentation="affine", cache_features=False) == authors
  appendix = cell("appendix")
  assert cell("appendix_train_loss") == appendix.replace(monitor="train_loss")
  assert cell("appendix_train_loss_wd") == appendix.replace(monitor="train_loss", weight_decay=5e-4)
  assert appendix.fit.monitor == "val_loss" and appendix.fit.weight_decay == 0.0


def test_table1_rows_and_markdown():
  entry = lambda acc, flops, macs: dict(
    test_accuracy=acc,
    test_accuracy_std=0.001,
    params=141_260,
    inference_flops=flops,
    inference_macs=macs,
    training_flops=2e11,
    train_seconds=10.0,
    epochs_per_block=[5, 3, 2],
    epochs=7.0,
    train_samples_per_block=[54000, 20000, 9000],
    exit_fractions=[0.7, 0.2, 0.1],
  )
  results = dict(
    dataset="fashion_mnist",
    seeds=[0],
    exit_threshold=0.5,
    quicknet=entry(0.88, 2e5, 1e5),
    end_to_end=entry(0.87, 2.7e5, 1.38e5),
    ratios=dict(inference_flops=1.35, inference_macs=1.38, training_flops=1.0, train_seconds=1.0),
  )
  row = table1_row(results, "150-100-50", "authors")
  assert row["inference_macs_ratio"] == 1.38 and row["quicknet_accuracy"] == 0.88
  text = table1_markdown([row])
  assert "| Fashion-MNIST | 150-100-50 | authors' code | 88.00 ± 0.10 |" in text
  assert "*Fashion-MNIST, paper*" in text and "87.53 ± 0.07" in text and "(1.14)" in text and "| 1.56 |" in text

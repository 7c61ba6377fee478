"""SDN joint training through the one trainer (weights schedule, epoch hook), commitment heads on a
frozen multi-exit network, and the ResNet-56 SDN: exits' placement, shapes and FLOPs against XLA."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quicknets_jax import models
from quicknets_jax.algorithms import sdn
from quicknets_jax.algorithms.commitment import train_commitment_heads
from quicknets_jax.algorithms.settings import SDNConfig
from quicknets_jax.core import costs as flops
from quicknets_jax.data.split import Split
from quicknets_jax.models.base import Block
from quicknets_jax.models.resnet_sdn import (
  SDN_RESNET56_EXITS,
  BasicBlock,
  _basic_block_flops,
  default_exits,
  resnet_sdn,
)
from quicknets_jax.training import losses
from quicknets_jax.training.schedule import FitConfig
from quicknets_jax.training.step import Batch, LossAux, masked_mean
from quicknets_jax.training.trainer import FitData, Objective, fit
from quicknets_jax.workflows.experiment_config import StudyConfig
from quicknets_jax.workflows.study import run_study

SDN_MAX = np.array([0.15, 0.3, 0.45, 0.6, 0.75, 0.9])


# ------------------------------------------------------------------------------ joint loss weights


def test_default_max_weights_are_sdns():
  np.testing.assert_allclose(sdn.default_max_weights(6), SDN_MAX, rtol=1e-12)
  np.testing.assert_allclose(sdn.default_max_weights(2), [0.45, 0.9])


def test_loss_weights_follow_sdn_schedule():
  # model_funcs.sdn_train: cur_coeffs = min(max_coeffs, 0.01 + epoch * (max_coeffs / epochs)), epochs 1..100
  for epoch in (1, 2, 37, 99, 100, 150):
    expected = np.minimum(SDN_MAX, 0.01 + epoch * (SDN_MAX / 100))
    np.testing.assert_allclose(sdn.loss_weights(epoch, SDN_MAX, 100), expected, rtol=1e-6)
  np.testing.assert_allclose(sdn.loss_weights(1, SDN_MAX, 100), SDN_MAX / 100 + 0.01, rtol=1e-6)
  weights = np.stack([sdn.loss_weights(e, SDN_MAX, 10) for e in range(1, 20)])
  assert np.all(np.diff(weights, axis=0) >= 0)  # grows linearly, then holds at the maximum
  np.testing.assert_allclose(weights[-1], SDN_MAX, rtol=1e-6)
  with pytest.raises(ValueError, match="ramp_epochs"):
    sdn.loss_weights(1, SDN_MAX, 0)


def test_config_checks_weights_per_internal_exit():
  model = models.mlp((4,), 3, width=5, num_blocks=3)
  with pytest.raises(ValueError, match="one weight per internal exit"):
    SDNConfig(max_weights=(0.5,)).weights_for(model.num_blocks - 1)
  assert SDNConfig().ramp(FitConfig(max_epochs=7)) == 7 and SDNConfig(ramp_epochs=3).ramp(FitConfig()) == 3


@pytest.fixture(scope="module")
def small():
  model = models.mlp((6, 6, 1), 4, width=16, num_blocks=3)
  return model, model.init(jax.random.PRNGKey(0))


def test_joint_loss_is_the_weighted_sum(small):
  model, variables = small
  params = [v["params"] for v in variables]
  x = jax.random.normal(jax.random.PRNGKey(1), (5, 6, 6, 1))
  y = jnp.array([0, 1, 2, 3, 0])
  loss_fn = losses.JointLoss(model, (0.3, 0.6))
  per_exit, h = [], x
  for block, v in zip(model.blocks, variables):
    h, logits, _ = block.apply(v, h)
    per_exit.append(losses.cross_entropy(logits, y)[0])
  total, correct, _ = loss_fn(params, Batch(x, y, jnp.ones(5)), None, model_state=[{}] * 3)[1]
  np.testing.assert_allclose(total, 0.3 * per_exit[0] + 0.6 * per_exit[1] + per_exit[2], rtol=1e-6)
  weighted, _, _ = loss_fn(
    params, Batch(x, y, jnp.ones(5)), jax.random.PRNGKey(0), jnp.array([0.0, 1.0]), model_state=[{}] * 3
  )[1]
  np.testing.assert_allclose(weighted, per_exit[1] + per_exit[2], rtol=1e-6)
  chex.assert_shape(correct, (5,))
  with pytest.raises(ValueError, match="max_weights"):
    losses.JointLoss(model, (0.5,))


# ------------------------------------------------------------------------------ the trainer's hook


def _toy_data(n=64, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 3)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int32)
  return FitData.whole(Split(jnp.asarray(x), jnp.asarray(y)), Split(jnp.asarray(x[:16]), jnp.asarray(y[:16])), 2)


def _linear_loss(params, batch, rng, hparams=None, *, model_state):
  logits = batch.x @ params["w"]
  losses_, correct = losses.cross_entropy(logits, batch.y)
  scale = 1.0 if hparams is None else hparams["scale"]
  return masked_mean(scale * losses_, batch.mask), LossAux(scale * losses_, correct, model_state)


def test_epoch_hparams_reach_the_training_loss_per_epoch_and_validation_keeps_the_fixed_ones():
  seen = []

  def loss_fn(params, batch, rng, hparams=None, *, model_state):
    # the per-sample loss *is* the epoch's hparam in training and 0.5 in validation
    value = jnp.float32(0.5) if hparams is None else hparams
    per_sample = jnp.zeros(batch.x.shape[0]) + value + 0.0 * jnp.sum(params["w"])
    return masked_mean(per_sample, batch.mask), LossAux(per_sample, jnp.zeros(batch.x.shape[0]), model_state)

  objective = Objective(loss_fn, hparams_at=lambda epoch: seen.append(epoch) or np.float32(epoch))
  config = FitConfig(max_epochs=3, early_stop_patience=5, batch_size=16)
  state = fit(objective, {"w": jnp.zeros((3, 2))}, {}, _toy_data(), config, jax.random.PRNGKey(0))
  assert seen == [1, 2, 3]
  assert [r["train_loss"] for r in state.history] == pytest.approx([1.0, 2.0, 3.0])
  assert [r["val_loss"] for r in state.history] == pytest.approx([0.5, 0.5, 0.5])


def test_epoch_hook_changes_nothing_else():
  """An objective with a hook whose value leaves the loss as it is trains exactly like one without."""
  data, config = _toy_data(), FitConfig(max_epochs=3, batch_size=16)
  params = {"w": jnp.zeros((3, 2))}
  plain = fit(Objective(_linear_loss), params, {}, data, config, jax.random.PRNGKey(3))
  hooked = fit(
    Objective(_linear_loss, hparams_at=lambda e: {"scale": np.float32(1.0)}),
    params,
    {},
    data,
    config,
    jax.random.PRNGKey(3),
  )
  chex.assert_trees_all_equal(plain.params, hooked.params)
  assert [r["train_loss"] for r in plain.history] == [r["train_loss"] for r in hooked.history]


# ----------------------------------------------------------------- joint training + commitment heads


@pytest.fixture(scope="module")
def joint_run(blobs, small):
  model, _ = small
  x, y, vx, vy = blobs
  run = sdn.train_joint(
    model,
    (x, y),
    (vx, vy),
    FitConfig(max_epochs=2, batch_size=128),
    seed=0,
    config=SDNConfig(ramp_epochs=2),
    log=lambda m: None,
  )
  return model, run


def test_joint_training_trains_exits_not_commitment_heads(joint_run):
  model, run = joint_run
  init = model.init(jax.random.fold_in(jax.random.PRNGKey(0), 0))  # train_joint's initialisation
  assert run.epochs == 2 and len(run.variables) == 3
  np.testing.assert_allclose([r["loss_weights"] for r in run.history], [[0.235, 0.46], [0.45, 0.9]], rtol=1e-6)
  for v, v0 in zip(run.variables, init):
    chex.assert_trees_all_equal(v["params"]["commit_head"], v0["params"]["commit_head"])
    assert not np.allclose(v["params"]["exit_head"]["out"]["kernel"], v0["params"]["exit_head"]["out"]["kernel"])
  forward = flops.joint_forward_cost(model.block_costs)
  assert run.flops["training"] == pytest.approx(2 * 1200 * 3 * forward)


def test_commitment_heads_on_frozen_network(joint_run, blobs):
  model, run = joint_run
  x, y, vx, vy = blobs
  heads = train_commitment_heads(
    model,
    run.variables,
    (x, y),
    (vx, vy),
    FitConfig(max_epochs=1, batch_size=128, balanced_sampling=False),
    jax.random.PRNGKey(5),
    log=lambda m: None,
  )
  assert len(heads.records) == 3 and heads.training_flops > 0
  for new, old, record in zip(heads.variables, run.variables, heads.records):
    chex.assert_trees_all_equal(new["params"]["subnet"], old["params"]["subnet"])
    chex.assert_trees_all_equal(new["params"]["exit_head"], old["params"]["exit_head"])
    assert not np.allclose(new["params"]["commit_head"]["out"]["kernel"], old["params"]["commit_head"]["out"]["kernel"])
    assert 0.0 < record["positive_rate"] < 1.0


# ------------------------------------------------------------------------------------ ResNet-56 SDN


@pytest.fixture(scope="module")
def resnet56():
  model = resnet_sdn((32, 32, 3), 10)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0))  # no 0.85M-parameter init on CPU
  return model, shapes


def test_resnet56_exits_sit_where_sdn_puts_them(resnet56):
  model, shapes = resnet56
  assert default_exits(27) == SDN_RESNET56_EXITS == (4, 8, 12, 16, 20, 24)
  assert model.num_blocks == 7
  basic_per_block = [len([k for k in s["params"]["subnet"] if k.startswith("basic_")]) for s in shapes]
  assert basic_per_block == [4, 4, 4, 4, 4, 4, 3]
  assert np.cumsum(basic_per_block).tolist() == [4, 8, 12, 16, 20, 24, 27]
  assert "stem_conv" in shapes[0]["params"]["subnet"] and "stem_conv" not in shapes[1]["params"]["subnet"]
  # six mixed-pooling internal classifiers (α), and SDN's average-pool + linear final exit
  assert (
    all("alpha" in s["params"]["exit_head"] for s in shapes[:6]) and "alpha" not in shapes[6]["params"]["exit_head"]
  )


def test_resnet56_layers_and_shapes(resnet56):
  model, shapes = resnet56
  kernels = [leaf.shape for leaf in jax.tree.leaves(shapes) if len(leaf.shape) == 4]
  assert sum(k[:2] == (3, 3) for k in kernels) == 55  # 1 stem + 27 × 2: ResNet-56 is 55 convs + 1 linear
  assert sum(k[:2] == (1, 1) for k in kernels) == 2  # projection shortcuts into stages 2 and 3
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  feature_shapes = []
  for block, s in zip(model.blocks, shapes):
    x, logits, commit = jax.eval_shape(lambda v, a, b=block: b.apply(v, a), s, x)
    feature_shapes.append(x.shape[1:])
    chex.assert_shape(logits, (2, 10))
    chex.assert_shape(commit, (2,))
  assert feature_shapes == [(32, 32, 16)] * 2 + [(16, 16, 32)] * 2 + [(8, 8, 64)] * 3
  backbone = sum(int(np.prod(leaf.shape)) for s in shapes for leaf in jax.tree.leaves(s["params"]["subnet"]))
  assert 850_000 < backbone < 860_000  # ResNet-56 with projection shortcuts: ≈ 0.85 M


@pytest.mark.parametrize("size,cin,cout,stride", [(32, 16, 16, 1), (32, 16, 32, 2), (8, 64, 64, 1)])
@pytest.mark.usefixtures("native_convs")
def test_basic_block_flops_match_xla_exactly(size, cin, cout, stride):
  block = BasicBlock(cout, stride)
  x = jax.ShapeDtypeStruct((1, size, size, cin), jnp.float32)
  variables = jax.eval_shape(block.init, jax.random.PRNGKey(0), x)
  assert (
    flops.xla_flops(lambda v, a: block.apply(v, a), variables, x)
    == _basic_block_flops((size, size), cin, cout, stride)[0]
  )


@pytest.mark.usefixtures("native_convs")
def test_resnet56_block_flops_match_xla(resnet56):
  model, shapes = resnet56
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  for j, (block, s, cost) in enumerate(zip(model.blocks, shapes, model.block_costs)):
    h = jax.eval_shape(lambda v, a, b=block: b.apply(v, a, method=Block.features), s, x)
    assert flops.xla_flops(lambda v, f, b=block: b.apply(v, f, method=Block.classify), s, h) == cost.exit_head
    assert abs(flops.xla_flops(lambda v, f, b=block: b.apply(v, f, method=Block.commit), s, h) - cost.commit_head) <= 1
    if j in (0, 4, 6):  # the stem, a stride-2 stage entry, the last block (compiling all seven is slow)
      xla = flops.xla_flops(lambda v, a, b=block: b.apply(v, a, method=Block.features), s, x)
      # per layer the count is exact (above); XLA adds a few ops per element where it fuses a ReLU
      # into more than one consumer (the conv and the residual add), measured ≤ 2 %
      assert cost.subnet == pytest.approx(xla, rel=0.025)
    x = h
  total = sum(c.subnet for c in model.block_costs)
  assert 2.25e8 < total < 2.35e8  # ResNet-56 on CIFAR: ≈ 125 M multiply-adds
  assert model.end_to_end_cost() == pytest.approx(total + model.block_costs[-1].exit_head)
  fractions = np.cumsum([c.subnet for c in model.block_costs])[:-1] / total
  np.testing.assert_allclose(fractions, SDN_MAX, atol=0.03)  # ICs at ≈ 15, 30, …, 90 % of the FLOPs


def test_resnet_sdn_refuses_bad_exits():
  with pytest.raises(ValueError, match="exit_after"):
    resnet_sdn((32, 32, 3), 10, exit_after=(4, 27))
  with pytest.raises(ValueError, match="images"):
    resnet_sdn((784,), 10)
  assert "resnet_sdn" in models.MODELS


@pytest.mark.slow  # a whole study run
def test_sdn_study_runs_on_a_stand_in_cifar_tarball(tmp_path):
  """experiments.sdn_cifar10's pipeline with no network: tarball in the real cifar-10-python format →
  load_dataset → joint training → commitment heads → study, on a tiny ResNet SDN (one block per stage)."""
  from experiments.sdn_cifar10 import write_smoke_tarball

  tarball = str(tmp_path / "cifar-10-python.tar.gz")
  write_smoke_tarball(tarball, num_train=120, num_test=40)
  config = StudyConfig().replace(
    dataset="cifar10",
    data_source="cifar_tar",
    data_dir=tarball,
    model="resnet_sdn",
    blocks_per_stage=1,
    stage_channels=(4, 8, 8),
    methods=("joint",),
    seeds=(0,),
    max_epochs=1,
    batch_size=32,
    eval_batch_size=64,
    calibration_thresholds=(0.5,),
  )
  config = dataclasses.replace(config, smoke=True)
  results = run_study(config, str(tmp_path / "run"), log=lambda m: None)
  assert results["smoke"] and "warning" in results and results["model"] == "resnet_sdn"
  assert results["num_train"] + results["num_val"] == 120 and results["num_test"] == 40
  joint = results["joint"]
  assert set(joint["curves"]) == {"confidence", "commitment", "sdn_last"}
  assert len(joint["per_exit_accuracy"]) == 3 and len(joint["calibration"]) == 3
  assert (tmp_path / "run" / "results.md").exists()

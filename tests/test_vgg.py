"""VGG-11 QuickNet: shapes and pools per block, analytic FLOPs against XLA, mixed pooling exits, frozen
batch-norm statistics, augmentation inside the loss, and QuickNet + end-to-end training through the one
trainer (tiny widths, synthetic blobs: pipeline checks only)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_blobs

from quicknets_jax import models
from quicknets_jax.algorithms.end_to_end import train_end_to_end
from quicknets_jax.algorithms.forward import all_exit_outputs
from quicknets_jax.algorithms.quicknet import QuickNetConfig, train_quicknet
from quicknets_jax.core.costs import xla_flops
from quicknets_jax.data import augment
from quicknets_jax.models import layers
from quicknets_jax.models.base import Block
from quicknets_jax.training import losses
from quicknets_jax.training.schedule import FitConfig
from quicknets_jax.training.step import Batch


def _tiny(input_shape=(32, 32, 3), **kwargs):
  return models.build_model("vgg", input_shape, 10, width=8, classifier_width=32, **kwargs)


def test_full_vgg11_has_eight_blocks_pools_and_the_papers_parameter_count():
  model = models.build_model("vgg", (32, 32, 3), 10, width=64, num_blocks=8)
  assert model.num_blocks == 8
  assert model.feature_shapes() == [
    (16, 16, 64),
    (8, 8, 128),
    (8, 8, 256),
    (4, 4, 256),
    (4, 4, 512),
    (2, 2, 512),
    (2, 2, 512),
    (1, 1, 512),
  ]
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0)))
  backbone = [v["params"]["subnet"] for v in variables] + [variables[-1]["params"]["exit_head"]]
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(backbone))
  assert abs(n / 1e6 - 28.14) < 0.02  # Table 1: end-to-end VGG-11 on CIFAR-10, 28.14 M parameters
  # exits 0..6 pool with SDN's mixed pooling where the map is ≥ 8 wide; the last exit is VGG's classifier
  assert [isinstance(b.exit_head, layers.MixedPoolClassifier) for b in model.blocks] == [True] * 7 + [False]
  assert set(variables[0]["params"]["exit_head"]) == {"alpha", "out"}
  assert variables[0]["params"]["exit_head"]["out"]["kernel"].shape == (4 * 4 * 64, 10)
  assert set(variables[3]["params"]["exit_head"]) == {"out"}  # 4×4 goes straight to the linear layer
  assert variables[-1]["params"]["exit_head"]["hidden_0"]["kernel"].shape == (512, 4096)
  assert "batch_stats" in variables[0]


def test_block_outputs_shapes_on_a_batch():
  model = _tiny()
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0)))
  x = jax.ShapeDtypeStruct((3, 32, 32, 3), jnp.float32)
  for block, v in zip(model.blocks, variables):
    h, logits, commit = jax.eval_shape(block.apply, v, x)
    chex.assert_shape(logits, (3, 10))
    chex.assert_shape(commit, (3,))
    x = h
  chex.assert_shape(x, (3, 1, 1, 64))


def test_28x28_inputs_skip_pools_on_maps_narrower_than_two():
  shapes = _tiny((28, 28, 1)).feature_shapes()
  assert [s[0] for s in shapes] == [14, 7, 7, 3, 3, 1, 1, 1]


@pytest.mark.parametrize("input_shape", [(32, 32, 3), pytest.param((28, 28, 1), marks=pytest.mark.slow)])
@pytest.mark.usefixtures("native_convs")
def test_analytic_flops_of_every_part_match_xla_within_two_percent(input_shape):
  """Parts are compiled separately: compiled whole, XLA duplicates fused elementwise ops (BN+ReLU
  feeding two heads) and counts them twice on 1×1 maps."""
  model = _tiny(input_shape)
  variables = model.init(jax.random.PRNGKey(0))
  x = jnp.zeros((1, *input_shape))
  for j, (block, cost) in enumerate(zip(model.blocks, model.block_costs)):
    h = block.apply(variables[j], x, method=Block.features)
    for part, method, arg in (
      ("subnet", Block.features, x),
      ("exit_head", Block.classify, h),
      ("commit_head", Block.commit, h),
    ):
      counted = xla_flops(lambda v, a, m=method, b=block: b.apply(v, a, method=m), variables[j], arg)
      assert getattr(cost, part) == pytest.approx(counted, rel=0.02), (j, part, cost, counted)
    x = h


@pytest.mark.parametrize("side,channels", [(16, 8), (14, 4), (8, 8), (7, 8), (4, 8), (2, 8)])
def test_mixed_pool_classifier_flops_match_xla(side, channels):
  head = layers.MixedPoolClassifier(10)
  x = jnp.ones((1, side, side, channels))
  v = head.init(jax.random.PRNGKey(0), x)
  assert layers.mixed_pool_classifier_flops(side, side, channels, 10) == pytest.approx(
    xla_flops(lambda v, a: head.apply(v, a), v, x), rel=0.01
  )
  assert ("alpha" in v["params"]) == (side >= 8)


def test_mixed_pool_is_alpha_max_plus_one_minus_alpha_avg():
  head = layers.MixedPoolClassifier(3)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 2))
  v = head.init(jax.random.PRNGKey(0), x)
  a = v["params"]["alpha"][0]
  pooled = a * x.reshape(2, 4, 2, 4, 2, 2).max((2, 4)) + (1 - a) * x.reshape(2, 4, 2, 4, 2, 2).mean((2, 4))
  expected = pooled.reshape(2, -1) @ v["params"]["out"]["kernel"] + v["params"]["out"]["bias"]
  np.testing.assert_allclose(head.apply(v, x), expected, rtol=1e-5, atol=1e-5)


def test_augmentation_is_a_function_of_the_key_and_only_in_training():
  x = jax.random.normal(jax.random.PRNGKey(0), (16, 32, 32, 3))
  a = augment.random_crop_flip(x, jax.random.PRNGKey(1))
  b = augment.random_crop_flip(x, jax.random.PRNGKey(1))
  np.testing.assert_array_equal(a, b)
  assert a.shape == x.shape and not np.allclose(a, x)
  # a zero-offset crop without flip is the identity, and every output is a window of the padded input
  padded = np.pad(np.asarray(x), ((0, 0), (4, 4), (4, 4), (0, 0)))
  out = np.asarray(augment.random_crop_flip(x, jax.random.PRNGKey(2), flip=False))
  for i in range(4):
    assert any(np.array_equal(out[i], padded[i, dy : dy + 32, dx : dx + 32]) for dy in range(9) for dx in range(9))
  np.testing.assert_array_equal(losses.augment_inputs("crop_flip", x, jax.random.PRNGKey(1), False), x)
  np.testing.assert_array_equal(losses.augment_inputs("crop_flip", x, None, True), x)
  np.testing.assert_array_equal(losses.augment_inputs("crop_flip", x, jax.random.PRNGKey(1), True), a)
  np.testing.assert_array_equal(losses.augment_inputs(None, x, jax.random.PRNGKey(1), True), x)


def test_bad_configurations_name_the_fix():
  with pytest.raises(ValueError, match="--num_blocks=8"):
    models.build_model("vgg", (32, 32, 3), 10, num_blocks=3)
  with pytest.raises(ValueError, match="layers_per_block=1"):
    models.build_model("vgg", (32, 32, 3), 10, layers_per_block=2)
  small = models.build_model("vgg", (8, 8, 1), 3, width=64, cfg="16,M,32", classifier_width=8)
  assert small.num_blocks == 2


@pytest.fixture(scope="module")
def tiny_images():
  x, y = make_blobs(160, num_classes=4, shape=(8, 8, 3), seed=0)
  vx, vy = make_blobs(64, num_classes=4, shape=(8, 8, 3), seed=1)
  return x, y, vx, vy


def test_quicknet_trains_through_a_frozen_prefix_and_updates_batch_norm_statistics(tiny_images):
  x, y, vx, vy = tiny_images
  model = models.build_model("vgg", (8, 8, 3), 4, width=64, cfg="8,M,16", classifier_width=16)
  fit = FitConfig(batch_size=32, max_epochs=1, augment=True, augmentation="flip")
  config = QuickNetConfig(
    fit=fit,
    commit_fit=FitConfig(batch_size=32, max_epochs=1, balanced_sampling=False),
    train_threshold=0.5,
    cache_features=False,
  )
  run = train_quicknet(model, (x, y), (vx, vy), config, seed=0, log=lambda m: None)
  assert run.num_trained_blocks >= 2
  init = model.init(jax.random.fold_in(jax.random.PRNGKey(0), 0))
  # block 0's running statistics moved while it trained ...
  assert not np.allclose(
    run.variables[0]["batch_stats"]["subnet"]["bn"]["mean"], init[0]["batch_stats"]["subnet"]["bn"]["mean"]
  )
  probs, commits = all_exit_outputs(model, run.variables, vx)
  chex.assert_shape(probs, (run.num_trained_blocks, 64, 4))
  assert np.all(np.isfinite(probs)) and np.all(np.isfinite(commits))


def test_frozen_prefix_runs_with_inference_statistics(tiny_images):
  """The loss of block 1 through a frozen block 0 does not touch block 0's batch statistics."""
  x, y, _, _ = tiny_images
  model = models.build_model("vgg", (8, 8, 3), 4, width=64, cfg="8,M,8", classifier_width=16)
  variables = model.init(jax.random.PRNGKey(0))
  frozen_params, frozen_state = [variables[0]["params"]], [{"batch_stats": variables[0]["batch_stats"]}]
  loss_fn = losses.BlockLossThroughPrefix(model, 1)
  _, (_, _, new_state) = loss_fn(
    variables[1]["params"],
    Batch(jnp.asarray(x[:16]), jnp.asarray(y[:16]), jnp.ones(16)),
    jax.random.PRNGKey(0),
    (frozen_params, frozen_state),
    model_state={"batch_stats": variables[1]["batch_stats"]},
  )
  assert not np.allclose(
    new_state["batch_stats"]["subnet"]["bn"]["mean"], variables[1]["batch_stats"]["subnet"]["bn"]["mean"]
  )
  chex.assert_trees_all_equal(frozen_state[0]["batch_stats"], variables[0]["batch_stats"])


def test_end_to_end_vgg_trains_through_the_same_trainer(tiny_images):
  x, y, vx, vy = tiny_images
  model = models.build_model("vgg", (8, 8, 3), 4, width=64, cfg="8,M,8,M,16", classifier_width=16)
  run = train_end_to_end(
    model,
    (x, y),
    (vx, vy),
    FitConfig(batch_size=32, max_epochs=3, learning_rate=3e-3, early_stop_patience=3, augment=True),
    seed=0,
    log=lambda m: None,
  )
  assert run.epochs == 3 and len(run.history) == 3
  assert run.history[-1]["train_loss"] < run.history[0]["train_loss"]
  assert run.training_flops == pytest.approx(3 * (len(y) * 3 + len(vy)) * model.end_to_end_cost())

"""DenseNet-121 QuickNet and the ImageNet path: block structure and parameter count of the real
DenseNet-121, shapes of every block's features/logits/commitment logits, analytic FLOPs against XLA for
the full DenseNet-121 at a small resolution (compiled only), batch-norm statistics in exits, TFDS
`imagenet2012` under `tfds.testing.mock_data` (resized, trained for a few steps through the one
trainer) and the manual-download error. Tiny widths and resolutions: pipeline checks only."""

import dataclasses
import json
import os

import chex
import fresh_process_checks
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quicknets_jax import data, models
from quicknets_jax.algorithms.forward import all_exit_outputs
from quicknets_jax.algorithms.quicknet import QuickNetConfig, train_quicknet
from quicknets_jax.core.costs import xla_flops
from quicknets_jax.data import DataError, tfds_source
from quicknets_jax.models.base import Block, split_variables
from quicknets_jax.models.densenet import parse_layers
from quicknets_jax.models.xla_check import flops_check
from quicknets_jax.training import losses
from quicknets_jax.training.schedule import FitConfig
from quicknets_jax.training.step import Batch
from quicknets_jax.workflows.experiment import train_and_evaluate
from quicknets_jax.workflows.experiment_config import ExperimentConfig

TINY = dict(width=4, block_layers=(1, 2, 1, 1))


@pytest.fixture(scope="module")
def densenet121():
  """DenseNet-121 (1000 classes) and its abstract variables: their shapes do not depend on the input
  side (global average pooling), so one trace serves 224² and 64² models."""
  model = models.build_model("densenet", (64, 64, 3), 1000, num_blocks=4)
  return model, jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0)))


def _feature_shapes(model, variables, side):
  x, shapes = jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32), []
  for block, v in zip(model.blocks, variables):
    x = jax.eval_shape(lambda v, a, b=block: b.apply(v, a, method=Block.features), v, x)
    shapes.append(tuple(x.shape[1:]))
  return shapes


def test_densenet121_blocks_shapes_and_torchvision_parameter_count(densenet121):
  model, variables = densenet121
  assert model.num_blocks == 4
  full = models.build_model("densenet", (224, 224, 3), 1000)
  assert _feature_shapes(full, variables, 224) == [(28, 28, 128), (14, 14, 256), (7, 7, 512), (7, 7, 1024)]
  count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
  backbone = [v["params"]["subnet"] for v in variables] + [variables[-1]["params"]["exit_head"]]
  assert count(backbone) == 7_978_856  # torchvision densenet121; Table 2's 7.98 M
  assert count([v["params"] for v in variables]) == 10_807_652  # + exits 0..2 and four pooled commitment heads
  subnets = [v["params"]["subnet"] for v in variables]
  assert [len([k for k in s if k.startswith("layer_")]) for s in subnets] == [6, 12, 24, 16]
  assert "stem_conv" in subnets[0] and "stem_conv" not in subnets[1]
  assert ["transition_conv" in s for s in subnets] == [True, True, True, False]
  assert subnets[0]["layer_0"]["conv1"]["kernel"].shape == (1, 1, 64, 128)  # bottleneck 4k
  assert subnets[0]["layer_5"]["conv2"]["kernel"].shape == (3, 3, 128, 32)  # growth k
  assert variables[2]["params"]["commit_head"]["hidden"]["kernel"].shape == (512, 1000)  # pooled, then Dense(C)
  # batch norm everywhere, exits included; their statistics are model state, not parameters
  assert set(variables[0]["batch_stats"]) == {"subnet", "exit_head"}
  assert variables[3]["batch_stats"]["exit_head"]["bn"]["mean"].shape == (1024,)


def test_every_block_outputs_features_logits_and_a_commitment_logit():
  model = models.build_model("densenet", (32, 32, 3), 10, **TINY)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0)))
  x = jax.ShapeDtypeStruct((3, 32, 32, 3), jnp.float32)
  # 32 → stem 8 → transitions 4, 2, 1; channels 8 + 4 → 6, 6 + 8 → 7, 7 + 4 → 5, 5 + 4 = 9
  expected = [(3, 4, 4, 6), (3, 2, 2, 7), (3, 1, 1, 5), (3, 1, 1, 9)]
  for block, v, shape in zip(model.blocks, variables, expected):
    x, logits, commit = jax.eval_shape(block.apply, v, x)
    chex.assert_shape(x, shape)
    chex.assert_shape(logits, (3, 10))
    chex.assert_shape(commit, (3,))
  # a transition pool on a map narrower than 2 is skipped; odd maps pool with floor
  assert [s[:2] for s in models.build_model("densenet", (28, 28, 1), 10, **TINY).feature_shapes()] == [
    (3, 3),
    (1, 1),
    (1, 1),
    (1, 1),
  ]


@pytest.mark.usefixtures("native_convs")
def test_analytic_flops_of_every_part_of_densenet121_match_xla_within_two_percent(densenet121):
  """The full DenseNet-121 block structure at 64×64 (maps 8 → 4 → 2 → 2 wide), compiled, never run."""
  model, variables = densenet121
  x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  for j, (block, cost) in enumerate(zip(model.blocks, model.block_costs)):
    h = jax.eval_shape(lambda v, a, b=block: b.apply(v, a, method=Block.features), variables[j], x)
    for part, method, arg in (
      ("subnet", Block.features, x),
      ("exit_head", Block.classify, h),
      ("commit_head", Block.commit, h),
    ):
      counted = xla_flops(lambda v, a, m=method, b=block: b.apply(v, a, method=m), variables[j], arg)
      assert getattr(cost, part) == pytest.approx(counted, rel=0.02), (j, part, cost, counted)
    x = h


def test_flops_of_stem_transition_and_heads_on_odd_and_tiny_maps():
  model = models.build_model("densenet", (7, 7, 3), 5, width=4, block_layers=(1, 1))  # maps 2 → 1 wide
  check = flops_check(model)
  assert all(abs(b["relative_difference"]) < 0.02 for b in check["blocks"]), check["blocks"]
  assert abs(check["end_to_end"]["relative_difference"]) < 0.02


@pytest.fixture(scope="module")
def mock_imagenet():
  """A tiny imagenet2012 read through the real TFDS path under mock data (random images of random
  sizes, labels in 0..999), resized to 16×16: 36 train, 4 validation, 12 test images."""
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=40):
    return data.load_dataset("imagenet2012", data_source="tfds", image_size=16, max_train=40, max_test=12)


@pytest.mark.slow  # DenseNet compiles
def test_quicknet_trains_on_mock_imagenet_through_a_frozen_prefix(mock_imagenet):
  """A few steps of a 2-block DenseNet through the one trainer: block 1 trains on block 0 run in inference
  mode (recomputed every step), and batch-norm statistics of subnets and exits move while they train."""
  ds = mock_imagenet
  model = models.build_model("densenet", ds.image_shape, ds.num_classes, width=4, block_layers=(1, 1))
  fit = FitConfig(batch_size=16, max_epochs=1, eval_batch_size=64, learning_rate=3e-4, augment=True)
  config = QuickNetConfig(fit=fit, commit_fit=dataclasses.replace(fit, balanced_sampling=False), cache_features=False)
  run = train_quicknet(
    model, (ds.train.images, ds.train.labels), (ds.val.images, ds.val.labels), config, seed=0, log=lambda m: None
  )
  assert run.num_trained_blocks == 2 and [r.train_samples for r in run.records] == [36, 36]  # nothing learned
  assert [r.epochs for r in run.records] == [1, 1]
  init = model.init(jax.random.fold_in(jax.random.PRNGKey(0), 0))
  for j, part, name in (
    (0, "subnet", "stem_bn"),
    (0, "subnet", "transition_bn"),
    (0, "exit_head", "bn"),
    (1, "subnet", "layer_0"),
    (1, "exit_head", "bn"),
  ):
    moved = jax.tree.map(
      lambda a, b: not np.allclose(a, b),
      run.variables[j]["batch_stats"][part][name],
      init[j]["batch_stats"][part][name],
    )
    assert all(jax.tree.leaves(moved)), (j, part, name)
  probs, commits = all_exit_outputs(model, run.variables, ds.test.images, batch_size=64)
  chex.assert_shape(probs, (2, 12, 1000))
  chex.assert_shape(commits, (2, 12))
  assert np.all(np.isfinite(probs)) and np.all(np.isfinite(commits))


def test_end_to_end_loss_keeps_every_blocks_statistics_tree():
  """The baseline trains every subnet and the last exit; the state it returns has the structure it got
  (exits 0..2 carry batch norm that the baseline never runs)."""
  model = models.build_model("densenet", (16, 16, 3), 10, **TINY)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0)))
  params, state = zip(*[split_variables(v) for v in variables])
  x, y = jax.ShapeDtypeStruct((4, 16, 16, 3), jnp.float32), jax.ShapeDtypeStruct((4,), jnp.int32)
  _, (per_sample, correct, new_state) = jax.eval_shape(
    lambda p, s, a, b: losses.EndToEndLoss(model)(
      list(p), Batch(a, b, jnp.ones(4)), jax.random.PRNGKey(0), model_state=list(s)
    ),
    params,
    state,
    x,
    y,
  )
  chex.assert_shape([per_sample, correct], (4,))
  assert jax.tree.structure(list(new_state)) == jax.tree.structure(list(state))


def test_experiment_config_builds_the_densenet():
  config = ExperimentConfig().replace(
    dataset="imagenet2012",
    model="densenet",
    width=8,
    num_blocks=2,
    block_layers="1,2",
    image_size=32,
    augment=True,
    cache_features=False,
  )
  model = config.model.build(config.data.image_shape(), 1000)
  assert model.name == "densenet" and model.num_blocks == 2 and model.input_shape == (32, 32, 3)
  assert config.fit.augmentation_name == "crop_flip"
  assert config.to_json()["image_size"] == 32


def test_bad_configurations_name_the_fix():
  with pytest.raises(ValueError, match="--num_blocks=4"):
    models.build_model("densenet", (32, 32, 3), 10, num_blocks=3)
  with pytest.raises(ValueError, match="--layers_per_block=1"):
    models.build_model("densenet", (32, 32, 3), 10, layers_per_block=2)
  with pytest.raises(ValueError, match="6,12,24,16"):
    models.build_model("densenet", (32, 32, 3), 10, block_layers="6,x")
  with pytest.raises(ValueError, match="at least 4"):
    models.build_model("densenet", (2, 2, 3), 10)
  assert parse_layers("densenet169") == (6, 12, 32, 32) and parse_layers([2, 3]) == (2, 3)


# --- ImageNet through TFDS ------------------------------------------------------------------------


def test_resize_keeps_the_centre_at_the_shorter_side():
  image = np.zeros((40, 80, 3), np.uint8)
  image[:, 20:60] = 255  # the centre square 40×40 is white, the sides black
  out = tfds_source.resize_image(image, 20)
  assert out.shape == (20, 20, 3) and out.dtype == np.uint8 and out.min() > 200
  gray = tfds_source.resize_image(np.full((10, 12, 1), 7, np.uint8), 10)
  assert gray.shape == (10, 10, 3) and np.all(gray == 7)


def test_imagenet_loads_resized_from_tfds_mock_data(mock_imagenet):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=12):  # images of random sizes, labels in 0..999
    train_x, train_y, test_x, test_y = tfds_source.load_tfds_resized("imagenet2012", image_size=24, max_train=10)
  assert train_x.shape == (10, 24, 24, 3) and test_x.shape == (12, 24, 24, 3) and train_x.dtype == np.uint8
  assert train_y.dtype == np.int32 and 0 <= train_y.min() and train_y.max() < 1000
  ds = mock_imagenet
  assert ds.image_shape == (16, 16, 3) and ds.num_classes == 1000 and len(ds.class_names) == 1000
  assert (len(ds.train.labels), len(ds.val.labels), len(ds.test.labels)) == (36, 4, 12)
  assert ds.train.images.dtype == np.float32 and "16x16" in ds.source


def test_imagenet_larger_than_memory_is_refused_naming_max_train(monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")
  monkeypatch.setattr(tfds_source, "_physical_memory", lambda: 2**20)  # a 1 MiB machine
  with tfds.testing.mock_data(num_examples=40), pytest.raises(DataError) as e:
    tfds_source.load_tfds_resized("imagenet2012", image_size=64)
  assert "--max_train=" in str(e.value) and "--image_size" in str(e.value) and "\n" not in str(e.value)


def test_imagenet_not_prepared_names_the_manual_download(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(DataError) as e:
    data.load_dataset("imagenet2012", data_source="tfds", data_dir=str(tmp_path), max_train=10)
  msg = str(e.value)
  assert "\n" not in msg and "manual download" in msg and "ILSVRC2012_img_train.tar" in msg
  assert os.path.join(str(tmp_path), "downloads", "manual") in msg
  assert "tfds build imagenet2012" in msg and "--file_format=array_record" in msg and "--data_dir" in msg
  with pytest.raises(DataError, match="--data_source=tfds"):
    data.load_dataset("imagenet2012", data_source="idx", data_dir=str(tmp_path))
  with pytest.raises(DataError, match="drop --image_size"):
    data.load_dataset("cifar10", data_source="cifar_tar", data_dir=str(tmp_path), image_size=64)


@pytest.mark.slow  # ~1.5 min on 2 cores (4 blocks + baseline compile): `python -m pytest -q tests -m slow`
def test_imagenet_experiment_runs_a_tiny_densenet_on_mock_data(tmp_path):
  """experiment.train_and_evaluate end to end on mock imagenet2012: 4 blocks, 4 exits, baseline, FLOPs."""
  tfds = pytest.importorskip("tensorflow_datasets")
  config = ExperimentConfig().replace(
    dataset="imagenet2012",
    data_source="tfds",
    image_size=32,
    max_train=40,
    max_test=16,
    model="densenet",
    block_layers="1,1,1,1",
    width=4,
    num_blocks=4,
    seeds=(0,),
    batch_size=16,
    eval_batch_size=64,
    learning_rate=3e-4,
    max_epochs=1,
  )
  with tfds.testing.mock_data(num_examples=40):
    results = train_and_evaluate(config, str(tmp_path), log=lambda m: None, metrics=False)
  q = results["quicknet"]
  assert results["model"] == "densenet" and results["num_train"] == 36 and results["num_test"] == 16
  assert len(q["exit_fractions"]) == 4 and abs(sum(q["exit_fractions"]) - 1) < 1e-5
  assert q["train_samples_per_block"][0] == 36 and q["epochs_per_block"][0] == 1
  assert results["end_to_end"]["epochs"] == 1 and len(results["class_names"]) == 1000
  model = config.model.build((32, 32, 3), 1000)
  assert results["end_to_end"]["inference_flops"] == pytest.approx(model.end_to_end_cost())
  with open(tmp_path / "config.json") as f:
    assert json.load(f)["image_size"] == 32


def test_imagenet_flags_parse_into_the_paper_config():
  proc = fresh_process_checks.run("imagenet_paper_flags")  # its own process: importing imagenet defines the flags
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.split("\n")
  assert lines[0].split() == ["imagenet2012", "densenet", "224", "32", "4", "0.0003", "densenet121", "False"]
  assert lines[1].split() == ["64", "1", "densenet121"]

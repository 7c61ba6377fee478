"""Your own network through the public API, on scikit-learn's bundled 8×8 digits (1,797 real images): a
Linen CNN without `train` arguments and an NNX network train as QuickNets, their costs are XLA's, bad
networks are refused in one line, and a run directory works with the command-line tools in a fresh
process."""

import dataclasses
import functools
import json
import os
import subprocess
import sys
import warnings

import flax.linen as nn
import jax
import numpy as np
import own_networks
import pytest
from flax import nnx
from sklearn.datasets import load_digits

import quicknets_jax as qn
from quicknets_jax.models.xla_check import flops_check
from quicknets_jax.workflows import cascade_loader
from quicknets_jax.workflows.trained import TrainedRunError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
CONFIG = qn.QuickNetConfig(fit=qn.FitConfig(batch_size=64, learning_rate=3e-3, max_epochs=6))


@pytest.fixture(scope="module")
def digits():
  data = load_digits()
  x, y = (data.images[..., None] / 16.0).astype(np.float32), data.target.astype(np.int32)
  return (x[:1400], y[:1400]), (x[1400:], y[1400:])


@pytest.fixture(scope="module")
def linen_run(digits, tmp_path_factory):
  train, test = digits
  workdir = str(tmp_path_factory.mktemp("linen_run"))
  model = functools.partial(own_networks.linen_cnn, width=16)  # the factory's keyword arguments are recorded
  results = qn.train(model, train=train, test=test, config=CONFIG, workdir=workdir, log=lambda m: None)
  return workdir, results


def test_a_linen_cnn_without_train_arguments_trains_as_a_quicknet(linen_run):
  workdir, results = linen_run
  assert results["model"] == "own_networks:linen_cnn" and results["dataset"] == "arrays"
  assert results["config"]["model_args"] == '{"width": 16}'
  assert results["quicknet"]["test_accuracy"] > 0.8 and results["end_to_end"]["test_accuracy"] > 0.8  # chance: 0.1
  model = qn.load(workdir).model  # rebuilt from the import path the workdir records
  check = flops_check(model)
  assert all(abs(b["relative_difference"]) < 0.01 for b in check["blocks"]), check
  assert abs(check["end_to_end"]["relative_difference"]) < 0.01


def test_an_nnx_network_trains_as_a_quicknet_and_its_batch_statistics_move(digits, tmp_path):
  train, test = digits
  model = own_networks.nnx_mlp((8, 8, 1), 10)
  assert all(abs(b["relative_difference"]) < 0.01 for b in flops_check(model)["blocks"])
  config = dataclasses.replace(qn.ExperimentConfig(quicknet=CONFIG), end_to_end=False)
  results = qn.train(
    own_networks.nnx_mlp, train=train, test=test, config=config, workdir=str(tmp_path), log=lambda m: None
  )
  assert results["quicknet"]["test_accuracy"] > 0.8
  trained = qn.load(str(tmp_path))
  for block, start in zip(trained.variables, model.init(jax.random.PRNGKey(0))):
    for collection, leaf in (("params", "linear/kernel"), ("batch_stats", "norm/mean")):
      assert not np.allclose(block[collection]["subnet"]["nnx"][leaf], start[collection]["subnet"]["nnx"][leaf])


def test_wrong_analytic_costs_are_reported():
  costs = [qn.BlockCost(1.0, 1.0, 1.0)] * 3
  with pytest.warns(qn.CostMismatchWarning, match=r"block 0 subnet: the given cost 1 FLOPs differs from XLA's count"):
    model = qn.multi_exit_model([own_networks.ConvBlock(4)] * 3, input_shape=(8, 8, 1), num_classes=10, costs=costs)
  assert model.block_costs[0] == costs[0]  # kept, as given
  good = own_networks.linen_cnn((8, 8, 1), 10, width=4)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    qn.multi_exit_model(
      [own_networks.ConvBlock(4), own_networks.ConvBlock(8), own_networks.ConvBlock(16)],
      input_shape=(8, 8, 1),
      num_classes=10,
      costs=good.block_costs,
    )


class _Flatten(nn.Module):
  def __call__(self, x):
    return x.reshape(x.shape[0], -1)


class _Holds(nn.Module):
  """An NNX module inside a Linen one: its weights are not Linen params, so nothing would train them."""

  inner: object

  def __call__(self, x):
    return self.inner(x.reshape(x.shape[0], -1))


class _FlatDense(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(16)(x.reshape(x.shape[0], -1))


class _Reshape(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(16)(x.reshape(x.shape[0], 8, 8, 1).reshape(x.shape[0], -1))


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(subnets=[_Flatten()]), r"^subnet 0 has no trainable parameters, so training would leave it as it is"),
    (
      dict(subnets=[_Holds(nnx.Linear(64, 16, rngs=nnx.Rngs(0)))]),
      r"^subnet 0 has no trainable parameters.*pass an NNX module itself to multi_exit_model",
    ),
    (dict(subnets=[_FlatDense()], exits=[nn.Dense(11)]), r"^exit 0 returns shape \(11,\) per sample, not \(10,\)"),
    (
      dict(subnets=[_FlatDense(), _Reshape()]),
      r"^subnet 1 cannot read block 0's output of shape \(16,\) .*make its input match block 0's output",
    ),
    (dict(subnets=["conv"]), r"^subnet 0 is a str, not a Flax module"),
  ],
)
def test_networks_that_would_train_wrong_are_refused_in_one_line(kwargs, message):
  with pytest.raises(ValueError, match=message) as refused:
    qn.multi_exit_model(**kwargs, input_shape=(8, 8, 1), num_classes=10)
  assert "\n" not in str(refused.value)


def _cli(module, *args, cwd):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, ROOT]))
  return subprocess.run(
    [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
  )


def test_a_workdir_of_ones_own_model_predicts_and_exports_in_a_fresh_process(linen_run, digits, tmp_path):
  workdir, _ = linen_run
  _, (tx, _) = digits
  trained = qn.load(workdir)
  threshold = qn.threshold_for(trained, target_accuracy=0.9, log=lambda m: None)
  want = trained.predict(tx, threshold)
  np.save(tmp_path / "new.npy", tx[..., 0])  # [N, H, W]: a channel axis is added
  out = _cli(
    "experiments.predict",
    f"--workdir={workdir}",
    f"--images={tmp_path / 'new.npy'}",
    "--target_accuracy=0.9",
    f"--out={tmp_path / 'answers.jsonl'}",
    cwd=str(tmp_path),
  )
  assert out.returncode == 0, out.stderr[-2000:]
  rows = [json.loads(line) for line in open(tmp_path / "answers.jsonl")]
  np.testing.assert_array_equal([r["class"] for r in rows], want.prediction)
  np.testing.assert_array_equal([r["exit"] for r in rows], want.exit_index)
  out = _cli(
    "experiments.export",
    f"--workdir={workdir}",
    f"--out={tmp_path / 'cascade'}",
    f"--threshold={threshold}",
    cwd=str(tmp_path),
  )
  assert out.returncode == 0, out.stderr[-2000:]
  got = cascade_loader.load(str(tmp_path / "cascade")).predict(tx)
  np.testing.assert_array_equal(got["class"], want.prediction)
  np.testing.assert_array_equal(got["exit"], want.exit_index)
  assert len(set(want.exit_index)) > 1  # it really exits early


def test_a_workdir_without_data_json_or_with_an_unimportable_factory_is_one_line(linen_run, tmp_path):
  workdir, _ = linen_run
  broken = tmp_path / "no_data_json"
  os.makedirs(broken)
  for name in ("config.json",):
    (broken / name).write_text(open(os.path.join(workdir, name)).read())
  with pytest.raises(TrainedRunError, match=r"has no data\.json .*rerun the training command") as refused:
    qn.load(str(broken))
  assert "\n" not in str(refused.value)
  out = _cli("experiments.predict", f"--workdir={broken}", f"--images={broken}/x.npy", cwd=str(tmp_path))
  assert out.returncode == 1 and out.stderr.strip().count("\n") == 0 and "data.json" in out.stderr
  moved = tmp_path / "moved"
  (moved / "seed_0").mkdir(parents=True)
  config = json.loads(open(os.path.join(workdir, "config.json")).read())
  (moved / "config.json").write_text(json.dumps(dict(config, model="gone_package.nets:small_cnn")))
  (moved / "data.json").write_text(open(os.path.join(workdir, "data.json")).read())
  with pytest.raises(TrainedRunError, match=r"cannot import the model factory gone_package\.nets:small_cnn"):
    qn.load(str(moved))


def test_a_factory_must_be_importable_by_name(digits, tmp_path):
  train, test = digits
  with pytest.raises(ValueError, match="cannot be imported by name"):
    qn.train(
      lambda shape, classes: own_networks.linen_cnn(shape, classes), train=train, test=test, workdir=str(tmp_path)
    )
  with pytest.raises(ValueError, match="bind the factory's arguments by keyword"):
    qn.train(functools.partial(own_networks.linen_cnn, (8, 8, 1)), train=train, test=test, workdir=str(tmp_path))


def test_a_users_flax_conv_runs_as_patch_products_inside_the_trainers_loops():
  """On CPU the trainer's loops run convolutions as patch products: a plain nn.Conv gets them too, with
  XLA's convolution's outputs up to round-off (dilated and grouped convs stay flax's own)."""
  from quicknets_jax.models.layers import conv_implementation

  model = own_networks.linen_cnn((8, 8, 1), 10, width=4)
  variables = model.init(jax.random.PRNGKey(0))[0]
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (5, 8, 8, 1)))
  # the model read its blocks when it was built: they convolve, and all of it as patch products
  assert [block.convolutions for block in model.blocks] == ["patchable"] * model.num_blocks
  with conv_implementation("patches"):
    patched = model.blocks[0].apply(variables, x)
  native = model.blocks[0].apply(variables, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), patched, native)
  dilated = nn.Conv(4, (3, 3), kernel_dilation=2)
  params = dilated.init(jax.random.PRNGKey(0), x)
  with conv_implementation("patches"):
    jaxpr = str(jax.make_jaxpr(lambda p: dilated.apply(p, x))(params))
  assert "conv_general_dilated" in jaxpr
  # so a model of them declares convolutions only XLA runs: the trainer steps it from the host on CPU
  dilated_model = qn.multi_exit_model([dilated], input_shape=(8, 8, 1), num_classes=10)
  assert dilated_model.blocks[0].convolutions == "native"

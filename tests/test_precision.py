"""Mixed precision (`--dtype`) and which epoch path each backend takes.

bf16 compute, float32 parameters, optimizer state, batch statistics, losses and exit rule; FLOP counts
that do not depend on the dtype; one jitted epoch over device-resident data on GPU/TPU, the host loop
only for convolutions left on CPU.
"""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import fit_data_of

from quicknets_jax import models
from quicknets_jax.algorithms.quicknet import train_quicknet
from quicknets_jax.algorithms.settings import QuickNetConfig
from quicknets_jax.core import exits
from quicknets_jax.data.split import Split
from quicknets_jax.models.base import Block, run_block, split_variables
from quicknets_jax.training import losses, trainer
from quicknets_jax.training.schedule import FitConfig, resolve_dtype
from quicknets_jax.training.trainer import FitData, Objective, fit


def test_auto_dtype_is_bf16_on_accelerators_and_f32_on_cpu():
  assert resolve_dtype("auto", "cpu") is None
  assert resolve_dtype("auto", "gpu") == "bfloat16"
  assert resolve_dtype("auto", "tpu") == "bfloat16"
  assert resolve_dtype("float32", "tpu") is None
  assert resolve_dtype("bfloat16", "cpu") == "bfloat16"
  with pytest.raises(ValueError, match="dtype must be one of"):
    FitConfig(dtype="float16")


def test_a_bf16_block_computes_in_bf16_and_answers_in_f32():
  model = models.build_model("vgg", (8, 8, 3), 4, width=64, cfg="8,M,16", classifier_width=16)
  params, state = split_variables(model.init(jax.random.PRNGKey(0))[0])
  x = jax.random.normal(jax.random.PRNGKey(1), (5, 8, 8, 3))

  def logits(p, dtype):
    (_, out), _ = run_block(model.blocks[0], p, state, x, False, Block.features_and_logits, dtype)
    return out

  jaxpr = str(jax.make_jaxpr(lambda p: logits(p, "bfloat16"))(params))
  assert "bf16" in jaxpr and ("conv_general_dilated" in jaxpr or "dot_general" in jaxpr)
  assert "bf16" not in str(jax.make_jaxpr(lambda p: logits(p, None))(params))
  low, high = logits(params, "bfloat16"), logits(params, None)
  assert low.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(low), np.asarray(high), atol=0.1, rtol=0.05)  # bf16: ~3 digits
  grads = jax.grad(lambda p: jnp.sum(logits(p, "bfloat16")))(params)
  chex.assert_trees_all_equal_dtypes(grads, params)  # float32 gradients for float32 parameters


def test_bf16_training_keeps_params_optimizer_and_batch_statistics_in_f32(blobs):
  x, y, vx, vy = blobs
  model = models.build_model("vgg", (6, 6, 1), 4, width=64, cfg="8,M", classifier_width=16, num_blocks=1)
  params, state = split_variables(model.init(jax.random.PRNGKey(0))[0])
  assert state, "the VGG block has batch-norm statistics"
  results = {}
  for dtype in ("float32", "bfloat16"):
    config = FitConfig(batch_size=64, max_epochs=3, early_stop_patience=5, dtype=dtype)
    objective = Objective(losses.BlockLoss(model.blocks[0], None, None, config.compute_dtype))
    results[dtype] = fit(objective, params, state, fit_data_of(x, y, vx, vy), config, jax.random.PRNGKey(1))
  low = results["bfloat16"]
  for tree in (low.params, low.best_params, low.train.opt_state, low.model_state, low.best_model_state):
    assert all(leaf.dtype in (jnp.float32, jnp.int32) for leaf in jax.tree.leaves(tree)), tree
  # same schedule, same data order: bf16 learns the blobs as well as f32 does (to a few points)
  assert low.history[-1]["val_accuracy"] > 0.5
  assert abs(low.history[-1]["val_accuracy"] - results["float32"].history[-1]["val_accuracy"]) < 0.1


def test_flop_counts_do_not_depend_on_the_dtype(blobs):
  x, y, vx, vy = blobs
  model = models.mlp((6, 6, 1), 4, width=16, num_blocks=1)
  runs = {}
  for dtype in ("float32", "bfloat16"):
    # 2 epochs and patience 3: both dtypes train every fit for exactly 2 epochs
    fit_config = FitConfig(batch_size=64, max_epochs=2, early_stop_patience=3, dtype=dtype)
    runs[dtype] = train_quicknet(model, (x, y), (vx, vy), QuickNetConfig(fit=fit_config), seed=0, log=lambda m: None)
  assert [r.epochs for r in runs["float32"].records] == [r.epochs for r in runs["bfloat16"].records] == [2]
  assert runs["float32"].training_flops == runs["bfloat16"].training_flops
  assert runs["float32"].records[0].flops == runs["bfloat16"].records[0].flops


def test_the_exit_rule_decides_the_same_on_the_same_values_in_any_dtype():
  rng = np.random.default_rng(0)
  probs = jax.nn.softmax(jnp.asarray(rng.normal(size=(3, 500, 10)) * 3, jnp.float32))
  probs = probs.astype(jnp.bfloat16)  # values a bf16 network could produce
  commits = jnp.asarray(rng.normal(size=(3, 500)), jnp.float32)
  for threshold in (0.3, 0.6, 0.9):
    in_bf16 = exits.select_exits(probs, commits, threshold)
    in_f32 = exits.select_exits(probs.astype(jnp.float32), commits, threshold)
    for a, b in zip(in_bf16[:3], in_f32[:3]):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert in_bf16.exit_confidence.dtype == jnp.float32


def test_each_backend_takes_its_epoch_path():
  assert trainer.steps_from_host("cpu", convolves=True)
  assert not trainer.steps_from_host("cpu", convolves=False)
  for accelerator in ("gpu", "tpu"):
    assert not trainer.steps_from_host(accelerator, convolves=True)
    assert not trainer.steps_from_host(accelerator, convolves=False)
    assert trainer.loop_conv_implementation(accelerator) == "native"
  assert trainer.loop_conv_implementation("cpu") == "patches"


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_fit_runs_one_jitted_epoch_over_device_arrays_off_cpu(monkeypatch, backend):
  """With jax reporting `backend`, a convolutional fit builds the one-jit epoch on GPU (the host loop
  only where convolutions are left in loops on CPU) and hands it device arrays, not numpy."""
  model = models.build_model("vgg", (8, 8, 3), 4, width=64, cfg="8,M", classifier_width=16, num_blocks=1)
  params, state = split_variables(model.init(jax.random.PRNGKey(0))[0])
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (64, 8, 8, 3)))
  y = np.asarray(jax.random.randint(jax.random.PRNGKey(2), (64,), 0, 4), np.int32)
  data = FitData.whole(Split(x, y), Split(x[48:], y[48:]), 4, rows=np.arange(48))  # numpy in
  seen = []

  def recording(driver):
    def steps(state, arrays, order, step_key, *, plan):
      seen.append((driver.steps.__name__, type(arrays.inputs), type(arrays.targets)))
      return driver.steps(state, arrays, order, step_key, plan=plan)

    return dataclasses.replace(driver, steps=steps)

  for name in ("ON_DEVICE", "FROM_HOST"):
    monkeypatch.setattr(trainer, name, recording(getattr(trainer, name)))
  monkeypatch.setattr(trainer.jax, "default_backend", lambda: backend)
  # native convolutions, as a GPU's loops would trace them (and as CPU's would without patch products);
  # the step's statics say so, so nothing traced here is reused by a fit that convolves as patches
  monkeypatch.setattr(trainer, "loop_conv_implementation", lambda backend=None: "native")
  objective = Objective(losses.BlockLoss(model.blocks[0]))
  fit(objective, params, state, data, FitConfig(batch_size=16, max_epochs=1), jax.random.PRNGKey(3))
  assert [name for name, _, _ in seen] == ["steps_in_host_loop" if backend == "cpu" else "steps_on_device"]
  assert all(issubclass(a, jax.Array) and issubclass(b, jax.Array) for _, a, b in seen)

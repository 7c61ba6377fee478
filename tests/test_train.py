"""The trainer's buffer donation: every array a caller or a FitState holds stays readable."""

import jax
import jax.numpy as jnp
import numpy as np
from conftest import fit_data_of

from quicknets_jax import models
from quicknets_jax.models.base import split_variables
from quicknets_jax.training import losses
from quicknets_jax.training.schedule import FitConfig
from quicknets_jax.training.trainer import FitData, Objective, fit, loop_convolutions, uses_convolution


def test_donated_epochs_leave_callers_and_best_params_intact(blobs):
  x, y, vx, vy = blobs
  model = models.mlp((6, 6, 1), 4, width=16, num_blocks=1)
  params, state = split_variables(model.init(jax.random.PRNGKey(0))[0])
  before = jax.tree.map(np.asarray, params)
  data = fit_data_of(x, y, vx, vy)
  objective = Objective(losses.block_loss(model.blocks[0]))
  # a learning rate this high makes later epochs worse than the first: best_params is an old epoch's
  config = FitConfig(batch_size=64, max_epochs=4, early_stop_patience=10, learning_rate=0.5)
  first = fit(objective, params, state, data, config, jax.random.PRNGKey(1), num_classes=4)
  # the caller's init params were not consumed by the donated epochs and are unchanged
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(before)):
    np.testing.assert_array_equal(np.asarray(a), b)
  assert first.best_epoch < first.epoch
  best = jax.tree.map(np.asarray, first.best_params)  # readable after later epochs donated theirs
  final = jax.tree.map(np.asarray, first.params)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(best), jax.tree.leaves(final)))
  # the same fit from the same (still valid) params gives the same result
  again = fit(objective, params, state, data, config, jax.random.PRNGKey(1), num_classes=4)
  for a, b in zip(jax.tree.leaves(again.best_params), jax.tree.leaves(best)):
    np.testing.assert_array_equal(np.asarray(a), b)


def test_host_loop_epochs_equal_device_loop_epochs():
  """Convolutional models on CPU run each step from Python (XLA:CPU convolves slowly inside loops):
  the same steps, random streams and validation as the one-jit epoch."""
  model = models.build_model("vgg", (8, 8, 3), 4, width=64, cfg="8,M,16", classifier_width=16)
  params, state = split_variables(model.init(jax.random.PRNGKey(0))[0])
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (100, 8, 8, 3)))
  y = np.asarray(jax.random.randint(jax.random.PRNGKey(2), (100,), 0, 4), np.int32)
  data = FitData(
    jnp.asarray(x),
    jnp.asarray(y),
    jnp.arange(90, dtype=jnp.int32),
    jnp.asarray(y[:90]),
    jnp.asarray(x[90:]),
    jnp.asarray(y[90:]),
  )
  objective = Objective(losses.block_loss(model.blocks[0], "crop_flip"))
  # XLA's convolutions (the default outside the trainer's loops) would make the trainer step from Python
  assert uses_convolution(objective.loss_fn, params, state, data.inputs, data.targets)
  with loop_convolutions():  # its loops convolve as patch products on CPU: the one-jit epoch again
    assert uses_convolution(objective.loss_fn, params, state, data.inputs, data.targets) == (
      jax.default_backend() != "cpu"
    )
  mlp = models.mlp((8, 8, 3), 4, width=8, num_blocks=1)
  mlp_params, _ = split_variables(mlp.init(jax.random.PRNGKey(0))[0])
  assert not uses_convolution(losses.block_loss(mlp.blocks[0]), mlp_params, {}, data.inputs, data.targets)
  runs = {}
  for host_loop in (False, True):
    config = FitConfig(batch_size=32, max_epochs=2, early_stop_patience=5, host_loop=host_loop)
    runs[host_loop] = fit(objective, params, state, data, config, jax.random.PRNGKey(3), num_classes=4)
  for a, b in zip(jax.tree.leaves(runs[True].params), jax.tree.leaves(runs[False].params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
  for a, b in zip(runs[True].history, runs[False].history):
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
      assert abs(a[key] - b[key]) < 1e-4, (key, a[key], b[key])

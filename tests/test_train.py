"""The trainer: one pure step, buffer donation (every array a caller or a FitState holds stays readable),
and the drivers that run the step agreeing with each other."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from conftest import fit_data_of, make_blobs

from quicknets_jax import models
from quicknets_jax.data.split import Split
from quicknets_jax.models import layers
from quicknets_jax.models.base import parts_mask, split_variables
from quicknets_jax.training import losses, trainer
from quicknets_jax.training import step as step_module
from quicknets_jax.training.optimizer import Adam, Mask, learning_rate_of
from quicknets_jax.training.schedule import FitConfig
from quicknets_jax.training.step import Batch, Statics, TrainState, train_step
from quicknets_jax.training.trainer import FitData, Objective, fit


def test_donated_epochs_leave_callers_and_best_params_intact(blobs):
  x, y, vx, vy = blobs
  model = models.mlp((6, 6, 1), 4, width=16, num_blocks=1)
  params, state = split_variables(model.init(jax.random.PRNGKey(0))[0])
  before = jax.tree.map(np.asarray, params)
  data = fit_data_of(x, y, vx, vy)
  objective = Objective(losses.BlockLoss(model.blocks[0]))
  # a learning rate this high makes later epochs worse than the first: best_params is an old epoch's
  config = FitConfig(batch_size=64, max_epochs=4, early_stop_patience=10, learning_rate=0.5)
  first = fit(objective, params, state, data, config, jax.random.PRNGKey(1))
  # the caller's init params were not consumed by the donated epochs and are unchanged
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(before)):
    np.testing.assert_array_equal(np.asarray(a), b)
  assert first.best_epoch < first.epoch
  best = jax.tree.map(np.asarray, first.best_params)  # readable after later epochs donated theirs
  final = jax.tree.map(np.asarray, first.params)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(best), jax.tree.leaves(final)))
  # the same fit from the same (still valid) params gives the same result
  again = fit(objective, params, state, data, config, jax.random.PRNGKey(1))
  for a, b in zip(jax.tree.leaves(again.best_params), jax.tree.leaves(best)):
    np.testing.assert_array_equal(np.asarray(a), b)


def test_host_loop_epochs_equal_device_loop_epochs():
  """Convolutional models on CPU run each step from Python (XLA:CPU convolves slowly inside loops):
  the same steps, random streams and validation as the one-jit epoch."""
  model = models.build_model("vgg", (8, 8, 3), 4, width=64, cfg="8,M,16", classifier_width=16)
  params, state = split_variables(model.init(jax.random.PRNGKey(0))[0])
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (100, 8, 8, 3)))
  y = np.asarray(jax.random.randint(jax.random.PRNGKey(2), (100,), 0, 4), np.int32)
  data = FitData.whole(Split(jnp.asarray(x), jnp.asarray(y)), Split(jnp.asarray(x[90:]), jnp.asarray(y[90:])), 4)
  data = dataclasses.replace(data, rows=jnp.arange(90, dtype=jnp.int32), row_classes=jnp.asarray(y[:90]))
  objective = Objective(losses.BlockLoss(model.blocks[0], "crop_flip"))
  # the model declares its convolutions; on CPU the trainer's loops run them as patch products, so the
  # one-jit epoch runs them, validated in passes; XLA's own convolutions would make it step from Python
  assert trainer.convolutions(objective.loss) == "patchable"
  cpu = trainer.choose_drivers("patchable", FitConfig(), backend="cpu")
  assert cpu.epoch is trainer.ON_DEVICE and cpu.conv == "patches" and cpu.rows_per_pass == layers.CPU_ROWS_PER_PASS
  assert trainer.choose_drivers("native", FitConfig(), backend="cpu").epoch is trainer.FROM_HOST
  gpu = trainer.choose_drivers("native", FitConfig(), backend="gpu")
  assert gpu.epoch is trainer.ON_DEVICE and gpu.conv == "native" and gpu.rows_per_pass is None
  assert trainer.choose_drivers("native", FitConfig(host_loop=False), backend="cpu").epoch is trainer.ON_DEVICE
  mlp = models.mlp((8, 8, 3), 4, width=8, num_blocks=1)
  assert trainer.convolutions(losses.BlockLoss(mlp.blocks[0])) == "none"
  assert trainer.choose_drivers("none", FitConfig(), backend="cpu") == (
    trainer.ON_DEVICE,
    trainer.EVAL_ON_DEVICE,
    "patches",
    None,
  )
  runs = {}
  for host_loop in (False, True):
    config = FitConfig(batch_size=32, max_epochs=2, early_stop_patience=5, host_loop=host_loop)
    runs[host_loop] = fit(objective, params, state, data, config, jax.random.PRNGKey(3))
  for a, b in zip(jax.tree.leaves(runs[True].params), jax.tree.leaves(runs[False].params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
  for a, b in zip(runs[True].history, runs[False].history):
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
      assert abs(a[key] - b[key]) < 1e-4, (key, a[key], b[key])


def test_train_step_is_a_pure_function_of_state_batch_and_key():
  """`train_step(state, batch, key)`: the same inputs give the same state and metrics; padded rows (mask 0)
  change nothing; the learning rate comes from the optimizer state and the step count advances."""
  model = models.mlp((6, 6, 1), 4, width=16, num_blocks=1)
  params, model_state = split_variables(model.init(jax.random.PRNGKey(0))[0])
  statics = Statics(losses.BlockLoss(model.blocks[0]), Adam(Mask.of(parts_mask(params, ("subnet", "exit_head")))))
  step = jax.jit(functools.partial(train_step, statics=statics))
  state = TrainState.create(statics.optimizer, params, model_state, learning_rate=0.01)
  x, y = make_blobs(8, seed=3)
  batch = Batch(jnp.asarray(x), jnp.asarray(y), jnp.ones(8))
  key = jax.random.PRNGKey(7)
  first, metrics = step(state, batch, key)
  again, metrics_again = step(state, batch, key)
  chex.assert_trees_all_equal((first, metrics), (again, metrics_again))
  assert int(first.step) == 1 and float(learning_rate_of(first.opt_state)) == np.float32(0.01)
  # frozen leaves (the commitment head) stay put, trained ones move
  assert np.array_equal(first.params["commit_head"]["out"]["kernel"], params["commit_head"]["out"]["kernel"])
  assert not np.array_equal(first.params["subnet"]["dense_0"]["kernel"], params["subnet"]["dense_0"]["kernel"])
  # two garbage rows masked out: the step is the one on the six real rows
  padded = Batch(
    jnp.concatenate([batch.x[:6], 100 * jnp.ones_like(batch.x[:2])]),
    jnp.concatenate([batch.y[:6], batch.y[:2]]),
    jnp.asarray([1.0] * 6 + [0.0] * 2),
  )
  six = Batch(batch.x[:6], batch.y[:6], jnp.ones(6))
  masked, m1 = step(state, padded, key)
  real, m2 = step(state, six, key)
  chex.assert_trees_all_close(masked.params, real.params, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(m1["loss_sum"], m2["loss_sum"], rtol=1e-6)
  # a lower learning rate in the state takes a smaller step, with the same compiled step
  slow, _ = step(state.with_learning_rate(0.001), batch, key)
  delta = lambda s: float(
    jnp.abs(s.params["subnet"]["dense_0"]["kernel"] - params["subnet"]["dense_0"]["kernel"]).max()
  )
  assert delta(slow) < delta(first)


def test_one_compiled_epoch_serves_every_fit_with_equal_settings(blobs):
  """Equal losses and masks are equal statics: a second fit (another seed, fresh objects) adds no compiled
  program to the epoch's or the validation pass's cache."""
  x, y, vx, vy = blobs
  model = models.mlp((6, 6, 1), 4, width=16, num_blocks=1)
  config = FitConfig(batch_size=64, max_epochs=1)
  data = fit_data_of(x, y, vx, vy)

  def one_fit(seed):
    params, state = split_variables(model.init(jax.random.PRNGKey(seed))[0])
    objective = Objective(losses.BlockLoss(model.blocks[0], learned_threshold=0.321))
    fit(objective, params, state, data, config, jax.random.PRNGKey(seed))
    return trainer.steps_on_device._cache_size(), trainer.evaluate_on_device._cache_size()

  first = one_fit(0)
  assert one_fit(1) == first


def test_validation_in_passes_skips_empty_passes_and_sums_the_same():
  """A convolving network's validation chunk on CPU is computed a few hundred rows at a time: the sums
  equal the whole chunk's to float round-off, rows past the last real one are never computed, and fits
  of convolving losses on CPU (only those) validate so."""
  model = models.build_model("vgg", (8, 8, 3), 4, width=64, cfg="8,M,16", classifier_width=16)
  params, model_state = split_variables(model.init(jax.random.PRNGKey(0))[0])
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (64, 8, 8, 3)))
  y = np.asarray(jax.random.randint(jax.random.PRNGKey(2), (64,), 0, 4), np.int32)
  loss = losses.BlockLoss(model.blocks[0])
  statics = Statics(loss, conv=trainer.loop_conv_implementation())
  state = TrainState.create(Adam(), params, model_state, 1e-3)
  val = Split(jnp.asarray(x), jnp.asarray(y))
  for num_rows in (64, 40, 9):
    whole, passes = (
      trainer.evaluate_on_device(state, val, jnp.int32(num_rows), plan=trainer.EvalPlan(statics, 64, rows))
      for rows in (None, 16)
    )
    np.testing.assert_allclose(np.asarray(passes), np.asarray(whole), rtol=1e-6)
    host = trainer.evaluate_from_host(state, val, num_rows, plan=trainer.EvalPlan(statics, 64, 16))
    np.testing.assert_allclose(host, np.asarray(whole), rtol=1e-6)

  # a pass whose rows are all masked out is not computed: the loss sees two passes of 16 rows
  seen = []

  def counted(params, batch, rng, hparams=None, *, model_state):
    jax.debug.callback(lambda rows: seen.append(int(rows)), jnp.int32(batch.x.shape[0]))
    return loss(params, batch, rng, hparams, model_state=model_state)

  mask = jnp.asarray((np.arange(64) < 32).astype(np.float32))
  out = jax.jit(functools.partial(step_module.eval_sums, rows_per_pass=16), static_argnames=("statics",))(
    state,
    Batch(jnp.asarray(x), jnp.asarray(y), mask),
    statics=Statics(counted, conv=trainer.loop_conv_implementation()),
  )
  jax.effects_barrier()
  assert seen == [16, 16]
  np.testing.assert_allclose(
    np.asarray(out[0]),
    np.asarray(trainer.evaluate_on_device(state, val, jnp.int32(32), plan=trainer.EvalPlan(statics, 64))[0]) * 32,
    rtol=1e-5,
  )
  assert trainer.eval_rows_per_pass("cpu", True) == layers.CPU_ROWS_PER_PASS
  assert trainer.eval_rows_per_pass("cpu", False) is None
  assert trainer.eval_rows_per_pass("gpu", True) is None


def test_epochs_that_gather_their_rows_once_equal_epochs_that_gather_every_step():
  """Narrow rows (a commitment head's logits, a later block's features) are gathered once per epoch in its
  order and sliced per step: the same batches, so bit for bit the same params and metrics, in both
  step drivers."""
  assert trainer.gathers_per_epoch((10,), np.float32, 128)  # logits: 5 KiB a batch
  assert not trainer.gathers_per_epoch((28, 28, 1), np.float32, 128)  # images: 392 KiB a batch
  model = models.mlp((8, 8, 3), 4, width=16, num_blocks=2)
  params, model_state = split_variables(model.init(jax.random.PRNGKey(0))[0])
  x = jax.random.normal(jax.random.PRNGKey(1), (200, 8, 8, 3))
  y = jax.random.randint(jax.random.PRNGKey(2), (200,), 0, 4)
  rows = np.arange(0, 200, 2, dtype=np.int32)[:77]  # a working set whose last batch is part padding
  bucket = trainer.bucket_size(len(rows))
  arrays = trainer.EpochArrays(
    x,
    y,
    trainer.pad_rows(rows, bucket),
    trainer.pad_rows(np.asarray(y)[rows], bucket),
    jnp.int32(len(rows)),
    jnp.int32(len(rows)),
  )
  loss = losses.BlockLoss(model.blocks[0])
  optimizer = Adam(Mask.of(parts_mask(params, ("subnet", "exit_head"))))
  state = TrainState.create(optimizer, params, model_state, 1e-2)
  results = {}
  for balanced in (False, True):
    for per_epoch in (False, True):
      plan = trainer.EpochPlan(Statics(loss, optimizer, None, "auto"), 32, 4, balanced, per_epoch)
      for driver in (trainer.ON_DEVICE, trainer.FROM_HOST):
        trained = jax.tree.map(jnp.copy, state)
        for epoch in range(2):
          trained, metrics = driver.run(trained, arrays, jax.random.PRNGKey(10 + epoch), plan=plan)
        results[balanced, per_epoch, driver] = jax.tree.map(np.asarray, (trained.params, metrics))
  for (balanced, _, driver), result in results.items():
    reference = results[balanced, False, trainer.ON_DEVICE]
    if driver is trainer.ON_DEVICE:  # the drivers agree to round-off; each equals itself exactly
      jax.tree.map(np.testing.assert_array_equal, result, reference)
    reference = results[balanced, False, driver]
    jax.tree.map(np.testing.assert_array_equal, result, reference)
  moved = jax.tree.leaves(
    jax.tree.map(
      lambda a, b: float(np.abs(a - b).max()),
      results[False, True, trainer.ON_DEVICE][0],
      jax.tree.map(np.asarray, params),
    )
  )
  assert max(moved) > 1e-3

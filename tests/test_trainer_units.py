"""Unit tests of the training core's parts, each on its own: the schedule, the epoch loop (`run_epochs`,
over a scripted runner), and each epoch runner (`SequentialRunner`, `decoupled.DecoupledRunner`) for one
epoch. Nothing here trains a network to convergence."""

import dataclasses
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import fit_data_of, make_blobs

from quicknets_jax import models
from quicknets_jax.algorithms import decoupled
from quicknets_jax.algorithms.settings import QuickNetConfig
from quicknets_jax.data.split import Split
from quicknets_jax.models.base import split_variables
from quicknets_jax.training import losses
from quicknets_jax.training.schedule import BlockSchedules, FitConfig, Schedule, advance, monitored_score
from quicknets_jax.training.step import Batch
from quicknets_jax.training.trainer import (
  EpochScores,
  FitHooks,
  FitState,
  NonFiniteLossError,
  Objective,
  SequentialRunner,
  init_fit_state,
  run_epochs,
)

# ------------------------------------------------------------------------------------ the schedule


def test_the_schedule_keeps_the_best_epoch_cuts_the_rate_on_a_plateau_and_stops_after_its_patience():
  config = FitConfig(learning_rate=1.0, plateau_patience=1, early_stop_patience=3, max_epochs=100)
  schedule = Schedule(learning_rate=1.0)
  rates, best = [], []
  for score in (3.0, 2.0, 2.5, 2.5, 2.5):  # a new best, then three epochs without progress
    schedule = advance(schedule, config, score)
    rates.append(schedule.learning_rate)
    best.append(schedule.best_epoch)
  assert best == [1, 2, 2, 2, 2]
  assert rates == [1.0, 1.0, 1.0, 0.5, 0.5]  # cut after the second epoch without progress
  assert schedule.stopped and schedule.finished(config) and schedule.epoch == 5


def test_a_gain_under_min_delta_is_a_new_best_epoch_but_not_progress():
  config = FitConfig(min_delta=0.1, early_stop_patience=2)
  schedule = advance(Schedule(learning_rate=1.0), config, 1.0)
  schedule = advance(schedule, config, 0.95)
  assert schedule.best_epoch == 2 and schedule.epochs_since_progress == 1
  schedule = advance(schedule, config, 0.93)
  assert schedule.best_epoch == 3 and schedule.stopped


def test_the_monitored_score_is_lower_for_better_epochs():
  assert monitored_score(FitConfig(monitor="val_loss"), 1.0, 2.0, 0.9) == 2.0
  assert monitored_score(FitConfig(monitor="train_loss"), 1.0, 2.0, 0.9) == 1.0
  assert monitored_score(FitConfig(monitor="val_accuracy"), 1.0, 2.0, 0.9) == -0.9


def test_schedules_come_back_from_their_checkpointed_dicts():
  one = advance(Schedule(learning_rate=0.1), FitConfig(), 0.5)
  assert Schedule.from_dict(dataclasses.asdict(one)) == one
  blocks = BlockSchedules((one, Schedule(learning_rate=0.2)), (True, False), epoch=4)
  assert BlockSchedules.from_dict(dataclasses.asdict(blocks)) == blocks
  assert not blocks.stopped and not blocks.finished(FitConfig(max_epochs=5))
  assert blocks.finished(FitConfig(max_epochs=4))


# ------------------------------------------------------------------------------------ the epoch loop


@dataclasses.dataclass
class ScriptedRunner:
  """An `EpochRunner` whose epochs return scripted losses: the loop's own behaviour, with no network.

  `train` is an int (the epochs run so far); the key each epoch got is kept in `keys`."""

  losses: list
  config: FitConfig
  phase: str = "fit"
  keys: list = dataclasses.field(default_factory=list)
  started: int = 0

  def finished(self, state):
    return state.schedule.finished(self.config)

  def start(self, state):
    self.started += 1
    return state

  def train_epoch(self, state, key):
    self.keys.append(np.asarray(jax.random.key_data(key)))
    return state.train + 1, EpochScores(self.losses[state.epoch], 0.5)

  def validate(self, state, train):
    return EpochScores(self.losses[state.epoch], 0.25)

  def advance(self, state, train, trained, validated):
    schedule = advance(state.schedule, self.config, validated.loss)
    return FitState(train, train, None, schedule, state.history), dict(learning_rate=1.0), dict(extra=7)

  def learning_rate(self, state):
    return state.schedule.learning_rate

  def training_flops(self, state):
    return 10.0 * state.epoch


class Recorder:
  """Events and a checkpoint at once: what the loop told it, in order."""

  def __init__(self, restored=None):
    self.calls, self.restored = [], restored

  def epoch_done(self, event):
    self.calls.append(("event", event.state.epoch, event.training_flops))

  def block_frozen(self, event):  # pragma: no cover - the loop never freezes blocks
    raise AssertionError("run_epochs froze a block")

  def restore(self, state):
    return self.restored

  def save(self, state):
    self.calls.append(("save", state.epoch, len(state.history)))

  def wait(self, raise_failure=True):
    self.calls.append(("wait",))

  def latest_epoch(self):
    return None

  directory = "nowhere"


def _fresh(config):
  return FitState(0, 0, None, Schedule(learning_rate=config.learning_rate))


def test_the_loop_runs_until_the_schedule_stops_and_records_tells_and_saves_every_epoch():
  config = FitConfig(max_epochs=10, early_stop_patience=2, plateau_patience=5)
  runner = ScriptedRunner([1.0, 0.5, 0.6, 0.7, 0.1], config)
  recorder = Recorder()
  state = run_epochs(
    runner, _fresh(config), config, jax.random.PRNGKey(0), name="t", hooks=FitHooks(recorder, recorder)
  )
  assert state.epoch == 4 and state.schedule.stopped and state.best_epoch == 2 and state.train == 4
  assert runner.started == 1
  # every epoch: its event (with the runner's FLOPs), then its save; one wait at the end
  want = [c for e in range(1, 5) for c in (("event", e, 10.0 * e), ("save", e, e))] + [("wait",)]
  assert recorder.calls == want
  first = state.history[0]
  assert list(first)[:7] == [
    "epoch",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "learning_rate",
    "seconds",
  ]
  assert first["extra"] == 7 and first["stopped"] is False and state.history[-1]["stopped"] is True
  assert [r["epoch"] for r in state.history] == [1, 2, 3, 4]
  # epoch e draws from fold_in(key, e)
  for e, got in enumerate(runner.keys):
    np.testing.assert_array_equal(got, jax.random.key_data(jax.random.fold_in(jax.random.PRNGKey(0), e)))


def test_the_loop_resumes_from_the_checkpoints_state_with_that_epochs_key():
  config = FitConfig(max_epochs=3, early_stop_patience=5)
  whole = ScriptedRunner([3.0, 2.0, 1.0], config)
  uninterrupted = run_epochs(whole, _fresh(config), config, jax.random.PRNGKey(1), name="t", hooks=FitHooks())
  # a checkpoint of the state after epoch 1: the resumed loop runs epochs 2 and 3 only
  after_one = ScriptedRunner([3.0, 2.0, 1.0], dataclasses.replace(config, max_epochs=1))
  saved = run_epochs(after_one, _fresh(config), config, jax.random.PRNGKey(1), name="t", hooks=FitHooks())
  lines = []
  resumed_runner = ScriptedRunner([3.0, 2.0, 1.0], config)
  resumed = run_epochs(
    resumed_runner,
    _fresh(config),
    config,
    jax.random.PRNGKey(1),
    name="t",
    hooks=FitHooks(None, Recorder(restored=saved), lines.append),
  )
  assert lines == ["t: resumed after epoch 1"]
  assert len(resumed_runner.keys) == 2
  np.testing.assert_array_equal(resumed_runner.keys, whole.keys[1:])
  strip = lambda h: [{k: v for k, v in r.items() if "seconds" not in k} for r in h]
  assert strip(resumed.history) == strip(uninterrupted.history)
  assert resumed.schedule == uninterrupted.schedule


def test_the_loop_stops_on_a_non_finite_loss_and_names_the_epoch_and_the_fix():
  config = FitConfig(max_epochs=5, learning_rate=0.3)
  recorder = Recorder()
  with pytest.raises(NonFiniteLossError, match=r"t: non-finite loss at epoch 2 .*lower --learning_rate \(now 0.3\)"):
    run_epochs(
      ScriptedRunner([1.0, math.nan, 1.0], config),
      _fresh(config),
      config,
      jax.random.PRNGKey(0),
      name="t",
      hooks=FitHooks(recorder, recorder),
    )
  # epoch 1 was told and saved; the failure waited for the checkpoint writer before it went on
  assert recorder.calls == [("event", 1, 10.0), ("save", 1, 1), ("wait",)]


# ------------------------------------------------------------------------------------ the runners


def _mlp_fit(num_blocks=1):
  model = models.mlp((6, 6, 1), 4, width=16, num_blocks=num_blocks)
  x, y = make_blobs(96, seed=0)
  vx, vy = make_blobs(40, seed=1)
  return model, (x, y, vx, vy)


def test_the_sequential_runner_trains_one_epoch_validates_it_and_keeps_the_best_params():
  model, blobs = _mlp_fit()
  params, model_state = split_variables(model.init(jax.random.PRNGKey(0))[0])
  objective = Objective(losses.BlockLoss(model.blocks[0]))
  config = FitConfig(batch_size=32, max_epochs=3)
  runner = SequentialRunner.create(objective, fit_data_of(*blobs), config, "unit")
  state = runner.start(init_fit_state(objective, params, model_state, config))
  assert not runner.finished(state)
  train, trained = runner.train_epoch(state, jax.random.PRNGKey(2))
  chex.assert_trees_all_equal_shapes_and_dtypes(train.params, params)
  assert int(train.step) == 3  # 96 rows, batches of 32
  assert math.isfinite(trained.loss) and 0.0 <= trained.accuracy <= 1.0
  validated = runner.validate(state, train)
  # the validation pass is the loss's mean over the validation split (inference: no key)
  batch = Batch(jnp.asarray(blobs[2]), jnp.asarray(blobs[3]), jnp.ones(40))
  want, _ = objective.loss(train.params, batch, None, objective.hparams, model_state=train.model_state)
  assert validated.loss == pytest.approx(float(want), rel=1e-5)
  after, head, _ = runner.advance(state, train, trained, validated)
  assert after.epoch == 1 and after.best_epoch == 1 and head["samples"] == 96
  chex.assert_trees_all_equal(after.best_params, train.params)  # the first epoch is the best so far
  # a worse epoch keeps the best epoch's params
  worse = EpochScores(validated.loss + 1.0, 0.0)
  later, _, _ = runner.advance(after, train, trained, worse)
  assert later.best_epoch == 1 and later.epoch == 2
  assert later.best_params is after.best_params


def test_the_decoupled_runner_leaves_a_frozen_blocks_params_where_they_were():
  model, (x, y, vx, vy) = _mlp_fit(num_blocks=2)
  config = QuickNetConfig(fit=FitConfig(batch_size=32, max_epochs=2))
  runner, state = decoupled.DecoupledRunner.create(model, Split(x, y), Split(vx, vy), config, seed=0)
  schedules = state.schedule
  state = dataclasses.replace(state, schedule=dataclasses.replace(schedules, frozen=(True, False)))
  state = runner.start(state)
  before = jax.tree.map(np.asarray, state.train.params)
  train, trained = runner.train_epoch(state, jax.random.PRNGKey(3))
  assert math.isfinite(trained.loss)
  chex.assert_trees_all_equal(jax.tree.map(np.asarray, train.params[0]), before[0])
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), train.params[1], before[1]))
  assert max(moved) > 0.0
  validated = runner.validate(state, train)
  losses_per_block, _ = validated.details
  assert len(losses_per_block) == 2
  after, _, _ = runner.advance(state, train, trained, validated)
  assert after.schedule.epoch == 1 and after.schedule.frozen[0]

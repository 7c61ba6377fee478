"""Deterministic resume: a run stopped after any epoch (block fit, commitment fit, end-to-end) and
resumed from its per-epoch orbax checkpoints ends bit-identical to an uninterrupted one; and the
fault-injection benchmark (SIGKILL at random moments, in a subprocess) on a tiny config."""

import dataclasses
import errno
import os
import tempfile
import threading

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import fault_injection
from benchmarks.fault_injection import untimed as _untimed
from quicknets_jax import models
from quicknets_jax.algorithms.end_to_end import train_end_to_end
from quicknets_jax.algorithms.quicknet import QuickNetConfig, train_quicknet
from quicknets_jax.training import checkpoint
from quicknets_jax.training.checkpoint import BlockCheckpointer, CheckpointError, FitCheckpointer
from quicknets_jax.training.events import Events
from quicknets_jax.training.optimizer import learning_rate_of
from quicknets_jax.training.schedule import FitConfig, Schedule
from quicknets_jax.training.trainer import FitState, Objective, init_fit_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = QuickNetConfig(
  fit=FitConfig(batch_size=64, max_epochs=3),
  commit_fit=FitConfig(batch_size=64, max_epochs=3, balanced_sampling=False),
  train_threshold=0.5,
)


class Interrupt(Exception):
  """Stands in for a stop at the end of an epoch (the checkpoint is still written)."""


def _model():
  return models.mlp((6, 6, 1), 4, width=16, num_blocks=2)


class Annotate(Events):
  """Adds to each epoch's record, as metric trackers do (the addition must survive a resume); with
  `stop_when(event)`, raises Interrupt after annotating the epoch it is true for; `seen` collects
  (phase, epoch) of every epoch it is told of."""

  def __init__(self, stop_when=lambda event: False):
    self.stop_when, self.seen = stop_when, []

  def epoch_done(self, event):
    event.record["note"] = f"{event.phase} {event.record['epoch']}"
    self.seen.append((event.phase, event.record["epoch"]))
    if self.stop_when(event):
      raise Interrupt


def _records(run):
  return [_untimed(dataclasses.asdict(r)) for r in run.records]


@pytest.fixture(scope="module")
def reference(blobs, tmp_path_factory):
  x, y, vx, vy = blobs
  directory = tmp_path_factory.mktemp("reference")
  run = train_quicknet(
    _model(),
    (x, y),
    (vx, vy),
    SMALL,
    seed=5,
    checkpointer=BlockCheckpointer(directory),
    log=lambda m: None,
    events=Annotate(),
  )
  return run, directory


@pytest.mark.parametrize("kind,block,epoch", [("block", 1, 2), ("commitment", 0, 1)])
def test_stop_after_any_epoch_resumes_bit_identically(blobs, reference, tmp_path, kind, block, epoch):
  x, y, vx, vy = blobs
  full, _ = reference
  stop = Annotate(lambda event: (event.phase, event.block, event.record["epoch"]) == (kind, block, epoch))
  with pytest.raises(Interrupt):
    train_quicknet(
      _model(),
      (x, y),
      (vx, vy),
      SMALL,
      seed=5,
      checkpointer=BlockCheckpointer(tmp_path),
      log=lambda m: None,
      events=stop,
    )
  # the epoch the callback saw reached the disk: the stop cost nothing
  assert FitCheckpointer(tmp_path / "in_progress" / f"{kind}_{block}").latest_epoch() == epoch
  messages, listener = [], Annotate()
  resumed = train_quicknet(
    _model(),
    (x, y),
    (vx, vy),
    SMALL,
    seed=5,
    checkpointer=BlockCheckpointer(tmp_path),
    log=messages.append,
    events=listener,
  )
  epochs_run = listener.seen
  name = f"block {block}" if kind == "block" else f"commitment head {block}"
  assert any(m.startswith(f"{name}: resumed after epoch {epoch}") for m in messages), messages
  # nothing saved runs again: for a commitment fit, the finished block fit came back from disk
  assert epochs_run[0] == (kind, epoch + 1), epochs_run
  chex.assert_trees_all_equal(jax.device_get(full.variables), jax.device_get(resumed.variables))
  assert _records(full) == _records(resumed)
  # the frozen blocks' per-epoch checkpoints are gone; only the block checkpoints remain
  assert not os.listdir(tmp_path / "in_progress")


def test_end_to_end_resumes_bit_identically(blobs, tmp_path):
  x, y, vx, vy = blobs
  model, config = _model(), FitConfig(batch_size=64, max_epochs=4)
  full = train_end_to_end(
    model,
    (x, y),
    (vx, vy),
    config,
    seed=2,
    log=lambda m: None,
    events=Annotate(),
    checkpoint=FitCheckpointer(tmp_path / "full", "end-to-end"),
  )
  with pytest.raises(Interrupt):
    train_end_to_end(
      model,
      (x, y),
      (vx, vy),
      config,
      seed=2,
      log=lambda m: None,
      events=Annotate(lambda event: event.record["epoch"] == 2),
      checkpoint=FitCheckpointer(tmp_path / "cut", "end-to-end"),
    )
  messages = []
  resumed = train_end_to_end(
    model,
    (x, y),
    (vx, vy),
    config,
    seed=2,
    log=messages.append,
    events=Annotate(),
    checkpoint=FitCheckpointer(tmp_path / "cut", "end-to-end"),
  )
  assert any("end-to-end: resumed after epoch 2" in m for m in messages)
  chex.assert_trees_all_equal(jax.device_get(full.variables), jax.device_get(resumed.variables))
  assert _untimed(full.history) == _untimed(resumed.history)
  assert (full.epochs, full.best_epoch, full.training_flops) == (
    resumed.epochs,
    resumed.best_epoch,
    resumed.training_flops,
  )
  assert resumed.seconds >= sum(r["seconds"] for r in resumed.history[:2])  # restored epochs still count


def test_fit_state_round_trip_is_exact(tmp_path):
  params = {"w": jnp.arange(6.0).reshape(2, 3) / 7, "b": jnp.zeros(3)}
  objective = Objective(lambda *a: None, {"w": True, "b": False})
  state = init_fit_state(objective, params, {}, FitConfig(learning_rate=3e-4))
  schedule = Schedule(
    learning_rate=3e-4 * 0.5,
    epoch=4,
    best_score=0.1 + 0.2,
    best_epoch=3,
    progress_score=0.1 + 0.2,
    epochs_since_progress=1,
    plateau_epochs=1,
    stopped=False,
  )
  state = dataclasses.replace(
    state, train=state.train.with_learning_rate(schedule.learning_rate), schedule=schedule, history=({"epoch": 4},)
  )
  ckpt = FitCheckpointer(tmp_path, "toy")
  ckpt.save(state)
  back = ckpt.restore(init_fit_state(objective, params, {}, FitConfig()))
  chex.assert_trees_all_equal(jax.device_get(state.train), jax.device_get(back.train))
  assert jax.tree.structure(back.train.opt_state) == jax.tree.structure(state.train.opt_state)
  assert float(learning_rate_of(back.train.opt_state)) == np.float32(3e-4 * 0.5)
  assert back.schedule == schedule and back.history == state.history
  assert isinstance(back, FitState)


@pytest.mark.slow  # its stops are drawn in time, so it depends on the machine's speed
def test_fault_injection_small(tmp_path):
  """A SIGKILL trial: two SIGKILLs (one as a checkpoint is being written, one at a random moment of the
  resumed run), then a resume; and a SIGTERM trial: two SIGTERMs (while a checkpoint is written — the signal waits for
  it — and at a random moment), each ending the run within 30 s with the one-line resume message, then
  that command. Every stop comes after the run's first checkpoint."""
  data_dir = tmp_path / "data"
  fault_injection.write_tiny_idx(str(data_dir))
  flags = [
    f"--data_dir={data_dir}",
    "--dataset=mnist",
    "--width=8",
    "--num_blocks=2",
    "--seeds=0",
    "--max_epochs=2",
    "--eval_batch_size=256",
  ]
  lines = []
  # compiles dominate these tiny runs; a cache kept across test sessions pays them once per machine
  cache = os.path.join(tempfile.gettempdir(), "quicknets_jax_fault_injection_xla_cache")
  summary = fault_injection.run_trials(
    flags,
    trials=1,
    kills_per_trial=2,
    root=str(tmp_path / "runs"),
    seed=0,
    log=lines.append,
    compilation_cache=cache,
    term_trials=1,
  )
  report = "\n".join(lines)
  assert summary["identical"] == 2 and summary["kills"] == 2 and summary["term"]["stops"] == 2, report
  assert summary["term"]["clean"] == 1, report
  assert "no checkpoint yet" not in report, report
  assert "SIGKILL: 1/1 identical" in lines and "SIGTERM: 1/1 identical" in lines, report
  assert lines[-1] == "2/2 identical"


def test_epoch_checkpoints_are_written_in_the_background_and_waited_for(tmp_path, monkeypatch):
  """`save` returns with the state copied to the host and the file still being written; the next save,
  `wait` or a listing waits for it, and a failed write is raised there, naming the epoch."""
  params = {"w": jnp.arange(6.0).reshape(2, 3) / 7}
  fresh = init_fit_state(Objective(lambda *a: None, {"w": True}), params, {}, FitConfig())

  def at_epoch(epoch):
    return dataclasses.replace(fresh, schedule=dataclasses.replace(fresh.schedule, epoch=epoch), history=({},) * epoch)

  release, written = threading.Event(), checkpoint.write_contents

  def held(path, contents):
    assert release.wait(30)
    written(path, contents)

  monkeypatch.setattr(checkpoint, "write_contents", held)
  ckpt = FitCheckpointer(tmp_path / "fit", "toy")
  ckpt.save(at_epoch(1))
  assert not (tmp_path / "fit").exists()  # still being written: save did not wait for the disk
  release.set()
  assert ckpt.latest_epoch() == 1  # a listing waits for the write
  ckpt.save(at_epoch(2))
  ckpt.wait()
  assert sorted(os.listdir(tmp_path / "fit")) == ["1.npz", "2.npz"]

  def full(path, contents):
    raise OSError(errno.ENOSPC, "No space left on device", path)

  monkeypatch.setattr(checkpoint, "write_contents", full)
  ckpt.save(at_epoch(3))  # returns: the failure surfaces at the next wait
  with pytest.raises(
    CheckpointError, match="no space left on device while saving toy after epoch 3.*epoch 2 is intact"
  ):
    ckpt.close()
  assert ckpt.latest_epoch() == 2
  ckpt.close()  # the failure was raised once


@pytest.mark.slow  # a small run, then seven faults around it (~2 min)
def test_the_fault_cases_around_a_finished_run_end_in_one_line_or_a_whole_output(tmp_path):
  from benchmarks.fault_cases import run_cases

  outcomes = run_cases(str(tmp_path), kills=2, seed=0, log=lambda m: None)
  assert len(outcomes) == 7 and [o.case for o in outcomes if not o.ok] == [], outcomes

"""Orbax checkpoints: one per frozen block, and one per epoch of every fit still in progress.

They only checkpoint: `trainer.fit(..., checkpoint=FitCheckpointer(...))` resumes and saves a fit,
the QuickNet algorithm saves its frozen blocks; nothing here knows what a block's record holds.

`BlockCheckpointer`: step j of its manager is frozen block j, holding its variables and the next
block's working sets. `FitCheckpointer`: step e is the whole `trainer.FitState` of one fit (a block, a
commitment head or the end-to-end baseline) after e epochs — its train state (params, Adam moments and
learning rate), best-validation params, schedule (plateau and early-stop counters) and history — so a
killed run loses at most one epoch and goes on bit-identically (every random key derives from (seed,
block, epoch, step)).

Arrays are saved from the host (`jax.device_get`) and restored into numpy targets, never with a saved
sharding: a run checkpointed on 8 devices resumes on 1 or 4 (`trainer.fit` replicates the restored state
onto the current mesh; tests/test_elastic_resume.py).

Saves are atomic (orbax writes `<step>.orbax-checkpoint-tmp` and renames it when complete), so a
run killed mid-save resumes from the previous step. Unreadable checkpoints and failed saves raise
`CheckpointError` with one line naming the block and the fix; nothing falls back to fresh weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import shutil
import signal
import threading
from typing import Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from quicknets_jax.training.schedule import Schedule

# The arrays of a FitState (its train state's, but the loss's hyperparameters, which each fit sets anew,
# and its best variables); its schedule and history are stored as JSON beside them.
_TRAIN_TREES = ("step", "params", "opt_state", "model_state")
_BEST_TREES = ("best_params", "best_model_state")
_SCHEDULE = tuple(field.name for field in dataclasses.fields(Schedule))


def _trees(state) -> dict:
  trees = {name: getattr(state.train, name) for name in _TRAIN_TREES}
  trees.update({name: getattr(state, name) for name in _BEST_TREES})
  return trees


def _nonempty(idx) -> np.ndarray:
  idx = np.asarray(idx, np.int32).reshape(-1)
  return idx if idx.size else np.full((1,), -1, np.int32)


def _first_line(e: BaseException) -> str:
  text = str(e).splitlines()
  return f"{type(e).__name__}: {text[0][:200] if text else ''}"


class CheckpointError(RuntimeError, ValueError):
  """A checkpoint exists but cannot be read, or one could not be written.

  Also a ValueError, so entry points print it as their one-line error instead of a traceback.
  """


def _save_failed(what: str, directory: str, previous, e: BaseException) -> CheckpointError:
  """One-line error for a failed save; names what is still on disk and how to go on."""
  kept = f"the checkpoint of {previous} is intact" if previous is not None else "no earlier checkpoint is affected"
  if isinstance(e, OSError) and e.errno == errno.ENOSPC:
    return CheckpointError(
      f"no space left on device while saving {what} to {directory}; {kept}: free disk "
      "space (or move --workdir) and rerun the same command to resume"
    )
  return CheckpointError(
    f"could not save {what} to {directory} ({_first_line(e)}); {kept}: fix the "
    "cause and rerun the same command to resume"
  )


@contextlib.contextmanager
def deferred_interrupts(signals=(signal.SIGINT, signal.SIGTERM)):
  """Ctrl-C or SIGTERM arriving while a checkpoint is written takes effect once it is on disk: an
  interrupted run then stops with every finished epoch saved whole (and orbax's writer threads are
  not cut off mid-write). Only in the main thread, where signal handlers live."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  pending = []
  previous = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in signals}
  try:
    yield
  finally:
    for s, handler in previous.items():
      signal.signal(s, signal.SIG_DFL if handler is None else handler)
    for s in dict.fromkeys(pending):
      signal.raise_signal(s)


class BlockCheckpointer:
  """One orbax checkpoint per frozen block under `directory`; fits in progress under `in_progress/`."""

  def __init__(self, directory: str):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
      self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=None, create=True)
    )

  def save(self, block: int, variables: dict, record: dict, train_idx: np.ndarray, val_idx: np.ndarray) -> None:
    """Saves frozen block `block` with its record (a JSON-ready dict) and the working sets T_{j+1},
    V_{j+1}; waits until it is on disk."""
    with deferred_interrupts():
      try:
        saved = self._manager.save(
          block,
          args=ocp.args.Composite(
            variables=ocp.args.StandardSave(jax.device_get(variables)),
            remaining=ocp.args.StandardSave(
              {
                "train_idx": _nonempty(train_idx),
                "val_idx": _nonempty(val_idx),
                # orbax refuses zero-size arrays: store the lengths beside them
                "sizes": np.asarray([len(train_idx), len(val_idx)], np.int32),
              }
            ),
            record=ocp.args.JsonSave(dict(record)),
          ),
        )
        self._manager.wait_until_finished()
      except Exception as e:  # the in-progress checkpoints of this block stay, so a rerun redoes only this
        raise _save_failed(
          f"frozen block {block}", self.directory, f"block {block - 1}" if block > 0 else None, e
        ) from e
    if not saved:
      raise CheckpointError(
        f"block {block} was not saved: {self.directory} already holds a checkpoint "
        f"for it or a later block; pass a fresh workdir or --overwrite"
      )

  def restore(self, init_variables):
    """(variables of the frozen blocks, their records as dicts, (T_next, V_next)) — all empty when none
    is saved. `init_variables` (the model's fresh variables) give the shapes to restore into."""
    steps = sorted(self._manager.all_steps())
    if steps != list(range(len(steps))):
      raise CheckpointError(
        f"checkpoints in {self.directory} are not consecutive blocks ({steps}); delete the directory to start over"
      )
    variables, records, remaining = [], [], None
    for j in steps:
      try:
        target = jax.tree.map(np.asarray, jax.device_get(init_variables[j]))
        restored = self._manager.restore(
          j,
          args=ocp.args.Composite(
            variables=ocp.args.StandardRestore(target),
            remaining=ocp.args.StandardRestore(),
            record=ocp.args.JsonRestore(),
          ),
        )
        record = dict(restored["record"])
        sizes = np.asarray(restored["remaining"]["sizes"])
        next_sets = (
          np.asarray(restored["remaining"]["train_idx"], np.int32)[: sizes[0]].reshape(-1),
          np.asarray(restored["remaining"]["val_idx"], np.int32)[: sizes[1]].reshape(-1),
        )
      except Exception as e:  # orbax raises many types; all mean the same to the user
        raise CheckpointError(
          f"checkpoint of block {j} in {self.directory} is unreadable ({_first_line(e)}); "
          f"delete {self.directory}/{j} to retrain from block {j}"
        ) from e
      variables.append(jax.tree.map(np.asarray, restored["variables"]))
      records.append(record)
      remaining = next_sets
    return variables, records, remaining

  def fit_checkpointer(self, kind: str, block: int) -> FitCheckpointer:
    """The per-epoch checkpoints of one fit of block `block` (`kind`: "block" or "commitment")."""
    name = f"block {block}" if kind == "block" else f"commitment head {block}"
    return FitCheckpointer(os.path.join(self.directory, "in_progress", f"{kind}_{block}"), name)

  def after_blocks_checkpointer(self, name: str) -> FitCheckpointer:
    """Per-epoch checkpoints of a fit that runs after every block is frozen (QuickNet+ fine-tuning),
    kept apart from the blocks' `in_progress/` so clearing those never touches it."""
    return FitCheckpointer(os.path.join(self.directory, "after_blocks", name), name)

  def clear_in_progress(self, upto_block: int) -> None:
    """Deletes the per-epoch checkpoints of blocks ≤ `upto_block`: frozen, they are never read again."""
    root = os.path.join(self.directory, "in_progress")
    if not os.path.isdir(root):
      return
    for entry in os.listdir(root):
      block = entry.rsplit("_", 1)[-1]
      if block.isdigit() and int(block) <= upto_block:
        # a kill mid-delete leaves a partial tree that is never read: the next call finishes the job
        shutil.rmtree(os.path.join(root, entry), ignore_errors=True)

  def close(self):
    self._manager.close()


class FitCheckpointer:
  """Per-epoch orbax checkpoints of one fit: step e is its `trainer.FitState` after e epochs.

  The two newest steps are kept, so a checkpoint corrupted on disk (not by a kill: saves are atomic)
  can be deleted by hand to resume one epoch earlier.
  """

  def __init__(self, directory: str, name: str = "fit", max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    self.name = name
    self._manager = ocp.CheckpointManager(
      self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    )
    self.resumed_seconds = 0.0  # wall time of the epochs restore() brought back (for honest timings)

  def latest_epoch(self) -> Optional[int]:
    """Epochs completed by the newest saved state, or None when nothing is saved."""
    return self._manager.latest_step()

  def save(self, state) -> None:
    """Saves `state` (a `trainer.FitState`) as step `state.epoch` and waits until it is on disk.

    Raises:
      CheckpointError: the write failed (the message names what is intact), or the step exists.
    """
    trees = jax.device_get(_trees(state))
    scalars = dict(dataclasses.asdict(state.schedule), history=list(state.history))
    previous = self._manager.latest_step()
    with deferred_interrupts():
      try:
        saved = self._manager.save(
          state.epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(trees), scalars=ocp.args.JsonSave(scalars))
        )
        self._manager.wait_until_finished()
      except Exception as e:
        raise _save_failed(
          f"{self.name} after epoch {state.epoch}", self.directory, None if previous is None else f"epoch {previous}", e
        ) from e
    if not saved:
      raise CheckpointError(
        f"{self.name}: epoch {state.epoch} was not saved: {self.directory} already holds "
        f"epoch {previous}; delete {self.directory} to retrain {self.name}"
      )

  def restore(self, template):
    """The newest saved `trainer.FitState`, shaped like `template` (a fresh state of the same fit), or None.

    Raises:
      CheckpointError: the newest checkpoint cannot be read (the message names what to delete).
    """
    step = self._manager.latest_step()
    if step is None:
      return None
    try:
      target = jax.tree.map(np.asarray, jax.device_get(_trees(template)))
      restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), scalars=ocp.args.JsonRestore())
      )
      scalars = dict(restored["scalars"])
      if set(scalars) != {*_SCHEDULE, "history"} or scalars["epoch"] != step:
        raise ValueError(f"fields {sorted(scalars)} at epoch {scalars.get('epoch')}")
    except Exception as e:  # orbax raises many types; all mean the same to the user
      earlier = [s for s in self._manager.all_steps() if s < step]
      fix = (
        f"delete {self.directory}/{step} to resume from epoch {max(earlier)}"
        if earlier
        else f"delete {self.directory} to retrain {self.name} from its first epoch"
      )
      raise CheckpointError(
        f"{self.name}: checkpoint of epoch {step} in {self.directory} is unreadable ({_first_line(e)}); {fix}"
      ) from e
    self.resumed_seconds = float(sum(r.get("seconds", 0.0) for r in scalars["history"]))
    trees = restored["state"]
    return dataclasses.replace(
      template,
      train=template.train.replace(**{name: trees[name] for name in _TRAIN_TREES}),
      **{name: trees[name] for name in _BEST_TREES},
      schedule=Schedule(**{name: scalars[name] for name in _SCHEDULE}),
      history=tuple(scalars["history"]),
    )

  def close(self):
    self._manager.close()

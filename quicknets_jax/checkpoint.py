"""Orbax checkpoints: one per frozen block, holding its variables and the next block's working sets.

Step j of the manager is block j. A save is atomic (orbax writes a tmp dir and renames it), so a run
killed mid-save resumes from the previous block. `restore` returns every frozen block, its record and
the remaining index arrays, or nothing when the directory is empty.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

# orbax logs every save at INFO through absl; progress lines are ours to print.
logging.getLogger("absl").setLevel(logging.WARNING)


def _nonempty(idx) -> np.ndarray:
  idx = np.asarray(idx, np.int32).reshape(-1)
  return idx if idx.size else np.full((1,), -1, np.int32)


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be read."""


class BlockCheckpointer:
  """One orbax checkpoint per frozen block under `directory`."""

  def __init__(self, directory: str):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=None, create=True))

  def save(self, block: int, variables: dict, record, train_idx: np.ndarray, val_idx: np.ndarray) -> None:
    """Saves frozen block `block` with the working sets T_{j+1}, V_{j+1}; waits until it is on disk."""
    record_dict = dataclasses.asdict(record) if dataclasses.is_dataclass(record) else dict(record)
    saved = self._manager.save(block, args=ocp.args.Composite(
        variables=ocp.args.StandardSave(jax.device_get(variables)),
        remaining=ocp.args.StandardSave({"train_idx": _nonempty(train_idx), "val_idx": _nonempty(val_idx),
                                         # orbax refuses zero-size arrays: store the lengths beside them
                                         "sizes": np.asarray([len(train_idx), len(val_idx)], np.int32)}),
        record=ocp.args.JsonSave(record_dict)))
    self._manager.wait_until_finished()
    if not saved:
      raise CheckpointError(f"block {block} was not saved: {self.directory} already holds a checkpoint "
                            f"for it or a later block; pass a fresh workdir or --overwrite")

  def restore(self, init_variables):
    """(variables of the frozen blocks, their records, (T_next, V_next)) — all empty when none saved."""
    from quicknets_jax.quicknet import BlockRecord  # a cycle otherwise
    steps = sorted(self._manager.all_steps())
    if steps != list(range(len(steps))):
      raise CheckpointError(f"checkpoints in {self.directory} are not consecutive blocks ({steps}); "
                            "delete the directory to start over")
    variables, records, remaining = [], [], None
    for j in steps:
      try:
        target = jax.tree.map(np.asarray, jax.device_get(init_variables[j]))
        restored = self._manager.restore(j, args=ocp.args.Composite(
            variables=ocp.args.StandardRestore(target), remaining=ocp.args.StandardRestore(),
            record=ocp.args.JsonRestore()))
      except Exception as e:  # orbax raises many types; all mean the same to the user
        raise CheckpointError(f"checkpoint of block {j} in {self.directory} is unreadable ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]}); delete {self.directory}/{j} to retrain "
                              f"from block {j}") from e
      variables.append(jax.tree.map(np.asarray, restored["variables"]))
      records.append(BlockRecord(**restored["record"]))
      sizes = np.asarray(restored["remaining"]["sizes"])
      remaining = (np.asarray(restored["remaining"]["train_idx"], np.int32)[:sizes[0]].reshape(-1),
                   np.asarray(restored["remaining"]["val_idx"], np.int32)[:sizes[1]].reshape(-1))
    return variables, records, remaining

  def close(self):
    self._manager.close()

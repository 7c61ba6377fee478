"""What a training run tells its observers: "an epoch is done" and "a block is frozen".

The one observer mechanism of the package. `trainer.fit` tells its `Events` after every epoch; the
algorithms (`train_quicknet`, `train_end_to_end`, `train_joint`, fine-tuning) hand each fit their
listeners wrapped in `InPhase`, which says which fit the epoch belongs to and how many training FLOPs
the run has spent, and tell `block_frozen` themselves; progress lines, the metrics log and TensorBoard (`workflows/`)
listen. An epoch event carries the run's training FLOPs spent so far, counted by the same cost model
(`core.costs`) as the run's final totals, so the per-epoch log ends where the results end. A resumed
run replays `block_frozen` for every block its checkpoints bring back (`restored=True`), so a
listener that counts blocks or seconds stays in step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Optional


@dataclasses.dataclass(frozen=True)
class EpochDone:
  """One finished epoch of a fit.

  Attributes:
    phase: which fit — "block", "commitment" (a QuickNet block and its head), "end_to_end", "joint"
      (SDN), "finetune" and "recommit" (QuickNet+ fine-tuning and the heads retrained after it).
    block: the QuickNet block being trained (the number of frozen blocks for "finetune"); None for
      whole-network fits.
    state: the fit's `trainer.FitState` after the epoch.
    record: the trainer's record of the epoch (its history entry: a listener may add keys to it,
      e.g. a test accuracy, before it is checkpointed).
    training_flops: the run's training FLOPs spent so far (None where the run does not count them
      per epoch).
  """

  phase: str
  block: Optional[int]
  state: Any
  record: dict
  training_flops: Optional[float]


@dataclasses.dataclass(frozen=True)
class BlockFrozen:
  """QuickNet block `record.block` is trained, its learned set removed.

  Attributes:
    record: the block's `quicknet.BlockRecord`.
    variables: its final variables (subnet, exit and commitment head).
    train_left: the size of T_{j+1}, the next block's training working set.
    val_left: the size of V_{j+1}, the next block's validation working set.
    restored: True when a checkpoint brought the block back (it was trained before a restart).
  """

  record: Any
  variables: dict
  train_left: int
  val_left: int
  restored: bool = False


class Events:
  """The observer of a training run; override the moments you need (both do nothing here)."""

  def epoch_done(self, event: EpochDone) -> None:
    """Called after every epoch of every fit of the run.

    Args:
      event: the finished epoch; a listener may add keys to `event.record` before it is checkpointed.
    """

  def block_frozen(self, event: BlockFrozen) -> None:
    """Called when a QuickNet block is frozen (or restored from its checkpoint).

    Args:
      event: the frozen block (`event.restored` is True when a checkpoint brought it back).
    """


class AllOf(Events):
  """Several observers as one, each told every event in the order given.

  Args:
    *listeners: the observers; None entries are left out.

  Attributes:
    listeners: the observers that are not None, in the order given.
  """

  def __init__(self, *listeners: Optional[Events]):
    self.listeners = [listener for listener in listeners if listener is not None]

  def epoch_done(self, event: EpochDone) -> None:
    """Tells every listener, in order, that an epoch is done.

    Args:
      event: the finished epoch, passed on as it is.
    """
    for listener in self.listeners:
      listener.epoch_done(event)

  def block_frozen(self, event: BlockFrozen) -> None:
    """Tells every listener, in order, that a block is frozen.

    Args:
      event: the frozen block, passed on as it is.
    """
    for listener in self.listeners:
      listener.block_frozen(event)


class InPhase(Events):
  """A fit's epochs passed on to `listener` as epochs of `phase` (and `block`) of the run, with the run's
  training FLOPs so far: `flops_so_far(record)` of the epoch's record (None: not counted per epoch).

  `trainer.fit` knows only its own epochs; the algorithm that starts it knows where in the run they are.

  Args:
    listener: the run's observer, or None (then nothing is passed on).
    phase: the `EpochDone.phase` its epochs are passed on with ("block", "commitment", ...).
    block: the `EpochDone.block` they are passed on with; None for whole-network fits.
    flops_so_far: epoch record → the run's training FLOPs spent so far; None: not counted per epoch.

  Attributes:
    listener: the run's observer, or None.
    phase: the phase its epochs are passed on with.
    block: the block they are passed on with, or None.
    flops_so_far: the FLOP counter of an epoch's record, or None.
  """

  def __init__(
    self,
    listener: Optional[Events],
    phase: str,
    block: Optional[int] = None,
    flops_so_far: Optional[Callable[[dict], float]] = None,
  ):
    self.listener, self.phase, self.block, self.flops_so_far = listener, phase, block, flops_so_far

  def epoch_done(self, event: EpochDone) -> None:
    """Passes the epoch on to `listener` with this fit's phase, block and the run's FLOPs so far.

    Args:
      event: the epoch as `trainer.fit` tells it (its phase, block and FLOPs are replaced).
    """
    if self.listener is None:
      return
    flops = None if self.flops_so_far is None else self.flops_so_far(event.record)
    self.listener.epoch_done(dataclasses.replace(event, phase=self.phase, block=self.block, training_flops=flops))

  def block_frozen(self, event: BlockFrozen) -> None:
    """Passes the event on to `listener` as it is.

    Args:
      event: the frozen block.
    """
    if self.listener is not None:
      self.listener.block_frozen(event)

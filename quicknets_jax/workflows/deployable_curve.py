"""The paper's "deploy while training" claim, measured continuously: the test accuracy of the QuickNet
one could deploy after every epoch of its training (Fig. 2, bottom right, with a point per epoch).

After each epoch of block j's fit, the deployable network is the cascade of the frozen blocks 0..j−1
(with their commitment heads) plus block j as it is now. Block j has no commitment head yet, so it
commits whenever it is confident; the exit threshold is chosen on the validation split, as for the
finished QuickNet (`workflows.experiment.evaluate_quicknet`). The point is written into the epoch's record
(`cascade_test_accuracy`, `cascade_threshold`, `training_flops_so_far`: its history entry and its
metrics line); the frozen blocks' outputs are computed once and kept, so an epoch costs one forward
pass of block j over the validation and test splits. None of this is counted as training cost: it is
measurement (its FLOPs are not counted, and its seconds, `DeployableCurve.seconds`, come off the run's
`train_seconds`).

Under the decoupled schedule (phase "decoupled") every block trains at once and every commitment head
alongside, so the deployable network after an epoch is the whole cascade as it is then (each block with
its head); its outputs are computed afresh over both splits after every epoch.
"""

from __future__ import annotations

import time

import numpy as np

from quicknets_jax.algorithms import forward
from quicknets_jax.core import exits
from quicknets_jax.data.split import Split
from quicknets_jax.models.base import MultiExitModel, merge_blocks, merge_variables
from quicknets_jax.training.events import BlockFrozen, EpochDone, Events


class DeployableCurve(Events):
  """Adds the deployable cascade's test accuracy to every block epoch's record (see the module doc).

  Args:
    model: the QuickNet's model.
    val, test: the splits it is measured on (the threshold is chosen on `val`).
    exit_threshold: a fixed exit threshold, or None to choose it on validation at every point.
    threshold_tolerance: the exit rule's tolerance when the threshold is chosen on validation
      (`workflows.experiment_config.ExitRuleConfig`).
    fallback: the exit rule's fallback for samples no exit commits on ("most_confident" or "last").
    batch_size: the evaluation batch size.

  Attributes:
    model: the QuickNet's model.
    batch_size: the evaluation batch size.
    labels: the labels of each split, {"val": ..., "test": ...}.
    features: per split, the features entering the next block to train (the inputs at first).
    outputs: per split, the (probabilities, commitment logits) of each frozen block.
    exit_threshold: the fixed exit threshold, or None.
    tolerance: the exit rule's threshold tolerance.
    fallback: the exit rule's fallback.
    seconds: the seconds spent measuring inside the training's clock (in this process), which the run
      takes off its `train_seconds`.
  """

  def __init__(
    self,
    model: MultiExitModel,
    val: Split,
    test: Split,
    *,
    exit_threshold=None,
    threshold_tolerance: float = 0.0,
    fallback: str = "most_confident",
    batch_size: int = 2048,
  ):
    self.model, self.batch_size = model, batch_size
    val, test = Split.of(val), Split.of(test)
    self.labels = dict(val=np.asarray(val.labels), test=np.asarray(test.labels))
    self.features = dict(val=np.asarray(val.images), test=np.asarray(test.images))  # entering the next block
    self.outputs = dict(val=[], test=[])  # (probs, commit logits) of each frozen block
    self.exit_threshold, self.tolerance, self.fallback = exit_threshold, threshold_tolerance, fallback
    self.seconds = 0.0  # spent measuring inside the training's clock (in this process)

  def block_frozen(self, event: BlockFrozen) -> None:
    """Runs the frozen block once over both splits and keeps its outputs and features.

    Its seconds count in `seconds` unless the block was restored from a checkpoint.

    Args:
      event: the frozen block, with its variables.
    """
    start = time.perf_counter()
    self._block_frozen(event)
    if not event.restored:  # a replayed block is not inside any training's clock
      self.seconds += time.perf_counter() - start

  def epoch_done(self, event: EpochDone) -> None:
    """Adds the deployable cascade's point to the record of a block epoch (or a decoupled epoch).

    Epochs of other phases are left as they are. The keys added are "cascade_test_accuracy",
    "cascade_threshold" and "training_flops_so_far"; the seconds spent count in `seconds`.

    Args:
      event: the finished epoch; its record is updated in place.
    """
    start = time.perf_counter()
    self._epoch_done(event)
    self.seconds += time.perf_counter() - start

  def _block_frozen(self, event: BlockFrozen) -> None:
    block = self.model.blocks[event.record.block]
    for split in ("val", "test"):
      h, probs, commits = forward.block_outputs(block, event.variables, self.features[split], self.batch_size)
      self.features[split] = h
      self.outputs[split].append((probs, commits))

  def _epoch_done(self, event: EpochDone) -> None:
    if event.phase == "decoupled":
      self._decoupled_epoch_done(event)
      return
    if event.phase != "block":
      return
    j = event.block
    variables = merge_variables(event.state.params, event.state.model_state)
    stacked = {}
    for split in ("val", "test"):
      _, probs, _ = forward.block_outputs(self.model.blocks[j], variables, self.features[split], self.batch_size)
      always = np.full(probs.shape[0], np.inf, np.float32)  # no head yet: it commits when confident
      frozen = self.outputs[split]
      stacked[split] = (np.stack([p for p, _ in frozen] + [probs]), np.stack([c for _, c in frozen] + [always]))
    self._record(event, stacked, self.model.cascade_costs()[: j + 1])

  def _decoupled_epoch_done(self, event: EpochDone) -> None:
    depth = event.record["depth"]
    variables = merge_blocks(event.state.train.params, event.state.train.model_state)[:depth]
    stacked = {
      split: tuple(
        np.asarray(a) for a in forward.all_exit_outputs(self.model, variables, self.features[split], self.batch_size)
      )
      for split in ("val", "test")
    }
    self._record(event, stacked, self.model.cascade_costs()[:depth])

  def _record(self, event: EpochDone, stacked: dict, cascade) -> None:
    """The deployable cascade's point: its threshold chosen on validation, its test accuracy."""
    threshold = self.exit_threshold
    if threshold is None:
      sweep = exits.sweep_thresholds(*stacked["val"], self.labels["val"], cascade, fallback=self.fallback)
      threshold = exits.choose_threshold(sweep, self.tolerance)
    accuracy, _, _ = exits.evaluate_rule(*stacked["test"], self.labels["test"], threshold, cascade, self.fallback)
    event.record.update(
      cascade_test_accuracy=float(accuracy),
      cascade_threshold=float(threshold),
      training_flops_so_far=event.training_flops,
    )

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
"""

from __future__ import annotations

import time

import numpy as np

from quicknets_jax.algorithms import forward
from quicknets_jax.core import exits
from quicknets_jax.data.split import Split
from quicknets_jax.models.base import MultiExitModel, merge_variables
from quicknets_jax.training.events import BlockFrozen, EpochDone, Events


class DeployableCurve(Events):
  """Adds the deployable cascade's test accuracy to every block epoch's record (see the module doc).

  Args:
    model: the QuickNet's model.
    val, test: the splits it is measured on (the threshold is chosen on `val`).
    exit_threshold: a fixed exit threshold, or None to choose it on validation at every point.
    threshold_tolerance, fallback: the exit rule's settings (`workflows.experiment_config.ExitRuleConfig`).
    batch_size: the evaluation batch size.
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
    start = time.perf_counter()
    self._block_frozen(event)
    if not event.restored:  # a replayed block is not inside any training's clock
      self.seconds += time.perf_counter() - start

  def epoch_done(self, event: EpochDone) -> None:
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
    cascade = self.model.cascade_costs()[: j + 1]
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

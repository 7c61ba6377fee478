"""Shallow-Deep Networks (Kaya et al. 2019) through the one trainer, and commitment heads added to them.

`train_joint` trains every block and exit of a multi-exit model together with SDN's weighted joint
loss Σ_i τ_i·CE_i + CE_final (`losses.JointLoss`). As in SDN's `model_funcs.sdn_train`, the weight of
internal exit i grows linearly per epoch to its maximum: τ_i(epoch) = min(τ_i^max, 0.01 +
epoch·τ_i^max/ramp_epochs), with 1-based epochs; SDN ramps over its whole run (100 epochs) and uses
τ^max = 0.15, 0.3, …, 0.9 for its six internal classifiers (the fraction of the network's FLOPs at
which each sits). Here the weights reach the loss through `Objective.hparams_at`; the trainer's
schedule (Adam, reduce-on-plateau, early stopping) is the same as everywhere else.

`commitment.train_commitment_heads` then adds paper §4.4's commitment heads to the trained, frozen
network: one per exit, trained on the exit's features and correctness over the whole training split.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Optional

import numpy as np

from quicknets_jax.algorithms.end_to_end import EndToEndRun, fit_whole_network
from quicknets_jax.algorithms.settings import SDNConfig, default_max_weights  # noqa: F401  (part of this API)
from quicknets_jax.core import costs
from quicknets_jax.core.progress import Log
from quicknets_jax.data.split import Split
from quicknets_jax.models.base import EXIT, SUBNET, MultiExitModel, parts_mask
from quicknets_jax.training import losses
from quicknets_jax.training.events import Events
from quicknets_jax.training.schedule import FitConfig
from quicknets_jax.training.trainer import FitHooks, Objective


def loss_weights(epoch: int, max_weights: Sequence[float], ramp_epochs: int) -> np.ndarray:
  """τ at a 1-based epoch: min(τ^max, 0.01 + epoch·τ^max/ramp_epochs), SDN's linear schedule.

  Args:
    epoch: the epoch, counted from 1.
    max_weights: τ^max of each internal exit.
    ramp_epochs: epochs over which the weights grow to their maximum.

  Returns:
    [len(max_weights)] float32 weights.

  Raises:
    ValueError: `ramp_epochs` is below 1.
  """
  if ramp_epochs < 1:
    raise ValueError(f"ramp_epochs must be ≥ 1, got {ramp_epochs}")
  max_weights = np.asarray(max_weights, np.float32)
  return np.minimum(max_weights, np.float32(0.01) + epoch * (max_weights / np.float32(ramp_epochs)))


@dataclasses.dataclass
class JointRun(EndToEndRun):
  """A jointly trained multi-exit network (commitment heads still untrained); fields as EndToEndRun."""


@dataclasses.dataclass(frozen=True)
class LossWeightRamp:
  """τ at each 1-based epoch (`loss_weights`): what `Objective.hparams_at` hands SDN's joint loss."""

  max_weights: tuple[float, ...]
  ramp_epochs: int

  def __call__(self, epoch: int) -> np.ndarray:
    return loss_weights(epoch, self.max_weights, self.ramp_epochs)


def joint_objective(
  model: MultiExitModel, params: Sequence[dict], fit_config: FitConfig, config: SDNConfig
) -> Objective:
  """SDN's joint loss with τ per epoch; every subnet and exit head trains, commitment heads stay frozen.

  Args:
    model: the multi-exit model.
    params: one params tree per block (their structure sets what trains).
    fit_config: the fit's settings (augmentation, compute dtype, and the ramp's default length).
    config: SDN's loss-weight schedule.

  Returns:
    The `Objective` the trainer fits.
  """
  max_weights = config.weights_for(model.num_blocks - 1, model.name)
  return Objective(
    losses.JointLoss(model, max_weights, fit_config.augmentation_name, fit_config.compute_dtype),
    [parts_mask(p, (SUBNET, EXIT)) for p in params],
    hparams_at=LossWeightRamp(tuple(max_weights), config.ramp(fit_config)),
  )


class _RecordWeights(Events):
  """Adds the epoch's loss weights to its record (its history entry), before anyone else reads it."""

  def __init__(self, ramp: LossWeightRamp, then: Optional[Events]):
    self.ramp, self.then = ramp, then

  def epoch_done(self, event) -> None:
    event.record["loss_weights"] = [float(w) for w in self.ramp(event.record["epoch"])]
    if self.then is not None:
      self.then.epoch_done(event)


def train_joint(
  model: MultiExitModel,
  train: Split,
  val: Split,
  fit_config: FitConfig,
  seed: int,
  *,
  config: SDNConfig = SDNConfig(),
  log: Log = print,
  events: Optional[Events] = None,
) -> JointRun:
  """Trains all blocks and exits of `model` together with SDN's weighted joint loss, by the one trainer.

  Initialisation follows `train_quicknet`, so a QuickNet and an SDN of the same seed start from the same
  weights.

  Args:
    model: the multi-exit model; train, val: the splits (`Split`s or (images, labels) pairs).
    fit_config: the schedule; seed: fixes every random choice.
    config: SDN's loss-weight schedule.
    log: where the summary line goes; events: told after every epoch (phase "joint").

  Returns:
    The best-validation variables (by the joint loss at the maximum weights) and FLOPs: 3 × the joint
    forward per sample step, 1 × per validation sample (the method page's FLOP accounting).
  """
  ramp = LossWeightRamp(tuple(config.weights_for(model.num_blocks - 1, model.name)), config.ramp(fit_config))
  run = fit_whole_network(
    model,
    (train, val),
    lambda params: joint_objective(model, params, fit_config, config),
    fit_config,
    seed,
    phase="joint",
    forward_cost=costs.joint_forward_cost(model.block_costs),
    hooks=FitHooks(_RecordWeights(ramp, events), log=log),
  )
  return JointRun(**{field.name: getattr(run, field.name) for field in dataclasses.fields(run)})

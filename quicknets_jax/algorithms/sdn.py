"""Shallow-Deep Networks (Kaya et al. 2019) through the one trainer, and commitment heads added to them.

`train_joint` trains every block and exit of a multi-exit model together with SDN's weighted joint
loss Σ_i τ_i·CE_i + CE_final (`losses.joint_loss`). As in SDN's `model_funcs.sdn_train`, the weight of
internal exit i grows linearly per epoch to its maximum: τ_i(epoch) = min(τ_i^max, 0.01 +
epoch·τ_i^max/ramp_epochs), with 1-based epochs; SDN ramps over its whole run (100 epochs) and uses
τ^max = 0.15, 0.3, …, 0.9 for its six internal classifiers (the fraction of the network's FLOPs at
which each sits). Here the weights reach the loss through `Objective.epoch_hparams`; the trainer's
schedule (Adam, reduce-on-plateau, early stopping; design.md §1) is the same as everywhere else.

`commitment.train_commitment_heads` then adds paper §4.4's commitment heads to the trained, frozen
network: one per exit, trained on the exit's features and correctness over the whole training split.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Optional

import numpy as np

from quicknets_jax.algorithms.config import SDNConfig, default_max_weights  # noqa: F401  (part of this API)
from quicknets_jax.algorithms.end_to_end import EndToEndRun, fit_whole_network
from quicknets_jax.algorithms.events import Events
from quicknets_jax.core import costs
from quicknets_jax.models.base import EXIT, SUBNET, MultiExitModel, parts_mask
from quicknets_jax.training import losses
from quicknets_jax.training.schedule import FitConfig
from quicknets_jax.training.trainer import Objective

Log = Callable[[str], None]


def loss_weights(epoch: int, max_weights: Sequence[float], ramp_epochs: int) -> np.ndarray:
  """τ at a 1-based epoch: min(τ^max, 0.01 + epoch·τ^max/ramp_epochs), SDN's linear schedule."""
  if ramp_epochs < 1:
    raise ValueError(f"ramp_epochs must be ≥ 1, got {ramp_epochs}")
  max_weights = np.asarray(max_weights, np.float32)
  return np.minimum(max_weights, np.float32(0.01) + epoch * (max_weights / np.float32(ramp_epochs)))


@dataclasses.dataclass
class JointRun(EndToEndRun):
  """A jointly trained multi-exit network (commitment heads still untrained); fields as EndToEndRun."""


def joint_objective(
  model: MultiExitModel, params: Sequence[dict], fit_config: FitConfig, config: SDNConfig
) -> Objective:
  """SDN's joint loss with τ per epoch; every subnet and exit head trains, commitment heads stay frozen."""
  max_weights = config.weights_for(model.num_blocks - 1, model.name)
  ramp = config.ramp(fit_config)
  return Objective(
    losses.joint_loss(model, max_weights, fit_config.augmentation_name, fit_config.compute_dtype),
    [parts_mask(p, (SUBNET, EXIT)) for p in params],
    epoch_hparams=lambda epoch: loss_weights(epoch, max_weights, ramp),
  )


def train_joint(
  model: MultiExitModel,
  images,
  labels,
  val_images,
  val_labels,
  fit_config: FitConfig,
  seed: int,
  config: SDNConfig = SDNConfig(),
  log: Log = print,
  events: Optional[Events] = None,
) -> JointRun:
  """Trains all blocks and exits of `model` together with SDN's weighted joint loss, by the one trainer.

  Initialisation follows `train_quicknet`, so a QuickNet and an SDN of the same seed start from the same
  weights. Returns the best-validation variables (by the joint loss at the maximum weights) and FLOPs
  by design.md §2 (3 × joint forward per sample step, 1 × per validation sample).
  """
  max_weights, ramp = config.weights_for(model.num_blocks - 1, model.name), config.ramp(fit_config)

  def record_weights(record):
    record["loss_weights"] = [float(w) for w in loss_weights(record["epoch"], max_weights, ramp)]

  run = fit_whole_network(
    model,
    images,
    labels,
    val_images,
    val_labels,
    lambda params: joint_objective(model, params, fit_config, config),
    fit_config,
    seed,
    forward_cost=costs.joint_forward_cost(model.block_costs),
    phase="joint",
    name="joint (SDN) training",
    log=log,
    events=events,
    annotate=record_weights,
  )
  return JointRun(**{field.name: getattr(run, field.name) for field in dataclasses.fields(run)})

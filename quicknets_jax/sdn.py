"""Shallow-Deep Networks (Kaya et al. 2019) through the one trainer, and commitment heads added to them.

`train_joint` trains every block and exit of a multi-exit model together with SDN's weighted joint
loss Σ_i τ_i·CE_i + CE_final (`losses.joint_loss`). As in SDN's `model_funcs.sdn_train`, the weight of
internal exit i grows linearly per epoch to its maximum: τ_i(epoch) = min(τ_i^max, 0.01 +
epoch·τ_i^max/ramp_epochs), with 1-based epochs; SDN ramps over its whole run (100 epochs) and uses
τ^max = 0.15, 0.3, …, 0.9 for its six internal classifiers (the fraction of the network's FLOPs at
which each sits). Here the weights reach the loss through `Objective.epoch_hparams`; the trainer's
schedule (Adam, reduce-on-plateau, early stopping; design.md §1) is the same as everywhere else.

`train_commitment_heads` then adds paper §4.4's commitment heads to the trained, frozen network: one
per exit, trained with the core commitment trainer (`quicknet.train_commitment_head`) on the exit's
features and correctness over the whole training split.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from quicknets_jax import losses
from quicknets_jax.models.base import MultiExitModel, split_variables
from quicknets_jax.quicknet import EndToEndRun, block_outputs, train_commitment_head
from quicknets_jax.train import FitConfig, Objective, fit, FitData

Log = Callable[[str], None]


def default_max_weights(num_internal: int) -> tuple[float, ...]:
  """SDN's maximum weights spread evenly: 0.9·(i+1)/K for K internal exits (K = 6: 0.15, 0.3, …, 0.9)."""
  if num_internal < 0:
    raise ValueError(f"num_internal must be ≥ 0, got {num_internal}")
  return tuple(0.9 * (i + 1) / num_internal for i in range(num_internal))


def loss_weights(epoch: int, max_weights: Sequence[float], ramp_epochs: int) -> np.ndarray:
  """τ at a 1-based epoch: min(τ^max, 0.01 + epoch·τ^max/ramp_epochs), SDN's linear schedule."""
  if ramp_epochs < 1:
    raise ValueError(f"ramp_epochs must be ≥ 1, got {ramp_epochs}")
  max_weights = np.asarray(max_weights, np.float32)
  return np.minimum(max_weights, np.float32(0.01) + epoch * (max_weights / np.float32(ramp_epochs)))


@dataclasses.dataclass(frozen=True)
class SDNConfig:
  """How a jointly trained multi-exit network and its commitment heads train.

  Attributes:
    fit: the schedule of joint training.
    commit_fit: the schedule of the commitment heads (class-balanced sampling off; the BCE is
      class-weighted instead, as in the core trainer).
    max_weights: τ^max per internal exit; None: `default_max_weights`.
    ramp_epochs: epochs over which τ grows to τ^max; None: `fit.max_epochs` (SDN: its whole run).
  """

  fit: FitConfig = FitConfig()
  commit_fit: FitConfig = FitConfig(balanced_sampling=False)
  max_weights: Optional[tuple] = None
  ramp_epochs: Optional[int] = None

  def __post_init__(self):
    if self.ramp_epochs is not None and self.ramp_epochs < 1:
      raise ValueError(f"ramp_epochs must be ≥ 1 (got {self.ramp_epochs}); leave it unset to ramp over max_epochs")
    if self.max_weights is not None and any(not w >= 0 for w in self.max_weights):
      raise ValueError(f"max_weights must be non-negative, got {self.max_weights}")

  def weights_for(self, model: MultiExitModel) -> tuple[float, ...]:
    weights = default_max_weights(model.num_blocks - 1) if self.max_weights is None else tuple(self.max_weights)
    if len(weights) != model.num_blocks - 1:
      raise ValueError(f"max_weights has {len(weights)} entries but {model.name} has {model.num_blocks - 1} "
                       "internal exits: pass one weight per internal exit")
    return weights

  def ramp(self) -> int:
    return self.fit.max_epochs if self.ramp_epochs is None else self.ramp_epochs


@dataclasses.dataclass
class JointRun(EndToEndRun):
  """A jointly trained multi-exit network (commitment heads still untrained); fields as EndToEndRun."""


def _mask(params: dict, parts: Sequence[str]) -> dict:
  return {name: jax.tree.map(lambda _: name in parts, sub) for name, sub in params.items()}


def joint_objective(model: MultiExitModel, params: Sequence[dict], config: SDNConfig) -> Objective:
  """SDN's joint loss with τ per epoch; every subnet and exit head trains, commitment heads stay frozen."""
  max_weights = config.weights_for(model)
  ramp = config.ramp()
  return Objective(losses.joint_loss(model, max_weights), [_mask(p, ("subnet", "exit_head")) for p in params],
                   epoch_hparams=lambda epoch: loss_weights(epoch, max_weights, ramp))


def joint_forward_cost(model: MultiExitModel) -> float:
  """FLOPs per sample of one joint forward pass: every subnet and every exit head (no commitment heads)."""
  return float(sum(c.subnet + c.exit_head for c in model.block_costs))


def train_joint(model: MultiExitModel, images, labels, val_images, val_labels, config: SDNConfig, seed: int,
                log: Log = print, on_epoch=None) -> JointRun:
  """Trains all blocks and exits of `model` together with SDN's weighted joint loss, by the one trainer.

  Initialisation follows `train_quicknet` (`model.init(fold_in(PRNGKey(seed), 0))`), so a QuickNet and
  an SDN of the same seed start from the same weights. Returns the best-validation variables (by the
  joint loss at the maximum weights) and FLOPs by design.md §2 (3 × joint forward per sample step,
  1 × per validation sample).
  """
  start = time.perf_counter()
  key = jax.random.PRNGKey(seed)
  init_variables = model.init(jax.random.fold_in(key, 0))
  params = [split_variables(v)[0] for v in init_variables]
  state = [split_variables(v)[1] for v in init_variables]
  objective = joint_objective(model, params, config)
  labels = jnp.asarray(labels)
  data = FitData(jnp.asarray(images), labels, jnp.arange(labels.shape[0], dtype=jnp.int32), labels,
                 jnp.asarray(val_images), jnp.asarray(val_labels))
  max_weights, ramp = config.weights_for(model), config.ramp()

  def record_weights(fit_state, record):
    record["loss_weights"] = [float(w) for w in loss_weights(record["epoch"], max_weights, ramp)]
    if on_epoch is not None:
      on_epoch("joint", fit_state, record)

  result = fit(objective, params, state, data, config.fit, jax.random.fold_in(key, 1),
               num_classes=model.num_classes, name="joint (SDN) training", on_epoch=record_weights)
  forward = joint_forward_cost(model)
  flops = dict(training=result.epoch * int(labels.shape[0]) * 3 * forward,
               validation=result.epoch * int(len(val_labels)) * forward)
  variables = [{"params": p, **s} for p, s in zip(result.best_params, result.best_model_state)]
  seconds = time.perf_counter() - start
  log(f"joint training: {result.epoch} epochs (best {result.best_epoch}), {sum(flops.values()):.3g} FLOPs, "
      f"{seconds:.1f}s")
  return JointRun(variables, result.epoch, result.best_epoch, float(sum(flops.values())), flops, result.history,
                  seconds)


@dataclasses.dataclass
class CommitmentRun:
  """The network with trained commitment heads and, per exit, what their training did."""

  variables: list
  records: list
  training_flops: float
  seconds: float


def train_commitment_heads(model: MultiExitModel, variables: Sequence[dict], images, labels, val_images,
                           val_labels, config: FitConfig, key: jax.Array, log: Log = print) -> CommitmentRun:
  """Adds a trained commitment head to every exit of a trained, frozen multi-exit network.

  Exit j's head learns, by BCE, whether exit j's argmax is right, from block j's features over the
  whole training split (validated on the validation split); nothing else changes. Features are
  computed block by block and kept in memory for one block at a time (N × feature size floats).

  Returns:
    A CommitmentRun; FLOPs count the forward passes that build the features and correctness
    (blocks + exits on train and validation) and 3 × / 1 × the head per training / validation sample.
  """
  start = time.perf_counter()
  labels = jnp.asarray(labels)
  val_labels = jnp.asarray(val_labels)
  x, val_x = jnp.asarray(images), jnp.asarray(val_images)
  n, n_val = int(labels.shape[0]), int(val_labels.shape[0])
  new_variables, records, total_flops = [], [], 0.0
  for j, (block, cost) in enumerate(zip(model.blocks, model.block_costs)):
    block_vars = variables[j]
    x, probs, _ = block_outputs(block, block_vars, x, config.eval_batch_size)
    val_x, val_probs, _ = block_outputs(block, block_vars, val_x, config.eval_batch_size)
    correct = (jnp.argmax(probs, -1) == labels).astype(jnp.int32)
    val_correct = (jnp.argmax(val_probs, -1) == val_labels).astype(jnp.int32)
    result = train_commitment_head(block, block_vars, x, correct, val_x, val_correct, config,
                                   jax.random.fold_in(key, j), name=f"commitment head {j}")
    new_variables.append({**block_vars, "params": result.best_params})
    flops = ((n + n_val) * (cost.subnet + cost.exit_head) + result.epoch * n * 3 * cost.commit_head
             + result.epoch * n_val * cost.commit_head)
    total_flops += flops
    positive_rate = float(jnp.mean(correct))
    records.append(dict(exit=j, epochs=result.epoch, best_epoch=result.best_epoch, positive_rate=positive_rate,
                        best_val_loss=float(result.best_val_loss), flops=flops, history=result.history))
    log(f"commitment head {j}: {result.epoch} epochs, exit right on {positive_rate:.1%} of the training split")
  return CommitmentRun(new_variables, records, total_flops, time.perf_counter() - start)

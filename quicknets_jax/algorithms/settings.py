"""The algorithms' settings, each declared once: `QuickNetConfig` (Algorithm 1 and the QuickNet+ levers)
and `SDNConfig` (the loss-weight schedule of a jointly trained multi-exit network)."""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

from quicknets_jax.core import exits, options
from quicknets_jax.core.options import internal, nested, option
from quicknets_jax.training.schedule import FitConfig

BUDGETS = ("val_loss", "learned_set")
EPOCH_DRAWS = ("working_set", "full")
COMMIT_BALANCES = ("weighted", "sampled")
SCHEDULES = ("sequential", "decoupled")
REFRESHES = ("step", "epoch")


def commitment_schedule(fit_config: FitConfig) -> FitConfig:
  """The schedule of commitment heads (Appendix A: the blocks'), without class-balanced sampling.

  The commitment loss is class-weighted instead.

  Args:
    fit_config: the blocks' schedule.

  Returns:
    A copy of `fit_config` with `balanced_sampling` off.
  """
  return dataclasses.replace(fit_config, balanced_sampling=False)


@dataclasses.dataclass(frozen=True)
class QuickNetConfig:
  """How a QuickNet trains: the blocks' schedule, τ, the feature cache and the QuickNet+ levers.

  Each lever is off by default: the faithful QuickNet. Each field's option text says more.

  Attributes:
    fit: the schedule of every block (Appendix A).
    commit_fit: the commitment heads' schedule; None: `commitment_schedule` of `fit`.
    train_threshold: τ, the confidence a sample needs to count as learned.
    cache_features: compute the frozen blocks' features once per block instead of every step.
    feature_cache_mb: the memory budget of a block's feature cache in MiB, above which the frozen prefix
      is recomputed every step; None: no limit.
    budget: what ends a block's training, "val_loss" (the paper) or "learned_set" (QuickNet+).
    budget_min_delta: with the learned-set budget, the growth of the validation learned fraction that
      counts as progress.
    budget_patience: with the learned-set budget, epochs without progress before the block stops.
    commit_holdout: QuickNet+, the fraction of T_j held out of block j's training for its commitment head.
    keep_learned: QuickNet+ soft removal, the fraction of each learned set kept in the next working set.
    finetune_epochs: QuickNet+, epochs of joint fine-tuning of every block after block-wise training.
    finetune_lr: QuickNet+, the Adam learning rate of the joint fine-tuning.
    epoch_draws: how many samples an epoch of a later block draws, "working_set" or "full".
    commit_balance: how a commitment head's training balances right and wrong predictions, "weighted"
      or "sampled".
    schedule: "sequential" (Algorithm 1) or "decoupled" (every block trains from the first epoch).
    decoupled_refresh: with the decoupled schedule, when the learned rule is decided, every "step" or
      every "epoch".
    pipeline_stages: with the decoupled schedule, how many pipeline stages (one device each) run the
      blocks; 1: no pipeline.
    pipeline_capacity: with pipeline stages, the fraction of each batch a stage sends on to the next.
    learned_commit_prob: the commitment probability a learned sample must exceed.

  Raises:
    ValueError: a field is out of its range or not one of its choices, or the fields contradict each
      other (e.g. a sequential-only lever with the decoupled schedule).
  """

  fit: FitConfig = nested(FitConfig, "The schedule of every block (Appendix A).")
  commit_fit: Optional[FitConfig] = internal(
    None, "The commitment heads' schedule (None: the blocks', without class-balanced sampling: `commitment_schedule`)."
  )
  train_threshold: float = option(0.9, "τ: confidence a sample needs to count as learned.", lower=0.0, upper=1.0)
  cache_features: bool = option(True, "Compute frozen blocks' features once per block.")
  feature_cache_mb: Optional[float] = option(
    None,
    "Memory budget of a block's feature cache (MiB); above it "
    "the frozen prefix is recomputed every step instead (default: no "
    "limit).",
    lower=0.0,
  )
  budget: str = option(
    "val_loss",
    "QuickNet+: what ends a block's training: its validation loss (the paper), "
    "or its validation learned set (correct, confidence > τ) no longer growing.",
    choices=BUDGETS,
  )
  budget_min_delta: float = option(
    0.01,
    "learned_set budget: the growth of the validation learned fraction that counts as progress.",
    lower=0.0,
    upper=1.0,
  )
  budget_patience: int = option(2, "learned_set budget: epochs without progress before the block stops.", lower=1)
  commit_holdout: float = option(
    0.0,
    "QuickNet+: fraction of T_j held out of block j's training; its "
    "commitment head learns from that slice's correctness.",
    lower=0.0,
    upper=1.0,
  )
  keep_learned: float = option(
    0.0, "QuickNet+ soft removal: fraction of each learned set kept in the next working set.", lower=0.0, upper=1.0
  )
  finetune_epochs: int = option(
    0,
    "QuickNet+: epochs of joint fine-tuning of every block after block-wise "
    "training (then the commitment heads retrain).",
    lower=0,
  )
  finetune_lr: float = option(3e-4, "QuickNet+: Adam learning rate of the joint fine-tuning.", lower=0.0)
  # The authors' code, where it differs from Appendix A as we read it (each off by default):
  epoch_draws: str = option(
    "working_set",
    "How many samples an epoch of a later block draws: working_set "
    "(|T_j|) or full (|T_0| class-balanced draws with replacement from T_j, as the "
    "authors' code: later blocks do not see smaller epochs).",
    choices=EPOCH_DRAWS,
  )
  commit_balance: str = option(
    "weighted",
    "How a commitment head's training balances right and wrong "
    "predictions: weighted (each class weighs n / (2·n_class) in the loss) or sampled "
    "(the authors': drawn with equal total probability).",
    choices=COMMIT_BALANCES,
  )
  schedule: str = option(
    "sequential",
    "sequential: Algorithm 1, one block after another, each frozen before the next starts; decoupled: every "
    "block trains from the first epoch on its own losses, the input of each stop-gradiented, each on the samples "
    "earlier blocks do not learn under their current parameters (the paper's future work).",
    choices=SCHEDULES,
  )
  decoupled_refresh: str = option(
    "step",
    "With --schedule=decoupled: when the learned rule is decided — every step (by the step's own forward pass) "
    "or at the start of every epoch (one more forward pass over the training split).",
    choices=REFRESHES,
  )
  pipeline_stages: int = option(
    1,
    "With --schedule=decoupled: run the blocks as this many pipeline stages, one device each (1: no pipeline).",
    lower=1,
  )
  pipeline_capacity: float = option(
    1.0,
    "With --pipeline_stages: the fraction of each batch a stage sends on to the next — the rows no block so "
    "far has learned first, so later stages run on fewer rows; rows past it are dropped for that step and "
    "counted in the epoch's record (1: nothing is ever dropped, the decoupled schedule's results).",
    lower=0.0,
    upper=1.0,
  )
  learned_commit_prob: float = option(
    0.5,
    "A learned sample's commitment probability sigmoid(d) must exceed this "
    "(0.5: d > 0, docs/method.md; the authors' code: 0.8).",
    lower=0.0,
    upper=1.0,
  )

  def __post_init__(self):
    exits.check_threshold(self.train_threshold, "train_threshold")
    if self.feature_cache_mb is not None and not self.feature_cache_mb >= 0:
      raise ValueError(f"feature_cache_mb must be ≥ 0 (or None: no limit), got {self.feature_cache_mb}")
    if self.budget not in BUDGETS:
      raise ValueError(f"budget must be one of {BUDGETS}, got {self.budget!r}")
    if not 0 <= self.budget_min_delta < 1 or self.budget_patience < 1:
      raise ValueError(
        f"budget_min_delta must be in [0, 1) and budget_patience ≥ 1, got "
        f"{self.budget_min_delta}, {self.budget_patience}"
      )
    for name in ("commit_holdout", "keep_learned"):
      if not 0 <= getattr(self, name) < 1:
        raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
    if self.finetune_epochs < 0 or not self.finetune_lr > 0:
      raise ValueError(
        f"finetune_epochs must be ≥ 0 and finetune_lr > 0, got {self.finetune_epochs}, {self.finetune_lr}"
      )
    if self.epoch_draws not in EPOCH_DRAWS:
      raise ValueError(f"epoch_draws must be one of {', '.join(EPOCH_DRAWS)}, got {self.epoch_draws!r}")
    if self.epoch_draws == "full" and not self.fit.balanced_sampling:
      raise ValueError("epoch_draws=full draws with replacement, class-balanced: drop --nobalanced_sampling")
    if self.commit_balance not in COMMIT_BALANCES:
      raise ValueError(f"commit_balance must be one of {', '.join(COMMIT_BALANCES)}, got {self.commit_balance!r}")
    if not 0 < self.learned_commit_prob < 1:
      raise ValueError(f"learned_commit_prob must be in (0, 1), got {self.learned_commit_prob}")
    if not 0 < self.pipeline_capacity <= 1:
      raise ValueError(f"pipeline_capacity must be in (0, 1], got {self.pipeline_capacity}")
    if self.pipeline_capacity < 1 and self.pipeline_stages == 1:
      raise ValueError("--pipeline_capacity sizes what pipeline stages send on: add --pipeline_stages=K (K > 1)")
    if self.pipeline_stages > 1 and self.schedule != "decoupled":
      raise ValueError("--pipeline_stages pipelines the decoupled schedule: add --schedule=decoupled")
    if self.schedule == "decoupled":
      levers = dict(
        commit_holdout=self.commit_holdout > 0,
        keep_learned=self.keep_learned > 0,
        finetune_epochs=self.finetune_epochs > 0,
        budget=self.budget != "val_loss",
        epoch_draws=self.epoch_draws != "working_set",
        commit_balance=self.commit_balance != "weighted",
      )
      if any(levers.values()):
        used = ", ".join(f"--{name}" for name, on in levers.items() if on)
        raise ValueError(f"{used} apply to the sequential schedule only: drop them, or use --schedule=sequential")
    if self.fit.augment and self.cache_features:
      raise ValueError(
        "augment needs --nocache_features: cached features are computed once, without "
        "augmentation, so blocks after the first would never see it"
      )
    options.validate(self)

  def block_fit(self) -> FitConfig:
    """The schedule of a block's own fit (the learned-set budget changes what it monitors).

    Returns:
      `fit` itself under the "val_loss" budget; under "learned_set", `fit` monitoring the validation
      accuracy with `budget_min_delta` and `budget_patience`.
    """
    if self.budget == "val_loss":
      return self.fit
    return dataclasses.replace(
      self.fit, monitor="val_accuracy", min_delta=self.budget_min_delta, early_stop_patience=self.budget_patience
    )

  def learned_commit_logit(self) -> float:
    """The commitment logit a learned sample's must exceed: log(p / (1 − p)) of `learned_commit_prob`.

    Returns:
      The logit of `learned_commit_prob` (0.0 at 0.5).
    """
    return math.log(self.learned_commit_prob / (1.0 - self.learned_commit_prob))

  def commitment_fit(self) -> FitConfig:
    """The schedule of the commitment heads.

    Returns:
      `commit_fit` when set, else `commitment_schedule(fit)`.
    """
    return self.commit_fit if self.commit_fit is not None else commitment_schedule(self.fit)


@dataclasses.dataclass(frozen=True)
class SDNConfig:
  """SDN's loss-weight schedule (Kaya et al. 2019).

  Internal exit i's weight grows linearly per epoch to its maximum,
  τ_i(epoch) = min(τ_i^max, 0.01 + epoch·τ_i^max/ramp_epochs).

  Attributes:
    max_weights: τ^max, one weight per internal exit; None: `default_max_weights`.
    ramp_epochs: epochs over which the weights grow to their maximum; None: the fit's epoch cap.

  Raises:
    ValueError: `ramp_epochs` is below 1 or a weight is negative.
  """

  max_weights: Optional[tuple[float, ...]] = option(
    None, "SDN's maximum loss weight per internal exit (default 0.9·(i+1)/K)."
  )
  ramp_epochs: Optional[int] = option(
    None, "Epochs over which SDN's loss weights grow to their maximum (default: max_epochs, as SDN).", lower=1
  )

  def __post_init__(self):
    if self.ramp_epochs is not None and self.ramp_epochs < 1:
      raise ValueError(f"ramp_epochs must be ≥ 1 (got {self.ramp_epochs}); leave it unset to ramp over max_epochs")
    if self.max_weights is not None and any(not w >= 0 for w in self.max_weights):
      raise ValueError(f"max_weights must be non-negative, got {self.max_weights}")
    options.validate(self)

  def weights_for(self, num_internal: int, model_name: str = "the model") -> tuple[float, ...]:
    """τ^max of each of `num_internal` internal exits.

    Args:
      num_internal: the model's number of internal exits.
      model_name: what the error message calls the model.

    Returns:
      `max_weights`, or `default_max_weights(num_internal)` when it is None.

    Raises:
      ValueError: `max_weights` does not hold `num_internal` weights.
    """
    weights = default_max_weights(num_internal) if self.max_weights is None else tuple(self.max_weights)
    if len(weights) != num_internal:
      raise ValueError(
        f"max_weights has {len(weights)} entries but {model_name} has {num_internal} "
        "internal exits: pass one weight per internal exit"
      )
    return weights

  def ramp(self, fit_config: FitConfig) -> int:
    """The ramp's length in epochs (default: the fit's epoch cap).

    Args:
      fit_config: the joint fit's schedule.

    Returns:
      `ramp_epochs`, or `fit_config.max_epochs` when it is None.
    """
    return fit_config.max_epochs if self.ramp_epochs is None else self.ramp_epochs


def default_max_weights(num_internal: int) -> tuple[float, ...]:
  """SDN's maximum weights spread evenly: 0.9·(i+1)/K for K internal exits (K = 6: 0.15, 0.3, …, 0.9).

  Args:
    num_internal: K, the number of internal exits.

  Returns:
    A tuple of K weights (empty for K = 0).

  Raises:
    ValueError: `num_internal` is negative.
  """
  if num_internal < 0:
    raise ValueError(f"num_internal must be ≥ 0, got {num_internal}")
  return tuple(0.9 * (i + 1) / num_internal for i in range(num_internal))

"""Appendix A's schedule as data: `FitConfig` (the settings of one fit), `Schedule` (where its
host-side schedule stands) and `advance`, the pure rule that turns an epoch's monitored score into the
best epoch, learning-rate cuts (reduce-on-plateau ×0.5, patience 1) and early stopping (3 epochs
without a new minimum).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import jax

from quicknets_jax.core import options
from quicknets_jax.core.options import internal, option

MONITORS = ("val_loss", "val_accuracy", "train_loss")
AUGMENTATIONS = ("crop_flip", "flip", "affine")
DTYPES = ("auto", "bfloat16", "float32")


@dataclasses.dataclass(frozen=True)
class FitConfig:
  """Appendix A's schedule of one fit. Defaults: the paper's MLP setting.

  The fields declared with `option` are settings of a run's flat config (the entry points offer each as
  a flag of the same name); `min_delta` and `host_loop` are set in code.

  Attributes:
    learning_rate: Adam's initial learning rate.
    batch_size: training rows per step.
    max_epochs: the epoch cap of every fit.
    plateau_factor: the factor the learning rate is multiplied by on a plateau, in (0, 1].
    plateau_patience: epochs without progress before the learning rate is cut.
    early_stop_patience: epochs without progress before the fit stops.
    balanced_sampling: draw every class still present equally often (with replacement).
    eval_batch_size: rows per chunk of the validation passes.
    eval_rows_per_pass: rows of a validation chunk computed at once (None: `trainer.eval_rows_per_pass`
      decides; 0: the whole chunk).
    augment: apply random training-time augmentation to the raw images.
    augmentation: which augmentation `augment` applies (`AUGMENTATIONS`).
    weight_decay: Adam's L2 weight decay, added to the gradient.
    monitor: the score that decides the best epoch, plateaus and early stopping (`MONITORS`).
    dtype: the compute dtype of training steps and validation passes (`DTYPES`; see `resolve_dtype`).
    min_delta: the gain of the monitored score that counts as progress.
    host_loop: run an epoch's steps from a Python loop (True), inside one jit (False), or decide by
      backend and model (None; `trainer.steps_from_host`).

  Raises:
    ValueError: a field is out of its range or not one of its choices.
  """

  learning_rate: float = option(1e-3, "Adam learning rate (Appendix A: 1e-3 for MLPs, 3e-4 for VGG).", lower=0.0)
  batch_size: int = option(128, "Training batch size.", lower=1)
  max_epochs: int = option(
    100, "Epoch cap of every fit (each block, each commitment head, the end-to-end network).", lower=1
  )
  plateau_factor: float = option(0.5, "Learning-rate factor on a plateau of the monitored score.")
  plateau_patience: int = option(1, "Epochs without improvement before the lr is reduced.", lower=0)
  early_stop_patience: int = option(3, "Epochs without a new best monitored score before stopping.", lower=1)
  balanced_sampling: bool = option(True, "Draw every class still present equally often (§3.2).")
  eval_batch_size: int = option(2048, "Batch size of evaluation passes.", lower=1, resumable=True)
  eval_rows_per_pass: Optional[int] = option(
    None,
    "Rows of a validation chunk computed at once (default: 256 for networks that convolve, on CPU, where "
    "larger passes overflow the caches; else the whole chunk). 0: the whole chunk, whose losses then "
    "match a whole-chunk pass bit for bit (smaller passes agree to float round-off).",
    lower=0,
    resumable=True,
  )
  augment: bool = option(
    False,
    "Random training-time augmentation (--augmentation) of the raw images (needs "
    "--nocache_features for QuickNets: cached features are computed once, unaugmented).",
  )
  augmentation: str = option(
    "crop_flip",
    "With --augment: crop_flip (random crop, 4-px padding, + horizontal flip), flip, or affine (the authors' "
    "Fashion-MNIST transform: rotation ±7°, translation ±5 %, scale 0.9–1.1).",
    choices=AUGMENTATIONS,
  )
  weight_decay: float = option(
    0.0, "Adam's L2 weight decay, added to the gradient as PyTorch's Adam does (the authors' code: 5e-4).", lower=0.0
  )
  # An epoch keeps its parameters if it beats the best monitored score; it counts as progress
  # (resetting the plateau and early-stopping patience) only when it beats the last progress by more
  # than `min_delta`. QuickNet+'s learned-set budget monitors the validation "accuracy" its loss reports:
  # the fraction of validation samples the block would remove.
  monitor: str = option(
    "val_loss",
    "What decides best params, lr plateaus and early stopping: val_loss "
    "(Appendix A as we read it), train_loss (the authors' code) or val_accuracy.",
    choices=MONITORS,
  )
  dtype: str = option(
    "auto",
    "Compute dtype of training steps and their validation passes: bfloat16, float32, or auto (bfloat16 on "
    "GPU/TPU, float32 on CPU). Parameters, optimizer state, losses, softmax, confidence and commitment stay "
    "float32; FLOP counts do not change.",
    choices=DTYPES,
  )
  min_delta: float = internal(0.0, "The gain of the monitored score that counts as progress.")
  # Run an epoch's steps from a Python loop instead of inside one jit (see `trainer.steps_from_host`);
  # None: only for models that convolve, on CPU, where XLA runs convolutions in loops far slower.
  host_loop: Optional[bool] = internal(None, "Steps from a Python loop (None: conv models on CPU).")

  def __post_init__(self):
    if self.monitor not in MONITORS:
      raise ValueError(f"monitor must be one of {MONITORS}, got {self.monitor!r}")
    if not (self.min_delta >= 0 and math.isfinite(self.min_delta)):
      raise ValueError(f"min_delta must be a finite number ≥ 0, got {self.min_delta}")
    if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
      raise ValueError(f"learning_rate must be a positive number, got {self.learning_rate}")
    if self.batch_size < 1 or self.eval_batch_size < 1:
      raise ValueError(f"batch sizes must be ≥ 1, got {self.batch_size}, {self.eval_batch_size}")
    if self.max_epochs < 1:
      raise ValueError(f"max_epochs must be ≥ 1, got {self.max_epochs}")
    if not 0 < self.plateau_factor <= 1:
      raise ValueError(f"plateau_factor must be in (0, 1], got {self.plateau_factor}")
    if self.plateau_patience < 0 or self.early_stop_patience < 1:
      raise ValueError(
        "plateau_patience must be ≥ 0 and early_stop_patience ≥ 1, got "
        f"{self.plateau_patience}, {self.early_stop_patience}"
      )
    if self.dtype not in DTYPES:
      raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
    if self.augmentation not in AUGMENTATIONS:
      raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, got {self.augmentation!r}")
    options.validate(self)

  @property
  def compute_dtype(self) -> Optional[str]:
    """The dtype the training losses compute in ("bfloat16"), or None for float32 (`resolve_dtype`)."""
    return resolve_dtype(self.dtype)

  @property
  def augmentation_name(self) -> Optional[str]:
    """The augmentation the training losses apply (`data.augment.AUGMENTATIONS`), or None."""
    return self.augmentation if self.augment else None


def resolve_dtype(dtype: str, backend: Optional[str] = None) -> Optional[str]:
  """`--dtype` on `backend` (default: jax's): "bfloat16" to compute in bf16, None for float32.

  "auto" is bf16 on GPU/TPU, whose matrix units run it several times faster, and f32 on CPU, where XLA
  emulates most bf16 arithmetic and would only lose precision.

  Args:
    dtype: "auto", "bfloat16" or "float32" (`DTYPES`).
    backend: a jax backend name ("cpu", "gpu", "tpu"); None: `jax.default_backend()`.

  Returns:
    "bfloat16", or None for float32.

  Raises:
    ValueError: `dtype` is not one of `DTYPES`.
  """
  if dtype not in DTYPES:
    raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
  if dtype == "auto":
    backend = backend or jax.default_backend()
    dtype = "float32" if backend == "cpu" else "bfloat16"
  return None if dtype == "float32" else dtype


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Where Appendix A's schedule stands after some epochs of a fit (host-side numbers, immutable).

  Attributes:
    learning_rate: the learning rate the next epoch trains at.
    epoch: epochs completed.
    best_score: the best monitored score so far (`monitored_score`: lower is better).
    best_epoch: the epoch that reached it (its parameters are the fit's result).
    progress_score: the score of the last epoch that counted as progress (beat the one before by more
      than `FitConfig.min_delta`); the two counters count epochs since then. With min_delta = 0 it is
      `best_score`.
    epochs_since_progress: epochs without progress (early stopping after `early_stop_patience`).
    plateau_epochs: epochs without progress since the last learning-rate cut (a cut after
      `plateau_patience`).
    stopped: early stopping has ended the fit.
  """

  learning_rate: float
  epoch: int = 0
  best_score: float = float("inf")
  best_epoch: int = 0
  progress_score: float = float("inf")
  epochs_since_progress: int = 0
  plateau_epochs: int = 0
  stopped: bool = False

  def finished(self, config: FitConfig) -> bool:
    """Whether the fit is over: stopped early, or at its epoch cap.

    Args:
      config: the fit's settings (its `max_epochs`).

    Returns:
      True when `stopped` is set or `epoch` has reached `config.max_epochs`.
    """
    return self.stopped or self.epoch >= config.max_epochs

  @classmethod
  def from_dict(cls, fields: dict) -> Schedule:
    """The schedule whose fields `dataclasses.asdict` gave (a checkpoint's JSON meta).

    Args:
      fields: the schedule's fields by name.

    Returns:
      The `Schedule`.
    """
    return cls(**fields)


@dataclasses.dataclass(frozen=True)
class BlockSchedules:
  """A schedule per block, for runs whose blocks all train at once (decoupled training).

  Each block follows Appendix A's schedule on its own monitored score; a block that has stopped is frozen
  (it keeps its best epoch's parameters) while the others go on. The run is over when every block is
  frozen, or at the epoch cap.

  Attributes:
    blocks: one `Schedule` per block.
    frozen: per block, whether it has stopped training.
    epoch: epochs the run has completed (a frozen block's own count stops where it froze).
  """

  blocks: tuple[Schedule, ...]
  frozen: tuple[bool, ...]
  epoch: int = 0

  @property
  def stopped(self) -> bool:
    """Whether every block is frozen."""
    return all(self.frozen)

  def finished(self, config: FitConfig) -> bool:
    """Whether the run is over: every block frozen, or the epoch cap reached.

    Args:
      config: the run's settings (its `max_epochs`).

    Returns:
      True when every block is frozen or `epoch` has reached `config.max_epochs`.
    """
    return self.stopped or self.epoch >= config.max_epochs

  @classmethod
  def from_dict(cls, fields: dict) -> BlockSchedules:
    """The schedules whose fields `dataclasses.asdict` gave (a checkpoint's JSON meta).

    Args:
      fields: "blocks" (each a `Schedule`'s fields), "frozen" and "epoch".

    Returns:
      The `BlockSchedules`.
    """
    blocks = tuple(Schedule.from_dict(b) for b in fields["blocks"])
    return cls(blocks, tuple(bool(f) for f in fields["frozen"]), int(fields["epoch"]))


def monitored_score(config: FitConfig, train_loss: float, val_loss: float, val_accuracy: float) -> float:
  """The epoch's score under `config.monitor`, lower is better.

  Args:
    config: the fit's settings (its `monitor`).
    train_loss: the epoch's mean training loss.
    val_loss: the epoch's mean validation loss.
    val_accuracy: the epoch's validation accuracy.

  Returns:
    `val_loss`, `train_loss`, or minus `val_accuracy`.
  """
  return {"val_loss": val_loss, "train_loss": train_loss, "val_accuracy": -val_accuracy}[config.monitor]


def advance(schedule: Schedule, config: FitConfig, score: float) -> Schedule:
  """The schedule after one more epoch whose monitored score is `score`.

  Updates the best epoch, reduce-on-plateau (torch's ReduceLROnPlateau semantics) and early stopping.
  The epoch is the new best when `result.best_epoch == result.epoch`.

  Args:
    schedule: the schedule before the epoch.
    config: the fit's settings (plateau factor and patience, early-stop patience, min_delta).
    score: the epoch's monitored score (`monitored_score`), lower is better.

  Returns:
    The new schedule; `schedule` itself is unchanged.
  """
  epoch = schedule.epoch + 1
  best_score, best_epoch = schedule.best_score, schedule.best_epoch
  if score < best_score:  # best params: the best epoch, however small its gain
    best_score, best_epoch = score, epoch
  progress_score, since, plateau, learning_rate = (
    schedule.progress_score,
    schedule.epochs_since_progress,
    schedule.plateau_epochs,
    schedule.learning_rate,
  )
  if score < progress_score - config.min_delta:  # progress: a gain larger than min_delta
    progress_score, since, plateau = score, 0, 0
  else:
    since, plateau = since + 1, plateau + 1
    if plateau > config.plateau_patience:
      learning_rate, plateau = learning_rate * config.plateau_factor, 0
  return Schedule(
    learning_rate=learning_rate,
    epoch=epoch,
    best_score=best_score,
    best_epoch=best_epoch,
    progress_score=progress_score,
    epochs_since_progress=since,
    plateau_epochs=plateau,
    stopped=since >= config.early_stop_patience,
  )

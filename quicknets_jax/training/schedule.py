"""Appendix A's schedule as data: `FitConfig` (the settings of one fit), `FitState` (where a fit is) and
`end_epoch`, the host-side rule that turns an epoch's monitored score into best params, learning-rate
cuts (reduce-on-plateau ×0.5, patience 1) and early stopping (3 epochs without a new minimum).

Kept apart from the trainer so that checkpoints (which store a `FitState`) and the trainer (which
advances one) both build on it without importing each other.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import jax

from quicknets_jax.core import config as config_lib
from quicknets_jax.core.config import internal, option

PyTree = Any
MONITORS = ("val_loss", "val_accuracy", "train_loss")
AUGMENTATIONS = ("crop_flip", "flip", "affine")
DTYPES = ("auto", "bfloat16", "float32")


@dataclasses.dataclass(frozen=True)
class FitConfig:
  """Appendix A's schedule of one fit. Defaults: the paper's MLP setting."""

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
  # Run an epoch's steps from a Python loop instead of inside one jit (see `trainer.make_epoch_fn`);
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
    config_lib.validate(self)

  @property
  def compute_dtype(self) -> Optional[str]:
    """The dtype the training losses compute in ("bfloat16"), or None for float32 (`resolve_dtype`)."""
    return resolve_dtype(self.dtype)

  @property
  def augmentation_name(self) -> Optional[str]:
    """The augmentation the training losses apply (`data.augment.AUGMENTATIONS`), or None."""
    return self.augmentation if self.augment else None


def resolve_dtype(dtype: str, backend: Optional[str] = None) -> Optional[str]:
  """`--dtype` on `backend` (default: jax's): "bfloat16" to compute in bf16, None for float32. "auto"
  is bf16 on GPU/TPU, whose matrix units run it several times faster, and f32 on CPU, where XLA
  emulates most bf16 arithmetic and would only lose precision."""
  if dtype not in DTYPES:
    raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
  if dtype == "auto":
    backend = backend or jax.default_backend()
    dtype = "float32" if backend == "cpu" else "bfloat16"
  return None if dtype == "float32" else dtype


@dataclasses.dataclass
class FitState:
  """Everything a fit needs to go on after an interruption (all host-side or device arrays)."""

  params: PyTree
  opt_state: PyTree
  model_state: PyTree
  best_params: PyTree
  best_model_state: PyTree
  best_val_loss: float = float("inf")  # the best monitored score (val or train loss, or −val accuracy)
  # The score of the last epoch that counted as progress (beat this by more than min_delta); the
  # patience counters below count epochs since then. With min_delta = 0 it is best_val_loss.
  progress_score: float = float("inf")
  best_epoch: int = 0
  learning_rate: float = 0.0
  epoch: int = 0  # epochs completed
  epochs_since_best: int = 0
  plateau_bad_epochs: int = 0
  stopped: bool = False
  history: list = dataclasses.field(default_factory=list)


def monitored_score(config: FitConfig, train_loss: float, val_loss: float, val_accuracy: float) -> float:
  """The epoch's score under `config.monitor`, lower is better."""
  return {"val_loss": val_loss, "train_loss": train_loss, "val_accuracy": -val_accuracy}[config.monitor]


def end_epoch(state: FitState, config: FitConfig, score: float) -> bool:
  """Applies one finished epoch's monitored `score` to the schedule counters of `state` (reduce-on-plateau
  with torch's ReduceLROnPlateau semantics, early stopping). Returns whether the epoch is the new best
  (the caller keeps its parameters)."""
  is_best = score < state.best_val_loss  # best params: the best epoch, however small its gain
  if is_best:
    state.best_val_loss, state.best_epoch = score, state.epoch
  if score < state.progress_score - config.min_delta:  # progress: a gain larger than min_delta
    state.progress_score = score
    state.epochs_since_best = state.plateau_bad_epochs = 0
  else:
    state.epochs_since_best += 1
    state.plateau_bad_epochs += 1
    if state.plateau_bad_epochs > config.plateau_patience:
      state.learning_rate *= config.plateau_factor
      state.plateau_bad_epochs = 0
  if state.epochs_since_best >= config.early_stop_patience:
    state.stopped = True
  return is_best

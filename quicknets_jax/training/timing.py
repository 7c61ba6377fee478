"""Where a run's seconds go, phase by phase, beside the FLOPs each phase computes.

A fit's epoch records (`trainer.fit`) hold the seconds of its steps (`train_seconds`), of its validation
pass (`val_seconds`), of writing its checkpoint (`checkpoint_seconds`) and the compile seconds within
them; the algorithms add what happens between fits (feature caches, the learned-set selection). The
phases are disjoint: compile seconds are counted once, as "compile", and taken out of where they fell. Dividing
each phase's FLOPs (`core.costs`) by its seconds gives the rate at which the run spends its arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence

# The phase of the seconds that compute each part of `costs.QUICKNET_BLOCK_PARTS` (and of `fit_flops`).
FLOP_PHASES = {
  "block_training": "block_epochs",
  "block_validation": "block_validation",
  "cache": "feature_cache",
  "commit_training": "commit_epochs",
  "commit_validation": "commit_validation",
  "selection": "selection",
  "training": "epochs",
  "validation": "validation",
}


def fit_seconds(history: Sequence[dict], prefix: str = "") -> dict:
  """A fit's seconds by phase, summed over its epoch records.

  Each phase is counted without the compiles that happened in it: they are "compile".

  Args:
    history: the fit's epoch records (dicts as `trainer.fit` writes them; missing keys count 0).
    prefix: put before the names of the two fit-specific phases (e.g. `block_`, `commit_`).

  Returns:
    A dict with PREFIX + "epochs" (training steps), PREFIX + "validation", "checkpoints" and "compile",
    in seconds.
  """

  def total(key):
    return float(sum(record.get(key, 0.0) for record in history))

  val_compile = total("compile_seconds") - total("train_compile_seconds")
  return {
    f"{prefix}epochs": total("train_seconds") - total("train_compile_seconds"),
    f"{prefix}validation": total("val_seconds") - val_compile,
    "checkpoints": total("checkpoint_seconds"),
    "compile": total("compile_seconds"),
  }


def add(*phases: dict) -> dict:
  """The phases summed key by key.

  Args:
    *phases: dicts of {phase: seconds}.

  Returns:
    A dict with every key of the inputs and the sum of its values as a float.
  """
  out: dict = {}
  for part in phases:
    for key, value in part.items():
      out[key] = out.get(key, 0.0) + float(value)
  return out


def with_other(phases: dict, total_seconds: float) -> dict:
  """`phases` plus "other", what `total_seconds` holds beyond them (the phases are disjoint).

  Args:
    phases: a dict of {phase: seconds}.
    total_seconds: the run's total seconds.

  Returns:
    A copy of `phases` with "other" added, never below 0.
  """
  return dict(phases, other=max(total_seconds - sum(phases.values()), 0.0))


def flops_per_second(flops: dict, seconds: dict) -> dict:
  """{phase: FLOP/s} for each phase that computes FLOPs (`FLOP_PHASES`) and took time.

  Args:
    flops: FLOPs by cost part (`core.costs` part names); values that are not numbers are skipped.
    seconds: seconds by phase (as `fit_seconds` names them).

  Returns:
    A dict of FLOPs per second by phase, the FLOPs of every part of the phase over its seconds.
  """
  out: dict = {}
  for part, value in flops.items():
    phase = FLOP_PHASES.get(part)
    if phase is not None and seconds.get(phase, 0.0) > 0 and isinstance(value, (int, float)):
      out[phase] = out.get(phase, 0.0) + float(value)
  return {phase: value / seconds[phase] for phase, value in out.items()}

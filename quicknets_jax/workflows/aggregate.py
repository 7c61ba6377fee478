"""Per-seed results into one entry of results.json: means (lists element-wise), the accuracy's std, and
curves averaged point by point; and the end-to-end / QuickNet ratios."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np

from quicknets_jax.core import stats

# Per-seed entries that are not averaged (they stay under "per_seed").
NOT_AVERAGED = (
  "history",
  "seed",
  "curve",
  "curve_confidence_only",
  "training_flops_parts",
  "class_counts_per_block",
  "finetune",
)
CURVES = ("curve", "curve_confidence_only")
RATIO_KEYS = ("training_flops", "inference_flops", "train_seconds")


def average_curves(curves: Sequence[list], std_of: Optional[str] = None) -> list:
  """Point-by-point mean of curves over the same threshold grid: the threshold kept, numbers averaged,
  lists (exit fractions) averaged element-wise, a shorter one counting 0 for the exits it lacks; with `std_of`, that key's sample std beside it.

  Args:
    curves: one list of points (dicts) per seed, over the same thresholds.
    std_of: a key whose sample std is added as `<key>_std`, or None.

  Returns:
    The averaged list of points.
  """
  out = []
  for points in zip(*curves):
    point = {}
    for key, value in points[0].items():
      values = [p[key] for p in points]
      if key == "threshold":
        point[key] = value
      elif isinstance(value, list):  # per-exit fractions: a shorter cascade sends nothing to exits it lacks
        point[key] = _mean_per_block(key, values)
      else:
        point[key] = stats.mean(values)
      if key == std_of:
        point[f"{key}_std"] = stats.std(values)
    out.append(point)
  return out


# Per-block amounts a block that a seed's cascade does not have spent nothing of (a seed keeps fewer blocks
# when an early block learns every training sample); other per-block numbers (accuracies, thresholds) are
# averaged over the seeds that have the block.
AMOUNTS_PER_BLOCK = (
  "exit_fractions",
  "train_samples_per_block",
  "learned_per_block",
  "epochs_per_block",
  "commit_epochs_per_block",
  "compile_seconds_per_block",
  "background_compile_seconds_per_block",
)


def _mean_per_block(key: str, values: Sequence[list]) -> list:
  """Element-wise mean of per-seed lists that may differ in length (see `AMOUNTS_PER_BLOCK`)."""
  width = max(len(v) for v in values)
  if key in AMOUNTS_PER_BLOCK:
    return [float(x) for x in np.mean([list(v) + [0.0] * (width - len(v)) for v in values], axis=0)]
  return [float(np.mean([v[j] for v in values if j < len(v)])) for j in range(width)]


def aggregate(per_seed: Sequence[dict]) -> dict:
  """Mean over seeds of every number (lists element-wise), with the accuracy's std beside it.

  Entries of `NOT_AVERAGED` stay under "per_seed" only; curves are averaged point by point.

  Args:
    per_seed: one result dict per seed, with the same keys.

  Returns:
    The aggregated entry, holding `test_accuracy_std` and `per_seed` too.
  """
  out = {}
  for key, value in per_seed[0].items():
    values = [s[key] for s in per_seed]
    if key in NOT_AVERAGED:
      continue
    if stats.is_number(value):
      out[key] = stats.mean(values)
    elif isinstance(value, dict) and value and all(stats.is_number(v) for v in value.values()):
      out[key] = {k: stats.mean([v.get(k, 0.0) for v in values]) for k in value}  # e.g. seconds by phase
    elif isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
      out[key] = _mean_per_block(key, values)
  out["test_accuracy_std"] = stats.std([s["test_accuracy"] for s in per_seed])
  for curve_key in CURVES:
    if curve_key in per_seed[0]:
      out[curve_key] = average_curves([s[curve_key] for s in per_seed])
  out["per_seed"] = list(per_seed)
  return out


def ratios(quicknet: dict, end_to_end: dict) -> dict:
  """end-to-end / QuickNet of the training FLOPs, inference FLOPs and training seconds (and of the
  inference cost in multiply-adds, where the model counts them).

  Args:
    quicknet: the QuickNet's aggregated entry.
    end_to_end: the end-to-end network's.

  Returns:
    The ratios by key.
  """
  out = {k: end_to_end[k] / quicknet[k] for k in RATIO_KEYS}
  if "inference_macs" in quicknet and "inference_macs" in end_to_end:
    out["inference_macs"] = end_to_end["inference_macs"] / quicknet["inference_macs"]
  return out

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
  lists (exit fractions) averaged element-wise; with `std_of`, that key's sample std beside it."""
  out = []
  for points in zip(*curves):
    point = {}
    for key, value in points[0].items():
      values = [p[key] for p in points]
      if key == "threshold":
        point[key] = value
      elif isinstance(value, list):
        point[key] = [float(x) for x in np.mean(values, 0)]
      else:
        point[key] = stats.mean(values)
      if key == std_of:
        point[f"{key}_std"] = stats.std(values)
    out.append(point)
  return out


def aggregate(per_seed: Sequence[dict]) -> dict:
  """Mean over seeds of every number (lists element-wise), with the accuracy's std beside it."""
  out = {}
  for key, value in per_seed[0].items():
    values = [s[key] for s in per_seed]
    if key in NOT_AVERAGED:
      continue
    if stats.is_number(value):
      out[key] = stats.mean(values)
    elif isinstance(value, dict) and value and all(stats.is_number(v) for v in value.values()):
      out[key] = {k: stats.mean([v.get(k, 0.0) for v in values]) for k in value}  # e.g. seconds by phase
    elif (
      isinstance(value, list)
      and value
      and all(isinstance(v, (int, float)) for v in value)
      and len({len(v) for v in values}) == 1
    ):
      out[key] = [float(x) for x in np.mean(np.asarray(values, float), axis=0)]
  out["test_accuracy_std"] = stats.std([s["test_accuracy"] for s in per_seed])
  for curve_key in CURVES:
    if curve_key in per_seed[0]:
      out[curve_key] = average_curves([s[curve_key] for s in per_seed])
  out["per_seed"] = list(per_seed)
  return out


def ratios(quicknet: dict, end_to_end: dict) -> dict:
  """end-to-end / QuickNet of the training FLOPs, inference FLOPs and training seconds (and of the
  inference cost in multiply-adds, where the model counts them)."""
  out = {k: end_to_end[k] / quicknet[k] for k in RATIO_KEYS}
  if "inference_macs" in quicknet and "inference_macs" in end_to_end:
    out["inference_macs"] = end_to_end["inference_macs"] / quicknet["inference_macs"]
  return out

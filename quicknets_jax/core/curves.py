"""Cost–accuracy curves of an exit rule: their points, areas, reads at matched budgets, and comparisons.

A curve is the exit rule swept over thresholds (`exits.sweep_thresholds`): one (inference cost,
accuracy) point per threshold. Curves of different rules span different cost ranges, so besides each
curve's own area this module reads them where they overlap: the mean accuracy over the shared range,
accuracies at budgets given as fractions of the full network's cost (linear interpolation; None where
a rule never spends that little or that much), and the gap between two curves over the budgets both reach.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np

from quicknets_jax.core import costs as cost_model
from quicknets_jax.core import exits

BUDGETS = (0.25, 0.5, 0.75)


def study_thresholds() -> np.ndarray:
  """The evaluator's default grid plus thresholds close to 1 and 1 itself (nobody qualifies), so every
  curve reaches its most expensive end.

  Returns:
    The sorted, unique thresholds in [0, 1].
  """
  near_one = 1.0 - np.logspace(-3, -6, 4)
  return np.unique(np.concatenate([exits.default_thresholds(), near_one, [1.0]]))


def sweep_points(
  sweep: exits.SweepResult, accuracy_key: str = "test_accuracy", full_cost: Optional[float] = None
) -> list:
  """The points of a sweep as JSON-ready dicts: threshold, accuracy (under `accuracy_key`), inference
  FLOPs, the cost as a fraction of `full_cost` (when given) and the exit fractions.

  Args:
    sweep: a threshold sweep (`exits.sweep_thresholds`).
    accuracy_key: the key the accuracy is stored under.
    full_cost: the full network's FLOPs per sample; None leaves `cost_fraction` out.

  Returns:
    One dict per threshold.
  """
  points = []
  for t, a, c, fr in zip(sweep.thresholds, sweep.accuracy, sweep.inference_flops, sweep.exit_fractions):
    point = {"threshold": float(t), accuracy_key: float(a), "inference_flops": float(c)}
    if full_cost is not None:
      point["cost_fraction"] = float(c / full_cost)
    point["exit_fractions"] = [float(f) for f in fr]
    points.append(point)
  return points


def clean_curve(costs, accuracy) -> tuple[np.ndarray, np.ndarray]:
  """Points sorted by cost; points at the same cost are averaged, so the curve is a function of cost.

  Args:
    costs: [T] costs of the points.
    accuracy: [T] their accuracies.

  Returns:
    (unique costs in increasing order, mean accuracy at each).

  Raises:
    ValueError: the two are not matching, non-empty 1-D arrays.
  """
  costs = np.asarray(costs, np.float64)
  accuracy = np.asarray(accuracy, np.float64)
  if costs.shape != accuracy.shape or costs.ndim != 1 or costs.size == 0:
    raise ValueError(f"a curve needs matching non-empty 1-D costs and accuracies, got {costs.shape}, {accuracy.shape}")
  unique, inverse = np.unique(costs, return_inverse=True)
  mean_acc = np.bincount(inverse, accuracy) / np.bincount(inverse)
  return unique, mean_acc


def accuracy_at_budget(costs, accuracy, budget: float) -> Optional[float]:
  """Accuracy of a cost–accuracy curve at cost `budget`, interpolated linearly between the two points
  around it; None when the budget lies outside the curve's cost range (the rule cannot spend it).

  Args:
    costs: [T] costs of the curve's points.
    accuracy: [T] their accuracies.
    budget: the cost at which to read the curve, in the units of `costs`.

  Returns:
    The interpolated accuracy, or None.

  Raises:
    ValueError: the curve is empty or its arrays do not match (`clean_curve`).
  """
  x, y = clean_curve(costs, accuracy)
  tolerance = 1e-9 * max(1.0, abs(x[-1]))
  if budget < x[0] - tolerance or budget > x[-1] + tolerance:
    return None
  return float(np.interp(budget, x, y))


def area_under_curve(costs, accuracy, low: Optional[float] = None, high: Optional[float] = None) -> float:
  """Trapezoid area under accuracy(cost) between `low` and `high` (default: the curve's own range).

  The end points are interpolated; outside the curve's range the area is not extended. A single
  point (or an empty range) has area 0.

  Args:
    costs: [T] costs of the curve's points.
    accuracy: [T] their accuracies.
    low: where the area starts (clipped to the curve's range).
    high: where it ends (clipped to the curve's range).

  Returns:
    The area, in cost units × accuracy.

  Raises:
    ValueError: the curve is empty or its arrays do not match (`clean_curve`).
  """
  x, y = clean_curve(costs, accuracy)
  low = x[0] if low is None else max(low, x[0])
  high = x[-1] if high is None else min(high, x[-1])
  if high <= low:
    return 0.0
  inside = (x > low) & (x < high)
  xs = np.concatenate([[low], x[inside], [high]])
  ys = np.interp(xs, x, y)
  return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2.0))


def mean_accuracy(costs, accuracy) -> float:
  """The curve's mean accuracy over its own cost range (its area divided by the range's width); the
  mean of its points when it has no width.

  Args:
    costs: [T] costs of the curve's points.
    accuracy: [T] their accuracies.

  Returns:
    The mean accuracy.
  """
  costs = np.asarray(costs, np.float64)
  low, high = float(costs.min()), float(costs.max())
  if high > low:
    return area_under_curve(costs, accuracy, low, high) / max(high - low, 1e-12)
  return float(np.asarray(accuracy, np.float64).mean())


def gap_between(curve_a, curve_b, points: int = 21) -> np.ndarray:
  """accuracy_a − accuracy_b at `points` budgets spread over the cost range both (costs, accuracy)
  curves cover (each read by linear interpolation).

  Args:
    curve_a: (costs, accuracy) of the first curve.
    curve_b: (costs, accuracy) of the second.
    points: how many budgets, evenly spaced over the shared range.

  Returns:
    [points] differences in accuracy.
  """
  low = max(np.min(c) for c, _ in (curve_a, curve_b))
  high = min(np.max(c) for c, _ in (curve_a, curve_b))
  budgets = np.linspace(low, high, points)
  reads = []
  for costs, accuracy in (curve_a, curve_b):
    costs, accuracy = np.asarray(costs), np.asarray(accuracy)
    order = np.argsort(costs)
    reads.append(np.interp(budgets, costs[order], accuracy[order]))
  return reads[0] - reads[1]


def compare_curves(curves: dict, full_cost: float, budgets: Sequence[float] = BUDGETS) -> dict:
  """AUCs, shared-range mean accuracy and matched-budget accuracies of several cost–accuracy curves.

  Args:
    curves: name -> (costs [T], accuracy [T]) in FLOPs per sample.
    full_cost: the full network's cost; budgets and areas are in fractions of it.
    budgets: fractions of `full_cost` at which to read each curve.

  Returns:
    A JSON-ready dict: `full_cost`, `budgets`, per curve `auc`, `cost_range`,
    `mean_accuracy_shared_range`, `matched_budget_accuracy` and `shared_range_budget_accuracy`, and the
    `shared_range` and `shared_range_budgets` (None when the curves share no range).

  Raises:
    ValueError: `full_cost` is not positive.
  """
  if full_cost <= 0:
    raise ValueError(f"full_cost must be positive, got {full_cost}")
  frac = {k: (np.asarray(c, np.float64) / full_cost, np.asarray(a, np.float64)) for k, (c, a) in curves.items()}
  low = max(float(np.min(c)) for c, _ in frac.values())
  high = min(float(np.max(c)) for c, _ in frac.values())
  shared = high > low
  out = dict(
    full_cost=float(full_cost),
    budgets=[float(b) for b in budgets],
    auc={},
    cost_range={},
    shared_range=[low, high] if shared else None,
    mean_accuracy_shared_range={},
    matched_budget_accuracy={},
    shared_range_budgets=None,
    shared_range_budget_accuracy={},
  )
  if shared:
    out["shared_range_budgets"] = [low + b * (high - low) for b in budgets]
  for name, (c, a) in frac.items():
    out["auc"][name] = area_under_curve(c, a)
    out["cost_range"][name] = [float(np.min(c)), float(np.max(c))]
    out["mean_accuracy_shared_range"][name] = area_under_curve(c, a, low, high) / (high - low) if shared else None
    out["matched_budget_accuracy"][name] = [accuracy_at_budget(c, a, b) for b in budgets]
    out["shared_range_budget_accuracy"][name] = (
      [accuracy_at_budget(c, a, b) for b in out["shared_range_budgets"]] if shared else None
    )
  return out


# ----------------------------------------------------------------------- accuracy during training
# Fig. 2's last panel: test accuracy against the training FLOPs spent so far, from one seed's entry of
# results.json (`workflows.experiment`). The same points serve the figure and the "FLOPs to first reach x %
# of the end-to-end accuracy" numbers.


def quicknet_after_blocks(seed: dict) -> tuple[np.ndarray, np.ndarray]:
  """(training FLOPs so far, test accuracy) of the QuickNet cut after each trained block (its commitment
  head trained, its threshold chosen on validation). Seeds recorded before the per-block evaluation
  existed give the two exact points: block 0 alone, and the whole net.

  Args:
    seed: one seed's QuickNet entry of results.json.

  Returns:
    (cumulative training FLOPs, test accuracy), one point per block.
  """
  spent = np.cumsum([cost_model.total(part) for part in seed["training_flops_parts"]])
  if "test_accuracy_after_block" in seed:
    accuracy = np.asarray(seed["test_accuracy_after_block"], np.float64)
    return spent[: len(accuracy)], accuracy
  return spent[[0, -1]], np.asarray([seed["per_exit_test_accuracy"][0], seed["test_accuracy"]], np.float64)


def quicknet_every_epoch(seed: dict) -> Optional[tuple[np.ndarray, np.ndarray]]:
  """(training FLOPs so far, test accuracy) after every block epoch (the cascade of the frozen blocks plus
  the block in training, `workflows.deployable_curve.DeployableCurve`) merged with the after-block points, in training
  order; None for a run without `--deploy_curve`. A decoupled run (every block at once) gives the whole
  cascade after every epoch, then the finished QuickNet.

  Args:
    seed: one seed's QuickNet entry of results.json.

  Returns:
    (cumulative training FLOPs, test accuracy) in training order, or None.
  """
  if seed.get("network_epochs"):
    points = [
      (epoch["training_flops_so_far"], epoch["cascade_test_accuracy"])
      for epoch in seed["network_epochs"]
      if "cascade_test_accuracy" in epoch
    ]
    if not points:
      return None
    flops, accuracy = zip(*points, (seed["training_flops"], seed["test_accuracy"]))
    return np.asarray(flops, np.float64), np.asarray(accuracy, np.float64)
  points = [
    (epoch["training_flops_so_far"], epoch["cascade_test_accuracy"])
    for block in seed.get("history", [])
    for epoch in block["epochs"]
    if "cascade_test_accuracy" in epoch
  ]
  if not points:
    return None
  points += list(zip(*quicknet_after_blocks(seed)))
  points.sort(key=lambda p: p[0])  # stable: an after-block point follows the epochs it ends
  flops, accuracy = zip(*points)
  return np.asarray(flops, np.float64), np.asarray(accuracy, np.float64)


def end_to_end_every_epoch(seed: dict) -> Optional[tuple[np.ndarray, np.ndarray, str]]:
  """(training FLOPs so far, accuracy, "test" or "validation") after every end-to-end epoch (every epoch
  costs the same); "validation" where the run logged no test accuracy; None without a history.

  Args:
    seed: one seed's end-to-end entry of results.json.

  Returns:
    (cumulative training FLOPs, accuracy, which split the accuracy is on), or None.
  """
  history = seed.get("history", [])
  if not history:
    return None
  per_epoch = seed["training_flops"] / max(seed["epochs"], 1)
  epochs = np.asarray([h["epoch"] for h in history], np.float64)
  if all("test_accuracy" in h for h in history):
    return epochs * per_epoch, np.asarray([h["test_accuracy"] for h in history], np.float64), "test"
  return epochs * per_epoch, np.asarray([h["val_accuracy"] for h in history], np.float64), "validation"


def first_reach(flops, accuracy, target: float) -> Optional[float]:
  """The training FLOPs at the first point of a training curve whose accuracy is ≥ `target`, or None
  when it never gets there.

  Args:
    flops: training FLOPs spent at each point, in training order.
    accuracy: the accuracy at each point.
    target: the accuracy to reach.

  Returns:
    The FLOPs of the first point at or above `target`, or None.
  """
  flops, accuracy = np.asarray(flops, np.float64), np.asarray(accuracy, np.float64)
  reached = np.flatnonzero(accuracy >= target)
  return float(flops[reached[0]]) if reached.size else None

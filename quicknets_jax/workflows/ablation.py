"""The QuickNet+ ablation: the faithful QuickNet, each lever alone and the combination chosen on
validation, each an ordinary experiment run in WORKDIR/<variant>/ (so a stopped ablation resumes).

The combination is chosen without the test split: the learned-set budget (the lever aimed at the
training cost) plus every other lever whose mean validation accuracy beats the faithful QuickNet's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Optional

import numpy as np

from quicknets_jax.core import curves
from quicknets_jax.reporting.tables import ablation_markdown
from quicknets_jax.workflows.experiment import train_and_evaluate
from quicknets_jax.workflows.experiment_config import ExperimentConfig

# Each lever alone, at a setting fixed before any run (none was tuned on the test split).
LEVERS = {
  "budget": dict(budget="learned_set"),  # stop a block when its validation learned set stalls
  "holdout": dict(commit_holdout=0.1),  # commitment heads learn from unseen samples' correctness
  "soft_removal": dict(keep_learned=0.1),  # 10% of each learned set stays for the next blocks
  "wider_later": dict(later_width=300),  # blocks 1.. twice as wide (they see few samples)
  "finetune": dict(finetune_epochs=2),  # joint fine-tuning of every block, then the heads again
}
COST_LEVER = "budget"


def choose_combination(faithful: dict, levers: dict) -> list:
  """The levers of the best combination, from validation accuracy only (see the module docstring).

  Args:
    faithful: the faithful QuickNet's results.json.
    levers: results.json of each lever alone, by lever name.

  Returns:
    The chosen lever names: the cost lever first, then every lever whose validation accuracy at its
    threshold beats the faithful QuickNet's.
  """
  reference = faithful["quicknet"]["val_accuracy_at_threshold"]
  return [COST_LEVER] + [
    name
    for name, results in levers.items()
    if name != COST_LEVER and results["quicknet"]["val_accuracy_at_threshold"] > reference
  ]


def _curve(seed: dict, key: str, full_cost: float) -> tuple[np.ndarray, np.ndarray]:
  return (
    np.asarray([p["inference_flops"] for p in seed[key]]) / full_cost,
    np.asarray([p["test_accuracy"] for p in seed[key]]),
  )


def curve_mean_accuracy(per_seed: list, full_cost: float, key: str = "curve") -> float:
  """Mean over seeds of each seed's cost–accuracy curve's mean accuracy over its own cost range.

  Args:
    per_seed: the QuickNet's per-seed results.
    full_cost: the end-to-end network's inference FLOPs (costs are read as fractions of it).
    key: the curve's key ("curve", or "curve_confidence_only").

  Returns:
    The mean accuracy.
  """
  return float(np.mean([curves.mean_accuracy(*_curve(seed, key, full_cost)) for seed in per_seed]))


def commitment_margin(per_seed: list, full_cost: float, points: int = 21) -> float:
  """The smallest (over budgets in the range both curves cover) mean-over-seeds gap between the
  commitment rule's and the confidence-only rule's test accuracy: > 0 means above at every budget.

  Args:
    per_seed: the QuickNet's per-seed results.
    full_cost: the end-to-end network's inference FLOPs.
    points: budgets compared across the shared range.

  Returns:
    The smallest gap, in accuracy.
  """
  gaps = [
    curves.gap_between(_curve(seed, "curve", full_cost), _curve(seed, "curve_confidence_only", full_cost), points)
    for seed in per_seed
  ]
  return float(np.min(np.mean(gaps, axis=0)))


def _row(name: str, results: dict, e2e: dict) -> dict:
  q = results["quicknet"]
  seeds = q["per_seed"]
  full = e2e["inference_flops"]
  return dict(
    variant=name,
    test_accuracy=q["test_accuracy"],
    test_accuracy_std=q["test_accuracy_std"],
    val_accuracy=q["val_accuracy_at_threshold"],
    training_flops=q["training_flops"],
    training_flops_ratio=e2e["training_flops"] / q["training_flops"],
    train_seconds=q["train_seconds"],
    train_seconds_ratio=e2e["train_seconds"] / q["train_seconds"],
    inference_flops=q["inference_flops"],
    inference_flops_ratio=full / q["inference_flops"],
    curve_mean_accuracy=curve_mean_accuracy(seeds, full),
    commitment_margin=commitment_margin(seeds, full),
    epochs_per_block=q["epochs_per_block"],
  )


def run_ablation(
  workdir: str, seeds: tuple, data_dir: Optional[str] = None, log: Callable[[str], None] = print
) -> dict:
  """Runs (or resumes) every variant and writes WORKDIR/ablation.json and ablation.md.

  Args:
    workdir: the ablation's folder; each variant runs in WORKDIR/<variant>/.
    seeds: the seeds every variant runs.
    data_dir: where Fashion-MNIST is (None: found as usual).
    log: where progress lines go.

  Returns:
    The contents of ablation.json: seeds, the end-to-end numbers, the chosen combination and its
    flags, one row per variant and (with the wider lever) its own end-to-end baseline.
  """
  base = ExperimentConfig().replace(dataset="fashion_mnist", data_dir=data_dir, seeds=seeds, end_to_end=False)

  def run(name: str, **levers) -> dict:
    log(f"== {name}: {levers or 'faithful'}")
    return train_and_evaluate(base.replace(**levers), os.path.join(workdir, name), log=log)

  faithful = run("faithful", end_to_end=True)
  e2e = faithful["end_to_end"]
  # the wider backbone gets its own end-to-end baseline beside the paper's
  levers = {name: run(name, **kwargs, end_to_end=name == "wider_later") for name, kwargs in LEVERS.items()}
  combination = choose_combination(faithful, levers)
  combined_levers = {k: v for name in combination for k, v in LEVERS[name].items()}
  combined = run("combination", **combined_levers)
  rows = [_row("faithful QuickNet", faithful, e2e)] + [_row(n, r, e2e) for n, r in levers.items()]
  rows.append(_row("combination", combined, e2e))
  result = dict(
    seeds=list(seeds),
    end_to_end=dict(
      (k, e2e[k])
      for k in ("test_accuracy", "test_accuracy_std", "training_flops", "train_seconds", "inference_flops", "epochs")
    ),
    combination=combination,
    combination_flags=combined_levers,
    rows=rows,
  )
  if "end_to_end" in levers.get("wider_later", {}):
    result["wider_end_to_end"] = levers["wider_later"]["end_to_end"]
  with open(os.path.join(workdir, "ablation.json"), "w") as f:
    json.dump(result, f, indent=1)
  with open(os.path.join(workdir, "ablation.md"), "w") as f:
    f.write(ablation_markdown(rows, e2e, combination, list(seeds)))
  log(f"wrote {os.path.join(workdir, 'ablation.md')}; combination chosen on validation: {combination}")
  return result

"""`python -m experiments.quicknet_plus --workdir=runs/quicknet_plus`: the QuickNet+ ablation (issue 8).

Trains, on the real Fashion-MNIST and the same seeds, the end-to-end baseline, the faithful QuickNet,
each QuickNet+ lever alone and the combination chosen on validation, then writes
WORKDIR/ablation.json and ablation.md (the README table). Every variant is an ordinary experiment run
in WORKDIR/<variant>/ (results.json, checkpoints), so a stopped ablation resumes where it was.

The combination is chosen without the test split: the learned-set budget (the lever aimed at the
training cost) plus every other lever whose mean validation accuracy beats the faithful QuickNet's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import numpy as np
from absl import app, flags, logging

from quicknets_jax import study
from quicknets_jax.experiment import ExperimentConfig, train_and_evaluate
from quicknets_jax.progress import stderr_log

flags.DEFINE_string("workdir", None, "Where every variant's run and ablation.json/.md go.", required=True)
flags.DEFINE_list("seeds", ["0", "1", "2", "3", "4"], "Seeds of every variant.")
flags.DEFINE_string("data_dir", None, "Optional directory with the four IDX files (default: Debian's copy).")
FLAGS = flags.FLAGS

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
  """The levers of the best combination, from validation accuracy only (see the module docstring)."""
  reference = faithful["quicknet"]["val_accuracy_at_threshold"]
  return [COST_LEVER] + [name for name, results in levers.items()
                         if name != COST_LEVER and results["quicknet"]["val_accuracy_at_threshold"] > reference]


def _shared_range_mean(per_seed: list, full_cost: float, key: str = "curve") -> float:
  """Mean over seeds of the cost–accuracy curve's mean accuracy over the cost range every curve of
  the seed's run covers (its area divided by the range width), costs in fractions of `full_cost`."""
  values = []
  for seed in per_seed:
    costs = np.asarray([p["inference_flops"] for p in seed[key]]) / full_cost
    accuracy = np.asarray([p["test_accuracy"] for p in seed[key]])
    low, high = float(costs.min()), float(costs.max())
    values.append(study.area_under_curve(costs, accuracy, low, high) / max(high - low, 1e-12)
                  if high > low else float(accuracy.mean()))
  return float(np.mean(values))


def commitment_margin(per_seed: list, full_cost: float, points: int = 21) -> float:
  """The smallest (over budgets in the range both curves cover) mean-over-seeds gap between the
  commitment rule's and the confidence-only rule's test accuracy: > 0 means above at every budget."""
  gaps = []
  for seed in per_seed:
    curves = {}
    for key in ("curve", "curve_confidence_only"):
      costs = np.asarray([p["inference_flops"] for p in seed[key]]) / full_cost
      curves[key] = (costs, np.asarray([p["test_accuracy"] for p in seed[key]]))
    low = max(c.min() for c, _ in curves.values())
    high = min(c.max() for c, _ in curves.values())
    budgets = np.linspace(low, high, points)
    reads = {}
    for key, (costs, accuracy) in curves.items():
      order = np.argsort(costs)
      reads[key] = np.interp(budgets, costs[order], accuracy[order])
    gaps.append(reads["curve"] - reads["curve_confidence_only"])
  return float(np.min(np.mean(gaps, axis=0)))


def _row(name: str, results: dict, e2e: dict) -> dict:
  q = results["quicknet"]
  seeds = q["per_seed"]
  full = e2e["inference_flops"]
  return dict(variant=name, test_accuracy=q["test_accuracy"], test_accuracy_std=q["test_accuracy_std"],
              val_accuracy=q["val_accuracy_at_threshold"], training_flops=q["training_flops"],
              training_flops_ratio=e2e["training_flops"] / q["training_flops"],
              train_seconds=q["train_seconds"], train_seconds_ratio=e2e["train_seconds"] / q["train_seconds"],
              inference_flops=q["inference_flops"], inference_flops_ratio=full / q["inference_flops"],
              curve_mean_accuracy=_shared_range_mean(seeds, full),
              commitment_margin=commitment_margin(seeds, full),
              epochs_per_block=q["epochs_per_block"])


def ablation_markdown(rows: list, e2e: dict, combination: list, seeds: list) -> str:
  lines = [f"Real Fashion-MNIST, seeds {','.join(map(str, seeds))} (mean ± std of test accuracy; other columns are "
           "means). Ratios are end-to-end / variant (higher = cheaper). Curve = mean test accuracy of the "
           "cost–accuracy curve over its own cost range; commitment margin = smallest gap (over budgets) "
           "between the commitment rule's and confidence-only's curve (> 0: above at every budget).", "",
           "| Variant | Test acc. (%) | Val acc. (%) | Training FLOPs | ratio | Train s | ratio | Inference "
           "MFLOPs | ratio | Curve acc. (%) | Commitment margin (pp) | Epochs per block |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|",
           f"| end-to-end | {100 * e2e['test_accuracy']:.2f} ± {100 * e2e['test_accuracy_std']:.2f} | – | "
           f"{e2e['training_flops']:.3g} | 1.00 | {e2e['train_seconds']:.1f} | 1.00 | "
           f"{e2e['inference_flops'] / 1e6:.3f} | 1.00 | – | – | {e2e['epochs']:.1f} |"]
  for r in rows:
    name = r["variant"] + (f" ({' + '.join(combination)})" if r["variant"] == "combination" else "")
    lines.append(f"| {name} | {100 * r['test_accuracy']:.2f} ± {100 * r['test_accuracy_std']:.2f} | "
                 f"{100 * r['val_accuracy']:.2f} | {r['training_flops']:.3g} | {r['training_flops_ratio']:.2f} | "
                 f"{r['train_seconds']:.1f} | {r['train_seconds_ratio']:.2f} | {r['inference_flops'] / 1e6:.3f} | "
                 f"{r['inference_flops_ratio']:.2f} | {100 * r['curve_mean_accuracy']:.2f} | "
                 f"{100 * r['commitment_margin']:+.2f} | {', '.join(f'{e:.1f}' for e in r['epochs_per_block'])} |")
  return "\n".join(lines) + "\n"


def run_ablation(workdir: str, seeds: tuple, data_dir=None, log=stderr_log) -> dict:
  """Runs (or resumes) every variant and writes WORKDIR/ablation.json and ablation.md."""
  base = ExperimentConfig(dataset="fashion_mnist", data_dir=data_dir, seeds=seeds, end_to_end=False)

  def run(name: str, **levers) -> dict:
    config = dataclasses.replace(base, **levers)
    log(f"== {name}: {levers or 'faithful'}")
    return train_and_evaluate(config, os.path.join(workdir, name), log=log)

  faithful = run("faithful", end_to_end=True)
  e2e = faithful["end_to_end"]
  # the wider backbone gets its own end-to-end baseline beside the paper's
  levers = {name: run(name, **kwargs, end_to_end=name == "wider_later") for name, kwargs in LEVERS.items()}
  combination = choose_combination(faithful, levers)
  combined_levers = {k: v for name in combination for k, v in LEVERS[name].items()}
  combined = run("combination", **combined_levers)
  rows = [_row("faithful QuickNet", faithful, e2e)] + [_row(n, r, e2e) for n, r in levers.items()]
  rows.append(_row("combination", combined, e2e))
  result = dict(seeds=list(seeds), end_to_end=dict((k, e2e[k]) for k in (
      "test_accuracy", "test_accuracy_std", "training_flops", "train_seconds", "inference_flops", "epochs")),
                combination=combination, combination_flags=combined_levers, rows=rows)
  if "end_to_end" in levers.get("wider_later", {}):
    result["wider_end_to_end"] = levers["wider_later"]["end_to_end"]
  with open(os.path.join(workdir, "ablation.json"), "w") as f:
    json.dump(result, f, indent=1)
  with open(os.path.join(workdir, "ablation.md"), "w") as f:
    f.write(ablation_markdown(rows, e2e, combination, list(seeds)))
  log(f"wrote {os.path.join(workdir, 'ablation.md')}; combination chosen on validation: {combination}")
  return result


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  try:
    seeds = tuple(int(s) for s in FLAGS.seeds)
  except ValueError:
    raise SystemExit(f"error: --seeds must be integers separated by commas, got {','.join(FLAGS.seeds)!r}")
  try:
    run_ablation(FLAGS.workdir, seeds, FLAGS.data_dir)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(1)
  with open(os.path.join(FLAGS.workdir, "ablation.md")) as f:
    print(f.read())


if __name__ == "__main__":
  app.run(main)

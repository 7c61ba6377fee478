"""The convolutional QuickNet against its end-to-end VGG on real images: the paper's VGG-11 /
CIFAR-10 claims, tested on the datasets these machines have.

`run_conv_study` runs, each as an ordinary resumable run under WORKDIR/:

- per dataset, the comparison (`workflows.experiment.train_and_evaluate`, WORKDIR/<dataset>/) with the
  deployable cascade measured after every block epoch (`workflows.deployable_curve.DeployableCurve`), then the trained
  cascade's wall-clock inference against the end-to-end network (`workflows.inference_timing`, per seed);
- QuickNet+ variants of the first dataset's QuickNet (WORKDIR/<dataset>_<variant>/, no baseline of
  their own), one chosen on the validation split only (`choose_variant`);
- the commitment study of a jointly trained (SDN-style) multi-exit conv net (`workflows.study`,
  WORKDIR/commitment/);

and writes WORKDIR/conv_study.json and conv_study.md: a table per dataset, the "deploy while
training" numbers (training FLOPs each method spends before it first reaches 95 % / 99 % of the
end-to-end network's final test accuracy, paired per seed), the commitment question's paired
differences, and the verdict against the paper's numbers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Optional

from quicknets_jax.core import curves, stats
from quicknets_jax.core.progress import Log
from quicknets_jax.reporting import figures
from quicknets_jax.reporting.tables import conv_study_markdown, table1_row
from quicknets_jax.workflows.experiment import train_and_evaluate
from quicknets_jax.workflows.experiment_config import ExperimentConfig, StudyConfig
from quicknets_jax.workflows.inference_timing import cascade_speedup
from quicknets_jax.workflows.study import run_study
from quicknets_jax.workflows.trained import frozen_blocks
from quicknets_jax.workflows.workdir import finished, machine_description, read_json, saved, write_results

# The paper's VGG-11 / CIFAR-10 row (Table 1) and its figures' claims.
PAPER = dict(training_flops_ratio=1.58, inference_flops_ratio=2.21, accuracy_delta=-1.34)
REACH_FRACTIONS = (0.95, 0.99)
# Beyond the paper: is the chosen QuickNet+ variant at least twice as fast to train on the clock, at an
# accuracy no lower than the end-to-end network's?
WALL_CLOCK_SPEEDUP = 2.0
# The QuickNet+ variant aimed at the training cost, fixed before any run (cached prefixes are on in the
# faithful QuickNet already): the learned-set budget at the ablation's setting (`workflows.ablation`) ends a
# block when its validation learned set (correct, confidence > τ) grows by less than 1 point for 2 epochs.
VARIANTS = {"budget": dict(budget="learned_set", budget_min_delta=0.01, budget_patience=2)}


def reach_costs(results: dict, fractions: Sequence[float] = REACH_FRACTIONS) -> dict:
  """Training FLOPs each method spends before its test accuracy first reaches a fraction of the end-to-end's.

  For every fraction, the target is `fraction` × the end-to-end network's final test accuracy (the same
  seed's: paired). The QuickNet's curve is its deployable cascade after every block epoch where the run
  measured it (else after every block); the end-to-end curve is after every epoch.

  Args:
    results: a comparison's results.json dict, with per-seed entries of both methods.
    fractions: the fractions of the end-to-end accuracy to reach.

  Returns:
    A dict keyed by each fraction as a string (`f"{fraction:g}"`, e.g. "0.95"). Each value is a dict with
    "quicknet" and "end_to_end" (`stats.mean_std` of the FLOPs), "ratio" (mean_std of end-to-end /
    QuickNet), "not_reached" (per method, the seeds that never reached the target) and "per_seed" (one
    dict per seed with its target, both FLOPs and their ratio; None where not reached).
  """
  pairs = list(zip(results["quicknet"]["per_seed"], results["end_to_end"]["per_seed"]))
  out = {}
  for fraction in fractions:
    per_seed = []
    for q_seed, e_seed in pairs:
      target = fraction * e_seed["test_accuracy"]
      q_curve = curves.quicknet_every_epoch(q_seed) or curves.quicknet_after_blocks(q_seed)
      e_curve = curves.end_to_end_every_epoch(e_seed)
      q_flops = curves.first_reach(*q_curve[:2], target)
      e_flops = None if e_curve is None else curves.first_reach(*e_curve[:2], target)
      ratio = None if q_flops is None or e_flops is None else e_flops / q_flops
      per_seed.append(dict(seed=q_seed["seed"], target=target, quicknet=q_flops, end_to_end=e_flops, ratio=ratio))
    out[f"{fraction:g}"] = dict(
      quicknet=stats.mean_std([s["quicknet"] for s in per_seed]),
      end_to_end=stats.mean_std([s["end_to_end"] for s in per_seed]),
      ratio=stats.mean_std([s["ratio"] for s in per_seed]),
      not_reached={m: [s["seed"] for s in per_seed if s[m] is None] for m in ("quicknet", "end_to_end")},
      per_seed=per_seed,
    )
  return out


def measure_inference(config: ExperimentConfig, workdir: str, log: Log, repeats: int = 11) -> list:
  """The trained cascade of every seed against the end-to-end network, on the clock.

  On the test split at the seed's validation-chosen threshold (`workflows.inference_timing`); each
  seed's result is cached in WORKDIR/seed_<s>/inference_speed.json and read back when present.

  Args:
    config: the comparison's experiment config (its data, model, seeds, exit rule and batch size).
    workdir: the comparison's run directory.
    log: where progress goes.
    repeats: timed rounds of each comparison.

  Returns:
    One dict per seed, in `config.seeds` order, with "seed" and the measured speed-up
    (`inference_timing.cascade_speedup`'s fields).
  """
  dataset = config.data.load()
  model = config.model.build(dataset.train.images.shape[1:], dataset.num_classes)
  out = []
  for seed in config.seeds:
    seed_dir = os.path.join(workdir, f"seed_{seed}")
    path = os.path.join(seed_dir, "inference_speed.json")
    if finished(path):
      out.append(finished(path))
      continue
    threshold = read_json(os.path.join(seed_dir, "quicknet.json"))["exit_threshold"]
    log(f"timing seed {seed}'s cascade against the end-to-end network ({repeats} rounds)")
    speed = cascade_speedup(
      model,
      frozen_blocks(model, seed_dir),
      dataset.test,
      threshold,
      config.exit_rule.fallback,
      batch_size=config.fit.eval_batch_size,
      repeats=repeats,
    )
    out.append(saved(path, dict(seed=seed, **speed)))
  return out


def dataset_row(results: dict, speeds: Sequence[dict]) -> dict:
  """One dataset's table row: Table 1's numbers, the measured inference speed-up and the reach costs.

  Args:
    results: the dataset's comparison results.json dict.
    speeds: `measure_inference`'s per-seed measurements.

  Returns:
    `reporting.tables.table1_row` of the results, with the accuracy difference (plain and paired), the
    inference speed-up and FLOP ratio over seeds, the mismatched predictions, the paired training-time
    ratio, the samples learned per block and `reach_costs`.
  """
  row = table1_row(results, results["model"], "appendix")
  row.update(
    accuracy_delta=row["quicknet_accuracy"] - row["end_to_end_accuracy"],
    accuracy_delta_paired=stats.mean_std(
      [
        q["test_accuracy"] - e["test_accuracy"]
        for q, e in zip(results["quicknet"]["per_seed"], results["end_to_end"]["per_seed"])
      ]
    ),
    inference_speedup=stats.mean_std([s["speedup"] for s in speeds]),
    inference_flop_ratio_cascade=stats.mean_std([s["flop_ratio"] for s in speeds]),
    inference_mismatches=int(sum(s["mismatches"] for s in speeds)),
    train_seconds_ratio_paired=stats.mean_std(
      [
        e["train_seconds"] / q["train_seconds"]
        for q, e in zip(results["quicknet"]["per_seed"], results["end_to_end"]["per_seed"])
      ]
    ),
    learned_per_block=results["quicknet"]["learned_per_block"],
    reach=reach_costs(results),
  )
  return row


def _validation_accuracy(results: dict) -> float:
  return float(results["quicknet"]["val_accuracy_at_threshold"])


def end_to_end_validation_accuracy(results: dict) -> float:
  """The end-to-end network's validation accuracy at its kept (best) epoch, mean over seeds.

  Args:
    results: a comparison's results.json dict, with the end-to-end network's per-seed histories.

  Returns:
    The mean over seeds.
  """
  values = []
  for seed in results["end_to_end"]["per_seed"]:
    best = next(h for h in seed["history"] if h["epoch"] == seed["best_epoch"])
    values.append(best["val_accuracy"])
  return stats.mean(values)


def choose_variant(candidates: dict, end_to_end_val_accuracy: float) -> str:
  """The QuickNet variant to report, from the validation split only: the cheapest to train (training
  FLOPs) of those whose validation accuracy at their operating threshold is at least the end-to-end
  network's; if none is, the most accurate on validation.

  Args:
    candidates: name -> results.json dict (the faithful QuickNet among them).
    end_to_end_val_accuracy: `end_to_end_validation_accuracy` of the baseline.

  Returns:
    The chosen variant's name.
  """
  good = [n for n, r in candidates.items() if _validation_accuracy(r) >= end_to_end_val_accuracy]
  if good:
    return min(good, key=lambda n: candidates[n]["quicknet"]["training_flops"])
  return max(candidates, key=lambda n: _validation_accuracy(candidates[n]))


def variant_row(name: str, results: dict, baseline: dict) -> dict:
  """A QuickNet variant against the baseline run's end-to-end network (same seeds).

  Args:
    name: the variant's name.
    results: the variant's results.json dict.
    baseline: the results.json dict of the run with the end-to-end network.

  Returns:
    The variant's row, with its test and validation accuracy, the paired accuracy difference, and the
    end-to-end / QuickNet ratios of training FLOPs, training seconds (plain and paired) and inference
    FLOPs, with its epochs and training samples per block.
  """
  q, e = results["quicknet"], baseline["end_to_end"]
  pairs = list(zip(q["per_seed"], e["per_seed"]))
  return dict(
    variant=name,
    test_accuracy=q["test_accuracy"],
    test_accuracy_std=q["test_accuracy_std"],
    accuracy_delta_paired=stats.mean_std([a["test_accuracy"] - b["test_accuracy"] for a, b in pairs]),
    val_accuracy=_validation_accuracy(results),
    training_flops_ratio=e["training_flops"] / q["training_flops"],
    train_seconds_ratio=e["train_seconds"] / q["train_seconds"],
    train_seconds_ratio_paired=stats.mean_std([b["train_seconds"] / a["train_seconds"] for a, b in pairs]),
    inference_flops_ratio=e["inference_flops"] / q["inference_flops"],
    epochs_per_block=q["epochs_per_block"],
    train_samples_per_block=q["train_samples_per_block"],
  )


def verdict(rows: Sequence[dict], plus: Optional[dict], commitment: Optional[dict]) -> list:
  """The paper's claims against what was measured here, one entry per claim.

  Args:
    rows: `dataset_row`'s rows, each with its "dataset".
    plus: the QuickNet+ part of the summary (with its "chosen_row"), or None.
    commitment: the commitment study's summary, or None.

  Returns:
    A list of dicts with "claim", "paper" (the paper's number or statement), "measured" (per dataset)
    and "holds" ("yes", "no" or "partly").
  """

  def per_dataset(fn):
    return {r["dataset"]: fn(r) for r in rows}

  def holds(flags):
    flags = list(flags)
    return "yes" if all(flags) else ("no" if not any(flags) else "partly")

  out = [
    dict(
      claim="training cost lower (FLOPs, end-to-end / QuickNet)",
      paper=f"{PAPER['training_flops_ratio']}×",
      measured=per_dataset(lambda r: r["training_flops_ratio"]),
      holds=holds(r["training_flops_ratio"] > 1.0 for r in rows),
    ),
    dict(
      claim="inference cost lower (FLOPs, end-to-end / QuickNet, threshold chosen on validation)",
      paper=f"{PAPER['inference_flops_ratio']}×",
      measured=per_dataset(lambda r: r["inference_flops_ratio"]),
      holds=holds(r["inference_flops_ratio"] > 1.0 for r in rows),
    ),
    dict(
      claim="accuracy cost of block-wise training (QuickNet − end-to-end, points)",
      paper=f"{PAPER['accuracy_delta']:+.2f}",
      measured=per_dataset(lambda r: 100 * r["accuracy_delta"]),
      # the claim is a loss of about this size or less
      holds=holds(100 * r["accuracy_delta"] >= PAPER["accuracy_delta"] for r in rows),
    ),
    dict(
      claim="Fig. 2: a deployable QuickNet reaches a given accuracy with less training (FLOPs to 95 % "
      "of the end-to-end accuracy, end-to-end / QuickNet)",
      paper="yes (qualitative)",
      measured=per_dataset(lambda r: (r["reach"]["0.95"]["ratio"] or {}).get("mean")),
      holds=holds(((r["reach"]["0.95"]["ratio"] or {}).get("mean") or 0.0) > 1.0 for r in rows),
    ),
  ]
  if commitment is not None:
    diffs = commitment["differences"]["commitment_minus_confidence"]["matched_budget_accuracy"]
    low = diffs[0]  # the lowest budget, where the paper says the heads help
    out.append(
      dict(
        claim="Fig. 4: commitment heads raise the accuracy of a jointly trained multi-exit net at low budgets "
        "(commitment − confidence only, points, at 25/50/75 % of the full cost; 'partly': above 0 by less "
        "than the seeds' std)",
        paper="yes, at low budgets; similar at high",
        measured={commitment["dataset"]: [None if d is None else 100 * d["mean"] for d in diffs]},
        holds="no" if low is None or low["mean"] <= 0 else ("yes" if low["mean"] > low["std"] else "partly"),
      )
    )
  if plus is not None:
    row = plus["chosen_row"]
    out.append(
      dict(
        claim=f"QuickNet+ trains ≥ {WALL_CLOCK_SPEEDUP:g}× faster on the clock at accuracy ≥ end-to-end's "
        f"(wall-clock ratio / accuracy Δ in points; {plus['dataset']}, variant chosen on validation: "
        f"{row['variant']})",
        paper="(not claimed: the paper reports FLOPs only)",
        measured={plus["dataset"]: [row["train_seconds_ratio"], 100 * row["accuracy_delta_paired"]["mean"]]},
        holds=holds([row["train_seconds_ratio"] >= WALL_CLOCK_SPEEDUP and row["accuracy_delta_paired"]["mean"] >= 0]),
      )
    )
  return out


def run_conv_study(
  workdir: str,
  experiments: dict,
  variants: Optional[dict] = None,
  commitment: Optional[StudyConfig] = None,
  log: Log = print,
  speed_repeats: int = 11,
) -> dict:
  """Runs (or resumes) the study and writes WORKDIR/conv_study.json and conv_study.md (module doc).

  Args:
    workdir: where every part's run and the summary go.
    experiments: dataset name -> the ExperimentConfig of its comparison (QuickNet and end-to-end).
    variants: QuickNet+ variant name -> flat overrides (flag names) of the first dataset's config;
      they run without a baseline of their own and one is chosen on validation (`choose_variant`).
    commitment: the StudyConfig of the jointly trained conv net, or None to leave that part out.
    log: where progress goes.
    speed_repeats: timed rounds of the inference comparison.

  Returns:
    The summary written to conv_study.json, with the machine, the paper's numbers, the reach fractions, a
    row per dataset, the QuickNet+ part (None without variants), the commitment part (None without it) and
    the verdict.
  """
  os.makedirs(workdir, exist_ok=True)
  rows, results_by_dataset = [], {}
  for name, config in experiments.items():
    log(f"== {name}: QuickNet and end-to-end, seeds {list(config.seeds)}")
    results = train_and_evaluate(config, os.path.join(workdir, name), log=log)
    speeds = measure_inference(config, os.path.join(workdir, name), log, speed_repeats)
    results_by_dataset[name] = results
    rows.append(dict(dataset_row(results, speeds), workdir=name, inference_speed=speeds))
  plus = None
  if variants:
    first = next(iter(experiments))
    baseline, base_config = results_by_dataset[first], experiments[first]
    candidates = {"faithful": baseline}
    for variant, overrides in variants.items():
      log(f"== {first} QuickNet+ {variant}: {overrides}")
      candidates[variant] = train_and_evaluate(
        base_config.replace(end_to_end=False, **overrides), os.path.join(workdir, f"{first}_{variant}"), log=log
      )
    e2e_val = end_to_end_validation_accuracy(baseline)
    chosen = choose_variant(candidates, e2e_val)
    variant_rows = [variant_row(n, r, baseline) for n, r in candidates.items()]
    plus = dict(
      dataset=first,
      variants={"faithful": {}, **variants},
      end_to_end_val_accuracy=e2e_val,
      chosen=chosen,
      rows=variant_rows,
      chosen_row=next(r for r in variant_rows if r["variant"] == chosen),
    )
  commitment_results = None
  if commitment is not None:
    log(f"== commitment study: {', '.join(commitment.methods)} on {commitment.data.dataset}")
    study = run_study(commitment, os.path.join(workdir, "commitment"), log=log)
    commitment_results = {k: v for k, v in study["joint"].items() if k != "per_seed"}
    commitment_results.update(dataset=study["dataset"], seeds=study["seeds"], rules=study["rules"])
  summary = dict(
    machine=machine_description(),
    paper=PAPER,
    reach_fractions=list(REACH_FRACTIONS),
    rows=rows,
    plus=plus,
    commitment=commitment_results,
    verdict=verdict(rows, plus, commitment_results),
  )
  write_results(workdir, "conv_study", summary, conv_study_markdown(summary), log)
  return summary


def render_figures(workdir: str, summary: dict, out_dir: str) -> list:
  """Writes the study's figures under `out_dir` and returns their paths.

  Per dataset, conv_<dataset>_deploy.png (`figures.deploy_while_training_figure`) and
  conv_<dataset>_training.png (`figures.training_figure`); with a commitment part, conv_commitment.png
  (`figures.commitment_curves_figure`).

  Args:
    workdir: the study's directory (each part's results.json is read from it).
    summary: what `run_conv_study` returns (or conv_study.json holds).
    out_dir: the folder the PNGs go to (created if missing).

  Returns:
    The paths of the files written, in the order above.
  """
  os.makedirs(out_dir, exist_ok=True)
  built = []
  for row in summary["rows"]:
    results = read_json(os.path.join(workdir, row["workdir"], "results.json"))
    built.append((f"conv_{row['dataset']}_deploy.png", figures.deploy_while_training_figure(results)))
    built.append((f"conv_{row['dataset']}_training.png", figures.training_figure(results)))
  if summary.get("commitment") is not None:
    study = read_json(os.path.join(workdir, "commitment", "results.json"))
    built.append(("conv_commitment.png", figures.commitment_curves_figure(study)))
  paths = []
  for name, fig in built:
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=figures.DPI)
    paths.append(path)
  return paths

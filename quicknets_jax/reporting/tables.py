"""Markdown tables from results dicts: the paper's Table 1 layout with the per-block breakdown of the
training cost (`results_markdown`), the commitment study (`study_markdown`), the QuickNet+ ablation
(`ablation_markdown`), and the Figures section of results.md (`figures_markdown`).

Layer 3 (beside `algorithms/`): pure formatting of plain dicts; imports only `core/` and `data/`.
"""

from __future__ import annotations

import os

from quicknets_jax.core import costs
from quicknets_jax.data.datasets import PRETTY_NAMES


def _pct(x):
  return f"{100 * x:.2f}"


def results_markdown(results: dict) -> str:
  """Table 1 of the paper (accuracy, params, inference cost, training cost) plus wall-clock, ratios and
  each block's share of the training cost.

  Args:
    results: a run's results (results.json).

  Returns:
    The markdown of results.md.
  """
  name = PRETTY_NAMES.get(results["dataset"], results["dataset"])
  q, e = results["quicknet"], results.get("end_to_end")
  n = len(results["seeds"])
  lines = [
    f"# {name}: QuickNet vs end-to-end ({results['model']}, {n} seed{'s' * (n > 1)})",
    "",
    "| Data | Method | Accuracy (%) | Parameters (M) | Inference cost (MFLOPs) | Training cost (FLOPs) "
    "| Wall-clock (s) |",
    "|---|---|---|---|---|---|---|",
  ]
  rows = [("QuickNet", q)] + ([("End-to-End", e)] if e else [])
  macs = all("inference_macs" in r for _, r in rows)
  if macs:  # the paper's convention beside ours
    lines[2] = lines[2].replace("| Training cost", "| Inference (M multiply-adds) | Training cost")
    lines[3] += "---|"
  for method, r in rows:
    macs_cell = f"{r['inference_macs'] / 1e6:.4f} | " if macs else ""
    lines.append(
      f"| {name} | {method} | {_pct(r['test_accuracy'])} ± {_pct(r['test_accuracy_std'])} | "
      f"{r['params'] / 1e6:.3f} | {r['inference_flops'] / 1e6:.4f} | {macs_cell}{r['training_flops']:.3g} | "
      f"{r['train_seconds']:.1f} |"
    )
  lines.append("")
  if "ratios" in results:
    ratios = results["ratios"]
    lines += [
      "Ratios end-to-end / QuickNet: "
      f"training FLOPs {ratios['training_flops']:.2f}, inference FLOPs {ratios['inference_flops']:.2f}, "
      f"wall-clock {ratios['train_seconds']:.2f}.",
      "",
    ]
  lines += [
    f"Exit threshold {results['exit_threshold']:.3f} (chosen on the "
    f"{results.get('exit_threshold_chosen_on', 'validation')} split, mean over seeds), training "
    f"threshold τ = {results['train_threshold']}, fallback `{results.get('fallback', 'most_confident')}`. "
    f"Exit fractions on the test split: {', '.join(f'{f:.3f}' for f in q['exit_fractions'])}.",
    "",
  ]
  seeds = q["per_seed"]
  lines += [
    "## QuickNet per block (mean over seeds)",
    "",
    "| Block | Train samples | Epochs | Commit epochs | Learned | Test acc. of exit (%) | "
    "Training FLOPs | of which block training | cache | commitment | validation + selection |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  num_blocks = min(len(s["training_flops_parts"]) for s in seeds)
  for j in range(num_blocks):
    parts = [s["training_flops_parts"][j] for s in seeds]
    mean = lambda key: sum(p[key] for p in parts) / len(parts)
    total = sum(mean(k) for k in costs.QUICKNET_BLOCK_PARTS)
    lines.append(
      f"| {j} | {sum(s['train_samples_per_block'][j] for s in seeds) / len(seeds):.0f} | "
      f"{sum(s['epochs_per_block'][j] for s in seeds) / len(seeds):.1f} | "
      f"{sum(s['commit_epochs_per_block'][j] for s in seeds) / len(seeds):.1f} | "
      f"{sum(s['learned_per_block'][j] for s in seeds) / len(seeds):.0f} | "
      f"{_pct(sum(s['per_exit_test_accuracy'][j] for s in seeds) / len(seeds))} | {total:.3g} | "
      f"{mean('block_training'):.3g} | {mean('cache'):.3g} | "
      f"{mean('commit_training') + mean('commit_validation'):.3g} | "
      f"{mean('block_validation') + mean('selection'):.3g} |"
    )
  after = [s["test_accuracy_after_block"] for s in seeds if "test_accuracy_after_block" in s]
  if after and len({len(a) for a in after}) == 1:
    means = [sum(a[j] for a in after) / len(after) for j in range(len(after[0]))]
    lines += [
      "",
      "Test accuracy of the QuickNet cut after each block (each with its own threshold chosen on "
      f"validation; mean over seeds, %): {', '.join(_pct(m) for m in means)}.",
    ]
  if e:
    lines += ["", f"End-to-end: {e['epochs']:.1f} epochs on average, training FLOPs {e['training_flops']:.3g}."]
  lines += ["", f"Machine: {results.get('machine', '?')}.{_compile_line(results)}", ""]
  return "\n".join(lines)


def _compile_line(results: dict) -> str:
  """ " Compute dtype …; compiling took …" for a results.json that records them (older ones do not)."""
  compiled = results.get("compile_seconds")
  if not isinstance(compiled, dict):
    return ""
  cache = {"off": "no persistent cache", "cold": "persistent cache cold", "warm": "persistent cache warm"}
  return (
    f" Compute dtype {results.get('compute_dtype', 'float32')}; compiling took {compiled['total']:.1f} s of the "
    f"wall-clock ({cache.get(compiled['cache'], compiled['cache'])}: {compiled['cache_hits']} programs read back)."
  )


FIGURE_CAPTIONS = {
  "training": "Fig. 2 — epochs per block (and per commitment head) vs end-to-end; training samples per "
  "epoch; total training cost by block; test accuracy against the training cost spent so far "
  "(QuickNet after each block, end-to-end after each epoch).",
  "class_distribution": "Fig. 3 — the classes in each block's training set: what the earlier blocks "
  "learned is gone from the later blocks' sets.",
  "inference_cost": "Fig. 4 — test accuracy against mean inference cost as the exit threshold varies, "
  "exits chosen by confidence only vs by confidence and the commitment heads.",
  "exits_per_class": "Which exit each class's test samples take at the operating threshold, and the "
  "class's test accuracy.",
}


def figures_markdown(figures: dict, relative_to: str, unfinished=(), skipped=None) -> str:
  """The Figures section of results.md: one image per figure, paths relative to `relative_to`.

  Args:
    figures: figure name -> its file.
    relative_to: the directory the markdown is in.
    unfinished: names of figures whose data is not complete yet.
    skipped: figure name -> why it was not drawn.

  Returns:
    The section's markdown.
  """
  lines = ["## Figures", ""]
  if unfinished:
    lines += [f"Partial run — not finished yet: {', '.join(unfinished)}.", ""]
  for name, path in figures.items():
    rel = os.path.relpath(path, relative_to).replace(os.sep, "/")
    lines += [f"![{name}]({rel})", "", FIGURE_CAPTIONS.get(name, ""), ""]
  for name, reason in (skipped or {}).items():
    lines += [f"No {name.replace('_', ' ')} figure: {reason}.", ""]
  return "\n".join(lines)


# ------------------------------------------------------------------------- commitment study


def _fmt(stat, scale: float = 100.0, digits: int = 2) -> str:
  if stat is None:
    return "—"
  return f"{stat['mean'] * scale:.{digits}f} ± {stat['std'] * scale:.{digits}f}"


def _fmt_signed(stat, scale: float = 100.0, digits: int = 2) -> str:
  if stat is None:
    return "—"
  return f"{stat['mean'] * scale:+.{digits}f} ± {stat['std'] * scale:.{digits}f}"


METHOD_TITLES = {
  "joint": "jointly trained multi-exit network (SDN loss) + commitment heads on its frozen exits",
  "quicknet": "QuickNet (Algorithm 1)",
}


def study_markdown(results: dict) -> str:
  """Tables of the study: per network, the three curves' AUC and matched-budget accuracies, the paired
  differences, and the per-exit calibration table (all mean ± std over seeds, accuracies in %).

  Args:
    results: a commitment study's results (`workflows.study`).

  Returns:
    The markdown.
  """
  lines = [f"# Commitment study: {results['dataset']}, {results['model']}, seeds {results['seeds']}", ""]
  if results.get("warning"):
    lines += [f"**{results['warning']}**", ""]
  for method in ("joint", "quicknet"):
    if method not in results:
      continue
    r = results[method]
    budgets = r["budgets"]
    lines += [
      f"## {METHOD_TITLES[method]}",
      "",
      "Per-exit test accuracy (%): " + ", ".join(_fmt(s) for s in r["per_exit_accuracy"]),
      "",
      "| rule | AUC (acc × cost fraction) | mean acc over shared range | "
      + " | ".join(f"acc @ {b:.0%} cost" for b in budgets)
      + " | "
      + " | ".join(f"acc @ {b:.0%} of shared range" for b in budgets)
      + " |",
      "|---" * (3 + 2 * len(budgets)) + "|",
    ]
    for rule in r["auc"]:
      lines.append(
        f"| {rule} | {_fmt(r['auc'][rule], 100, 2)} | {_fmt(r['mean_accuracy_shared_range'][rule])} | "
        + " | ".join(_fmt(s) for s in r["matched_budget_accuracy"][rule])
        + " | "
        + " | ".join(_fmt(s) for s in (r["shared_range_budget_accuracy"][rule] or [None] * len(budgets)))
        + " |"
      )
    for name, d in r["differences"].items():
      lines.append(
        f"| **{name}** (paired) | {_fmt_signed(d['auc'])} | {_fmt_signed(d['mean_accuracy_shared_range'])} | "
        + " | ".join(_fmt_signed(s) for s in d["matched_budget_accuracy"])
        + " | "
        + " | ".join(_fmt_signed(s) for s in d["shared_range_budget_accuracy"])
        + " |"
      )
    ranges = ", ".join(f"{k} {_fmt(v[0], 100, 1)}–{_fmt(v[1], 100, 1)} %" for k, v in r["cost_range"].items())
    lines += [
      "",
      f"Cost range of each curve (% of the full network): {ranges}. “—”: the rule never spends that budget.",
      "",
      "Calibration per exit (%; over-confident-wrong = wrong among samples with "
      "confidence > t; coverage = fraction of samples passing):",
      "",
    ]
    thresholds = [
      e["threshold"]["mean"] if isinstance(e["threshold"], dict) else e["threshold"]
      for e in r["calibration"][0]["at_threshold"]
    ]
    header = (
      "| exit | accuracy | ECE | AUROC conf | AUROC commit | commit>0 | "
      + " | ".join(
        f"t={t:g}: wrong / coverage, conf only | t={t:g}: wrong / coverage, + commitment" for t in thresholds
      )
      + " |"
    )
    lines += [header, "|---" * (6 + 2 * len(thresholds)) + "|"]
    for row in r["calibration"]:
      cells = [str(e) for e in [int(row["exit"]["mean"])]] + [
        _fmt(row["accuracy"]),
        _fmt(row["ece"]),
        _fmt(row["auroc_confidence"], 1, 3),
        _fmt(row.get("auroc_commitment"), 1, 3),
        _fmt(row.get("commit_positive_rate")),
      ]
      for entry in row["at_threshold"]:
        for key in ("confidence_only", "with_commitment"):
          e = entry.get(key)
          cells.append("—" if e is None else f"{_fmt(e['wrong_rate'])} / {_fmt(e['coverage'])}")
      lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
  return "\n".join(lines)


# ------------------------------------------------------------------------- QuickNet+ ablation


def ablation_markdown(rows: list, e2e: dict, combination: list, seeds: list) -> str:
  """The QuickNet+ ablation's table (`workflows.ablation`).

  Args:
    rows: one row per variant.
    e2e: the end-to-end network's numbers.
    combination: the variants the combination chosen on validation puts together.
    seeds: the seeds.

  Returns:
    The markdown.
  """
  lines = [
    f"Real Fashion-MNIST, seeds {','.join(map(str, seeds))} (mean ± std of test accuracy; other columns are "
    "means). Ratios are end-to-end / variant (higher = cheaper). Curve = mean test accuracy of the "
    "cost–accuracy curve over its own cost range; commitment margin = smallest gap (over budgets) "
    "between the commitment rule's and confidence-only's curve (> 0: above at every budget).",
    "",
    "| Variant | Test acc. (%) | Val acc. (%) | Training FLOPs | ratio | Train s | ratio | Inference "
    "MFLOPs | ratio | Curve acc. (%) | Commitment margin (pp) | Epochs per block |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
    f"| end-to-end | {100 * e2e['test_accuracy']:.2f} ± {100 * e2e['test_accuracy_std']:.2f} | – | "
    f"{e2e['training_flops']:.3g} | 1.00 | {e2e['train_seconds']:.1f} | 1.00 | "
    f"{e2e['inference_flops'] / 1e6:.3f} | 1.00 | – | – | {e2e['epochs']:.1f} |",
  ]
  for r in rows:
    name = r["variant"] + (f" ({' + '.join(combination)})" if r["variant"] == "combination" else "")
    lines.append(
      f"| {name} | {100 * r['test_accuracy']:.2f} ± {100 * r['test_accuracy_std']:.2f} | "
      f"{100 * r['val_accuracy']:.2f} | {r['training_flops']:.3g} | {r['training_flops_ratio']:.2f} | "
      f"{r['train_seconds']:.1f} | {r['train_seconds_ratio']:.2f} | {r['inference_flops'] / 1e6:.3f} | "
      f"{r['inference_flops_ratio']:.2f} | {100 * r['curve_mean_accuracy']:.2f} | "
      f"{100 * r['commitment_margin']:+.2f} | {', '.join(f'{e:.1f}' for e in r['epochs_per_block'])} |"
    )
  return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ Table 1, both readings

# The paper's Table 1 (accuracy %, parameters M, inference cost in M multiply-adds, training cost).
PAPER_TABLE1 = {
  "fashion_mnist": dict(quicknet=(87.53, 0.07, 0.141, 0.121, 0.61e10), end_to_end=(86.61, 0.72, 0.138, 0.138, 0.95e10)),
  "mnist": dict(quicknet=(98.83, 0.08, 0.141, 0.124, 0.57e10), end_to_end=(98.33, 0.28, 0.138, 0.138, 0.8e10)),
}


def table1_row(results: dict, network: str, schedule: str) -> dict:
  """One cell of the Table-1 study from its results.json: accuracies, costs and their ratios, epochs.

  Args:
    results: the cell's results (results.json, with the end-to-end network).
    network: the cell's network (e.g. "150-100-50").
    schedule: the cell's recipe (`RECIPE_NAMES`' keys).

  Returns:
    The row (JSON-ready).
  """
  q, e, r = results["quicknet"], results["end_to_end"], results["ratios"]
  return dict(
    dataset=results["dataset"],
    network=network,
    schedule=schedule,
    seeds=results["seeds"],
    quicknet_accuracy=q["test_accuracy"],
    quicknet_accuracy_std=q["test_accuracy_std"],
    end_to_end_accuracy=e["test_accuracy"],
    end_to_end_accuracy_std=e["test_accuracy_std"],
    quicknet_params=q["params"],
    end_to_end_params=e["params"],
    quicknet_inference_flops=q["inference_flops"],
    end_to_end_inference_flops=e["inference_flops"],
    inference_flops_ratio=r["inference_flops"],
    quicknet_inference_macs=q.get("inference_macs"),
    end_to_end_inference_macs=e.get("inference_macs"),
    inference_macs_ratio=r.get("inference_macs"),
    quicknet_training_flops=q["training_flops"],
    end_to_end_training_flops=e["training_flops"],
    training_flops_ratio=r["training_flops"],
    train_seconds_ratio=r["train_seconds"],
    quicknet_train_seconds=q["train_seconds"],
    end_to_end_train_seconds=e["train_seconds"],
    epochs_per_block=q["epochs_per_block"],
    end_to_end_epochs=e["epochs"],
    train_samples_per_block=q["train_samples_per_block"],
    exit_fractions=q["exit_fractions"],
    exit_threshold=results["exit_threshold"],
  )


# The Table-1 study's recipes (`experiments.table1.RECIPES`) as the table names them.
RECIPE_NAMES = {
  "appendix": "Appendix A",
  "authors": "authors' code",
  "authors_no_affine": "authors' code, no affine",
  "appendix_train_loss": "Appendix A, stop on train loss",
  "appendix_train_loss_wd": "Appendix A, stop on train loss, wd 5e-4",
}


def table1_markdown(rows: list) -> str:
  """The Table-1 study: one row per cell, the paper's numbers under each dataset's cells.

  Args:
    rows: `table1_row`s.

  Returns:
    The markdown.
  """
  lines = [
    "| Data | Network | Schedule | QuickNet acc. (%) | End-to-end acc. (%) | Params QN / E2E (M) | "
    "Inference MFLOPs QN / E2E (ratio) | Inference M mult-adds QN / E2E (ratio) | Training FLOPs ratio | "
    "Wall-clock ratio | Epochs per block | E2E epochs |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for dataset in dict.fromkeys(row["dataset"] for row in rows):
    name = PRETTY_NAMES.get(dataset, dataset)
    for r in (row for row in rows if row["dataset"] == dataset):
      macs = (
        f"{r['quicknet_inference_macs'] / 1e6:.4f} / {r['end_to_end_inference_macs'] / 1e6:.4f} "
        f"({r['inference_macs_ratio']:.2f})"
        if r["inference_macs_ratio"] is not None
        else "–"
      )
      lines.append(
        f"| {name} | {r['network']} | {RECIPE_NAMES.get(r['schedule'], r['schedule'])} | {_pct(r['quicknet_accuracy'])} ± "
        f"{_pct(r['quicknet_accuracy_std'])} | {_pct(r['end_to_end_accuracy'])} ± {_pct(r['end_to_end_accuracy_std'])} | "
        f"{r['quicknet_params'] / 1e6:.3f} / {r['end_to_end_params'] / 1e6:.3f} | "
        f"{r['quicknet_inference_flops'] / 1e6:.4f} / {r['end_to_end_inference_flops'] / 1e6:.4f} "
        f"({r['inference_flops_ratio']:.2f}) | {macs} | {r['training_flops_ratio']:.2f} | "
        f"{r['train_seconds_ratio']:.2f} | {', '.join(f'{x:.1f}' for x in r['epochs_per_block'])} | "
        f"{r['end_to_end_epochs']:.1f} |"
      )
    paper = PAPER_TABLE1.get(dataset)
    if paper:
      (qa, qs, qp, qi, qt), (ea, es, ep, ei, et) = paper["quicknet"], paper["end_to_end"]
      lines.append(
        f"| *{name}, paper* | 150-100-50 | – | {qa:.2f} ± {qs:.2f} | {ea:.2f} ± {es:.2f} | {qp:.3f} / {ep:.3f} | "
        f"– | {qi:.3f} / {ei:.3f} ({ei / qi:.2f}) | {et / qt:.2f} | – | – | – |"
      )
  lines += [
    "",
    "Ratios are end-to-end / QuickNet (higher = QuickNet cheaper). FLOPs: 1 multiply-add = 2, plus one per "
    "bias/activation element; multiply-adds: weights only (the paper's convention). Accuracies: mean ± sample "
    "std over the seeds; the exit threshold is chosen per seed on the validation split.",
  ]
  return "\n".join(lines) + "\n"


def _flops_stat(stat) -> str:
  return "never" if stat is None else f"{stat['mean'] / 1e12:.2f} ± {stat['std'] / 1e12:.2f}"


def conv_dataset_markdown(row: dict) -> str:
  """One dataset of the conv study: QuickNet | end-to-end | ratio.

  Args:
    row: `workflows.conv_study.dataset_row`'s output with the inference timings.

  Returns:
    The markdown table.
  """
  speeds = row["inference_speed"]
  cascade_rate = sum(s["cascade_samples_per_second"] for s in speeds) / len(speeds)
  e2e_rate = sum(s["end_to_end_samples_per_second"] for s in speeds) / len(speeds)
  lines = [
    "| | QuickNet | End-to-end | End-to-end / QuickNet (or QuickNet − end-to-end) |",
    "|---|---|---|---|",
    f"| Test accuracy (%) | {_pct(row['quicknet_accuracy'])} ± {_pct(row['quicknet_accuracy_std'])} | "
    f"{_pct(row['end_to_end_accuracy'])} ± {_pct(row['end_to_end_accuracy_std'])} | "
    f"{_fmt_signed(row['accuracy_delta_paired'])} points (paired) |",
    f"| Parameters | {row['quicknet_params']:,.0f} | {row['end_to_end_params']:,.0f} | "
    f"{row['end_to_end_params'] / row['quicknet_params']:.2f} |",
    f"| Inference MFLOPs per sample (t = {row['exit_threshold']:.2f}, chosen on validation) | "
    f"{row['quicknet_inference_flops'] / 1e6:.3f} | {row['end_to_end_inference_flops'] / 1e6:.3f} | "
    f"{row['inference_flops_ratio']:.2f} |",
    f"| Inference wall-clock, samples/s (the cascade on the clock) | {cascade_rate:,.0f} | {e2e_rate:,.0f} | "
    f"{_fmt(row['inference_speedup'], 1.0)} |",
    f"| Training TFLOPs | {row['quicknet_training_flops'] / 1e12:.2f} | {row['end_to_end_training_flops'] / 1e12:.2f} | "
    f"{row['training_flops_ratio']:.2f} |",
    f"| Training wall-clock (s) | {row['quicknet_train_seconds']:.0f} | {row['end_to_end_train_seconds']:.0f} | "
    f"{row['train_seconds_ratio']:.2f} (paired {_fmt(row['train_seconds_ratio_paired'], 1.0)}) |",
    f"| Training GFLOP/s (efficiency = wall-clock ratio / FLOPs ratio) | "
    f"{row['quicknet_training_flops'] / row['quicknet_train_seconds'] / 1e9:.1f} | "
    f"{row['end_to_end_training_flops'] / row['end_to_end_train_seconds'] / 1e9:.1f} | "
    f"{row['train_seconds_ratio'] / row['training_flops_ratio']:.2f} |",
  ]
  for fraction, reach in row["reach"].items():
    missing = {m: len(s) for m, s in reach["not_reached"].items() if s}
    note = f" (not reached by {missing})" if missing else ""
    lines.append(
      f"| Training TFLOPs to first reach {100 * float(fraction):g} % of the end-to-end accuracy | "
      f"{_flops_stat(reach['quicknet'])} | {_flops_stat(reach['end_to_end'])} | {_fmt(reach['ratio'], 1.0)}{note} |"
    )
  lines += [
    f"| Training samples per block | {', '.join(f'{x:,.0f}' for x in row['train_samples_per_block'])} | "
    f"{row['train_samples_per_block'][0]:,.0f} | |",
    f"| Epochs per block | {', '.join(f'{x:.1f}' for x in row['epochs_per_block'])} | {row['end_to_end_epochs']:.1f} | |",
    f"| Learned (removed) per block | {', '.join(f'{x:,.0f}' for x in row['learned_per_block'])} | | |",
    f"| Test samples leaving at each exit (%) | {', '.join(f'{100 * x:.1f}' for x in row['exit_fractions'])} | | |",
  ]
  if row["inference_mismatches"]:
    lines.append(f"\n{row['inference_mismatches']} cascade answers differ from the vectorized evaluator's.")
  return "\n".join(lines) + "\n"


def conv_study_markdown(summary: dict) -> str:
  """The conv study's report (`workflows.conv_study`): a table per dataset, QuickNet+ variants, the
  commitment question and the verdict against the paper.

  Args:
    summary: `workflows.conv_study.run_conv_study`'s summary.

  Returns:
    The markdown.
  """
  out = []
  for row in summary["rows"]:
    seeds = len(row["seeds"])
    out += [
      f"### {PRETTY_NAMES.get(row['dataset'], row['dataset'])} ({seeds} paired seeds)",
      "",
      conv_dataset_markdown(row),
    ]
  plus = summary.get("plus")
  if plus:
    out += [
      f"### QuickNet+ on {PRETTY_NAMES.get(plus['dataset'], plus['dataset'])} (against the same end-to-end runs)",
      "",
      "| Variant | Flags | Test acc. (%) | Δ vs end-to-end (points, paired) | Val. acc. (%) | Training FLOPs ratio "
      "| Wall-clock ratio | Inference FLOPs ratio | Epochs per block |",
      "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in plus["rows"]:
      flags = " ".join(f"--{k}={v}" for k, v in plus["variants"][r["variant"]].items()) or "—"
      chosen = " (chosen)" if r["variant"] == plus["chosen"] else ""
      out.append(
        f"| {r['variant']}{chosen} | {flags} | {_pct(r['test_accuracy'])} ± {_pct(r['test_accuracy_std'])} | "
        f"{_fmt_signed(r['accuracy_delta_paired'])} | {_pct(r['val_accuracy'])} | {r['training_flops_ratio']:.2f} | "
        f"{r['train_seconds_ratio']:.2f} | {r['inference_flops_ratio']:.2f} | "
        f"{', '.join(f'{x:.1f}' for x in r['epochs_per_block'])} |"
      )
    out += [
      "",
      f"Chosen on validation only: the cheapest to train of the variants whose validation accuracy is at least "
      f"the end-to-end network's ({_pct(plus['end_to_end_val_accuracy'])} %), else the most accurate.",
      "",
    ]
  commitment = summary.get("commitment")
  if commitment:
    diffs = commitment["differences"]["commitment_minus_confidence"]["matched_budget_accuracy"]
    reads = commitment["matched_budget_accuracy"]
    out += [
      f"### The commitment question: jointly trained multi-exit conv net ({len(commitment['seeds'])} seeds)",
      "",
      "| Budget (of the full cost) | Confidence only (%) | Confidence + commitment (%) | Paired difference (points) |",
      "|---|---|---|---|",
    ]
    for i, budget in enumerate(commitment["budgets"]):
      out.append(
        f"| {100 * budget:.0f} % | {_fmt(reads['confidence'][i])} | {_fmt(reads['commitment'][i])} | "
        f"{_fmt_signed(diffs[i])} |"
      )
    out.append("")
  out += [
    "### Verdict against the paper (VGG-11 / CIFAR-10)",
    "",
    "| Claim | Paper | Measured here | Holds |",
    "|---|---|---|---|",
  ]
  for v in summary["verdict"]:
    measured = "; ".join(f"{PRETTY_NAMES.get(k, k)}: {_verdict_value(x)}" for k, x in v["measured"].items())
    out.append(f"| {v['claim']} | {v['paper']} | {measured} | {v['holds']} |")
  return "\n".join(out) + "\n"


def _verdict_value(x) -> str:
  if x is None:
    return "—"
  if isinstance(x, (list, tuple)):
    return " / ".join(_verdict_value(v) for v in x)
  return f"{x:+.2f}" if x < 0 else f"{x:.2f}"


DECOUPLED_METHOD_NAMES = {
  "sequential": "Sequential QuickNet",
  "decoupled": "Decoupled QuickNet",
  "end_to_end": "End-to-end",
}


def _devices_markdown(devices: dict) -> list:
  """The K-device table of `workflows.decoupled_study.modelled_devices`' output, as markdown lines."""
  ks = devices["devices"]
  return [
    "| K | " + " | ".join(str(k) for k in ks) + " |",
    "|---|" + "---|" * len(ks),
    "| Decoupled, pipelined | " + " | ".join(f"{v:.3g}" for v in devices["decoupled_seconds"]) + " |",
    f"| Decoupled, pipelined, stage buffers {100 * devices['sized_capacity']:.0f} % of the batch | "
    + " | ".join(f"{v:.3g}" for v in devices["decoupled_seconds_sized_buffers"])
    + " |",
    "| End-to-end, data-parallel | " + " | ".join(f"{v:.3g}" for v in devices["end_to_end_seconds"]) + " |",
    "| Decoupled / end-to-end | "
    + " | ".join(f"{d / e:.2f}" for d, e in zip(devices["decoupled_seconds"], devices["end_to_end_seconds"]))
    + " |",
    "| Bubbles / transfers (% of decoupled) | "
    + " | ".join(f"{100 * b:.0f} / {100 * t:.0f}" for b, t in zip(devices["bubble_share"], devices["transfer_share"]))
    + " |",
    "| Slowest stage (blocks) | "
    + " | ".join(f"{a}–{b - 1}" if b - a > 1 else f"{a}" for a, b in devices["slowest_stage_blocks"])
    + " |",
  ]


def _decoupled_part_markdown(part: dict) -> str:
  """One part of the decoupled study: the three methods on one device, then the K-device model."""
  rows = {r["method"]: r for r in part["rows"]}
  seq, dec, e2e = rows["sequential"], rows["decoupled"], rows["end_to_end"]
  dec_seeds = part.get("decoupled_seeds", part["seeds"])
  cells = lambda fn: " | ".join(fn(rows[m]) for m in ("sequential", "decoupled", "end_to_end"))
  name = PRETTY_NAMES.get(part["dataset"], part["dataset"])
  lines = [
    f"### {name}, {part['model']} ({len(part['seeds'])} paired seed{'s' * (len(part['seeds']) != 1)}"
    + (
      f"; the decoupled QuickNet on seed{'s' * (len(dec_seeds) != 1)} {', '.join(map(str, dec_seeds))} only, "
      "its differences paired with the same seeds)"
      if len(dec_seeds) < len(part["seeds"])
      else ")"
    ),
    "",
    "| | " + " | ".join(DECOUPLED_METHOD_NAMES.values()) + " |",
    "|---|---|---|---|",
    f"| Test accuracy (%) | {cells(lambda r: _fmt(r['test_accuracy']))} |",
    f"| Inference MFLOPs per sample | {cells(lambda r: format(r['inference_flops'] / 1e6, '.3f'))} |",
    f"| Training TFLOPs | {cells(lambda r: format(r['training_flops'] / 1e12, '.3g'))} |",
    f"| Training wall-clock, one device (s) | {cells(lambda r: _fmt(r['train_seconds'], 1.0, 1))} |",
    f"| Wall-clock / end-to-end's (paired) | {_fmt(part['seconds_sequential_over_end_to_end'], 1.0)} | "
    f"{_fmt(part['seconds_decoupled_over_end_to_end'], 1.0)} | 1 |",
    f"| Epochs | {', '.join(f'{x:.1f}' for x in seq['epochs_per_block'])} (per block) | "
    f"{dec['epochs']:.1f} (all blocks at once; per block {', '.join(f'{x:.1f}' for x in dec['epochs_per_block'])}) | "
    f"{e2e['epochs']:.1f} |",
    f"| Test samples leaving at each exit (%) | {', '.join(f'{100 * x:.1f}' for x in seq['exit_fractions'])} | "
    f"{', '.join(f'{100 * x:.1f}' for x in dec['exit_fractions'])} | |",
    "",
    f"Decoupled − sequential: {_fmt_signed(part['accuracy_decoupled_minus_sequential'])} points; decoupled − "
    f"end-to-end: {_fmt_signed(part['accuracy_decoupled_minus_end_to_end'])} points (paired).",
  ]
  refresh = part.get("refresh_epoch")
  if refresh is not None:
    lines += [
      "",
      f"Learned rule refreshed once an epoch instead of every step: test accuracy "
      f"{_fmt(refresh['row']['test_accuracy'])} % ({_fmt_signed(refresh['accuracy_minus_step'])} points, paired), "
      f"wall-clock × {_fmt(refresh['seconds_over_step'], 1.0)}, training FLOPs × {refresh['training_flops_over_step']:.2f}.",
    ]
  devices = part["devices"]
  lines += [
    "",
    "Modelled wall-clock on K devices (s): decoupled pipelined (one stage per device, at most one per block) "
    "against end-to-end data-parallel:",
    "",
    *_devices_markdown(devices),
  ]
  faster = devices["decoupled_faster_from"]
  check = devices["one_device_check"]
  lines += [
    "",
    (
      f"The pipelined decoupled run is modelled faster from K = {faster}."
      if faster
      else f"The pipelined decoupled run is modelled faster at no K ≤ {devices['devices'][-1]}."
    )
    + f" One device, model against measurement: decoupled {check['decoupled_modelled']:.3g} s vs "
    f"{check['decoupled_measured']:.3g} s, end-to-end {check['end_to_end_modelled']:.3g} s vs "
    f"{check['end_to_end_measured']:.3g} s (the measurement adds compile and host work).",
  ]
  return "\n".join(lines) + "\n"


def decoupled_study_markdown(summary: dict) -> str:
  """The decoupled study's report (`workflows.decoupled_study`): per part, the three methods measured on
  one device and the modelled K-device wall-clock.

  Args:
    summary: what `workflows.decoupled_study.run_decoupled_study` returns.

  Returns:
    The markdown text.
  """
  link = summary["link"]
  head = (
    f"Machine: {summary['machine']}. Model link: {link['bytes_per_second'] / 1e9:g} GB/s, "
    f"{link['latency_seconds'] * 1e6:g} µs per transfer."
  )
  text = head + "\n\n" + "\n".join(_decoupled_part_markdown(p) for p in summary["parts"])
  for m in summary.get("modelled", []):
    devices = m["devices"]
    faster = devices["decoupled_faster_from"]
    text += "\n".join(
      [
        "",
        f"### {m['network']}: modelled only ({m['sizes'][0]} training rows; step times measured here, "
        f"the epochs of each block and of the end-to-end network those of {m['epochs_from']})",
        "",
        *_devices_markdown(devices),
        "",
        f"The pipelined decoupled run is modelled faster from K = {faster}."
        if faster
        else f"The pipelined decoupled run is modelled faster at no K ≤ {devices['devices'][-1]}.",
        "",
      ]
    )
  return text

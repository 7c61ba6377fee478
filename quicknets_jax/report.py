"""Tables from results.json: the paper's Table 1 layout and the per-block breakdown of training cost.

`load_workdir` rebuilds the results of a finished or interrupted run from its per-seed files (so the
report works on a run that has not written results.json yet, or on one from an older version), and
`figures_markdown` is the Figures section that `python -m experiments.report` appends to results.md.
"""

from __future__ import annotations

import json
import os
import platform

import jax

DATASET_NAMES = {"fashion_mnist": "Fashion-MNIST", "mnist": "MNIST", "cifar10": "CIFAR-10"}


def machine_description() -> str:
  """A one-line description of where the numbers came from."""
  devices = jax.devices()
  kind = devices[0].device_kind if devices else "?"
  return (f"{platform.machine()}, {os.cpu_count()} CPU cores, {len(devices)} x {devices[0].platform} "
          f"({kind}), jax {jax.__version__}, python {platform.python_version()}")


def _pct(x):
  return f"{100 * x:.2f}"


def results_markdown(results: dict) -> str:
  """Table 1 of the paper (accuracy, params, inference cost, training cost) plus wall-clock, ratios and
  each block's share of the training cost."""
  name = DATASET_NAMES.get(results["dataset"], results["dataset"])
  q, e = results["quicknet"], results.get("end_to_end")
  n = len(results["seeds"])
  lines = [f"# {name}: QuickNet vs end-to-end ({results['model']}, {n} seed{'s' * (n > 1)})", "",
           "| Data | Method | Accuracy (%) | Parameters (M) | Inference cost (MFLOPs) | Training cost (FLOPs) "
           "| Wall-clock (s) |",
           "|---|---|---|---|---|---|---|"]
  rows = [("QuickNet", q)] + ([("End-to-End", e)] if e else [])
  for method, r in rows:
    lines.append(f"| {name} | {method} | {_pct(r['test_accuracy'])} ± {_pct(r['test_accuracy_std'])} | "
                 f"{r['params'] / 1e6:.3f} | {r['inference_flops'] / 1e6:.4f} | {r['training_flops']:.3g} | "
                 f"{r['train_seconds']:.1f} |")
  lines.append("")
  if "ratios" in results:
    ratios = results["ratios"]
    lines += ["Ratios end-to-end / QuickNet: "
              f"training FLOPs {ratios['training_flops']:.2f}, inference FLOPs {ratios['inference_flops']:.2f}, "
              f"wall-clock {ratios['train_seconds']:.2f}.", ""]
  lines += [f"Exit threshold {results['exit_threshold']:.3f} (chosen on the "
            f"{results.get('exit_threshold_chosen_on', 'validation')} split, mean over seeds), training "
            f"threshold τ = {results['train_threshold']}, fallback `{results.get('fallback', 'most_confident')}`. "
            f"Exit fractions on the test split: {', '.join(f'{f:.3f}' for f in q['exit_fractions'])}.", ""]
  seeds = q["per_seed"]
  lines += ["## QuickNet per block (mean over seeds)", "",
            "| Block | Train samples | Epochs | Commit epochs | Learned | Test acc. of exit (%) | "
            "Training FLOPs | of which block training | cache | commitment | validation + selection |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
  num_blocks = min(len(s["training_flops_parts"]) for s in seeds)
  for j in range(num_blocks):
    parts = [s["training_flops_parts"][j] for s in seeds]
    mean = lambda key: sum(p[key] for p in parts) / len(parts)
    total = sum(mean(k) for k in ("block_training", "block_validation", "cache", "commit_training",
                                  "commit_validation", "selection"))
    lines.append(
        f"| {j} | {sum(s['train_samples_per_block'][j] for s in seeds) / len(seeds):.0f} | "
        f"{sum(s['epochs_per_block'][j] for s in seeds) / len(seeds):.1f} | "
        f"{sum(s['commit_epochs_per_block'][j] for s in seeds) / len(seeds):.1f} | "
        f"{sum(s['learned_per_block'][j] for s in seeds) / len(seeds):.0f} | "
        f"{_pct(sum(s['per_exit_test_accuracy'][j] for s in seeds) / len(seeds))} | {total:.3g} | "
        f"{mean('block_training'):.3g} | {mean('cache'):.3g} | "
        f"{mean('commit_training') + mean('commit_validation'):.3g} | "
        f"{mean('block_validation') + mean('selection'):.3g} |")
  after = [s["test_accuracy_after_block"] for s in seeds if "test_accuracy_after_block" in s]
  if after and len({len(a) for a in after}) == 1:
    means = [sum(a[j] for a in after) / len(after) for j in range(len(after[0]))]
    lines += ["", "Test accuracy of the QuickNet cut after each block (each with its own threshold chosen on "
              f"validation; mean over seeds, %): {', '.join(_pct(m) for m in means)}."]
  if e:
    lines += ["", f"End-to-end: {e['epochs']:.1f} epochs on average, training FLOPs {e['training_flops']:.3g}."]
  lines += ["", f"Machine: {results.get('machine', '?')}.", ""]
  return "\n".join(lines)


def _read_json(path: str):
  with open(path) as f:
    return json.load(f)


def load_workdir(workdir: str) -> dict:
  """The results of the run in WORKDIR (results.json layout), rebuilt from its per-seed files.

  Works on a finished run and on an interrupted one: seeds whose QuickNet has not finished are left
  out (listed under "unfinished"), and the end-to-end entry holds the seeds whose baseline finished.
  """
  from quicknets_jax.experiment import aggregate  # experiment imports this module
  config_path = os.path.join(workdir, "config.json")
  if not os.path.exists(config_path):
    raise ValueError(f"{workdir} holds no run (no config.json): pass the --workdir of a run of "
                     "python -m experiments.<dataset>")
  config = _read_json(config_path)
  stored_path = os.path.join(workdir, "results.json")
  stored = _read_json(stored_path) if os.path.exists(stored_path) else {}
  seeds = list(config.get("seeds", []))
  seeds += [s for s in stored.get("seeds", []) if s not in seeds]
  quicknet, end_to_end, unfinished = [], [], []
  for seed in seeds:
    seed_dir = os.path.join(workdir, f"seed_{seed}")
    q_path, e_path = os.path.join(seed_dir, "quicknet.json"), os.path.join(seed_dir, "end_to_end.json")
    if os.path.exists(q_path):
      quicknet.append(_read_json(q_path))
    else:
      unfinished.append(f"seed {seed}: QuickNet")
    if os.path.exists(e_path):
      end_to_end.append(_read_json(e_path))
    elif config.get("end_to_end", True):
      unfinished.append(f"seed {seed}: end-to-end")
  if not quicknet:
    raise ValueError(f"no seed of the run in {workdir} has finished its QuickNet yet (no seed_<s>/quicknet.json): "
                     "let the run finish one seed, then run the report again")
  results = {k: v for k, v in stored.items() if k not in ("quicknet", "end_to_end", "ratios")}
  results.update(
      dataset=config.get("dataset", stored.get("dataset", "?")), model=config.get("model", stored.get("model", "?")),
      seeds=[s["seed"] for s in quicknet], train_threshold=config.get("train_threshold"),
      fallback=config.get("fallback", "most_confident"),
      exit_threshold=sum(s["exit_threshold"] for s in quicknet) / len(quicknet),
      exit_threshold_chosen_on="validation" if config.get("exit_threshold") is None else "flag",
      quicknet=aggregate(quicknet), unfinished=unfinished)
  if end_to_end:
    results["end_to_end"] = aggregate(end_to_end)
    q, e = results["quicknet"], results["end_to_end"]
    results["ratios"] = {k: e[k] / q[k] for k in ("training_flops", "inference_flops", "train_seconds")}
  if "class_names" not in results:
    from quicknets_jax.data import CLASS_NAMES
    results["class_names"] = list(CLASS_NAMES.get(results["dataset"], ()))
  return results


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
  """The Figures section of results.md: one image per figure, paths relative to `relative_to`."""
  lines = ["## Figures", ""]
  if unfinished:
    lines += [f"Partial run — not finished yet: {', '.join(unfinished)}.", ""]
  for name, path in figures.items():
    rel = os.path.relpath(path, relative_to).replace(os.sep, "/")
    lines += [f"![{name}]({rel})", "", FIGURE_CAPTIONS.get(name, ""), ""]
  for name, reason in (skipped or {}).items():
    lines += [f"No {name.replace('_', ' ')} figure: {reason}.", ""]
  return "\n".join(lines)


def write_report(workdir: str, figures_dir: str | None = None, results_md: str | None = None) -> dict:
  """Regenerates results.md (table + Figures section) and the PNG figures of the run in WORKDIR.

  Returns {"results_md": path, "figures": {name: path}, "skipped": {name: reason}, "unfinished": [...]}.
  """
  from quicknets_jax import figures  # matplotlib only when figures are wanted
  results = load_workdir(workdir)
  figures_dir = figures_dir or os.path.join(workdir, "figures")
  results_md = results_md or os.path.join(workdir, "results.md")
  written = figures.render_all(results, figures_dir, results.get("class_names", ()))
  skipped = written.pop("skipped")
  md_dir = os.path.dirname(os.path.abspath(results_md))
  text = results_markdown(results) + "\n" + figures_markdown(written, md_dir, results.get("unfinished", ()),
                                                             skipped)
  os.makedirs(md_dir, exist_ok=True)
  with open(results_md, "w") as f:
    f.write(text)
  return dict(results_md=results_md, figures=written, skipped=skipped, unfinished=results.get("unfinished", []))

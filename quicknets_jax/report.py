"""Tables from results.json: the paper's Table 1 layout and the per-block breakdown of training cost."""

from __future__ import annotations

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
  if e:
    lines += ["", f"End-to-end: {e['epochs']:.1f} epochs on average, training FLOPs {e['training_flops']:.3g}."]
  lines += ["", f"Machine: {results.get('machine', '?')}.", ""]
  return "\n".join(lines)

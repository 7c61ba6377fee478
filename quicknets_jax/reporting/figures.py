"""The paper's figures from a run's results (results.json layout, with per-seed entries): PNGs via Agg.

- `training_figure`: Fig. 2 — epochs per block vs end-to-end, samples per epoch, total training cost
  by block, and test accuracy against cumulative training cost while training.
- `class_distribution_figure`: Fig. 3 — the classes in each block's training set (stacked bars).
- `inference_cost_figure`: Fig. 4 — test accuracy against mean inference cost over exit thresholds,
  confidence only vs confidence + commitment.
- `exits_per_class_figure`: which exit each class's test samples take at the operating threshold.
- `deploy_while_training_figure`: Fig. 2's claim continuously — the deployable network's test accuracy
  after every epoch of both methods against the training cost so far (`--deploy_curve` runs).
- `commitment_curves_figure`: Fig. 4 of a commitment study (`workflows.study`), mean ± std over seeds.
- `schedules_figure`: test accuracy against training FLOPs after every epoch of the sequential QuickNet,
  the decoupled QuickNet and the end-to-end network (`workflows.decoupled_study`), a panel per part.

Figures are built on `matplotlib.figure.Figure` directly (no pyplot), so nothing here touches the
global backend or state of a user's session, and rendering works on machines without a display.
Numbers are means over the seeds that finished; error bars are the standard deviation over seeds.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Optional

import matplotlib
import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import StrMethodFormatter

from quicknets_jax.core import costs, curves
from quicknets_jax.core.stats import mean_std_rows
from quicknets_jax.data.datasets import PRETTY_NAMES

FIGURE_FILES = {
  "training": "fig2_training.png",
  "class_distribution": "fig3_class_distribution.png",
  "inference_cost": "fig4_inference_cost.png",
  "exits_per_class": "exits_per_class.png",
}
E2E_COLOR = "tab:orange"
STYLE = {
  "font.size": 10,
  "axes.titlesize": 11,
  "axes.labelsize": 10,
  "legend.fontsize": 9,
  "axes.spines.top": False,
  "axes.spines.right": False,
  "axes.grid": True,
  "grid.alpha": 0.3,
}
DPI = 150  # a 8-inch-wide figure is 1200 px: sharp when README scales it down to ~850 px


def block_colors(num: int) -> list:
  """One blue per block/exit, light to dark, so exit j and block j share a colour in every figure.

  Args:
    num: the number of blocks (or exits).

  Returns:
    `num` RGBA colours of matplotlib's "Blues" colormap, lightest first.
  """
  cmap = colormaps["Blues"]
  return [cmap(0.4 + 0.5 * j / max(num - 1, 1)) for j in range(num)]


def flops_unit(value: float) -> tuple[float, str]:
  """(divisor, unit) that puts `value` FLOPs between 1 and 1000 of a decimal prefix.

  Args:
    value: a number of FLOPs (typically the largest a figure's axis shows).

  Returns:
    A tuple `(divisor, unit)`, e.g. `(1e9, "GFLOPs")`; `(1.0, "FLOPs")` below 1000.
  """
  for scale, unit in ((1e15, "PFLOPs"), (1e12, "TFLOPs"), (1e9, "GFLOPs"), (1e6, "MFLOPs"), (1e3, "kFLOPs")):
    if value >= scale:
      return scale, unit
  return 1.0, "FLOPs"


def _seeds(results: dict, method: str) -> list:
  return list(results.get(method, {}).get("per_seed", []))


def _num_blocks(seeds: Sequence[dict]) -> int:
  return min(len(s["train_samples_per_block"]) for s in seeds)


def _block_flops(seed: dict) -> np.ndarray:
  """Training FLOPs of each block of one seed (every part: training, cache, commitment, ...)."""
  return np.asarray([costs.total(part) for part in seed["training_flops_parts"]])


def _title(results: dict) -> str:
  name = PRETTY_NAMES.get(results.get("dataset"), results.get("dataset", "?"))
  n = len(_seeds(results, "quicknet"))
  return f"{name}, {results.get('model', '?')}, {n} seed{'s' * (n != 1)}"


def _new_figure(width: float, height: float) -> Figure:
  return Figure(figsize=(width, height), layout="constrained", dpi=DPI)


def _with_style(fn):
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with matplotlib.rc_context(STYLE):
      return fn(*args, **kwargs)

  return wrapped


def _bar_labels(num_blocks: int) -> list:
  return [f"block {j}" for j in range(num_blocks)]


def accuracy_during_training(results: dict) -> dict:
  """Points of Fig. 2's last panel, per seed (`core.curves`).

  The QuickNet after each block (and after every block epoch where the run measured it,
  `--deploy_curve`) and end-to-end after each epoch.

  Args:
    results: a run's results.json dict, with per-seed entries.

  Returns:
    A dict with "quicknet" (per seed, a pair of arrays `(flops, accuracy)` after each block),
    "quicknet_epochs" (per seed, the same after every block epoch; empty without `--deploy_curve`),
    "end_to_end" (per seed, the pairs after every epoch), "quicknet_kind" ("test", or "test (first and
    last block only)" when a seed has no per-block test accuracy) and "end_to_end_kind" ("test", or
    "validation" when a seed logged no test accuracy).
  """
  out = {"quicknet": [], "quicknet_epochs": [], "end_to_end": [], "quicknet_kind": "test", "end_to_end_kind": "test"}
  for seed in _seeds(results, "quicknet"):
    if "test_accuracy_after_block" not in seed:
      out["quicknet_kind"] = "test (first and last block only)"
    out["quicknet"].append(curves.quicknet_after_blocks(seed))
    every_epoch = curves.quicknet_every_epoch(seed)
    if every_epoch is not None:
      out["quicknet_epochs"].append(every_epoch)
  for seed in _seeds(results, "end_to_end"):
    points = curves.end_to_end_every_epoch(seed)
    if points is None:
      continue
    flops, accuracy, kind = points
    if kind != "test":
      out["end_to_end_kind"] = kind
    out["end_to_end"].append((flops, accuracy))
  return out


@_with_style
def training_figure(results: dict) -> Figure:
  """Fig. 2: epochs, samples per epoch, training cost, and test accuracy vs training cost.

  Four panels: epochs per block (and per commitment head) beside the end-to-end fit's, the training
  samples of each block's epochs, the total training FLOPs stacked by block, and test accuracy against
  the training FLOPs spent so far (`accuracy_during_training`).

  Args:
    results: a run's results.json dict, with per-seed entries.

  Returns:
    The figure.
  """
  q_seeds, e_seeds = _seeds(results, "quicknet"), _seeds(results, "end_to_end")
  m = _num_blocks(q_seeds)
  colors = block_colors(m)
  fig = _new_figure(10, 7.6)
  (ax_epochs, ax_samples), (ax_cost, ax_acc) = fig.subplots(2, 2)
  labels = _bar_labels(m) + (["end-to-end"] if e_seeds else [])
  x = np.arange(len(labels))

  # Epochs: each block's fit and its commitment head's, beside the end-to-end fit.
  epochs, epochs_std = mean_std_rows([s["epochs_per_block"][:m] for s in q_seeds])
  commit, commit_std = mean_std_rows([s["commit_epochs_per_block"][:m] for s in q_seeds])
  width = 0.4
  ax_epochs.bar(x[:m] - width / 2, epochs, width, yerr=epochs_std, color=colors, capsize=3, label="QuickNet block")
  ax_epochs.bar(
    x[:m] + width / 2,
    commit,
    width,
    yerr=commit_std,
    color=colors,
    hatch="//",
    alpha=0.55,
    edgecolor="white",
    capsize=3,
    label="the block's commitment head",
  )
  if e_seeds:
    e_epochs, e_std = mean_std_rows([[s["epochs"]] for s in e_seeds])
    ax_epochs.bar(x[m:], e_epochs, 0.6, yerr=e_std, color=E2E_COLOR, capsize=3, label="end-to-end")
  ax_epochs.set_xticks(x, labels)
  ax_epochs.set_ylim(0, 1.3 * ax_epochs.get_ylim()[1])  # headroom: the legend sits above the bars
  ax_epochs.set_ylabel("epochs trained (until early stop)")
  ax_epochs.set_title("Epochs per block")
  ax_epochs.legend(loc="upper right")

  # Samples per epoch: the working set T_j shrinks as blocks learn samples.
  samples, samples_std = mean_std_rows([s["train_samples_per_block"][:m] for s in q_seeds])
  ax_samples.bar(x[:m], samples, 0.6, yerr=samples_std, color=colors, capsize=3, label="QuickNet block")
  tops = list(samples + samples_std)
  if e_seeds:
    n_train = results.get("num_train") or q_seeds[0]["train_samples_per_block"][0]
    ax_samples.bar(x[m:], [n_train], 0.6, color=E2E_COLOR, label="end-to-end")
    tops.append(n_train)
  for xi, v, top in zip(x, list(samples) + ([n_train] if e_seeds else []), tops):
    ax_samples.annotate(
      f"{v:,.0f}", (xi, top), ha="center", va="bottom", xytext=(0, 3), textcoords="offset points", fontsize=9
    )
  ax_samples.set_ylim(0, 1.12 * max(tops))
  ax_samples.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
  ax_samples.set_xticks(x, labels)
  ax_samples.set_ylabel("training samples per epoch")
  ax_samples.set_title("Samples per epoch (the working set shrinks)")

  # Total training cost, QuickNet stacked by block (every part: training, cache, commitment, ...).
  per_block = np.asarray([_block_flops(s)[:m] for s in q_seeds]).mean(axis=0)
  e_total = float(np.mean([s["training_flops"] for s in e_seeds])) if e_seeds else 0.0
  scale, unit = flops_unit(max(per_block.sum(), e_total))
  bottom = 0.0
  for j in range(m):
    ax_cost.bar(0, per_block[j] / scale, 0.6, bottom=bottom, color=colors[j], label=f"block {j}")
    bottom += per_block[j] / scale
  ax_cost.annotate(f"{bottom:.3g}", (0, bottom), ha="center", va="bottom", xytext=(0, 2), textcoords="offset points")
  ticks = ["QuickNet"]
  if e_seeds:
    ax_cost.bar(1, e_total / scale, 0.6, color=E2E_COLOR, label="end-to-end")
    ax_cost.annotate(
      f"{e_total / scale:.3g}",
      (1, e_total / scale),
      ha="center",
      va="bottom",
      xytext=(0, 2),
      textcoords="offset points",
    )
    ticks.append("end-to-end")
  ax_cost.set_xticks(range(len(ticks)), ticks)
  ax_cost.set_xlim(-0.8, len(ticks) - 0.2 + (1.2 if m > 2 else 0.6))  # room for the legend
  ax_cost.set_ylabel(f"total training cost ({unit})")
  ax_cost.set_title("Training cost")
  ax_cost.legend(loc="upper right")

  # Test accuracy while training, against the training cost spent so far.
  points = accuracy_during_training(results)
  all_x = [v for xs, _ in points["quicknet"] + points["end_to_end"] for v in xs]
  scale, unit = flops_unit(max(all_x) if all_x else 1.0)
  for i, (xs, ys) in enumerate(points["end_to_end"]):
    label = None
    if i == 0:
      label = (
        "end-to-end, after each epoch"
        if points["end_to_end_kind"] == "test"
        else "end-to-end, each epoch (validation split: run logged no test accuracy)"
      )
    ax_acc.plot(
      xs / scale,
      100 * ys,
      color=E2E_COLOR,
      alpha=0.8,
      lw=1.3,
      marker=".",
      ms=4,
      label=label,
      ls="-" if points["end_to_end_kind"] == "test" else "--",
    )
  for i, (xs, ys) in enumerate(points["quicknet_epochs"]):
    label = "QuickNet, deployable after every epoch" if i == 0 else None
    ax_acc.plot(xs / scale, 100 * ys, "-", color=colors[-1], lw=1.0, alpha=0.7, label=label)
  for i, (xs, ys) in enumerate(points["quicknet"]):
    label = None
    if i == 0:
      label = (
        "QuickNet, after each block" if points["quicknet_kind"] == "test" else "QuickNet, after first and last block"
      )
    line = "none" if points["quicknet_epochs"] else "-"  # the epoch line already joins the blocks
    ax_acc.plot(xs / scale, 100 * ys, ls=line, color=colors[-1], lw=1.5, marker="o", ms=5, label=label)
  ax_acc.set_xlim(left=0)
  low, high = ax_acc.get_ylim()
  ax_acc.set_ylim(low - 0.45 * (high - low), high)  # room for the legend below the lines
  ax_acc.set_xlabel(f"training cost so far ({unit})")
  ax_acc.set_ylabel("test accuracy (%)")
  ax_acc.set_title("Accuracy during training (one line per seed)")
  ax_acc.legend(loc="lower right")
  fig.suptitle(f"Training: QuickNet vs end-to-end ({_title(results)})")
  return fig


@_with_style
def class_distribution_figure(results: dict, class_names: Sequence[str]) -> Figure:
  """Fig. 3: how many training samples of each class each block trains on (stacked bars).

  Args:
    results: a run's results.json dict, with per-seed entries.
    class_names: one name per class; numbers are shown when it is empty or of another length.

  Returns:
    The figure (counts are means over seeds).
  """
  q_seeds = _seeds(results, "quicknet")
  m = _num_blocks(q_seeds)
  counts = np.asarray([s["class_counts_per_block"][:m] for s in q_seeds], float).mean(axis=0)  # [m, C]
  num_classes = counts.shape[1]
  names = list(class_names) if class_names and len(class_names) == num_classes else [str(c) for c in range(num_classes)]
  cmap = colormaps["tab10" if num_classes <= 10 else "tab20"]
  fig = _new_figure(8, 4.8)
  ax = fig.subplots()
  bottom = np.zeros(m)
  for c in range(num_classes):
    ax.bar(
      np.arange(m),
      counts[:, c],
      0.65,
      bottom=bottom,
      color=cmap(c % cmap.N),
      label=names[c],
      edgecolor="white",
      linewidth=0.4,
    )
    bottom += counts[:, c]
  for j, total in enumerate(bottom):
    ax.annotate(f"{total:,.0f}", (j, total), ha="center", va="bottom", xytext=(0, 2), textcoords="offset points")
  ax.set_xticks(np.arange(m), _bar_labels(m))
  ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
  ax.set_ylabel("training samples (working set $T_j$)")
  ax.set_title(f"Class distribution of each block's training set ({_title(results)})")
  ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), title="class", frameon=False)
  return fig


def _operating_label(results: dict) -> str:
  t = results.get("exit_threshold", float("nan"))
  mean = " (mean over seeds)" if len(_seeds(results, "quicknet")) > 1 else ""
  return f"operating point: t = {t:.2f}{mean}, chosen on validation"


@_with_style
def inference_cost_figure(results: dict) -> Figure:
  """Fig. 4: test accuracy vs mean inference cost as the exit threshold varies.

  With and without the commitment heads, the operating point chosen on validation, and the end-to-end
  network.

  Args:
    results: a run's results.json dict, with per-seed entries.

  Returns:
    The figure.
  """
  q = results["quicknet"]
  e = results.get("end_to_end")
  curves = [
    ("confidence + commitment", q.get("curve", []), "o", "-"),
    ("confidence only", q.get("curve_confidence_only", []), "s", "--"),
  ]
  values = [p["inference_flops"] for _, c, _, _ in curves for p in c] + [q["inference_flops"]]
  if e:
    values.append(e["inference_flops"])
  scale, unit = flops_unit(max(values))
  fig = _new_figure(8, 5.6)
  ax = fig.subplots()
  colors = ("tab:blue", "tab:gray")
  for (label, curve, marker, ls), color in zip(curves, colors):
    if not curve:
      continue
    xs = np.asarray([p["inference_flops"] for p in curve]) / scale
    ys = 100 * np.asarray([p["test_accuracy"] for p in curve])
    ax.plot(xs, ys, ls=ls, marker=marker, ms=4, color=color, label=f"QuickNet, {label}")
  ax.plot(
    [q["inference_flops"] / scale],
    [100 * q["test_accuracy"]],
    "*",
    ms=14,
    color="tab:green",
    markeredgecolor="black",
    label=_operating_label(results),
  )
  if e:
    ax.plot(
      [e["inference_flops"] / scale],
      [100 * e["test_accuracy"]],
      "D",
      ms=8,
      color=E2E_COLOR,
      markeredgecolor="black",
      label="end-to-end",
    )
  thresholds = [p["threshold"] for p in q.get("curve", [])]
  if thresholds:
    ax.text(
      0.99,
      0.98,
      f"one point per exit threshold t = {min(thresholds):g} … {max(thresholds):g}\n"
      "(a higher t sends more samples deeper)",
      transform=ax.transAxes,
      ha="right",
      va="top",
      fontsize=8,
      color="dimgray",
    )
  ax.set_xlabel(f"mean inference cost per test sample ({unit})")
  ax.set_ylabel("test accuracy (%)")
  ax.set_title(f"Inference cost vs accuracy over exit thresholds ({_title(results)})")
  ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
  return fig


def exit_counts_per_class(results: dict) -> Optional[np.ndarray]:
  """[C, E] test samples of each class leaving at each exit, summed over seeds (None if not recorded).

  Args:
    results: a run's results.json dict, with per-seed entries.

  Returns:
    A float array [C, E], or None when no seed recorded its exits per class.
  """
  seeds = [s for s in _seeds(results, "quicknet") if "test_exit_counts_per_class" in s]
  if not seeds:
    return None
  return np.sum([np.asarray(s["test_exit_counts_per_class"], float) for s in seeds], axis=0)


@_with_style
def exits_per_class_figure(results: dict, class_names: Sequence[str]) -> Optional[Figure]:
  """Which exit each class's test samples take at the operating threshold (fractions per class).

  Each class's bar is annotated with its test accuracy.

  Args:
    results: a run's results.json dict, with per-seed entries.
    class_names: one name per class; numbers are shown when it is empty or of another length.

  Returns:
    The figure, or None when the run did not record the exits per class.
  """
  counts = exit_counts_per_class(results)
  if counts is None:
    return None
  correct = np.sum(
    [
      np.asarray(s["test_correct_counts_per_class"], float)
      for s in _seeds(results, "quicknet")
      if "test_correct_counts_per_class" in s
    ],
    axis=0,
  )
  num_classes, num_exits = counts.shape
  used = int(max(np.flatnonzero(counts.sum(axis=0)).max(initial=0) + 1, _num_blocks(_seeds(results, "quicknet"))))
  names = list(class_names) if class_names and len(class_names) == num_classes else [str(c) for c in range(num_classes)]
  totals = np.maximum(counts.sum(axis=1), 1)
  fractions = counts / totals[:, None]
  colors = block_colors(used)
  fig = _new_figure(8, 1.3 + 0.36 * num_classes)
  ax = fig.subplots()
  y = np.arange(num_classes)[::-1]  # first class on top
  left = np.zeros(num_classes)
  for j in range(used):
    ax.barh(
      y, 100 * fractions[:, j], 0.7, left=left, color=colors[j], label=f"exit {j}", edgecolor="white", linewidth=0.4
    )
    for yi, lf, f in zip(y, left, fractions[:, j]):
      if f >= 0.08:  # too narrow a segment has no room for its number
        ax.text(
          lf + 50 * f,
          yi,
          f"{100 * f:.0f}",
          ha="center",
          va="center",
          fontsize=8,
          color="white" if j >= used / 2 else "black",
        )
    left += 100 * fractions[:, j]
  accuracy = correct.sum(axis=1) / totals
  for yi, a in zip(y, accuracy):
    ax.text(101, yi, f"{100 * a:.1f}%", va="center", fontsize=8)
  ax.text(101, num_classes - 0.45, "accuracy", fontsize=8, va="bottom")
  ax.set_ylim(-0.6, num_classes)
  ax.set_yticks(y, names)
  ax.set_xlim(0, 112)
  ax.set_xticks([0, 20, 40, 60, 80, 100])
  ax.grid(axis="y", visible=False)
  ax.set_xlabel("test samples of the class leaving at each exit (%)")
  ax.set_title(
    f"Which exit each class takes (t = {results.get('exit_threshold', float('nan')):.2f}; {_title(results)})"
  )
  fig.legend(loc="outside lower center", ncol=used, frameon=False)
  return fig


@_with_style
def deploy_while_training_figure(results: dict, fractions: Sequence[float] = (0.95, 0.99)) -> Figure:
  """Fig. 2, continuous: test accuracy of what one could deploy against the training FLOPs spent so far.

  After every epoch of both methods (the QuickNet: the cascade of its frozen blocks plus the block in
  training; dots where a block is frozen), with `fractions` of the end-to-end final accuracy marked.

  Args:
    results: a run's results.json dict, with per-seed entries.
    fractions: the fractions of the end-to-end network's mean final test accuracy drawn as lines.

  Returns:
    The figure.
  """
  points = accuracy_during_training(results)
  e_seeds = _seeds(results, "end_to_end")
  fig = _new_figure(8, 5.2)
  ax = fig.subplots()
  all_x = [v for xs, _ in points["quicknet_epochs"] + points["quicknet"] + points["end_to_end"] for v in xs]
  scale, unit = flops_unit(max(all_x) if all_x else 1.0)
  color = block_colors(3)[-1]
  epoch_lines = points["quicknet_epochs"] or points["quicknet"]
  for i, (xs, ys) in enumerate(epoch_lines):
    label = "QuickNet, after every block epoch" if points["quicknet_epochs"] else "QuickNet, after each block"
    ax.plot(xs / scale, 100 * ys, "-", color=color, lw=1.2, alpha=0.8, label=label if i == 0 else None)
  for i, (xs, ys) in enumerate(points["quicknet"]):
    ax.plot(xs / scale, 100 * ys, "o", color=color, ms=4, label="QuickNet, block frozen" if i == 0 else None)
  for i, (xs, ys) in enumerate(points["end_to_end"]):
    label = "end-to-end, after every epoch" if i == 0 else None
    ax.plot(xs / scale, 100 * ys, "-", color=E2E_COLOR, lw=1.2, marker=".", ms=3, alpha=0.8, label=label)
  ys_all = [100 * v for _, ys in epoch_lines + points["end_to_end"] for v in ys]
  if e_seeds:
    final = float(np.mean([s["test_accuracy"] for s in e_seeds]))
    for fraction in fractions:
      ax.axhline(100 * fraction * final, color="dimgray", lw=0.8, ls=":")
      ax.text(
        ax.get_xlim()[1],
        100 * fraction * final,
        f" {100 * fraction:g} % of end-to-end",
        va="center",
        fontsize=8,
        color="dimgray",
      )
    ys_all.append(100 * min(fractions) * final)
  if ys_all:  # the first epochs of block 0 sit far below; show the range the claim is about
    high = max(ys_all)
    low = max(min(ys_all), high - 25.0)
    ax.set_ylim(low - 0.5, high + 0.5)
  ax.set_xlim(left=0)
  ax.set_xlabel(f"training cost spent so far ({unit})")
  ax.set_ylabel("test accuracy of the deployable network (%)")
  ax.set_title(f"Deploy while training ({_title(results)}; one line per seed)")
  ax.legend(loc="lower right")
  return fig


@_with_style
def commitment_curves_figure(study: dict, method: str = "joint") -> Figure:
  """Fig. 4 of a commitment study (`workflows.study`).

  Test accuracy against inference cost (fraction of the full network's) over exit thresholds, confidence
  only vs confidence + commitment, mean ± std over seeds; the study's budgets are marked.

  Args:
    study: the study's results.json dict.
    method: the study's method whose curves are drawn.

  Returns:
    The figure.
  """
  fig = _new_figure(8, 5.2)
  ax = fig.subplots()
  styles = {"confidence": ("tab:gray", "s", "--"), "commitment": ("tab:blue", "o", "-")}
  titles = {"confidence": "confidence only", "commitment": "confidence + commitment"}
  for name, (color, marker, ls) in styles.items():
    curve = study[method]["curves"][name]
    xs = 100 * np.asarray([p["cost_fraction"] for p in curve])
    ys = 100 * np.asarray([p["accuracy"] for p in curve])
    sd = 100 * np.asarray([p.get("accuracy_std", 0.0) for p in curve])
    ax.plot(xs, ys, ls=ls, marker=marker, ms=3, color=color, label=titles[name])
    ax.fill_between(xs, ys - sd, ys + sd, color=color, alpha=0.15, lw=0)
  for budget in study[method]["budgets"]:
    ax.axvline(100 * budget, color="dimgray", lw=0.6, ls=":")
  ax.set_xlabel("mean inference cost (% of the full network's)")
  ax.set_ylabel("test accuracy (%)")
  name = PRETTY_NAMES.get(study.get("dataset", ""), study.get("dataset", ""))
  ax.set_title(f"Commitment heads on a jointly trained multi-exit {study.get('model', '')} ({name})")
  ax.legend(loc="lower right")
  return fig


def render_all(results: dict, out_dir: str, class_names: Sequence[str] = ()) -> dict:
  """Writes every figure that the results allow as PNG under `out_dir`.

  The figures are those of `FIGURE_FILES`, under those file names.

  Args:
    results: a run's results.json dict, with per-seed entries.
    out_dir: the folder the PNGs go to (created if missing).
    class_names: one name per class, for the figures that name classes.

  Returns:
    A dict mapping each written figure's name to its path, and "skipped" to a dict mapping each figure
    not written to the reason.
  """
  os.makedirs(out_dir, exist_ok=True)
  builders = {
    "training": lambda: training_figure(results),
    "class_distribution": lambda: class_distribution_figure(results, class_names),
    "inference_cost": lambda: inference_cost_figure(results),
    "exits_per_class": lambda: exits_per_class_figure(results, class_names),
  }
  written, skipped = {}, {}
  for name, build in builders.items():
    fig = build()
    if fig is None:
      skipped[name] = (
        "this run did not record which exit each test sample takes: re-run the experiment with this version to get it"
      )
      continue
    path = os.path.join(out_dir, FIGURE_FILES[name])
    fig.savefig(path, dpi=DPI)
    written[name] = path
  written["skipped"] = skipped
  return written


SCHEDULE_STYLES = {
  "sequential": ("QuickNet, sequential", "tab:blue"),
  "decoupled": ("QuickNet, decoupled", "tab:green"),
  "end_to_end": ("end-to-end", E2E_COLOR),
}


@_with_style
def schedules_figure(summary: dict) -> Figure:
  """Fig. 2 (bottom right) for the three schedules: per part of a decoupled study, the test accuracy of
  what one could deploy after every epoch against the training FLOPs spent so far, a line per seed.

  Args:
    summary: what `workflows.decoupled_study.run_decoupled_study` returns.

  Returns:
    The figure.
  """
  parts = summary["parts"]
  cols = min(2, len(parts))
  rows = (len(parts) + cols - 1) // cols
  fig = _new_figure(5.2 * cols, 3.8 * rows)
  axes = np.atleast_1d(fig.subplots(rows, cols)).reshape(-1)
  for ax, part in zip(axes, parts):
    all_x = [v for method in SCHEDULE_STYLES for c in part["curves"][method] for v in c["flops"]]
    scale, unit = flops_unit(max(all_x) if all_x else 1.0)
    ys = []
    for method, (label, color) in SCHEDULE_STYLES.items():
      for i, c in enumerate(part["curves"][method]):
        x, y = np.asarray(c["flops"]) / scale, 100 * np.asarray(c["accuracy"])
        ax.plot(x, y, "-", color=color, lw=1.1, alpha=0.8, label=label if i == 0 else None)
        ys.extend(y)
    if ys:  # the first epochs sit far below; show the range where the methods finish
      high = max(ys)
      ax.set_ylim(max(min(ys), high - 10.0) - 0.3, high + 0.3)
    ax.set_xlim(left=0)
    ax.set_xlabel(f"training cost spent so far ({unit})")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{PRETTY_NAMES.get(part['dataset'], part['dataset'])}, {part['model']}")
    ax.legend(loc="lower right")
  for ax in axes[len(parts) :]:
    ax.set_visible(False)
  return fig

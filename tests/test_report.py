"""`python -m experiments.report` on a tiny run's workdir: every figure file, the expected series in
each plot, results.md with the figures, and the same report from an interrupted run and from a run
made before the metrics log existed (as runs/fmnist was)."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from matplotlib.container import BarContainer
from test_metrics import CLASS_NAMES, tiny_run

from quicknets_jax.reporting import figures
from quicknets_jax.workflows import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _legend(ax):
  return ax.get_legend_handles_labels()[1]


def _bars(ax):
  return [c for c in ax.containers if isinstance(c, BarContainer)]


def test_cli_writes_every_figure_and_results_md(tmp_path):
  workdir = tiny_run()
  figures_dir = tmp_path / "figs"
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.report",
      f"--workdir={workdir}",
      f"--figures_dir={figures_dir}",
      f"--results_md={tmp_path / 'results.md'}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "PYTHONPATH": ROOT},
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  for name in figures.FIGURE_FILES.values():
    path = figures_dir / name
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
  text = (tmp_path / "results.md").read_text()
  assert "| QuickNet |" in text and "## Figures" in text
  for name in figures.FIGURE_FILES.values():
    assert f"](figs/{name})" in text  # relative to results.md, so the Markdown renders anywhere


def test_each_plot_has_the_expected_series():
  results = report.load_workdir(tiny_run())
  num_blocks = len(results["quicknet"]["train_samples_per_block"])
  assert num_blocks == 3

  fig = figures.training_figure(results)
  epochs, samples, cost, accuracy = fig.axes
  assert _legend(epochs) == ["QuickNet block", "the block's commitment head", "end-to-end"]
  assert [len(c) for c in _bars(samples)] == [num_blocks, 1]  # QuickNet blocks, end-to-end
  assert _legend(cost) == [f"block {j}" for j in range(num_blocks)] + ["end-to-end"]
  assert _legend(accuracy) == ["end-to-end, after each epoch", "QuickNet, after each block"]
  e2e_line, quicknet_line = accuracy.get_lines()  # one seed: one line per method
  assert len(e2e_line.get_xdata()) == 2 and len(quicknet_line.get_xdata()) == num_blocks

  fig = figures.class_distribution_figure(results, results["class_names"])
  assert _legend(fig.axes[0]) == list(CLASS_NAMES)
  assert [len(c) for c in _bars(fig.axes[0])] == [num_blocks] * len(CLASS_NAMES)

  fig = figures.inference_cost_figure(results)
  labels = _legend(fig.axes[0])
  assert len(labels) == 4 and labels[:2] == ["QuickNet, confidence + commitment", "QuickNet, confidence only"]
  assert labels[3] == "end-to-end"
  assert len(fig.axes[0].get_lines()[0].get_xdata()) == len(results["quicknet"]["curve"])

  fig = figures.exits_per_class_figure(results, results["class_names"])
  assert _legend(fig.axes[0]) == [f"exit {j}" for j in range(num_blocks)]
  rows = {t.get_text(): t.get_position()[1] for t in fig.axes[0].get_yticklabels()}
  assert sorted(rows, key=rows.get, reverse=True) == list(CLASS_NAMES)  # first class on top


def _copy_run(tmp_path):
  target = tmp_path / "run"
  shutil.copytree(tiny_run(), target, ignore=shutil.ignore_patterns("*checkpoints*", "tensorboard"))
  return target


def _edit_json(path, fn):
  with open(path) as f:
    data = json.load(f)
  fn(data)
  with open(path, "w") as f:
    json.dump(data, f)


def test_report_on_a_run_from_before_the_metrics_log(tmp_path):
  run = _copy_run(tmp_path)

  def strip_quicknet(d):
    for key in (
      "test_accuracy_after_block",
      "exit_threshold_after_block",
      "test_exit_counts_per_class",
      "test_correct_counts_per_class",
    ):
      d.pop(key)

  def strip_e2e(d):
    for h in d["history"]:
      h.pop("test_accuracy")

  _edit_json(run / "seed_0" / "quicknet.json", strip_quicknet)
  _edit_json(run / "seed_0" / "end_to_end.json", strip_e2e)
  _edit_json(run / "results.json", lambda d: d.pop("class_names"))
  os.remove(run / "metrics.jsonl")
  out = report.write_report(str(run))
  assert set(out["figures"]) == {"training", "class_distribution", "inference_cost"}
  assert "re-run" in out["skipped"]["exits_per_class"]
  assert "No exits per class figure" in (run / "results.md").read_text()
  accuracy = figures.training_figure(report.load_workdir(str(run))).axes[3]
  assert _legend(accuracy) == [
    "end-to-end, each epoch (validation split: run logged no test accuracy)",
    "QuickNet, after first and last block",
  ]


def test_report_on_an_interrupted_run(tmp_path):
  run = _copy_run(tmp_path)
  os.remove(run / "seed_0" / "end_to_end.json")
  os.remove(run / "results.json")
  out = report.write_report(str(run))
  assert out["unfinished"] == ["seed 0: end-to-end"]
  assert len(out["figures"]) == len(figures.FIGURE_FILES)
  text = (run / "results.md").read_text()
  assert "Partial run" in text and "| End-to-End |" not in text
  os.remove(run / "seed_0" / "quicknet.json")
  with pytest.raises(ValueError, match="let the run finish one seed"):
    report.load_workdir(str(run))
  with pytest.raises(ValueError, match="no config.json"):
    report.load_workdir(str(tmp_path / "nothing"))

"""scripts/compare_results.py: exact comparison, and the tolerance mode for changes allowed to alter
the last bits of floats."""

import json
import os
import subprocess
import sys

from scripts.compare_results import compare, tolerance_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEFORE = {
  "config": {"seeds": [0, 1]},
  "quicknet": {"test_accuracy": 0.875, "threshold": 0.5, "history": [{"epochs": 3, "loss": 0.25}]},
  "end_to_end": {"test_accuracy": 0.5, "seconds": 12.0},
}


def _changed(**changes):
  after = json.loads(json.dumps(BEFORE))
  for path, value in changes.items():
    node = after
    *parents, last = path.split("__")
    for key in parents:
      node = node[int(key)] if isinstance(node, list) else node[key]
    node[last] = value
  return after


def test_exact_comparison_skips_wall_clock_and_lists_added_settings_apart():
  after = _changed(end_to_end__seconds=99.0, config__schedule="sequential")
  assert compare(BEFORE, after) == ([], ["/config/schedule: 'sequential' (new)"])
  differences, _ = compare(BEFORE, _changed(quicknet__test_accuracy=0.8750001))
  assert differences == ["/quicknet/test_accuracy: 0.875 before, 0.8750001 after"]


def test_the_tolerance_report_separates_round_off_from_discrete_changes():
  after = _changed(quicknet__test_accuracy=0.875 * (1 + 2e-7), end_to_end__test_accuracy=0.5 * (1 - 1e-6))
  report = tolerance_report(BEFORE, after)
  assert report.discrete == [] and report.where == "/end_to_end/test_accuracy"
  assert abs(report.largest_relative - 1e-6) < 1e-9
  # an epoch count, a threshold and a list's length are choices, not round-off
  after = _changed(quicknet__threshold=0.6, quicknet__history__0__epochs=4)
  after["quicknet"]["history"].append({})
  report = tolerance_report(BEFORE, after)
  assert report.largest_relative == 0.0 and report.discrete == [
    "/quicknet/threshold: 0.5 before, 0.6 after",
    "/quicknet/history: 1 entries before, 2 after",
  ]


def test_the_command_exits_by_the_tolerance(tmp_path):
  before, after = tmp_path / "before.json", tmp_path / "after.json"
  before.write_text(json.dumps(BEFORE))
  after.write_text(json.dumps(_changed(quicknet__history__0__loss=0.25 * (1 + 1e-6))))

  def run(*flags):
    return subprocess.run(
      [sys.executable, "scripts/compare_results.py", *flags, str(before), str(after)],
      cwd=ROOT,
      env={**os.environ, "PYTHONPATH": ROOT},
      capture_output=True,
      text=True,
    )

  exact, loose, tight = run(), run("--tolerance=1e-5"), run("--tolerance=1e-7")
  assert exact.returncode == 1 and "1 differences" in exact.stdout
  assert (
    loose.returncode == 0 and "largest relative float difference 1e-06 at /quicknet/history[0]/loss" in loose.stdout
  )
  assert tight.returncode == 1 and "0 discrete differences" in tight.stdout

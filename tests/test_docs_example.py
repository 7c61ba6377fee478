"""The "Your own network" page's code, run as written: its files are written out from the page and its
script runs in a fresh process on the real digits, then its run directory is read back."""

import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.path.join(ROOT, "docs", "your_own_network.md")


def page_files() -> dict:
  """{file name: code} of the page's Python blocks that start with a `# NAME.py` line."""
  text = open(PAGE).read()
  blocks = re.findall(r"```python\n(.*?)```", text, re.S)
  return {m.group(1): block for block in blocks if (m := re.match(r"# (\w+\.py)\n", block))}


def code_lines(code: str) -> int:
  return sum(1 for line in code.splitlines() if line.strip() and not line.strip().startswith("#"))


@pytest.mark.slow  # trains the page's example (its API: test_own_network)
def test_the_pages_example_runs_as_written_in_at_most_30_lines(tmp_path):
  files = page_files()
  assert set(files) == {"my_cnn.py", "train_digits.py"}
  assert sum(code_lines(code) for code in files.values()) <= 30
  for name, code in files.items():
    (tmp_path / name).write_text(code)
  env = dict(os.environ, PYTHONPATH=ROOT)
  out = subprocess.run(
    [sys.executable, "train_digits.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
  )
  assert out.returncode == 0, out.stderr[-3000:]
  line = next(line for line in out.stdout.splitlines() if line.startswith("QuickNet"))
  quicknet, end_to_end = (float(v) for v in re.findall(r"\d\.\d+", line))
  assert quicknet > 0.9 and end_to_end > 0.9  # 10 classes: chance is 0.1
  results = json.load(open(tmp_path / "runs" / "digits" / "results.json"))
  assert results["model"] == "my_cnn:small_cnn" and len(results["quicknet"]["per_seed"]) == 3
  manifest = json.load(open(tmp_path / "runs" / "digits_cascade" / "manifest.json"))
  assert len(manifest["blocks"]) == 3 and manifest["divisor"] == 1.0

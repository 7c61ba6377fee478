"""`benchmarks.accelerator` at CPU sizes: every row it reports is there and makes sense."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from benchmarks import accelerator
from quicknets_jax import models
from quicknets_jax.algorithms.forward import all_exit_outputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_vgg():
  return models.build_model("vgg", accelerator.SHAPE, 10, cfg="4,M,8", classifier_width=16)


@pytest.mark.slow  # the benchmark's full row set
def test_training_rows_cover_end_to_end_and_each_block_in_each_dtype():
  model = _tiny_vgg()
  for dtype in accelerator.DTYPES:
    rows = accelerator.training_rows(model, dtype, batch_size=8, steps=2, max_blocks=None, peak=1e12)
    assert [r["step"] for r in rows] == ["end-to-end"] + [f"block {j}" for j in range(model.num_blocks)]
    for r in rows:
      assert r["dtype"] == dtype and r["samples_per_second"] > 0 and r["compile_seconds"] > 0
      assert 0 < r["peak_fraction"] == pytest.approx(r["train_flops_per_second"] / 1e12)
    # the FLOP rate is 3 forwards per trained sample of what the row trains
    e2e = rows[0]
    assert e2e["train_flops_per_second"] == pytest.approx(3 * model.end_to_end_cost() * e2e["samples_per_second"])


@pytest.mark.slow  # the benchmark's inference rows
def test_inference_rows_exit_more_at_lower_thresholds_and_answer_like_the_evaluator():
  model = _tiny_vgg()
  rows = accelerator.inference_rows(model, images=128, batch_size=32)
  assert [r["percentile"] for r in rows] == [25, 50, 75]
  assert rows[0]["threshold"] <= rows[1]["threshold"] <= rows[2]["threshold"]
  for r in rows:
    assert r["mismatches"] == 0  # the cascade's answers are the vectorized rule's
    assert r["cascade_samples_per_second"] > 0 and r["end_to_end_samples_per_second"] > 0
  # heads that always commit: a lower threshold lets more samples leave early, so fewer FLOPs
  assert rows[0]["cascade_flops"] < rows[2]["cascade_flops"]


def test_committing_heads_commit_on_every_input():
  model = _tiny_vgg()
  variables = accelerator.committing(model.init(jax.random.PRNGKey(0)))
  _, commits = all_exit_outputs(model, variables, np.random.default_rng(0).normal(size=(16, 32, 32, 3)), 16)
  assert np.all(np.asarray(commits) > 0)


@pytest.mark.slow
def test_the_benchmark_runs_end_to_end_on_cpu(tmp_path):
  out = subprocess.run(
    [sys.executable, "-m", "benchmarks.accelerator", "--max_blocks=1", f"--out_dir={tmp_path}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  payload = json.load(open(tmp_path / f"accelerator_small_{jax.default_backend()}.json"))
  assert payload["size"] == "small" and set(payload["matmul_peak_flops_per_second"]) == {"bfloat16", "float32"}
  assert {r["dtype"] for r in payload["training"]} == {"bfloat16", "float32"}
  assert len(payload["inference"]) == 3
  assert "Cascade inference" in open(tmp_path / f"accelerator_small_{jax.default_backend()}.md").read()

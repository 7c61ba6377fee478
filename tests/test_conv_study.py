"""The conv study end to end on a slice of the real Fashion-MNIST with a tiny VGG (a pipeline
check, never a result): the deployable cascade measured after every block epoch, the reach costs, the
cascade on the clock, QuickNet+ variants chosen on validation, the jointly trained conv net's commitment
study, the report and its figures; and the study's flagfiles say what the README says they do."""

import json
import os

import numpy as np
import pytest

from experiments import conv_configs as conv_entry
from quicknets_jax.core import curves
from quicknets_jax.workflows import conv_study
from quicknets_jax.workflows.experiment_config import ExperimentConfig, StudyConfig

pytestmark = pytest.mark.skipif(
  not os.path.isdir("/usr/share/datasets/fashion-mnist"), reason="needs apt-get install dataset-fashion-mnist"
)

TINY = dict(
  dataset="fashion_mnist",
  max_train=500,
  max_test=200,
  model="vgg",
  vgg_cfg="4,M,8",
  width=64,  # channels as written in vgg_cfg
  num_blocks=2,
  classifier_width=8,
  seeds=(0, 1),
  batch_size=64,
  learning_rate=0.003,
  max_epochs=2,
  eval_batch_size=256,
)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("conv_study"))
  experiment = ExperimentConfig().replace(**TINY, deploy_curve=True)
  commitment = StudyConfig().replace(**TINY, methods=("joint",), ramp_epochs=2)
  variants = {"budget": dict(budget="learned_set")}
  summary = conv_study.run_conv_study(
    workdir, {"fashion_mnist": experiment}, variants, commitment, log=lambda m: None, speed_repeats=2
  )
  return workdir, summary


@pytest.mark.slow  # a whole study (the deployable curve itself: test_quicknet)
def test_every_block_epoch_has_a_deployable_point_and_the_curve_is_in_training_order(study):
  workdir, _ = study
  with open(os.path.join(workdir, "fashion_mnist", "results.json")) as f:
    results = json.load(f)
  for seed in results["quicknet"]["per_seed"]:
    epochs = [e for block in seed["history"] for e in block["epochs"]]
    assert epochs and all(0.0 <= e["cascade_test_accuracy"] <= 1.0 for e in epochs)
    flops, accuracy = curves.quicknet_every_epoch(seed)
    after_blocks = curves.quicknet_after_blocks(seed)
    assert len(flops) == len(epochs) + len(after_blocks[0])  # every epoch, then every frozen block
    assert np.all(np.diff(flops) >= 0) and flops[-1] == pytest.approx(seed["training_flops"], rel=1e-6)
    # the point where the last block is frozen is the QuickNet the run reports
    assert accuracy[-1] == pytest.approx(seed["test_accuracy"])


@pytest.mark.slow  # a whole study (the deployable curve itself: test_quicknet)
def test_the_summary_has_a_row_the_reach_costs_and_a_verdict(study):
  _, summary = study
  (row,) = summary["rows"]
  assert row["dataset"] == "fashion_mnist" and len(row["inference_speed"]) == 2
  assert row["inference_mismatches"] == 0  # the cascade on the clock answers as the evaluator does
  assert all(s["speedup"] > 0 and s["flop_ratio"] > 0 for s in row["inference_speed"])
  for fraction in ("0.95", "0.99"):
    reach = row["reach"][fraction]
    for s in reach["per_seed"]:
      assert s["target"] == pytest.approx(
        float(fraction)
        * next(e["test_accuracy"] for e in summary_results(study)["end_to_end"]["per_seed"] if e["seed"] == s["seed"])
      )
      # a method either reaches it at some point of its curve or is listed as not reaching it
      for method in ("quicknet", "end_to_end"):
        assert (s[method] is None) == (s["seed"] in reach["not_reached"][method])
  claims = [v["claim"] for v in summary["verdict"]]
  assert len(claims) == 6 and all(v["holds"] in ("yes", "no", "partly") for v in summary["verdict"])
  assert summary["plus"]["chosen"] in ("faithful", "budget")
  diffs = summary["commitment"]["differences"]["commitment_minus_confidence"]["matched_budget_accuracy"]
  assert len(diffs) == 3


def summary_results(study):
  workdir, _ = study
  with open(os.path.join(workdir, "fashion_mnist", "results.json")) as f:
    return json.load(f)


@pytest.mark.slow  # a whole study (the deployable curve itself: test_quicknet)
def test_the_report_and_the_figures_are_written(study, tmp_path):
  workdir, summary = study
  with open(os.path.join(workdir, "conv_study.md")) as f:
    text = f.read()
  for heading in ("### Fashion-MNIST", "QuickNet+", "commitment question", "Verdict"):
    assert heading in text
  paths = conv_study.render_figures(workdir, summary, str(tmp_path))
  names = sorted(os.path.basename(p) for p in paths)
  assert names == ["conv_commitment.png", "conv_fashion_mnist_deploy.png", "conv_fashion_mnist_training.png"]
  assert all(os.path.getsize(p) > 10_000 for p in paths)


@pytest.mark.slow  # a whole study (the deployable curve itself: test_quicknet)
def test_a_finished_study_is_read_back_not_redone(study):
  workdir, summary = study
  experiment = ExperimentConfig().replace(**TINY, deploy_curve=True)
  again = conv_study.run_conv_study(workdir, {"fashion_mnist": experiment}, log=lambda m: None, speed_repeats=2)
  # the same runs and the same timings (cached per seed), without the parts left out this time
  assert again["rows"][0]["inference_speed"] == summary["rows"][0]["inference_speed"]
  assert again["rows"][0]["quicknet_accuracy"] == summary["rows"][0]["quicknet_accuracy"]
  assert again["plus"] is None and again["commitment"] is None


def test_choose_variant_uses_validation_only():
  def results(val, flops):
    return {"quicknet": {"val_accuracy_at_threshold": val, "training_flops": flops}}

  candidates = {"faithful": results(0.90, 10.0), "cheap": results(0.91, 4.0), "cheaper_worse": results(0.80, 1.0)}
  assert conv_study.choose_variant(candidates, 0.905) == "cheap"
  assert conv_study.choose_variant(candidates, 0.95) == "cheap"  # none good enough: the most accurate
  candidates["faithful"] = results(0.99, 10.0)
  assert conv_study.choose_variant(candidates, 0.95) == "faithful"


def test_first_reach_is_the_first_point_at_or_above_the_target():
  assert curves.first_reach([1, 2, 3, 4], [0.5, 0.9, 0.8, 0.95], 0.85) == 2.0
  assert curves.first_reach([1, 2], [0.5, 0.6], 0.85) is None


def test_the_study_flagfiles_are_the_stated_conv_setup():
  config = conv_entry.experiment_config("fashion_mnist", (0, 1, 2))
  assert config.model.name == "vgg" and config.model.width == 8 and config.model.num_blocks == 8
  assert config.deploy_curve and config.fit.learning_rate == 3e-4 and config.exit_rule.exit_threshold is None
  mnist = conv_entry.experiment_config("mnist", (0,), "/data/mnist")
  assert mnist.data.dataset == "mnist" and mnist.data.data_dir == "/data/mnist" and mnist.model == config.model
  commitment = conv_entry.commitment_config((0, 1, 2))
  assert commitment.methods == ("joint",) and commitment.model == config.model

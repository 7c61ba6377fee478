"""ECE, the over-confident-wrong rate, AUROC and the per-exit table on hand-made inputs."""

import itertools

import numpy as np
import pytest

from quicknets_jax.core import calibration


def test_ece_by_hand():
  # two samples at top probability 0.9, both right: |1 − 0.9| · 2/4
  # two at 0.6, one right: |0.5 − 0.6| · 2/4  → ECE = 0.05 + 0.05
  probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.4, 0.6]])
  labels = np.array([0, 1, 0, 0])
  assert calibration.expected_calibration_error(probs, labels, num_bins=10) == pytest.approx(0.1)


def test_ece_is_zero_when_calibrated_and_positive_when_overconfident():
  probs = np.array([[0.75, 0.25]] * 4)
  assert calibration.expected_calibration_error(probs, np.array([0, 0, 0, 1]), 10) == pytest.approx(0.0)
  assert calibration.expected_calibration_error(probs, np.array([0, 1, 1, 1]), 10) == pytest.approx(0.5)


def test_ece_bin_edges_are_right_closed():
  # p = 0.5 sits in (0.4, 0.5], p = 1 in the last bin: both bins hold one right sample each
  scores = np.array([0.5, 1.0])
  assert calibration.binary_ece(scores, np.array([1, 1]), num_bins=10) == pytest.approx((0.5 + 0.0) / 2)
  assert calibration.binary_ece(np.array([0.0]), np.array([0]), num_bins=10) == 0.0


def test_ece_refuses_bad_shapes():
  with pytest.raises(ValueError, match="probs"):
    calibration.expected_calibration_error(np.ones((3,)), np.zeros(3))
  with pytest.raises(ValueError, match="num_bins"):
    calibration.expected_calibration_error(np.ones((3, 2)) / 2, np.zeros(3), num_bins=0)


def test_overconfident_wrong_with_and_without_commitment():
  confidence = np.array([0.95, 0.95, 0.95, 0.95, 0.2])
  correct = np.array([1, 1, 0, 0, 0])
  commit = np.array([1.0, 1.0, -1.0, 2.0, 5.0])
  plain = calibration.overconfident_wrong(confidence, correct, 0.9)
  assert plain == dict(coverage=0.8, wrong_rate=0.5, wrong_fraction=0.4)
  filtered = calibration.overconfident_wrong(confidence, correct, 0.9, commit)
  assert filtered["coverage"] == pytest.approx(0.6)
  assert filtered["wrong_rate"] == pytest.approx(1 / 3)
  nobody = calibration.overconfident_wrong(confidence, correct, 0.99)
  assert nobody["wrong_rate"] is None and nobody["coverage"] == 0.0


def test_auroc_matches_pair_counting():
  rng = np.random.default_rng(0)
  scores = rng.integers(0, 5, size=40).astype(float)  # many ties
  positives = rng.random(40) < 0.6
  pos, neg = scores[positives], scores[~positives]
  brute = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)])
  assert calibration.auroc(scores, positives) == pytest.approx(brute)
  assert calibration.auroc([0.1, 0.9], [False, True]) == 1.0
  assert calibration.auroc([0.9, 0.1], [False, True]) == 0.0
  assert calibration.auroc([0.3, 0.4], [True, True]) is None


def test_per_exit_table():
  probs = np.array([[[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]], [[0.99, 0.01], [0.01, 0.99], [0.6, 0.4]]])
  labels = np.array([0, 1, 0])
  commit = np.array([[1.0, -1.0, -1.0], [1.0, 1.0, -1.0]])
  rows = calibration.per_exit_table(probs, commit, labels, thresholds=(0.5,))
  assert [r["exit"] for r in rows] == [0, 1]
  assert rows[0]["accuracy"] == pytest.approx(1 / 3)  # argmax ties go to class 0: sample 1 is wrong
  assert rows[1]["accuracy"] == pytest.approx(1.0)
  assert rows[1]["commit_positive_rate"] == pytest.approx(2 / 3)
  entry = rows[0]["at_threshold"][0]
  assert entry["threshold"] == 0.5
  assert entry["with_commitment"]["coverage"] <= entry["confidence_only"]["coverage"]
  assert calibration.per_exit_table(probs, None, labels)[0].get("auroc_commitment") is None

"""Calibration of early exits: expected calibration error and the over-confident-wrong rate.

"Preventing over-confidence" (paper §3.3, §4.4) in numbers. Per exit:

- ECE (Guo et al. 2017): samples binned by their top-class probability into equal-width bins;
  ECE = Σ_b |B_b|/n · |accuracy(B_b) − mean top probability(B_b)|.
- Over-confident-wrong rate at threshold t: among the samples whose exit confidence (1 − H/log C, the
  quantity the exit rule thresholds; docs/method.md) exceeds t, the fraction that are wrong — with
  and without the commitment filter (commitment logit > 0). Coverage (how many samples pass) is
  reported beside it, since a filter that passes nobody is trivially "never wrong".
- AUROC of a score for telling right from wrong: of the confidence and of the commitment logit.

Everything takes numpy or jax arrays and returns plain Python floats, ready for results.json.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from quicknets_jax.core import exits


def expected_calibration_error(probs, labels, num_bins: int = 15) -> float:
  """ECE of class probabilities [N, C] against labels [N], with `num_bins` equal-width bins on [0, 1].

  The top-class probability p falls in bin b when b/M < p ≤ (b+1)/M (p = 0 goes to the first bin).

  Args:
    probs: [N, C] class probabilities.
    labels: [N] true classes.
    num_bins: the number M of equal-width bins, at least 1.

  Returns:
    The expected calibration error, a float in [0, 1] (0.0 for no samples).

  Raises:
    ValueError: `num_bins` is below 1, or the shapes are not [N, C] and [N].
  """
  if num_bins < 1:
    raise ValueError(f"num_bins must be ≥ 1, got {num_bins}")
  probs = np.asarray(probs, np.float64)
  labels = np.asarray(labels)
  if probs.ndim != 2 or labels.shape != probs.shape[:1]:
    raise ValueError(f"expected probs [N, C] and labels [N], got {probs.shape} and {labels.shape}")
  if probs.shape[0] == 0:
    return 0.0
  top = probs.max(-1)
  correct = (probs.argmax(-1) == labels).astype(np.float64)
  return binary_ece(top, correct, num_bins)


def binary_ece(scores, outcomes, num_bins: int = 15) -> float:
  """ECE of probabilities `scores` [N] in [0, 1] as predictions of 0/1 `outcomes` [N].

  Args:
    scores: [N] predicted probabilities of the outcome, in [0, 1].
    outcomes: [N] what happened, 0 or 1.
    num_bins: the number of equal-width bins on [0, 1].

  Returns:
    The expected calibration error as a float (0.0 for no samples).
  """
  scores = np.asarray(scores, np.float64)
  outcomes = np.asarray(outcomes, np.float64)
  n = scores.shape[0]
  if n == 0:
    return 0.0
  bins = np.clip(np.ceil(scores * num_bins).astype(int) - 1, 0, num_bins - 1)
  score_sum = np.bincount(bins, scores, minlength=num_bins)
  outcome_sum = np.bincount(bins, outcomes, minlength=num_bins)
  return float(np.sum(np.abs(outcome_sum - score_sum)) / n)


def overconfident_wrong(confidence, correct, threshold: float, commit_logits=None) -> dict:
  """Among samples with confidence > threshold (and commitment logit > 0 if given): how many, how many wrong.

  Args:
    confidence: [N] exit confidences.
    correct: [N] whether the exit's prediction is right.
    threshold: the confidence threshold t; a sample passes when its confidence exceeds it.
    commit_logits: [N] commitment logits, or None for the confidence-only filter.

  Returns:
    A dict with `coverage` (fraction of all samples that pass), `wrong_rate` (fraction of those that are
    wrong; None when nobody passes) and `wrong_fraction` (wrong and passing, as a fraction of all).
  """
  confidence = np.asarray(confidence)
  correct = np.asarray(correct).astype(bool)
  passes = confidence > threshold
  if commit_logits is not None:
    passes &= np.asarray(commit_logits) > 0
  n = confidence.shape[0]
  n_pass = int(passes.sum())
  n_wrong = int((passes & ~correct).sum())
  return dict(
    coverage=n_pass / n if n else 0.0,
    wrong_rate=(n_wrong / n_pass) if n_pass else None,
    wrong_fraction=n_wrong / n if n else 0.0,
  )


def auroc(scores, positives) -> float | None:
  """Area under the ROC curve of `scores` for separating positives from negatives (ties count ½).

  Args:
    scores: [N] scores, higher meaning "more likely positive".
    positives: [N] booleans, True for the positive samples.

  Returns:
    The AUROC in [0, 1] (the Mann–Whitney U statistic over n_pos · n_neg), or None when one of the two
    classes is absent.
  """
  scores = np.asarray(scores, np.float64)
  positives = np.asarray(positives).astype(bool)
  n_pos, n_neg = int(positives.sum()), int((~positives).sum())
  if n_pos == 0 or n_neg == 0:
    return None
  # Mann–Whitney U from average ranks (ties get their mean rank).
  order = np.argsort(scores, kind="mergesort")
  sorted_scores = scores[order]
  ranks = np.empty(len(scores))
  _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
  mean_rank = first + (counts + 1) / 2.0
  ranks[order] = np.repeat(mean_rank, counts)
  u = ranks[positives].sum() - n_pos * (n_pos + 1) / 2.0
  return float(u / (n_pos * n_neg))


def per_exit_table(
  probs, commit_logits, labels, thresholds: Sequence[float] = (0.5, 0.9), num_bins: int = 15
) -> list[dict]:
  """One row per exit: accuracy, ECE, mean top probability and confidence, and at every threshold the
  over-confident-wrong rate and coverage without / with the commitment filter.

  Args:
    probs: [E, N, C] class probabilities of every exit.
    commit_logits: [E, N] commitment logits, or None (then the rows carry no commitment columns).
    labels: [N] true classes.
    thresholds: the confidence thresholds at which `overconfident_wrong` is reported.
    num_bins: the ECE's number of bins.

  Returns:
    A list of E dicts with `exit`, `accuracy`, `ece`, `mean_top_probability`, `mean_confidence`,
    `auroc_confidence`, `at_threshold` (one entry per threshold with `confidence_only` and, with
    commitment logits, `with_commitment`) and, with commitment logits, `commit_positive_rate`,
    `auroc_commitment` and `commit_precision`.
  """
  probs = np.asarray(probs, np.float64)
  labels = np.asarray(labels)
  conf = np.asarray(exits.confidence(np.asarray(probs, np.float32)), np.float64)
  rows = []
  for e in range(probs.shape[0]):
    correct = probs[e].argmax(-1) == labels
    row = dict(
      exit=e,
      accuracy=float(correct.mean()),
      ece=expected_calibration_error(probs[e], labels, num_bins),
      mean_top_probability=float(probs[e].max(-1).mean()),
      mean_confidence=float(conf[e].mean()),
      auroc_confidence=auroc(conf[e], correct),
      at_threshold=[],
    )
    if commit_logits is not None:
      logits = np.asarray(commit_logits[e], np.float64)
      row.update(
        commit_positive_rate=float((logits > 0).mean()),
        auroc_commitment=auroc(logits, correct),
        commit_precision=_precision(logits > 0, correct),
      )
    for t in thresholds:
      entry = dict(threshold=float(t), confidence_only=overconfident_wrong(conf[e], correct, t))
      if commit_logits is not None:
        entry["with_commitment"] = overconfident_wrong(conf[e], correct, t, commit_logits[e])
      row["at_threshold"].append(entry)
    rows.append(row)
  return rows


def _precision(predicted, actual) -> float | None:
  """Fraction of `predicted` that are `actual` (None when nothing is predicted)."""
  predicted = np.asarray(predicted, bool)
  n = int(predicted.sum())
  return float((predicted & np.asarray(actual, bool)).sum() / n) if n else None

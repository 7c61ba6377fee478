"""Use what was trained: new images through a workdir's cascade, and its threshold for a target.

`operating_threshold` picks the exit threshold (the run's own, one given, or the one that meets a
compute, accuracy or early-exit target on the run's validation split, with what to expect on its test
split); `TrainedQuickNet.predict` runs the real early-exit cascade on new images;
`prediction_rows` / `write_predictions` turn its answers into JSON lines or CSV.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable
from typing import Optional

import numpy as np

from quicknets_jax.algorithms.cascade import CascadeResult, cascade_flops
from quicknets_jax.core import exits, files
from quicknets_jax.workflows.trained import TrainedQuickNet

FORMATS = ("jsonl", "csv")
COLUMNS = ("image", "class", "class_name", "exit", "confidence", "commitment_logit", "qualified")


def operating_threshold(
  trained: TrainedQuickNet,
  threshold: Optional[float] = None,
  target_mflops: Optional[float] = None,
  target_accuracy: Optional[float] = None,
  target_exit_fraction: Optional[float] = None,
  log: Callable[[str], None] = print,
  confidence: Optional[float] = None,
) -> tuple[float, dict]:
  """(the exit threshold to use, what is known of it).

  At most one of: `threshold` (used as given); a target — `target_mflops` (mean MFLOPs per image),
  `target_accuracy` (a fraction) or `target_exit_fraction` (share leaving before the last exit) —
  met on the run's validation split (`exits.threshold_for_target`), then measured on its test split
  and logged; none: the run's own operating threshold (chosen on validation when not recorded).

  Args:
    trained: the run's frozen blocks.
    threshold: a threshold in [0, 1] to use as given.
    target_mflops: a compute budget, mean MFLOPs per image: the most accurate threshold within it.
    target_accuracy: an accuracy in [0, 1]: the cheapest threshold that reaches it.
    target_exit_fraction: a share in [0, 1] of images that must leave before the last exit.
    log: where the line about a target's threshold goes.
    confidence: with `target_accuracy`: the cheapest threshold whose accuracy is at least the target
      with this probability over the draw of the validation split (`exits.threshold_with_guarantee`).

  Returns:
    (threshold, info): `info["source"]` says where the threshold came from ("given", "the run's",
    "chosen on validation" or "target"); for a target, `info` also holds the validation operating point,
    the expected test accuracy and FLOPs, and the end-to-end network's FLOPs.

  Raises:
    ValueError: more than one of them is given, the threshold or target is out of range, or no
      threshold meets the target (the message names what is reachable).
  """
  targets = dict(
    max_flops=None if target_mflops is None else target_mflops * 1e6,
    min_accuracy=target_accuracy,
    min_early_exit=target_exit_fraction,
  )
  given = [k for k, v in targets.items() if v is not None]
  if len(given) + (threshold is not None) > 1:
    raise ValueError("give at most one of a threshold, target_mflops, target_accuracy, target_exit_fraction")
  if confidence is not None and target_accuracy is None:
    raise ValueError("a confidence goes with target_accuracy: pass target_accuracy= (the accuracy to guarantee)")
  if threshold is not None:
    return exits.check_threshold(threshold), dict(source="given")
  if not given:
    dataset = None if trained.run_threshold is not None else trained.load_dataset()
    source = "the run's" if dataset is None else "chosen on validation"
    return trained.threshold(dataset), dict(source=source)
  dataset = trained.load_dataset()
  rule, costs = trained.config.exit_rule, trained.cascade_costs()
  val_probs, val_commits = trained.exit_outputs(dataset.val.images)
  if confidence is None:
    chosen = exits.threshold_for_target(
      val_probs, val_commits, dataset.val.labels, costs, fallback=rule.fallback, **targets
    )
  else:
    chosen = exits.threshold_with_guarantee(
      val_probs,
      val_commits,
      dataset.val.labels,
      costs,
      min_accuracy=target_accuracy,
      confidence=confidence,
      fallback=rule.fallback,
    )
  test_probs, test_commits = trained.exit_outputs(dataset.test.images)
  accuracy, flops, _ = exits.evaluate_rule(
    test_probs, test_commits, dataset.test.labels, chosen.threshold, costs, rule.fallback
  )
  info = dict(
    source="target",
    validation=chosen._asdict(),
    expected_test=dict(accuracy=float(accuracy), inference_flops=float(flops)),
    end_to_end_flops=float(trained.model.end_to_end_cost()),
  )
  guarantee = "" if confidence is None else f"accuracy >= {target_accuracy:.4f} with probability {confidence:.2f}; "
  log(
    f"threshold {chosen.threshold:.4g} ({guarantee}chosen on {len(dataset.val.labels)} validation images: accuracy "
    f"{chosen.accuracy:.4f}, {chosen.inference_flops / 1e6:.4g} MFLOPs/image, {chosen.early_exit_fraction:.1%} "
    f"leave before the last exit) — expected on the {len(dataset.test.labels)} test images: accuracy "
    f"{float(accuracy):.4f} at {float(flops) / 1e6:.4g} MFLOPs/image (end-to-end network "
    f"{trained.model.end_to_end_cost() / 1e6:.4g})"
  )
  return chosen.threshold, info


def prediction_rows(result: CascadeResult, names, class_names) -> list[dict]:
  """One dict per image (`COLUMNS`): its name, class, class name, the exit that answered, that exit's
  confidence and commitment logit, and whether the rule fired there (False: the fallback answered).

  Args:
    result: the cascade's answers.
    names: one name per image.
    class_names: one name per class.

  Returns:
    The rows, in image order.
  """
  return [
    dict(
      image=name,
      **{"class": int(c)},
      class_name=class_names[int(c)],
      exit=int(e),
      confidence=round(float(conf), 6),
      commitment_logit=round(float(commit), 6),
      qualified=bool(q),
    )
    for name, c, e, conf, commit, q in zip(
      names, result.prediction, result.exit_index, result.confidence, result.commit_logit, result.qualified
    )
  ]


def write_predictions(rows: list, out: str = "-", fmt: str = "jsonl") -> None:
  """Writes `rows` as JSON lines or CSV to the file `out` ("-": standard output), in one step: a
  temporary file beside `out` renamed into place, so a kill leaves the previous file whole.

  Args:
    rows: dicts with the keys of `COLUMNS` (`prediction_rows`).
    out: the file to write, or "-" for standard output.
    fmt: "jsonl" or "csv".

  Raises:
    ValueError: `fmt` is not one of `FORMATS`.
  """
  if fmt not in FORMATS:
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
  if out == "-":
    _write_rows(rows, sys.stdout, fmt)
    return
  with files.replaced_file(out, newline="") as stream:  # a kill leaves the previous file, never part of one
    _write_rows(rows, stream, fmt)


def _write_rows(rows: list, stream, fmt: str) -> None:
  if fmt == "csv":
    writer = csv.DictWriter(stream, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
  else:
    for row in rows:
      stream.write(json.dumps(row) + "\n")


def summary(result: CascadeResult, trained: TrainedQuickNet) -> str:
  """One line: images, the share leaving at each exit and the mean FLOPs per image spent.

  Args:
    result: the cascade's answers.
    trained: the run they came from (for its block count and costs).

  Returns:
    The line.
  """
  n = len(result.prediction)
  if not n:
    return "0 images"
  shares = np.bincount(result.exit_index, minlength=trained.num_blocks) / n
  flops = float(np.mean(cascade_flops(result, trained.model)))
  return (
    f"{n} images; leaving at exits 0..{trained.num_blocks - 1}: {', '.join(f'{s:.1%}' for s in shares)}; "
    f"{flops / 1e6:.4g} MFLOPs/image (end-to-end network {trained.model.end_to_end_cost() / 1e6:.4g})"
  )

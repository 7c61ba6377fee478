"""How often a threshold chosen for a target accuracy meets it on test: with the guarantee and without.

    python -m benchmarks.threshold_coverage --workdir=RUN [--workdir=RUN2 ...] [--draws=200]
        [--below_best=0.01] [--confidence=0.9]

For each trained run (its first seed), the exit outputs of its validation and test rows are computed
once and pooled; each draw shuffles the pool into a validation and a test split of the run's own sizes.
On the validation split a threshold is chosen for the target accuracy twice: with
`exits.threshold_with_guarantee` at `--confidence`, and with `exits.threshold_for_target` (the cheapest
threshold reaching the target there); each is then measured on the test split. The target is fixed
before any draw: `--below_best` under the accuracy of the costliest threshold on the whole pool. A line
per run gives, over the draws, the share whose test accuracy meets the target, the mean test accuracy
and the mean MFLOPs per image of each choice, how many draws the guarantee refused (no threshold could be
guaranteed on that validation split; counted as not meeting the target) and the share where it returned
a threshold that missed the target on test: what the guarantee bounds by 1 - confidence (up to the test
split's own sampling noise).
"""

from __future__ import annotations

import json
import sys

import numpy as np
from absl import app, flags

flags.DEFINE_multi_string("workdir", None, "A trained run's workdir (repeat for several).", required=True)
flags.DEFINE_integer("draws", 200, "Random validation / test splits of each run's pooled rows.", lower_bound=1)
flags.DEFINE_float("below_best", 0.01, "The target: this much under the costliest threshold's pooled accuracy.")
flags.DEFINE_float("confidence", 0.9, "The guarantee's probability.")
flags.DEFINE_integer("seed", 0, "Seeds the draws.")
FLAGS = flags.FLAGS


def coverage(workdir: str, draws: int, below_best: float, confidence: float, seed: int) -> dict:
  """The guaranteed and the plain choice over `draws` redraws of one run's validation and test rows.

  Args:
    workdir: the trained run.
    draws: how many random splits.
    below_best: the target's distance under the costliest threshold's accuracy on the pooled rows.
    confidence: the guarantee's probability.
    seed: seeds the splits.

  Returns:
    A dict: the run, its split sizes, the target, and per choice ("guaranteed", "plain") the share of
    draws meeting the target on test, the mean test accuracy and MFLOPs per image; "refused" counts the
    draws where no threshold could be guaranteed (they count as not meeting it), "wrong" the share of
    draws where the guarantee returned a threshold that missed the target on test.
  """
  import quicknets_jax as qn
  from quicknets_jax.core import exits

  trained = qn.load(workdir)
  dataset = trained.load_dataset()
  rule, costs = trained.config.exit_rule, np.asarray(trained.cascade_costs())
  outputs = [trained.exit_outputs(split.images) for split in (dataset.val, dataset.test)]
  probs = np.concatenate([np.asarray(p) for p, _ in outputs], axis=1)
  commits = np.concatenate([np.asarray(c) for _, c in outputs], axis=1)
  labels = np.concatenate([np.asarray(dataset.val.labels), np.asarray(dataset.test.labels)])
  n_val = len(dataset.val.labels)
  pooled = exits.sweep_thresholds(probs, commits, labels, costs, fallback=rule.fallback)
  target = float(pooled.accuracy[np.argmax(pooled.thresholds)]) - below_best
  rng = np.random.default_rng(seed)
  met = {"guaranteed": [], "plain": []}
  accuracy = {"guaranteed": [], "plain": []}
  mflops = {"guaranteed": [], "plain": []}
  refused = 0
  for _ in range(draws):
    order = rng.permutation(len(labels))
    val, test = order[:n_val], order[n_val:]
    val_split = (probs[:, val], commits[:, val], labels[val], costs)
    try:
      guaranteed = exits.threshold_with_guarantee(
        *val_split, min_accuracy=target, confidence=confidence, fallback=rule.fallback
      ).threshold
    except ValueError:
      guaranteed, refused = None, refused + 1
    try:
      plain = exits.threshold_for_target(*val_split, min_accuracy=target, fallback=rule.fallback).threshold
    except ValueError:
      plain = None
    for name, threshold in (("guaranteed", guaranteed), ("plain", plain)):
      if threshold is None:
        met[name].append(False)
        continue
      acc, flops, _ = exits.evaluate_rule(
        probs[:, test], commits[:, test], labels[test], threshold, costs, rule.fallback
      )
      met[name].append(float(acc) >= target)
      accuracy[name].append(float(acc))
      mflops[name].append(float(flops) / 1e6)
  return dict(
    workdir=workdir,
    validation=n_val,
    test=len(labels) - n_val,
    target=target,
    confidence=confidence,
    draws=draws,
    refused=refused,
    wrong=float(draws - refused - int(np.sum(met["guaranteed"]))) / draws,
    **{
      name: dict(
        meets=float(np.mean(met[name])),
        test_accuracy=float(np.mean(accuracy[name])) if accuracy[name] else None,
        mflops=float(np.mean(mflops[name])) if mflops[name] else None,
      )
      for name in met
    },
  )


def main(argv) -> None:
  del argv
  from experiments.flags import start_process

  start_process()
  for workdir in FLAGS.workdir:
    row = coverage(workdir, FLAGS.draws, FLAGS.below_best, FLAGS.confidence, FLAGS.seed)
    g, p = row["guaranteed"], row["plain"]
    print(
      f"{workdir}: target {row['target']:.4f}, {row['validation']} validation / {row['test']} test rows, "
      f"{row['draws']} draws: guaranteed ({row['confidence']:.2f}) meets it in {g['meets']:.1%} "
      f"(refused {row['refused']}, wrong {row['wrong']:.1%}), test accuracy {g['test_accuracy']:.4f} at {g['mflops']:.4g} MFLOPs; "
      f"plain validation choice {p['meets']:.1%}, {p['test_accuracy']:.4f} at {p['mflops']:.4g} MFLOPs",
      file=sys.stderr,
    )
    print(json.dumps(row))


if __name__ == "__main__":
  app.run(main)

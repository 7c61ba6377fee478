"""The commitment study (paper §4.4, Fig. 4): do commitment heads make early exits more reliable?

Analysis, on the stacked outputs of any trained multi-exit network (`probs` [E, N, C],
`commit_logits` [E, N]), by sweeping the exit threshold t:

- three cost–accuracy curves: `confidence` — confidence only, most-confident fallback (the paper's
  rule without δ); `commitment` — confidence + commitment, most-confident fallback (the paper's
  rule); `sdn_last` — confidence only, fall back to the last exit (the SDN/BranchyNet rule). Costs are
  inference FLOPs per sample as the method page (docs/method.md) counts them; the two confidence-only
  rules never evaluate a commitment head, so their cascade leaves the heads' FLOPs out.
- the area under each curve (accuracy × cost as a fraction of the full network's), and, because
  curves span different cost ranges, the mean accuracy over the range all three share;
- accuracy at matched budgets (25/50/75 % of the full network's cost, `MultiExitModel.end_to_end_cost`)
  by linear interpolation along each curve — None where a curve never spends that little or that
  much — and at 25/50/75 % of the way through the shared range;
- the per-exit calibration table of `calibration.py`.

The runner (`run_study`) trains, per seed, a jointly trained multi-exit network (SDN loss,
`sdn.py`) with commitment heads added to its frozen exits, and/or a QuickNet (Algorithm 1), analyses
each on the test split and writes WORKDIR/results.json and results.md with mean ± std over seeds.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import numpy as np

from quicknets_jax.algorithms import forward, quicknet, sdn
from quicknets_jax.algorithms.commitment import train_commitment_heads
from quicknets_jax.core import calibration, costs, curves, exits, rng, stats
from quicknets_jax.core.curves import BUDGETS
from quicknets_jax.core.progress import Log
from quicknets_jax.reporting.tables import study_markdown
from quicknets_jax.workflows.aggregate import average_curves
from quicknets_jax.workflows.experiment_config import StudyConfig
from quicknets_jax.workflows.workdir import (
  guard_workdir,
  machine_description,
  read_json,
  record_data,
  workdir_lock,
  write_json,
  write_results,
)

RULES = {  # name: (fallback, use_commitment)
  "confidence": ("most_confident", False),
  "commitment": ("most_confident", True),
  "sdn_last": ("last", False),
}
RULE_TITLES = {
  "confidence": "confidence only, most-confident fallback",
  "commitment": "confidence + commitment, most-confident fallback",
  "sdn_last": "confidence only, last-exit fallback (SDN/BranchyNet)",
}


def analyse(
  probs,
  commit_logits,
  labels,
  block_costs,
  full_cost: float,
  thresholds=None,
  budgets: Sequence[float] = BUDGETS,
  calibration_thresholds: Sequence[float] = (0.5, 0.9),
) -> dict:
  """The whole study on one network's outputs: three curves, their comparison, the calibration table.

  Args:
    probs: [E, N, C] exit probabilities.
    commit_logits: [E, N] commitment logits.
    labels: [N] true classes.
    block_costs: the model's `BlockCost`s (at least E of them).
    full_cost: FLOPs per sample of the full network (budgets are fractions of it).
    thresholds: the thresholds swept (default: `curves.study_thresholds()`).
    budgets: fractions of `full_cost` at which each curve is read.
    calibration_thresholds: thresholds of the calibration table's over-confident-wrong rate.

  Returns:
    A JSON-ready dict: exit and sample counts, per-exit accuracy, the cascade costs with and without
    commitment heads, each rule's curve, the calibration table, and `curves.compare_curves`' numbers.
  """
  probs = np.asarray(probs, np.float32)
  commit_logits = np.asarray(commit_logits, np.float32)
  labels = np.asarray(labels)
  num_exits = probs.shape[0]
  block_costs = list(block_costs)[:num_exits]
  thresholds = curves.study_thresholds() if thresholds is None else np.asarray(thresholds)
  sweeps = {}
  for name, (fallback, use_commitment) in RULES.items():
    sweeps[name] = exits.sweep_thresholds(
      probs,
      commit_logits,
      labels,
      costs.cascade_costs(block_costs, use_commitment),
      thresholds,
      fallback=fallback,
      use_commitment=use_commitment,
    )
  comparison = curves.compare_curves(
    {k: (s.inference_flops, s.accuracy) for k, s in sweeps.items()}, full_cost, budgets
  )
  exit_accuracy = (probs.argmax(-1) == labels[None]).mean(-1)
  return dict(
    num_exits=num_exits,
    num_samples=int(labels.shape[0]),
    per_exit_accuracy=[float(a) for a in exit_accuracy],
    cascade_costs={
      "without_commitment": costs.cascade_costs(block_costs, False).tolist(),
      "with_commitment": costs.cascade_costs(block_costs, True).tolist(),
    },
    curves={k: curves.sweep_points(s, "accuracy", full_cost) for k, s in sweeps.items()},
    calibration=calibration.per_exit_table(probs, commit_logits, labels, calibration_thresholds),
    **comparison,
  )


# ----------------------------------------------------------------------------------------- seeds


def _paired_differences(per_seed: Sequence[dict], a: str, b: str) -> dict:
  """Per-seed differences a − b of the comparison numbers, then mean ± std (paired over seeds)."""

  def diff(x, y):
    return None if x is None or y is None else x - y

  return dict(
    auc=stats.mean_std([diff(s["auc"][a], s["auc"][b]) for s in per_seed]),
    mean_accuracy_shared_range=stats.mean_std(
      [diff(s["mean_accuracy_shared_range"][a], s["mean_accuracy_shared_range"][b]) for s in per_seed]
    ),
    matched_budget_accuracy=[
      stats.mean_std([diff(s["matched_budget_accuracy"][a][i], s["matched_budget_accuracy"][b][i]) for s in per_seed])
      for i in range(len(per_seed[0]["budgets"]))
    ],
    shared_range_budget_accuracy=[
      stats.mean_std(
        [
          diff(
            (s["shared_range_budget_accuracy"][a] or [None] * (i + 1))[i],
            (s["shared_range_budget_accuracy"][b] or [None] * (i + 1))[i],
          )
          for s in per_seed
        ]
      )
      for i in range(len(per_seed[0]["budgets"]))
    ],
  )


def aggregate_analyses(per_seed: Sequence[dict]) -> dict:
  """Mean ± std over seeds of every number of `analyse`, curves averaged point by point (same grid),
  and paired differences commitment − confidence and commitment − sdn_last.

  Args:
    per_seed: one `analyse` result per seed.

  Returns:
    The aggregated dict, with `differences` holding the paired differences.
  """
  out = {}
  for key in (
    "per_exit_accuracy",
    "auc",
    "mean_accuracy_shared_range",
    "matched_budget_accuracy",
    "shared_range_budget_accuracy",
    "calibration",
    "cost_range",
  ):
    out[key] = stats.aggregate_tree([s[key] for s in per_seed])
  out["budgets"] = per_seed[0]["budgets"]
  out["full_cost"] = per_seed[0]["full_cost"]
  out["curves"] = {
    name: average_curves([s["curves"][name] for s in per_seed], std_of="accuracy") for name in per_seed[0]["curves"]
  }
  out["differences"] = {
    "commitment_minus_confidence": _paired_differences(per_seed, "commitment", "confidence"),
    "commitment_minus_sdn_last": _paired_differences(per_seed, "commitment", "sdn_last"),
  }
  return out


# ---------------------------------------------------------------------------------------- runner


def run_method_seed(method: str, model, dataset, config: StudyConfig, seed: int, log: Log) -> dict:
  """Trains one network (`joint` or `quicknet`) for one seed and analyses it on the test split.

  Args:
    method: "joint" (SDN's joint loss, then a commitment head per frozen exit) or "quicknet".
    model: the multi-exit model.
    dataset: the loaded dataset.
    config: the study's settings.
    seed: the seed.
    log: where progress lines go.

  Returns:
    `analyse`'s dict with the seed, method, training seconds and a summary of the training.
  """
  tag = f"[seed {seed} {method}]"
  start = time.perf_counter()
  if method == "joint":
    joint = sdn.train_joint(
      model, dataset.train, dataset.val, config.fit, seed, config=config.sdn, log=lambda m: log(f"{tag} {m}")
    )
    heads = train_commitment_heads(
      model,
      joint.variables,
      dataset.train,
      dataset.val,
      config.quicknet.commitment_fit(),
      rng.stream(rng.seed_key(seed), rng.Stream.HEADS_AFTER_JOINT),
      log=lambda m: log(f"{tag} {m}"),
    )
    variables = heads.variables
    training = dict(
      epochs=joint.epochs,
      best_epoch=joint.best_epoch,
      training_flops=joint.training_flops,
      training_flops_parts=joint.flops,
      commit_training_flops=heads.training_flops,
      commit_epochs=[r["epochs"] for r in heads.records],
      commit_positive_rate=[r["positive_rate"] for r in heads.records],
      loss_weights_history=[r.get("loss_weights") for r in joint.history],
    )
  else:
    run = quicknet.train_quicknet(
      model, dataset.train, dataset.val, config.quicknet, seed, log=lambda m: log(f"{tag} {m}")
    )
    variables = run.variables
    training = dict(
      epochs_per_block=[r.epochs for r in run.records],
      training_flops=run.training_flops,
      commit_epochs=[r.commit_epochs for r in run.records],
      commit_positive_rate=[r.positive_rate for r in run.records],
      train_samples_per_block=[r.train_samples for r in run.records],
    )
  seconds = time.perf_counter() - start
  probs, commits = forward.all_exit_outputs(model, variables, dataset.test.images, config.fit.eval_batch_size)
  result = analyse(
    probs,
    commits,
    dataset.test.labels,
    model.block_costs,
    model.end_to_end_cost(),
    budgets=config.budgets,
    calibration_thresholds=config.calibration_thresholds,
  )
  result.update(seed=seed, method=method, train_seconds=seconds, training=training)
  log(
    f"{tag} done in {seconds:.0f}s; per-exit test accuracy {', '.join(f'{a:.4f}' for a in result['per_exit_accuracy'])}"
  )
  return result


def run_study(config: StudyConfig, workdir: str, log: Log = print, overwrite: bool = False, dataset=None) -> dict:
  """Runs every method for every seed (finished seeds in WORKDIR/seed_<s>/ are kept), then writes
  WORKDIR/results.json and results.md; returns the results dict.

  Args:
    config: the study's settings.
    workdir: the study's folder.
    log: where progress lines go.
    overwrite: start over in a workdir that holds a study with another config.
    dataset: the dataset to use (default: `config.data.load()`).

  Returns:
    The results dict (results.json's contents).

  Raises:
    ValueError: the workdir holds a run with another config and `overwrite` is False.
  """
  with workdir_lock(workdir, log):  # a second run in this workdir is refused
    guard_workdir(config, workdir, overwrite)
    if dataset is None:
      dataset = config.data.load()
    log(f"data: {dataset.summary()}")
    record_data(workdir, dataset)  # a resumed study on changed data is refused
    model = config.model.build(dataset.train.images.shape[1:], dataset.num_classes)
    results = dict(
      dataset=config.data.dataset,
      model=config.model.name,
      seeds=list(config.seeds),
      smoke=config.smoke,
      num_train=int(len(dataset.train.labels)),
      num_val=int(len(dataset.val.labels)),
      num_test=int(len(dataset.test.labels)),
      data_source=dataset.source,
      config=config.to_json(),
      machine=machine_description(),
      rules=RULE_TITLES,
      conventions=dict(
        cost="inference FLOPs per sample (1 multiply-add = 2 FLOPs): blocks and exit heads up to the "
        "exit taken, plus commitment heads only under the 'commitment' rule; a sample no exit "
        "accepts pays the whole cascade (docs/method.md, inference cost)",
        budgets="fractions of the full network's cost (all blocks + final exit, no other heads)",
        auc="area under accuracy vs cost fraction over each curve's own range",
        mean_accuracy_shared_range="area over the cost range all three curves reach / its width",
        confidence="1 - H(p)/log C; ECE uses the top-class probability, 15 equal-width bins",
        overconfident_wrong="fraction of samples with confidence > t that are wrong "
        "(with_commitment: confidence > t and commitment logit > 0)",
      ),
    )
    if config.smoke:
      results["warning"] = "smoke run on stand-in data: a pipeline check, the numbers mean nothing"
    for method in config.methods:
      per_seed = []
      for seed in config.seeds:
        seed_dir = os.path.join(workdir, f"seed_{seed}")
        os.makedirs(seed_dir, exist_ok=True)
        path = os.path.join(seed_dir, f"{method}.json")
        if os.path.exists(path):
          per_seed.append(read_json(path))
          continue
        result = run_method_seed(method, model, dataset, config, seed, log)
        write_json(path, result)
        per_seed.append(result)
      results[method] = dict(aggregate_analyses(per_seed), per_seed=per_seed)
    write_results(workdir, "results", results, study_markdown(results), log)
    return results

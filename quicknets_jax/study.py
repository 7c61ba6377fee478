"""The commitment study (paper §4.4, Fig. 4): do commitment heads make early exits more reliable?

Analysis, on the stacked outputs of any trained multi-exit network (`probs` [E, N, C],
`commit_logits` [E, N]), by sweeping the exit threshold t:
- three cost–accuracy curves:
  `confidence`  — confidence only, most-confident fallback (the paper's rule without δ);
  `commitment`  — confidence + commitment, most-confident fallback (the paper's rule);
  `sdn_last`    — confidence only, fall back to the last exit (the SDN/BranchyNet rule).
  Costs are design.md §2's inference FLOPs per sample; the two confidence-only rules never evaluate
  a commitment head, so their cascade leaves the heads' FLOPs out.
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

import dataclasses
import json
import os
import time
from typing import Callable, Optional, Sequence

import numpy as np

from quicknets_jax import calibration, exits

RULES = {  # name: (fallback, use_commitment)
    "confidence": ("most_confident", False),
    "commitment": ("most_confident", True),
    "sdn_last": ("last", False),
}
RULE_TITLES = {"confidence": "confidence only, most-confident fallback",
               "commitment": "confidence + commitment, most-confident fallback",
               "sdn_last": "confidence only, last-exit fallback (SDN/BranchyNet)"}
BUDGETS = (0.25, 0.5, 0.75)

Log = Callable[[str], None]


def study_thresholds() -> np.ndarray:
  """The evaluator's default grid plus thresholds close to 1 and 1 itself (nobody qualifies), so every
  curve reaches its most expensive end."""
  near_one = 1.0 - np.logspace(-3, -6, 4)
  return np.unique(np.concatenate([exits.default_thresholds(), near_one, [1.0]]))


def cascade_costs(block_costs, with_commitment: bool) -> np.ndarray:
  """[E] FLOPs per sample to reach and decide at exit e; commitment heads only when the rule uses them."""
  per_block = [c.subnet + c.exit_head + (c.commit_head if with_commitment else 0.0) for c in block_costs]
  return np.cumsum(np.asarray(per_block, np.float64))


def _clean_curve(costs, accuracy) -> tuple[np.ndarray, np.ndarray]:
  """Points sorted by cost; points at the same cost are averaged, so the curve is a function of cost."""
  costs = np.asarray(costs, np.float64)
  accuracy = np.asarray(accuracy, np.float64)
  if costs.shape != accuracy.shape or costs.ndim != 1 or costs.size == 0:
    raise ValueError(f"a curve needs matching non-empty 1-D costs and accuracies, got {costs.shape}, "
                     f"{accuracy.shape}")
  unique, inverse = np.unique(costs, return_inverse=True)
  mean_acc = np.bincount(inverse, accuracy) / np.bincount(inverse)
  return unique, mean_acc


def accuracy_at_budget(costs, accuracy, budget: float) -> Optional[float]:
  """Accuracy of a cost–accuracy curve at cost `budget`, interpolated linearly between the two points
  around it; None when the budget lies outside the curve's cost range (the rule cannot spend it)."""
  x, y = _clean_curve(costs, accuracy)
  tolerance = 1e-9 * max(1.0, abs(x[-1]))
  if budget < x[0] - tolerance or budget > x[-1] + tolerance:
    return None
  return float(np.interp(budget, x, y))


def area_under_curve(costs, accuracy, low: Optional[float] = None, high: Optional[float] = None) -> float:
  """Trapezoid area under accuracy(cost) between `low` and `high` (default: the curve's own range).

  The end points are interpolated; outside the curve's range the area is not extended. A single
  point (or an empty range) has area 0.
  """
  x, y = _clean_curve(costs, accuracy)
  low = x[0] if low is None else max(low, x[0])
  high = x[-1] if high is None else min(high, x[-1])
  if high <= low:
    return 0.0
  inside = (x > low) & (x < high)
  xs = np.concatenate([[low], x[inside], [high]])
  ys = np.interp(xs, x, y)
  return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2.0))


def compare_curves(curves: dict, full_cost: float, budgets: Sequence[float] = BUDGETS) -> dict:
  """AUCs, shared-range mean accuracy and matched-budget accuracies of several cost–accuracy curves.

  Args:
    curves: name -> (costs [T], accuracy [T]) in FLOPs per sample.
    full_cost: the full network's cost; budgets and areas are in fractions of it.
    budgets: fractions of `full_cost` at which to read each curve.
  """
  if full_cost <= 0:
    raise ValueError(f"full_cost must be positive, got {full_cost}")
  frac = {k: (np.asarray(c, np.float64) / full_cost, np.asarray(a, np.float64)) for k, (c, a) in curves.items()}
  low = max(float(np.min(c)) for c, _ in frac.values())
  high = min(float(np.max(c)) for c, _ in frac.values())
  shared = high > low
  out = dict(full_cost=float(full_cost), budgets=[float(b) for b in budgets], auc={}, cost_range={},
             shared_range=[low, high] if shared else None, mean_accuracy_shared_range={},
             matched_budget_accuracy={}, shared_range_budgets=None, shared_range_budget_accuracy={})
  if shared:
    out["shared_range_budgets"] = [low + b * (high - low) for b in budgets]
  for name, (c, a) in frac.items():
    out["auc"][name] = area_under_curve(c, a)
    out["cost_range"][name] = [float(np.min(c)), float(np.max(c))]
    out["mean_accuracy_shared_range"][name] = (area_under_curve(c, a, low, high) / (high - low)
                                               if shared else None)
    out["matched_budget_accuracy"][name] = [accuracy_at_budget(c, a, b) for b in budgets]
    out["shared_range_budget_accuracy"][name] = ([accuracy_at_budget(c, a, b) for b in out["shared_range_budgets"]]
                                                 if shared else None)
  return out


def _curve_points(sweep: exits.SweepResult, full_cost: float) -> list:
  return [dict(threshold=float(t), accuracy=float(a), inference_flops=float(c), cost_fraction=float(c / full_cost),
               exit_fractions=[float(f) for f in fr])
          for t, a, c, fr in zip(sweep.thresholds, sweep.accuracy, sweep.inference_flops, sweep.exit_fractions)]


def analyse(probs, commit_logits, labels, block_costs, full_cost: float, thresholds=None,
            budgets: Sequence[float] = BUDGETS, calibration_thresholds: Sequence[float] = (0.5, 0.9)) -> dict:
  """The whole study on one network's outputs: three curves, their comparison, the calibration table.

  Args:
    probs: [E, N, C] exit probabilities; commit_logits: [E, N]; labels: [N].
    block_costs: the model's `BlockCost`s (at least E of them).
    full_cost: FLOPs per sample of the full network (budgets are fractions of it).
  """
  probs = np.asarray(probs, np.float32)
  commit_logits = np.asarray(commit_logits, np.float32)
  labels = np.asarray(labels)
  num_exits = probs.shape[0]
  block_costs = list(block_costs)[:num_exits]
  thresholds = study_thresholds() if thresholds is None else np.asarray(thresholds)
  sweeps = {}
  for name, (fallback, use_commitment) in RULES.items():
    sweeps[name] = exits.sweep_thresholds(probs, commit_logits, labels, cascade_costs(block_costs, use_commitment),
                                          thresholds, fallback=fallback, use_commitment=use_commitment)
  comparison = compare_curves({k: (s.inference_flops, s.accuracy) for k, s in sweeps.items()}, full_cost, budgets)
  exit_accuracy = (probs.argmax(-1) == labels[None]).mean(-1)
  return dict(num_exits=num_exits, num_samples=int(labels.shape[0]),
              per_exit_accuracy=[float(a) for a in exit_accuracy],
              cascade_costs={"without_commitment": cascade_costs(block_costs, False).tolist(),
                             "with_commitment": cascade_costs(block_costs, True).tolist()},
              curves={k: _curve_points(s, full_cost) for k, s in sweeps.items()},
              calibration=calibration.per_exit_table(probs, commit_logits, labels, calibration_thresholds),
              **comparison)


# ----------------------------------------------------------------------------------------- seeds


def _mean_std(values) -> Optional[dict]:
  """{"mean", "std", "n"} of the non-None values (std with ddof=1; 0 for one value); None if none."""
  vals = [float(v) for v in values if v is not None]
  if not vals:
    return None
  return dict(mean=float(np.mean(vals)), std=float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, n=len(vals))


def _aggregate_tree(trees: Sequence):
  """Mean ± std leaf by leaf over structurally equal trees (dicts / lists of numbers, None allowed)."""
  first = trees[0]
  if isinstance(first, dict):
    return {k: _aggregate_tree([t[k] for t in trees]) for k in first}
  if isinstance(first, list) and all(isinstance(t, list) and len(t) == len(first) for t in trees):
    return [_aggregate_tree(list(v)) for v in zip(*trees)]
  if all(t is None or (isinstance(t, (int, float)) and not isinstance(t, bool)) for t in trees):
    return _mean_std(trees)
  return first


def _paired_differences(per_seed: Sequence[dict], a: str, b: str) -> dict:
  """Per-seed differences a − b of the comparison numbers, then mean ± std (paired over seeds)."""
  def diff(x, y):
    return None if x is None or y is None else x - y

  return dict(
      auc=_mean_std([diff(s["auc"][a], s["auc"][b]) for s in per_seed]),
      mean_accuracy_shared_range=_mean_std([diff(s["mean_accuracy_shared_range"][a],
                                                 s["mean_accuracy_shared_range"][b]) for s in per_seed]),
      matched_budget_accuracy=[_mean_std([diff(s["matched_budget_accuracy"][a][i], s["matched_budget_accuracy"][b][i])
                                          for s in per_seed]) for i in range(len(per_seed[0]["budgets"]))],
      shared_range_budget_accuracy=[
          _mean_std([diff((s["shared_range_budget_accuracy"][a] or [None] * (i + 1))[i],
                          (s["shared_range_budget_accuracy"][b] or [None] * (i + 1))[i]) for s in per_seed])
          for i in range(len(per_seed[0]["budgets"]))])


def aggregate_analyses(per_seed: Sequence[dict]) -> dict:
  """Mean ± std over seeds of every number of `analyse`, curves averaged point by point (same grid),
  and paired differences commitment − confidence and commitment − sdn_last."""
  out = {}
  for key in ("per_exit_accuracy", "auc", "mean_accuracy_shared_range", "matched_budget_accuracy",
              "shared_range_budget_accuracy", "calibration", "cost_range"):
    out[key] = _aggregate_tree([s[key] for s in per_seed])
  out["budgets"] = per_seed[0]["budgets"]
  out["full_cost"] = per_seed[0]["full_cost"]
  out["curves"] = {}
  for name in per_seed[0]["curves"]:
    points = zip(*[s["curves"][name] for s in per_seed])
    out["curves"][name] = [dict(threshold=pts[0]["threshold"],
                                accuracy=float(np.mean([p["accuracy"] for p in pts])),
                                accuracy_std=float(np.std([p["accuracy"] for p in pts], ddof=1)) if len(pts) > 1 else 0.0,
                                cost_fraction=float(np.mean([p["cost_fraction"] for p in pts])),
                                inference_flops=float(np.mean([p["inference_flops"] for p in pts])),
                                exit_fractions=[float(x) for x in np.mean([p["exit_fractions"] for p in pts], 0)])
                           for pts in points]
  out["differences"] = {"commitment_minus_confidence": _paired_differences(per_seed, "commitment", "confidence"),
                        "commitment_minus_sdn_last": _paired_differences(per_seed, "commitment", "sdn_last")}
  return out


# ---------------------------------------------------------------------------------------- runner


@dataclasses.dataclass(frozen=True)
class StudyConfig:
  """One commitment study: which data, which networks (`methods`), which seeds, which schedule.

  Attributes:
    methods: "joint" (a multi-exit network trained end to end with SDN's weighted loss, then a
      commitment head per frozen exit) and/or "quicknet" (Algorithm 1, commitment heads built in).
    model_kwargs: keyword arguments of the model builder, as (name, value) pairs.
    ramp_epochs, max_weights: the SDN loss-weight schedule (`sdn.SDNConfig`).
    smoke: marks a pipeline check on stand-in data; its numbers mean nothing.
  """

  dataset: str = "fashion_mnist"
  data_source: str = "auto"
  data_dir: Optional[str] = None
  val_fraction: float = 0.1
  max_train: Optional[int] = None
  max_test: Optional[int] = None
  model: str = "mlp"
  model_kwargs: tuple = (("width", 150), ("num_blocks", 3))
  methods: tuple = ("joint", "quicknet")
  seeds: tuple = (0, 1, 2)
  learning_rate: float = 1e-3
  batch_size: int = 128
  max_epochs: int = 100
  early_stop_patience: int = 3
  ramp_epochs: Optional[int] = None
  max_weights: Optional[tuple] = None
  train_threshold: float = 0.9
  budgets: tuple = BUDGETS
  calibration_thresholds: tuple = (0.5, 0.9)
  eval_batch_size: int = 2048
  smoke: bool = False

  def __post_init__(self):
    unknown = set(self.methods) - {"joint", "quicknet"}
    if unknown or not self.methods:
      raise ValueError(f"methods must be a non-empty subset of joint,quicknet; got {','.join(self.methods)}")
    if not self.seeds:
      raise ValueError("seeds is empty: pass --seeds=0 (or 0,1,2)")
    if any(not 0 < b <= 1 for b in self.budgets):
      raise ValueError(f"budgets are fractions of the full cost in (0, 1], got {self.budgets}")
    for t in self.calibration_thresholds:
      exits.check_threshold(t, "calibration threshold")
    self.sdn_config()  # validates the schedule before any data is read

  def fit_config(self, balanced: bool = True):
    from quicknets_jax.train import FitConfig
    return FitConfig(learning_rate=self.learning_rate, batch_size=self.batch_size, max_epochs=self.max_epochs,
                     early_stop_patience=self.early_stop_patience, balanced_sampling=balanced,
                     eval_batch_size=self.eval_batch_size)

  def sdn_config(self):
    from quicknets_jax.sdn import SDNConfig
    return SDNConfig(fit=self.fit_config(), commit_fit=self.fit_config(balanced=False),
                     max_weights=self.max_weights, ramp_epochs=self.ramp_epochs)

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    d["model_kwargs"] = dict(self.model_kwargs)
    for k in ("methods", "seeds", "budgets", "calibration_thresholds", "max_weights"):
      d[k] = None if d[k] is None else list(d[k])
    return json.loads(json.dumps(d))  # tuples → lists, so a stored config compares equal on resume


def _write_json(path: str, obj) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f)
  os.replace(tmp, path)  # atomic: a killed run never leaves half a file


def run_method_seed(method: str, model, dataset, config: StudyConfig, seed: int, log: Log) -> dict:
  """Trains one network (`joint` or `quicknet`) for one seed and analyses it on the test split."""
  import jax
  from quicknets_jax import quicknet, sdn
  tag = f"[seed {seed} {method}]"
  start = time.perf_counter()
  if method == "joint":
    joint = sdn.train_joint(model, dataset.train_images, dataset.train_labels, dataset.val_images,
                            dataset.val_labels, config.sdn_config(), seed, log=lambda m: log(f"{tag} {m}"))
    heads = sdn.train_commitment_heads(model, joint.variables, dataset.train_images, dataset.train_labels,
                                       dataset.val_images, dataset.val_labels, config.sdn_config().commit_fit,
                                       jax.random.fold_in(jax.random.PRNGKey(seed), 7),
                                       log=lambda m: log(f"{tag} {m}"))
    variables = heads.variables
    training = dict(epochs=joint.epochs, best_epoch=joint.best_epoch, training_flops=joint.training_flops,
                    training_flops_parts=joint.flops, commit_training_flops=heads.training_flops,
                    commit_epochs=[r["epochs"] for r in heads.records],
                    commit_positive_rate=[r["positive_rate"] for r in heads.records],
                    loss_weights_history=[r.get("loss_weights") for r in joint.history])
  else:
    qconfig = quicknet.QuickNetConfig(fit=config.fit_config(), commit_fit=config.fit_config(balanced=False),
                                      train_threshold=config.train_threshold)
    run = quicknet.train_quicknet(model, dataset.train_images, dataset.train_labels, dataset.val_images,
                                  dataset.val_labels, qconfig, seed, log=lambda m: log(f"{tag} {m}"))
    variables = run.variables
    training = dict(epochs_per_block=[r.epochs for r in run.records], training_flops=run.training_flops,
                    commit_epochs=[r.commit_epochs for r in run.records],
                    commit_positive_rate=[r.positive_rate for r in run.records],
                    train_samples_per_block=[r.train_samples for r in run.records])
  seconds = time.perf_counter() - start
  probs, commits = quicknet.predict_exits(model, variables, dataset.test_images, config.eval_batch_size)
  result = analyse(probs, commits, dataset.test_labels, model.block_costs, model.end_to_end_cost(),
                   budgets=config.budgets, calibration_thresholds=config.calibration_thresholds)
  result.update(seed=seed, method=method, train_seconds=seconds, training=training)
  log(f"{tag} done in {seconds:.0f}s; per-exit test accuracy "
      f"{', '.join(f'{a:.4f}' for a in result['per_exit_accuracy'])}")
  return result


def run_study(config: StudyConfig, workdir: str, log: Log = print, overwrite: bool = False,
              dataset=None) -> dict:
  """Runs every method for every seed (finished seeds in WORKDIR/seed_<s>/ are kept), then writes
  WORKDIR/results.json and results.md; returns the results dict."""
  from quicknets_jax import data as data_lib
  from quicknets_jax import models, report
  from quicknets_jax.experiment import guard_workdir
  guard_workdir(config, workdir, overwrite)
  if dataset is None:
    dataset = data_lib.load_dataset(config.dataset, config.data_source, config.data_dir, config.val_fraction,
                                    max_train=config.max_train, max_test=config.max_test)
  log(f"data: {dataset.summary()}")
  model = models.build_model(config.model, dataset.train_images.shape[1:], dataset.num_classes,
                             **dict(config.model_kwargs))
  results = dict(dataset=config.dataset, model=config.model, seeds=list(config.seeds), smoke=config.smoke,
                 num_train=int(len(dataset.train_labels)), num_val=int(len(dataset.val_labels)),
                 num_test=int(len(dataset.test_labels)), data_source=dataset.source, config=config.to_json(),
                 machine=report.machine_description(), rules=RULE_TITLES,
                 conventions=dict(
                     cost="inference FLOPs per sample (1 multiply-add = 2 FLOPs): blocks and exit heads up to the "
                          "exit taken, plus commitment heads only under the 'commitment' rule; a sample no exit "
                          "accepts pays the whole cascade (design.md section 2)",
                     budgets="fractions of the full network's cost (all blocks + final exit, no other heads)",
                     auc="area under accuracy vs cost fraction over each curve's own range",
                     mean_accuracy_shared_range="area over the cost range all three curves reach / its width",
                     confidence="1 - H(p)/log C; ECE uses the top-class probability, 15 equal-width bins",
                     overconfident_wrong="fraction of samples with confidence > t that are wrong "
                                         "(with_commitment: confidence > t and commitment logit > 0)"))
  if config.smoke:
    results["warning"] = "smoke run on stand-in data: a pipeline check, the numbers mean nothing"
  for method in config.methods:
    per_seed = []
    for seed in config.seeds:
      seed_dir = os.path.join(workdir, f"seed_{seed}")
      os.makedirs(seed_dir, exist_ok=True)
      path = os.path.join(seed_dir, f"{method}.json")
      if os.path.exists(path):
        with open(path) as f:
          per_seed.append(json.load(f))
        continue
      result = run_method_seed(method, model, dataset, config, seed, log)
      _write_json(path, result)
      per_seed.append(result)
    results[method] = dict(aggregate_analyses(per_seed), per_seed=per_seed)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(results_markdown(results))
  log(f"wrote {os.path.join(workdir, 'results.json')} and results.md")
  return results


# -------------------------------------------------------------------------------------- markdown


def _fmt(stat, scale: float = 100.0, digits: int = 2) -> str:
  if stat is None:
    return "—"
  return f"{stat['mean'] * scale:.{digits}f} ± {stat['std'] * scale:.{digits}f}"


def _fmt_signed(stat, scale: float = 100.0, digits: int = 2) -> str:
  if stat is None:
    return "—"
  return f"{stat['mean'] * scale:+.{digits}f} ± {stat['std'] * scale:.{digits}f}"


METHOD_TITLES = {"joint": "jointly trained multi-exit network (SDN loss) + commitment heads on its frozen exits",
                 "quicknet": "QuickNet (Algorithm 1)"}


def results_markdown(results: dict) -> str:
  """Tables of the study: per network, the three curves' AUC and matched-budget accuracies, the paired
  differences, and the per-exit calibration table (all mean ± std over seeds, accuracies in %)."""
  lines = [f"# Commitment study: {results['dataset']}, {results['model']}, seeds {results['seeds']}", ""]
  if results.get("warning"):
    lines += [f"**{results['warning']}**", ""]
  for method in ("joint", "quicknet"):
    if method not in results:
      continue
    r = results[method]
    budgets = r["budgets"]
    lines += [f"## {METHOD_TITLES[method]}", "",
              "Per-exit test accuracy (%): " + ", ".join(_fmt(s) for s in r["per_exit_accuracy"]), "",
              "| rule | AUC (acc × cost fraction) | mean acc over shared range | "
              + " | ".join(f"acc @ {b:.0%} cost" for b in budgets) + " | "
              + " | ".join(f"acc @ {b:.0%} of shared range" for b in budgets) + " |",
              "|---" * (3 + 2 * len(budgets)) + "|"]
    for rule in RULES:
      lines.append(f"| {rule} | {_fmt(r['auc'][rule], 100, 2)} | {_fmt(r['mean_accuracy_shared_range'][rule])} | "
                   + " | ".join(_fmt(s) for s in r["matched_budget_accuracy"][rule]) + " | "
                   + " | ".join(_fmt(s) for s in (r["shared_range_budget_accuracy"][rule] or [None] * len(budgets)))
                   + " |")
    for name, d in r["differences"].items():
      lines.append(f"| **{name}** (paired) | {_fmt_signed(d['auc'])} | {_fmt_signed(d['mean_accuracy_shared_range'])} | "
                   + " | ".join(_fmt_signed(s) for s in d["matched_budget_accuracy"]) + " | "
                   + " | ".join(_fmt_signed(s) for s in d["shared_range_budget_accuracy"]) + " |")
    ranges = ", ".join(f"{k} {_fmt(v[0], 100, 1)}–{_fmt(v[1], 100, 1)} %" for k, v in r["cost_range"].items())
    lines += ["", f"Cost range of each curve (% of the full network): {ranges}. “—”: the rule never spends that "
              "budget.", "", "Calibration per exit (%; over-confident-wrong = wrong among samples with "
              "confidence > t; coverage = fraction of samples passing):", ""]
    thresholds = [e["threshold"]["mean"] if isinstance(e["threshold"], dict) else e["threshold"]
                  for e in r["calibration"][0]["at_threshold"]]
    header = "| exit | accuracy | ECE | AUROC conf | AUROC commit | commit>0 | " + " | ".join(
        f"t={t:g}: wrong / coverage, conf only | t={t:g}: wrong / coverage, + commitment" for t in thresholds) + " |"
    lines += [header, "|---" * (6 + 2 * len(thresholds)) + "|"]
    for row in r["calibration"]:
      cells = [str(e) for e in [int(row["exit"]["mean"])]] + [
          _fmt(row["accuracy"]), _fmt(row["ece"]), _fmt(row["auroc_confidence"], 1, 3),
          _fmt(row.get("auroc_commitment"), 1, 3), _fmt(row.get("commit_positive_rate"))]
      for entry in row["at_threshold"]:
        for key in ("confidence_only", "with_commitment"):
          e = entry.get(key)
          cells.append("—" if e is None else f"{_fmt(e['wrong_rate'])} / {_fmt(e['coverage'])}")
      lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
  return "\n".join(lines)

"""QuickNet vs end-to-end on one dataset: `train_and_evaluate(config, workdir)` writes results.json/.md.

For every seed: train the QuickNet (checkpoint per frozen block), choose the operating exit threshold
on the validation split, report test accuracy, inference and training FLOPs and the cost–accuracy
curve; train the end-to-end baseline through the same trainer; then aggregate mean ± std over seeds
(results.json, design.md §3) and render the paper's Table 1 layout (results.md). Finished seeds are
kept in WORKDIR/seed_<s>/ and not redone, so a stopped run picks up where it was.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from typing import Callable, Optional, Sequence

import jax
import numpy as np

from quicknets_jax import data as data_lib
from quicknets_jax import exits, models, report
from quicknets_jax import metrics as metrics_lib
from quicknets_jax.checkpoint import BlockCheckpointer, FitCheckpointer
from quicknets_jax.progress import EpochProgress, format_seconds
from quicknets_jax.quicknet import (QuickNetConfig, predict_exits, train_end_to_end, train_quicknet)
from quicknets_jax.train import FitConfig

Log = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """Everything that defines a comparison run (the flags of `experiments/*.py`)."""

  dataset: str = "fashion_mnist"
  data_source: str = "auto"
  data_dir: Optional[str] = None
  val_fraction: float = 0.1
  max_train: Optional[int] = None
  max_test: Optional[int] = None
  model: str = "mlp"
  width: int = 150
  num_blocks: int = 3
  layers_per_block: int = 1
  seeds: tuple = (0, 1, 2)
  batch_size: int = 128
  learning_rate: float = 1e-3
  max_epochs: int = 100
  plateau_factor: float = 0.5
  plateau_patience: int = 1
  early_stop_patience: int = 3
  balanced_sampling: bool = True
  train_threshold: float = 0.9
  exit_threshold: Optional[float] = None  # None: chosen on the validation split
  threshold_tolerance: float = 0.0
  fallback: str = "most_confident"
  cache_features: bool = True
  feature_cache_mb: Optional[float] = None
  end_to_end: bool = True
  eval_batch_size: int = 2048
  # Convolutional models (vgg): training-time crop + flip, the VGG configuration, the final exit's width.
  augment: bool = False
  vgg_cfg: str = "vgg11"
  classifier_width: int = 4096
  # densenet: layers per dense block ("densenet121" = 6,12,24,16; `width` is the growth rate), and the
  # side imagenet2012 is resized to (None: 224).
  block_layers: str = "densenet121"
  image_size: Optional[int] = None
  # QuickNet+ levers (README "QuickNet+"); the defaults are the faithful QuickNet.
  later_width: Optional[int] = None
  budget: str = "val_loss"
  budget_min_delta: float = 0.01
  budget_patience: int = 2
  commit_holdout: float = 0.0
  keep_learned: float = 0.0
  finetune_epochs: int = 0
  finetune_lr: float = 3e-4

  def __post_init__(self):
    exits.check_threshold(self.train_threshold, "train_threshold")
    if self.exit_threshold is not None:
      exits.check_threshold(self.exit_threshold, "exit_threshold")
    if self.fallback not in exits.FALLBACKS:
      raise ValueError(f"fallback must be one of {exits.FALLBACKS}, got {self.fallback!r}")
    if self.num_blocks < 1:
      raise ValueError(f"num_blocks must be ≥ 1, got {self.num_blocks}")
    if not self.seeds:
      raise ValueError("seeds is empty: pass --seeds=0 (or 0,1,2)")
    if not 0 <= self.threshold_tolerance < 1:
      raise ValueError(f"threshold_tolerance must be in [0, 1), got {self.threshold_tolerance}")
    self.quicknet_config()  # validates the schedule and the levers before any data is read
    if self.augment and self.cache_features:
      raise ValueError("augment needs --nocache_features: cached features are computed once, without "
                       "augmentation, so blocks after the first would never see it")

  def model_kwargs(self) -> dict:
    """Keyword arguments of `models.build_model` for this config's model."""
    kwargs = dict(width=self.width, num_blocks=self.num_blocks, layers_per_block=self.layers_per_block)
    if self.model == "vgg":
      kwargs.update(cfg=self.vgg_cfg, classifier_width=self.classifier_width,
                    augment="crop_flip" if self.augment else None)
    elif self.model == "densenet":
      kwargs.update(block_layers=self.block_layers, augment="crop_flip" if self.augment else None)
    elif self.augment:
      raise ValueError(f"augment is only implemented for convolutional models, not {self.model!r}: "
                       "drop --augment")
    if self.later_width is not None:
      if self.model != "mlp":
        raise ValueError(f"later_width is only implemented for the mlp model, not {self.model!r}: drop "
                         "--later_width")
      kwargs["later_width"] = self.later_width
    return kwargs

  def fit_config(self) -> FitConfig:
    return FitConfig(learning_rate=self.learning_rate, batch_size=self.batch_size, max_epochs=self.max_epochs,
                     plateau_factor=self.plateau_factor, plateau_patience=self.plateau_patience,
                     early_stop_patience=self.early_stop_patience, balanced_sampling=self.balanced_sampling,
                     eval_batch_size=self.eval_batch_size)

  def quicknet_config(self) -> QuickNetConfig:
    fit = self.fit_config()
    # τ, the feature cache and the QuickNet+ levers: every QuickNetConfig field this config also has
    shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(QuickNetConfig)
              if f.name not in ("fit", "commit_fit")}
    return QuickNetConfig(fit=fit, commit_fit=dataclasses.replace(fit, balanced_sampling=False), **shared)

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    d["seeds"] = list(self.seeds)
    return d


# Fields that may change between a run and its resumption without changing any result.
_RESUMABLE_FIELDS = ("seeds", "eval_batch_size")
# A config.json written before a field existed holds that field's default.
_DEFAULTS = ExperimentConfig().to_json()


def guard_workdir(config: ExperimentConfig, workdir: str, overwrite: bool = False) -> None:
  """Stores the config in WORKDIR/config.json; refuses to resume under a different one."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  if overwrite and os.path.exists(workdir):
    for name in os.listdir(workdir):
      target = os.path.join(workdir, name)
      shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
  if os.path.exists(path):
    with open(path) as f:
      stored = json.load(f)
    current = config.to_json()
    differing = sorted(k for k in set(stored) | set(current)
                       if k not in _RESUMABLE_FIELDS
                       and stored.get(k, _DEFAULTS.get(k)) != current.get(k))
    if differing:
      details = ", ".join(f"{k}: {stored.get(k)!r} → {current.get(k)!r}" for k in differing)
      raise ValueError(f"{workdir} holds a run with another config ({details}); pass --overwrite to start "
                       "over or choose another --workdir")
  with open(path, "w") as f:
    json.dump(config.to_json(), f, indent=2)


def check_batch_size(batch_size: int, num_train: int) -> None:
  """Refuses a --batch_size larger than the whole training split: it is a typo or the wrong data, and
  clamping it would silently train another schedule. (Working sets T_j that shrink below the batch
  size inside a run are expected; the trainer takes them as one batch.)"""
  if batch_size > num_train:
    raise ValueError(f"--batch_size={batch_size} is larger than the {num_train} training samples: pass "
                     f"--batch_size={num_train} or less, or use more data (--max_train)")


def param_count(tree) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(tree)))


def _curve(sweep: exits.SweepResult) -> list:
  return [dict(threshold=float(t), test_accuracy=float(a), inference_flops=float(c),
               exit_fractions=[float(f) for f in fr])
          for t, a, c, fr in zip(sweep.thresholds, sweep.accuracy, sweep.inference_flops, sweep.exit_fractions)]


def evaluate_quicknet(model, variables, dataset: data_lib.Dataset, config: ExperimentConfig) -> dict:
  """Chooses the exit threshold on validation, then measures the test split at it (and the curves)."""
  num = len(variables)
  cascade = model.cascade_costs()[:num]
  val_probs, val_commit = predict_exits(model, variables, dataset.val_images, config.eval_batch_size)
  test_probs, test_commit = predict_exits(model, variables, dataset.test_images, config.eval_batch_size)
  val_sweep = exits.sweep_thresholds(val_probs, val_commit, dataset.val_labels, cascade,
                                     fallback=config.fallback)
  if config.exit_threshold is None:
    threshold = exits.choose_threshold(val_sweep, config.threshold_tolerance)
  else:
    threshold = config.exit_threshold
  accuracy, cost, fractions = exits.evaluate_rule(test_probs, test_commit, dataset.test_labels, threshold,
                                                  cascade, config.fallback)
  test_sweep = exits.sweep_thresholds(test_probs, test_commit, dataset.test_labels, cascade,
                                      fallback=config.fallback)
  confidence_only = exits.sweep_thresholds(test_probs, test_commit, dataset.test_labels, cascade,
                                           fallback=config.fallback, use_commitment=False)
  per_exit_accuracy = np.mean(np.argmax(np.asarray(test_probs), -1) == dataset.test_labels[None], axis=1)
  fractions = [float(f) for f in fractions] + [0.0] * (model.num_blocks - num)
  return dict(exit_threshold=threshold, test_accuracy=float(accuracy), inference_flops=float(cost),
              exit_fractions=fractions, per_exit_test_accuracy=[float(a) for a in per_exit_accuracy],
              val_accuracy_at_threshold=float(val_sweep.accuracy[np.argmin(np.abs(val_sweep.thresholds
                                                                                  - threshold))]),
              curve=_curve(test_sweep), curve_confidence_only=_curve(confidence_only),
              **_figure_data(model, dataset, config, threshold, val_probs, val_commit, test_probs, test_commit))


def _figure_data(model, dataset, config: ExperimentConfig, threshold: float, val_probs, val_commit, test_probs,
                 test_commit) -> dict:
  """What the report's figures need beyond the table, from the exit outputs already computed:
  the test accuracy of the QuickNet cut after each block (its threshold chosen on validation the same
  way) and, at the operating threshold, which exit each class's test samples take."""
  num = int(test_probs.shape[0])
  cascade = model.cascade_costs()[:num]
  after_block, thresholds = [], []
  for j in range(num):
    t = threshold
    if j < num - 1 and config.exit_threshold is None:
      sweep = exits.sweep_thresholds(val_probs[:j + 1], val_commit[:j + 1], dataset.val_labels, cascade[:j + 1],
                                     fallback=config.fallback)
      t = exits.choose_threshold(sweep, config.threshold_tolerance)
    accuracy, _, _ = exits.evaluate_rule(test_probs[:j + 1], test_commit[:j + 1], dataset.test_labels, t,
                                         cascade[:j + 1], config.fallback)
    after_block.append(float(accuracy))
    thresholds.append(float(t))
  decision = exits.select_exits(test_probs, test_commit, threshold, config.fallback)
  exit_index, labels = np.asarray(decision.exit_index), np.asarray(dataset.test_labels)
  correct = np.asarray(decision.prediction) == labels
  counts = np.zeros((dataset.num_classes, model.num_blocks), np.int64)
  right = np.zeros_like(counts)
  np.add.at(counts, (labels, exit_index), 1)
  np.add.at(right, (labels, exit_index), correct.astype(np.int64))
  return dict(test_accuracy_after_block=after_block, exit_threshold_after_block=thresholds,
              test_exit_counts_per_class=counts.tolist(), test_correct_counts_per_class=right.tolist())


def run_quicknet_seed(model, dataset, config: ExperimentConfig, seed: int, seed_dir: str, log: Log,
                      metrics: Optional[metrics_lib.MetricsWriter] = None) -> dict:
  """Trains (or resumes) one seed's QuickNet and evaluates it; returns its per-seed results.

  With `metrics`, every block and commitment epoch becomes a line of WORKDIR/metrics.jsonl.
  """
  checkpointer = BlockCheckpointer(os.path.join(seed_dir, "quicknet_checkpoints"))
  progress = EpochProgress(f"[seed {seed} quicknet]", config.max_epochs, log)
  on_epoch = lambda kind, state, record: progress(kind, state, record)
  tracked, tracker = checkpointer, None
  if metrics is not None:
    tracker = metrics_lib.QuickNetTracker(metrics, model, seed, len(dataset.train_labels), len(dataset.val_labels),
                                          config.quicknet_config())
    tracked = tracker.wrap(checkpointer)  # tells the tracker which block trains, also after a resume
    on_epoch = lambda kind, state, record: (progress(kind, state, record), tracker.on_epoch(kind, state, record))
  run = train_quicknet(model, dataset.train_images, dataset.train_labels, dataset.val_images,
                       dataset.val_labels, config.quicknet_config(), seed, checkpointer=tracked,
                       log=lambda m: log(f"[seed {seed} quicknet] {m}"), on_epoch=on_epoch)
  checkpointer.close()
  result = evaluate_quicknet(model, run.variables, dataset, config)
  records = run.records
  result.update(
      seed=seed, params=param_count([v["params"] for v in run.variables]),
      training_flops=run.training_flops, train_seconds=run.train_seconds,
      trained_blocks=run.num_trained_blocks,
      train_samples_per_block=[r.train_samples for r in records],
      learned_per_block=[r.learned for r in records],
      epochs_per_block=[r.epochs for r in records], commit_epochs_per_block=[r.commit_epochs for r in records],
      commit_positive_rate_per_block=[r.positive_rate for r in records],
      class_counts_per_block=[r.class_counts for r in records],
      training_flops_parts=[dict(block=r.block, **r.flops) for r in records],
      # QuickNet+ fine-tuning (after every block): its FLOPs by part, epochs and seconds
      finetune=None if run.finetune is None else {k: v for k, v in run.finetune.items() if k != "history"},
      history=[dict(block=r.block, epochs=r.history, commitment_epochs=r.commit_history) for r in records])
  if tracker is not None:
    tracker.after_blocks(result)
  return result


def run_end_to_end_seed(model, dataset, config: ExperimentConfig, seed: int, log: Log,
                        seed_dir: Optional[str] = None,
                        metrics: Optional[metrics_lib.MetricsWriter] = None) -> dict:
  """Trains (or resumes, from SEED_DIR/end_to_end_checkpoints) one seed's end-to-end baseline.

  With `metrics`, every epoch becomes a line of WORKDIR/metrics.jsonl and its history entry gets the
  test accuracy after that epoch (for the accuracy-vs-training-cost figure; kept off `train_seconds`).
  """
  progress = EpochProgress(f"[seed {seed} end-to-end]", config.max_epochs, log)
  on_epoch = lambda kind, state, record: progress(kind, state, record)
  tracker = None
  if metrics is not None:
    tracker = metrics_lib.EndToEndTracker(
        metrics, model, seed, len(dataset.train_labels), len(dataset.val_labels),
        metrics_lib.end_to_end_test_eval(model, dataset.test_images, dataset.test_labels,
                                         config.eval_batch_size))
    on_epoch = lambda kind, state, record: (tracker.on_epoch(kind, state, record), progress(kind, state, record))
  checkpointer = (FitCheckpointer(os.path.join(seed_dir, "end_to_end_checkpoints"), "end-to-end")
                  if seed_dir is not None else None)
  run = train_end_to_end(model, dataset.train_images, dataset.train_labels, dataset.val_images,
                         dataset.val_labels, config.fit_config(), seed,
                         log=lambda m: log(f"[seed {seed}] {m}"),
                         on_epoch=on_epoch, checkpointer=checkpointer)
  if checkpointer is not None:
    checkpointer.close()
  if tracker is not None:
    run.seconds -= tracker.seconds
  probs, _ = predict_exits(model, run.variables, dataset.test_images, config.eval_batch_size)
  accuracy = float(np.mean(np.argmax(np.asarray(probs[-1]), -1) == dataset.test_labels))
  last = model.num_blocks - 1
  params = [v["params"]["subnet"] for v in run.variables] + [run.variables[last]["params"]["exit_head"]]
  return dict(seed=seed, test_accuracy=accuracy, params=param_count(params),
              inference_flops=model.end_to_end_cost(), training_flops=run.training_flops,
              training_flops_parts=run.flops, train_seconds=run.seconds, epochs=run.epochs,
              best_epoch=run.best_epoch, history=run.history)


def _mean(values):
  return float(np.mean(values))


def _std(values):
  return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def aggregate(per_seed: Sequence[dict]) -> dict:
  """Mean over seeds of every number (lists element-wise), with the accuracy's std beside it."""
  out = {}
  for key, value in per_seed[0].items():
    values = [s[key] for s in per_seed]
    if key in ("history", "seed", "curve", "curve_confidence_only", "training_flops_parts",
               "class_counts_per_block", "finetune"):
      continue
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      out[key] = _mean(values)
    elif isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value) and len(
        {len(v) for v in values}) == 1:
      out[key] = [float(x) for x in np.mean(np.asarray(values, float), axis=0)]
  out["test_accuracy_std"] = _std([s["test_accuracy"] for s in per_seed])
  for curve_key in ("curve", "curve_confidence_only"):
    if curve_key in per_seed[0]:
      curves = [s[curve_key] for s in per_seed]
      out[curve_key] = [dict(threshold=pts[0]["threshold"],
                             test_accuracy=_mean([p["test_accuracy"] for p in pts]),
                             inference_flops=_mean([p["inference_flops"] for p in pts]),
                             exit_fractions=[float(x) for x in np.mean([p["exit_fractions"] for p in pts], 0)])
                        for pts in zip(*curves)]
  out["per_seed"] = list(per_seed)
  return out


def _load_or_run(path: str, fn: Callable[[], dict]) -> dict:
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  result = fn()
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(result, f)
  os.replace(tmp, path)  # atomic: a killed run never leaves half a result
  return result


def train_and_evaluate(config: ExperimentConfig, workdir: str, log: Log = print, overwrite: bool = False,
                       dataset: Optional[data_lib.Dataset] = None, metrics: bool = True) -> dict:
  """Runs the comparison for every seed and writes WORKDIR/results.json and results.md; returns the dict.

  `metrics`: log every epoch to WORKDIR/metrics.jsonl and TensorBoard events under WORKDIR/tensorboard/.
  """
  model = None
  if config.model not in models.MODELS:
    raise ValueError(f"unknown model {config.model!r}: choose one of {sorted(models.MODELS)}")
  guard_workdir(config, workdir, overwrite)
  if dataset is None:
    dataset = data_lib.load_dataset(config.dataset, config.data_source, config.data_dir, config.val_fraction,
                                    max_train=config.max_train, max_test=config.max_test,
                                    image_size=config.image_size)
  log(f"data: {dataset.summary()}")
  check_batch_size(config.batch_size, len(dataset.train_labels))
  model = models.build_model(config.model, dataset.train_images.shape[1:], dataset.num_classes,
                             **config.model_kwargs())
  quicknet_seeds, e2e_seeds = [], []
  start = time.perf_counter()
  writer = metrics_lib.MetricsWriter(workdir) if metrics else None
  for i, seed in enumerate(config.seeds):
    seed_dir = os.path.join(workdir, f"seed_{seed}")
    os.makedirs(seed_dir, exist_ok=True)
    elapsed = time.perf_counter() - start
    eta = f", eta ~{format_seconds(elapsed / i * (len(config.seeds) - i))}" if i else ""
    log(f"seed {seed} ({i + 1}/{len(config.seeds)}), {elapsed:.0f}s elapsed{eta}")
    quicknet_seeds.append(_load_or_run(os.path.join(seed_dir, "quicknet.json"),
                                       lambda: run_quicknet_seed(model, dataset, config, seed, seed_dir, log,
                                                                 metrics=writer)))
    if config.end_to_end:
      e2e_seeds.append(_load_or_run(os.path.join(seed_dir, "end_to_end.json"),
                                    lambda: run_end_to_end_seed(model, dataset, config, seed, log, seed_dir,
                                                                metrics=writer)))
  if writer is not None:
    writer.close()
  results = dict(dataset=config.dataset, model=config.model, seeds=list(config.seeds),
                 exit_threshold=_mean([s["exit_threshold"] for s in quicknet_seeds]),
                 exit_threshold_chosen_on="validation" if config.exit_threshold is None else "flag",
                 train_threshold=config.train_threshold, fallback=config.fallback,
                 num_train=int(len(dataset.train_labels)), num_val=int(len(dataset.val_labels)),
                 num_test=int(len(dataset.test_labels)), config=config.to_json(),
                 class_names=list(dataset.class_names),
                 machine=report.machine_description(),
                 flops_convention="1 multiply-add = 2 FLOPs; training = 3 x forward per trained sample + "
                                  "cache, selection and validation forwards (design.md section 2)",
                 quicknet=aggregate(quicknet_seeds))
  if e2e_seeds:
    results["end_to_end"] = aggregate(e2e_seeds)
    q, e = results["quicknet"], results["end_to_end"]
    results["ratios"] = {k: e[k] / q[k] for k in ("training_flops", "inference_flops", "train_seconds")}
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(report.results_markdown(results))
  log(f"wrote {os.path.join(workdir, 'results.json')} and results.md")
  return results

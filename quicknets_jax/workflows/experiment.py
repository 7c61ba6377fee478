"""QuickNet vs end-to-end on one dataset: `train_and_evaluate(config, workdir)` writes results.json/.md.

For every seed: train the QuickNet (checkpoint per frozen block), choose the operating exit threshold
on the validation split, report test accuracy, inference and training FLOPs and the cost–accuracy
curve; train the end-to-end baseline through the same trainer; then aggregate mean ± std over seeds
(results.json; docs/method.md) and render the paper's Table 1 layout (results.md). Finished seeds are
kept in WORKDIR/seed_<s>/ and not redone, so a stopped run picks up where it was.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Optional

import jax
import numpy as np

from quicknets_jax.algorithms import forward
from quicknets_jax.algorithms.end_to_end import test_accuracy_fn, train_end_to_end
from quicknets_jax.algorithms.quicknet import QuickNetRun, train_quicknet
from quicknets_jax.core import costs, curves, exits, stats
from quicknets_jax.core.progress import Log, format_seconds
from quicknets_jax.data.datasets import Dataset
from quicknets_jax.models.base import EXIT, SUBNET, MultiExitModel
from quicknets_jax.reporting.tables import results_markdown
from quicknets_jax.training import timing
from quicknets_jax.training.checkpoint import BlockCheckpointer, FitCheckpointer
from quicknets_jax.training.compilation import CompileMeter, cache_entries, compile_summary, fit_compile_seconds
from quicknets_jax.training.events import AllOf
from quicknets_jax.workflows import metrics as metrics_lib
from quicknets_jax.workflows.aggregate import aggregate, ratios
from quicknets_jax.workflows.deployable_curve import DeployableCurve
from quicknets_jax.workflows.experiment_config import ExperimentConfig
from quicknets_jax.workflows.workdir import (
  finished,
  guard_workdir,
  machine_description,
  record_data,
  saved,
  workdir_lock,
  write_results,
)


def check_batch_size(batch_size: int, num_train: int) -> None:
  """Refuses a --batch_size larger than the whole training split: it is a typo or the wrong data, and
  clamping it would silently train another schedule. (Working sets T_j that shrink below the batch
  size inside a run are expected; the trainer takes them as one batch.)

  Args:
    batch_size: --batch_size.
    num_train: rows of the training split.

  Raises:
    ValueError: the batch is larger than the split (the message names the fix).
  """
  if batch_size > num_train:
    raise ValueError(
      f"--batch_size={batch_size} is larger than the {num_train} training samples: pass "
      f"--batch_size={num_train} or less, or use more data (--max_train)"
    )


def param_count(tree) -> int:
  """The number of parameters in a pytree of arrays.

  Args:
    tree: e.g. a model's params.

  Returns:
    The total element count.
  """
  return int(sum(np.size(x) for x in jax.tree.leaves(tree)))


def evaluate_quicknet(model, variables, dataset: Dataset, config: ExperimentConfig) -> dict:
  """Chooses the exit threshold on validation, then measures the test split at it (and the curves).

  Args:
    model: the multi-exit model.
    variables: the trained blocks' variables (the QuickNet cut after the last of them).
    dataset: the data (its validation and test splits).
    config: the run's settings (the exit rule, the evaluation batch size).

  Returns:
    The seed's evaluation: test accuracy, inference FLOPs, exit fractions, per-exit accuracies, the
    cost–accuracy curves and the same after every block.
  """
  num = len(variables)
  rule = config.exit_rule
  cascade = model.cascade_costs()[:num]
  val_probs, val_commit = forward.all_exit_outputs(model, variables, dataset.val.images, config.fit.eval_batch_size)
  test_probs, test_commit = forward.all_exit_outputs(model, variables, dataset.test.images, config.fit.eval_batch_size)
  val_sweep = exits.sweep_thresholds(val_probs, val_commit, dataset.val.labels, cascade, fallback=rule.fallback)
  if rule.exit_threshold is None:
    threshold = exits.choose_threshold(val_sweep, rule.threshold_tolerance)
  else:
    threshold = rule.exit_threshold
  accuracy, cost, fractions = exits.evaluate_rule(
    test_probs, test_commit, dataset.test.labels, threshold, cascade, rule.fallback
  )
  test_sweep = exits.sweep_thresholds(test_probs, test_commit, dataset.test.labels, cascade, fallback=rule.fallback)
  confidence_only = exits.sweep_thresholds(
    test_probs, test_commit, dataset.test.labels, cascade, fallback=rule.fallback, use_commitment=False
  )
  per_exit_accuracy = np.mean(np.argmax(np.asarray(test_probs), -1) == dataset.test.labels[None], axis=1)
  fractions = [float(f) for f in fractions] + [0.0] * (model.num_blocks - num)
  macs = {}
  if model.block_macs is not None:  # the same decisions, costed in the paper's convention
    macs["inference_macs"] = float(
      exits.evaluate_rule(
        test_probs, test_commit, dataset.test.labels, threshold, model.cascade_macs()[:num], rule.fallback
      )[1]
    )
  return dict(
    **macs,
    exit_threshold=threshold,
    test_accuracy=float(accuracy),
    inference_flops=float(cost),
    exit_fractions=fractions,
    per_exit_test_accuracy=[float(a) for a in per_exit_accuracy],
    val_accuracy_at_threshold=float(val_sweep.accuracy[np.argmin(np.abs(val_sweep.thresholds - threshold))]),
    curve=curves.sweep_points(test_sweep),
    curve_confidence_only=curves.sweep_points(confidence_only),
    **_figure_data(model, dataset, config, threshold, val_probs, val_commit, test_probs, test_commit),
  )


def _figure_data(
  model, dataset, config: ExperimentConfig, threshold: float, val_probs, val_commit, test_probs, test_commit
) -> dict:
  """What the report's figures need beyond the table, from the exit outputs already computed:
  the test accuracy of the QuickNet cut after each block (its threshold chosen on validation the same
  way) and, at the operating threshold, which exit each class's test samples take."""
  num = int(test_probs.shape[0])
  rule = config.exit_rule
  cascade = model.cascade_costs()[:num]
  after_block, thresholds = [], []
  for j in range(num):
    t = threshold
    if j < num - 1 and rule.exit_threshold is None:
      sweep = exits.sweep_thresholds(
        val_probs[: j + 1], val_commit[: j + 1], dataset.val.labels, cascade[: j + 1], fallback=rule.fallback
      )
      t = exits.choose_threshold(sweep, rule.threshold_tolerance)
    accuracy, _, _ = exits.evaluate_rule(
      test_probs[: j + 1], test_commit[: j + 1], dataset.test.labels, t, cascade[: j + 1], rule.fallback
    )
    after_block.append(float(accuracy))
    thresholds.append(float(t))
  decision = exits.select_exits(test_probs, test_commit, threshold, rule.fallback)
  exit_index, labels = np.asarray(decision.exit_index), np.asarray(dataset.test.labels)
  correct = np.asarray(decision.prediction) == labels
  counts = np.zeros((dataset.num_classes, model.num_blocks), np.int64)
  right = np.zeros_like(counts)
  np.add.at(counts, (labels, exit_index), 1)
  np.add.at(right, (labels, exit_index), correct.astype(np.int64))
  return dict(
    test_accuracy_after_block=after_block,
    exit_threshold_after_block=thresholds,
    test_exit_counts_per_class=counts.tolist(),
    test_correct_counts_per_class=right.tolist(),
  )


@dataclasses.dataclass
class SeedWatchers:
  """What watches one seed's QuickNet while it trains, and what its results read afterwards.

  Attributes:
    seed: the seed.
    checkpointer: where its blocks (and its fits' epochs) are saved and resumed from.
    events: told after every epoch and every frozen block.
    log: where its progress lines go, tagged with the seed.
    tracker: the seed's metrics.jsonl lines (None without a metrics writer).
    deploy: the deployable cascade's accuracy after each epoch (None unless `config.deploy_curve`).
  """

  seed: int
  checkpointer: BlockCheckpointer
  events: AllOf
  log: Log
  tracker: Optional[metrics_lib.QuickNetMetrics] = None
  deploy: Optional[DeployableCurve] = None


def watch_quicknet_seed(
  model,
  dataset,
  config: ExperimentConfig,
  seed: int,
  seed_dir: str,
  log: Log,
  metrics: Optional[metrics_lib.MetricsWriter] = None,
) -> SeedWatchers:
  """The checkpointer, events and log of one seed's QuickNet (`train_quicknet`'s observers).

  Args:
    model: the multi-exit model.
    dataset: the data.
    config: the run's settings.
    seed: the seed.
    seed_dir: where its checkpoints go (WORKDIR/seed_<s>).
    log: where progress lines go.
    metrics: with a writer, every block and commitment epoch becomes a line of WORKDIR/metrics.jsonl.

  Returns:
    The seed's `SeedWatchers`.
  """
  tag = f"[seed {seed} quicknet]"
  tracker = metrics_lib.QuickNetMetrics(metrics, seed) if metrics is not None else None
  deploy = None
  if config.deploy_curve:  # first: it adds the deployable cascade's accuracy to each epoch's record
    rule = config.exit_rule
    deploy = DeployableCurve(
      model,
      dataset.val,
      dataset.test,
      exit_threshold=rule.exit_threshold,
      threshold_tolerance=rule.threshold_tolerance,
      fallback=rule.fallback,
      batch_size=config.fit.eval_batch_size,
    )
  return SeedWatchers(
    seed,
    BlockCheckpointer(os.path.join(seed_dir, "quicknet_checkpoints")),
    AllOf(deploy, metrics_lib.ProgressLines(tag, config.fit.max_epochs, log), tracker),
    lambda m: log(f"{tag} {m}"),
    tracker,
    deploy,
  )


def quicknet_seed_results(run: QuickNetRun, watchers: SeedWatchers, model, dataset, config: ExperimentConfig) -> dict:
  """One seed's results (quicknet.json): its QuickNet evaluated, its costs and records; closes its checkpointer.

  Args:
    run: what `train_quicknet` returned.
    watchers: what watched it (`watch_quicknet_seed`).
    model: the multi-exit model.
    dataset: the data.
    config: the run's settings.

  Returns:
    The seed's results.
  """
  watchers.checkpointer.close()
  deploy, tracker = watchers.deploy, watchers.tracker
  result = evaluate_quicknet(model, run.variables, dataset, config)
  records = run.records
  measuring = deploy.seconds if deploy is not None else 0.0  # inside the training's clock, not training
  train_seconds = run.train_seconds - measuring
  phases = dict(run.phase_seconds) if run.phase_seconds else timing.add(*(r.phase_seconds for r in records))
  if phases:
    phases["other"] = max(phases.get("other", 0.0) - measuring, 0.0)
  result.update(
    seed=watchers.seed,
    params=param_count([v["params"] for v in run.variables]),
    training_flops=run.training_flops,
    train_seconds=train_seconds,
    training_flops_per_second=run.training_flops / max(train_seconds, 1e-9),
    # where the seconds go (`training.timing`), and the FLOP rate of each phase that computes
    seconds_by_phase=phases,
    seconds_by_phase_per_block=[r.phase_seconds for r in records],
    flops_per_second_by_phase=timing.flops_per_second(costs.add_parts(*(r.flops for r in records)), phases),
    # per block: its fit and its commitment head's fit (epochs restored from a checkpoint keep theirs)
    compile_seconds_per_block=[fit_compile_seconds(r.history) + fit_compile_seconds(r.commit_history) for r in records],
    # compiled on a thread while an earlier block trained (`quicknet.CompilingAhead`): no one waited
    background_compile_seconds_per_block=[r.background_compile_seconds for r in records],
    trained_blocks=run.num_trained_blocks,
    train_samples_per_block=[r.train_samples for r in records],
    learned_per_block=[r.learned for r in records],
    epochs_per_block=[r.epochs for r in records],
    commit_epochs_per_block=[r.commit_epochs for r in records],
    commit_positive_rate_per_block=[r.positive_rate for r in records],
    class_counts_per_block=[r.class_counts for r in records],
    training_flops_parts=[dict(block=r.block, **r.flops) for r in records],
    # QuickNet+ fine-tuning (after every block): its FLOPs by part, epochs and seconds
    finetune=None if run.finetune is None else {k: v for k, v in run.finetune.items() if k != "history"},
    history=[dict(block=r.block, epochs=r.history, commitment_epochs=r.commit_history) for r in records],
  )
  if run.schedule != "sequential":  # every block at once: the epochs of the whole network
    result.update(schedule=run.schedule, network_epochs=run.epochs)
  if tracker is not None:
    tracker.after_blocks(result)
  return result


def run_end_to_end_seed(
  model,
  dataset,
  config: ExperimentConfig,
  seed: int,
  log: Log,
  seed_dir: Optional[str] = None,
  metrics: Optional[metrics_lib.MetricsWriter] = None,
) -> dict:
  """Trains (or resumes, from SEED_DIR/end_to_end_checkpoints) one seed's end-to-end baseline.

  Args:
    model: the multi-exit model (its backbone and last exit train).
    dataset: the data.
    config: the run's settings.
    seed: the seed.
    log: where progress lines go.
    seed_dir: where its checkpoints go (None: no checkpoints).
    metrics: with a writer, every epoch becomes a line of WORKDIR/metrics.jsonl and its history entry
      gets the test accuracy after that epoch (for the accuracy-vs-training-cost figure; kept off
      `train_seconds`).

  Returns:
    The seed's results (end_to_end.json).
  """
  tracker = None
  if metrics is not None:
    tracker = metrics_lib.EndToEndMetrics(
      metrics, seed, test_accuracy_fn(model, dataset.test.images, dataset.test.labels, config.fit.eval_batch_size)
    )
  # the tracker first: it adds the test accuracy to the epoch's record before anything reads it
  events = AllOf(tracker, metrics_lib.ProgressLines(f"[seed {seed} end-to-end]", config.fit.max_epochs, log))
  checkpointer = (
    FitCheckpointer(os.path.join(seed_dir, "end_to_end_checkpoints"), "end-to-end") if seed_dir is not None else None
  )
  run = train_end_to_end(
    model,
    dataset.train,
    dataset.val,
    config.fit,
    seed,
    log=lambda m: log(f"[seed {seed}] {m}"),
    events=events,
    checkpoint=checkpointer,
  )
  if checkpointer is not None:
    checkpointer.close()
  phases = dict(run.phase_seconds)
  if tracker is not None:  # the test accuracy after each epoch is measurement, not training
    run.seconds -= tracker.seconds
    phases["other"] = max(phases.get("other", 0.0) - tracker.seconds, 0.0)
  probs, _ = forward.all_exit_outputs(model, run.variables, dataset.test.images, config.fit.eval_batch_size)
  accuracy = float(np.mean(np.argmax(np.asarray(probs[-1]), -1) == dataset.test.labels))
  last = model.num_blocks - 1
  params = [v["params"][SUBNET] for v in run.variables] + [run.variables[last]["params"][EXIT]]
  macs = {} if model.block_macs is None else dict(inference_macs=model.end_to_end_macs())
  return dict(
    seed=seed,
    test_accuracy=accuracy,
    params=param_count(params),
    **macs,
    inference_flops=model.end_to_end_cost(),
    training_flops=run.training_flops,
    training_flops_parts=run.flops,
    train_seconds=run.seconds,
    training_flops_per_second=run.training_flops / max(run.seconds, 1e-9),
    seconds_by_phase=phases,
    flops_per_second_by_phase=timing.flops_per_second(run.flops, phases),
    compile_seconds=fit_compile_seconds(run.history),
    epochs=run.epochs,
    best_epoch=run.best_epoch,
    history=run.history,
  )


def train_and_evaluate(
  config: ExperimentConfig,
  workdir: str,
  log: Log = print,
  overwrite: bool = False,
  dataset: Optional[Dataset] = None,
  metrics: bool = True,
  model: Optional[MultiExitModel] = None,
) -> dict:
  """Runs the comparison for every seed and writes WORKDIR/results.json and results.md; returns the dict.

  Finished seeds (WORKDIR/seed_<s>/quicknet.json, end_to_end.json) are read back, not redone.

  Args:
    config: the run's settings (data, model, QuickNet, exit rule, seeds).
    workdir: where checkpoints, metrics and results go (a run resumes there).
    log: where progress lines go.
    overwrite: start over in a workdir that holds a run with another config.
    dataset: the data (default: what `config.data` names, loaded).
    metrics: log every epoch to WORKDIR/metrics.jsonl and TensorBoard events under WORKDIR/tensorboard/.
    model: the model (default: `config.model` built for the data); it must be what `config.model`
      builds, so that the workdir can rebuild it.

  Returns:
    The results dict (results.json).

  Raises:
    ValueError: another run's config or data in `workdir`, a batch larger than the training split, bad
      data.
    quicknets_jax.workflows.workdir.WorkdirInUseError: another live run holds `workdir`.
  """
  with workdir_lock(workdir, log):  # a second run in this workdir is refused
    guard_workdir(config, workdir, overwrite)
    if dataset is None:
      dataset = config.data.load(log=log)
    log(f"data: {dataset.summary()}")
    record_data(workdir, dataset)
    check_batch_size(config.fit.batch_size, len(dataset.train.labels))
    if model is None:
      model = config.model.build(dataset.train.images.shape[1:], dataset.num_classes)
    quicknet_seeds, e2e_seeds = [], []
    start = time.perf_counter()
    writer = metrics_lib.MetricsWriter(workdir) if metrics else None
    entries_at_start = cache_entries()
    with CompileMeter(every_thread=True) as compiled:
      for i, seed in enumerate(config.seeds):
        seed_dir = os.path.join(workdir, f"seed_{seed}")
        os.makedirs(seed_dir, exist_ok=True)
        elapsed = time.perf_counter() - start
        eta = f", eta ~{format_seconds(elapsed / i * (len(config.seeds) - i))}" if i else ""
        log(f"seed {seed} ({i + 1}/{len(config.seeds)}), {elapsed:.0f}s elapsed{eta}")
        path = os.path.join(seed_dir, "quicknet.json")
        result = finished(path)
        if result is None:
          watch = watch_quicknet_seed(model, dataset, config, seed, seed_dir, log, metrics=writer)
          run = train_quicknet(
            model,
            dataset.train,
            dataset.val,
            config.quicknet,
            seed,
            checkpointer=watch.checkpointer,
            log=watch.log,
            events=watch.events,
          )
          result = saved(path, quicknet_seed_results(run, watch, model, dataset, config))
        quicknet_seeds.append(result)
        path = os.path.join(seed_dir, "end_to_end.json")
        if config.end_to_end:
          e2e_seeds.append(
            finished(path)
            or saved(path, run_end_to_end_seed(model, dataset, config, seed, log, seed_dir, metrics=writer))
          )
    if writer is not None:
      writer.close()
    rule = config.exit_rule
    results = dict(
      dataset=dataset.name,
      model=config.model.name,
      seeds=list(config.seeds),
      exit_threshold=stats.mean([s["exit_threshold"] for s in quicknet_seeds]),
      exit_threshold_chosen_on="validation" if rule.exit_threshold is None else "flag",
      train_threshold=config.quicknet.train_threshold,
      fallback=rule.fallback,
      num_train=int(len(dataset.train.labels)),
      num_val=int(len(dataset.val.labels)),
      num_test=int(len(dataset.test.labels)),
      config=config.to_json(),
      class_names=list(dataset.class_names),
      machine=machine_description(),
      compute_dtype=config.fit.compute_dtype or "float32",  # --dtype as this backend resolved it
      # this process's compiles (seeds read back from an earlier run add none) and the cache's state
      compile_seconds=compile_summary(compiled, entries_at_start),
      flops_convention="1 multiply-add = 2 FLOPs; training = 3 x forward per trained sample + "
      "cache, selection and validation forwards (docs/method.md, FLOP accounting)",
      quicknet=aggregate(quicknet_seeds),
    )
    if e2e_seeds:
      results["end_to_end"] = aggregate(e2e_seeds)
      results["ratios"] = ratios(results["quicknet"], results["end_to_end"])
      # QuickNet's training FLOP rate as a fraction of end-to-end's (1: it spends its FLOPs as fast)
      results["training_flops_per_second_efficiency"] = (
        results["quicknet"]["training_flops_per_second"] / results["end_to_end"]["training_flops_per_second"]
      )
    write_results(workdir, "results", results, results_markdown(results), log)
    return results

"""Algorithm 1: a QuickNet trained block by block, each block on what the earlier ones did not learn.

For block j (`train_block`): its inputs (`block_inputs`: the features entering it for the working
sets T_j, V_j — cached once, or recomputed through the frozen prefix every step), its fit (subnet +
exit, cross-entropy, earlier blocks frozen: `trainer.fit`), its commitment head
(`fit_commitment_head`: balanced BCE on "the exit was right"), and the learned set (`select_learned`:
L_j = {correct, confidence > τ, commitment > 0}, T_{j+1} = T_j − L_j). `train_quicknet` loops over
the blocks and freezes each (`freeze`: an orbax checkpoint of its parameters and the next working
sets). `Task` holds what the blocks of one run share. Working sets are sorted int32 index arrays into
the training arrays. Inside a block, both fits checkpoint their whole FitState every epoch, so a
stopped run resumes from the last epoch with the same result, bit for bit, as an uninterrupted one.
Training FLOPs are `costs.quicknet_block_flops`, the same formula for the per-epoch events and the
block's record. While the first block trains, a thread compiles the later fits (`CompilingAhead`).
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from collections.abc import Sequence
from typing import NamedTuple, Optional

import jax
import numpy as np

from quicknets_jax.algorithms import decoupled, forward
from quicknets_jax.algorithms.commitment import CommitmentOptions, compile_commitment_ahead, train_commitment_head
from quicknets_jax.algorithms.finetune import FinetuneHooks, finetune_quicknet
from quicknets_jax.algorithms.settings import QuickNetConfig
from quicknets_jax.core import costs, exits, rng
from quicknets_jax.core.progress import Log
from quicknets_jax.data.sampling import seeded_mask, seeded_subset
from quicknets_jax.data.split import Split
from quicknets_jax.data.streaming import device_array, take
from quicknets_jax.models.base import EXIT, SUBNET, Block, MultiExitModel, parts_mask, split_blocks, split_variables
from quicknets_jax.training import losses, parallel, timing
from quicknets_jax.training.checkpoint import BlockCheckpointer
from quicknets_jax.training.compilation import CompileMeter
from quicknets_jax.training.events import AllOf, BlockFrozen, EpochDone, Events, InPhase
from quicknets_jax.training.trainer import (
  FitData,
  FitHooks,
  FitState,
  Objective,
  SequentialRunner,
  bucket_size,
  compile_ahead,
  init_fit_state,
  pad_rows,
  run_epochs,
)


@dataclasses.dataclass
class BlockRecord:
  """What happened while block j trained (sizes, epochs, FLOPs by part, seconds); checkpointed as a dict."""

  block: int
  train_samples: int
  val_samples: int
  class_counts: list
  epochs: int
  best_epoch: int
  commit_epochs: int
  learned: int
  val_learned: int
  positive_rate: float
  flops: dict
  seconds: float
  history: list
  commit_history: list
  # seconds by phase (`training.timing`): feature_cache, block_epochs, block_validation, commit_epochs,
  # commit_validation, selection, checkpoints, compile (inside the others), other
  phase_seconds: dict = dataclasses.field(default_factory=dict)
  # compiled on a thread while the block trained, for its commitment head and the next block (not in
  # `seconds`: nothing waited for it)
  background_compile_seconds: float = 0.0

  @property
  def training_flops(self) -> float:
    """The block's training FLOPs, every phase summed."""
    return costs.total(self.flops)


@dataclasses.dataclass
class QuickNetRun:
  """A trained QuickNet: one variable dict per trained block and the record of each block."""

  variables: list
  records: list
  finetune: Optional[dict] = None  # QuickNet+ joint fine-tuning: epochs, flops by part, seconds
  schedule: str = "sequential"  # or "decoupled" (`decoupled.train_decoupled`)
  phase_seconds: Optional[dict] = None  # the run's seconds by phase, where blocks did not train apart
  epochs: Optional[list] = None  # the decoupled run's record of every epoch (all blocks at once)

  @property
  def num_trained_blocks(self) -> int:
    """How many blocks were trained (fewer than the model's when an early block learned every sample)."""
    return len(self.records)

  @property
  def training_flops(self) -> float:
    """The whole run's training FLOPs: every block's, plus a joint fine-tuning's if there was one."""
    extra = costs.total(self.finetune["flops"]) if self.finetune else 0.0
    return float(sum(r.training_flops for r in self.records) + extra)

  @property
  def train_seconds(self) -> float:
    """The whole run's training wall-clock seconds: every block's, plus a joint fine-tuning's."""
    return float(sum(r.seconds for r in self.records) + (self.finetune["seconds"] if self.finetune else 0.0))


class WorkingSets(NamedTuple):
  """T_j and V_j: sorted int32 rows of the training and validation splits that block j sees."""

  train_idx: np.ndarray
  val_idx: np.ndarray


@dataclasses.dataclass(frozen=True)
class Task:
  """What every block of one QuickNet run shares.

  Attributes:
    model: the multi-exit model; train, val: the training and validation splits.
    config: Algorithm 1's settings and the schedule of every fit.
    init_variables: the model's initial variables, one dict per block (block j starts from its own).
    checkpointer: one checkpoint per frozen block and one per epoch of the fits in progress (or None).
    log: where progress lines go; events: told after every epoch and every frozen block (or None).
    ahead: the thread compiling the fits of the blocks still to train (`CompilingAhead`), or None.
  """

  model: MultiExitModel
  train: Split
  val: Split
  config: QuickNetConfig
  init_variables: list
  checkpointer: Optional[BlockCheckpointer] = None
  log: Log = print
  events: Optional[Events] = None
  ahead: Optional[CompilingAhead] = None


# ------------------------------------------------------------------------------- feature cache


def feature_cache_bytes(model: MultiExitModel, j: int, num_train: int, num_val: int) -> int:
  """Bytes block j's feature cache takes: float32 features of the training and validation splits,
  each padded to its bucket (the cache is laid out so every block and seed shares compiled code).

  Args:
    model: the multi-exit model.
    j: the block whose input features are cached.
    num_train: rows of its training working set.
    num_val: rows of its validation working set.

  Returns:
    The cache's size in bytes.
  """
  return 4 * forward.feature_elements(model, j) * (bucket_size(num_train) + bucket_size(num_val))


def uses_feature_cache(model: MultiExitModel, j: int, config: QuickNetConfig, num_train: int, num_val: int) -> bool:
  """Whether block j trains on cached prefix features or recomputes the frozen prefix every step.

  Block 0 has no prefix; the FLOP accounting follows whichever path this picks.

  Args:
    model: the multi-exit model.
    j: the block.
    config: the QuickNet's settings (`cache_features`, `feature_cache_mb`).
    num_train: rows of its training working set.
    num_val: rows of its validation working set.

  Returns:
    True: cached features; False: the prefix runs every step.
  """
  if j == 0:
    return True
  if not config.cache_features:
    return False
  return (
    config.feature_cache_mb is None
    or feature_cache_bytes(model, j, num_train, num_val) <= config.feature_cache_mb * 2**20
  )


# ------------------------------------------------------------------------------ the four steps


@dataclasses.dataclass(frozen=True)
class BlockInputs:
  """What block j trains on (`block_inputs`).

  Attributes:
    j: the block; working: its working sets T_j, V_j.
    data: the block fit's arrays; objective: its loss and the loss's traced inputs (all of the block's
      params train but the commitment head's: `fit_objective`).
    cached: whether the prefix's features are cached (False: recomputed every step).
    train_features: the features entering block j for T_j (None when not cached: they are computed
      after the fit, for the commitment head); val_features: the same for V_j.
    fit_pos, commit_pos: positions into T_j that the block's fit / its commitment head learn from
      (all of T_j unless QuickNet+ holds some out for the head).
    labels, val_labels: the labels of T_j and V_j.
    epoch_samples: what an epoch of the block's fit trains on (|fit_pos|, or |T_0| for full draws).
  """

  j: int
  working: WorkingSets
  data: FitData
  objective: Objective
  cached: bool
  train_features: Optional[np.ndarray]
  val_features: np.ndarray
  fit_pos: np.ndarray
  commit_pos: np.ndarray
  labels: np.ndarray
  val_labels: np.ndarray
  epoch_samples: int

  def block_flops(self, model: MultiExitModel, epochs: int, commit_epochs: int = 0, stage: str = "done") -> dict:
    """Training FLOPs of this block by part at `stage` (`costs.quicknet_block_flops`).

    Args:
      model: the multi-exit model.
      epochs: epochs of the block's fit so far.
      commit_epochs: epochs of its commitment head's fit so far.
      stage: how far the block is ("block", "commitment" or "done").

    Returns:
      FLOPs by part.
    """
    return costs.quicknet_block_flops(
      model.block_costs[self.j],
      costs.prefix_cost(model.block_costs, self.j),
      costs.BlockSamples(
        n_train=len(self.working.train_idx),
        n_fit=self.epoch_samples,
        n_val=len(self.working.val_idx),
        n_commit=len(self.commit_pos),
      ),
      cached=self.cached,
      epochs=epochs,
      commit_epochs=commit_epochs,
      stage=stage,
    )


def _fit_parts(params: dict):
  """The leaves a block's fit trains: its subnet and exit (its commitment head trains after)."""
  return parts_mask(params, (SUBNET, EXIT))


def _epoch_draws(task: Task, j: int) -> Optional[int]:
  """The samples an epoch of block j draws: the authors' full-size epochs draw |T_0| class-balanced
  samples from T_j in every block after the first; otherwise None (the working set, once)."""
  return len(task.train.labels) if task.config.epoch_draws == "full" and j > 0 else None


def cached_fit_data(task: Task, j: int, train: Split, val: Split, fit_pos: np.ndarray) -> FitData:
  """Block j's fit data (j > 0) on cached features entering it.

  Padded to the full splits' buckets: blocks of one shape share one compiled epoch and validation pass
  across working-set sizes and seeds (only the first n rows are ever read).

  Args:
    task: the run.
    j: the block (not the first).
    train: the features entering block j on T_j (or their `jax.ShapeDtypeStruct`) and T_j's labels.
    val: the same on V_j.
    fit_pos: the positions in T_j that the block trains on.

  Returns:
    The `FitData` of block j's fit.
  """
  num_train, num_val = len(task.train.labels), len(task.val.labels)
  rows, val_rows = bucket_size(num_train), bucket_size(num_val)
  labels = np.asarray(train.labels)
  return FitData(
    Split(pad_rows(train.images, rows), pad_rows(labels, rows)),
    Split(pad_rows(val.images, val_rows), pad_rows(val.labels, val_rows)),
    rows=device_array(fit_pos),
    row_classes=device_array(labels[fit_pos]),
    num_classes=task.model.num_classes,
    epoch_draws=_epoch_draws(task, j),
    bucket=rows,
    num_val=len(val.labels),
  )


def cached_objective(task: Task, j: int) -> Objective:
  """Block j's objective on cached features (j > 0): its cross-entropy, nothing augmented (features are
  not images), without the trainable mask (`block_inputs` adds it)."""
  config = task.config
  learned_threshold = config.train_threshold if config.budget == "learned_set" else None
  return Objective(losses.BlockLoss(task.model.blocks[j], None, learned_threshold, config.fit.compute_dtype))


def block_inputs(task: Task, j: int, frozen: Sequence[dict], working: WorkingSets, key: jax.Array) -> BlockInputs:
  """The features entering block j for its working sets, the fit's arrays and objective.

  Args:
    task: what every block of the run shares.
    j: the block.
    frozen: the variables of blocks 0..j−1.
    working: T_j and V_j.
    key: block j's random key (class-balanced draws, held-out rows).

  Returns:
    Block j's `BlockInputs`.
  """
  model, config, train, val = task.model, task.config, task.train, task.val
  train_idx, val_idx = (np.asarray(a) for a in working)
  n_train, eval_bs = len(train_idx), config.fit.eval_batch_size
  labels_j, val_labels_j = np.asarray(train.labels)[train_idx], np.asarray(val.labels)[val_idx]
  # QuickNet+ commitment holdout: positions (into T_j) that the block never trains on. The faithful
  # recipe holds none out, and every draw uses its own stream of the block's key, changing nothing else.
  holdout = seeded_subset(n_train, config.commit_holdout, rng.stream(key, rng.Stream.COMMIT_HOLDOUT))
  all_pos = np.arange(n_train, dtype=np.int32)
  fit_pos = np.setdiff1d(all_pos, holdout) if len(holdout) else all_pos
  commit_pos = holdout if len(holdout) else np.arange(n_train)
  learned_threshold = config.train_threshold if config.budget == "learned_set" else None
  augment, dtype = config.fit.augmentation_name, config.fit.compute_dtype
  num_train, num_val = len(train.labels), len(val.labels)
  val_features = forward.prefix_features(model, frozen, val.images, val_idx, j, eval_bs)
  cached = uses_feature_cache(model, j, config, num_train, num_val)
  if config.cache_features and not cached:
    task.log(
      f"block {j}: its feature cache would take {feature_cache_bytes(model, j, num_train, num_val) / 2**20:.0f} "
      f"MiB > feature_cache_mb={config.feature_cache_mb:g}: the frozen prefix is recomputed every step instead"
    )
  draws = _epoch_draws(task, j)
  # blocks after the first are padded to the full split's bucket: they share one compiled epoch
  common = dict(
    rows=device_array(train_idx[fit_pos], np.int32),
    row_classes=device_array(labels_j[fit_pos]),
    num_classes=model.num_classes,
    epoch_draws=draws,
    bucket=bucket_size(num_train) if j > 0 else None,
  )
  train_features = None
  if cached and j == 0:  # block 0 reads the images themselves through the index array: no copy
    train_features = take(train.images, train_idx)
    data = FitData(
      Split(device_array(train.images), device_array(train.labels)),
      Split(device_array(val_features), device_array(val_labels_j)),
      **common,
    )
    objective = Objective(losses.BlockLoss(model.blocks[j], augment, learned_threshold, dtype))
  elif cached:
    train_features = forward.prefix_features(model, frozen, train.images, train_idx, j, eval_bs)
    data = cached_fit_data(task, j, Split(train_features, labels_j), Split(val_features, val_labels_j), fit_pos)
    objective = cached_objective(task, j)
  else:
    data = FitData(
      Split(device_array(train.images), device_array(train.labels)),
      Split(device_array(take(val.images, val_idx)), device_array(val_labels_j)),
      **common,
    )
    frozen_params, frozen_state = split_blocks(frozen)
    objective = Objective(
      losses.BlockLossThroughPrefix(model, j, augment, learned_threshold, dtype),
      hparams=(frozen_params, frozen_state),
    )
  params, _ = split_variables(task.init_variables[j])
  return BlockInputs(
    j=j,
    working=working,
    data=data,
    objective=dataclasses.replace(objective, trainable=_fit_parts(params)),
    cached=cached,
    train_features=train_features,
    val_features=val_features,
    fit_pos=fit_pos,
    commit_pos=commit_pos,
    labels=labels_j,
    val_labels=val_labels_j,
    epoch_samples=len(fit_pos) if draws is None else draws,
  )


class Committed(NamedTuple):
  """A block with its trained commitment head, and its outputs on T_j and V_j."""

  variables: dict
  commit_state: FitState
  h_train: np.ndarray  # the block's output features
  h_val: np.ndarray
  probs_train: np.ndarray  # its exit's probabilities
  probs_val: np.ndarray
  positive_rate: float  # the fraction of the head's training rows on which the exit was right
  outputs_seconds: float  # computing what the head learns from (the block's outputs on T_j and V_j)...
  outputs_compile_seconds: float  # ...of which compiling


def fit_commitment_head(
  task: Task, inputs: BlockInputs, fitted: FitState, frozen: Sequence[dict], key: jax.Array, hooks: FitHooks
) -> Committed:
  """Runs the trained block on T_j and V_j and trains its commitment head on "the exit was right".

  Args:
    task: what every block of the run shares.
    inputs: block j's inputs.
    fitted: the block's finished fit (its best epoch's parameters).
    frozen: the variables of blocks 0..j−1 (to recompute the prefix when features are not cached).
    key: the head's random key.
    hooks: events, checkpoint and log of the head's fit.

  Returns:
    The block with its head (`Committed`).
  """
  start = time.perf_counter()
  j, block, eval_bs = inputs.j, task.model.blocks[inputs.j], task.config.fit.eval_batch_size
  variables = {"params": fitted.best_params, **fitted.best_model_state}
  train_features = inputs.train_features
  with CompileMeter() as compiled:
    if train_features is None:  # not cached: the prefix runs once more, for T_j
      train_idx = inputs.working.train_idx
      train_features = forward.prefix_features(task.model, frozen, task.train.images, train_idx, j, eval_bs)
    h_train, probs_train, _ = forward.block_outputs(block, variables, train_features, eval_bs)
    h_val, probs_val, _ = forward.block_outputs(block, variables, inputs.val_features, eval_bs)
  correct_train = (np.argmax(probs_train, -1) == inputs.labels).astype(np.int32)
  correct_val = (np.argmax(probs_val, -1) == inputs.val_labels).astype(np.int32)
  pos = inputs.commit_pos
  outputs_seconds = time.perf_counter() - start
  result = train_commitment_head(
    block,
    variables,
    Split(h_train[pos], correct_train[pos]),
    Split(h_val, correct_val),
    task.config.commitment_fit(),
    key,
    options=CommitmentOptions(
      name=f"commitment head {j}",
      balance=task.config.commit_balance,
      pad_to=(bucket_size(len(task.train.labels)), bucket_size(len(task.val.labels))),
    ),
    hooks=hooks,
  )
  variables = {"params": result.best_params, **fitted.best_model_state}
  positive_rate = int(correct_train[pos].sum()) / len(pos)
  return Committed(
    variables, result, h_train, h_val, probs_train, probs_val, positive_rate, outputs_seconds, compiled.seconds
  )


class Learned(NamedTuple):
  """L_j as masks over T_j and V_j, and what remains for the next block."""

  train: np.ndarray
  val: np.ndarray
  next_sets: WorkingSets


def learned_mask(probs, commit_logits, labels, train_threshold: float, commit_threshold: float = 0.0):
  """L_j as a mask: correct, confidence above τ, commitment logit above `commit_threshold`.

  Args:
    probs: [N, C] the exit's softmax.
    commit_logits: [N] the commitment head's logits.
    labels: [N] the true classes.
    train_threshold: τ.
    commit_threshold: the logit a learned sample exceeds (0: a positive commitment, the method page's
      learned set; `QuickNetConfig.learned_commit_logit`).

  Returns:
    [N] bool: whether each sample is learned.
  """
  correct = np.argmax(probs, -1) == np.asarray(labels)
  return (
    correct & (np.asarray(exits.confidence(probs)) > train_threshold) & (np.asarray(commit_logits) > commit_threshold)
  )


def select_learned(task: Task, inputs: BlockInputs, committed: Committed, key: jax.Array) -> Learned:
  """The learned set of block j (its trained commitment head decides), and T_{j+1}, V_{j+1}.

  Args:
    task: what every block of the run shares.
    inputs: block j's inputs.
    committed: the block with its trained head.
    key: the block's random key (soft removal keeps a seeded fraction, `keep_learned`).

  Returns:
    The learned masks and the next working sets (`Learned`).
  """
  config = task.config
  block, eval_bs = task.model.blocks[inputs.j], config.fit.eval_batch_size
  commit_train = forward.commit_logits(block, committed.variables, committed.h_train, eval_bs)
  commit_val = forward.commit_logits(block, committed.variables, committed.h_val, eval_bs)
  rule = (config.train_threshold, config.learned_commit_logit())
  learned = np.asarray(learned_mask(committed.probs_train, commit_train, inputs.labels, *rule))
  val_learned = np.asarray(learned_mask(committed.probs_val, commit_val, inputs.val_labels, *rule))
  # Soft removal keeps a seeded fraction of the learned samples in the next working sets.
  kept = seeded_mask(learned, config.keep_learned, rng.stream(key, rng.Stream.KEEP_LEARNED_TRAIN))
  val_kept = seeded_mask(val_learned, config.keep_learned, rng.stream(key, rng.Stream.KEEP_LEARNED_VAL))
  train_idx, val_idx = inputs.working
  return Learned(
    learned,
    val_learned,
    WorkingSets(
      np.asarray(train_idx)[~learned | kept].astype(np.int32),
      np.asarray(val_idx)[~val_learned | val_kept].astype(np.int32),
    ),
  )


class CompilingAhead(Events):
  """Compiles, on a thread, the fits of the blocks still to train while the first of them trains.

  In the order the run needs them: block j's commitment head (its epoch, draw and validation pass), then
  block j+1's fit (when its features are cached), for every block from `first`. Nothing runs: the fits
  find their programs compiled (`trainer.compile_ahead`). Working-set sizes are not known ahead; the
  programs do not depend on them (the arrays are padded to the splits' buckets), except where a set is
  smaller than a batch, and such a fit compiles its own program as it would without this.

  The thread starts after the first epoch of the first block (`epoch_done`, as a listener of that
  fit), so that it does not slow the compiles of that block's own programs, or when a block first waits
  for it.

  Args:
    task: the run.
    first: the first block still to train.
  """

  def __init__(self, task: Task, first: int):
    self._seconds: dict = {}  # (kind, block) -> compile seconds, once compiled
    self._items = list(_ahead_of(task, first))
    self._done = {(kind, j): threading.Event() for kind, j, _ in self._items}
    self._failure: Optional[BaseException] = None
    self._stopped = False
    self._thread = None
    if parallel.current_mesh() is None:  # a mesh is the calling thread's context: its fits compile their own
      self._thread = threading.Thread(target=self._run, name="compiling ahead")

  def epoch_done(self, event: EpochDone) -> None:
    """Starts the thread (once).

    Args:
      event: the finished epoch (not read).
    """
    del event
    self._start()

  def _start(self) -> None:
    if self._thread is not None and self._thread.ident is None and not self._stopped:
      self._thread.start()

  def _run(self) -> None:
    try:
      for kind, j, compile_it in self._items:
        if self._stopped:
          return
        with CompileMeter() as meter:
          compile_it()
        self._seconds[kind, j] = meter.seconds
        self._done[kind, j].set()
    except BaseException as e:  # raised again in the run's thread, by `wait`
      self._failure = e
    finally:
      for event in self._done.values():
        event.set()

  def wait(self, kind: str, j: int) -> float:
    """Returns once block j's fit ("fit") or commitment head ("commit") is compiled, or will not be here.

    Args:
      kind: "fit" or "commit".
      j: the block.

    Returns:
      The seconds waited.

    Raises:
      Exception: what the thread raised while compiling, raised again here.
    """
    start = time.perf_counter()
    if self._thread is not None and (kind, j) in self._done:
      self._start()
      self._done[kind, j].wait()
    if self._failure is not None:
      raise self._failure
    return time.perf_counter() - start

  def seconds(self, j: int) -> float:
    """The seconds the thread spent compiling block j's fit and commitment head (0.0 for what it did not).

    Args:
      j: the block.

    Returns:
      Compile seconds on the thread.
    """
    return sum(self._seconds.get((kind, j), 0.0) for kind in ("fit", "commit"))

  def close(self) -> None:
    """Stops the thread after what it is compiling, and waits for it."""
    self._stopped = True
    if self._thread is not None and self._thread.ident is not None:
      self._thread.join()


def _ahead_of(task: Task, first: int):
  """(kind, block, a function compiling it) for every fit `CompilingAhead` compiles, in the run's order."""
  model, config = task.model, task.config
  num_train, num_val = len(task.train.labels), len(task.val.labels)
  pad_to = (bucket_size(num_train), bucket_size(num_val))
  labels, val_labels = np.asarray(task.train.labels), np.asarray(task.val.labels)
  key = rng.seed_key(0)  # of the kind the fits get: a program depends on a key's type, not its value
  entering = jax.ShapeDtypeStruct((1, *task.train.images.shape[1:]), task.train.images.dtype)
  for j in range(model.num_blocks):
    variables = task.init_variables[j]
    out = jax.eval_shape(lambda x, j=j, v=variables: model.blocks[j].apply(v, x, method=Block.features), entering)
    if j >= first:
      if j > first and uses_feature_cache(model, j, config, num_train, num_val):
        params, state = split_variables(variables)
        objective = dataclasses.replace(cached_objective(task, j), trainable=_fit_parts(params))
        data = cached_fit_data(
          task,
          j,
          Split(jax.ShapeDtypeStruct((num_train, *entering.shape[1:]), entering.dtype), labels),
          Split(jax.ShapeDtypeStruct((num_val, *entering.shape[1:]), entering.dtype), val_labels),
          np.arange(num_train, dtype=np.int32),
        )
        yield "fit", j, functools.partial(compile_ahead, objective, params, state, data, config.block_fit(), key)
      yield (
        "commit",
        j,
        functools.partial(
          compile_commitment_ahead,
          model.blocks[j],
          variables,
          out,
          (num_train, num_val),
          config.commitment_fit(),
          key,
          balance=config.commit_balance,
          pad_to=pad_to,
        ),
      )
    entering = out


# ------------------------------------------------------------------------------- one block, all


def train_block(
  task: Task, j: int, frozen: Sequence[dict], working: WorkingSets, key: jax.Array, flops_before: float = 0.0
) -> tuple[dict, BlockRecord, WorkingSets]:
  """Algorithm 1 for block j: inputs, fit, commitment head, learned set.

  Args:
    task: the run's model, data, settings and observers.
    j: the block; frozen: the variables of blocks 0..j−1.
    working: T_j and V_j.
    key: the block's key (its fit, its commitment head and its random selections derive from it).
    flops_before: the run's training FLOPs before this block (the epoch events report the running total).

  Returns:
    (block variables, its record, T_{j+1} and V_{j+1}). With a checkpointer, the block fit and the
    commitment fit save their state every epoch under its `in_progress/` and resume from there.
  """
  start = time.perf_counter()
  checkpointer = task.checkpointer
  block_ckpt = checkpointer.fit_checkpointer("block", j) if checkpointer is not None else None
  commit_ckpt = checkpointer.fit_checkpointer("commitment", j) if checkpointer is not None else None
  fit_key, commit_key = jax.random.split(key)
  with CompileMeter() as inputs_compiled:
    inputs = block_inputs(task, j, frozen, working, key)
  inputs_seconds = time.perf_counter() - start
  waited = task.ahead.wait("fit", j) if task.ahead is not None else 0.0

  def spent(stage, **progress):
    return flops_before + costs.total(inputs.block_flops(task.model, stage=stage, **progress))

  params, state = split_variables(task.init_variables[j])
  # `trainer.fit`'s two steps, spelled out: the block's epochs run one call below this function
  block_config, name = task.config.block_fit(), f"block {j}"
  fitted = run_epochs(
    SequentialRunner.create(inputs.objective, inputs.data, block_config, name),
    init_fit_state(inputs.objective, params, state, block_config),
    block_config,
    fit_key,
    name=name,
    hooks=FitHooks(
      AllOf(InPhase(task.events, "block", j, lambda record: spent("block", epochs=record["epoch"])), task.ahead),
      block_ckpt,
      task.log,
    ),
  )
  waited += task.ahead.wait("commit", j) if task.ahead is not None else 0.0
  committed = fit_commitment_head(
    task,
    inputs,
    fitted,
    frozen,
    commit_key,
    FitHooks(
      InPhase(
        task.events,
        "commitment",
        j,
        lambda record: spent("commitment", epochs=fitted.epoch, commit_epochs=record["epoch"]),
      ),
      commit_ckpt,
      task.log,
    ),
  )
  selecting = time.perf_counter()
  with CompileMeter() as selection_compiled:
    learned = select_learned(task, inputs, committed, key)
  selection_seconds = time.perf_counter() - selecting
  n_train = len(working.train_idx)
  seconds = time.perf_counter() - start + sum(c.resumed_seconds for c in (block_ckpt, commit_ckpt) if c)
  features_compile = inputs_compiled.seconds + committed.outputs_compile_seconds
  phases = timing.add(
    dict(
      feature_cache=inputs_seconds + committed.outputs_seconds - features_compile,
      selection=selection_seconds - selection_compiled.seconds,
      compile=features_compile + selection_compiled.seconds + waited,  # waiting for `CompilingAhead`
    ),
    timing.fit_seconds(fitted.history, "block_"),
    timing.fit_seconds(committed.commit_state.history, "commit_"),
  )
  record = BlockRecord(
    block=j,
    train_samples=n_train,
    val_samples=len(working.val_idx),
    class_counts=np.bincount(inputs.labels, minlength=task.model.num_classes).tolist(),
    epochs=fitted.epoch,
    best_epoch=fitted.best_epoch,
    commit_epochs=committed.commit_state.epoch,
    learned=int(learned.train.sum()),
    val_learned=int(learned.val.sum()),
    positive_rate=committed.positive_rate,
    flops=inputs.block_flops(task.model, fitted.epoch, committed.commit_state.epoch),
    seconds=seconds,
    history=list(fitted.history),
    commit_history=list(committed.commit_state.history),
    phase_seconds=timing.with_other(phases, seconds),
    background_compile_seconds=task.ahead.seconds(j) if task.ahead is not None else 0.0,
  )
  task.log(
    f"block {j}: trained on {n_train} samples for {record.epochs} epochs (+{record.commit_epochs} commitment), "
    f"learned {record.learned} ({record.learned / n_train:.1%}), {len(learned.next_sets.train_idx)} left, "
    f"{record.training_flops:.3g} FLOPs, {record.seconds:.1f}s"
  )
  for ckpt in (block_ckpt, commit_ckpt):
    if ckpt is not None:
      ckpt.close()
  return committed.variables, record, learned.next_sets


def train_quicknet(
  model: MultiExitModel,
  train: Split,
  val: Split,
  config: QuickNetConfig,
  seed: int,
  *,
  checkpointer: Optional[BlockCheckpointer] = None,
  log: Log = print,
  events: Optional[Events] = None,
) -> QuickNetRun:
  """Trains a QuickNet (Algorithm 1); resumes from `checkpointer` if it holds blocks.

  Args:
    model: the multi-exit model (see `quicknets_jax.models`).
    train: the training split (a `Split` or an (images, labels) pair); val: the validation split.
    config: QuickNetConfig.
    seed: fixes initialisation, batch order and every other random choice (`core.rng`).
    checkpointer: a `checkpoint.BlockCheckpointer` (or None): one checkpoint per frozen block, and
      one per epoch of the fits in progress, so a killed run loses at most one epoch.
    log: where progress lines go.
    events: told after every epoch and every frozen block (`training.events.Events`).

  Returns:
    The trained blocks' variables and each block's record (`QuickNetRun`).
  """
  train, val = Split.of(train), Split.of(val)
  if config.schedule == "decoupled":
    return _decoupled_quicknet(model, train, val, config, seed, checkpointer=checkpointer, log=log, events=events)
  key = rng.seed_key(seed)
  task = Task(model, train, val, config, model.init(rng.stream(key, rng.Stream.INIT)), checkpointer, log, events)
  working = WorkingSets(np.arange(len(train.labels), dtype=np.int32), np.arange(len(val.labels), dtype=np.int32))
  variables, records, working = restore(task, working)
  blocks_key = rng.stream(key, rng.Stream.BLOCKS)
  task = dataclasses.replace(task, ahead=CompilingAhead(task, len(records)))
  try:
    for j in range(len(records), model.num_blocks):
      if len(working.train_idx) == 0:
        log(f"block {j}: every training sample was learned by earlier blocks; blocks {j}.. are skipped")
        break
      if len(working.val_idx) == 0:  # every validation sample learned: validate on the whole split instead
        working = working._replace(val_idx=np.arange(len(val.labels), dtype=np.int32))
      flops_before = sum(r.training_flops for r in records)
      block_vars, record, working = train_block(task, j, variables, working, rng.per_item(blocks_key, j), flops_before)
      variables.append(block_vars)
      records.append(record)
      freeze(task, block_vars, record, working)
  finally:
    task.ahead.close()
  if config.finetune_epochs == 0:
    return QuickNetRun(variables, records)
  tuned, finetune = finetune_quicknet(
    model,
    variables,
    (train, val),
    config,
    rng.stream(key, rng.Stream.FINETUNE),
    hooks=FinetuneHooks(
      checkpointer=checkpointer, log=log, events=events, flops_before=sum(r.training_flops for r in records)
    ),
  )
  return QuickNetRun(tuned, records, finetune)


def freeze(task: Task, variables: dict, record: BlockRecord, working: WorkingSets) -> None:
  """Block `record.block` is final: checkpoint it with the next working sets, drop its per-epoch states.

  Args:
    task: what every block of the run shares (its checkpointer and events).
    variables: the block's final variables.
    record: its record.
    working: T_{j+1} and V_{j+1}.
  """
  if task.checkpointer is not None:
    task.checkpointer.save(record.block, variables, dataclasses.asdict(record), *working)
    task.checkpointer.clear_in_progress(record.block)
  if task.events is not None:
    task.events.block_frozen(BlockFrozen(record, variables, len(working.train_idx), len(working.val_idx)))


def restore(task: Task, working: WorkingSets) -> tuple[list, list, WorkingSets]:
  """The frozen blocks the task's checkpointer holds, and the working sets after them.

  Listeners are told of every restored block (`BlockFrozen` with `restored=True`).

  Args:
    task: what every block of the run shares (its checkpointer).
    working: the working sets to start from when nothing is checkpointed.

  Returns:
    (variables of the frozen blocks, their records, the working sets of the next block).
  """
  checkpointer, events = task.checkpointer, task.events
  if checkpointer is None:
    return [], [], working
  variables, record_dicts, remaining = checkpointer.restore(task.init_variables)
  records = [BlockRecord(**r) for r in record_dicts]
  if not records:
    return variables, records, working
  working = WorkingSets(*remaining)
  task.log(f"resumed after block {len(records) - 1}: {len(working.train_idx)} training samples left")
  checkpointer.clear_in_progress(len(records) - 1)  # left over when a kill came right after a save
  if events is not None:  # listeners count blocks and seconds: replay what the checkpoints hold
    sizes = [(r.train_samples, r.val_samples) for r in records[1:]] + [tuple(map(len, working))]
    for record, block_vars, (train_left, val_left) in zip(records, variables, sizes):
      events.block_frozen(BlockFrozen(record, block_vars, train_left, val_left, restored=True))
  return variables, records, working


def _decoupled_quicknet(
  model, train: Split, val: Split, config: QuickNetConfig, seed: int, *, checkpointer, log, events
):
  """`train_quicknet` under `config.schedule == "decoupled"`: every block at once (`decoupled`), then the
  blocks frozen as the sequential schedule freezes them, each with its record, so that what reads a run
  (results, predict, export) reads this one alike."""
  init = model.init(rng.stream(rng.seed_key(seed), rng.Stream.INIT))
  frozen_before = len(checkpointer.restore(init)[0]) if checkpointer is not None else 0
  fit_checkpoint = checkpointer.fit_checkpointer("decoupled", 0) if checkpointer is not None else None
  variables, state, flops, seconds = decoupled.train_decoupled(
    model, train, val, config, seed, checkpoint=fit_checkpoint, log=log, events=events
  )
  records, sets = _decoupled_records(model, variables, state, flops, seconds, (train, val), config)
  for j, (block_vars, record) in enumerate(zip(variables, records)):
    if j >= frozen_before and checkpointer is not None:
      checkpointer.save(j, block_vars, dataclasses.asdict(record), *sets[j + 1])
    if events is not None:
      events.block_frozen(BlockFrozen(record, block_vars, *map(len, sets[j + 1]), restored=j < frozen_before))
  if fit_checkpoint is not None:
    fit_checkpoint.close()
  phases = timing.with_other(timing.fit_seconds(state.history, "block_"), seconds)
  log(
    f"decoupled: {state.epoch} epochs, every block frozen; {sum(r.training_flops for r in records):.3g} FLOPs, {seconds:.1f}s"
  )
  return QuickNetRun(variables, records, schedule="decoupled", phase_seconds=phases, epochs=list(state.history))


def _decoupled_records(model, variables, state, flops, seconds: float, data, config: QuickNetConfig):
  """A `BlockRecord` per block of a decoupled run, and the working sets T_j, V_j (j = 0..E) its final blocks
  give: the samples no earlier block learns. The passes over the splits that find them are bookkeeping
  (like the records), not training: their time is not in `seconds`."""
  train, val = data
  rule = (config.train_threshold, config.learned_commit_logit())
  eval_bs = config.fit.eval_batch_size
  outputs = [forward.all_exit_outputs(model, variables, split.images, eval_bs) for split in (train, val)]
  sets = [WorkingSets(np.arange(len(train.labels), dtype=np.int32), np.arange(len(val.labels), dtype=np.int32))]
  learned_counts, positive_rates, class_counts = [], [], []
  for j in range(model.num_blocks):
    masks = []
    for (probs, commits), split, rows in zip(outputs, (train, val), sets[-1]):
      labels = np.asarray(split.labels)[rows]
      masks.append(learned_mask(np.asarray(probs[j])[rows], np.asarray(commits[j])[rows], labels, *rule))
      if split is train:
        correct = np.argmax(np.asarray(probs[j])[rows], -1) == labels
        positive_rates.append(float(correct.mean()) if len(rows) else 0.0)
        class_counts.append(np.bincount(labels, minlength=model.num_classes).tolist())
    learned_counts.append((int(masks[0].sum()), int(masks[1].sum())))
    sets.append(WorkingSets(*(rows[~m].astype(np.int32) for rows, m in zip(sets[-1], masks))))
  total = sum(costs.total(f) for f in flops) or 1.0
  records = []
  for j in range(model.num_blocks):
    active = [r["active"][j] for r in state.history]
    parts = dict.fromkeys(costs.QUICKNET_BLOCK_PARTS, 0.0)
    parts.update(flops[j])
    history = [
      dict(
        epoch=r["epoch"],
        train_loss=r["train_loss"],
        train_accuracy=r["train_accuracy"],
        val_loss=r["val_loss_per_block"][j],
        learning_rate=r["learning_rate_per_block"][j],
        seconds=r["seconds"],
      )
      for r, a in zip(state.history, active)
      if a
    ]
    records.append(
      BlockRecord(
        block=j,
        train_samples=len(sets[j].train_idx),
        val_samples=len(sets[j].val_idx),
        class_counts=class_counts[j],
        epochs=int(sum(active)),
        best_epoch=state.schedule.blocks[j].best_epoch,
        commit_epochs=int(sum(active)),  # the heads train alongside their blocks
        learned=learned_counts[j][0],
        val_learned=learned_counts[j][1],
        positive_rate=positive_rates[j],
        flops=parts,
        seconds=seconds * costs.total(flops[j]) / total,  # one clock for all: shared by FLOPs
        history=history,
        commit_history=[],
      )
    )
  return records, sets

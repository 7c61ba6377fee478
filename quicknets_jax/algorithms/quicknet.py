"""Algorithm 1: a QuickNet trained block by block, each block on what the earlier ones did not learn.

For block j (`train_block`): its inputs (`block_inputs`: the features entering it for the working
sets T_j, V_j — cached once, or recomputed through the frozen prefix every step), its fit
(`fit_block`: subnet + exit, cross-entropy, earlier blocks frozen), its commitment head
(`fit_commitment_head`: balanced BCE on "the exit was right"), and the learned set (`select_learned`:
L_j = {correct, confidence > τ, commitment > 0}, T_{j+1} = T_j − L_j). `train_quicknet` loops over
the blocks and freezes each (`freeze`: an orbax checkpoint of its parameters and the next working
sets). Working sets are sorted int32 index arrays into the in-memory training arrays. Inside a block,
both fits checkpoint their whole FitState every epoch, so a stopped run resumes from the last epoch
with the same result, bit for bit, as an uninterrupted one. Training FLOPs are `costs.
quicknet_block_flops`, the same formula for the per-epoch events and the block's record.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from quicknets_jax.algorithms import forward
from quicknets_jax.algorithms.commitment import train_commitment_head
from quicknets_jax.algorithms.config import QuickNetConfig
from quicknets_jax.algorithms.events import BlockFrozen, EpochDone, Events
from quicknets_jax.algorithms.finetune import finetune_quicknet
from quicknets_jax.core import costs, exits
from quicknets_jax.data.sampling import seeded_mask, seeded_subset
from quicknets_jax.data.streaming import device_array, take
from quicknets_jax.models.base import EXIT, SUBNET, MultiExitModel, parts_mask, split_variables
from quicknets_jax.training import losses
from quicknets_jax.training.checkpoint import BlockCheckpointer
from quicknets_jax.training.schedule import FitState
from quicknets_jax.training.trainer import FitData, Objective, bucket_size, fit, pad_rows

Log = Callable[[str], None]


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

  @property
  def training_flops(self) -> float:
    return costs.total(self.flops)


@dataclasses.dataclass
class QuickNetRun:
  """A trained QuickNet: one variable dict per trained block and the record of each block."""

  variables: list
  records: list
  finetune: Optional[dict] = None  # QuickNet+ joint fine-tuning: epochs, flops by part, seconds

  @property
  def num_trained_blocks(self) -> int:
    return len(self.records)

  @property
  def training_flops(self) -> float:
    extra = costs.total(self.finetune["flops"]) if self.finetune else 0.0
    return float(sum(r.training_flops for r in self.records) + extra)

  @property
  def train_seconds(self) -> float:
    return float(sum(r.seconds for r in self.records) + (self.finetune["seconds"] if self.finetune else 0.0))


class Split(NamedTuple):
  """The in-memory arrays Algorithm 1 reads: the training split and the validation split."""

  images: np.ndarray
  labels: np.ndarray
  val_images: np.ndarray
  val_labels: np.ndarray


class WorkingSets(NamedTuple):
  """T_j and V_j: sorted int32 rows of the training and validation splits that block j sees."""

  train_idx: np.ndarray
  val_idx: np.ndarray


# ------------------------------------------------------------------------------- feature cache


def feature_cache_bytes(model: MultiExitModel, j: int, num_train: int, num_val: int) -> int:
  """Bytes block j's feature cache takes: float32 features of the training and validation splits,
  each padded to its bucket (the cache is laid out so every block and seed shares compiled code)."""
  return 4 * forward.feature_elements(model, j) * (bucket_size(num_train) + bucket_size(num_val))


def uses_feature_cache(model: MultiExitModel, j: int, config: QuickNetConfig, num_train: int, num_val: int) -> bool:
  """Whether block j trains on cached prefix features (True) or recomputes the frozen prefix every
  step (False). Block 0 has no prefix; the FLOP accounting follows whichever path this picks."""
  if j == 0:
    return True
  if not config.cache_features:
    return False
  return (
    config.feature_cache_mb is None
    or feature_cache_bytes(model, j, num_train, num_val) <= config.feature_cache_mb * 2**20
  )


# ------------------------------------------------------------------------------ the four steps


@dataclasses.dataclass
class BlockInputs:
  """What block j trains on (`block_inputs`).

  Attributes:
    data, loss_fn: the block fit's arrays and per-sample loss.
    positions_bucket: the length its working set is padded to (blocks after the first: the full
      split's bucket, so that they share one compiled epoch).
    cached: whether the prefix's features are cached (False: recomputed every step).
    train_features, val_features: the features entering block j for T_j (None until computed, when
      not cached) and V_j.
    fit_pos, commit_pos: positions into T_j that the block's fit / its commitment head learn from
      (all of T_j unless QuickNet+ holds some out for the head).
    labels, val_labels: the labels of T_j and V_j.
    epoch_samples: the samples an epoch of the block's fit draws (`QuickNetConfig.epoch_draws`).
  """

  j: int
  working: WorkingSets
  data: FitData
  loss_fn: Callable
  positions_bucket: Optional[int]
  cached: bool
  train_features: Optional[np.ndarray]
  val_features: np.ndarray
  fit_pos: np.ndarray
  commit_pos: np.ndarray
  labels: np.ndarray
  val_labels: np.ndarray
  epoch_samples: int  # what an epoch of the block's fit trains on (|fit_pos|, or |T_0| for full draws)

  def block_flops(self, model: MultiExitModel, epochs: int, commit_epochs: int = 0, stage: str = "done") -> dict:
    """Training FLOPs of this block by part at `stage` (`costs.quicknet_block_flops`)."""
    return costs.quicknet_block_flops(
      model.block_costs[self.j],
      costs.prefix_cost(model.block_costs, self.j),
      n_train=len(self.working.train_idx),
      n_fit=self.epoch_samples,
      n_val=len(self.working.val_idx),
      n_commit=len(self.commit_pos),
      cached=self.cached,
      epochs=epochs,
      commit_epochs=commit_epochs,
      stage=stage,
    )


def block_inputs(
  model: MultiExitModel,
  j: int,
  frozen: Sequence[dict],
  split: Split,
  working: WorkingSets,
  config: QuickNetConfig,
  key: jax.Array,
  log: Log = print,
) -> BlockInputs:
  """The features entering block j for its working sets, the fit's arrays and loss."""
  train_idx, val_idx = (np.asarray(a) for a in working)
  n_train, eval_bs = len(train_idx), config.fit.eval_batch_size
  labels_j, val_labels_j = np.asarray(split.labels)[train_idx], np.asarray(split.val_labels)[val_idx]
  # QuickNet+ commitment holdout: positions (into T_j) that the block never trains on. The faithful
  # recipe holds none out, and every draw uses its own fold_in of the block's key, changing nothing else.
  holdout = seeded_subset(n_train, config.commit_holdout, jax.random.fold_in(key, 7))
  fit_pos = (
    np.setdiff1d(np.arange(n_train, dtype=np.int32), holdout) if len(holdout) else np.arange(n_train, dtype=np.int32)
  )
  commit_pos = holdout if len(holdout) else np.arange(n_train)
  learned_threshold = config.train_threshold if config.budget == "learned_set" else None
  augment = config.fit.augmentation_name
  dtype = config.fit.compute_dtype
  num_train, num_val = len(split.labels), len(split.val_labels)
  val_features = forward.prefix_features(model, frozen, split.val_images, val_idx, j, eval_bs)
  cached = uses_feature_cache(model, j, config, num_train, num_val)
  if config.cache_features and not cached:
    log(
      f"block {j}: its feature cache would take {feature_cache_bytes(model, j, num_train, num_val) / 2**20:.0f} "
      f"MiB > feature_cache_mb={config.feature_cache_mb:g}: the frozen prefix is recomputed every step instead"
    )
  train_features = None
  fit_rows = jnp.asarray(train_idx[fit_pos], jnp.int32)
  # the authors' full-size epochs: a later block draws |T_0| class-balanced samples from T_j every epoch
  draws = num_train if config.epoch_draws == "full" and j > 0 else None
  if cached and j == 0:  # block 0 reads the images themselves through the index array: no copy
    train_features = take(split.images, train_idx)
    data = FitData(
      device_array(split.images),
      jnp.asarray(split.labels),
      fit_rows,
      jnp.asarray(labels_j[fit_pos]),
      device_array(val_features),
      jnp.asarray(val_labels_j),
    )
    loss_fn = losses.block_loss(model.blocks[j], augment, learned_threshold, dtype)
  elif cached:
    train_features = forward.prefix_features(model, frozen, split.images, train_idx, j, eval_bs)
    # Padded to the full splits' buckets: blocks of one shape share one compiled epoch and validation
    # pass across working-set sizes and seeds (only the first n rows are ever read).
    rows, val_rows = bucket_size(num_train), bucket_size(num_val)
    data = FitData(
      pad_rows(train_features, rows),
      pad_rows(labels_j, rows),
      jnp.asarray(fit_pos),
      jnp.asarray(labels_j[fit_pos]),
      pad_rows(val_features, val_rows),
      pad_rows(val_labels_j, val_rows),
      num_val=len(val_idx),
      epoch_draws=draws,
    )
    loss_fn = losses.block_loss(model.blocks[j], None, learned_threshold, dtype)
  else:
    frozen_params = [split_variables(v)[0] for v in frozen]
    frozen_state = [split_variables(v)[1] for v in frozen]
    data = FitData(
      device_array(split.images),
      jnp.asarray(split.labels),
      fit_rows,
      jnp.asarray(labels_j[fit_pos]),
      device_array(take(split.val_images, val_idx)),
      jnp.asarray(val_labels_j),
      epoch_draws=draws,
    )
    loss_fn = losses.block_loss_through_prefix(model, j, frozen_params, frozen_state, augment, learned_threshold, dtype)
  return BlockInputs(
    j,
    working,
    data,
    loss_fn,
    bucket_size(num_train) if j > 0 else None,
    cached,
    train_features,
    val_features,
    fit_pos,
    commit_pos,
    labels_j,
    val_labels_j,
    len(fit_pos) if draws is None else draws,
  )


def fit_block(
  model: MultiExitModel,
  inputs: BlockInputs,
  init_vars: dict,
  config: QuickNetConfig,
  key: jax.Array,
  *,
  checkpoint=None,
  log: Log = print,
  on_epoch=None,
) -> FitState:
  """Trains block j's subnet and exit on its inputs (earlier blocks frozen); the FitState's best
  params are the block's."""
  params, state = split_variables(init_vars)
  objective = Objective(inputs.loss_fn, parts_mask(params, (SUBNET, EXIT)))
  return fit(
    objective,
    params,
    state,
    inputs.data,
    config.block_fit(),
    key,
    num_classes=model.num_classes,
    name=f"block {inputs.j}",
    checkpoint=checkpoint,
    log=log,
    positions_bucket=inputs.positions_bucket,
    on_epoch=on_epoch,
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


def fit_commitment_head(
  model: MultiExitModel,
  inputs: BlockInputs,
  fitted: FitState,
  split: Split,
  frozen,
  config: QuickNetConfig,
  key: jax.Array,
  *,
  checkpoint=None,
  log: Log = print,
  on_epoch=None,
) -> Committed:
  """Runs the trained block on T_j and V_j and trains its commitment head on "the exit was right"."""
  j, block, eval_bs = inputs.j, model.blocks[inputs.j], config.fit.eval_batch_size
  variables = {"params": fitted.best_params, **fitted.best_model_state}
  if inputs.train_features is None:  # not cached: the prefix runs once more, for T_j
    inputs.train_features = forward.prefix_features(model, frozen, split.images, inputs.working.train_idx, j, eval_bs)
  h_train, probs_train, _ = forward.block_outputs(block, variables, inputs.train_features, eval_bs)
  h_val, probs_val, _ = forward.block_outputs(block, variables, inputs.val_features, eval_bs)
  correct_train = (np.argmax(probs_train, -1) == inputs.labels).astype(np.int32)
  correct_val = (np.argmax(probs_val, -1) == inputs.val_labels).astype(np.int32)
  pos = inputs.commit_pos
  result = train_commitment_head(
    block,
    variables,
    h_train[pos],
    correct_train[pos],
    h_val,
    correct_val,
    config.commitment_fit(),
    key,
    name=f"commitment head {j}",
    pad_rows_to=bucket_size(len(split.labels)),
    pad_val_rows_to=bucket_size(len(split.val_labels)),
    on_epoch=on_epoch,
    checkpoint=checkpoint,
    log=log,
    balance=config.commit_balance,
  )
  variables = {"params": result.best_params, **fitted.best_model_state}
  return Committed(variables, result, h_train, h_val, probs_train, probs_val, int(correct_train[pos].sum()) / len(pos))


class Learned(NamedTuple):
  """L_j as masks over T_j and V_j, and what remains for the next block."""

  train: np.ndarray
  val: np.ndarray
  next_sets: WorkingSets


def learned_mask(probs, commit_logits, labels, train_threshold: float, commit_threshold: float = 0.0):
  """L_j as a mask: correct, confidence above τ, commitment logit above `commit_threshold` (0: positive,
  design.md §1; `QuickNetConfig.learned_commit_logit`)."""
  correct = np.argmax(probs, -1) == np.asarray(labels)
  return (
    correct & (np.asarray(exits.confidence(probs)) > train_threshold) & (np.asarray(commit_logits) > commit_threshold)
  )


def select_learned(
  model: MultiExitModel, inputs: BlockInputs, committed: Committed, config: QuickNetConfig, key: jax.Array
) -> Learned:
  """The learned set of block j (its trained commitment head decides), and T_{j+1}, V_{j+1}."""
  block, eval_bs = model.blocks[inputs.j], config.fit.eval_batch_size
  commit_train = forward.commit_logits(block, committed.variables, committed.h_train, eval_bs)
  commit_val = forward.commit_logits(block, committed.variables, committed.h_val, eval_bs)
  rule = (config.train_threshold, config.learned_commit_logit())
  learned = np.asarray(learned_mask(committed.probs_train, commit_train, inputs.labels, *rule))
  val_learned = np.asarray(learned_mask(committed.probs_val, commit_val, inputs.val_labels, *rule))
  # Soft removal keeps a seeded fraction of the learned samples in the next working sets.
  kept = seeded_mask(learned, config.keep_learned, jax.random.fold_in(key, 8))
  val_kept = seeded_mask(val_learned, config.keep_learned, jax.random.fold_in(key, 9))
  train_idx, val_idx = inputs.working
  return Learned(
    learned,
    val_learned,
    WorkingSets(
      np.asarray(train_idx)[~learned | kept].astype(np.int32),
      np.asarray(val_idx)[~val_learned | val_kept].astype(np.int32),
    ),
  )


# ------------------------------------------------------------------------------- one block, all


def train_block(
  model: MultiExitModel,
  j: int,
  frozen: Sequence[dict],
  init_vars: dict,
  split: Split,
  working: WorkingSets,
  config: QuickNetConfig,
  key: jax.Array,
  *,
  log: Log = print,
  events: Optional[Events] = None,
  checkpointer: Optional[BlockCheckpointer] = None,
  flops_before: float = 0.0,
) -> tuple[dict, BlockRecord, WorkingSets]:
  """Algorithm 1 for block j: inputs, fit, commitment head, learned set. Returns (block variables, its
  record, T_{j+1} and V_{j+1}).

  `checkpointer`: the block fit and the commitment fit save their FitState every epoch under its
  `in_progress/` and resume from there. `flops_before`: the run's training FLOPs before this block
  (the epoch events report the running total).
  """
  start = time.perf_counter()
  block_ckpt = checkpointer.fit_checkpointer("block", j) if checkpointer is not None else None
  commit_ckpt = checkpointer.fit_checkpointer("commitment", j) if checkpointer is not None else None
  fit_key, commit_key = jax.random.split(key)
  inputs = block_inputs(model, j, frozen, split, working, config, key, log)

  def tell(phase, fit_state, record, **progress):
    if events is not None:
      spent = flops_before + costs.total(inputs.block_flops(model, stage=phase, **progress))
      events.epoch_done(EpochDone(phase, j, fit_state, record, spent))

  fitted = fit_block(
    model,
    inputs,
    init_vars,
    config,
    fit_key,
    checkpoint=block_ckpt,
    log=log,
    on_epoch=lambda s, r: tell("block", s, r, epochs=r["epoch"]),
  )
  committed = fit_commitment_head(
    model,
    inputs,
    fitted,
    split,
    frozen,
    config,
    commit_key,
    checkpoint=commit_ckpt,
    log=log,
    on_epoch=lambda s, r: tell("commitment", s, r, epochs=fitted.epoch, commit_epochs=r["epoch"]),
  )
  learned = select_learned(model, inputs, committed, config, key)
  n_train = len(working.train_idx)
  record = BlockRecord(
    block=j,
    train_samples=n_train,
    val_samples=len(working.val_idx),
    class_counts=np.bincount(inputs.labels, minlength=model.num_classes).tolist(),
    epochs=fitted.epoch,
    best_epoch=fitted.best_epoch,
    commit_epochs=committed.commit_state.epoch,
    learned=int(learned.train.sum()),
    val_learned=int(learned.val.sum()),
    positive_rate=committed.positive_rate,
    flops=inputs.block_flops(model, fitted.epoch, committed.commit_state.epoch),
    seconds=time.perf_counter() - start + sum(c.resumed_seconds for c in (block_ckpt, commit_ckpt) if c),
    history=fitted.history,
    commit_history=committed.commit_state.history,
  )
  log(
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
  images,
  labels,
  val_images,
  val_labels,
  config: QuickNetConfig,
  seed: int,
  checkpointer: Optional[BlockCheckpointer] = None,
  log: Log = print,
  events: Optional[Events] = None,
) -> QuickNetRun:
  """Trains a QuickNet (Algorithm 1) on in-memory arrays; resumes from `checkpointer` if it holds blocks.

  Args:
    model: the multi-exit model (see `quicknets_jax.models`).
    images, labels: training arrays; val_images, val_labels: the validation split.
    config: QuickNetConfig.
    seed: fixes initialisation, batch order and every other random choice.
    checkpointer: a `checkpoint.BlockCheckpointer` (or None): one checkpoint per frozen block, and
      one per epoch of the fits in progress, so a killed run loses at most one epoch.
    log: where progress lines go.
    events: told after every epoch and every frozen block (`events.Events`).
  """
  key = jax.random.PRNGKey(seed)
  init_variables = model.init(jax.random.fold_in(key, 0))
  split = Split(images, labels, val_images, val_labels)
  working = WorkingSets(np.arange(len(labels), dtype=np.int32), np.arange(len(val_labels), dtype=np.int32))
  variables, records, working = restore(checkpointer, init_variables, working, log, events)
  for j in range(len(records), model.num_blocks):
    if len(working.train_idx) == 0:
      log(f"block {j}: every training sample was learned by earlier blocks; blocks {j}.. are skipped")
      break
    if len(working.val_idx) == 0:  # every validation sample learned: validate on the whole split instead
      working = working._replace(val_idx=np.arange(len(val_labels), dtype=np.int32))
    block_vars, record, working = train_block(
      model,
      j,
      variables,
      init_variables[j],
      split,
      working,
      config,
      jax.random.fold_in(jax.random.fold_in(key, 1), j),
      log=log,
      events=events,
      checkpointer=checkpointer,
      flops_before=sum(r.training_flops for r in records),
    )
    variables.append(block_vars)
    records.append(record)
    freeze(checkpointer, block_vars, record, working, events)
  if config.finetune_epochs == 0:
    return QuickNetRun(variables, records)
  tuned, finetune = finetune_quicknet(
    model,
    variables,
    images,
    labels,
    val_images,
    val_labels,
    config,
    jax.random.fold_in(key, 2),
    checkpointer=checkpointer,
    log=log,
    events=events,
    flops_before=sum(r.training_flops for r in records),
  )
  return QuickNetRun(tuned, records, finetune)


def freeze(
  checkpointer: Optional[BlockCheckpointer],
  variables: dict,
  record: BlockRecord,
  working: WorkingSets,
  events: Optional[Events],
) -> None:
  """Block `record.block` is final: checkpoint it with the next working sets, drop its per-epoch states."""
  if checkpointer is not None:
    checkpointer.save(record.block, variables, dataclasses.asdict(record), *working)
    checkpointer.clear_in_progress(record.block)
  if events is not None:
    events.block_frozen(BlockFrozen(record, variables, len(working.train_idx), len(working.val_idx)))


def restore(
  checkpointer: Optional[BlockCheckpointer], init_variables, working: WorkingSets, log: Log, events: Optional[Events]
) -> tuple[list, list, WorkingSets]:
  """The frozen blocks a checkpointer holds (variables, records) and the working sets after them."""
  if checkpointer is None:
    return [], [], working
  variables, record_dicts, remaining = checkpointer.restore(init_variables)
  records = [BlockRecord(**r) for r in record_dicts]
  if not records:
    return variables, records, working
  working = WorkingSets(*remaining)
  log(f"resumed after block {len(records) - 1}: {len(working.train_idx)} training samples left")
  checkpointer.clear_in_progress(len(records) - 1)  # left over when a kill came right after a save
  if events is not None:  # listeners count blocks and seconds: replay what the checkpoints hold
    sizes = [(r.train_samples, r.val_samples) for r in records[1:]] + [tuple(map(len, working))]
    for record, block_vars, (train_left, val_left) in zip(records, variables, sizes):
      events.block_frozen(BlockFrozen(record, block_vars, train_left, val_left, restored=True))
  return variables, records, working

"""Algorithm 1: QuickNet training, block by block, and the end-to-end baseline beside it.

For block j: train its subnet and exit on T_j (cross-entropy, earlier blocks frozen), then its
commitment head (balanced BCE on "the exit was right"), then remove the learned set
L_j = {correct, confidence > τ, commitment > 0} to get T_{j+1}. Working sets are sorted int32 index
arrays into the in-memory training arrays. By default the frozen prefix's features for T_j are
computed once per block (a cache) instead of at every step; both paths are counted in FLOPs.
After each block, an orbax checkpoint holds its parameters and the next working sets; inside a block,
the block fit and the commitment fit checkpoint their whole FitState every epoch. A stopped run
resumes from the last epoch with the same result, bit for bit, as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from quicknets_jax import exits, losses
from quicknets_jax.checkpoint import fit_resumably
from quicknets_jax.models.base import Block, MultiExitModel, run_block, split_variables
from quicknets_jax.train import FitConfig, FitData, FitState, Objective, bucket_size, fit, pad_rows

Log = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class QuickNetConfig:
  """How a QuickNet trains.

  Attributes:
    fit: schedule of every block (Appendix A).
    commit_fit: schedule of the commitment heads (Appendix A: the same; class-balanced sampling off,
      the BCE is class-weighted instead).
    train_threshold: τ, the confidence a correct, committed training sample needs to count as learned.
    cache_features: compute the frozen prefix's features once per block instead of every step.
  """

  fit: FitConfig = FitConfig()
  commit_fit: FitConfig = FitConfig(balanced_sampling=False)
  train_threshold: float = 0.9
  cache_features: bool = True

  def __post_init__(self):
    exits.check_threshold(self.train_threshold, "train_threshold")


@dataclasses.dataclass
class BlockRecord:
  """What happened while block j trained (sizes, epochs, FLOPs by part, seconds)."""

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
    return float(sum(self.flops.values()))


@dataclasses.dataclass
class QuickNetRun:
  """A trained QuickNet: one variable dict per trained block and the record of each block."""

  variables: list
  records: list

  @property
  def num_trained_blocks(self) -> int:
    return len(self.records)

  @property
  def training_flops(self) -> float:
    return float(sum(r.training_flops for r in self.records))


def _block_mask(params: dict, parts: Sequence[str]) -> dict:
  return {name: jax.tree.map(lambda _: name in parts, sub) for name, sub in params.items()}


def _batched(fn, arrays: Sequence[jnp.ndarray], batch_size: int):
  """Applies a jitted `fn` to fixed-size chunks (the last one padded) and concatenates: the same
  chunk shape every time, so results do not depend on how many rows there are."""
  # Slicing, padding and concatenating happen in numpy on the host: eager jnp ops on arrays of a new
  # length would each compile a small XLA program, and those add up to seconds per block.
  arrays = [np.asarray(a) for a in arrays]
  n = arrays[0].shape[0]
  outs = []
  for start in range(0, n, batch_size):
    chunk = [a[start:start + batch_size] for a in arrays]
    size = chunk[0].shape[0]
    if size < batch_size:
      chunk = [np.concatenate([c, np.zeros((batch_size - size, *c.shape[1:]), c.dtype)]) for c in chunk]
    out = fn(*chunk)
    outs.append(jax.tree.map(lambda o, s=size: np.asarray(o)[:s], out))
  if not outs:
    return None
  return jax.tree.map(lambda *o: np.concatenate(o), *outs)


@functools.cache  # jitted once per (model, depth) for the whole process
def feature_fn(model: MultiExitModel, upto: int):
  """Jitted (variables[:upto], x) -> features entering block `upto` (frozen blocks, inference mode)."""

  @jax.jit
  def fn(variables, x):
    for k in range(upto):
      x = model.blocks[k].apply(variables[k], x, method=Block.features)
    return x

  return fn


def prefix_features_of(model: MultiExitModel, variables: Sequence[dict], images, rows, upto: int,
                       batch_size: int):
  """Features entering block `upto` for `images[rows]`, computed in fixed-size chunks."""
  rows = np.asarray(rows)
  gathered = np.asarray(images)[rows]
  if upto == 0:
    return gathered
  fn = feature_fn(model, upto)
  if gathered.shape[0] == 0:
    shape = jax.eval_shape(fn, list(variables[:upto]), gathered[:1]).shape[1:]
    return np.zeros((0, *shape), np.float32)
  return _batched(lambda x: fn(list(variables[:upto]), x), [gathered], batch_size)


@functools.partial(jax.jit, static_argnums=0)
def _apply_block(block: Block, variables, x):
  features, logits, commit = block.apply(variables, x)
  return features, jax.nn.softmax(logits), commit


@functools.partial(jax.jit, static_argnums=0)
def _apply_commit(block: Block, variables, features):
  return block.apply(variables, features, method=Block.commit)


def block_outputs(block: Block, variables: dict, features, batch_size: int):
  """(features out, exit probs, commitment logits) of one block on cached input features (numpy)."""
  return _batched(lambda x: _apply_block(block, variables, x), [features], batch_size)


def learned_mask(probs, commit_logits, labels, train_threshold: float):
  """L_j as a mask: correct, confidence above τ, positive commitment (design.md §1)."""
  correct = np.argmax(probs, -1) == np.asarray(labels)
  return correct & (np.asarray(exits.confidence(probs)) > train_threshold) & (np.asarray(commit_logits) > 0)


def train_commitment_head(block: Block, variables: dict, features, correct, val_features, val_correct,
                          config: FitConfig, key: jax.Array, name: str = "commitment head",
                          pad_rows_to: Optional[int] = None, pad_val_rows_to: Optional[int] = None,
                          on_epoch=None, checkpoint=None, log: Optional[Log] = None) -> FitState:
  """Trains δ of a frozen block: BCE of its commitment logit against "the exit was right".

  Works for any frozen multi-exit network (QuickNet blocks, or the exits of a jointly trained SDN).
  Most targets are 1, so each class is weighted n / (2·n_class): both classes weigh the same in the
  loss, and a positive logit means "more likely right than wrong, at balanced odds".

  Args:
    block: the block whose `commit_head` trains (its subnet and exit stay as they are).
    variables: the block's variables; only `params["commit_head"]` changes.
    features, correct: the block's features on its training set and 0/1 correctness of its exit.
    val_features, val_correct: the same on the validation set.
    config: the schedule (Appendix A: the same as the blocks').
    checkpoint: a `checkpoint.FitCheckpointer` (or None): resume from it, save to it every epoch.
  Returns:
    The FitState; `best_params` is the block's params tree with the trained commitment head.
  """
  n = int(correct.shape[0])
  correct = np.asarray(correct)
  n_pos = int(np.sum(correct))
  pos_w, neg_w = n / (2.0 * max(n_pos, 1)), n / (2.0 * max(n - n_pos, 1))
  params = variables["params"]
  objective = Objective(losses.commitment_loss(block), _block_mask(params, ("commit_head",)),
                        loss_args=(jnp.float32(pos_w), jnp.float32(neg_w)))
  # Padded rows (only the first n train): every block's head and every seed share one compiled epoch.
  rows = pad_rows_to or bucket_size(n)
  val_rows = pad_val_rows_to or bucket_size(len(val_correct))
  data = FitData(pad_rows(features, rows), pad_rows(correct, rows), jnp.arange(n, dtype=jnp.int32), correct,
                 pad_rows(val_features, val_rows), pad_rows(val_correct, val_rows), num_val=len(val_correct))
  return fit_resumably(objective, params, {}, data, config, key, num_classes=2, name=name,
                       checkpoint=checkpoint, on_epoch=on_epoch, log=log)


def train_block(model: MultiExitModel, j: int, frozen: Sequence[dict], init_vars: dict, images, labels,
                val_images, val_labels, train_idx, val_idx, config: QuickNetConfig, key: jax.Array,
                log: Log = print, on_epoch=None,
                checkpointer=None) -> tuple[dict, BlockRecord, np.ndarray, np.ndarray]:
  """Algorithm 1 for one block. Returns (block variables, record, T_{j+1}, V_{j+1}).

  With a `checkpoint.BlockCheckpointer`, the block fit and the commitment fit save their FitState
  every epoch under its `in_progress/` and resume from there.
  """
  start = time.perf_counter()
  block_ckpt = checkpointer.fit_checkpointer("block", j) if checkpointer is not None else None
  commit_ckpt = checkpointer.fit_checkpointer("commitment", j) if checkpointer is not None else None
  block, cost = model.blocks[j], model.block_costs[j]
  prefix_cost = float(sum(c.subnet for c in model.block_costs[:j]))
  trainable_cost = cost.subnet + cost.exit_head
  num_classes = model.num_classes
  n_train, n_val = len(train_idx), len(val_idx)
  eval_bs = config.fit.eval_batch_size
  full_val_rows = bucket_size(len(val_labels))
  labels_j = np.asarray(labels)[train_idx]
  val_labels_j = np.asarray(val_labels)[val_idx]
  flops = dict(block_training=0.0, block_validation=0.0, cache=0.0, commit_training=0.0,
               commit_validation=0.0, selection=0.0)

  # Features entering block j for T_j and V_j: computed once (cache) or recomputed every step.
  val_features = prefix_features_of(model, frozen, val_images, val_idx, j, eval_bs)
  flops["cache"] += n_val * prefix_cost
  params, state = split_variables(init_vars)
  mask = _block_mask(params, ("subnet", "exit_head"))
  cached = config.cache_features or j == 0
  if cached:
    train_features = prefix_features_of(model, frozen, images, train_idx, j, eval_bs)
    flops["cache"] += n_train * prefix_cost
    if j == 0:  # block 0 reads the images themselves through the index array: no copy
      data = FitData(jnp.asarray(images), jnp.asarray(labels), jnp.asarray(train_idx, jnp.int32),
                     jnp.asarray(labels_j), jnp.asarray(val_features), jnp.asarray(val_labels_j))
    else:
      # Padded to the full splits' buckets: blocks of one shape share one compiled epoch and
      # validation pass across working-set sizes and seeds (only the first n rows are ever read).
      rows = bucket_size(len(labels))
      data = FitData(pad_rows(train_features, rows), pad_rows(labels_j, rows),
                     jnp.arange(n_train, dtype=jnp.int32), jnp.asarray(labels_j),
                     pad_rows(val_features, full_val_rows), pad_rows(val_labels_j, full_val_rows), num_val=n_val)
    objective = Objective(losses.block_loss(block), mask)
    recompute_cost = 0.0
  else:
    frozen_params = [split_variables(v)[0] for v in frozen]
    frozen_state = [split_variables(v)[1] for v in frozen]
    data = FitData(jnp.asarray(images), jnp.asarray(labels), jnp.asarray(train_idx, jnp.int32),
                   jnp.asarray(labels_j), jnp.asarray(np.asarray(val_images)[val_idx]), jnp.asarray(val_labels_j))
    objective = Objective(losses.block_loss_through_prefix(model, j, frozen_params, frozen_state), mask)
    recompute_cost = prefix_cost

  fit_key, commit_key = jax.random.split(key)
  result = fit_resumably(objective, params, state, data, config.fit, fit_key, num_classes=num_classes,
                         name=f"block {j}", checkpoint=block_ckpt, log=log,
                         on_epoch=on_epoch and (lambda s, r: on_epoch("block", s, r)))
  epochs = result.epoch
  flops["block_training"] += epochs * n_train * (3 * trainable_cost + recompute_cost)
  flops["block_validation"] += epochs * n_val * (trainable_cost + recompute_cost)
  variables = {"params": result.best_params, **result.best_model_state}

  # Commitment head: trained on the frozen block's features, target = "the exit was right".
  if cached:
    features_train_in = train_features
  else:
    features_train_in = prefix_features_of(model, frozen, images, train_idx, j, eval_bs)
    flops["cache"] += n_train * prefix_cost
  h_train, probs_train, _ = block_outputs(block, variables, features_train_in, eval_bs)
  h_val, probs_val, _ = block_outputs(block, variables, val_features, eval_bs)
  flops["cache"] += (n_train + n_val) * trainable_cost
  correct_train = (np.argmax(probs_train, -1) == labels_j).astype(np.int32)
  correct_val = (np.argmax(probs_val, -1) == val_labels_j).astype(np.int32)
  commit_result = train_commitment_head(block, variables, h_train, correct_train, h_val, correct_val,
                                        config.commit_fit, commit_key, name=f"commitment head {j}",
                                        pad_rows_to=bucket_size(len(labels)), pad_val_rows_to=full_val_rows,
                                        on_epoch=on_epoch and (lambda s, r: on_epoch("commitment", s, r)),
                                        checkpoint=commit_ckpt, log=log)
  n_pos = int(correct_train.sum())
  flops["commit_training"] += commit_result.epoch * n_train * 3 * cost.commit_head
  flops["commit_validation"] += commit_result.epoch * n_val * cost.commit_head
  variables = {"params": commit_result.best_params, **result.best_model_state}

  # Learned set: selection needs the trained commitment logits (the exit outputs are already known).
  commit_train = _batched(lambda h: _apply_commit(block, variables, h), [h_train], eval_bs)
  commit_val = _batched(lambda h: _apply_commit(block, variables, h), [h_val], eval_bs)
  flops["selection"] += (n_train + n_val) * cost.commit_head
  learned = np.asarray(learned_mask(probs_train, commit_train, labels_j, config.train_threshold))
  val_learned = np.asarray(learned_mask(probs_val, commit_val, val_labels_j, config.train_threshold))
  next_train_idx = np.asarray(train_idx)[~learned].astype(np.int32)
  next_val_idx = np.asarray(val_idx)[~val_learned].astype(np.int32)

  record = BlockRecord(
      block=j, train_samples=n_train, val_samples=n_val,
      class_counts=np.bincount(np.asarray(labels_j), minlength=num_classes).tolist(),
      epochs=epochs, best_epoch=result.best_epoch, commit_epochs=commit_result.epoch,
      learned=int(learned.sum()), val_learned=int(val_learned.sum()), positive_rate=n_pos / n_train,
      flops=flops, seconds=time.perf_counter() - start + _resumed_seconds(block_ckpt, commit_ckpt),
      history=result.history,
      commit_history=commit_result.history)
  log(f"block {j}: trained on {n_train} samples for {epochs} epochs (+{commit_result.epoch} commitment), "
      f"learned {record.learned} ({record.learned / n_train:.1%}), {len(next_train_idx)} left, "
      f"{record.training_flops:.3g} FLOPs, {record.seconds:.1f}s")
  for ckpt in (block_ckpt, commit_ckpt):
    if ckpt is not None:
      ckpt.close()
  return variables, record, next_train_idx, next_val_idx


def _resumed_seconds(*checkpoints) -> float:
  """Seconds spent before a restart on the epochs the checkpoints brought back."""
  return float(sum(c.resumed_seconds for c in checkpoints if c is not None))


def train_quicknet(model: MultiExitModel, images, labels, val_images, val_labels, config: QuickNetConfig,
                   seed: int, checkpointer=None, log: Log = print, on_epoch=None) -> QuickNetRun:
  """Trains a QuickNet (Algorithm 1) on in-memory arrays; resumes from `checkpointer` if it holds blocks.

  Args:
    model: the multi-exit model (see `quicknets_jax.models`).
    images, labels: training arrays; val_images, val_labels: the validation split.
    config: QuickNetConfig.
    seed: fixes initialisation, batch order and every other random choice.
    checkpointer: a `checkpoint.BlockCheckpointer` (or None): one checkpoint per frozen block, and
      one per epoch of the fits in progress, so a killed run loses at most one epoch.
    log: where progress lines go.
    on_epoch: optional callback(kind, FitState, record) after every epoch.
  """
  key = jax.random.PRNGKey(seed)
  init_variables = model.init(jax.random.fold_in(key, 0))
  train_idx = np.arange(len(labels), dtype=np.int32)
  val_idx = np.arange(len(val_labels), dtype=np.int32)
  variables, records = [], []
  if checkpointer is not None:
    variables, records, remaining = checkpointer.restore(init_variables)
    if records:
      train_idx, val_idx = remaining
      log(f"resumed after block {len(records) - 1}: {len(train_idx)} training samples left")
      checkpointer.clear_in_progress(len(records) - 1)  # left over when a kill came right after a save
  for j in range(len(records), model.num_blocks):
    if len(train_idx) == 0:
      log(f"block {j}: every training sample was learned by earlier blocks; blocks {j}.. are skipped")
      break
    if len(val_idx) == 0:  # every validation sample learned: validate on the whole split instead
      val_idx = np.arange(len(val_labels), dtype=np.int32)
    block_vars, record, train_idx, val_idx = train_block(
        model, j, variables, init_variables[j], images, labels, val_images, val_labels, train_idx, val_idx,
        config, jax.random.fold_in(jax.random.fold_in(key, 1), j), log=log, on_epoch=on_epoch,
        checkpointer=checkpointer)
    variables.append(block_vars)
    records.append(record)
    if checkpointer is not None:
      checkpointer.save(j, block_vars, record, train_idx, val_idx)
      checkpointer.clear_in_progress(j)
  return QuickNetRun(variables, records)


@dataclasses.dataclass
class EndToEndRun:
  variables: list
  epochs: int
  best_epoch: int
  training_flops: float
  flops: dict
  history: list
  seconds: float


def train_end_to_end(model: MultiExitModel, images, labels, val_images, val_labels, config: FitConfig,
                     seed: int, log: Log = print, on_epoch=None, checkpointer=None) -> EndToEndRun:
  """The baseline: the same backbone with only the final exit, trained end to end by the same trainer.

  `checkpointer`: a `checkpoint.FitCheckpointer` (or None) — resume from it and save every epoch.
  """
  start = time.perf_counter()
  key = jax.random.PRNGKey(seed)
  init_variables = model.init(jax.random.fold_in(key, 0))
  params = [split_variables(v)[0] for v in init_variables]
  state = [split_variables(v)[1] for v in init_variables]
  last = model.num_blocks - 1
  mask = [_block_mask(p, ("subnet",) + (("exit_head",) if k == last else ())) for k, p in enumerate(params)]
  labels = jnp.asarray(labels)
  data = FitData(jnp.asarray(images), labels, jnp.arange(len(labels), dtype=jnp.int32), labels,
                 jnp.asarray(val_images), jnp.asarray(val_labels))
  result = fit_resumably(Objective(losses.end_to_end_loss(model), mask), params, state, data, config,
                         jax.random.fold_in(key, 1), num_classes=model.num_classes, name="end-to-end",
                         checkpoint=checkpointer, log=log,
                         on_epoch=on_epoch and (lambda s, r: on_epoch("end_to_end", s, r)))
  forward = model.end_to_end_cost()
  flops = dict(training=result.epoch * len(labels) * 3 * forward,
               validation=result.epoch * len(val_labels) * forward)
  variables = [{"params": p, **s} for p, s in zip(result.best_params, result.best_model_state)]
  seconds = time.perf_counter() - start + _resumed_seconds(checkpointer)
  log(f"end-to-end: {result.epoch} epochs (best {result.best_epoch}), {sum(flops.values()):.3g} FLOPs, "
      f"{seconds:.1f}s")
  return EndToEndRun(variables, result.epoch, result.best_epoch, float(sum(flops.values())), flops,
                     result.history, seconds)


@functools.partial(jax.jit, static_argnums=0)
def _all_exits(model: MultiExitModel, variables, x):
  probs, commits = [], []
  for k, v in enumerate(variables):
    x, logits, commit = model.blocks[k].apply(v, x)
    probs.append(jax.nn.softmax(logits))
    commits.append(commit)
  return jnp.stack(probs, axis=1), jnp.stack(commits, axis=1)  # batch first, for _batched


def predict_exits(model: MultiExitModel, variables: Sequence[dict], images, batch_size: int = 2048):
  """All exits on `images`: (probs [E, N, C], commitment logits [E, N]) for the trained blocks."""
  variables = list(variables)
  out = _batched(lambda x: _all_exits(model, variables, x), [jnp.asarray(images)], batch_size)
  probs, commits = out
  return jnp.moveaxis(probs, 0, 1), jnp.moveaxis(commits, 0, 1)


def predict_end_to_end(model: MultiExitModel, variables: Sequence[dict], images, batch_size: int = 2048):
  """Class predictions [N] of the end-to-end network (final exit)."""
  probs, _ = predict_exits(model, variables, images, batch_size)
  return jnp.argmax(probs[-1], -1)

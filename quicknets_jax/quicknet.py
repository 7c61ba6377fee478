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
BUDGETS = ("val_loss", "learned_set")


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
  # Above this many MiB (features of the padded training and validation splits entering a block) the
  # frozen prefix is recomputed every step instead of cached (None: no limit; e.g. ImageNet).
  feature_cache_mb: Optional[float] = None
  # QuickNet+ levers, each off by default (the faithful QuickNet):
  # budget="learned_set": block j's fit monitors the fraction of its validation samples it would remove
  #   (correct with confidence > τ) instead of the validation loss; best params, reduce-on-plateau and
  #   early stopping follow it, with `budget_min_delta` the growth that counts and `budget_patience`
  #   the epochs it may stall.
  budget: str = "val_loss"
  budget_min_delta: float = 0.01
  budget_patience: int = 2
  # commit_holdout=f: a seeded fraction f of T_j never trains block j; its commitment head trains on
  #   that held-out slice's correctness (what the block gets right on unseen data), not on T_j's.
  commit_holdout: float = 0.0
  # keep_learned=f: soft removal — a seeded fraction f of L_j (and of the learned validation samples)
  #   stays in the next working set, so later blocks still see some easy samples of every class.
  keep_learned: float = 0.0
  # finetune_epochs=k: after block-wise training, k epochs of joint training of every block's subnet
  #   and exit (Σ_j CE_j, Marquez et al. 2018) at `finetune_lr`, then the commitment heads retrain on
  #   the fine-tuned blocks. Counted in the training cost.
  finetune_epochs: int = 0
  finetune_lr: float = 3e-4

  def __post_init__(self):
    exits.check_threshold(self.train_threshold, "train_threshold")
    if self.feature_cache_mb is not None and not self.feature_cache_mb >= 0:
      raise ValueError(f"feature_cache_mb must be ≥ 0 (or None: no limit), got {self.feature_cache_mb}")
    if self.budget not in BUDGETS:
      raise ValueError(f"budget must be one of {BUDGETS}, got {self.budget!r}")
    if not 0 <= self.budget_min_delta < 1 or self.budget_patience < 1:
      raise ValueError(f"budget_min_delta must be in [0, 1) and budget_patience ≥ 1, got "
                       f"{self.budget_min_delta}, {self.budget_patience}")
    for name in ("commit_holdout", "keep_learned"):
      if not 0 <= getattr(self, name) < 1:
        raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
    if self.finetune_epochs < 0 or not self.finetune_lr > 0:
      raise ValueError(f"finetune_epochs must be ≥ 0 and finetune_lr > 0, got {self.finetune_epochs}, "
                       f"{self.finetune_lr}")

  def block_fit(self) -> FitConfig:
    """The schedule of a block's own fit (the learned-set budget changes what it monitors)."""
    if self.budget == "val_loss":
      return self.fit
    return dataclasses.replace(self.fit, monitor="val_accuracy", min_delta=self.budget_min_delta,
                               early_stop_patience=self.budget_patience)


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
  finetune: Optional[dict] = None  # QuickNet+ joint fine-tuning: epochs, flops by part, seconds

  @property
  def num_trained_blocks(self) -> int:
    return len(self.records)

  @property
  def training_flops(self) -> float:
    extra = sum(self.finetune["flops"].values()) if self.finetune else 0.0
    return float(sum(r.training_flops for r in self.records) + extra)

  @property
  def train_seconds(self) -> float:
    return float(sum(r.seconds for r in self.records) + (self.finetune["seconds"] if self.finetune else 0.0))


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


@functools.cache
def feature_elements(model: MultiExitModel, upto: int) -> int:
  """How many numbers one sample's features entering block `upto` hold (shapes only, nothing runs)."""
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0))
  x = jax.ShapeDtypeStruct((1, *model.input_shape), jnp.float32)
  return int(np.prod(jax.eval_shape(feature_fn(model, upto), list(variables[:upto]), x).shape[1:]))


def feature_cache_bytes(model: MultiExitModel, j: int, num_train: int, num_val: int) -> int:
  """Bytes block j's feature cache takes: float32 features of the training and validation splits,
  each padded to its bucket (the cache is laid out so every block and seed shares compiled code)."""
  return 4 * feature_elements(model, j) * (bucket_size(num_train) + bucket_size(num_val))


def uses_feature_cache(model: MultiExitModel, j: int, config: QuickNetConfig, num_train: int,
                       num_val: int) -> bool:
  """Whether block j trains on cached prefix features (True) or recomputes the frozen prefix every
  step (False). Block 0 has no prefix; the FLOP accounting follows whichever path this picks."""
  if j == 0:
    return True
  if not config.cache_features:
    return False
  return (config.feature_cache_mb is None
          or feature_cache_bytes(model, j, num_train, num_val) <= config.feature_cache_mb * 2**20)


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
  # Only the head's own params enter the fit (the block's subnet and exit stay outside it): heads of
  # blocks with different subnets then share one compiled epoch.
  params = {"commit_head": variables["params"]["commit_head"]}
  objective = Objective(losses.commitment_loss(block), None, loss_args=(jnp.float32(pos_w), jnp.float32(neg_w)))
  # Padded rows (only the first n train): every block's head and every seed share one compiled epoch.
  rows = pad_rows_to or bucket_size(n)
  val_rows = pad_val_rows_to or bucket_size(len(val_correct))
  data = FitData(pad_rows(features, rows), pad_rows(correct, rows), jnp.arange(n, dtype=jnp.int32), correct,
                 pad_rows(val_features, val_rows), pad_rows(val_correct, val_rows), num_val=len(val_correct))
  result = fit_resumably(objective, params, {}, data, config, key, num_classes=2, name=name,
                         checkpoint=checkpoint, on_epoch=on_epoch, log=log, positions_bucket=rows)
  result.params = {**variables["params"], **result.params}
  result.best_params = {**variables["params"], **result.best_params}
  return result


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

  # QuickNet+ commitment holdout: positions (into T_j) that the block never trains on. The faithful
  # recipe holds none out, and every draw below uses its own fold_in so it changes nothing else.
  holdout = _seeded_subset(n_train, config.commit_holdout, jax.random.fold_in(key, 7))
  fit_pos = np.setdiff1d(np.arange(n_train, dtype=np.int32), holdout) if len(holdout) else np.arange(
      n_train, dtype=np.int32)
  n_fit = len(fit_pos)
  learned_threshold = config.train_threshold if config.budget == "learned_set" else None

  # Features entering block j for T_j and V_j: computed once (cache) or recomputed every step.
  val_features = prefix_features_of(model, frozen, val_images, val_idx, j, eval_bs)
  flops["cache"] += n_val * prefix_cost
  params, state = split_variables(init_vars)
  mask = _block_mask(params, ("subnet", "exit_head"))
  cached = uses_feature_cache(model, j, config, len(labels), len(val_labels))
  if config.cache_features and not cached:
    log(f"block {j}: its feature cache would take {feature_cache_bytes(model, j, len(labels), len(val_labels)) / 2**20:.0f} "
        f"MiB > feature_cache_mb={config.feature_cache_mb:g}: the frozen prefix is recomputed every step instead")
  if cached:
    train_features = prefix_features_of(model, frozen, images, train_idx, j, eval_bs)
    flops["cache"] += n_train * prefix_cost
    if j == 0:  # block 0 reads the images themselves through the index array: no copy
      data = FitData(jnp.asarray(images), jnp.asarray(labels), jnp.asarray(np.asarray(train_idx)[fit_pos], jnp.int32),
                     jnp.asarray(labels_j[fit_pos]), jnp.asarray(val_features), jnp.asarray(val_labels_j))
    else:
      # Padded to the full splits' buckets: blocks of one shape share one compiled epoch and
      # validation pass across working-set sizes and seeds (only the first n rows are ever read).
      rows = bucket_size(len(labels))
      data = FitData(pad_rows(train_features, rows), pad_rows(labels_j, rows),
                     jnp.asarray(fit_pos), jnp.asarray(labels_j[fit_pos]),
                     pad_rows(val_features, full_val_rows), pad_rows(val_labels_j, full_val_rows), num_val=n_val)
    objective = Objective(losses.block_loss(block, learned_threshold), mask)
    recompute_cost = 0.0
  else:
    frozen_params = [split_variables(v)[0] for v in frozen]
    frozen_state = [split_variables(v)[1] for v in frozen]
    data = FitData(jnp.asarray(images), jnp.asarray(labels), jnp.asarray(np.asarray(train_idx)[fit_pos], jnp.int32),
                   jnp.asarray(labels_j[fit_pos]), jnp.asarray(np.asarray(val_images)[val_idx]),
                   jnp.asarray(val_labels_j))
    objective = Objective(losses.block_loss_through_prefix(model, j, frozen_params, frozen_state,
                                                           learned_threshold), mask)
    recompute_cost = prefix_cost

  fit_key, commit_key = jax.random.split(key)
  # Blocks after the first pad their working sets to the full split's bucket: they share one compiled epoch.
  result = fit_resumably(objective, params, state, data, config.block_fit(), fit_key, num_classes=num_classes,
                         name=f"block {j}", checkpoint=block_ckpt, log=log,
                         positions_bucket=bucket_size(len(labels)) if j > 0 else None,
                         on_epoch=on_epoch and (lambda s, r: on_epoch("block", s, r)))
  epochs = result.epoch
  flops["block_training"] += epochs * n_fit * (3 * trainable_cost + recompute_cost)
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
  commit_pos = holdout if len(holdout) else np.arange(n_train)  # the rows its commitment head learns from
  n_commit = len(commit_pos)
  commit_result = train_commitment_head(block, variables, h_train[commit_pos], correct_train[commit_pos],
                                        h_val, correct_val,
                                        config.commit_fit, commit_key, name=f"commitment head {j}",
                                        pad_rows_to=bucket_size(len(labels)), pad_val_rows_to=full_val_rows,
                                        on_epoch=on_epoch and (lambda s, r: on_epoch("commitment", s, r)),
                                        checkpoint=commit_ckpt, log=log)
  n_pos = int(correct_train[commit_pos].sum())
  flops["commit_training"] += commit_result.epoch * n_commit * 3 * cost.commit_head
  flops["commit_validation"] += commit_result.epoch * n_val * cost.commit_head
  variables = {"params": commit_result.best_params, **result.best_model_state}

  # Learned set: selection needs the trained commitment logits (the exit outputs are already known).
  commit_train = _batched(lambda h: _apply_commit(block, variables, h), [h_train], eval_bs)
  commit_val = _batched(lambda h: _apply_commit(block, variables, h), [h_val], eval_bs)
  flops["selection"] += (n_train + n_val) * cost.commit_head
  learned = np.asarray(learned_mask(probs_train, commit_train, labels_j, config.train_threshold))
  val_learned = np.asarray(learned_mask(probs_val, commit_val, val_labels_j, config.train_threshold))
  # Soft removal keeps a seeded fraction of the learned samples in the next working sets.
  kept = _seeded_mask(learned, config.keep_learned, jax.random.fold_in(key, 8))
  val_kept = _seeded_mask(val_learned, config.keep_learned, jax.random.fold_in(key, 9))
  next_train_idx = np.asarray(train_idx)[~learned | kept].astype(np.int32)
  next_val_idx = np.asarray(val_idx)[~val_learned | val_kept].astype(np.int32)

  record = BlockRecord(
      block=j, train_samples=n_train, val_samples=n_val,
      class_counts=np.bincount(np.asarray(labels_j), minlength=num_classes).tolist(),
      epochs=epochs, best_epoch=result.best_epoch, commit_epochs=commit_result.epoch,
      learned=int(learned.sum()), val_learned=int(val_learned.sum()), positive_rate=n_pos / n_commit,
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


def _seeded_subset(n: int, fraction: float, key: jax.Array) -> np.ndarray:
  """Sorted positions of a seeded random `fraction` of range(n) (none when the fraction is 0)."""
  count = int(round(fraction * n))
  if count == 0 or n < 2:
    return np.zeros(0, np.int32)
  count = min(count, n - 1)  # the block keeps at least one sample to train on
  return np.sort(np.asarray(jax.random.permutation(key, n))[:count]).astype(np.int32)


def _seeded_mask(mask: np.ndarray, fraction: float, key: jax.Array) -> np.ndarray:
  """A seeded random `fraction` of the True entries of `mask`, as a mask of the same shape."""
  chosen = np.zeros_like(mask)
  where = np.flatnonzero(mask)
  chosen[where[_seeded_subset(len(where), fraction, key)]] = True
  return chosen


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
  if config.finetune_epochs == 0:
    return QuickNetRun(variables, records)
  variables, finetune = finetune_quicknet(model, variables, images, labels, val_images, val_labels, config,
                                          jax.random.fold_in(key, 2), checkpointer=checkpointer, log=log,
                                          on_epoch=on_epoch)
  return QuickNetRun(variables, records, finetune)


def finetune_epoch_flops(model: MultiExitModel, num_blocks: int, n_train: int, n_val: int) -> float:
  """Training FLOPs of one joint fine-tuning epoch over the first `num_blocks` blocks: every sample
  runs every subnet and exit (3× forward for a step) and every validation sample once."""
  forward = float(sum(c.subnet + c.exit_head for c in model.block_costs[:num_blocks]))
  return (3 * n_train + n_val) * forward


def finetune_quicknet(model: MultiExitModel, variables: Sequence[dict], images, labels, val_images, val_labels,
                      config: QuickNetConfig, key: jax.Array, checkpointer=None, log: Log = print,
                      on_epoch=None) -> tuple[list, dict]:
  """QuickNet+ joint fine-tuning of the trained blocks, then their commitment heads again.

  Every trained block's subnet and exit train together for `config.finetune_epochs` epochs on the
  whole training split (minus the commitment holdout, when there is one) with the sum of the exits'
  cross-entropies at `config.finetune_lr`, keeping the best-validation parameters. The features each
  commitment head reads have moved, so every head then retrains on its fine-tuned block's correctness
  (on the holdout slice when `commit_holdout` > 0, else on the training split). Returns (variables,
  record: epochs, flops by part, seconds, commitment epochs).
  """
  start = time.perf_counter()
  num = len(variables)
  trained = dataclasses.replace(model, blocks=model.blocks[:num], block_costs=model.block_costs[:num])
  n, n_val = len(labels), len(val_labels)
  holdout = _seeded_subset(n, config.commit_holdout, jax.random.fold_in(key, 7))
  fit_pos = np.setdiff1d(np.arange(n, dtype=np.int32), holdout)
  commit_pos = holdout if len(holdout) else np.arange(n)
  ckpt = (lambda name: checkpointer.after_blocks_checkpointer(name)) if checkpointer is not None else (
      lambda name: None)

  params = [split_variables(v)[0] for v in variables]
  state = [split_variables(v)[1] for v in variables]
  mask = [_block_mask(p, ("subnet", "exit_head")) for p in params]
  labels_np = np.asarray(labels)
  data = FitData(jnp.asarray(images), jnp.asarray(labels), jnp.asarray(fit_pos), jnp.asarray(labels_np[fit_pos]),
                 jnp.asarray(val_images), jnp.asarray(val_labels))
  fit_config = dataclasses.replace(config.fit, learning_rate=config.finetune_lr, max_epochs=config.finetune_epochs)
  finetune_ckpt = ckpt("finetune")
  result = fit_resumably(Objective(losses.joint_loss(trained, [1.0] * (num - 1)), mask), params, state, data,
                         fit_config, jax.random.fold_in(key, 1), num_classes=model.num_classes, name="fine-tune",
                         checkpoint=finetune_ckpt, log=log,
                         on_epoch=on_epoch and (lambda s, r: on_epoch("finetune", s, r)))
  flops = dict(finetune_training=result.epoch * finetune_epoch_flops(model, num, len(fit_pos), 0),
               finetune_validation=result.epoch * finetune_epoch_flops(model, num, 0, n_val), cache=0.0,
               commit_training=0.0, commit_validation=0.0)
  tuned = [{"params": p, **s} for p, s in zip(result.best_params, result.best_model_state)]

  # Commitment heads on the fine-tuned features: "the exit was right" on the rows they learn from.
  eval_bs = config.fit.eval_batch_size
  h_train, h_val = np.asarray(images)[commit_pos], np.asarray(val_images)
  commit_epochs, commit_ckpts = [], []
  for j, block in enumerate(trained.blocks):
    cost = model.block_costs[j]
    h_train, probs_train, _ = block_outputs(block, tuned[j], h_train, eval_bs)
    h_val, probs_val, _ = block_outputs(block, tuned[j], h_val, eval_bs)
    flops["cache"] += (len(commit_pos) + n_val) * (cost.subnet + cost.exit_head)
    correct_train = (np.argmax(probs_train, -1) == labels_np[commit_pos]).astype(np.int32)
    correct_val = (np.argmax(probs_val, -1) == np.asarray(val_labels)).astype(np.int32)
    commit_ckpts.append(ckpt(f"commitment_{j}"))
    commit_result = train_commitment_head(block, tuned[j], h_train, correct_train, h_val, correct_val,
                                          config.commit_fit, jax.random.fold_in(key, 10 + j),
                                          name=f"commitment head {j} (fine-tuned)",
                                          pad_rows_to=bucket_size(n), pad_val_rows_to=bucket_size(n_val),
                                          on_epoch=on_epoch and (lambda s, r: on_epoch("recommit", s, r)),
                                          checkpoint=commit_ckpts[-1], log=log)
    tuned[j] = {"params": commit_result.best_params, **result.best_model_state[j]}
    commit_epochs.append(commit_result.epoch)
    flops["commit_training"] += commit_result.epoch * len(commit_pos) * 3 * cost.commit_head
    flops["commit_validation"] += commit_result.epoch * n_val * cost.commit_head
  seconds = time.perf_counter() - start + _resumed_seconds(finetune_ckpt, *commit_ckpts)
  for c in (finetune_ckpt, *commit_ckpts):
    if c is not None:
      c.close()
  log(f"fine-tune: {result.epoch} joint epochs (best {result.best_epoch}) on {len(fit_pos)} samples, "
      f"commitment heads again ({commit_epochs} epochs), {sum(flops.values()):.3g} FLOPs, {seconds:.1f}s")
  return tuned, dict(epochs=result.epoch, best_epoch=result.best_epoch, commit_epochs=commit_epochs,
                     flops=flops, seconds=seconds, history=result.history)


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

"""Decoupled QuickNet training: every block trains from the first epoch, each on its own exit's loss.

The paper leaves this as future work (§2): Belilovsky et al.'s decoupled greedy learning applied to
QuickNets. Each step runs the batch through all blocks; the input of every block (and of every
commitment head) is stop-gradiented, so block j is updated by its own losses only:

- its exit's cross-entropy over the samples of the batch that blocks < j do not learn under their
  current parameters (the learned rule of Algorithm 1: correct, confidence > τ, commitment logit above
  the learned threshold); block 0 takes the (class-balanced) draws as they are, a later block weighs
  each class present among its samples the same (the sequential schedule's class-balanced draws from
  T_j, per batch);
- its commitment head's binary cross-entropy on "the exit was right", over the same samples, right and
  wrong predictions weighing the same (as the sequential heads' class weights, per batch).

The learned rule is refreshed every step (`refresh="step"`: the step's own forward pass decides, at no
extra cost) or once per epoch (`"epoch"`: a forward pass over the training split at the start of each
epoch; counted in the training FLOPs). Each block has its own Appendix A schedule on its own validation
loss (its exit's cross-entropy over the validation samples earlier blocks do not learn): plateau cuts
of its own learning rate (`optimizer.BlockwiseAdam`), and early stopping, after which the block goes
back to its best epoch's parameters and is frozen while the others go on. A block stops only after the
blocks before it have (until then what it learns from keeps moving), and when they have, its best epoch
and patience start again from there, so that the parameters it keeps were chosen on the frozen prefix. Blocks past the deepest one
still training are not run at all. The run is an epoch runner of the trainer's one loop
(`DecoupledRunner` under `trainer.run_epochs`), with the trainer's step (`step.train_step`) and epoch
drivers; the state (a `trainer.FitState` whose schedule is a `schedule.BlockSchedules`) is checkpointed
after every epoch, so a killed run resumes to the same result.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from quicknets_jax.algorithms import forward
from quicknets_jax.algorithms.pipeline import Carried, PipelinePlan, block_stages, pipelined_epoch, stage_mesh
from quicknets_jax.algorithms.settings import QuickNetConfig
from quicknets_jax.core import costs, exits, rng
from quicknets_jax.core.progress import Log
from quicknets_jax.data.split import Split
from quicknets_jax.data.streaming import device_array
from quicknets_jax.models.base import Block, MultiExitModel, merge_blocks, run_block, split_blocks
from quicknets_jax.training import parallel
from quicknets_jax.training.events import Events
from quicknets_jax.training.losses import augment_inputs, cross_entropy
from quicknets_jax.training.optimizer import BlockwiseAdam, with_block_learning_rates
from quicknets_jax.training.schedule import BlockSchedules, Schedule, advance, monitored_score
from quicknets_jax.training.step import Batch, LossAux, Statics, TrainState, masked_mean
from quicknets_jax.training.trainer import (
  Drivers,
  EpochArrays,
  EpochPlan,
  EpochScores,
  FitHooks,
  FitState,
  bucket_size,
  choose_drivers,
  pad_rows,
  run_epochs,
)


def _class_balanced(weights, labels, num_classes: int):
  """`weights` (0/1 [B]) rescaled so that each class present weighs the same in total."""
  counts = jnp.zeros((num_classes,), jnp.float32).at[labels].add(weights)
  present = jnp.sum(counts > 0)
  return weights / jnp.maximum(counts[labels], 1.0) / jnp.maximum(present, 1)


@dataclasses.dataclass(frozen=True)
class DecoupledLoss:
  """The decoupled step's loss over every block that runs (see the module doc).

  Attributes:
    model: the multi-exit model.
    depth: blocks 0..depth−1 run (the deepest block still training and those before it).
    frozen: per block, whether it has stopped: it still decides what later blocks learn from, but adds
      nothing to the loss (so no gradient of its parameters is computed).
    train_threshold: τ of the learned rule; commit_logit: the commitment logit a learned sample exceeds.
    refresh: "step" (the learned rule decided in this step) or "epoch" (read from the targets: column 0 the
      label, column 1 + j whether block j learned the sample at the start of the epoch).
    augment, compute_dtype: as the other losses'.

  It is a `step.Loss`: the batch's mask is the rows the first block learns from (the per-block means
  are over them), the per-sample losses of its `LossAux` all hold the step's total, and the loss it
  returns is their masked mean (the total, to float round-off).
  """

  model: MultiExitModel
  depth: int
  frozen: tuple[bool, ...]
  train_threshold: float
  commit_logit: float
  refresh: str = "step"
  augment: Optional[str] = None
  compute_dtype: Optional[str] = None

  def __call__(self, params, batch: Batch, rng, hparams=None, *, model_state):
    """The blocks' summed losses on a batch (see the class doc).

    Args:
      params: per block, its parameters.
      batch: raw images [B, ...], the targets (labels, or with `refresh="epoch"` the labels and learned
        flags, [B, 1 + E]) and the 0/1 mask of the real rows.
      rng: the step's key (augmentation); None: inference mode (batch statistics read, not updated).
      hparams: unused.
      model_state: per block, its model state.

    Returns:
      A tuple `(loss, aux)`: the masked mean of the per-sample totals, and a `LossAux` of the total
      repeated per row [B], whether the block that answers for each row was right [B], and the new model
      state of every block.
    """
    del hparams
    x, y, mask = batch
    train = rng is not None
    x = augment_inputs(self.augment, x, rng, train)
    carry = Carried(x, y, mask, jnp.zeros(mask.shape, bool), jnp.zeros(mask.shape, jnp.float32))
    total, carry, new_state = self.blocks_pass(params, model_state, carry, range(self.depth), train)
    losses = jnp.full(mask.shape, total)
    return masked_mean(losses, mask), LossAux(losses, carry.answer, new_state)

  def blocks_pass(self, params, state, carry: Carried, blocks: range, train: bool):
    """Runs blocks `blocks` on what `carry` brings and adds up their losses.

    Args:
      params: per block, its parameters (only the blocks in `blocks` are read).
      state: per block, its model state (batch statistics).
      carry: the features entering the first of the blocks, the targets, the rows no earlier block has
        learned, and which rows an earlier block has answered for.
      blocks: the consecutive blocks to run.
      train: whether batch statistics update.

    Returns:
      (the blocks' summed loss, what they pass on to the next block, the new model state of every block).
    """
    labels = carry.y if self.refresh == "step" else carry.y[:, 0]
    x, still, decided, answer = carry.x, carry.still, carry.decided, carry.answer
    total = jnp.zeros((), jnp.float32)
    new_state = list(state)
    num_classes = self.model.num_classes
    for j in blocks:
      block = self.model.blocks[j]
      (features, logits), new_state[j] = run_block(
        block, params[j], state[j], jax.lax.stop_gradient(x), train, Block.features_and_logits, self.compute_dtype
      )
      head_inputs = jax.lax.stop_gradient(
        run_block(block, params[j], state[j], features, False, Block.commit_inputs, self.compute_dtype)[0]
      )
      commit, _ = run_block(
        block, params[j], state[j], head_inputs, False, Block.commit_from_inputs, self.compute_dtype
      )
      ce, correct = cross_entropy(logits, labels)
      if not self.frozen[j]:
        # block 0 sees the class-balanced draws as they are (as the sequential block 0); a later block the
        # rows left, each class among them weighing the same (as the sequential block j's draws from T_j)
        weights = still if j == 0 else _class_balanced(still, labels, num_classes)
        total = total + jnp.sum(weights * ce) / jnp.maximum(jnp.sum(weights), 1e-12)
        positives = jnp.sum(still * correct)
        negatives = jnp.sum(still) - positives
        commit_weights = still * jnp.where(
          correct > 0.5, 0.5 / jnp.maximum(positives, 1.0), 0.5 / jnp.maximum(negatives, 1.0)
        )
        total = total + jnp.sum(commit_weights * optax.sigmoid_binary_cross_entropy(commit, correct))
      if self.refresh == "step":
        confident = exits.confidence(jax.nn.softmax(logits)) > self.train_threshold
        learned = (correct > 0.5) & confident & (commit > self.commit_logit)
      else:
        learned = carry.y[:, 1 + j] > 0
      now = ~decided & (learned | (j == self.depth - 1))
      answer = jnp.where(now, correct, answer)
      decided = decided | now
      still = still * (1.0 - learned.astype(jnp.float32))
      x = features
    return total, Carried(x, carry.y, still, decided, answer), new_state


def _learned_flags(model, variables, images, labels, depth, rule, batch_size):
  """[N, 1 + E] int32: the labels, then whether block j learns each sample under `variables` (blocks
  at or past `depth` learn nothing)."""
  probs, commits = forward.all_exit_outputs(model, variables[:depth], images, batch_size)
  probs, commits = np.asarray(probs), np.asarray(commits)
  flags = np.zeros((len(labels), 1 + model.num_blocks), np.int32)
  flags[:, 0] = labels
  for j in range(depth):
    correct = np.argmax(probs[j], -1) == labels
    flags[:, 1 + j] = correct & (np.asarray(exits.confidence(probs[j])) > rule[0]) & (commits[j] > rule[1])
  return flags


@functools.partial(jax.jit, static_argnames=("model", "depth", "rule", "compute_dtype"))
def _val_chunk(params, model_state, x, labels, mask, *, model, depth, rule, compute_dtype):
  """Per block j < depth: (CE sum, count, correct sum) over the chunk's rows that blocks < j do not learn."""
  still, out = mask, []
  for j in range(depth):
    block = model.blocks[j]
    (features, logits), _ = run_block(
      block, params[j], model_state[j], x, False, Block.features_and_logits, compute_dtype
    )
    head_inputs, _ = run_block(block, params[j], model_state[j], features, False, Block.commit_inputs, compute_dtype)
    commit, _ = run_block(block, params[j], model_state[j], head_inputs, False, Block.commit_from_inputs, compute_dtype)
    ce, correct = cross_entropy(logits, labels)
    out.append(jnp.stack([jnp.sum(still * ce), jnp.sum(still), jnp.sum(still * correct)]))
    learned = (correct > 0.5) & (exits.confidence(jax.nn.softmax(logits)) > rule[0]) & (commit > rule[1])
    still = still * (1.0 - learned.astype(jnp.float32))
    x = features
  return jnp.stack(out)


def validate(model, params, model_state, val: Split, depth: int, rule, config) -> np.ndarray:
  """Each block's validation sums over the validation samples earlier blocks do not learn.

  The split is read in the trainer's fixed-size masked chunks (padded to its bucket), so the programs
  compile once per bucket.

  Args:
    model: the multi-exit model.
    params: per block, its parameters.
    model_state: per block, its model state.
    val: the validation split.
    depth: blocks 0..depth−1 are validated.
    rule: (τ, commitment logit) of the learned rule.
    config: the QuickNet's settings (`fit.eval_batch_size`, `fit.compute_dtype`).

  Returns:
    [depth, 3] float64: per block (cross-entropy sum, count, correct sum).
  """
  batch = config.fit.eval_batch_size
  n = len(val.labels)
  rows = bucket_size(n)
  images, labels = pad_rows(val.images, rows), pad_rows(val.labels, rows)
  total = np.zeros((depth, 3))
  for start in range(0, min(n, rows), batch):  # chunks past n would add exact zeros
    index = np.minimum(np.arange(start, start + batch), rows - 1)
    mask = device_array((index < n) & (np.arange(start, start + batch) < rows), np.float32)
    sums = _val_chunk(
      params,
      model_state,
      images[index],
      labels[index],
      mask,
      model=model,
      depth=depth,
      rule=rule,
      compute_dtype=config.fit.compute_dtype,
    )
    total += np.asarray(sums, np.float64)
  return total


def decoupled_epoch_flops(model: MultiExitModel, *, depth: int, active, n_train: int, n_val: int, refresh: str) -> list:
  """One decoupled epoch's training FLOPs by block and part.

  Every sample drawn runs blocks 0..depth−1 forward (masked-out samples included: they still cost their
  forward pass), the blocks still training 2× that again backward; the validation split runs them
  forward once, and an epoch-refreshed learned rule costs one more forward pass over the training split.

  Args:
    model: the multi-exit model (its `block_costs`).
    depth: the blocks that run.
    active: per block, whether it still trains.
    n_train: training samples drawn in the epoch.
    n_val: validation samples.
    refresh: "step" or "epoch" (`QuickNetConfig.decoupled_refresh`).

  Returns:
    Per block, {"block_training", "block_validation", "cache"}: FLOPs.
  """
  out = []
  for j in range(model.num_blocks):
    forward_cost = model.block_costs[j].total if j < depth else 0.0
    out.append(
      dict(
        block_training=n_train * forward_cost * (3 if active[j] else 1),
        block_validation=n_val * forward_cost,
        cache=(n_train * forward_cost) if refresh == "epoch" else 0.0,
      )
    )
  return out


@dataclasses.dataclass(frozen=True)
class DecoupledRunner:
  """Decoupled training as an epoch runner of the trainer's loop (`trainer.run_epochs`): every block
  trains in every epoch until its own schedule stops it (`schedule.BlockSchedules`; see the module doc).

  Attributes:
    model: the multi-exit model.
    config: the QuickNet's settings (τ, the learned commitment threshold, the schedule of every block,
      `decoupled_refresh`, the pipeline's stages).
    train: the training split (host arrays: an epoch-refreshed rule reads them).
    val: the validation split.
    arrays: the epoch's arrays: the training images on device, all rows as the working set.
    optimizer: one Adam per block (`optimizer.BlockwiseAdam`; a frozen block's learning rate is 0).
    drivers: how an epoch runs on one device (`trainer.choose_drivers`).
    batch_size: rows per step.
    log: where the pipeline's dropped-rows lines go.
    phase: "decoupled" (`events.EpochDone`).
  """

  model: MultiExitModel
  config: QuickNetConfig
  train: Split
  val: Split
  arrays: EpochArrays
  optimizer: BlockwiseAdam
  drivers: Drivers
  batch_size: int
  log: Log
  phase: str = "decoupled"

  @classmethod
  def create(
    cls, model: MultiExitModel, train: Split, val: Split, config: QuickNetConfig, seed: int, *, log: Log = print
  ) -> tuple[DecoupledRunner, FitState]:
    """The runner of a decoupled run and the state it starts from (every block at its initialisation).

    Args:
      model: the multi-exit model.
      train: the training split.
      val: the validation split.
      config: the QuickNet's settings (see the class doc).
      seed: the initialisation (the sequential schedule's: `rng.Stream.INIT`).
      log: where the pipeline's dropped-rows lines go.

    Returns:
      A tuple `(runner, state)`: the state's schedule is a `schedule.BlockSchedules` with no block frozen.
    """
    train, val = Split.of(train), Split.of(val)
    fit_config, num_blocks, n_train = config.fit, model.num_blocks, len(train.labels)
    params, model_state = split_blocks(model.init(rng.stream(rng.seed_key(seed), rng.Stream.INIT)))
    optimizer = BlockwiseAdam((False,) * num_blocks, fit_config.weight_decay)
    schedules = tuple(Schedule(learning_rate=fit_config.learning_rate) for _ in range(num_blocks))
    state = FitState(
      TrainState.create(optimizer, params, model_state, [fit_config.learning_rate] * num_blocks),
      params,
      model_state,
      BlockSchedules(schedules, (False,) * num_blocks),
    )
    labels = np.asarray(train.labels, np.int32)
    bucket = bucket_size(n_train)
    arrays = EpochArrays(
      device_array(train.images),
      device_array(labels),
      pad_rows(np.arange(n_train, dtype=np.int32), bucket),
      pad_rows(labels, bucket),
      device_array(np.int32(n_train)),
      device_array(np.int32(n_train)),
    )
    runner = cls(
      model,
      config,
      train,
      val,
      arrays,
      optimizer,
      choose_drivers(model.convolutions, fit_config),
      parallel.round_up_batch(min(fit_config.batch_size, n_train), parallel.current_mesh()),
      log,
    )
    return runner, state

  @property
  def rule(self) -> tuple[float, float]:
    """(τ, commitment logit) of the learned rule."""
    return (self.config.train_threshold, self.config.learned_commit_logit())

  def _blocks(self, state: FitState) -> tuple[list, int]:
    """(which blocks still train, how many blocks run: up to the deepest that trains)."""
    active = [not f for f in state.schedule.frozen]
    return active, max(j for j in range(self.model.num_blocks) if active[j]) + 1

  def finished(self, state: FitState) -> bool:
    return state.schedule.finished(self.config.fit)

  def start(self, state: FitState) -> FitState:
    return dataclasses.replace(state, train=jax.tree.map(jax.device_put, state.train))

  def train_epoch(self, state: FitState, key: jax.Array) -> tuple[TrainState, EpochScores]:
    fit_config, refresh, schedules = self.config.fit, self.config.decoupled_refresh, state.schedule
    _, depth = self._blocks(state)
    loss = DecoupledLoss(
      self.model,
      depth,
      schedules.frozen,
      *self.rule,
      refresh,
      fit_config.augmentation_name,
      fit_config.compute_dtype,
    )
    # one optimizer for the whole run (its state keeps its shape); a frozen block's learning rate is 0
    statics = Statics(loss, self.optimizer, parallel.current_mesh(), self.drivers.conv)
    plan = EpochPlan(statics, self.batch_size, self.model.num_classes, fit_config.balanced_sampling)
    arrays = self.arrays
    if refresh == "epoch":  # the learned rule of the epoch's starting parameters
      variables = merge_blocks(state.train.params, state.train.model_state)
      flags = _learned_flags(
        self.model,
        variables,
        self.train.images,
        np.asarray(self.train.labels, np.int32),
        depth,
        self.rule,
        fit_config.eval_batch_size,
      )
      arrays = arrays._replace(targets=device_array(flags))
    rates = [0.0 if f else s.learning_rate for s, f in zip(schedules.blocks, schedules.frozen)]
    train = state.train.replace(opt_state=with_block_learning_rates(state.train.opt_state, rates))
    if self.config.pipeline_stages > 1:  # the blocks as stages, one device each (`pipeline`)
      stages = block_stages(self.model.num_blocks, self.config.pipeline_stages)
      capacity = max(1, math.ceil(self.config.pipeline_capacity * self.batch_size))
      pipeline = PipelinePlan(plan, stage_mesh(self.config.pipeline_stages), stages, capacity)
      train, (loss_mean, accuracy, dropped) = pipelined_epoch(train, arrays, key, plan=pipeline)
      return train, EpochScores(float(loss_mean), float(accuracy), int(dropped))
    train, (loss_mean, accuracy) = self.drivers.epoch.run(train, arrays, key, plan=plan)
    return train, EpochScores(float(loss_mean), float(accuracy), 0)

  def validate(self, state: FitState, train: TrainState) -> EpochScores:
    active, depth = self._blocks(state)
    sums = validate(self.model, train.params, train.model_state, self.val, depth, self.rule, self.config)
    num_blocks = self.model.num_blocks
    losses = [float(sums[j, 0] / sums[j, 1]) if j < depth and sums[j, 1] > 0 else 0.0 for j in range(num_blocks)]
    accuracies = [float(sums[j, 2] / sums[j, 1]) if sums[j, 1] > 0 else 1.0 for j in range(depth)]
    loss = float(sum(losses[j] for j in range(num_blocks) if active[j]))
    if not np.all(np.isfinite(sums)):
      loss = math.nan
    accuracy = float(sums[depth - 1, 2] / max(sums[depth - 1, 1], 1.0))
    return EpochScores(loss, accuracy, (losses, accuracies))

  def advance(
    self, state: FitState, train: TrainState, trained: EpochScores, validated: EpochScores
  ) -> tuple[FitState, dict, dict]:
    fit_config, num_blocks = self.config.fit, self.model.num_blocks
    active, depth = self._blocks(state)
    val_losses, val_accuracies = validated.details
    schedules, frozen = list(state.schedule.blocks), list(state.schedule.frozen)
    best_params, best_state = list(state.best_params), list(state.best_model_state)
    params, model_state = list(train.params), list(train.model_state)
    for j in range(num_blocks):
      if frozen[j]:
        continue
      score = monitored_score(fit_config, trained.loss, val_losses[j], val_accuracies[j])
      schedules[j] = advance(schedules[j], fit_config, score)
      if schedules[j].best_epoch == schedules[j].epoch:
        best_params[j], best_state[j] = jax.tree.map(jnp.copy, (params[j], model_state[j]))
      # A block stops only once the blocks before it have: while they still move, what it sees moves.
      settled = not any(active[:j])
      if (schedules[j].stopped and settled) or schedules[j].epoch >= fit_config.max_epochs:
        frozen[j] = True  # back to its best epoch, and frozen while the others go on
        params[j], model_state[j] = jax.tree.map(jnp.copy, (best_params[j], best_state[j]))
    for j in range(num_blocks):
      if not frozen[j] and any(active[:j]) and all(frozen[:j]):
        # its prefix has just frozen: its best epoch and patience count from here, on what it will keep seeing
        schedules[j] = Schedule(learning_rate=schedules[j].learning_rate, epoch=schedules[j].epoch)
    n_train, n_val = len(self.train.labels), len(self.val.labels)
    refresh = self.config.decoupled_refresh
    flops = decoupled_epoch_flops(self.model, depth=depth, active=active, n_train=n_train, n_val=n_val, refresh=refresh)
    head = dict(learning_rate=max(s.learning_rate for s, a in zip(state.schedule.blocks, active) if a), samples=n_train)
    tail = dict(
      active=active,
      depth=depth,
      val_loss_per_block=val_losses,
      learning_rate_per_block=[s.learning_rate for s in state.schedule.blocks],
      flops_by_block=flops,
    )
    if self.config.pipeline_stages > 1:
      tail["pipeline_dropped_rows"] = trained.details
      if trained.details:
        self.log(
          f"decoupled: epoch {state.epoch + 1}: {trained.details} rows later blocks needed did not fit in a "
          f"stage's buffer (--pipeline_capacity={self.config.pipeline_capacity:g}) and were dropped for their step"
        )
    schedule = BlockSchedules(tuple(schedules), tuple(frozen), state.schedule.epoch + 1)
    train = train.replace(params=params, model_state=model_state)
    return FitState(train, best_params, best_state, schedule, state.history), head, tail

  def learning_rate(self, state: FitState) -> float:
    return self.config.fit.learning_rate

  def training_flops(self, state: FitState) -> Optional[float]:
    return float(sum(costs.total(part) for part in spent_flops(state.history, self.model.num_blocks)))


def spent_flops(history, num_blocks: int) -> list:
  """The training FLOPs of a decoupled run's epochs, by block and part (`decoupled_epoch_flops` summed).

  Args:
    history: the run's epoch records.
    num_blocks: the model's blocks.

  Returns:
    Per block, {"block_training", "block_validation", "cache"}: FLOPs.
  """
  total = [dict.fromkeys(("block_training", "block_validation", "cache"), 0.0) for _ in range(num_blocks)]
  for record in history:
    for j, part in enumerate(record["flops_by_block"]):
      for k, v in part.items():
        total[j][k] += v
  return total


def train_decoupled(
  model: MultiExitModel,
  train: Split,
  val: Split,
  config: QuickNetConfig,
  seed: int,
  *,
  checkpoint=None,
  log: Log = print,
  events: Optional[Events] = None,
):
  """Trains every block of a QuickNet at once (see the module doc) through the trainer's loop.

  Args:
    model: the multi-exit model.
    train: the training split.
    val: the validation split.
    config: the QuickNet's settings: τ, the learned commitment threshold, the schedule of every block
      (Appendix A's, per block), `decoupled_refresh`.
    seed: initialisation (the sequential schedule's: `rng.Stream.INIT`) and every draw.
    checkpoint: a `checkpoint.FitCheckpointer`: resume from its newest epoch, save after every epoch.
    log: progress lines.
    events: told after every epoch (phase "decoupled").

  Returns:
    (the final variables of every block, the run's `trainer.FitState` (its schedule a
    `schedule.BlockSchedules`), its FLOPs by block and part (`decoupled_epoch_flops` summed), its
    training seconds).

  Raises:
    NonFiniteLossError: a NaN/inf loss.
  """
  start = time.perf_counter()
  runner, state = DecoupledRunner.create(model, train, val, config, seed, log=log)
  key = rng.seed_key(seed)
  # the key of the sequential schedule's block-0 fit: a one-block decoupled run is that fit
  fit_key = jax.random.split(rng.per_item(rng.stream(key, rng.Stream.BLOCKS), 0))[0]
  hooks = FitHooks(events, checkpoint, log)
  state = run_epochs(runner, state, config.fit, fit_key, name="decoupled", hooks=hooks)
  seconds = time.perf_counter() - start + (checkpoint.resumed_seconds if checkpoint is not None else 0.0)
  variables = merge_blocks(state.best_params, state.best_model_state)
  return variables, state, spent_flops(state.history, model.num_blocks), seconds

"""Commitment heads δ_j: trained on a frozen block's features to predict "the exit was right".

`train_commitment_head` serves every network: a QuickNet block right after its own fit (Algorithm 1),
and each exit of a jointly trained network (`train_commitment_heads`, paper §4.4). Most targets are 1,
so the binary cross-entropy weighs each class n / (2·n_class): both classes weigh the same in the
loss, and a positive logit means "more likely right than wrong, at balanced odds".
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from quicknets_jax.algorithms import forward
from quicknets_jax.algorithms.settings import COMMIT_BALANCES
from quicknets_jax.core import costs, rng
from quicknets_jax.core.progress import Log
from quicknets_jax.data.split import Split
from quicknets_jax.data.streaming import device_array
from quicknets_jax.models.base import COMMIT, Block, MultiExitModel
from quicknets_jax.training import losses
from quicknets_jax.training.schedule import FitConfig
from quicknets_jax.training.trainer import (
  FitData,
  FitHooks,
  FitState,
  Objective,
  bucket_size,
  compile_ahead,
  fit,
  pad_rows,
)


def class_weights(correct) -> tuple[float, float]:
  """(positive, negative) weights n / (2·n_class) of the commitment BCE for 0/1 targets `correct`.

  Both classes then weigh the same in the loss; a class with no sample counts as one.

  Args:
    correct: [n] 0/1 targets: whether the exit was right.

  Returns:
    (weight of a 1, weight of a 0).
  """
  n = int(correct.shape[0])
  n_pos = int(np.sum(correct))
  return n / (2.0 * max(n_pos, 1)), n / (2.0 * max(n - n_pos, 1))


@dataclasses.dataclass(frozen=True)
class CommitmentOptions:
  """How `train_commitment_head` runs a head's fit, besides its schedule.

  Attributes:
    name: what the fit is called in messages.
    balance: "weighted" (each class weighs n / (2·n_class) in the loss; rows drawn as the schedule
      says) or "sampled" (the authors' code: unweighted loss, each epoch draws right and wrong
      predictions with equal total probability, with replacement).
    pad_to: the lengths (training rows, validation rows) are padded to, so heads of every block and seed
      share one compiled epoch (None: their buckets).
  """

  name: str = "commitment head"
  balance: str = "weighted"
  pad_to: Optional[tuple[int, int]] = None


def train_commitment_head(
  block: Block,
  variables: dict,
  train: Split,
  val: Split,
  config: FitConfig,
  key: jax.Array,
  *,
  options: CommitmentOptions = CommitmentOptions(),
  hooks: FitHooks = FitHooks(),
) -> FitState:
  """Trains δ of a frozen block: BCE of its commitment logit against "the exit was right", balanced.

  Args:
    block: the block whose `commit_head` trains (its subnet and exit stay as they are).
    variables: the block's variables; only `params["commit_head"]` changes.
    train: the block's features on its training rows and the 0/1 correctness of its exit there.
    val: the same on the validation rows.
    config: the schedule (the blocks', without class-balanced sampling: `settings.commitment_schedule`).
    key: the fit's key.
    options: the fit's name, class balance and padded lengths (`CommitmentOptions`).
    hooks: the fit's events, checkpoint and log (`FitHooks`).

  Returns:
    The FitState; `best_params` is the block's params tree with the trained commitment head.

  Raises:
    ValueError: `options.balance` is not one of `COMMIT_BALANCES`.
  """
  # a head on the exit's logits learns from those logits (computed once), not from the features
  features = forward.commit_inputs(block, variables, train.images, config.eval_batch_size)
  val_features = forward.commit_inputs(block, variables, val.images, config.eval_batch_size)
  objective, params, data, config = commitment_fit(
    block,
    variables,
    Split(features, train.labels),
    Split(val_features, val.labels),
    config,
    options.balance,
    options.pad_to,
  )
  result = fit(objective, params, {}, data, config, key, name=options.name, hooks=hooks)
  return dataclasses.replace(
    result,
    train=result.train.replace(params={**variables["params"], **result.params}),
    best_params={**variables["params"], **result.best_params},
  )


def commitment_fit(
  block: Block,
  variables: dict,
  train: Split,
  val: Split,
  config: FitConfig,
  balance: str = "weighted",
  pad_to: Optional[tuple[int, int]] = None,
) -> tuple[Objective, dict, FitData, FitConfig]:
  """The fit that trains a commitment head: its objective, params, data and schedule.

  Args:
    block: the block whose `commit_head` trains.
    variables: the block's variables.
    train: the head's inputs on the training rows (`forward.commit_inputs`; a `jax.ShapeDtypeStruct`
      is enough for `compile_commitment_ahead`) and the 0/1 correctness of the exit there.
    val: the same on the validation rows.
    config: the schedule (see `train_commitment_head`).
    balance: "weighted" or "sampled" (see `CommitmentOptions`).
    pad_to: the lengths (training rows, validation rows) are padded to (default: their buckets).

  Returns:
    A tuple `(objective, params, data, config)` for `trainer.fit`; the params are the head's alone.

  Raises:
    ValueError: `balance` is not one of `COMMIT_BALANCES`.
  """
  if balance not in COMMIT_BALANCES:
    raise ValueError(f"commit_balance must be one of {', '.join(COMMIT_BALANCES)}, got {balance!r}")
  correct, val_correct = np.asarray(train.labels), np.asarray(val.labels)
  n = int(correct.shape[0])
  positive_weight, negative_weight = class_weights(correct) if balance == "weighted" else (1.0, 1.0)
  if balance == "sampled":
    config = dataclasses.replace(config, balanced_sampling=True)  # the two classes drawn equally often
  # Only the head's own params enter the fit (the block's subnet and exit stay outside it): heads of
  # blocks with different subnets then share one compiled epoch.
  params = {COMMIT: variables["params"][COMMIT]}
  objective = Objective(
    losses.CommitmentLoss.of(block, config.compute_dtype),
    hparams=(device_array(np.float32(positive_weight)), device_array(np.float32(negative_weight))),
  )
  rows, val_rows = pad_to or (bucket_size(n), bucket_size(len(val_correct)))
  data = FitData(
    Split(pad_rows(train.images, rows), pad_rows(correct, rows)),
    Split(pad_rows(val.images, val_rows), pad_rows(val_correct, val_rows)),
    rows=device_array(np.arange(n, dtype=np.int32)),
    row_classes=correct,
    num_classes=2,
    num_val=len(val_correct),
    bucket=rows,
  )
  return objective, params, data, config


def compile_commitment_ahead(
  block: Block,
  variables: dict,
  features: jax.ShapeDtypeStruct,
  sizes: tuple[int, int],
  config: FitConfig,
  key: jax.Array,
  balance: str = "weighted",
  pad_to: Optional[tuple[int, int]] = None,
) -> None:
  """Compiles the programs `train_commitment_head` will run, without running any (`trainer.compile_ahead`).

  Args:
    block: the block whose head will train.
    variables: its variables (shapes only).
    features: the struct of one row of the block's output features (`[1, ...]`).
    sizes: (training rows, validation rows) the head will train and validate on.
    config: the head's schedule.
    key: a key of the kind the fit gets.
    balance: "weighted" or "sampled".
    pad_to: as for `train_commitment_head` (`CommitmentOptions.pad_to`).
  """
  row = jax.eval_shape(lambda h: block.apply(variables, h, method=Block.commit_inputs), features)
  train, val = (
    Split(jax.ShapeDtypeStruct((n, *row.shape[1:]), row.dtype), np.arange(n, dtype=np.int32) % 2) for n in sizes
  )
  objective, params, data, config = commitment_fit(block, variables, train, val, config, balance, pad_to)
  compile_ahead(objective, params, {}, data, config, key)


@dataclasses.dataclass
class CommitmentRun:
  """A frozen network with trained commitment heads and, per exit, what their training did."""

  variables: list
  records: list
  training_flops: float
  seconds: float


def train_commitment_heads(
  model: MultiExitModel,
  variables: Sequence[dict],
  train: Split,
  val: Split,
  config: FitConfig,
  key: jax.Array,
  log: Log = print,
) -> CommitmentRun:
  """Adds a trained commitment head to every exit of a trained, frozen multi-exit network.

  Exit j's head learns whether exit j's argmax is right, from block j's features over the whole
  training split (validated on the validation split); nothing else changes. Features are computed
  block by block and kept in memory for one block at a time (N × feature size floats).

  Args:
    model: the multi-exit model; variables: its trained variables, one dict per block.
    train, val: the training and validation splits.
    config: the heads' schedule.
    key: exit j's head trains with `rng.per_item(key, j)`.
    log: where one line per head goes.

  Returns:
    A CommitmentRun; its FLOPs are `costs.commitment_head_flops` per exit.
  """
  start = time.perf_counter()
  train, val = Split.of(train), Split.of(val)
  labels, val_labels = device_array(train.labels), device_array(val.labels)
  x, val_x = device_array(train.images), device_array(val.images)
  n, n_val = int(labels.shape[0]), int(val_labels.shape[0])
  new_variables, records, total_flops = [], [], 0.0
  for j, (block, cost) in enumerate(zip(model.blocks, model.block_costs)):
    block_vars = variables[j]
    x, probs, _ = forward.block_outputs(block, block_vars, x, config.eval_batch_size)
    val_x, val_probs, _ = forward.block_outputs(block, block_vars, val_x, config.eval_batch_size)
    correct = (jnp.argmax(probs, -1) == labels).astype(jnp.int32)
    val_correct = (jnp.argmax(val_probs, -1) == val_labels).astype(jnp.int32)
    result = train_commitment_head(
      block,
      block_vars,
      Split(x, correct),
      Split(val_x, val_correct),
      config,
      rng.per_item(key, j),
      options=CommitmentOptions(name=f"commitment head {j}"),
    )
    new_variables.append({**block_vars, "params": result.best_params})
    flops = costs.total(costs.commitment_head_flops(cost, epochs=result.epoch, n_train=n, n_val=n_val))
    total_flops += flops
    positive_rate = float(jnp.mean(correct))
    records.append(
      dict(
        exit=j,
        epochs=result.epoch,
        best_epoch=result.best_epoch,
        positive_rate=positive_rate,
        best_score=float(result.best_score),  # the monitored score (`FitConfig.monitor`) of its best epoch
        flops=flops,
        history=list(result.history),
      )
    )
    log(f"commitment head {j}: {result.epoch} epochs, exit right on {positive_rate:.1%} of the training split")
  return CommitmentRun(new_variables, records, total_flops, time.perf_counter() - start)

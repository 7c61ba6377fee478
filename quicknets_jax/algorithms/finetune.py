"""QuickNet+ joint fine-tuning: after block-wise training, every trained block's subnet and exit train
together (Σ_j CE_j, Marquez et al. 2018), then each commitment head retrains on its fine-tuned block.
Counted in the training cost (`costs.finetune_flops`, plus the heads' passes)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from quicknets_jax.algorithms import forward
from quicknets_jax.algorithms.commitment import CommitmentOptions, train_commitment_head
from quicknets_jax.algorithms.settings import QuickNetConfig
from quicknets_jax.core import costs, rng
from quicknets_jax.core.progress import Log
from quicknets_jax.data.sampling import seeded_subset
from quicknets_jax.data.split import Split
from quicknets_jax.data.streaming import device_array, take
from quicknets_jax.models.base import EXIT, SUBNET, MultiExitModel, merge_blocks, parts_mask, split_blocks
from quicknets_jax.training import losses
from quicknets_jax.training.checkpoint import BlockCheckpointer
from quicknets_jax.training.events import Events, InPhase
from quicknets_jax.training.trainer import FitData, FitHooks, Objective, bucket_size, fit


@dataclasses.dataclass(frozen=True)
class FinetuneHooks:
  """What `finetune_quicknet` keeps and tells besides its result, from the run around it.

  Attributes:
    checkpointer: per-epoch checkpoints of the fine-tuning and of each head's refit (None: none).
    log: where the summary line goes.
    events: told after every epoch ("finetune", "recommit"), or None.
    flops_before: the run's training FLOPs before fine-tuning (the epoch events report the total).
  """

  checkpointer: Optional[BlockCheckpointer] = None
  log: Log = print
  events: Optional[Events] = None
  flops_before: float = 0.0


def finetune_quicknet(
  model: MultiExitModel,
  variables: Sequence[dict],
  data: tuple[Split, Split],
  config: QuickNetConfig,
  key: jax.Array,
  *,
  hooks: FinetuneHooks = FinetuneHooks(),
) -> tuple[list, dict]:
  """Fine-tunes the trained blocks jointly, then their commitment heads again.

  Every trained block's subnet and exit train together for `config.finetune_epochs` epochs on the
  whole training split (minus the commitment holdout, when there is one), augmented as the blocks
  were, with the sum of the exits' cross-entropies at `config.finetune_lr`, keeping the
  best-validation parameters. The features each commitment head reads have moved, so every head then
  retrains on its fine-tuned block's correctness (on the holdout slice when `commit_holdout` > 0, else
  on the training split).

  Args:
    model: the QuickNet's model; variables: its trained blocks' variables.
    data: the (train, val) splits.
    config: the QuickNet's settings (fine-tuning epochs and learning rate, holdout, schedule).
    key: the fine-tuning's key (`rng.Stream.FINETUNE` of the run's).
    hooks: its checkpointer, log and events, and the run's FLOPs so far (`FinetuneHooks`).

  Returns:
    (variables, record: epochs, best epoch, flops by part, seconds, commitment epochs, history).
  """
  start = time.perf_counter()
  checkpointer, log, events, flops_before = hooks.checkpointer, hooks.log, hooks.events, hooks.flops_before
  train, val = (Split.of(split) for split in data)
  num = len(variables)
  trained = dataclasses.replace(model, blocks=model.blocks[:num], block_costs=model.block_costs[:num])
  labels = np.asarray(train.labels)
  n, n_val = len(labels), len(val.labels)
  holdout = seeded_subset(n, config.commit_holdout, rng.stream(key, rng.Stream.COMMIT_HOLDOUT))
  fit_pos = np.setdiff1d(np.arange(n, dtype=np.int32), holdout)
  commit_pos = holdout if len(holdout) else np.arange(n)
  ckpt = (
    (lambda name: checkpointer.after_blocks_checkpointer(name)) if checkpointer is not None else (lambda name: None)
  )

  params, state = split_blocks(variables)
  mask = [parts_mask(p, (SUBNET, EXIT)) for p in params]
  fit_data = FitData.whole(
    Split(device_array(train.images), jnp.asarray(train.labels)),
    Split(device_array(val.images), jnp.asarray(val.labels)),
    model.num_classes,
    rows=fit_pos,
  )
  fit_config = dataclasses.replace(config.fit, learning_rate=config.finetune_lr, max_epochs=config.finetune_epochs)
  finetune_ckpt = ckpt("finetune")
  loss = losses.JointLoss(trained, [1.0] * (num - 1), config.fit.augmentation_name, config.fit.compute_dtype)

  def flops_so_far(record):
    parts = costs.finetune_flops(trained.block_costs, epochs=record["epoch"], n_train=record["samples"], n_val=n_val)
    return flops_before + costs.total(parts)

  result = fit(
    Objective(loss, mask),
    params,
    state,
    fit_data,
    fit_config,
    rng.stream(key, rng.Stream.BLOCKS),
    name="fine-tune",
    hooks=FitHooks(InPhase(events, "finetune", num, flops_so_far), finetune_ckpt, log),
  )
  flops = costs.finetune_flops(trained.block_costs, epochs=result.epoch, n_train=len(fit_pos), n_val=n_val)
  flops.update(cache=0.0, commit_training=0.0, commit_validation=0.0)
  tuned = merge_blocks(result.best_params, result.best_model_state)

  # Commitment heads on the fine-tuned features: "the exit was right" on the rows they learn from.
  eval_bs = config.fit.eval_batch_size
  h_train, h_val = take(train.images, commit_pos), val.images
  commit_epochs, commit_ckpts = [], []
  for j, block in enumerate(trained.blocks):
    h_train, probs_train, _ = forward.block_outputs(block, tuned[j], h_train, eval_bs)
    h_val, probs_val, _ = forward.block_outputs(block, tuned[j], h_val, eval_bs)
    correct_train = (np.argmax(probs_train, -1) == labels[commit_pos]).astype(np.int32)
    correct_val = (np.argmax(probs_val, -1) == np.asarray(val.labels)).astype(np.int32)
    commit_ckpts.append(ckpt(f"commitment_{j}"))
    commit_result = train_commitment_head(
      block,
      tuned[j],
      Split(h_train, correct_train),
      Split(h_val, correct_val),
      config.commitment_fit(),
      rng.stream(key, rng.Stream.RECOMMIT, j),
      options=CommitmentOptions(name=f"commitment head {j} (fine-tuned)", pad_to=(bucket_size(n), bucket_size(n_val))),
      hooks=FitHooks(InPhase(events, "recommit", num), commit_ckpts[-1], log),
    )
    tuned[j] = {"params": commit_result.best_params, **result.best_model_state[j]}
    commit_epochs.append(commit_result.epoch)
    head = costs.commitment_head_flops(
      model.block_costs[j], epochs=commit_result.epoch, n_train=len(commit_pos), n_val=n_val
    )
    for part, value in head.items():
      flops[part] += value
  seconds = time.perf_counter() - start + sum(c.resumed_seconds for c in (finetune_ckpt, *commit_ckpts) if c)
  for c in (finetune_ckpt, *commit_ckpts):
    if c is not None:
      c.close()
  log(
    f"fine-tune: {result.epoch} joint epochs (best {result.best_epoch}) on {len(fit_pos)} samples, "
    f"commitment heads again ({commit_epochs} epochs), {costs.total(flops):.3g} FLOPs, {seconds:.1f}s"
  )
  return tuned, dict(
    epochs=result.epoch,
    best_epoch=result.best_epoch,
    commit_epochs=commit_epochs,
    flops=flops,
    seconds=seconds,
    history=list(result.history),
  )

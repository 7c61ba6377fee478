"""QuickNet+ joint fine-tuning: after block-wise training, every trained block's subnet and exit train
together (Σ_j CE_j, Marquez et al. 2018), then each commitment head retrains on its fine-tuned block.
Counted in the training cost (`costs.finetune_flops`, plus the heads' passes)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from quicknets_jax.algorithms import forward
from quicknets_jax.algorithms.commitment import train_commitment_head
from quicknets_jax.algorithms.config import QuickNetConfig
from quicknets_jax.algorithms.events import EpochDone, Events
from quicknets_jax.core import costs
from quicknets_jax.data.sampling import seeded_subset
from quicknets_jax.data.streaming import device_array, take
from quicknets_jax.models.base import EXIT, SUBNET, MultiExitModel, merge_blocks, parts_mask, split_blocks
from quicknets_jax.training import losses
from quicknets_jax.training.checkpoint import BlockCheckpointer
from quicknets_jax.training.trainer import FitData, Objective, bucket_size, fit

Log = Callable[[str], None]


def finetune_quicknet(
  model: MultiExitModel,
  variables: Sequence[dict],
  images,
  labels,
  val_images,
  val_labels,
  config: QuickNetConfig,
  key: jax.Array,
  checkpointer: Optional[BlockCheckpointer] = None,
  log: Log = print,
  events: Optional[Events] = None,
  flops_before: float = 0.0,
) -> tuple[list, dict]:
  """Fine-tunes the trained blocks jointly, then their commitment heads again.

  Every trained block's subnet and exit train together for `config.finetune_epochs` epochs on the
  whole training split (minus the commitment holdout, when there is one), augmented as the blocks
  were, with the sum of the exits' cross-entropies at `config.finetune_lr`, keeping the
  best-validation parameters. The features each commitment head reads have moved, so every head then
  retrains on its fine-tuned block's correctness (on the holdout slice when `commit_holdout` > 0, else
  on the training split). Returns (variables, record: epochs, flops by part, seconds, commitment epochs).
  """
  start = time.perf_counter()
  num = len(variables)
  trained = dataclasses.replace(model, blocks=model.blocks[:num], block_costs=model.block_costs[:num])
  n, n_val = len(labels), len(val_labels)
  holdout = seeded_subset(n, config.commit_holdout, jax.random.fold_in(key, 7))
  fit_pos = np.setdiff1d(np.arange(n, dtype=np.int32), holdout)
  commit_pos = holdout if len(holdout) else np.arange(n)
  ckpt = (
    (lambda name: checkpointer.after_blocks_checkpointer(name)) if checkpointer is not None else (lambda name: None)
  )

  params, state = split_blocks(variables)
  mask = [parts_mask(p, (SUBNET, EXIT)) for p in params]
  labels_np = np.asarray(labels)
  data = FitData(
    device_array(images),
    jnp.asarray(labels),
    jnp.asarray(fit_pos),
    jnp.asarray(labels_np[fit_pos]),
    device_array(val_images),
    jnp.asarray(val_labels),
  )
  fit_config = dataclasses.replace(config.fit, learning_rate=config.finetune_lr, max_epochs=config.finetune_epochs)

  def tell(phase, fit_state, record, spent=None):
    if events is not None:
      events.epoch_done(EpochDone(phase, num, fit_state, record, spent))

  finetune_ckpt = ckpt("finetune")
  loss = losses.joint_loss(trained, [1.0] * (num - 1), config.fit.augmentation_name, config.fit.compute_dtype)
  result = fit(
    Objective(loss, mask),
    params,
    state,
    data,
    fit_config,
    jax.random.fold_in(key, 1),
    num_classes=model.num_classes,
    name="fine-tune",
    checkpoint=finetune_ckpt,
    log=log,
    on_epoch=lambda s, r: tell(
      "finetune",
      s,
      r,
      flops_before
      + costs.total(costs.finetune_flops(trained.block_costs, epochs=r["epoch"], n_train=r["samples"], n_val=n_val)),
    ),
  )
  flops = costs.finetune_flops(trained.block_costs, epochs=result.epoch, n_train=len(fit_pos), n_val=n_val)
  flops.update(cache=0.0, commit_training=0.0, commit_validation=0.0)
  tuned = merge_blocks(result.best_params, result.best_model_state)

  # Commitment heads on the fine-tuned features: "the exit was right" on the rows they learn from.
  eval_bs = config.fit.eval_batch_size
  h_train, h_val = take(images, commit_pos), val_images
  commit_epochs, commit_ckpts = [], []
  for j, block in enumerate(trained.blocks):
    h_train, probs_train, _ = forward.block_outputs(block, tuned[j], h_train, eval_bs)
    h_val, probs_val, _ = forward.block_outputs(block, tuned[j], h_val, eval_bs)
    correct_train = (np.argmax(probs_train, -1) == labels_np[commit_pos]).astype(np.int32)
    correct_val = (np.argmax(probs_val, -1) == np.asarray(val_labels)).astype(np.int32)
    commit_ckpts.append(ckpt(f"commitment_{j}"))
    commit_result = train_commitment_head(
      block,
      tuned[j],
      h_train,
      correct_train,
      h_val,
      correct_val,
      config.commitment_fit(),
      jax.random.fold_in(key, 10 + j),
      name=f"commitment head {j} (fine-tuned)",
      pad_rows_to=bucket_size(n),
      pad_val_rows_to=bucket_size(n_val),
      on_epoch=lambda s, r: tell("recommit", s, r),
      checkpoint=commit_ckpts[-1],
      log=log,
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
    history=result.history,
  )

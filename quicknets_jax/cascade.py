"""Cascade inference with real exits: later blocks run only on the samples that have not left yet.

Block 0 runs on the whole batch; the exit rule (design.md §1) is applied; the samples that continue
are compacted and handed to block 1, and so on. Compacted batches are padded to a power of two so a
block compiles at most log2(batch) times. Predictions equal `exits.select_exits` on all exits (a test
checks it); unlike that vectorized evaluator, the FLOPs a sample does not need are never computed.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from quicknets_jax import exits
from quicknets_jax.models.base import MultiExitModel


class CascadeResult(NamedTuple):
  prediction: np.ndarray  # [N] int32
  exit_index: np.ndarray  # [N] int32
  qualified: np.ndarray  # [N] bool: the rule fired (False: the fallback answered)
  blocks_run: np.ndarray  # [N] int32: how many blocks each sample went through


def _bucket(n: int, minimum: int = 8) -> int:
  return max(minimum, 1 << (n - 1).bit_length())


@functools.partial(jax.jit, static_argnums=(0, 1))
def _run_block(model: MultiExitModel, j: int, variables, x, threshold):
  """Block j on a batch: features, prediction, confidence and the exit decision, in one call."""
  features, logits, commit = model.blocks[j].apply(variables, x)
  probs = jax.nn.softmax(logits)
  confidence = exits.confidence(probs)
  return features, jnp.argmax(probs, -1).astype(jnp.int32), confidence, commit


def cascade_predict(model: MultiExitModel, variables: Sequence[dict], images, threshold: float,
                    fallback: str = "most_confident", use_commitment: bool = True,
                    batch_size: int = 4096) -> CascadeResult:
  """Early-exit inference that stops computing for a sample once it has left.

  Args:
    model, variables: the trained blocks (only the first len(variables) are used).
    images: [N, ...] inputs.
    threshold: confidence threshold t; fallback / use_commitment as in `exits.select_exits`.
    batch_size: samples entering block 0 together.
  """
  if fallback not in exits.FALLBACKS:
    raise ValueError(f"fallback must be one of {exits.FALLBACKS}, got {fallback!r}")
  images = jnp.asarray(images)
  n = images.shape[0]
  num_exits = len(variables)
  prediction = np.zeros(n, np.int32)
  exit_index = np.zeros(n, np.int32)
  qualified = np.zeros(n, bool)
  blocks_run = np.zeros(n, np.int32)
  threshold = jnp.float32(threshold)
  for start in range(0, n, batch_size):
    rows = np.arange(start, min(start + batch_size, n))
    x = images[start:start + len(rows)]
    if _bucket(len(rows)) > len(rows):  # only a short last batch is padded
      x = jnp.concatenate([x, jnp.zeros((_bucket(len(rows)) - len(rows), *x.shape[1:]), x.dtype)])
    best_conf = np.full(len(rows), -np.inf, np.float32)
    best_pred = np.zeros(len(rows), np.int32)
    best_exit = np.zeros(len(rows), np.int32)
    active = np.arange(len(rows))  # positions within this batch still running
    for j in range(num_exits):
      features, pred, conf, commit = _run_block(model, j, variables[j], x, threshold)
      pred, conf, commit = (np.asarray(a)[:len(active)] for a in (pred, conf, commit))
      blocks_run[rows[active]] = j + 1
      leaves = conf > np.float32(threshold)
      if use_commitment:
        leaves &= commit > 0
      better = conf > best_conf[active]  # strict: ties keep the earlier exit
      best_conf[active[better]] = conf[better]
      best_pred[active[better]] = pred[better]
      best_exit[active[better]] = j
      done = rows[active[leaves]]
      prediction[done], exit_index[done], qualified[done] = pred[leaves], j, True
      if j == num_exits - 1:
        rest = active[~leaves]
        if fallback == "last":
          prediction[rows[rest]], exit_index[rows[rest]] = pred[~leaves], j
        else:
          prediction[rows[rest]], exit_index[rows[rest]] = best_pred[rest], best_exit[rest]
        break
      keep = np.flatnonzero(~leaves)
      active = active[keep]
      if len(active) == 0:
        break
      gather = np.zeros(_bucket(len(keep)), np.int32)
      gather[:len(keep)] = keep
      x = jnp.take(features, jnp.asarray(gather), axis=0)
  return CascadeResult(prediction, exit_index, qualified, blocks_run)


def cascade_flops(result: CascadeResult, model: MultiExitModel) -> np.ndarray:
  """FLOPs per sample actually spent by the cascade: every block and head each sample ran through."""
  cumulative = np.concatenate([[0.0], np.cumsum([c.total for c in model.block_costs])])
  return cumulative[result.blocks_run]

"""Inference on the clock: a trained QuickNet run as a real early-exit cascade (`algorithms.cascade`)
against its end-to-end network, on the same device batches.

The end-to-end network is timed with the QuickNet's own variables: its cost depends on the shapes
only, and those are the same backbone's. Rounds alternate the methods, in an order that rotates from
round to round, so a load change on a shared machine hits both alike; the speed-up is the median over
rounds of end-to-end time / cascade time within the same round.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from quicknets_jax.algorithms.cascade import cascade_flops, cascade_predict_batches
from quicknets_jax.algorithms.forward import all_exit_outputs
from quicknets_jax.core import exits
from quicknets_jax.data.split import Split
from quicknets_jax.models.base import Block, MultiExitModel


def end_to_end_classifier(model: MultiExitModel) -> Callable:
  """jit(variables, x) -> the last exit's predicted class: the network without its early exits.

  Args:
    model: the multi-exit model.

  Returns:
    The jitted function (variables, x) -> [B] predicted classes.
  """

  @jax.jit
  def predict(variables, x):
    for k, block in enumerate(model.blocks):
      x = block.apply(variables[k], x, method=Block.features)
    return jnp.argmax(model.blocks[-1].apply(variables[-1], x, method=Block.classify), -1)

  return predict


def interleaved_seconds(calls: dict, repeats: int, warmup: int = 2) -> dict:
  """Seconds of each call (name -> zero-argument function) in each of `repeats` rounds; a round runs
  every call once, in an order that rotates from round to round. `warmup` untimed rounds first.

  Args:
    calls: the calls to time, by name.
    repeats: timed rounds.
    warmup: untimed rounds before them.

  Returns:
    {name: [repeats] seconds}.
  """
  names = list(calls)
  times = {name: [] for name in names}
  for round_ in range(warmup + repeats):
    for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
      start = time.perf_counter()
      jax.block_until_ready(calls[name]())
      if round_ >= warmup:
        times[name].append(time.perf_counter() - start)
  return {name: np.asarray(t) for name, t in times.items()}


def cascade_speedup(
  model: MultiExitModel,
  variables: Sequence[dict],
  test: Split,
  threshold: float,
  fallback: str = "most_confident",
  batch_size: int = 1024,
  repeats: int = 11,
) -> dict:
  """Times the cascade and the end-to-end network on the images of `test` (see the module doc).

  Args:
    model: the trained QuickNet's model.
    variables: its variables.
    test: the images timed, and their labels (for the accuracy).
    threshold: the exit rule's threshold.
    fallback: the exit rule's fallback.
    batch_size: images per device batch.
    repeats: timed rounds.

  Returns:
    Throughputs (samples/s, medians), `speedup` (end-to-end / cascade time), the cascade's mean FLOPs
    per sample and `flop_ratio`, its accuracy on the labels, and `mismatches`: answers that differ from
    the vectorized evaluator's (`exits.select_exits`; 0 when the cascade is right).
  """
  images, labels = jnp.asarray(test.images), test.labels
  # cut once outside the timed region: slicing copies, a cost that is data loading's, not the network's
  batches = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
  predict = end_to_end_classifier(model)
  result = cascade_predict_batches(model, variables, batches, threshold, fallback)
  probs, commits = all_exit_outputs(model, variables, images)
  want = exits.select_exits(probs, commits, threshold, fallback)
  mismatches = int(
    np.sum((result.prediction != np.asarray(want.prediction)) | (result.exit_index != np.asarray(want.exit_index)))
  )
  seconds = interleaved_seconds(
    {
      "end_to_end": lambda: [predict(variables, b) for b in batches],
      "cascade": lambda: cascade_predict_batches(model, variables, batches, threshold, fallback),
    },
    repeats,
  )
  flops = float(np.mean(cascade_flops(result, model)))
  return dict(
    threshold=float(threshold),
    batch_size=batch_size,
    repeats=repeats,
    end_to_end_samples_per_second=len(images) / float(np.median(seconds["end_to_end"])),
    cascade_samples_per_second=len(images) / float(np.median(seconds["cascade"])),
    speedup=float(np.median(seconds["end_to_end"] / seconds["cascade"])),
    cascade_flops=flops,
    flop_ratio=model.end_to_end_cost() / flops,
    accuracy=float(np.mean(result.prediction == np.asarray(labels))),
    mismatches=mismatches,
  )

"""`python -m benchmarks.inference_speed`: throughput and latency vs threshold for cascade inference
(compacted real exits), the vectorized all-exits evaluator, and the end-to-end network.

Uses a QuickNet trained on the real Fashion-MNIST (seed 0; trained here in about a minute unless
--workdir points at a run with its checkpoints) and the 10,000 test images. The operating threshold is
chosen on the validation split, as in the experiments.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import common
from quicknets_jax import data, exits, models
from quicknets_jax.cascade import cascade_flops, cascade_predict
from quicknets_jax.checkpoint import BlockCheckpointer
from quicknets_jax.models.base import Block
from quicknets_jax.quicknet import QuickNetConfig, predict_exits, train_quicknet

flags.DEFINE_string("workdir", None, "A finished fashion_mnist run whose seed_0 checkpoints to load.")
flags.DEFINE_integer("batch_size", 4096, "Batch for throughput.")
flags.DEFINE_integer("latency_samples", 200, "Single-sample calls timed for latency.")
flags.DEFINE_string("out_dir", common.DEFAULT_OUT, "Where inference_speed.json/.md go.")
FLAGS = flags.FLAGS


def _end_to_end_fn(model):
  @jax.jit
  def fn(variables, x):
    for k, block in enumerate(model.blocks):
      x = block.apply(variables[k], x, method=Block.features)
    return jnp.argmax(model.blocks[-1].apply(variables[-1], x, method=Block.classify), -1)
  return fn


def _vectorized_fn(model):
  @jax.jit
  def fn(variables, x, threshold):
    probs, commits = [], []
    for k, block in enumerate(model.blocks):
      x, logits, commit = block.apply(variables[k], x)
      probs.append(jax.nn.softmax(logits))
      commits.append(commit)
    return exits.select_exits(jnp.stack(probs), jnp.stack(commits), threshold).prediction
  return fn


def _throughput(fn, images, batch_size):
  # slicing inside the timed region, as cascade_predict does for its batches
  seconds = common.time_call(lambda: [fn(images[i:i + batch_size]) for i in range(0, len(images), batch_size)],
                             repeats=5, warmup=1)
  return len(images) / seconds


def main(argv):
  del argv
  ds = data.load_dataset("fashion_mnist")
  model = models.mlp(ds.train_images.shape[1:], ds.num_classes)
  variables = None
  if FLAGS.workdir:
    directory = os.path.join(FLAGS.workdir, "seed_0", "quicknet_checkpoints")
    variables, _, _ = BlockCheckpointer(directory).restore(model.init(jax.random.PRNGKey(0)))
    variables = jax.tree.map(jnp.asarray, variables)
  if not variables:
    variables = train_quicknet(model, ds.train_images, ds.train_labels, ds.val_images, ds.val_labels,
                               QuickNetConfig(), 0, log=lambda m: None).variables
  probs, commit = predict_exits(model, variables, ds.val_images)
  chosen = exits.choose_threshold(exits.sweep_thresholds(probs, commit, ds.val_labels, model.cascade_costs()))
  test = jnp.asarray(ds.test_images)
  e2e, vectorized = _end_to_end_fn(model), _vectorized_fn(model)
  e2e_rate = _throughput(lambda b: e2e(variables, b), test, FLAGS.batch_size)
  one = test[:1]
  e2e_latency = common.time_call(lambda: [e2e(variables, test[i:i + 1]) for i in range(FLAGS.latency_samples)],
                                 repeats=3) / FLAGS.latency_samples
  e2e_flops = model.end_to_end_cost()
  rows = []
  for threshold in sorted({0.0, 0.5, 0.7, 0.9, 0.99, chosen}):
    result = cascade_predict(model, variables, test, threshold, batch_size=FLAGS.batch_size)
    flops = float(np.mean(cascade_flops(result, model)))
    cascade_rate = len(test) / common.time_call(
        lambda: cascade_predict(model, variables, test, threshold, batch_size=FLAGS.batch_size), repeats=5)
    vec_rate = _throughput(lambda b: vectorized(variables, b, jnp.float32(threshold)), test, FLAGS.batch_size)
    latency = common.time_call(
        lambda: [cascade_predict(model, variables, test[i:i + 1], threshold, batch_size=1)
                 for i in range(FLAGS.latency_samples)], repeats=3) / FLAGS.latency_samples
    rows.append(dict(threshold=threshold, chosen=threshold == chosen,
                     accuracy=float(np.mean(result.prediction == ds.test_labels)), cascade_flops=flops,
                     flop_ratio=e2e_flops / flops, cascade_samples_per_second=cascade_rate,
                     vectorized_samples_per_second=vec_rate, end_to_end_samples_per_second=e2e_rate,
                     speedup=cascade_rate / e2e_rate, cascade_latency_ms=1e3 * latency,
                     end_to_end_latency_ms=1e3 * e2e_latency))
  op = next(r for r in rows if r["chosen"])
  lines = [f"Inference on the 10,000 Fashion-MNIST test images, batch {FLAGS.batch_size}; latency = one "
           f"sample per call. End-to-end: {e2e_rate:,.0f} samples/s, {1e3 * e2e_latency:.3f} ms, "
           f"{e2e_flops / 1e6:.3f} MFLOPs per sample.", "",
           "| Threshold | Test acc. (%) | Cascade MFLOPs | FLOP ratio | Cascade samples/s | Vectorized samples/s "
           "| Speed-up vs end-to-end | Cascade latency (ms) |", "|---|---|---|---|---|---|---|---|"]
  lines += [f"| {r['threshold']:.2f}{' (chosen on val)' if r['chosen'] else ''} | {100 * r['accuracy']:.2f} | "
            f"{r['cascade_flops'] / 1e6:.4f} | {r['flop_ratio']:.2f} | {r['cascade_samples_per_second']:,.0f} | "
            f"{r['vectorized_samples_per_second']:,.0f} | {r['speedup']:.2f} | {r['cascade_latency_ms']:.3f} |"
            for r in rows]
  met = op["speedup"] >= 0.9 * op["flop_ratio"]
  lines += ["", f"At the operating threshold {chosen:.2f}: wall-clock speed-up {op['speedup']:.2f} vs FLOP ratio "
                f"{op['flop_ratio']:.2f} (target speed-up ≥ 0.9 × FLOP ratio: {'met' if met else 'not met'})."]
  common.write("inference_speed", dict(chosen_threshold=chosen, rows=rows, target_met=met), "\n".join(lines),
               FLAGS.out_dir)


if __name__ == "__main__":
  app.run(main)

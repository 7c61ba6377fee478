"""`python -m benchmarks.inference_speed`: throughput and latency vs threshold for cascade inference
(compacted real exits), the vectorized all-exits evaluator, and the end-to-end network.

Uses a QuickNet trained on the real Fashion-MNIST (seed 0; trained here in about a minute unless
--workdir points at a run with its checkpoints) and the 10,000 test images. The operating threshold is
chosen on the validation split, as in the experiments. At every threshold the cascade's predictions and
exits are compared with `exits.select_exits` (the table's last column counts the differences).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import common
from quicknets_jax import data, models
from quicknets_jax.algorithms.cascade import cascade_flops, cascade_predict, cascade_predict_batches
from quicknets_jax.algorithms.forward import all_exit_outputs
from quicknets_jax.algorithms.quicknet import QuickNetConfig, train_quicknet
from quicknets_jax.core import exits
from quicknets_jax.training.checkpoint import BlockCheckpointer
from quicknets_jax.workflows.inference_timing import end_to_end_classifier, interleaved_seconds

flags.DEFINE_string("workdir", None, "A finished fashion_mnist run whose seed_0 checkpoints to load.")
flags.DEFINE_integer("batch_size", 4096, "Batch for throughput.")
flags.DEFINE_integer("repeats", 41, "Timed rounds per threshold (each runs every timed method once).")
flags.DEFINE_integer("latency_samples", 200, "Single-sample calls timed for latency.")
flags.DEFINE_string("out_dir", common.DEFAULT_OUT, "Where inference_speed.json/.md go.")
FLAGS = flags.FLAGS


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


def _each(fn, batches):
  return [fn(b) for b in batches]


def main(argv):
  del argv
  common.start()
  ds = data.load_dataset("fashion_mnist")
  model = models.mlp(ds.train.images.shape[1:], ds.num_classes)
  variables = None
  if FLAGS.workdir:
    directory = os.path.join(FLAGS.workdir, "seed_0", "quicknet_checkpoints")
    variables, _, _ = BlockCheckpointer(directory).restore(model.init(jax.random.PRNGKey(0)))
    variables = jax.tree.map(jnp.asarray, variables)
  if not variables:
    variables = train_quicknet(
      model, (ds.train.images, ds.train.labels), (ds.val.images, ds.val.labels), QuickNetConfig(), 0, log=lambda m: None
    ).variables
  probs, commit = all_exit_outputs(model, variables, ds.val.images)
  chosen = exits.choose_threshold(exits.sweep_thresholds(probs, commit, ds.val.labels, model.cascade_costs()))
  test = jnp.asarray(ds.test.images)
  test_probs, test_commit = all_exit_outputs(model, variables, test)
  e2e, vectorized = end_to_end_classifier(model), _vectorized_fn(model)
  bs = FLAGS.batch_size
  # the same device batches for all three methods, cut once outside the timed region (slicing a batch
  # out of the test array copies it, a cost that is data loading's, not the network's)
  batches = [test[i : i + bs] for i in range(0, len(test), bs)]
  singles = [test[i : i + 1] for i in range(FLAGS.latency_samples)]
  e2e_latency = common.time_call(lambda: _each(lambda b: e2e(variables, b), singles), repeats=3) / len(singles)
  e2e_flops = model.end_to_end_cost()
  rows = []
  for threshold in sorted({0.0, 0.5, 0.7, 0.9, 0.99, chosen}):
    result = cascade_predict(model, variables, test, threshold, batch_size=bs)
    want = exits.select_exits(test_probs, test_commit, threshold)
    mismatches = int(
      np.sum((result.prediction != np.asarray(want.prediction)) | (result.exit_index != np.asarray(want.exit_index)))
    )
    flops = float(np.mean(cascade_flops(result, model)))
    t = jnp.float32(threshold)
    seconds = interleaved_seconds(
      {
        "end_to_end": lambda: _each(lambda b: e2e(variables, b), batches),
        "cascade": lambda: cascade_predict_batches(model, variables, batches, threshold),
        # as a first call: no bucket guesses remembered, the first batch's counts are read on the host
        "cascade_cold": lambda: cascade_predict_batches(model, variables, batches, threshold, reuse_guesses=False),
        "vectorized": lambda: _each(lambda b: vectorized(variables, b, t), batches),
      },
      FLAGS.repeats,
    )
    rate = {name: len(test) / float(np.median(s)) for name, s in seconds.items()}
    # speed-up: median over rounds of the end-to-end / cascade time ratio within the same round
    speedup = float(np.median(seconds["end_to_end"] / seconds["cascade"]))
    speedup_cold = float(np.median(seconds["end_to_end"] / seconds["cascade_cold"]))
    latency = common.time_call(
      lambda: _each(lambda b: cascade_predict_batches(model, variables, [b], threshold), singles), repeats=3
    ) / len(singles)
    rows.append(
      dict(
        threshold=threshold,
        chosen=threshold == chosen,
        accuracy=float(np.mean(result.prediction == ds.test.labels)),
        cascade_flops=flops,
        flop_ratio=e2e_flops / flops,
        cascade_samples_per_second=rate["cascade"],
        vectorized_samples_per_second=rate["vectorized"],
        end_to_end_samples_per_second=rate["end_to_end"],
        speedup=speedup,
        speedup_of_median_rates=rate["cascade"] / rate["end_to_end"],
        cascade_cold_samples_per_second=rate["cascade_cold"],
        speedup_cold=speedup_cold,
        cascade_latency_ms=1e3 * latency,
        end_to_end_latency_ms=1e3 * e2e_latency,
        mismatches_vs_select_exits=mismatches,
        blocks_run_fractions=(np.bincount(result.blocks_run, minlength=model.num_blocks + 1)[1:] / len(test)).tolist(),
      )
    )
  op = next(r for r in rows if r["chosen"])
  lines = [
    f"Inference on the 10,000 Fashion-MNIST test images in batches of {bs} (the same device batches, "
    f"cut once beforehand, for all three methods; per threshold, {FLAGS.repeats} interleaved rounds "
    f"after 2 warm-up rounds: throughputs are medians, the speed-up is the median of the rounds' "
    f"end-to-end / cascade time ratios; 'first call': the cascade without the bucket guesses a previous "
    f"call left, reading the first batch's counts instead); latency = one sample per call "
    f"(end-to-end: {1e3 * e2e_latency:.3f} ms). End-to-end: {e2e_flops / 1e6:.3f} MFLOPs per sample.",
    "",
    "| Threshold | Test acc. (%) | Cascade MFLOPs | FLOP ratio | Blocks run 1/2/3 (%) | End-to-end samples/s "
    "| Cascade samples/s | Speed-up vs end-to-end | Speed-up, first call | Vectorized samples/s "
    "| Cascade latency (ms) | Differs from select_exits |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  lines += [
    f"| {r['threshold']:.2f}{' (chosen on val)' if r['chosen'] else ''} | {100 * r['accuracy']:.2f} | "
    f"{r['cascade_flops'] / 1e6:.4f} | {r['flop_ratio']:.2f} | "
    f"{'/'.join(f'{100 * f:.0f}' for f in r['blocks_run_fractions'])} | "
    f"{r['end_to_end_samples_per_second']:,.0f} | {r['cascade_samples_per_second']:,.0f} | "
    f"{r['speedup']:.2f} | {r['speedup_cold']:.2f} | {r['vectorized_samples_per_second']:,.0f} | "
    f"{r['cascade_latency_ms']:.3f} | {r['mismatches_vs_select_exits']} |"
    for r in rows
  ]
  met = op["speedup"] >= 0.9 * op["flop_ratio"]
  lines += [
    "",
    f"At the operating threshold {chosen:.2f}: wall-clock speed-up {op['speedup']:.2f} vs FLOP ratio "
    f"{op['flop_ratio']:.2f} (target speed-up ≥ 0.9 × FLOP ratio = {0.9 * op['flop_ratio']:.2f}: "
    f"{'met' if met else 'not met'}; as a first call {op['speedup_cold']:.2f}).",
  ]
  common.write(
    "inference_speed",
    dict(chosen_threshold=chosen, rows=rows, target_met=met, batch_size=bs, repeats=FLAGS.repeats),
    "\n".join(lines),
    FLAGS.out_dir,
  )


if __name__ == "__main__":
  app.run(main)

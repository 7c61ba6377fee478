"""`python -m benchmarks.train_speed`: samples/s of the jitted per-block and end-to-end training steps.

A whole epoch runs inside one jit (the trainer's own `trainer.ON_DEVICE`), so the numbers include the
on-device batch gathering and the class-balanced draw, not Python dispatch. Utilisation = model FLOP/s
(3 × forward FLOPs per trained sample, docs/method.md, FLOP accounting) / the f32 matmul peak measured in the same run.
"""

from __future__ import annotations

import jax
from absl import app, flags

from benchmarks import common
from quicknets_jax import models
from quicknets_jax.algorithms.end_to_end import end_to_end_parts
from quicknets_jax.models.base import parts_mask
from quicknets_jax.training import losses
from quicknets_jax.training.trainer import Objective

flags.DEFINE_list("batch_sizes", ["128", "1024"], "Batch sizes to time.")
flags.DEFINE_integer("samples", 54000, "Samples per timed epoch.")
flags.DEFINE_string("out_dir", common.DEFAULT_OUT, "Where train_speed.json/.md go.")
FLAGS = flags.FLAGS


def _epoch_rate(objective, params, state, inputs, labels, batch_size, n):
  run = common.epoch_runner(objective, params, state, inputs, labels, batch_size, 0, host_loop=False, samples=n)
  seconds = common.time_call(run, repeats=3, warmup=1)
  return n / seconds


def main(argv):
  del argv
  common.start()
  peak = common.matmul_peak()
  model = models.mlp((28, 28, 1), 10)
  variables = model.init(jax.random.PRNGKey(0))
  n = FLAGS.samples
  key = jax.random.PRNGKey(1)
  images = jax.random.normal(key, (n, 28, 28, 1))
  labels = jax.random.randint(key, (n,), 0, 10)
  rows = []
  features = images
  for j, block in enumerate(model.blocks):
    params = variables[j]["params"]
    objective = Objective(losses.BlockLoss(block), parts_mask(params, ("subnet", "exit_head")))
    cost = model.block_costs[j]
    for bs in map(int, FLAGS.batch_sizes):
      rate = _epoch_rate(objective, params, {}, features, labels, bs, n)
      flops = rate * 3 * (cost.subnet + cost.exit_head)
      rows.append(
        dict(
          step=f"block {j}", batch_size=bs, samples_per_second=rate, flops_per_second=flops, utilisation=flops / peak
        )
      )
    features = jax.jit(lambda v, x, b=block: b.apply(v, x, method=b.features))(variables[j], features)
  params = [v["params"] for v in variables]
  objective = Objective(losses.EndToEndLoss(model), end_to_end_parts(params))
  for bs in map(int, FLAGS.batch_sizes):
    rate = _epoch_rate(objective, params, [{}, {}, {}], images, labels, bs, n)
    flops = rate * 3 * model.end_to_end_cost()
    rows.append(
      dict(step="end-to-end", batch_size=bs, samples_per_second=rate, flops_per_second=flops, utilisation=flops / peak)
    )
  lines = [
    f"Training step speed, MLP 784-150-150-150 (whole epoch of {n} samples in one jit); "
    f"f32 matmul peak measured in this run: {peak / 1e9:.1f} GFLOP/s.",
    "",
    "| Step | Batch | Samples/s | GFLOP/s | Utilisation of matmul peak |",
    "|---|---|---|---|---|",
  ]
  lines += [
    f"| {r['step']} | {r['batch_size']} | {r['samples_per_second']:,.0f} | "
    f"{r['flops_per_second'] / 1e9:.1f} | {100 * r['utilisation']:.0f} % |"
    for r in rows
  ]
  common.write("train_speed", dict(matmul_peak_flops=peak, rows=rows), "\n".join(lines), FLAGS.out_dir)


if __name__ == "__main__":
  app.run(main)

"""`python -m benchmarks.first_block_cost`: what the conv net's first block costs a training step, inside
end-to-end training and as QuickNet's block 0 trained alone.

The network is the conv study's (`experiments/configs/fashion_mnist_vgg.flags`: VGG-11 at 1/8 width, 8
blocks, a 64-64-10 classifier, 28×28×1 inputs). Three training steps go through the trainer's own epoch
driver (the path `fit` takes on this backend), at the same batch size, in alternating rounds (order
rotating, so a load change on a shared machine hits all three alike):

- *end to end*: the whole network, one loss at the last exit;
- *end to end without block 0*: blocks 1..7 end to end on block 0's output shape — the rest of the
  end-to-end step, so that the first block's seconds inside it are the difference of the two;
- *QuickNet block 0*: block 0's subnet and exit on the images, as Algorithm 1 trains it.

It prints each step's milliseconds and training FLOP rate (3 × forward FLOPs of the trained parts per
sample, the convention of every results.json) and the first block's milliseconds per step inside
end-to-end training against QuickNet's block 0: a block that is slow per FLOP (a memory-bound
convolution on one input channel, its exit's pooling) is slow in both. Inputs are random: speed does not
depend on the values.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from absl import app, flags

from benchmarks import common
from quicknets_jax import models
from quicknets_jax.algorithms.end_to_end import end_to_end_parts
from quicknets_jax.models.base import EXIT, SUBNET, parts_mask, split_blocks, split_variables
from quicknets_jax.training import losses
from quicknets_jax.training.trainer import Objective, loop_convolutions

flags.DEFINE_integer("batch_size", 128, "Training batch size of every step (the conv study's).")
flags.DEFINE_integer("steps", 100, "Training steps per timed epoch.")
flags.DEFINE_integer("rounds", 15, "Alternating rounds (each times one epoch of every step).")
flags.DEFINE_string("out_dir", common.DEFAULT_OUT, "Where first_block_cost.json/.md go.")
FLAGS = flags.FLAGS

SHAPE = (28, 28, 1)
SIZES = dict(width=8, classifier_width=64)  # experiments/configs/fashion_mnist_vgg.flags


def end_to_end_objective(model) -> tuple[Objective, list, list]:
  """(objective, params, model state) of `model` trained end to end: every subnet and the last exit."""
  params, state = split_blocks(model.init(jax.random.PRNGKey(0)))
  return Objective(losses.EndToEndLoss(model), end_to_end_parts(params)), params, state


def without_first_block(model):
  """`model` from its second block on, taking the first block's output features as its input."""
  return dataclasses.replace(
    model,
    blocks=model.blocks[1:],
    input_shape=model.feature_shapes()[0],
    block_costs=model.block_costs[1:],
    block_macs=None,
  )


def main(argv):
  del argv
  common.start()
  bs, steps = FLAGS.batch_size, FLAGS.steps
  model = models.build_model("vgg", SHAPE, 10, cfg="vgg11", num_blocks=8, **SIZES)
  rest = without_first_block(model)
  key = jax.random.PRNGKey(1)
  images = jax.random.normal(key, (bs * 4, *SHAPE))
  labels = jax.random.randint(key, (bs * 4,), 0, 10)
  features = jax.random.normal(key, (bs * 4, *rest.input_shape))

  block0 = model.blocks[0]
  p0, s0 = split_variables(model.init(jax.random.PRNGKey(0))[0])
  cases = {
    "end to end": (*end_to_end_objective(model), images, 3.0 * model.end_to_end_cost()),
    "end to end without block 0": (*end_to_end_objective(rest), features, 3.0 * rest.end_to_end_cost()),
    "QuickNet block 0": (
      Objective(losses.BlockLoss(block0), parts_mask(p0, (SUBNET, EXIT))),
      p0,
      s0,
      images,
      3.0 * (model.block_costs[0].subnet + model.block_costs[0].exit_head),
    ),
  }
  with loop_convolutions():
    runners = {
      name: common.epoch_runner(objective, params, state, inputs, labels, bs, steps)
      for name, (objective, params, state, inputs, _) in cases.items()
    }
    for run in runners.values():  # compile, warm up
      jax.block_until_ready(run())
    names = list(runners)
    seconds = {name: [] for name in names}
    for r in range(FLAGS.rounds):
      for name in names[r % len(names) :] + names[: r % len(names)]:
        seconds[name].append(common.time_call(runners[name], repeats=1, warmup=0))
  ms = {name: 1e3 * np.asarray(s) / steps for name, s in seconds.items()}
  inside = ms["end to end"] - ms["end to end without block 0"]  # per round: the same load on both
  rows = [
    dict(
      step=name,
      ms_per_step=float(np.median(ms[name])),
      ms_range=[float(ms[name].min()), float(ms[name].max())],
      training_gflops_per_second=cases[name][4] * bs / (float(np.median(ms[name])) / 1e3) / 1e9,
      training_flops_per_sample=cases[name][4],
    )
    for name in names
  ]
  first_block = dict(
    inside_end_to_end_ms=float(np.median(inside)),
    inside_end_to_end_range=[float(inside.min()), float(inside.max())],
    quicknet_block0_ms=rows[2]["ms_per_step"],
    quicknet_block0_over_inside=float(np.median(ms["QuickNet block 0"] / inside)),
  )
  lines = [
    f"VGG-11/8 on 28×28×1, training steps at batch {bs} through the trainer's epoch driver on "
    f"{jax.default_backend().upper()}, {steps} steps per epoch, {FLAGS.rounds} alternating rounds, medians:",
    "",
    "| Step | ms per step (range) | Training GFLOP/s |",
    "|---|---|---|",
    *(
      f"| {r['step']} | {r['ms_per_step']:.2f} ({r['ms_range'][0]:.2f}–{r['ms_range'][1]:.2f}) | "
      f"{r['training_gflops_per_second']:.1f} |"
      for r in rows
    ),
    "",
    f"The first block inside the end-to-end step (end to end − end to end without block 0, per round): "
    f"{first_block['inside_end_to_end_ms']:.2f} ms (range {first_block['inside_end_to_end_range'][0]:.2f}–"
    f"{first_block['inside_end_to_end_range'][1]:.2f}); QuickNet's block 0 step (its subnet and its exit): "
    f"{first_block['quicknet_block0_ms']:.2f} ms, {first_block['quicknet_block0_over_inside']:.2f}× (median of "
    "the rounds' ratios).",
  ]
  payload = dict(batch_size=bs, steps=steps, rounds=FLAGS.rounds, rows=rows, first_block=first_block)
  common.write("first_block_cost", payload, "\n".join(lines), FLAGS.out_dir)


if __name__ == "__main__":
  app.run(main)

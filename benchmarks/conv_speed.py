"""`python -m benchmarks.conv_speed`: training and inference speed of the convolutional QuickNets on CPU.

Rows: the reduced VGG-11 of experiments/configs/fashion_mnist_conv.flags (channels 16..128,
classifier 128, 28×28×1 inputs) end to end and per QuickNet block (each block on its cached input
features, as Algorithm 1 trains it) at batch 128 and 512; the full-width VGG-11 on 32×32×3 end to end
at batch 128; forward-only images/s of each network; and the compile seconds of each training step.
Everything goes through the trainer's own epoch function (`training.trainer.make_epoch_fn`, with the
path `fit` picks on this backend), so the numbers are what a user's runs get. Inputs are random: speed
does not depend on the values.

`--torch` adds the same networks as plain PyTorch CPU loops (BN, 2×2 max pools, Adam, the same batch
sizes, `torch.set_num_threads` = the cores JAX uses), when torch is installed (`pip install torch==2.13.0`
takes the CPU build from this machine's disk): the reference the targets are stated against.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np
from absl import app, flags

from benchmarks import common
from quicknets_jax import models
from quicknets_jax.algorithms.end_to_end import end_to_end_parts
from quicknets_jax.models import layers
from quicknets_jax.models.base import EXIT, SUBNET, Block, parts_mask, split_blocks, split_variables
from quicknets_jax.models.vgg import CONFIGS as VGG_CONFIGS
from quicknets_jax.training import losses
from quicknets_jax.training.trainer import (
  Objective,
  loop_convolutions,
)

flags.DEFINE_list("batch_sizes", ["128", "512"], "Batch sizes of the reduced VGG-11 rows.")
flags.DEFINE_integer("steps", 24, "Training steps timed per row (after one untimed warm-up epoch).")
flags.DEFINE_bool("full_width", True, "Also time the full-width VGG-11 on 32×32×3 at batch 128.")
flags.DEFINE_bool("per_block", True, "Also time each QuickNet block of the reduced VGG-11.")
flags.DEFINE_bool("torch", False, "Also time plain PyTorch CPU loops over the same networks (needs torch).")
flags.DEFINE_enum(
  "conv_impl",
  "trainer",
  ["trainer", "native", "patches"],
  "How training steps convolve: trainer (what `fit` does: patch products in its loops on CPU), native "
  "(XLA's convolution, which on CPU makes the trainer step from a Python loop: the trainer before its patch-product convolutions) or "
  "patches. Forward rows always use the default (XLA's convolution).",
)
flags.DEFINE_string("out_dir", common.DEFAULT_OUT, "Where conv_speed.json/.md go.")
FLAGS = flags.FLAGS

REDUCED = dict(width=16, classifier_width=128)  # experiments/configs/fashion_mnist_conv.flags
FULL = dict(width=64, classifier_width=4096)  # experiments/configs/cifar10.flags


def _training_context():
  """The convolutions training steps are traced with (`--conv_impl`)."""
  if FLAGS.conv_impl == "trainer":
    return loop_convolutions()
  return layers.conv_implementation(FLAGS.conv_impl)


def epoch_rate(objective, params, state, inputs, labels, batch_size: int, steps: int) -> tuple[float, float]:
  """(samples/s of `steps` training steps, compile seconds) through the trainer's epoch function."""
  with _training_context():
    return common.epoch_rate(objective, params, state, inputs, labels, batch_size, steps)


def forward_rate(model, variables, inputs, batch_size: int) -> float:
  """Images/s of the end-to-end network's forward pass (inference mode) on batches of `batch_size`."""

  @jax.jit
  def fn(variables, x):
    for k, block in enumerate(model.blocks):
      x = block.apply(variables[k], x, method=Block.features)
    return model.blocks[-1].apply(variables[-1], x, method=Block.classify)

  x = inputs[:batch_size]
  seconds = common.time_call(lambda: fn(variables, x), repeats=5, warmup=1)
  return batch_size / seconds


def _data(shape, n: int, key: int = 1):
  k = jax.random.PRNGKey(key)
  return jax.random.normal(k, (n, *shape)), jax.random.randint(k, (n,), 0, 10)


def jax_rows(shape, sizes: dict, batch_sizes, steps: int, per_block: bool, name: str) -> list:
  """Rows of one VGG: end to end at each batch size, then (`per_block`) each block at each batch size."""
  model = models.build_model("vgg", shape, 10, cfg="vgg11", num_blocks=8, **sizes)
  variables = model.init(jax.random.PRNGKey(0))
  params, state = split_blocks(variables)
  objective = Objective(losses.EndToEndLoss(model), end_to_end_parts(params))
  inputs, labels = _data(shape, max(batch_sizes) * 4)
  rows = []
  for bs in batch_sizes:
    rate, first = epoch_rate(objective, params, state, inputs, labels, bs, steps)
    rows.append(dict(network=name, step="end-to-end", batch_size=bs, samples_per_second=rate, compile_seconds=first))
  rows.append(
    dict(
      network=name,
      step="forward (inference)",
      batch_size=max(batch_sizes),
      samples_per_second=forward_rate(model, variables, inputs, max(batch_sizes)),
      compile_seconds=None,
    )
  )
  if not per_block:
    return rows
  features = inputs
  for j, block in enumerate(model.blocks):
    p, s = split_variables(variables[j])
    block_objective = Objective(losses.BlockLoss(block), parts_mask(p, (SUBNET, EXIT)))
    for bs in batch_sizes:
      rate, first = epoch_rate(block_objective, p, s, features, labels, bs, steps)
      rows.append(dict(network=name, step=f"block {j}", batch_size=bs, samples_per_second=rate, compile_seconds=first))
    features = jax.jit(lambda v, a, b=block: b.apply(v, a, method=Block.features))(variables[j], features)
  return rows


def torch_vgg(shape, sizes: dict):
  """The VGG of `jax_rows` as a PyTorch module (BN, 2×2 max pools, the same widths)."""
  import torch  # optional: only with --torch

  torch.set_num_threads(os.cpu_count() or 1)
  h, w, c = shape
  layers_, channels, side = [], c, h
  for item in VGG_CONFIGS["vgg11"]:
    if item == "M":
      if side >= 2:
        layers_.append(torch.nn.MaxPool2d(2))
        side //= 2
      continue
    out = max(1, item * sizes["width"] // 64)
    layers_ += [torch.nn.Conv2d(channels, out, 3, padding=1, bias=False), torch.nn.BatchNorm2d(out), torch.nn.ReLU()]
    channels = out
  width = sizes["classifier_width"]
  return torch.nn.Sequential(
    *layers_,
    torch.nn.Flatten(),
    torch.nn.Linear(channels * side * side, width),
    torch.nn.ReLU(),
    torch.nn.Linear(width, width),
    torch.nn.ReLU(),
    torch.nn.Linear(width, 10),
  )


def torch_rows(shape, sizes: dict, batch_sizes, steps: int, name: str) -> list:
  """The same VGG end to end as a plain PyTorch CPU training loop (the reference these timings are compared with)."""
  import torch  # optional: only with --torch

  h, w, c = shape
  net = torch_vgg(shape, sizes)
  optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
  rows = []
  for bs in batch_sizes:
    x, y = torch.randn(bs, c, h, w), torch.randint(0, 10, (bs,))

    def step():
      optimizer.zero_grad()
      torch.nn.functional.cross_entropy(net(x), y).backward()
      optimizer.step()

    for _ in range(3):
      step()
    start = time.perf_counter()
    for _ in range(steps):
      step()
    rows.append(
      dict(
        network=name,
        step="end-to-end (PyTorch loop)",
        batch_size=bs,
        samples_per_second=steps * bs / (time.perf_counter() - start),
        compile_seconds=None,
      )
    )
  with torch.no_grad():
    net.eval()
    bs = max(batch_sizes)
    x = torch.randn(bs, c, h, w)
    net(x)
    start = time.perf_counter()
    for _ in range(5):
      net(x)
    rows.append(
      dict(
        network=name,
        step="forward (PyTorch)",
        batch_size=bs,
        samples_per_second=5 * bs / (time.perf_counter() - start),
        compile_seconds=None,
      )
    )
  return rows


def paired_ratio(shape, sizes: dict, batch_size: int, steps: int, rounds: int) -> dict:
  """JAX (through the trainer's epoch) against the PyTorch loop on the same end-to-end VGG, timed in
  alternating rounds (order rotating), so a load change on a shared machine hits both alike: the median
  over rounds of JAX samples/s ÷ PyTorch samples/s, with both medians."""
  import torch  # optional: only with --torch

  model = models.build_model("vgg", shape, 10, cfg="vgg11", num_blocks=8, **sizes)
  params, state = split_blocks(model.init(jax.random.PRNGKey(0)))
  objective = Objective(losses.EndToEndLoss(model), end_to_end_parts(params))
  inputs, labels = _data(shape, batch_size * steps)
  n = steps * batch_size
  with _training_context():
    run = common.epoch_runner(objective, params, state, inputs, labels, batch_size, steps)

  def jax_epoch():
    with _training_context():
      jax.block_until_ready(run())

  net = torch_vgg(shape, sizes)
  optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
  x, y = torch.randn(batch_size, shape[2], shape[0], shape[1]), torch.randint(0, 10, (batch_size,))

  def torch_epoch():
    for _ in range(steps):
      optimizer.zero_grad()
      torch.nn.functional.cross_entropy(net(x), y).backward()
      optimizer.step()

  jax_epoch(), torch_epoch()  # compile, warm up
  rates = {"jax": [], "torch": []}
  for r in range(rounds):
    for name, fn in (
      (("jax", jax_epoch), ("torch", torch_epoch)) if r % 2 == 0 else (("torch", torch_epoch), ("jax", jax_epoch))
    ):
      start = time.perf_counter()
      fn()
      rates[name].append(n / (time.perf_counter() - start))
  ratios = np.asarray(rates["jax"]) / np.asarray(rates["torch"])
  return dict(
    batch_size=batch_size,
    rounds=rounds,
    jax_samples_per_second=float(np.median(rates["jax"])),
    torch_samples_per_second=float(np.median(rates["torch"])),
    ratio=float(np.median(ratios)),
    ratio_range=[float(ratios.min()), float(ratios.max())],
  )


def main(argv):
  del argv
  common.start()
  batch_sizes = [int(b) for b in FLAGS.batch_sizes]
  reduced = "VGG-11/16 on 28×28×1"
  rows = jax_rows((28, 28, 1), REDUCED, batch_sizes, FLAGS.steps, FLAGS.per_block, reduced)
  paired = []
  if FLAGS.torch:
    rows += torch_rows((28, 28, 1), REDUCED, batch_sizes, FLAGS.steps, reduced)
    paired = [paired_ratio((28, 28, 1), REDUCED, bs, FLAGS.steps, 7) for bs in batch_sizes]
  if FLAGS.full_width:
    full = "VGG-11 on 32×32×3"
    rows += jax_rows((32, 32, 3), FULL, [128], max(4, FLAGS.steps // 4), False, full)
    if FLAGS.torch:
      rows += torch_rows((32, 32, 3), FULL, [128], max(4, FLAGS.steps // 4), full)
  lines = [
    f"Convolutional training on {jax.default_backend().upper()} through the trainer's epoch function "
    f"({FLAGS.steps} steps per row after a warm-up epoch; random inputs; convolutions: {FLAGS.conv_impl}).",
    "",
    "| Network | Step | Batch | Samples/s | Compile (s) |",
    "|---|---|---|---|---|",
  ]
  for r in rows:
    first = "–" if r["compile_seconds"] is None else f"{r['compile_seconds']:.1f}"
    lines.append(f"| {r['network']} | {r['step']} | {r['batch_size']} | {r['samples_per_second']:,.0f} | {first} |")
  for p in paired:
    lines.append(
      f"\nPaired with the PyTorch loop ({reduced}, end to end, batch {p['batch_size']}, {p['rounds']} alternating "
      f"rounds): JAX {p['jax_samples_per_second']:,.0f} vs PyTorch {p['torch_samples_per_second']:,.0f} samples/s; "
      f"JAX ÷ PyTorch {p['ratio']:.2f} (median of the rounds' ratios; range {p['ratio_range'][0]:.2f}–"
      f"{p['ratio_range'][1]:.2f})."
    )
  name = "conv_speed" if FLAGS.conv_impl == "trainer" else f"conv_speed_{FLAGS.conv_impl}"
  payload = dict(rows=rows, paired=paired, conv_impl=FLAGS.conv_impl, xla_flags=os.environ.get("XLA_FLAGS", ""))
  common.write(name, payload, "\n".join(lines), FLAGS.out_dir)


if __name__ == "__main__":
  app.run(main)

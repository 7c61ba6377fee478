"""`python -m benchmarks.accelerator`: what one GPU/TPU (or this CPU) does with the CIFAR-10 VGG-11 QuickNet.

In one run, ≤ 5 minutes on one GPU at the default size:
  * the device's measured matmul peak in bf16 and f32 (a large square matmul, median of 10);
  * training samples/s of VGG-11 (experiments/configs/cifar10.flags: width 64, classifier 4096, 8
    blocks) on CIFAR-10-shaped inputs (32×32×3), end to end and per QuickNet block (each block on
    its cached input features, as Algorithm 1 trains it), in bf16 and f32 (`--dtype`), through the
    trainer's own epoch function on the path `fit` takes on this backend; the training FLOP rate (3 ×
    forward FLOPs per trained sample, docs/method.md, FLOP accounting) as a fraction of the measured peak of the same
    dtype; and the compile seconds of each epoch function;
  * cascade inference images/s against the end-to-end network at 3 thresholds (inference runs in f32,
    as the library deploys), with the mean exit and the FLOP ratio at each.

Inputs are random (speed does not depend on the values) and the network is not trained, so the
thresholds are the 25th, 50th and 75th percentiles of exit 0's confidence on the inputs, and the
commitment heads are set to always commit (`committing`): 3/4, 1/2 and 1/4 of the samples leave at
exit 0, and of the rest some at every later exit. `--size=small` (the default on CPU) shrinks the network, batch and step counts so that
the whole benchmark runs in about a minute on 2 CPU cores; its numbers only check the pipeline.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import common
from quicknets_jax import models
from quicknets_jax.algorithms.forward import all_exit_outputs
from quicknets_jax.core import exits
from quicknets_jax.data.split import Split
from quicknets_jax.models.base import EXIT, SUBNET, Block, parts_mask, split_blocks, split_variables
from quicknets_jax.training import losses
from quicknets_jax.training.schedule import resolve_dtype
from quicknets_jax.training.trainer import Objective, loop_convolutions
from quicknets_jax.workflows.inference_timing import cascade_speedup

# full: the CIFAR-10 VGG-11 of experiments/configs/cifar10.flags; small: a pipeline check for CPUs.
SIZES = {
  "full": dict(width=64, classifier_width=4096, batch_size=256, steps=20, matmul=8192, images=8192, infer_batch=1024),
  "small": dict(width=4, classifier_width=32, batch_size=16, steps=2, matmul=512, images=256, infer_batch=64),
}
SHAPE = (32, 32, 3)
DTYPES = ("bfloat16", "float32")

flags.DEFINE_enum("size", "auto", ["auto", "full", "small"], "Problem size (auto: small on CPU, full elsewhere).")
flags.DEFINE_list("dtypes", list(DTYPES), "Compute dtypes of the training rows.")
flags.DEFINE_integer("max_blocks", None, "Time only the first N QuickNet blocks per dtype (default: all 8).")
flags.DEFINE_integer("batch_size", None, "Training batch (default: the size's).")
flags.DEFINE_integer("steps", None, "Training steps timed per row (default: the size's).")
flags.DEFINE_string("out_dir", common.DEFAULT_OUT, "Where accelerator.json/.md go.")
FLAGS = flags.FLAGS


def training_rows(model, dtype: str, batch_size: int, steps: int, max_blocks, peak: float) -> list:
  """End-to-end and per-block training rows of one compute dtype."""
  compute_dtype = resolve_dtype(dtype)
  variables = model.init(jax.random.PRNGKey(0))
  params, state = split_blocks(variables)
  key = jax.random.PRNGKey(1)
  inputs = jax.random.normal(key, (batch_size * 4, *SHAPE))
  labels = jax.random.randint(key, (batch_size * 4,), 0, 10)
  last = model.num_blocks - 1
  mask = [parts_mask(p, (SUBNET,) + ((EXIT,) if k == last else ())) for k, p in enumerate(params)]
  rows = []

  def row(step, objective, p, s, x, forward_flops):
    with loop_convolutions():
      rate, compile_seconds = common.epoch_rate(objective, p, s, x, labels, batch_size, steps)
    flop_rate = 3.0 * forward_flops * rate  # a trained sample costs 3 forwards (docs/method.md, FLOP accounting)
    rows.append(
      dict(
        dtype=dtype,
        step=step,
        batch_size=batch_size,
        samples_per_second=rate,
        train_flops_per_second=flop_rate,
        peak_fraction=flop_rate / peak,
        compile_seconds=compile_seconds,
      )
    )

  row(
    "end-to-end",
    Objective(losses.EndToEndLoss(model, None, compute_dtype), mask),
    params,
    state,
    inputs,
    model.end_to_end_cost(),
  )
  features = inputs
  for j, block in enumerate(model.blocks[: max_blocks or model.num_blocks]):
    p, s = split_variables(variables[j])
    cost = model.block_costs[j]
    objective = Objective(losses.BlockLoss(block, None, None, compute_dtype), parts_mask(p, (SUBNET, EXIT)))
    row(f"block {j}", objective, p, s, features, cost.subnet + cost.exit_head)
    features = jax.jit(lambda v, a, b=block: b.apply(v, a, method=Block.features))(variables[j], features)
  return rows


def committing(variables: list) -> list:
  """`variables` with every commitment head's output bias at +10: untrained heads then always commit,
  and the confidence threshold alone decides who leaves where."""
  out = []
  for v in variables:
    head = v["params"]["commit_head"]
    bias = head["out"]["bias"]
    head = {**head, "out": {**head["out"], "bias": jnp.full_like(bias, 10.0)}}
    out.append({**v, "params": {**v["params"], "commit_head": head}})
  return out


def inference_rows(model, images: int, batch_size: int) -> list:
  """Cascade vs end-to-end images/s at the 25/50/75th percentiles of exit 0's confidence."""
  variables = committing(model.init(jax.random.PRNGKey(0)))
  x = jax.random.normal(jax.random.PRNGKey(2), (images, *SHAPE))
  labels = np.asarray(jax.random.randint(jax.random.PRNGKey(3), (images,), 0, 10))
  probs, _ = all_exit_outputs(model, variables, x, batch_size)
  confidence = np.asarray(exits.confidence(probs[0]))
  rows = []
  for q in (25, 50, 75):
    threshold = float(np.percentile(confidence, q))
    out = cascade_speedup(model, variables, Split(x, labels), threshold, batch_size=batch_size, repeats=5)
    rows.append(dict(percentile=q, **out))
  return rows


def main(argv):
  del argv
  common.start()
  backend = jax.default_backend()
  size = FLAGS.size if FLAGS.size != "auto" else ("small" if backend == "cpu" else "full")
  cfg = SIZES[size]
  batch_size = FLAGS.batch_size or cfg["batch_size"]
  steps = FLAGS.steps or cfg["steps"]
  start = time.perf_counter()
  model = models.build_model(
    "vgg", SHAPE, 10, cfg="vgg11", num_blocks=8, width=cfg["width"], classifier_width=cfg["classifier_width"]
  )
  peaks = {d: common.matmul_peak(cfg["matmul"], dtype=jnp.dtype(d)) for d in DTYPES}
  rows = []
  for dtype in FLAGS.dtypes:
    if dtype not in DTYPES:
      raise app.UsageError(f"--dtypes takes {', '.join(DTYPES)}, got {dtype!r}")
    rows += training_rows(model, dtype, batch_size, steps, FLAGS.max_blocks, peaks[dtype])
  inference = inference_rows(model, cfg["images"], cfg["infer_batch"])
  seconds = time.perf_counter() - start
  device = jax.devices()[0]
  lines = [
    f"VGG-11 ({size}: width {cfg['width']}, classifier {cfg['classifier_width']}, 8 blocks) on 32×32×3 on "
    f"{device.platform.upper()} ({device.device_kind}); {steps} steps of batch {batch_size} per row; "
    f"whole benchmark {seconds:.0f} s.",
    "",
    "Measured matmul peak ("
    + ", ".join(f"{d}: {peaks[d] / 1e12:.3g} TFLOP/s" for d in DTYPES)
    + f", {cfg['matmul']}² × {cfg['matmul']}²).",
    "",
    "| dtype | Step | Samples/s | Training TFLOP/s | Of the dtype's peak | Compile (s) |",
    "|---|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
      f"| {r['dtype']} | {r['step']} | {r['samples_per_second']:,.0f} | {r['train_flops_per_second'] / 1e12:.3g} | "
      f"{100 * r['peak_fraction']:.1f} % | {r['compile_seconds']:.1f} |"
    )
  lines += [
    "",
    f"Cascade inference (f32, untrained network, batch {cfg['infer_batch']}, {cfg['images']} images):",
    "",
    "| Threshold (exit-0 confidence percentile) | Cascade img/s | End-to-end img/s | Speed-up | FLOP ratio |",
    "|---|---|---|---|---|",
  ]
  for r in inference:
    lines.append(
      f"| {r['threshold']:.3g} ({r['percentile']}th) | {r['cascade_samples_per_second']:,.0f} | "
      f"{r['end_to_end_samples_per_second']:,.0f} | {r['speedup']:.2f}× | {r['flop_ratio']:.2f}× |"
    )
  payload = dict(
    size=size,
    backend=backend,
    device_kind=device.device_kind,
    batch_size=batch_size,
    steps=steps,
    matmul_peak_flops_per_second=peaks,
    training=rows,
    inference=inference,
    seconds=seconds,
  )
  common.write(
    "accelerator" if size == "full" else f"accelerator_{size}_{backend}", payload, "\n".join(lines), FLAGS.out_dir
  )


if __name__ == "__main__":
  app.run(main)

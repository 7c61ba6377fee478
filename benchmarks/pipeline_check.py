"""`python -m benchmarks.pipeline_check`: the wall-clock model of pipelined decoupled training
(`quicknets_jax.algorithms.pipeline_cost`) against pipelined epochs measured on K host devices.

For the Table-1 MLP and the conv study's VGG-11/8 on the first `--max_train` Fashion-MNIST training
images: the step times of every block are measured on one device (`measure_steps`), then one decoupled
run per K (`--schedule=decoupled --pipeline_stages=K`, 2 epochs; the second, compiled already, is timed)
on K of 8 host devices. Host devices share this machine's cores, so a tick costs the work of every stage
one after another, not the slowest stage's: the check compares the measured epoch with the model's
(T + K − 1) × (sum of the stages) — which tests the tick count, the bubbles and the pipeline's own
overheads (the switch, the transfers, the compaction) — and shows beside it what K devices of their own
would take, (T + K − 1) × (slowest stage).
"""

from __future__ import annotations

import os

# 8 host devices: before JAX starts (this is an entry point, not a library module)
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import dataclasses  # noqa: E402
import math  # noqa: E402

from absl import app, flags  # noqa: E402

from benchmarks import common  # noqa: E402
from quicknets_jax.algorithms import pipeline_cost  # noqa: E402
from quicknets_jax.algorithms.pipeline import block_stages  # noqa: E402
from quicknets_jax.algorithms.quicknet import train_quicknet  # noqa: E402
from quicknets_jax.workflows.experiment_config import ExperimentConfig  # noqa: E402

CASES = {
  "Table-1 MLP": (dict(model="mlp", hidden=(150, 100, 50), num_blocks=3, commit_head="logits"), (1, 2, 3)),
  "VGG-11/8 (conv)": (
    dict(model="vgg", vgg_cfg="vgg11", width=8, num_blocks=8, classifier_width=64, learning_rate=3e-4),
    (1, 2, 4, 8),
  ),
}
flags.DEFINE_list("cases", list(CASES), f"Cases, of: {', '.join(CASES)}.")
flags.DEFINE_integer("max_train", 6000, "Fashion-MNIST training images used (90 % train, 10 % validation).")
flags.DEFINE_string("out_dir", common.DEFAULT_OUT, "Where pipeline_check.json/.md go.")
FLAGS = flags.FLAGS


def check_case(name: str) -> dict:
  """The model against the measured pipelined epoch for every K of one case."""
  settings, devices = CASES[name]
  config = ExperimentConfig().replace(
    dataset="fashion_mnist", max_train=FLAGS.max_train, max_epochs=2, schedule="decoupled", **settings
  )
  dataset = config.data.load(log=lambda m: None)
  model = config.model.build(dataset.train.images.shape[1:], dataset.num_classes)
  batch = config.fit.batch_size
  steps = pipeline_cost.measure_steps(model, batch, [batch])
  num_train = len(dataset.train.labels)
  batches = math.ceil(num_train / batch)
  rows = []
  for k in devices:
    quicknet = dataclasses.replace(config.quicknet, pipeline_stages=k)
    run = train_quicknet(model, dataset.train, dataset.val, quicknet, 0, log=lambda m: None)
    measured = run.epochs[-1]["train_seconds"]
    stages = block_stages(model.num_blocks, k)
    stage_seconds = [sum(steps.block_train[start:stop]) for start, stop in stages]
    rows.append(
      dict(
        devices=k,
        stages=[list(s) for s in stages],
        measured_epoch_seconds=measured,
        modelled_shared_cores=(batches + k - 1) * sum(stage_seconds),
        modelled_own_devices=(batches + k - 1) * max(stage_seconds),
      )
    )
    print(f"{name}, K={k}: measured {measured:.2f} s, modelled {rows[-1]['modelled_shared_cores']:.2f} s", flush=True)
  return dict(case=name, batch_size=batch, batches=batches, steps=steps.to_json(), rows=rows)


def markdown(cases: list) -> str:
  """The check as a table per case."""
  lines = []
  for case in cases:
    lines += [
      f"### {case['case']} ({case['batches']} batches of {case['batch_size']} an epoch)",
      "",
      "| K (host devices) | Stages (blocks) | Measured epoch (s) | Model, cores shared (s) | Measured / model | "
      "Model, K devices of their own (s) |",
      "|---|---|---|---|---|---|",
    ]
    for r in case["rows"]:
      stages = ", ".join(f"{a}–{b - 1}" if b - a > 1 else f"{a}" for a, b in r["stages"])
      lines.append(
        f"| {r['devices']} | {stages} | {r['measured_epoch_seconds']:.2f} | {r['modelled_shared_cores']:.2f} | "
        f"{r['measured_epoch_seconds'] / r['modelled_shared_cores']:.2f} | {r['modelled_own_devices']:.2f} |"
      )
    lines.append("")
  return "\n".join(lines)


def main(argv) -> None:
  del argv
  common.start()
  unknown = sorted(set(FLAGS.cases) - set(CASES))
  if unknown:
    raise app.UsageError(f"--cases: unknown {', '.join(unknown)}; choose from {', '.join(CASES)}")
  cases = [check_case(name) for name in FLAGS.cases]
  common.write("pipeline_check", dict(max_train=FLAGS.max_train, cases=cases), markdown(cases), FLAGS.out_dir)


if __name__ == "__main__":
  app.run(main)

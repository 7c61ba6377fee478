"""`python -m benchmarks.checkpoint_cost`: what a per-epoch checkpoint costs the training loop, written as
the trainer writes it (`checkpoint.FitCheckpointer`: the state copied to the host, an atomic `.npz`
written by a thread while the next epoch runs) and with orbax's asynchronous checkpointing
(`orbax.checkpoint.CheckpointManager`, `enable_async_checkpointing=True`, the same state).

The state is a real fit's (`trainer.FitState` after `init_fit_state`: params, Adam moments, best
params) of two networks: the Table-1 MLP and the conv study's VGG-11/8. For each writer it times what
the loop waits for — the call that starts a save (and, before it, the wait for the previous one, as
`FitCheckpointer.save` does) — over `--epochs` saves with a `--epoch_seconds` sleep standing for the
epoch in between, and the final wait. Rounds alternate between the writers.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags

from benchmarks import common
from quicknets_jax import models
from quicknets_jax.models.base import split_blocks
from quicknets_jax.training import losses
from quicknets_jax.training.checkpoint import FitCheckpointer
from quicknets_jax.training.schedule import FitConfig
from quicknets_jax.training.trainer import Objective, init_fit_state

flags.DEFINE_integer("epochs", 10, "Saves per round.")
flags.DEFINE_integer("rounds", 3, "Alternating rounds per writer.")
flags.DEFINE_float("epoch_seconds", 0.2, "Seconds the loop sleeps between saves (the epoch's work).")
flags.DEFINE_string("out_dir", common.DEFAULT_OUT, "Where checkpoint_cost.json/.md go.")
FLAGS = flags.FLAGS

NETWORKS = {
  "mlp 784-150-100-50": dict(name="mlp", input_shape=(28, 28), hidden=(150, 100, 50), num_blocks=3),
  "vgg11/8": dict(name="vgg", input_shape=(28, 28, 1), width=8, num_blocks=8, classifier_width=64),
}


def fit_state(spec: dict):
  """A fresh `FitState` of the end-to-end fit of the network `spec` describes."""
  spec = dict(spec)
  model = models.build_model(spec.pop("name"), spec.pop("input_shape"), 10, **spec)
  params, state = split_blocks(model.init(jax.random.PRNGKey(0)))
  return init_fit_state(Objective(losses.EndToEndLoss(model)), params, state, FitConfig())


def npz_round(state, directory: str, epochs: int, epoch_seconds: float) -> tuple[float, float]:
  """(seconds the loop waited per save, seconds of the final wait) with `FitCheckpointer`."""
  writer = FitCheckpointer(directory, "benchmark")
  waited = 0.0
  for epoch in range(1, epochs + 1):
    start = time.perf_counter()
    writer.save(dataclasses.replace(state, schedule=dataclasses.replace(state.schedule, epoch=epoch)))
    waited += time.perf_counter() - start
    time.sleep(epoch_seconds)
  start = time.perf_counter()
  writer.close()
  return waited / epochs, time.perf_counter() - start


def orbax_round(state, directory: str, epochs: int, epoch_seconds: float) -> tuple[float, float]:
  """(seconds the loop waited per save, seconds of the final wait) with orbax's async CheckpointManager."""
  tree, meta = state.checkpoint()
  options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=True)
  manager = ocp.CheckpointManager(directory, options=options)
  waited = 0.0
  for epoch in range(1, epochs + 1):
    start = time.perf_counter()
    manager.wait_until_finished()  # as the trainer's writer: one save in flight
    manager.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)))
    waited += time.perf_counter() - start
    time.sleep(epoch_seconds)
  start = time.perf_counter()
  manager.wait_until_finished()
  manager.close()
  return waited / epochs, time.perf_counter() - start


def main(argv):
  del argv
  common.start()
  rows, payload = [], {}
  for label, spec in NETWORKS.items():
    state = fit_state(spec)
    size = sum(np.asarray(x).nbytes for x in jax.tree.leaves(state.checkpoint()[0]))
    seconds = {"npz": [], "orbax": []}
    for r in range(FLAGS.rounds):
      for writer, run in (("npz", npz_round), ("orbax", orbax_round))[:: 1 if r % 2 == 0 else -1]:
        with tempfile.TemporaryDirectory() as tmp:
          seconds[writer].append(run(state, os.path.join(tmp, "ckpt"), FLAGS.epochs, FLAGS.epoch_seconds))
    result = {
      writer: dict(
        per_save_ms=1e3 * float(np.median([s for s, _ in runs])),
        final_wait_ms=1e3 * float(np.median([f for _, f in runs])),
      )
      for writer, runs in seconds.items()
    }
    payload[label] = dict(state_bytes=int(size), **result)
    rows.append(
      f"| {label} | {size / 1e6:.2f} | {result['npz']['per_save_ms']:.1f} | {result['orbax']['per_save_ms']:.1f} | "
      f"{result['npz']['final_wait_ms']:.1f} | {result['orbax']['final_wait_ms']:.1f} |"
    )
  markdown = "\n".join(
    [
      "| network | state MB | .npz: ms per save | orbax async: ms per save | .npz: final wait ms | orbax: final wait ms |",
      "|---|---|---|---|---|---|",
      *rows,
    ]
  )
  common.write(
    "checkpoint_cost", dict(epochs=FLAGS.epochs, rounds=FLAGS.rounds, results=payload), markdown, FLAGS.out_dir
  )


if __name__ == "__main__":
  app.run(main)

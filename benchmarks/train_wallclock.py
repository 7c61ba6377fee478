"""`python -m benchmarks.train_wallclock`: QuickNet vs end-to-end full training on the real Fashion-MNIST.

Each method runs in its own fresh Python process (so neither inherits the other's compiled code or
warm caches) with the default flags of experiments/configs/fashion_mnist.flags and one seed; the
clock covers everything from model init to the trained network, compilation included. Reports
seconds, training FLOPs (docs/method.md, FLOP accounting), their ratios, and seconds per training FLOP. With
`--plus_flagfile=experiments/configs/fashion_mnist_plus.flags`, QuickNet+ (those levers) runs too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
from absl import app, flags

from benchmarks import common
from experiments.flags import flagfile_settings
from quicknets_jax import data
from quicknets_jax.algorithms.end_to_end import train_end_to_end
from quicknets_jax.algorithms.forward import all_exit_outputs
from quicknets_jax.algorithms.quicknet import train_quicknet
from quicknets_jax.core import exits
from quicknets_jax.workflows.experiment_config import ExperimentConfig

flags.DEFINE_integer("seed", 0, "Seed of both runs.")
flags.DEFINE_string("method", None, "Internal: run one method in this process and print its JSON.")
flags.DEFINE_string("out_dir", common.DEFAULT_OUT, "Where train_wallclock.json/.md go.")
flags.DEFINE_bool("cache_features", True, "QuickNet: cache frozen-prefix features (False: recompute).")
flags.DEFINE_string(
  "compilation_cache_dir", None, "Internal: JAX's persistent compilation cache for the child process."
)
flags.DEFINE_string(
  "plus_flagfile",
  None,
  "A QuickNet+ flagfile (e.g. experiments/configs/fashion_mnist_plus.flags): also time QuickNet with its levers.",
)
FLAGS = flags.FLAGS


def _run_method(method: str) -> dict:
  if FLAGS.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", FLAGS.compilation_cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  overrides = {}
  if method == "quicknet_plus":
    overrides = {
      k: v
      for k, v in flagfile_settings(ExperimentConfig, FLAGS.plus_flagfile).items()
      if k not in ("seeds", "exit_threshold", "dataset")
    }
  config = ExperimentConfig().replace(seeds=(FLAGS.seed,), cache_features=FLAGS.cache_features, **overrides)
  ds = data.load_dataset("fashion_mnist")
  model = config.model.build(ds.train.images.shape[1:], ds.num_classes)
  quiet = lambda m: None
  start = time.perf_counter()
  if method in ("quicknet", "quicknet_plus"):
    run = train_quicknet(
      model, (ds.train.images, ds.train.labels), (ds.val.images, ds.val.labels), config.quicknet, FLAGS.seed, log=quiet
    )
    seconds = time.perf_counter() - start
    probs, commit = all_exit_outputs(model, run.variables, ds.val.images)
    sweep = exits.sweep_thresholds(probs, commit, ds.val.labels, model.cascade_costs())
    threshold = exits.choose_threshold(sweep)
    probs, commit = all_exit_outputs(model, run.variables, ds.test.images)
    accuracy = float(exits.evaluate_rule(probs, commit, ds.test.labels, threshold, model.cascade_costs())[0])
    return dict(
      method=method,
      seconds=seconds,
      training_flops=run.training_flops,
      test_accuracy=accuracy,
      epochs=[r.epochs for r in run.records],
      block_seconds=[r.seconds for r in run.records],
      levers=overrides,
    )
  run = train_end_to_end(
    model, (ds.train.images, ds.train.labels), (ds.val.images, ds.val.labels), config.fit, FLAGS.seed, log=quiet
  )
  seconds = time.perf_counter() - start
  probs, _ = all_exit_outputs(model, run.variables, ds.test.images)
  accuracy = float(np.mean(np.argmax(np.asarray(probs[-1]), -1) == ds.test.labels))
  return dict(
    method=method, seconds=seconds, training_flops=run.training_flops, test_accuracy=accuracy, epochs=[run.epochs]
  )


def main(argv):
  del argv
  common.start()
  if FLAGS.method:
    print("RESULT " + json.dumps(_run_method(FLAGS.method)))
    return

  def run(method, cache_dir=None):
    args = [
      sys.executable,
      "-m",
      "benchmarks.train_wallclock",
      f"--method={method}",
      f"--seed={FLAGS.seed}",
      f"--cache_features={FLAGS.cache_features}",
    ]
    if FLAGS.plus_flagfile:
      args.append(f"--plus_flagfile={FLAGS.plus_flagfile}")
    if cache_dir:
      args.append(f"--compilation_cache_dir={cache_dir}")
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not line:
      raise SystemExit(f"{method} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[0][len("RESULT ") :])

  methods = ("end_to_end", "quicknet") + (("quicknet_plus",) if FLAGS.plus_flagfile else ())
  results = {m: run(m) for m in methods}
  # The same runs again with JAX's persistent compilation cache warm (a user's second run).
  warm = {}
  with tempfile.TemporaryDirectory() as cache_dir:
    for m in ("end_to_end", "quicknet"):
      run(m, cache_dir)
      warm[m] = run(m, cache_dir)
  q, e = results["quicknet"], results["end_to_end"]
  ratios = dict(train_seconds=e["seconds"] / q["seconds"], training_flops=e["training_flops"] / q["training_flops"])
  per_flop = (q["seconds"] / q["training_flops"]) / (e["seconds"] / e["training_flops"])
  warm_ratio = warm["end_to_end"]["seconds"] / warm["quicknet"]["seconds"]
  warm_per_flop = (warm["quicknet"]["seconds"] / q["training_flops"]) / (
    warm["end_to_end"]["seconds"] / e["training_flops"]
  )
  payload = dict(
    seed=FLAGS.seed,
    cache_features=FLAGS.cache_features,
    results=results,
    ratios=ratios,
    warm_cache=dict(
      results=warm, train_seconds_ratio=warm_ratio, quicknet_seconds_per_flop_over_end_to_end=warm_per_flop
    ),
    quicknet_seconds_per_flop_over_end_to_end=per_flop,
    target_met=ratios["train_seconds"] >= 0.8 * ratios["training_flops"],
  )
  plus_lines = []
  if "quicknet_plus" in results:
    p = results["quicknet_plus"]
    payload["plus_ratios"] = dict(
      train_seconds=e["seconds"] / p["seconds"], training_flops=e["training_flops"] / p["training_flops"]
    )
    plus_lines = [
      "",
      f"QuickNet+ ({FLAGS.plus_flagfile}: {p['levers']}): {p['seconds']:.1f} s, "
      f"{p['training_flops']:.3g} FLOPs, epochs {p['epochs']}, test accuracy "
      f"{100 * p['test_accuracy']:.2f} %; end-to-end / QuickNet+: wall-clock "
      f"{payload['plus_ratios']['train_seconds']:.2f}, training FLOPs "
      f"{payload['plus_ratios']['training_flops']:.2f}.",
    ]
  md = "\n".join(
    [
      f"QuickNet vs end-to-end training on the real Fashion-MNIST (seed {FLAGS.seed}, default flags, each in "
      "a fresh process, compilation included).",
      "",
      "| Method | Seconds | Training FLOPs | Epochs | Test accuracy (%) |",
      "|---|---|---|---|---|",
      *[
        f"| {name} | {r['seconds']:.1f} | {r['training_flops']:.3g} | {r['epochs']} | {100 * r['test_accuracy']:.2f} |"
        for name, r in (("QuickNet", q), ("End-to-end", e))
      ],
      *[
        f"| {name}, warm compilation cache | {r['seconds']:.1f} | {r['training_flops']:.3g} | {r['epochs']} | "
        f"{100 * r['test_accuracy']:.2f} |"
        for name, r in (("QuickNet", warm["quicknet"]), ("End-to-end", warm["end_to_end"]))
      ],
      "",
      f"Ratios end-to-end / QuickNet: wall-clock {ratios['train_seconds']:.2f}, training FLOPs "
      f"{ratios['training_flops']:.2f}. QuickNet's seconds per training FLOP are {per_flop:.2f}× the "
      f"end-to-end network's (target ≤ 1.25: {'met' if payload['target_met'] else 'not met'}). With a warm "
      f"compilation cache: wall-clock ratio {warm_ratio:.2f}, seconds per FLOP {warm_per_flop:.2f}×.",
      *plus_lines,
    ]
  )
  common.write("train_wallclock", payload, md, FLAGS.out_dir)


if __name__ == "__main__":
  app.run(main)

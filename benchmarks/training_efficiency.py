"""`python -m benchmarks.training_efficiency`: how fast QuickNet training spends its FLOPs against
end-to-end training, with a cold and a warm compilation cache, and where the seconds go.

Each case is a real run (`python -m experiments.fashion_mnist`, one seed, in a fresh process), so the
numbers are what a user's runs get: the Table-1 MLP (`fashion_mnist_paper.flags`, the whole dataset) and
the conv net of the conv study (VGG-11 at 1/8 width, `fashion_mnist_vgg.flags`) on the first 12,000
Fashion-MNIST training images (10,800 train / 1,200 validation) and 2,000 test images. Every round runs each case twice: first with an empty persistent compilation cache
(cold), then again reading it back (warm). Rounds alternate the cases, so a load change on a shared
machine hits both alike. From each run's results.json: QuickNet's and end-to-end's training FLOPs per
second of training wall-clock, their ratio (the efficiency: 1 = QuickNet spends its FLOPs as fast),
both runs' compile seconds, and the seconds and FLOP rate of every phase.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from benchmarks import common

CASES = {
  "Table-1 MLP": ["--flagfile=experiments/configs/fashion_mnist_paper.flags"],
  "VGG-11/8 (conv)": [
    "--flagfile=experiments/configs/fashion_mnist_vgg.flags",
    "--max_train=12000",
    "--max_test=2000",
    "--nodeploy_curve",
  ],
}
flags.DEFINE_integer("rounds", 2, "Rounds (each: every case cold, then warm).")
flags.DEFINE_list("cases", list(CASES), f"Cases, of: {', '.join(CASES)}.")
flags.DEFINE_integer("seed", 0, "The seed of every run.")
flags.DEFINE_string("out_dir", common.DEFAULT_OUT, "Where training_efficiency.json/.md go.")
FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_case(case: str, cache: str, workdir: str) -> dict:
  """One run of `case` (QuickNet, then end-to-end) with the compilation cache in `cache`; its numbers."""
  command = [sys.executable, "-m", "experiments.fashion_mnist", *CASES[case], f"--seeds={FLAGS.seed}"]
  command += [f"--workdir={workdir}", f"--compile_cache={cache}"]
  start = time.perf_counter()
  subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  wall = time.perf_counter() - start
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  quicknet, end_to_end = (results[m]["per_seed"][0] for m in ("quicknet", "end_to_end"))
  return dict(
    process_seconds=wall,
    efficiency=quicknet["training_flops_per_second"] / end_to_end["training_flops_per_second"],
    **{
      f"{name}_{key}": method[key]
      for name, method in (("quicknet", quicknet), ("end_to_end", end_to_end))
      for key in ("training_flops", "train_seconds", "training_flops_per_second", "seconds_by_phase")
    },
    quicknet_compile_seconds=sum(quicknet["compile_seconds_per_block"]),
    quicknet_background_compile_seconds=sum(quicknet.get("background_compile_seconds_per_block", [])),
    end_to_end_compile_seconds=end_to_end["compile_seconds"],
    quicknet_flops_per_second_by_phase=quicknet["flops_per_second_by_phase"],
    quicknet_block0_epoch_seconds=quicknet["seconds_by_phase_per_block"][0]["block_epochs"],
    quicknet_block0_training_flops=quicknet["training_flops_parts"][0]["block_training"],
  )


def _median(runs: list, key: str) -> float:
  return statistics.median(r[key] for r in runs)


def _what_the_bar_takes(warm: list, bar: float = 0.9) -> str:
  """One sentence on a case's warm runs: the seconds QuickNet would have at efficiency `bar` (its training
  FLOPs at `bar` × end-to-end's rate) against the seconds of its block epochs alone, block 0's among them."""
  at_bar = _median(warm, "quicknet_training_flops") / (bar * _median(warm, "end_to_end_training_flops_per_second"))
  epochs = statistics.median(r["quicknet_seconds_by_phase"].get("block_epochs", 0.0) for r in warm)
  block0 = _median(warm, "quicknet_block0_epoch_seconds")
  block0_rate = _median(warm, "quicknet_block0_training_flops") / block0
  return (
    f"At efficiency {bar} this QuickNet run would take {at_bar:.1f} s (its training FLOPs at {bar} × end-to-end's "
    f"rate); its block epochs alone take {epochs:.1f} s, of which block 0's {block0:.1f} s at "
    f"{block0_rate / 1e9:.1f} GFLOP/s, which leaves {at_bar - epochs:.1f} s for every other phase."
  )


def main(argv):
  del argv
  common.start()
  unknown = sorted(set(FLAGS.cases) - set(CASES))
  if unknown:
    raise SystemExit(f"error: unknown --cases {unknown}; choose from {', '.join(CASES)}")
  runs = {(case, cache): [] for case in FLAGS.cases for cache in ("cold", "warm")}
  scratch = tempfile.mkdtemp(prefix="training_efficiency_")
  try:
    for round_ in range(FLAGS.rounds):
      for case in FLAGS.cases:
        cache = os.path.join(scratch, "cache")
        shutil.rmtree(cache, ignore_errors=True)
        for state in ("cold", "warm"):
          workdir = os.path.join(scratch, f"run_{round_}_{state}")
          shutil.rmtree(workdir, ignore_errors=True)
          out = run_case(case, cache, workdir)
          runs[(case, state)].append(out)
          print(
            f"round {round_ + 1} {case} {state}: efficiency {out['efficiency']:.2f}, QuickNet "
            f"{out['quicknet_training_flops_per_second'] / 1e9:.1f} GFLOP/s, end-to-end "
            f"{out['end_to_end_training_flops_per_second'] / 1e9:.1f} GFLOP/s",
            file=sys.stderr,
            flush=True,
          )
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  lines = [
    "QuickNet vs end-to-end training, one seed per run, medians over rounds: training FLOPs per second of training "
    "wall-clock (efficiency = QuickNet's / end-to-end's), compile seconds the fits waited for, cold (empty) and "
    "warm compilation cache, and the seconds QuickNet compiled on a thread while an earlier block trained.",
    "",
    "| Case | Cache | QuickNet GFLOP/s | End-to-end GFLOP/s | Efficiency | QuickNet s | End-to-end s | "
    "Compile QN / E2E (s) | QN compiled ahead (s) |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for (case, cache), rs in runs.items():
    lines.append(
      f"| {case} | {cache} | {_median(rs, 'quicknet_training_flops_per_second') / 1e9:.1f} | "
      f"{_median(rs, 'end_to_end_training_flops_per_second') / 1e9:.1f} | {_median(rs, 'efficiency'):.2f} | "
      f"{_median(rs, 'quicknet_train_seconds'):.1f} | {_median(rs, 'end_to_end_train_seconds'):.1f} | "
      f"{_median(rs, 'quicknet_compile_seconds'):.1f} / {_median(rs, 'end_to_end_compile_seconds'):.1f} | "
      f"{_median(rs, 'quicknet_background_compile_seconds'):.1f} |"
    )
  lines += [
    "",
    "Where QuickNet's and end-to-end's seconds go (warm cache, medians; the phases add up to the training seconds, \"compile\" being what the fits waited for):",
    "",
  ]
  for case in FLAGS.cases:
    warm = runs[(case, "warm")]
    phases = sorted({p for r in warm for p in r["quicknet_seconds_by_phase"]})
    lines += [f"**{case}**", "", "| Phase | QuickNet s | QuickNet GFLOP/s |", "|---|---|---|"]
    for phase in phases:
      seconds = statistics.median(r["quicknet_seconds_by_phase"].get(phase, 0.0) for r in warm)
      rates = [r["quicknet_flops_per_second_by_phase"].get(phase) for r in warm]
      rate = "" if None in rates else f"{statistics.median(rates) / 1e9:.1f}"
      lines.append(f"| {phase} | {seconds:.2f} | {rate} |")
    e2e = sorted({p for r in warm for p in r["end_to_end_seconds_by_phase"]})
    lines += ["", "| Phase | End-to-end s |", "|---|---|"]
    lines += [
      f"| {p} | {statistics.median(r['end_to_end_seconds_by_phase'].get(p, 0.0) for r in warm):.2f} |" for p in e2e
    ]
    lines += ["", _what_the_bar_takes(warm), ""]
  payload = dict(rounds=FLAGS.rounds, runs={f"{case} / {cache}": rs for (case, cache), rs in runs.items()})
  common.write("training_efficiency", payload, "\n".join(lines), FLAGS.out_dir)


if __name__ == "__main__":
  app.run(main)

"""Kill a training run at random moments and check that resuming gives the same result, bit for bit.

`python -m benchmarks.fault_injection --trials N` runs the Fashion-MNIST smoke config
(experiments/configs/fashion_mnist_smoke.flags) once uninterrupted as the reference, then for each
trial starts the same run in a fresh workdir in a subprocess, SIGKILLs it (`--kills_per_trial`
times, rerunning in between), and reruns the same command until it finishes. Kills alternate
between a uniformly random moment within the reference's duration and the moment an orbax
checkpoint is being written (a `*.orbax-checkpoint-tmp` directory exists) after a random delay.
A trial whose run finishes before its kill starts over with a shorter horizon, so every trial is
killed. Each trial's line says what the killed run had left on disk (frozen blocks, the newest epoch
of each fit in progress, finished parts). The runs share a persistent XLA compilation cache, filled
by the reference run. A trial is identical when its results.json equals the reference's with every
wall-clock field ("...seconds...") removed, and every saved parameter array (frozen blocks, and the
end-to-end fit's FitState) equals the reference's bit for bit. The last line is `K/N identical`.
Extra arguments after `--` go to the experiment (e.g. `-- --max_epochs=3`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Optional

import numpy as np

from quicknets_jax.data import idx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE_FLAGS = os.path.join(ROOT, "experiments", "configs", "fashion_mnist_smoke.flags")
TMP_MARK = ".orbax-checkpoint-tmp"


def write_tiny_idx(directory: str, n_train: int = 600, n_test: int = 200, noise: float = 60.0) -> None:
  """MNIST-format IDX files of class-dependent blobs: a run that takes seconds (for the test)."""
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(0)
  centres = rng.integers(0, 256, size=(10, 28, 28))
  for prefix, n in (("train", n_train), ("t10k", n_test)):
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = np.clip(centres[labels] + rng.normal(0, noise, (n, 28, 28)), 0, 255).astype(np.uint8)
    idx.write_idx(os.path.join(directory, f"{prefix}-images-idx3-ubyte.gz"), images)
    idx.write_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte.gz"), labels)


def _command(flags: Sequence[str], workdir: str) -> list[str]:
  dataset = next((f.split("=", 1)[1] for f in flags if f.startswith("--dataset=")), "fashion_mnist")
  return [sys.executable, "-m", f"experiments.{dataset}", *flags, f"--workdir={workdir}"]


def _start(flags: Sequence[str], workdir: str, log_path: str, cache_dir: Optional[str] = None) -> subprocess.Popen:
  env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
  if cache_dir:  # XLA compiles dominate a smoke run; every restart would pay them again
    env.update(
      JAX_COMPILATION_CACHE_DIR=cache_dir,
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
    )
  out = open(log_path, "ab")
  return subprocess.Popen(_command(flags, workdir), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def _saving(workdir: str) -> bool:
  """Whether an orbax save is under way: its tmp directory exists until the atomic rename."""
  for _, dirs, _ in os.walk(workdir):
    if any(TMP_MARK in d for d in dirs):
      return True
  return False


def disk_state(workdir: str) -> str:
  """What a killed run left, in words: frozen blocks, newest epoch of each fit in progress, results."""
  parts = []
  for seed_dir in sorted(d for d in os.listdir(workdir) if d.startswith("seed_")) if os.path.isdir(workdir) else []:
    base = os.path.join(workdir, seed_dir)

    def steps(path):
      return sorted(int(s) for s in os.listdir(path) if s.isdigit()) if os.path.isdir(path) else []

    blocks = steps(os.path.join(base, "quicknet_checkpoints"))
    if blocks:
      parts.append(f"blocks 0-{blocks[-1]} frozen")
    progress = os.path.join(base, "quicknet_checkpoints", "in_progress")
    for fit_dir in sorted(os.listdir(progress)) if os.path.isdir(progress) else []:
      done = steps(os.path.join(progress, fit_dir))
      if done:
        parts.append(f"{fit_dir} epoch {done[-1]}")
    for name in ("quicknet.json", "end_to_end.json"):
      if os.path.exists(os.path.join(base, name)):
        parts.append(name)
    e2e = steps(os.path.join(base, "end_to_end_checkpoints"))
    if e2e:
      parts.append(f"end_to_end epoch {e2e[-1]}")
  return ", ".join(parts) or "no checkpoint yet"


def _finish(flags, workdir, log_path, timeout: float, cache_dir: Optional[str]) -> list[str]:
  """Runs to the end; returns the run's "resumed ..." lines (where the previous run had got to)."""
  offset = os.path.getsize(log_path) if os.path.exists(log_path) else 0
  proc = _start(flags, workdir, log_path, cache_dir)
  if proc.wait(timeout=timeout) != 0:
    with open(log_path, errors="replace") as f:
      tail = f.read()[-2000:]
    raise RuntimeError(f"run in {workdir} failed (exit {proc.returncode}); its log ends:\n{tail}")
  with open(log_path, errors="replace") as f:
    f.seek(offset)
    return [line.split("] ", 1)[-1].strip() for line in f if "resumed after" in line]


def _kill_once(
  flags, workdir, log_path, mode: str, horizon: float, rng: random.Random, cache_dir: Optional[str]
) -> dict:
  """Starts the run and SIGKILLs it: at a random moment, or as a checkpoint save begins."""
  proc = _start(flags, workdir, log_path, cache_dir)
  start = time.monotonic()
  wait = rng.uniform(0.02 * horizon, 0.98 * horizon) if mode == "random" else rng.uniform(0.1 * horizon, 0.8 * horizon)
  while time.monotonic() - start < wait and proc.poll() is None:
    time.sleep(0.005)
  if mode == "save":  # from a random moment on, wait for the next save to start
    while proc.poll() is None and not _saving(workdir) and time.monotonic() - start < 2 * horizon:
      time.sleep(0.001)
  if proc.poll() is not None:  # faster than the horizon: the caller shortens it and tries again
    return dict(at=time.monotonic() - start, mid_save=False, finished_first=True)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  return dict(at=time.monotonic() - start, mid_save=_saving(workdir), finished_first=False, left=disk_state(workdir))


def untimed(obj):
  """`obj` without wall-clock fields ("seconds" in the key), which differ between any two runs."""
  if isinstance(obj, dict):
    return {k: untimed(v) for k, v in obj.items() if "seconds" not in k}
  if isinstance(obj, list):
    return [untimed(v) for v in obj]
  return obj


def saved_arrays(workdir: str) -> dict:
  """Every parameter array a finished run leaves: {"<seed dir>/<checkpoint>/<path>": array}.

  The frozen blocks' variables (quicknet_checkpoints/<j>/variables) and the newest FitState of the
  end-to-end fit (end_to_end_checkpoints/<epoch>/state: params, Adam moments, best params).
  """
  import jax
  import orbax.checkpoint as ocp

  out = {}
  checkpointer = ocp.PyTreeCheckpointer()
  for seed_dir in sorted(d for d in os.listdir(workdir) if d.startswith("seed_")):
    base = os.path.join(workdir, seed_dir)
    blocks = os.path.join(base, "quicknet_checkpoints")
    items = (
      [
        (f"{seed_dir}/block_{s}", os.path.join(blocks, s, "variables"))
        for s in sorted(os.listdir(blocks))
        if s.isdigit()
      ]
      if os.path.isdir(blocks)
      else []
    )
    e2e = os.path.join(base, "end_to_end_checkpoints")
    if os.path.isdir(e2e):
      steps = sorted(int(s) for s in os.listdir(e2e) if s.isdigit())
      if steps:
        items.append((f"{seed_dir}/end_to_end", os.path.join(e2e, str(steps[-1]), "state")))
    for name, path in items:
      tree = checkpointer.restore(path)
      for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out[name + jax.tree_util.keystr(key_path)] = np.asarray(leaf)
  return out


def compare(reference: str, workdir: str) -> list[str]:
  """Differences between two finished workdirs (empty: identical), each as a short line."""
  diffs = []
  with open(os.path.join(reference, "results.json")) as f:
    want = untimed(json.load(f))
  with open(os.path.join(workdir, "results.json")) as f:
    got = untimed(json.load(f))
  if want != got:
    keys = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
    diffs.append(f"results.json differs in {keys}")
  a, b = saved_arrays(reference), saved_arrays(workdir)
  if set(a) != set(b):
    diffs.append(f"saved arrays differ in names: {sorted(set(a) ^ set(b))[:5]}")
  for name in sorted(set(a) & set(b)):
    if a[name].dtype != b[name].dtype or a[name].shape != b[name].shape or a[name].tobytes() != b[name].tobytes():
      diffs.append(f"{name} differs")
  if not a:
    diffs.append("no saved parameters found")
  return diffs


def run_trials(
  flags: Sequence[str],
  trials: int,
  kills_per_trial: int = 1,
  root: Optional[str] = None,
  seed: int = 0,
  log: Callable[[str], None] = print,
  timeout: float = 3600.0,
  compilation_cache: Optional[str] = "",
) -> dict:
  """The reference run, then `trials` killed-and-resumed runs; returns counts, logs one line per trial.

  Args:
    flags: the experiment's flags (e.g. ["--flagfile=..."]), without --workdir.
    trials: how many killed runs to compare with the reference.
    kills_per_trial: SIGKILLs before a trial is left to finish.
    root: where the workdirs go (a fresh temporary directory if None; kept for inspection).
    seed: seeds the kill moments.
    compilation_cache: a persistent XLA compilation cache directory shared by the runs, so restarts
      do not pay the compiles again ("": `root`/xla_cache; None: none). When it starts empty, the
      reference fills it and a second, warm uninterrupted run is compared with the reference (the
      cache must not change results) and sets the kill horizon.
  """
  root = root or tempfile.mkdtemp(prefix="fault_injection_")
  os.makedirs(root, exist_ok=True)
  rng = random.Random(seed)
  cache_dir = os.path.join(root, "xla_cache") if compilation_cache == "" else compilation_cache
  cold = cache_dir is not None and not (os.path.isdir(cache_dir) and os.listdir(cache_dir))
  reference = os.path.join(root, "reference")
  shutil.rmtree(reference, ignore_errors=True)
  start = time.monotonic()
  _finish(flags, reference, os.path.join(root, "reference.log"), timeout, cache_dir)
  horizon = time.monotonic() - start
  log(f"reference: {horizon:.1f}s uninterrupted, in {reference}")
  if cold:  # kills are timed against a run that, like every restart, finds the compiles cached
    warm = os.path.join(root, "reference_warm")
    shutil.rmtree(warm, ignore_errors=True)
    start = time.monotonic()
    _finish(flags, warm, os.path.join(root, "reference_warm.log"), timeout, cache_dir)
    horizon = time.monotonic() - start
    diffs = compare(reference, warm)
    log(
      f"warm rerun (compiles from the cache): {horizon:.1f}s, "
      + ("identical to the reference" if not diffs else "DIFFERENT: " + "; ".join(diffs[:3]))
    )
  identical = kills = mid_save = 0
  for trial in range(trials):
    workdir = os.path.join(root, f"trial_{trial}")
    shutil.rmtree(workdir, ignore_errors=True)
    log_path = os.path.join(root, f"trial_{trial}.log")
    events, attempts = [], 0
    while len(events) < kills_per_trial:
      mode = "random" if (trial + len(events)) % 2 == 0 else "save"
      event = _kill_once(flags, workdir, log_path, mode, horizon, rng, cache_dir)
      if event["finished_first"]:  # no kill happened: the machine got faster; start the trial over
        horizon = 0.9 * event["at"]
        attempts += 1
        shutil.rmtree(workdir, ignore_errors=True)
        events = []
        if attempts > 5:
          raise RuntimeError(f"trial {trial}: the run kept finishing before the kill; rerun on a quieter machine")
        continue
      events.append(dict(event, mode=mode))
    _finish(flags, workdir, log_path, timeout, cache_dir)
    diffs = compare(reference, workdir)
    identical += not diffs
    kills += len(events)
    mid_save += sum(e["mid_save"] for e in events)
    described = ", ".join(
      f"{e['mode']} kill at {e['at']:.1f}s" + (" mid-save" if e["mid_save"] else "") + f" left [{e['left']}]"
      for e in events
    )
    log(
      f"trial {trial}: {described}; resumed to the end: "
      + ("identical" if not diffs else "DIFFERENT: " + "; ".join(diffs[:3]))
    )
  log(f"{kills} kills, {mid_save} of them while a checkpoint was being written")
  log(f"{identical}/{trials} identical")
  return dict(identical=identical, trials=trials, kills=kills, mid_save=mid_save, reference_seconds=horizon, root=root)


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Command line: --trials N [--kills_per_trial K] [--seed S] [--root DIR] [--flagfile F] [-- flags]."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--trials", type=int, default=20)
  parser.add_argument("--kills_per_trial", type=int, default=1)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--root", default=None, help="where workdirs go (default: a new temp dir)")
  parser.add_argument("--flagfile", default=SMOKE_FLAGS, help="the experiment's flagfile")
  parser.add_argument(
    "--no_compilation_cache",
    action="store_true",
    help="compile afresh in every run instead of sharing a persistent XLA cache",
  )
  parser.add_argument("extra", nargs="*", help="more experiment flags, after --")
  args = parser.parse_args(argv)
  if args.trials < 1 or args.kills_per_trial < 1:
    parser.error("--trials and --kills_per_trial must be ≥ 1")
  flags = [f"--flagfile={os.path.abspath(args.flagfile)}", *args.extra]
  summary = run_trials(
    flags,
    args.trials,
    args.kills_per_trial,
    args.root,
    args.seed,
    log=lambda m: print(m, flush=True),
    compilation_cache=None if args.no_compilation_cache else "",
  )
  return 0 if summary["identical"] == summary["trials"] else 1


if __name__ == "__main__":
  sys.exit(main())

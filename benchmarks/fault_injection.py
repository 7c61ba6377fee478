"""Stop a training run at random moments and check that resuming gives the same result, bit for bit.

`python -m benchmarks.fault_injection --cases` runs the faults around a finished run instead
(`benchmarks.fault_cases`: changed data, a second run, `--overwrite`, flipped bytes, kills during predict
and export).

`python -m benchmarks.fault_injection --trials N --term_trials M [--config=mlp|conv]` runs a smoke
config once uninterrupted as the reference, then for each trial starts the same run in a fresh workdir
in a subprocess, stops it (`--kills_per_trial` times, rerunning in between), and reruns the same
command until it finishes. `--config=mlp` (the default) is the Fashion-MNIST MLP smoke
(experiments/configs/fashion_mnist_smoke.flags, the real Fashion-MNIST); `--config=conv` the VGG-11
smoke (experiments/configs/cifar10_smoke.flags: 8 conv blocks with batch norm) on a synthetic tarball
in the CIFAR-10 format that the benchmark writes itself.

Every stop hits a run that already has a checkpoint: the benchmark waits until the workdir holds a
finished checkpoint (a frozen block's orbax directory or an epoch's `.npz` file) and the process has
printed its first line (a resumed run finds its checkpoints before it is past start-up). A fresh run is
then stopped at the next moment a checkpoint is being written (a `*.orbax-checkpoint-tmp` directory or a
`.*.npz.tmp-<pid>` file exists) after a random delay; a resumed run at a random moment within what is left of
the reference run. The first N trials stop the run with SIGKILL; the next M with SIGTERM (a preemption
notice), which must end the run within 30 s, exit 143, with its last line
`interrupted by SIGTERM ...; ... resume with: <command>` naming this very command (and no traceback);
that command is then run to the end. A trial whose run finishes before its stop
starts over with a shorter horizon, so every trial is stopped. Each trial's line says what the stopped
run had left on disk (frozen blocks, the newest epoch of each fit in progress, finished parts). The runs
share a persistent XLA compilation cache, filled by the reference run. A trial is identical when its
results.json equals the reference's with every wall-clock field ("...seconds...") removed, and every
saved parameter array (frozen blocks, and the end-to-end fit's FitState) equals the reference's bit for
bit. The last lines are `SIGKILL: K/N identical`, `SIGTERM: K/M identical` and `K/N+M identical`. Extra
arguments after `--` go to the experiment (e.g. `-- --max_epochs=3`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Optional

import numpy as np

from quicknets_jax.core import files as files_lib
from quicknets_jax.data import idx
from quicknets_jax.workflows.workdir import is_wall_clock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE_FLAGS = os.path.join(ROOT, "experiments", "configs", "fashion_mnist_smoke.flags")
CONV_SMOKE_FLAGS = os.path.join(ROOT, "experiments", "configs", "cifar10_smoke.flags")
TMP_MARK = ".orbax-checkpoint-tmp"
SIGTERM_EXIT = 143  # what the experiments exit with after SIGTERM (experiments/flags.py one_line_errors)


def write_tiny_idx(directory: str, n_train: int = 600, n_test: int = 200, noise: float = 60.0, seed: int = 0) -> None:
  """MNIST-format IDX files of class-dependent blobs: a run that takes seconds (for the test). `seed`
  draws the images and labels (the class centres stay those of seed 0)."""
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(0)
  centres = rng.integers(0, 256, size=(10, 28, 28))
  rng = rng if seed == 0 else np.random.default_rng(seed)
  for prefix, n in (("train", n_train), ("t10k", n_test)):
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = np.clip(centres[labels] + rng.normal(0, noise, (n, 28, 28)), 0, 255).astype(np.uint8)
    idx.write_idx(os.path.join(directory, f"{prefix}-images-idx3-ubyte.gz"), images)
    idx.write_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte.gz"), labels)


def _dataset(flags: Sequence[str]) -> str:
  """The last --dataset= of `flags` or of the flagfiles they name (the experiment's entry point)."""
  dataset = "fashion_mnist"
  for flag in flags:
    if flag.startswith("--flagfile="):
      with open(flag.split("=", 1)[1]) as f:
        dataset = next((line.strip().split("=", 1)[1] for line in f if line.startswith("--dataset=")), dataset)
    elif flag.startswith("--dataset="):
      dataset = flag.split("=", 1)[1]
  return dataset


def _command(flags: Sequence[str], workdir: str) -> list[str]:
  dataset = _dataset(flags)
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
  """Whether a checkpoint save is under way: a frozen block's orbax tmp directory, or an epoch's
  temporary `.<e>.npz.tmp-<pid>` file (`core.files`), exists until its atomic rename."""
  for _, dirs, names in os.walk(workdir):
    temporary = (files_lib.TEMPORARY.fullmatch(n) for n in names)
    if any(TMP_MARK in d for d in dirs) or any(t and t["name"].endswith(".npz") for t in temporary):
      return True
  return False


def _started(log_path: str, offset: int) -> bool:
  """Whether the run logging to `log_path` from `offset` on has printed its first line ("data: ..."),
  i.e. is past the imports and JAX start-up and inside the entry point's SIGTERM handler. A SIGTERM
  before that ends the process with the default action (exit -15, no message; nothing is lost)."""
  with open(log_path, "rb") as f:
    f.seek(offset)
    return any(line.startswith(b"data: ") for line in f)


def _finished(name: str) -> Optional[int]:
  """The step a finished checkpoint is named by: a frozen block's orbax directory `<j>`, or an epoch's
  file `<e>.npz` (ones still being written are `<j>.orbax-checkpoint-tmp...` and `.<e>.npz.tmp-<pid>`)."""
  stem = name[: -len(".npz")] if name.endswith(".npz") else name
  return int(stem) if stem.isdigit() else None


def has_checkpoint(workdir: str) -> bool:
  """Whether some checkpoint under `workdir` (`*_checkpoints/...`) is finished."""
  for parent, dirs, files in os.walk(workdir):
    if "checkpoints" in os.path.relpath(parent, workdir) and any(_finished(n) is not None for n in dirs + files):
      return True
  return False


def disk_state(workdir: str) -> str:
  """What a killed run left, in words: frozen blocks, newest epoch of each fit in progress, results."""
  parts = []
  for seed_dir in sorted(d for d in os.listdir(workdir) if d.startswith("seed_")) if os.path.isdir(workdir) else []:
    base = os.path.join(workdir, seed_dir)

    def steps(path):
      names = os.listdir(path) if os.path.isdir(path) else []
      return sorted(step for step in map(_finished, names) if step is not None)

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
  return _run_to_end(flags, workdir, log_path, timeout, cache_dir)[0]


def _run_to_end(flags, workdir, log_path, timeout: float, cache_dir: Optional[str]) -> tuple[list[str], float]:
  """`_finish`, and the seconds from the start until the workdir first held a finished checkpoint."""
  offset = os.path.getsize(log_path) if os.path.exists(log_path) else 0
  proc = _start(flags, workdir, log_path, cache_dir)
  start = time.monotonic()
  first = None
  while proc.poll() is None and time.monotonic() - start < timeout:
    if first is None and has_checkpoint(workdir):
      first = time.monotonic() - start
    time.sleep(0.005)
  if proc.wait(timeout=max(1.0, timeout - (time.monotonic() - start))) != 0:
    with open(log_path, errors="replace") as f:
      tail = f.read()[-2000:]
    raise RuntimeError(f"run in {workdir} failed (exit {proc.returncode}); its log ends:\n{tail}")
  with open(log_path, errors="replace") as f:
    f.seek(offset)
    resumed = [line.split("] ", 1)[-1].strip() for line in f if "resumed after" in line]
  return resumed, time.monotonic() - start if first is None else first


def _stop_once(
  flags,
  workdir,
  log_path,
  sig: int,
  mode: str,
  span: float,
  rng: random.Random,
  cache_dir: Optional[str],
  signal_timeout: float = 30.0,
) -> dict:
  """Starts the run, waits until the workdir holds a finished checkpoint, then a random delay within
  `span` (the rest of a run after its first checkpoint), and sends `sig` — there (mode "random"), or
  as the next checkpoint save begins after it (mode "save"). For SIGTERM, also checks that the run
  exits within `signal_timeout` seconds with status 143 and, as its last line, the one-line message
  naming the command that resumes it."""
  offset = os.path.getsize(log_path) if os.path.exists(log_path) else 0
  proc = _start(flags, workdir, log_path, cache_dir)
  start = time.monotonic()
  while proc.poll() is None and not has_checkpoint(workdir) and time.monotonic() - start < 600:
    time.sleep(0.005)
  # a resumed run finds its checkpoints at once: the stop moments count from when it is past start-up
  while proc.poll() is None and not _started(log_path, offset) and time.monotonic() - start < 600:
    time.sleep(0.005)
  checkpointed = time.monotonic()
  wait = rng.uniform(0.0, 0.98 * span) if mode == "random" else rng.uniform(0.0, 0.5 * span)
  while time.monotonic() - checkpointed < wait and proc.poll() is None:
    time.sleep(0.005)
  if mode == "save":  # from a random moment on, wait for the next save to start
    while proc.poll() is None and not _saving(workdir) and time.monotonic() - checkpointed < 2 * span:
      time.sleep(0.001)
  at, after = time.monotonic() - start, time.monotonic() - checkpointed
  if proc.poll() is not None:  # faster than the horizon: the caller shortens it and tries again
    return dict(at=at, after_checkpoint=after, mid_save=False, finished_first=True)
  os.kill(proc.pid, sig)
  mid_save = _saving(workdir)
  event = dict(at=at, after_checkpoint=after, mid_save=mid_save, finished_first=False)
  if sig != signal.SIGTERM:
    proc.wait()  # what a SIGKILL leaves is what is on disk once the process is gone
    return dict(event, mid_save=_saving(workdir), left=disk_state(workdir))
  sent = time.monotonic()
  try:
    code = proc.wait(timeout=signal_timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    code = proc.wait()
    return dict(event, exit_seconds=None, code=code, message=None, problem="still running", left=disk_state(workdir))
  exit_seconds = time.monotonic() - sent
  if code in (0, -signal.SIGTERM) and os.path.exists(os.path.join(workdir, "results.json")):
    # the signal landed as the finished run exited (after its handler was restored): no stop happened
    return dict(event, finished_first=True)
  with open(log_path, errors="replace") as f:
    f.seek(offset)
    lines = [line.strip() for line in f if line.strip()]
  last = lines[-1] if lines else ""
  problems = []
  if code != SIGTERM_EXIT:
    problems.append(f"exit status {code}, not {SIGTERM_EXIT}")
  if not last.startswith("interrupted by SIGTERM") or "resume with: " not in last:
    problems.append(f"last line {last[:200]!r}")
  elif shlex.split(last.split("resume with: ", 1)[1])[1:] != _command(flags, workdir)[1:]:
    problems.append(f"resume command {last.split('resume with: ', 1)[1][:200]!r} is not the command that ran")
  if sum("interrupted by SIGTERM" in line for line in lines) != 1 or any("Traceback" in line for line in lines):
    problems.append("more than the one-line message (or a traceback)")
  return dict(
    event,
    exit_seconds=exit_seconds,
    code=code,
    message=last,
    problem="; ".join(problems) or None,
    left=disk_state(workdir),
  )


def untimed(obj):
  """`obj` without wall-clock fields (`workdir.is_wall_clock`: seconds, rates), which differ between any two runs."""
  if isinstance(obj, dict):
    return {k: untimed(v) for k, v in obj.items() if not is_wall_clock(k)}
  if isinstance(obj, list):
    return [untimed(v) for v in obj]
  return obj


def saved_arrays(workdir: str) -> dict:
  """Every parameter array a finished run leaves: {"<seed dir>/<checkpoint>/<path>": array}.

  The frozen blocks' variables (quicknet_checkpoints/<j>/variables) and the newest FitState of the
  end-to-end fit (end_to_end_checkpoints/<epoch>.npz: params, Adam moments, best params).
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
    steps = sorted(s for s in map(_finished, os.listdir(e2e)) if s is not None) if os.path.isdir(e2e) else []
    if steps:
      with np.load(os.path.join(e2e, f"{steps[-1]}.npz")) as f:
        paths = json.loads(str(f["meta"]))["paths"]
        out.update({f"{seed_dir}/end_to_end{path}": np.asarray(f[f"a{i}"]) for i, path in enumerate(paths)})
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
  term_trials: int = 0,
  signal_timeout: float = 30.0,
) -> dict:
  """The reference run, then `trials` SIGKILLed and `term_trials` SIGTERMed runs, each resumed to the
  end; returns counts, logs one line per trial.

  Args:
    flags: the experiment's flags (e.g. ["--flagfile=..."]), without --workdir.
    trials: how many SIGKILLed runs to compare with the reference.
    kills_per_trial: stops (SIGKILL or SIGTERM) before a trial is left to finish.
    root: where the workdirs go (a fresh temporary directory if None; kept for inspection).
    seed: seeds the stop moments.
    compilation_cache: a persistent XLA compilation cache directory shared by the runs, so restarts
      do not pay the compiles again ("": `root`/xla_cache; None: none). When it starts empty, the
      reference fills it and a second, warm uninterrupted run is compared with the reference (the
      cache must not change results) and sets the stop horizon.
    term_trials: how many SIGTERMed runs (after the SIGKILL ones): each must exit within
      `signal_timeout` seconds, with status 143 and the one-line message naming the resume command,
      which then finishes the run.
  """
  root = root or tempfile.mkdtemp(prefix="fault_injection_")
  os.makedirs(root, exist_ok=True)
  rng = random.Random(seed)
  cache_dir = os.path.join(root, "xla_cache") if compilation_cache == "" else compilation_cache
  cold = cache_dir is not None and not (os.path.isdir(cache_dir) and os.listdir(cache_dir))
  reference = os.path.join(root, "reference")
  shutil.rmtree(reference, ignore_errors=True)
  start = time.monotonic()
  _, first = _run_to_end(flags, reference, os.path.join(root, "reference.log"), timeout, cache_dir)
  horizon = time.monotonic() - start
  log(f"reference: {horizon:.1f}s uninterrupted (first checkpoint at {first:.1f}s), in {reference}")
  if cold:  # stops are timed against a run that, like every restart, finds the compiles cached
    warm = os.path.join(root, "reference_warm")
    shutil.rmtree(warm, ignore_errors=True)
    start = time.monotonic()
    _, first = _run_to_end(flags, warm, os.path.join(root, "reference_warm.log"), timeout, cache_dir)
    horizon = time.monotonic() - start
    diffs = compare(reference, warm)
    log(
      f"warm rerun (compiles from the cache): {horizon:.1f}s (first checkpoint at {first:.1f}s), "
      + ("identical to the reference" if not diffs else "DIFFERENT: " + "; ".join(diffs[:3]))
    )
  span = max(horizon - first, 0.05)  # the stop moments are drawn within this, after the first checkpoint
  counts = {name: dict(trials=0, identical=0, stops=0, mid_save=0, clean=0) for name in ("SIGKILL", "SIGTERM")}
  for trial in range(trials + term_trials):
    name, sig = ("SIGKILL", signal.SIGKILL) if trial < trials else ("SIGTERM", signal.SIGTERM)
    workdir = os.path.join(root, f"trial_{trial}")
    shutil.rmtree(workdir, ignore_errors=True)
    log_path = os.path.join(root, f"trial_{trial}.log")
    events, attempts = [], 0
    while len(events) < kills_per_trial:
      # a fresh run has every save ahead of it; a resumed one is stopped within what is left of it
      mode = "save" if len(events) % 2 == 0 else "random"
      left = max(span - sum(e["after_checkpoint"] for e in events), 0.05 * span)
      event = _stop_once(flags, workdir, log_path, sig, mode, left, rng, cache_dir, signal_timeout)
      if event["finished_first"]:  # no stop happened: the machine got faster; start the trial over
        span = 0.9 * (event["after_checkpoint"] + sum(e["after_checkpoint"] for e in events))
        attempts += 1
        shutil.rmtree(workdir, ignore_errors=True)
        events = []
        if attempts > 10:
          raise RuntimeError(f"trial {trial}: the run kept finishing before the stop; rerun on a quieter machine")
        continue
      events.append(dict(event, mode=mode))
    _finish(flags, workdir, log_path, timeout, cache_dir)  # for SIGTERM: the command its message named
    diffs = compare(reference, workdir)
    bad = [e for e in events if e.get("problem")]  # a SIGTERM that did not stop cleanly fails its trial
    c = counts[name]
    c["trials"] += 1
    c["identical"] += not diffs and not bad
    c["stops"] += len(events)
    c["mid_save"] += sum(e["mid_save"] for e in events)
    c["clean"] += not bad

    def described(e):
      text = f"{e['mode']} {name} at {e['at']:.1f}s ({e['after_checkpoint']:.1f}s after the first checkpoint)"
      text += " mid-save" if e["mid_save"] else ""
      if sig == signal.SIGTERM:
        if e["problem"] is None:
          text += f", exited {e['code']} in {e['exit_seconds']:.1f}s with the resume line"
        else:
          text += f", BAD EXIT: {e['problem']}"
      return text + f" left [{e['left']}]"

    log(
      f"trial {trial}: {', '.join(described(e) for e in events)}; resumed to the end: "
      + ("identical" if not diffs else "DIFFERENT: " + "; ".join(diffs[:3]))
    )
  for name, c in counts.items():
    if not c["trials"]:
      continue
    log(f"{name}: {c['stops']} stops, {c['mid_save']} of them while a checkpoint was being written")
    if name == "SIGTERM":
      log(
        f"SIGTERM: {c['clean']}/{c['trials']} trials exited within {signal_timeout:.0f}s with status "
        f"{SIGTERM_EXIT} and the one-line resume message"
      )
    log(f"{name}: {c['identical']}/{c['trials']} identical")
  identical = sum(c["identical"] for c in counts.values())
  total = trials + term_trials
  log(f"{identical}/{total} identical")
  return dict(
    identical=identical,
    trials=total,
    kills=counts["SIGKILL"]["stops"],
    mid_save=counts["SIGKILL"]["mid_save"] + counts["SIGTERM"]["mid_save"],
    kill=counts["SIGKILL"],
    term=counts["SIGTERM"],
    reference_seconds=horizon,
    first_checkpoint_seconds=first,
    root=root,
  )


def conv_smoke_flags(root: str) -> list[str]:
  """The VGG smoke's flags, on a synthetic CIFAR-10-format tarball written under `root` (400 train + 100
  test images, as tests/test_cifar_experiment.py uses; generated class patterns, never a result)."""
  sys.path.insert(0, ROOT)
  from scripts.make_cifar_smoke_data import main as make_cifar_smoke_data

  data_dir = os.path.join(root, "cifar_smoke_data")
  if not os.path.exists(os.path.join(data_dir, "cifar-10-python.tar.gz")):
    make_cifar_smoke_data([f"--out={data_dir}", "--num_train=400", "--num_test=100"])
  return [f"--flagfile={CONV_SMOKE_FLAGS}", f"--data_dir={data_dir}"]


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Command line: --trials N [--term_trials M] [--config mlp|conv] [--kills_per_trial K] [--seed S]
  [--root DIR] [--flagfile F] [-- flags]; or --cases [--kills N] [--seed S] [--root DIR]."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--trials", type=int, default=20, help="SIGKILL trials")
  parser.add_argument("--term_trials", type=int, default=0, help="SIGTERM trials, after the SIGKILL ones")
  parser.add_argument("--kills_per_trial", type=int, default=1, help="stops per trial before it is left to finish")
  parser.add_argument(
    "--config",
    choices=("mlp", "conv"),
    default="mlp",
    help="mlp: fashion_mnist_smoke.flags (the real Fashion-MNIST); conv: cifar10_smoke.flags (VGG-11, "
    "batch norm) on a synthetic CIFAR-10-format tarball written under --root",
  )
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--root", default=None, help="where workdirs go (default: a new temp dir)")
  parser.add_argument("--flagfile", default=None, help="the experiment's flagfile (instead of --config's)")
  parser.add_argument(
    "--no_compilation_cache",
    action="store_true",
    help="compile afresh in every run instead of sharing a persistent XLA cache",
  )
  parser.add_argument(
    "--cases",
    action="store_true",
    help="instead of the kill-and-resume trials, the fault cases around a finished run (benchmarks/fault_cases.py)",
  )
  parser.add_argument("--kills", type=int, default=10, help="with --cases: SIGKILLs per kill case")
  parser.add_argument("extra", nargs="*", help="more experiment flags, after --")
  args = parser.parse_args(argv)
  if args.cases:
    from benchmarks.fault_cases import run_cases

    outcomes = run_cases(args.root or tempfile.mkdtemp(prefix="fault_cases_"), args.kills, args.seed, print)
    return 0 if all(o.ok for o in outcomes) else 1
  if args.trials < 0 or args.term_trials < 0 or args.trials + args.term_trials < 1 or args.kills_per_trial < 1:
    parser.error("--trials + --term_trials and --kills_per_trial must be ≥ 1")
  root = args.root or tempfile.mkdtemp(prefix=f"fault_injection_{args.config}_")
  if args.flagfile:
    flags = [f"--flagfile={os.path.abspath(args.flagfile)}"]
  elif args.config == "conv":
    flags = conv_smoke_flags(root)
  else:
    flags = [f"--flagfile={SMOKE_FLAGS}"]
  summary = run_trials(
    [*flags, *args.extra],
    args.trials,
    args.kills_per_trial,
    root,
    args.seed,
    log=lambda m: print(m, flush=True),
    compilation_cache=None if args.no_compilation_cache else "",
    term_trials=args.term_trials,
  )
  return 0 if summary["identical"] == summary["trials"] else 1


if __name__ == "__main__":
  sys.exit(main())

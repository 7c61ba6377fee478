"""Faults around a finished run, each with the outcome it must have: changed data, a second run in a
live run's workdir, `--overwrite` over a user's files, flipped bytes in a frozen block and in an exported
cascade, and SIGKILLs at random moments while `experiments.predict` writes `--out` and while
`experiments.export` replaces an earlier export.

`python -m benchmarks.fault_injection --cases [--kills N]` runs them on a small MNIST-format run it
trains itself (`write_tiny_idx`: synthetic blobs, a pipeline check, not a result) and prints one table
row per case: what was done, what must happen, what happened, and whether it did. The kill cases stop
the tool at a uniform random moment within its measured duration, N times each; each time, `--out` must
be the previous file or the whole new one, and the export folder the previous cascade or the new one
(it loads, and its manifest is one of the two).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_FLAGS = ["--seeds=0", "--max_epochs=2", "--width=16", "--num_blocks=2"]


class Outcome(NamedTuple):
  """One case's row: what was done, what must happen, what happened, and whether it did."""

  case: str
  expected: str
  observed: str
  ok: bool


def _python(args: list, **kwargs) -> subprocess.CompletedProcess:
  env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, **kwargs)


def _last_line(text: str) -> str:
  lines = text.strip().splitlines()
  return lines[-1] if lines else ""


def _one_line_error(proc: subprocess.CompletedProcess, words: str) -> tuple[str, bool]:
  last = _last_line(proc.stderr)
  ok = proc.returncode == 1 and "Traceback" not in proc.stderr and words in last
  return f"rc {proc.returncode}: {last[:160]}", ok


def _train(data_dir: str, workdir: str) -> subprocess.CompletedProcess:
  return _python(["-m", "experiments.mnist", f"--data_dir={data_dir}", f"--workdir={workdir}", *RUN_FLAGS])


def _flip(path: str) -> None:
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0x01
  open(path, "wb").write(bytes(data))


def changed_data(data_dir: str, workdir: str) -> Outcome:
  from benchmarks.fault_injection import write_tiny_idx

  write_tiny_idx(data_dir, seed=1)  # the same files, other images and labels
  before = open(os.path.join(workdir, "results.json")).read()
  observed, ok = _one_line_error(_train(data_dir, workdir), "trained on other data")
  ok = ok and open(os.path.join(workdir, "results.json")).read() == before
  write_tiny_idx(data_dir)
  return Outcome(
    "data files changed under a finished run; same command", "rc 1, one line naming the splits", observed, ok
  )


def concurrent_run(root: str, data_dir: str) -> Outcome:
  workdir, log_path = os.path.join(root, "live"), os.path.join(root, "live.err")
  env = {**os.environ, "PYTHONPATH": ROOT}
  command = [sys.executable, "-m", "experiments.mnist", f"--data_dir={data_dir}", f"--workdir={workdir}"]
  with open(log_path, "w") as err:
    live = subprocess.Popen([*command, *RUN_FLAGS], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
  while live.poll() is None and "data: " not in open(log_path).read():  # it holds the lock from then on
    time.sleep(0.05)
  second = _python(["-m", "experiments.mnist", f"--data_dir={data_dir}", f"--workdir={workdir}", *RUN_FLAGS])
  observed, ok = _one_line_error(second, f"in use by another run (pid {live.pid}")
  ok = ok and live.wait() == 0
  return Outcome(
    "a second run in a live run's workdir", "rc 1, one line naming the live run's pid; it finishes", observed, ok
  )


def overwrite_over_user_files(data_dir: str, workdir: str) -> Outcome:
  notes = os.path.join(workdir, "notes.txt")
  open(notes, "w").write("mine")
  proc = _python(
    [
      "-m",
      "experiments.mnist",
      f"--data_dir={data_dir}",
      f"--workdir={workdir}",
      *RUN_FLAGS,
      "--width=8",
      "--overwrite",
    ]
  )
  observed, ok = _one_line_error(proc, "also holds others (notes.txt)")
  ok = ok and os.path.exists(notes) and os.path.exists(os.path.join(workdir, "results.json"))
  os.remove(notes)
  return Outcome(
    "--overwrite on a workdir holding notes.txt", "rc 1, one line listing it; nothing deleted", observed, ok
  )


def flipped_frozen_block(root: str, workdir: str, images: str) -> Outcome:
  import shutil

  copy = os.path.join(root, "flipped_block")
  shutil.copytree(workdir, copy)
  stored = os.path.join(copy, "seed_0", "quicknet_checkpoints", "0", "variables")
  files = [os.path.join(d, n) for d, _, names in os.walk(stored) for n in names]
  _flip(max(files, key=os.path.getsize))
  proc = _python(["-m", "experiments.predict", f"--workdir={copy}", f"--images={images}", f"--out={root}/x.jsonl"])
  observed, ok = _one_line_error(proc, "is damaged")
  return Outcome("a byte flipped in frozen block 0; predict", "rc 1, one line naming the file", observed, ok)


def flipped_export(root: str, workdir: str) -> Outcome:
  out = os.path.join(root, "flipped_export")
  proc = _python(["-m", "experiments.export", f"--workdir={workdir}", f"--out={out}"])
  if proc.returncode != 0:
    return Outcome(
      "a byte flipped in an exported block; load", "ValueError naming the file", _last_line(proc.stderr), False
    )
  _flip(os.path.join(out, "block_1.jax"))
  from quicknets_jax.workflows import cascade_loader

  try:
    cascade_loader.load(out)
    return Outcome("a byte flipped in an exported block; load", "ValueError naming the file", "loaded", False)
  except ValueError as e:
    return Outcome(
      "a byte flipped in an exported block; load", "ValueError naming the file", str(e)[:160], "block_1.jax" in str(e)
    )


def _killed_at_random(args: list, kills: int, rng: random.Random, check: Callable[[], bool]) -> tuple[int, int, int]:
  """Runs `args` `kills` times, each SIGKILLed at a uniform moment of its measured duration; returns
  (runs killed before they finished, runs that finished, runs after which `check()` failed)."""
  env = {**os.environ, "PYTHONPATH": ROOT}
  start = time.perf_counter()
  assert _python(args).returncode == 0
  duration = time.perf_counter() - start
  killed = finished = bad = 0
  for _ in range(kills):
    proc = subprocess.Popen(
      [sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(rng.uniform(0.0, duration))
    if proc.poll() is None:
      proc.send_signal(signal.SIGKILL)
      killed += 1
    else:
      finished += 1
    proc.wait()
    bad += not check()
  return killed, finished, bad


def killed_predict(root: str, workdir: str, images: str, kills: int, rng: random.Random) -> Outcome:
  out = os.path.join(root, "answers.jsonl")
  rows = len(np.load(images))
  open(out, "w").write("the previous answers\n")

  def whole() -> bool:
    text = open(out).read()
    return text == "the previous answers\n" or (text.count("\n") == rows and text.endswith("\n"))

  killed, finished, bad = _killed_at_random(
    ["-m", "experiments.predict", f"--workdir={workdir}", f"--images={images}", f"--out={out}"], kills, rng, whole
  )
  return Outcome(
    f"SIGKILL at a random moment of predict --out ({rows} rows), {kills} times",
    "--out is the previous file or all the new rows",
    f"{killed} killed, {finished} finished; {bad} partial files",
    bad == 0,
  )


def killed_export(root: str, workdir: str, kills: int, rng: random.Random) -> Outcome:
  from quicknets_jax.workflows import cascade_loader

  out = os.path.join(root, "export")
  assert (
    _python(["-m", "experiments.export", f"--workdir={workdir}", f"--out={out}", "--threshold=0.5"]).returncode == 0
  )

  def whole() -> bool:
    try:
      return cascade_loader.load(out).threshold in (0.5, 0.75)
    except (ValueError, OSError):
      return False

  killed, finished, bad = _killed_at_random(
    ["-m", "experiments.export", f"--workdir={workdir}", f"--out={out}", "--threshold=0.75"], kills, rng, whole
  )
  return Outcome(
    f"SIGKILL at a random moment of export into an earlier export, {kills} times",
    "the folder is the previous cascade or the new one, and loads",
    f"{killed} killed, {finished} finished; {bad} mixed or unloadable",
    bad == 0,
  )


def run_cases(root: str, kills: int, seed: int, log: Callable[[str], None]) -> list[Outcome]:
  """Trains the small run under ROOT, then runs every case; logs a Markdown table, returns its rows.

  Args:
    root: a folder for the data, the runs and the outputs.
    kills: SIGKILLs per kill case.
    seed: the random moments' seed.
    log: where the table's lines go.

  Returns:
    One `Outcome` per case.
  """
  from benchmarks.fault_injection import write_tiny_idx

  data_dir, workdir = os.path.join(root, "idx"), os.path.join(root, "run")
  write_tiny_idx(data_dir)
  trained = _train(data_dir, workdir)
  assert trained.returncode == 0, trained.stderr[-3000:]
  images = os.path.join(root, "images.npy")
  from quicknets_jax.data.idx import read_idx

  np.save(images, np.tile(read_idx(os.path.join(data_dir, "t10k-images-idx3-ubyte.gz")), (100, 1, 1)))
  rng = random.Random(seed)
  outcomes = [
    changed_data(data_dir, workdir),
    concurrent_run(root, data_dir),
    overwrite_over_user_files(data_dir, workdir),
    flipped_frozen_block(root, workdir, images),
    flipped_export(root, workdir),
    killed_predict(root, workdir, images, kills, rng),
    killed_export(root, workdir, kills, rng),
  ]
  log("| case | must | observed | ok |")
  log("|---|---|---|---|")
  for o in outcomes:
    log(f"| {o.case} | {o.expected} | {o.observed.replace('|', '/')} | {'yes' if o.ok else 'NO'} |")
  log(json.dumps(dict(cases=len(outcomes), ok=sum(o.ok for o in outcomes))))
  return outcomes

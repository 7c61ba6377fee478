"""A run's working directory: its lock, its config guard, atomic JSON files, per-seed results that are not
redone, and the line that says which machine the numbers came from."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from typing import Optional

import jax
import numpy as np

from quicknets_jax.core import files, options
from quicknets_jax.data import fingerprint
from quicknets_jax.training import parallel


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
  """The CPU's model name and family, as Linux reports them (speeds differ between CPU generations that
  share a model name: "AMD EPYC" covers several).

  Args:
    cpuinfo: the file to read (Linux's /proc/cpuinfo).

  Returns:
    e.g. "AMD EPYC (family 26)"; `platform.processor()` where the file is missing or names no model.
  """
  fields = {}
  try:
    with open(cpuinfo) as f:
      for line in f:
        key, sep, value = line.partition(":")
        if sep:
          fields.setdefault(key.strip(), value.strip())
  except OSError:
    pass
  model = fields.get("model name")
  if not model:
    return platform.processor() or "unknown CPU"
  family = fields.get("cpu family")
  return f"{model} (family {family})" if family else model


def machine_description() -> str:
  """A one-line description of where the numbers came from.

  Returns:
    The machine's architecture and CPU model, its CPU cores, the JAX devices and the jax and Python versions.
  """
  devices = jax.devices()
  kind = devices[0].device_kind if devices else "?"
  return (
    f"{platform.machine()} {cpu_model()}, {os.cpu_count()} CPU cores, {len(devices)} x {devices[0].platform} "
    f"({kind}), jax {jax.__version__}, python {platform.python_version()}"
  )


# Entries of results files that are wall-clock measurements or describe the machine: no rerun reproduces them.
# What an experiment or a study writes in its workdir (its files, its seeds' folders, the report's figures,
# a multi-process run's per-process logs, the temporary files of `core.files`): `--overwrite` deletes
# these, and refuses a folder holding anything else.
RUN_ENTRIES = re.compile(
  r"config\.json|data\.json|results\.(json|md)|metrics\.jsonl|tensorboard|seed_\d+|figures|arrays"
  r"|process_\d+\.log|run\.lock|" + files.TEMPORARY.pattern
)
LOCK_FILE = "run.lock"
WALL_CLOCK_KEYS = frozenset({"time", "machine", "training_flops_per_second_efficiency"})


def is_wall_clock(key: str) -> bool:
  """Whether a results entry named `key` is a wall-clock measurement (seconds, rates per second, the machine).

  Args:
    key: the entry's name.

  Returns:
    True for entries no rerun reproduces.
  """
  return key in WALL_CLOCK_KEYS or "seconds" in key or "per_second" in key


class UnreadableRunFileError(ValueError):
  """A run's file exists but does not parse (cut off, emptied or edited)."""


def read_json(path: str):
  """The JSON value stored at `path`.

  Args:
    path: the file.

  Returns:
    Its parsed contents.

  Raises:
    UnreadableRunFileError: the file is not valid JSON (one line naming it and the fix).
  """
  try:
    with open(path) as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    what = "empty" if os.path.getsize(path) == 0 else f"not valid JSON ({getattr(e, 'msg', e)})"
    raise UnreadableRunFileError(
      f"{path} is {what}: it was cut off or edited; restore it, or delete it to redo what it records "
      "(a seed's result, or the whole run for config.json and data.json)"
    ) from None


def write_json(path: str, obj, indent=None) -> None:
  """Writes `obj` as JSON to `path` atomically: a killed run never leaves half a file. In a multi-process
  run only process 0 writes (`parallel.is_writer`); the others compute the same `obj` and skip it.

  Args:
    path: the file.
    obj: a JSON-ready value.
    indent: `json.dump`'s indentation (None: one line).
  """
  if not parallel.is_writer():
    return
  with files.replaced_file(path) as f:
    json.dump(obj, f, indent=indent)


def write_results(workdir: str, name: str, results: dict, markdown: str, log: Callable[[str], None]) -> None:
  """WORKDIR/NAME.json (indented) and NAME.md, each written atomically, and one log line saying so.

  Args:
    workdir: the run's folder.
    name: the files' base name (e.g. "results").
    results: the JSON-ready results.
    markdown: the Markdown report.
    log: where the line goes.
  """
  if not parallel.is_writer():
    return
  write_json(os.path.join(workdir, f"{name}.json"), results, indent=1)
  with files.replaced_file(os.path.join(workdir, f"{name}.md")) as f:
    f.write(markdown)
  log(f"wrote {os.path.join(workdir, name + '.json')} and {name}.md")


def finished(path: str) -> Optional[dict]:
  """The result a finished earlier run wrote at `path` (a seed's JSON), or None: it is still to be done.

  Used as `finished(path) or saved(path, compute())`, so a stopped run redoes only what is missing.

  Args:
    path: the seed's result file.

  Returns:
    Its contents, or None when it does not exist.
  """
  return read_json(path) if os.path.exists(path) else None


def saved(path: str, result: dict) -> dict:
  """`result`, written to `path` first (atomically: `write_json`).

  Args:
    path: the file.
    result: the JSON-ready result.

  Returns:
    `result` itself.
  """
  write_json(path, result)
  return result


def record_data(workdir: str, dataset) -> None:
  """Writes WORKDIR/data.json (the dataset's card and fingerprint) and, for arrays a user passed, the kept
  validation and test splits, after checking that the run already there trained on the same data.

  Args:
    workdir: the run's folder.
    dataset: the run's `data.Dataset`.

  Raises:
    ValueError: WORKDIR/data.json records other data (a split's rows or contents, or the class count
      differ; the message names what changed and the two ways on).
  """
  path = os.path.join(workdir, "data.json")
  current = fingerprint.dataset_fingerprint(dataset)
  if os.path.exists(path):
    changed = fingerprint.differences(read_json(path).get("fingerprint"), current)
    if changed:
      raise ValueError(
        f"{workdir} holds a run trained on other data ({'; '.join(changed)}): choose another workdir, "
        "or start over there with --overwrite (overwrite=True in the API)"
      )
  # what `workflows.trained` needs to read new images with this run's blocks, even while it still trains
  write_json(path, dict(dataset.card(), fingerprint=current), indent=1)
  if dataset.kept_splits and parallel.is_writer():
    for split, name in dataset.kept_splits.items():
      os.makedirs(os.path.dirname(os.path.join(workdir, name)), exist_ok=True)
      with files.replaced_file(os.path.join(workdir, name), "wb") as f:
        kept = getattr(dataset, split)
        np.savez(f, images=kept.images, labels=kept.labels)


def not_written_by_runs(workdir: str) -> list[str]:
  """The names in `workdir` that no experiment or study writes there (`RUN_ENTRIES`), sorted.

  Args:
    workdir: an existing folder.

  Returns:
    The names of the files and folders a run did not write.
  """
  return sorted(name for name in os.listdir(workdir) if not RUN_ENTRIES.fullmatch(name))


def guard_workdir(config, workdir: str, overwrite: bool = False) -> None:
  """Stores `config` (a run config with `to_json()`) in WORKDIR/config.json; refuses to resume under a
  different one, naming the settings that differ. Settings marked resumable (seeds, the evaluation
  batch size) may change; a setting an older config.json lacks counts as its default.

  Args:
    config: the run's config.
    workdir: the run's folder (created if missing).
    overwrite: delete the run's files first and start over (a folder holding files no run writes, see
      `not_written_by_runs`, is refused instead).

  Raises:
    ValueError: the folder holds a run with another config and `overwrite` is False, or `overwrite` is
      True and the folder holds files no run writes.
  """
  path = os.path.join(workdir, "config.json")
  writer = parallel.is_writer()  # the other processes of a multi-process run only check
  if writer:
    os.makedirs(workdir, exist_ok=True)
  if overwrite and writer and os.path.exists(workdir):
    foreign = not_written_by_runs(workdir)
    if foreign:
      listed = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
      raise ValueError(
        f"--overwrite deletes a run's files, and {workdir} also holds others ({listed}): move them out, "
        "or choose another --workdir"
      )
    for name in os.listdir(workdir):
      target = os.path.join(workdir, name)
      if name != LOCK_FILE:  # this run's own
        shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
  if os.path.exists(path):
    stored = read_json(path)
    current = config.to_json()
    defaults = type(config)().to_json()
    resumable = options.resumable_names(type(config))
    differing = sorted(
      k for k in set(stored) | set(current) if k not in resumable and stored.get(k, defaults.get(k)) != current.get(k)
    )
    if differing:
      details = ", ".join(f"{k}: {stored.get(k)!r} → {current.get(k)!r}" for k in differing)
      raise ValueError(
        f"{workdir} holds a run with another config ({details}); pass --overwrite to start "
        "over or choose another --workdir"
      )
  write_json(path, config.to_json(), indent=2)  # atomic: another process may be reading it


class WorkdirInUseError(ValueError):
  """Another live run holds the workdir's lock."""


def _holder(text: str) -> str:
  try:
    held = json.loads(text)
    return f"pid {held['pid']} on {held['host']}, since {held['since']}"
  except (ValueError, KeyError, TypeError):
    return "a run that left no details"


@contextlib.contextmanager
def workdir_lock(workdir: str, log: Callable[[str], None]) -> Iterator[None]:
  """Holds WORKDIR/run.lock while a run writes in its workdir: a second run there is refused.

  The lock is the kernel's (`flock`), so a run that dies, however it dies, releases it; the file also
  names the holder (pid, host, start), which a refusal shows. A file still naming a holder when the lock
  is free was left by a run that was killed: the lock is taken over, with a line saying so. In a
  multi-process run only process 0 takes it (the others write nothing).

  Args:
    workdir: the run's folder (created if missing).
    log: where the take-over line goes.

  Yields:
    Nothing; the lock is held until the block ends.

  Raises:
    WorkdirInUseError: another live run holds the lock (the message names its pid and host).
  """
  if not parallel.is_writer():
    yield
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  with open(path, "a"):
    pass
  # held open read-only (flock needs no more): no file stays open for writing while the run trains
  with open(path) as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise WorkdirInUseError(
        f"{workdir} is in use by another run ({_holder(lock.read())}): wait for it to end, or choose another --workdir"
      ) from None
    left = lock.read().strip()
    if left:
      log(f"took over {path}: the run that held it ({_holder(left)}) ended without releasing it")
    since = time.strftime("%Y-%m-%d %H:%M:%S")
    with open(path, "w") as holder:
      holder.write(json.dumps(dict(pid=os.getpid(), host=socket.gethostname(), since=since)))
    try:
      yield
    finally:
      # emptied, so the next run finds no holder; where the disk is full or read-only now, the next
      # run takes the lock over with a line instead, and the error that ended this one is kept
      with contextlib.suppress(OSError):
        open(path, "w").close()
      fcntl.flock(lock, fcntl.LOCK_UN)

"""A run's working directory: its config guard, atomic JSON files, per-seed results that are not redone,
and the line that says which machine the numbers came from."""

from __future__ import annotations

import json
import os
import platform
import shutil
from collections.abc import Callable
from typing import Optional

import jax

from quicknets_jax.core import options
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
WALL_CLOCK_KEYS = frozenset({"time", "machine", "training_flops_per_second_efficiency"})


def is_wall_clock(key: str) -> bool:
  """Whether a results entry named `key` is a wall-clock measurement (seconds, rates per second, the machine).

  Args:
    key: the entry's name.

  Returns:
    True for entries no rerun reproduces.
  """
  return key in WALL_CLOCK_KEYS or "seconds" in key or "per_second" in key


def read_json(path: str):
  """The JSON value stored at `path`.

  Args:
    path: the file.

  Returns:
    Its parsed contents.
  """
  with open(path) as f:
    return json.load(f)


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
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=indent)
  os.replace(tmp, path)


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
  tmp = os.path.join(workdir, f"{name}.md.tmp")
  with open(tmp, "w") as f:
    f.write(markdown)
  os.replace(tmp, os.path.join(workdir, f"{name}.md"))
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


def guard_workdir(config, workdir: str, overwrite: bool = False) -> None:
  """Stores `config` (a run config with `to_json()`) in WORKDIR/config.json; refuses to resume under a
  different one, naming the settings that differ. Settings marked resumable (seeds, the evaluation
  batch size) may change; a setting an older config.json lacks counts as its default.

  Args:
    config: the run's config.
    workdir: the run's folder (created if missing).
    overwrite: empty the folder first and start over.

  Raises:
    ValueError: the folder holds a run with another config and `overwrite` is False.
  """
  path = os.path.join(workdir, "config.json")
  writer = parallel.is_writer()  # the other processes of a multi-process run only check
  if writer:
    os.makedirs(workdir, exist_ok=True)
  if overwrite and writer and os.path.exists(workdir):
    for name in os.listdir(workdir):
      target = os.path.join(workdir, name)
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

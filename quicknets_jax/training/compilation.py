"""XLA compilation: the persistent compilation cache and a meter of the seconds spent compiling.

A rerun or a resumed run compiles the same programs again: with the persistent cache on
(`enable_persistent_cache`, which the entry points call with `--compile_cache`), XLA reads them back
from disk instead. `CompileMeter` adds up what jax reports through `jax.monitoring` while it is open:
tracing, lowering to MLIR and the backend compile (which, on a cache hit, is the read from the cache),
plus the cache's hits and misses, so a fit can record its compile seconds and a run can say whether
its cache was cold or warm.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from typing import Optional

import jax

# The jax.monitoring events whose durations are compile time (trace, lower, compile or cache read).
COMPILE_EVENTS = (
  "/jax/core/compile/jaxpr_trace_duration",
  "/jax/core/compile/jaxpr_to_mlir_module_duration",
  "/jax/core/compile/backend_compile_duration",
)
_HIT, _MISS = "/jax/compilation_cache/cache_hits", "/jax/compilation_cache/cache_misses"
# Programs that compile faster than this are not written to the cache (jax's default is 1 s). Every
# program is kept: a QuickNet compiles dozens of small ones (each block's forward passes, its commitment
# head's epoch), each a fraction of a second, which together are seconds of every rerun.
MIN_COMPILE_SECONDS = 0.0
CACHE_WORDS = ("auto", "none")


def default_cache_dir() -> str:
  """Where `--compile_cache=auto` keeps compiled programs.

  Returns:
    $JAX_COMPILATION_CACHE_DIR if set, else $XDG_CACHE_HOME/quicknets_jax/xla (with $XDG_CACHE_HOME
    unset, ~/.cache/quicknets_jax/xla, the home folder expanded).
  """
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return os.environ["JAX_COMPILATION_CACHE_DIR"]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "quicknets_jax", "xla")


def enable_persistent_cache(where: str = "auto") -> Optional[str]:
  """Turns on XLA's persistent compilation cache in folder `where`, or turns it off.

  Process-wide (it sets jax's config): call before the first compile. Programs are stored whatever
  their compile time (`MIN_COMPILE_SECONDS`).

  Args:
    where: a folder (created if missing; "~" is expanded), "auto" for `default_cache_dir()`, or "none"
      to turn the cache off.

  Returns:
    The cache folder as an absolute path, or None when the cache is off.

  Raises:
    ValueError: the folder cannot be created (the message names the flag values that fix it).
  """
  if where == "none":
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  folder = os.path.abspath(os.path.expanduser(default_cache_dir() if where == "auto" else where))
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise ValueError(
      f"cannot create the compilation cache folder {folder}: {e.strerror or e}; pass --compile_cache=PATH "
      "(a writable folder) or --compile_cache=none"
    ) from None
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", folder)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  return folder


def cache_dir() -> Optional[str]:
  """The persistent cache folder in use, or None when the cache is off.

  Returns:
    jax's `jax_compilation_cache_dir` when the cache is on and a folder is set, else None.
  """
  if not jax.config.jax_enable_compilation_cache:
    return None
  return jax.config.jax_compilation_cache_dir or None


@dataclasses.dataclass(eq=False)  # identity: meters nest, and two open ones may hold equal counts
class CompileMeter:
  """Compile seconds and cache hits/misses seen while it is open (`with CompileMeter() as meter:`).

  Meters nest (each open one counts everything). A meter counts the compiles of the thread that opened
  it (jax compiles on the calling thread): programs compiled ahead on another thread
  (`trainer.compile_ahead`) are that thread's meter's, not the waiting fit's; a meter opened with
  `every_thread=True` counts every thread's. A meter compares and hashes by identity.

  Attributes:
    seconds: the seconds of tracing, lowering and backend compiles (or cache reads) while open.
    cache_hits: programs read from the persistent cache while open.
    cache_misses: programs looked up in the persistent cache and not found while open.
    every_thread: count the compiles of every thread, not only the opening thread's (a run's total).
  """

  seconds: float = 0.0
  cache_hits: int = 0
  cache_misses: int = 0
  every_thread: bool = False
  thread: int = dataclasses.field(default=0, repr=False)  # the opening thread's id, set on entry

  def __enter__(self) -> CompileMeter:
    _install()
    self.thread = threading.get_ident()
    with _LOCK:
      _OPEN.append(self)
    return self

  def __exit__(self, *exc) -> None:
    with _LOCK:
      _OPEN.remove(self)

  def summary(self) -> dict:
    """{"seconds", "cache_hits", "cache_misses"} for results files.

    Returns:
      A dict of the meter's three counts, under their attribute names.
    """
    return dict(seconds=self.seconds, cache_hits=self.cache_hits, cache_misses=self.cache_misses)


_LOCK = threading.Lock()
_OPEN: list = []
_INSTALLED = []


def _on_duration(event: str, duration: float, **_) -> None:
  if event in COMPILE_EVENTS:
    thread = threading.get_ident()
    with _LOCK:
      for meter in _OPEN:
        if meter.every_thread or meter.thread == thread:
          meter.seconds += duration


def _on_event(event: str, **_) -> None:
  if event in (_HIT, _MISS):
    thread = threading.get_ident()
    with _LOCK:
      for meter in _OPEN:
        if not (meter.every_thread or meter.thread == thread):
          continue
        if event == _HIT:
          meter.cache_hits += 1
        else:
          meter.cache_misses += 1


def _install() -> None:
  """Registers the two listeners once per process (jax.monitoring has no way to remove one)."""
  with _LOCK:
    if _INSTALLED:
      return
    jax.monitoring.register_event_duration_secs_listener(_on_duration)
    jax.monitoring.register_event_listener(_on_event)
    _INSTALLED.append(True)


def fit_compile_seconds(history) -> float:
  """A fit's compile seconds: the sum of its epochs' `compile_seconds` (0 for records without them).

  Args:
    history: the fit's epoch records (dicts, as `trainer.fit` writes them).

  Returns:
    The total, a float.
  """
  return float(sum(record.get("compile_seconds", 0.0) for record in history))


def cache_entries() -> int:
  """Programs in the persistent cache folder now (0 when the cache is off or the folder is empty).

  Returns:
    The number of entries whose names end in "-cache" in `cache_dir()`; 0 when the cache is off or its
    folder does not exist.
  """
  folder = cache_dir()
  if folder is None or not os.path.isdir(folder):
    return 0
  return sum(1 for name in os.listdir(folder) if name.endswith("-cache"))


def compile_summary(meter: CompileMeter, entries_at_start: int) -> dict:
  """What results.json says of a run's compiles.

  The total seconds, the cache folder, and whether the cache was off, cold (empty when the run started)
  or warm (it held `entries_at_start` programs), with the hits and misses. A warm rerun can still miss:
  a program the cache does not hold is compiled and counted as a miss.

  Args:
    meter: the meter that was open during the run.
    entries_at_start: `cache_entries()` when the run started.

  Returns:
    A dict with "total" (seconds), "cache" ("off", "cold" or "warm"), "cache_dir" (the folder, or None),
    "entries_at_start", "cache_hits" and "cache_misses".
  """
  folder = cache_dir()
  state = "off" if folder is None else ("warm" if entries_at_start else "cold")
  return dict(
    total=meter.seconds,
    cache=state,
    cache_dir=folder,
    entries_at_start=entries_at_start,
    cache_hits=meter.cache_hits,
    cache_misses=meter.cache_misses,
  )

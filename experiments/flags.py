"""absl flags generated from the library's config dataclasses: one flag per setting, declared nowhere else.

`define_config_flags(ExperimentConfig)` defines a flag for every leaf of the config tree (its name,
help, range and choices come from the field's `core.config.option`), and `config_from_flags` reads
them back into the config; a bad value exits with one line naming the flag. Entry points add only
what is not a hyperparameter (`--workdir`, `--overwrite`, where to run).
"""

from __future__ import annotations

import _thread
import contextlib
import errno
import logging as std_logging
import os
import shlex
import signal
import sys
import tempfile
import typing
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional

from absl import flags, logging

import experiments
from quicknets_jax.core import options
from quicknets_jax.core.platform import configure_cpu
from quicknets_jax.core.progress import stderr_log
from quicknets_jax.data.errors import DataError
from quicknets_jax.training import compilation
from quicknets_jax.workflows.predict import operating_threshold
from quicknets_jax.workflows.trained import load_trained

FLAGS = flags.FLAGS
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository

flags.DEFINE_string(
  "compile_cache",
  "auto",
  "Persistent XLA compilation cache: a folder, auto ($JAX_COMPILATION_CACHE_DIR, else "
  "$XDG_CACHE_HOME/quicknets_jax/xla or ~/.cache/quicknets_jax/xla) or none. A rerun or a resumed run reads "
  "its compiled programs back instead of compiling them again.",
)


def stop_if_signalled_during_start_up() -> None:
  """Ends the process with one line and 130 (Ctrl-C) / 143 (SIGTERM) if either came during start-up.

  Raises:
    SystemExit: when `experiments.EARLY_SIGNALS` holds one; nothing has been written yet.
  """
  if experiments.EARLY_SIGNALS:
    sigterm = experiments.EARLY_SIGNALS[0] == signal.SIGTERM
    what = "SIGTERM" if sigterm else "Ctrl-C"
    print(f"interrupted by {what} during start-up; nothing was written", file=sys.stderr, flush=True)
    raise SystemExit(143 if sigterm else 130)


def start_process(interruptible: bool = False, output_dirs: Sequence[str] = ()) -> None:
  """What every entry point's main does first, before JAX starts: the XLA:CPU flags the project's steps
  run faster with (`quicknets_jax.configure_cpu`), quiet absl logging (orbax and jax log every save and
  backend probe at INFO) and the persistent compilation cache of `--compile_cache`; and, before any work,
  a check that every folder the run will write can be written (`check_output_dirs`).

  Args:
    interruptible: the entry point runs inside `one_line_errors`, which acts on a Ctrl-C or SIGTERM
      noted during start-up (`experiments.EARLY_SIGNALS`). Other entry points stop here on one, with a
      line, and get the default handling of both back.
    output_dirs: the entry point's own flags that name a folder it writes (e.g. "workdir", "out");
      `--records_dir`, `--data_cache` and `--compile_cache` are checked wherever they are defined.
  """
  if not interruptible:
    stop_if_signalled_during_start_up()
    for signum, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
      if signal.getsignal(signum) is experiments._note_signal:
        signal.signal(signum, default)
  check_output_dirs((*output_dirs, *_SHARED_OUTPUT_DIRS))
  configure_cpu()
  logging.set_verbosity(logging.WARNING)
  std_logging.getLogger("absl").setLevel(std_logging.WARNING)  # orbax logs every save through it
  try:
    compilation.enable_persistent_cache(FLAGS.compile_cache)
  except ValueError as e:
    fail(str(e))


# Folder flags that mean the same wherever they are defined (by `define_config_flags` or here). The
# first two are only read when they already hold their data, so an existing one need not be writable.
_SHARED_OUTPUT_DIRS = ("records_dir", "data_cache", "compile_cache")
_READ_IF_PRESENT = ("records_dir", "data_cache")


def unwritable_folder(path: str) -> Optional[str]:
  """Why the folder `path` cannot be written, or None when it can.

  It can when it exists and takes a new file, or when it can be created: its nearest existing parent
  is a folder that takes a new file. The check writes (and removes) one empty file and creates nothing
  else, so a run refused later (or `--print_config`) leaves no empty folder behind.

  Args:
    path: the folder (`~` is expanded).

  Returns:
    None, or the reason in words (e.g. "/a/b is a file, not a folder").
  """
  path = os.path.abspath(os.path.expanduser(path))
  existing = path
  while not os.path.lexists(existing):
    existing = os.path.dirname(existing)
  what = "" if existing == path else " (the nearest part of it that exists)"
  if not os.path.isdir(existing):
    return f"{existing}{what} is {'a file, ' if os.path.isfile(existing) else ''}not a folder"
  try:
    fd, probe = tempfile.mkstemp(prefix=".quicknets_write_check_", dir=existing)
  except OSError as e:
    return f"{existing}{what} does not take new files ({e.strerror or e})"
  os.close(fd)
  os.remove(probe)
  return None


def check_output_dirs(names: Sequence[str], flag_values: flags.FlagValues = FLAGS) -> None:
  """Exits with one line naming the flag when a folder that one of the flags `names` names (those that
  are defined and set) cannot be created or written — before any work, not after the first epoch.

  Args:
    names: flag names, e.g. ("workdir", "records_dir"); `compile_cache`'s words count as their folders
      ("auto": `compilation.default_cache_dir()`; "none": nothing to check).
    flag_values: where the flags are (absl's global FLAGS).
  """
  for name in names:
    value = flag_values[name].value if name in flag_values else None
    folder = value
    if name == "compile_cache":
      folder = None if value == "none" else compilation.default_cache_dir() if value == "auto" else value
    if not folder or (name in _READ_IF_PRESENT and os.path.isdir(folder)):
      continue
    problem = unwritable_folder(folder)
    if problem:
      other = " or --compile_cache=none" if name == "compile_cache" else ""
      fail(f"--{name}={value} cannot be written: {problem}; pass a --{name} folder you can write to{other}")


def _unwrap_optional(tp) -> tuple[Any, bool]:
  """(T, True) for Optional[T], (tp, False) otherwise."""
  if typing.get_origin(tp) is typing.Union:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if len(args) == 1:
      return args[0], True
  return tp, False


def _element_type(tp) -> Optional[type]:
  """The element type of tuple[T, ...] (None when `tp` is not such a tuple)."""
  if typing.get_origin(tp) is tuple:
    args = typing.get_args(tp)
    return args[0] if args else str
  return None


def _show(value) -> Optional[str]:
  return None if value is None else str(value)


def define_config_flags(cls: type, defaults: Optional[dict] = None, choices: Optional[dict] = None) -> None:
  """Defines one absl flag per setting of the config class `cls`.

  `defaults`: {flag name: default} for this entry point (e.g. the dataset of experiments.mnist);
  `choices`: {flag name: allowed values} narrowing a setting's choices for this entry point.
  """
  defaults, choices = defaults or {}, choices or {}
  for leaf in options.leaves(cls):
    info, name = leaf.info, leaf.name
    default = defaults.get(name, leaf.field.default)
    tp, _ = _unwrap_optional(leaf.type)
    element = _element_type(tp)
    bounds = dict(lower_bound=info.lower, upper_bound=info.upper)
    if info.none_word is not None:  # "auto" or a value
      flags.DEFINE_string(
        name, info.none_word if default is None else str(default), info.help + f" ('{info.none_word}' or a value)"
      )
    elif element is not None:
      flags.DEFINE_list(name, None if default is None else [str(v) for v in default], info.help)
    elif tp is bool:
      flags.DEFINE_bool(name, default, info.help)
    elif tp is int:
      flags.DEFINE_integer(name, default, info.help, **bounds)
    elif tp is float:
      flags.DEFINE_float(name, default, info.help, **bounds)
    elif tp is str and (info.choices or name in choices):
      flags.DEFINE_enum(name, default, list(choices.get(name, info.choices)), info.help)
    elif tp is str:
      flags.DEFINE_string(name, _show(default), info.help)
    else:
      raise TypeError(f"{cls.__name__}.{name}: no flag for settings of type {leaf.type}")


def _parse(leaf: options.Leaf, raw):
  """The value of one flag in the config's form; ValueError names the flag and what it takes."""
  tp, _ = _unwrap_optional(leaf.type)
  element = _element_type(tp)
  if leaf.info.none_word is not None:
    if raw == leaf.info.none_word:
      return None
    try:
      return tp(raw)
    except ValueError:
      valid = ""
      if leaf.info.lower is not None and leaf.info.upper is not None:
        valid = f" in [{leaf.info.lower:g}, {leaf.info.upper:g}]"
      raise ValueError(f"--{leaf.name} must be '{leaf.info.none_word}' or a number{valid}, got {raw!r}") from None
  if element is not None and raw is not None:
    try:
      return tuple(element(v) for v in raw)
    except ValueError:
      kind = {int: "integers", float: "numbers"}.get(element, "values")
      raise ValueError(f"--{leaf.name} must be {kind} separated by commas, got {','.join(raw)!r}") from None
  return raw


def config_from_flags(cls: type, **overrides):
  """The `cls` config the flags describe (plus `overrides`, by flat name); bad values exit with one
  line on stderr."""
  try:
    flat = {leaf.name: _parse(leaf, getattr(FLAGS, leaf.name)) for leaf in options.leaves(cls)}
    flat.update(overrides)
    return options.from_flat(cls, flat)
  except (ValueError, TypeError) as e:
    raise SystemExit(f"error: {e}") from None


def flagfile_settings(cls: type, path: str) -> dict:
  """{flat name: value} of the `cls` settings a flagfile sets (`--name=value`, `--name`, `--noname`
  lines; comments and flags of other configs are skipped), parsed as the flags would parse them."""
  by_name = {leaf.name: leaf for leaf in options.leaves(cls)}
  settings = {}
  with open(path) as f:
    for line in f:
      line = line.strip()
      if not line.startswith("--"):
        continue
      name, has_value, raw = line[2:].partition("=")
      if name == "flagfile":  # nested, as absl reads them: relative to the working directory
        settings.update(flagfile_settings(cls, raw if os.path.exists(raw) else os.path.join(_ROOT, raw)))
        continue
      if not has_value and name.startswith("no") and name[2:] in by_name:
        name, raw = name[2:], "false"
      elif not has_value:
        raw = "true"
      leaf = by_name.get(name)
      if leaf is None:
        continue
      tp, _ = _unwrap_optional(leaf.type)
      if leaf.info.none_word is None and _element_type(tp) is not None:
        raw = raw.split(",")
      elif tp is bool:
        raw = raw.lower() in ("1", "true")
      elif tp in (int, float) and leaf.info.none_word is None:
        raw = tp(raw)
      settings[name] = _parse(leaf, raw)
  return settings


def fail(message: str) -> None:
  """Prints `error: message` on stderr and exits 1 (the entry points' one-line errors)."""
  print(f"error: {message}", file=sys.stderr)
  raise SystemExit(1)


def seeds_from_flag(values) -> tuple:
  """--seeds as a tuple of distinct non-negative ints; anything else (a repeat too) exits with one line."""
  try:
    seeds = tuple(int(s) for s in values)
  except ValueError:
    fail(f"--seeds must be integers separated by commas, got {','.join(values)!r}")
  try:
    options.check_seeds(seeds, "--seeds")
  except ValueError as e:
    fail(str(e))
  return seeds


def check_known(values, known, flag: str) -> None:
  """Exits with one line when a list flag names values outside `known`."""
  unknown = sorted(set(values) - set(known))
  if unknown:
    fail(f"--{flag}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")


def define_trained_run_flags() -> None:
  """The flags of the commands that use a trained workdir (predict, export): which run, seed and blocks,
  and the exit threshold — given, one target met on the run's validation split, or the run's own."""
  flags.DEFINE_string("workdir", None, "A run's workdir (config.json, data.json, seed_<s>/).", required=True)
  flags.DEFINE_integer("seed", None, "Which seed's blocks (default: the run's first seed with a frozen block).")
  flags.DEFINE_integer("blocks", None, "Use only the first K frozen blocks (default: all frozen so far).")
  flags.DEFINE_float("threshold", None, "Exit threshold in [0, 1] (default: the run's operating threshold).")
  flags.DEFINE_float("target_mflops", None, "Choose the most accurate threshold within this many MFLOPs per image.")
  flags.DEFINE_float("target_accuracy", None, "Choose the cheapest threshold reaching this accuracy (a fraction).")
  flags.DEFINE_float(
    "target_exit_fraction", None, "Choose the most accurate threshold letting this share leave before the last exit."
  )
  flags.DEFINE_float(
    "confidence",
    None,
    "With --target_accuracy: the cheapest threshold whose accuracy is at least the target with this "
    "probability over the draw of the validation split (e.g. 0.9).",
  )


def trained_run_from_flags(log):
  """(the `workflows.trained.TrainedQuickNet` the flags of `define_trained_run_flags` name, its threshold).
  Raises what `load_trained` and `operating_threshold` raise (DataError, ValueError)."""
  trained = load_trained(FLAGS.workdir, FLAGS.seed, FLAGS.blocks)
  threshold, _ = operating_threshold(
    trained,
    FLAGS.threshold,
    FLAGS.target_mflops,
    FLAGS.target_accuracy,
    FLAGS.target_exit_fraction,
    log=log,
    confidence=FLAGS.confidence,
  )
  return trained, threshold


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_RERUN = "finished blocks and epochs are checkpointed: rerun the same command to resume"


def _write_failed(e: OSError) -> str:
  """The line for a run that could not write a file: what, why, and how to go on."""
  where = e.filename or "the workdir"
  if e.errno == errno.ENOSPC:
    return f"no space left on device writing {where}: free disk space (or move --workdir); {_RERUN}"
  if e.errno == errno.EROFS:
    return f"cannot write {where}: read-only file system: make it writable (or move --workdir); {_RERUN}"
  return f"cannot write {where}: {e.strerror or e}; choose a writable --workdir"


class Preempted(BaseException):
  """SIGTERM arrived (Cloud TPU's preemption notice, or `kill`); like KeyboardInterrupt, not an
  `Exception`, so no `except Exception` on the way up mistakes it for a failure."""


def resume_command() -> str:
  """The command line that started this process, as `python -m MODULE ARGS` (rerunning it resumes)."""
  main = sys.modules.get("__main__")
  module = getattr(getattr(main, "__spec__", None), "name", None)
  start = ["python", "-m", module] if module else ["python", sys.argv[0]]
  return " ".join(shlex.quote(a) for a in start + sys.argv[1:])


TRAINING_LEFT = "finished epochs and blocks are checkpointed — resume with"
TOOL_LEFT = "nothing was written (an earlier output is kept whole) — run it again with"


@contextlib.contextmanager
def tool_errors() -> Iterator[None]:
  """The body of a tool that reads a trained run (predict, export): Ctrl-C or SIGTERM ends it with one
  line and 130 / 143 (`one_line_errors`, saying its earlier output is kept), and bad data, settings or
  files (`DataError`, `ValueError`, `OSError`) with `error: <the message>` and exit status 1."""
  with one_line_errors(stderr_log, left=TOOL_LEFT):
    try:
      yield
    except (DataError, ValueError, OSError) as e:
      fail(str(e))


@contextlib.contextmanager
def one_line_errors(log: Callable[[str], None], left: str = TRAINING_LEFT) -> Iterator[Callable[[str], None]]:
  """The body of an entry point's run: whatever stops it ends the process with one line on stderr.

  Yields the log to train with (it remembers the last progress line). Ctrl-C or SIGTERM ends it within
  a step with what it was doing, what it leaves (`left`) and the command that started it: exit status
  130 (Ctrl-C) or 143 (SIGTERM), also when it came during start-up (`experiments.EARLY_SIGNALS`) or
  inside one of jax's callbacks; a second Ctrl-C or SIGTERM after the first is ignored.
  Bad data or settings (`DataError`, `ValueError`) and a workdir that cannot be written (`OSError`) end
  it with `error: ...` and exit status 1.

  Args:
    log: where progress lines go.
    left: what an interrupted run leaves, before the command (training: every finished epoch and
      block is checkpointed, and the command resumes).
  """
  last = []

  def tracking_log(message: str) -> None:
    last[:] = [message]
    log(message)

  in_unraisable_hook = []

  def send_again(signum):
    # from a thread nobody waits for: raising it here (signal.raise_signal, or waiting for a thread to
    # start) would run the handler at once, inside the hook
    _thread.start_new_thread(os.kill, (os.getpid(), signum))

  def on_signal(signum, frame):
    del frame
    if in_unraisable_hook:  # an exception raised now would be dropped too
      send_again(signum)
      return
    # one is enough: a second (Ctrl-C pressed twice, a scheduler signalling every process of the job)
    # must neither raise again inside the clean-up the first one starts nor cut its line short
    for s in _STOP_SIGNALS:
      signal.signal(s, signal.SIG_IGN)
    raise Preempted() if signum == signal.SIGTERM else KeyboardInterrupt()

  def on_unraisable(unraisable):
    if not isinstance(unraisable.exc_value, (KeyboardInterrupt, Preempted)):
      previous_hook(unraisable)
      return
    # it was raised inside a callback whose exceptions Python prints and drops (jax's gc callback):
    # deliver it again, to be raised where it ends the run
    signum = signal.SIGTERM if isinstance(unraisable.exc_value, Preempted) else signal.SIGINT
    in_unraisable_hook.append(signum)
    try:
      signal.signal(signum, on_signal)
      send_again(signum)
    finally:
      in_unraisable_hook.clear()

  previous = {s: signal.signal(s, on_signal) for s in _STOP_SIGNALS}
  previous_hook, sys.unraisablehook = sys.unraisablehook, on_unraisable
  try:
    stop_if_signalled_during_start_up()  # before these handlers existed
    yield tracking_log
  except (KeyboardInterrupt, Preempted) as e:
    for s in _STOP_SIGNALS:  # a second one must not cut the line short
      signal.signal(s, signal.SIG_IGN)
    what = "SIGTERM" if isinstance(e, Preempted) else "Ctrl-C"
    where = f" during: {last[0].strip()[:160]}" if last else ""
    print(f"interrupted by {what}{where}; {left}: {resume_command()}", file=sys.stderr, flush=True)
    raise SystemExit(143 if isinstance(e, Preempted) else 130) from None
  except (DataError, ValueError) as e:
    fail(str(e))
  except OSError as e:  # an unwritable workdir, a file where a folder should be, a full disk
    fail(_write_failed(e))
  finally:
    sys.unraisablehook = previous_hook
    for s, handler in previous.items():
      signal.signal(s, handler)

"""Orbax checkpoints: one per frozen block, and one per epoch of every fit still in progress.

They only checkpoint: `trainer.fit(..., checkpoint=FitCheckpointer(...))` resumes and saves a fit,
the QuickNet algorithm saves its frozen blocks; nothing here knows what a block's record holds.

`BlockCheckpointer`: step j of its orbax manager is frozen block j, holding its variables and the next
block's working sets. `FitCheckpointer`: file <e>.npz is the whole `trainer.FitState` of one fit (a
block, a commitment head or the end-to-end baseline) after e epochs — its train state (params, Adam
moments and learning rate), best-validation params, schedule (plateau and early-stop counters) and
history — so a killed run loses at most one epoch and goes on bit-identically (every random key
derives from (seed, block, epoch, step)).

Arrays are saved from the host (`jax.device_get`) and restored into numpy targets, never with a saved
sharding: a run checkpointed on 8 devices resumes on 1 or 4 (`trainer.fit` replicates the restored state
onto the current mesh; tests/test_elastic_resume.py).

Saves are atomic (orbax writes `<step>.orbax-checkpoint-tmp` and renames it when complete; an epoch's
file is renamed into place once on disk, by a writer thread while the next epoch runs), so a run killed
mid-save resumes from the previous one.
Unreadable checkpoints and failed saves raise `CheckpointError` with one line naming the block and the
fix; nothing falls back to fresh weights.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
from typing import Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from quicknets_jax.core import files
from quicknets_jax.training import parallel


def _nonempty(idx) -> np.ndarray:
  idx = np.asarray(idx, np.int32).reshape(-1)
  return idx if idx.size else np.full((1,), -1, np.int32)


def _first_line(e: BaseException) -> str:
  text = str(e).splitlines()
  return f"{type(e).__name__}: {text[0][:200] if text else ''}"


class CheckpointError(RuntimeError, ValueError):
  """A checkpoint exists but cannot be read, or one could not be written.

  Also a ValueError, so entry points print it as their one-line error instead of a traceback.
  """


def _save_failed(what: str, directory: str, previous, e: BaseException) -> CheckpointError:
  """One-line error for a failed save; names what is still on disk and how to go on."""
  kept = f"the checkpoint of {previous} is intact" if previous is not None else "no earlier checkpoint is affected"
  # tensorstore (orbax's writer) reports a full disk as a ValueError naming RESOURCE_EXHAUSTED
  if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left on device" in str(e):
    return CheckpointError(
      f"no space left on device while saving {what} to {directory}; {kept}: free disk "
      "space (or move --workdir) and rerun the same command to resume"
    )
  if isinstance(e, OSError) and e.errno == errno.EROFS:
    return CheckpointError(
      f"read-only file system while saving {what} to {directory}; {kept}: make it writable "
      "(or move --workdir) and rerun the same command to resume"
    )
  return CheckpointError(
    f"could not save {what} to {directory} ({_first_line(e)}); {kept}: fix the "
    "cause and rerun the same command to resume"
  )


class _OrbaxErrorsDropped(logging.Filter):
  """Drops the error records of orbax's writers (through absl) and of their asyncio tasks."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.ERROR:
      return True
    return record.name != "asyncio" and f"{os.sep}orbax{os.sep}" not in record.pathname


_ORBAX_ERRORS_DROPPED = _OrbaxErrorsDropped()
# Bytes a frozen block's orbax checkpoint takes beside its arrays': a few dozen metadata files, each
# rounded up to the file system's blocks.
_ORBAX_OVERHEAD = 1 << 20


@contextlib.contextmanager
def _orbax_errors_dropped():
  """While orbax saves, the logs and callback errors of its writers are dropped: a failed write is
  logged with its traceback by each writer (and their callbacks find asyncio's loop closed) before the
  caller raises it once, as a `CheckpointError` that names what is intact. After a failure the logs stay
  dropped until the process ends: asyncio logs the failed tasks again as they are collected."""
  loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]  # orbax logs through absl
  for logger in loggers:
    logger.addFilter(_ORBAX_ERRORS_DROPPED)
  previous_hook = sys.unraisablehook

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError) and "loop is closed" in str(unraisable.exc_value)):
      previous_hook(unraisable)

  sys.unraisablehook = hook
  try:
    yield
  finally:
    sys.unraisablehook = previous_hook
  for logger in loggers:
    logger.removeFilter(_ORBAX_ERRORS_DROPPED)


def _check_space(directory: str, arrays, what: str, intact: Optional[str]) -> None:
  """Raises the no-space error before a save that would not fit: orbax's own failure midway is a
  dozen writers failing at once."""
  needed = sum(np.asarray(x).nbytes for x in jax.tree.leaves(arrays)) + _ORBAX_OVERHEAD
  if shutil.disk_usage(directory).free < needed:
    raise _save_failed(what, directory, intact, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))


@contextlib.contextmanager
def deferred_interrupts(signals=(signal.SIGINT, signal.SIGTERM)):
  """Ctrl-C or SIGTERM arriving while a checkpoint is written takes effect once it is on disk.

  An interrupted run then stops with every finished epoch saved whole (and orbax's writer threads are
  not cut off mid-write). Only in the main thread, where signal handlers live: elsewhere the block runs
  with the handlers as they are. On exit the previous handlers come back and each signal that arrived
  is raised again, once.

  Args:
    signals: the signals whose handling waits for the end of the block.

  Yields:
    None, once; the block runs with the signals' handling deferred.
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  pending = []
  previous = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in signals}
  try:
    yield
  finally:
    for s, handler in previous.items():
      signal.signal(s, signal.SIG_DFL if handler is None else handler)
    for s in dict.fromkeys(pending):
      signal.raise_signal(s)


CHECKSUMS = "sha256.json"  # in a frozen block's checkpoint folder: the sha256 of each of its files


def _file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _write_checksums(folder: str) -> None:
  """Writes FOLDER/sha256.json: the sha256 of every file under `folder` (a finished checkpoint)."""
  sums = {}
  for parent, _, names in os.walk(folder):
    for name in names:
      path = os.path.join(parent, name)
      sums[os.path.relpath(path, folder)] = _file_sha256(path)
  sums.pop(CHECKSUMS, None)
  with files.replaced_file(os.path.join(folder, CHECKSUMS)) as f:
    json.dump(dict(sorted(sums.items())), f, indent=0)


def _damaged_file(folder: str) -> Optional[str]:
  """The first file under `folder` that is missing or differs from its sha256 in FOLDER/sha256.json, or
  None (also for a checkpoint written before checksums existed)."""
  path = os.path.join(folder, CHECKSUMS)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      sums = json.load(f)
  except ValueError:  # the checksums themselves are damaged
    return CHECKSUMS
  for name, expected in sums.items():
    if not os.path.exists(os.path.join(folder, name)) or _file_sha256(os.path.join(folder, name)) != expected:
      return name
  return None


class BlockCheckpointer:
  """One orbax checkpoint per frozen block under `directory`; fits in progress under `in_progress/`.

  A frozen block's folder also holds `sha256.json`, the sha256 of each of its files, written once the
  save is complete and checked before the block is restored: a damaged file is one `CheckpointError`
  naming it, never weights that load silently wrong.

  Args:
    directory: the folder of the checkpoints (created if missing).

  Attributes:
    directory: the folder, as an absolute path.
  """

  def __init__(self, directory: str):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=None,
        create=True,
        # the save is waited for anyway; done in the caller's thread, a failure ends every writer before
        # it is raised, instead of their tracebacks following the run's one-line error
        enable_async_checkpointing=False,
      ),
    )

  def save(self, block: int, variables: dict, record: dict, train_idx: np.ndarray, val_idx: np.ndarray) -> None:
    """Saves frozen block `block` with its record and the next block's working sets; waits until it is on disk.

    Args:
      block: the block's number j (the orbax step it is saved as).
      variables: the block's variables (fetched from the devices before saving).
      record: the block's record, a JSON-ready dict.
      train_idx: the working set T_{j+1} of the next block (int indices, may be empty).
      val_idx: the validation working set V_{j+1} of the next block (int indices, may be empty).

    Raises:
      CheckpointError: the save failed (the message names what is intact), or `directory` already holds a
        checkpoint of this block or a later one.
    """
    what, intact = f"frozen block {block}", f"block {block - 1}" if block > 0 else None
    arrays = {
      "variables": jax.device_get(variables),
      "remaining": {
        "train_idx": _nonempty(train_idx),
        "val_idx": _nonempty(val_idx),
        # orbax refuses zero-size arrays: store the lengths beside them
        "sizes": np.asarray([len(train_idx), len(val_idx)], np.int32),
      },
    }
    _check_space(self.directory, arrays, what, intact)
    with deferred_interrupts(), _orbax_errors_dropped():
      try:
        saved = self._manager.save(
          block,
          args=ocp.args.Composite(
            variables=ocp.args.StandardSave(arrays["variables"]),
            remaining=ocp.args.StandardSave(arrays["remaining"]),
            record=ocp.args.JsonSave(dict(record)),
          ),
        )
        self._manager.wait_until_finished()
        if saved:
          _write_checksums(os.path.join(self.directory, str(block)))
      except Exception as e:  # the in-progress checkpoints of this block stay, so a rerun redoes only this
        for unfinished in glob.glob(os.path.join(glob.escape(self.directory), f"{block}.orbax-checkpoint-tmp*")):
          shutil.rmtree(unfinished, ignore_errors=True)
        raise _save_failed(what, self.directory, intact, e) from e
    if not saved:
      raise CheckpointError(
        f"block {block} was not saved: {self.directory} already holds a checkpoint "
        f"for it or a later block; pass a fresh workdir or --overwrite"
      )

  def restore(self, init_variables):
    """(variables of the frozen blocks, their records as dicts, (T_next, V_next)); empty when none is saved.

    Args:
      init_variables: the model's fresh variables, one tree per block; they give the shapes to restore
        into.

    Returns:
      A tuple `(variables, records, remaining)`. `variables` holds one tree of numpy arrays per frozen
      block and `records` one dict per frozen block, in block order; `remaining` is the pair of int32
      index arrays (train, validation) of the working sets after the last frozen block, or None when no
      block is saved.

    Raises:
      CheckpointError: the saved blocks are not 0, 1, ..., k, or a block's checkpoint cannot be read (the
        message names what to delete).
    """
    steps = sorted(self._manager.all_steps())
    if steps != list(range(len(steps))):
      raise CheckpointError(
        f"checkpoints in {self.directory} are not consecutive blocks ({steps}); delete the directory to start over"
      )
    variables, records, remaining = [], [], None
    for j in steps:
      damaged = _damaged_file(os.path.join(self.directory, str(j)))
      if damaged:
        raise CheckpointError(
          f"checkpoint of block {j} in {self.directory} is damaged ({damaged} does not match its sha256); "
          f"delete {self.directory}/{j} to retrain from block {j}"
        )
      try:
        target = jax.tree.map(np.asarray, jax.device_get(init_variables[j]))
        restored = self._manager.restore(
          j,
          args=ocp.args.Composite(
            variables=ocp.args.StandardRestore(target),
            remaining=ocp.args.StandardRestore(),
            record=ocp.args.JsonRestore(),
          ),
        )
        record = dict(restored["record"])
        sizes = np.asarray(restored["remaining"]["sizes"])
        next_sets = (
          np.asarray(restored["remaining"]["train_idx"], np.int32)[: sizes[0]].reshape(-1),
          np.asarray(restored["remaining"]["val_idx"], np.int32)[: sizes[1]].reshape(-1),
        )
      except Exception as e:  # orbax raises many types; all mean the same to the user
        raise CheckpointError(
          f"checkpoint of block {j} in {self.directory} is unreadable ({_first_line(e)}); "
          f"delete {self.directory}/{j} to retrain from block {j}"
        ) from e
      variables.append(jax.tree.map(np.asarray, restored["variables"]))
      records.append(record)
      remaining = next_sets
    return variables, records, remaining

  def fit_checkpointer(self, kind: str, block: int) -> FitCheckpointer:
    """The per-epoch checkpoints of one fit of block `block` (`kind`: "block" or "commitment").

    Args:
      kind: "block" (the block's own fit) or "commitment" (its commitment head's).
      block: the block's number.

    Returns:
      A `FitCheckpointer` of the folder `in_progress/<kind>_<block>` under `directory`.
    """
    name = f"block {block}" if kind == "block" else f"commitment head {block}"
    return FitCheckpointer(os.path.join(self.directory, "in_progress", f"{kind}_{block}"), name)

  def after_blocks_checkpointer(self, name: str) -> FitCheckpointer:
    """Per-epoch checkpoints of a fit that runs after every block is frozen (QuickNet+ fine-tuning).

    They are kept apart from the blocks' `in_progress/`, so clearing those never touches them.

    Args:
      name: the fit's name (its folder, and what messages call it).

    Returns:
      A `FitCheckpointer` of the folder `after_blocks/<name>` under `directory`.
    """
    return FitCheckpointer(os.path.join(self.directory, "after_blocks", name), name)

  def clear_in_progress(self, upto_block: int) -> None:
    """Deletes the per-epoch checkpoints of blocks ≤ `upto_block`: frozen, they are never read again.

    Args:
      upto_block: the last block whose `in_progress/` checkpoints (its fit's and its head's) go.
    """
    root = os.path.join(self.directory, "in_progress")
    if not os.path.isdir(root):
      return
    for entry in os.listdir(root):
      block = entry.rsplit("_", 1)[-1]
      if block.isdigit() and int(block) <= upto_block:
        # a kill mid-delete leaves a partial tree that is never read: the next call finishes the job
        shutil.rmtree(os.path.join(root, entry), ignore_errors=True)

  def close(self):
    """Waits for orbax's pending work and closes its checkpoint manager."""
    self._manager.close()


class FitCheckpointer:
  """Per-epoch checkpoints of one fit: DIRECTORY/<e>.npz is its state after e epochs.

  The state is a `trainer.FitState`, or any state with `epoch`, `checkpoint()` → (arrays tree, JSON meta
  with "history") and `restored(tree, meta)` → the state.

  One file per epoch: every array of the state (numbered in the order of the state's tree) and, as JSON,
  its schedule, history and the tree's key paths (a checkpoint of another fit is refused, not misread).
  Written to a temporary file and renamed into place (`save_tree`), so a kill mid-save leaves the
  previous epoch as the newest; the writing runs on a thread while the next epoch trains (`save`; `wait`
  and `close` return once it is on disk, and `trainer.fit` returns with every epoch on disk); a few
  milliseconds per epoch, where an orbax checkpoint of the same
  state takes ~80 ms (these are written after every epoch of every fit; frozen blocks, written once,
  stay orbax checkpoints). The two newest epochs are kept, so a file corrupted on disk can be deleted
  by hand to resume one epoch earlier. In a multi-process run process 0 writes and every process reads.

  Args:
    directory: the fit's folder (created at the first save).
    name: what messages call the fit ("block 1", "commitment head 0", ...).
    max_to_keep: how many of the newest epochs' files are kept.

  Attributes:
    directory: the folder, as an absolute path.
    name: what messages call the fit.
    max_to_keep: how many of the newest epochs' files are kept.
    resumed_seconds: the wall-clock seconds of the epochs the last `restore` brought back (0.0 before
      any), so a resumed run can report honest timings.
  """

  def __init__(self, directory: str, name: str = "fit", max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    self.name = name
    self.max_to_keep = max_to_keep
    self.resumed_seconds = 0.0  # wall time of the epochs restore() brought back (for honest timings)
    self._writer: Optional[threading.Thread] = None  # the thread writing the last save, if any
    self._failure: Optional[CheckpointError] = None  # what went wrong in it

  def _epochs(self) -> list[int]:
    if self._writer is not None and self._writer is not threading.current_thread():
      self._writer.join()  # a listing counts the epoch being written
    if not os.path.isdir(self.directory):
      return []
    return sorted(int(m.group(1)) for n in os.listdir(self.directory) if (m := _EPOCH_FILE.match(n)))

  def _path(self, epoch: int) -> str:
    return os.path.join(self.directory, f"{epoch}.npz")

  def latest_epoch(self) -> Optional[int]:
    """Epochs completed by the newest saved state, or None when nothing is saved.

    Returns:
      The highest e of the files <e>.npz in `directory`, or None.
    """
    epochs = self._epochs()
    return epochs[-1] if epochs else None

  def save(self, state) -> None:
    """Saves `state` (a `trainer.FitState`) as epoch `state.epoch`; the file is written in the background.

    The state's arrays are copied to the host before this returns (the next epoch donates, and so
    overwrites, their device buffers); the file is written, renamed into place and the files older than
    the `max_to_keep` newest deleted by a writer thread while the next epoch runs. The next `save`,
    `wait`, `latest_epoch` or `close` waits for it; the thread is not a daemon, so an interrupted process
    still finishes the file before it exits. Only process 0 writes (`parallel.is_writer`); on the
    others this does nothing.

    Args:
      state: the state to save (see the class doc for what it must provide).

    Raises:
      CheckpointError: the previous save failed (the message names what is intact), or the epoch exists.
    """
    if not parallel.is_writer():  # process 0 writes the run's files; the others (sharing them) only read
      return
    self.wait()
    previous = self.latest_epoch()
    if previous is not None and state.epoch <= previous:
      raise CheckpointError(
        f"{self.name}: epoch {state.epoch} was not saved: {self.directory} already holds "
        f"epoch {previous}; delete {self.directory} to retrain {self.name}"
      )
    tree, meta = state.checkpoint()
    contents = host_contents(tree, dict(meta, epoch=state.epoch))
    what = f"{self.name} after epoch {state.epoch}"
    intact = None if previous is None else f"epoch {previous}"

    def write():
      try:
        write_contents(self._path(state.epoch), contents)
      except Exception as e:
        self._failure = _save_failed(what, self.directory, intact, e)
        return
      for old in self._epochs()[: -self.max_to_keep]:
        with contextlib.suppress(OSError):
          os.remove(self._path(old))

    self._writer = threading.Thread(target=write, name=f"checkpoint of {self.name}")
    self._writer.start()

  def wait(self, raise_failure: bool = True) -> None:
    """Returns once the last `save` is on disk.

    Args:
      raise_failure: raise the save's error if it failed (False: only wait, e.g. while another error is
        on its way out; the failure is then dropped).

    Raises:
      CheckpointError: the last save failed (the message names what is intact).
    """
    writer, self._writer = self._writer, None
    if writer is not None:
      writer.join()
    failure, self._failure = self._failure, None
    if failure is not None and raise_failure:
      raise failure

  def restore(self, template):
    """The newest saved `trainer.FitState`, shaped like `template` (a fresh state of the same fit), or None.

    Sets `resumed_seconds` to the seconds of the restored epochs.

    Args:
      template: a fresh state of the same fit; its `checkpoint()` tree gives the structure and shapes.

    Returns:
      `template.restored(...)` with the newest file's arrays and meta, or None when nothing is saved.

    Raises:
      CheckpointError: the newest checkpoint cannot be read (the message names what to delete).
    """
    epoch = self.latest_epoch()
    if epoch is None:
      return None
    try:
      tree, meta = load_tree(self._path(epoch), template.checkpoint()[0])
      if meta.get("epoch") != epoch:
        raise ValueError(f"it holds epoch {meta.get('epoch')}")
      state = template.restored(tree, meta)
    except Exception as e:  # zip, npy and JSON errors all mean the same to the user
      earlier = [s for s in self._epochs() if s < epoch]
      fix = (
        f"delete {self._path(epoch)} to resume from epoch {max(earlier)}"
        if earlier
        else f"delete {self.directory} to retrain {self.name} from its first epoch"
      )
      raise CheckpointError(
        f"{self.name}: checkpoint of epoch {epoch} in {self.directory} is unreadable ({_first_line(e)}); {fix}"
      ) from e
    self.resumed_seconds = float(sum(r.get("seconds", 0.0) for r in meta["history"]))
    return state

  def close(self):
    """Waits for the last save (`wait`): when this returns, every saved epoch is on disk.

    Raises:
      CheckpointError: the last save failed.
    """
    self.wait()


_EPOCH_FILE = re.compile(r"^(\d+)\.npz$")


def _flat_with_paths(tree) -> tuple[list, list]:
  """(key path of each leaf, the leaves) of `tree`, in its flattening order."""
  pairs = jax.tree_util.tree_flatten_with_path(tree)[0]
  return [jax.tree_util.keystr(path) for path, _ in pairs], [leaf for _, leaf in pairs]


def save_tree(path: str, tree, meta: dict) -> None:
  """Writes the arrays of `tree` (fetched from the devices) and the JSON-ready `meta` to one .npz file.

  Atomic (`core.files.replaced_file`): the file is written beside `path`, then renamed into place; the temporary file
  never outlives the call, and a process killed at any moment leaves either no file or the whole one.
  It is not synced to disk (that took ~60 % of a save, after every epoch of every fit): only a crash of
  the machine itself can lose the newest files, and a fit then resumes from an earlier epoch, or names
  the unreadable file to delete. The leaves are stored as a0, a1, ... in flattening order and `meta`,
  with the tree's key paths added as "paths", as JSON.

  Args:
    path: the file to write (its folder is created if missing).
    tree: a pytree of arrays.
    meta: a JSON-ready dict.

  Raises:
    OSError: the file could not be written (e.g. no space left on the device).
  """
  write_contents(path, host_contents(tree, meta))


def host_contents(tree, meta: dict) -> dict:
  """What `save_tree` writes for `tree` and `meta`, as host copies that later device work cannot change.

  Args:
    tree: a pytree of arrays (on devices or the host).
    meta: a JSON-ready dict.

  Returns:
    A dict of numpy arrays: a0, a1, ... (the leaves, copied, in flattening order) and "meta" (`meta`
    with the key paths as "paths", as JSON).
  """
  paths, leaves = _flat_with_paths(jax.device_get(tree))
  contents = {f"a{i}": np.array(leaf, copy=True) for i, leaf in enumerate(leaves)}
  contents["meta"] = np.asarray(json.dumps(dict(meta, paths=paths)))
  return contents


def write_contents(path: str, contents: dict) -> None:
  """Writes `host_contents`'s arrays to the .npz file `path`, atomically (see `save_tree`).

  Args:
    path: the file to write (its folder is created if missing).
    contents: what `host_contents` returned.

  Raises:
    OSError: the file could not be written (e.g. no space left on the device).
  """
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with files.replaced_file(path, "wb") as f:
    np.savez(f, **contents)


def load_tree(path: str, template):
  """(a tree shaped like `template` holding the arrays `save_tree` wrote at `path`, its meta).

  The errors of `numpy.load` pass through for a file that is not a readable .npz.

  Args:
    path: a file `save_tree` wrote.
    template: a pytree with the structure, key paths and shapes the file must hold.

  Returns:
    A tuple `(tree, meta)` of the numpy arrays in `template`'s structure and the saved meta (with
    "paths").

  Raises:
    ValueError: the file holds another tree (other key paths or shapes).
  """
  paths, leaves = _flat_with_paths(jax.device_get(template))
  with np.load(path, allow_pickle=False) as f:
    meta = json.loads(str(f["meta"]))
    if meta.get("paths") != paths:
      raise ValueError(f"it holds another state ({len(meta.get('paths', []))} arrays, not {len(paths)})")
    restored = [f[f"a{i}"] for i in range(len(leaves))]
  for got, want in zip(restored, leaves):
    if got.shape != np.shape(want):
      raise ValueError(f"an array of shape {got.shape} where {np.shape(want)} is expected")
  return jax.tree.unflatten(jax.tree.structure(template), restored), meta

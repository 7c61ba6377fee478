"""Files and folders replaced in one step: a reader, or a process killed at any moment, sees the old one
or the new one, never part of one.

`replaced_file` writes a temporary file beside the target and renames it into place (`os.replace`);
`replaced_folder` builds a temporary folder beside the target and exchanges the two in one rename
(Linux's `renameat2(RENAME_EXCHANGE)`; elsewhere two renames, with the old folder kept beside the target
until the new one is in place). A failure removes the temporary file or folder. Nothing is synced to
disk: a kill of the process cannot lose what was written, only a crash of the machine can.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
from collections.abc import Iterator
from typing import IO

# The name of a temporary file or folder of this module (a kill can leave one behind): ".NAME.KIND-PID".
TEMPORARY = re.compile(r"\.(?P<name>.+)\.(tmp|new|old)-\d+")
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _temporary_beside(path: str, what: str) -> str:
  folder, name = os.path.split(os.path.abspath(path))
  return os.path.join(folder, f".{name}.{what}-{os.getpid()}")


@contextlib.contextmanager
def named_errors(path: str) -> Iterator[None]:
  """Adds `path` to an OSError raised in the block without a file name (a failed write or flush names
  none), so that its one-line message says which file could not be written.

  Args:
    path: the file the block writes.

  Yields:
    None, once.

  Raises:
    OSError: the block's, with `filename` set.
  """
  try:
    yield
  except OSError as e:
    if e.filename is None:
      e.filename = path
    raise


@contextlib.contextmanager
def replaced_file(path: str, mode: str = "w", **open_args) -> Iterator[IO]:
  """Opens a temporary file beside `path`, which replaces `path` when the block ends without an error.

  Args:
    path: the file to write (its folder must exist).
    mode: `open`'s mode ("w", "wb").
    **open_args: more of `open`'s arguments (e.g. newline="").

  Yields:
    The open temporary file.

  Raises:
    OSError: the file could not be written; `path` is then as it was, and no temporary file is left.
  """
  tmp = _temporary_beside(path, "tmp")
  try:
    with named_errors(path), open(tmp, mode, **open_args) as f:
      yield f
    os.replace(tmp, path)
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)


def _exchange(a: str, b: str) -> bool:
  """Swaps the names of `a` and `b` in one step; False where the system cannot."""
  try:
    renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
  except (AttributeError, OSError):
    return False
  return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


@contextlib.contextmanager
def replaced_folder(path: str) -> Iterator[str]:
  """A temporary folder beside `path` that takes `path`'s place when the block ends without an error.

  Args:
    path: the folder to replace (made if missing; what it held is removed once the new one is in place).

  Yields:
    The temporary folder's path, to write into.

  Raises:
    OSError: the folder could not be written or renamed; `path` is then as it was (or, where the two
      could not be exchanged in one step and the second rename failed, the old folder is beside it as
      `.NAME.old-PID`, named in the error).
  """
  path = os.path.abspath(path)
  tmp = _temporary_beside(path, "new")
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  try:
    yield tmp
    if not os.path.exists(path):
      os.rename(tmp, path)
    elif _exchange(tmp, path):
      pass  # tmp now holds the old folder
    else:
      old = _temporary_beside(path, "old")
      os.rename(path, old)
      try:
        os.rename(tmp, path)
      except OSError as e:
        raise OSError(f"{path} could not be replaced ({e}); the previous one is at {old}") from None
      shutil.rmtree(old, ignore_errors=True)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)

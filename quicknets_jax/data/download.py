"""Download on first use: the published files of MNIST, Fashion-MNIST and CIFAR-10, checked.

`fetch(name, cache_dir)` returns a local directory holding `name`'s files, downloading the ones not yet
there from their published URLs with a progress line (rate and ETA). Each file goes to
`<file>.part`, is fsynced, its MD5 checked against the published checksum, and only then renamed into
place atomically — so a killed, truncated or corrupt download never leaves a file at the final path,
and a rerun starts it again. Transient failures (connection errors, timeouts, truncated bodies, HTTP
5xx) are retried with backoff; a 404, a checksum mismatch or running out of retries is one line naming
the fix. In a multi-process run only process 0 downloads; the others wait for it at a barrier.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Optional

import jax
from jax.experimental import multihost_utils

from quicknets_jax.core.progress import Progress
from quicknets_jax.data.errors import DataError


@dataclasses.dataclass(frozen=True)
class RemoteFile:
  """A published file: the name it is stored under, where it comes from and its MD5 checksum.

  Attributes:
    name: the file name it is stored under.
    url: where it is downloaded from.
    md5: its published MD5 checksum (hex).
    size: its size in bytes, when published (for the progress line and the truncation check).
  """

  name: str
  url: str
  md5: str
  size: Optional[int] = None  # bytes, when published


def _idx_files(base: str, md5s: Sequence[str]) -> tuple:
  names = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz")
  return tuple(RemoteFile(n, base + n, m) for n, m in zip(names + ("t10k-labels-idx1-ubyte.gz",), md5s))


# The checksums the datasets' authors publish (the ones torchvision checks too).
REMOTE = {
  "mnist": _idx_files(
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    (
      "f68b3c2dcbeaaa9fbdd348bbdeb94873",
      "d53e105ee54ea40749a09fcbcd1e9432",
      "9fb629c4189551a2d022fa330f9573f3",
      "ec29112dd5afa0611ce80d1b7f02629c",
    ),
  ),
  "fashion_mnist": _idx_files(
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    (
      "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
      "25c81989df183df01b3e8a0aad5dffbe",
      "bef4ecab320f06d8554ea6380940ec79",
      "bb300cfdad3c16e7a12a480ee83cd310",
    ),
  ),
  "cifar10": (
    RemoteFile(
      "cifar-10-python.tar.gz",
      "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
      "c58f30108f718f92721af3b95e74349a",
      170_498_071,
    ),
  ),
}
_TRANSIENT = (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout, http.client.HTTPException)
_CHUNK = 1 << 20


def default_cache_dir() -> str:
  """$QUICKNETS_JAX_DATA, else ~/.cache/quicknets_jax/datasets (XDG_CACHE_HOME respected).

  Returns:
    The directory downloaded datasets are kept in.
  """
  if os.environ.get("QUICKNETS_JAX_DATA"):
    return os.environ["QUICKNETS_JAX_DATA"]
  cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(cache, "quicknets_jax", "datasets")


def md5sum(path: str) -> str:
  """The MD5 of a file, read in chunks.

  Args:
    path: the file.

  Returns:
    Its hex digest.
  """
  digest = hashlib.md5()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_CHUNK), b""):
      digest.update(chunk)
  return digest.hexdigest()


class _Truncated(Exception):
  pass


def _fetch_once(file: RemoteFile, part: str, timeout: float, progress: Optional[bool]) -> str:
  """Streams `file.url` into `part` (fsynced); returns its MD5. Raises on any failure."""
  digest = hashlib.md5()
  with urllib.request.urlopen(file.url, timeout=timeout) as response:
    length = response.headers.get("Content-Length")
    total = int(length) if length else file.size
    received = 0
    with open(part, "wb") as f, Progress(total, f"download {file.name}", unit="B", enabled=progress) as bar:
      while chunk := response.read(_CHUNK):
        f.write(chunk)
        digest.update(chunk)
        received += len(chunk)
        bar.update(len(chunk))
      f.flush()
      os.fsync(f.fileno())
  if total is not None and received != total:
    raise _Truncated(f"received {received} of {total} bytes")
  return digest.hexdigest()


def download(
  file: RemoteFile,
  directory: str,
  retries: int = 3,
  timeout: float = 60.0,
  backoff: float = 1.0,
  progress: Optional[bool] = None,
  log: Callable[[str], None] = print,
) -> str:
  """DIRECTORY/<file.name>, downloaded and checked unless a checked copy is already there.

  The file goes to `<file>.part`, is fsynced, checked against its MD5 and only then renamed into place,
  so a killed or corrupt download leaves nothing at the final path. A copy already there that does not
  match its checksum is downloaded again.

  Args:
    file: the published file.
    directory: where it is kept (created if missing).
    retries: how many times a transient failure (connection error, timeout, truncated body, HTTP 5xx)
      is retried.
    timeout: seconds a connection may stay silent.
    backoff: seconds before the first retry; doubled for each further one.
    progress: show a progress line (None: on a terminal only).
    log: where one-line notes go.

  Returns:
    The path of the checked file.

  Raises:
    DataError: an HTTP 4xx, a checksum mismatch, or failures past the retries; the message names the
      fix.
  """
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, file.name)
  if os.path.exists(path):
    if md5sum(path) == file.md5:
      return path
    log(f"{path} does not match its checksum: downloading it again")
    os.remove(path)
  part = path + ".part"
  log(f"downloading {file.url} to {path}")
  for attempt in range(retries + 1):
    try:
      got = _fetch_once(file, part, timeout, progress)
      break
    except urllib.error.HTTPError as e:  # before URLError, its parent: 4xx are not transient
      _remove(part)
      if e.code < 500 or attempt == retries:
        raise DataError(
          f"download of {file.url} failed: HTTP {e.code} {e.reason}; check the URL, or pass --data_dir with a "
          "local copy"
        ) from None
      reason = f"HTTP {e.code}"
    except (*_TRANSIENT, _Truncated, OSError) as e:
      _remove(part)
      reason = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
      if attempt == retries:
        what = "truncated" if isinstance(e, (_Truncated, http.client.IncompleteRead)) else "failed"
        raise DataError(
          f"download of {file.url} {what} after {retries + 1} tries ({reason}); nothing was kept — check the "
          "network and rerun, or pass --data_dir with a local copy (--nodownload never downloads)"
        ) from None
    log(f"download of {file.name}: {reason}; retrying in {backoff * 2**attempt:.0f}s")
    time.sleep(backoff * 2**attempt)
  if got != file.md5:
    _remove(part)
    raise DataError(
      f"{file.url} does not match its published checksum (md5 {got}, expected {file.md5}); the file was "
      "removed — rerun to download it again, or pass --data_dir with a local copy"
    )
  os.replace(part, path)
  _fsync_directory(directory)
  return path


def _remove(path: str) -> None:
  try:
    os.remove(path)
  except FileNotFoundError:
    pass


def _fsync_directory(directory: str) -> None:
  fd = os.open(directory, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def cached(name: str, cache_dir: Optional[str] = None, files: Optional[Sequence[RemoteFile]] = None) -> Optional[str]:
  """The cache directory of `name` when every one of its files is already there (unchecked), else None.

  Args:
    name: a key of `REMOTE`.
    cache_dir: the data cache (default: `default_cache_dir()`).
    files: the files to look for (default: `REMOTE[name]`).

  Returns:
    The directory, or None.
  """
  directory = os.path.join(cache_dir or default_cache_dir(), name)
  files = REMOTE[name] if files is None else files
  return directory if all(os.path.exists(os.path.join(directory, f.name)) for f in files) else None


def on_process_zero(work: Callable[[], object], barrier: str) -> None:
  """Runs `work` on process 0 only, while the other processes of a multi-process run wait at `barrier`
  (writes to a shared folder: downloads, record directories). Process 0 raises work's DataError after
  the barrier, so the others are never left waiting for it.

  Args:
    work: what process 0 does.
    barrier: the barrier's name, unique to this piece of work.

  Raises:
    DataError: `work` raised it (on process 0).
  """
  failure = None
  if jax.process_index() == 0:
    try:
      work()
    except DataError as e:
      failure = e
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(barrier)
  if failure is not None:
    raise failure


def fetch(
  name: str,
  cache_dir: Optional[str] = None,
  files: Optional[Sequence[RemoteFile]] = None,
  log: Callable[[str], None] = print,
  **download_options,
) -> str:
  """CACHE_DIR/<name>/ with every file of `name` (`REMOTE[name]`, or `files`) downloaded and checked.

  Multi-process: process 0 downloads, every process waits at a barrier, then finds the files there.

  Args:
    name: the dataset, a key of `REMOTE` (or any name with `files`).
    cache_dir: the data cache (default: `default_cache_dir()`).
    files: the files to fetch (default: `REMOTE[name]`).
    log: where one-line notes go.
    **download_options: passed to `download` (retries, timeout, backoff, progress).

  Returns:
    The directory holding the files.

  Raises:
    DataError: a download failed, or (on another process) process 0 did not leave the files there.
  """
  directory = os.path.join(cache_dir or default_cache_dir(), name)
  files = REMOTE[name] if files is None else files
  on_process_zero(
    lambda: [download(file, directory, log=log, **download_options) for file in files], f"quicknets_jax download {name}"
  )
  missing = [f.name for f in files if not os.path.exists(os.path.join(directory, f.name))]
  if missing:
    raise DataError(f"process 0 did not download {', '.join(missing)} to {directory}: see its error")
  return directory

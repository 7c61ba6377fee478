"""Reading and writing the CIFAR-10 "python version" tarball (cifar-10-python.tar.gz).

The tarball holds `cifar-10-batches-py/data_batch_1..5` and `test_batch`, each a pickled dict with
b'data' (N x 3072 uint8, channel-major 3x32x32) and b'labels'. Images come back NHWC uint8.
Pickles can run code, so they are read with an unpickler that only admits the few numpy globals
these files need.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zlib

import numpy as np

from quicknets_jax.data.errors import DataError

TARBALL = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
TEST_BATCH = "test_batch"
META = "batches.meta"
LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_FIX = "re-download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html"

# The globals a CIFAR batch pickle may reference (old and new numpy module names).
_ALLOWED = {
  ("numpy.core.multiarray", "_reconstruct"),
  ("numpy._core.multiarray", "_reconstruct"),
  ("numpy.core.multiarray", "scalar"),
  ("numpy._core.multiarray", "scalar"),
  ("numpy.core.numeric", "_frombuffer"),
  ("numpy._core.numeric", "_frombuffer"),
  ("numpy", "ndarray"),
  ("numpy", "dtype"),
  ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
  def find_class(self, module, name):
    if (module, name) not in _ALLOWED:
      raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
    # numpy 2 moved numpy.core to numpy._core; the old path still imports but warns.
    if module.startswith("numpy.core"):
      module = module.replace("numpy.core", "numpy._core", 1)
      try:
        return super().find_class(module, name)
      except (ImportError, AttributeError):
        module = module.replace("numpy._core", "numpy.core", 1)
    return super().find_class(module, name)


def _resolve(path) -> tuple[str, str]:
  """Returns ("tar", tarball) or ("dir", folder holding the batch files) for `path`."""
  path = os.fspath(path)
  if os.path.isfile(path):
    return "tar", path
  if os.path.isdir(path):
    for candidate in (os.path.join(path, TARBALL), os.path.join(path, "cifar-10-python.tar")):
      if os.path.isfile(candidate):
        return "tar", candidate
    # An already extracted copy works too.
    for folder in (os.path.join(path, FOLDER), path):
      if os.path.isfile(os.path.join(folder, TEST_BATCH)):
        return "dir", folder
    raise DataError(
      f"no {TARBALL} (or extracted {FOLDER}/) in {path}: download it from "
      f"https://www.cs.toronto.edu/~kriz/cifar.html into that directory"
    )
  raise DataError(f"CIFAR-10 path {path} does not exist: pass --data_dir=DIR holding {TARBALL}")


def _parse_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
  try:
    batch = _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
  except Exception as e:  # Any unpickling failure means a damaged or foreign file.
    raise DataError(f"CIFAR batch {where} cannot be unpickled ({type(e).__name__}: {e}): {_FIX}") from None
  if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
    raise DataError(
      f"CIFAR batch {where} lacks b'data'/b'labels': it is not a CIFAR-10 batch (CIFAR-100 is not supported); {_FIX}"
    )
  data = np.asarray(batch[b"data"])
  labels = np.asarray(batch[b"labels"])
  if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
    raise DataError(
      f"CIFAR batch {where} has data {data.shape} and {len(labels)} labels, expected [N, 3072] and N: {_FIX}"
    )
  if labels.size and (labels.min() < 0 or labels.max() > 255):
    raise DataError(f"CIFAR batch {where} has label {int(labels.max())} outside 0..255: {_FIX}")
  images = data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels.astype(np.uint8)


def _expected(meta: bytes | None, where: str) -> list[str]:
  """The batch files that must be present: data_batch_1..k and test_batch.

  k is 5 (the official file) unless batches.meta carries b'num_train_batches', which only
  write_cifar_tar adds, so a deliberately smaller file still loads but a lost batch never passes.
  """
  k = 5
  if meta is not None:
    try:
      info = _RestrictedUnpickler(io.BytesIO(meta), encoding="bytes").load()
    except Exception as e:  # A damaged meta file means a damaged download.
      raise DataError(f"CIFAR {where}:{META} cannot be unpickled ({type(e).__name__}): {_FIX}") from None
    if isinstance(info, dict) and b"num_train_batches" in info:
      k = int(info[b"num_train_batches"])
  return [f"data_batch_{i}" for i in range(1, k + 1)] + [TEST_BATCH]


def load_cifar_tar(path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Loads CIFAR-10 from its python tarball: (train_images, train_labels, test_images, test_labels).

  `path` is the tarball, a directory containing it, or an extracted cifar-10-batches-py folder.
  Images are uint8 [N, 32, 32, 3] (NHWC), labels uint8 [N]. Training batches are
  data_batch_1..5 (or as many as a write_cifar_tar batches.meta says); a missing one is an error.

  Args:
    path: the tarball, a directory holding it, or an extracted cifar-10-batches-py folder.

  Returns:
    (train_images, train_labels, test_images, test_labels) as numpy arrays.

  Raises:
    DataError: the path does not exist or holds no CIFAR-10 copy, a batch file is missing, or a file is
      corrupt, truncated or not a CIFAR-10 batch; the message names the fix.
  """
  kind, where = _resolve(path)
  raws: dict[str, bytes] = {}
  if kind == "tar":
    try:
      with tarfile.open(where, "r:*") as tar:
        members = {
          os.path.basename(m.name): m
          for m in tar.getmembers()
          if m.isfile() and os.path.dirname(m.name).rstrip("/").endswith(FOLDER)
        }
        meta = tar.extractfile(members[META]).read() if META in members else None
        expected = _expected(meta, where)
        missing = [n for n in expected if n not in members]
        if missing:
          names = ", ".join(f"{FOLDER}/{n}" for n in missing)
          raise DataError(f"CIFAR tarball {where} lacks {names}: {_FIX}")
        for n in expected:
          raws[n] = tar.extractfile(members[n]).read()
    except DataError:
      raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
      raise DataError(f"CIFAR tarball {where} is corrupt or truncated ({type(e).__name__}: {e}): {_FIX}") from None
  else:
    meta_path = os.path.join(where, META)
    meta = None
    if os.path.isfile(meta_path):
      with open(meta_path, "rb") as f:
        meta = f.read()
    expected = _expected(meta, where)
    missing = [n for n in expected if not os.path.isfile(os.path.join(where, n))]
    if missing:
      raise DataError(f"CIFAR folder {where} lacks {', '.join(missing)}: {_FIX}")
    for n in expected:
      with open(os.path.join(where, n), "rb") as f:
        raws[n] = f.read()
  train = [_parse_batch(raws[n], f"{where}:{n}") for n in expected[:-1]]
  test_x, test_y = _parse_batch(raws[TEST_BATCH], f"{where}:{TEST_BATCH}")
  train_x = np.concatenate([b[0] for b in train])
  train_y = np.concatenate([b[1] for b in train])
  return train_x, train_y, test_x, test_y


def write_cifar_tar(path, train_images, train_labels, test_images, test_labels, num_train_batches: int = 5) -> None:
  """Writes arrays as a CIFAR-10 python tarball that load_cifar_tar (and other readers) accept.

  Images are uint8 [N, 32, 32, 3]; the training set is split into `num_train_batches` nearly
  equal batches data_batch_1..k. `path` is the .tar.gz file to create.

  Args:
    path: the .tar.gz file to create.
    train_images: uint8 [N, 32, 32, 3] training images.
    train_labels: [N] their labels.
    test_images: uint8 [M, 32, 32, 3] test images.
    test_labels: [M] their labels.
    num_train_batches: how many data_batch files the training set is split into.

  Raises:
    DataError: the images are not uint8 [N, 32, 32, 3], image and label counts differ, or
      `num_train_batches` is out of range.
  """
  path = os.fspath(path)
  train_images, test_images = np.asarray(train_images), np.asarray(test_images)
  for what, x in (("train", train_images), ("test", test_images)):
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
      raise DataError(f"{what} images are {x.dtype} {x.shape}; CIFAR needs uint8 [N, 32, 32, 3]: convert them first")
  if len(train_labels) != len(train_images) or len(test_labels) != len(test_images):
    raise DataError(
      f"image/label counts differ (train {len(train_images)}/{len(train_labels)}, "
      f"test {len(test_images)}/{len(test_labels)}): pass matching arrays"
    )
  if num_train_batches < 1 or num_train_batches > max(1, len(train_images)):
    raise DataError(f"num_train_batches={num_train_batches} must be in 1..{len(train_images)}")

  def batch_bytes(x, y, label):
    d = {
      b"batch_label": label.encode(),
      b"labels": [int(v) for v in np.asarray(y)],
      b"data": np.ascontiguousarray(x.transpose(0, 3, 1, 2).reshape(len(x), 3072)),
      b"filenames": [f"{i}.png".encode() for i in range(len(x))],
    }
    return pickle.dumps(d, protocol=2)

  parts = np.array_split(np.arange(len(train_images)), num_train_batches)
  files = [
    (
      f"data_batch_{i + 1}",
      batch_bytes(train_images[idx], np.asarray(train_labels)[idx], f"training batch {i + 1} of {num_train_batches}"),
    )
    for i, idx in enumerate(parts)
  ]
  files.append((TEST_BATCH, batch_bytes(test_images, test_labels, "testing batch 1 of 1")))
  meta = {
    b"num_cases_per_batch": int(max(len(p) for p in parts)),
    b"label_names": [n.encode() for n in LABEL_NAMES],
    b"num_vis": 3072,
    b"num_train_batches": int(num_train_batches),
  }
  files.append((META, pickle.dumps(meta, protocol=2)))
  with tarfile.open(path, "w:gz") as tar:
    for name, raw in files:
      info = tarfile.TarInfo(f"{FOLDER}/{name}")
      info.size = len(raw)
      tar.addfile(info, io.BytesIO(raw))

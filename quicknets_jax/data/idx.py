"""Reading and writing IDX files (the MNIST / Fashion-MNIST format), raw or gzip-compressed.

IDX layout: two zero bytes, a dtype code, the number of dimensions, then one big-endian uint32 per
dimension, then the payload in C order. `load_idx_dir` finds the four standard files of an
MNIST-style dataset in a directory and checks that they fit together.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib

import numpy as np

from quicknets_jax.data.errors import DataError

# IDX dtype codes; multi-byte types are big-endian on disk.
_CODE_TO_DTYPE = {
  0x08: np.dtype(np.uint8),
  0x09: np.dtype(np.int8),
  0x0B: np.dtype(">i2"),
  0x0C: np.dtype(">i4"),
  0x0D: np.dtype(">f4"),
  0x0E: np.dtype(">f8"),
}
_DTYPE_TO_CODE = {dt.newbyteorder("=") if dt.itemsize > 1 else dt: code for code, dt in _CODE_TO_DTYPE.items()}

_FIX = "re-download the file / reinstall dataset-fashion-mnist"

# The four files of an MNIST-style directory, in load_idx_dir's return order.
IDX_FILES = (
  "train-images-idx3-ubyte",
  "train-labels-idx1-ubyte",
  "t10k-images-idx3-ubyte",
  "t10k-labels-idx1-ubyte",
)


def _read_bytes(path: str) -> bytes:
  """Returns the (decompressed) content of `path`, turning I/O and gzip failures into DataError."""
  try:
    if str(path).endswith(".gz"):
      with gzip.open(path, "rb") as f:
        return f.read()
    with open(path, "rb") as f:
      return f.read()
  except FileNotFoundError:
    raise DataError(f"IDX file {path} does not exist: check the path or --data_dir") from None
  except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
    raise DataError(f"IDX file {path} is not a readable gzip/IDX file ({type(e).__name__}: {e}): {_FIX}") from None


def read_idx(path) -> np.ndarray:
  """Reads an IDX file (gzip-compressed when the name ends in .gz) into a numpy array.

  Args:
    path: the file.

  Returns:
    The array, in the file's shape and native-byte-order dtype.

  Raises:
    DataError: the file is missing, the header is wrong, the payload is shorter or longer than the
      header says, or the gzip stream is corrupt or truncated.
  """
  path = os.fspath(path)
  data = _read_bytes(path)
  if len(data) < 4:
    raise DataError(f"IDX file {path} is only {len(data)} bytes, too short for a header: {_FIX}")
  zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
  if zero0 != 0 or zero1 != 0:
    raise DataError(
      f"IDX file {path} has bad magic bytes {data[:4].hex()} (expected 0000 then "
      f"dtype and ndim): it is not an IDX file; {_FIX}"
    )
  if code not in _CODE_TO_DTYPE:
    raise DataError(
      f"IDX file {path} has unknown dtype code 0x{code:02x} (known: "
      f"{', '.join(f'0x{c:02x}' for c in _CODE_TO_DTYPE)}): {_FIX}"
    )
  if ndim == 0:
    raise DataError(f"IDX file {path} declares 0 dimensions: {_FIX}")
  header = 4 + 4 * ndim
  if len(data) < header:
    raise DataError(f"IDX file {path} is truncated inside its header ({len(data)} of {header} bytes): {_FIX}")
  dims = struct.unpack(f">{ndim}I", data[4:header])
  dtype = _CODE_TO_DTYPE[code]
  expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
  actual = len(data) - header
  if actual != expected:
    what = "truncated" if actual < expected else "has extra bytes"
    raise DataError(
      f"IDX file {path} {what}: shape {tuple(dims)} needs {expected} payload bytes but found {actual}: {_FIX}"
    )
  array = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=header)
  # Native byte order and a writable copy, so callers can treat it like any other array.
  return array.reshape(dims).astype(dtype.newbyteorder("="), copy=True)


def write_idx(path, array) -> None:
  """Writes `array` as an IDX file (gzip-compressed when `path` ends in .gz).

  uint8 is the usual type; int8, int16, int32, float32 and float64 are written too.

  Args:
    path: the file to write.
    array: the array, of 1 to 255 dimensions.

  Raises:
    DataError: the dtype has no IDX code, or the array has 0 or more than 255 dimensions.
  """
  path = os.fspath(path)
  array = np.asarray(array)
  native = array.dtype.newbyteorder("=") if array.dtype.itemsize > 1 else array.dtype
  if native not in _DTYPE_TO_CODE:
    raise DataError(
      f"cannot write dtype {array.dtype} as IDX: convert to uint8 (or int8, int16, int32, float32, float64) first"
    )
  if array.ndim == 0 or array.ndim > 255:
    raise DataError(f"cannot write a {array.ndim}-D array as IDX: pass 1 to 255 dimensions")
  code = _DTYPE_TO_CODE[native]
  header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
  payload = np.ascontiguousarray(array, dtype=_CODE_TO_DTYPE[code]).tobytes()
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(header)
    f.write(payload)


def _candidates(base: str) -> list[str]:
  """File names accepted for a standard IDX name: the dashed and dotted forms, raw or .gz."""
  dotted = base.replace("-idx", ".idx")
  return [base, base + ".gz", dotted, dotted + ".gz"]


def find_idx_files(directory) -> tuple[list[str | None], list[str]]:
  """Locates the four standard IDX files in `directory`.

  Each may be raw or .gz and may use the dotted name variant (train-images.idx3-ubyte).

  Args:
    directory: the directory to look in.

  Returns:
    (paths, missing): `paths` holds the path of each file in IDX_FILES order (None where absent) and
    `missing` the standard names of the absent ones.
  """
  directory = os.fspath(directory)
  paths: list[str | None] = []
  missing: list[str] = []
  for base in IDX_FILES:
    found = next(
      (os.path.join(directory, c) for c in _candidates(base) if os.path.isfile(os.path.join(directory, c))), None
    )
    paths.append(found)
    if found is None:
      missing.append(base)
  return paths, missing


def load_idx_dir(directory) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Loads an MNIST-style directory: (train_images, train_labels, test_images, test_labels).

  Images are uint8 [N, H, W] and labels uint8 [N]. Each file may be raw or .gz and may use the
  dotted name variant (train-images.idx3-ubyte).

  Args:
    directory: the directory holding the four files.

  Returns:
    (train_images, train_labels, test_images, test_labels).

  Raises:
    DataError: the directory or a file is missing, a file is malformed or not uint8, an images file is
      not 3-D or a labels file not 1-D, image and label counts differ, or the training and test images
      differ in size.
  """
  directory = os.fspath(directory)
  if not os.path.isdir(directory):
    raise DataError(
      f"IDX directory {directory} does not exist: pass --data_dir=DIR holding {', '.join(IDX_FILES)} (optionally .gz)"
    )
  paths, missing = find_idx_files(directory)
  if missing:
    raise DataError(
      f"missing IDX file(s) {', '.join(missing)} (raw or .gz) in {directory}: "
      f"put all four of {', '.join(IDX_FILES)} there"
    )
  arrays = [read_idx(p) for p in paths]
  for p, a, want in zip(paths, arrays, (3, 1, 3, 1)):
    if a.ndim != want:
      kind = "images" if want == 3 else "labels"
      raise DataError(
        f"IDX file {p} holds a {a.ndim}-D array with shape {a.shape}, but "
        f"{kind} must be {want}-D: check that the files are not swapped"
      )
    if a.dtype != np.uint8:
      raise DataError(f"IDX file {p} holds {a.dtype}, expected uint8: convert it with write_idx")
  for i, split in ((0, "train"), (2, "t10k")):
    if len(arrays[i]) != len(arrays[i + 1]):
      raise DataError(
        f"{split} images and labels disagree: {paths[i]} has {len(arrays[i])} "
        f"images but {paths[i + 1]} has {len(arrays[i + 1])} labels: use "
        f"files from the same dataset"
      )
  if arrays[0].shape[1:] != arrays[2].shape[1:]:
    raise DataError(
      f"train images are {arrays[0].shape[1:]} but test images are "
      f"{arrays[2].shape[1:]} in {directory}: use files from the same dataset"
    )
  return tuple(arrays)

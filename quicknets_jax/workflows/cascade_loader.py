"""Runs an exported early-exit cascade with JAX alone: no model code, no quicknets_jax.

`python -m experiments.export` writes, per block, a serialized `jax.export` artifact that maps the
block's inputs to (its features, its exit's prediction, that prediction's confidence, its commitment
logit) — the weights and the confidence formula are inside it — plus manifest.json (threshold, class
names, input shape, normalisation) and a copy of this file as cascade_loader.py. This module imports
only the standard library, numpy and jax, so that copy runs wherever JAX does::

    import cascade_loader
    cascade = cascade_loader.load("exported/")
    answers = cascade.predict(pixels)          # uint8 [N, H, W, C]; answers["class"], ["exit"], ...

The exit rule is the package's (its documentation's method page, docs/method.md): a sample leaves at
the first exit whose confidence exceeds the threshold and whose commitment logit is positive; after the
last exported block the most confident exit answers (ties: the earlier one). Samples that have left run
no further block; the rows that continue are gathered and padded to one of a few sizes, so each block
compiles for a handful of batch sizes only.
"""

from __future__ import annotations

import hashlib
import json
import os

import jax
import numpy as np

MANIFEST = "manifest.json"
FORMAT = "quicknets-jax exported cascade"
VERSION = 1


def padded_size(n: int) -> int:
  """n up to 16, above that the next multiple of a quarter of the power of two below n (≤ 25 % padding).

  Args:
    n: the number of rows.

  Returns:
    The padded batch size.
  """
  if n <= 16:
    return max(n, 1)
  step = 1 << (n.bit_length() - 3)
  return -(-n // step) * step


class ExportedCascade:
  """An exported cascade read from its directory (see the module doc).

  Args:
    directory: the export's folder (manifest.json and one artifact per block).

  Attributes:
    manifest: manifest.json's contents.
    blocks: one jitted call per exported block.
    threshold: the exit threshold chosen when it was exported.
    class_names: one name per class.
    image_shape: (H, W, C) the cascade reads.

  Raises:
    FileNotFoundError: the folder holds no manifest.json.
    ValueError: the manifest is not of this loader's format and version, or a block's file is damaged
      (it differs from its sha256 in the manifest, or is not a whole exported block).
  """

  def __init__(self, directory: str):
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
      raise FileNotFoundError(f"{directory} holds no {MANIFEST}: export a cascade there with experiments.export")
    with open(path) as f:
      self.manifest = json.load(f)
    if self.manifest.get("format") != FORMAT or self.manifest.get("version") != VERSION:
      raise ValueError(f"{path} is not a version-{VERSION} {FORMAT} manifest: re-export with this loader's package")
    self.blocks = []
    for block in self.manifest["blocks"]:
      path = os.path.join(directory, block["file"])
      with open(path, "rb") as f:
        serialized = f.read()
      damaged = f"{path} is damaged"
      if "sha256" in block and hashlib.sha256(serialized).hexdigest() != block["sha256"]:
        raise ValueError(f"{damaged} (it does not match its sha256 in {MANIFEST}): export the cascade again")
      try:
        self.blocks.append(jax.jit(jax.export.deserialize(bytearray(serialized)).call))
      except Exception as e:  # a cut-off or foreign file: jax raises struct, flatbuffer and value errors
        raise ValueError(f"{damaged} ({type(e).__name__}: it is not a whole exported block): export again") from None
    self.threshold = float(self.manifest["threshold"])
    self.class_names = list(self.manifest["class_names"])
    self.image_shape = tuple(self.manifest["image_shape"])
    self._mean = np.asarray(self.manifest["mean"], np.float32)
    self._std = np.asarray(self.manifest["std"], np.float32)
    self._divisor = np.float32(self.manifest.get("divisor", 255.0))  # absent: uint8 pixels

  def normalise(self, pixels) -> np.ndarray:
    """Raw images [N, H, W, C] → the network's inputs: (raw / divisor − mean) / std per channel.

    Args:
      pixels: [N, H, W, C] raw images (uint8 pixels for the built-in datasets).

    Returns:
      float32 [N, H, W, C] inputs.

    Raises:
      ValueError: the images are not of the cascade's (H, W, C).
    """
    pixels = np.asarray(pixels)
    if tuple(pixels.shape[1:]) != self.image_shape:
      raise ValueError(f"images are {pixels.shape[1:]}, the cascade reads {self.image_shape} (H, W, C)")
    return ((pixels.astype(np.float32) / self._divisor) - self._mean) / self._std

  def _batch(self, x, threshold: float, use_commitment: bool) -> dict:
    n = x.shape[0]
    out = {k: np.zeros(n, t) for k, t in (("class", np.int32), ("exit", np.int32), ("qualified", bool))}
    out.update(confidence=np.zeros(n, np.float32), commitment_logit=np.zeros(n, np.float32))
    best = dict(confidence=np.full(n, -np.inf, np.float32), **{k: np.zeros(n, np.float32) for k in ("c", "e", "m")})
    rows, features = np.arange(n), x  # the rows still in the cascade, and their inputs to the next block
    last = len(self.blocks) - 1
    for j, block in enumerate(self.blocks):
      size = padded_size(len(rows))
      inputs = np.zeros((size, *features.shape[1:]), np.float32)
      inputs[: len(rows)] = np.asarray(features)[: len(rows)]
      feats, prediction, confidence, commit = (np.asarray(a)[: len(rows)] for a in block(inputs))
      leaves = confidence > threshold
      if use_commitment:
        leaves &= commit > 0
      better = confidence > best["confidence"][rows]  # strict: ties keep the earlier exit
      for key, value in (("confidence", confidence), ("c", prediction), ("e", j), ("m", commit)):
        best[key][rows] = np.where(better, value, best[key][rows])
      done = rows[leaves]
      out["class"][done], out["exit"][done], out["qualified"][done] = prediction[leaves], j, True
      out["confidence"][done], out["commitment_logit"][done] = confidence[leaves], commit[leaves]
      rows, features = rows[~leaves], feats[~leaves]
      if not len(rows):
        break
      if j == last:  # nobody qualified: the most confident exit answers
        out["class"][rows], out["exit"][rows] = best["c"][rows], best["e"][rows]
        out["confidence"][rows], out["commitment_logit"][rows] = best["confidence"][rows], best["m"][rows]
    out["blocks_run"] = np.where(out["qualified"], out["exit"] + 1, len(self.blocks)).astype(np.int32)
    return out

  def predict(self, pixels, threshold: float | None = None, batch_size: int = 1024, use_commitment: bool = True):
    """Answers for uint8 `pixels` [N, H, W, C]: a dict of arrays — class, exit, confidence,
    commitment_logit, qualified (False: the fallback answered), blocks_run — in input order.

    Args:
      pixels: [N, H, W, C] raw images.
      threshold: the exit threshold (None: the exported one).
      batch_size: images per batch.
      use_commitment: False: the confidence-only rule.

    Returns:
      The dict of [N] arrays.

    Raises:
      ValueError: the images are not of the cascade's (H, W, C).
    """
    threshold = self.threshold if threshold is None else float(threshold)
    x = self.normalise(pixels)
    parts = [self._batch(x[i : i + batch_size], threshold, use_commitment) for i in range(0, len(x), batch_size)]
    if not parts:
      return {k: np.zeros(0) for k in ("class", "exit", "confidence", "commitment_logit", "qualified", "blocks_run")}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def class_name(self, index: int) -> str:
    """The name of class `index`.

    Args:
      index: a class index (e.g. an entry of `predict`'s "class").

    Returns:
      The class's name.
    """
    return self.class_names[int(index)]


def load(directory: str) -> ExportedCascade:
  """The cascade exported to `directory` (manifest.json and its block files).

  Args:
    directory: the export's folder.

  Returns:
    The `ExportedCascade`.

  Raises:
    FileNotFoundError: the folder holds no manifest.json.
    ValueError: the manifest is not of this loader's format and version.
  """
  return ExportedCascade(directory)

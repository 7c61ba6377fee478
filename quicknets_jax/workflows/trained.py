"""A trained QuickNet read back from its workdir — for prediction, thresholds for a target, and export.

A workdir written by `workflows.experiment.train_and_evaluate` (or `quicknets_jax.train`) holds
config.json (the run's settings, the model among them: a registered name or a `package.module:function`
factory with its arguments), data.json (the data's image shape, class names, normalisation and, for
arrays a user passed, where their validation and test splits are kept) and, per seed,
seed_<s>/quicknet_checkpoints/ (one checkpoint per frozen block). Those are enough to rebuild the
model and its frozen blocks without the training data, also while the run is still training: the
blocks frozen so far form a deployable cascade (the paper: each block can be deployed as soon as it is
trained).
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from quicknets_jax.algorithms import forward
from quicknets_jax.algorithms.cascade import CascadeResult, cascade_predict
from quicknets_jax.core import exits
from quicknets_jax.core.progress import Progress
from quicknets_jax.data.datasets import Dataset
from quicknets_jax.data.normalisation import Normalisation
from quicknets_jax.data.split import Split
from quicknets_jax.models.base import MultiExitModel
from quicknets_jax.training.checkpoint import BlockCheckpointer
from quicknets_jax.workflows.experiment_config import ExperimentConfig
from quicknets_jax.workflows.workdir import read_json


class TrainedRunError(ValueError):
  """A workdir that cannot serve what was asked of it; the message names the fix."""


def frozen_blocks(model: MultiExitModel, seed_dir: str, require_all: bool = True) -> list:
  """The variables of the blocks frozen in SEED_DIR/quicknet_checkpoints (an experiment's seed).

  Args:
    model: the run's model (its variables' structure).
    seed_dir: the seed's folder, WORKDIR/seed_<s>.
    require_all: refuse a seed whose training has not frozen every block yet (else: those frozen so far).

  Returns:
    One variable dict per frozen block, as jax arrays.

  Raises:
    TrainedRunError: no block is frozen yet, or (with `require_all`) not every block is.
  """
  directory = os.path.join(seed_dir, "quicknet_checkpoints")
  if not os.path.isdir(directory):
    raise TrainedRunError(f"{seed_dir} has no frozen block yet (no {directory}): train the run or wait for block 0")
  checkpoints = BlockCheckpointer(directory)
  try:
    variables, _, _ = checkpoints.restore(model.init(jax.random.PRNGKey(0)))
  finally:
    checkpoints.close()
  if not variables:
    raise TrainedRunError(f"{seed_dir} has no frozen block yet: wait until its block 0 is trained")
  if require_all and len(variables) < model.num_blocks:
    raise TrainedRunError(
      f"{seed_dir} holds {len(variables)} frozen blocks of {model.num_blocks}: finish the run (rerun its command)"
    )
  return jax.tree.map(jnp.asarray, variables)


@dataclasses.dataclass
class TrainedQuickNet:
  """The frozen blocks of one seed of a run, with what is needed to read new images.

  Attributes:
    workdir: the run's folder.
    seed: the seed whose blocks these are.
    config: the run's settings (config.json).
    model: the run's model, rebuilt.
    variables: per frozen block (only the first `len(variables)` of the model's blocks).
    data_card: `Dataset.card()` of the run's dataset (data.json).
    run_threshold: the run's operating threshold, when it is known (see `threshold`).
  """

  workdir: str
  seed: int
  config: ExperimentConfig
  model: MultiExitModel
  variables: list  # per frozen block (only the first `len(variables)` of the model's blocks)
  data_card: dict  # `Dataset.card()` of the run's dataset (data.json)
  run_threshold: Optional[float]  # the run's operating threshold, when it is known (see `threshold`)

  @property
  def normalisation(self) -> Normalisation:
    """How raw images become the network's inputs (data.json's)."""
    return Normalisation.from_card(self.data_card)

  @property
  def num_blocks(self) -> int:
    """Blocks in use: the first `num_blocks` of the model's, all of them frozen."""
    return len(self.variables)

  @property
  def class_names(self) -> list:
    """One name per class (data.json's)."""
    return list(self.data_card["class_names"])

  @property
  def image_shape(self) -> tuple:
    """(H, W, C) of the images the network reads (data.json's)."""
    return tuple(self.data_card["image_shape"])

  def normalise(self, pixels: np.ndarray) -> np.ndarray:
    """Raw [N, H, W, C] images (pixel values 0..255 for the built-in datasets) → the float32 inputs the
    network was trained on (`normalisation`).

    Args:
      pixels: [N, H, W, C] raw images.

    Returns:
      float32 [N, H, W, C] inputs.
    """
    return self.normalisation.apply(pixels)

  def exit_outputs(self, images: np.ndarray, batch_size: int = 2048):
    """(probs [E, N, C], commitment logits [E, N]) of every block in use on normalised `images`.

    Args:
      images: [N, H, W, C] normalised inputs.
      batch_size: images per forward pass.

    Returns:
      (probs, commitment logits) of the E blocks in use.
    """
    return forward.all_exit_outputs(self.model, self.variables, images, batch_size)

  def predict(
    self,
    pixels: np.ndarray,
    threshold: Optional[float] = None,
    batch_size: int = 1024,
    chunk: int = 16384,
    progress: Optional[bool] = None,
  ) -> CascadeResult:
    """The early-exit cascade's answers for raw images [N, H, W, C] (normalised here, `chunk` at a time).

    Args:
      pixels: raw images (pixel values 0..255 for a built-in dataset's model; arrays as trained on for a
        model trained on arrays).
      threshold: the exit threshold (default: the run's operating threshold).
      batch_size: images entering block 0 together.
      chunk: images normalised and run at a time (memory).
      progress: a progress line (default: on a terminal only).

    Returns:
      Per image: class, exit, whether the rule fired there, blocks run, confidence, commitment logit.
    """
    threshold = self.threshold() if threshold is None else threshold
    fallback, parts = self.config.exit_rule.fallback, []
    with Progress(len(pixels), "predict", unit="images", enabled=progress) as bar:
      for start in range(0, len(pixels), chunk):
        images = self.normalise(pixels[start : start + chunk])
        parts.append(cascade_predict(self.model, self.variables, images, threshold, fallback, batch_size=batch_size))
        bar.update(len(images))
    if not parts:
      empty = np.zeros(0, np.int32)
      return CascadeResult(empty, empty, empty.astype(bool), empty, empty.astype(np.float32), empty.astype(np.float32))
    return CascadeResult(*(np.concatenate(column) for column in zip(*parts)))

  def cascade_costs(self) -> np.ndarray:
    """Inference FLOPs per sample of leaving after block 0, 1, … of the blocks in use.

    Returns:
      [E] cumulative FLOPs.
    """
    return np.asarray(self.model.cascade_costs()[: self.num_blocks])

  def threshold(self, dataset: Optional[Dataset] = None) -> float:
    """The operating threshold: the run's (chosen on its validation split, or fixed by its config) when
    these are the blocks it evaluated; else chosen the run's way on `dataset`'s validation split.

    Args:
      dataset: the run's dataset (`load_dataset`), needed when no threshold is recorded.

    Returns:
      The threshold.

    Raises:
      TrainedRunError: no threshold is recorded for these blocks and no dataset is given.
    """
    if self.run_threshold is not None:
      return self.run_threshold
    if dataset is None:
      raise TrainedRunError(
        f"{self.workdir} seed {self.seed}: no threshold is recorded for {self.num_blocks} blocks; "
        "pass the run's dataset (or a threshold) to choose one on validation"
      )
    rule = self.config.exit_rule
    probs, commits = self.exit_outputs(dataset.val.images, self.config.fit.eval_batch_size)
    sweep = exits.sweep_thresholds(probs, commits, dataset.val.labels, self.cascade_costs(), fallback=rule.fallback)
    return exits.choose_threshold(sweep, rule.threshold_tolerance)

  def load_dataset(self) -> Dataset:
    """The run's own data (its validation split chooses thresholds): the arrays kept in the workdir for a
    run on arrays a user passed, else the dataset its config names.

    Returns:
      The `Dataset` (for a run on arrays: only its validation and test splits).

    Raises:
      TrainedRunError: the kept arrays are missing.
      DataError: the dataset the config names cannot be found or read.
    """
    splits = self.data_card.get("splits")
    if splits is None:
      return self.config.data.load()
    loaded = {}
    for name in ("val", "test"):
      path = os.path.join(self.workdir, splits[name])
      if not os.path.exists(path):
        raise TrainedRunError(f"{self.workdir}: its {name} split ({path}) is missing: restore it or retrain the run")
      try:
        with np.load(path) as f:
          loaded[name] = Split(f["images"], f["labels"])
      except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise TrainedRunError(
          f"{self.workdir}: its {name} split ({path}) is unreadable ({type(e).__name__}): restore it or retrain the run"
        ) from None
    card, norm = self.data_card, self.normalisation
    return Dataset(
      name=card.get("name", "arrays"),
      train=Split(np.zeros((0, *self.image_shape), np.float32), np.zeros(0, np.int32)),
      val=loaded["val"],
      test=loaded["test"],
      num_classes=int(card["num_classes"]),
      class_names=tuple(card["class_names"]),
      mean=np.asarray(norm.mean, np.float32),
      std=np.asarray(norm.std, np.float32),
      source=f"arrays kept in {self.workdir}",
      divisor=norm.divisor,
    )


def _seeds_with_blocks(workdir: str, seeds) -> list:
  return [s for s in seeds if os.path.isdir(os.path.join(workdir, f"seed_{s}", "quicknet_checkpoints", "0"))]


def load_trained(workdir: str, seed: Optional[int] = None, blocks: Optional[int] = None) -> TrainedQuickNet:
  """The frozen blocks of one seed of the run in WORKDIR (by default its first seed with a frozen block).

  Args:
    workdir: the run's directory (config.json, data.json, seed_<s>/).
    seed: which seed's blocks (default: the first seed with a frozen block).
    blocks: use only the first K blocks (default: every block frozen so far; the run may still train).

  Returns:
    The `TrainedQuickNet`.

  Raises:
    TrainedRunError: one line naming the fix, when WORKDIR holds no run, has no data.json, names a model
      factory that cannot be imported, the seed has no frozen block, or fewer than K blocks are frozen.
  """
  config_path = os.path.join(workdir, "config.json")
  if not os.path.exists(config_path):
    raise TrainedRunError(
      f"{workdir} holds no run (no config.json): train one first, e.g. "
      f"python -m experiments.fashion_mnist --workdir={workdir}"
    )
  try:
    config = ExperimentConfig.from_json(read_json(config_path))
  except (TypeError, ValueError) as e:
    raise TrainedRunError(
      f"{config_path} is not a QuickNet run's ({e}): pass the workdir of an experiments.<dataset> command or of "
      "quicknets_jax.train"
    ) from None
  card_path = os.path.join(workdir, "data.json")
  if not os.path.exists(card_path):
    raise TrainedRunError(
      f"{workdir} has no data.json (the data's shape, classes and normalisation), so new images cannot be read: "
      "rerun the training command in this workdir (finished seeds are kept) to write it"
    )
  card = read_json(card_path)
  if card.get("mean") is None:
    raise TrainedRunError(f"{workdir}: its dataset was passed in unnormalised, so new images cannot be read")
  try:
    model = config.model.build(tuple(card["image_shape"]), int(card["num_classes"]))
  except ValueError as e:  # an unimportable factory, or one that no longer builds this model
    raise TrainedRunError(f"{workdir}: {e}") from None
  seeds = list(config.seeds)
  if seed is None:
    with_blocks = _seeds_with_blocks(workdir, seeds)
    if not with_blocks:
      raise TrainedRunError(f"{workdir} has no frozen block yet (seeds {seeds}): wait until a block 0 is trained")
    seed = with_blocks[0]
  elif seed not in seeds:
    raise TrainedRunError(f"{workdir} trains seeds {seeds}, not {seed}: pass one of them as --seed")
  seed_dir = os.path.join(workdir, f"seed_{seed}")
  variables = frozen_blocks(model, seed_dir, require_all=False)
  if blocks is not None:
    if not 1 <= blocks <= len(variables):
      raise TrainedRunError(
        f"{seed_dir} has {len(variables)} frozen block(s) of {model.num_blocks}: choose 1 to {len(variables)} blocks"
      )
    variables = variables[:blocks]
  run_threshold = config.exit_rule.exit_threshold
  result_path = os.path.join(seed_dir, "quicknet.json")
  if run_threshold is None and os.path.exists(result_path):
    result = read_json(result_path)
    if result.get("trained_blocks", model.num_blocks) == len(variables):
      run_threshold = float(result["exit_threshold"])
  return TrainedQuickNet(workdir, seed, config, model, list(variables), card, run_threshold)

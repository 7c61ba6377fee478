"""A trained QuickNet read back from its workdir — for prediction, thresholds for a target, and export.

A workdir written by `workflows.experiment.train_and_evaluate` holds config.json (the run's settings),
data.json (the dataset's image shape, class names and normalisation) and, per seed,
seed_<s>/quicknet_checkpoints/ (one checkpoint per frozen block). Those are enough to rebuild the
model and its frozen blocks without the data, also while the run is still training: the blocks frozen
so far form a deployable cascade (the paper: each block can be deployed as soon as it is trained).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from quicknets_jax.algorithms import forward
from quicknets_jax.core import exits
from quicknets_jax.data.datasets import Dataset
from quicknets_jax.models.base import MultiExitModel
from quicknets_jax.training.checkpoint import BlockCheckpointer
from quicknets_jax.workflows.experiment_config import ExperimentConfig
from quicknets_jax.workflows.workdir import read_json


class TrainedRunError(ValueError):
  """A workdir that cannot serve what was asked of it; the message names the fix."""


def frozen_blocks(model: MultiExitModel, seed_dir: str, require_all: bool = True) -> list:
  """The variables of the blocks frozen in SEED_DIR/quicknet_checkpoints (an experiment's seed).

  `require_all`: refuse a seed whose training has not frozen every block yet (else: those frozen so far).
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
  """The frozen blocks of one seed of a run, with what is needed to read new images."""

  workdir: str
  seed: int
  config: ExperimentConfig
  model: MultiExitModel
  variables: list  # per frozen block (only the first `len(variables)` of the model's blocks)
  data_card: dict  # `Dataset.card()` of the run's dataset
  run_threshold: Optional[float]  # the run's operating threshold, when it is known (see `threshold`)

  @property
  def num_blocks(self) -> int:
    """Blocks in use: the first `num_blocks` of the model's, all of them frozen."""
    return len(self.variables)

  @property
  def class_names(self) -> list:
    return list(self.data_card["class_names"])

  @property
  def image_shape(self) -> tuple:
    return tuple(self.data_card["image_shape"])

  def normalise(self, pixels: np.ndarray) -> np.ndarray:
    """[N, H, W, C] pixel values in 0..255 → the float32 inputs the network was trained on."""
    mean = np.asarray(self.data_card["mean"], np.float32)
    std = np.asarray(self.data_card["std"], np.float32)
    return ((np.asarray(pixels, np.float32) / np.float32(255.0)) - mean) / std

  def exit_outputs(self, images: np.ndarray, batch_size: int = 2048):
    """(probs [E, N, C], commitment logits [E, N]) of every block in use on normalised `images`."""
    return forward.all_exit_outputs(self.model, self.variables, images, batch_size)

  def cascade_costs(self) -> np.ndarray:
    """Inference FLOPs per sample of leaving after block 0, 1, … of the blocks in use."""
    return np.asarray(self.model.cascade_costs()[: self.num_blocks])

  def threshold(self, dataset: Optional[Dataset] = None) -> float:
    """The operating threshold: the run's (chosen on its validation split, or fixed by its config) when
    these are the blocks it evaluated; else chosen the run's way on `dataset`'s validation split."""
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
    """The run's own dataset (its validation split chooses thresholds), as its config names it."""
    return self.config.data.load()


def _seeds_with_blocks(workdir: str, seeds) -> list:
  return [s for s in seeds if os.path.isdir(os.path.join(workdir, f"seed_{s}", "quicknet_checkpoints", "0"))]


def load_trained(workdir: str, seed: Optional[int] = None, blocks: Optional[int] = None) -> TrainedQuickNet:
  """The frozen blocks of one seed of the run in WORKDIR (by default its first seed with a frozen block).

  `blocks`: use only the first K blocks (default: every block frozen so far). The workdir may still be
  training. Raises `TrainedRunError` naming the fix when WORKDIR holds no run, the seed has no frozen
  block, or fewer than K blocks are frozen.
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
      f"{config_path} is not a QuickNet run's ({e}): pass the workdir of experiments.fashion_mnist, mnist, "
      "cifar10 or imagenet"
    ) from None
  seeds = list(config.seeds)
  if seed is None:
    with_blocks = _seeds_with_blocks(workdir, seeds)
    if not with_blocks:
      raise TrainedRunError(f"{workdir} has no frozen block yet (seeds {seeds}): wait until a block 0 is trained")
    seed = with_blocks[0]
  elif seed not in seeds:
    raise TrainedRunError(f"{workdir} trains seeds {seeds}, not {seed}: pass one of them as --seed")
  card_path = os.path.join(workdir, "data.json")
  if os.path.exists(card_path):
    card = read_json(card_path)
  else:  # a workdir from before data.json: the dataset itself gives the card
    card = config.data.load().card()
  if card.get("mean") is None:
    raise TrainedRunError(f"{workdir}: its dataset was passed in unnormalised, so new images cannot be read")
  model = config.model.build(tuple(card["image_shape"]), int(card["num_classes"]))
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

"""Your own network on your own data: `train` (a QuickNet and its end-to-end baseline, into a workdir),
then `load` it back to choose thresholds, predict and export — what `import quicknets_jax as qn` offers.

A run is a directory that knows its model and its data: config.json names the model's factory by import
path (`package.module:function` with its keyword arguments), data.json the data's shape, classes and
normalisation, and the workdir keeps the validation and test splits, so `experiments.predict`,
`experiments.export` and thresholds for a target work on it in another process exactly as on a
built-in experiment's workdir. Calling `train` again with the same arguments resumes a stopped run.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Sequence
from typing import Optional, Union

import numpy as np

from quicknets_jax.algorithms.settings import QuickNetConfig
from quicknets_jax.data.datasets import ARRAYS, DataConfig, Dataset, split_validation
from quicknets_jax.data.normalisation import Normalisation
from quicknets_jax.data.split import Split
from quicknets_jax.models.base import MultiExitModel
from quicknets_jax.models.registry import ModelConfig, factory_path
from quicknets_jax.workflows.experiment import train_and_evaluate
from quicknets_jax.workflows.experiment_config import ExperimentConfig
from quicknets_jax.workflows.export import export_trained
from quicknets_jax.workflows.predict import operating_threshold
from quicknets_jax.workflows.trained import TrainedQuickNet, load_trained

KEPT = {"val": os.path.join("arrays", "val.npz"), "test": os.path.join("arrays", "test.npz")}

Factory = Callable[..., MultiExitModel]


def _factory_and_args(model: Factory) -> tuple[Callable, dict]:
  if isinstance(model, functools.partial):
    if model.args:
      raise ValueError("bind the factory's arguments by keyword: functools.partial(small_cnn, width=32)")
    return model.func, dict(model.keywords)
  return model, {}


def _labels(y) -> np.ndarray:
  labels = np.asarray(y)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} of shape {labels.shape}")
  return labels.astype(np.int32)


def arrays_dataset(
  train: Split,
  test: Split,
  val: Union[Split, float] = 0.1,
  class_names: Optional[Sequence[str]] = None,
  num_classes: Optional[int] = None,
) -> Dataset:
  """A `Dataset` of arrays used as they are (identity normalisation).

  Args:
    train: the training (images, labels) pair; images float [N, ...], labels int [N].
    test: the test (images, labels) pair, shaped likewise.
    val: an (images, labels) pair, or the fraction of `train` (its last rows) to hold out for validation.
    class_names: one name per class (default "0", "1", ...).
    num_classes: the number of classes C; labels are class indices in [0, C). Default: as many as
      `class_names` lists, else the largest training label + 1.

  Returns:
    The dataset (name "arrays"), its images float32 and labels int32, with `num_classes` classes.

  Raises:
    ValueError: mismatched lengths or shapes, labels that are not integers, an empty split, NaN or inf
      among the images (naming the split and the first row), fewer class names than classes, or a label
      of any split outside [0, C) (the message names the split, the row and the value).
  """
  train, test = Split.of(train), Split.of(test)
  if isinstance(val, (int, float)) and not isinstance(val, bool):
    train, val = split_validation(np.asarray(train.images), _labels(train.labels), float(val))
  val = Split.of(val)
  splits = {
    name: Split(np.asarray(s.images, np.float32), _labels(s.labels))
    for name, s in (("train", train), ("val", val), ("test", test))
  }
  shape = splits["train"].images.shape[1:]
  for name, split in splits.items():
    if split.images.shape[1:] != shape:
      raise ValueError(f"{name} images are {split.images.shape[1:]} per sample, train images {shape}: pass one shape")
    if not len(split.labels):
      raise ValueError(f"the {name} split is empty")
    finite = np.isfinite(split.images.reshape(len(split.images), -1)).all(axis=1)
    if not finite.all():
      row = int(np.argmin(finite))
      raise ValueError(
        f"{name} images hold NaN or inf values (first in row {row}, {int((~finite).sum())} rows in all): "
        "replace or drop those rows before training"
      )
  declared = num_classes if num_classes is not None else (len(class_names) if class_names is not None else None)
  if declared is not None and declared < 1:
    raise ValueError(f"num_classes={declared}: pass the number of classes (at least 1)")
  classes = int(splits["train"].labels.max()) + 1 if declared is None else int(declared)
  whence = (
    f"num_classes={classes}"
    if num_classes is not None
    else f"{classes} class names"
    if class_names is not None
    else f"{classes} classes, from the largest training label"
  )
  for name, split in splits.items():
    outside = (split.labels < 0) | (split.labels >= classes)
    if outside.any():
      row = int(np.argmax(outside))
      raise ValueError(
        f"{name} label {int(split.labels[row])} (row {row}) is outside [0, {classes}) ({whence}): labels are "
        "class indices 0 .. C-1; fix the label, or pass num_classes=C"
      )
  names = tuple(str(c) for c in range(classes)) if class_names is None else tuple(class_names)
  if len(names) != classes:
    raise ValueError(f"{len(names)} class names for {classes} classes: give one name per class")
  identity = Normalisation.identity(shape[-1] if len(shape) else 1)
  return Dataset(
    name=ARRAYS,
    **splits,
    num_classes=classes,
    class_names=names,
    mean=np.asarray(identity.mean, np.float32),
    std=np.asarray(identity.std, np.float32),
    source="arrays",
    divisor=identity.divisor,
    kept_splits=dict(KEPT),
  )


def absent_classes(dataset: Dataset) -> list[int]:
  """The classes in [0, num_classes) that no training label names.

  Args:
    dataset: the data set.

  Returns:
    Those classes, in order (empty when every class has a training sample).
  """
  counts = np.bincount(np.asarray(dataset.train.labels), minlength=dataset.num_classes)
  return [int(c) for c in np.flatnonzero(counts == 0)]


def train(
  model: Factory,
  *,
  train: Split,
  test: Split,
  val: Union[Split, float] = 0.1,
  config: Union[QuickNetConfig, ExperimentConfig, None] = None,
  seeds: Optional[Sequence[int]] = None,
  workdir: str,
  log: Callable[[str], None] = print,
  overwrite: bool = False,
  num_classes: Optional[int] = None,
) -> dict:
  """Trains your network as a QuickNet and as its end-to-end baseline, on your arrays, into `workdir`.

  Args:
    model: a factory `(input_shape, num_classes, **kwargs) -> MultiExitModel` defined at the top level of
      a module (`multi_exit_model` builds one from your modules), or `functools.partial(factory, **kwargs)`.
    train: the training (images, labels) pair, used as it is (identity normalisation).
    test: the test (images, labels) pair; it and the validation split are kept in WORKDIR/arrays/.
    val: an (images, labels) pair, or the fraction of `train` to hold out (its last rows).
    config: the QuickNet's settings and schedule (`QuickNetConfig`), or a whole `ExperimentConfig` (exit
      rule, end-to-end baseline on or off, ...); default: the paper's MLP schedule.
    seeds: the runs (results are mean ± std over them); default: an `ExperimentConfig`'s seeds, else (0,).
    workdir: where the run goes; calling again with the same arguments resumes it (other arrays or
      settings there are refused, naming what differs).
    log: where progress lines go.
    overwrite: start over in a workdir that holds a run with other settings or data (the run's files
      are deleted; a folder holding other files is refused).
    num_classes: the number of classes C (labels are class indices in [0, C)); default: the largest
      training label + 1. A label of any split outside [0, C) is refused; a class without a training
      sample is logged as a warning.

  Returns:
    The results dict, as written to WORKDIR/results.json, with the QuickNet's and the end-to-end
    network's accuracy, inference and training FLOPs and exit fractions, per seed and their mean.

  Raises:
    ValueError: a factory another process could not import, bad arrays (a label outside [0, C) names
      its split, row and value), or a run with other settings or data in `workdir`.
  """
  factory, kwargs = _factory_and_args(model)
  name = factory_path(factory)
  experiment = config if isinstance(config, ExperimentConfig) else ExperimentConfig(quicknet=config or QuickNetConfig())
  experiment = dataclasses.replace(
    experiment,
    data=DataConfig(dataset=ARRAYS),
    model=ModelConfig(name=name, model_args=json.dumps(kwargs, sort_keys=True) if kwargs else None),
    seeds=experiment.seeds if seeds is None and isinstance(config, ExperimentConfig) else tuple(seeds or (0,)),
  )
  dataset = arrays_dataset(train, test, val, num_classes=num_classes)
  unseen = absent_classes(dataset)
  if unseen:
    log(
      f"warning: {len(unseen)} of {dataset.num_classes} classes have no training sample (e.g. class {unseen[0]}): "
      "the exits can never answer them; labels 1 .. C train as C + 1 classes, so start them at 0"
    )
  built = factory(tuple(dataset.image_shape), dataset.num_classes, **kwargs)
  if not isinstance(built, MultiExitModel):
    raise ValueError(f"{name} returned a {type(built).__name__}, not a MultiExitModel: return multi_exit_model(...)")
  # the validation and test splits are kept in WORKDIR/arrays/ once the workdir is known to hold this data
  return train_and_evaluate(experiment, workdir, log=log, overwrite=overwrite, dataset=dataset, model=built)


def load(workdir: str, seed: Optional[int] = None, blocks: Optional[int] = None) -> TrainedQuickNet:
  """A trained run read back from its workdir (`workflows.trained.load_trained`).

  Its frozen blocks, with what `predict`, `threshold_for` and `export` need.

  Args:
    workdir: the run's directory (what `train` was given).
    seed: which seed's blocks (default: the first seed with a frozen block).
    blocks: use only the first K blocks (default: every block frozen so far; the run may still train).

  Returns:
    The `TrainedQuickNet` of that seed.

  Raises:
    quicknets_jax.workflows.trained.TrainedRunError: one line naming the fix (no run, no data.json, an
      unimportable factory, ...).
  """
  return load_trained(workdir, seed, blocks)


def threshold_for(
  trained: TrainedQuickNet,
  *,
  target_mflops: Optional[float] = None,
  target_accuracy: Optional[float] = None,
  target_exit_fraction: Optional[float] = None,
  confidence: Optional[float] = None,
  log: Callable[[str], None] = print,
) -> float:
  """The exit threshold that meets one target on the run's validation split.

  The threshold is then measured on the run's test split and logged. The target is one of: at most
  `target_mflops` MFLOPs per image (the most accurate such threshold), at least `target_accuracy` (the
  cheapest), or at least `target_exit_fraction` of the images leaving before the last exit. With no
  target, the run's own operating threshold.

  Args:
    trained: the run, as `load` returns it.
    target_mflops: the largest mean inference cost per image, in MFLOPs.
    target_accuracy: the lowest accuracy, a fraction in [0, 1].
    target_exit_fraction: the lowest fraction of images that leave before the last exit.
    confidence: with `target_accuracy`, a probability (e.g. 0.9): the cheapest threshold whose accuracy
      is at least the target with this probability over the draw of the validation split (a
      finite-sample guarantee, `exits.threshold_with_guarantee`), instead of one that merely reaches it
      there.
    log: where the test split's measurement is logged.

  Returns:
    The exit threshold.

  Raises:
    ValueError: more than one target, or a target no threshold meets (the message says what is reachable).
  """
  threshold, _ = operating_threshold(
    trained, None, target_mflops, target_accuracy, target_exit_fraction, log=log, confidence=confidence
  )
  return threshold


def export(trained: TrainedQuickNet, out_dir: str, threshold: Optional[float] = None) -> str:
  """The run's cascade at `threshold` as a deployable directory that runs with JAX alone.

  See `workflows.export.export_cascade` for what the directory holds.

  Args:
    trained: the run, as `load` returns it.
    out_dir: the directory to write.
    threshold: the exit threshold; None: the run's operating threshold.

  Returns:
    The path of the exported manifest.

  Raises:
    ValueError: the run's exit rule falls back to the last exit, which the exported cascade does not do.
  """
  return export_trained(trained, out_dir, trained.threshold() if threshold is None else threshold)

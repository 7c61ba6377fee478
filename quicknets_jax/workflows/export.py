"""A trained workdir's first K blocks exported as a deployable early-exit cascade (`jax.export`).

Each block becomes one serialized artifact mapping its inputs [b, ...] (b symbolic: any batch size) to
(features, prediction, confidence, commitment logit), its weights inside; manifest.json says how to
feed it, and cascade_loader.py (a copy of `workflows.cascade_loader`) runs it with JAX alone.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from quicknets_jax.core import exits
from quicknets_jax.data.normalisation import Normalisation
from quicknets_jax.models.base import MultiExitModel
from quicknets_jax.workflows import cascade_loader as loader
from quicknets_jax.workflows.trained import TrainedQuickNet
from quicknets_jax.workflows.workdir import write_json

LOADER_FILE = "cascade_loader.py"


def _block_fn(block, variables):
  def fn(x):
    features, logits, commit = block.apply(variables, x)
    probs = jax.nn.softmax(logits)
    return features, jnp.argmax(probs, -1).astype(jnp.int32), exits.confidence(probs), commit

  return fn


def export_cascade(
  model: MultiExitModel,
  variables: Sequence[dict],
  threshold: float,
  normalisation: Normalisation,
  out_dir: str,
  *,
  class_names: Optional[Sequence[str]] = None,
  platforms: Optional[Sequence[str]] = None,
  source: Optional[dict] = None,
) -> str:
  """Writes the early-exit cascade of `variables`' blocks to OUT_DIR: block_<j>.jax, manifest.json and
  cascade_loader.py, which runs it with JAX alone. Its fallback is the most confident exit.

  Args:
    model: the multi-exit model.
    variables: the trained blocks' variables (the first K blocks cascade).
    threshold: the exit threshold in [0, 1].
    normalisation: how raw images become inputs (`TrainedQuickNet.normalisation`; identity for arrays
      used as they are).
    out_dir: the directory written (made if missing).
    class_names: names of the classes (default "0", "1", ...).
    platforms: the backends the artifacts can run on (e.g. ("cpu", "cuda")); default this machine's.
    source: what the manifest says it was exported from (e.g. the workdir and seed).

  Returns:
    The manifest's path.

  Raises:
    ValueError: the threshold is out of range.
  """
  exits.check_threshold(threshold)
  os.makedirs(out_dir, exist_ok=True)
  num_blocks = len(variables)
  input_shapes = [tuple(model.input_shape), *model.feature_shapes()[: num_blocks - 1]]
  cascade = model.cascade_costs()
  (batch,) = jax.export.symbolic_shape("b")
  platforms = tuple(platforms) if platforms else (jax.default_backend(),)
  blocks = []
  for j, (block_vars, shape) in enumerate(zip(variables, input_shapes)):
    fn = jax.jit(_block_fn(model.blocks[j], jax.tree.map(np.asarray, block_vars)))
    exported = jax.export.export(fn, platforms=platforms)(jax.ShapeDtypeStruct((batch, *shape), jnp.float32))
    name = f"block_{j}.jax"
    with open(os.path.join(out_dir, name), "wb") as f:
      f.write(exported.serialize())
    blocks.append(dict(file=name, input_shape=list(shape), flops_after=float(cascade[j])))
  manifest = dict(
    format=loader.FORMAT,
    version=loader.VERSION,
    blocks=blocks,
    threshold=float(threshold),
    fallback="most_confident",
    class_names=[str(c) for c in class_names]
    if class_names is not None
    else [str(c) for c in range(model.num_classes)],
    image_shape=list(model.input_shape),
    **normalisation.card(),
    normalisation="(raw / divisor - mean) / std, per channel",
    end_to_end_flops=float(model.end_to_end_cost()),
    platforms=list(platforms),
    jax_version=jax.__version__,
    source=dict(source or {}, model_blocks=model.num_blocks),
  )
  path = os.path.join(out_dir, loader.MANIFEST)
  write_json(path, manifest, indent=1)
  shutil.copyfile(loader.__file__, os.path.join(out_dir, LOADER_FILE))
  return path


def export_trained(trained: TrainedQuickNet, out_dir: str, threshold: float, platforms=None) -> str:
  """`export_cascade` of a run read back from its workdir (`trained.load_trained`).

  Args:
    trained: the run's frozen blocks.
    out_dir: the directory written (made if missing).
    threshold: the exit threshold in [0, 1].
    platforms: the backends the artifacts can run on (default: this machine's).

  Returns:
    The manifest's path.

  Raises:
    ValueError: the run's exit rule falls back to the last exit, which the exported cascade does not do,
      or the threshold is out of range.
  """
  if trained.config.exit_rule.fallback != "most_confident":
    raise ValueError("the exported cascade implements the most_confident fallback only; the run uses 'last'")
  return export_cascade(
    trained.model,
    trained.variables,
    threshold,
    trained.normalisation,
    out_dir,
    class_names=trained.class_names,
    platforms=platforms,
    source=dict(workdir=os.path.abspath(trained.workdir), seed=trained.seed),
  )

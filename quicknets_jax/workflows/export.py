"""A trained workdir's first K blocks exported as a deployable early-exit cascade (`jax.export`).

Each block becomes one serialized artifact mapping its inputs [b, ...] (b symbolic: any batch size) to
(features, prediction, confidence, commitment logit), its weights inside; manifest.json says how to
feed it, and cascade_loader.py (a copy of `core.exported_cascade`) runs it with JAX alone.
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
  trained: TrainedQuickNet, out_dir: str, threshold: float, platforms: Optional[Sequence[str]] = None
) -> str:
  """Writes the cascade of `trained`'s blocks to OUT_DIR (block_<j>.jax, manifest.json,
  cascade_loader.py) with the exit `threshold`; returns the manifest's path.

  `platforms`: the backends the artifacts can run on (e.g. ("cpu", "cuda")); default this machine's.
  """
  if trained.config.exit_rule.fallback != "most_confident":
    raise ValueError("the exported cascade implements the most_confident fallback only; the run uses 'last'")
  os.makedirs(out_dir, exist_ok=True)
  model = trained.model
  input_shapes = [trained.image_shape, *model.feature_shapes()[: trained.num_blocks - 1]]
  (batch,) = jax.export.symbolic_shape("b")
  platforms = tuple(platforms) if platforms else (jax.default_backend(),)
  blocks = []
  for j, (variables, shape) in enumerate(zip(trained.variables, input_shapes)):
    fn = jax.jit(_block_fn(model.blocks[j], jax.tree.map(np.asarray, variables)))
    exported = jax.export.export(fn, platforms=platforms)(jax.ShapeDtypeStruct((batch, *shape), jnp.float32))
    name = f"block_{j}.jax"
    with open(os.path.join(out_dir, name), "wb") as f:
      f.write(exported.serialize())
    blocks.append(dict(file=name, input_shape=list(shape), flops_after=float(trained.cascade_costs()[j])))
  card = trained.data_card
  manifest = dict(
    format=loader.FORMAT,
    version=loader.VERSION,
    blocks=blocks,
    threshold=float(threshold),
    fallback="most_confident",
    class_names=list(card["class_names"]),
    image_shape=list(card["image_shape"]),
    mean=card["mean"],
    std=card["std"],
    normalisation="(pixels / 255 - mean) / std, per channel",
    end_to_end_flops=float(model.end_to_end_cost()),
    platforms=list(platforms),
    jax_version=jax.__version__,
    source=dict(workdir=os.path.abspath(trained.workdir), seed=trained.seed, model_blocks=model.num_blocks),
  )
  path = os.path.join(out_dir, loader.MANIFEST)
  write_json(path, manifest, indent=1)
  shutil.copyfile(loader.__file__, os.path.join(out_dir, LOADER_FILE))
  return path

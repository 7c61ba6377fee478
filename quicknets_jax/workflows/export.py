"""A trained workdir's first K blocks exported as a deployable early-exit cascade (`jax.export`).

Each block becomes one serialized artifact mapping its inputs [b, ...] (b symbolic: any batch size) to
(features, prediction, confidence, commitment logit), its weights inside; manifest.json says how to
feed it, and cascade_loader.py (a copy of `workflows.cascade_loader`) runs it with JAX alone.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Sequence
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from quicknets_jax.core import exits, files
from quicknets_jax.data.normalisation import Normalisation
from quicknets_jax.models.base import MultiExitModel
from quicknets_jax.workflows import cascade_loader as loader
from quicknets_jax.workflows.trained import TrainedQuickNet
from quicknets_jax.workflows.workdir import write_json

LOADER_FILE = "cascade_loader.py"
# What an export writes: anything else in the folder is someone else's, and an export never removes it.
_EXPORTED = re.compile(r"block_\d+\.jax|manifest\.json|" + re.escape(LOADER_FILE))


def check_export_folder(out_dir: str) -> None:
  """Refuses a folder an export would overwrite other files in.

  An export replaces its folder as a whole (the previous cascade goes): `out_dir` must be new, empty or
  an earlier export.

  Args:
    out_dir: the folder an export is to write.

  Raises:
    ValueError: `out_dir` is a file, or holds files an export does not write (the message lists a few).
  """
  if not os.path.exists(out_dir):
    return
  if not os.path.isdir(out_dir):
    raise ValueError(f"--out={out_dir} is a file; pass a folder (new, empty or an earlier export)")
  foreign = sorted(n for n in os.listdir(out_dir) if not _EXPORTED.fullmatch(n))
  if foreign:
    listed = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
    raise ValueError(
      f"--out={out_dir} holds files an export does not write ({listed}); an export replaces the whole "
      "folder: pass a new or empty folder, or an earlier export"
    )


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

  The cascade is built in a temporary folder beside OUT_DIR that replaces it in one rename
  (`core.files.replaced_folder`): a kill at any moment leaves the previous export or the new one.

  Args:
    model: the multi-exit model.
    variables: the trained blocks' variables (the first K blocks cascade).
    threshold: the exit threshold in [0, 1].
    normalisation: how raw images become inputs (`TrainedQuickNet.normalisation`; identity for arrays
      used as they are).
    out_dir: the directory written: new, empty or an earlier export (`check_export_folder`).
    class_names: names of the classes (default "0", "1", ...).
    platforms: the backends the artifacts can run on (e.g. ("cpu", "cuda")); default this machine's.
    source: what the manifest says it was exported from (e.g. the workdir and seed).

  Returns:
    The manifest's path.

  Raises:
    ValueError: the threshold is out of range, or `out_dir` holds other files.
  """
  exits.check_threshold(threshold)
  check_export_folder(out_dir)
  with files.replaced_folder(out_dir) as building:  # a kill leaves the previous cascade or the new one
    _write_cascade(model, variables, threshold, normalisation, building, class_names, platforms, source)
  return os.path.join(os.path.abspath(out_dir), loader.MANIFEST)


def _write_cascade(model, variables, threshold, normalisation, out_dir, class_names, platforms, source) -> None:
  num_blocks = len(variables)
  input_shapes = [tuple(model.input_shape), *model.feature_shapes()[: num_blocks - 1]]
  cascade = model.cascade_costs()
  (batch,) = jax.export.symbolic_shape("b")
  platforms = tuple(platforms) if platforms else (jax.default_backend(),)
  blocks = []
  for j, (block_vars, shape) in enumerate(zip(variables, input_shapes)):
    fn = jax.jit(_block_fn(model.blocks[j], jax.tree.map(np.asarray, block_vars)))
    exported = jax.export.export(fn, platforms=platforms)(jax.ShapeDtypeStruct((batch, *shape), jnp.float32))
    name, serialized = f"block_{j}.jax", exported.serialize()
    with open(os.path.join(out_dir, name), "wb") as f:
      f.write(serialized)
    blocks.append(
      dict(
        file=name,
        input_shape=list(shape),
        flops_after=float(cascade[j]),
        sha256=hashlib.sha256(serialized).hexdigest(),  # the loader checks it
      )
    )
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
  write_json(os.path.join(out_dir, loader.MANIFEST), manifest, indent=1)
  shutil.copyfile(loader.__file__, os.path.join(out_dir, LOADER_FILE))


def export_trained(trained: TrainedQuickNet, out_dir: str, threshold: float, platforms=None) -> str:
  """`export_cascade` of a run read back from its workdir (`trained.load_trained`).

  Args:
    trained: the run's frozen blocks.
    out_dir: the directory written: new, empty or an earlier export.
    threshold: the exit threshold in [0, 1].
    platforms: the backends the artifacts can run on (default: this machine's).

  Returns:
    The manifest's path.

  Raises:
    ValueError: the run's exit rule falls back to the last exit, which the exported cascade does not do,
      the threshold is out of range, or `out_dir` holds other files.
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

"""Flax NNX modules as parts of a multi-exit model (Linen underneath, as every block is).

A QuickNet trains one pure param tree per block, so a constructed NNX module (it owns its arrays) is
split once (`nnx.split`) into its static graph and its state, and stands in the block as `NNXPart`: a
Linen module whose params are the NNX module's `nnx.Param` arrays and whose "batch_stats" are its
`nnx.BatchStat` arrays, both starting at the values the module was built with (its own `nnx.Rngs` made
them: a run's seed does not draw them again). Each call merges the graph with the current arrays and
runs the module, in training or evaluation mode (`Module.train()` / `eval()`: BatchNorm's running
averages, and what else follows those attributes); in training, the new batch statistics are written
back. Modules that keep their own random streams (`nnx.Rngs` inside, e.g. Dropout) are refused: their
draws would repeat every step. `nnx.bridge.to_linen(Class, *args)` works as well, for a class not yet
built.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
from flax import nnx

_STATS = "batch_stats"


@dataclasses.dataclass(frozen=True, eq=False)  # identity hash: a module field must hash, arrays do not
class _Split:
  graphdef: Any
  param_tree: Any  # the treedef of the nnx.Param state
  params: dict  # "path/to/leaf" -> array
  stats_tree: Any
  stats: dict
  rest: Any  # any other state, merged as it is


def _flat(state) -> tuple[Any, dict]:
  leaves, treedef = jax.tree.flatten(state)
  paths = ["/".join(str(k) for k in path) for path, _ in nnx.to_flat_state(state)]
  if len(paths) != len(leaves):  # one array per variable, in the same order
    paths = [str(i) for i in range(len(leaves))]
  return treedef, dict(zip(paths, leaves))


def is_nnx(module) -> bool:
  """Whether `module` is a Flax NNX module (not a Linen one).

  Args:
    module: any object, typically a block's part.

  Returns:
    True for an instance of `flax.nnx.Module`.
  """
  return isinstance(module, nnx.Module)


def split_nnx(module: nnx.Module, what: str) -> _Split:
  """The static graph and arrays of an NNX module, for `NNXPart`.

  The module's `nnx.Param` arrays and `nnx.BatchStat` arrays are each flattened to a dict keyed by their
  "/"-joined paths; any other state is kept as it is.

  Args:
    module: a built NNX module (it owns its arrays).
    what: what the module is in the model (e.g. "subnet 0"), for the error message.

  Returns:
    The module's split, holding its graph definition, its params and batch statistics (flat dicts with
    their tree structures) and the rest of its state. A frozen, identity-hashed record, fit to be a Linen
    module's field.

  Raises:
    ValueError: the module keeps its own random streams (`nnx.Rngs`), naming `what` and the fix.
  """
  graphdef, params, stats, rest = nnx.split(module, nnx.Param, nnx.BatchStat, ...)
  rngs = [path for path, value in nnx.to_flat_state(rest) if isinstance(value, nnx.RngState)]
  if rngs:
    raise ValueError(
      f"{what}: an NNX module that keeps random streams ({'/'.join(map(str, rngs[0]))}) would draw the same "
      "numbers at every step: build it without nnx.Rngs stored in it (e.g. no Dropout), or wrap its class with "
      "nnx.bridge.to_linen"
    )
  param_tree, param_leaves = _flat(params)
  stats_tree, stats_leaves = _flat(stats)
  return _Split(graphdef, param_tree, param_leaves, stats_tree, stats_leaves, rest)


class NNXPart(nn.Module):
  """A built NNX module (see the module doc) as a Linen module: `NNXPart(split_nnx(module, "subnet 0"))`.

  Its params are one dict under "nnx" (the module's `nnx.Param` arrays by path), and, when the module
  has batch statistics, so is its "batch_stats" collection.

  Attributes:
    nnx_split: what `split_nnx` returns for the module.
  """

  nnx_split: _Split

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Runs the NNX module on `x` with the current params and batch statistics.

    Args:
      x: the module's input.
      train: run the module in training mode (`Module.train()`) rather than evaluation mode; in
        training, with "batch_stats" mutable, its new batch statistics are written back.

    Returns:
      What the NNX module returns.
    """
    split = self.nnx_split
    params = self.param("nnx", lambda _: dict(split.params))
    stats = self.variable(_STATS, "nnx", lambda: dict(split.stats)) if split.stats else None
    param_state = jax.tree.unflatten(split.param_tree, [params[k] for k in split.params])
    states = [param_state]
    if stats is not None:
      states.append(jax.tree.unflatten(split.stats_tree, [stats.value[k] for k in split.stats]))
    module = nnx.merge(split.graphdef, *states, split.rest)
    module.train() if train else module.eval()
    out = module(x)
    if stats is not None and train and self.is_mutable_collection(_STATS):
      new = jax.tree.leaves(nnx.state(module, nnx.BatchStat))
      stats.value = dict(zip(split.stats, new))
    return out

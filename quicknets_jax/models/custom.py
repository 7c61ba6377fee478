"""A multi-exit model from a user's own modules: `multi_exit_model(subnets, exits, ...)`.

Any Flax module serves as a subnet or an exit: a Linen module as it is (with or without a `train`
argument: it is passed only where `__call__` takes it), or a built Flax NNX module (`nnx_bridge`).
Commitment heads default to the paper's. What the library needs to know about the network it measures:
shapes by `jax.eval_shape`, the forward FLOPs of every part by XLA (`xla_check.measured_costs`, the
convention of `core.costs`). A network that would train silently wrong — a part with no trainable
parameters, an exit whose output is not [batch, classes], blocks whose shapes do not chain — is refused
here with one line naming the part and the fix.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from quicknets_jax.core.costs import BlockCost
from quicknets_jax.models.base import COMMIT_HEADS, Block, MultiExitModel, commitment_head
from quicknets_jax.models.mlp import LinearExit
from quicknets_jax.models.xla_check import convolutions, measured_costs

# How far analytic costs a user passes may be from XLA's count before it is reported.
COST_TOLERANCE = 0.05
Part = Any  # a flax.linen.Module, or a built flax.nnx.Module


class CostMismatchWarning(UserWarning):
  """Analytic costs given for a part differ from XLA's count of it by more than `COST_TOLERANCE`."""


def _is_nnx(part) -> bool:
  # An NNX module exists only once the code that built it imported flax.nnx; importing flax.nnx (and so
  # `nnx_bridge`) costs a process ~0.7 s (it brings IPython where that is installed), so networks without
  # NNX modules never pay it.
  loaded = sys.modules.get("flax.nnx")
  return loaded is not None and isinstance(part, loaded.Module)


def _linen(part, what: str) -> nn.Module:
  if _is_nnx(part):
    nnx_bridge = importlib.import_module("quicknets_jax.models.nnx_bridge")
    return nnx_bridge.NNXPart(nnx_bridge.split_nnx(part, what))
  if not isinstance(part, nn.Module):
    raise ValueError(f"{what} is a {type(part).__name__}, not a Flax module: pass a flax.linen or flax.nnx Module")
  return part


def _leaves(tree) -> int:
  return len(jax.tree.leaves(tree))


def multi_exit_model(
  subnets: Sequence[Part],
  exits: Optional[Sequence[Part]] = None,
  *,
  input_shape: Sequence[int],
  num_classes: int,
  exit_factory: Optional[Callable[[int, tuple], Part]] = None,
  commit_head: str = "features",
  costs: Optional[Sequence[BlockCost]] = None,
  name: str = "custom",
) -> MultiExitModel:
  """A QuickNet's model from your own modules: block j is `subnets[j]`, its exit and a commitment head.

  Args:
    subnets: one module per block (θ_j): block j reads block j−1's output (block 0 the inputs).
    exits: one classifier per block (γ_j), mapping its block's features to [batch, num_classes] logits.
      Default: `exit_factory`, else a flatten + Dense(num_classes) (`models.mlp.LinearExit`).
    input_shape: one sample's shape, e.g. (28, 28, 1).
    num_classes: the classes every exit predicts.
    exit_factory: (block index, the block's feature shape) → that block's exit, instead of `exits`.
    commit_head: the commitment heads (δ_j): "features" (the paper's: Dense(C) → ReLU → Dense(1) on the
      block's features) or "logits" (the authors' code: Dense(C → C) on ReLU(the exit's logits)).
    costs: analytic forward FLOPs per sample of each block's parts; default: XLA's count. Costs that
      differ from XLA's by more than 5 % are reported (`CostMismatchWarning`) and kept.
    name: the model's name in results and messages.

  Returns:
    The `MultiExitModel`, its block costs counted.

  Raises:
    ValueError: one line naming the part and the fix, for a part that is not a Flax module, a subnet or
      exit without trainable parameters, an exit whose output is not [batch, num_classes], blocks whose
      shapes do not chain, or lists of different lengths.
  """
  if not subnets:
    raise ValueError("multi_exit_model needs at least one subnet (one per block)")
  if exits is not None and exit_factory is not None:
    raise ValueError("give exits or exit_factory, not both")
  if exits is not None and len(exits) != len(subnets):
    raise ValueError(f"{len(subnets)} subnets but {len(exits)} exits: give one exit per block")
  if commit_head not in COMMIT_HEADS:
    raise ValueError(f"commit_head must be one of {', '.join(COMMIT_HEADS)}, got {commit_head!r}")
  input_shape, num_classes = tuple(int(d) for d in input_shape), int(num_classes)
  blocks, variables = [], []
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  for j, subnet in enumerate(subnets):
    subnet = _linen(subnet, f"subnet {j}")
    probe = Block(subnet, LinearExit(num_classes), commitment_head(commit_head, num_classes))
    try:
      h = jax.eval_shape(lambda a, b=probe: b.init_with_output(jax.random.PRNGKey(0), a, method=Block.features)[0], x)
    except Exception as e:  # flax and jax raise many types for a shape that does not fit
      first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
      what = f"block {j - 1}'s output" if j else "the inputs"
      raise ValueError(
        f"subnet {j} cannot read {what} of shape {tuple(x.shape[1:])} ({first}): make its input match"
        + (f" block {j - 1}'s output" if j else " input_shape")
      ) from None
    if exits is not None:
      exit_part = exits[j]
    elif exit_factory is not None:
      exit_part = exit_factory(j, tuple(h.shape[1:]))
    else:
      exit_part = LinearExit(num_classes)
    block = Block(subnet, _linen(exit_part, f"exit {j}"), commitment_head(commit_head, num_classes))
    block_vars, (features, logits, _) = _checked_init(block, j, x, num_classes)
    blocks.append(block.clone(convolutions=convolutions(block, block_vars, x)))
    variables.append(block_vars)
    x = jax.ShapeDtypeStruct(features.shape, jnp.float32)
  measured = measured_costs(blocks, input_shape, variables)
  if costs is None:
    costs = measured
  else:
    costs = _checked_costs(costs, measured)
  return MultiExitModel(name, tuple(blocks), input_shape, num_classes, tuple(costs))


def _checked_init(block: Block, j: int, x, num_classes: int):
  """The block's variable shapes and output shapes; refuses what would not train (see the module doc)."""
  try:
    outputs, variables = jax.eval_shape(lambda a: block.init_with_output(jax.random.PRNGKey(0), a), x)
  except Exception as e:
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    raise ValueError(
      f"exit {j} cannot read subnet {j}'s features ({first}): make the exit take what the subnet returns"
    ) from None
  _, logits, _ = outputs
  if tuple(logits.shape) != (1, num_classes):
    raise ValueError(
      f"exit {j} returns shape {tuple(logits.shape[1:])} per sample, not ({num_classes},): an exit must map "
      f"[batch, ...] to [batch, num_classes] logits (flatten, then Dense({num_classes}))"
    )
  params = variables.get("params", {})
  for part, what in (("subnet", f"subnet {j}"), ("exit_head", f"exit {j}")):
    if not _leaves(params.get(part, {})):
      raise ValueError(
        f"{what} has no trainable parameters, so training would leave it as it is: give it Linen layers, or "
        "pass an NNX module itself to multi_exit_model (not inside a Linen module), which bridges it"
      )
  return variables, outputs


def _checked_costs(costs: Sequence[BlockCost], measured: Sequence[BlockCost]) -> list[BlockCost]:
  if len(costs) != len(measured):
    raise ValueError(f"costs has {len(costs)} entries for {len(measured)} blocks: give one BlockCost per block")
  for j, (given, counted) in enumerate(zip(costs, measured)):
    for part in ("subnet", "exit_head", "commit_head"):
      a, b = getattr(given, part), getattr(counted, part)
      if abs(a - b) > COST_TOLERANCE * max(abs(b), 1.0):
        warnings.warn(
          f"block {j} {part}: the given cost {a:.6g} FLOPs differs from XLA's count {b:.6g} by "
          f"{100 * (a / b - 1) if b else float('inf'):+.1f} % (more than {100 * COST_TOLERANCE:.0f} %); "
          "results use the given costs — leave costs out to use XLA's",
          CostMismatchWarning,
          stacklevel=3,
        )
  return list(costs)

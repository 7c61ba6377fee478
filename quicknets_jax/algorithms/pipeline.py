"""Decoupled QuickNet training pipelined across devices: the blocks as stages on a "stages" mesh axis.

Because every block learns from its own losses on stop-gradiented inputs (`decoupled`), nothing flows
backwards between blocks: a stage only needs the activations of the stage before it. Stage s (one
device) holds blocks `stages[s]`; at tick t it takes the batch t − s the stage before sent it
(`lax.ppermute` along the axis), runs its blocks forward, takes one optimizer step of their parameters
on their losses, and sends on what later blocks need: the features, the targets and the rows no block
so far has learned, gathered to the front of a fixed-capacity buffer with its mask (later stages of the
cascade see fewer rows; with the default capacity, the whole batch, nothing is ever dropped). Stage s
thus updates its blocks with batch b using the parameters the earlier blocks had after batches
0..b−1 — what the one-device decoupled step does — so the pipeline trains what `decoupled` trains,
within float round-off (rows are reordered; a block's batch statistics are the same rows'). An epoch
fills and drains the pipeline once: T batches take T + S − 1 ticks.

Every stage is one branch of a `lax.switch` on the device's position along the axis (blocks differ in
shape, so they cannot be stacked), every device keeps a copy of every block's state and updates only
its own, and at the end of the epoch each block's arrays are gathered from the stage that owns it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from quicknets_jax.training.losses import augment_inputs
from quicknets_jax.training.step import Batch, Statics, TrainState, train_step
from quicknets_jax.training.trainer import EpochArrays, EpochPlan, _draw

AXIS = "stages"


class Carried(NamedTuple):
  """What passes from block to block (and from stage to stage), one row per sample of the batch.

  Attributes:
    x: the features entering the next block, [R, ...].
    y: the targets, [R, ...] (class labels, with more columns where the loss reads them).
    still: float 0/1 [R], the rows no block so far has learned (padding rows 0).
    decided: bool [R], the rows a block has already answered for.
    answer: float 0/1 [R], whether that answer was right (0 where no block has answered).
  """

  x: jax.Array
  y: jax.Array
  still: jax.Array
  decided: jax.Array
  answer: jax.Array


class StageAux(NamedTuple):
  """What a stage's loss returns beside its total (`StageLoss`).

  Attributes:
    total: the blocks' summed loss, a float32 scalar.
    out: what the blocks pass on to the next block (`Carried`).
    model_state: the new model state of every block (only the stage's blocks change).
  """

  total: jax.Array
  out: Carried
  model_state: Any

  def metrics(self, mask) -> dict:
    """What `step.train_step` returns as a stage step's metrics: the total and what is passed on.

    Args:
      mask: the rows of the stage's batch (unused: the total already weighs the rows).

    Returns:
      A dict: "total" (a float32 scalar) and "out" (a `Carried`).
    """
    del mask
    return dict(total=self.total, out=self.out)


@dataclasses.dataclass(frozen=True)
class StageLoss:
  """The decoupled loss of the blocks `start`..`stop`−1 on what the stage before sent: a `step.Loss`.

  Its batch's `x` is a `Carried` (the features entering block `start`, the targets, the rows no earlier
  block has learned, and the answers so far); the loss returned is the blocks' summed loss as it is
  (`decoupled.DecoupledLoss.blocks_pass`, whose block means already weigh the rows), with a `StageAux`.

  Attributes:
    loss: the run's `decoupled.DecoupledLoss`.
    start: the stage's first block.
    stop: one past its last block that runs.
  """

  loss: Any
  start: int
  stop: int

  def __call__(self, params, batch: Batch, rng, hparams=None, *, model_state):
    """The stage's blocks run on `batch.x` (a `Carried`), in training mode when `rng` is given.

    Args:
      params: per block, its parameters (only the stage's blocks are read).
      batch: a `Batch` whose `x` is the `Carried` entering the stage (its `y` and `mask` are not read).
      rng: any key in training (the inputs are augmented before the first stage); None: inference mode.
      hparams: unused.
      model_state: per block, its model state.

    Returns:
      A tuple `(total, StageAux)`.
    """
    del hparams
    total, out, new_state = self.loss.blocks_pass(
      params, model_state, batch.x, range(self.start, self.stop), rng is not None
    )
    return total, StageAux(total, out, new_state)


def block_stages(num_blocks: int, num_stages: int) -> tuple[tuple[int, int], ...]:
  """Contiguous blocks per stage, as even as counts allow: ((start, stop), ...).

  Args:
    num_blocks: the model's number of blocks.
    num_stages: the number of pipeline stages.

  Returns:
    One `(start, stop)` pair of block indices per stage, covering 0..num_blocks−1 in order.

  Raises:
    ValueError: more stages than blocks, or fewer than one.
  """
  if not 1 <= num_stages <= num_blocks:
    raise ValueError(f"{num_stages} pipeline stages for {num_blocks} blocks: choose 1 to {num_blocks} stages")
  bounds = [round(s * num_blocks / num_stages) for s in range(num_stages + 1)]
  return tuple((bounds[s], bounds[s + 1]) for s in range(num_stages))


def stage_mesh(num_stages: int) -> Mesh:
  """A 1-D mesh named "stages" over the first `num_stages` devices.

  Args:
    num_stages: the number of pipeline stages, one device each.

  Returns:
    The mesh, with the one axis `AXIS`.

  Raises:
    ValueError: fewer devices than stages (the message names the fix).
  """
  devices = jax.devices()
  if num_stages > len(devices):
    raise ValueError(
      f"{num_stages} pipeline stages need as many devices, {len(devices)} are visible: lower --pipeline_stages "
      "(on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N makes N host devices)"
    )
  return Mesh(np.asarray(devices[:num_stages]), (AXIS,))


@dataclasses.dataclass(frozen=True)
class PipelinePlan:
  """The static part of a pipelined epoch: the decoupled epoch's plan and how it is laid over devices.

  Attributes:
    epoch: the one-device plan (its statics hold the `DecoupledLoss` and the optimizer).
    mesh: the "stages" mesh (`stage_mesh`).
    stages: the blocks of each stage, `(start, stop)` pairs (`block_stages`).
    capacity: rows a stage sends on (the whole batch by default: nothing dropped).
  """

  epoch: EpochPlan
  mesh: Mesh
  stages: tuple[tuple[int, int], ...]
  capacity: int

  @functools.cached_property
  def feature_size(self) -> int:
    """Numbers one sample's features take between stages (the largest; smaller ones are padded)."""
    shapes = self.epoch.statics.loss.model.feature_shapes()
    return max(math.prod(shapes[stop - 1]) for _, stop in self.stages)  # what each stage sends on


def pipelined_epoch(state: TrainState, arrays: EpochArrays, key, *, plan: PipelinePlan):
  """One decoupled epoch on the pipeline: the same draws and step keys as `trainer.ON_DEVICE`.

  Args:
    state: the train state of every block (replicated).
    arrays: the epoch's inputs, targets and row positions.
    key: the epoch's random key.
    plan: the epoch's static plan and its layout over the devices.

  Returns:
    (the new state, (mean loss, accuracy, rows still needed by later blocks that did not fit in a stage's
    buffer — 0 at full capacity)).
  """
  order, step_key = _draw(key, arrays, plan.epoch)
  return _pipelined_steps(state, arrays, order, step_key, plan=plan)


def _compact(carry: Carried, mask, capacity: int):
  """The rows still not learned first (stable), the first `capacity` kept: (carry, mask, rows still
  needed that did not fit)."""
  keep = jnp.argsort(1.0 - carry.still, stable=True)[:capacity]
  kept = jax.tree.map(lambda a: a[keep], carry)
  return kept, mask[keep], jnp.sum(carry.still) - jnp.sum(kept.still)


@functools.partial(jax.jit, static_argnames=("plan",), donate_argnames=("state",))
def _pipelined_steps(state: TrainState, arrays: EpochArrays, order, step_key, *, plan: PipelinePlan):
  epoch = plan.epoch
  loss, optimizer, batch = epoch.statics.loss, epoch.statics.optimizer, epoch.batch_size
  model, num_stages, capacity = loss.model, len(plan.stages), plan.capacity
  shapes = [tuple(model.input_shape), *model.feature_shapes()]
  y_shape = arrays.targets.shape[1:]
  num_steps = (arrays.num_samples + batch - 1) // batch

  def stage(k):
    start, stop = plan.stages[k]
    stop = min(stop, loss.depth)  # blocks past the deepest one still training do not run
    last = start < loss.depth <= plan.stages[k][1]  # the stage whose last block answers for every row left

    def run(state, buffer, b, key):
      if k == 0:  # the first stage draws the batch itself
        rows = arrays.positions[jax.lax.dynamic_slice(order, (b * batch,), (batch,))]
        mask = ((b * batch + jnp.arange(batch)) < arrays.num_samples).astype(jnp.float32)
        x = augment_inputs(loss.augment, arrays.inputs[rows], key, True)
        carry = Carried(x, arrays.targets[rows], mask, jnp.zeros((batch,), bool), jnp.zeros((batch,), jnp.float32))
      else:
        flat, y, still, decided, answer, mask = buffer
        x = flat[:, : math.prod(shapes[start])].reshape(capacity, *shapes[start])
        carry = Carried(x, y, still, decided, answer)

      # the trainer's step on the stage's blocks (the pipeline's own mesh is outside: none here)
      statics = Statics(StageLoss(loss, start, stop), optimizer, None, epoch.statics.conv)
      new, metrics = train_step(state, Batch(carry, carry.y, mask), key, statics=statics)
      total, out = metrics["total"], metrics["out"]
      loss_sum = total * jnp.sum(mask)  # the one-device step's masked sum of per-sample totals
      correct_sum = jnp.sum(out.answer * mask) if last else jnp.zeros(())
      out, mask, dropped = _compact(out, mask, capacity)
      dropped = dropped if k < num_stages - 1 and stop < loss.depth else jnp.zeros(())
      flat = out.x.reshape(capacity, -1)
      flat = jnp.pad(flat, ((0, 0), (0, plan.feature_size - flat.shape[1])))
      return new, (flat, out.y, out.still, out.decided, out.answer, mask), jnp.stack([loss_sum, correct_sum, dropped])

    return run

  def per_device(state, arrays, order, step_key):
    s = jax.lax.axis_index(AXIS)
    empty = (
      jnp.zeros((capacity, plan.feature_size), jnp.float32),
      jnp.zeros((capacity, *y_shape), arrays.targets.dtype),
      jnp.zeros((capacity,), jnp.float32),
      jnp.zeros((capacity,), bool),
      jnp.zeros((capacity,), jnp.float32),
      jnp.zeros((capacity,), jnp.float32),
    )

    def tick(t, carry):
      state, buffer, sums = carry
      b = t - s
      valid = (b >= 0) & (b < num_steps)
      b = jnp.clip(b, 0, jnp.maximum(num_steps - 1, 0))
      branches = [stage(k) for k in range(num_stages)]
      new, out, metrics = jax.lax.switch(s, branches, state, buffer, b, jax.random.fold_in(step_key, b))
      state = jax.tree.map(lambda n, o: jnp.where(valid, n, o), new, state)
      sums = sums + jnp.where(valid, metrics, 0.0)
      sent = jax.lax.ppermute(out, AXIS, [(i, i + 1) for i in range(num_stages - 1)])
      return state, sent, sums

    state, _, sums = jax.lax.fori_loop(0, num_steps + num_stages - 1, tick, (state, empty, jnp.zeros((3,))))
    owner = jnp.asarray(
      [next(k for k, (a, z) in enumerate(plan.stages) if a <= j < z) for j in range(model.num_blocks)]
    )

    def gathered(trees):  # block j's arrays from the stage that owns it (zeros elsewhere: an exact sum)
      return [from_owner(tree, j) for j, tree in enumerate(trees)]

    def from_owner(tree, j):
      return jax.tree.map(lambda a: jax.lax.psum(jnp.where(owner[j] == s, a, jnp.zeros_like(a)), AXIS), tree)

    # each block's optimizer state (its moments, counts and learning rate) from its owner too
    inner = {
      name: from_owner(part, int(name.split("_")[1]) if name.startswith("block_") else 0)
      for name, part in state.opt_state.inner_states.items()
    }
    state = state.replace(
      params=gathered(state.params),
      model_state=gathered(state.model_state),
      opt_state=state.opt_state._replace(inner_states=inner),
    )
    return state, jax.lax.psum(sums, AXIS)

  state, sums = jax.shard_map(
    per_device, mesh=plan.mesh, in_specs=(P(), P(), P(), P()), out_specs=(P(), P()), check_vma=False
  )(state, arrays, order, step_key)
  return state, (sums[0] / arrays.num_samples, sums[1] / arrays.num_samples, sums[2])

"""A wall-clock model of decoupled QuickNet training pipelined over K devices, against data-parallel
end-to-end training on the same K devices.

The model is built from step times measured on one device (`measure_steps`) and the epochs a run
actually took (its per-epoch record of which blocks still trained):

- **Pipelined decoupled** (`pipelined_seconds`, the schedule `pipeline.pipelined_epoch` runs): the blocks
  are cut into K contiguous stages (`pipeline.block_stages`). In every tick each stage runs one batch
  through its blocks (a training step for a block still training, a forward pass for a frozen one) and
  sends what the next stage needs over the link; a tick lasts as long as the slowest stage plus its
  transfer. An epoch of T batches takes T + K − 1 ticks (the pipeline fills and drains once: K − 1 ticks
  of bubble). Validation runs every block forward over the validation split, spread over the K devices.
- **Data-parallel end-to-end** (`data_parallel_seconds`): each device takes B/K rows of every batch
  (a step at that per-device batch, measured, so the lower arithmetic intensity of small batches is in
  it), then the gradients are all-reduced (a ring: 2(K − 1)/K of the parameters' bytes over the link,
  2(K − 1) latencies). Validation is spread over the K devices.

What the model leaves out: host work between epochs (the same for both), compile time, and the
overlap of transfers with compute (a tick waits for both, an upper bound). With `--pipeline_capacity`
below 1 the stages after the first run on fewer rows; the model scales their step times linearly.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from quicknets_jax.algorithms.decoupled import DecoupledLoss
from quicknets_jax.algorithms.pipeline import Carried, StageLoss, block_stages
from quicknets_jax.models.base import EXIT, SUBNET, MultiExitModel, split_blocks
from quicknets_jax.training.losses import EndToEndLoss
from quicknets_jax.training.optimizer import Adam
from quicknets_jax.training.step import Batch, Statics, TrainState, train_step


@dataclasses.dataclass(frozen=True)
class Interconnect:
  """The link between devices.

  Attributes:
    bytes_per_second: the bandwidth of one device-to-device link.
    latency_seconds: the fixed cost of one transfer.
  """

  bytes_per_second: float = 10e9
  latency_seconds: float = 20e-6

  def transfer_seconds(self, num_bytes: float) -> float:
    """Seconds to send `num_bytes` over one link.

    Args:
      num_bytes: the message size.

    Returns:
      latency + size / bandwidth.
    """
    return self.latency_seconds + num_bytes / self.bytes_per_second

  def all_reduce_seconds(self, num_bytes: float, num_devices: int) -> float:
    """Seconds of a ring all-reduce of `num_bytes` over `num_devices` devices (0 on one device).

    Args:
      num_bytes: the size of the reduced array (every device holds all of it).
      num_devices: the devices in the ring.

    Returns:
      2(K − 1) latencies + 2(K − 1)/K of the bytes over the link.
    """
    k = num_devices
    if k <= 1:
      return 0.0
    return 2 * (k - 1) * self.latency_seconds + 2 * (k - 1) / k * num_bytes / self.bytes_per_second


@dataclasses.dataclass(frozen=True)
class MeasuredSteps:
  """Step times of one model measured on one device (seconds; median of the timed repeats).

  Attributes:
    batch_size: the rows of a training batch (B).
    block_train: per block, one decoupled training step of that block alone on B rows (its exit's and its
      commitment head's losses, backward, the optimizer update).
    block_forward: per block, its forward pass (features, exit, commitment head) on B rows.
    end_to_end_train: per-device batch (rows) -> one end-to-end training step at that batch.
    end_to_end_forward: the end-to-end network's forward pass on B rows.
    feature_bytes: per block, the float32 bytes per sample of what it passes on (its features plus the
      row's label, mask and answer, 12 bytes).
    param_bytes: the end-to-end network's float32 parameter bytes (what data parallelism all-reduces).
    device: what the steps were measured on.
  """

  batch_size: int
  block_train: tuple[float, ...]
  block_forward: tuple[float, ...]
  end_to_end_train: dict
  end_to_end_forward: float
  feature_bytes: tuple[int, ...]
  param_bytes: int
  device: str

  def to_json(self) -> dict:
    """The measurement as a JSON-ready dict (per-device batches as string keys)."""
    out = dataclasses.asdict(self)
    out["end_to_end_train"] = {str(k): v for k, v in self.end_to_end_train.items()}
    return out

  @classmethod
  def from_json(cls, data: dict) -> MeasuredSteps:
    """The inverse of `to_json`.

    Args:
      data: what `to_json` wrote.

    Returns:
      The measurement.
    """
    data = dict(data)
    data["end_to_end_train"] = {int(k): v for k, v in data["end_to_end_train"].items()}
    for key in ("block_train", "block_forward", "feature_bytes"):
      data[key] = tuple(data[key])
    return cls(**data)


def _median_seconds(fn, args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # compile and warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _block_fns(model: MultiExitModel, j: int):
  """(train step, forward) of block j alone, jitted: the decoupled loss of that one block.

  The train step is the trainer's (`step.train_step`, Adam), called as `train(state, batch, key)` on a
  `TrainState` whose params and model state hold block j's only (`_only`) and a batch whose `x` is
  `_carried`; the forward pass as `forward(params, model_state, x, y)` with block j's own.
  """
  num_blocks = model.num_blocks
  loss = DecoupledLoss(model, num_blocks, (False,) * num_blocks, 0.9, 0.0)
  frozen = DecoupledLoss(model, num_blocks, (True,) * num_blocks, 0.9, 0.0)
  statics = Statics(StageLoss(loss, j, j + 1), Adam())

  @jax.jit
  def forward_pass(params, state, x, y):
    only = functools.partial(_only, j=j, num_blocks=num_blocks)
    _, out, _ = frozen.blocks_pass(only(params), only(state), _carried(x, y), range(j, j + 1), False)
    return out.x, out.still

  return jax.jit(functools.partial(train_step, statics=statics)), forward_pass


def _only(value, j: int, num_blocks: int) -> list:
  """A per-block list holding `value` at block j and None elsewhere."""
  return [value if k == j else None for k in range(num_blocks)]


def _carried(x, y) -> Carried:
  """What enters a block when every row is still to learn and none has been answered for."""
  rows = y.shape[0]
  return Carried(x, y, jnp.ones((rows,), jnp.float32), jnp.zeros((rows,), bool), jnp.zeros((rows,), jnp.float32))


def _batch(x, y) -> Batch:
  """A batch of `x` (an array, or a `Carried`), `y` whose rows are all real."""
  return Batch(x, y, jnp.ones((y.shape[0],), jnp.float32))


def measure_steps(
  model: MultiExitModel,
  batch_size: int,
  per_device_batches: Sequence[int],
  *,
  seed: int = 0,
  repeats: int = 10,
) -> MeasuredSteps:
  """Times the steps the model needs (see `MeasuredSteps`) on the default device.

  The inputs are random numbers of the right shapes: only the time is measured, nothing is learned.

  Args:
    model: the multi-exit model.
    batch_size: the training batch (B).
    per_device_batches: the per-device batches to time the end-to-end step at (e.g. B/K for each K).
    seed: of the initial parameters and the random inputs.
    repeats: timed calls per step (after one warm-up call); the median is kept.

  Returns:
    The measured step times.
  """
  key = jax.random.PRNGKey(seed)
  variables = model.init(key)
  params, states = split_blocks(variables)
  shapes = [tuple(model.input_shape), *model.feature_shapes()]
  labels = jax.random.randint(key, (batch_size,), 0, model.num_classes)
  block_train, block_forward = [], []
  for j in range(model.num_blocks):
    x = jax.random.normal(jax.random.fold_in(key, j), (batch_size, *shapes[j]), jnp.float32)
    train_block, forward_pass = _block_fns(model, j)
    only = functools.partial(_only, j=j, num_blocks=model.num_blocks)
    block_state = TrainState.create(Adam(), only(params[j]), only(states[j]), 1e-3)
    block_batch = _batch(_carried(x, labels), labels)
    block_train.append(_median_seconds(train_block, (block_state, block_batch, key), repeats))
    block_forward.append(_median_seconds(forward_pass, (params[j], states[j], x, labels), repeats))
  loss = EndToEndLoss(model)
  end_to_end_step = jax.jit(functools.partial(train_step, statics=Statics(loss, Adam())))

  @jax.jit
  def end_to_end_forward(params, states, x, y):
    return loss(params, _batch(x, y), None, model_state=states)[1].per_sample

  e2e_state = TrainState.create(Adam(), params, states, 1e-3)
  end_to_end_train = {}
  for rows in sorted(set(int(b) for b in per_device_batches)):
    x = jax.random.normal(key, (rows, *shapes[0]), jnp.float32)
    y = labels[:rows] if rows <= batch_size else jnp.zeros((rows,), jnp.int32)
    end_to_end_train[rows] = _median_seconds(end_to_end_step, (e2e_state, _batch(x, y), key), repeats)
  x = jax.random.normal(key, (batch_size, *shapes[0]), jnp.float32)
  forward_seconds = _median_seconds(end_to_end_forward, (params, states, x, labels), repeats)
  feature_bytes = tuple(4 * math.prod(shape) + 12 for shape in shapes[1:])
  # the end-to-end network: every block's subnet and the last exit (no intermediate exits or heads)
  e2e_params = [p.get(SUBNET, {}) for p in params] + [params[-1].get(EXIT, {})]
  param_bytes = 4 * sum(int(np.prod(a.shape)) for a in jax.tree.leaves(e2e_params))
  return MeasuredSteps(
    batch_size=batch_size,
    block_train=tuple(block_train),
    block_forward=tuple(block_forward),
    end_to_end_train=end_to_end_train,
    end_to_end_forward=forward_seconds,
    feature_bytes=feature_bytes,
    param_bytes=int(param_bytes),
    device=f"{jax.devices()[0].device_kind} ({jax.default_backend()})",
  )


def pipelined_seconds(
  steps: MeasuredSteps,
  epochs_active: Sequence[Sequence[bool]],
  num_train: int,
  num_val: int,
  num_devices: int,
  link: Interconnect = Interconnect(),
  capacity: float = 1.0,
) -> dict:
  """Modelled wall-clock of a decoupled run pipelined over `num_devices` stages (see the module doc).

  Args:
    steps: the step times measured on one device.
    epochs_active: per epoch of the run, per block, whether it still trained (`record["active"]`).
    num_train: the training split's rows (T = ⌈num_train / B⌉ batches an epoch).
    num_val: the validation split's rows.
    num_devices: K, one stage per device (at most one per block).
    link: the device-to-device link.
    capacity: the fraction of a batch each stage sends on (`--pipeline_capacity`): stages after the first
      run on that many rows, their step times scaled in proportion.

  Returns:
    A dict: `seconds` (the whole run), `tick_seconds` (per epoch), `slowest_stage` (per epoch),
    `bubble_seconds` (the K − 1 ticks of fill and drain, summed), `transfer_seconds` (in the ticks,
    summed) and `stages` (the blocks of each stage).
  """
  num_blocks = len(steps.block_train)
  stages = block_stages(num_blocks, min(num_devices, num_blocks))
  k = len(stages)
  batches = math.ceil(num_train / steps.batch_size)
  val_seconds = math.ceil(num_val / steps.batch_size) * sum(steps.block_forward) / num_devices
  total, bubbles, transfers, ticks, slowest = 0.0, 0.0, 0.0, [], []
  for active in epochs_active:
    stage_seconds = []
    for s, (start, stop) in enumerate(stages):
      compute = sum(steps.block_train[j] if active[j] else steps.block_forward[j] for j in range(start, stop))
      compute *= 1.0 if s == 0 else capacity
      rows = capacity * steps.batch_size
      send = link.transfer_seconds(rows * steps.feature_bytes[stop - 1]) if s < k - 1 else 0.0
      stage_seconds.append(compute + send)
      transfers += send * batches if s < k - 1 else 0.0
    tick = max(stage_seconds)
    ticks.append(tick)
    slowest.append(int(np.argmax(stage_seconds)))
    total += (batches + k - 1) * tick + val_seconds
    bubbles += (k - 1) * tick
  return dict(
    seconds=total,
    tick_seconds=ticks,
    slowest_stage=slowest,
    bubble_seconds=bubbles,
    transfer_seconds=transfers,
    stages=[list(s) for s in stages],
  )


def data_parallel_seconds(
  steps: MeasuredSteps,
  epochs: float,
  num_train: int,
  num_val: int,
  num_devices: int,
  link: Interconnect = Interconnect(),
) -> dict:
  """Modelled wall-clock of end-to-end training data-parallel over `num_devices` devices.

  Args:
    steps: the step times measured on one device; `end_to_end_train` must hold the per-device batch
      ⌈B / K⌉.
    epochs: the epochs the end-to-end run took.
    num_train: the training split's rows.
    num_val: the validation split's rows.
    num_devices: K.
    link: the device-to-device link.

  Returns:
    A dict: `seconds` (the whole run), `step_seconds`, `all_reduce_seconds` (per step).

  Raises:
    KeyError: the per-device batch was not measured.
  """
  rows = math.ceil(steps.batch_size / num_devices)
  if rows not in steps.end_to_end_train:
    raise KeyError(f"no end-to-end step measured at a per-device batch of {rows}: measure it (per_device_batches)")
  reduce = link.all_reduce_seconds(steps.param_bytes, num_devices)
  step = steps.end_to_end_train[rows] + reduce
  batches = math.ceil(num_train / steps.batch_size)
  val_seconds = math.ceil(num_val / steps.batch_size) * steps.end_to_end_forward / num_devices
  return dict(seconds=epochs * (batches * step + val_seconds), step_seconds=step, all_reduce_seconds=reduce)


def per_device_batches(batch_size: int, max_devices: int) -> list:
  """The per-device batches ⌈B / K⌉ of K = 1..max_devices (what `measure_steps` should time).

  Args:
    batch_size: B.
    max_devices: the largest K.

  Returns:
    The distinct per-device batches, largest first.
  """
  return sorted({math.ceil(batch_size / k) for k in range(1, max_devices + 1)}, reverse=True)

"""The one trainer: QuickNet blocks, commitment heads, end-to-end baselines and SDN joint training.

They differ only in the `Objective` — a per-sample loss over a param tree plus a mask of which leaves
train — never in the loop. An epoch runs inside one jit: the batch order is drawn on device from the
working set's index array (shuffled, or class-balanced as design.md §1 asks), the last partial batch
is padded and masked, and `lax.fori_loop` runs the steps. Around it, on the host, sit Appendix A's
schedule (`schedule.py`: Adam, reduce-on-plateau ×0.5 with patience 1, early stopping after 3 epochs
without a new validation minimum, at most 100 epochs, best-validation params kept) and a NaN guard.

Every random choice comes from `fold_in(key, epoch)` and then the step number, so a fit resumed from
its `FitState` ends exactly where an uninterrupted one would; `fit(..., checkpoint=...)` does the
resuming and saves the state after every epoch.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from quicknets_jax.data.sampling import draw_epoch_padded
from quicknets_jax.data.streaming import is_streamed
from quicknets_jax.models import layers
from quicknets_jax.training import parallel
from quicknets_jax.training.checkpoint import FitCheckpointer
from quicknets_jax.training.compilation import CompileMeter
from quicknets_jax.training.schedule import FitConfig, FitState, end_epoch, monitored_score

PyTree = Any
# loss_fn(params, model_state, inputs, targets, rng, train) -> (per-sample loss [B],
#                                                              per-sample correct [B], new model_state)
LossFn = Callable[..., tuple[jnp.ndarray, jnp.ndarray, PyTree]]


@dataclasses.dataclass(frozen=True)
class Objective:
  """What to optimise: a per-sample loss and a bool mask (same tree as params) of the leaves that train.

  `eq=False` keeps identity hashing, so a jitted epoch is cached per objective object.
  """

  loss_fn: LossFn
  trainable: PyTree = None  # None: every leaf trains
  # Optional: epoch number (1-based, the epoch about to run) -> pytree of arrays handed to loss_fn as
  # the keyword `hparams` during training, traced so a changing value never recompiles (SDN's loss
  # weights grow per epoch). Validation calls loss_fn without it. None: loss_fn is called as before.
  epoch_hparams: Optional[Callable[[int], PyTree]] = None
  # Optional: arrays handed to loss_fn as the keyword `loss_args` in training and validation (e.g.
  # class weights), traced so that fits differing only in them share one compiled epoch.
  loss_args: PyTree = None

  __hash__ = object.__hash__
  __eq__ = object.__eq__


class FitData(NamedTuple):
  """Arrays a fit reads. Batches are gathered on device as `inputs[positions[order]]`.

  Attributes:
    inputs, targets: the in-memory training arrays (images or cached features) and their targets;
      `inputs` (and `val_inputs`) may be `streaming.StreamedImages` views instead (`--input=stream`),
      which the epoch and the validation pass read batch by batch.
    positions: int32 [n] the working set — rows of `inputs` that train.
    sample_classes: int32 [n] the class of each working-set row, for class-balanced sampling.
    val_inputs, val_targets: the validation arrays (every row is used).
  """

  inputs: jnp.ndarray
  targets: jnp.ndarray
  positions: jnp.ndarray
  sample_classes: jnp.ndarray
  val_inputs: jnp.ndarray
  val_targets: jnp.ndarray
  num_val: Optional[int] = None  # validation rows that exist when val arrays are padded (None: all)
  # Samples an epoch draws from the working set (None: its size). More than its size needs
  # class-balanced sampling, which draws with replacement (the authors' full-size epochs).
  epoch_draws: Optional[int] = None


class NonFiniteLossError(FloatingPointError, ValueError):
  """A fit met a NaN/inf loss; also a ValueError, so entry points print it as their one-line error."""


def make_optimizer(trainable: PyTree, params: PyTree, weight_decay: float = 0.0) -> optax.GradientTransformation:
  """Adam on the trainable leaves, nothing on the rest (big_vision's frozen-by-mask).

  `weight_decay` is PyTorch Adam's: wd·param added to the gradient before the moments (L2, not AdamW's
  decoupled decay). The learning rate is applied outside, as a traced scalar, so reduce-on-plateau
  never recompiles.
  """
  adam = optax.scale_by_adam()
  if weight_decay:
    adam = optax.chain(optax.add_decayed_weights(weight_decay), adam)
  if trainable is None:
    return adam
  labels = jax.tree.map(lambda t: "train" if t else "freeze", trainable)
  jax.tree.map(lambda _, __: None, params, labels)  # fails early on a mask that does not fit
  return optax.multi_transform({"train": adam, "freeze": optax.set_to_zero()}, labels)


def bucket_size(n: int, minimum: int = 256) -> int:
  """The padded length a working set of n rows is compiled for: the next power of two (≥ minimum).

  Every size in (bucket/2, bucket] shares one compiled epoch: blocks of the same shape, the
  commitment heads of every block, and every seed reuse it instead of compiling their own.
  """
  return max(minimum, 1 << max(0, n - 1).bit_length())


def pad_rows(array, rows: int, value=0):
  """`array` with its first axis padded to `rows` (never truncated)."""
  array = np.asarray(array)  # padded on the host: an eager jnp concat compiles for every new length
  missing = rows - array.shape[0]
  if missing > 0:
    array = np.concatenate([array, np.full((missing, *array.shape[1:]), value, array.dtype)])
  return jnp.asarray(array)


def make_epoch_fn(
  objective: Objective,
  tx: optax.GradientTransformation,
  batch_size: int,
  num_classes: int,
  balanced: bool,
  mesh=None,
  host_loop: bool = False,
  streamed: bool = False,
):
  """One epoch of training steps: (params, opt_state, state, lr, inputs, targets, positions [bucket],
  sample_classes [bucket], num_samples, key[, hparams][, loss_args][, num_valid]) -> (params,
  opt_state, state, mean loss, accuracy). The working set is padded to a bucket and its true size
  `num_valid` is traced, so the step count is a loop bound, not a shape; the epoch draws `num_samples`
  of its rows (default: `num_valid`, i.e. every row once or, balanced, as many draws as rows).

  By default the whole epoch is one jitted XLA call (`fori_loop` over the steps). `host_loop=True`
  runs the same jitted step from a Python loop instead (one dispatch per step, same random streams):
  XLA:CPU runs convolutions inside a while loop ~40× slower than at top level (a VGG block's step:
  2.6 s vs 64 ms), so convolutional models on CPU take this path (see `fit`).

  `streamed=True`: `inputs` is a `streaming.StreamedImages` view; the order is drawn as above, and the
  images of each step's rows are read through its Grain pipeline and handed to the same jitted update
  (`_streamed_epoch_fn`), so the epoch trains on what the in-memory one would.
  """
  with_hparams = objective.epoch_hparams is not None
  with_args = objective.loss_args is not None

  def draw(key, sample_classes, num_valid):
    draw_key, step_key = jax.random.split(key)
    order = draw_epoch_padded(draw_key, sample_classes, num_valid, num_classes, balanced)
    return jnp.concatenate([order, jnp.zeros((batch_size,), order.dtype)]), step_key  # room for the last batch

  def update(step_index, carry, x, y, batch_mask, step_key, learning_rate, hparams, loss_args):
    kwargs = {}
    if with_hparams:
      kwargs["hparams"] = hparams
    if with_args:
      kwargs["loss_args"] = loss_args
    params, opt_state, model_state, loss_sum, correct_sum = carry
    if mesh is not None:  # data parallel: each device takes its rows of the batch (parallel.py)
      x, y, batch_mask = parallel.shard_batch((x, y, batch_mask), mesh)
    rng = jax.random.fold_in(step_key, step_index)

    def mean_loss(p):
      losses, correct, new_state = objective.loss_fn(p, model_state, x, y, rng, True, **kwargs)
      return jnp.sum(losses * batch_mask) / jnp.maximum(jnp.sum(batch_mask), 1.0), (losses, correct, new_state)

    (_, (losses, correct, new_state)), grads = jax.value_and_grad(mean_loss, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, jax.tree.map(lambda u: -learning_rate * u, updates))
    return (
      params,
      opt_state,
      new_state,
      loss_sum + jnp.sum(losses * batch_mask),
      correct_sum + jnp.sum(correct * batch_mask),
    )

  def mask_of(step_index, num_samples):
    return ((step_index * batch_size + jnp.arange(batch_size)) < num_samples).astype(jnp.float32)

  def step(
    step_index, carry, order, step_key, learning_rate, inputs, targets, positions, num_samples, hparams, loss_args
  ):
    batch_order = jax.lax.dynamic_slice(order, (step_index * batch_size,), (batch_size,))
    rows = positions[batch_order]
    x, y = inputs[rows], targets[rows]
    return update(
      step_index, carry, x, y, mask_of(step_index, num_samples), step_key, learning_rate, hparams, loss_args
    )

  if streamed:
    return _streamed_epoch_fn(draw, update, mask_of, batch_size, mesh)

  if not host_loop:

    def epoch_fn(
      params,
      opt_state,
      model_state,
      learning_rate,
      inputs,
      targets,
      positions,
      sample_classes,
      num_samples,
      key,
      hparams=None,
      loss_args=None,
      num_valid=None,
    ):
      order, step_key = draw(key, sample_classes, num_samples if num_valid is None else num_valid)
      num_steps = (num_samples + batch_size - 1) // batch_size
      zero = jnp.zeros((), jnp.float32)
      params, opt_state, model_state, loss_sum, correct_sum = jax.lax.fori_loop(
        0,
        num_steps,
        lambda i, carry: step(
          i, carry, order, step_key, learning_rate, inputs, targets, positions, num_samples, hparams, loss_args
        ),
        (params, opt_state, model_state, zero, zero),
      )
      return params, opt_state, model_state, loss_sum / num_samples, correct_sum / num_samples

    # params, optimizer state and model state are donated: XLA writes the new ones into their buffers.
    return jax.jit(epoch_fn, donate_argnums=(0, 1, 2))

  jit_draw = jax.jit(draw)
  jit_step = jax.jit(step, donate_argnums=(1,))  # the carry: params, optimizer and model state, sums

  def host_epoch_fn(
    params,
    opt_state,
    model_state,
    learning_rate,
    inputs,
    targets,
    positions,
    sample_classes,
    num_samples,
    key,
    hparams=None,
    loss_args=None,
    num_valid=None,
  ):
    order, step_key = jit_draw(key, sample_classes, num_samples if num_valid is None else num_valid)
    zero = jnp.zeros((), jnp.float32)
    carry = (params, opt_state, model_state, zero, jnp.zeros((), jnp.float32))
    for i in range(-(-int(num_samples) // batch_size)):
      carry = jit_step(
        jnp.int32(i), carry, order, step_key, learning_rate, inputs, targets, positions, num_samples, hparams, loss_args
      )
    params, opt_state, model_state, loss_sum, correct_sum = carry
    return params, opt_state, model_state, loss_sum / num_samples, correct_sum / num_samples

  return host_epoch_fn


def _streamed_epoch_fn(draw, update, mask_of, batch_size: int, mesh):
  """The streamed epoch (see `make_epoch_fn`): the in-memory epoch's draw and update, images read from disk.

  The rows of step i are `positions[order[i·B : (i+1)·B]]`, padding included, exactly the rows the
  in-memory epoch gathers; a multi-process run reads only the part of each batch its own devices take
  (`parallel.local_batch_rows`) and assembles the global batch from every process's part.
  """
  jit_draw = jax.jit(draw)

  def streamed_update(step_index, carry, x, rows, targets, num_samples, step_key, learning_rate, hparams, loss_args):
    mask = mask_of(step_index, num_samples)
    carry = update(step_index, carry, x, targets[rows], mask, step_key, learning_rate, hparams, loss_args)
    return carry, step_index + 1  # the second output (not donated) tells when the step has run

  jit_update = jax.jit(streamed_update, donate_argnums=(1,))

  def epoch_fn(
    params,
    opt_state,
    model_state,
    learning_rate,
    inputs,
    targets,
    positions,
    sample_classes,
    num_samples,
    key,
    hparams=None,
    loss_args=None,
    num_valid=None,
  ):
    order, step_key = jit_draw(key, sample_classes, num_samples if num_valid is None else num_valid)
    order, host_positions = np.asarray(order), np.asarray(positions)
    num_steps = -(-int(num_samples) // batch_size)
    batch_rows = [host_positions[order[i * batch_size : (i + 1) * batch_size]] for i in range(num_steps)]
    local = [parallel.local_batch_rows(rows, mesh) for rows in batch_rows]
    put = (lambda x: jnp.asarray(x)) if mesh is None else (lambda x: parallel.global_batch(x, batch_size, mesh))
    zero = jnp.zeros((), jnp.float32)
    carry = (params, opt_state, model_state, zero, jnp.zeros((), jnp.float32))
    running = []  # steps dispatched but maybe not run: each holds its batch, so at most 2 are let wait
    for i, x in enumerate(inputs.stream(local, put)):
      if len(running) == 2:
        running.pop(0).block_until_ready()
      carry, done = jit_update(
        jnp.int32(i),
        carry,
        x,
        jnp.asarray(batch_rows[i]),
        targets,
        num_samples,
        step_key,
        learning_rate,
        hparams,
        loss_args,
      )
      running.append(done)
    params, opt_state, model_state, loss_sum, correct_sum = carry
    return params, opt_state, model_state, loss_sum / num_samples, correct_sum / num_samples

  return epoch_fn


def loop_conv_implementation(backend: Optional[str] = None) -> str:
  """How convolutions inside the trainer's loops convolve on `backend` (default: jax's): as patch products
  on CPU, where XLA's own convolution runs far slower inside loops (`models.layers`); XLA's (cuDNN's,
  the TPU's) everywhere else."""
  return "patches" if (backend or jax.default_backend()) == "cpu" else "native"


def loop_convolutions():
  """The context the trainer traces its epochs and validation passes in (`loop_conv_implementation`).
  Benchmarks that call `make_epoch_fn` directly use it too, to time what `fit` runs."""
  return layers.conv_implementation(loop_conv_implementation())


def steps_from_host(backend: str, convolves: bool) -> bool:
  """Whether `fit` runs an epoch's steps from a Python loop (`make_epoch_fn(host_loop=True)`) on
  `backend`: only for models that convolve, only on CPU, where XLA runs convolutions inside a while loop
  ~40× slower. On GPU and TPU every epoch is one jitted call over data already on the device: no host
  round trip per step."""
  return backend == "cpu" and convolves


def _private_copy(tree):
  """Fresh device buffers holding `tree` (a donated epoch consumes its inputs; callers keep theirs)."""
  # onto the array's own sharding: a multi-process run's arrays span devices of other processes
  return jax.tree.map(
    lambda x: jax.device_put(x, x.sharding if isinstance(x, jax.Array) else None, may_alias=False), tree
  )


def make_eval_fn(
  loss_fn: LossFn,
  eval_batch_size: int,
  with_args: bool = False,
  mesh=None,
  host_loop: bool = False,
  streamed: bool = False,
):
  """(params, state, inputs [rows], targets, n[, loss_args]) -> (mean loss, accuracy) over the first n
  rows, in fixed-size masked chunks, so padded inputs of any n up to `rows` share one compile. The
  chunks are a `lax.scan` inside one jit, or (`host_loop`, see `make_epoch_fn`) a Python loop.
  `streamed`: `inputs` is a `streaming.StreamedImages` view (unpadded), read chunk by chunk; its sums
  are reduced as the scan reduces those of the same rows padded to their bucket."""

  def sums(params, model_state, x, y, m, loss_args):
    kwargs = {"loss_args": loss_args} if with_args else {}
    if mesh is not None:
      x, y, m = parallel.shard_batch((x, y, m), mesh)
    losses, correct, _ = loss_fn(params, model_state, x, y, None, False, **kwargs)
    return jnp.sum(jnp.where(m, losses, 0.0)), jnp.sum(jnp.where(m, correct, 0.0))

  def chunk_sums(params, model_state, inputs, targets, r, m, loss_args):
    return sums(params, model_state, inputs[r], targets[r], m, loss_args)

  def chunks_of(size, num_rows, xp):
    chunks = max(1, -(-size // eval_batch_size))
    padded = chunks * eval_batch_size
    rows = xp.minimum(xp.arange(padded), size - 1).reshape(chunks, eval_batch_size)
    return rows, (xp.arange(padded) < num_rows).reshape(chunks, eval_batch_size)

  if streamed:
    jit_sums = jax.jit(lambda p, s, x, targets, r, m, a: sums(p, s, x, targets[r], m, a))
    jit_total = jax.jit(lambda loss_sums, correct_sums, n: (jnp.sum(loss_sums) / n, jnp.sum(correct_sums) / n))

    def streamed_eval_fn(params, model_state, inputs, targets, num_rows, loss_args=None):
      n = int(num_rows)
      rows, mask = chunks_of(bucket_size(len(inputs)), n, np)
      live = [k for k in range(len(rows)) if mask[k].any()]  # chunks past n add exact zeros: not read
      read = [np.minimum(rows[k], n - 1) for k in live]
      put = jnp.asarray if mesh is None else (lambda x: parallel.replicate(x, mesh))
      loss_sums = np.zeros(len(rows), np.float32)
      correct_sums = np.zeros(len(rows), np.float32)
      for k, r, x in zip(live, read, inputs.stream(read, put)):
        loss_sums[k], correct_sums[k] = jit_sums(params, model_state, x, targets, jnp.asarray(r), mask[k], loss_args)
      return jit_total(loss_sums, correct_sums, jnp.int32(n))

    return streamed_eval_fn

  if not host_loop:

    def eval_fn(params, model_state, inputs, targets, num_rows, loss_args=None):
      rows, mask = chunks_of(inputs.shape[0], num_rows, jnp)
      _, (loss_sums, correct_sums) = jax.lax.scan(
        lambda carry, xs: (carry, chunk_sums(params, model_state, inputs, targets, *xs, loss_args)), None, (rows, mask)
      )
      return jnp.sum(loss_sums) / num_rows, jnp.sum(correct_sums) / num_rows

    return jax.jit(eval_fn)

  jit_chunk = jax.jit(chunk_sums)

  def host_eval_fn(params, model_state, inputs, targets, num_rows, loss_args=None):
    rows, mask = chunks_of(inputs.shape[0], int(num_rows), np)
    sums = [jit_chunk(params, model_state, inputs, targets, r, m, loss_args) for r, m in zip(rows, mask)]
    return (sum(float(l) for l, _ in sums) / int(num_rows), sum(float(c) for _, c in sums) / int(num_rows))

  return host_eval_fn


def uses_convolution(loss_fn: LossFn, params, model_state, x, y, **kwargs) -> bool:
  """Whether `loss_fn` convolves (traced once on one sample; nothing runs)."""
  jaxpr = jax.make_jaxpr(lambda p: loss_fn(p, model_state, x[:1], y[:1], None, False, **kwargs))(params)
  return "conv_general_dilated" in str(jaxpr)


# Jitted epoch/eval functions, reused by every fit with the same loss, mask and sizes (e.g. block 0 and
# the end-to-end network of every seed), so XLA compiles them once per process, not once per fit.
_COMPILED: dict = {}


def _compiled_fns(
  objective: Objective,
  tx,
  params,
  batch_size: int,
  num_classes: int,
  balanced: bool,
  eval_batch_size: int,
  mesh=None,
  host_loop: bool = False,
  weight_decay: float = 0.0,
  streamed: tuple = (False, False),
):
  mask = objective.trainable
  mask_key = None if mask is None else (jax.tree.structure(mask), tuple(jax.tree.leaves(mask)))
  key = (
    objective.loss_fn,
    mask_key,
    objective.epoch_hparams is not None,
    objective.loss_args is not None,
    batch_size,
    num_classes,
    balanced,
    eval_batch_size,
    mesh,
    host_loop,
    weight_decay,
    streamed,
  )
  try:
    hash(key)
  except TypeError:  # an unhashable loss (a lambda over arrays): compile for this fit only
    key = None
  if key is None or key not in _COMPILED:
    fns = (
      make_epoch_fn(
        objective, tx, batch_size, num_classes, balanced, mesh=mesh, host_loop=host_loop, streamed=streamed[0]
      ),
      make_eval_fn(
        objective.loss_fn,
        eval_batch_size,
        objective.loss_args is not None,
        mesh=mesh,
        host_loop=host_loop,
        streamed=streamed[1],
      ),
    )
    if key is None:
      return fns
    if len(_COMPILED) > 256:
      _COMPILED.clear()
    _COMPILED[key] = fns
  return _COMPILED[key]


def init_fit_state(objective: Objective, params: PyTree, model_state: PyTree, config: FitConfig) -> FitState:
  """A fresh FitState: Adam moments at zero, the configured learning rate."""
  tx = make_optimizer(objective.trainable, params, config.weight_decay)
  return FitState(
    params=params,
    opt_state=tx.init(params),
    model_state=model_state,
    best_params=params,
    best_model_state=model_state,
    learning_rate=config.learning_rate,
  )


def fit(
  objective: Objective,
  params: PyTree,
  model_state: PyTree,
  data: FitData,
  config: FitConfig,
  key: jax.Array,
  *,
  num_classes: int,
  name: str = "fit",
  on_epoch: Optional[Callable[[FitState, dict], None]] = None,
  checkpoint: Optional[FitCheckpointer] = None,
  log: Optional[Callable[[str], None]] = None,
  mesh=None,
  positions_bucket: Optional[int] = None,
) -> FitState:
  """Trains `params` on `data` under Appendix A's schedule; returns the final FitState.

  `checkpoint`: a `checkpoint.FitCheckpointer` (or None). The fit resumes from its newest FitState
  (a fit that had finished comes back at once) and saves the state after every epoch — after
  `on_epoch`, also when that raises, because callbacks may add to the epoch's record (e.g. a test
  accuracy) and the history on disk must hold what an uninterrupted run's holds.

  `mesh`: a `parallel.make_mesh()` mesh to run data parallel on (batches split over its devices,
  params replicated); None takes the mesh of an enclosing `parallel.data_parallel(...)` block, if any.

  `positions_bucket`: the length the working set is padded to (default: `bucket_size` of its size).
  Fits whose working sets differ in size but not in bucket share one compiled epoch; QuickNet pads
  every block after the first, and every commitment head, to the full split's bucket.

  `state.best_params` / `best_model_state` hold the best-validation parameters. `on_epoch(state,
  record)` is called after every epoch (progress, metrics). Raises `NonFiniteLossError` naming `name`,
  the epoch and the checkpoint that is kept, on a non-finite loss.
  """
  num_rows = int(data.positions.shape[0])  # the working set
  num_samples = num_rows if data.epoch_draws is None else int(data.epoch_draws)  # what an epoch trains on
  if num_rows == 0:
    raise ValueError(f"{name}: the working set is empty; nothing to train")
  if (data.val_inputs.shape[0] if data.num_val is None else data.num_val) == 0:
    raise ValueError(f"{name}: the validation set is empty; raise --val_fraction")
  if num_samples > num_rows and not config.balanced_sampling:
    raise ValueError(
      f"{name}: an epoch of {num_samples} draws from {num_rows} rows needs draws with "
      "replacement: pass --balanced_sampling"
    )
  tx = make_optimizer(objective.trainable, params, config.weight_decay)
  state = init_fit_state(objective, params, model_state, config)
  if checkpoint is not None:
    resumed = checkpoint.restore(state)
    if resumed is not None:
      state = resumed
      if log is not None:
        finished = state.stopped or state.epoch >= config.max_epochs
        log(f"{name}: resumed after epoch {state.epoch}" + (" (finished)" if finished else ""))
  batch_size = min(config.batch_size, num_samples)
  eval_batch_size = config.eval_batch_size
  mesh = mesh if mesh is not None else parallel.current_mesh()
  # streamed views (`--input=stream`) stay on disk: the epoch and the validation pass read them in batches
  streamed = (is_streamed(data.inputs), is_streamed(data.val_inputs))
  views = {name: getattr(data, name) for name, s in zip(("inputs", "val_inputs"), streamed) if s}
  data = data._replace(**{name: np.zeros(0, np.float32) for name in views})
  if mesh is not None:  # every device gets the same number of rows; the extra ones are masked padding
    batch_size = parallel.round_up_batch(batch_size, mesh)
    eval_batch_size = parallel.round_up_batch(eval_batch_size, mesh)
    state.params, state.opt_state, state.model_state, data = parallel.replicate(
      (state.params, state.opt_state, state.model_state, data), mesh
    )
  else:  # the training arrays go to the device once (a no-op for device arrays): batches gather there
    data = data._replace(inputs=jax.device_put(data.inputs), targets=jax.device_put(data.targets))
  data = data._replace(**views)
  # The epoch donates these buffers: the fit works on its own copies, so the caller's params (e.g. a
  # model's init variables, reused by other fits) and a resumed state's arrays stay valid.
  state.params, state.opt_state, state.model_state = _private_copy((state.params, state.opt_state, state.model_state))
  host_loop = config.host_loop
  if host_loop is None and jax.default_backend() == "cpu":
    with loop_convolutions():  # what the epoch will trace: convolutions are then seldom left on CPU
      convolves = uses_convolution(
        objective.loss_fn,
        state.params,
        state.model_state,
        np.asarray(data.inputs[:1]) if streamed[0] else data.inputs,
        data.targets,
        **({} if objective.loss_args is None else {"loss_args": objective.loss_args}),
      )
    host_loop = steps_from_host("cpu", convolves)
  host_loop = bool(host_loop)
  epoch_fn, eval_fn = _compiled_fns(
    objective,
    tx,
    params,
    batch_size,
    num_classes,
    config.balanced_sampling,
    eval_batch_size,
    mesh,
    host_loop,
    config.weight_decay,
    streamed,
  )
  # Pad the working set and the validation arrays to their buckets; the true sizes are traced.
  bucket = max(positions_bucket or 0, bucket_size(max(num_rows, num_samples)))
  positions = pad_rows(np.asarray(data.positions, np.int32), bucket)
  sample_classes = pad_rows(np.asarray(data.sample_classes, np.int32), bucket)
  num_val = int(data.val_inputs.shape[0] if data.num_val is None else data.num_val)
  val_rows = bucket_size(int(data.val_inputs.shape[0]))
  val_inputs = data.val_inputs if streamed[1] else pad_rows(data.val_inputs, val_rows)
  val_targets = pad_rows(data.val_targets, val_rows)
  loss_args = {} if objective.loss_args is None else {"loss_args": objective.loss_args}
  rows_arg = {} if num_samples == num_rows else {"num_valid": jnp.int32(num_rows)}

  while not state.stopped and state.epoch < config.max_epochs:
    start = time.perf_counter()
    epoch_key = jax.random.fold_in(key, state.epoch)
    hparams = (
      {}
      if objective.epoch_hparams is None
      else {"hparams": jax.tree.map(jnp.asarray, objective.epoch_hparams(state.epoch + 1))}
    )
    with loop_convolutions(), CompileMeter() as compiled:  # traced (first epoch) with loop-friendly convolutions
      params, opt_state, new_model_state, train_loss, train_acc = epoch_fn(
        state.params,
        state.opt_state,
        state.model_state,
        jnp.float32(state.learning_rate),
        data.inputs,
        data.targets,
        positions,
        sample_classes,
        jnp.int32(num_samples),
        epoch_key,
        **hparams,
        **loss_args,
        **rows_arg,
      )
      val_loss, val_acc = eval_fn(params, new_model_state, val_inputs, val_targets, jnp.int32(num_val), **loss_args)
    train_loss, train_acc, val_loss, val_acc = (float(v) for v in (train_loss, train_acc, val_loss, val_acc))
    if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
      raise NonFiniteLossError(
        f"{name}: non-finite loss at epoch {state.epoch + 1} (train {train_loss}, val {val_loss}); "
        f"the last good parameters are kept — lower --learning_rate (now {state.learning_rate:g})" + _kept(checkpoint)
      )
    state.params, state.opt_state, state.model_state = params, opt_state, new_model_state
    state.epoch += 1
    record = dict(
      epoch=state.epoch,
      train_loss=train_loss,
      train_accuracy=train_acc,
      val_loss=val_loss,
      val_accuracy=val_acc,
      learning_rate=state.learning_rate,
      samples=num_samples,
      seconds=time.perf_counter() - start,
      compile_seconds=compiled.seconds,  # tracing + XLA compile (or the persistent cache's read) within it
    )
    if num_samples != num_rows:
      record["working_set"] = num_rows
    if end_epoch(state, config, monitored_score(config, train_loss, val_loss, val_acc)):
      # copies: the next epoch donates (and so overwrites) `params` and `new_model_state`
      state.best_params, state.best_model_state = _private_copy((params, new_model_state))
    record["stopped"] = state.stopped
    state.history.append(record)
    try:
      if on_epoch is not None:
        on_epoch(state, record)
    finally:
      if checkpoint is not None:
        checkpoint.save(state)
  return state


def _kept(checkpoint: Optional[FitCheckpointer]) -> str:
  """Where the last good state of a failed fit is, for its error message ("" without checkpoints)."""
  if checkpoint is None:
    return ""
  kept = checkpoint.latest_epoch()
  if kept is None:
    return "; nothing was checkpointed"
  return f"; the checkpoint of epoch {kept} in {checkpoint.directory} is kept"

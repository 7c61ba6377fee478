"""Cascade inference with real exits: later blocks run only on the samples that have not left yet.

Block 0 runs on each input batch; the exit rule (docs/method.md) is applied; the samples that continue
are compacted and handed to block 1, and so on. Predictions equal `exits.select_exits` on all exits (a
test checks it); unlike that vectorized evaluator, the FLOPs a sample does not need are never computed.

How it is kept cheap on the clock (a naive loop's per-block host syncs, numpy bookkeeping and separate
gather dispatches cost more than the later blocks of a small network save):

- one step per block does everything for it on device: it picks the continuing rows out of
  the previous block's outputs (a cumsum-based stable compaction and a gather), runs the block and its
  heads (the MLP's two Dense heads share one matmul), applies the exit rule and records the answer of
  each row that leaves — its code (prediction, exit, qualified), confidence and commitment logit, one
  scatter into an answer array; the most confident exit so far travels with the rows for the fallback;
- later blocks take the continuing rows of a few input batches together (`pool`), in calls of at most
  one input batch's size, so they run on batches large enough to be efficient;
- their sizes are buckets (`bucket`: 8 per octave by default), so a block compiles for a bounded set
  of sizes and pads under 12.5 %; the rule's settings are traced, so one compiled step per size serves
  every threshold and variant;
- the host does not wait for counts: each later block's bucket is guessed from the fraction of rows
  that reached it before (with a 4σ margin), and the whole window — block 0 on each input batch and
  every later block on its guessed calls — runs as one jitted call, so no host work (dispatch,
  argument handling) competes with the blocks for the cores; a window whose guess was too small runs
  again block by block reading its counts, so answers never depend on the guesses. The answers come
  back in one transfer per window and are decoded with numpy.
"""

from __future__ import annotations

import collections
import functools
import itertools
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from quicknets_jax.core import costs, exits
from quicknets_jax.data.streaming import is_streamed
from quicknets_jax.models.base import COMMIT, EXIT, Block, CommitmentHead, MultiExitModel
from quicknets_jax.models.mlp import LinearExit


class CascadeResult(NamedTuple):
  """Per-sample outcome of cascade inference (host arrays)."""

  prediction: np.ndarray  # [N] int32
  exit_index: np.ndarray  # [N] int32
  qualified: np.ndarray  # [N] bool: the rule fired (False: the fallback answered)
  blocks_run: np.ndarray  # [N] int32: how many blocks each sample went through
  confidence: np.ndarray  # [N] float32: the answering exit's confidence
  commit_logit: np.ndarray  # [N] float32: the answering exit's commitment logit


class _Part(NamedTuple):
  """The rows one call of a block ran on, for the next block to pick its continuing rows from (device
  arrays; a window is a few input batches whose continuing rows later blocks take together)."""

  features: jnp.ndarray  # [n, ...] the block's output
  rows: jnp.ndarray  # [n] int32: each row's position in the window (its input batches concatenated)
  best_confidence: jnp.ndarray  # [n] the highest confidence so far (for the most_confident fallback)
  best_code: jnp.ndarray  # [n] int32: the code (below) of the exit that had it
  best_commit: jnp.ndarray  # [n] that exit's commitment logit
  continues: jnp.ndarray  # [n] bool: a real row that the rule did not let leave


# A row's answer is a code — prediction + num_classes·exit, plus `_qualified_flag(...)` when the rule
# fired — with the answering exit's confidence and commitment logit: one float32 row [code, confidence,
# commitment] (codes are small integers, exact in float32); one scatter per block records it, and the
# host decodes all of them at the end.
def _answer(code, confidence, commit):
  return jnp.stack([code.astype(jnp.float32), confidence.astype(jnp.float32), commit.astype(jnp.float32)], -1)


def _qualified_flag(num_exits: int, num_classes: int) -> int:
  return num_exits * num_classes


def bucket(n: int, per_octave: int = 8) -> int:
  """The padded batch size for n samples: n itself up to 2·per_octave, above that the next multiple of
  2^k/per_octave for the octave [2^k, 2^(k+1)) holding n — e.g. 1600 → 1664 with 8 per octave.

  `per_octave` must be a power of two; 1 gives plain powers of two. A block therefore compiles for at
  most per_octave·log2(batch) + 2·per_octave sizes and wastes under 1/per_octave of its rows on padding.

  Args:
    n: the number of samples.
    per_octave: sizes per octave, a power of two.

  Returns:
    The padded size, at least n (and at least 1).
  """
  if n <= 2 * per_octave:
    return max(n, 1)
  step = 1 << (n.bit_length() - 1 - (per_octave.bit_length() - 1))
  return -(-n // step) * step


def _block_outputs(block, variables, x):
  """(features, exit logits, commitment logit) of a block; the MLP's two Dense heads, which read the
  same features, share one matmul (a kernel launch and a pass over the features fewer)."""
  if not (
    isinstance(block.exit_head, LinearExit)
    and isinstance(block.commit_head, CommitmentHead)
    and set(variables) == {"params"}
  ):
    return block.apply(variables, x)
  features = block.apply(variables, x, method=Block.features)
  params = variables["params"]
  exit_out, hidden, commit_out = params[EXIT]["out"], params[COMMIT]["hidden"], params[COMMIT]["out"]
  kernel = jnp.concatenate([exit_out["kernel"], hidden["kernel"]], axis=1)
  both = features.reshape(features.shape[0], -1) @ kernel + jnp.concatenate([exit_out["bias"], hidden["bias"]])
  num_classes = exit_out["kernel"].shape[1]
  logits, hidden_act = both[:, :num_classes], jax.nn.relu(both[:, num_classes:])
  return features, logits, (hidden_act @ commit_out["kernel"] + commit_out["bias"])[:, 0]


def _exit_outputs(block, variables, x, rule: _Rule):
  """Block on x: features, each row's prediction, confidence and commitment logit, and whether the
  rule lets it leave."""
  features, logits, commit = _block_outputs(block, variables, x)
  probs = jax.nn.softmax(logits)
  confidence = exits.confidence(probs)
  qualifies = (confidence > rule.threshold) & ((commit > 0) | ~rule.use_commitment)
  return features, jnp.argmax(probs, -1).astype(jnp.int32), confidence, commit, qualifies


def _compact(continues):
  """Stable partition of the rows, continuing ones first: (order [b] int32, count [] int32)."""
  b = continues.shape[0]
  index = jnp.arange(b, dtype=jnp.int32)
  rank = jnp.cumsum(continues.astype(jnp.int32)) - 1  # slot among the continuing rows
  count = rank[-1] + 1
  slot = jnp.where(continues, rank, count + index - rank - 1)  # the others, in order, after them
  order = jnp.zeros(b, jnp.int32).at[slot].set(index, unique_indices=True)
  return order, count


class _Rule(NamedTuple):
  """The exit rule's settings, traced (one compiled step serves every threshold and variant)."""

  threshold: jnp.ndarray  # [] float32
  use_commitment: jnp.ndarray  # [] bool
  most_confident: jnp.ndarray  # [] bool: the fallback (False: the last exit)


@functools.lru_cache(maxsize=32)
def _compiled(model: MultiExitModel, num_exits: int):
  """The jitted block steps for one model; built once, so a call hashes nothing big per block."""
  num_classes = model.num_classes
  flag = _qualified_flag(num_exits, num_classes)

  def first(variables, x, offset, rule: _Rule):
    """Block 0 on one input batch (window rows offset..): (its part, its rows' answers — code 0 for
    those that continue —, how many continue)."""
    features, prediction, confidence, commit, qualifies = _exit_outputs(model.blocks[0], variables, x, rule)
    answer = _answer(jnp.where(qualifies, prediction + flag, prediction if num_exits == 1 else 0), confidence, commit)
    rows = offset + jnp.arange(x.shape[0], dtype=jnp.int32)
    part = _Part(features, rows, confidence, prediction, commit, ~qualifies)
    return part, answer, jnp.sum(~qualifies, dtype=jnp.int32)

  def later(j, start, size, variables, parts: tuple[_Part, ...], answers: tuple, rule: _Rule):
    """Block j on the continuing rows start..start+size−1 of the window's parts, taken in order (rows
    past the last continuing one are padding); records who leaves in the window's answer codes.

    Returns (its part, the window's answer codes, how many of its rows continue, whether more rows
    continued than start + size — a guessed size that was too small)."""
    order, count = _compact(jnp.concatenate([p.continues for p in parts]))
    take = order[start : start + size]
    pick = lambda name: jnp.take(jnp.concatenate([getattr(p, name) for p in parts]), take, axis=0, mode="clip")
    rows, best_confidence, best_code = pick("rows"), pick("best_confidence"), pick("best_code")
    best_commit = pick("best_commit")
    valid = start + jnp.arange(size) < count
    answer = jnp.concatenate(answers)
    outputs = _exit_outputs(model.blocks[j], variables, pick("features"), rule)
    features, prediction, confidence, commit, qualifies = outputs
    code = prediction + j * num_classes
    better = confidence > best_confidence  # strict: ties keep the earlier exit
    best_confidence = jnp.where(better, confidence, best_confidence)
    best_code = jnp.where(better, code, best_code)
    best_commit = jnp.where(better, commit, best_commit)
    if j == num_exits - 1:  # everyone still here answers now: by the rule, else by the fallback
      fallback = rule.most_confident & ~qualifies
      value = _answer(
        jnp.where(qualifies, code + flag, jnp.where(rule.most_confident, best_code, code)),
        jnp.where(fallback, best_confidence, confidence),
        jnp.where(fallback, best_commit, commit),
      )
      write = valid
    else:
      value, write = _answer(code + flag, confidence, commit), valid & qualifies
    answer = answer.at[jnp.where(write, rows, answer.shape[0])].set(value, mode="drop")
    continues = valid & ~qualifies
    return (
      _Part(features, rows, best_confidence, best_code, best_commit, continues),
      answer,
      jnp.sum(continues, dtype=jnp.int32),
      count > start + size,
    )

  def window(variables, xs: tuple, rule: _Rule, plan: tuple):
    """A whole window in one call: block 0 on each input batch, then block j on the calls
    `plan[j − 1]` ((start, size) pairs, sizes guessed on the host). Returns (the window's answer
    codes, whether any block's rows outgrew its guessed calls)."""
    offsets = np.cumsum([0] + [x.shape[0] for x in xs[:-1]])
    outputs = [first(variables[0], x, np.int32(offset), rule) for x, offset in zip(xs, offsets)]
    parts, answers = [o[0] for o in outputs], tuple(o[1] for o in outputs)
    overflows = [jnp.zeros((), bool)]
    for j, calls in enumerate(plan, start=1):
      previous, parts = tuple(parts), []
      for start, size in calls:
        part, answer, _, overflow = later(j, start, size, variables[j], previous, answers, rule)
        parts.append(part)
        answers = (answer,)
      overflows.append(overflow)
    return jnp.concatenate(answers), functools.reduce(jnp.logical_or, overflows)

  return jax.jit(first), jax.jit(later, static_argnums=(0, 1, 2)), jax.jit(window, static_argnames="plan")


# Per (model, exits, threshold, commitment rule): the fraction of the rows that reached each later
# block in the last call. The next such call guesses its buckets from them and waits for no count.
# They steer only the amount of work (a guess that was too small costs that window a rerun), never the
# answers; a call with other weights or data corrects them for the one after.
_REACHED: collections.OrderedDict = collections.OrderedDict()


def _guess(fraction: float, width: int) -> int:
  """Rows of a `width`-row batch to provide for a block that `fraction` of the rows reached before: the
  expected count plus four binomial standard deviations and a few rows."""
  mean = fraction * width
  return int(np.ceil(mean + 4.0 * np.sqrt(max(mean * (1.0 - fraction), 1.0)) + 2))


def cascade_predict(
  model: MultiExitModel,
  variables: Sequence[dict],
  images,
  threshold: float,
  fallback: str = "most_confident",
  use_commitment: bool = True,
  batch_size: int = 4096,
  buckets_per_octave: int = 8,
  pool: int = 4,
  reuse_guesses: bool = True,
) -> CascadeResult:
  """Early-exit inference that stops computing for a sample once it has left.

  Args:
    model, variables: the trained blocks (only the first len(variables) are used).
    images: [N, ...] inputs.
    threshold: confidence threshold t; fallback / use_commitment as in `exits.select_exits`.
    batch_size: samples entering block 0 together (the last batch is what is left, as for any jitted
      batch loop).
    buckets_per_octave, pool, reuse_guesses: see `cascade_predict_batches`.

  Returns:
    A `CascadeResult` of host arrays.
  """
  if is_streamed(images):
    batches = (jnp.asarray(x) for x in images.batches(batch_size))
  else:
    images = jnp.asarray(images)
    batches = (images[i : i + batch_size] for i in range(0, images.shape[0], batch_size))
  return cascade_predict_batches(
    model, variables, batches, threshold, fallback, use_commitment, buckets_per_octave, pool, reuse_guesses
  )


def cascade_predict_batches(
  model: MultiExitModel,
  variables: Sequence[dict],
  batches: Iterable,
  threshold: float,
  fallback: str = "most_confident",
  use_commitment: bool = True,
  buckets_per_octave: int = 8,
  pool: int = 4,
  reuse_guesses: bool = True,
) -> CascadeResult:
  """`cascade_predict` on batches the caller has already cut (e.g. a data loader's), in order.

  Block 0 runs on each input batch as it comes. Later blocks take the continuing rows of a window of
  `pool` consecutive batches together, in calls of at most the largest batch's size — so no block
  ever runs on more rows at once than block 0 does, and a block that few rows reach still runs on a
  reasonably large batch.

  The host does not wait for counts: each later block's size is guessed — the fraction of rows that
  reached it (in the previous call with the same model, threshold and rule, else in this call's first
  window) plus a 4σ binomial margin, as a bucket — and a window runs as one jitted call. A
  block whose guess held fewer rows than continued flags its window, which then runs again reading
  its counts, so answers never depend on the guesses, only the work does. With nothing to guess
  from, the first window reads its counts: the host waits for each block's count of continuing rows.

  Args:
    model: the multi-exit model.
    variables: the trained blocks' variables (only the first len(variables) blocks run).
    batches: an iterable of [B_i, ...] input arrays.
    threshold: the confidence threshold t.
    fallback: which exit answers when none qualifies, as in `exits.select_exits`.
    use_commitment: whether the rule reads the commitment logits.
    buckets_per_octave: granularity of the later blocks' batch sizes (see `bucket`; 1 = powers of two).
    pool: input batches per window (1: each batch goes through the cascade on its own).
    reuse_guesses: guess from the fractions that the previous call with the same model, threshold and
      rule left (False: as a first call).

  Returns:
    A `CascadeResult` of host arrays, the batches' rows concatenated.

  Raises:
    ValueError: `fallback` is not one of `exits.FALLBACKS`, or `buckets_per_octave` is not a power of two.
  """
  if fallback not in exits.FALLBACKS:
    raise ValueError(f"fallback must be one of {exits.FALLBACKS}, got {fallback!r}")
  if buckets_per_octave < 1 or buckets_per_octave & (buckets_per_octave - 1):
    raise ValueError(f"buckets_per_octave must be a power of two, got {buckets_per_octave}")
  num_exits = len(variables)
  first, later, window_step = _compiled(model, num_exits)
  # numpy scalars: making jax scalars eagerly costs ~1 ms each on 2 busy cores
  rule = _Rule(np.float32(threshold), np.bool_(use_commitment), np.bool_(fallback == "most_confident"))
  key = (model, num_exits, float(threshold), bool(use_commitment))
  fractions = list(_REACHED.get(key, ())) if reuse_guesses else []  # per later block: rows reaching it

  def calls(needed: int, available: int, cap: int) -> tuple:
    """A block's calls for `needed` of the `available` rows: (start, size) pairs of at most `cap`
    rows, the last one a bucket."""
    spans, start = [], 0
    while start < needed:
      size = cap if needed - start > cap else min(bucket(needed - start, buckets_per_octave), available - start)
      spans.append((start, size))
      start += size
    return tuple(spans)

  def plan(widths: list) -> tuple:
    """The guessed calls of each later block for a window: ((start, size), ...) per block — the
    guessed count as calls of at most the largest batch's size, the last one a bucket."""
    total, cap = sum(widths), max(widths)
    plans, available = [], total
    for fraction in fractions:
      plans.append(calls(min(_guess(fraction, total), available), available, cap))
      available = sum(size for _, size in plans[-1])
    return tuple(plans)

  def run(window: list, guess: bool):
    """Queues a window through the cascade: (its answer codes, as a tuple of device arrays, and the
    overflow flags of its guessed blocks). Guessed: one call for the whole window (no host work
    between blocks to compete with them for the cores). Without guesses, block by block, waiting for
    each block's count of continuing rows, and keeps the fractions it saw for the windows after it."""
    widths = [x.shape[0] for x in window]
    if guess:
      answer, overflow = window_step(tuple(variables), tuple(window), rule, plan=plan(widths))
      return (answer,), [overflow]
    total, cap = sum(widths), max(widths)
    outputs = [
      first(variables[0], x, np.int32(offset), rule) for x, offset in zip(window, np.cumsum([0] + widths[:-1]))
    ]
    parts, answers, counts = (list(column) for column in zip(*outputs))
    answers, seen = tuple(answers), []
    for j in range(1, num_exits):
      needed = sum(int(np.asarray(c)) for c in counts)  # the host waits here
      seen.append(needed / total)
      if needed == 0:
        break
      previous, parts, counts = tuple(parts), [], []
      for start, size in calls(needed, sum(part.continues.shape[0] for part in previous), cap):
        part, answer, count, _ = later(j, start, size, variables[j], previous, answers, rule)
        parts.append(part)
        counts.append(count)
        answers = (answer,)
    fractions[:] = seen + [0.0] * (num_exits - 1 - len(seen))
    return answers, []

  def settle(index: int, window: list, flags: list):
    """Waits for a guessed window; runs it again reading its counts if a guess was too small."""
    if any(bool(np.asarray(f)) for f in flags):
      windows[index] = run(window, guess=False)[0]

  windows = []  # per window, in order: its answer codes (a tuple of device arrays)
  queued = collections.deque()  # guessed windows not yet settled
  batches = (x for x in map(jnp.asarray, batches) if x.shape[0])  # empty batches answer nothing
  while window := list(itertools.islice(batches, max(pool, 1))):
    guess = bool(fractions)
    answers, flags = run(window, guess)
    windows.append(answers)
    if guess:
      queued.append((len(windows) - 1, window, flags))
      if len(queued) > 1:  # at most two windows' work queued at once (memory)
        settle(*queued.popleft())
  for item in queued:
    settle(*item)
  answer = np.concatenate([np.asarray(a) for answers in windows for a in answers]) if windows else np.zeros((0, 3))
  code, answer_confidence, answer_commit = np.rint(answer[:, 0]).astype(np.int32), answer[:, 1], answer[:, 2]
  flag = _qualified_flag(num_exits, model.num_classes)
  qualified = code >= flag
  code = code - flag * qualified
  exit_index = (code // model.num_classes).astype(np.int32)
  blocks_run = np.where(qualified, exit_index + 1, num_exits).astype(np.int32)
  if len(code):
    _REACHED[key] = [float(np.mean(blocks_run > j)) for j in range(1, num_exits)]
    _REACHED.move_to_end(key)
    while len(_REACHED) > 64:
      _REACHED.popitem(last=False)
  return CascadeResult(
    (code % model.num_classes).astype(np.int32),
    exit_index,
    qualified,
    blocks_run,
    answer_confidence.astype(np.float32),
    answer_commit.astype(np.float32),
  )


def cascade_flops(result: CascadeResult, model: MultiExitModel) -> np.ndarray:
  """FLOPs per sample actually spent by the cascade: every block and head each sample ran through.

  Args:
    result: the cascade's answers (`blocks_run` says how far each sample went).
    model: the model whose blocks ran (its `block_costs`).

  Returns:
    [N] float64 FLOPs per sample.
  """
  cumulative = np.concatenate([[0.0], costs.cascade_costs(model.block_costs)])
  return cumulative[result.blocks_run]

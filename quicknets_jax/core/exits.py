"""The early-exit rule, vectorized: confidence, exit selection, threshold sweeps and their costs.

Everything here works on stacked exit outputs — `probs` [E, B, C] and `commit_logits` [E, B] — in one
pass without a Python loop over samples, and is jit-able (the threshold may be traced). The rule (the
method page, docs/method.md): a sample leaves at the first exit whose confidence exceeds the threshold
and whose commitment logit is positive; otherwise the most confident exit answers (ties → the earlier
exit), or the last exit with `fallback="last"` (the SDN/BranchyNet rule).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

FALLBACKS = ("most_confident", "last")


def confidence(probs: jnp.ndarray) -> jnp.ndarray:
  """1 − H(p)/log C over the last axis: 1 for a one-hot p, 0 for the uniform distribution.

  H(p) = −Σ_c p_c log p_c with 0·log 0 = 0. Probabilities in bfloat16 or float16 are computed in float32,
  whatever dtype trained the network.

  Args:
    probs: [..., C] class probabilities, a numpy or jax array.

  Returns:
    [...] confidences in [0, 1]; numpy in, numpy out (host-side callers then compile nothing).
  """
  # numpy in, numpy out: host-side callers (learned-set selection) then compile nothing
  xp = np if isinstance(probs, np.ndarray) else jnp
  if probs.dtype.itemsize < 4:  # bf16/f16 probabilities: the rule computes in float32 whatever trained
    probs = probs.astype(np.float32)
  num_classes = probs.shape[-1]
  entropy = -xp.sum(probs * xp.log(xp.where(probs > 0, probs, 1.0)), axis=-1)  # 0·log 0 = 0
  return 1.0 - entropy / np.log(num_classes)


class ExitDecision(NamedTuple):
  """Per-sample outcome of the exit rule.

  Attributes:
    exit_index: [B] int32, the exit that answers.
    prediction: [B] int32, that exit's argmax class.
    qualified: [B] bool, True when the rule fired (False: the fallback answered).
    exit_confidence: [E, B] confidence of every exit.
  """

  exit_index: jnp.ndarray  # [B] int32, the exit that answers
  prediction: jnp.ndarray  # [B] int32, that exit's argmax class
  qualified: jnp.ndarray  # [B] bool, True when the rule fired (False: the fallback answered)
  exit_confidence: jnp.ndarray  # [E, B] confidence of every exit


def check_threshold(threshold: float, name: str = "threshold") -> float:
  """Refuses thresholds outside [0, 1] with a message that names the valid range.

  Args:
    threshold: the threshold to check.
    name: what the message calls it (e.g. "exit_threshold").

  Returns:
    The threshold as a float.

  Raises:
    ValueError: it is NaN or outside [0, 1].
  """
  threshold = float(threshold)
  if not 0.0 <= threshold <= 1.0 or np.isnan(threshold):
    raise ValueError(f"{name} must be in [0, 1] (confidence = 1 − H/log C lies there), got {threshold}")
  return threshold


def select_exits(
  probs: jnp.ndarray,
  commit_logits: jnp.ndarray | None,
  threshold,
  fallback: str = "most_confident",
  use_commitment: bool = True,
) -> ExitDecision:
  """Chooses an exit for every sample at once.

  Args:
    probs: [E, B, C] class probabilities of every exit.
    commit_logits: [E, B] commitment logits (positive = commit), or None for confidence only.
    threshold: confidence threshold t; an exit qualifies when confidence > t (and commitment > 0).
    fallback: "most_confident" (the paper's rule) or "last" (take the final exit).
    use_commitment: False ignores `commit_logits` (the confidence-only rule).

  Returns:
    An `ExitDecision` with the exit index and prediction per sample.

  Raises:
    ValueError: `fallback` is not one of `FALLBACKS`.
  """
  if fallback not in FALLBACKS:
    raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
  num_exits = probs.shape[0]
  exit_confidence = confidence(probs)
  qualifies = exit_confidence > threshold
  if use_commitment and commit_logits is not None:
    qualifies = qualifies & (commit_logits > 0)
  qualified = jnp.any(qualifies, axis=0)
  first_qualifying = jnp.argmax(qualifies, axis=0)  # argmax returns the first True
  if fallback == "most_confident":
    fallback_exit = jnp.argmax(exit_confidence, axis=0)  # ties → the earlier exit
  else:
    fallback_exit = jnp.full(qualified.shape, num_exits - 1)
  exit_index = jnp.where(qualified, first_qualifying, fallback_exit).astype(jnp.int32)
  exit_predictions = jnp.argmax(probs, axis=-1)  # [E, B]
  prediction = jnp.take_along_axis(exit_predictions, exit_index[None], axis=0)[0].astype(jnp.int32)
  return ExitDecision(exit_index, prediction, qualified, exit_confidence)


def sample_costs(decision: ExitDecision, cascade_costs: jnp.ndarray) -> jnp.ndarray:
  """Inference FLOPs per sample: blocks and heads 0..e for a sample that left at exit e by the rule.

  A sample that no exit accepted has run every block and head before the fallback could pick its
  exit, so it costs the whole cascade whichever exit answers.

  Args:
    decision: the rule's outcome (`select_exits`).
    cascade_costs: [E] FLOPs per sample to reach and decide at each exit (`costs.cascade_costs`).

  Returns:
    [B] FLOPs per sample.
  """
  return jnp.where(decision.qualified, cascade_costs[decision.exit_index], cascade_costs[-1])


class SweepResult(NamedTuple):
  """Cost–accuracy curve of a threshold sweep (one entry per threshold).

  Attributes:
    thresholds: [T] the thresholds.
    accuracy: [T] accuracy at each.
    inference_flops: [T] mean FLOPs per sample at each.
    exit_fractions: [T, E] share of the samples answered by each exit.
  """

  thresholds: np.ndarray  # [T]
  accuracy: np.ndarray  # [T]
  inference_flops: np.ndarray  # [T] mean FLOPs per sample
  exit_fractions: np.ndarray  # [T, E]


# Jitted: called eagerly (by the experiment, once per trained prefix of the cascade) its dozen small ops
# would each compile for every exit count, ~1 s per call on 2 CPU cores; inside `_sweep` it is inlined.
@functools.partial(jax.jit, static_argnames=("fallback", "use_commitment"))
def evaluate_rule(
  probs, commit_logits, labels, threshold, cascade_costs, fallback="most_confident", use_commitment=True
):
  """(accuracy, mean inference FLOPs, exit fractions [E]) of the rule at one threshold; jitted.

  Args:
    probs: [E, B, C] class probabilities of every exit.
    commit_logits: [E, B] commitment logits, or None.
    labels: [B] true classes.
    threshold: the confidence threshold (may be traced).
    cascade_costs: [E] FLOPs per sample to reach and decide at each exit.
    fallback: "most_confident" or "last" (static).
    use_commitment: whether the rule reads the commitment logits (static).

  Returns:
    (accuracy, mean FLOPs per sample, [E] exit fractions) as jax scalars and an array.
  """
  decision = select_exits(probs, commit_logits, threshold, fallback, use_commitment)
  accuracy = jnp.mean(decision.prediction == labels)
  cost = jnp.mean(sample_costs(decision, cascade_costs))
  fractions = jnp.mean(jax.nn.one_hot(decision.exit_index, probs.shape[0]), axis=0)
  return accuracy, cost, fractions


def sweep_thresholds(
  probs,
  commit_logits,
  labels,
  cascade_costs,
  thresholds: Sequence[float] | None = None,
  fallback: str = "most_confident",
  use_commitment: bool = True,
) -> SweepResult:
  """Evaluates the exit rule at every threshold in one vmapped pass.

  Args:
    probs: [E, B, C] class probabilities of every exit.
    commit_logits: [E, B] commitment logits, or None.
    labels: [B] true classes.
    cascade_costs: [E] FLOPs per sample to reach and decide at each exit.
    thresholds: the thresholds (default: `default_thresholds()`).
    fallback: "most_confident" or "last".
    use_commitment: whether the rule reads the commitment logits.

  Returns:
    A `SweepResult` of numpy arrays.
  """
  if thresholds is None:
    thresholds = default_thresholds()
  thresholds = jnp.asarray(thresholds, jnp.float32)
  accuracy, cost, fractions = _sweep(
    probs, commit_logits, jnp.asarray(labels), thresholds, jnp.asarray(cascade_costs), fallback, use_commitment
  )
  return SweepResult(np.asarray(thresholds), np.asarray(accuracy), np.asarray(cost), np.asarray(fractions))


@functools.partial(jax.jit, static_argnames=("fallback", "use_commitment"))
def _sweep(probs, commit_logits, labels, thresholds, cascade_costs, fallback, use_commitment):
  # arrays are arguments, not closed-over constants: XLA would otherwise constant-fold the whole sweep
  return jax.vmap(lambda t: evaluate_rule(probs, commit_logits, labels, t, cascade_costs, fallback, use_commitment))(
    thresholds
  )


def default_thresholds() -> np.ndarray:
  """0, 0.05, …, 0.95 then a finer grid up to 0.999 where the confidence of trained nets piles up.

  Returns:
    The sorted, unique thresholds.
  """
  return np.unique(
    np.round(np.concatenate([np.arange(0.0, 0.95, 0.05), np.arange(0.95, 1.0, 0.01), [0.995, 0.999]]), 4)
  )


def choose_threshold(sweep: SweepResult, accuracy_tolerance: float = 0.0) -> float:
  """The operating threshold from a *validation* sweep: the cheapest threshold whose accuracy is within
  `accuracy_tolerance` of the sweep's best (ties → the cheaper, then the lower threshold).

  Args:
    sweep: the rule swept over thresholds on the validation split.
    accuracy_tolerance: how far below the best accuracy a threshold may be and still count as best.

  Returns:
    The chosen threshold.
  """
  best = float(np.max(sweep.accuracy))
  candidates = np.flatnonzero(sweep.accuracy >= best - accuracy_tolerance - 1e-12)
  order = np.lexsort((sweep.thresholds[candidates], sweep.inference_flops[candidates]))
  return float(sweep.thresholds[candidates[order[0]]])


class OperatingPoint(NamedTuple):
  """The rule at one threshold on one split: what `threshold_for_target` chose and what it measured.

  Attributes:
    threshold: the threshold.
    accuracy: the rule's accuracy at it.
    inference_flops: mean FLOPs per sample (the method page's inference cost).
    early_exit_fraction: share of the samples the rule lets leave before the last exit.
  """

  threshold: float
  accuracy: float
  inference_flops: float  # mean FLOPs per sample (docs/method.md, inference cost)
  early_exit_fraction: float  # share of the samples the rule lets leave before the last exit


@functools.partial(jax.jit, static_argnames="use_commitment")
def _early_exit_fractions(probs, commit_logits, thresholds, use_commitment: bool):
  early_confidence = confidence(probs)[:-1]  # a one-exit model has none: nothing leaves early

  def at(threshold):
    qualifies = early_confidence > threshold
    if use_commitment and commit_logits is not None:
      qualifies = qualifies & (commit_logits[:-1] > 0)
    return jnp.mean(jnp.any(qualifies, axis=0))

  return jax.vmap(at)(thresholds)


def threshold_for_target(
  probs,
  commit_logits,
  labels,
  cascade_costs,
  *,
  max_flops: float | None = None,
  min_accuracy: float | None = None,
  min_early_exit: float | None = None,
  thresholds: Sequence[float] | None = None,
  fallback: str = "most_confident",
  use_commitment: bool = True,
) -> OperatingPoint:
  """The threshold that meets one target on a split — pass the *validation* split's exit outputs.

  Exactly one target is given: `max_flops` (a compute budget: the most accurate threshold within it),
  `min_accuracy` (the cheapest threshold that reaches it) or `min_early_exit` (the most accurate
  threshold that lets that many samples leave before the last exit). Ties go to the cheaper, then the
  lower threshold.

  Args:
    probs: [E, B, C] class probabilities of every exit.
    commit_logits: [E, B] commitment logits, or None.
    labels: [B] true classes.
    cascade_costs: [E] FLOPs per sample to reach and decide at each exit.
    max_flops: a compute budget, mean FLOPs per sample.
    min_accuracy: an accuracy in [0, 1].
    min_early_exit: a share in [0, 1] of samples that must leave before the last exit.
    thresholds: the thresholds to choose from (default: `default_thresholds()`).
    fallback: "most_confident" or "last".
    use_commitment: whether the rule reads the commitment logits.

  Returns:
    The chosen `OperatingPoint`, measured on the split given.

  Raises:
    ValueError: not exactly one target is given, the target is out of range, or no threshold of the
      sweep meets it (the message names what is reachable).
  """
  given = dict(max_flops=max_flops, min_accuracy=min_accuracy, min_early_exit=min_early_exit)
  chosen = [k for k, v in given.items() if v is not None]
  if len(chosen) != 1:
    raise ValueError(f"give exactly one target of max_flops, min_accuracy, min_early_exit (got {chosen or 'none'})")
  (name,) = chosen
  target = float(given[name])
  if name == "max_flops" and not target > 0:
    raise ValueError(f"max_flops must be a positive FLOP count per sample, got {target}")
  if name != "max_flops" and not 0.0 <= target <= 1.0:
    raise ValueError(f"{name} is a fraction in [0, 1] (e.g. 0.885 for 88.5 %), got {target}")
  if thresholds is None:
    thresholds = default_thresholds()
  sweep = sweep_thresholds(probs, commit_logits, labels, cascade_costs, thresholds, fallback, use_commitment)
  early = np.asarray(
    _early_exit_fractions(probs, commit_logits, jnp.asarray(sweep.thresholds, jnp.float32), use_commitment)
  )
  cost, accuracy = sweep.inference_flops, sweep.accuracy
  if name == "max_flops":
    meets, what = cost <= target * (1 + 1e-9), f"a mean cost of at most {target / 1e6:.4g} MFLOPs"
    reachable = f"the cheapest threshold costs {cost.min() / 1e6:.4g} MFLOPs"
  elif name == "min_accuracy":
    meets, what = accuracy >= target - 1e-12, f"an accuracy of {target:.4f}"
    # as many digits as it takes to show the best below the target (0.96996 is not "0.9700")
    digits = next((d for d in range(4, 9) if round(float(accuracy.max()), d) < round(target, d)), 9)
    reachable = f"the best threshold reaches {accuracy.max():.{digits}f}, below it"
  else:
    meets, what = early >= target - 1e-12, f"{target:.1%} of the samples leaving before the last exit"
    reachable = f"at most {early.max():.1%} leave early"
  candidates = np.flatnonzero(meets)
  if not len(candidates):
    raise ValueError(f"no threshold reaches {what} on this split: {reachable}; choose a target within reach")
  c = candidates
  if name == "min_accuracy":  # cheapest, then most accurate, then lowest threshold
    order = np.lexsort((sweep.thresholds[c], -accuracy[c], cost[c]))
  else:  # most accurate, then cheapest, then lowest threshold
    order = np.lexsort((sweep.thresholds[c], cost[c], -accuracy[c]))
  i = c[order[0]]
  return OperatingPoint(float(sweep.thresholds[i]), float(accuracy[i]), float(cost[i]), float(early[i]))


def binomial_tail(k: int, n: int, p: float) -> float:
  """P(X >= k) for X ~ Binomial(n, p), summed in log space (exact for any n a validation split has).

  Args:
    k: the count.
    n: the number of trials.
    p: the success probability, in [0, 1].

  Returns:
    The probability.
  """
  if k <= 0:
    return 1.0
  if k > n or p <= 0.0:
    return 0.0
  if p >= 1.0:
    return 1.0
  i = np.arange(k, n + 1, dtype=np.float64)
  log_choose = math.lgamma(n + 1) - np.asarray([math.lgamma(j + 1) + math.lgamma(n - j + 1) for j in i])
  terms = log_choose + i * math.log(p) + (n - i) * math.log1p(-p)
  top = float(terms.max())
  return float(min(1.0, math.exp(top) * np.exp(terms - top).sum()))


def accuracy_lower_bound(correct: int, n: int, confidence: float) -> float:
  """The one-sided Clopper-Pearson lower bound: an accuracy the true one is at least, with probability
  `confidence` over the draw of the `n` samples of which `correct` were right.

  Args:
    correct: how many samples were right.
    n: how many samples.
    confidence: in (0, 1), e.g. 0.9.

  Returns:
    The bound, in [0, 1]: the smallest accuracy at which `correct` or more right answers are not less
    likely than 1 - `confidence`.
  """
  if correct <= 0:
    return 0.0
  low, high = 0.0, 1.0
  for _ in range(60):  # bisection: the tail grows with the accuracy
    mid = (low + high) / 2
    if binomial_tail(correct, n, mid) > 1.0 - confidence:
      high = mid
    else:
      low = mid
  return low


def threshold_with_guarantee(
  probs,
  commit_logits,
  labels,
  cascade_costs,
  *,
  min_accuracy: float,
  confidence: float,
  thresholds: Sequence[float] | None = None,
  fallback: str = "most_confident",
  use_commitment: bool = True,
) -> OperatingPoint:
  """The cheapest threshold whose accuracy is at least `min_accuracy` with probability at least
  `confidence` over the draw of the split given — pass the *validation* split's exit outputs.

  Learn-then-Test: for each threshold the hypothesis "its accuracy is below `min_accuracy`" gets an
  exact binomial p-value from its right answers on the split; the hypotheses are tested at level
  1 - `confidence` in a fixed order, from the highest threshold (the costliest: fewest samples leave
  early) down, until one cannot be rejected. Every threshold rejected before then meets the target,
  all of them together with probability at least `confidence` (fixed-sequence testing controls the
  family-wise error); the cheapest of them is returned. The guarantee is about the accuracy on the
  population the split was drawn from (new samples like them), not about one more finite split.

  Args:
    probs: [E, B, C] class probabilities of every exit.
    commit_logits: [E, B] commitment logits, or None.
    labels: [B] true classes.
    cascade_costs: [E] FLOPs per sample to reach and decide at each exit.
    min_accuracy: the accuracy to guarantee, in (0, 1).
    confidence: the probability of the guarantee, in (0, 1), e.g. 0.9.
    thresholds: the thresholds to choose from (default: `default_thresholds()`).
    fallback: "most_confident" or "last".
    use_commitment: whether the rule reads the commitment logits.

  Returns:
    The chosen `OperatingPoint`, measured on the split given.

  Raises:
    ValueError: a target or confidence out of range, or no threshold whose accuracy can be guaranteed
      (the message names the best accuracy the split can guarantee at that confidence).
  """
  if not 0.0 < min_accuracy < 1.0:
    raise ValueError(f"min_accuracy is a fraction in (0, 1) (e.g. 0.9 for 90 %), got {min_accuracy}")
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"confidence is a probability in (0, 1) (e.g. 0.9), got {confidence}")
  if thresholds is None:
    thresholds = default_thresholds()
  sweep = sweep_thresholds(probs, commit_logits, labels, cascade_costs, thresholds, fallback, use_commitment)
  n = int(np.asarray(labels).shape[0])
  correct = np.rint(sweep.accuracy * n).astype(int)
  order = np.argsort(-sweep.thresholds, kind="stable")  # a fixed order, chosen before the data is seen
  passed = []
  for i in order:
    if binomial_tail(int(correct[i]), n, min_accuracy) > 1.0 - confidence:
      break
    passed.append(i)
  if not passed:  # the first in the order decides how much the procedure can guarantee
    best = accuracy_lower_bound(int(correct[order[0]]), n, confidence)
    raise ValueError(
      f"no threshold has an accuracy of at least {min_accuracy:.4f} with confidence {confidence:.2f} on "
      f"{n} validation samples: at most {best:.4f} can be guaranteed there; ask for less, or a lower confidence"
    )
  i = min(passed, key=lambda j: (sweep.inference_flops[j], -sweep.accuracy[j], sweep.thresholds[j]))
  early = np.asarray(
    _early_exit_fractions(probs, commit_logits, jnp.asarray(sweep.thresholds[i : i + 1], jnp.float32), use_commitment)
  )
  return OperatingPoint(
    float(sweep.thresholds[i]), float(sweep.accuracy[i]), float(sweep.inference_flops[i]), float(early[0])
  )

"""The exit rule on hand-worked cases: confidence, first qualifying exit, ties, fallbacks, costs."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quicknets_jax.core import exits

ONE_HOT = [1.0, 0.0, 0.0, 0.0]
UNIFORM = [0.25, 0.25, 0.25, 0.25]


def test_confidence_extremes_and_range():
  probs = jnp.array([ONE_HOT, UNIFORM, [0.5, 0.5, 0.0, 0.0]])
  conf = exits.confidence(probs)
  # one-hot → 1, uniform → 0, two equal classes of four → 1 − log 2 / log 4 = 0.5
  np.testing.assert_allclose(conf, [1.0, 0.0, 0.5], atol=1e-6)
  random = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(0), (100, 10)) * 3)
  c = exits.confidence(random)
  assert jnp.all((c >= 0) & (c <= 1))


def _probs(rows):
  return jnp.asarray(rows, jnp.float32)


def test_first_qualifying_exit_wins():
  # 3 exits, 2 samples. Sample 0: exit 1 and 2 are confident, exit 1 answers. Sample 1: exit 0 is.
  probs = _probs([[UNIFORM, [0.0, 1.0, 0.0, 0.0]], [[0.0, 0.0, 1.0, 0.0], UNIFORM], [[0.0, 0.0, 0.0, 1.0], UNIFORM]])
  commit = jnp.ones((3, 2))
  d = exits.select_exits(probs, commit, 0.9)
  chex.assert_trees_all_equal(d.exit_index, jnp.array([1, 0], jnp.int32))
  chex.assert_trees_all_equal(d.prediction, jnp.array([2, 1], jnp.int32))
  chex.assert_trees_all_equal(d.qualified, jnp.array([True, True]))


def test_negative_commitment_vetoes_a_confident_exit():
  probs = _probs([[ONE_HOT], [[0.0, 1.0, 0.0, 0.0]]])
  d = exits.select_exits(probs, jnp.array([[-1.0], [2.0]]), 0.5)
  assert int(d.exit_index[0]) == 1 and int(d.prediction[0]) == 1
  # confidence only ignores the veto
  d = exits.select_exits(probs, jnp.array([[-1.0], [2.0]]), 0.5, use_commitment=False)
  assert int(d.exit_index[0]) == 0
  # zero is not positive
  d = exits.select_exits(probs, jnp.array([[0.0], [0.0]]), 0.5)
  assert not bool(d.qualified[0])


def test_no_qualifying_exit_falls_back_to_most_confident_or_last():
  mid = [0.7, 0.1, 0.1, 0.1]
  low = [0.4, 0.2, 0.2, 0.2]
  probs = _probs([[low], [[0.1, 0.7, 0.1, 0.1]], [[0.3, 0.3, 0.2, 0.2]]])
  del mid
  commit = jnp.ones((3, 1))
  d = exits.select_exits(probs, commit, 0.99)
  assert int(d.exit_index[0]) == 1 and int(d.prediction[0]) == 1 and not bool(d.qualified[0])
  d = exits.select_exits(probs, commit, 0.99, fallback="last")
  assert int(d.exit_index[0]) == 2 and int(d.prediction[0]) in (0, 1)


def test_confidence_tie_goes_to_the_earlier_exit():
  same = [0.6, 0.2, 0.1, 0.1]
  probs = _probs([[[0.2, 0.2, 0.3, 0.3]], [same], [[same[1], same[0], same[2], same[3]]]])
  d = exits.select_exits(probs, -jnp.ones((3, 1)), 0.5)  # nobody commits → fallback
  assert int(d.exit_index[0]) == 1 and int(d.prediction[0]) == 0


def test_threshold_is_strict():
  probs = _probs([[[0.5, 0.5, 0.0, 0.0]], [ONE_HOT]])
  d = exits.select_exits(probs, jnp.ones((2, 1)), 0.5)  # confidence exactly 0.5 does not pass 0.5
  assert int(d.exit_index[0]) == 1


def test_select_exits_is_jittable_with_traced_threshold_and_vectorized():
  key = jax.random.PRNGKey(1)
  probs = jax.nn.softmax(jax.random.normal(key, (4, 1000, 10)) * 4, -1)
  commit = jax.random.normal(jax.random.fold_in(key, 1), (4, 1000))
  fn = jax.jit(exits.select_exits, static_argnames=("fallback", "use_commitment"))
  d = fn(probs, commit, jnp.float32(0.3))
  ref = exits.select_exits(probs, commit, 0.3)
  chex.assert_trees_all_equal(d.exit_index, ref.exit_index)
  # brute force per sample
  conf = np.asarray(exits.confidence(probs))
  for b in range(0, 1000, 97):
    ok = [e for e in range(4) if conf[e, b] > 0.3 and commit[e, b] > 0]
    expected = ok[0] if ok else int(np.argmax(conf[:, b]))
    assert int(d.exit_index[b]) == expected


def test_costs_and_sweep():
  probs = _probs([[ONE_HOT, UNIFORM], [ONE_HOT, [0.0, 1.0, 0.0, 0.0]]])
  commit = jnp.ones((2, 2))
  labels = jnp.array([0, 1])
  cascade = jnp.array([10.0, 25.0])
  d = exits.select_exits(probs, commit, 0.5)
  np.testing.assert_allclose(exits.sample_costs(d, cascade), [10.0, 25.0])
  # at threshold 1 nothing qualifies: each sample pays the whole cascade whichever exit answers
  d = exits.select_exits(probs, commit, 1.0)
  assert not bool(jnp.any(d.qualified))
  np.testing.assert_allclose(exits.sample_costs(d, cascade), [25.0, 25.0])
  sweep = exits.sweep_thresholds(probs, commit, labels, cascade, thresholds=[0.5, 1.0])
  np.testing.assert_allclose(sweep.accuracy, [1.0, 1.0])
  np.testing.assert_allclose(sweep.inference_flops, [17.5, 25.0])
  np.testing.assert_allclose(sweep.exit_fractions, [[0.5, 0.5], [0.5, 0.5]])
  assert exits.choose_threshold(sweep) == 0.5


def test_choose_threshold_takes_cheapest_within_tolerance():
  sweep = exits.SweepResult(
    np.array([0.1, 0.5, 0.9]), np.array([0.80, 0.86, 0.87]), np.array([1.0, 2.0, 3.0]), np.zeros((3, 2))
  )
  assert exits.choose_threshold(sweep) == 0.9
  assert exits.choose_threshold(sweep, accuracy_tolerance=0.02) == 0.5


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_threshold_outside_unit_interval_is_refused(bad):
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    exits.check_threshold(bad)


def test_unknown_fallback_is_refused():
  with pytest.raises(ValueError, match="fallback"):
    exits.select_exits(jnp.ones((1, 1, 2)) / 2, None, 0.5, fallback="first")


def _population(n: int, seed: int = 0):
  """Two exits over 3 classes: exit 0 right with probability equal to its confidence, exit 1 right 90 %
  of the time; (probs [2, n, 3], labels [n])."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 3, n)
  probs = np.zeros((2, n, 3), np.float32)
  for e, confidence in enumerate((rng.uniform(0.34, 1.0, n), np.full(n, 0.9))):
    right = rng.uniform(size=n) < confidence
    answer = np.where(right, labels, (labels + 1) % 3)
    probs[e] = ((1 - confidence) / 2)[:, None]
    probs[e, np.arange(n), answer] = confidence
  return probs, labels


def test_a_guaranteed_threshold_meets_its_target_in_at_least_the_confidence_share_of_draws():
  """Validation splits of 1,000 drawn from a population of 100,000: the threshold chosen with confidence 0.9
  has a population accuracy >= the target in >= 90 % of 100 draws; the plain validation choice, which
  only reaches the target on its own split, misses it far more often."""
  probs, labels = _population(100_000)
  costs, target = np.asarray([1.0, 3.0]), 0.865
  population = exits.sweep_thresholds(probs, None, labels, costs, use_commitment=False)
  truth = {round(float(t), 4): a for t, a in zip(population.thresholds, population.accuracy)}
  rng = np.random.default_rng(1)
  guaranteed, plain = [], []
  for _ in range(100):
    rows = rng.choice(len(labels), 1000, replace=False)
    split = (probs[:, rows], None, labels[rows], costs)
    chosen = exits.threshold_with_guarantee(*split, min_accuracy=target, confidence=0.9, use_commitment=False)
    guaranteed.append(truth[round(chosen.threshold, 4)] >= target)
    point = exits.threshold_for_target(*split, min_accuracy=target, use_commitment=False)
    plain.append(truth[round(point.threshold, 4)] >= target)
  assert np.mean(guaranteed) >= 0.9 and np.mean(plain) < 0.8, (np.mean(guaranteed), np.mean(plain))


def test_the_binomial_bounds_and_a_target_that_cannot_be_guaranteed():
  # P(X >= 90) for X ~ Bin(100, 0.85), and the one-sided 90 % Clopper-Pearson bound for 90 / 100
  assert abs(exits.binomial_tail(90, 100, 0.85) - 0.0994474) < 1e-6
  assert abs(exits.accuracy_lower_bound(90, 100, 0.9) - 0.8501174) < 1e-6
  assert exits.binomial_tail(0, 10, 0.5) == 1.0 and exits.accuracy_lower_bound(0, 10, 0.9) == 0.0
  probs, labels = _population(300)
  with pytest.raises(
    ValueError, match=r"at least 0\.9900 with confidence 0\.90 on 300 validation samples: at most 0\.\d+"
  ):
    exits.threshold_with_guarantee(
      probs, None, labels, [1.0, 3.0], min_accuracy=0.99, confidence=0.9, use_commitment=False
    )


def test_an_unreachable_accuracy_shows_the_best_with_the_digits_that_tell_it_apart():
  probs = np.asarray([[[0.9, 0.1], [0.9, 0.1], [0.9, 0.1]]], np.float32)  # one exit, always class 0
  labels = np.asarray([0, 0, 1])  # 2 of 3 right: 0.666667
  with pytest.raises(
    ValueError, match=r"an accuracy of 0\.6667 on this split: the best threshold reaches 0\.666667, below"
  ):
    exits.threshold_for_target(probs, None, labels, [1.0], min_accuracy=0.66667, use_commitment=False)

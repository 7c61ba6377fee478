"""Cascade inference (compacted batches) must decide exactly like the vectorized evaluator."""

import jax
import numpy as np
import pytest

from quicknets_jax import models
from quicknets_jax.algorithms import cascade
from quicknets_jax.algorithms.cascade import bucket, cascade_flops, cascade_predict, cascade_predict_batches
from quicknets_jax.algorithms.forward import all_exit_outputs
from quicknets_jax.core import exits


@pytest.fixture(scope="module")
def trained_like():
  model = models.mlp((6, 6, 1), 5, width=32, num_blocks=3)
  variables = model.init(jax.random.PRNGKey(0))
  # scale the exits up so confidences spread over [0, 1] and all exits get used
  for v in variables:
    v["params"]["exit_head"]["out"]["kernel"] = v["params"]["exit_head"]["out"]["kernel"] * 8.0
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (700, 6, 6, 1)))
  return model, variables, x


def _assert_same_as_select_exits(model, variables, x, got, threshold, fallback="most_confident", use_commitment=True):
  probs, commit = all_exit_outputs(model, variables, x)
  want = exits.select_exits(probs, commit, threshold, fallback=fallback, use_commitment=use_commitment)
  np.testing.assert_array_equal(got.exit_index, np.asarray(want.exit_index))
  np.testing.assert_array_equal(got.prediction, np.asarray(want.prediction))
  np.testing.assert_array_equal(got.qualified, np.asarray(want.qualified))
  # and it reports the answering exit's confidence and commitment logit
  rows = np.arange(x.shape[0])
  np.testing.assert_allclose(got.confidence, np.asarray(want.exit_confidence)[got.exit_index, rows], atol=1e-5)
  np.testing.assert_allclose(got.commit_logit, np.asarray(commit)[got.exit_index, rows], atol=1e-5)
  # a sample that left at exit e by the rule ran blocks 0..e; the vectorized cost model agrees
  cost = cascade_flops(got, model)
  costs = model.cascade_costs()[: len(variables)]
  np.testing.assert_allclose(cost, np.asarray(exits.sample_costs(want, costs)), rtol=1e-6)


def _rules():
  """Every (threshold, fallback, use_commitment): at 0.6 every rule; at the ends (every exit confident,
  none) two opposite rules in the default suite, the others in `slow` (each threshold compiles its own
  bucket sizes)."""
  for threshold in (0.0, 0.3, 0.6, 1.0):
    for fallback in ("most_confident", "last"):
      for use_commitment in (True, False):
        default = threshold == 0.6 or (threshold in (0.0, 1.0) and (fallback == "last") != use_commitment)
        marks = () if default else (pytest.mark.slow,)
        yield pytest.param(
          threshold, fallback, use_commitment, marks=marks, id=f"{use_commitment}-{fallback}-{threshold}"
        )


@pytest.mark.parametrize("threshold,fallback,use_commitment", list(_rules()))
def test_cascade_equals_select_exits(trained_like, threshold, fallback, use_commitment):
  model, variables, x = trained_like
  # 700 = 256 + 256 + 188: the last batch is short
  got = cascade_predict(
    model, variables, x, threshold, fallback=fallback, use_commitment=use_commitment, batch_size=256
  )
  _assert_same_as_select_exits(model, variables, x, got, threshold, fallback, use_commitment)


@pytest.mark.parametrize("batch_size,buckets_per_octave,pool", [(300, 1, 1), (128, 8, 2), (1000, 4, 4)])
def test_cascade_bucket_granularity_and_pipelining_do_not_change_answers(
  trained_like, batch_size, buckets_per_octave, pool
):
  model, variables, x = trained_like
  got = cascade_predict(
    model, variables, x, 0.3, batch_size=batch_size, buckets_per_octave=buckets_per_octave, pool=pool
  )
  _assert_same_as_select_exits(model, variables, x, got, 0.3)


def test_cascade_on_uneven_caller_batches(trained_like):
  model, variables, x = trained_like
  batches = [x[:5], x[5:5], x[5:300], x[300:301], x[301:]]  # one empty
  for reuse_guesses in (True, False):
    got = cascade_predict_batches(model, variables, batches, 0.3, fallback="last", reuse_guesses=reuse_guesses)
    _assert_same_as_select_exits(model, variables, x, got, 0.3, fallback="last")


@pytest.mark.slow  # many bucket sizes to compile
def test_wrong_bucket_guesses_cost_work_not_answers(trained_like):
  """Batches guess their later blocks' sizes from an earlier batch or call; a guess that is too small
  makes the batch run again, so the answers stay those of select_exits."""
  model, variables, x = trained_like
  probs, commit = all_exit_outputs(model, variables, x)
  decision = exits.select_exits(probs, commit, 0.6)
  easy = x[np.asarray(decision.qualified & (decision.exit_index == 0))]  # every row leaves at block 0
  hard = x[np.asarray(decision.exit_index == 2)]  # every row runs all three blocks
  assert len(easy) >= 64 and len(hard) >= 64
  cascade._REACHED.clear()
  # within a call: the first (reference) batch has no row that continues, the next ones only such rows
  batches = [easy[:64], hard[:64], hard[64:], easy[64:]]
  got = cascade_predict_batches(model, variables, batches, 0.6, pool=2)
  _assert_same_as_select_exits(model, variables, np.concatenate(batches), got, 0.6)
  # across calls: the guesses left by an all-easy call are far too small for an all-hard one
  cascade_predict_batches(model, variables, [easy], 0.6)
  got = cascade_predict(model, variables, hard, 0.6, batch_size=32)
  _assert_same_as_select_exits(model, variables, hard, got, 0.6)
  assert (got.blocks_run == 3).all()


def test_guessed_windows_run_as_one_call(trained_like, monkeypatch):
  """Once a call has left its fractions, the next call with the same rule runs each window as one
  jitted program (no per-block dispatch from the host) and still answers like select_exits."""
  model, variables, x = trained_like
  compiled = cascade._compiled(model, len(variables))
  calls = {"first": 0, "later": 0, "window": 0}

  def counting(name, fn):
    def wrapped(*args, **kwargs):
      calls[name] += 1
      return fn(*args, **kwargs)

    return wrapped

  monkeypatch.setattr(
    cascade,
    "_compiled",
    lambda *_: tuple(counting(name, fn) for name, fn in zip(("first", "later", "window"), compiled)),
  )
  cascade._REACHED.clear()
  batches = [x[:256], x[256:512], x[512:]]
  got = cascade_predict_batches(model, variables, batches, 0.3)  # a first call: block by block
  assert calls["window"] == 0 and calls["first"] == 3 and calls["later"] >= 2
  _assert_same_as_select_exits(model, variables, x, got, 0.3)
  calls.update(first=0, later=0, window=0)
  got = cascade_predict_batches(model, variables, batches, 0.3)  # guessed: one window, one call
  assert calls == {"first": 0, "later": 0, "window": 1}
  _assert_same_as_select_exits(model, variables, x, got, 0.3)


@pytest.mark.parametrize("use_commitment", [True, False])
def test_cascade_when_every_sample_leaves_at_block_0(trained_like, use_commitment):
  model, _, x = trained_like
  variables = model.init(jax.random.PRNGKey(0))
  # block 0 is certain of everything (confidence ≈ 1) and always commits
  variables[0]["params"]["exit_head"]["out"]["kernel"] = variables[0]["params"]["exit_head"]["out"]["kernel"] * 1e4
  variables[0]["params"]["commit_head"]["out"]["bias"] = variables[0]["params"]["commit_head"]["out"]["bias"] + 1e4
  got = cascade_predict(model, variables, x, 0.5, use_commitment=use_commitment, batch_size=256)
  assert (got.blocks_run == 1).all() and (got.exit_index == 0).all() and got.qualified.all()
  _assert_same_as_select_exits(model, variables, x, got, 0.5, use_commitment=use_commitment)


@pytest.mark.parametrize("num_trained", [1, 2])
def test_cascade_uses_only_the_trained_blocks(trained_like, num_trained):
  model, variables, x = trained_like
  got = cascade_predict(model, variables[:num_trained], x, 0.6, batch_size=256)
  assert got.blocks_run.max() <= num_trained
  _assert_same_as_select_exits(model, variables[:num_trained], x, got, 0.6)


def test_cascade_on_tiny_and_empty_inputs(trained_like):
  model, variables, x = trained_like
  for n in (1, 3):
    got = cascade_predict(model, variables, x[:n], 0.3, batch_size=1)
    _assert_same_as_select_exits(model, variables, x[:n], got, 0.3)
  empty = cascade_predict(model, variables, x[:0], 0.3)
  assert all(a.shape == (0,) for a in empty)


def test_cascade_skips_work_for_samples_that_left(trained_like):
  model, variables, x = trained_like
  got = cascade_predict(model, variables, x, 0.3)
  assert got.blocks_run.min() >= 1 and got.blocks_run.max() == 3
  assert (got.blocks_run == 1).any()
  with pytest.raises(ValueError, match="fallback"):
    cascade_predict(model, variables, x, 0.3, fallback="random")
  with pytest.raises(ValueError, match="power of two"):
    cascade_predict(model, variables, x, 0.3, buckets_per_octave=3)


@pytest.mark.parametrize("per_octave", [1, 2, 4, 8])
def test_bucket_sizes_are_few_and_pad_little(per_octave):
  sizes = np.array([bucket(n, per_octave) for n in range(1, 4097)])
  n = np.arange(1, 4097)
  assert (sizes >= n).all()
  assert (sizes[n > 2 * per_octave] < n[n > 2 * per_octave] * (1 + 1 / per_octave)).all()
  assert len(np.unique(sizes)) <= per_octave * 12 + 2 * per_octave  # log2(4096) = 12 octaves
  if per_octave == 1:
    assert all(s & (s - 1) == 0 for s in np.unique(sizes))  # powers of two

"""Cascade inference (compacted batches) must decide exactly like the vectorized evaluator."""

import jax
import numpy as np
import pytest

from quicknets_jax import exits, models
from quicknets_jax.cascade import cascade_flops, cascade_predict
from quicknets_jax.quicknet import predict_exits


@pytest.fixture(scope="module")
def trained_like():
  model = models.mlp((6, 6, 1), 5, width=32, num_blocks=3)
  variables = model.init(jax.random.PRNGKey(0))
  # scale the exits up so confidences spread over [0, 1] and all exits get used
  for v in variables:
    v["params"]["exit_head"]["out"]["kernel"] = v["params"]["exit_head"]["out"]["kernel"] * 8.0
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (700, 6, 6, 1)))
  return model, variables, x


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.6, 1.0])
@pytest.mark.parametrize("fallback", ["most_confident", "last"])
@pytest.mark.parametrize("use_commitment", [True, False])
def test_cascade_equals_select_exits(trained_like, threshold, fallback, use_commitment):
  model, variables, x = trained_like
  probs, commit = predict_exits(model, variables, x)
  want = exits.select_exits(probs, commit, threshold, fallback=fallback, use_commitment=use_commitment)
  got = cascade_predict(model, variables, x, threshold, fallback=fallback, use_commitment=use_commitment,
                        batch_size=256)
  np.testing.assert_array_equal(got.exit_index, np.asarray(want.exit_index))
  np.testing.assert_array_equal(got.prediction, np.asarray(want.prediction))
  np.testing.assert_array_equal(got.qualified, np.asarray(want.qualified))
  # a sample that left at exit e by the rule ran blocks 0..e; the vectorized cost model agrees
  cost = cascade_flops(got, model)
  np.testing.assert_allclose(cost, np.asarray(exits.sample_costs(want, model.cascade_costs())), rtol=1e-6)


def test_cascade_skips_work_for_samples_that_left(trained_like):
  model, variables, x = trained_like
  got = cascade_predict(model, variables, x, 0.3)
  assert got.blocks_run.min() >= 1 and got.blocks_run.max() == 3
  assert (got.blocks_run == 1).any()
  with pytest.raises(ValueError, match="fallback"):
    cascade_predict(model, variables, x, 0.3, fallback="random")

"""Module shapes, one param tree per block, and analytic FLOPs against XLA's cost analysis."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quicknets_jax import models
from quicknets_jax.core import costs
from quicknets_jax.models.base import Block


@pytest.fixture(scope="module")
def model_and_vars():
  model = models.mlp((28, 28, 1), 10, width=150, num_blocks=3)
  return model, model.init(jax.random.PRNGKey(0))


def test_every_block_has_its_own_tree_with_three_parts(model_and_vars):
  model, variables = model_and_vars
  assert len(variables) == 3
  for j, v in enumerate(variables):
    assert set(v["params"]) == {"subnet", "exit_head", "commit_head"}
    first = v["params"]["subnet"]["dense_0"]["kernel"]
    assert first.shape == ((784 if j == 0 else 150), 150)
    assert v["params"]["exit_head"]["out"]["kernel"].shape == (150, 10)
    # commitment head: C hidden units, then one logit
    assert v["params"]["commit_head"]["hidden"]["kernel"].shape == (150, 10)
    assert v["params"]["commit_head"]["out"]["kernel"].shape == (10, 1)


def test_block_outputs_shapes(model_and_vars):
  model, variables = model_and_vars
  x = jnp.ones((5, 28, 28, 1))
  for block, v in zip(model.blocks, variables):
    h, logits, commit = block.apply(v, x)
    chex.assert_shape(h, (5, 150))
    chex.assert_shape(logits, (5, 10))
    chex.assert_shape(commit, (5,))
    x = h


def test_init_is_deterministic_per_seed(model_and_vars):
  model, variables = model_and_vars
  chex.assert_trees_all_equal(variables, model.init(jax.random.PRNGKey(0)))
  other = model.init(jax.random.PRNGKey(1))
  assert not np.allclose(
    other[0]["params"]["subnet"]["dense_0"]["kernel"], variables[0]["params"]["subnet"]["dense_0"]["kernel"]
  )


def test_bad_model_arguments_are_refused():
  with pytest.raises(ValueError, match="num_blocks"):
    models.mlp((28, 28, 1), 10, num_blocks=0)
  with pytest.raises(ValueError, match="unknown model"):
    models.build_model("resnet9000", (28, 28, 1), 10)


@pytest.mark.parametrize("width,layers", [(150, 1), (64, 2)])
def test_analytic_flops_match_xla(width, layers):
  model = models.mlp((28, 28, 1), 10, width=width, num_blocks=3, layers_per_block=layers)
  variables = model.init(jax.random.PRNGKey(0))
  x = jnp.ones((1, 28, 28, 1))
  for j, (block, v, cost) in enumerate(zip(model.blocks, variables, model.block_costs)):
    h = block.apply(v, x, method=Block.features)
    xla_subnet = costs.xla_flops(lambda a: block.apply(v, a, method=Block.features), x)
    xla_exit = costs.xla_flops(lambda a: block.apply(v, a, method=Block.classify), h)
    xla_commit = costs.xla_flops(lambda a: block.apply(v, a, method=Block.commit), h)
    np.testing.assert_allclose(cost.subnet, xla_subnet, rtol=0.02, err_msg=f"block {j} subnet")
    np.testing.assert_allclose(cost.exit_head, xla_exit, rtol=0.02, err_msg=f"block {j} exit")
    np.testing.assert_allclose(cost.commit_head, xla_commit, rtol=0.02, err_msg=f"block {j} commit")
    x = h

  def end_to_end(a):
    for k, block in enumerate(model.blocks):
      a = block.apply(variables[k], a, method=Block.features)
    return model.blocks[-1].apply(variables[-1], a, method=Block.classify)

  np.testing.assert_allclose(model.end_to_end_cost(), costs.xla_flops(end_to_end, jnp.ones((1, 28, 28, 1))), rtol=0.02)
  # the cascade to exit e runs blocks 0..e with every head on the way
  np.testing.assert_allclose(
    np.asarray(model.cascade_costs()), np.cumsum([c.subnet + c.exit_head + c.commit_head for c in model.block_costs])
  )


def test_layer_formulas():
  assert costs.dense_flops(784, 150) == 2 * 784 * 150 + 150
  assert costs.dense_flops(10, 1, bias=False) == 20
  # VALID: every output position has all 9 taps on the image
  assert costs.conv_flops((34, 34), 3, 3, 64, padding="VALID") == 2 * 9 * 3 * 64 * 32 * 32
  # SAME (= explicit padding 1 for a 3×3 stride-1 conv): the border positions lose their padding taps
  taps = 32 * 3 - 2
  assert costs.conv_flops((32, 32), 3, 3, 64) == costs.conv_flops((32, 32), 3, 3, 64, padding=1) == 2 * taps**2 * 3 * 64
  with pytest.raises(ValueError, match="padding"):
    costs.conv_flops((32, 32), 3, 3, 64, padding="FULL")

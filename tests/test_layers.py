"""`models.layers.Conv`: the same parameters as flax's `nn.Conv`, the same outputs and gradients whether it
convolves as patch products (what the trainer's loops use on CPU) or with XLA's convolution, for every
padding and stride the models use."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quicknets_jax.models import layers
from quicknets_jax.training.trainer import loop_convolutions

CASES = [  # (side, in channels, out channels, kernel, stride, padding)
  (28, 1, 16, 3, 1, "SAME"),
  pytest.param(7, 32, 64, 3, 1, "SAME", marks=pytest.mark.slow),  # wider channels: the same lowering
  (9, 4, 8, 3, 2, "SAME"),  # ResNet's strided 3×3 on an odd side
  pytest.param(32, 3, 8, 7, 2, ((3, 3), (3, 3)), marks=pytest.mark.slow),  # DenseNet's stem (slow to compile)
  (8, 4, 4, 1, 2, "VALID"),  # ResNet's projection shortcut
  (10, 4, 4, 3, 1, ((1, 1), (1, 1))),  # DenseNet's 3×3
]


@pytest.mark.parametrize("side,c_in,c_out,kernel,stride,padding", CASES)
def test_patch_products_equal_xlas_convolution(side, c_in, c_out, kernel, stride, padding):
  x = jax.random.normal(jax.random.PRNGKey(0), (3, side, side, c_in))
  reference = nn.Conv(c_out, (kernel, kernel), (stride, stride), padding=padding, use_bias=False)
  ours = layers.Conv(c_out, (kernel, kernel), (stride, stride), padding=padding, use_bias=False)
  variables = reference.init(jax.random.PRNGKey(1), x)
  mine = ours.init(jax.random.PRNGKey(1), x)
  assert jax.tree.structure(mine) == jax.tree.structure(variables)
  np.testing.assert_array_equal(mine["params"]["kernel"], variables["params"]["kernel"])  # same init
  outputs, grads = {}, {}
  for impl in ("patches", "native"):
    with layers.conv_implementation(impl):
      outputs[impl] = ours.apply(variables, x)
      grads[impl] = jax.grad(lambda v, a: jnp.sum(ours.apply(v, a) ** 2), argnums=(0, 1))(variables, x)
  np.testing.assert_allclose(outputs["patches"], reference.apply(variables, x), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(outputs["native"], reference.apply(variables, x))
  for a, b in zip(jax.tree.leaves(grads["patches"]), jax.tree.leaves(grads["native"])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_xlas_convolution_by_default_patch_products_in_the_trainers_loops_on_cpu():
  x = jnp.ones((1, 6, 6, 2))
  conv = layers.Conv(3, (3, 3), use_bias=False)
  variables = conv.init(jax.random.PRNGKey(0), x)
  traced = lambda a=x: str(jax.make_jaxpr(lambda v: conv.apply(v, a))(variables))
  assert "conv_general_dilated" in traced()
  tiny = jnp.ones((1, 2, 2, 2))  # where XLA:CPU's convolution is slow, "auto" takes patches on CPU
  assert ("conv_general_dilated" in traced(tiny)) == (jax.default_backend() != "cpu")
  with loop_convolutions():
    assert ("conv_general_dilated" in traced()) == (jax.default_backend() != "cpu")
  with layers.conv_implementation("patches"):
    assert "conv_general_dilated" not in traced()
  with pytest.raises(ValueError, match="conv implementation must be one of"):
    with layers.conv_implementation("winograd"):
      pass

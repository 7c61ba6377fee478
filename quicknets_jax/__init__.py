"""quicknets-jax: block-wise trained early-exit networks (QuickNets, Patel & Siegelmann 2022) in JAX/Flax.

Importing the package changes nothing in the process. `configure_cpu()` (call it before JAX starts)
turns on the XLA:CPU flags the training steps run faster with; the entry points in `experiments/`
call it themselves.
"""

from quicknets_jax.core.platform import configure_cpu

__version__ = "0.1.0"

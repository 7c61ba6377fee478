"""quicknets-jax: block-wise trained early-exit networks (QuickNets, Patel & Siegelmann 2022) in JAX/Flax.

The library knows nothing of flags: `experiments/` turns flags into a config and calls it. A user can
import the pieces directly: `quicknets_jax.models` (multi-exit models, one param tree per block),
`quicknets_jax.train` (the one trainer), `quicknets_jax.quicknet` (Algorithm 1),
`quicknets_jax.exits` (the vectorized early-exit evaluator) and `quicknets_jax.flops` (cost accounting).
"""

__version__ = "0.1.0"

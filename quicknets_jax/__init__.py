"""quicknets-jax: block-wise trained early-exit networks (QuickNets, Patel & Siegelmann 2022) in JAX/Flax.

The package is in layers, each a folder that imports only from the ones below it:

    runs/                 whole runs in a workdir: configs, comparison, study, ablation, metrics, report
    algorithms/  reporting/   Algorithm 1, commitment heads, end-to-end, SDN, cascade  |  tables, figures
    training/             the one trainer, schedule, losses, data parallelism, checkpoints
    models/  data/        multi-exit Linen models  |  datasets, splits, sampling, augmentation
    core/                 the exit rule, costs (every FLOP formula), curves, calibration, configs

The library knows nothing of flags: `experiments/` turns flags into a config and calls it. A user can
import the pieces directly: `quicknets_jax.models` (multi-exit models), `quicknets_jax.training.trainer`
(the one trainer), `quicknets_jax.algorithms.quicknet` (Algorithm 1), `quicknets_jax.core.exits` (the
vectorized early-exit evaluator) and `quicknets_jax.core.costs` (cost accounting).
"""

import os

__version__ = "0.1.0"

# XLA:CPU runs this project's training steps faster with XNNPACK enabled (BUILD.md "Speed": +7 % on the
# MLP's, +17 % on the reduced VGG-11's, results bit-identical). The flag concerns the CPU backend only,
# and JAX reads XLA_FLAGS when it starts a backend: importing this package before the first computation
# sets it — unless XLA_FLAGS already names it, or QUICKNETS_JAX_CPU_FLAGS=0.
CPU_FLAGS = ("--xla_cpu_use_xnnpack=true",)
if os.environ.get("QUICKNETS_JAX_CPU_FLAGS", "1") != "0":
  _flags = os.environ.get("XLA_FLAGS", "")
  _missing = [f for f in CPU_FLAGS if f.split("=")[0] not in _flags]
  if _missing:
    os.environ["XLA_FLAGS"] = " ".join([_flags, *_missing]).strip()

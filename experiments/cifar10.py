"""`python -m experiments.cifar10 --flagfile=experiments/configs/cifar10.flags --workdir=DIR`: VGG-11
QuickNet (8 exits) vs end-to-end VGG-11 on CIFAR-10 (paper Table 1, Appendix A).

Data: `--data_source=cifar_tar --data_dir=DIR` with cifar-10-python.tar.gz, or a prepared TFDS
`cifar10`. Every batch is split over all local devices (`--nodata_parallel` to stay on one);
`--distributed` first calls `jax.distributed.initialize()` for a multi-host TPU slice. After training,
results.json gains `flops_check`: every block's analytic forward FLOPs beside XLA's count.
"""

import json
import os

from absl import app

from experiments import common

common.define_flags("cifar10")
FLAGS = common.FLAGS


def flops_check(model) -> dict:
  """Analytic vs XLA (`cost_analysis`) forward FLOPs per sample of each block (subnet + exit + commitment
  head, compiled together) and of the end-to-end network, with their relative difference."""
  import jax
  import jax.numpy as jnp

  from quicknets_jax.flops import xla_flops
  from quicknets_jax.models.base import Block

  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0)))
  x = jax.ShapeDtypeStruct((1, *model.input_shape), jnp.float32)
  blocks = []
  for block, v, cost in zip(model.blocks, variables, model.block_costs):
    counted = xla_flops(lambda v, a, b=block: b.apply(v, a), v, x)
    blocks.append(dict(analytic=cost.total, xla=counted, relative_difference=cost.total / counted - 1,
                       analytic_parts=dict(subnet=cost.subnet, exit_head=cost.exit_head,
                                           commit_head=cost.commit_head)))
    x = jax.eval_shape(lambda v, a, b=block: b.apply(v, a, method=Block.features), v, x)

  def end_to_end(variables, a):
    for block, v in zip(model.blocks[:-1], variables[:-1]):
      a = block.apply(v, a, method=Block.features)
    return model.blocks[-1].apply(variables[-1], a, method=Block.features_and_logits)[1]

  counted = xla_flops(end_to_end, variables, jax.ShapeDtypeStruct((1, *model.input_shape), jnp.float32))
  analytic = model.end_to_end_cost()
  return dict(convention="forward FLOPs per sample; conv taps on zero padding are not counted (as XLA)",
              blocks=blocks, end_to_end=dict(analytic=analytic, xla=counted,
                                             relative_difference=analytic / counted - 1))


def main(argv) -> None:
  common.run(argv)
  from quicknets_jax import data as data_lib
  from quicknets_jax import models
  path = os.path.join(FLAGS.workdir, "results.json")
  with open(path) as f:
    results = json.load(f)
  config = common.config_from_flags()
  shape = (32, 32, 3) if config.dataset == "cifar10" else (28, 28, 1)
  num_classes = len(data_lib.CLASS_NAMES[config.dataset])
  model = models.build_model(config.model, shape, num_classes, **config.model_kwargs())
  results["flops_check"] = flops_check(model)
  with open(path, "w") as f:
    json.dump(results, f, indent=1)
  worst = max(abs(b["relative_difference"]) for b in results["flops_check"]["blocks"])
  print(f"FLOPs check: analytic vs XLA per block within {100 * worst:.2f}% (results.json flops_check)")


if __name__ == "__main__":
  app.run(main)

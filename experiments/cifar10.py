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
from quicknets_jax.flops import flops_check

common.define_flags("cifar10")
FLAGS = common.FLAGS


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

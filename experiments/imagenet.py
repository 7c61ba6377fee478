"""`python -m experiments.imagenet --flagfile=experiments/configs/imagenet.flags --workdir=DIR`: DenseNet-121
QuickNet (4 blocks, an exit after each dense block) vs end-to-end DenseNet-121 on ImageNet (paper §4.5,
Table 2).

Data: a prepared TFDS `imagenet2012` (array_record; it needs the manual download — the error says how),
in `--data_dir` or TFDS's default directory. Images are resized to `--image_size`² (default 224) as
they are read and held in memory, so `--max_train` picks how many training records are read (see
BUILD.md "DenseNet-121 on ImageNet"). Every batch is split over all local devices (`--nodata_parallel`
to stay on one); `--distributed` first calls `jax.distributed.initialize()` for a multi-host slice.
After training, results.json gains `flops_check`: every block's analytic forward FLOPs beside XLA's.
"""

import json
import os

from absl import app

from experiments import common
from quicknets_jax.flops import flops_check

common.define_flags("imagenet2012")
FLAGS = common.FLAGS


def main(argv) -> None:
  common.run(argv)
  from quicknets_jax import data as data_lib
  from quicknets_jax import models
  path = os.path.join(FLAGS.workdir, "results.json")
  with open(path) as f:
    results = json.load(f)
  config = common.config_from_flags()
  if config.dataset in data_lib.DEFAULT_IMAGE_SIZE:
    size = config.image_size or data_lib.DEFAULT_IMAGE_SIZE[config.dataset]
    shape = (size, size, 3)
  else:  # the other datasets have one image size
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

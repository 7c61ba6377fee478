"""`python -m experiments.cifar10 --flagfile=experiments/configs/cifar10.flags --workdir=DIR`: VGG-11
QuickNet (8 exits) vs end-to-end VGG-11 on CIFAR-10 (paper Table 1, Appendix A).

Data: `--data_source=cifar_tar --data_dir=DIR` with cifar-10-python.tar.gz, or a prepared TFDS
`cifar10`. Every batch is split over all local devices (`--nodata_parallel` to stay on one);
`--distributed` first calls `jax.distributed.initialize()` for a multi-host TPU slice. After training,
results.json gains `flops_check`: every block's analytic forward FLOPs beside XLA's count.
"""

from absl import app

from experiments import common

common.define_flags("cifar10", flops_check=True)

if __name__ == "__main__":
  app.run(common.main)

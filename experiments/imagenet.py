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

from absl import app

from experiments import common

common.define_flags("imagenet2012", flops_check=True)

if __name__ == "__main__":
  app.run(common.main)

"""`python -m experiments.write_records --dataset=NAME --out=DIR [--data_source --data_dir]`: writes a
dataset's local copy (IDX files, the CIFAR-10 tarball, a prepared TFDS copy) as a record directory of
array_record files, the input `--input=stream --records_dir=DIR` reads (README "Streaming input").
"""

from __future__ import annotations

import time

from absl import app, flags

from experiments.flags import fail, start_process
from quicknets_jax.core.progress import stderr_log
from quicknets_jax.data import datasets
from quicknets_jax.data.errors import DataError

flags.DEFINE_enum("dataset", "fashion_mnist", ("mnist", "fashion_mnist", "cifar10"), "Dataset to write.")
flags.DEFINE_string("out", None, "Record directory to write (train/test.array_record, meta.json).", required=True)
flags.DEFINE_enum("data_source", "auto", datasets.SOURCES, "Where the dataset is read from (as the experiments).")
flags.DEFINE_string("data_dir", None, "Directory of the local copy (as the experiments' --data_dir).")
FLAGS = flags.FLAGS


def main(argv) -> None:
  del argv
  start_process(interruptible=False, output_dirs=("out",))
  start = time.perf_counter()
  try:
    meta = datasets.write_dataset_records(FLAGS.dataset, FLAGS.out, FLAGS.data_source, FLAGS.data_dir)
  except (DataError, ValueError, OSError) as e:
    fail(str(e))
  counts = ", ".join(f"{split} {n}" for split, n in meta["counts"].items())
  stderr_log(f"wrote {FLAGS.dataset} ({counts} records) to {FLAGS.out} in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
  app.run(main)

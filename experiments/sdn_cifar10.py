"""`python -m experiments.sdn_cifar10 --flagfile=experiments/configs/sdn_cifar10.flags --workdir=DIR --data_dir=D`.

Paper §4.4 / Fig. 4: a ResNet-56 Shallow-Deep Network (7 exits) trained on CIFAR-10 with SDN's
weighted joint loss through the one trainer, commitment heads trained on its frozen exits, then the
three exit rules' cost–accuracy curves, AUCs, matched-budget accuracies and per-exit calibration
(WORKDIR/results.json, results.md). The full config is for a GPU with CIFAR-10
(`--data_source=cifar_tar --data_dir=DIR/cifar-10-python.tar.gz`, or tfds on a networked machine).

`--smoke_tarball=PATH` writes a tiny stand-in tarball of random images in the real cifar-10-python
format at PATH (if absent) and runs on it: a CPU pipeline check with no network, whose numbers mean
nothing (results.json says so).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from absl import app, flags

from experiments import commitment_study
from experiments.flags import start_process
from quicknets_jax.data.cifar import write_cifar_tar

FLAGS = flags.FLAGS


def write_smoke_tarball(path: str, num_train: int = 240, num_test: int = 80, seed: int = 0) -> None:
  """A stand-in CIFAR-10 tarball of random uint8 images and labels (pipeline checks only)."""
  rng = np.random.default_rng(seed)
  images = lambda n: rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
  labels = lambda n: rng.integers(0, 10, size=n).astype(np.int64)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  write_cifar_tar(path, images(num_train), labels(num_train), images(num_test), labels(num_test))


def main(argv) -> None:
  del argv
  start_process(interruptible=True, output_dirs=("workdir",))
  overrides = dict(methods=("joint",))
  if FLAGS.smoke_tarball:
    if not os.path.exists(FLAGS.smoke_tarball) and not FLAGS.print_config:
      write_smoke_tarball(FLAGS.smoke_tarball)
    overrides.update(data_source="cifar_tar", data_dir=FLAGS.smoke_tarball)
  config = commitment_study.study_config_from_flags(**overrides)
  commitment_study.run_from_flags(dataclasses.replace(config, smoke=bool(FLAGS.smoke_tarball)))


if __name__ == "__main__":
  commitment_study.define_study_flags("cifar10", "resnet_sdn", "joint")
  flags.DEFINE_string(
    "smoke_tarball",
    None,
    "Write (if absent) and use a tiny random stand-in tarball at this path: a pipeline check, not a result.",
  )
  app.run(main)

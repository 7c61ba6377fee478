"""`python -m experiments.quicknet_plus --workdir=runs/quicknet_plus`: the QuickNet+ ablation.

Trains, on the real Fashion-MNIST and the same seeds, the end-to-end baseline, the faithful QuickNet,
each QuickNet+ lever alone and the combination chosen on validation (`quicknets_jax.workflows.ablation`),
then writes WORKDIR/ablation.json and ablation.md (the README table).
"""

from __future__ import annotations

import os

from absl import app, flags

from experiments.flags import one_line_errors, seeds_from_flag, start_process
from quicknets_jax.core.progress import stderr_log
from quicknets_jax.workflows.ablation import run_ablation

flags.DEFINE_string("workdir", None, "Where every variant's run and ablation.json/.md go.", required=True)
flags.DEFINE_list("seeds", ["0", "1", "2", "3", "4"], "Seeds of every variant.")
flags.DEFINE_string("data_dir", None, "Optional directory with the four IDX files (default: Debian's copy).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  start_process(interruptible=True, output_dirs=("workdir",))
  seeds = seeds_from_flag(FLAGS.seeds)
  with one_line_errors(stderr_log) as log:
    run_ablation(FLAGS.workdir, seeds, FLAGS.data_dir, log=log)
  with open(os.path.join(FLAGS.workdir, "ablation.md")) as f:
    print(f.read())


if __name__ == "__main__":
  app.run(main)

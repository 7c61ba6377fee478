"""`python -m experiments.conv_study --workdir=runs/conv --mnist_dir=/tmp/mnist_idx`: the convolutional
QuickNet against its end-to-end VGG on the real Fashion-MNIST and MNIST (docs/results_conv.md).

Every setting comes from flagfiles fixed before any run: `configs/fashion_mnist_vgg.flags` and
`configs/mnist_vgg.flags` (the comparison, deploy curve on), `configs/commitment_study_vgg.flags` (the
jointly trained conv net), and `workflows.conv_study.VARIANTS` (the QuickNet+ variants, one chosen on
validation). Each part is an ordinary resumable run under WORKDIR/; WORKDIR/conv_study.json and .md
collect them and WORKDIR/figures/ gets the figures (also `--figures_dir`, e.g. docs/figures). Without
--mnist_dir (the four IDX files, `bash scripts/fetch_mnist.sh /tmp/mnist_idx`) MNIST is left out.
"""

from __future__ import annotations

import os

from absl import app, flags

from experiments.conv_configs import CONFIGS, commitment_config, experiment_config
from experiments.flags import check_known, fail, one_line_errors, seeds_from_flag, start_process
from quicknets_jax.core.progress import stderr_log
from quicknets_jax.workflows.conv_study import VARIANTS, render_figures, run_conv_study

PARTS = ("fashion_mnist", "mnist", "plus", "commitment")

flags.DEFINE_string("workdir", None, "Where every part's run, conv_study.json/.md and figures/ go.", required=True)
flags.DEFINE_string("mnist_dir", None, "Directory with the real MNIST's four IDX files; without it MNIST is left out.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of every part (paired: the same for all).")
flags.DEFINE_list("parts", list(PARTS), f"Parts to run, of {', '.join(PARTS)}.")
flags.DEFINE_integer("speed_repeats", 11, "Timed rounds of the cascade-vs-end-to-end inference comparison.")
flags.DEFINE_string("figures_dir", None, "Also write the figures here (e.g. docs/figures).")
flags.DEFINE_string("configs_dir", CONFIGS, "Where the study's flagfiles are (tests point it at smoke-sized ones).")
FLAGS = flags.FLAGS


def main(argv) -> None:
  del argv
  start_process(interruptible=True, output_dirs=("workdir", "figures_dir"))
  seeds = seeds_from_flag(FLAGS.seeds)
  check_known(FLAGS.parts, PARTS, "parts")
  experiments = {}
  if "fashion_mnist" in FLAGS.parts:
    experiments["fashion_mnist"] = experiment_config("fashion_mnist", seeds, configs_dir=FLAGS.configs_dir)
  if "mnist" in FLAGS.parts and FLAGS.mnist_dir:
    experiments["mnist"] = experiment_config("mnist", seeds, FLAGS.mnist_dir, FLAGS.configs_dir)
  elif "mnist" in FLAGS.parts:
    stderr_log("no --mnist_dir: MNIST is left out (bash scripts/fetch_mnist.sh /tmp/mnist_idx, then pass it)")
  if not experiments:
    fail("nothing to compare: --parts needs fashion_mnist or mnist (with --mnist_dir)")
  variants = VARIANTS if "plus" in FLAGS.parts and "fashion_mnist" in experiments else None
  commitment = commitment_config(seeds, FLAGS.configs_dir) if "commitment" in FLAGS.parts else None
  with one_line_errors(stderr_log) as log:
    summary = run_conv_study(
      FLAGS.workdir, experiments, variants, commitment, log=log, speed_repeats=FLAGS.speed_repeats
    )
  for directory in filter(None, (os.path.join(FLAGS.workdir, "figures"), FLAGS.figures_dir)):
    for path in render_figures(FLAGS.workdir, summary, directory):
      stderr_log(f"wrote {path}")
  with open(os.path.join(FLAGS.workdir, "conv_study.md")) as f:
    print(f.read())


if __name__ == "__main__":
  app.run(main)

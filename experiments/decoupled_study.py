"""`python -m experiments.decoupled_study --workdir=runs/decoupled --mnist_dir=/tmp/mnist_idx`: sequential
QuickNet, decoupled QuickNet (`--schedule=decoupled`) and end-to-end training of the Table-1 MLP and the
conv VGG-11/8 on the real Fashion-MNIST and MNIST, 3 paired seeds; one-device wall-clock measured, the
K-device wall-clock modelled (docs/decoupled.md).

The configs are the Table-1 job's (`configs/fashion_mnist_paper.flags`, `configs/mnist_paper.flags`) and the
conv study's (`configs/<dataset>_vgg.flags`), each with the deployable cascade measured after every epoch;
the decoupled runs change only `--schedule`. `--conv_dir=runs/conv` reads the conv comparisons from a
finished `experiments.conv_study` run of the same configs instead of training them again. On the
Fashion-MNIST MLP the decoupled run is repeated with the learned rule refreshed once an epoch
(`--decoupled_refresh=epoch`) to measure that choice. The paper's CIFAR-10 VGG-11 (which cannot be trained
here) is modelled on K devices from its step times measured on this machine and the Fashion-MNIST
VGG-11/8 part's epochs (`--model_cifar10_vgg11`). About 1 h 20 min on 2 CPU cores with --conv_dir.
"""

from __future__ import annotations

import os

from absl import app, flags

from experiments.conv_configs import CONFIGS, experiment_config
from experiments.flags import check_known, fail, flagfile_settings, one_line_errors, seeds_from_flag, start_process
from quicknets_jax.algorithms.pipeline_cost import Interconnect
from quicknets_jax.core.progress import stderr_log
from quicknets_jax.reporting import figures
from quicknets_jax.workflows.decoupled_study import DeviceModel, ModelledNetwork, run_decoupled_study
from quicknets_jax.workflows.experiment_config import ExperimentConfig

PARTS = ("fashion_mnist_mlp", "mnist_mlp", "fashion_mnist_vgg", "mnist_vgg")
FIGURE = "decoupled_schedules.png"

flags.DEFINE_string("workdir", None, "Where every run, decoupled_study.json/.md and the figure go.", required=True)
flags.DEFINE_string("mnist_dir", None, "Directory with the real MNIST's four IDX files; without it MNIST is left out.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of every part (paired: the same for all).")
flags.DEFINE_list("parts", list(PARTS), f"Parts to run, of {', '.join(PARTS)}.")
flags.DEFINE_string("conv_dir", None, "A conv study's workdir whose <dataset>/ comparisons the conv parts read back.")
flags.DEFINE_list(
  "refresh_parts", ["fashion_mnist_mlp"], "Parts whose decoupled run is repeated with --decoupled_refresh=epoch."
)
flags.DEFINE_list(
  "vgg_decoupled_seeds",
  None,
  "Seeds of the VGG parts' decoupled runs, when fewer than --seeds (each can take up to 100 epochs); default: --seeds.",
)
flags.DEFINE_integer("max_devices", 8, "The largest number of devices the wall-clock model considers.")
flags.DEFINE_float("link_gbps", 10.0, "The modelled device-to-device link, GB/s.")
flags.DEFINE_float("link_latency_us", 20.0, "The modelled cost of one transfer, µs.")
flags.DEFINE_string("figures_dir", None, "Also write the figure here (e.g. docs/figures).")
flags.DEFINE_bool(
  "model_cifar10_vgg11",
  True,
  "Also model the paper's CIFAR-10 VGG-11 (configs/cifar10.flags) on K devices: its steps timed here, "
  "the epochs of the Fashion-MNIST VGG-11/8 part (needs that part).",
)
flags.DEFINE_string("configs_dir", CONFIGS, "Where the flagfiles are (tests point it at smoke-sized ones).")
FLAGS = flags.FLAGS


def part_config(part: str, seeds: tuple, mnist_dir, configs_dir: str = CONFIGS) -> ExperimentConfig:
  """The sequential comparison of one part, with the deployable cascade measured after every epoch.

  Args:
    part: one of `PARTS`.
    seeds: the seeds.
    mnist_dir: the MNIST IDX files' directory (MNIST parts).
    configs_dir: where the flagfiles are.

  Returns:
    The part's `ExperimentConfig`.
  """
  dataset, network = part.rsplit("_", 1)
  data_dir = mnist_dir if dataset == "mnist" else None
  if network == "vgg":
    return experiment_config(dataset, seeds, data_dir, configs_dir)
  settings = flagfile_settings(ExperimentConfig, os.path.join(configs_dir, f"{dataset}_paper.flags"))
  return ExperimentConfig().replace(**settings).replace(seeds=seeds, data_dir=data_dir, deploy_curve=True)


def main(argv) -> None:
  del argv
  start_process(interruptible=True, output_dirs=("workdir", "figures_dir"))
  seeds = seeds_from_flag(FLAGS.seeds)
  check_known(FLAGS.parts, PARTS, "parts")
  check_known(FLAGS.refresh_parts, PARTS, "refresh_parts")
  names = [p for p in FLAGS.parts if not p.startswith("mnist") or FLAGS.mnist_dir]
  if len(names) < len(FLAGS.parts):
    stderr_log(
      "no --mnist_dir: the MNIST parts are left out (bash scripts/fetch_mnist.sh /tmp/mnist_idx, then pass it)"
    )
  if not names:
    fail("nothing to run: --parts needs a Fashion-MNIST part, or --mnist_dir for the MNIST ones")
  if FLAGS.conv_dir is not None and not os.path.isdir(FLAGS.conv_dir):
    fail(f"--conv_dir={FLAGS.conv_dir} is not a directory: pass a conv study's --workdir, or leave it out")
  parts = {p: part_config(p, seeds, FLAGS.mnist_dir, FLAGS.configs_dir) for p in names}
  base_dirs = {}
  if FLAGS.conv_dir is not None:
    base_dirs = {p: os.path.join(FLAGS.conv_dir, p.rsplit("_", 1)[0]) for p in names if p.endswith("_vgg")}
  link = Interconnect(FLAGS.link_gbps * 1e9, FLAGS.link_latency_us * 1e-6)
  decoupled_seeds = {}
  if FLAGS.vgg_decoupled_seeds:
    vgg_seeds = seeds_from_flag(FLAGS.vgg_decoupled_seeds)
    if not set(vgg_seeds) <= set(seeds):
      fail(f"--vgg_decoupled_seeds={','.join(map(str, vgg_seeds))}: pick them from --seeds, to pair them")
    decoupled_seeds = {p: vgg_seeds for p in names if p.endswith("_vgg")}
  modelled = {}
  if FLAGS.model_cifar10_vgg11 and "fashion_mnist_vgg" in parts:
    cifar = ExperimentConfig().replace(**flagfile_settings(ExperimentConfig, os.path.join(CONFIGS, "cifar10.flags")))
    modelled["CIFAR-10 VGG-11 (the paper's)"] = ModelledNetwork(
      model=cifar.model.build((32, 32, 3), 10),
      batch_size=cifar.fit.batch_size,
      sizes=(45000, 5000),
      epochs_from="fashion_mnist_vgg",
    )
  with one_line_errors(stderr_log) as log:
    summary = run_decoupled_study(
      FLAGS.workdir,
      parts,
      base_dirs=base_dirs,
      refresh_parts=[p for p in FLAGS.refresh_parts if p in parts],
      devices=DeviceModel(max_devices=FLAGS.max_devices, link=link),
      modelled=modelled,
      decoupled_seeds=decoupled_seeds,
      log=log,
    )
  fig = figures.schedules_figure(summary)
  for directory in filter(None, (FLAGS.workdir, FLAGS.figures_dir)):
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, FIGURE)
    fig.savefig(path, dpi=figures.DPI)
    stderr_log(f"wrote {path}")
  with open(os.path.join(FLAGS.workdir, "decoupled_study.md")) as f:
    print(f.read())


if __name__ == "__main__":
  app.run(main)

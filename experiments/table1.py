"""`python -m experiments.table1 --workdir=runs/table1`: the paper's Table 1 under both readings (issue 14).

Network {784-150-150-150 (Appendix A's text), 784-150-100-50 with the authors' commitment heads (the
network Table 1's parameter counts fit: `configs/table1_network.flags`)} × schedule {Appendix A as we
read it (the defaults), the authors' code (`configs/authors_schedule.flags`)} on the real Fashion-MNIST,
and the Table-1 network under both schedules on the real MNIST (`--mnist_dir`, e.g. after `bash
scripts/fetch_mnist.sh /tmp/mnist_idx`). Every cell is an ordinary experiment run in WORKDIR/<cell>/
with the same seeds (so a stopped study resumes where it was); WORKDIR/table1.json and table1.md
collect them. Every setting comes from those flagfiles, fixed before any run; every exit threshold is
chosen on the validation split.
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from experiments.flags import check_known, flagfile_settings, one_line_errors, seeds_from_flag, start_process
from quicknets_jax.core.progress import stderr_log
from quicknets_jax.reporting.tables import table1_markdown, table1_row
from quicknets_jax.workflows.experiment import train_and_evaluate
from quicknets_jax.workflows.experiment_config import ExperimentConfig

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
NETWORKS = {"150-150-150": None, "150-100-50": os.path.join(CONFIGS, "table1_network.flags")}
SCHEDULES = {"appendix": None, "authors": os.path.join(CONFIGS, "authors_schedule.flags")}

flags.DEFINE_string("workdir", None, "Where every cell's run and table1.json/.md go.", required=True)
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of every cell (the same for all).")
flags.DEFINE_string(
  "mnist_dir",
  None,
  "Directory with the real MNIST's IDX files (scripts/fetch_mnist.sh); without it the MNIST cells are left out.",
)
flags.DEFINE_list("mnist_networks", ["150-100-50"], f"Networks run on MNIST too (of {', '.join(NETWORKS)}).")
FLAGS = flags.FLAGS


def cell_config(dataset: str, network: str, schedule: str, seeds: tuple, data_dir=None) -> ExperimentConfig:
  """The config of one cell: the defaults, then the network's and the schedule's flagfiles."""
  settings = {}
  for path in (NETWORKS[network], SCHEDULES[schedule]):
    if path is not None:
      settings.update(flagfile_settings(ExperimentConfig, path))
  return ExperimentConfig().replace(dataset=dataset, data_dir=data_dir, seeds=seeds, **settings)


def cells(mnist: bool, mnist_networks) -> list:
  """(dataset, network, schedule) of every cell, Fashion-MNIST's 2 × 2 first."""
  out = [("fashion_mnist", n, s) for n in NETWORKS for s in SCHEDULES]
  if mnist:
    out += [("mnist", n, s) for n in mnist_networks for s in SCHEDULES]
  return out


def main(argv) -> None:
  del argv
  start_process(interruptible=True, output_dirs=("workdir",))
  seeds = seeds_from_flag(FLAGS.seeds)
  check_known(FLAGS.mnist_networks, NETWORKS, "mnist_networks")
  os.makedirs(FLAGS.workdir, exist_ok=True)
  rows = []
  for dataset, network, schedule in cells(FLAGS.mnist_dir is not None, FLAGS.mnist_networks):
    name = f"{dataset}_{network}_{schedule}"
    stderr_log(f"== {name}")
    data_dir = FLAGS.mnist_dir if dataset == "mnist" else None
    with one_line_errors(stderr_log) as log:
      config = cell_config(dataset, network, schedule, seeds, data_dir)
      results = train_and_evaluate(config, os.path.join(FLAGS.workdir, name), log=log)
    rows.append(table1_row(results, network, schedule))
  with open(os.path.join(FLAGS.workdir, "table1.json"), "w") as f:
    json.dump(dict(seeds=list(seeds), rows=rows), f, indent=1)
  text = table1_markdown(rows)
  with open(os.path.join(FLAGS.workdir, "table1.md"), "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  app.run(main)

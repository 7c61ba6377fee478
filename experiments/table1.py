"""`python -m experiments.table1 --workdir=runs/table1`: the paper's Table 1 under several recipes.

Network {784-150-150-150 (Appendix A's text), 784-150-100-50 with the authors' commitment heads (the
network Table 1's parameter counts fit: `configs/table1_network.flags`)} × recipe on the real
Fashion-MNIST, and the Table-1 network under every recipe on the real MNIST (`--mnist_dir`, e.g. after
`bash scripts/fetch_mnist.sh /tmp/mnist_idx`). The recipes (`RECIPES`):

- `appendix`: Appendix A as read here (the defaults: plateaus and early stopping on the validation loss);
- `authors`: the authors' public code (`configs/authors_schedule.flags`: training-loss stopping, weight
  decay, the random affine transform, batch 64, full-size class-balanced epochs, sampled commitment
  balance, learned = commitment probability > 0.8);
- `authors_no_affine`: the authors' code without the affine transform (the one switch the end-to-end
  network's training loss also sees);
- `appendix_train_loss` and `appendix_train_loss_wd`: Appendix A with only the stopping rule switched to
  the training loss, without and with the authors' weight decay 5e-4.

The last three separate the stopping rule from the augmentation; they run on the Table-1 network only.
Every cell is an ordinary experiment run in WORKDIR/<cell>/ with the same seeds (so a stopped study
resumes where it was); WORKDIR/table1.json and table1.md collect them. Every setting comes from those
flagfiles and `RECIPES`, fixed before any run; every exit threshold is chosen on the validation split.
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
AUTHORS = os.path.join(CONFIGS, "authors_schedule.flags")
# recipe -> (flagfile or None, overrides after it)
RECIPES = {
  "appendix": (None, {}),
  "authors": (AUTHORS, {}),
  "authors_no_affine": (AUTHORS, dict(augment=False, augmentation="crop_flip", cache_features=True)),
  "appendix_train_loss": (None, dict(monitor="train_loss")),
  "appendix_train_loss_wd": (None, dict(monitor="train_loss", weight_decay=5e-4)),
}
# the recipes that separate the stopping rule from the augmentation run on the Table-1 network only
BOTH_NETWORKS = ("appendix", "authors")

flags.DEFINE_string("workdir", None, "Where every cell's run and table1.json/.md go.", required=True)
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of every cell (the same for all).")
flags.DEFINE_string(
  "mnist_dir",
  None,
  "Directory with the real MNIST's IDX files (scripts/fetch_mnist.sh); without it the MNIST cells are left out.",
)
flags.DEFINE_list("mnist_networks", ["150-100-50"], f"Networks run on MNIST too (of {', '.join(NETWORKS)}).")
flags.DEFINE_list("recipes", list(RECIPES), f"Recipes to run (of {', '.join(RECIPES)}).")
FLAGS = flags.FLAGS


def cell_config(dataset: str, network: str, recipe: str, seeds: tuple, data_dir=None) -> ExperimentConfig:
  """The config of one cell: the defaults, then the network's flagfile, the recipe's flagfile and overrides.

  Args:
    dataset: "fashion_mnist" or "mnist".
    network: a key of `NETWORKS`.
    recipe: a key of `RECIPES`.
    seeds: the seeds of the cell.
    data_dir: where the dataset's files are (None: the default place).

  Returns:
    The cell's `ExperimentConfig`.
  """
  flagfile, overrides = RECIPES[recipe]
  settings = {}
  for path in (NETWORKS[network], flagfile):
    if path is not None:
      settings.update(flagfile_settings(ExperimentConfig, path))
  settings.update(overrides)
  return ExperimentConfig().replace(dataset=dataset, data_dir=data_dir, seeds=seeds, **settings)


def cells(mnist: bool, mnist_networks, recipes=tuple(RECIPES)) -> list:
  """(dataset, network, recipe) of every cell, Fashion-MNIST's first.

  Args:
    mnist: whether the MNIST cells are run.
    mnist_networks: the networks run on MNIST.
    recipes: the recipes to run.

  Returns:
    The cells in running order: per dataset, both networks under `BOTH_NETWORKS`' recipes, then the
    Table-1 network under the others.
  """

  def of(dataset, networks):
    out = [(dataset, n, r) for n in networks for r in BOTH_NETWORKS if r in recipes]
    table1_network = "150-100-50" in networks
    return out + [(dataset, "150-100-50", r) for r in recipes if r not in BOTH_NETWORKS and table1_network]

  out = of("fashion_mnist", list(NETWORKS))
  if mnist:
    out += of("mnist", list(mnist_networks))
  return out


def main(argv) -> None:
  del argv
  start_process(interruptible=True, output_dirs=("workdir",))
  seeds = seeds_from_flag(FLAGS.seeds)
  check_known(FLAGS.mnist_networks, NETWORKS, "mnist_networks")
  check_known(FLAGS.recipes, RECIPES, "recipes")
  os.makedirs(FLAGS.workdir, exist_ok=True)
  rows = []
  for dataset, network, schedule in cells(FLAGS.mnist_dir is not None, FLAGS.mnist_networks, FLAGS.recipes):
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

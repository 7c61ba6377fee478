"""`python -m experiments.commitment_study --flagfile=experiments/configs/commitment_study.flags --workdir=DIR`.

Paper §4.4 on the real Fashion-MNIST: a jointly trained multi-exit MLP (SDN loss) with commitment heads
added to its frozen exits, and the QuickNet; three exit rules' cost–accuracy curves, their areas,
accuracy at matched budgets and the per-exit calibration table, mean ± std over seeds
(WORKDIR/results.json and results.md). The flags are `StudyConfig`'s; `sdn_cifar10.py` shares them.
"""

from __future__ import annotations

import json

from absl import app, flags

from experiments.flags import config_from_flags, define_config_flags, one_line_errors, start_process
from quicknets_jax.core.progress import stderr_log
from quicknets_jax.workflows.experiment_config import StudyConfig
from quicknets_jax.workflows.study import run_study

FLAGS = flags.FLAGS


def define_study_flags(dataset: str, model: str, methods: str) -> None:
  """Flags of a commitment study; the arguments are the defaults of --dataset, --model and --methods."""
  flags.DEFINE_string("workdir", None, "Where per-seed results, results.json and results.md go.", required=True)
  flags.DEFINE_bool("overwrite", False, "Start over in a workdir that holds a run with another config.")
  flags.DEFINE_bool("print_config", False, "Print the settings the flags make (config.json's form) and exit.")
  define_config_flags(StudyConfig, defaults=dict(dataset=dataset, model=model, methods=tuple(methods.split(","))))


def study_config_from_flags(**overrides) -> StudyConfig:
  """Reads the flags into a StudyConfig (plus `overrides` by flat name); bad values exit in one line."""
  return config_from_flags(StudyConfig, **overrides)


def run_from_flags(config: StudyConfig) -> None:
  """train → analyse → write; data and config errors become one line on stderr, exit 1."""
  if FLAGS.print_config:
    print(json.dumps(config.to_json(), indent=1))
    return
  with one_line_errors(stderr_log) as log:
    run_study(config, FLAGS.workdir, log=log, overwrite=FLAGS.overwrite)
  with open(f"{FLAGS.workdir}/results.md") as f:
    print(f.read())


def main(argv) -> None:
  del argv
  start_process(interruptible=True, output_dirs=("workdir",))
  run_from_flags(study_config_from_flags())


if __name__ == "__main__":
  define_study_flags("fashion_mnist", "mlp", "joint,quicknet")
  app.run(main)

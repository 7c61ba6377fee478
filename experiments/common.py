"""What the comparison entry points share: their flags (generated from `ExperimentConfig`) and `main`."""

from __future__ import annotations

import json

import jax
from absl import flags

from experiments.flags import config_from_flags as _from_flags
from experiments.flags import define_config_flags, fail, one_line_errors, start_process
from quicknets_jax.core.progress import stderr_log
from quicknets_jax.data.datasets import CLASS_NAMES
from quicknets_jax.models.xla_check import flops_check
from quicknets_jax.training import parallel
from quicknets_jax.workflows.experiment import train_and_evaluate
from quicknets_jax.workflows.experiment_config import ExperimentConfig
from quicknets_jax.workflows.workdir import read_json, write_json

FLAGS = flags.FLAGS


def define_flags(dataset: str, flops_check: bool = False) -> None:
  """Defines every flag of a QuickNet vs end-to-end run; `dataset` is the default dataset, `flops_check`
  the default of --flops_check."""
  flags.DEFINE_string("workdir", None, "Where checkpoints, results.json and results.md go.", required=True)
  flags.DEFINE_bool("overwrite", False, "Start over in a workdir that holds a run with another config.")
  flags.DEFINE_bool(
    "data_parallel", True, "Split every batch over all local devices (params replicated) when there is more than one."
  )
  flags.DEFINE_integer(
    "num_devices",
    None,
    "Data parallel over the first N devices (default: all visible). A run may resume on another count: "
    "checkpoints hold host arrays, replicated onto the current mesh when read (BUILD.md, elastic resume).",
    lower_bound=1,
  )
  flags.DEFINE_bool(
    "distributed",
    False,
    "Multi-host (e.g. a TPU pod slice): call "
    "jax.distributed.initialize() first; the mesh then spans every host's devices.",
  )
  flags.DEFINE_string(
    "coordinator_address",
    None,
    "With --distributed off Cloud TPU: host:port of process 0's coordinator (e.g. 10.0.0.2:8476).",
  )
  flags.DEFINE_integer("num_processes", None, "With --distributed off Cloud TPU: how many processes.", lower_bound=1)
  flags.DEFINE_integer(
    "process_id", None, "With --distributed off Cloud TPU: this process's id, 0..n-1.", lower_bound=0
  )
  flags.DEFINE_integer(
    "heartbeat_timeout",
    100,
    "With --distributed: seconds without a heartbeat after which a process counts as dead and the others stop.",
    lower_bound=1,
  )
  flags.DEFINE_bool("print_config", False, "Print the settings the flags make (config.json's form) and exit.")
  flags.DEFINE_bool(
    "flops_check",
    flops_check,
    "After training, add to results.json every block's analytic forward FLOPs beside XLA's cost_analysis count.",
  )
  define_config_flags(ExperimentConfig, defaults=dict(dataset=dataset))


def config_from_flags() -> ExperimentConfig:
  """Reads the flags into an ExperimentConfig; bad values exit with a one-line message."""
  return _from_flags(ExperimentConfig)


def devices_from_flags():
  """Starts the distributed runtime when --distributed, then the mesh of --num_devices (None: one device)."""
  if FLAGS.distributed:
    parallel.initialize_distributed(
      FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id, FLAGS.heartbeat_timeout
    )
  num_devices = jax.device_count() if FLAGS.num_devices is None else FLAGS.num_devices
  try:
    return parallel.make_mesh(num_devices) if FLAGS.data_parallel and num_devices > 1 else None
  except ValueError as e:  # more devices asked for than are visible
    fail(str(e))


def main(argv) -> None:
  """absl main: flags → config → `train_and_evaluate`; anything that stops it is one line on stderr."""
  del argv
  start_process(interruptible=True)
  config = config_from_flags()
  if FLAGS.print_config:
    print(json.dumps(config.to_json(), indent=1))
    return
  mesh = devices_from_flags()
  with one_line_errors(stderr_log) as log, parallel.data_parallel(mesh):
    train_and_evaluate(config, FLAGS.workdir, log=log, overwrite=FLAGS.overwrite)
  if not parallel.is_writer():  # process 0 wrote the results; the others of a distributed run say nothing
    return
  if FLAGS.flops_check:
    add_flops_check(FLAGS.workdir, config)
  with open(f"{FLAGS.workdir}/results.md") as f:
    print(f.read())


def add_flops_check(workdir: str, config: ExperimentConfig) -> None:
  """Adds `flops_check` to WORKDIR/results.json: every block's analytic forward FLOPs beside XLA's
  `cost_analysis()` count, for the model and input shape `config` describes."""
  path = f"{workdir}/results.json"
  results = read_json(path)
  model = config.model.build(config.data.image_shape(), len(CLASS_NAMES[config.data.dataset]))
  results["flops_check"] = flops_check(model)
  write_json(path, results, indent=1)
  worst = max(abs(b["relative_difference"]) for b in results["flops_check"]["blocks"])
  print(f"FLOPs check: analytic vs XLA per block within {100 * worst:.2f}% (results.json flops_check)")

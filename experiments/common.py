"""What the comparison entry points share: their flags (generated from `ExperimentConfig`) and `main`."""

from __future__ import annotations

import json

import jax
from absl import flags

from experiments import supervise
from experiments.flags import config_from_flags as _from_flags
from experiments.flags import (
  define_config_flags,
  fail,
  one_line_errors,
  resume_command,
  start_process,
  stop_if_signalled_during_start_up,
)
from quicknets_jax.core.progress import stderr_log
from quicknets_jax.data.datasets import CLASS_NAMES
from quicknets_jax.models.registry import is_factory_path, resolve_factory
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
    "Multi-host (e.g. a TPU pod slice): call jax.distributed.initialize() first; the mesh then spans every "
    "host's devices. Training runs in a child process, so that a dead peer or an unreachable coordinator ends "
    "this one with a line (jax's own report: WORKDIR/process_<id>.log).",
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
  flags.DEFINE_integer(
    "coordinator_timeout",
    60,
    "With --distributed: seconds to wait for the coordinator (on process 0: for every process to join) before "
    "stopping with a line that says what to check.",
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


def check_distributed_flags() -> None:
  """Exits with one line when the --distributed flags cannot describe a run: an address that is not
  host:port, or one without --num_processes and a --process_id below it."""
  address, n, pid = FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
  if address is None:  # jax finds all three (Cloud TPU, SLURM, Open MPI), or none
    return
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    fail(f"--coordinator_address={address} is not host:port (e.g. 10.0.0.2:8476): process 0's address and a free port")
  if n is None or pid is None:
    fail("--distributed with --coordinator_address needs --num_processes=N and --process_id (0..N-1) too")
  if pid >= n:
    fail(f"--process_id={pid} is not below --num_processes={n}: number the processes 0..{n - 1}")


def _connect() -> None:
  """Joins the distributed run (in the supervised child); its parent stops it when this takes longer
  than --coordinator_timeout (jax itself would abort without a word after `initialization_timeout`)."""
  pid, n, address = FLAGS.process_id, FLAGS.num_processes, FLAGS.coordinator_address
  who = "this process" if pid is None else f"process {pid} of {n}"
  where = "the coordinator jax finds" if address is None else f"the coordinator at {address}"
  stderr_log(f"{who}: joining {where} (at most {FLAGS.coordinator_timeout} s, --coordinator_timeout)")
  supervise.mark("connecting")
  try:
    parallel.initialize_distributed(address, n, pid, FLAGS.heartbeat_timeout, FLAGS.coordinator_timeout)
  except RuntimeError as e:  # the coordinator's own server did not start
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    fail(
      f"{who} cannot start the coordinator at {address} ({reason}): is its port in use? pass another port in "
      "--coordinator_address (the same on every process)"
    )
  supervise.mark("connected")


def devices_from_flags():
  """Starts the distributed runtime when --distributed, then the mesh of --num_devices (None: one device)."""
  if FLAGS.distributed:
    _connect()
  num_devices = jax.device_count() if FLAGS.num_devices is None else FLAGS.num_devices
  try:
    return parallel.make_mesh(num_devices) if FLAGS.data_parallel and num_devices > 1 else None
  except ValueError as e:  # more devices asked for than are visible
    fail(str(e))


def main(argv) -> None:
  """absl main: flags → config → `train_and_evaluate`; anything that stops it is one line on stderr.

  With --distributed, the command runs itself again as a supervised child (experiments/supervise.py):
  jax ends a process whose peer died, or whose coordinator never answered, from C++ with a stack trace,
  and only a parent process can turn that into the line.
  """
  del argv
  if supervise.is_child():
    supervise.attach_child()
  with supervise.child_exits():
    start_process(interruptible=True, output_dirs=("workdir",))
    config = config_from_flags()
    if FLAGS.print_config:
      print(json.dumps(config.to_json(), indent=1))
      return
    if FLAGS.distributed and not supervise.is_child():
      check_distributed_flags()
      stop_if_signalled_during_start_up()
      raise SystemExit(
        supervise.run(
          FLAGS.coordinator_address,
          FLAGS.num_processes,
          FLAGS.process_id,
          FLAGS.coordinator_timeout,
          FLAGS.workdir,
          resume_command(),
        )
      )
    if is_factory_path(config.model.name):  # before any data is read: an unimportable factory is one line now
      try:
        resolve_factory(config.model.name)
      except ValueError as e:
        fail(str(e))
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

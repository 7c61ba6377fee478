"""`python -m experiments.export --workdir=DIR --blocks=K --out=PATH`: the first K frozen blocks of a
trained run as a deployable early-exit cascade — one serialized `jax.export` artifact per block (with its
exit and commitment heads), manifest.json (threshold, class names, input shape, normalisation) and
cascade_loader.py, which runs it with JAX alone (README "Use what you trained").

The threshold is the run's operating threshold for those blocks (chosen on the run's validation split
when the run did not evaluate exactly those blocks), unless --threshold or a target is given.
"""

from __future__ import annotations

from absl import app, flags

from experiments.flags import define_trained_run_flags, start_process, tool_errors, trained_run_from_flags
from quicknets_jax.core.progress import stderr_log
from quicknets_jax.workflows.export import export_trained

flags.DEFINE_string("out", None, "Directory the cascade is written to.", required=True)
flags.DEFINE_list("platforms", [], "Backends the artifacts run on, e.g. cpu,cuda (default: this machine's).")
define_trained_run_flags()
FLAGS = flags.FLAGS


def main(argv) -> None:
  del argv
  start_process(interruptible=True, output_dirs=("out",))
  with tool_errors():  # Ctrl-C and SIGTERM, bad input: one line
    trained, threshold = trained_run_from_flags(stderr_log)
    path = export_trained(trained, FLAGS.out, threshold, FLAGS.platforms or None)
    stderr_log(
      f"exported blocks 0..{trained.num_blocks - 1} of {FLAGS.workdir} seed {trained.seed} (threshold "
      f"{threshold:.4g}) to {FLAGS.out}: {path}; run it with cascade_loader.load({FLAGS.out!r}).predict(pixels)"
    )


if __name__ == "__main__":
  app.run(main)

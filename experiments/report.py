"""`python -m experiments.report --workdir=DIR`: results.md and the paper's figures from a run in DIR.

Works on a finished run and on an interrupted one (the seeds that finished), and on runs made before
the metrics log existed (the figures that need newer records say what is missing). Writes
DIR/results.md (the table of `experiments/<dataset>.py` plus a Figures section) and the PNGs under
--figures_dir (default DIR/figures).
"""

import sys

from absl import app, flags

from experiments.flags import check_output_dirs, fail
from quicknets_jax.workflows.report import write_report

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Workdir of a run of python -m experiments.<dataset>.", required=True)
flags.DEFINE_string("figures_dir", None, "Where the PNG figures go (default: WORKDIR/figures).")
flags.DEFINE_string("results_md", None, "Where results.md goes (default: WORKDIR/results.md).")


def main(argv) -> None:
  """Loads the run, renders every figure it allows, writes results.md with them; errors in one line."""
  del argv
  check_output_dirs(("figures_dir",))
  try:
    out = write_report(FLAGS.workdir, FLAGS.figures_dir, FLAGS.results_md)
  except (ValueError, OSError) as e:
    fail(str(e))
  for name, reason in out["skipped"].items():
    print(f"note: no {name} figure: {reason}", file=sys.stderr)
  if out["unfinished"]:
    print(f"note: partial run, not finished: {', '.join(out['unfinished'])}", file=sys.stderr)
  print(f"wrote {out['results_md']} and {len(out['figures'])} figures:")
  for path in out["figures"].values():
    print(f"  {path}")


if __name__ == "__main__":
  app.run(main)

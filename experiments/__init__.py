"""Runnable entry points: flags in (generated from the configs by `flags.py`), `quicknets_jax.workflows` out.

`python -m experiments.X` imports this package first, before jax: a Ctrl-C or a SIGTERM (a preemption
notice) that arrives during start-up is noted here rather than ending the process without a word (or
being swallowed by a callback of jax's while it loads), and the entry point then stops with its usual
one line (`flags.one_line_errors`, `flags.start_process`). Only for `python -m` runs (the interpreter's
argv[0] is "-m" while it imports the package): a test session importing these modules keeps its own
signal handling.
"""

import signal
import sys

EARLY_SIGNALS: list = []  # SIGINTs and SIGTERMs that arrived before an entry point took over


def _note_signal(signum, frame):
  del frame
  EARLY_SIGNALS.append(signum)


if sys.argv[:1] == ["-m"]:
  for _signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(_signum, _note_signal)

"""Layer 2: the one trainer and what it needs — schedule, losses, data parallelism, checkpoints.

Imports `core/`, `models/` and `data/` only. `trainer.fit` trains any param tree under any per-sample
loss (`losses`) with Appendix A's schedule (`schedule`), optionally data parallel (`parallel`), and
resumes from / saves to a `checkpoint.FitCheckpointer` given as an argument.
"""

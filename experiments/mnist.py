"""`python -m experiments.mnist --workdir=DIR`: the paper's MLP QuickNet vs end-to-end on mnist (Table 1)."""

from absl import app

from experiments import common

common.define_flags("mnist")

if __name__ == "__main__":
  app.run(common.main)

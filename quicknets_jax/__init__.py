"""quicknets-jax: block-wise trained early-exit networks (QuickNets, Patel & Siegelmann 2022) in JAX/Flax.

    import quicknets_jax as qn
    qn.configure_cpu()                          # optional, before JAX starts: faster XLA:CPU steps
    model = qn.multi_exit_model(subnets, input_shape=(8, 8, 1), num_classes=10)   # in a factory
    results = qn.train(my_factory, train=(x, y), test=(tx, ty), workdir="runs/mine")
    trained = qn.load("runs/mine")
    answers = trained.predict(new_images, qn.threshold_for(trained, target_accuracy=0.97))

Importing the package changes nothing in the process (no environment variables, no JAX settings).
"""

from quicknets_jax.algorithms.end_to_end import train_end_to_end
from quicknets_jax.algorithms.quicknet import train_quicknet
from quicknets_jax.algorithms.settings import QuickNetConfig
from quicknets_jax.core.costs import BlockCost
from quicknets_jax.core.platform import configure_cpu
from quicknets_jax.data.normalisation import Normalisation
from quicknets_jax.data.split import Split
from quicknets_jax.models.base import MultiExitModel
from quicknets_jax.models.custom import CostMismatchWarning, multi_exit_model
from quicknets_jax.training.schedule import FitConfig
from quicknets_jax.workflows.api import export, load, threshold_for, train
from quicknets_jax.workflows.experiment_config import ExitRuleConfig, ExperimentConfig
from quicknets_jax.workflows.export import export_cascade

__version__ = "0.1.0"

__all__ = [
  "BlockCost",
  "CostMismatchWarning",
  "ExitRuleConfig",
  "ExperimentConfig",
  "FitConfig",
  "MultiExitModel",
  "Normalisation",
  "QuickNetConfig",
  "Split",
  "configure_cpu",
  "export",
  "export_cascade",
  "load",
  "multi_exit_model",
  "threshold_for",
  "train",
  "train_end_to_end",
  "train_quicknet",
]

"""The conv study's configs from its flagfiles (`experiments.conv_study`); no flags are defined here, so
tests and other entry points can import it."""

from __future__ import annotations

import os

from experiments.flags import flagfile_settings
from quicknets_jax.workflows.experiment_config import ExperimentConfig, StudyConfig

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def experiment_config(dataset: str, seeds: tuple, data_dir=None, configs_dir: str = CONFIGS) -> ExperimentConfig:
  """The comparison of one dataset: the defaults, then CONFIGS_DIR/<dataset>_vgg.flags, then the seeds."""
  settings = flagfile_settings(ExperimentConfig, os.path.join(configs_dir, f"{dataset}_vgg.flags"))
  return ExperimentConfig().replace(**settings).replace(seeds=seeds, data_dir=data_dir)


def commitment_config(seeds: tuple, configs_dir: str = CONFIGS) -> StudyConfig:
  """The jointly trained conv net: the defaults, then CONFIGS_DIR/commitment_study_vgg.flags, then the seeds."""
  settings = flagfile_settings(StudyConfig, os.path.join(configs_dir, "commitment_study_vgg.flags"))
  return StudyConfig().replace(**settings).replace(seeds=seeds)

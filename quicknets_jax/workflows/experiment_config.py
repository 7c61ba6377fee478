"""The configs of whole runs, nested from the library's own: what a comparison run or a commitment
study is made of. Each setting is declared once, in the dataclass of the layer it belongs to
(`DataConfig`, `ModelConfig`, `FitConfig`, `QuickNetConfig`, `SDNConfig`, `ExitRuleConfig`); these
only put them together. `experiments/flags.py` turns them into absl flags, and a workdir's
config.json holds their flat dict (`core.options.flat_dict`).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from quicknets_jax.algorithms.settings import QuickNetConfig, SDNConfig
from quicknets_jax.core import exits, options
from quicknets_jax.core.curves import BUDGETS
from quicknets_jax.core.options import nested, option
from quicknets_jax.data.datasets import DataConfig
from quicknets_jax.models.registry import ModelConfig


@dataclasses.dataclass(frozen=True)
class ExitRuleConfig:
  """How the operating point of the exit rule is chosen and what happens when no exit qualifies.

  Attributes:
    exit_threshold: the inference threshold t in [0, 1], or None ("auto" as a flag) to choose it on the
      validation split.
    threshold_tolerance: with an automatic threshold, the cheapest threshold within this validation
      accuracy of the best is chosen.
    fallback: which exit answers when none qualifies: "most_confident" (the paper's rule) or "last".

  Raises:
    ValueError: a threshold outside [0, 1], an unknown fallback or a tolerance outside [0, 1).
  """

  exit_threshold: Optional[float] = option(
    None,
    "Inference threshold t in [0, 1], or 'auto' to choose it on the validation split.",
    lower=0.0,
    upper=1.0,
    none_word="auto",
  )
  threshold_tolerance: float = option(
    0.0,
    "With --exit_threshold=auto: the cheapest threshold within this validation accuracy of the best.",
    lower=0.0,
    upper=1.0,
  )
  fallback: str = option("most_confident", "Which exit answers when none qualifies.", choices=exits.FALLBACKS)

  def __post_init__(self):
    if self.exit_threshold is not None:
      exits.check_threshold(self.exit_threshold, "exit_threshold")
    if self.fallback not in exits.FALLBACKS:
      raise ValueError(f"fallback must be one of {exits.FALLBACKS}, got {self.fallback!r}")
    if not 0 <= self.threshold_tolerance < 1:
      raise ValueError(f"threshold_tolerance must be in [0, 1), got {self.threshold_tolerance}")
    options.validate(self)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """A QuickNet vs end-to-end comparison on one dataset (`workflows.experiment.train_and_evaluate`).

  Attributes:
    data: which dataset, from where, and how much of it.
    model: which architecture, and its sizes.
    quicknet: Algorithm 1 and the schedule of every fit (the end-to-end network's too).
    exit_rule: how the operating threshold is chosen.
    seeds: the seeds; results are mean ± std over them.
    end_to_end: also train the end-to-end baseline.
    deploy_curve: after every block epoch, measure the test accuracy of the QuickNet deployable then
      (the frozen blocks + the block in training; `workflows.deployable_curve`).

  Raises:
    ValueError: bad seeds (`options.check_seeds`) or a value outside its declared range.
  """

  data: DataConfig = nested(DataConfig)
  model: ModelConfig = nested(ModelConfig)
  quicknet: QuickNetConfig = nested(
    QuickNetConfig, "Algorithm 1 and the schedule of every fit (the end-to-end network's too)."
  )
  exit_rule: ExitRuleConfig = nested(ExitRuleConfig)
  seeds: tuple[int, ...] = option((0, 1, 2), "Seeds; results are mean ± std over them.", resumable=True)
  end_to_end: bool = option(True, "Also train the end-to-end baseline.")
  deploy_curve: bool = option(
    False,
    "After every block epoch, measure the test accuracy of the QuickNet deployable then (the frozen blocks "
    "+ the block in training; Fig. 2 continuous, `workflows.deployable_curve`).",
  )

  def __post_init__(self):
    options.check_seeds(self.seeds)
    options.validate(self)

  @property
  def fit(self):
    """The schedule of every fit (blocks, commitment heads, the end-to-end network)."""
    return self.quicknet.fit

  def to_json(self) -> dict:
    """The flat dict config.json and results.json hold.

    Returns:
      {flat name: value} of every setting.
    """
    return options.flat_dict(self)

  @classmethod
  def from_json(cls, flat: dict) -> ExperimentConfig:
    """The config a flat dict (config.json's) describes; missing settings keep their defaults.

    Args:
      flat: {flat name: value}.

    Returns:
      The config.

    Raises:
      TypeError: `flat` names an unknown setting.
    """
    return options.from_flat(cls, flat)

  def replace(self, **flat) -> ExperimentConfig:
    """This config with the named settings changed (flat names, e.g. `replace(max_epochs=2)`).

    Args:
      **flat: new values by flat name.

    Returns:
      The new config.

    Raises:
      TypeError: a name is not a setting of the config.
    """
    return options.replace(self, **flat)


@dataclasses.dataclass(frozen=True)
class StudyConfig:
  """One commitment study (`workflows.study.run_study`): which data, which networks, which seeds, which
  schedule, which budgets.

  Attributes:
    data: which dataset, from where, and how much of it.
    model: which architecture, and its sizes.
    quicknet: the QuickNet, and the schedule of every fit.
    sdn: SDN's loss-weight schedule for the jointly trained network.
    methods: "joint" (a multi-exit network trained end to end with SDN's weighted loss, then a
      commitment head per frozen exit) and/or "quicknet" (Algorithm 1, commitment heads built in).
    seeds: the seeds; results are mean ± std over them.
    budgets: budgets, as fractions of the full network's cost.
    calibration_thresholds: thresholds of the over-confident-wrong rate.
    smoke: a pipeline check on stand-in data (its numbers mean nothing); not a flag.

  Raises:
    ValueError: unknown methods, bad seeds, budgets outside (0, 1] or thresholds outside [0, 1].
  """

  data: DataConfig = nested(DataConfig)
  model: ModelConfig = nested(ModelConfig)
  quicknet: QuickNetConfig = nested(QuickNetConfig, "The QuickNet, and the schedule of every fit.")
  sdn: SDNConfig = nested(SDNConfig)
  methods: tuple[str, ...] = option(("joint", "quicknet"), "joint (SDN-trained + commitment heads) and/or quicknet.")
  seeds: tuple[int, ...] = option((0, 1, 2), "Seeds; results are mean ± std over them.", resumable=True)
  budgets: tuple[float, ...] = option(BUDGETS, "Budgets, as fractions of the full network's cost.")
  calibration_thresholds: tuple[float, ...] = option((0.5, 0.9), "Thresholds of the over-confident-wrong rate.")
  smoke: bool = options.internal(False, "A pipeline check on stand-in data: its numbers mean nothing.")

  def __post_init__(self):
    unknown = set(self.methods) - {"joint", "quicknet"}
    if unknown or not self.methods:
      raise ValueError(f"methods must be a non-empty subset of joint,quicknet; got {','.join(self.methods)}")
    options.check_seeds(self.seeds)
    if any(not 0 < b <= 1 for b in self.budgets):
      raise ValueError(f"budgets are fractions of the full cost in (0, 1], got {self.budgets}")
    for t in self.calibration_thresholds:
      exits.check_threshold(t, "calibration threshold")
    options.validate(self)

  @property
  def fit(self):
    """The schedule of every fit."""
    return self.quicknet.fit

  def to_json(self) -> dict:
    """The flat dict config.json holds, with `smoke` beside the settings.

    Returns:
      {flat name: value} of every setting, and "smoke".
    """
    return dict(options.flat_dict(self), smoke=self.smoke)

  def replace(self, **flat) -> StudyConfig:
    """This config with the named settings changed (flat names).

    Args:
      **flat: new values by flat name.

    Returns:
      The new config.

    Raises:
      TypeError: a name is not a setting of the config.
    """
    return options.replace(self, **flat)

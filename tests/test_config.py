"""Every hyperparameter declared once: configs nest, read and write as one flat dict of unique names, the
absl flags are generated from them, and every flagfile in experiments/configs parses into the config
its lines say (each through its own entry point, one process per entry point)."""

import glob
import json
import os
import subprocess
import sys

import fresh_process_checks
import pytest

from experiments import flags as flags_lib
from quicknets_jax.algorithms.settings import QuickNetConfig
from quicknets_jax.core import options
from quicknets_jax.training.schedule import FitConfig
from quicknets_jax.workflows.experiment_config import ExperimentConfig, StudyConfig
from scripts import compare_results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDIES = ("commitment_study", "sdn_cifar10")
ENTRY_POINTS = {
  "fashion_mnist": "fashion_mnist",
  "mnist": "mnist",
  "cifar10": "cifar10",
  "imagenet": "imagenet",
  "commitment_study": "commitment_study",
  "sdn_cifar10": "sdn_cifar10",
  # fragments other flagfiles include: any comparison entry point reads them
  "table1_network": "fashion_mnist",
  "authors_schedule": "fashion_mnist",
}


@pytest.mark.parametrize("cls", [ExperimentConfig, StudyConfig])
def test_flat_names_are_unique_and_round_trip(cls):
  names = [leaf.name for leaf in options.leaves(cls)]
  assert len(names) == len(set(names))
  default = cls()
  flat = options.flat_dict(default)
  assert list(flat) == names
  json.dumps(flat)  # JSON-ready
  assert options.from_flat(cls, flat) == default


def test_replace_finds_a_setting_wherever_it_sits():
  config = ExperimentConfig().replace(learning_rate=3e-4, width=64, exit_threshold=0.5, seeds=[1, 2])
  assert config.quicknet.fit.learning_rate == 3e-4 and config.model.width == 64
  assert config.exit_rule.exit_threshold == 0.5 and config.seeds == (1, 2)  # lists become tuples
  assert config.to_json()["learning_rate"] == 3e-4
  assert ExperimentConfig().quicknet.fit == FitConfig()  # the original is untouched (frozen)
  with pytest.raises(TypeError, match="no setting widht"):
    ExperimentConfig().replace(widht=3)
  with pytest.raises(ValueError, match="learning_rate"):  # each dataclass validates its own fields
    ExperimentConfig().replace(learning_rate=-1.0)


def test_internal_settings_are_not_flags():
  names = {leaf.name for leaf in options.leaves(QuickNetConfig)}
  assert "commit_fit" not in names and "host_loop" not in names and "learning_rate" in names


def test_every_leaf_has_help_and_defaults_in_range():
  for cls in (ExperimentConfig, StudyConfig):
    for leaf in options.leaves(cls):
      assert leaf.info.help, leaf.name
      value = leaf.field.default
      if isinstance(value, (int, float)) and not isinstance(value, bool):
        assert leaf.info.lower is None or value >= leaf.info.lower, leaf.name
        assert leaf.info.upper is None or value <= leaf.info.upper, leaf.name
      if leaf.info.choices is not None:
        assert value in leaf.info.choices, leaf.name


def _entry_point(flagfile: str) -> str:
  stem = os.path.basename(flagfile)[: -len(".flags")]
  for prefix in sorted(ENTRY_POINTS, key=len, reverse=True):
    if stem.startswith(prefix):
      return ENTRY_POINTS[prefix]
  raise AssertionError(f"no entry point for {flagfile}")


def test_every_flagfile_parses_into_its_config():
  flagfiles = sorted(glob.glob(os.path.join(ROOT, "experiments", "configs", "*.flags")))
  assert len(flagfiles) >= 12
  by_entry_point = {}
  for path in flagfiles:
    by_entry_point.setdefault(_entry_point(path), []).append(path)
  # all at once: one process per entry point whose module defines its flags (once per process), one per
  # flagfile of the studies (their flags are defined when they run as __main__)
  commands = []
  for entry, paths in by_entry_point.items():
    if entry in STUDIES:
      commands += [
        [sys.executable, "-m", f"experiments.{entry}", f"--flagfile={p}", "--workdir=/tmp/unused", "--print_config"]
        for p in paths
      ]
    else:
      commands.append(fresh_process_checks.command("print_configs", entry, *paths))
  procs = [
    (command, subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for command in commands
  ]
  printed = {}
  for command, proc in procs:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, (command, err[-2000:])
    if command[2] == "tests.fresh_process_checks":
      printed.update((line["flagfile"], line["config"]) for line in map(json.loads, out.splitlines()))
    else:
      printed[command[3].split("=", 1)[1]] = json.loads(out)
  assert sorted(printed) == flagfiles
  for path in flagfiles:
    cls = StudyConfig if _entry_point(path) in STUDIES else ExperimentConfig
    expected = flags_lib.flagfile_settings(cls, path)
    assert expected, path
    for name, value in expected.items():
      value = list(value) if isinstance(value, tuple) else value
      assert printed[path][name] == value, (path, name, printed[path][name], value)


def test_flag_values_are_parsed_by_the_settings_type():
  leaves = {leaf.name: leaf for leaf in options.leaves(ExperimentConfig)}
  assert flags_lib._parse(leaves["exit_threshold"], "auto") is None
  assert flags_lib._parse(leaves["exit_threshold"], "0.25") == 0.25
  assert flags_lib._parse(leaves["seeds"], ["0", "3"]) == (0, 3)
  with pytest.raises(ValueError, match="--seeds must be integers separated by commas"):
    flags_lib._parse(leaves["seeds"], ["a"])
  with pytest.raises(ValueError, match="'auto' or a number in \\[0, 1\\]"):
    flags_lib._parse(leaves["exit_threshold"], "high")


def test_results_comparison_ignores_timing_and_names_differences():
  before = {"train_seconds": 1.0, "config": {"a": 1}, "q": {"x": [1.0, 2.0], "machine": "m"}}
  same = {"train_seconds": 9.0, "config": {"a": 1, "new": 0}, "q": {"x": [1.0, 2.0], "machine": "other"}}
  differences, added = compare_results.compare(before, same)
  assert differences == [] and added == ["/config/new: 0 (new)"]
  differences, _ = compare_results.compare(before, {**same, "q": {"x": [1.0, 2.0000001]}})
  assert differences == ["/q/x[1]: 2.0 before, 2.0000001 after"]
  differences, _ = compare_results.compare(before, {"config": {}, "q": {"x": [1.0]}})
  assert "/config/a: missing after" in differences and "/q/x: 2 entries before, 1 after" in differences


def test_the_machine_line_names_the_cpu_model_and_family(tmp_path, monkeypatch):
  from quicknets_jax.workflows import workdir

  cpuinfo = tmp_path / "cpuinfo"
  cpuinfo.write_text("processor\t: 0\ncpu family\t: 26\nmodel name\t: AMD EPYC\n\nprocessor\t: 1\ncpu family\t: 26\n")
  assert workdir.cpu_model(str(cpuinfo)) == "AMD EPYC (family 26)"
  monkeypatch.setattr(workdir.platform, "processor", lambda: "arm")
  assert workdir.cpu_model(str(tmp_path / "missing")) == "arm"  # not Linux: what Python knows
  (tmp_path / "bare").write_text("processor\t: 0\n")
  assert workdir.cpu_model(str(tmp_path / "bare")) == "arm"
  monkeypatch.setattr(workdir, "cpu_model", lambda: "Some CPU (family 1)")
  assert workdir.machine_description().startswith(f"{workdir.platform.machine()} Some CPU (family 1), ")

"""The decoupled study end to end on small IDX files: the three methods side by side, the deployable
cascade after every decoupled epoch, the K-device model, the refresh comparison, the report and figure."""

import json
import os
import subprocess
import sys

import pytest

from benchmarks.fault_injection import write_tiny_idx
from quicknets_jax.core import curves

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_FLAGS = """--dataset=mnist
--model=mlp
--hidden=24,16,12
--num_blocks=3
--batch_size=64
--max_epochs=3
--train_threshold=0.5
--exit_threshold=auto
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("decoupled_study")
  data_dir, configs = tmp / "mnist", tmp / "configs"
  data_dir.mkdir()
  configs.mkdir()
  write_tiny_idx(str(data_dir), noise=40.0)
  (configs / "mnist_paper.flags").write_text(TINY_FLAGS)
  workdir = tmp / "run"
  args = [
    sys.executable,
    "-m",
    "experiments.decoupled_study",
    f"--workdir={workdir}",
    f"--mnist_dir={data_dir}",
    f"--configs_dir={configs}",
    "--parts=mnist_mlp",
    "--refresh_parts=mnist_mlp",
    "--seeds=0",
    "--max_devices=4",
  ]
  env = {**os.environ, "PYTHONPATH": ROOT}
  proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
  assert again.returncode == 0, again.stderr[-3000:]
  return workdir, proc, again


@pytest.mark.slow  # a whole study (decoupled training itself: test_decoupled)
def test_the_study_puts_the_three_methods_side_by_side(study):
  workdir, proc, _ = study
  summary = json.loads((workdir / "decoupled_study.json").read_text())
  (part,) = summary["parts"]
  assert [r["method"] for r in part["rows"]] == ["sequential", "decoupled", "end_to_end"]
  assert part["accuracy_decoupled_minus_sequential"]["n"] == 1
  decoupled = json.loads((workdir / "mnist_mlp_decoupled" / "results.json").read_text())
  seed = decoupled["quicknet"]["per_seed"][0]
  assert seed["schedule"] == "decoupled" and "end_to_end" not in decoupled
  # the deployable cascade after every epoch, at the FLOPs spent so far; the curve ends at the trained net
  epochs = seed["network_epochs"]
  assert all("cascade_test_accuracy" in e for e in epochs)
  flops, accuracy = curves.quicknet_every_epoch(seed)
  assert len(flops) == len(epochs) + 1 and list(flops) == sorted(flops)
  assert flops[-1] == seed["training_flops"] and accuracy[-1] == seed["test_accuracy"]
  assert [len(c["flops"]) for c in part["curves"]["decoupled"]] == [
    len(s["network_epochs"]) + 1 for s in decoupled["quicknet"]["per_seed"]
  ]
  assert part["refresh_epoch"]["training_flops_over_step"] > 1.0  # a forward pass over the split each epoch
  assert "Decoupled QuickNet" in proc.stdout and "Modelled wall-clock on K devices" in proc.stdout
  assert (workdir / "decoupled_schedules.png").stat().st_size > 0


@pytest.mark.slow  # a whole study (decoupled training itself: test_decoupled)
def test_the_device_model_covers_every_k_and_checks_itself_on_one_device(study):
  workdir, _, again = study
  devices = json.loads((workdir / "decoupled_study.json").read_text())["parts"][0]["devices"]
  assert devices["devices"] == [1, 2, 3, 4]
  assert len(devices["decoupled_seconds"]) == len(devices["end_to_end_seconds"]) == 4
  # 3 blocks: at most 3 stages (a 4th device only shares the validation passes)
  assert devices["slowest_stage_blocks"][3] == devices["slowest_stage_blocks"][2]
  assert devices["decoupled_seconds"][3] <= devices["decoupled_seconds"][2]
  assert devices["bubble_share"][0] == 0.0 < devices["bubble_share"][1]
  check = devices["one_device_check"]
  assert check["decoupled_modelled"] > 0 and check["decoupled_measured"] > 0
  steps = json.loads((workdir / "mnist_mlp_steps.json").read_text())
  assert set(steps["end_to_end_train"]) == {"64", "32", "22", "16"}
  assert "step times" not in again.stderr  # the second run read everything back


@pytest.mark.slow  # times a network's steps
def test_a_network_only_modelled_borrows_a_measured_parts_epochs(study):
  """A network that cannot be trained here gets its steps timed and the K-device model with a measured
  part's epochs; one with another number of blocks is refused, naming the fix."""
  from experiments.flags import flagfile_settings
  from quicknets_jax import models
  from quicknets_jax.workflows.decoupled_study import DeviceModel, ModelledNetwork, run_decoupled_study
  from quicknets_jax.workflows.experiment_config import ExperimentConfig

  workdir, _, _ = study
  configs = workdir.parent / "configs"
  # the study's own config of the part (experiments.decoupled_study.part_config), read the same way
  settings = flagfile_settings(ExperimentConfig, str(configs / "mnist_paper.flags"))
  config = ExperimentConfig().replace(**settings)
  config = config.replace(seeds=(0,), data_dir=str(workdir.parent / "mnist"), deploy_curve=True)
  parts = {"mnist_mlp": config}
  wider = ModelledNetwork(models.mlp((8, 8, 1), 10, hidden=(32, 32, 32), num_blocks=3), 64, (1000, 100), "mnist_mlp", 2)
  lines = []
  summary = run_decoupled_study(
    str(workdir),
    parts,
    refresh_parts=["mnist_mlp"],
    devices=DeviceModel(max_devices=4),
    modelled={"wider": wider},
    log=lines.append,
  )
  (modelled,) = summary["modelled"]
  assert modelled["network"] == "wider" and modelled["devices"]["devices"] == [1, 2, 3, 4]
  assert "one_device_check" not in modelled["devices"] and (workdir / "wider_steps.json").exists()
  assert "### wider: modelled only" in (workdir / "decoupled_study.md").read_text()
  two = ModelledNetwork(models.mlp((8, 8, 1), 10, hidden=(32, 32), num_blocks=2), 64, (1000, 100), "mnist_mlp")
  with pytest.raises(ValueError, match="borrow the epochs of a part with as many blocks"):
    run_decoupled_study(
      str(workdir), parts, devices=DeviceModel(max_devices=4), modelled={"two": two}, log=lines.append
    )

"""A run's workdir: one run at a time (its lock), and `--overwrite` deletes a run's files only."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from quicknets_jax.workflows.experiment_config import ExperimentConfig
from quicknets_jax.workflows.workdir import LOCK_FILE, WorkdirInUseError, guard_workdir, workdir_lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _a_finished_looking_run(workdir):
  guard_workdir(ExperimentConfig().replace(width=32), str(workdir))
  for name in ("results.json", "data.json", "metrics.jsonl"):
    (workdir / name).write_text("{}")
  (workdir / "seed_0" / "quicknet_checkpoints").mkdir(parents=True)


def test_overwrite_deletes_a_runs_files_and_refuses_a_folder_holding_others(tmp_path):
  _a_finished_looking_run(tmp_path)
  (tmp_path / "notes.txt").write_text("mine")
  (tmp_path / "thesis").mkdir()
  with pytest.raises(ValueError, match=r"also holds others \(notes\.txt, thesis\)") as refused:
    guard_workdir(ExperimentConfig().replace(width=64), str(tmp_path), overwrite=True)
  assert "\n" not in str(refused.value)
  assert sorted(os.listdir(tmp_path)) == [
    "config.json", "data.json", "metrics.jsonl", "notes.txt", "results.json", "seed_0", "thesis"
  ]  # fmt: skip
  os.remove(tmp_path / "notes.txt")
  os.rmdir(tmp_path / "thesis")
  guard_workdir(ExperimentConfig().replace(width=64), str(tmp_path), overwrite=True)
  assert os.listdir(tmp_path) == ["config.json"]  # the new run's config only


def test_a_second_run_in_a_workdir_is_refused_naming_the_live_one(tmp_path):
  lines = []
  with workdir_lock(str(tmp_path), lines.append):
    with pytest.raises(
      WorkdirInUseError, match=rf"in use by another run \(pid {os.getpid()} on {socket.gethostname()}"
    ):
      with workdir_lock(str(tmp_path), lines.append):
        pass
  with workdir_lock(str(tmp_path), lines.append):  # released: the next run takes it
    pass
  assert lines == [] and (tmp_path / LOCK_FILE).read_text() == ""


def test_the_lock_of_a_killed_run_is_taken_over_with_a_line(tmp_path):
  (tmp_path / LOCK_FILE).write_text('{"pid": 4242, "host": "elsewhere", "since": "2026-12-01 10:00:00"}')
  lines = []
  with workdir_lock(str(tmp_path), lines.append):
    assert str(os.getpid()) in (tmp_path / LOCK_FILE).read_text()
  assert len(lines) == 1 and "took over" in lines[0] and "pid 4242 on elsewhere" in lines[0], lines


def test_the_cli_refuses_a_workdir_in_use_in_one_line(tmp_path):
  with workdir_lock(str(tmp_path), print):
    out = subprocess.run(
      [sys.executable, "-m", "experiments.mnist", f"--workdir={tmp_path}", "--max_epochs=1"],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=300,
    )
  assert out.returncode == 1 and out.stderr.strip().count("\n") == 0, out.stderr[-2000:]
  assert f"in use by another run (pid {os.getpid()}" in out.stderr


def test_a_workdir_refuses_other_data_and_keeps_its_splits(tmp_path):
  """What `qn.train` and every entry point record before training: a rerun on other arrays (a label
  changed) is refused, naming the split, and the kept validation and test splits stay the first run's."""
  from conftest import make_blobs

  from quicknets_jax.workflows.api import arrays_dataset
  from quicknets_jax.workflows.workdir import record_data

  train, test = make_blobs(200, seed=0), make_blobs(50, seed=1)
  record_data(str(tmp_path), arrays_dataset(train, test, 0.2))
  kept = np.load(tmp_path / "arrays" / "test.npz")["labels"]
  record_data(str(tmp_path), arrays_dataset(train, test, 0.2))  # the same data: resumes
  changed = (test[0], np.where(np.arange(50) == 7, (test[1] + 1) % 4, test[1]).astype(np.int32))
  with pytest.raises(ValueError, match=r"trained on other data \(test: 50 rows \(sha256 \w+\) → 50 rows") as refused:
    record_data(str(tmp_path), arrays_dataset(train, changed, 0.2))
  assert "overwrite" in str(refused.value) and "train:" not in str(refused.value)
  np.testing.assert_array_equal(np.load(tmp_path / "arrays" / "test.npz")["labels"], kept)


def test_unreadable_run_files_are_one_line_naming_the_file(tmp_path):
  from quicknets_jax.data.errors import DataError
  from quicknets_jax.data.images import read_images
  from quicknets_jax.workflows.workdir import UnreadableRunFileError, read_json

  (tmp_path / "config.json").write_text("")
  (tmp_path / "quicknet.json").write_text('{"test_accuracy": 0.8')  # cut off
  for name, what in (("config.json", "is empty"), ("quicknet.json", "is not valid JSON")):
    with pytest.raises(UnreadableRunFileError, match=rf"{name} {what}.*restore it, or delete it") as refused:
      read_json(str(tmp_path / name))
    assert "\n" not in str(refused.value)
  (tmp_path / "x.npy").write_bytes(b"")
  with pytest.raises(DataError, match=r"x\.npy is not a readable \.npy array"):
    read_images(str(tmp_path / "x.npy"))


def test_a_metrics_line_cut_off_by_a_kill_is_dropped_not_glued_to_the_next(tmp_path):
  from quicknets_jax.workflows.metrics import MetricsWriter, read_metrics

  with MetricsWriter(str(tmp_path), tensorboard=False) as writer:
    writer.write(dict(run="block_0", epoch=1, loss=0.5))
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"run": "block_0", "epoch": 2, "lo')  # what a kill mid-line leaves
  assert [m["epoch"] for m in read_metrics(str(tmp_path))] == [1]
  with MetricsWriter(str(tmp_path), tensorboard=False) as writer:  # the resumed run
    writer.write(dict(run="block_0", epoch=2, loss=0.4))
  assert [m["epoch"] for m in read_metrics(str(tmp_path))] == [1, 2]
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write("not a record\n")
  with pytest.raises(ValueError, match=r"metrics\.jsonl, line 3, is not a metrics record"):
    read_metrics(str(tmp_path))

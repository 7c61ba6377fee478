"""Outputs replaced in one step (`core.files`): a failure or a kill while writing leaves the previous file
or folder whole and no temporary one; an export never replaces a folder holding other files."""

import os
import signal

import fresh_process_checks
import pytest

from quicknets_jax.core import files
from quicknets_jax.workflows import export, predict


def _listing(folder):
  return sorted(os.listdir(folder))


def test_a_file_is_replaced_whole_or_left_as_it_was(tmp_path):
  path = tmp_path / "answers.jsonl"
  path.write_text("old\n")
  with pytest.raises(RuntimeError):
    with files.replaced_file(str(path)) as f:
      f.write("half of the new")
      raise RuntimeError("disk full")
  assert path.read_text() == "old\n" and _listing(tmp_path) == ["answers.jsonl"]
  with files.replaced_file(str(path)) as f:
    f.write("new\n")
  assert path.read_text() == "new\n" and _listing(tmp_path) == ["answers.jsonl"]


def test_a_folder_is_replaced_whole_or_left_as_it_was(tmp_path):
  out = tmp_path / "cascade"
  with files.replaced_folder(str(out)) as building:  # a new folder
    (tmp_path / building / "block_0.jax").write_text("first")
  assert _listing(out) == ["block_0.jax"]
  with pytest.raises(RuntimeError):
    with files.replaced_folder(str(out)) as building:
      (tmp_path / building / "block_0.jax").write_text("second")
      raise RuntimeError("killed")
  assert (out / "block_0.jax").read_text() == "first" and _listing(tmp_path) == ["cascade"]
  with files.replaced_folder(str(out)) as building:  # the old folder's files go with it
    (tmp_path / building / "manifest.json").write_text("{}")
  assert _listing(out) == ["manifest.json"] and _listing(tmp_path) == ["cascade"]


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_kill_while_writing_leaves_the_previous_output(tmp_path, kind):
  target = tmp_path / "out"
  if kind == "file":
    target.write_text("the previous answers\n")
  else:
    target.mkdir()
    (target / "block_0.jax").write_text("the previous export")
  out = fresh_process_checks.run("killed_while_writing", kind, target)
  assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
  kept = target.read_text() if kind == "file" else (target / "block_0.jax").read_text()
  assert kept.startswith("the previous")


def test_predictions_are_written_in_one_step(tmp_path):
  out = tmp_path / "answers.csv"
  out.write_text("old")
  rows = [dict(zip(predict.COLUMNS, ("a.png", 3, "3", 0, 0.9, 1.5, True)))]
  predict.write_predictions(rows, str(out), "csv")
  assert out.read_text().splitlines()[1].startswith("a.png,3") and _listing(tmp_path) == ["answers.csv"]


def test_an_export_never_replaces_a_folder_holding_other_files(tmp_path):
  export.check_export_folder(str(tmp_path / "new"))  # new, empty or an earlier export: fine
  (tmp_path / "earlier").mkdir()
  for name in ("block_0.jax", "block_1.jax", "manifest.json", "cascade_loader.py"):
    (tmp_path / "earlier" / name).write_text("")
  export.check_export_folder(str(tmp_path / "earlier"))
  (tmp_path / "earlier" / "notes.txt").write_text("mine")
  with pytest.raises(ValueError, match=r"holds files an export does not write \(notes\.txt\)") as refused:
    export.check_export_folder(str(tmp_path / "earlier"))
  assert "\n" not in str(refused.value)
  with pytest.raises(ValueError, match="is a file"):
    export.check_export_folder(str(tmp_path / "earlier" / "notes.txt"))

"""Bad input is refused with one line that names the fix, before (or instead of) silent damage.

One table of cases: data files, flags and configs, checkpoints (corrupt, truncated, NaN loss, disk
full). Each case is a function that must raise; the test checks the type, a key phrase and that the
message is one line. The data-layer cases have deeper tests in test_data.py; they are repeated here
so the whole table comes from one place: `python -m tests.test_bad_input` prints it as Markdown
(BUILD.md's "Refused bad input" table).
"""

import errno
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

import numpy as np
import pytest

from quicknets_jax import data, models
from quicknets_jax.algorithms.quicknet import QuickNetConfig, train_quicknet
from quicknets_jax.data import DataError, cifar, idx
from quicknets_jax.training.checkpoint import BlockCheckpointer, CheckpointError, FitCheckpointer
from quicknets_jax.training.events import Events
from quicknets_jax.training.schedule import FitConfig
from quicknets_jax.training.trainer import NonFiniteLossError
from quicknets_jax.workflows.experiment import train_and_evaluate
from quicknets_jax.workflows.experiment_config import ExperimentConfig, StudyConfig
from quicknets_jax.workflows.workdir import guard_workdir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = QuickNetConfig(
  fit=FitConfig(batch_size=64, max_epochs=2),
  commit_fit=FitConfig(batch_size=64, max_epochs=2, balanced_sampling=False),
  train_threshold=0.5,
)

CASES = []  # (id, what is wrong, expected exception, key phrase, fn(tmp_dir, blobs, interrupted))


def case(what, error, phrase):
  def register(fn):
    CASES.append((fn.__name__, what, error, phrase, fn))
    return fn

  return register


def _blobs(n=400, seed=0):
  from tests.conftest import make_blobs

  return make_blobs(n, seed=seed)


def _model():
  return models.mlp((6, 6, 1), 4, width=8, num_blocks=2)


class Interrupt(Exception):
  pass


def make_interrupted(directory, blobs):
  """A checkpoint directory left by a run stopped after block 1's first epoch: block 0 frozen,
  in_progress/block_1 holding epoch 1."""
  x, y, vx, vy = blobs

  class Stop(Events):
    def epoch_done(self, event):
      if event.phase == "block" and event.block == 1 and event.record["epoch"] == 1:
        raise Interrupt

  try:
    train_quicknet(
      _model(),
      (x, y),
      (vx, vy),
      TINY,
      seed=0,
      checkpointer=BlockCheckpointer(directory),
      log=lambda m: None,
      events=Stop(),
    )
  except Interrupt:
    return directory
  raise AssertionError("the run was not interrupted")


def _copy(interrupted, tmp):
  target = os.path.join(tmp, "ckpt")
  shutil.copytree(interrupted, target)
  return target


def _resume(directory, blobs, images=None):
  x, y, vx, vy = blobs
  return train_quicknet(
    _model(),
    (x if images is None else images, y),
    (vx, vy),
    TINY,
    seed=0,
    checkpointer=BlockCheckpointer(directory),
    log=lambda m: None,
  )


def _files(directory):
  return [os.path.join(d, f) for d, _, fs in os.walk(directory) for f in fs]


def _disk_full(monkeypatch_target):
  """Makes every text write orbax does (metadata, JSON) and every epoch file's write fail as on a full disk."""
  from etils import epath

  from quicknets_jax.training import checkpoint

  cls = type(epath.Path(tempfile.gettempdir()))

  def full(self, *args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

  monkeypatch_target.setattr(cls, "write_text", full)
  monkeypatch_target.setattr(checkpoint.np, "savez", lambda f, **arrays: full(getattr(f, "name", "?")))


# --- data files ----------------------------------------------------------------------------------


@case("IDX file with wrong magic bytes", DataError, "bad magic bytes")
def idx_wrong_magic(tmp, blobs, interrupted, mp):
  path = os.path.join(tmp, "train-labels-idx1-ubyte")
  with open(path, "wb") as f:
    f.write(b"\x12\x34\x08\x01\x00\x00\x00\x02\x01\x02")
  idx.read_idx(path)


@case("truncated gzip IDX file", DataError, "re-download")
def idx_truncated_gzip(tmp, blobs, interrupted, mp):
  path = os.path.join(tmp, "train-images-idx3-ubyte.gz")
  idx.write_idx(path, np.zeros((50, 28, 28), np.uint8) + np.arange(28, dtype=np.uint8))
  with open(path, "rb") as f:
    blob = f.read()
  with open(path, "wb") as f:
    f.write(blob[: len(blob) // 2])
  idx.read_idx(path)


@case("IDX payload shorter than its header says", DataError, "truncated")
def idx_truncated_payload(tmp, blobs, interrupted, mp):
  path = os.path.join(tmp, "train-images-idx3-ubyte")
  idx.write_idx(path, np.zeros((4, 5, 6), np.uint8))
  with open(path, "rb") as f:
    raw = f.read()
  with open(path, "wb") as f:
    f.write(raw[:-7])
  idx.read_idx(path)


def _idx_dir(tmp, n_train=12, n_test=5, train_labels=None):
  rng = np.random.default_rng(0)
  arrays = [
    rng.integers(0, 256, (n_train, 4, 3), dtype=np.uint8),
    rng.integers(0, 10, n_train, dtype=np.uint8),
    rng.integers(0, 256, (n_test, 4, 3), dtype=np.uint8),
    rng.integers(0, 10, n_test, dtype=np.uint8),
  ]
  if train_labels is not None:
    arrays[1] = train_labels
  for base, a in zip(idx.IDX_FILES, arrays):
    idx.write_idx(os.path.join(tmp, base + ".gz"), a)
  return tmp


@case("image/label count mismatch", DataError, "disagree")
def idx_count_mismatch(tmp, blobs, interrupted, mp):
  idx.load_idx_dir(_idx_dir(tmp, train_labels=np.zeros(11, np.uint8)))


@case("labels out of range", DataError, "outside [0, 10)")
def labels_out_of_range(tmp, blobs, interrupted, mp):
  labels = np.zeros(12, np.uint8)
  labels[[2, 5]] = 17
  data.load_dataset("fashion_mnist", data_source="idx", data_dir=_idx_dir(tmp, train_labels=labels))


@case("a missing IDX file", DataError, "missing IDX file")
def idx_missing_file(tmp, blobs, interrupted, mp):
  os.remove(os.path.join(_idx_dir(tmp), "t10k-labels-idx1-ubyte.gz"))
  idx.load_idx_dir(tmp)


@case("CIFAR-10 tarball missing a training batch", DataError, "data_batch_3")
def cifar_missing_batch(tmp, blobs, interrupted, mp):
  rng = np.random.default_rng(0)
  good, bad = os.path.join(tmp, "good.tar.gz"), os.path.join(tmp, "bad.tar.gz")
  cifar.write_cifar_tar(
    good,
    rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
    rng.integers(0, 10, 20, dtype=np.uint8),
    rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8),
    rng.integers(0, 10, 6, dtype=np.uint8),
  )
  with tarfile.open(good) as src, tarfile.open(bad, "w:gz") as dst:
    for m in src.getmembers():
      if not m.name.endswith("data_batch_3"):
        dst.addfile(m, src.extractfile(m))
  cifar.load_cifar_tar(bad)


# --- configs -------------------------------------------------------------------------------------


@case("validation fraction outside (0, 1)", DataError, "val_fraction")
def val_fraction_out_of_range(tmp, blobs, interrupted, mp):
  x, y = _blobs(20)
  data.split_validation(x, y, 1.5)


@case("batch size larger than the training split (refused, not clamped)", ValueError, "--batch_size")
def batch_larger_than_data(tmp, blobs, interrupted, mp):
  x, y = _blobs(40)
  ds = data.Dataset(
    "fashion_mnist",
    data.Split(x[:30], y[:30]),
    data.Split(x[30:], y[30:]),
    data.Split(x[30:], y[30:]),
    4,
    tuple("abcd"),
  )
  train_and_evaluate(
    ExperimentConfig().replace(batch_size=128, seeds=(0,), width=8),
    os.path.join(tmp, "w"),
    log=lambda m: None,
    dataset=ds,
  )


@case("non-finite learning rate", ValueError, "learning_rate")
def learning_rate_nan(tmp, blobs, interrupted, mp):
  ExperimentConfig().replace(learning_rate=float("nan"))


@case("exit threshold outside [0, 1]", ValueError, "exit_threshold")
def exit_threshold_out_of_range(tmp, blobs, interrupted, mp):
  ExperimentConfig().replace(exit_threshold=1.5)


@case("a repeated seed (its std over two copies of one run is 0)", ValueError, "seeds repeats 0")
def seeds_repeated(tmp, blobs, interrupted, mp):
  ExperimentConfig().replace(seeds=(0, 1, 0))


@case("a negative seed", ValueError, "seeds must be non-negative integers, got -1")
def seeds_negative(tmp, blobs, interrupted, mp):
  ExperimentConfig().replace(seeds=(0, -1))


@case("a seed that is not an integer", ValueError, "seeds must be non-negative integers, got 1.5")
def seeds_not_integers(tmp, blobs, interrupted, mp):
  StudyConfig().replace(seeds=(0, 1.5))


@case("workdir holding a run with another config", ValueError, "--overwrite")
def workdir_other_config(tmp, blobs, interrupted, mp):
  guard_workdir(ExperimentConfig().replace(width=32), tmp)
  guard_workdir(ExperimentConfig().replace(width=64, learning_rate=3e-4), tmp)


# --- checkpoints and training --------------------------------------------------------------------


@case("corrupt checkpoint of a frozen block", CheckpointError, "checkpoint of block 0")
def corrupt_block_checkpoint(tmp, blobs, interrupted, mp):
  directory = _copy(interrupted, tmp)
  for f in _files(os.path.join(directory, "0", "variables")):
    if os.path.getsize(f) > 0:
      with open(f, "wb") as out:
        out.write(b"garbage")
  _resume(directory, blobs)


@case("truncated checkpoint of a frozen block", CheckpointError, "checkpoint of block 0")
def truncated_block_checkpoint(tmp, blobs, interrupted, mp):
  directory = _copy(interrupted, tmp)
  for f in _files(os.path.join(directory, "0")):
    size = os.path.getsize(f)
    with open(f, "r+b") as out:
      out.truncate(size // 2)
  _resume(directory, blobs)


@case("truncated per-epoch checkpoint inside a block", CheckpointError, "block 1: checkpoint of epoch 1")
def truncated_epoch_checkpoint(tmp, blobs, interrupted, mp):
  directory = _copy(interrupted, tmp)
  f = os.path.join(directory, "in_progress", "block_1", "1.npz")
  with open(f, "r+b") as out:
    out.truncate(os.path.getsize(f) // 2)
  _resume(directory, blobs)


@case("NaN/inf loss", NonFiniteLossError, "block 1: non-finite loss at epoch 2")
def nan_loss(tmp, blobs, interrupted, mp):
  directory = _copy(interrupted, tmp)
  x = blobs[0].copy()
  x[:] = np.nan  # the frozen block 0 turns every feature into NaN
  try:
    _resume(directory, blobs, images=x)
  finally:  # the last good state is still there and readable
    assert FitCheckpointer(os.path.join(directory, "in_progress", "block_1")).latest_epoch() == 1


@case("no space left while saving an epoch", CheckpointError, "no space left on device")
def disk_full_epoch(tmp, blobs, interrupted, mp):
  directory = _copy(interrupted, tmp)
  _disk_full(mp)
  try:
    _resume(directory, blobs)
  finally:
    mp.undo()
    ckpt = FitCheckpointer(os.path.join(directory, "in_progress", "block_1"))
    assert ckpt.latest_epoch() == 1  # the previous checkpoint is intact and still the newest


@case("no space left while saving a frozen block", CheckpointError, "saving frozen block 1")
def disk_full_block(tmp, blobs, interrupted, mp):
  directory = _copy(interrupted, tmp)
  real_save = BlockCheckpointer.save

  def fill_disk_then_save(self, *args, **kwargs):
    _disk_full(mp)  # the disk fills up right when block 1 is to be frozen
    return real_save(self, *args, **kwargs)

  mp.setattr(BlockCheckpointer, "save", fill_disk_then_save)
  try:
    _resume(directory, blobs)
  finally:
    mp.undo()
    assert BlockCheckpointer(directory)._manager.all_steps() == [0]  # block 0 intact, no half block 1


# --- the table -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
  return make_interrupted(str(tmp_path_factory.mktemp("interrupted") / "ckpt"), _blobs_split())


def _blobs_split():
  x, y = _blobs(400, seed=0)
  vx, vy = _blobs(100, seed=1)
  return x, y, vx, vy


@pytest.mark.parametrize("name,what,error,phrase,fn", CASES, ids=[c[0] for c in CASES])
def test_refused_with_one_line(tmp_path, interrupted, monkeypatch, name, what, error, phrase, fn):
  with pytest.raises(error) as e:
    fn(str(tmp_path), _blobs_split(), interrupted, monkeypatch)
  message = str(e.value)
  assert phrase in message, message
  assert "\n" not in message, message


def test_nan_loss_leaves_a_resumable_run(tmp_path, interrupted):
  """After the NaN refusal, the kept checkpoint resumes (on good data) as if nothing happened."""
  directory = _copy(interrupted, str(tmp_path))
  x = _blobs_split()[0].copy()
  x[:] = np.nan
  with pytest.raises(NonFiniteLossError):
    _resume(directory, _blobs_split(), images=x)
  run = _resume(directory, _blobs_split())
  assert run.num_trained_blocks == 2


# Flag errors come from absl before anything is imported or read: its line, then a help hint.
CLI_CASES = [
  ("unknown flag in a flagfile", ["--flagfile={bad_flagfile}"], "Unknown command line flag 'widht'"),
  ("missing flagfile", ["--flagfile={tmp}/none.flags"], "Unable to open flagfile"),
  ("non-numeric flag", ["--width=abc"], "flag --width=abc: invalid literal for int()"),
  ("out-of-range flag", ["--batch_size=0"], "flag --batch_size=0: 0 is not a positive integer"),
  ("out-of-range float flag", ["--val_fraction=1.5"], "flag --val_fraction=1.5"),
]


def run_cli_cases(tmp):
  """Runs every CLI case at once (they only parse flags); returns [(case, stderr)]."""
  bad = os.path.join(tmp, "bad.flags")
  with open(bad, "w") as f:
    f.write("--dataset=fashion_mnist\n--widht=32\n")
  env = {**os.environ, "PYTHONPATH": ROOT}
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        "-m",
        "experiments.fashion_mnist",
        f"--workdir={tmp}/w{i}",
        *(a.format(bad_flagfile=bad, tmp=tmp) for a in args),
      ],
      cwd=ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i, (_, args, _) in enumerate(CLI_CASES)
  ]
  return [(c, p.communicate(timeout=300)[1], p.returncode) for c, p in zip(CLI_CASES, procs)]


# Refused by the entry point itself, after the flags parse but before any work: exit status 1 and one
# line, `error: ...`, naming the flag. {file} is a regular file, so no folder can be made under it.
REFUSED = [
  ("a repeated seed", "fashion_mnist", ["--workdir={tmp}/w", "--seeds=0,0"], "error: seeds repeats 0"),
  ("a negative seed (table1's --seeds)", "table1", ["--workdir={tmp}/w", "--seeds=0,-1"], "error: --seeds must be non"),
  ("a workdir that cannot be created", "fashion_mnist", ["--workdir={file}/run"], "error: --workdir={file}/run"),
  (
    "a record directory that cannot be created",
    "fashion_mnist",
    ["--workdir={tmp}/w", "--input=stream", "--records_dir={file}/r"],
    "error: --records_dir={file}/r",
  ),
  ("export to a path that cannot be created", "export", ["--workdir={tmp}/w", "--out={nope}"], "error: --out={nope}"),
  ("records to a path that cannot be created", "write_records", ["--out={file}/r"], "error: --out={file}/r"),
  (
    "figures to a path that cannot be created",
    "report",
    ["--workdir={tmp}/w", "--figures_dir={file}/f"],
    "error: --figures_dir={file}/f",
  ),
]


def run_refused_cases(tmp):
  """Runs every REFUSED case at once; returns [(case, stderr, exit status)] with the paths filled in."""
  blocked = os.path.join(tmp, "a_file")
  with open(blocked, "w"):
    pass
  # the issue's own example where /proc refuses new entries; elsewhere a path through a file
  names = dict(tmp=tmp, file=blocked, nope="/proc/nope" if os.path.isdir("/proc/self") else f"{blocked}/out")
  cases = [
    (what, module, [a.format(**names) for a in args], line.format(**names)) for what, module, args, line in REFUSED
  ]
  procs = [
    subprocess.Popen(
      [sys.executable, "-m", f"experiments.{module}", *args],
      cwd=ROOT,
      env={**os.environ, "PYTHONPATH": ROOT},
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for _, module, args, _ in cases
  ]
  return [(c, p.communicate(timeout=600)[1], p.returncode) for c, p in zip(cases, procs)]


def test_bad_seeds_and_unwritable_folders_are_one_line_before_any_work(tmp_path):
  for (what, _, _, line), stderr, code in run_refused_cases(str(tmp_path)):
    assert code == 1, (what, code, stderr)
    assert stderr.strip().splitlines() == [stderr.strip()] and stderr.startswith(line), (what, stderr)
    assert "cannot be written" in stderr or "seeds" in stderr, (what, stderr)
  assert not os.path.exists(tmp_path / "w")  # refused before anything was written


def test_every_folder_flag_is_checked_and_nothing_is_created(tmp_path, capsys):
  from absl import flags as absl_flags

  from experiments import flags as flags_lib

  names = ("workdir", "out", "records_dir", "data_cache", "figures_dir", "compile_cache")
  values = absl_flags.FlagValues()
  for name in names:
    absl_flags.DEFINE_string(name, None, "", flag_values=values)
  values(["prog"])
  (tmp_path / "a_file").write_text("")
  for name in names:
    values[name].value = str(tmp_path / "a_file" / "x")
    with pytest.raises(SystemExit) as e:
      flags_lib.check_output_dirs(names, values)
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert (
      err.startswith(f"error: --{name}={tmp_path}/a_file/x cannot be written: {tmp_path}/a_file")
      and err.count("\n") == 1
    ), err
    values[name].value = str(tmp_path / "new" / name)  # creatable: passes, and is not created by the check
  flags_lib.check_output_dirs(names, values)
  values["compile_cache"].value = "none"
  flags_lib.check_output_dirs(names, values)
  assert sorted(os.listdir(tmp_path)) == ["a_file"]


def test_flag_errors_are_one_line_before_anything_runs(tmp_path):
  for (what, _, phrase), stderr, code in run_cli_cases(str(tmp_path)):
    assert code != 0, what
    first = stderr.strip().splitlines()[0]
    assert phrase in first, (what, stderr)
    assert "Traceback" not in stderr and "epoch" not in stderr, (what, stderr)


if __name__ == "__main__":  # prints BUILD.md's table with the exact messages
  with tempfile.TemporaryDirectory() as root:
    blobs = _blobs_split()
    interrupted_dir = make_interrupted(os.path.join(root, "interrupted"), blobs)
    print("| # | bad input | refused with (exact text; paths are the test's temp dirs) | test |")
    print("|---|---|---|---|")
    row = 0
    for name, what, error, _, fn in CASES:
      tmp = tempfile.mkdtemp(dir=root)
      mp = pytest.MonkeyPatch()
      try:
        fn(tmp, blobs, interrupted_dir, mp)
        message = "NOT REFUSED"
      except error as e:
        message = f"{type(e).__name__}: {e}"
      finally:
        mp.undo()
      row += 1
      print(
        f"| {row} | {what} | `{message.replace(root, '<tmp>').replace('|', '/')}` | "
        f"test_bad_input.py::test_refused_with_one_line[{name}] |"
      )
    for (what, _, _, _), stderr, _ in run_refused_cases(root):
      row += 1
      print(
        f"| {row} | {what} | `{stderr.strip().replace(root, '<tmp>')}` | "
        "test_bad_input.py::test_bad_seeds_and_unwritable_folders_are_one_line_before_any_work |"
      )
    for (what, _, _), stderr, _ in run_cli_cases(root):
      row += 1
      line = stderr.strip().splitlines()[0].replace(root, "<tmp>")
      print(
        f"| {row} | {what} | `{line}` (+ absl's `Pass --helpshort or --helpfull to see help on flags.`) | "
        f"test_bad_input.py::test_flag_errors_are_one_line_before_anything_runs |"
      )

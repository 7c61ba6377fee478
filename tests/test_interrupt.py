"""Ctrl-C and SIGTERM (a preemption notice) stop a run within seconds with one line saying where it
stopped and the command that resumes it; that command finishes the run with the results of an
uninterrupted one. An unwritable workdir, a full disk and a read-only one are one line too."""

import gc
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import fresh_process_checks
import pytest

from experiments import flags
from scripts.compare_results import compare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
SMOKE = "--flagfile=experiments/configs/fashion_mnist_smoke.flags"


def _run(args, **kw):
  env = {**os.environ, "PYTHONPATH": ROOT}
  return subprocess.Popen(
    [sys.executable, "-m", "experiments.fashion_mnist", *args], cwd=ROOT, env=env, text=True, **kw
  )


HANG = 600  # seconds after which a run that should have ended counts as hung: no test depends on speed


def _wait_for(condition, proc) -> bool:
  """Polls `condition` until it holds (True) or `proc` has ended without it (False); HANG bounds it."""
  deadline = time.monotonic() + HANG
  while time.monotonic() < deadline:
    if condition():
      return True
    if proc.poll() is not None:
      return condition()
    time.sleep(0.02)
  return False


def _catches_sigterm(pid: int) -> bool:
  """Whether process `pid` has a handler for SIGTERM (Linux: the SigCgt mask of /proc/PID/status)."""
  try:
    with open(f"/proc/{pid}/status") as f:
      mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
  except (OSError, StopIteration):
    return False
  return bool(mask & (1 << (signal.SIGTERM - 1)))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("whole") / "run")
  assert _run([SMOKE, f"--workdir={workdir}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).wait() == 0
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)


@pytest.mark.skipif(not os.path.isdir(FASHION_DIR), reason="apt-get install dataset-fashion-mnist")
@pytest.mark.parametrize(
  "sig,code,name",
  # SIGTERM's one line and exit code are checked in the default suite during start-up (below)
  [pytest.param(signal.SIGTERM, 143, "SIGTERM", marks=pytest.mark.slow), (signal.SIGINT, 130, "Ctrl-C")],
)
def test_an_interrupted_run_says_how_to_resume_and_resumes_to_the_same_results(
  tmp_path, uninterrupted, sig, code, name
):
  workdir = str(tmp_path / "run")
  log = tmp_path / "stderr.txt"
  with open(log, "w") as err:
    proc = _run([SMOKE, f"--workdir={workdir}"], stdout=subprocess.DEVNULL, stderr=err)
    # the signal comes once the run says it is training (its first epoch line), however long that takes
    assert _wait_for(lambda: "block epoch   1" in log.read_text(), proc), log.read_text()
    proc.send_signal(sig)
    proc.send_signal(sig)  # pressed twice (or a scheduler's second notice): still the one line
    assert proc.wait(timeout=HANG) == code  # a hang fails; a slow machine does not
  text = log.read_text()
  last = text.strip().splitlines()[-1]
  assert "Traceback" not in text and last.startswith(f"interrupted by {name} during: [seed 0 quicknet]"), text
  assert not os.path.exists(os.path.join(workdir, "results.json"))
  command = last.split("resume with: ")[1]
  argv = shlex.split(command)
  assert argv[:3] == ["python", "-m", "experiments.fashion_mnist"] and f"--workdir={workdir}" in argv
  resumed = subprocess.run(
    [sys.executable, *argv[1:]], cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True
  )
  assert resumed.returncode == 0, resumed.stderr
  with open(os.path.join(workdir, "results.json")) as f:
    differences, _ = compare(uninterrupted, json.load(f))
  assert differences == [], differences


def test_an_unwritable_workdir_is_one_line(tmp_path):
  (tmp_path / "a_file").write_text("")
  done = _run([SMOKE, f"--workdir={tmp_path / 'a_file' / 'run'}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  _, err = done.communicate(timeout=HANG)
  assert done.returncode == 1 and "Traceback" not in err, err
  assert err.strip().splitlines()[-1].startswith(f"error: --workdir={tmp_path / 'a_file' / 'run'} cannot be written")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads a process's signal handlers in /proc")
@pytest.mark.parametrize(
  "module,sig,code,name,line",
  [
    ("experiments.fashion_mnist", signal.SIGTERM, 143, "SIGTERM", "during start-up; nothing was written"),
    ("experiments.fashion_mnist", signal.SIGINT, 130, "Ctrl-C", "during start-up; nothing was written"),
    ("experiments.predict", signal.SIGTERM, 143, "SIGTERM", "during start-up; nothing was written"),
  ],
)
def test_a_signal_during_start_up_is_one_line_too(tmp_path, module, sig, code, name, line):
  """A Ctrl-C or preemption notice that comes while python is still importing jax (before the entry
  point's own handlers exist) is noted by the `experiments` package and answered with the same one line,
  not swallowed by one of jax's callbacks. The signal is sent the moment that package's handlers exist
  (seen in /proc), not after a guessed delay."""
  env = {**os.environ, "PYTHONPATH": ROOT}
  args = [SMOKE, f"--workdir={tmp_path / 'run'}"] if module.endswith("fashion_mnist") else ["--workdir=x", "--images=y"]
  proc = subprocess.Popen(
    [sys.executable, "-m", module, *args],
    cwd=ROOT,
    env=env,
    text=True,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
  )
  # python is up and has imported `experiments`; jax and the library take seconds more
  assert _wait_for(lambda: _catches_sigterm(proc.pid), proc) and proc.poll() is None
  proc.send_signal(sig)
  _, err = proc.communicate(timeout=HANG)
  assert proc.returncode == code and "Traceback" not in err and "Exception ignored" not in err, err
  last = err.strip().splitlines()[-1]
  assert last.startswith(f"interrupted by {name}") and line in last, err


def test_a_ctrl_c_raised_inside_a_gc_callback_still_ends_the_run(capsys):
  """Python prints and drops an exception raised in a gc callback (jax registers one): a Ctrl-C that
  lands there is delivered again and ends the run with its one line, not with a printed traceback."""
  delivered = []

  def callback(phase, info):
    del info
    if phase == "start" and not delivered:
      delivered.append(True)
      signal.raise_signal(signal.SIGINT)  # its handler runs here, inside the callback

  gc.callbacks.append(callback)
  try:
    with pytest.raises(SystemExit) as stopped, flags.one_line_errors(lambda message: None, left="kept"):
      gc.collect()
      for _ in range(3000):  # ends at once when the signal is delivered again (a failure ends after 30 s)
        time.sleep(0.01)
  finally:
    gc.callbacks.remove(callback)
  assert delivered and stopped.value.code == 130
  err = capsys.readouterr().err
  assert "Exception ignored" not in err and err.strip().startswith("interrupted by Ctrl-C; kept: "), err


def _private_mounts() -> bool:
  """Whether this machine lets a process mount file systems in a mount namespace of its own."""
  if shutil.which("unshare") is None or shutil.which("mount") is None:
    return False
  return subprocess.run(["unshare", "--mount", "--map-root-user", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not os.path.isdir(FASHION_DIR), reason="apt-get install dataset-fashion-mnist")
@pytest.mark.skipif(not _private_mounts(), reason="needs unshare and mount (a mount namespace of its own)")
def test_a_full_disk_and_a_read_only_disk_are_one_line_and_the_rerun_resumes(tmp_path, uninterrupted):
  """The smoke run on a small tmpfs: the disk fills while block 0 trains, then (resumed, with space)
  the file system turns read-only while the end-to-end network trains. Each ends in one line naming
  what could not be written and the fix, nothing after it and no temporary file; the rerun finishes
  with the results of an uninterrupted run. The changes come on logged events, not after delays."""
  done = subprocess.run(
    ["unshare", "--mount", "--map-root-user", *fresh_process_checks.command("full_then_read_only_disk", tmp_path)],
    cwd=ROOT,
    env={**os.environ, "PYTHONPATH": ROOT},
    capture_output=True,
    text=True,
    timeout=HANG,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads((tmp_path / "report.json").read_text())
  if "skip" in report:
    pytest.skip(report["skip"])
  for case, start in (("full", "error: no space left on device"), ("read_only", "error: ")):
    run = report[case]
    last = run["stderr"].strip().splitlines()[-1]
    assert run["rc"] == 1 and "Traceback" not in run["stderr"] and last.startswith(start), (case, run["stderr"])
    assert case == "full" or "read-only file system" in last, run["stderr"]
    assert "rerun the same command to resume" in last and run["temporary"] == [], (case, last, run["temporary"])
  # the last rerun trains no QuickNet block again: those were all saved before the file system turned read-only
  resumed_log = report["resumed"]["stderr"]
  assert report["resumed"]["rc"] == 0 and "[seed 0 quicknet] block epoch" not in resumed_log, resumed_log
  resumed = json.loads((tmp_path / "results.json").read_text())
  assert compare(uninterrupted, resumed)[0] == []

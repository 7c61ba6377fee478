"""Ctrl-C and SIGTERM (a preemption notice) stop a run within seconds with one line saying where it
stopped and the command that resumes it; that command finishes the run with the results of an
uninterrupted one. An unwritable workdir is one line too."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

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
@pytest.mark.parametrize("module,line", [("experiments.fashion_mnist", "resume with: "), ("experiments.predict", "")])
def test_a_sigterm_during_start_up_is_one_line_too(tmp_path, module, line):
  """A preemption notice that comes while python is still importing jax (before the entry point's own
  handler exists) is noted by the `experiments` package and answered with the same one line. The signal
  is sent the moment that package's handler exists (seen in /proc), not after a guessed delay."""
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
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=HANG)
  assert proc.returncode == 143 and "Traceback" not in err, err
  last = err.strip().splitlines()[-1]
  assert last.startswith("interrupted by SIGTERM") and line in last, err

"""The parent of a `--distributed` run: it runs the training process as its child and turns every way
that child can end into one line on stderr.

Why a parent: jax ends a process of a multi-process run from C++ when its coordination service reports
a fatal error — a peer that stopped sending heartbeats, a coordinator that never answered, a shutdown
barrier the others never reached — with a LOG(FATAL) abort: a check-failure stack trace on stderr and
exit status 134. No Python code of the dying process runs (no `except`, no `atexit`, no signal
handler), so it cannot say what happened itself; its parent can. So the command the user starts
re-executes itself as a child (`run`); the child's C-level stderr (jax's and gloo's diagnostics, abort
traces) goes to WORKDIR/process_<id>.log, and its Python stderr (progress lines, the project's one-line
errors) comes back through a pipe: the parent shows those lines as they come and keeps the last one.
When the child ends without a line of its own, the parent writes one from what it saw: the coordinator
was not reached within `--coordinator_timeout` (the parent stops the child then), or process K died
(jax's diagnostic names it), with the last progress line and the command that resumes the run. A
Python traceback from the child goes to the log, and to the terminal only when it is the child's own
failure rather than the result of a dead peer.

The child (`attach_child`, `child_exits`) dies with its parent (PR_SET_PDEATHSIG on Linux), so killing the
command the user started kills the whole process; and when it stops on its own (an error, Ctrl-C,
SIGTERM) it ends at once with `os._exit` after its line, because jax's exit-time shutdown barrier would
otherwise hold it for minutes waiting for peers that are still training; they see it gone within
`--heartbeat_timeout` and stop with their own line.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import selectors
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from typing import Optional

CHILD_ENV = "QUICKNETS_JAX_SUPERVISOR"  # in the child's environment: "<message pipe fd>:<parent pid>"
_MARK = "\x00quicknets-supervisor:"  # a line the child sends the parent, never shown
CONNECT_GRACE_SECONDS = 2.0  # past --coordinator_timeout, the parent stops a child jax has not stopped
_DRAIN_SECONDS = 2.0  # after the child exits: how long a grandchild may keep its pipes open
_TAIL_BYTES = 1 << 16  # how much of jax's diagnostics the parent keeps to read which process died
_OWN_LINES = ("error:", "interrupted by")  # the child's own last lines (experiments/flags.py)
_PR_SET_PDEATHSIG = 1

_attached = False


def is_child() -> bool:
  """Whether this process is the child of a supervising parent (after `attach_child` too)."""
  return _attached or CHILD_ENV in os.environ


def attach_child() -> None:
  """In the child, first thing: Python's stderr goes to the parent, and the child dies with it."""
  global _attached
  fd, parent = os.environ.pop(CHILD_ENV).split(":")  # popped: grandchildren are not children of ours
  sys.stderr = open(int(fd), "w", buffering=1, encoding="utf-8", errors="backslashreplace")
  _attached = True
  try:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
  except (OSError, AttributeError):  # not Linux: a killed parent leaves the child to its heartbeat
    return
  if os.getppid() != int(parent):  # the parent died before prctl took effect
    os._exit(1)


def mark(status: str) -> None:
  """Tells the parent how far the child is ("connecting", "connected"); does nothing unsupervised."""
  if _attached:
    print(_MARK + status, file=sys.stderr, flush=True)


@contextlib.contextmanager
def child_exits() -> Iterator[None]:
  """Around the command's body: in a supervised child, any end but success ends the process at once,
  with its line; unsupervised, nothing.

  `os._exit` rather than a normal exit: jax's `atexit` shutdown waits (300 s) at a barrier for the
  other processes, which are still training; ended at once, they see this one gone within
  `--heartbeat_timeout` instead.

  Yields:
    None, once.
  """
  if not _attached:
    yield
    return
  try:
    yield
  except SystemExit as e:
    if e.code is None or e.code == 0:
      raise
    if not isinstance(e.code, int):
      print(e.code, file=sys.stderr)
    _exit_now(e.code if isinstance(e.code, int) else 1)
  except BaseException:  # a bug: its traceback goes to the parent, which shows it
    traceback.print_exc()
    _exit_now(1)


def _exit_now(code: int) -> None:
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):
      pass
  os._exit(code)


def _child_command() -> list:
  """This process's command line, run again with this interpreter."""
  main = sys.modules.get("__main__")
  module = getattr(getattr(main, "__spec__", None), "name", None)
  return [sys.executable, *(["-m", module] if module else [sys.argv[0]]), *sys.argv[1:]]


def _append(path: str, data: bytes) -> None:
  """Appends to the log, reopened every time: `--overwrite` empties the workdir after the start."""
  try:
    with open(path, "ab") as f:
      f.write(data)
  except OSError:
    pass


class _Watch:
  """What the parent has seen of its child: the lines shown, the last one, the marks, jax's tail."""

  def __init__(self, log_path: str):
    self.log_path = log_path
    self.partial = b""
    self.last: Optional[str] = None
    self.held: list = []  # a traceback, shown only if it turns out to be the child's own failure
    self.connecting_since: Optional[float] = None
    self.connected = False
    self.diagnostics = b""

  def messages(self, data: bytes) -> None:
    self.partial += data
    *lines, self.partial = self.partial.split(b"\n")
    for raw in lines:
      self.line(raw.decode("utf-8", errors="replace"))

  def line(self, line: str) -> None:
    if line.startswith(_MARK):
      status = line[len(_MARK) :]
      if status == "connecting":
        self.connecting_since = time.monotonic()
      self.connected |= status == "connected"
      return
    _append(self.log_path, (line + "\n").encode())
    if self.held or line.startswith("Traceback (most recent call last):"):
      self.held.append(line)
      return
    print(line, file=sys.stderr, flush=True)
    if line.strip():
      self.last = line.strip()

  def diagnostic(self, data: bytes) -> None:
    _append(self.log_path, data)
    self.diagnostics = (self.diagnostics + data)[-_TAIL_BYTES:]

  def flush(self) -> None:
    if self.partial:
      self.line(self.partial.decode("utf-8", errors="replace"))
      self.partial = b""


def dead_processes(diagnostics: str, own_id: int) -> tuple:
  """(the ids of the other processes jax's diagnostics say died, how it knows): those "unhealthy
  (stopped sending heartbeats)", or process 0 when the coordinator it hosts stopped answering ("the
  leader task"); ([], "") when they name none."""
  found = re.search(r"unhealthy \(stopped sending heartbeats\):\s*((?:\S*?\d+\s*)+)", diagnostics)
  if found:
    ids = {int(i) for i in re.findall(r"(?:task:)?(\d+)(?=\s|$)", found.group(1))}
    return sorted(ids - {own_id}), "it stopped sending heartbeats"
  if "leader task was preempted/died" in diagnostics and own_id != 0:
    return [0], "the coordinator it hosts stopped answering"
  return [], ""


def unreachable_line(address: Optional[str], process_id: int, num_processes: int, timeout: float) -> str:
  """The line for a coordinator not reached (or, on process 0, peers that never joined) in time."""
  if process_id == 0:
    others = "process 1" if num_processes == 2 else f"processes 1..{num_processes - 1}"
    return (
      f"error: process 0 of {num_processes} hosts the coordinator at {address}, but the other processes did not "
      f"all join within {timeout:g} s: start {others} with --coordinator_address={address} "
      "(an address of this host they can reach), or raise --coordinator_timeout"
    )
  return (
    f"error: process {process_id} of {num_processes} could not reach the coordinator at {address} within "
    f"{timeout:g} s: start process 0 first (it hosts the coordinator), check that --coordinator_address is "
    "process 0's host:port and reachable from here, or raise --coordinator_timeout"
  )


def stopped_line(
  diagnostics: str,
  process_id: int,
  num_processes: int,
  returncode: int,
  last: Optional[str],
  log_path: str,
  command: str,
) -> str:
  """The line for a child that died after connecting: which process died (from jax's `diagnostics`),
  where this one was, and how to resume."""
  dead, why = dead_processes(diagnostics, process_id)
  if dead:
    names = ", ".join(map(str, dead))
    what = f"process {names} of {num_processes} died ({why}), so process {process_id} stopped"
  elif returncode < 0:
    what = f"process {process_id} of {num_processes} was ended by {signal.Signals(-returncode).name}"
  else:
    what = f"process {process_id} of {num_processes} stopped (exit status {returncode})"
  where = f" during: {last[:160]}" if last else ""
  return (
    f"error: {what}{where} (jax's report: {log_path}); finished blocks and epochs are checkpointed — start "
    f"every process again with its command; resume with: {command}"
  )


def run(
  address: Optional[str],
  num_processes: Optional[int],
  process_id: Optional[int],
  timeout: float,
  workdir: str,
  command: str,
) -> int:
  """Runs this command again as a supervised child; returns the exit status to end with.

  Args:
    address: `--coordinator_address` (None where jax finds it itself, e.g. on Cloud TPU).
    num_processes: `--num_processes` (None likewise).
    process_id: `--process_id` (None likewise).
    timeout: `--coordinator_timeout`: the child is stopped when it has not connected this many seconds
      (plus `CONNECT_GRACE_SECONDS`) after it started to.
    workdir: the run's workdir (checked writable): WORKDIR/process_<id>.log gets everything the child
      wrote.
    command: the command that resumes the run (`flags.resume_command()`).

  Returns:
    0 when the child finished; otherwise non-zero after one line on stderr (the child's own, or the
    parent's).
  """
  pid = 0 if process_id is None else process_id
  n = num_processes or 1
  os.makedirs(workdir, exist_ok=True)
  log_path = os.path.join(workdir, f"process_{pid}.log")
  _append(log_path, f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {command}\n".encode())
  messages_r, messages_w = os.pipe()
  diagnostics_r, diagnostics_w = os.pipe()
  received, children = [], []
  watch = _Watch(log_path)

  def forward(signum, frame):
    received.append(signum)
    for child in children:  # before it has connected, a signal would not end the child with its line
      try:
        child.send_signal(signum) if watch.connected else child.kill()
      except ProcessLookupError:
        pass

  previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    child = subprocess.Popen(
      _child_command(),
      stderr=diagnostics_w,
      pass_fds=(messages_w,),
      env={**os.environ, CHILD_ENV: f"{messages_w}:{os.getpid()}"},
      start_new_session=True,  # a Ctrl-C at the terminal reaches the parent only, which passes it on once
    )
    children.append(child)
    if received:  # it came while the child was being started
      child.kill()
    os.close(messages_w)
    os.close(diagnostics_w)
    timed_out = False
    selector = selectors.DefaultSelector()
    selector.register(messages_r, selectors.EVENT_READ, watch.messages)
    selector.register(diagnostics_r, selectors.EVENT_READ, watch.diagnostic)
    exited_at = None
    while selector.get_map():
      for key, _ in selector.select(timeout=0.2):
        data = os.read(key.fd, 1 << 16)
        if data:
          key.data(data)
        else:
          selector.unregister(key.fd)
          os.close(key.fd)
      since = watch.connecting_since
      if since is not None and not watch.connected and not timed_out:
        if time.monotonic() > since + timeout + CONNECT_GRACE_SECONDS and child.poll() is None:
          child.kill()
          timed_out = True
      if child.poll() is not None:
        exited_at = exited_at or time.monotonic()
        if time.monotonic() - exited_at > _DRAIN_SECONDS:
          break
    watch.flush()
    code = child.wait()
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
  return _conclude(watch, code, received, address, pid, n, timeout, log_path, command)


def _conclude(watch, code, received, address, pid, n, timeout, log_path, command) -> int:
  """The exit status the parent ends with, after the line the child did not write itself."""
  if code == 0:
    return 0
  own = watch.last is not None and watch.last.startswith(_OWN_LINES)
  diagnostics = watch.diagnostics.decode("utf-8", errors="replace")
  line = None
  if received and not own:
    what = "SIGTERM" if received[0] == signal.SIGTERM else "Ctrl-C"
    if watch.connected:
      where = f" during: {watch.last[:160]}" if watch.last else ""
      line = f"interrupted by {what}{where}; finished epochs and blocks are checkpointed — resume with: {command}"
    else:
      line = f"interrupted by {what} during start-up; nothing was written"
    status = 143 if received[0] == signal.SIGTERM else 130
  elif received:
    status = code if code > 0 else 1
  elif watch.connecting_since is not None and not watch.connected and not own:
    line, status = unreachable_line(address, pid, n, timeout), 1
  elif own:
    status = code if code > 0 else 1
  elif watch.connected and (code < 0 or "Terminating process" in diagnostics):
    line, status = stopped_line(diagnostics, pid, n, code, watch.last, log_path, command), 1
  else:  # the child's own failure (a bug): its traceback, as an unsupervised run would show it
    for held in watch.held:
      print(held, file=sys.stderr)
    line = f"error: process {pid} of {n} failed (exit status {code}); everything it wrote is in {log_path}"
    status = code if code > 0 else 1
  if line:
    _append(log_path, (line + "\n").encode())
    print(line, file=sys.stderr, flush=True)
  return status

"""Checks the tests run in a fresh process of their own, because what they check is per process:

  python -m tests.fresh_process_checks NAME [ARG ...]

from the repository root. An entry point's flags are defined when its module is imported (experiments.cifar10
and experiments.imagenet define the same flags, so one process can hold only one of them); the persistent
compilation cache is set up once per process and read back by the next one; a download is killed midway.
`run` starts one the way the tests do. Not collected by pytest (no `test_` prefix); a failed check exits
non-zero with its assertion. Each check imports what it needs itself: the imports are part of the check."""

import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def command(name: str, *args) -> list:
  """The command line that runs check `name` with `args` (from the repository root)."""
  return [sys.executable, "-m", "tests.fresh_process_checks", name, *map(str, args)]


def run(name: str, *args, timeout: int = 300) -> subprocess.CompletedProcess:
  """Runs check `name` with `args` in a fresh process; returns the finished process."""
  return subprocess.run(command(name, *args), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _print_config(flagfile: str, keys: tuple) -> None:
  """Parses experiments/configs/FLAGFILE with the flags an entry point defined and prints the config's
  values of `keys` on one line."""
  from absl import flags

  from experiments import common

  flags.FLAGS.unparse_flags()
  flags.FLAGS(["x", f"--flagfile=experiments/configs/{flagfile}", "--workdir=/tmp/unused"])
  config = common.config_from_flags().to_json()
  print(*(config[key] for key in keys))


def print_configs(module: str, *flagfiles: str) -> None:
  """Runs experiments.MODULE's main with --print_config on each flagfile, in this one process (an entry
  point's flags are defined once per process); prints one JSON line per flagfile: {"flagfile", "config"}."""
  import contextlib
  import importlib
  import io

  from absl import flags

  from experiments import common

  entry = importlib.import_module(f"experiments.{module}")
  main = getattr(entry, "main", common.main)
  for path in flagfiles:
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["x", f"--flagfile={path}", "--workdir=/tmp/unused", "--print_config"])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
      main([])
    print(json.dumps(dict(flagfile=path, config=json.loads(printed.getvalue()))))


def cifar10_paper_flags() -> None:
  """Prints the config experiments/configs/cifar10.flags parses into (model, width, blocks, learning rate,
  augment, cache_features, classifier width, VGG config)."""
  from experiments import cifar10  # noqa: F401  (defines the flags)

  keys = ("model", "width", "num_blocks", "learning_rate", "augment", "cache_features", "classifier_width", "vgg_cfg")
  _print_config("cifar10.flags", keys)


def imagenet_paper_flags() -> None:
  """Prints the config experiments/configs/imagenet.flags parses into (a line), then imagenet_smoke.flags's
  (image size, epochs, block layers; a second line)."""
  from experiments import imagenet  # noqa: F401  (defines the flags)

  keys = ("dataset", "model", "image_size", "width", "num_blocks", "learning_rate", "block_layers", "cache_features")
  _print_config("imagenet.flags", keys)
  _print_config("imagenet_smoke.flags", ("image_size", "max_epochs", "block_layers"))


def compile_with_cache(folder: str) -> None:
  """Enables the persistent compilation cache in `folder` ("none": off), compiles a function that is slow
  to compile and prints the cache folder and the compile summary as one JSON line."""
  import jax
  import jax.numpy as jnp

  from quicknets_jax.training import compilation

  folder = compilation.enable_persistent_cache(folder)
  entries = compilation.cache_entries()

  def slow_to_compile(x):  # ~1 s to compile on CPU: well above MIN_COMPILE_SECONDS
    for i in range(300):
      x = jnp.tanh(x @ x.T * 0.01 + i)
    return x

  with compilation.CompileMeter() as meter:
    jax.jit(slow_to_compile)(jnp.ones((16, 16))).block_until_ready()
  print(json.dumps(dict(folder=folder, **compilation.compile_summary(meter, entries))))


def download(name: str, url: str, md5: str, folder: str) -> None:
  """Downloads `url` (checksum `md5`) as `name` into `folder`, quietly."""
  from quicknets_jax.data import download as d

  d.download(d.RemoteFile(name, url, md5), folder, log=lambda m: None)


def killed_while_writing(kind: str, path: str) -> None:
  """Replaces the file or folder `path` (kind "file" or "folder", `core.files`) and kills itself with
  SIGKILL halfway through writing the new one: what a kill at the worst moment leaves."""
  import signal

  from quicknets_jax.core import files

  if kind == "file":
    with files.replaced_file(path) as f:
      f.write("the new file's first half\n")
      f.flush()
      os.kill(os.getpid(), signal.SIGKILL)
  with files.replaced_folder(path) as folder:
    with open(os.path.join(folder, "block_0.jax"), "w") as f:
      f.write("the new export's first block")
    os.kill(os.getpid(), signal.SIGKILL)


def interrupted_predict(signal_name: str, workdir: str, images: str, out: str) -> None:
  """Runs `python -m experiments.predict` (its main, with these flags) and sends itself SIGNAL_NAME
  ("SIGINT" or "SIGTERM") once the cascade starts: the process must end with the tool's one line."""
  import signal

  from absl import app

  from experiments import predict
  from quicknets_jax.workflows.trained import TrainedQuickNet

  def interrupted(*args, **kwargs):
    os.kill(os.getpid(), getattr(signal, signal_name))
    raise AssertionError("the signal did not stop the tool")

  TrainedQuickNet.predict = interrupted
  sys.argv = ["experiments/predict.py", f"--workdir={workdir}", f"--images={images}", f"--out={out}"]
  app.run(predict.main)


def _train_until(folder: str, name: str, event: str, then) -> dict:
  """Runs the smoke training into FOLDER/mnt/run, calls `then()` once its stderr shows `event`, and
  returns {"rc", "stderr", "temporary": files a writer left behind} when it ends."""
  import glob

  from quicknets_jax.core import files

  err_path = os.path.join(folder, f"{name}.err")
  with open(err_path, "w") as err:
    proc = subprocess.Popen(
      [
        sys.executable,
        "-m",
        "experiments.fashion_mnist",
        "--flagfile=experiments/configs/fashion_mnist_smoke.flags",
        f"--workdir={os.path.join(folder, 'mnt', 'run')}",
      ],
      cwd=ROOT,
      env={**os.environ, "PYTHONPATH": ROOT},
      stdout=subprocess.DEVNULL,
      stderr=err,
    )
    while proc.poll() is None and event not in open(err_path).read():
      time.sleep(0.02)
    then()
    rc = proc.wait(timeout=600)
  paths = glob.glob(os.path.join(folder, "mnt", "**", "*"), recursive=True) + glob.glob(
    os.path.join(folder, "mnt", "**", ".*"), recursive=True
  )
  temporary = [p for p in paths if files.TEMPORARY.fullmatch(os.path.basename(p)) or "checkpoint-tmp" in p]
  return {"rc": rc, "stderr": open(err_path).read(), "temporary": temporary}


def full_then_read_only_disk(folder: str) -> None:
  """In a mount namespace of its own (the test starts it under `unshare`): trains the smoke run on a
  small tmpfs at FOLDER/mnt that fills up once block 0 trains; frees the space and resumes until the
  end-to-end network trains, when the file system turns read-only; makes it writable and resumes to the
  end. Writes FOLDER/report.json ({"skip": why} where tmpfs cannot be mounted here) and the finished
  run's results as FOLDER/results.json."""
  import shutil

  mnt = os.path.join(folder, "mnt")
  os.makedirs(mnt, exist_ok=True)
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", mnt], capture_output=True, text=True)
  if mounted.returncode:
    with open(os.path.join(folder, "report.json"), "w") as f:
      json.dump({"skip": f"cannot mount a tmpfs: {mounted.stderr.strip()}"}, f)
    return

  def fill():
    with open(os.path.join(mnt, "filler"), "wb") as f:
      try:
        while True:
          f.write(b"\0" * (1 << 20))
          f.flush()
      except OSError:
        pass

  def remount(mode):
    # refused while a file there is open for writing (a checkpoint being written): again until it is not
    while subprocess.run(["mount", "-o", f"remount,{mode}", mnt], capture_output=True).returncode:
      time.sleep(0.01)

  report = {"full": _train_until(folder, "full", "block epoch   1", fill)}
  os.remove(os.path.join(mnt, "filler"))
  report["read_only"] = _train_until(folder, "read_only", "[seed 0 end-to-end]", lambda: remount("ro"))
  remount("rw")
  report["resumed"] = _train_until(folder, "resumed", "\n", lambda: None)
  shutil.copy(os.path.join(mnt, "run", "results.json"), os.path.join(folder, "results.json"))
  with open(os.path.join(folder, "report.json"), "w") as f:
    json.dump(report, f)


CHECKS = {
  "full_then_read_only_disk": full_then_read_only_disk,
  "interrupted_predict": interrupted_predict,
  "killed_while_writing": killed_while_writing,
  "print_configs": print_configs,
  "cifar10_paper_flags": cifar10_paper_flags,
  "imagenet_paper_flags": imagenet_paper_flags,
  "compile_with_cache": compile_with_cache,
  "download": download,
}

if __name__ == "__main__":
  CHECKS[sys.argv[1]](*sys.argv[2:])

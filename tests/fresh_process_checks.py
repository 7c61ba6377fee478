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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def command(name: str, *args) -> list:
  """The command line that runs check `name` with `args` (from the repository root)."""
  return [sys.executable, "-m", "tests.fresh_process_checks", name, *map(str, args)]


def run(name: str, *args, timeout: int = 300) -> subprocess.CompletedProcess:
  """Runs check `name` with `args` in a fresh process; returns the finished process."""
  return subprocess.run(command(name, *args), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def cifar10_paper_flags() -> None:
  """Prints the config experiments/configs/cifar10.flags parses into (model, width, blocks, learning rate,
  augment, cache_features, classifier width, VGG config)."""
  from absl import flags

  from experiments import cifar10, common  # noqa: F401  (cifar10 defines the flags)

  flags.FLAGS(["x", "--flagfile=experiments/configs/cifar10.flags", "--workdir=/tmp/unused"])
  c = common.config_from_flags().to_json()
  print(
    c["model"],
    c["width"],
    c["num_blocks"],
    c["learning_rate"],
    c["augment"],
    c["cache_features"],
    c["classifier_width"],
    c["vgg_cfg"],
  )


def imagenet_paper_flags() -> None:
  """Prints the config experiments/configs/imagenet.flags parses into (a line), then imagenet_smoke.flags's
  (image size, epochs, block layers; a second line)."""
  from absl import flags

  from experiments import common, imagenet  # noqa: F401  (imagenet defines the flags)

  flags.FLAGS(["x", "--flagfile=experiments/configs/imagenet.flags", "--workdir=/tmp/unused"])
  c = common.config_from_flags().to_json()
  print(
    c["dataset"],
    c["model"],
    c["image_size"],
    c["width"],
    c["num_blocks"],
    c["learning_rate"],
    c["block_layers"],
    c["cache_features"],
  )
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["x", "--flagfile=experiments/configs/imagenet_smoke.flags", "--workdir=/tmp/unused"])
  s = common.config_from_flags().to_json()
  print(s["image_size"], s["max_epochs"], s["block_layers"])


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


CHECKS = {
  "cifar10_paper_flags": cifar10_paper_flags,
  "imagenet_paper_flags": imagenet_paper_flags,
  "compile_with_cache": compile_with_cache,
  "download": download,
}

if __name__ == "__main__":
  CHECKS[sys.argv[1]](*sys.argv[2:])

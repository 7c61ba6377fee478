"""Writes a SYNTHETIC tarball in the real cifar-10-python.tar.gz format, for pipeline checks only.

CIFAR-10 cannot be downloaded offline; the smoke config (`experiments/configs/cifar10_smoke.flags`)
needs *some* file in the exact format to exercise the tarball reader, the VGG QuickNet and the report.
The images are generated: each class is a noisy colour gradient with its own hue and direction, so
the exits have something learnable. A SYNTHETIC_README.txt beside the tarball says so. Numbers trained on it
mean nothing about CIFAR-10 and must never be reported as results.

  python scripts/make_cifar_smoke_data.py --out=/tmp/quicknets_cifar10_smoke
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from quicknets_jax.data.cifar import TARBALL, write_cifar_tar  # noqa: E402


def synthetic_images(n: int, seed: int, num_classes: int = 10):
  """uint8 [n, 32, 32, 3] class-coloured gradients plus noise, and their labels (synthetic)."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, n)
  angles = np.linspace(0, np.pi, num_classes, endpoint=False)
  hues = np.random.default_rng(1234).uniform(40, 215, (num_classes, 3))
  yy, xx = np.mgrid[0:32, 0:32] / 31.0 - 0.5
  ramp = np.cos(angles)[:, None, None] * xx + np.sin(angles)[:, None, None] * yy  # [C, 32, 32]
  images = hues[labels][:, None, None, :] + 80 * ramp[labels][..., None]
  images += rng.normal(0, 40, images.shape)
  return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.uint8)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="/tmp/quicknets_cifar10_smoke", help="directory for the tarball")
  parser.add_argument("--num_train", type=int, default=1000)
  parser.add_argument("--num_test", type=int, default=500)
  args = parser.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  train_x, train_y = synthetic_images(args.num_train, seed=0)
  test_x, test_y = synthetic_images(args.num_test, seed=1)
  path = os.path.join(args.out, TARBALL)
  write_cifar_tar(path, train_x, train_y, test_x, test_y)
  with open(os.path.join(args.out, "SYNTHETIC_README.txt"), "w") as f:
    f.write(
      "cifar-10-python.tar.gz here is SYNTHETIC (scripts/make_cifar_smoke_data.py): generated class "
      "patterns in the CIFAR-10 file format, for pipeline checks only. It is not CIFAR-10.\n"
    )
  print(f"wrote {path}: {args.num_train} train + {args.num_test} test SYNTHETIC images (pipeline checks only)")


if __name__ == "__main__":
  main()

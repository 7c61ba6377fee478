"""Runs an exported cascade with its own loader alone, as a user's process would (the tests start it as
`python tests/exported_cascade_check.py EXPORT_DIR PIXELS.npy ANSWERS.npz BATCH_SIZE` from another folder,
without the repository root on the path):

EXPORT_DIR's cascade_loader.py predicts the images in PIXELS.npy in batches of BATCH_SIZE and its answers
are saved to ANSWERS.npz; the check fails when anything imported quicknets_jax. Imports numpy and the
loader only (not collected by pytest: no `test_` prefix)."""

import sys

import numpy as np


def main(export_dir: str, pixels: str, answers: str, batch_size: str) -> None:
  sys.path.insert(0, export_dir)
  import cascade_loader

  found = cascade_loader.load(export_dir).predict(np.load(pixels), batch_size=int(batch_size))
  assert not [m for m in sys.modules if m.startswith("quicknets_jax")], "the loader imported the package"
  np.savez(answers, **found)


if __name__ == "__main__":
  main(*sys.argv[1:])

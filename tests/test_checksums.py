"""Stored weights are checked before they are used: a byte flipped in a frozen block's checkpoint or in
a per-epoch checkpoint is one error naming the file and the fix, never weights that load silently wrong.
(An exported cascade's files: tests/test_predict_export.py.)"""

import os

import numpy as np
import pytest

from quicknets_jax.training.checkpoint import BlockCheckpointer, CheckpointError, load_tree, save_tree

VARIABLES = {"params": {"subnet": {"kernel": np.arange(4096, dtype=np.float32).reshape(64, 64)}}}


def _flip_a_byte_of(path, pattern: bytes):
  data = bytearray(open(path, "rb").read())
  at = data.find(pattern)
  assert at >= 0, path
  data[at] ^= 0x01
  open(path, "wb").write(bytes(data))


def test_a_flipped_byte_in_a_frozen_block_is_named_before_it_loads(tmp_path):
  checkpoints = BlockCheckpointer(str(tmp_path))
  checkpoints.save(0, VARIABLES, {"block": 0}, np.arange(3), np.arange(2))
  assert os.path.exists(tmp_path / "0" / "sha256.json")
  template = [{"params": {"subnet": {"kernel": np.zeros((64, 64), np.float32)}}}]
  variables, _, _ = BlockCheckpointer(str(tmp_path)).restore(template)
  np.testing.assert_array_equal(variables[0]["params"]["subnet"]["kernel"], VARIABLES["params"]["subnet"]["kernel"])
  # the largest file of the block's variables holds the kernel
  stored = [os.path.join(d, n) for d, _, names in os.walk(tmp_path / "0" / "variables") for n in names]
  largest = max(stored, key=os.path.getsize)
  data = bytearray(open(largest, "rb").read())
  data[len(data) // 2] ^= 0x01
  open(largest, "wb").write(bytes(data))
  with pytest.raises(
    CheckpointError, match=r"block 0 .* is damaged \(.+ does not match its sha256\); delete .*/0 to retrain"
  ) as refused:
    BlockCheckpointer(str(tmp_path)).restore(template)
  assert "\n" not in str(refused.value)


def test_a_flipped_byte_in_an_epochs_checkpoint_is_refused(tmp_path):
  path = str(tmp_path / "3.npz")
  save_tree(path, VARIABLES, {"epoch": 3})
  _flip_a_byte_of(path, np.float32(2000.0).tobytes())  # inside the kernel's data
  with pytest.raises(Exception, match="CRC"):  # the .npz's zip members carry a CRC-32, checked on load
    load_tree(path, VARIABLES)

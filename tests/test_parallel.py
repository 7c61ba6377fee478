"""Data parallel on 8 fake CPU devices (each check of tests/multidevice_checks.py in its own process:
XLA_FLAGS must be set before jax starts, and 8 fake devices slow every other test): one data-parallel SGD
step equals the single-device step, batch norm statistics included; odd batches are padded to the device
count and masked."""

import pytest
from multidevice_checks import run


@pytest.mark.parametrize("model,batch", [("vgg", 32), ("mlp", 30)])
def test_one_data_parallel_sgd_step_equals_the_single_device_step(model, batch):
  """VGG (batch norm over the global batch, crop + flip drawn from the step's key): 32 rows, 4 per
  device. MLP: 30 rows padded to 32 and the 2 extra rows masked out of the loss. (Batch norm would
  see padding rows in its batch statistics — as the single-device trainer's last partial batch does.)"""
  proc = run("data_parallel_step", model, batch)
  assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
  assert "max |params_1 - params_8|" in proc.stdout

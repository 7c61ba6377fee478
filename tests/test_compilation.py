"""Compile seconds and the persistent compilation cache (`training.compilation`, `--compile_cache`)."""

import json
import os
import subprocess
import sys
import threading

import fresh_process_checks
import jax
import jax.numpy as jnp
import pytest
from conftest import fit_data_of

from benchmarks.fault_injection import write_tiny_idx
from quicknets_jax import models
from quicknets_jax.data.split import Split
from quicknets_jax.models.base import split_variables
from quicknets_jax.training import compilation, losses
from quicknets_jax.training.schedule import FitConfig
from quicknets_jax.training.trainer import FitData, Objective, compile_ahead, fit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_meter_counts_compiles_and_not_cached_calls():
  fn = jax.jit(lambda x: jnp.sin(x) @ x.T + 1.5)
  x = jnp.ones((8, 8))
  with compilation.CompileMeter() as first:
    fn(x).block_until_ready()
  with compilation.CompileMeter() as again:
    fn(x).block_until_ready()
  assert first.seconds > 0 and again.seconds == 0


def test_every_epoch_records_its_compile_seconds(blobs):
  x, y, vx, vy = blobs
  model = models.mlp((6, 6, 1), 4, width=24, num_blocks=1)
  params, state = split_variables(model.init(jax.random.PRNGKey(0))[0])
  data = fit_data_of(x, y, vx, vy)
  # a loss no other test builds: its epoch compiles here, in the first epoch, and never again
  objective = Objective(losses.BlockLoss(model.blocks[0], None, 0.123))
  config = FitConfig(batch_size=64, max_epochs=3, early_stop_patience=5)
  state_ = fit(objective, params, state, data, config, jax.random.PRNGKey(1))
  seconds = [r["compile_seconds"] for r in state_.history]
  assert seconds[0] > 0 and seconds[1:] == [0.0, 0.0]
  assert compilation.fit_compile_seconds(state_.history) == pytest.approx(seconds[0])


def _run(folder):
  """Compiles in a fresh process with the persistent cache in `folder`; returns its compile summary."""
  out = fresh_process_checks.run("compile_with_cache", folder)
  assert out.returncode == 0, out.stderr[-2000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # two processes; the CLI test covers the cache state
def test_a_second_process_reads_its_compiles_back_from_the_cache(tmp_path):
  folder = str(tmp_path / "xla")
  cold, warm = _run(folder), _run(folder)
  assert cold["folder"] == folder and cold["cache"] == "cold" and cold["cache_hits"] == 0
  assert warm["cache"] == "warm" and warm["entries_at_start"] > 0 and warm["cache_hits"] >= 1
  assert warm["total"] < cold["total"]  # reading back is cheaper than compiling (here ~1 s vs ~0.05 s)
  off = _run("none")
  assert off["folder"] is None and off["cache"] == "off" and off["cache_hits"] == 0


def test_an_unusable_cache_folder_is_one_line_naming_the_flag(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  with pytest.raises(ValueError, match="--compile_cache=none"):
    compilation.enable_persistent_cache(str(blocker / "xla"))


@pytest.mark.slow  # whole CLI runs; the meter's own tests stay
def test_the_cli_records_compile_seconds_and_the_cache_state(tmp_path):
  write_tiny_idx(str(tmp_path / "mnist"))
  cache = tmp_path / "xla"
  args = [
    sys.executable,
    "-m",
    "experiments.mnist",
    f"--data_dir={tmp_path / 'mnist'}",
    "--seeds=0",
    "--max_epochs=1",
    "--width=16",
    "--num_blocks=2",
    f"--compile_cache={cache}",
  ]
  runs = []
  for name in ("cold", "warm"):
    out = subprocess.run([*args, f"--workdir={tmp_path / name}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    runs.append(json.loads((tmp_path / name / "results.json").read_text()))
  cold, warm = runs
  assert cold["compile_seconds"]["cache"] == "cold" and warm["compile_seconds"]["cache"] == "warm"
  assert warm["compile_seconds"]["cache_hits"] > 0
  assert cold["compute_dtype"] == "float32"  # auto on CPU
  seed = cold["quicknet"]["per_seed"][0]
  # block 0 compiles its own fit; a thread compiles block 0's commitment head and block 1's fit ahead
  assert len(seed["compile_seconds_per_block"]) == 2 and seed["compile_seconds_per_block"][0] > 0
  assert all(s > 0 for s in seed["background_compile_seconds_per_block"])
  assert cold["end_to_end"]["per_seed"][0]["compile_seconds"] > 0
  assert "persistent cache cold" in (tmp_path / "cold" / "results.md").read_text()


@pytest.mark.parametrize("convolves", [False, True], ids=["steps on device", "steps from the host"])
def test_programs_compiled_ahead_on_a_thread_are_the_ones_the_fit_runs(blobs, convolves):
  """`trainer.compile_ahead` on another thread, from the data's shapes alone: the fit then compiles
  nothing in any epoch, and only meters open on the compiling thread (or counting every thread) saw it."""
  x, y, vx, vy = blobs
  if convolves:
    model = models.vgg((6, 6, 1), 4, width=2, cfg=[4, "M", 4], num_blocks=2, classifier_width=8)
  else:
    model = models.mlp((6, 6, 1), 4, width=24, num_blocks=1)
  params, state = split_variables(model.init(jax.random.PRNGKey(0))[0])
  # a loss no other test builds: nothing is compiled for it before this test
  objective = Objective(losses.BlockLoss(model.blocks[0], None, 0.321 + convolves))
  config = FitConfig(batch_size=64, max_epochs=2, early_stop_patience=5)
  shapes = FitData.whole(
    Split(jax.ShapeDtypeStruct(x.shape, x.dtype), y), Split(jax.ShapeDtypeStruct(vx.shape, vx.dtype), vy), 4
  )
  key = jax.random.PRNGKey(1)
  seen = {}

  def ahead():
    with compilation.CompileMeter() as meter:
      compile_ahead(objective, params, state, shapes, config, key)
    seen["thread"] = meter.seconds

  with compilation.CompileMeter() as here, compilation.CompileMeter(every_thread=True) as everywhere:
    thread = threading.Thread(target=ahead)
    thread.start()
    thread.join()
  assert seen["thread"] > 0 and here.seconds == 0 and everywhere.seconds == pytest.approx(seen["thread"])
  fitted = fit(objective, params, state, fit_data_of(*blobs), config, key)
  assert [r["compile_seconds"] for r in fitted.history] == [0.0, 0.0]

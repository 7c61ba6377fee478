"""The per-epoch metrics log: valid JSON lines with the keys every line must carry, TensorBoard event files
readable without TensorFlow, cumulative FLOPs that end where the results' totals end, and the
progress line that stays quiet off a terminal.

`tiny_run()` trains one tiny seed on synthetic blobs once per process; test_report.py reuses it.
"""

import functools
import io
import json
import os
import struct
import tempfile

import numpy as np
from conftest import make_blobs

from quicknets_jax import data as data_lib
from quicknets_jax.core.progress import Progress, track
from quicknets_jax.workflows import metrics
from quicknets_jax.workflows.experiment import train_and_evaluate
from quicknets_jax.workflows.experiment_config import ExperimentConfig

CLASS_NAMES = ("near", "mid", "far", "farthest")


def tiny_dataset():
  """Four synthetic classes on 6×6 images: enough for every block to learn something, fast."""
  x, y = make_blobs(1200, num_classes=4, seed=0)
  vx, vy = make_blobs(300, num_classes=4, seed=1)
  tx, ty = make_blobs(400, num_classes=4, seed=2)
  return data_lib.Dataset(
    name="blobs",
    train=data_lib.Split(x, y),
    val=data_lib.Split(vx, vy),
    test=data_lib.Split(tx, ty),
    num_classes=4,
    class_names=CLASS_NAMES,
  )


TINY_CONFIG = ExperimentConfig().replace(width=16, num_blocks=3, seeds=(0,), max_epochs=2, batch_size=64)


@functools.cache
def tiny_run() -> str:
  """The workdir of one finished tiny run (QuickNet + end-to-end, one seed), made once per process."""
  workdir = tempfile.mkdtemp(prefix="quicknets_tiny_run_")
  train_and_evaluate(TINY_CONFIG, workdir, log=lambda m: None, dataset=tiny_dataset())
  return workdir


def _read_events(path):
  """Scalars (tag, step, value) of a TensorBoard event file, parsed with tensorboardX's protos only."""
  from tensorboardX.proto import event_pb2

  scalars = []
  with open(path, "rb") as f:
    data = f.read()
  offset = 0
  while offset < len(data):
    (length,) = struct.unpack("<Q", data[offset : offset + 8])
    event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])  # skip the length's crc
    offset += 12 + length + 4
    for value in event.summary.value:
      scalars.append((value.tag, event.step, value.simple_value))
  return scalars


def test_metrics_log_is_json_lines_with_the_required_keys():
  workdir = tiny_run()
  with open(os.path.join(workdir, metrics.METRICS_FILE)) as f:
    lines = [json.loads(text) for text in f]  # every line parses on its own
  assert lines
  epochs = [line for line in lines if line["phase"] in ("block", "commitment", "end_to_end")]
  for line in epochs:
    assert set(metrics.REQUIRED_KEYS) <= set(line), set(metrics.REQUIRED_KEYS) - set(line)
    assert line["samples_left"] > 0 and line["learning_rate"] > 0 and line["wall_seconds"] >= 0
  quicknet = [line for line in epochs if line["model"] == "quicknet"]
  assert {line["block"] for line in quicknet} == {0, 1, 2}
  assert {line["phase"] for line in quicknet} == {"block", "commitment"}
  flops = [line["training_flops"] for line in quicknet]
  assert flops == sorted(flops) and flops[0] > 0  # cumulative
  e2e = [line for line in epochs if line["model"] == "end_to_end"]
  assert [line["epoch"] for line in e2e] == [1, 2] and all("test_accuracy" in line for line in e2e)


def test_cumulative_flops_end_at_the_reported_totals():
  workdir = tiny_run()
  lines = metrics.read_metrics(workdir)
  with open(os.path.join(workdir, "seed_0", "quicknet.json")) as f:
    quicknet = json.load(f)
  with open(os.path.join(workdir, "seed_0", "end_to_end.json")) as f:
    e2e = json.load(f)
  total = 0.0
  for part in quicknet["training_flops_parts"]:
    j = part["block"]
    total += sum(v for k, v in part.items() if k != "block")
    last = [
      line for line in lines if line["model"] == "quicknet" and line["block"] == j and line["phase"] == "commitment"
    ][-1]
    # one cost model: the block's last epoch line is its total but for the learned-set selection,
    # which runs after that epoch
    assert last["training_flops"] == total - part["selection"]
  assert total == quicknet["training_flops"]
  last_e2e = [line for line in lines if line["model"] == "end_to_end"][-1]
  assert last_e2e["training_flops"] == e2e["training_flops"]
  after = [line for line in lines if line["phase"] == "after_block"]
  assert [line["test_accuracy"] for line in after] == quicknet["test_accuracy_after_block"]
  assert after[-1]["test_accuracy"] == quicknet["test_accuracy"]
  assert [h["test_accuracy"] for h in e2e["history"]] == [
    line["test_accuracy"] for line in lines if line["model"] == "end_to_end"
  ]


def test_tensorboard_events_hold_the_same_numbers():
  workdir = tiny_run()
  run_dir = os.path.join(workdir, metrics.TENSORBOARD_DIR, "seed_0", "end_to_end")
  (event_file,) = [name for name in os.listdir(run_dir) if name.startswith("events.out.tfevents")]
  scalars = _read_events(os.path.join(run_dir, event_file))
  by_tag = {}
  for tag, step, value in scalars:
    by_tag.setdefault(tag, []).append((step, value))
  lines = [line for line in metrics.read_metrics(workdir) if line["model"] == "end_to_end"]
  assert [s for s, _ in by_tag["end_to_end/val_accuracy"]] == [1, 2]
  np.testing.assert_allclose(
    [v for _, v in by_tag["end_to_end/val_accuracy"]], [line["val_accuracy"] for line in lines], rtol=1e-6
  )
  assert {
    "end_to_end/loss",
    "end_to_end/learning_rate",
    "end_to_end/training_flops",
    "end_to_end/samples_left",
    "end_to_end/test_accuracy",
  } <= set(by_tag)
  assert os.path.isdir(os.path.join(workdir, metrics.TENSORBOARD_DIR, "seed_0", "quicknet"))


def test_writer_without_tensorboard_and_reader(tmp_path):
  with metrics.MetricsWriter(str(tmp_path), tensorboard=False) as writer:
    writer.write(dict(run="r", phase="block", block=0, epoch=1, loss=0.5))
  assert metrics.read_metrics(str(tmp_path))[0]["loss"] == 0.5
  assert not os.path.exists(tmp_path / metrics.TENSORBOARD_DIR)
  assert metrics.read_metrics(str(tmp_path / "none")) == []


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_progress_shows_rate_and_eta_on_a_terminal_and_nothing_elsewhere():
  terminal = _Terminal()
  assert list(track(range(4), "sweep", unit="thresholds", stream=terminal)) == [0, 1, 2, 3]
  text = terminal.getvalue()
  assert "sweep" in text and "4/4 thresholds" in text and "thresholds/s" in text and "eta" in text
  assert text.endswith("\n") and "\r" in text
  pipe = io.StringIO()
  with Progress(3, "quiet", stream=pipe) as progress:
    for _ in range(3):
      progress.update()
  assert pipe.getvalue() == ""

"""Peak memory of the streamed input path against its budget: `python -m benchmarks.stream_memory`.

The real Fashion-MNIST training split, each image upsampled `--scale`× by pixel repetition (so the
dataset is `--scale`² times larger: 56×56 by default), is written as a record directory; the
end-to-end MLP then trains one epoch on it (and validates) in three fresh processes:
  - `runtime`: streamed, an epoch of only the first 1,280 training images, through the same compiled
    programs and the same validation pass: the process, JAX, the model and the pipeline's start;
  - `stream`:  streamed, every image, `--memory_budget_mb` for the input pipeline;
  - `memory`:  the same images read into memory first (what `--input=memory` holds).
Each reports its peak resident set (`getrusage` maxrss). The streamed path holds its budget when
peak(stream) ≤ peak(runtime) + budget while the dataset is ≥ 4× the budget: streaming 42× more images
adds no more than the budget to what the process holds anyway. Results go to
benchmarks/results/stream_memory.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks.common import DEFAULT_OUT, start, write

RUNTIME_IMAGES = 1280  # 10 batches of 128


def write_scaled_records(directory: str, scale: int) -> dict:
  """The real Fashion-MNIST with every image upsampled `scale`× (pixel repetition), as records."""
  from quicknets_jax.data import datasets, records

  train_x, train_y, test_x, test_y = datasets.load_arrays("fashion_mnist")
  up = lambda x: np.repeat(np.repeat(x, scale, axis=1), scale, axis=2)
  return records.write_records(
    directory, "fashion_mnist", up(train_x), train_y, up(test_x), test_y, datasets.CLASS_NAMES["fashion_mnist"]
  )


def child(mode: str, directory: str, budget_mb: float, batch_size: int) -> dict:
  """One epoch of end-to-end MLP training (and its validation pass) on the record directory.

  `runtime` trains on the first RUNTIME_IMAGES training images only, with the working set padded to
  the full split's bucket: the same compiled programs and validation pass as `stream`, so the two
  peaks differ only by what streaming the whole split adds.
  """
  import jax
  import jax.numpy as jnp

  from quicknets_jax.data import records, streaming
  from quicknets_jax.data.split import Split
  from quicknets_jax.models.base import split_blocks
  from quicknets_jax.models.registry import build_model
  from quicknets_jax.training import losses
  from quicknets_jax.training.schedule import FitConfig
  from quicknets_jax.training.trainer import FitData, Objective, bucket_size, fit

  options = streaming.StreamOptions(memory_budget_mb=budget_mb)
  train, test = records.RecordImages(directory, "train"), records.RecordImages(directory, "test")
  splits = streaming.streamed_splits(train, test, 0.1, None, None, options)
  images, val_images = splits.train.images, splits.val.images
  if mode == "memory":  # what --input=memory holds: the splits as float32 arrays
    images, val_images = (streaming.standardise(v.source.read(v.rows)[0], v.mean, v.std) for v in (images, val_images))
  n = len(splits.train.labels)
  trained = min(RUNTIME_IMAGES, n) if mode == "runtime" else n
  model = build_model("mlp", images.shape[1:], 10, hidden=(150, 100, 50))
  params, state = split_blocks(model.init(jax.random.PRNGKey(0)))
  labels = jnp.asarray(splits.train.labels)
  data = FitData(
    Split(streaming.device_array(images), labels),
    Split(streaming.device_array(val_images), jnp.asarray(splits.val.labels)),
    rows=jnp.arange(trained, dtype=jnp.int32),
    row_classes=labels[:trained],
    num_classes=10,
    bucket=bucket_size(n),
  )
  config = FitConfig(max_epochs=1, batch_size=batch_size)
  start = time.perf_counter()
  result = fit(Objective(losses.EndToEndLoss(model)), params, state, data, config, jax.random.PRNGKey(1))
  seconds = time.perf_counter() - start
  return dict(
    mode=mode,
    images=int(trained),
    peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    seconds=seconds,
    samples_per_second=trained / seconds,
    val_accuracy=float(result.history[-1]["val_accuracy"]),
    backend=jax.default_backend(),
  )


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--memory_budget_mb", type=float, default=32.0)
  parser.add_argument("--scale", type=int, default=2, help="upsampling of each image side (dataset grows scale²)")
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=3, help="fresh processes per run (the median peak is reported)")
  parser.add_argument("--records_dir", default=None, help="where the scaled records go (default: a temp dir)")
  parser.add_argument("--out", default=DEFAULT_OUT)
  parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    start()
    print(json.dumps(child(args.child, args.records_dir, args.memory_budget_mb, args.batch_size)))
    return
  with tempfile.TemporaryDirectory() as tmp:
    directory = args.records_dir or os.path.join(tmp, "records")
    meta = write_scaled_records(directory, args.scale)
    shape, counts = meta["image_shape"], meta["counts"]
    file_mb = os.path.getsize(os.path.join(directory, "train.array_record")) / 2**20
    decoded_mb = counts["train"] * 4 * int(np.prod(shape)) / 2**20
    results = {}
    for mode in ("runtime", "stream", "memory"):
      command = [sys.executable, "-m", "benchmarks.stream_memory", "--child", mode, "--records_dir", directory]
      command += ["--memory_budget_mb", str(args.memory_budget_mb), "--batch_size", str(args.batch_size)]
      repeats = []
      for _ in range(args.repeats):  # a peak moves by tens of MiB from run to run (XLA compiles, threads)
        out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
        repeats.append(json.loads(out.strip().splitlines()[-1]))
        print(f"{mode}: {repeats[-1]}", file=sys.stderr, flush=True)
      peaks = sorted(r["peak_rss_mb"] for r in repeats)
      results[mode] = {**repeats[0], "peak_rss_mb": float(np.median(peaks)), "peak_rss_mb_each": peaks}
      results[mode]["samples_per_second"] = float(np.median([r["samples_per_second"] for r in repeats]))
  budget = args.memory_budget_mb
  over_runtime = results["stream"]["peak_rss_mb"] - results["runtime"]["peak_rss_mb"]
  payload = dict(
    image_shape=shape,
    train_records=counts["train"],
    records_file_mb=file_mb,
    decoded_float32_mb=decoded_mb,
    memory_budget_mb=budget,
    dataset_over_budget=file_mb / budget,
    stream_over_runtime_mb=over_runtime,
    holds=bool(over_runtime <= budget and file_mb >= 4 * budget),
    runs=results,
  )
  rows = "\n".join(
    f"| {m} | {r['images']} | {r['peak_rss_mb']:.0f} ({', '.join(f'{p:.0f}' for p in r['peak_rss_mb_each'])}) "
    f"| {r['samples_per_second']:.0f} | {r['val_accuracy']:.4f} |"
    for m, r in results.items()
  )
  markdown = (
    f"# Streamed input: peak memory against the budget\n\n"
    f"Real Fashion-MNIST upsampled {args.scale}× to {shape[0]}×{shape[1]}: {counts['train']} training records, "
    f"{file_mb:.0f} MiB of array_record ({decoded_mb:.0f} MiB as float32), {file_mb / budget:.1f}× the "
    f"--memory_budget_mb={budget:g}. One epoch of the end-to-end MLP (150-100-50) plus validation, batch "
    f"{args.batch_size}.\n\n| Run | Training images | Peak RSS (MiB): median (each run) | Samples/s | Val. accuracy |\n"
    f"|---|---|---|---|---|\n{rows}\n\nStreamed peak − runtime peak (medians over {args.repeats} processes each): "
    f"{over_runtime:.0f} MiB "
    f"({'within' if over_runtime <= budget else 'over'} the {budget:g} MiB budget).\n"
  )
  write("stream_memory", payload, markdown, args.out)
  print(markdown)


if __name__ == "__main__":
  main()

"""`python -m benchmarks.export_speed --workdir=runs/fashion_mnist`: images/s of the exported early-exit
cascade (`experiments.export` + its loader, JAX alone) against the end-to-end network and the in-process
cascade, at the run's operating threshold and batch sizes 1, 64 and 1024.

The workdir is a finished run (the README's first command makes runs/fashion_mnist). Every method gets
the run's test images as uint8 pixels and normalises them itself; rounds alternate the methods in a
rotating order (`workflows.inference_timing.interleaved_seconds`); rates are medians.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
from absl import app, flags, logging

from benchmarks import common
from quicknets_jax.algorithms.cascade import cascade_predict
from quicknets_jax.data.datasets import load_arrays
from quicknets_jax.workflows import cascade_loader as exported_cascade
from quicknets_jax.workflows.export import export_trained
from quicknets_jax.workflows.inference_timing import end_to_end_classifier, interleaved_seconds
from quicknets_jax.workflows.trained import load_trained

flags.DEFINE_string("workdir", "runs/fashion_mnist", "A finished run (python -m experiments.fashion_mnist ...).")
flags.DEFINE_list("batch_sizes", ["1", "64", "1024"], "Batch sizes to time.")
flags.DEFINE_integer("images", 10000, "Test images per timed call at batch sizes above 1.")
flags.DEFINE_integer("single_images", 500, "Test images per timed call at batch size 1.")
flags.DEFINE_integer("repeats", 7, "Timed rounds per batch size.")
flags.DEFINE_string("out_dir", common.DEFAULT_OUT, "Where NAME.json/.md go.")
flags.DEFINE_string("name", "export_speed", "The results' file name (e.g. export_speed_conv for a conv workdir).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  common.start()
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  trained = load_trained(FLAGS.workdir)
  threshold = trained.threshold()
  data = trained.config.data
  pixels = load_arrays(data.dataset, data.data_source, data.data_dir)[2]
  pixels = pixels[..., None] if pixels.ndim == 3 else pixels
  out = tempfile.mkdtemp(prefix="quicknets_export_")
  export_trained(trained, out, threshold)
  exported = exported_cascade.load(out)
  model, variables = trained.model, trained.variables
  end_to_end = end_to_end_classifier(model)

  def e2e(x, batch_size):
    x = trained.normalise(x)
    return [end_to_end(variables, x[i : i + batch_size]) for i in range(0, len(x), batch_size)]

  rows = []
  for batch_size in map(int, FLAGS.batch_sizes):
    x = pixels[: FLAGS.single_images if batch_size == 1 else FLAGS.images]
    want = cascade_predict(model, variables, trained.normalise(x), threshold, batch_size=batch_size)
    got = exported.predict(x, batch_size=batch_size)
    differ = int(np.sum((got["class"] != want.prediction) | (got["exit"] != want.exit_index)))
    seconds = interleaved_seconds(
      {
        "exported": lambda: exported.predict(x, batch_size=batch_size)["class"],
        "in_process": lambda: cascade_predict(model, variables, trained.normalise(x), threshold, batch_size=batch_size),
        "end_to_end": lambda: e2e(x, batch_size),
      },
      FLAGS.repeats,
      warmup=1,
    )
    rate = {name: len(x) / float(np.median(s)) for name, s in seconds.items()}
    rows.append(
      dict(
        batch_size=batch_size,
        images=len(x),
        exported_images_per_second=rate["exported"],
        in_process_cascade_images_per_second=rate["in_process"],
        end_to_end_images_per_second=rate["end_to_end"],
        exported_vs_end_to_end=float(np.median(seconds["end_to_end"] / seconds["exported"])),
        decisions_differing_from_in_process=differ,
      )
    )
  lines = [
    f"{FLAGS.workdir} seed {trained.seed}: {trained.num_blocks} blocks exported at threshold {threshold:.4g}; "
    f"the run's test images as uint8 pixels, {FLAGS.repeats} interleaved rounds, medians.",
    "",
    "| Batch | Images | Exported cascade (images/s) | In-process cascade (images/s) | End-to-end (images/s) "
    "| Exported vs end-to-end | Decisions differing from in-process |",
    "|---|---|---|---|---|---|---|",
  ]
  lines += [
    f"| {r['batch_size']} | {r['images']} | {r['exported_images_per_second']:,.0f} | "
    f"{r['in_process_cascade_images_per_second']:,.0f} | {r['end_to_end_images_per_second']:,.0f} | "
    f"{r['exported_vs_end_to_end']:.2f} | {r['decisions_differing_from_in_process']} |"
    for r in rows
  ]
  common.write(
    FLAGS.name,
    dict(workdir=os.path.abspath(FLAGS.workdir), seed=trained.seed, threshold=threshold, rows=rows),
    "\n".join(lines),
    FLAGS.out_dir,
  )


if __name__ == "__main__":
  app.run(main)

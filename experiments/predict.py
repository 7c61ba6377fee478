"""`python -m experiments.predict --workdir=DIR --images=PATH`: a trained run's early-exit cascade on new
images — for each one its class, class name, the exit that answered, that exit's confidence and
commitment logit — as JSON lines or CSV (README "Use what you trained").

PATH is IDX image file(s) (e.g. t10k-images-idx3-ubyte.gz), a .npy array of pixel values 0..255
([N, H, W] or [N, H, W, C]; for a run trained on arrays, its values as they are, and for one trained on
tabular rows, [N, F]) or a folder of PNG/JPEG files. The workdir may still be training: the blocks
frozen so far answer. The threshold is the run's operating threshold unless --threshold or one target
(--target_mflops, --target_accuracy, --target_exit_fraction, met on the run's validation split) is given.
"""

from __future__ import annotations

import os

from absl import app, flags

from experiments.flags import define_trained_run_flags, start_process, tool_errors, trained_run_from_flags
from quicknets_jax.core.progress import stderr_log
from quicknets_jax.data.images import check_image_shape, read_images
from quicknets_jax.workflows import predict as predict_lib

flags.DEFINE_string("images", None, "IDX image file, .npy array or folder of PNG/JPEG images.", required=True)
flags.DEFINE_string("out", "-", "Where the predictions go ('-': standard output).")
flags.DEFINE_enum(
  "format", None, list(predict_lib.FORMATS), "jsonl or csv (default: from --out's extension, else jsonl)."
)
flags.DEFINE_integer("batch_size", 1024, "Images entering block 0 together.", lower_bound=1)
define_trained_run_flags()
FLAGS = flags.FLAGS


def main(argv) -> None:
  del argv
  start_process(interruptible=True)
  fmt = FLAGS.format or ("csv" if FLAGS.out.endswith(".csv") else "jsonl")
  with tool_errors():  # Ctrl-C and SIGTERM, bad input: one line
    trained, threshold = trained_run_from_flags(stderr_log)
    # a built-in dataset's model reads pixel values; one trained on arrays reads them as they are
    pixels, names = read_images(
      FLAGS.images, pixels=trained.normalisation.divisor == 255.0, shape=tuple(trained.image_shape)
    )
    check_image_shape(pixels, trained.image_shape, FLAGS.images)
    stderr_log(
      f"{FLAGS.workdir} seed {trained.seed}: {trained.num_blocks} of {trained.model.num_blocks} blocks, "
      f"threshold {threshold:.4g}; {len(pixels)} images from {FLAGS.images}"
    )
    result = trained.predict(pixels, threshold, FLAGS.batch_size)
    predict_lib.write_predictions(predict_lib.prediction_rows(result, names, trained.class_names), FLAGS.out, fmt)
    stderr_log(
      predict_lib.summary(result, trained) + ("" if FLAGS.out == "-" else f"; wrote {os.path.abspath(FLAGS.out)}")
    )


if __name__ == "__main__":
  app.run(main)

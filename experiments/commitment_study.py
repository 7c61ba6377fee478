"""`python -m experiments.commitment_study --flagfile=experiments/configs/commitment_study.flags --workdir=DIR`.

Paper §4.4 on the real Fashion-MNIST: a jointly trained multi-exit MLP (SDN loss) with commitment heads
added to its frozen exits, and the QuickNet; three exit rules' cost–accuracy curves, their areas,
accuracy at matched budgets and the per-exit calibration table, mean ± std over seeds
(WORKDIR/results.json and results.md). The flag helpers here are shared with `sdn_cifar10.py`.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS


def define_study_flags(dataset: str, model: str, methods: str, sources=("auto", "idx", "tfds")) -> None:
  """Flags of a commitment study; the arguments are the defaults of --dataset, --model and --methods."""
  flags.DEFINE_string("workdir", None, "Where per-seed results, results.json and results.md go.", required=True)
  flags.DEFINE_bool("overwrite", False, "Start over in a workdir that holds a run with another config.")
  flags.DEFINE_enum("dataset", dataset, ["fashion_mnist", "mnist", "cifar10"], "Dataset.")
  flags.DEFINE_enum("data_source", "auto", list(sources), "Where the data comes from (see quicknets_jax.data).")
  flags.DEFINE_string("data_dir", None, "Directory (or tarball) holding the dataset.")
  flags.DEFINE_float("val_fraction", 0.1, "Last fraction of the training split kept for validation.",
                     lower_bound=0.0, upper_bound=1.0)
  flags.DEFINE_integer("max_train", None, "Use only the first N training samples (smoke runs).", lower_bound=1)
  flags.DEFINE_integer("max_test", None, "Use only the first N test samples (smoke runs).", lower_bound=1)
  flags.DEFINE_enum("model", model, ["mlp", "resnet_sdn"], "Architecture.")
  flags.DEFINE_integer("width", 150, "mlp: units per hidden layer.", lower_bound=1)
  flags.DEFINE_integer("num_blocks", 3, "mlp: blocks (= exits).", lower_bound=1)
  flags.DEFINE_integer("blocks_per_stage", 9, "resnet_sdn: basic blocks per stage (9 = ResNet-56).", lower_bound=1)
  flags.DEFINE_list("methods", methods.split(","), "joint (SDN-trained + commitment heads) and/or quicknet.")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; results are mean ± std over them.")
  flags.DEFINE_integer("batch_size", 128, "Training batch size.", lower_bound=1)
  flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.", lower_bound=0.0)
  flags.DEFINE_integer("max_epochs", 100, "Epoch cap of every fit.", lower_bound=1)
  flags.DEFINE_integer("early_stop_patience", 3, "Epochs without a new validation minimum before stopping.",
                       lower_bound=1)
  flags.DEFINE_integer("ramp_epochs", None, "Epochs over which SDN's loss weights grow to their maximum "
                       "(default: max_epochs, as SDN).", lower_bound=1)
  flags.DEFINE_list("max_weights", None, "SDN's maximum loss weight per internal exit (default 0.9·(i+1)/K).")
  flags.DEFINE_float("train_threshold", 0.9, "QuickNet τ.", lower_bound=0.0, upper_bound=1.0)
  flags.DEFINE_list("budgets", ["0.25", "0.5", "0.75"], "Budgets, as fractions of the full network's cost.")
  flags.DEFINE_list("calibration_thresholds", ["0.5", "0.9"], "Thresholds of the over-confident-wrong rate.")
  flags.DEFINE_integer("eval_batch_size", 2048, "Batch size of evaluation passes.", lower_bound=1)


def study_config_from_flags(**overrides):
  """Reads the flags into a StudyConfig; bad values exit with a one-line message."""
  from quicknets_jax.study import StudyConfig
  try:
    seeds = tuple(int(s) for s in FLAGS.seeds)
    budgets = tuple(float(b) for b in FLAGS.budgets)
    cal = tuple(float(t) for t in FLAGS.calibration_thresholds)
    max_weights = None if FLAGS.max_weights is None else tuple(float(w) for w in FLAGS.max_weights)
  except ValueError as e:
    raise SystemExit(f"error: --seeds, --budgets, --calibration_thresholds and --max_weights take numbers "
                     f"separated by commas ({e})")
  model_kwargs = ((("width", FLAGS.width), ("num_blocks", FLAGS.num_blocks)) if FLAGS.model == "mlp"
                  else (("blocks_per_stage", FLAGS.blocks_per_stage),))
  kwargs = dict(dataset=FLAGS.dataset, data_source=FLAGS.data_source, data_dir=FLAGS.data_dir,
                val_fraction=FLAGS.val_fraction, max_train=FLAGS.max_train, max_test=FLAGS.max_test,
                model=FLAGS.model, model_kwargs=model_kwargs, methods=tuple(FLAGS.methods), seeds=seeds,
                learning_rate=FLAGS.learning_rate, batch_size=FLAGS.batch_size, max_epochs=FLAGS.max_epochs,
                early_stop_patience=FLAGS.early_stop_patience, ramp_epochs=FLAGS.ramp_epochs,
                max_weights=max_weights, train_threshold=FLAGS.train_threshold, budgets=budgets,
                calibration_thresholds=cal, eval_batch_size=FLAGS.eval_batch_size)
  kwargs.update(overrides)
  try:
    return StudyConfig(**kwargs)
  except ValueError as e:
    raise SystemExit(f"error: {e}")


def run_from_flags(config) -> None:
  """train → analyse → write; data and config errors become one line on stderr, exit 1."""
  from quicknets_jax.data import DataError
  from quicknets_jax.progress import stderr_log
  from quicknets_jax.study import run_study
  try:
    run_study(config, FLAGS.workdir, log=stderr_log, overwrite=FLAGS.overwrite)
  except (DataError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(1)
  with open(f"{FLAGS.workdir}/results.md") as f:
    print(f.read())


def main(argv) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)
  run_from_flags(study_config_from_flags())


if __name__ == "__main__":
  define_study_flags("fashion_mnist", "mlp", "joint,quicknet")
  app.run(main)

"""Flags shared by the fully connected experiments and their conversion to an ExperimentConfig."""

from __future__ import annotations

import sys

from absl import flags
from absl import logging

from quicknets_jax.experiment import ExperimentConfig

FLAGS = flags.FLAGS


def define_flags(dataset: str) -> None:
  """Defines every flag of an MLP QuickNet vs end-to-end run; `dataset` is the default dataset."""
  flags.DEFINE_string("workdir", None, "Where checkpoints, results.json and results.md go.", required=True)
  flags.DEFINE_bool("overwrite", False, "Start over in a workdir that holds a run with another config.")
  flags.DEFINE_enum("dataset", dataset, ["fashion_mnist", "mnist", "cifar10", "imagenet2012"], "Dataset.")
  flags.DEFINE_enum("data_source", "auto", ["auto", "idx", "tfds", "cifar_tar"],
                    "auto: a local IDX copy if found (--data_dir, or Debian's dataset-fashion-mnist), else TFDS.")
  flags.DEFINE_string("data_dir", None, "Directory with the four IDX files (train/t10k images/labels); "
                      "cifar10: the tarball's directory; with --data_source=tfds: the TFDS data dir.")
  flags.DEFINE_float("val_fraction", 0.1, "Last fraction of the training split kept for validation.",
                     lower_bound=0.0, upper_bound=1.0)
  flags.DEFINE_integer("max_train", None, "Use only the first N training samples (smoke runs).", lower_bound=1)
  flags.DEFINE_integer("max_test", None, "Use only the first N test samples (smoke runs).", lower_bound=1)
  flags.DEFINE_enum("model", "mlp", ["mlp", "vgg", "densenet"], "Architecture.")
  flags.DEFINE_bool("augment", False, "Random crop (4-px padding) + horizontal flip while training (vgg; "
                    "needs --nocache_features).")
  flags.DEFINE_string("vgg_cfg", "vgg11", "vgg: 'vgg11' or conv widths and M pools, e.g. '64,M,128,M,256'.")
  flags.DEFINE_integer("classifier_width", 4096, "vgg: hidden units of the final exit (VGG's classifier).",
                       lower_bound=1)
  flags.DEFINE_string("block_layers", "densenet121", "densenet: layers per dense block, 'densenet121' "
                      "(6,12,24,16) or a list such as '2,2,2,2'; --width is the growth rate.")
  flags.DEFINE_integer("image_size", None, "imagenet2012: side the images are resized (shorter side) and "
                       "centre-cropped to (default 224).", lower_bound=4)
  flags.DEFINE_bool("data_parallel", True, "Split every batch over all local devices (params replicated) "
                    "when there is more than one.")
  flags.DEFINE_bool("distributed", False, "Multi-host (e.g. a TPU pod slice): call "
                    "jax.distributed.initialize() first; the mesh then spans every host's devices.")
  flags.DEFINE_integer("width", 150, "Units per hidden layer (vgg: channels of the first conv; densenet: the "
                       "growth rate).", lower_bound=1)
  flags.DEFINE_integer("num_blocks", 3, "Blocks (= exits).", lower_bound=1)
  flags.DEFINE_integer("layers_per_block", 1, "Hidden layers per block.", lower_bound=1)
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; results are mean ± std over them.")
  flags.DEFINE_integer("batch_size", 128, "Training batch size.", lower_bound=1)
  flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate (Appendix A: 1e-3 for MLPs).", lower_bound=0.0)
  flags.DEFINE_integer("max_epochs", 100, "Epoch cap per block / per end-to-end run.", lower_bound=1)
  flags.DEFINE_float("plateau_factor", 0.5, "Learning-rate factor on a validation-loss plateau.")
  flags.DEFINE_integer("plateau_patience", 1, "Epochs without improvement before the lr is reduced.",
                       lower_bound=0)
  flags.DEFINE_integer("early_stop_patience", 3, "Epochs without a new validation minimum before stopping.",
                       lower_bound=1)
  flags.DEFINE_bool("balanced_sampling", True, "Draw every class still present equally often (§3.2).")
  flags.DEFINE_float("train_threshold", 0.9, "τ: confidence a sample needs to count as learned.",
                     lower_bound=0.0, upper_bound=1.0)
  flags.DEFINE_string("exit_threshold", "auto",
                      "Inference threshold t in [0, 1], or 'auto' to choose it on the validation split.")
  flags.DEFINE_float("threshold_tolerance", 0.0,
                     "With --exit_threshold=auto: the cheapest threshold within this validation accuracy "
                     "of the best.", lower_bound=0.0, upper_bound=1.0)
  flags.DEFINE_enum("fallback", "most_confident", ["most_confident", "last"],
                    "Which exit answers when none qualifies.")
  flags.DEFINE_bool("cache_features", True, "Compute frozen blocks' features once per block.")
  flags.DEFINE_float("feature_cache_mb", None, "Memory budget of a block's feature cache (MiB); above it "
                     "the frozen prefix is recomputed every step instead (default: no limit).", lower_bound=0.0)
  flags.DEFINE_bool("end_to_end", True, "Also train the end-to-end baseline.")
  flags.DEFINE_integer("eval_batch_size", 2048, "Batch size of evaluation passes.", lower_bound=1)
  # QuickNet+ levers (README "QuickNet+"); the defaults are the faithful QuickNet.
  flags.DEFINE_integer("later_width", None, "QuickNet+: units of the blocks after the first (mlp; default "
                       "--width).", lower_bound=1)
  flags.DEFINE_enum("budget", "val_loss", ["val_loss", "learned_set"],
                    "QuickNet+: what ends a block's training: its validation loss (the paper), or its "
                    "validation learned set (correct, confidence > τ) no longer growing.")
  flags.DEFINE_float("budget_min_delta", 0.01, "learned_set budget: the growth of the validation learned "
                     "fraction that counts as progress.", lower_bound=0.0, upper_bound=1.0)
  flags.DEFINE_integer("budget_patience", 2, "learned_set budget: epochs without progress before the block "
                       "stops.", lower_bound=1)
  flags.DEFINE_float("commit_holdout", 0.0, "QuickNet+: fraction of T_j held out of block j's training; its "
                     "commitment head learns from that slice's correctness.", lower_bound=0.0, upper_bound=1.0)
  flags.DEFINE_float("keep_learned", 0.0, "QuickNet+ soft removal: fraction of each learned set kept in the "
                     "next working set.", lower_bound=0.0, upper_bound=1.0)
  flags.DEFINE_integer("finetune_epochs", 0, "QuickNet+: epochs of joint fine-tuning of every block after "
                       "block-wise training (then the commitment heads retrain).", lower_bound=0)
  flags.DEFINE_float("finetune_lr", 3e-4, "QuickNet+: Adam learning rate of the joint fine-tuning.",
                     lower_bound=0.0)


def config_from_flags() -> ExperimentConfig:
  """Reads the flags into an ExperimentConfig; bad values exit with a one-line message."""
  try:
    seeds = tuple(int(s) for s in FLAGS.seeds)
  except ValueError:
    raise SystemExit(f"error: --seeds must be integers separated by commas, got {','.join(FLAGS.seeds)!r}")
  if FLAGS.exit_threshold == "auto":
    exit_threshold = None
  else:
    try:
      exit_threshold = float(FLAGS.exit_threshold)
    except ValueError:
      raise SystemExit(f"error: --exit_threshold must be 'auto' or a number in [0, 1], got "
                       f"{FLAGS.exit_threshold!r}")
  try:
    return ExperimentConfig(
        dataset=FLAGS.dataset, data_source=FLAGS.data_source, data_dir=FLAGS.data_dir,
        val_fraction=FLAGS.val_fraction, max_train=FLAGS.max_train, max_test=FLAGS.max_test, model=FLAGS.model,
        width=FLAGS.width, num_blocks=FLAGS.num_blocks, layers_per_block=FLAGS.layers_per_block, seeds=seeds,
        batch_size=FLAGS.batch_size, learning_rate=FLAGS.learning_rate, max_epochs=FLAGS.max_epochs,
        plateau_factor=FLAGS.plateau_factor, plateau_patience=FLAGS.plateau_patience,
        early_stop_patience=FLAGS.early_stop_patience, balanced_sampling=FLAGS.balanced_sampling,
        train_threshold=FLAGS.train_threshold, exit_threshold=exit_threshold,
        threshold_tolerance=FLAGS.threshold_tolerance, fallback=FLAGS.fallback,
        cache_features=FLAGS.cache_features, feature_cache_mb=FLAGS.feature_cache_mb, end_to_end=FLAGS.end_to_end, eval_batch_size=FLAGS.eval_batch_size,
        augment=FLAGS.augment, vgg_cfg=FLAGS.vgg_cfg, classifier_width=FLAGS.classifier_width,
        block_layers=FLAGS.block_layers, image_size=FLAGS.image_size,
        later_width=FLAGS.later_width, budget=FLAGS.budget, budget_min_delta=FLAGS.budget_min_delta,
        budget_patience=FLAGS.budget_patience, commit_holdout=FLAGS.commit_holdout,
        keep_learned=FLAGS.keep_learned, finetune_epochs=FLAGS.finetune_epochs, finetune_lr=FLAGS.finetune_lr)
  except ValueError as e:
    raise SystemExit(f"error: {e}")


def run(argv) -> None:
  """absl main: flags → config → train_and_evaluate; errors become one line on stderr, exit 1."""
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax and jax log every save and backend probe at INFO
  from quicknets_jax.data import DataError
  from quicknets_jax.experiment import train_and_evaluate
  from quicknets_jax.progress import stderr_log
  from quicknets_jax import parallel
  if FLAGS.distributed:
    parallel.initialize_distributed()
  config = config_from_flags()
  import jax
  mesh = parallel.make_mesh() if FLAGS.data_parallel and jax.device_count() > 1 else None
  try:
    with parallel.data_parallel(mesh):
      results = train_and_evaluate(config, FLAGS.workdir, log=stderr_log, overwrite=FLAGS.overwrite)
  except (DataError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(1)
  with open(f"{FLAGS.workdir}/results.md") as f:
    print(f.read())
  del results


def run_with_flops_check(argv) -> None:
  """`run`, then adds `flops_check` to WORKDIR/results.json: every block's analytic forward FLOPs beside
  XLA's `cost_analysis()` count, for the model and input shape the flags describe."""
  import json
  import os

  from quicknets_jax import data as data_lib
  from quicknets_jax import models
  from quicknets_jax.flops import flops_check
  run(argv)
  path = os.path.join(FLAGS.workdir, "results.json")
  with open(path) as f:
    results = json.load(f)
  config = config_from_flags()
  if config.dataset in data_lib.DEFAULT_IMAGE_SIZE:  # resized as read (imagenet2012)
    size = config.image_size or data_lib.DEFAULT_IMAGE_SIZE[config.dataset]
    shape = (size, size, 3)
  else:  # the other datasets have one image size
    shape = (32, 32, 3) if config.dataset == "cifar10" else (28, 28, 1)
  num_classes = len(data_lib.CLASS_NAMES[config.dataset])
  model = models.build_model(config.model, shape, num_classes, **config.model_kwargs())
  results["flops_check"] = flops_check(model)
  with open(path, "w") as f:
    json.dump(results, f, indent=1)
  worst = max(abs(b["relative_difference"]) for b in results["flops_check"]["blocks"])
  print(f"FLOPs check: analytic vs XLA per block within {100 * worst:.2f}% (results.json flops_check)")

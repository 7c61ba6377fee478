"""Sequential QuickNet, decoupled QuickNet and end-to-end training side by side, on one device measured and
on K devices modelled.

`run_decoupled_study` runs, for every part (a dataset and a network, each an `ExperimentConfig` with the
deployable cascade measured after every epoch):

- the sequential QuickNet and its end-to-end network (`workflows.experiment.train_and_evaluate`, in
  WORKDIR/<part>/, or in a directory given for the part, e.g. a finished conv study's, read back);
- the decoupled QuickNet (`--schedule=decoupled`, WORKDIR/<part>_decoupled/), and, for the parts named in
  `refresh_parts`, the decoupled QuickNet with the learned rule refreshed once an epoch instead of every
  step (WORKDIR/<part>_decoupled_epoch/);
- the step times of the part's model on this device (`algorithms.pipeline_cost.measure_steps`,
  WORKDIR/<part>_steps.json), and from them and each seed's epochs the modelled wall-clock of the
  decoupled run pipelined over K = 1..max_devices devices and of the end-to-end run data-parallel over
  as many (`pipeline_cost`);

and, for every network in `modelled` that cannot be trained here (the paper's CIFAR-10 VGG-11), its step
times measured on this device and the K-device wall-clock modelled with the epochs of a measured part
that has as many blocks (an assumption the report states); then writes WORKDIR/decoupled_study.json and
decoupled_study.md. Every run is an ordinary resumable one.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Optional

from quicknets_jax.algorithms import pipeline_cost
from quicknets_jax.core import curves, stats
from quicknets_jax.core.progress import Log
from quicknets_jax.reporting.tables import decoupled_study_markdown
from quicknets_jax.workflows.experiment import train_and_evaluate
from quicknets_jax.workflows.workdir import finished, machine_description, read_json, saved, write_results

METHODS = ("sequential", "decoupled", "end_to_end")


@dataclasses.dataclass(frozen=True)
class ModelledNetwork:
  """A network the study only models: its step times are measured here, its epochs borrowed.

  Attributes:
    model: the multi-exit model (built for its own input shape and classes).
    batch_size: its training batch.
    sizes: (training rows, validation rows) of its dataset.
    epochs_from: the measured part whose decoupled and end-to-end epochs (which blocks train in each
      epoch, how many epochs the end-to-end network takes) the model assumes; it must have as many blocks.
    repeats: timed calls per step (a large network's steps are slow on a CPU).
  """

  model: object
  batch_size: int
  sizes: tuple
  epochs_from: str
  repeats: int = 3


@dataclasses.dataclass(frozen=True)
class DeviceModel:
  """The K-device model the study fits every part's runs into (`modelled_devices`).

  Attributes:
    max_devices: the largest K (the model covers K = 1..max_devices).
    link: the device-to-device link.
  """

  max_devices: int = 8
  link: pipeline_cost.Interconnect = pipeline_cost.Interconnect()


def _method_row(results: dict, method: str) -> dict:
  """One method's numbers from a run's results (the QuickNet's or the end-to-end network's)."""
  agg = results["quicknet" if method != "end_to_end" else "end_to_end"]
  seeds = agg["per_seed"]
  row = dict(
    method=method,
    test_accuracy=stats.mean_std([s["test_accuracy"] for s in seeds]),
    inference_flops=agg["inference_flops"],
    training_flops=agg["training_flops"],
    train_seconds=stats.mean_std([s["train_seconds"] for s in seeds]),
  )
  if method == "end_to_end":
    row.update(epochs=agg["epochs"])
  else:
    row.update(exit_fractions=agg["exit_fractions"], epochs_per_block=agg["epochs_per_block"])
    if method == "decoupled":
      row.update(epochs=stats.mean([len(s["network_epochs"]) for s in seeds]))
  return row


def _curves(results: dict, method: str) -> list:
  """Per seed, (training FLOPs so far, test accuracy) after every epoch, as lists."""
  out = []
  for seed in results["quicknet" if method != "end_to_end" else "end_to_end"]["per_seed"]:
    curve = curves.end_to_end_every_epoch(seed) if method == "end_to_end" else curves.quicknet_every_epoch(seed)
    if curve is not None:
      out.append(dict(seed=seed["seed"], flops=[float(v) for v in curve[0]], accuracy=[float(v) for v in curve[1]]))
  return out


def modelled_devices(
  steps: pipeline_cost.MeasuredSteps,
  decoupled: dict,
  end_to_end: dict,
  sizes: tuple[int, int],
  max_devices: int,
  link: pipeline_cost.Interconnect,
) -> dict:
  """The modelled wall-clock on K = 1..max_devices devices, mean over the seeds.

  Args:
    steps: the model's step times on one device.
    decoupled: the decoupled run's results (each seed's `network_epochs` says which blocks trained).
    end_to_end: the end-to-end network's aggregate results (each seed's epochs).
    sizes: (training rows, validation rows).
    max_devices: the largest K.
    link: the device-to-device link.

  Returns:
    A dict: `devices` (K), `decoupled_seconds` and `end_to_end_seconds` (per K), the decoupled seconds
    with stage buffers sized to the rows block 0 leaves to later blocks (`sized_capacity`, +10 %; some
    rows may not fit: an estimate of `--pipeline_capacity`'s gain), the first K at which the
    pipelined decoupled run is modelled faster (`decoupled_faster_from`, None if no K ≤ max_devices is),
    the bubbles' and transfers' share of the decoupled seconds per K, the slowest stage per K, and the
    K = 1 model against the measured one-device seconds (`one_device_check`).
  """
  num_train, num_val = sizes
  devices = list(range(1, max_devices + 1))
  dec_seeds, e2e_seeds = decoupled["quicknet"]["per_seed"], end_to_end["per_seed"]
  dec, e2e, bubbles, transfers, slowest, sized = [], [], [], [], [], []
  # buffers sized to what later blocks need: the rows block 0 leaves to them in the trained net, +10 %
  capacity = min(1.0, 1.1 * stats.mean([s["train_samples_per_block"][1] / num_train for s in dec_seeds]))
  for k in devices:
    runs = [
      pipeline_cost.pipelined_seconds(steps, [r["active"] for r in s["network_epochs"]], num_train, num_val, k, link)
      for s in dec_seeds
    ]
    dec.append(stats.mean([r["seconds"] for r in runs]))
    sized.append(
      stats.mean(
        [
          pipeline_cost.pipelined_seconds(
            steps, [r["active"] for r in s["network_epochs"]], num_train, num_val, k, link, capacity
          )["seconds"]
          for s in dec_seeds
        ]
      )
    )
    bubbles.append(stats.mean([r["bubble_seconds"] / r["seconds"] for r in runs]))
    transfers.append(stats.mean([r["transfer_seconds"] / r["seconds"] for r in runs]))
    slowest.append(runs[0]["stages"][runs[0]["slowest_stage"][0]])
    e2e.append(
      stats.mean(
        [
          pipeline_cost.data_parallel_seconds(steps, s["epochs"], num_train, num_val, k, link)["seconds"]
          for s in e2e_seeds
        ]
      )
    )
  faster = next((k for k, d, e in zip(devices, dec, e2e) if d < e), None)
  measured = dict(
    decoupled=stats.mean([s["train_seconds"] for s in dec_seeds]),
    end_to_end=stats.mean([s["train_seconds"] for s in e2e_seeds]),
  )
  return dict(
    devices=devices,
    decoupled_seconds=dec,
    end_to_end_seconds=e2e,
    sized_capacity=capacity,
    decoupled_seconds_sized_buffers=sized,
    decoupled_faster_from=faster,
    bubble_share=bubbles,
    transfer_share=transfers,
    slowest_stage_blocks=slowest,
    one_device_check=dict(
      decoupled_modelled=dec[0],
      decoupled_measured=measured["decoupled"],
      end_to_end_modelled=e2e[0],
      end_to_end_measured=measured["end_to_end"],
    ),
  )


def part_summary(name: str, base: dict, decoupled: dict, model_rows: dict, refresh: Optional[dict] = None) -> dict:
  """One part's rows: the three methods, paired differences and ratios, the curves and the K-device model.

  Args:
    name: the part's name (e.g. "fashion_mnist_mlp").
    base: the sequential QuickNet and end-to-end run's results.
    decoupled: the decoupled QuickNet run's results.
    model_rows: `modelled_devices`' output.
    refresh: the run with the learned rule refreshed once an epoch, if there is one.

  Returns:
    The part's summary (JSON-ready).
  """
  seq_seeds, dec_seeds = base["quicknet"]["per_seed"], decoupled["quicknet"]["per_seed"]
  e2e_seeds = base["end_to_end"]["per_seed"]
  # pairs by seed: a costly part's decoupled runs may cover fewer seeds than its comparison
  seq, e2e = ({r["seed"]: r for r in runs} for runs in (seq_seeds, e2e_seeds))
  rows = [_method_row(base, "sequential"), _method_row(decoupled, "decoupled"), _method_row(base, "end_to_end")]
  out = dict(
    part=name,
    dataset=base["dataset"],
    model=base["model"],
    seeds=base["seeds"],
    rows=rows,
    decoupled_seeds=[d["seed"] for d in dec_seeds],
    accuracy_decoupled_minus_sequential=stats.mean_std(
      [d["test_accuracy"] - seq[d["seed"]]["test_accuracy"] for d in dec_seeds]
    ),
    accuracy_decoupled_minus_end_to_end=stats.mean_std(
      [d["test_accuracy"] - e2e[d["seed"]]["test_accuracy"] for d in dec_seeds]
    ),
    seconds_decoupled_over_end_to_end=stats.mean_std(
      [d["train_seconds"] / e2e[d["seed"]]["train_seconds"] for d in dec_seeds]
    ),
    seconds_sequential_over_end_to_end=stats.mean_std(
      [s["train_seconds"] / e2e[s["seed"]]["train_seconds"] for s in seq_seeds]
    ),
    devices=model_rows,
    curves={
      "sequential": _curves(base, "sequential"),
      "decoupled": _curves(decoupled, "decoupled"),
      "end_to_end": _curves(base, "end_to_end"),
    },
  )
  if refresh is not None:
    ref_seeds = refresh["quicknet"]["per_seed"]
    out["refresh_epoch"] = dict(
      row=_method_row(refresh, "decoupled"),
      accuracy_minus_step=stats.mean_std(
        [r["test_accuracy"] - d["test_accuracy"] for d, r in zip(dec_seeds, ref_seeds)]
      ),
      seconds_over_step=stats.mean_std([r["train_seconds"] / d["train_seconds"] for d, r in zip(dec_seeds, ref_seeds)]),
      training_flops_over_step=refresh["quicknet"]["training_flops"] / decoupled["quicknet"]["training_flops"],
    )
  return out


def _measured_steps(
  path: str, model, batch_size: int, max_devices: int, log: Log, repeats: int = 10
) -> pipeline_cost.MeasuredSteps:
  """The model's step times on this device, read back from `path` or measured and saved there."""
  steps_json = finished(path)
  if steps_json is None:
    log(f"== step times on this device -> {path}")
    batches = pipeline_cost.per_device_batches(batch_size, max_devices)
    steps = pipeline_cost.measure_steps(model, batch_size, batches, repeats=repeats)
    steps_json = saved(path, steps.to_json())
  return pipeline_cost.MeasuredSteps.from_json(steps_json)


def run_decoupled_study(
  workdir: str,
  parts: dict,
  *,
  base_dirs: Optional[dict] = None,
  refresh_parts: Sequence[str] = (),
  devices: DeviceModel = DeviceModel(),
  modelled: Optional[dict] = None,
  decoupled_seeds: Optional[dict] = None,
  log: Log = print,
) -> dict:
  """Runs (or resumes) the study and writes WORKDIR/decoupled_study.json and .md (module doc).

  Args:
    workdir: where every run and the summary go.
    parts: part name -> the `ExperimentConfig` of its sequential QuickNet and end-to-end comparison (with
      `deploy_curve` on for the per-epoch curves).
    base_dirs: part name -> a directory that holds (or will hold) that comparison, e.g. a conv study's
      run of the same config; default WORKDIR/<part>.
    refresh_parts: the parts whose decoupled run is repeated with the learned rule refreshed per epoch.
    devices: the K-device model: the largest K and the device-to-device link (`DeviceModel`).
    modelled: name -> `ModelledNetwork`, networks only modelled (their steps timed here).
    decoupled_seeds: part name -> the seeds of its decoupled runs, when fewer than the comparison's (a
      costly part); they are paired with the comparison's runs of the same seeds.
    log: where progress goes.

  Returns:
    The summary (decoupled_study.json).

  Raises:
    ValueError: a part's config asks for the decoupled schedule or leaves the end-to-end network out
      (the part is the sequential comparison), or a modelled network borrows the epochs of a part that
      did not run or has another number of blocks.
  """
  os.makedirs(workdir, exist_ok=True)
  max_devices, link = devices.max_devices, devices.link
  base_dirs = dict(base_dirs or {})
  summaries, measured = [], {}
  for name, config in parts.items():
    if config.quicknet.schedule != "sequential" or not config.end_to_end:
      raise ValueError(f"part {name}: give the sequential comparison's config (with the end-to-end network)")
    log(f"== {name}: sequential QuickNet and end-to-end")
    base = train_and_evaluate(config, base_dirs.get(name, os.path.join(workdir, name)), log=log)
    log(f"== {name}: decoupled QuickNet")
    decoupled_config = config.replace(schedule="decoupled", end_to_end=False)
    if name in (decoupled_seeds or {}):
      decoupled_config = decoupled_config.replace(seeds=tuple(decoupled_seeds[name]))
    decoupled = train_and_evaluate(decoupled_config, os.path.join(workdir, f"{name}_decoupled"), log=log)
    refresh = None
    if name in refresh_parts:
      log(f"== {name}: decoupled QuickNet, learned rule refreshed once an epoch")
      refresh = train_and_evaluate(
        decoupled_config.replace(decoupled_refresh="epoch"), os.path.join(workdir, f"{name}_decoupled_epoch"), log=log
      )
    data = read_json(os.path.join(base_dirs.get(name, os.path.join(workdir, name)), "data.json"))
    model = config.model.build(tuple(data["image_shape"]), data["num_classes"])
    steps = _measured_steps(os.path.join(workdir, f"{name}_steps.json"), model, config.fit.batch_size, max_devices, log)
    sizes = (base["num_train"], base["num_val"])
    model_rows = modelled_devices(steps, decoupled, base["end_to_end"], sizes, max_devices, link)
    summaries.append(part_summary(name, base, decoupled, model_rows, refresh))
    measured[name] = (base, decoupled, model.num_blocks)
  modelled_rows = []
  for name, network in (modelled or {}).items():
    if network.epochs_from not in measured:
      raise ValueError(f"modelled network {name}: its epochs come from part {network.epochs_from}, which did not run")
    base, decoupled, num_blocks = measured[network.epochs_from]
    if network.model.num_blocks != num_blocks:
      raise ValueError(
        f"modelled network {name} has {network.model.num_blocks} blocks, part {network.epochs_from} {num_blocks}: "
        "borrow the epochs of a part with as many blocks"
      )
    steps = _measured_steps(
      os.path.join(workdir, f"{name}_steps.json"), network.model, network.batch_size, max_devices, log, network.repeats
    )
    rows = modelled_devices(steps, decoupled, base["end_to_end"], network.sizes, max_devices, link)
    rows.pop("one_device_check")  # nothing was measured end to end: there is nothing to check against
    modelled_rows.append(dict(network=name, epochs_from=network.epochs_from, sizes=list(network.sizes), devices=rows))
  summary = dict(
    machine=machine_description(),
    link=dict(bytes_per_second=link.bytes_per_second, latency_seconds=link.latency_seconds),
    parts=summaries,
    modelled=modelled_rows,
  )
  write_results(workdir, "decoupled_study", summary, decoupled_study_markdown(summary), log)
  return summary

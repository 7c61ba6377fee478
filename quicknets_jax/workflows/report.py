"""results.md and the figures of a run, rebuilt from its workdir (`python -m experiments.report`).

`load_workdir` rebuilds the results of a finished or interrupted run from its per-seed files (so the
report works on a run that has not written results.json yet, or on one from an older version);
`write_report` renders the figures (`reporting.figures`, matplotlib) and writes results.md with them.
"""

from __future__ import annotations

import os

from quicknets_jax.data.datasets import CLASS_NAMES
from quicknets_jax.reporting import figures
from quicknets_jax.reporting.tables import figures_markdown, results_markdown
from quicknets_jax.workflows.aggregate import aggregate, ratios
from quicknets_jax.workflows.workdir import read_json


def load_workdir(workdir: str) -> dict:
  """The results of the run in WORKDIR (results.json layout), rebuilt from its per-seed files.

  Works on a finished run and on an interrupted one: seeds whose QuickNet has not finished are left
  out (listed under "unfinished"), and the end-to-end entry holds the seeds whose baseline finished.

  Args:
    workdir: the run's folder.

  Returns:
    The results dict.

  Raises:
    ValueError: the folder holds no run, or no seed has finished its QuickNet yet.
  """
  config_path = os.path.join(workdir, "config.json")
  if not os.path.exists(config_path):
    raise ValueError(
      f"{workdir} holds no run (no config.json): pass the --workdir of a run of python -m experiments.<dataset>"
    )
  config = read_json(config_path)
  stored_path = os.path.join(workdir, "results.json")
  stored = read_json(stored_path) if os.path.exists(stored_path) else {}
  seeds = list(config.get("seeds", []))
  seeds += [s for s in stored.get("seeds", []) if s not in seeds]
  quicknet, end_to_end, unfinished = [], [], []
  for seed in seeds:
    seed_dir = os.path.join(workdir, f"seed_{seed}")
    q_path, e_path = os.path.join(seed_dir, "quicknet.json"), os.path.join(seed_dir, "end_to_end.json")
    if os.path.exists(q_path):
      quicknet.append(read_json(q_path))
    else:
      unfinished.append(f"seed {seed}: QuickNet")
    if os.path.exists(e_path):
      end_to_end.append(read_json(e_path))
    elif config.get("end_to_end", True):
      unfinished.append(f"seed {seed}: end-to-end")
  if not quicknet:
    raise ValueError(
      f"no seed of the run in {workdir} has finished its QuickNet yet (no seed_<s>/quicknet.json): "
      "let the run finish one seed, then run the report again"
    )
  results = {k: v for k, v in stored.items() if k not in ("quicknet", "end_to_end", "ratios")}
  results.update(
    dataset=config.get("dataset", stored.get("dataset", "?")),
    model=config.get("model", stored.get("model", "?")),
    seeds=[s["seed"] for s in quicknet],
    train_threshold=config.get("train_threshold"),
    fallback=config.get("fallback", "most_confident"),
    exit_threshold=sum(s["exit_threshold"] for s in quicknet) / len(quicknet),
    exit_threshold_chosen_on="validation" if config.get("exit_threshold") is None else "flag",
    quicknet=aggregate(quicknet),
    unfinished=unfinished,
  )
  if end_to_end:
    results["end_to_end"] = aggregate(end_to_end)
    results["ratios"] = ratios(results["quicknet"], results["end_to_end"])
  if "class_names" not in results:
    results["class_names"] = list(CLASS_NAMES.get(results["dataset"], ()))
  return results


def write_report(workdir: str, figures_dir: str | None = None, results_md: str | None = None) -> dict:
  """Regenerates results.md (table + Figures section) and the PNG figures of the run in WORKDIR.

  Args:
    workdir: the run's folder.
    figures_dir: where the PNGs go (default WORKDIR/figures).
    results_md: the Markdown file written (default WORKDIR/results.md).

  Returns:
    {"results_md": path, "figures": {name: path}, "skipped": {name: reason}, "unfinished": [...]}.

  Raises:
    ValueError: the folder holds no run, or no seed has finished its QuickNet yet.
  """
  results = load_workdir(workdir)
  figures_dir = figures_dir or os.path.join(workdir, "figures")
  results_md = results_md or os.path.join(workdir, "results.md")
  written = figures.render_all(results, figures_dir, results.get("class_names", ()))
  skipped = written.pop("skipped")
  md_dir = os.path.dirname(os.path.abspath(results_md))
  text = results_markdown(results) + "\n" + figures_markdown(written, md_dir, results.get("unfinished", ()), skipped)
  os.makedirs(md_dir, exist_ok=True)
  with open(results_md, "w") as f:
    f.write(text)
  return dict(results_md=results_md, figures=written, skipped=skipped, unfinished=results.get("unfinished", []))

"""Compares two results.json files value by value, ignoring what a re-run cannot reproduce (wall-clock).

    python scripts/compare_results.py BEFORE/results.json AFTER/results.json

Every number must be equal exactly (floats bit for bit); keys holding seconds or rates per second,
timestamps and the machine line are skipped. Settings that only the newer file's `config` block has are listed apart ("added
settings"): a new setting at its default changes no result. Exit status 0 when nothing differs, 1 otherwise.
"""

from __future__ import annotations

import json
import sys

from quicknets_jax.workflows.workdir import is_wall_clock

# Keys whose values are wall-clock measurements or describe the machine, not results.
TIMING_KEYS = frozenset(
  {
    "train_seconds",
    "seconds",
    "epoch_seconds",
    "wall_seconds",
    "time",
    "machine",
    "training_flops_per_second_efficiency",
  }
)


def compare(before, after, path: str = "") -> tuple[list, list]:
  """(differences, added settings) between two parsed results trees."""
  differences, added = [], []
  if isinstance(before, dict) and isinstance(after, dict):
    for key in list(before) + [k for k in after if k not in before]:
      if is_wall_clock(key):  # compile_seconds, flops_per_second_by_phase, the machine line, ...
        continue
      where = f"{path}/{key}"
      if key not in after:
        differences.append(f"{where}: missing after")
      elif key not in before:
        (added if path.endswith("config") else differences).append(f"{where}: {after[key]!r} (new)")
      else:
        d, a = compare(before[key], after[key], where)
        differences += d
        added += a
  elif isinstance(before, list) and isinstance(after, list):
    if len(before) != len(after):
      return [f"{path}: {len(before)} entries before, {len(after)} after"], []
    for i, (b, a) in enumerate(zip(before, after)):
      d, n = compare(b, a, f"{path}[{i}]")
      differences += d
      added += n
  elif before != after or type(before) is not type(after):
    differences.append(f"{path}: {before!r} before, {after!r} after")
  return differences, added


def main(argv) -> int:
  if len(argv) != 3:
    print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
    return 2
  with open(argv[1]) as f:
    before = json.load(f)
  with open(argv[2]) as f:
    after = json.load(f)
  differences, added = compare(before, after)
  for line in added:
    print(f"added setting {line}")
  for line in differences[:50]:
    print(f"DIFFERS {line}")
  print(f"{len(differences)} differences ({len(added)} added settings; timing keys skipped)")
  return 1 if differences else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))

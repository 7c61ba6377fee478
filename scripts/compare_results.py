"""Compares two results.json files value by value, ignoring what a re-run cannot reproduce (wall-clock).

    python scripts/compare_results.py BEFORE/results.json AFTER/results.json
    python scripts/compare_results.py --tolerance=1e-4 BEFORE/results.json AFTER/results.json

Every number must be equal exactly (floats bit for bit); keys holding seconds or rates per second,
timestamps and the machine line are skipped. Settings that only the newer file's `config` block has are
listed apart ("added settings"): a new setting at its default changes no result. Exit status 0 when
nothing differs, 1 otherwise.

`--tolerance=REL` is for a change allowed to alter the last bits of floats. It reports the largest
relative difference over all floats (|a - b| / max(|a|, |b|), and where it is) and counts the discrete
differences apart: integers (epochs, learned counts, exit counts), thresholds, strings, flags, missing
entries and list lengths, i.e. the choices a change of round-off turned the other way. Exit status 0
when no discrete value differs and every float is within REL, 1 otherwise.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from typing import Any, NamedTuple

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
MISSING = object()  # the side of a pair on which a key is absent


class Lengths(NamedTuple):
  """The two lengths of a list whose entries cannot be paired."""

  before: int
  after: int


def differing_values(before, after, path: str = "") -> Iterator[tuple[str, Any, Any]]:
  """Each value that differs between two parsed results trees, wall-clock entries skipped.

  Args:
    before: the earlier results (parsed JSON).
    after: the later results.
    path: where the two trees sit in their files.

  Yields:
    (path, before value, after value); `MISSING` on the side where a key is absent, and for lists of
    different lengths one `(path, Lengths, Lengths)`.
  """
  if isinstance(before, dict) and isinstance(after, dict):
    for key in list(before) + [k for k in after if k not in before]:
      if is_wall_clock(key):  # compile_seconds, flops_per_second_by_phase, the machine line, ...
        continue
      yield from differing_values(before.get(key, MISSING), after.get(key, MISSING), f"{path}/{key}")
  elif isinstance(before, list) and isinstance(after, list):
    if len(before) != len(after):
      lengths = Lengths(len(before), len(after))
      yield path, lengths, lengths
      return
    for i, (b, a) in enumerate(zip(before, after)):
      yield from differing_values(b, a, f"{path}[{i}]")
  elif before != after or type(before) is not type(after):
    yield path, before, after


def _is_added_setting(path: str, before) -> bool:
  return before is MISSING and path.rsplit("/", 1)[0].endswith("config")


def _line(path: str, before, after) -> str:
  if isinstance(before, Lengths):
    return f"{path}: {before.before} entries before, {before.after} after"
  if after is MISSING:
    return f"{path}: missing after"
  if before is MISSING:
    return f"{path}: {after!r} (new)"
  return f"{path}: {before!r} before, {after!r} after"


def compare(before, after, path: str = "") -> tuple[list, list]:
  """(differences, added settings) between two parsed results trees.

  Args:
    before: the earlier results (parsed JSON).
    after: the later results.
    path: where the two trees sit in their files.

  Returns:
    Two lists of lines: each value that differs ("PATH: X before, Y after"), and each setting only
    `after`'s config holds ("PATH: Y (new)").
  """
  differences, added = [], []
  for where, b, a in differing_values(before, after, path):
    (added if _is_added_setting(where, b) else differences).append(_line(where, b, a))
  return differences, added


class ToleranceReport(NamedTuple):
  """How far two results trees are apart when last bits may differ.

  Attributes:
    largest_relative: the largest |a - b| / max(|a|, |b|) over the floats that differ (0.0 if none).
    where: the path of that float ("" if none).
    discrete: a line for each discrete difference (integers, thresholds, strings, flags, shapes,
      non-finite floats, missing entries).
  """

  largest_relative: float
  where: str
  discrete: list


def _is_threshold(path: str) -> bool:
  return "threshold" in path.rsplit("/", 1)[-1]


def tolerance_report(before, after) -> ToleranceReport:
  """Splits the differences between two parsed results trees into float round-off and discrete ones.

  Args:
    before: the earlier results (parsed JSON).
    after: the later results.

  Returns:
    The largest relative difference over all floats, where it is, and the discrete differences.
  """
  largest, where, discrete = 0.0, "", []
  for path, b, a in differing_values(before, after):
    if _is_added_setting(path, b):
      continue
    floats = isinstance(b, float) and isinstance(a, float) and math.isfinite(b) and math.isfinite(a)
    if floats and not _is_threshold(path):
      relative = abs(a - b) / max(abs(a), abs(b))
      if relative > largest:
        largest, where = relative, path
    else:
      discrete.append(_line(path, b, a))
  return ToleranceReport(largest, where, discrete)


def _load(path: str):
  with open(path) as f:
    return json.load(f)


def main(argv) -> int:
  args = [a for a in argv[1:] if not a.startswith("--tolerance=")]
  tolerances = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("--tolerance=")]
  if len(args) != 2 or len(tolerances) > 1:
    print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
    return 2
  before, after = _load(args[0]), _load(args[1])
  if tolerances:
    try:
      tolerance = float(tolerances[0])
    except ValueError:
      print(f"--tolerance={tolerances[0]}: not a number (e.g. --tolerance=1e-4)", file=sys.stderr)
      return 2
    report = tolerance_report(before, after)
    for line in report.discrete[:50]:
      print(f"DISCRETE {line}")
    at = f" at {report.where}" if report.where else ""
    print(
      f"largest relative float difference {report.largest_relative:.3g}{at}; "
      f"{len(report.discrete)} discrete differences (timing keys skipped)"
    )
    return 1 if report.discrete or report.largest_relative > tolerance else 0
  differences, added = compare(before, after)
  for line in added:
    print(f"added setting {line}")
  for line in differences[:50]:
    print(f"DIFFERS {line}")
  print(f"{len(differences)} differences ({len(added)} added settings; timing keys skipped)")
  return 1 if differences else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))

"""Summaries over seeds: means, sample standard deviations, and the same leaf by leaf over trees.

Every mean ± std in the results comes from here: std is the sample standard deviation (ddof=1), 0 for
a single value, so one seed reads "± 0.00" rather than NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np


def mean(values) -> float:
  """The mean of `values` as a Python float.

  Args:
    values: numbers (a sequence or an array).

  Returns:
    Their mean.
  """
  return float(np.mean(values))


def std(values) -> float:
  """The sample standard deviation (ddof=1) of `values`; 0 for fewer than two.

  Args:
    values: numbers (a sized sequence or an array).

  Returns:
    Their sample standard deviation, 0.0 for fewer than two values.
  """
  return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def mean_std_rows(rows) -> tuple[np.ndarray, np.ndarray]:
  """Column means and sample stds of a [seeds, ...] array (stds 0 for one seed).

  Args:
    rows: one row per seed, [seeds, ...].

  Returns:
    (means, stds), each of the shape of one row.
  """
  rows = np.asarray(rows, float)
  return rows.mean(axis=0), (rows.std(axis=0, ddof=1) if rows.shape[0] > 1 else np.zeros(rows.shape[1:]))


def mean_std(values) -> Optional[dict]:
  """{"mean", "std", "n"} of the non-None values; None if there are none.

  Args:
    values: numbers, with None for a missing value.

  Returns:
    A dict with the mean, the sample standard deviation and the count of the values that are not None,
    or None when every value is None.
  """
  vals = [float(v) for v in values if v is not None]
  if not vals:
    return None
  return dict(mean=mean(vals), std=std(vals), n=len(vals))


def is_number(value) -> bool:
  """Whether `value` is an int or float (a bool is not a number here).

  Args:
    value: anything.

  Returns:
    True for an int or a float that is not a bool.
  """
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def aggregate_tree(trees: Sequence):
  """Mean ± std (`mean_std`) leaf by leaf over structurally equal trees (dicts / lists of numbers, None
  allowed, also in place of a list that other trees have); a leaf that is not a number keeps the first
  tree's value.

  Args:
    trees: one tree per seed, all of the same structure (dicts, lists, numbers, None, other values).

  Returns:
    A tree of the same structure whose number leaves are `mean_std` dicts.
  """
  first = trees[0]
  if isinstance(first, dict):
    return {k: aggregate_tree([t[k] for t in trees]) for k in first}
  lists = [t for t in trees if isinstance(t, list)]
  # a list some seeds lack (None: e.g. no shared cost range) is aggregated over the seeds that have it
  if lists and all(t is None or (isinstance(t, list) and len(t) == len(lists[0])) for t in trees):
    return [aggregate_tree([None if t is None else t[i] for t in trees]) for i in range(len(lists[0]))]
  if all(t is None or is_number(t) for t in trees):
    return mean_std(trees)
  return first

"""Hyperparameters declared once: frozen dataclass fields that carry their own documentation.

Every setting of the library is a field of a frozen dataclass (`FitConfig`, `QuickNetConfig`,
`DataConfig`, …), declared with `option(default, help, ...)`: its doc, its valid range or choices, and
whether changing it between a run and its resumption changes any result. Configs nest (`nested(...)`):
`workflows.ExperimentConfig` holds a `DataConfig`, a `ModelConfig`, a `QuickNetConfig` (which holds the
`FitConfig`), … Each leaf's name is unique within the tree it belongs to, so a tree reads and writes
as one flat dict of leaf names (`flat_dict`, `replace`, `from_flat`): that is what config.json stores
and what `experiments/flags.py` turns into absl flags. Nothing here imports absl: the library knows
nothing of flags.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import typing
from typing import Any, Optional

_META = "quicknets"


@dataclasses.dataclass(frozen=True)
class OptionInfo:
  """What a leaf field says about itself (the `metadata` of `option`).

  Attributes:
    help: the setting's documentation (the flag's help text).
    choices: the values it may take, or None for any value of its type.
    lower: the smallest value it may take, or None.
    upper: the largest value it may take, or None.
    flag: False for an internal setting of the library, not offered as a flag (it has no leaf name of its
      own in the flat dict either).
    resumable: True when it may change between a run and its resumption without changing any result
      (seeds, batch size of evaluation passes).
    none_word: for Optional fields given as flags, the word that stands for None ("auto": choose it on
      validation).
    flag_name: the flag's name when it is not the field's (e.g. `ModelConfig.name` is `--model`).
  """

  help: str
  choices: Optional[tuple] = None
  lower: Optional[float] = None
  upper: Optional[float] = None
  # False: an internal setting of the library, not offered as a flag (it has no leaf name of its own
  # in the flat dict either)
  flag: bool = True
  # True: may change between a run and its resumption without changing any result (seeds, batch size
  # of evaluation passes)
  resumable: bool = False
  # For Optional fields given as flags: the word that stands for None ("auto": choose it on validation)
  none_word: Optional[str] = None
  # The flag's name when it is not the field's (e.g. ModelConfig.name is --model)
  flag_name: Optional[str] = None


def option(default, help: str, **info) -> Any:
  """A config field with a default and its documentation (see `OptionInfo` for the keywords).

  Args:
    default: the field's default; a tuple or None where it holds several values.
    help: the setting's documentation.
    **info: the other fields of `OptionInfo` (choices, lower, upper, flag, resumable, none_word,
      flag_name).

  Returns:
    A `dataclasses.field` carrying an `OptionInfo` in its metadata.

  Raises:
    TypeError: the default is a list, dict or set (frozen configs hold no mutable values).
  """
  if isinstance(default, (list, dict, set)):
    raise TypeError("use a tuple (or None) as the default of a config field: frozen configs hold no lists")
  return dataclasses.field(default=default, metadata={_META: OptionInfo(help=help, **info)})


def nested(cls: type, help: str = "") -> Any:
  """A field holding a whole sub-config (its leaves join the parent's flat names).

  Args:
    cls: the sub-config's class; its default instance is the field's default.
    help: what the sub-config is for.

  Returns:
    A `dataclasses.field` marked as nested.
  """
  return dataclasses.field(default_factory=cls, metadata={_META: "nested", "help": help})


def internal(default, help: str) -> Any:
  """A setting the library sets itself (or a caller sets in code); not a flag, not a flat name.

  Args:
    default: the field's default.
    help: the setting's documentation.

  Returns:
    A `dataclasses.field`, as `option` with `flag=False`.
  """
  return option(default, help, flag=False)


@dataclasses.dataclass(frozen=True)
class Leaf:
  """One flat setting of a config tree: its flat name, where it sits, its field and its type.

  Attributes:
    name: the flat name (the flag's name, unique within the tree).
    path: field names from the root, e.g. ("quicknet", "fit", "learning_rate").
    field: the dataclass field.
    info: what the field says about itself.
    type: the field's type, as `typing.get_type_hints` resolves it.
  """

  name: str
  path: tuple  # field names from the root, e.g. ("quicknet", "fit", "learning_rate")
  field: dataclasses.Field
  info: OptionInfo
  type: Any


def _is_nested(field: dataclasses.Field) -> bool:
  return field.metadata.get(_META) == "nested"


def leaves(cls: type, prefix: tuple = ()) -> list[Leaf]:
  """The flat settings (flag-able leaves) of a config class, depth first in declaration order.

  Args:
    cls: a config class (a frozen dataclass declared with `option` / `nested` fields).
    prefix: the field path of `cls` within a larger tree (callers leave it empty).

  Returns:
    One `Leaf` per flag-able setting of the tree.

  Raises:
    TypeError: a flat name is declared more than once in the tree.
  """
  hints = typing.get_type_hints(cls)
  out = []
  for field in dataclasses.fields(cls):
    if _is_nested(field):
      out += leaves(hints[field.name], prefix + (field.name,))
      continue
    info = field.metadata.get(_META)
    if not isinstance(info, OptionInfo) or not info.flag:
      continue
    out.append(Leaf(info.flag_name or field.name, prefix + (field.name,), field, info, hints[field.name]))
  names = [leaf.name for leaf in out]
  duplicated = sorted({n for n in names if names.count(n) > 1})
  if duplicated and not prefix:
    raise TypeError(f"{cls.__name__}: the flat names {duplicated} are declared more than once in its tree")
  return out


def _get(config, path: tuple):
  for name in path:
    config = getattr(config, name)
  return config


def _jsonable(value):
  if isinstance(value, tuple):
    return [_jsonable(v) for v in value]
  return value


def flat_dict(config) -> dict:
  """{flat name: value} of every leaf of `config` (tuples as lists: what config.json holds).

  Args:
    config: a config instance.

  Returns:
    A JSON-ready dict of its leaves.
  """
  return {leaf.name: _jsonable(_get(config, leaf.path)) for leaf in leaves(type(config))}


def _coerce(value):
  """A JSON value in a config's Python form (lists → tuples: frozen configs hold no lists)."""
  return tuple(value) if isinstance(value, list) else value


def replace(config, **flat):
  """`config` with the named leaves changed, wherever they sit in its tree; unknown names are refused.

  Args:
    config: a config instance.
    **flat: new values by flat name (JSON lists become tuples).

  Returns:
    A new config; the configs' own `__post_init__` checks run on every rebuilt level.

  Raises:
    TypeError: a name is not a setting of the config; the message lists its settings.
  """
  by_name = {leaf.name: leaf for leaf in leaves(type(config))}
  unknown = sorted(set(flat) - set(by_name))
  if unknown:
    raise TypeError(
      f"{type(config).__name__} has no setting {', '.join(unknown)}; its settings are {', '.join(sorted(by_name))}"
    )
  updates: dict = {}
  for name, value in flat.items():
    updates[by_name[name].path] = _coerce(value)
  return _apply(config, updates, ())


def _apply(config, updates: dict, prefix: tuple):
  changes = {}
  for field in dataclasses.fields(config):
    path = prefix + (field.name,)
    if path in updates:
      changes[field.name] = updates[path]
    elif _is_nested(field) and any(p[: len(path)] == path for p in updates):
      changes[field.name] = _apply(getattr(config, field.name), updates, path)
  return dataclasses.replace(config, **changes) if changes else config


def from_flat(cls: type, flat: dict, ignore_unknown: bool = False):
  """A `cls` built from a flat dict of leaf names (missing leaves keep their defaults).

  Args:
    cls: the config class.
    flat: values by flat name (e.g. a workdir's config.json).
    ignore_unknown: drop names that are not settings of `cls` instead of refusing them.

  Returns:
    The config.

  Raises:
    TypeError: `flat` names an unknown setting and `ignore_unknown` is False.
  """
  known = {leaf.name for leaf in leaves(cls)}
  if ignore_unknown:
    flat = {k: v for k, v in flat.items() if k in known}
  return replace(cls(), **flat)


def resumable_names(cls: type) -> tuple:
  """Flat names of the leaves that may change between a run and its resumption.

  Args:
    cls: the config class.

  Returns:
    A tuple of flat names.
  """
  return tuple(leaf.name for leaf in leaves(cls) if leaf.info.resumable)


def validate(config) -> None:
  """Refuses a value outside its field's declared choices or range (the checks the flags make, for
  configs built in code); each config's `__post_init__` calls it after its own, more specific checks.

  Args:
    config: a config instance (its own fields are checked, not those of nested configs).

  Raises:
    ValueError: a value is not one of its field's choices or lies outside its range.
  """
  for field in dataclasses.fields(config):
    info = field.metadata.get(_META)
    if not isinstance(info, OptionInfo):
      continue
    value = getattr(config, field.name)
    if value is None or isinstance(value, tuple):
      continue
    name = info.flag_name or field.name
    if info.choices is not None:
      check_choice(value, info.choices, name)
    if (info.lower is not None or info.upper is not None) and not isinstance(value, bool):
      check_range(value, name, info.lower, info.upper)


def check_choice(value, choices, name: str) -> None:
  """Refuses a value outside `choices` with a message naming them.

  Args:
    value: the value to check.
    choices: the values allowed.
    name: what the message calls the setting.

  Raises:
    ValueError: `value` is not one of `choices`.
  """
  if value not in choices:
    raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")


def check_range(value, name: str, lower=None, upper=None, lower_open: bool = False) -> None:
  """Refuses a number outside [lower, upper] (or (lower, upper] with `lower_open`) naming the range.

  Args:
    value: the value to check; a bool or NaN is refused.
    name: what the message calls the setting.
    lower: the lower bound, or None.
    upper: the upper bound (inclusive), or None.
    lower_open: exclude `lower` itself.

  Raises:
    ValueError: `value` is not a number within the range.
  """
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
  if ok and lower is not None:
    ok = value > lower if lower_open else value >= lower
  if ok and upper is not None:
    ok = value <= upper
  if not ok:
    low = "" if lower is None else (f"> {lower}" if lower_open else f"≥ {lower}")
    high = "" if upper is None else f"≤ {upper}"
    raise ValueError(f"{name} must be a number {' and '.join(x for x in (low, high) if x)}, got {value!r}")


def check_seeds(seeds, name: str = "seeds") -> None:
  """Refuses a list of seeds that is empty, holds anything but non-negative integers, or repeats one.

  Each seed is one independent run, and results are the mean ± std over them: a repeated seed would
  count one run twice (and two copies of one seed give a std of exactly 0).

  Args:
    seeds: the seeds, e.g. a config's `seeds` tuple.
    name: what the message calls them ("seeds", or "--seeds" for the flag).

  Raises:
    ValueError: one line naming `name`, what is wrong and the fix.
  """
  try:
    values = tuple(seeds)
  except TypeError:
    raise ValueError(
      f"{name} must be a list of non-negative integers, got {seeds!r}: pass e.g. --seeds=0,1,2"
    ) from None
  if not values:
    raise ValueError(f"{name} is empty: pass --seeds=0 (or 0,1,2)")
  for s in values:
    if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0:
      raise ValueError(f"{name} must be non-negative integers, got {s!r} in {list(values)}: pass e.g. --seeds=0,1,2")
  repeated = sorted({int(s) for s in values if values.count(s) > 1})
  if repeated:
    raise ValueError(
      f"{name} repeats {', '.join(map(str, repeated))}: each seed is one independent run and results are the "
      "mean ± std over them; pass distinct seeds, e.g. --seeds=0,1,2"
    )

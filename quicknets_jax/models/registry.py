"""The registered architectures and `ModelConfig`, the settings that pick and size one."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
import sys
from collections.abc import Callable
from typing import Optional

from quicknets_jax.core import options
from quicknets_jax.core.options import option
from quicknets_jax.models.base import COMMIT_HEADS, MultiExitModel
from quicknets_jax.models.densenet import densenet
from quicknets_jax.models.mlp import mlp
from quicknets_jax.models.resnet_sdn import resnet_sdn
from quicknets_jax.models.vgg import vgg

MODELS = {"mlp": mlp, "vgg": vgg, "resnet_sdn": resnet_sdn, "densenet": densenet}
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def is_factory_path(name: str) -> bool:
  """Whether `name` names a model factory by import path, `package.module:function`.

  Args:
    name: a model name.

  Returns:
    True for an import path.
  """
  return bool(_FACTORY.match(name))


def factory_path(factory: Callable) -> str:
  """The import path (`package.module:function`) another process can rebuild `factory` from.

  A factory defined in the script being run (`__main__`) is named by the script's module: rerun the
  commands that read the run from the script's folder (or install it as a package).

  Args:
    factory: a model factory function, defined at the top level of a module.

  Returns:
    Its import path.

  Raises:
    ValueError: the function cannot be imported by name (a lambda or a function defined inside another).
  """
  module, qualname = getattr(factory, "__module__", None), getattr(factory, "__qualname__", "")
  if module is None or "<" in qualname:
    raise ValueError(
      f"the model factory {qualname or factory!r} cannot be imported by name: define it at the top level of a "
      "module (def small_cnn(input_shape, num_classes): ...)"
    )
  if module == "__main__":
    main = sys.modules["__main__"]
    spec = getattr(main, "__spec__", None)
    module = spec.name if spec is not None else os.path.splitext(os.path.basename(getattr(main, "__file__", "")))[0]
  return f"{module}:{qualname}"


def resolve_factory(path: str) -> Callable:
  """The function `package.module:function` names.

  Args:
    path: the import path.

  Returns:
    The function.

  Raises:
    ValueError: one line naming the path and the fix, when it cannot be imported or is not callable.
  """
  module_name, _, qualname = path.partition(":")
  try:
    target = importlib.import_module(module_name)
    for attribute in qualname.split("."):
      target = getattr(target, attribute)
  except (ImportError, AttributeError) as e:
    raise ValueError(
      f"cannot import the model factory {path} ({type(e).__name__}: {str(e)[:120]}): install its package or run "
      f"from the folder that holds {module_name.split('.')[0]}"
    ) from None
  if not callable(target):
    raise ValueError(f"{path} is not a function: point --model at a factory (input_shape, num_classes, **kwargs)")
  return target


def build_model(name: str, input_shape, num_classes: int, **kwargs) -> MultiExitModel:
  """Builds a registered model by name, or the one a `package.module:function` factory returns.

  Args:
    name: a key of `MODELS`, or a factory's import path.
    input_shape: one sample's shape.
    num_classes: the classes every exit predicts.
    **kwargs: the builder's (or factory's) other keyword arguments.

  Returns:
    The `MultiExitModel`.

  Raises:
    ValueError: the name is neither registered nor an importable factory, or the factory does not
      return a `MultiExitModel`.
  """
  if is_factory_path(name):
    model = resolve_factory(name)(tuple(input_shape), num_classes, **kwargs)
    if not isinstance(model, MultiExitModel):
      raise ValueError(
        f"{name} returned a {type(model).__name__}, not a MultiExitModel: return quicknets_jax.multi_exit_model(...)"
      )
    return model
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}: choose one of {sorted(MODELS)} or a package.module:function factory")
  return MODELS[name](tuple(input_shape), num_classes, **kwargs)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Which multi-exit architecture, and its sizes (each model reads the fields that concern it).

  Attributes:
    name: the architecture (the `--model` flag): one of `MODELS`, or your own as
      package.module:function (a factory (input_shape, num_classes, **model_args) returning
      `quicknets_jax.multi_exit_model(...)`).
    model_args: with a factory, its keyword arguments as a JSON object.
    width: units per hidden layer (vgg: channels of the first conv; densenet: the growth rate).
    num_blocks: blocks (= exits).
    layers_per_block: hidden layers per block.
    vgg_cfg: vgg: "vgg11" or conv widths and M pools, e.g. "64,M,128,M,256".
    classifier_width: vgg: hidden units of the final exit (VGG's classifier).
    block_layers: densenet: layers per dense block, "densenet121" or a list such as "2,2,2,2".
    later_width: QuickNet+: units of the blocks after the first (mlp only).
    blocks_per_stage: resnet_sdn: basic blocks per stage (9 = ResNet-56).
    stage_channels: resnet_sdn: channels of the stem and of each stage.
    hidden: mlp: every block's width, e.g. (150, 100, 50) (the network of the paper's Table 1).
    commit_head: what the commitment heads read: "features" (the paper's head) or "logits" (the
      authors' Dense(C → C) on ReLU(exit logits)).

  Raises:
    ValueError: an unknown model, `model_args` that are not a JSON object or given to a registered
      model, or an mlp-only setting given to another model.
  """

  name: str = option(
    "mlp",
    f"Architecture: one of {', '.join(MODELS)}, or your own as package.module:function (a factory "
    "(input_shape, num_classes, **model_args) returning quicknets_jax.multi_exit_model(...)).",
    flag_name="model",
  )
  model_args: Optional[str] = option(
    None, "With --model=package.module:function: its keyword arguments as JSON, e.g. '{\"width\": 32}'."
  )
  width: int = option(
    150, "Units per hidden layer (vgg: channels of the first conv; densenet: the growth rate).", lower=1
  )
  num_blocks: int = option(3, "Blocks (= exits).", lower=1)
  layers_per_block: int = option(1, "Hidden layers per block.", lower=1)
  vgg_cfg: str = option("vgg11", "vgg: 'vgg11' or conv widths and M pools, e.g. '64,M,128,M,256'.")
  classifier_width: int = option(4096, "vgg: hidden units of the final exit (VGG's classifier).", lower=1)
  block_layers: str = option(
    "densenet121",
    "densenet: layers per dense block, 'densenet121' (6,12,24,16) or a "
    "list such as '2,2,2,2'; --width is the growth rate.",
  )
  later_width: Optional[int] = option(
    None, "QuickNet+: units of the blocks after the first (mlp; default --width).", lower=1
  )
  blocks_per_stage: int = option(9, "resnet_sdn: basic blocks per stage (9 = ResNet-56).", lower=1)
  stage_channels: tuple[int, ...] = option((16, 32, 64), "resnet_sdn: channels of the stem and of each stage.")
  hidden: Optional[tuple[int, ...]] = option(
    None,
    "mlp: every block's width, e.g. 150,100,50 (the network of the "
    "paper's Table 1; overrides --width, sets the number of blocks).",
  )
  commit_head: str = option(
    "features",
    "What the commitment heads read: features (the paper's head, Dense(C) → ReLU → Dense(1) on "
    "the block's features) or logits (the authors' Dense(C → C) on "
    "ReLU(exit logits)).",
    choices=COMMIT_HEADS,
  )

  def __post_init__(self):
    if self.name not in MODELS and not is_factory_path(self.name):
      raise ValueError(
        f"unknown model {self.name!r}: choose one of {sorted(MODELS)} or name your own as package.module:function"
      )
    if self.model_args is not None:
      if not is_factory_path(self.name):
        raise ValueError(f"model_args is for --model=package.module:function factories; {self.name} takes its flags")
      try:
        if not isinstance(json.loads(self.model_args), dict):
          raise ValueError
      except ValueError:
        raise ValueError(
          f"model_args must be a JSON object such as '{{\"width\": 32}}', got {self.model_args!r}"
        ) from None
    for name in ("later_width", "hidden"):
      if getattr(self, name) is not None and self.name != "mlp":
        raise ValueError(f"{name} is only implemented for the mlp model, not {self.name!r}: drop --{name}")
    options.validate(self)

  def kwargs(self) -> dict:
    """Keyword arguments of this config's model builder.

    Returns:
      The keyword arguments `build_model` passes on.
    """
    if is_factory_path(self.name):
      return {} if self.model_args is None else json.loads(self.model_args)
    extra = {} if self.commit_head == "features" else dict(commit_head=self.commit_head)
    if self.name == "resnet_sdn":
      return dict(blocks_per_stage=self.blocks_per_stage, channels=self.stage_channels, **extra)
    kwargs = dict(width=self.width, num_blocks=self.num_blocks, layers_per_block=self.layers_per_block, **extra)
    if self.name == "vgg":
      kwargs.update(cfg=self.vgg_cfg, classifier_width=self.classifier_width)
    elif self.name == "densenet":
      kwargs.update(block_layers=self.block_layers)
    elif self.later_width is not None:
      kwargs["later_width"] = self.later_width
    elif self.hidden is not None:
      kwargs["hidden"] = self.hidden
    return kwargs

  def build(self, input_shape, num_classes: int) -> MultiExitModel:
    """The model this config describes, for inputs of `input_shape` and `num_classes` classes.

    Args:
      input_shape: one sample's shape.
      num_classes: the classes every exit predicts.

    Returns:
      The `MultiExitModel`.

    Raises:
      ValueError: the factory cannot be imported or does not return a `MultiExitModel`.
    """
    return build_model(self.name, input_shape, num_classes, **self.kwargs())

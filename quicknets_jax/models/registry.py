"""The registered architectures and `ModelConfig`, the settings that pick and size one."""

from __future__ import annotations

import dataclasses
from typing import Optional

from quicknets_jax.core import options
from quicknets_jax.core.options import option
from quicknets_jax.models.base import COMMIT_HEADS, MultiExitModel
from quicknets_jax.models.densenet import densenet
from quicknets_jax.models.mlp import mlp
from quicknets_jax.models.resnet_sdn import resnet_sdn
from quicknets_jax.models.vgg import vgg

MODELS = {"mlp": mlp, "vgg": vgg, "resnet_sdn": resnet_sdn, "densenet": densenet}


def build_model(name: str, input_shape, num_classes: int, **kwargs) -> MultiExitModel:
  """Builds a registered model by name; unknown names raise with the list of known ones."""
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}: choose one of {sorted(MODELS)}")
  return MODELS[name](tuple(input_shape), num_classes, **kwargs)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Which multi-exit architecture, and its sizes (each model reads the fields that concern it)."""

  name: str = option("mlp", "Architecture.", choices=tuple(MODELS), flag_name="model")
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
    "What the commitment heads read: features (Dense(C) → ReLU → Dense(1) on "
    "the block's features, design.md §1) or logits (the authors' Dense(C → C) on "
    "ReLU(exit logits)).",
    choices=COMMIT_HEADS,
  )

  def __post_init__(self):
    if self.name not in MODELS:
      raise ValueError(f"unknown model {self.name!r}: choose one of {sorted(MODELS)}")
    for name in ("later_width", "hidden"):
      if getattr(self, name) is not None and self.name != "mlp":
        raise ValueError(f"{name} is only implemented for the mlp model, not {self.name!r}: drop --{name}")
    options.validate(self)

  def kwargs(self) -> dict:
    """Keyword arguments of this config's model builder."""
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
    """The model this config describes, for inputs of `input_shape` and `num_classes` classes."""
    return build_model(self.name, input_shape, num_classes, **self.kwargs())

"""Multi-exit architectures, each a list of blocks (subnet + exit head + commitment head)."""

from quicknets_jax.models.base import (Block, BlockCost, CommitmentHead, MultiExitModel, merge_variables,
                                       prefix_features, split_variables)
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

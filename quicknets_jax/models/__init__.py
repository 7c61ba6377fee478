"""Multi-exit architectures: each a list of blocks (subnet + exit head + commitment head) with its costs."""

from quicknets_jax.models.base import (
  Block,
  BlockCost,
  CommitmentHead,
  MultiExitModel,
  merge_blocks,
  merge_variables,
  parts_mask,
  split_blocks,
  split_variables,
)
from quicknets_jax.models.densenet import densenet
from quicknets_jax.models.mlp import mlp
from quicknets_jax.models.registry import MODELS, ModelConfig, build_model
from quicknets_jax.models.resnet_sdn import resnet_sdn
from quicknets_jax.models.vgg import vgg

"""Pieces several model families share, defined the way PyTorch's models
are, so parameter counts and converted weights line up."""

import functools

import flax.linen as nn
import jax

PAD = ((1, 1), (1, 1))  # PyTorch's padding=1 for every 3x3 convolution.


def batch_norm(train: bool, axis_name: str | None, dtype: str) -> nn.Module:
  """BatchNorm as PyTorch's (momentum 0.1, eps 1e-5); in training, over
  `axis_name` too (the global batch under pmap)."""
  return functools.partial(
      nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
      dtype=dtype, axis_name=axis_name if train else None)


def images(x: jax.Array, name: str) -> jax.Array:
  if x.ndim != 4:
    raise ValueError(f"{name} needs images [B, H, W, C], got {x.shape}.")
  return x

"""Patch-convolution trunk, fast on XLA:CPU."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtkd.models.base import TRUNKS


def space_to_depth(x: jax.Array) -> jax.Array:
  """Folds 2x2 (or 2, for sequences) spatial patches into channels.

  `[B, H, W, C] -> [B, ceil(H/2), ceil(W/2), 4C]`, `[B, L, C] -> [B, ceil(L/2),
  2C]`; odd sizes are zero-padded. A Dense on the result is a 2x2 stride-2
  convolution whose forward and backward passes are plain matmuls, which
  XLA:CPU runs several times faster than a strided `nn.Conv` backward.
  """
  spatial = x.shape[1:-1]
  pad = [(0, 0)] + [(0, s % 2) for s in spatial] + [(0, 0)]
  x = jnp.pad(x, pad)
  b, c = x.shape[0], x.shape[-1]
  halves = [s // 2 for s in x.shape[1:-1]]
  if len(spatial) == 1:
    return x.reshape(b, halves[0], 2 * c)
  h, w = halves
  x = x.reshape(b, h, 2, w, 2, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h, w, 4 * c)


@TRUNKS.register("patch_cnn")
class PatchCNN(nn.Module):
  """Stride-2 2x2 "patch" convolutions, then one Dense layer.

  Works on images and (as 1-D convolutions) on vectors.
  """
  channels: Sequence[int] = (32, 64)
  dense: int = 256
  dropout: float = 0.0
  dtype: str = "float32"  # Compute dtype (see `mtkd.models.base`).

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False):
    if x.ndim == 2:
      x = x[..., None]
    blocks = {}
    for i, c in enumerate(self.channels):
      x = nn.relu(nn.Dense(c, dtype=self.dtype)(space_to_depth(x)))
      blocks[f"block_{i}"] = x
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(self.dense, dtype=self.dtype)(x))
    blocks[f"block_{len(self.channels)}"] = x
    if self.dropout:
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return x, blocks

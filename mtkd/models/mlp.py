"""Multi-layer perceptron trunk."""

from collections.abc import Sequence

import flax.linen as nn
import jax

from mtkd.models.base import TRUNKS


@TRUNKS.register("mlp")
class MLP(nn.Module):
  """Flatten, then Dense + ReLU (+ dropout) per hidden layer."""
  hidden: Sequence[int] = (128,)
  dropout: float = 0.0
  dtype: str = "float32"  # Compute dtype (see `mtkd.models.base`).

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False):
    x = x.reshape(x.shape[0], -1)
    blocks = {}
    for i, width in enumerate(self.hidden):
      x = nn.relu(nn.Dense(width, dtype=self.dtype)(x))
      blocks[f"block_{i}"] = x
      if self.dropout:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return x, blocks

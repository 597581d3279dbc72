"""Multi-head Flax (Linen) models: a registered trunk plus one head per task.

Trunks adapt to the input: images `[B, H, W, C]` or vectors `[B, D]`. Heads
are Dense layers named `head_<task>`, sized by each task's class count, so a
trunk checkpoint can be re-used with new heads by name.
"""

from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtkd.registry import Registry

TRUNKS: Registry = Registry("model")


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


@TRUNKS.register("mlp")
class MLP(nn.Module):
  """Flatten, then Dense + ReLU (+ dropout) per hidden layer."""
  hidden: Sequence[int] = (128,)
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
      if self.dropout:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return x


@TRUNKS.register("patch_cnn")
class PatchCNN(nn.Module):
  """Stride-2 2x2 "patch" convolutions, then one Dense layer.

  Works on images and (as 1-D convolutions) on vectors.
  """
  channels: Sequence[int] = (32, 64)
  dense: int = 256
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if x.ndim == 2:
      x = x[..., None]
    for c in self.channels:
      x = nn.relu(nn.Dense(c)(space_to_depth(x)))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(self.dense)(x))
    if self.dropout:
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return x


class MultiHead(nn.Module):
  """A shared trunk and one linear head per task; returns {task: logits}."""
  trunk: nn.Module
  heads: tuple[tuple[str, int], ...]  # (task, num_classes); hashable.

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    features = self.trunk(x, train=train)
    return {task: nn.Dense(n, name=f"head_{task}")(features)
            for task, n in self.heads}


def build(cfg, num_classes: Mapping[str, int]) -> MultiHead:
  """Model from a config `{name, **trunk kwargs}` and per-task class counts."""
  kwargs = {k: (tuple(v) if isinstance(v, list | tuple) else v)
            for k, v in cfg.items() if k != "name"}
  trunk_cls = TRUNKS.get(cfg.name)
  return MultiHead(trunk=trunk_cls(**kwargs),
                   heads=tuple((t, int(n)) for t, n in num_classes.items()))

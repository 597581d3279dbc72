"""CIFAR-style residual networks with BatchNorm, as in the CRD/DKD tables.

- `cifar_resnet` (He et al. 2016, the CIFAR variant of RepDistiller/
  mdistiller): a 3x3 stem, three stages of basic blocks (n = (depth-2)/6
  each, the 2nd and 3rd stage stride 2), global average pooling. Registered
  sizes: resnet8/14/20/32/44/56/110 (widths 16, 16, 32, 64) and resnet8x4 /
  resnet32x4 (32, 64, 128, 256).
- `wide_resnet` (Zagoruyko & Komodakis 2016): pre-activation blocks,
  n = (depth-4)/6 per stage, widths 16, 16k, 32k, 64k. Registered: wrn_16_2,
  wrn_40_1, wrn_40_2.

Layer for layer these follow the PyTorch definitions (3x3 convolutions
padded by 1, no conv bias, a 1x1 strided projection where the shape
changes, BatchNorm momentum 0.1 in PyTorch's convention, eps 1e-5), so
parameter counts match the published ones (tests/test_models.py) and a
converter can map weights one to one. `blocks` holds each stage's output
(`stage_0`..`stage_2`), what feature-level KD can match.
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtkd.models.base import TRUNKS
from mtkd.models.layers import PAD, batch_norm, images


class BasicBlock(nn.Module):
  """conv3x3(stride)-BN-ReLU-conv3x3-BN, plus the input (projected by a
  strided 1x1 conv + BN where the shape changes), then ReLU."""
  width: int
  stride: int
  norm: nn.Module
  dtype: str

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    y = conv(self.width, (3, 3), self.stride, padding=PAD)(x)
    y = nn.relu(self.norm()(y))
    y = self.norm()(conv(self.width, (3, 3), padding=PAD)(y))
    if self.stride != 1 or x.shape[-1] != self.width:
      x = self.norm()(conv(self.width, (1, 1), self.stride)(x))
    return nn.relu(x + y)


@TRUNKS.register("cifar_resnet")
class CifarResNet(nn.Module):
  """He et al.'s CIFAR ResNet; `widths` = (stem, stage 1, 2, 3)."""
  depth: int = 20
  widths: Sequence[int] = (16, 16, 32, 64)
  dtype: str = "float32"
  axis_name: str | None = None  # Set for pmap (`models.with_axis_name`).

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False):
    if (self.depth - 2) % 6:
      raise ValueError(f"cifar_resnet depth {self.depth}: use 6n + 2.")
    x = images(x, "cifar_resnet").astype(self.dtype)
    norm = batch_norm(train, self.axis_name, self.dtype)
    x = nn.Conv(self.widths[0], (3, 3), padding=PAD, use_bias=False,
                dtype=self.dtype)(x)
    x = nn.relu(norm()(x))
    blocks = {}
    for i, width in enumerate(self.widths[1:]):
      for j in range((self.depth - 2) // 6):
        x = BasicBlock(width, 2 if i and not j else 1, norm, self.dtype)(x)
      blocks[f"stage_{i}"] = x
    return jnp.mean(x, axis=(1, 2)), blocks


class WideBlock(nn.Module):
  """Pre-activation: BN-ReLU-conv3x3(stride)-BN-ReLU(-dropout)-conv3x3,
  plus the input, or a strided 1x1 conv of the pre-activation where the
  width changes (RepDistiller's wrn.py)."""
  width: int
  stride: int
  norm: nn.Module
  dropout: float
  dtype: str

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    pre = nn.relu(self.norm()(x))
    y = conv(self.width, (3, 3), self.stride, padding=PAD)(pre)
    y = nn.relu(self.norm()(y))
    if self.dropout:
      y = nn.Dropout(self.dropout, deterministic=not train)(y)
    y = conv(self.width, (3, 3), padding=PAD)(y)
    if x.shape[-1] != self.width:
      x = conv(self.width, (1, 1), self.stride)(pre)
    return x + y


@TRUNKS.register("wide_resnet")
class WideResNet(nn.Module):
  """WRN-depth-widen: stem conv 16, stages 16k/32k/64k, final BN-ReLU."""
  depth: int = 16
  widen: int = 2
  dropout: float = 0.0
  dtype: str = "float32"
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False):
    if (self.depth - 4) % 6:
      raise ValueError(f"wide_resnet depth {self.depth}: use 6n + 4.")
    x = images(x, "wide_resnet").astype(self.dtype)
    norm = batch_norm(train, self.axis_name, self.dtype)
    x = nn.Conv(16, (3, 3), padding=PAD, use_bias=False, dtype=self.dtype)(x)
    blocks = {}
    for i, width in enumerate((16 * self.widen, 32 * self.widen,
                               64 * self.widen)):
      for j in range((self.depth - 4) // 6):
        x = WideBlock(width, 2 if i and not j else 1, norm, self.dropout,
                      self.dtype)(x, train)
      blocks[f"stage_{i}"] = x
    x = nn.relu(norm()(x))
    return jnp.mean(x, axis=(1, 2)), blocks


for _depth in (8, 14, 20, 32, 44, 56, 110):
  TRUNKS.register(f"resnet{_depth}")(functools.partial(
      CifarResNet, depth=_depth, widths=(16, 16, 32, 64)))
for _depth in (8, 32):
  TRUNKS.register(f"resnet{_depth}x4")(functools.partial(
      CifarResNet, depth=_depth, widths=(32, 64, 128, 256)))
for _depth, _widen in ((16, 2), (40, 1), (40, 2)):
  TRUNKS.register(f"wrn_{_depth}_{_widen}")(functools.partial(
      WideResNet, depth=_depth, widen=_widen))

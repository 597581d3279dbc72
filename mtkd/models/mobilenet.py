"""MobileNetV2 (Sandler et al. 2018): inverted residuals with BatchNorm.

Each block is a 1x1 expansion conv (to `expansion` x the input width)-BN-
act, a 3x3 depthwise conv (padding 1, the block's stride)-BN-act, and a
linear 1x1 projection-BN, plus the input where the stride is 1 and the
width unchanged. A 3x3 stride-2 stem conv-BN-act comes first; a 1x1 conv to
`last` channels-BN-act and global average pooling last. No conv has a bias.
The stage table is (expansion t, width c, blocks n, first stride s) per
stage, the layout's unless `setting` replaces it (tiny test models do).

Two layouts, each the PyTorch definition layer for layer:

- `imagenet` (torchvision's `mobilenet_v2`, registered `mobilenetv2`):
  ReLU6, widths `c * width` rounded to multiples of 8 (`_make_divisible`),
  `last` = 1280 * max(1, width) rounded likewise, no expansion conv in t = 1
  blocks, the second stage at stride 2 (32x downsampling), dropout 0.2
  before the classifier. 3.50M parameters with a 1000-class head.
- `cifar` (RepDistiller's mobilenetv2.py; its `mobile_half`, width 0.5, is
  registered `mobilenetv2_half`): ReLU (RepDistiller's choice, not
  ReLU6), widths `int(c * width)`, `last` = 1280 unless width > 1, an
  expansion conv even in the t = 1 block, the second stage at stride 1
  (16x downsampling: 32x32 images end at 2x2, which RepDistiller averages
  with AvgPool2d(2), here global average pooling), no dropout. 0.81M
  parameters with a 100-class head.

BatchNorm is PyTorch's (momentum 0.1, eps 1e-5). `blocks` holds each
stage's output (`stage_0`..`stage_6`; RepDistiller's feature list f1..f4 is
stage_1, stage_2, stage_4, stage_6).
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtkd.models.base import TRUNKS
from mtkd.models.layers import PAD, batch_norm, images

# (expansion t, width c, blocks n, first stride s) per stage.
SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
           (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
CIFAR_SETTING = SETTING[:1] + ((6, 24, 2, 1),) + SETTING[2:]
_ACTIVATIONS = {"relu": nn.relu, "relu6": nn.relu6}


def make_divisible(v: float, divisor: int = 8) -> int:
  """torchvision's `_make_divisible`: the nearest multiple of `divisor`,
  at least `divisor`, and never more than 10% below `v`."""
  new = max(divisor, int(v + divisor / 2) // divisor * divisor)
  return new + divisor if new < 0.9 * v else new


class InvertedResidual(nn.Module):
  """[1x1 expand-BN-act] - 3x3 depthwise(stride)-BN-act - 1x1-BN, plus the
  input where the stride is 1 and the width unchanged."""
  hidden: int
  width: int
  stride: int
  expand: bool  # Whether the 1x1 expansion conv exists.
  norm: nn.Module
  act: str
  dtype: str

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    act = _ACTIVATIONS[self.act]
    y = x
    if self.expand:
      y = act(self.norm()(conv(self.hidden, (1, 1))(y)))
    y = conv(self.hidden, (3, 3), self.stride, padding=PAD,
             feature_group_count=self.hidden)(y)
    y = act(self.norm()(y))
    y = self.norm()(conv(self.width, (1, 1))(y))
    if self.stride == 1 and x.shape[-1] == self.width:
      return x + y
    return y


@TRUNKS.register("mobilenetv2")
class MobileNetV2(nn.Module):
  """MobileNetV2; `layout` 'imagenet' (torchvision) or 'cifar'
  (RepDistiller); `width` the width multiplier, `activation` '' for the
  layout's ('relu6' / 'relu'); `dropout` on the pooled features."""
  width: float = 1.0
  layout: str = "imagenet"
  setting: Sequence[Sequence[int]] | None = None  # None: the layout's.
  last: int = 1280  # Before the layout's width rule.
  activation: str = ""
  dropout: float = 0.2
  dtype: str = "float32"
  axis_name: str | None = None  # Set for pmap (`models.with_axis_name`).

  def _layout(self) -> tuple[int, int, list[tuple[int, int, int, int]]]:
    """Stem and last widths, and the stage table with the layout's widths."""
    if self.layout not in ("imagenet", "cifar"):
      raise ValueError(f"mobilenetv2 layout {self.layout!r}: use 'imagenet' "
                       "or 'cifar'.")
    w, cifar = self.width, self.layout == "cifar"
    setting = self.setting or (CIFAR_SETTING if cifar else SETTING)
    if cifar:
      last = int(self.last * w) if w > 1.0 else self.last
      return int(32 * w), last, [(t, int(c * w), n, s)
                                 for t, c, n, s in setting]
    return (make_divisible(32 * w), make_divisible(self.last * max(1.0, w)),
            [(t, make_divisible(c * w), n, s) for t, c, n, s in setting])

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False):
    x = images(x, "mobilenetv2").astype(self.dtype)
    cifar = self.layout == "cifar"
    act = self.activation or ("relu" if cifar else "relu6")
    norm = batch_norm(train, self.axis_name, self.dtype)
    stem, last, setting = self._layout()
    x = nn.Conv(stem, (3, 3), 2, padding=PAD, use_bias=False,
                dtype=self.dtype)(x)
    x = _ACTIVATIONS[act](norm()(x))
    blocks = {}
    for i, (t, width, n, s) in enumerate(setting):
      for j in range(n):
        x = InvertedResidual(x.shape[-1] * t, width, s if j == 0 else 1,
                             cifar or t != 1, norm, act, self.dtype)(x)
      blocks[f"stage_{i}"] = x
    x = nn.Conv(last, (1, 1), use_bias=False, dtype=self.dtype)(x)
    x = jnp.mean(_ACTIVATIONS[act](norm()(x)), axis=(1, 2))
    if self.dropout:
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return x, blocks


TRUNKS.register("mobilenetv2_half")(functools.partial(
    MobileNetV2, width=0.5, layout="cifar", dropout=0.0))

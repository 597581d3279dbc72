"""VGG with BatchNorm for CIFAR, as in the CRD/DKD tables (RepDistiller).

RepDistiller's `vgg8` and `vgg13` are the `_bn` variants of its vgg.py (its
`model_dict` maps the plain names to them): the classifier's hidden fully
connected layers are removed, leaving

- five stages of 3x3 convolutions (padding 1, *with* a bias, as PyTorch's
  `Conv2d` default, although BatchNorm follows), each conv followed by
  BatchNorm and ReLU;
- a 2x2 max pool after every stage but the last two, and one between the
  last two only for 64x64 inputs (RepDistiller's `if h == 64`), so CIFAR's
  32x32 images reach the last two stages at 4x4;
- global average pooling; the final `Linear(512, classes)` is a head here.

`vgg` is the generic trunk: `stages` lists each stage's conv widths.
Registered: `vgg8` = ((64,), (128,), (256,), (512,), (512,)) (config "S",
3.97M parameters with a 100-class head; the tables print 3.96M) and `vgg13`
= ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)) (config "B",
9.46M). BatchNorm is PyTorch's (momentum 0.1, eps 1e-5).

Names, for a PyTorch converter: RepDistiller's `block{i}.{3j}` (conv) and
`block{i}.{3j + 1}` (BatchNorm) are `block{i}_conv{j}` and `block{i}_bn{j}`
here. `blocks` holds each stage's output after its ReLU, before pooling
(`stage_0`..`stage_4`: RepDistiller's feature list f0..f4).
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtkd.models.base import TRUNKS
from mtkd.models.layers import PAD, batch_norm, images

VGG8 = ((64,), (128,), (256,), (512,), (512,))
VGG13 = ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512))


@TRUNKS.register("vgg")
class VGG(nn.Module):
  """RepDistiller's VGG with BatchNorm; `stages`: conv widths per stage."""
  stages: Sequence[Sequence[int]] = VGG13
  dtype: str = "float32"
  axis_name: str | None = None  # Set for pmap (`models.with_axis_name`).

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False):
    x = images(x, "vgg").astype(self.dtype)
    norm = batch_norm(train, self.axis_name, self.dtype)
    n, height = len(self.stages), x.shape[1]
    blocks = {}
    for i, widths in enumerate(self.stages):
      if i and (i < n - 1 or height == 64):  # Pool after stage i - 1.
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      for j, width in enumerate(widths):
        x = nn.Conv(width, (3, 3), padding=PAD, dtype=self.dtype,
                    name=f"block{i}_conv{j}")(x)
        x = nn.relu(norm(name=f"block{i}_bn{j}")(x))
      blocks[f"stage_{i}"] = x
    return jnp.mean(x, axis=(1, 2)), blocks


TRUNKS.register("vgg8")(functools.partial(VGG, stages=VGG8))
TRUNKS.register("vgg13")(functools.partial(VGG, stages=VGG13))

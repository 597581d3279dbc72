"""torchvision's ImageNet ResNets (He et al. 2016, "v1.5"), with BatchNorm.

A 7x7 stride-2 stem conv (padding 3)-BN-ReLU, a 3x3 stride-2 max pool
(padding 1), four stages (`layers` blocks each, widths 64/128/256/512, the
2nd to 4th starting at stride 2), global average pooling. Basic blocks
(ResNet-18/34) are conv3x3(stride)-BN-ReLU-conv3x3-BN; bottlenecks
(ResNet-50) conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1(4x)-BN, the
stride on the 3x3 conv as torchvision (v1.5; the paper's v1 strides the
first 1x1). Where the shape changes, the shortcut is a strided 1x1 conv-BN.
No conv has a bias; BatchNorm is PyTorch's (momentum 0.1, eps 1e-5).
Registered: `resnet18_imagenet`, `resnet34_imagenet`, `resnet50_imagenet`,
with 1000 classes 11.69M, 21.80M and 25.56M parameters as torchvision's;
`imagenet_resnet` is the generic trunk (`layers`, `widths`, `stem`,
`bottleneck`).

Names follow torchvision's state_dict, so a converter maps them one to one:

  conv1, bn1                      -> conv1, bn1 (the stem)
  layer{i}.{j}.conv1 .. bn3       -> layer{i}_{j}/conv1 .. bn3
  layer{i}.{j}.downsample.0 / .1  -> layer{i}_{j}/downsample_0 / downsample_1
  fc                              -> the task's head (`head_<task>`)

with conv `weight` [O, I, kh, kw] -> `kernel` [kh, kw, I, O], BatchNorm
`weight`/`bias` -> params `scale`/`bias` and `running_mean`/`running_var`
-> batch_stats `mean`/`var` (`num_batches_tracked` has no counterpart).
`blocks` holds each stage's output: `stage_0`..`stage_3` = layer1..layer4.
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtkd.models.base import TRUNKS
from mtkd.models.layers import PAD, batch_norm, images


class Block(nn.Module):
  """torchvision's BasicBlock, or its Bottleneck (output 4 x `width`)."""
  width: int
  stride: int
  bottleneck: bool
  norm: nn.Module
  dtype: str

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    if self.bottleneck:
      out = 4 * self.width
      y = nn.relu(self.norm(name="bn1")(
          conv(self.width, (1, 1), name="conv1")(x)))
      y = conv(self.width, (3, 3), self.stride, padding=PAD,
               name="conv2")(y)
      y = nn.relu(self.norm(name="bn2")(y))
      y = self.norm(name="bn3")(conv(out, (1, 1), name="conv3")(y))
    else:
      out = self.width
      y = conv(out, (3, 3), self.stride, padding=PAD, name="conv1")(x)
      y = nn.relu(self.norm(name="bn1")(y))
      y = conv(out, (3, 3), padding=PAD, name="conv2")(y)
      y = self.norm(name="bn2")(y)
    if self.stride != 1 or x.shape[-1] != out:
      x = conv(out, (1, 1), self.stride, name="downsample_0")(x)
      x = self.norm(name="downsample_1")(x)
    return nn.relu(x + y)


@TRUNKS.register("imagenet_resnet")
class ImageNetResNet(nn.Module):
  """torchvision's ResNet: `layers` blocks per stage of `widths`."""
  layers: Sequence[int] = (2, 2, 2, 2)
  widths: Sequence[int] = (64, 128, 256, 512)
  stem: int = 64
  bottleneck: bool = False
  dtype: str = "float32"
  axis_name: str | None = None  # Set for pmap (`models.with_axis_name`).

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False):
    if len(self.layers) != len(self.widths):
      raise ValueError(f"imagenet_resnet: {len(self.layers)} layers for "
                       f"{len(self.widths)} widths.")
    x = images(x, "imagenet_resnet").astype(self.dtype)
    norm = batch_norm(train, self.axis_name, self.dtype)
    x = nn.Conv(self.stem, (7, 7), 2, padding=((3, 3), (3, 3)),
                use_bias=False, dtype=self.dtype, name="conv1")(x)
    x = nn.relu(norm(name="bn1")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=PAD)  # -inf pads.
    blocks = {}
    for i, (n, width) in enumerate(zip(self.layers, self.widths,
                                       strict=True)):
      for j in range(n):
        x = Block(width, 2 if i and not j else 1, self.bottleneck, norm,
                  self.dtype, name=f"layer{i + 1}_{j}")(x)
      blocks[f"stage_{i}"] = x
    return jnp.mean(x, axis=(1, 2)), blocks


for _name, _layers, _bottleneck in (("resnet18", (2, 2, 2, 2), False),
                                    ("resnet34", (3, 4, 6, 3), False),
                                    ("resnet50", (3, 4, 6, 3), True)):
  TRUNKS.register(f"{_name}_imagenet")(functools.partial(
      ImageNetResNet, layers=_layers, bottleneck=_bottleneck))

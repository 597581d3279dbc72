"""The zoo beyond the CIFAR ResNets: VGG, MobileNetV2, torchvision's
ImageNet ResNets, ViT and a text Transformer encoder.

Parameter counts of every registered size equal an independent count of
the PyTorch (RepDistiller, torchvision, timm) definition and the published
millions; they are computed with `jax.eval_shape`, so nothing runs. Tiny
versions of each family train one step (forward + backward, BatchNorm
statistics) and compute in bfloat16; the Transformer ignores appended pads.
"""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mtkd import models

CIFAR, IMAGENET = (32, 32, 3), (224, 224, 3)


def _count(name: str, classes: int, shape) -> int:
  m = models.build(ml_collections.ConfigDict(dict(name=name)), {"t": classes})
  v = jax.eval_shape(lambda x: m.init(jax.random.key(0), x),
                     jnp.zeros((1, *shape)))  # Shapes only: no compute.
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v["params"]))


def _torch_vgg(stages, classes):
  """RepDistiller's vgg.py with batch_norm=True: each 3x3 conv has a bias
  and a BatchNorm (scale + shift); one Linear classifier."""
  total, cin = 0, 3
  for widths in stages:
    for w in widths:
      total += 9 * cin * w + w + 2 * w
      cin = w
  return total + cin * classes + classes


def _div8(v):
  new = max(8, int(v + 4) // 8 * 8)
  return new + 8 if new < 0.9 * v else new


def _torch_mobilenetv2(width, classes, cifar):
  """torchvision's mobilenetv2.py, or RepDistiller's (`cifar`: int()
  widths, an expansion conv in the t = 1 block, last width 1280)."""
  ch = (lambda c: int(c * width)) if cifar else (lambda c: _div8(c * width))
  cin = ch(32)
  total = 27 * cin + 2 * cin  # Stem conv + BN.
  for t, c, n in ((1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3),
                  (6, 160, 3), (6, 320, 1)):
    cout = ch(c)
    for _ in range(n):
      hidden = cin * t
      if t != 1 or cifar:
        total += cin * hidden + 2 * hidden  # 1x1 expansion + BN.
      total += 9 * hidden + 2 * hidden + hidden * cout + 2 * cout
      cin = cout
  last = 1280 if cifar else _div8(1280 * max(1.0, width))
  total += cin * last + 2 * last
  return total + last * classes + classes


def _torchvision_resnet(layers, bottleneck, classes):
  """torchvision's resnet.py: stem conv + BN, blocks, projections, fc."""
  total, cin = 7 * 7 * 3 * 64 + 2 * 64, 64
  for i, (n, w) in enumerate(zip(layers, (64, 128, 256, 512), strict=True)):
    out = 4 * w if bottleneck else w
    for j in range(n):
      if bottleneck:
        total += cin * w + 9 * w * w + w * out + 4 * w + 2 * out
      else:
        total += 9 * cin * w + 9 * w * w + 4 * w
      if (i and not j) or cin != out:
        total += cin * out + 2 * out
      cin = out
  return total + cin * classes + classes


def _timm_vit(dim, depth, classes, patch=16, image=224):
  """timm's VisionTransformer: patch conv with bias, class token, position
  embeddings, blocks (2 LayerNorms, qkv + proj, fc1 + fc2), final norm."""
  tokens, hidden = (image // patch) ** 2 + 1, 4 * dim
  block = (4 * dim + 3 * dim * dim + 3 * dim + dim * dim + dim
           + 2 * dim * hidden + hidden + dim)
  return (3 * patch * patch * dim + dim + dim + tokens * dim + depth * block
          + 2 * dim + dim * classes + classes)


# name: (independent count, published millions, classes, input shape).
PUBLISHED = {
    "vgg8": (_torch_vgg(((64,), (128,), (256,), (512,), (512,)), 100),
             3.96, 100, CIFAR),
    "vgg13": (_torch_vgg(((64, 64), (128, 128), (256, 256), (512, 512),
                          (512, 512)), 100), 9.46, 100, CIFAR),
    "mobilenetv2_half": (_torch_mobilenetv2(0.5, 100, True), 0.81, 100,
                         CIFAR),
    "mobilenetv2": (_torch_mobilenetv2(1.0, 1000, False), 3.50, 1000,
                    IMAGENET),
    "resnet18_imagenet": (_torchvision_resnet((2, 2, 2, 2), False, 1000),
                          11.69, 1000, IMAGENET),
    "resnet34_imagenet": (_torchvision_resnet((3, 4, 6, 3), False, 1000),
                          21.80, 1000, IMAGENET),
    "resnet50_imagenet": (_torchvision_resnet((3, 4, 6, 3), True, 1000),
                          25.56, 1000, IMAGENET),
    "vit_ti16": (_timm_vit(192, 12, 1000), 5.72, 1000, IMAGENET),
    "vit_s16": (_timm_vit(384, 12, 1000), 22.05, 1000, IMAGENET),
    "vit_b16": (_timm_vit(768, 12, 1000), 86.57, 1000, IMAGENET),
}
# The CRD-style tables print vgg8's 3,965,028 parameters truncated (3.96M),
# not rounded (3.97M); the other published figures are rounded.
TRUNCATED = {"vgg8"}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts(name):
  exact, millions, classes, shape = PUBLISHED[name]
  got = _count(name, classes, shape)
  assert got == exact
  if name in TRUNCATED:
    assert math.floor(got / 1e4) / 100 == millions
  else:
    assert round(got / 1e6, 2) == millions


def test_counters_agree_with_the_references_exact_counts():
  """The by-hand counters reproduce the exact counts torchvision documents
  (`num_params` of its ImageNet weights) and timm's ViT-B/16, 224."""
  assert _torchvision_resnet((2, 2, 2, 2), False, 1000) == 11_689_512
  assert _torchvision_resnet((3, 4, 6, 3), False, 1000) == 21_797_672
  assert _torchvision_resnet((3, 4, 6, 3), True, 1000) == 25_557_032
  assert _torch_mobilenetv2(1.0, 1000, False) == 3_504_872
  assert _timm_vit(768, 12, 1000) == 86_567_656


# Tiny members of each family: (config, input shape, `blocks` names).
TINY = {
    "vgg": (dict(name="vgg", stages=((4,), (8, 8), (8,))), (16, 16, 3),
            ["stage_0", "stage_1", "stage_2"]),
    "mobilenetv2_cifar": (dict(name="mobilenetv2", layout="cifar", width=0.5,
                               setting=((1, 8, 1, 1), (6, 8, 2, 2)), last=16,
                               dropout=0.0), (16, 16, 3),
                          ["stage_0", "stage_1"]),
    "mobilenetv2": (dict(name="mobilenetv2", width=0.25, last=16,
                         setting=((1, 8, 1, 1), (6, 16, 2, 2))), (16, 16, 3),
                    ["stage_0", "stage_1"]),  # Dropout 0.2 as torchvision.
    "imagenet_resnet": (dict(name="imagenet_resnet", layers=(1, 1),
                             widths=(4, 8), stem=4), (16, 16, 3),
                        ["stage_0", "stage_1"]),
    "imagenet_resnet_bottleneck": (
        dict(name="imagenet_resnet", layers=(1, 1), widths=(2, 4), stem=4,
             bottleneck=True), (16, 16, 3), ["stage_0", "stage_1"]),
    "vit": (dict(name="vit", patch=6, dim=8, depth=2, heads=2, dropout=0.1),
            (16, 16, 3), ["block_0", "block_1"]),  # 2x2 patches; 4 px lost.
    "transformer_encoder": (dict(name="transformer_encoder", vocab_size=50,
                                 max_len=16, dim=8, depth=2, heads=2),
                            (12,), ["block_0", "block_1"]),
}
BATCHNORM = {"vgg", "mobilenetv2_cifar", "mobilenetv2", "imagenet_resnet",
             "imagenet_resnet_bottleneck"}


def _inputs(shape, n=4):
  rng = np.random.default_rng(0)
  if len(shape) == 1:  # Token ids with trailing pads, as float32.
    ids = rng.integers(1, 60, (n, *shape))
    ids[1:, shape[0] - 3:] = 0
    return ids.astype(np.float32)
  return rng.normal(size=(n, *shape)).astype(np.float32)


def _finite(tree) -> bool:
  return all(bool(np.isfinite(a).all()) for a in jax.tree.leaves(tree))


def _global_norm(tree) -> float:
  return float(np.sqrt(sum(np.sum(np.square(a, dtype=np.float32))
                           for a in jax.tree.leaves(tree))))


@pytest.mark.parametrize("key", sorted(TINY))
def test_tiny_forward_backward(key):
  cfg, shape, names = TINY[key]
  m = models.build(ml_collections.ConfigDict(cfg), {"a": 3, "b": 2})
  x = _inputs(shape)
  v = m.init(jax.random.key(0), x)
  assert ("batch_stats" in v) == (key in BATCHNORM)

  @jax.jit
  def step(params):
    def loss(params):
      (logits, blocks), state = m.apply(
          dict(v, params=params), x, train=True, with_features=True,
          mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)})
      return (sum(jnp.mean(z ** 2) for z in logits.values()),
              (logits, blocks, state))
    return jax.value_and_grad(loss, has_aux=True)(params)

  (value, (logits, blocks, state)), grads = step(v["params"])
  assert logits["a"].shape == (4, 3) and logits["b"].shape == (4, 2)
  assert sorted(blocks) == sorted([*names, "representation"])
  assert all(b.shape[0] == 4 for b in blocks.values())
  assert _finite((value, blocks, grads))
  assert _global_norm(grads) > 0
  if key in BATCHNORM:
    moved = jax.tree.map(lambda a, b: not np.allclose(a, b),
                         v["batch_stats"], state["batch_stats"])
    assert all(jax.tree.leaves(moved))  # Every running average moved.
    assert models.with_axis_name(m, "batch").trunk.axis_name == "batch"
  assert _finite(m.apply(dict(v, **state), x))  # Inference.


@pytest.mark.parametrize("key", sorted(TINY))
def test_bfloat16_compute_keeps_float32_params_and_logits(key):
  cfg, shape, _ = TINY[key]
  f32 = models.build(ml_collections.ConfigDict(cfg), {"a": 3})
  bf16 = models.build(ml_collections.ConfigDict(dict(cfg, dtype="bfloat16")),
                      {"a": 3})
  x = _inputs(shape)
  params = f32.init(jax.random.key(0), x)
  params_bf16 = bf16.init(jax.random.key(0), x)
  assert jax.tree.structure(params) == jax.tree.structure(params_bf16)
  assert {p.dtype for p in jax.tree.leaves(params_bf16)} == {
      np.dtype("float32")}
  want = f32.apply(params, x)["a"]
  got, blocks = bf16.apply(params, x, with_features=True)
  assert got["a"].dtype == np.float32
  assert {b.dtype for k, b in blocks.items() if k != "representation"} == {
      np.dtype(jnp.bfloat16)}
  np.testing.assert_allclose(got["a"], want, rtol=0.05, atol=0.05)
  assert not np.array_equal(got["a"], want)  # The compute did change.


def test_transformer_ignores_appended_pads():
  cfg, shape, _ = TINY["transformer_encoder"]
  trunk = models.TRUNKS.get("transformer_encoder")(
      **{k: v for k, v in cfg.items() if k != "name"})
  ids = _inputs(shape)
  v = trunk.init(jax.random.key(0), ids)
  features, blocks = trunk.apply(v, ids)
  assert features.shape == (4, 8)
  longer = np.pad(ids, ((0, 0), (0, 4)))  # Still within max_len 16.
  np.testing.assert_allclose(trunk.apply(v, longer)[0], features,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(trunk.apply(v, ids.astype(np.int32))[0],
                                features)  # Float ids == int ids.
  pads = np.concatenate([np.zeros((4, 1), bool), ids == 0], axis=1)
  assert not np.any(np.asarray(blocks["block_1"])[pads])  # Pads zeroed.
  changed = ids.copy()
  changed[:, 0] = np.where(changed[:, 0] == 5, 6, 5)
  assert not np.allclose(trunk.apply(v, changed)[0], features)
  with pytest.raises(ValueError, match="max_len"):
    trunk.apply(v, np.ones((1, 17), np.float32))


def test_vit_patch_size_sets_the_tokens():
  """Patch 4 on 16x16: 16 patch tokens + the class token."""
  cfg = dict(TINY["vit"][0], patch=4)
  m = models.build(ml_collections.ConfigDict(cfg), {"a": 3})
  x = _inputs((16, 16, 3))
  (_, blocks), v = jax.eval_shape(
      lambda x: m.init_with_output(jax.random.key(0), x, with_features=True),
      x)
  assert blocks["block_0"].shape == (4, 17, 8)
  assert v["params"]["trunk"]["pos_embed"].shape == (1, 17, 8)
  assert v["params"]["trunk"]["patch_embed"]["kernel"].shape == (4, 4, 3, 8)

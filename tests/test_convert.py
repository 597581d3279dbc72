"""mtkd.models.convert: PyTorch state_dicts -> mtkd's Flax models.

No torch here: each family's PyTorch forward pass is re-implemented below
in float64 numpy, in PyTorch's layouts and names (NCHW activations, OIHW
conv weights, [out, in] Linear weights, eval-mode BatchNorm on running
statistics, timm's fused qkv laid out [3, heads, head_dim]). Random
state_dicts with PyTorch names and shapes (RepDistiller's resnet.py and
wrn.py, torchvision's resnet.py, timm's vision_transformer.py) are
converted, and mtkd's logits must match the reference's.
"""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file
from scipy.special import erf

from mtkd import models
from mtkd.errors import UserError
from mtkd.models import convert

# ---- PyTorch semantics in numpy (float64) ----


def conv2d(x, w, stride=1, pad=0, b=None):
  """F.conv2d: x [N, C, H, W], w [O, C, kh, kw]; zero padding."""
  x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  win = np.lib.stride_tricks.sliding_window_view(x, w.shape[2:], axis=(2, 3))
  y = np.einsum("nchwij,ocij->nohw", win[:, :, ::stride, ::stride], w)
  return y if b is None else y + b[None, :, None, None]


def max_pool(x, k=3, stride=2, pad=1):
  x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)),
             constant_values=-np.inf)
  win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))
  return win[:, :, ::stride, ::stride].max(axis=(-2, -1))


def batch_norm(x, sd, p, eps=1e-5):
  """nn.BatchNorm2d in eval mode: running statistics."""
  def g(k):
    return sd[f"{p}.{k}"][None, :, None, None]
  return ((x - g("running_mean")) / np.sqrt(g("running_var") + eps)
          * g("weight") + g("bias"))


def layer_norm(x, sd, p, eps=1e-6):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * sd[f"{p}.weight"] + sd[f"{p}.bias"]


def linear(x, sd, p):
  return x @ sd[f"{p}.weight"].T + sd[f"{p}.bias"]


def relu(x):
  return np.maximum(x, 0)


def gelu(x):
  return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


# ---- Reference forward passes ----


def ref_cifar_resnet(sd, x, n):
  """RepDistiller's ResNet (BasicBlock); AvgPool2d(8) at 32x32 is the
  global mean, which this takes at any size."""
  def conv(y, k, stride, pad):
    return conv2d(y, sd[f"{k}.weight"], stride, pad)
  x = relu(batch_norm(conv(x, "conv1", 1, 1), sd, "bn1"))
  for s in (1, 2, 3):
    for j in range(n):
      p, stride = f"layer{s}.{j}", 2 if s > 1 and j == 0 else 1
      y = relu(batch_norm(conv(x, f"{p}.conv1", stride, 1), sd, f"{p}.bn1"))
      y = batch_norm(conv(y, f"{p}.conv2", 1, 1), sd, f"{p}.bn2")
      if f"{p}.downsample.0.weight" in sd:
        x = batch_norm(conv(x, f"{p}.downsample.0", stride, 0), sd,
                       f"{p}.downsample.1")
      x = relu(x + y)
  return linear(x.mean((2, 3)), sd, "fc")


def ref_wide_resnet(sd, x, n):
  """RepDistiller's WideResNet (pre-activation BasicBlock)."""
  def conv(y, k, stride, pad):
    return conv2d(y, sd[f"{k}.weight"], stride, pad)
  x = conv(x, "conv1", 1, 1)
  for s in (1, 2, 3):
    for j in range(n):
      p, stride = f"block{s}.layer.{j}", 2 if s > 1 and j == 0 else 1
      pre = relu(batch_norm(x, sd, f"{p}.bn1"))
      y = relu(batch_norm(conv(pre, f"{p}.conv1", stride, 1), sd,
                          f"{p}.bn2"))
      y = conv(y, f"{p}.conv2", 1, 1)
      if f"{p}.convShortcut.weight" in sd:
        x = conv(pre, f"{p}.convShortcut", stride, 0)
      x = x + y
  x = relu(batch_norm(x, sd, "bn1"))
  return linear(x.mean((2, 3)), sd, "fc")


def ref_imagenet_resnet(sd, x, layers, bottleneck):
  """torchvision's ResNet (BasicBlock or v1.5 Bottleneck)."""
  def cbn(y, p, i, stride, pad):
    return batch_norm(conv2d(y, sd[f"{p}.conv{i}.weight"], stride, pad), sd,
                      f"{p}.bn{i}")
  x = conv2d(x, sd["conv1.weight"], 2, 3)
  x = max_pool(relu(batch_norm(x, sd, "bn1")))
  for s, n in enumerate(layers, 1):
    for j in range(n):
      p, stride = f"layer{s}.{j}", 2 if s > 1 and j == 0 else 1
      if bottleneck:
        y = relu(cbn(x, p, 1, 1, 0))
        y = cbn(relu(cbn(y, p, 2, stride, 1)), p, 3, 1, 0)
      else:
        y = cbn(relu(cbn(x, p, 1, stride, 1)), p, 2, 1, 1)
      if f"{p}.downsample.0.weight" in sd:
        x = batch_norm(conv2d(x, sd[f"{p}.downsample.0.weight"], stride), sd,
                       f"{p}.downsample.1")
      x = relu(x + y)
  return linear(x.mean((2, 3)), sd, "fc")


def ref_attention(sd, p, x, heads):
  """timm's Attention: fused qkv, reshape(B, N, 3, heads, head_dim)."""
  b, n, d = x.shape
  qkv = linear(x, sd, f"{p}.qkv").reshape(b, n, 3, heads, d // heads)
  q, k, v = qkv.transpose(2, 0, 3, 1, 4)  # Each [B, heads, N, head_dim].
  a = softmax(q @ k.swapaxes(-1, -2) * (d // heads) ** -0.5)
  out = (a @ v).transpose(0, 2, 1, 3).reshape(b, n, d)
  return linear(out, sd, f"{p}.proj")


def ref_vit(sd, x, depth, heads):
  """timm's VisionTransformer (class token, pre-LN, head on the token)."""
  patch = sd["patch_embed.proj.weight"].shape[-1]
  x = conv2d(x, sd["patch_embed.proj.weight"], patch, 0,
             sd["patch_embed.proj.bias"])
  b, d = x.shape[:2]
  x = x.reshape(b, d, -1).transpose(0, 2, 1)  # flatten(2).transpose(1, 2)
  cls = np.broadcast_to(sd["cls_token"], (b, 1, d))
  x = np.concatenate([cls, x], axis=1) + sd["pos_embed"]
  for i in range(depth):
    p = f"blocks.{i}"
    x = x + ref_attention(sd, f"{p}.attn", layer_norm(x, sd, f"{p}.norm1"),
                          heads)
    h = gelu(linear(layer_norm(x, sd, f"{p}.norm2"), sd, f"{p}.mlp.fc1"))
    x = x + linear(h, sd, f"{p}.mlp.fc2")
  return linear(layer_norm(x, sd, "norm")[:, 0], sd, "head")


# ---- Random state_dicts with PyTorch names and shapes ----


class StateDict:
  """A random float32 state_dict, filled module by module; BatchNorm
  statistics are random too (variances positive), so they matter."""

  def __init__(self, seed: int):
    self.rng, self.sd = np.random.default_rng(seed), {}

  def _put(self, name, value):
    self.sd[name] = np.asarray(value, np.float32)

  def conv(self, name, out, inp, k, bias=False):
    self._put(f"{name}.weight",
              self.rng.normal(0, (2 / (inp * k * k)) ** 0.5, (out, inp, k, k)))
    if bias:
      self._put(f"{name}.bias", self.rng.normal(0, 0.1, out))

  def bn(self, name, c):
    self.norm(name, c)
    self._put(f"{name}.running_mean", self.rng.normal(0, 0.5, c))
    self._put(f"{name}.running_var", self.rng.uniform(0.5, 2.0, c))
    self.sd[f"{name}.num_batches_tracked"] = np.array(7, np.int64)

  def norm(self, name, c):
    self._put(f"{name}.weight", self.rng.uniform(0.5, 1.5, c))
    self._put(f"{name}.bias", self.rng.normal(0, 0.2, c))

  def linear(self, name, out, inp):
    self._put(f"{name}.weight", self.rng.normal(0, inp ** -0.5, (out, inp)))
    self._put(f"{name}.bias", self.rng.normal(0, 0.1, out))

  def param(self, name, shape, std):
    self._put(name, self.rng.normal(0, std, shape))


def cifar_sd(widths, n, classes, seed=0):
  """RepDistiller's resnet.py: ResNet(depth=6n+2, num_filters=widths)."""
  g = StateDict(seed)
  g.conv("conv1", widths[0], 3, 3)
  g.bn("bn1", widths[0])
  inp = widths[0]
  for s, planes in enumerate(widths[1:], 1):
    for j in range(n):
      p, stride = f"layer{s}.{j}", 2 if s > 1 and j == 0 else 1
      g.conv(f"{p}.conv1", planes, inp, 3)
      g.bn(f"{p}.bn1", planes)
      g.conv(f"{p}.conv2", planes, planes, 3)
      g.bn(f"{p}.bn2", planes)
      if stride != 1 or inp != planes:
        g.conv(f"{p}.downsample.0", planes, inp, 1)
        g.bn(f"{p}.downsample.1", planes)
      inp = planes
  g.linear("fc", classes, inp)
  return g.sd


def wrn_sd(depth, widen, classes, seed=0):
  """RepDistiller's wrn.py: WideResNet(depth, classes, widen)."""
  g, n = StateDict(seed), (depth - 4) // 6
  g.conv("conv1", 16, 3, 3)
  inp = 16
  for s, out in enumerate((16 * widen, 32 * widen, 64 * widen), 1):
    for j in range(n):
      p = f"block{s}.layer.{j}"
      g.bn(f"{p}.bn1", inp)
      g.conv(f"{p}.conv1", out, inp, 3)
      g.bn(f"{p}.bn2", out)
      g.conv(f"{p}.conv2", out, out, 3)
      if inp != out:
        g.conv(f"{p}.convShortcut", out, inp, 1)
      inp = out
  g.bn("bn1", inp)
  g.linear("fc", classes, inp)
  return g.sd


def imagenet_sd(layers, widths, stem, bottleneck, classes, seed=0):
  """torchvision's resnet.py: ResNet(block, layers) (widths, stem free)."""
  g, expansion = StateDict(seed), 4 if bottleneck else 1
  g.conv("conv1", stem, 3, 7)
  g.bn("bn1", stem)
  inp = stem
  for s, (n, w) in enumerate(zip(layers, widths, strict=True), 1):
    for j in range(n):
      p, stride = f"layer{s}.{j}", 2 if s > 1 and j == 0 else 1
      shapes = ([(w, inp, 1), (w, w, 3), (4 * w, w, 1)] if bottleneck
                else [(w, inp, 3), (w, w, 3)])
      for i, (o, c, k) in enumerate(shapes, 1):
        g.conv(f"{p}.conv{i}", o, c, k)
        g.bn(f"{p}.bn{i}", o)
      if stride != 1 or inp != w * expansion:
        g.conv(f"{p}.downsample.0", w * expansion, inp, 1)
        g.bn(f"{p}.downsample.1", w * expansion)
      inp = w * expansion
  g.linear("fc", classes, inp)
  return g.sd


def vit_sd(patch, dim, depth, tokens, classes, mlp_ratio=4, seed=0):
  """timm's VisionTransformer (class token, global_pool='token')."""
  g = StateDict(seed)
  g.param("cls_token", (1, 1, dim), 0.5)
  g.param("pos_embed", (1, tokens + 1, dim), 0.5)
  g.conv("patch_embed.proj", dim, 3, patch, bias=True)
  for i in range(depth):
    p = f"blocks.{i}"
    g.norm(f"{p}.norm1", dim)
    g.linear(f"{p}.attn.qkv", 3 * dim, dim)
    g.linear(f"{p}.attn.proj", dim, dim)
    g.norm(f"{p}.norm2", dim)
    g.linear(f"{p}.mlp.fc1", mlp_ratio * dim, dim)
    g.linear(f"{p}.mlp.fc2", dim, mlp_ratio * dim)
  g.norm("norm", dim)
  g.linear("head", classes, dim)
  return g.sd


# ---- Converted logits = the reference's ----

CLASSES = 5
# name: (mtkd config, state_dict, reference, image [H, W]); odd and
# non-square sizes check padding, strides and the token order.
CASES = {
    "cifar_resnet": (
        {"name": "cifar_resnet", "depth": 14, "widths": (4, 8, 8, 16)},
        lambda: cifar_sd((4, 8, 8, 16), 2, CLASSES),
        lambda sd, x: ref_cifar_resnet(sd, x, 2), (8, 11)),
    "wide_resnet": (
        {"name": "wide_resnet", "depth": 16, "widen": 1},
        lambda: wrn_sd(16, 1, CLASSES),
        lambda sd, x: ref_wide_resnet(sd, x, 2), (8, 7)),
    "imagenet_basic": (
        {"name": "imagenet_resnet", "layers": (1, 1), "widths": (4, 8),
         "stem": 4},
        lambda: imagenet_sd((1, 1), (4, 8), 4, False, CLASSES),
        lambda sd, x: ref_imagenet_resnet(sd, x, (1, 1), False), (16, 13)),
    "imagenet_bottleneck": (
        {"name": "imagenet_resnet", "layers": (2, 1), "widths": (4, 8),
         "stem": 4, "bottleneck": True},
        lambda: imagenet_sd((2, 1), (4, 8), 4, True, CLASSES),
        lambda sd, x: ref_imagenet_resnet(sd, x, (2, 1), True), (16, 16)),
    "vit": (
        {"name": "vit", "patch": 4, "dim": 16, "depth": 2, "heads": 2},
        lambda: vit_sd(4, 16, 2, 2 * 3, CLASSES),
        lambda sd, x: ref_vit(sd, x, 2, 2), (10, 13)),  # 2 x 3 patches.
}


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_the_pytorch_reference(name):
  cfg, make_sd, reference, hw = CASES[name]
  sd = make_sd()
  model = models.build(cfg, {"t": CLASSES, "other": 3})
  variables = convert.from_torch(sd, model, "t", (*hw, 3))
  x = np.random.default_rng(1).normal(size=(2, 3, *hw)).astype(np.float32)
  got = jax.jit(model.apply)(variables, x.transpose(0, 2, 3, 1))
  want = reference({k: v.astype(np.float64) for k, v in sd.items()},
                   x.astype(np.float64))
  err = float(np.abs(np.asarray(got["t"], np.float64) - want).max())
  print(f"{name}: max |logit diff| {err:.2e}, max |logit| "
        f"{np.abs(want).max():.2f}")
  assert err <= 1e-4 * max(1.0, np.abs(want).max()), err
  assert got["other"].shape == (2, 3)  # A fresh head for the other task.


def test_the_registered_presets_map_one_to_one():
  """Full-size architectures: the PyTorch names and shapes of RepDistiller's
  / torchvision's / timm's models fill exactly the Flax variables."""
  cases = [("resnet110", cifar_sd((16, 16, 32, 64), 18, 100), (32, 32)),
           ("resnet32x4", cifar_sd((32, 64, 128, 256), 5, 100), (32, 32)),
           ("wrn_40_2", wrn_sd(40, 2, 100), (32, 32)),
           ("resnet50_imagenet",
            imagenet_sd((3, 4, 6, 3), (64, 128, 256, 512), 64, True, 1000),
            (64, 64)),
           ("vit_ti16", vit_sd(16, 192, 12, 14 * 14, 1000), (224, 224))]
  for name, sd, hw in cases:
    model = models.build({"name": name}, {"t": int(sd[_fc(sd)].shape[0])})
    variables = convert.from_torch(sd, model, "t", (*hw, 3))
    n = sum(v.size for k, v in sd.items() if "num_batches" not in k)
    assert sum(x.size for x in jax.tree.leaves(variables)) == n, name


def _fc(sd):
  return "head.weight" if "head.weight" in sd else "fc.weight"


# ---- Heads ----


def _cifar():
  model = models.build({"name": "cifar_resnet", "depth": 8,
                        "widths": (4, 4, 8, 8)}, {"t": CLASSES, "u": 3})
  return model, cifar_sd((4, 4, 8, 8), 1, CLASSES)


def test_the_classifier_fills_the_task_head():
  model, sd = _cifar()
  v = convert.from_torch(sd, model, "t", (8, 8, 3))
  np.testing.assert_array_equal(v["params"]["head_t"]["kernel"],
                                sd["fc.weight"].T)
  np.testing.assert_array_equal(v["params"]["head_t"]["bias"], sd["fc.bias"])
  np.testing.assert_array_equal(
      v["batch_stats"]["trunk"]["BatchNorm_0"]["var"], sd["bn1.running_var"])
  assert set(v) == {"params", "batch_stats"}


def test_without_head_task_the_classifier_is_dropped_or_may_be_absent():
  model, sd = _cifar()
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                             jnp.zeros((1, 8, 8, 3))))
  dropped = convert.from_torch(sd, model, None, (8, 8, 3))
  headless = {k: v for k, v in sd.items() if not k.startswith("fc.")}
  absent = convert.from_torch(headless, model, None, (8, 8, 3))
  for v in (dropped, absent):
    assert jax.tree.map(np.shape, v) == jax.tree.map(np.shape, shapes)
    assert not np.allclose(v["params"]["head_t"]["kernel"], sd["fc.weight"].T)
  jax.tree.map(np.testing.assert_array_equal, dropped, absent)  # Seeded.


def test_wrong_class_count():
  model, sd = _cifar()
  sd = dict(sd, **{"fc.weight": np.zeros((7, 8), np.float32),
                   "fc.bias": np.zeros(7, np.float32)})
  with pytest.raises(UserError, match=r"7 classes but task 't' has 5.*"
                     r"head_task=None"):
    convert.from_torch(sd, model, "t", (8, 8, 3))
  with pytest.raises(UserError, match=r"'v' is not one of .*\['t', 'u'\]"):
    convert.from_torch(sd, model, "v", (8, 8, 3))
  with pytest.raises(UserError, match="Missing key.*'fc.weight'"):
    convert.from_torch({k: v for k, v in sd.items() if "fc" not in k}, model,
                       "t", (8, 8, 3))


# ---- Errors ----


def test_missing_key():
  model, sd = _cifar()
  del sd["layer2.0.bn2.running_mean"]
  with pytest.raises(UserError, match=r"Missing key.*'layer2.0.bn2.running"
                     r"_mean'.*cifar_resnet\(depth=8"):
    convert.from_torch(sd, model, "t", (8, 8, 3))


def test_unexpected_key():
  model, sd = _cifar()
  sd["layer3.1.conv1.weight"] = np.zeros((8, 8, 3, 3), np.float32)
  with pytest.raises(UserError, match=r"Unexpected key.*'layer3.1.conv1"):
    convert.from_torch(sd, model, "t", (8, 8, 3))


def test_shape_mismatch_names_the_key_the_shapes_and_the_architecture():
  model = models.build({"name": "resnet8"}, {"t": 100})
  sd = cifar_sd((32, 64, 128, 256), 1, 100)  # RepDistiller's resnet8x4.
  with pytest.raises(UserError) as e:
    convert.from_torch(sd, model, "t", (32, 32, 3))
  msg = str(e.value)
  assert "'conv1.weight'" in msg and "(32, 3, 3, 3)" in msg, msg
  assert "(16, 3, 3, 3)" in msg and "= resnet8x4" in msg, msg
  assert "= resnet8 " in msg or "= resnet8;" in msg, msg  # This model.


def test_a_checkpoint_of_another_family_is_recognised():
  model, _ = _cifar()
  sd = vit_sd(4, 16, 2, 4, CLASSES)
  with pytest.raises(UserError, match=r"Missing key.*looks like vit\(patch"
                     r"=4, dim=16, depth=2, mlp_ratio=4.0, input=8x8\)"):
    convert.from_torch(sd, model, "t", (8, 8, 3))


def test_unsupported_model():
  model = models.build({"name": "mlp", "hidden": (4,)}, {"t": 2})
  with pytest.raises(UserError, match=r"MLP trunk.*cifar_resnet \(.*"
                     r"resnet8x4.*vit \("):
    convert.from_torch({}, model, "t", (4,))


# ---- Files ----


def test_safetensors_round_trip(tmp_path):
  model, sd = _cifar()
  path = tmp_path / "model.safetensors"
  save_file(sd, str(path))
  loaded = convert.load_state_dict(path)
  assert set(loaded) == set(sd)
  for k, v in sd.items():
    np.testing.assert_array_equal(loaded[k], v)
    assert loaded[k].dtype == v.dtype
  a = convert.from_torch(loaded, model, "t", (8, 8, 3))
  b = convert.from_torch(sd, model, "t", (8, 8, 3))
  jax.tree.map(np.testing.assert_array_equal, a, b)
  save_file({f"module.{k}": v for k, v in sd.items()}, str(path))  # DDP.
  assert set(convert.load_state_dict(path)) == set(sd)


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None,
                    reason="torch is installed")
def test_a_pytorch_file_without_torch(tmp_path):
  path = tmp_path / "model.pth"
  path.write_bytes(b"not read")
  with pytest.raises(UserError, match="torch is not installed.*safetensors"):
    convert.load_state_dict(path)


def test_unreadable_files(tmp_path):
  with pytest.raises(UserError, match="No checkpoint file"):
    convert.load_state_dict(tmp_path / "absent.safetensors")
  (tmp_path / "model.npz").write_bytes(b"")
  with pytest.raises(UserError, match=r"'.npz'.*\.safetensors"):
    convert.load_state_dict(tmp_path / "model.npz")
  (tmp_path / "bad.safetensors").write_bytes(b"garbage")
  with pytest.raises(UserError, match="Cannot read"):
    convert.load_state_dict(tmp_path / "bad.safetensors")

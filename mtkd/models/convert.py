"""PyTorch weights -> an mtkd exported model (Flax variables).

`load_state_dict(path)` reads a checkpoint as `{name: np.ndarray}`:
`.safetensors` with the `safetensors` package (no torch needed), `.pt` /
`.pth` / `.bin` with `torch.load(weights_only=True)` when torch is
installed. A checkpoint that wraps its weights (`{"model": ...}`,
`{"state_dict": ...}`, as RepDistiller's and Lightning's do) is unwrapped,
and DataParallel's `module.` prefix is dropped.

`from_torch(state_dict, model, head_task, input_shape)` maps those arrays
onto the variables of the same architecture built by mtkd
(`models.build`), one to one: every Flax leaf of the trunk is filled from
exactly one PyTorch tensor, checked for shape after transposition, and
every tensor is used (`num_batches_tracked` excepted). Supported families
(`mtkd.models` class: PyTorch names -> Flax module paths under `trunk`):

- `cifar_resnet` (resnet8..110, resnet8x4, resnet32x4; RepDistiller's
  models/resnet.py): `conv1`, `bn1` -> `Conv_0`, `BatchNorm_0`;
  `layer{s}.{j}.conv1/bn1/conv2/bn2/downsample.0/downsample.1` ->
  `BasicBlock_{k}/Conv_0/BatchNorm_0/Conv_1/BatchNorm_1/Conv_2/
  BatchNorm_2` with k = (s - 1) * n + j, n = (depth - 2) / 6.
- `wide_resnet` (wrn_*; RepDistiller's models/wrn.py): `conv1` -> `Conv_0`,
  `block{s}.layer.{j}.bn1/conv1/bn2/conv2/convShortcut` ->
  `WideBlock_{k}/BatchNorm_0/Conv_0/BatchNorm_1/Conv_1/Conv_2`
  (n = (depth - 4) / 6), the final `bn1` -> `BatchNorm_0`.
- `imagenet_resnet` (torchvision resnet18/34/50): `conv1`, `bn1`,
  `layer{i}.{j}.conv1 .. bn3 / downsample.0 / downsample.1` ->
  `conv1`, `bn1`, `layer{i}_{j}/conv1 .. bn3 / downsample_0 / downsample_1`.
- `vit` (timm's VisionTransformer, class token, no fc_norm): `cls_token`,
  `pos_embed`, `patch_embed.proj` -> `patch_embed`, `blocks.{i}.norm1 /
  attn.qkv / attn.proj / norm2 / mlp.fc1 / mlp.fc2` -> `block_{i}/norm1 /
  attn/qkv / ...`, `norm` -> `norm`. A state_dict does not record the
  number of attention heads: `heads` must be the checkpoint's (vit_ti16: 3,
  vit_s16: 6, vit_b16: 12), or the model computes something else.

Leaves: conv `weight` [O, I, kh, kw] -> `kernel` [kh, kw, I, O]; Linear
`weight` [out, in] -> `kernel` [in, out]; BatchNorm / LayerNorm `weight`,
`bias` -> `scale`, `bias`; `running_mean` / `running_var` -> batch_stats
`mean` / `var`; other parameters (`cls_token`, `pos_embed`) as they are.

The classifier (`fc`, or timm's `head`): with `head_task`, it becomes that
task's head `head_<task>` (its class count must be the task's); with
`head_task=None` it is dropped (a teacher used for its features, or a new
task) and may be absent. Heads not filled from the checkpoint get a fresh
initialisation, as `MultiHead.init` gives them (seeded by `seed`).

Every mismatch is a `UserError` naming the key, the shapes, and the
architecture the checkpoint looks like.
"""

import dataclasses
import functools
import os
import re
from collections.abc import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from safetensors.numpy import load_file

from mtkd.errors import UserError
from mtkd.models.base import TRUNKS, MultiHead
from mtkd.models.imagenet_resnet import ImageNetResNet
from mtkd.models.resnet import CifarResNet, WideResNet
from mtkd.models.vit import ViT

SKIPPED = ("num_batches_tracked",)  # PyTorch buffers with no counterpart.


@dataclasses.dataclass(frozen=True)
class Family:
  """How one trunk class's Flax modules are named in PyTorch.

  `rename(trunk, path)`: the PyTorch module prefix of the Flax module at
  `path` (a tuple of names under `trunk`; `()` for the trunk's own
  parameters), None if there is none. `describe(state_dict)`: the
  configuration a checkpoint of this family has (None if it is not one).
  `fields`: the trunk's fields that fix its shapes. `classifier`: the
  PyTorch name of the final Linear.
  """
  name: str
  rename: Callable[[nn.Module, tuple[str, ...]], str | None]
  describe: Callable[[Mapping[str, np.ndarray]], dict | None]
  fields: tuple[str, ...]
  classifier: str


FAMILIES: dict[type, Family] = {}


def _family(cls: type, name: str, describe, fields, classifier: str = "fc"):
  def register(rename):
    FAMILIES[cls] = Family(name, rename, describe, fields, classifier)
    return rename
  return register


def _describer(f):
  """`f(state_dict) -> dict`, None where it does not fit the family."""
  @functools.wraps(f)
  def describe(sd):
    try:
      return f(sd)
    except (KeyError, IndexError, ValueError, AttributeError, TypeError):
      return None
  return describe


def _count(sd: Mapping, pattern: str) -> int:
  """How many of pattern.format(0), .format(1), ... are keys of `sd`."""
  n = 0
  while pattern.format(n) in sd:
    n += 1
  return n


def _out(sd: Mapping, key: str) -> int:
  return int(np.shape(sd[key])[0])


def _need(condition: bool) -> None:
  if not condition:
    raise KeyError("not this family")


def _index(name: str, prefix: str) -> int | None:
  m = re.fullmatch(re.escape(prefix) + r"(\d+)", name)
  return int(m.group(1)) if m else None


# CIFAR ResNet (RepDistiller's models/resnet.py).

_CIFAR_BLOCK = {"Conv_0": "conv1", "BatchNorm_0": "bn1", "Conv_1": "conv2",
                "BatchNorm_1": "bn2", "Conv_2": "downsample.0",
                "BatchNorm_2": "downsample.1"}


@_describer
def _describe_cifar(sd):
  _need(np.shape(sd["conv1.weight"])[-1] == 3 and "layer3.0.conv1.weight"
        in sd and "layer4.0.conv1.weight" not in sd)
  n = _count(sd, "layer1.{}.conv1.weight")
  _need(n > 0)
  widths = (_out(sd, "conv1.weight"),
            *(_out(sd, f"layer{s}.0.conv2.weight") for s in (1, 2, 3)))
  return {"depth": 6 * n + 2, "widths": widths}


@_family(CifarResNet, "cifar_resnet", _describe_cifar, ("depth", "widths"))
def _rename_cifar(trunk, path):
  if len(path) == 1:
    return {"Conv_0": "conv1", "BatchNorm_0": "bn1"}.get(path[0])
  k, n = _index(path[0], "BasicBlock_"), (trunk.depth - 2) // 6
  if len(path) != 2 or k is None or path[1] not in _CIFAR_BLOCK:
    return None
  return f"layer{k // n + 1}.{k % n}.{_CIFAR_BLOCK[path[1]]}"


# Wide ResNet (RepDistiller's models/wrn.py).

_WRN_BLOCK = {"BatchNorm_0": "bn1", "Conv_0": "conv1", "BatchNorm_1": "bn2",
              "Conv_1": "conv2", "Conv_2": "convShortcut"}


@_describer
def _describe_wrn(sd):
  n = _count(sd, "block1.layer.{}.conv1.weight")
  _need(n > 0)
  return {"depth": 6 * n + 4,
          "widen": _out(sd, "block1.layer.0.conv1.weight") // 16}


@_family(WideResNet, "wide_resnet", _describe_wrn, ("depth", "widen"))
def _rename_wrn(trunk, path):
  if len(path) == 1:
    return {"Conv_0": "conv1", "BatchNorm_0": "bn1"}.get(path[0])
  k, n = _index(path[0], "WideBlock_"), (trunk.depth - 4) // 6
  if len(path) != 2 or k is None or path[1] not in _WRN_BLOCK:
    return None
  return f"block{k // n + 1}.layer.{k % n}.{_WRN_BLOCK[path[1]]}"


# torchvision's ResNet: mtkd's names are torchvision's with "_" for ".".

@_describer
def _describe_imagenet(sd):
  _need(np.shape(sd["conv1.weight"])[-1] == 7)
  layers = []
  while n := _count(sd, f"layer{len(layers) + 1}.{{}}.conv1.weight"):
    layers.append(n)
  _need(bool(layers))
  widths = tuple(_out(sd, f"layer{i}.0.conv1.weight")
                 for i in range(1, len(layers) + 1))
  return {"layers": tuple(layers), "widths": widths,
          "stem": _out(sd, "conv1.weight"),
          "bottleneck": "layer1.0.conv3.weight" in sd}


@_family(ImageNetResNet, "imagenet_resnet", _describe_imagenet,
         ("layers", "widths", "stem", "bottleneck"))
def _rename_imagenet(trunk, path):
  del trunk
  return ".".join(p.replace("_", ".") for p in path) or None


# timm's VisionTransformer.

@_describer
def _describe_vit(sd):
  dim, _, patch, _ = np.shape(sd["patch_embed.proj.weight"])
  side = int(round((np.shape(sd["pos_embed"])[1] - 1) ** 0.5)) * patch
  return {"patch": int(patch), "dim": int(dim),
          "depth": _count(sd, "blocks.{}.norm1.weight"),
          "mlp_ratio": _out(sd, "blocks.0.mlp.fc1.weight") / dim,
          "input": f"{side}x{side}"}


@_family(ViT, "vit", _describe_vit,
         ("patch", "dim", "depth", "heads", "mlp_ratio", "input"),
         classifier="head")
def _rename_vit(trunk, path):
  del trunk
  if not path:
    return ""  # cls_token, pos_embed.
  if path == ("patch_embed",):
    return "patch_embed.proj"
  i = _index(path[0], "block_")
  if i is not None and len(path) > 1:
    return ".".join((f"blocks.{i}", *path[1:]))
  return "norm" if path == ("norm",) else None


# The conversion.

_LEAVES = {("params", "kernel"): "weight", ("params", "scale"): "weight",
           ("params", "bias"): "bias",
           ("batch_stats", "mean"): "running_mean",
           ("batch_stats", "var"): "running_var"}


def _torch_shape(shape, leaf: str) -> tuple[int, ...]:
  """The PyTorch layout of a Flax leaf's shape."""
  if leaf == "kernel" and len(shape) == 4:  # [kh, kw, I, O] -> [O, I, kh, kw]
    return (shape[3], shape[2], shape[0], shape[1])
  if leaf == "kernel" and len(shape) == 2:  # [in, out] -> [out, in]
    return (shape[1], shape[0])
  return tuple(shape)


def _to_flax(arr: np.ndarray, leaf: str) -> np.ndarray:
  if leaf == "kernel" and arr.ndim == 4:
    return arr.transpose(2, 3, 1, 0)
  if leaf == "kernel" and arr.ndim == 2:
    return arr.T
  return arr


def _same(a, b) -> bool:
  def norm(v):
    return tuple(v) if isinstance(v, list | tuple) else v
  return norm(a) == norm(b)


def _registered(cls: type, cfg: Mapping | None = None) -> list[str]:
  """Registered trunk names built by `cls` (with `cfg`: the presets, i.e.
  partials, whose fields agree with `cfg`)."""
  defaults = {f.name: f.default for f in dataclasses.fields(cls)
              if f.default is not dataclasses.MISSING}
  out = []
  for name in TRUNKS.names():
    obj = TRUNKS.get(name)
    if getattr(obj, "func", obj) is not cls:
      continue
    full = {**defaults, **getattr(obj, "keywords", {})}
    if cfg is None or (hasattr(obj, "keywords") and all(
        _same(full[k], v) for k, v in cfg.items() if k in full)):
      out.append(name)
  return out


def _config_str(name: str, cfg: Mapping, cls: type) -> str:
  text = f"{name}({', '.join(f'{k}={v}' for k, v in cfg.items())})"
  presets = _registered(cls, cfg)
  return text + (f" = {', '.join(presets)}" if presets else "")


def _looks_like(sd: Mapping) -> str:
  for cls, family in FAMILIES.items():
    cfg = family.describe(sd)
    if cfg is not None:
      return _config_str(family.name, cfg, cls)
  return "no architecture this converter knows"


def _model_str(model: MultiHead, input_shape) -> str:
  family = FAMILIES[type(model.trunk)]
  cfg = {f: (getattr(model.trunk, f) if f != "input" else
             "x".join(str(d) for d in input_shape[:2]))
         for f in family.fields}
  return _config_str(family.name, cfg, type(model.trunk))


def _mismatch(problem: str, sd: Mapping, this: str) -> UserError:
  return UserError(
      f"{problem} This model is {this}; the checkpoint looks "
      f"like {_looks_like(sd)}. Build the model with the checkpoint's "
      "architecture (its config's model name and sizes; a ViT's image "
      "size), or convert a checkpoint of this model's architecture.")


def _family_of(model: MultiHead) -> Family:
  trunk = getattr(model, "trunk", None)
  if type(trunk) in FAMILIES:
    return FAMILIES[type(trunk)]
  known = "; ".join(f"{f.name} ({', '.join(_registered(cls))})"
                    for cls, f in FAMILIES.items())
  raise UserError(
      f"from_torch cannot convert PyTorch weights for a "
      f"{type(trunk).__name__} trunk: it supports {known}. Train this model "
      "in mtkd instead, or add its name mapping to mtkd/models/convert.py.")


def _plan(family: Family, model: MultiHead, target: Mapping,
          head_task: str | None) -> dict[tuple, str]:
  """Flax leaf path -> the PyTorch key that fills it (trunk, and the head
  of `head_task`)."""
  plan = {}
  for key in target:
    collection, module, *path, leaf = key
    if module == "trunk":
      prefix = family.rename(model.trunk, tuple(path))
      suffix = _LEAVES.get((collection, leaf),
                           leaf if collection == "params" else None)
      if prefix is None or suffix is None:
        raise UserError(
            f"from_torch has no PyTorch name for {'/'.join(key)} of this "
            f"{family.name}: this variant is not supported. Use one of the "
            "registered presets, or extend mtkd/models/convert.py.")
      plan[key] = f"{prefix}.{suffix}" if prefix else suffix
    elif module == f"head_{head_task}":
      plan[key] = f"{family.classifier}.{_LEAVES[(collection, leaf)]}"
  if len(set(plan.values())) != len(plan):
    raise AssertionError(f"{family.name}: two leaves share a PyTorch name.")
  return plan


def _names(keys) -> str:
  keys = sorted(keys)
  more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
  return ", ".join(repr(k) for k in keys[:5]) + more


def _check_shapes(plan: Mapping, sd: Mapping, target: Mapping, this: str,
                  head_task: str | None) -> None:
  order = {name: i for i, name in enumerate(sd)}  # PyTorch's module order.
  for key, name in sorted(plan.items(), key=lambda kv: order[kv[1]]):
    want = _torch_shape(target[key].shape, key[-1])
    got = tuple(np.shape(sd[name]))
    if got == want:
      continue
    if key[1] != "trunk" and got[1:] == want[1:]:
      raise UserError(
          f"The checkpoint's classifier {name!r} has {got[0]} classes but "
          f"task {head_task!r} has {want[0]}. Pass head_task=None to drop "
          "the classifier (the task's head then starts fresh), or convert "
          "for the task the checkpoint was trained on.")
    raise _mismatch(
        f"Shape mismatch for {name!r}: the checkpoint has {got}, this model "
        f"expects {want} (PyTorch layout; Flax {'/'.join(key)} is "
        f"{tuple(target[key].shape)}).", sd, this)


def _check(plan: Mapping, sd: Mapping, target: Mapping, family: Family,
           this: str, head_task: str | None) -> None:
  """Every planned key present with its shape; no key left over. `this`
  describes the model, for the messages."""
  missing = [name for name in plan.values() if name not in sd]
  if missing:
    raise _mismatch(f"Missing key(s) in the checkpoint: {_names(missing)}.",
                    sd, this)
  _check_shapes(plan, sd, target, this, head_task)
  dropped = set() if head_task is not None else {
      f"{family.classifier}.weight", f"{family.classifier}.bias"}
  unexpected = set(sd) - set(plan.values()) - dropped
  if unexpected:
    raise _mismatch(
        f"Unexpected key(s) in the checkpoint, with no counterpart in this "
        f"model: {_names(unexpected)}.", sd, this)


def _fresh_heads(model: MultiHead, target: Mapping, filled: Mapping,
                 seed: int) -> dict[tuple, jax.Array]:
  """Heads the checkpoint does not fill, initialised as MultiHead's
  (`nn.Dense`'s defaults)."""
  out = {}
  for i, (task, n) in enumerate(model.heads):
    kernel = ("params", f"head_{task}", "kernel")
    if kernel in filled:
      continue
    x = jnp.zeros((1, target[kernel].shape[0]), jnp.float32)
    head = nn.Dense(n).init(jax.random.fold_in(jax.random.key(seed), i), x)
    for leaf, value in head["params"].items():
      out[("params", f"head_{task}", leaf)] = value
  return out


def from_torch(state_dict: Mapping[str, np.ndarray], model: MultiHead,
               head_task: str | None, input_shape, *, seed: int = 0) -> dict:
  """A PyTorch state_dict (numpy arrays, PyTorch names and layouts) ->
  the exported model (`{"params": ..., "batch_stats": ...}`) of `model`.

  `model`: `models.build(cfg, {task: classes})` of the checkpoint's
  architecture; `input_shape`: one example's [H, W, C] (a ViT's position
  embeddings depend on it). The classifier (`fc` / timm's `head`) fills
  `head_<head_task>`, whose class count must match; with
  `head_task=None` it is dropped. Other heads start fresh (`seed`).
  A ViT's `heads` is not in its state_dict: set it as the checkpoint's.
  Raises `UserError` for an unsupported trunk, a missing or unexpected
  key, a shape mismatch or a wrong class count.
  """
  family = _family_of(model)
  tasks = dict(model.heads)
  if head_task is not None and head_task not in tasks:
    raise UserError(f"head_task {head_task!r} is not one of this model's "
                    f"tasks {sorted(tasks)}; pass one of them, or None to "
                    "drop the checkpoint's classifier.")
  target = traverse_util.flatten_dict(jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, *input_shape), jnp.float32))))
  sd = {k: v for k, v in state_dict.items()
        if k.rsplit(".", 1)[-1] not in SKIPPED}
  plan = _plan(family, model, target, head_task)
  _check(plan, sd, target, family, _model_str(model, input_shape), head_task)
  flat = {key: jnp.asarray(_to_flax(np.asarray(sd[name]), key[-1]),
                           dtype=target[key].dtype)
          for key, name in plan.items()}
  flat.update(_fresh_heads(model, target, flat, seed))
  if set(flat) != set(target):
    raise AssertionError(f"unfilled: {sorted(set(target) - set(flat))}")
  return traverse_util.unflatten_dict(flat)


# Reading checkpoints.

TORCH_SUFFIXES = (".pt", ".pth", ".bin")
_WRAPPERS = ("state_dict", "model_state_dict", "model")


def _unwrap(obj, path: str) -> Mapping:
  """The state_dict inside a training checkpoint ({"model": ...})."""
  while isinstance(obj, Mapping):
    inner = next((obj[k] for k in _WRAPPERS
                  if isinstance(obj.get(k), Mapping)), None)
    if inner is None:
      break
    obj = inner
  if not isinstance(obj, Mapping) or not all(
      hasattr(v, "shape") for v in obj.values()):
    raise UserError(
        f"{path} holds no state_dict (a mapping of names to tensors). Save "
        "one with torch.save(model.state_dict(), path), or as safetensors.")
  if obj and all(k.startswith("module.") for k in obj):  # DataParallel.
    obj = {k[len("module."):]: v for k, v in obj.items()}
  return obj


def _torch_load(path: str) -> Mapping:
  try:
    import torch
  except ImportError:
    raise UserError(
        f"{path} is a PyTorch checkpoint and torch is not installed. "
        "Install torch (a CPU build suffices), or convert the file to "
        "safetensors where torch is installed: safetensors.torch.save_file("
        "model.state_dict(), 'model.safetensors').") from None
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise UserError(
        f"torch.load(weights_only=True) cannot read {path}: {first} mtkd "
        "loads tensors only; re-save the model's state_dict (torch.save("
        "model.state_dict(), path)) or convert it to safetensors.") from e

  def numpy(t):
    t = t.detach().cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()
  return {k: numpy(v) for k, v in _unwrap(obj, path).items()}


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A checkpoint file -> `{name: np.ndarray}` (see the module docstring).
  `.safetensors` needs only the `safetensors` package; `.pt`, `.pth`,
  `.bin` need torch, and load with `weights_only=True` (tensors only)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise UserError(f"No checkpoint file {path!r}; fix the path.")
  suffix = os.path.splitext(path)[1].lower()
  if suffix == ".safetensors":
    try:
      tensors = load_file(path)
    except Exception as e:
      raise UserError(f"Cannot read {path} as safetensors: {e}. Re-export "
                      "it with safetensors.torch.save_file.") from e
  elif suffix in TORCH_SUFFIXES:
    tensors = _torch_load(path)
  else:
    raise UserError(
        f"Unknown checkpoint format {suffix or '(no suffix)'!r} for {path}: "
        f"use .safetensors or a PyTorch file ({', '.join(TORCH_SUFFIXES)}).")
  return {k: np.asarray(v) for k, v in _unwrap(tensors, path).items()}

"""The model contract: a registered trunk plus one head per task.

Trunks adapt to the input: images `[B, H, W, C]` or vectors `[B, D]`. They
return `(features, blocks)`: the representation the heads read and a dict of
named intermediate activations (what feature-level distillation can match).
Heads are Dense layers named `head_<task>`, sized by each task's output
count, so a trunk checkpoint can be re-used with new heads by name. The head
of a sequence task (`build(..., kinds=)`) reads the trunk's per-position
features, `blocks["tokens"]` `[B, L, D]`, and gives logits `[B, L, V]`; a
trunk that has no such block cannot carry one (`mtkd.models.lm`'s can).

`Net` wraps the exported model (`params["model"]`) with what only training
needs: feature adaptors and, for mutual learning, peer models. Evaluation,
caching and transfer read the exported model alone (`export`), so those
extras never leak into the exported student.

Mutable state: a trunk may keep other Flax collections (BatchNorm's
`batch_stats`), updated when `train=True` and read as running averages
when `train=False`. A trunk with an `axis_name` field normalises over that
device axis in training (`with_axis_name`, set for `pmap`), so its batch
statistics are the global batch's under pmap as they are under jit. An
exported model is Flax variables: `{"params": ..., "batch_stats": ...}`.

Mixed precision: a trunk's `dtype` (e.g. `config.student.model.dtype=
'bfloat16'`) is its compute dtype; parameters and optimizer state stay
float32 (Flax's `param_dtype`), and the heads compute in float32. bfloat16
is for accelerators: XLA:CPU emulates it, slower than float32.
"""

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mtkd.errors import UserError
from mtkd.registry import Registry
from mtkd.store.fingerprint import tree_fingerprint

TRUNKS: Registry = Registry("model")


class MultiHead(nn.Module):
  """A shared trunk and one linear head per task; returns {task: logits}.

  Heads compute in float32 whatever the trunk's dtype, so logits, losses
  and cached teacher outputs are float32.

  With `with_features`, returns `(logits, blocks)` where `blocks` holds the
  trunk's intermediate activations plus `representation` (the trunk output).
  """
  trunk: nn.Module
  heads: tuple[tuple[str, int], ...]  # (task, num_outputs); hashable.
  sequence: tuple[str, ...] = ()  # Tasks whose head reads blocks["tokens"].

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               with_features: bool = False):
    features, blocks = self.trunk(x, train=train)
    features = features.astype(jnp.float32)
    if self.sequence and "tokens" not in blocks:
      raise UserError(
          f"Task(s) {list(self.sequence)} predict a token at every position, "
          f"but model {type(self.trunk).__name__} has no per-position "
          "output (blocks['tokens']). Fix: use a language-model trunk such "
          "as 'causal_lm'.")
    logits = {task: nn.Dense(n, name=f"head_{task}")(
        blocks["tokens"].astype(jnp.float32) if task in self.sequence
        else features) for task, n in self.heads}
    if with_features:
      return logits, dict(blocks, representation=features)
    return logits


def flatten(x: jax.Array) -> jax.Array:
  return x.reshape(x.shape[0], -1)


class Net(nn.Module):
  """What a training stage optimises: the exported `model` plus extras.

  `adaptors`: (target, shape) pairs, `shape` one example's teacher feature;
  each adaptor is a linear map from the student's `feature_layer` to that
  space (Li & Bilen 2020): a 1x1 convolution when both are feature maps of
  the same height and width (FitNets' regressor), else a Dense on the
  flattened features. `regressor='conv_bn_relu'` follows that map with
  BatchNorm and ReLU, as RepDistiller's ConvReg (its FitNets); the
  BatchNorm normalises over `axis_name` under pmap, as the trunk's does. `peers`: extra copies of the model trained alongside
  (deep mutual learning). Output: `{"logits": {task: ...}, "features":
  {target: [B, prod(shape)]}, "peers": ({task: ...}, ...)}`.
  """
  model: MultiHead
  feature_layer: str = ""
  adaptors: tuple[tuple[str, tuple[int, ...]], ...] = ()
  peers: int = 0
  regressor: str = "linear"
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> dict:
    if self.adaptors:
      logits, blocks = self.model(x, train=train, with_features=True)
    else:
      logits = self.model(x, train=train)
    out = {"logits": logits}
    if self.adaptors:
      if self.feature_layer not in blocks:
        raise ValueError(f"Unknown feature layer {self.feature_layer!r}; the "
                         f"student has {sorted(blocks)}.")
      f = blocks[self.feature_layer]
      out["features"] = {name: _adapt(
          f, shape, f"adaptor_{name}", self.regressor, train, self.axis_name)
                         for name, shape in self.adaptors}
    if self.peers:
      out["peers"] = tuple(self.model.clone(
        parent=self, name=f"peer_{i}", _deep_clone=True)(x, train=train)
                           for i in range(self.peers))
    return out


def _adapt(f: jax.Array, shape: tuple[int, ...], name: str,
           regressor: str = "linear", train: bool = False,
           axis_name: str | None = None) -> jax.Array:
  """Student features -> the teacher's `shape`, flattened: per position
  (a 1x1 convolution) for maps of the same height and width, a Dense on
  the flattened features otherwise; then BatchNorm + ReLU for
  'conv_bn_relu'."""
  if f.ndim == 4 and len(shape) == 3 and tuple(f.shape[1:3]) == shape[:2]:
    y = nn.Dense(shape[2], name=name)(f)
  else:
    y = nn.Dense(int(np.prod(shape)), name=name)(flatten(f))
  if regressor == "conv_bn_relu":
    y = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9,
                             epsilon=1e-5, axis_name=axis_name,
                             name=f"{name}_bn")(y))
  return flatten(y)


def with_axis_name(net: nn.Module, axis_name: str | None) -> nn.Module:
  """`net` whose trunk normalises over `axis_name` in training (a no-op for
  trunks without an `axis_name` field, or without an axis)."""
  if axis_name is None:
    return net
  model = getattr(net, "model", net)
  if hasattr(model.trunk, "axis_name"):
    model = model.clone(trunk=model.trunk.clone(axis_name=axis_name))
  if not hasattr(net, "model"):
    return model
  changes = {} if model is net.model else {"model": model}
  if net.regressor != "linear":  # Only a BatchNorm adaptor reads the axis.
    changes["axis_name"] = axis_name
  return net.clone(**changes) if changes else net


def export(variables: Mapping[str, dict]) -> dict:
  """A stage's `{"params": ..., **model_state}` -> the exported model's
  variables: the `model` entry of every collection that has one."""
  return {c: tree["model"] for c, tree in variables.items() if "model" in tree}


def fingerprint(variables: Mapping[str, dict]) -> str:
  """Content hash of an exported model. A model with parameters only
  hashes as its parameters did before models had other collections, so
  caches and checkpoints tied to it by that hash stay valid."""
  return tree_fingerprint(variables["params"] if set(variables) == {"params"}
                          else dict(variables))


def feature_shape(model: MultiHead, input_shape, layer: str
                  ) -> tuple[int, ...]:
  """The shape of `layer`'s activation for one example."""
  def f(x):
    return model.init_with_output(jax.random.key(0), x, with_features=True)
  (_, blocks), _ = jax.eval_shape(f, jnp.zeros((1, *input_shape)))
  if layer not in blocks:
    raise UserError(f"Feature layer {layer!r} does not exist; this model "
                    f"has {sorted(blocks)}. Fix the objective's layer setting "
                    "(e.g. config.feature.teacher_layer).")
  return tuple(int(d) for d in blocks[layer].shape[1:])


def _frozen(value):
  """Nested lists -> tuples: Flax modules hash their fields."""
  if isinstance(value, list | tuple):
    return tuple(_frozen(v) for v in value)
  return value


def build(cfg, num_classes: Mapping[str, int],
          kinds: Mapping[str, str] | None = None) -> MultiHead:
  """Model from a config `{name, **trunk kwargs}`, per-task output counts
  and (for sequence tasks) per-task kinds."""
  kwargs = {k: _frozen(v) for k, v in cfg.items() if k != "name"}
  trunk_cls = TRUNKS.get(cfg["name"])
  kinds = kinds or {}
  return MultiHead(trunk=trunk_cls(**kwargs),
                   heads=tuple((t, int(n)) for t, n in num_classes.items()),
                   sequence=tuple(t for t in num_classes
                                  if kinds.get(t) == "sequence"))

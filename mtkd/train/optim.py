"""Optimizers: a registered base optimizer, a learning-rate schedule, weight
decay that skips biases and norm scales, global-norm clipping, frozen parts.

`config.<part>.optimizer` (teacher, student, source) holds `name`,
`learning_rate`, and the base optimizer's own keyword arguments (`sgd`:
momentum, nesterov; `adam`: b1, b2, eps; ...), plus:

  schedule      {name, unit, ...} (default constant). `unit` is 'steps' or
                'epochs' (an epoch is the stage's rows / batch size):
                  constant
                  warmup_cosine  warmup (linear from 0), then cosine to
                                 end_value over the rest of the stage
                  multistep      x factor at each of boundaries (CRD/DKD:
                                 epochs 150, 180, 210, factor 0.1)
                  linear         warmup, then linear to end_value
  weight_decay  > 0: L2 decay on weights only: Dense/Conv kernels and
                embeddings; biases, norm scales and offsets are never
                decayed. With `adamw` it is AdamW's decoupled decay; with
                any other optimizer it is added to the gradient before the
                optimizer, as PyTorch's `weight_decay` does.
  clip_norm     > 0: the gradient's global norm is clipped first.

A constant schedule passes the plain float to optax, so its optimizer state
is what it always was (checkpoints of earlier runs restore).
"""

from collections.abc import Callable, Mapping

import jax
import optax

from mtkd import configs_util
from mtkd.errors import UserError
from mtkd.registry import Registry

OPTIMIZERS: Registry = Registry("optimizer")
OPTIMIZERS.register("adam")(optax.adam)
OPTIMIZERS.register("adamw")(optax.adamw)
OPTIMIZERS.register("sgd")(optax.sgd)
SCHEDULES: Registry = Registry("learning-rate schedule")
# Every schedule's settings (each reads the ones it needs), so a config can
# hold them all and any can be overridden from the command line.
SCHEDULE_DEFAULTS = dict(name="constant", unit="steps", warmup=0,
                         boundaries=(), factor=0.1, end_value=0.0)
RECIPE_KEYS = ("name", "learning_rate", "schedule", "weight_decay",
               "clip_norm")
DECAYED = ("kernel", "embedding")  # Leaf names that weight decay applies to.


def decay_mask(params) -> dict:
  """True for the leaves weight decay applies to (see DECAYED)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) in DECAYED, params)


def _steps(value: float, unit: str, steps_per_epoch: float) -> int:
  return int(round(value * steps_per_epoch)) if unit == "epochs" else int(
      value)


@SCHEDULES.register("constant")
def constant(lr: float, total: int, to_steps: Callable, **unused):
  del total, to_steps, unused
  return lr


def _warmup_steps(w: int, total: int) -> int:
  if not 0 <= w < total:
    raise UserError(f"schedule warmup is {w} steps; it must be >= 0 and "
                    f"shorter than the stage ({total} steps).")
  return w


@SCHEDULES.register("warmup_cosine")
def warmup_cosine(lr: float, total: int, to_steps: Callable, warmup=0,
                  end_value=0.0, **unused):
  w = _warmup_steps(to_steps(warmup), total)
  return optax.warmup_cosine_decay_schedule(0.0, lr, w, total,
                                            end_value) if w else (
      optax.cosine_decay_schedule(lr, total, end_value / lr if lr else 0.0))


@SCHEDULES.register("multistep")
def multistep(lr: float, total: int, to_steps: Callable, boundaries=(),
              factor=0.1, **unused):
  steps = [to_steps(b) for b in boundaries]
  if steps != sorted(steps) or any(s <= 0 for s in steps):
    raise UserError(f"schedule boundaries {list(boundaries)} must increase "
                    "and be > 0.")
  return optax.piecewise_constant_schedule(
      lr, {s: float(factor) for s in steps})


@SCHEDULES.register("linear")
def linear(lr: float, total: int, to_steps: Callable, warmup=0,
           end_value=0.0, **unused):
  w = _warmup_steps(to_steps(warmup), total)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, w),
       optax.linear_schedule(lr, end_value, total - w)], [w])


def learning_rate(cfg: Mapping, total_steps: int, steps_per_epoch: float):
  """The optimizer's learning rate: a float, or an optax schedule."""
  s = dict(configs_util.to_dict(cfg.get("schedule") or {}))
  unknown = sorted(set(s) - set(SCHEDULE_DEFAULTS))
  if unknown:
    raise UserError(f"optimizer.schedule has unknown key(s) {unknown}; "
                    f"known: {sorted(SCHEDULE_DEFAULTS)}.")
  s = dict(SCHEDULE_DEFAULTS, **s)
  name, unit = s.pop("name"), s.pop("unit")
  if unit not in ("steps", "epochs"):
    raise UserError(f"schedule unit is {unit!r}; use 'steps' or 'epochs'.")
  return SCHEDULES.get(name)(float(cfg["learning_rate"]),
                             max(int(total_steps), 1),
                             lambda v: _steps(v, unit, steps_per_epoch), **s)


def make_optimizer(cfg, frozen: Callable | None = None, total_steps: int = 1,
                   steps_per_epoch: float = 1.0
                   ) -> optax.GradientTransformation:
  """`config.<part>.optimizer` -> optax transform (module docstring).

  `frozen(params) -> pytree of bools` marks parameters that must not move
  (e.g. a transferred trunk): their updates are zeroed and the optimizer
  keeps no moments for them."""
  cfg = configs_util.to_dict(cfg)
  kwargs = {k: v for k, v in cfg.items() if k not in RECIPE_KEYS}
  base = OPTIMIZERS.get(cfg["name"])
  lr = learning_rate(cfg, total_steps, steps_per_epoch)
  wd, clip = float(cfg.get("weight_decay", 0.0)), float(
      cfg.get("clip_norm", 0.0))
  if wd < 0 or clip < 0:
    raise UserError(f"optimizer weight_decay {wd} and clip_norm {clip} must "
                    "be >= 0.")
  try:
    if wd and cfg["name"] == "adamw":
      tx = base(lr, weight_decay=wd, mask=decay_mask, **kwargs)
    else:
      tx = base(lr, **kwargs)
      if wd:
        tx = optax.chain(optax.add_decayed_weights(wd, decay_mask), tx)
  except TypeError as e:
    raise UserError(f"optimizer {cfg['name']!r} does not take "
                    f"{sorted(kwargs)}: {e}.") from None
  if clip:
    tx = optax.chain(optax.clip_by_global_norm(clip), tx)
  if frozen is None:
    return tx
  return optax.multi_transform(
      {"train": tx, "frozen": optax.set_to_zero()},
      lambda params: jax.tree.map(lambda f: "frozen" if f else "train",
                                  frozen(params)))

"""Train state, optimizer, and the pure train step.

`train_step(state, batch, rng) -> (state, metrics)` has no side effects; its
randomness is `fold_in(rng, state.step)`, so a step is a function of its
inputs alone and resuming at step s replays the same randomness.
`mtkd.train.placement` is the one place where jit/pmap, shardings and
buffer donation are declared.
"""

import functools
from collections.abc import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax import lax

from mtkd.methods import weighting as weighting_lib
from mtkd.methods.objectives import Context, Objective, TaskSpec, term_means
from mtkd.methods.weighting import Weighting
from mtkd.models import flatten
from mtkd.registry import Registry

OPTIMIZERS: Registry = Registry("optimizer")
OPTIMIZERS.register("adam")(optax.adam)
OPTIMIZERS.register("adamw")(optax.adamw)
OPTIMIZERS.register("sgd")(optax.sgd)


class TrainState(struct.PyTreeNode):
  step: jax.Array
  params: dict
  opt_state: optax.OptState
  # Non-gradient state the step reads and writes: the task weighting's
  # state and, in online-teacher mode, the (frozen) teachers' parameters.
  extra: dict = struct.field(default_factory=dict)


def make_optimizer(cfg, frozen: Callable | None = None
                   ) -> optax.GradientTransformation:
  """`{name, learning_rate, **kwargs}` -> optax transform.

  `frozen(params) -> pytree of bools` marks parameters that must not move
  (e.g. a transferred trunk): their updates are zeroed and the optimizer
  keeps no moments for them."""
  kwargs = {k: v for k, v in cfg.items() if k != "name"}
  tx = OPTIMIZERS.get(cfg.name)(**kwargs)
  if frozen is None:
    return tx
  return optax.multi_transform(
      {"train": tx, "frozen": optax.set_to_zero()},
      lambda params: jax.tree.map(lambda f: "frozen" if f else "train",
                                  frozen(params)))


def make_init(net: nn.Module, tx: optax.GradientTransformation,
              input_shape: tuple[int, ...],
              extra: Callable[[dict], dict] | None = None) -> Callable:
  """`rng -> TrainState` at step 0 (jitted by the placement).

  `extra(params) -> dict` builds the state's non-gradient part."""
  def init(rng: jax.Array) -> TrainState:
    params = net.init(rng, jnp.zeros((1, *input_shape)), train=False)["params"]
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params),
                      extra(params) if extra else {})
  return init


def _apply(tx: optax.GradientTransformation, state: TrainState,
           loss: jax.Array, grads, wstate) -> tuple[TrainState, dict]:
  """The optimizer update, or no update at all when the loss or gradients
  are not finite (the loop then stops or goes on by config.nonfinite), so
  checkpoints never hold NaNs. Returns the new state and step metrics."""
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  params, opt_state, wstate = jax.tree.map(
      lambda new, old: jnp.where(finite, new, old),
      (params, opt_state, wstate),
      (state.params, state.opt_state, state.extra.get("weighting", {})))
  extra = dict(state.extra)
  if "weighting" in extra:
    extra["weighting"] = wstate
  one = jnp.ones((), jnp.float32)
  return TrainState(state.step + 1, params, opt_state, extra), {
      "loss": (loss, one), "grad_norm": (grad_norm, one),
      "nonfinite": (1.0 - finite.astype(jnp.float32), one)}


def make_train_step(net: nn.Module, tx: optax.GradientTransformation,
                    objective: Objective, tasks: tuple[TaskSpec, ...],
                    weighting: Weighting | None = None, num_steps: int = 1,
                    augment: Callable | None = None,
                    teacher: Callable | None = None,
                    axis_name: str | None = None) -> Callable:
  """Builds the pure step `(state, batch, rng) -> (state, metrics)`.

  Order inside a step: fold the step (and device) into the key; augment the
  inputs (`augment(inputs, key)`); in online-teacher mode run the frozen
  teachers on those same inputs (`teacher(state.extra["teachers"], inputs)
  -> (logits, features)`), so teacher and student see one view; compute the
  objective's per-term means; let the weighting turn them into gradients.

  With `axis_name` (pmap), the batch is one device's share: counts,
  gradients and metrics are summed over the axis, which makes the update
  equal to the one `jit` computes on the whole batch. Dropout and
  augmentation keys are then folded with the device index, so their draws
  differ from jit's.
  """
  names = objective.term_names(tasks)
  if weighting is None:
    weighting = weighting_lib.make("fixed", None, names,
                                   weights={t.name: t.weight for t in tasks})

  def train_step(state: TrainState, batch, rng: jax.Array):
    rng = jax.random.fold_in(rng, state.step)
    if axis_name is not None:
      rng = jax.random.fold_in(rng, lax.axis_index(axis_name))
    aug_rng, drop_rng, weight_rng = jax.random.split(rng, 3)
    inputs = batch["inputs"]
    if augment is not None:
      inputs = augment(inputs, aug_rng)
    if teacher is not None:
      logits, features = teacher(state.extra["teachers"], inputs)
      batch = dict(batch, teacher=logits, teacher_features=features)
    ctx = Context(state.step, num_steps)

    def loss_fn(params):
      out = net.apply({"params": params}, inputs, train=True,
                      rngs={"dropout": drop_rng})
      terms, metrics = objective(out, batch, tasks, ctx)
      return term_means(terms, names, axis_name), metrics

    loss, grads, metrics, wstate, wmetrics = weighting(
        loss_fn, state.params, state.extra.get("weighting", {}), state.step,
        weight_rng, axis_name)
    if axis_name is not None:
      metrics = lax.psum(metrics, axis_name)
    state, step_metrics = _apply(tx, state, loss, grads, wstate)
    return state, dict(metrics, **wmetrics, **step_metrics)

  return train_step


@functools.lru_cache(maxsize=32)  # One compiled predict per model, not per call.
def make_predict(model: nn.Module, layers: tuple[str, ...] = ()) -> Callable:
  """jitted `(params, inputs) -> {name: outputs}` of a `MultiHead`: task
  logits, plus `feat_<layer>` (flattened) for each of `layers`. Layouts
  follow the arguments."""
  def predict(params, inputs):
    if not layers:
      return model.apply({"params": params}, inputs, train=False)
    logits, blocks = model.apply({"params": params}, inputs, train=False,
                                 with_features=True)
    return dict(logits, **{f"feat_{k}": flatten(blocks[k]) for k in layers})
  return jax.jit(predict)


def metric_means(sums: Mapping[str, tuple]) -> dict[str, float]:
  """`(sum, count)` pairs -> means (NaN where count is 0)."""
  out = {}
  for k, (s, c) in sums.items():
    s, c = float(s), float(c)
    out[k] = s / c if c else float("nan")
  return out

"""Train state, optimizer, and the pure train step.

`train_step(state, batch, rng) -> (state, metrics)` has no side effects; its
randomness is `fold_in(rng, state.step)`, so a step is a function of its
inputs alone and resuming at step s replays the same randomness.
`mtkd.parallel` is the one place where jit/pmap, shardings and buffer
donation are declared.
"""

from collections.abc import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax import lax

from mtkd.objectives import Objective, TaskSpec, combine
from mtkd.registry import Registry

OPTIMIZERS: Registry = Registry("optimizer")
OPTIMIZERS.register("adam")(optax.adam)
OPTIMIZERS.register("adamw")(optax.adamw)
OPTIMIZERS.register("sgd")(optax.sgd)


class TrainState(struct.PyTreeNode):
  step: jax.Array
  params: dict
  opt_state: optax.OptState


def make_optimizer(cfg) -> optax.GradientTransformation:
  """`{name, learning_rate, **kwargs}` -> optax transform."""
  kwargs = {k: v for k, v in cfg.items() if k != "name"}
  return OPTIMIZERS.get(cfg.name)(**kwargs)


def make_init(model: nn.Module, tx: optax.GradientTransformation,
              input_shape: tuple[int, ...]) -> Callable:
  """`rng -> TrainState` at step 0 (jitted by the parallel strategy)."""
  def init(rng: jax.Array) -> TrainState:
    params = model.init(rng, jnp.zeros((1, *input_shape)), train=False)
    return TrainState(jnp.zeros((), jnp.int32), params["params"],
                      tx.init(params["params"]))
  return init


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    objective: Objective, tasks: tuple[TaskSpec, ...],
                    axis_name: str | None = None) -> Callable:
  """Builds the pure step for `objective` over `tasks`.

  With `axis_name` (pmap), the batch is one device's share: counts,
  gradients and metrics are summed over the axis, which makes the update
  equal to the one `jit` computes on the whole batch. Dropout keys are then
  folded with the device index, so dropout masks differ from jit's.
  """

  def train_step(state: TrainState, batch, rng: jax.Array):
    rng = jax.random.fold_in(rng, state.step)
    if axis_name is not None:
      rng = jax.random.fold_in(rng, lax.axis_index(axis_name))

    def loss_fn(params):
      logits = model.apply({"params": params}, batch["inputs"], train=True,
                           rngs={"dropout": rng})
      terms, metrics = objective(logits, batch, tasks)
      return combine(terms, tasks, axis_name), metrics

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    if axis_name is not None:
      grads, loss, metrics = lax.psum((grads, loss, metrics), axis_name)
    grad_norm = optax.tree.norm(grads)
    # A non-finite loss or gradient leaves params and optimizer state as they
    # were; the loop stops or goes on by config.nonfinite.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    params, opt_state = jax.tree.map(
        lambda new, old: jnp.where(finite, new, old), (params, opt_state),
        (state.params, state.opt_state))
    one = jnp.ones((), jnp.float32)
    metrics = dict(metrics, loss=(loss, one), grad_norm=(grad_norm, one),
                   nonfinite=(1.0 - finite.astype(jnp.float32), one))
    return TrainState(state.step + 1, params, opt_state), metrics

  return train_step


def make_predict(model: nn.Module) -> Callable:
  """jitted `(params, inputs) -> {task: logits}`; layouts follow the args."""
  def predict(params, inputs):
    return model.apply({"params": params}, inputs, train=False)
  return jax.jit(predict)


def metric_means(sums: Mapping[str, tuple]) -> dict[str, float]:
  """`(sum, count)` pairs -> means (NaN where count is 0)."""
  out = {}
  for k, (s, c) in sums.items():
    s, c = float(s), float(c)
    out[k] = s / c if c else float("nan")
  return out

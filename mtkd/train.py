"""Train state, optimizer, and the pure train step.

`train_step(state, batch, rng) -> (state, metrics)` has no side effects; its
randomness is `fold_in(rng, state.step)`, so a step is a function of its
inputs alone and resuming at step s replays the same randomness. `compile`
is the one place where jit, shardings and buffer donation are declared.
"""

from collections.abc import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh

from mtkd import sharding
from mtkd.objectives import Objective, TaskSpec
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


def init_state(model: nn.Module, tx: optax.GradientTransformation,
               input_shape: tuple[int, ...], rng: jax.Array,
               mesh: Mesh) -> TrainState:
  """Initialises parameters directly replicated on the mesh."""
  def init(rng):
    params = model.init(rng, jnp.zeros((1, *input_shape)), train=False)
    return TrainState(jnp.zeros((), jnp.int32), params["params"],
                      tx.init(params["params"]))
  return jax.jit(init, out_shardings=sharding.replicated(mesh))(rng)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    objective: Objective, tasks: tuple[TaskSpec, ...]
                    ) -> Callable:
  """Builds the pure step for `objective` over `tasks`."""

  def train_step(state: TrainState, batch, rng: jax.Array):
    rng = jax.random.fold_in(rng, state.step)

    def loss_fn(params):
      logits = model.apply({"params": params}, batch["inputs"], train=True,
                           rngs={"dropout": rng})
      return objective(logits, batch, tasks)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    one = jnp.ones((), jnp.float32)
    metrics = dict(metrics, loss=(loss, one),
                   grad_norm=(optax.tree.norm(grads), one))
    return TrainState(state.step + 1, params, opt_state), metrics

  return train_step


def compile_train_step(train_step: Callable, mesh: Mesh) -> Callable:
  """jit with replicated state, batch sharded over `data`, state donated."""
  rep = sharding.replicated(mesh)
  return jax.jit(train_step,
                 in_shardings=(rep, sharding.batch_sharding(mesh), rep),
                 out_shardings=(rep, rep), donate_argnums=(0,))


def make_predict(model: nn.Module, mesh: Mesh) -> Callable:
  """jitted `(params, inputs) -> {task: logits}` with the batch sharded."""
  def predict(params, inputs):
    return model.apply({"params": params}, inputs, train=False)
  return jax.jit(predict, in_shardings=(sharding.replicated(mesh),
                                        sharding.batch_sharding(mesh)))


def metric_means(sums: Mapping[str, tuple]) -> dict[str, float]:
  """`(sum, count)` pairs -> means (NaN where count is 0)."""
  out = {}
  for k, (s, c) in sums.items():
    s, c = float(s), float(c)
    out[k] = s / c if c else float("nan")
  return out

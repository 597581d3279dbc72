"""Train state and the pure train step (optimizers: `mtkd.train.optim`).

`train_step(state, batch, rng) -> (state, metrics)` has no side effects; its
randomness is `fold_in(rng, state.step)`, so a step is a function of its
inputs alone and resuming at step s replays the same randomness. Split
(`SplitStep`, config.split_step), it is two pure functions that the
placement chains: forward, then backward + update; the same update.
`mtkd.train.placement` is the one place where jit/pmap, shardings and
buffer donation are declared.
"""

import functools
from collections.abc import Callable, Mapping
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax import lax

from mtkd.data import views
from mtkd.methods import weighting as weighting_lib
from mtkd.methods.objectives import Context, Objective, TaskSpec, term_means
from mtkd.methods.weighting import Weighting
from mtkd.models import flatten, with_axis_name
from mtkd.train import teacher_targets


class TrainState(struct.PyTreeNode):
  step: jax.Array
  params: dict
  opt_state: optax.OptState
  # Non-gradient state the step reads and writes: the task weighting's
  # state; in online-teacher mode, the (frozen) teachers' variables; and,
  # for models with other Flax collections (BatchNorm's `batch_stats`),
  # `model_state`: `{collection: tree shaped like params}`. Kept in `extra`
  # (and absent without such collections) so checkpoints of models without
  # them keep the structure they always had.
  extra: dict = struct.field(default_factory=dict)

  @property
  def model_state(self) -> dict:
    return self.extra.get("model_state", {})

  @property
  def variables(self) -> dict:
    """`{"params": ..., **model_state}`: what `net.apply` takes."""
    return {"params": self.params, **self.model_state}

  def with_variables(self, variables: dict) -> "TrainState":
    """This state with new params and model state."""
    variables = dict(variables)
    params = variables.pop("params")
    extra = dict(self.extra, model_state=variables) if variables else (
        self.extra)
    return self.replace(params=params, extra=extra)


def make_init(net: nn.Module, tx: optax.GradientTransformation,
              input_shape: tuple[int, ...],
              extra: Callable[[dict], dict] | None = None,
              ema: bool = False) -> Callable:
  """`rng -> TrainState` at step 0 (jitted by the placement).

  `extra(params) -> dict` builds the state's non-gradient part; `ema` adds
  the parameters' EMA, starting at the initial parameters."""
  def init(rng: jax.Array) -> TrainState:
    variables = dict(net.init(rng, jnp.zeros((1, *input_shape)), train=False))
    params = variables.pop("params")
    state = dict(extra(params) if extra else {})
    if variables:
      state["model_state"] = variables
    if ema:  # A copy: an output aliasing `params` could not be donated.
      state["ema"] = jax.tree.map(lambda p: p * 1.0, params)
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params),
                      state)
  return init


def _apply(tx: optax.GradientTransformation, state: TrainState,
           loss: jax.Array, grads, wstate, model_state, ema: float = 0.0
           ) -> tuple[TrainState, dict]:
  """The optimizer update, or no update at all when the loss or gradients
  are not finite (the loop then stops or goes on by config.nonfinite), so
  checkpoints never hold NaNs. With `ema`, `extra["ema"]` follows the
  parameters: ema <- ema * e + params * (1 - e). Returns the new state and
  step metrics."""
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  params, opt_state, wstate, model_state = jax.tree.map(
      lambda new, old: jnp.where(finite, new, old),
      (params, opt_state, wstate, model_state),
      (state.params, state.opt_state, state.extra.get("weighting", {}),
       state.model_state))
  extra = dict(state.extra)
  if "weighting" in extra:
    extra["weighting"] = wstate
  if model_state:
    extra["model_state"] = model_state
  if ema:
    extra["ema"] = jax.tree.map(
        lambda e, p: jnp.where(finite, ema * e + (1.0 - ema) * p, e),
        state.extra["ema"], params)
  one = jnp.ones((), jnp.float32)
  return TrainState(state.step + 1, params, opt_state, extra), {
      "loss": (loss, one), "grad_norm": (grad_norm, one),
      "nonfinite": (1.0 - finite.astype(jnp.float32), one)}


def _forward(net: nn.Module, params, model_state: dict, inputs, rng):
  """`net` in training mode: (outputs, updated model state)."""
  if not model_state:
    return net.apply({"params": params}, inputs, train=True,
                     rngs={"dropout": rng}), {}
  out, updated = net.apply({"params": params, **model_state}, inputs,
                           train=True, rngs={"dropout": rng},
                           mutable=list(model_state))
  return out, dict(updated)


def _objective_terms(net: nn.Module, objective: Objective,
                     tasks: tuple[TaskSpec, ...], accumulate: int) -> Callable:
  """`(params, model_state, inputs, batch, rng, ctx) -> (terms, metrics,
  model_state)` on a batch.

  With `accumulate` k > 1 the batch runs as k micro-batches (row i*k + m in
  micro-batch m, so each device's rows spread evenly), each rematerialised
  (`jax.checkpoint`): only one micro-batch's activations are alive at a
  time. Terms and metrics are (sum, count) pairs summed over them, so the
  gradient is the whole batch's (exact for models without BatchNorm, which
  sees micro-batch statistics, as in PyTorch's gradient accumulation). The
  micro-batches are unrolled, not a `lax.scan`: XLA:CPU runs convolutions
  inside loops ~30x slower (jax issue 12868).

  A sparse cache's teacher rows (`values`, `indices`, `tail`) become dense
  target logits here, after the forward pass, because the bucket and
  sampled tails depend on the student's own probabilities
  (`teacher_targets`); every objective then sees dense teacher logits."""
  temperatures = {t.name: t.temperature for t in tasks}

  def one(params, model_state, inputs, batch, rng, ctx):
    out, model_state = _forward(net, params, model_state, inputs, rng)
    if any(map(teacher_targets.is_sparse, batch.get("teacher", {}).values())):
      batch = dict(batch, teacher=teacher_targets.densify(
          out["logits"], batch["teacher"], temperatures))
    terms, metrics = objective(out, batch, tasks, ctx)
    return terms, metrics, model_state

  if accumulate == 1:
    return one

  def split(x):
    return x.reshape(x.shape[0] // accumulate, accumulate,
                     *x.shape[1:]).swapaxes(0, 1)

  def accumulated(params, model_state, inputs, batch, rng, ctx):
    rest = {k: v for k, v in batch.items() if k != "inputs"}
    micro = jax.tree.map(split, (inputs, rest))
    step = jax.checkpoint(lambda p, s, x, b, key: one(p, s, x, b, key, ctx))
    sums = None
    for m, key in enumerate(jax.random.split(rng, accumulate)):
      x, b = jax.tree.map(lambda a, m=m: a[m], micro)
      terms, metrics, model_state = step(params, model_state, x, b, key)
      sums = (terms, metrics) if sums is None else jax.tree.map(
          jnp.add, sums, (terms, metrics))
    return (*sums, model_state)

  return accumulated


def step_inputs(batch, augment: Callable | None, key: jax.Array
                ) -> jax.Array:
  """The inputs the step trains on. With `view_seed` in the batch (a view
  cache, `mtkd.data.views`) each example is re-rendered from its own key,
  as the caching stage rendered it, bit for bit and whatever the batch or
  device layout; with `aug_seed` (the training streams' per-example
  (seed, id, epoch) seeds) likewise; otherwise (a batch from elsewhere)
  `augment(inputs, key)` with the step's key."""
  inputs = batch["inputs"]
  if "view_seed" in batch:  # Mixup views mix here even without `augment`.
    return views.render(augment, inputs, batch["view_seed"],
                        batch.get("mix_inputs"), batch.get("mix_weight"))
  if augment is None:
    return inputs
  if "aug_seed" in batch:
    return views.augment_views(augment, inputs, batch["aug_seed"])
  return augment(inputs, key)


class SplitStep(NamedTuple):
  """A train step as two programs (`make_train_step(split=True)`).

  `forward(state, batch, rng) -> carry` runs the model and the objective
  and returns `jax.vjp`'s closure in `carry`, so its residuals (the saved
  activations) become real buffers between the programs; `backward(state,
  carry) -> (state, metrics)` pulls the gradients through that closure and
  applies the update. `backward(state, forward(state, batch, rng))` is the
  one-program step's update (up to float rounding). The placement compiles
  each half; only `backward` may donate the state."""
  forward: Callable
  backward: Callable


def _replay(values, aux, vjp_fn) -> Callable:
  """A `loss_fn` for the weighting in the backward program: it returns the
  forward program's `(values, aux)` and differentiates through its
  recorded closure `vjp_fn`, so every weighting runs unchanged (vmapped
  VJPs included) without running the forward again. Valid only at the
  parameters the forward ran at: the backward's `state.params`."""
  @jax.custom_vjp
  def loss_fn(params):
    del params
    return values, aux

  def fwd(params):
    del params
    return (values, aux), None

  def bwd(_, cotangents):
    return vjp_fn(cotangents[0])  # aux is not differentiated (has_aux).

  loss_fn.defvjp(fwd, bwd)
  return loss_fn


def make_train_step(net: nn.Module, tx: optax.GradientTransformation,
                    objective: Objective, tasks: tuple[TaskSpec, ...],
                    weighting: Weighting | None = None, num_steps: int = 1,
                    augment: Callable | None = None,
                    teacher: Callable | None = None,
                    axis_name: str | None = None, accumulate: int = 1,
                    ema: float = 0.0, split: bool = False
                    ) -> Callable | SplitStep:
  """Builds the pure step `(state, batch, rng) -> (state, metrics)`.

  Order inside a step: fold the step (and device) into the key; augment
  the inputs (`step_inputs`: per-example seeds); in online-teacher mode run
  the frozen teachers on those same inputs (`teacher(state.extra["teachers"], inputs)
  -> (logits, features)`), so teacher and student see one view; compute the
  objective's per-term means; let the weighting turn them into gradients.

  With `axis_name` (pmap), the batch is one device's share: counts,
  gradients and metrics are summed over the axis, which makes the update
  equal to the one `jit` computes on the whole batch; dropout keys are
  folded with the device index, augmentation is per example (`aug_seed`,
  `view_seed`). `accumulate`: see `_objective_terms`; `ema`: `_apply`.

  `split` returns the step as a `SplitStep` (config.split_step): XLA:CPU
  recomputes BatchNorm/ReLU chains inside a one-program CNN step's weight
  gradients, which saved activations avoid (bench_cnn_vs_torch.py); with
  `accumulate` > 1 the backward re-runs the micro-batches (no gain)."""
  names = objective.term_names(tasks)
  terms_fn = _objective_terms(with_axis_name(net, axis_name), objective,
                              tasks, accumulate)
  if weighting is None:
    weighting = weighting_lib.make("fixed", None, names,
                                   weights={t.name: t.weight for t in tasks})

  def losses(state: TrainState, batch, rng: jax.Array
             ) -> tuple[Callable, jax.Array]:
    """(`params -> (term means, (metrics, model state))` on this step's
    batch, the weighting's key)."""
    rng = jax.random.fold_in(rng, state.step)
    if axis_name is not None:
      rng = jax.random.fold_in(rng, lax.axis_index(axis_name))
    aug_rng, drop_rng, weight_rng = jax.random.split(rng, 3)
    inputs = step_inputs(batch, augment, aug_rng)
    if teacher is not None:
      logits, features = teacher(state.extra["teachers"], inputs)
      batch = dict(batch, teacher=logits, teacher_features=features)
    ctx = Context(state.step, num_steps)

    def loss_fn(params):
      terms, metrics, model_state = terms_fn(params, state.model_state,
                                             inputs, batch, drop_rng, ctx)
      return term_means(terms, names, axis_name), (metrics, model_state)

    return loss_fn, weight_rng

  update = _updater(tx, weighting, axis_name, ema)

  def train_step(state: TrainState, batch, rng: jax.Array):
    return update(state, *losses(state, batch, rng))

  return _split(losses, update) if split else train_step


def _updater(tx: optax.GradientTransformation, weighting: Weighting,
             axis_name: str | None, ema: float) -> Callable:
  """`(state, loss_fn, weight_rng) -> (state, metrics)`: the weighting's
  gradients of `loss_fn`, then the optimizer update."""
  def update(state: TrainState, loss_fn: Callable, weight_rng: jax.Array
             ) -> tuple[TrainState, dict]:
    loss, grads, (metrics, model_state), wstate, wmetrics = weighting(
        loss_fn, state.params, state.extra.get("weighting", {}), state.step,
        weight_rng, axis_name)
    if axis_name is not None:
      metrics = lax.psum(metrics, axis_name)
      # Identical already when normalising with cross-device statistics;
      # the mean keeps every replica's copy equal whatever the module does.
      model_state = lax.pmean(model_state, axis_name)
    state, step_metrics = _apply(tx, state, loss, grads, wstate, model_state,
                                 ema)
    return state, dict(metrics, **wmetrics, **step_metrics)
  return update


def _split(losses: Callable, update: Callable) -> SplitStep:
  """The step as forward (`jax.vjp` of the loss, closure kept) and backward
  (`update` through that closure)."""
  def forward(state: TrainState, batch, rng: jax.Array):
    loss_fn, weight_rng = losses(state, batch, rng)
    values, vjp_fn, aux = jax.vjp(loss_fn, state.params, has_aux=True)
    return values, aux, vjp_fn, weight_rng

  def backward(state: TrainState, carry):
    values, aux, vjp_fn, weight_rng = carry
    return update(state, _replay(values, aux, vjp_fn), weight_rng)

  return SplitStep(forward, backward)


@functools.lru_cache(maxsize=32)  # One compiled predict per model, not per call.
def make_predict(model: nn.Module, layers: tuple[str, ...] = ()) -> Callable:
  """jitted `(variables, inputs) -> {name: outputs}` of a `MultiHead` in
  inference mode (running statistics): task logits, plus `feat_<layer>`
  (flattened) for each of `layers`. Layouts follow the arguments."""
  def predict(variables, inputs):
    if not layers:
      return model.apply(variables, inputs, train=False)
    logits, blocks = model.apply(variables, inputs, train=False,
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

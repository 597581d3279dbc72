"""Multi-task loss weighting: how K task losses become one gradient.

A `Weighting` is called inside the (jit- or pmap-compiled) train step:
`(loss_fn, params, state, step, rng, axis_name) -> (loss, grads, aux,
new_state, metrics)`. `loss_fn(params) -> (losses [K], aux)`; under pmap,
`losses` is each device's share of the global-batch mean, so global losses,
gradients (and per-task gradients) are psums. Every nonlinear step (weights,
projections, norms, state updates) runs on psummed quantities, so the result
equals the single-device computation on the whole batch, and `new_state` is
identical on every device. Each method documents its exact variant.

Like objectives, a weighting is built from its own settings block only
(`config.weighting.<name>`, validated in the constructor) plus the fixed
per-term weights (`config.tasks` and the objective's extra terms); that
block is what counts toward a stage's resume fingerprint.
"""

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.flatten_util import ravel_pytree

from mtkd.errors import UserError
from mtkd.methods.settings import check, settings_namespace
from mtkd.registry import Registry

Pytree = Any
LossFn = Callable[[Pytree], tuple[jax.Array, Any]]
Mask = Callable[[Pytree], Pytree]
Result = tuple[jax.Array, Pytree, Any, Pytree, dict]

WEIGHTINGS: Registry = Registry("task weighting")


class WeightingConfigError(UserError, ValueError):
  """A bad weighting config (a `UserError`, so `main` prints it plainly)."""


def _psum(x: Pytree, axis_name: str | None) -> Pytree:
  return x if axis_name is None else lax.psum(x, axis_name)


def _replicated_rng(rng: jax.Array, axis_name: str | None) -> jax.Array:
  """Device 0's key on every device: projections must agree across devices
  even if the caller folded the device index into `rng`."""
  if axis_name is None:
    return rng
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    data = lax.all_gather(jax.random.key_data(rng), axis_name)[0]
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(rng))
  return lax.all_gather(rng, axis_name)[0]


def _task_grads(loss_fn: LossFn, params: Pytree):
  """One forward pass; per-task gradients (leading axis K) by vmapped VJPs.

  Returns (local losses [K], vjp_fn, per-task grads, aux)."""
  losses, vjp_fn, aux = jax.vjp(loss_fn, params, has_aux=True)
  eye = jnp.eye(losses.shape[0], dtype=losses.dtype)
  (per_task,) = jax.vmap(vjp_fn)(eye)
  return losses, vjp_fn, per_task, aux


def _mask_leaves(mask_fn: Mask, params: Pytree) -> list[bool]:
  mask = jax.tree.leaves(mask_fn(params))
  if len(mask) != len(jax.tree.leaves(params)):
    raise ValueError("A parameter mask must have one bool per parameter leaf; "
                     f"got {len(mask)} for {len(jax.tree.leaves(params))}.")
  return [bool(m) for m in mask]


def _rows(leaves: list[jax.Array]) -> tuple[jax.Array, Callable]:
  """Per-task leaves [K, ...] -> matrix [K, P] and its row -> leaves map."""
  _, unravel = ravel_pytree([x[0] for x in leaves])
  return jax.vmap(lambda t: ravel_pytree(t)[0])(leaves), unravel


class Weighting:
  """Base: the network gets grads of sum_i w_i L_i with w from the state.

  Subclasses with state-free weights override `weights`; stateful ones also
  override `init` and `update` (which sees the global losses only).
  Settings: `default_settings` overridden by the block given, checked by
  `validate`, read as `self.settings.<key>`.
  """
  settings_key: ClassVar[str] = ""  # Its block: config.weighting.<key>.
  default_settings: ClassVar[Mapping[str, Any]] = {}

  def __init__(self, settings: Mapping | None, task_names: Sequence[str],
               shared_mask: Mask | None = None,
               last_shared_mask: Mask | None = None,
               weights: Mapping | Sequence | None = None):
    self.owner = f"config.weighting.{self.settings_key}"
    self.settings = settings_namespace(self.owner, self.default_settings,
                                       settings)
    self.task_names = tuple(task_names)
    self.num_tasks = len(self.task_names)
    self.shared_mask = shared_mask
    self.last_shared_mask = last_shared_mask
    self.validate(self.settings, weights)

  def validate(self, s, weights) -> None:
    """Raises a UserError for a bad setting; `weights` are the fixed term
    weights (used by 'fixed')."""
    del s, weights

  def positive(self, key: str) -> None:
    value = getattr(self.settings, key)
    check(isinstance(value, int | float) and value > 0, self.owner, key,
          value, "it must be > 0")

  def init(self, params: Pytree) -> Pytree:
    del params
    return {}

  def weights(self, state: Pytree, step: jax.Array) -> jax.Array:
    del state, step
    return jnp.ones((self.num_tasks,), jnp.float32)

  def regulariser(self, state: Pytree) -> jax.Array:
    """A param-independent term of the total (e.g. UW's 0.5 * sum s)."""
    del state
    return jnp.zeros((), jnp.float32)

  def update(self, state: Pytree, losses: jax.Array,
             step: jax.Array) -> tuple[Pytree, dict]:
    del losses, step
    return state, {}

  def metrics(self, w: jax.Array) -> dict:
    one = jnp.ones((), jnp.float32)
    return {f"weight/{name}": (w[i].astype(jnp.float32), one)
            for i, name in enumerate(self.task_names)}

  def __call__(self, loss_fn: LossFn, params: Pytree, state: Pytree,
               step: jax.Array, rng: jax.Array,
               axis_name: str | None = None) -> Result:
    del rng
    w = self.weights(state, step)

    def total(p):
      losses, aux = loss_fn(p)
      return jnp.dot(w, losses), (losses, aux)

    (loss, (losses, aux)), grads = jax.value_and_grad(total, has_aux=True)(
        params)
    loss, losses, grads = _psum((loss, losses, grads), axis_name)
    loss = loss + self.regulariser(state)
    new_state, metrics = self.update(state, losses, step)
    return loss, grads, aux, new_state, {**self.metrics(w), **metrics}


@WEIGHTINGS.register("equal")
class Equal(Weighting):
  """w_i = 1: the plain sum of task losses."""


@WEIGHTINGS.register("fixed")
class Fixed(Weighting):
  """Constant w from the term weights (`config.tasks` weights, and the
  objective's for its extra terms): {term: w} or a list aligned with the
  terms; terms left out get 1. Negative or unknown entries are errors."""

  def validate(self, s, weights):
    given = weights or {}
    if hasattr(given, "items"):
      given = dict(given.items())
      unknown = sorted(set(given) - set(self.task_names))
      if unknown:
        raise WeightingConfigError(
            f"The task weights (config.tasks) name unknown tasks {unknown}; "
            f"the terms are {list(self.task_names)}. Fix the names in the "
            "config.")
    elif isinstance(given, Sequence) and not isinstance(given, str):
      if len(given) != self.num_tasks:
        raise WeightingConfigError(
            f"The task weights have {len(given)} entries for "
            f"{self.num_tasks} tasks {list(self.task_names)}; give one per "
            "task or a {task: weight} dict.")
      given = dict(zip(self.task_names, given, strict=True))
    else:
      raise WeightingConfigError(
          f"Task weights must be a dict or a list, not {given!r}.")
    values = [float(given.get(n, 1.0)) for n in self.task_names]
    bad = {n: v for n, v in zip(self.task_names, values, strict=True)
           if not v >= 0}
    if bad:
      raise WeightingConfigError(
          f"Task weights must be >= 0; got {bad}. Fix them in the "
          "config.")
    self._w = tuple(values)

  def weights(self, state, step):
    del state, step
    return jnp.asarray(self._w, jnp.float32)


@WEIGHTINGS.register("uncertainty")
class Uncertainty(Weighting):
  """Kendall et al. 2018, the stable regression form for every task (as
  LibMTL): total = sum_i 0.5 exp(-s_i) L_i + 0.5 s_i, s_i = log sigma_i^2.

  L_i is the whole per-task loss (CE + KD sum), not each term. s lives in
  the state with its own Adam (`learning_rate`, default 1e-3), stepped
  with d total / d s at the global losses; its optimum is s_i = log L_i.
  Init `init_log_var` (default -0.5, LibMTL's).
  """
  settings_key = "uncertainty"
  default_settings = dict(learning_rate=1e-3, init_log_var=-0.5)

  def validate(self, s, weights):
    self.positive("learning_rate")
    check(isinstance(s.init_log_var, int | float)
          and math.isfinite(s.init_log_var), self.owner, "init_log_var",
          s.init_log_var, "use a finite number")
    self._tx = optax.adam(s.learning_rate)

  def init(self, params):
    del params
    s = jnp.full((self.num_tasks,), self.settings.init_log_var, jnp.float32)
    return {"log_var": s, "opt": self._tx.init(s)}

  def weights(self, state, step):
    del step
    return 0.5 * jnp.exp(-state["log_var"])

  def regulariser(self, state):
    return 0.5 * jnp.sum(state["log_var"])

  def update(self, state, losses, step):
    del step
    s = state["log_var"]
    g = jax.grad(lambda s: jnp.sum(0.5 * jnp.exp(-s) * losses + 0.5 * s))(s)
    updates, opt = self._tx.update(g, state["opt"], s)
    return {"log_var": optax.apply_updates(s, updates), "opt": opt}, {}


@WEIGHTINGS.register("dwa")
class DWA(Weighting):
  """Dynamic Weight Average, Liu et al. 2019: w = K softmax(r / T) with
  r_k = Lbar_k(t-1) / Lbar_k(t-2), Lbar the mean global loss over a period.

  A period is `period` steps (an epoch; default 100) and ends after
  steps with (step + 1) % period == 0, so periods follow the step counter
  across resumes. w = 1 until two periods are complete. T =
  `temperature` (default 2). State: the current period's loss sum and
  count, the last two period means ([0] newest) and completed periods.
  """
  settings_key = "dwa"
  default_settings = dict(temperature=2.0, period=100)

  def validate(self, s, weights):
    self.positive("temperature")
    check(isinstance(s.period, int) and s.period >= 1, self.owner, "period",
          s.period, "use a step count >= 1")

  def init(self, params):
    del params
    k = self.num_tasks
    return {"sum": jnp.zeros((k,), jnp.float32),
            "count": jnp.zeros((), jnp.int32),
            "means": jnp.ones((2, k), jnp.float32),
            "periods": jnp.zeros((), jnp.int32)}

  def weights(self, state, step):
    del step
    prev, prev2 = state["means"]
    ratio = prev / jnp.where(prev2 > 0, prev2, 1.0)
    temperature = self.settings.temperature
    w = self.num_tasks * jax.nn.softmax(ratio / temperature)
    return jnp.where(state["periods"] >= 2, w, jnp.ones_like(w))

  def update(self, state, losses, step):
    total, count = state["sum"] + losses, state["count"] + 1
    done = (step + 1) % self.settings.period == 0
    mean = total / count.astype(jnp.float32)
    means = jnp.where(done, jnp.stack([mean, state["means"][0]]),
                      state["means"])
    return {"sum": jnp.where(done, jnp.zeros_like(total), total),
            "count": jnp.where(done, 0, count),
            "means": means,
            "periods": state["periods"] + done.astype(jnp.int32)}, {}


@WEIGHTINGS.register("gradnorm")
class GradNorm(Weighting):
  """GradNorm, Chen et al. 2018, the paper variant (not LibMTL's).

  w is in the state (init 1); the network gets grads of sum_i w_i L_i.
  G_i = ||grad_W (w_i L_i)|| on the last shared layer W (last_shared_mask);
  r_i = Lt_i / mean(Lt) with Lt_i = L_i / L_i(0), L(0) the global losses
  at the first call; L_grad = sum_i |G_i - sg(mean(G) r_i^alpha)|. Then
  w <- max(w - lr dL_grad/dw, 0), rescaled to sum K. `alpha` (1.5),
  `learning_rate` (0.025; plain SGD on w, as the paper's separate
  optimizer is unspecified here). Per-task grads on W are psummed first.
  """
  settings_key = "gradnorm"
  default_settings = dict(learning_rate=0.025, alpha=1.5)

  def validate(self, s, weights):
    self.positive("learning_rate")
    check(isinstance(s.alpha, int | float) and s.alpha >= 0, self.owner,
          "alpha", s.alpha, "use >= 0")

  def init(self, params):
    del params
    k = self.num_tasks
    return {"weights": jnp.ones((k,), jnp.float32),
            "initial_losses": jnp.ones((k,), jnp.float32),
            "initialized": jnp.zeros((), jnp.int32)}

  def __call__(self, loss_fn, params, state, step, rng, axis_name=None):
    del rng
    k, w = self.num_tasks, state["weights"]
    mask = _mask_leaves(self.last_shared_mask, params)
    if not any(mask):
      raise WeightingConfigError(
          "GradNorm needs a last shared layer, but last_shared_mask selects "
          "no parameters.")
    losses, vjp_fn, per_task, aux = _task_grads(loss_fn, params)
    (grads,) = vjp_fn(w.astype(losses.dtype))
    g_w, _ = _rows([x for x, m in zip(jax.tree.leaves(per_task), mask,
                                      strict=True) if m])
    losses, grads, g_w = _psum((losses, grads, g_w), axis_name)
    norms = jnp.linalg.norm(g_w, axis=1)

    first = state["initialized"] == 0
    l0 = jnp.where(first, losses, state["initial_losses"])
    lt = jnp.where(l0 > 0, losses / jnp.where(l0 > 0, l0, 1.0), 1.0)
    r = lt / jnp.mean(lt)
    alpha = self.settings.alpha

    def grad_loss(w):
      g = w * norms
      target = lax.stop_gradient(jnp.mean(g) * r**alpha)
      return jnp.sum(jnp.abs(g - target))

    l_grad, dw = jax.value_and_grad(grad_loss)(w)
    new_w = jnp.maximum(w - self.settings.learning_rate * dw, 0.0)
    norm = jnp.sum(new_w)
    new_w = jnp.where(norm > 0, new_w * k / jnp.where(norm > 0, norm, 1.0),
                      jnp.ones_like(new_w))
    new_state = {"weights": new_w, "initial_losses": l0,
                 "initialized": jnp.ones((), jnp.int32)}
    one = jnp.ones((), jnp.float32)
    metrics = {**self.metrics(w), "gradnorm/loss": (l_grad, one)}
    return jnp.dot(w, losses), grads, aux, new_state, metrics


def pcgrad_project(g: jax.Array, rng: jax.Array) -> jax.Array:
  """PCGrad's projections of task gradients g [K, P] -> g' [K, P].

  Row i is projected off every ORIGINAL g_j (j != i, order from rng) it
  conflicts with, as the paper's loop: a later j sees the updated g_i'."""
  k = g.shape[0]

  def project(gi, i, key):
    def body(acc, j):
      gj = g[j]
      dot = jnp.dot(acc, gj)
      coef = jnp.where((j != i) & (dot < 0), dot / (jnp.dot(gj, gj) + 1e-8),
                       0.0)
      return acc - coef * gj, None
    return lax.scan(body, gi, jax.random.permutation(key, k))[0]

  return jax.vmap(project)(g, jnp.arange(k), jax.random.split(rng, k))


@WEIGHTINGS.register("pcgrad")
class PCGrad(Weighting):
  """PCGrad, Yu et al. 2020, on the shared params (shared_mask).

  For each task i, g_i' = g_i; for j != i in an order drawn from `rng`: if
  g_i'.g_j < 0, g_i' -= g_i'.g_j / (||g_j||^2 + 1e-8) g_j, with g_j the
  ORIGINAL gradient. Shared update = sum_i g_i'; other params get the plain
  sum of task grads. Per-task grads are psummed before projecting, and the
  order uses device 0's key, so all devices agree. The loss is sum_i L_i.
  """

  def __call__(self, loss_fn, params, state, step, rng, axis_name=None):
    del step
    k = self.num_tasks
    mask = _mask_leaves(self.shared_mask, params)
    losses, _, per_task, aux = _task_grads(loss_fn, params)
    leaves, treedef = jax.tree.flatten(per_task)
    shared = [x for x, m in zip(leaves, mask, strict=True) if m]
    heads = [jnp.sum(x, 0) for x, m in zip(leaves, mask, strict=True)
             if not m]
    g, unravel = _rows(shared)
    losses, g, heads = _psum((losses, g, heads), axis_name)
    projected = pcgrad_project(g, _replicated_rng(rng, axis_name))
    shared_it = iter(unravel(jnp.sum(projected, 0)))
    heads_it = iter(heads)
    grads = treedef.unflatten(
        [next(shared_it) if m else next(heads_it) for m in mask])
    dots = g @ g.T
    conflict = jnp.sum(jnp.triu(dots < 0, 1)) / max(k * (k - 1) // 2, 1)
    one = jnp.ones((), jnp.float32)
    metrics = {**self.metrics(jnp.ones((k,), jnp.float32)),
               "pcgrad/conflict": (conflict.astype(jnp.float32), one)}
    return jnp.sum(losses), grads, aux, state, metrics


def make(name: str, settings: Mapping | None, task_names: Sequence[str],
         shared_mask: Mask | None = None,
         last_shared_mask: Mask | None = None,
         weights: Mapping | Sequence | None = None) -> Weighting:
  """The weighting `name` from its own settings block and the fixed term
  weights (unknown names list the known ones)."""
  return WEIGHTINGS.get(name)(settings, task_names, shared_mask,
                              last_shared_mask, weights)


def build(config, task_names: Sequence[str], shared_mask: Mask | None = None,
          last_shared_mask: Mask | None = None,
          weights: Mapping | None = None) -> Weighting:
  """The weighting `config.weighting.name`, from its block only."""
  name = config.weighting.name
  cls = WEIGHTINGS.get(name)
  block = config.weighting.get(cls.settings_key) if cls.settings_key else None
  return make(name, block, task_names, shared_mask, last_shared_mask,
              weights)

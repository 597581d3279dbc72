"""Training objectives: per-term loss sums and counts, plus metrics.

An objective is built from the experiment config (`OBJECTIVES.get(name)(
config)`) and called as `objective(out, batch, tasks, ctx) -> (terms,
metrics)`. `out` is the `models.Net` output (`logits`, optionally `features`
and `peers`); `batch` carries `labels` (missing = -1 / NaN, see
`mtkd.tasks`), `mask` (0 for padding) and, for distillation, `teacher`
(`{task: [B, K, out]}`, K teachers) and `teacher_features`. `ctx` gives the
step and the stage length (for schedules).

`terms[name] = (sum of per-example losses, number of examples it covers)`,
one term per task plus the objective's `extra_terms`; metrics are
`(sum, count)` pairs too, so averages stay exact when summed over steps,
devices and hosts. `term_means` turns terms into per-term means over the
*global* batch (under `pmap` the counts are summed over devices first, so
each device holds its exact share); `mtkd.weighting` then weights them.
"""

import dataclasses
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
from jax import lax

from mtkd import losses
from mtkd.errors import UserError
from mtkd.models import flatten
from mtkd.registry import Registry
from mtkd.tasks import TaskSpec, kind

__all__ = ["OBJECTIVES", "TaskSpec", "Context", "term_means", "combine"]

Pairs = dict[str, tuple[jax.Array, jax.Array]]
OBJECTIVES: Registry = Registry("objective")


@dataclasses.dataclass(frozen=True)
class Context:
  step: jax.Array  # int32 scalar, the step being taken (0-based).
  num_steps: int

  @property
  def progress(self) -> jax.Array:
    """Fraction of the stage done, in [0, 1]."""
    return jnp.minimum(self.step.astype(jnp.float32) / max(self.num_steps, 1),
                       1.0)


def term_means(terms: Pairs, names: tuple[str, ...],
               axis_name: str | None = None) -> jax.Array:
  """`[len(names)]` of sum / global count (0 where nothing is counted)."""
  out = []
  for name in names:
    loss_sum, count = terms[name]
    if axis_name is not None:
      count = lax.psum(count, axis_name)
    out.append(loss_sum / jnp.maximum(count, 1.0))
  return jnp.stack(out)


def combine(terms: Pairs, tasks: tuple[TaskSpec, ...],
            axis_name: str | None = None) -> jax.Array:
  """Sum over tasks of weight * (loss sum / global count)."""
  means = term_means(terms, tuple(t.name for t in tasks), axis_name)
  return jnp.sum(jnp.asarray([t.weight for t in tasks]) * means)


def _pair(values: jax.Array, where: jax.Array) -> tuple[jax.Array, jax.Array]:
  where = where.astype(jnp.float32)
  return jnp.sum(values * where), jnp.sum(where)


class Objective:
  """Base: subclasses set `extra_terms` and implement `__call__`."""
  extra_terms: tuple[str, ...] = ()
  needs_teacher: bool = False

  def __init__(self, config, feature_targets: tuple[str, ...] = ()):
    self.config = config
    self.feature_targets = tuple(feature_targets)

  def term_names(self, tasks) -> tuple[str, ...]:
    return tuple(t.name for t in tasks) + self.extra_terms

  def supervised(self, logits, batch, task: TaskSpec, metrics: Pairs,
                 prefix: str = ""):
    """Per-example label loss and whether each row is labelled."""
    k = kind(task)
    labels = batch["labels"][task.name]
    labelled = batch["mask"] * k.labelled(labels)
    sup = k.loss(logits, labels)
    metrics[f"{prefix}{task.name}/{k.score_name}"] = _pair(
        k.score(logits, labels), labelled)
    metrics[f"{prefix}{task.name}/sup"] = _pair(sup, labelled)
    return sup, labelled


@OBJECTIVES.register("supervised")
class Supervised(Objective):
  """Per task: the label loss over labelled examples."""

  def __call__(self, out, batch, tasks, ctx):
    terms, metrics = {}, {}
    for task in tasks:
      sup, labelled = self.supervised(out["logits"][task.name], batch, task,
                                      metrics)
      terms[task.name] = _pair(sup, labelled)
      metrics[f"{task.name}/loss"] = terms[task.name]
    return terms, metrics


@OBJECTIVES.register("distill")
class Distill(Objective):
  """Per example: alpha*KD + (1-alpha)*label loss if labelled, else KD.

  KD is the kind's teacher loss (T^2-scaled softmax or sigmoid KL, or the
  squared error to the teachers' mean output); unlabelled rows (the
  transfer set) learn from the teachers alone. Each task's term covers all
  real (mask=1) examples.
  """
  needs_teacher = True

  def kd(self, logits, batch, task, labels, ctx):
    return kind(task).kd(logits, batch["teacher"][task.name],
                         task.temperature)

  def __call__(self, out, batch, tasks, ctx):
    terms, metrics = {}, {}
    mask = batch["mask"]
    for task in tasks:
      logits = out["logits"][task.name]
      sup, labelled = self.supervised(logits, batch, task, metrics)
      kd = self.kd(logits, batch, task, batch["labels"][task.name], ctx)
      alpha = jnp.where(labelled > 0, task.alpha, 1.0)
      per_example = alpha * kd + (1.0 - alpha) * sup
      terms[task.name] = _pair(per_example, mask)
      metrics[f"{task.name}/loss"] = terms[task.name]
      metrics[f"{task.name}/kd"] = _pair(kd, mask)
    return terms, metrics


@OBJECTIVES.register("dkd")
class DecoupledKD(Distill):
  """Distill with DKD (Zhao et al. 2022) as the KD loss of classification
  tasks: T^2 (a TCKD + b NCKD), ramped up linearly over `dkd.warmup_steps`
  (the paper warms up over 20 epochs). The target class of an unlabelled
  row is the teachers' argmax. Other task kinds keep their usual KD."""

  def kd(self, logits, batch, task, labels, ctx):
    if task.kind != "classification":
      return super().kd(logits, batch, task, labels, ctx)
    c = self.config.dkd
    teacher = batch["teacher"][task.name]
    target = jnp.where(labels >= 0, labels,
                       jnp.argmax(jnp.mean(jax.nn.softmax(teacher), 1), -1))
    ramp = jnp.minimum(ctx.step.astype(jnp.float32)
                       / max(c.warmup_steps, 1), 1.0)
    return ramp * losses.dkd(logits, teacher, target, task.temperature,
                             c.alpha, c.beta)


@OBJECTIVES.register("anneal")
class TeacherAnnealing(Objective):
  """BAM! (Clark et al. 2019): targets lam*label + (1-lam)*teacher at T=1.

  lam rises linearly from 0 to 1 over the stage (`anneal.schedule='linear'`)
  or stays at `anneal.fixed` ('fixed'; BAM's non-annealed mix uses 0.5).
  Unlabelled rows use the teacher alone. The loss is the cross-entropy to
  the mixed target (classification, multi-label) or the squared error to
  the mixed target (regression).
  """
  needs_teacher = True

  def lam(self, ctx) -> jax.Array:
    c = self.config.anneal
    if c.schedule == "linear":
      return ctx.progress
    if c.schedule == "fixed":
      return jnp.asarray(c.fixed, jnp.float32)
    raise UserError(f"anneal.schedule is {c.schedule!r}; use 'linear' or "
                    "'fixed'.")

  def __call__(self, out, batch, tasks, ctx):
    terms, metrics = {}, {}
    mask, lam = batch["mask"], self.lam(ctx)
    for task in tasks:
      logits = out["logits"][task.name]
      labels = batch["labels"][task.name]
      teacher = batch["teacher"][task.name]
      self.supervised(logits, batch, task, metrics)
      if task.kind == "classification":
        target = losses.annealed_targets(labels, teacher, lam)
        loss = losses.soft_cross_entropy(logits, target)
      elif task.kind == "multilabel":
        q_t = jnp.mean(jax.nn.sigmoid(teacher.astype(jnp.float32)), 1)
        has = jnp.all(labels >= 0, -1, keepdims=True)
        q = jnp.where(has, lam * labels + (1 - lam) * q_t, q_t)
        z = logits.astype(jnp.float32)
        loss = -jnp.sum(q * jax.nn.log_sigmoid(z)
                        + (1 - q) * jax.nn.log_sigmoid(-z), -1)
      else:
        target = losses.annealed_regression_targets(labels, teacher, lam)
        loss = losses.squared_error(logits, target)
      terms[task.name] = _pair(loss, mask)
      metrics[f"{task.name}/loss"] = terms[task.name]
    metrics["anneal/lambda"] = (lam, jnp.ones((), jnp.float32))
    return terms, metrics


def feature_loss(name: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
  return {"normalized_l2": losses.normalized_l2, "hint": losses.hint_l2}[name]


def _normalize(x: jax.Array) -> jax.Array:
  x = flatten(x.astype(jnp.float32))
  return x / jnp.sqrt(jnp.sum(x * x, -1, keepdims=True) + 1e-12)


def feature_targets(teacher_features: Mapping[str, jax.Array],
                    fusion: str) -> dict[str, jax.Array]:
  """`{teacher: [B, D_t]}` -> what the adaptors regress onto.

  'none': one target per teacher. 'concat': one fused target, the
  concatenation of each teacher's L2-normalised features (so no teacher
  dominates by scale), in sorted teacher order.
  """
  if fusion == "none":
    return {t: flatten(f) for t, f in teacher_features.items()}
  if fusion == "concat":
    return {"fused": jnp.concatenate(
        [_normalize(teacher_features[t]) for t in sorted(teacher_features)],
        -1)}
  raise UserError(f"feature.fusion is {fusion!r}; use 'none' or 'concat'.")


@OBJECTIVES.register("feature")
class FeatureKD(Distill):
  """Feature-level cross-task KD (Li & Bilen 2020 style) plus logit KD.

  The student's `feature.layer` activation passes through one learnable
  linear adaptor per target (per teacher, or one for the fused teachers)
  and is matched to the teacher's cached feature with `feature.loss`
  ('normalized_l2': squared distance of L2-normalised vectors; 'hint':
  FitNets' 0.5*||.||^2). Each target is an extra term `feature/<target>`
  weighted by `feature.weight`. With `feature.logits=False` the heads learn
  from labels only (no logit KD).
  """

  def __init__(self, config, feature_targets: tuple[str, ...] = ()):
    super().__init__(config, feature_targets)
    if not self.feature_targets:
      raise UserError(f"The {type(self).__name__} objective needs feature "
                      "targets (teachers whose features are cached).")
    self.extra_terms = tuple(f"feature/{t}" for t in self.feature_targets)

  def __call__(self, out, batch, tasks, ctx):
    c = self.config.feature
    if c.logits:
      terms, metrics = super().__call__(out, batch, tasks, ctx)
    else:
      terms, metrics = Supervised.__call__(self, out, batch, tasks, ctx)
    targets = feature_targets(batch["teacher_features"], c.fusion)
    loss_fn = feature_loss(c.loss)
    for t in self.feature_targets:
      loss = loss_fn(out["features"][t], targets[t])
      terms[f"feature/{t}"] = _pair(loss, batch["mask"])
      metrics[f"feature/{t}"] = terms[f"feature/{t}"]
    return terms, metrics


@OBJECTIVES.register("shared_rep")
class SharedRepresentationKD(FeatureKD):
  """Distils into the shared trunk only: one adaptor maps the student's
  representation to the teachers' fused representations; the heads learn
  from labels alone (no logit KD), so teacher knowledge reaches the tasks
  only through the shared trunk."""

  def __call__(self, out, batch, tasks, ctx):
    terms, metrics = Supervised.__call__(self, out, batch, tasks, ctx)
    targets = feature_targets(batch["teacher_features"], "concat")
    loss_fn = feature_loss(self.config.feature.loss)
    loss = loss_fn(out["features"]["fused"], targets["fused"])
    terms["feature/fused"] = _pair(loss, batch["mask"])
    metrics["feature/fused"] = terms["feature/fused"]
    return terms, metrics


@OBJECTIVES.register("mutual")
class MutualLearning(Objective):
  """Online distillation with no precomputed teacher: a main model and
  `mutual.peers` auxiliary peers trained together in one step.

  Model k's loss: label loss + kl_weight * mean over the other models l of
  T^2 KL(stop_grad(p_l) || p_k) (Zhang et al. 2018, at `temperature`);
  the auxiliary peers' losses are weighted by `aux_weight` (lambda):
  L = l(y, f_main) + lambda * l(y, f_aux). `kl_weight=0` is plain deep
  supervision of the peers (the auxiliary-model loss, no mutual KD).
  Unlabelled rows get only the KL terms. Classification tasks only.
  """

  def __call__(self, out, batch, tasks, ctx):
    c = self.config.mutual
    models = (out["logits"], *out["peers"])
    terms, metrics = {}, {}
    mask = batch["mask"]
    for task in tasks:
      if task.kind != "classification":
        raise UserError("The 'mutual' objective supports classification "
                        f"tasks only; task {task.name!r} is {task.kind}.")
      total = jnp.zeros_like(mask)
      for k, logits in enumerate(models):
        sup, labelled = self.supervised(logits[task.name], batch, task,
                                        metrics, prefix=f"m{k}/")
        others = [jax.lax.stop_gradient(m[task.name])
                  for j, m in enumerate(models) if j != k]
        kl = jnp.mean(jnp.stack([losses.softmax_kd(
            logits[task.name], o[:, None], c.temperature) for o in others]),
                      0)
        per = sup * labelled + c.kl_weight * kl
        total += (1.0 if k == 0 else c.aux_weight) * per
        metrics[f"m{k}/{task.name}/kl"] = _pair(kl, mask)
      terms[task.name] = _pair(total, mask)
      metrics[f"{task.name}/loss"] = terms[task.name]
    return terms, metrics

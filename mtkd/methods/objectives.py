"""Training objectives as plug-ins: per-term loss sums and counts, metrics.

An objective is a registered class. It is built from its own settings block
alone, `OBJECTIVES.get(name)(config[cls.settings_key])`, which it validates
in the constructor (so a bad value fails before any compute), and it
declares what it reads (`Needs`: teacher logits, a teacher feature layer
and the student layer its adaptors map from, peers) and which task kinds it
supports. The stages act on those declarations, and its settings block is
what counts toward a stage's resume fingerprint; no other module names an
objective. Adding one takes a per-example loss in `losses.py`, a class
here, a config file and tests.

Called as `objective(out, batch, tasks, ctx) -> (terms, metrics)`. `out`
is the `models.Net` output (`logits`, optionally `features` and `peers`);
`batch` carries `labels` (missing = -1 / NaN, see `mtkd.methods.tasks`;
objectives read each task through `task_rows`, so a sequence task's rows are
its tokens),
`mask` (0 for padding) and, for distillation, `teacher` (`{task: [B, K,
out]}`, K teachers) and `teacher_features`. `ctx` gives the step and the
stage length (for schedules).

`terms[name] = (sum of per-example losses, number of examples it covers)`,
one term per task plus the objective's extra terms; metrics are `(sum,
count)` pairs too, so averages stay exact when summed over steps, devices
and hosts. `term_means` turns terms into per-term means over the *global*
batch (under `pmap` the counts are summed over devices first, so each
device holds its exact share); `mtkd.methods.weighting` then weights them.
"""

import copy
import dataclasses
import math
from collections.abc import Callable, Mapping
from types import SimpleNamespace
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from jax import lax

from mtkd.errors import UserError
from mtkd.methods import losses
from mtkd.methods.settings import check, settings_namespace
from mtkd.methods.tasks import (
  KIND_NAMES,
  SOFTMAX_KINDS,
  TaskSpec,
  kind,
  token_view,
)
from mtkd.registry import Registry

__all__ = ["OBJECTIVES", "Needs", "Objective", "TaskSpec", "Context",
           "term_means", "combine"]

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


@dataclasses.dataclass(frozen=True)
class Needs:
  """What an objective reads besides the student's logits and the labels.

  teacher_logits: `batch["teacher"]`, `{task: [B, K, out]}`.
  teacher_layer: `batch["teacher_features"]`, `{group: [B, D]}`, taken at
    this teacher layer ('' = none); the student gets one linear adaptor per
    teacher group (one in all with `fuse_teachers`), reading `student_layer`.
  peers: extra copies of the student trained in the same step.
  regressor: the adaptors' form, `models.base.REGRESSORS`.
  """
  teacher_logits: bool = False
  teacher_layer: str = ""
  student_layer: str = ""
  fuse_teachers: bool = False
  peers: int = 0
  regressor: str = "linear"

  @property
  def teachers(self) -> bool:
    """Whether any teacher output is read."""
    return self.teacher_logits or bool(self.teacher_layer)


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


def task_rows(logits: jax.Array, batch: Mapping, task: TaskSpec
              ) -> tuple[jax.Array, Mapping]:
  """One task's logits and batch as its kind's rows: a sequence task's
  tokens (`tasks.token_view`, with the token mask as `mask`), any other
  task unchanged. Objectives loop over tasks through this, so they count
  and mask tokens as they do examples."""
  if not kind(task).per_token:
    return logits, batch
  teacher = batch.get("teacher", {}).get(task.name)
  logits, labels, mask, teacher = token_view(
      task, logits, batch["labels"][task.name], batch["mask"], teacher)
  rows = dict(batch, mask=mask, labels={task.name: labels})
  if teacher is not None:
    rows["teacher"] = {task.name: teacher}
  return logits, rows


def _pair(values: jax.Array, where: jax.Array) -> tuple[jax.Array, jax.Array]:
  where = where.astype(jnp.float32)
  return jnp.sum(values * where), jnp.sum(where)


class Objective:
  """Base: subclasses declare settings, needs and kinds, and implement
  `__call__`. `settings` is a namespace over `default_settings`."""
  settings_key: ClassVar[str] = ""  # Its config block ('' = none).
  default_settings: ClassVar[Mapping[str, Any]] = {}
  kinds: ClassVar[tuple[str, ...]] = KIND_NAMES

  def __init__(self, settings: Mapping | None = None):
    self.owner = f"config.{self.settings_key}"
    self.settings = settings_namespace(self.owner, self.default_settings,
                                       settings)
    self.feature_targets: tuple[str, ...] = ()
    self.validate(self.settings)

  def validate(self, s: SimpleNamespace) -> None:
    """Raises a UserError for a bad setting (before any compute)."""
    del s

  @property
  def needs(self) -> Needs:
    return Needs()

  def check_tasks(self, tasks: tuple[TaskSpec, ...], where: str) -> None:
    """Refuses task kinds this objective does not support."""
    bad = [f"{t.name!r} ({t.kind})" for t in tasks if t.kind not in self.kinds]
    if bad:
      raise UserError(
          f"{where}: objective {type(self).__name__} supports "
          f"{', '.join(self.kinds)} tasks only; {', '.join(bad)} is not. "
          "Fix: choose another objective or drop the task.")

  def with_feature_targets(self, targets: tuple[str, ...]) -> "Objective":
    """A copy that matches these feature targets (one per adaptor)."""
    out = copy.copy(self)
    out.feature_targets = tuple(targets)
    return out

  @property
  def extra_terms(self) -> tuple[str, ...]:
    return ()

  def term_names(self, tasks) -> tuple[str, ...]:
    return tuple(t.name for t in tasks) + self.extra_terms

  def term_weights(self) -> dict[str, float]:
    """Fixed weights of the extra terms (task terms use the task weights)."""
    return {}

  def supervised(self, logits, batch, task: TaskSpec, metrics: Pairs,
                 prefix: str = ""):
    """Per-example label loss and whether each row is labelled."""
    k = kind(task)
    labels = batch["labels"][task.name]
    labelled = batch["mask"] * k.labelled(labels)
    sup = k.loss(logits, labels, task.label_smoothing)
    if "label_lam" in batch:  # Mixup / cutmix: both labels, weighted.
      other = batch["mix_labels"][task.name]
      lam = batch["label_lam"].reshape(sup.shape)
      sup = lam * sup + (1 - lam) * k.loss(logits, other,
                                           task.label_smoothing)
      labelled = labelled * k.labelled(other)
    metrics[f"{prefix}{task.name}/{k.score_name}"] = _pair(
        k.score(logits, labels), labelled)
    metrics[f"{prefix}{task.name}/sup"] = _pair(sup, labelled)
    return sup, labelled

  def label_terms(self, out, batch, tasks) -> tuple[Pairs, Pairs]:
    """Per task: the label loss over labelled examples."""
    terms, metrics = {}, {}
    for task in tasks:
      logits, rows = task_rows(out["logits"][task.name], batch, task)
      sup, labelled = self.supervised(logits, rows, task, metrics)
      terms[task.name] = _pair(sup, labelled)
      metrics[f"{task.name}/loss"] = terms[task.name]
    return terms, metrics


@OBJECTIVES.register("supervised")
class Supervised(Objective):
  """Per task: the label loss over labelled examples."""

  def __call__(self, out, batch, tasks, ctx):
    return self.label_terms(out, batch, tasks)


@OBJECTIVES.register("distill")
class Distill(Objective):
  """Per example: alpha*KD + (1-alpha)*label loss if labelled, else KD.

  KD is the kind's teacher loss (T^2-scaled softmax or sigmoid KL, or the
  squared error to the teachers' mean output); unlabelled rows (the
  transfer set) learn from the teachers alone. Each task's term covers all
  real (mask=1) examples. T and alpha are per task (`TaskSpec`).
  """

  @property
  def needs(self) -> Needs:
    return Needs(teacher_logits=True)

  def kd(self, logits, batch, task, labels, ctx):
    return kind(task).kd(logits, batch["teacher"][task.name],
                         task.temperature)

  def __call__(self, out, batch, tasks, ctx):
    terms, metrics = {}, {}
    for task in tasks:
      logits, rows = task_rows(out["logits"][task.name], batch, task)
      mask = rows["mask"]
      sup, labelled = self.supervised(logits, rows, task, metrics)
      kd = self.kd(logits, rows, task, rows["labels"][task.name], ctx)
      alpha = jnp.where(labelled > 0, task.alpha, 1.0)
      per_example = alpha * kd + (1.0 - alpha) * sup
      terms[task.name] = _pair(per_example, mask)
      metrics[f"{task.name}/loss"] = terms[task.name]
      metrics[f"{task.name}/kd"] = _pair(kd, mask)
    return terms, metrics


def _nonnegative(x) -> bool:
  return isinstance(x, int | float) and math.isfinite(x) and x >= 0


@OBJECTIVES.register("dkd")
class DecoupledKD(Distill):
  """Distill with DKD (Zhao et al. 2022) as the KD loss of classification
  tasks: T^2 (alpha TCKD + beta NCKD), ramped up linearly over
  `warmup_steps` (the paper warms up over 20 epochs; 0 = no ramp). The
  target class of an unlabelled row is the argmax of the teachers' mean
  softmax at T = 1 (the argmax of a single teacher's logits, at any T).
  Other task kinds keep their usual KD."""
  settings_key = "dkd"
  default_settings = dict(alpha=1.0, beta=8.0, warmup_steps=0)

  def validate(self, s):
    check(_nonnegative(s.alpha), self.owner, "alpha", s.alpha, "use >= 0")
    check(_nonnegative(s.beta), self.owner, "beta", s.beta, "use >= 0")
    check(isinstance(s.warmup_steps, int) and s.warmup_steps >= 0,
          self.owner, "warmup_steps", s.warmup_steps,
          "use a step count >= 0 (0 = no warm-up)")

  def kd(self, logits, batch, task, labels, ctx):
    if task.kind != "classification":
      return super().kd(logits, batch, task, labels, ctx)
    s = self.settings
    teacher = batch["teacher"][task.name]
    target = jnp.where(labels >= 0, labels,
                       jnp.argmax(jnp.mean(jax.nn.softmax(teacher), 1), -1))
    loss = losses.dkd(logits, teacher, target, task.temperature, s.alpha,
                      s.beta)
    if not s.warmup_steps:
      return loss
    return jnp.minimum(ctx.step.astype(jnp.float32) / s.warmup_steps,
                       1.0) * loss


@OBJECTIVES.register("js")
class JensenShannonKD(Distill):
  """Distill with the generalised Jensen-Shannon divergence as the KD loss
  of classification tasks: T^2 JS_beta(pbar_T || q_T) (`losses.js_kd`).
  Bounded (by T^2 h(beta)) and mass-covering on both sides, unlike the
  forward KL, which ignores classes the teacher rules out."""
  settings_key = "js"
  default_settings = dict(beta=0.5)
  kinds = SOFTMAX_KINDS

  def validate(self, s):
    check(isinstance(s.beta, int | float) and 0 < s.beta < 1, self.owner,
          "beta", s.beta, "it must lie in (0, 1) (0.5 = symmetric JS)")

  def kd(self, logits, batch, task, labels, ctx):
    return losses.js_kd(logits, batch["teacher"][task.name],
                        task.temperature, self.settings.beta)


@OBJECTIVES.register("anneal")
class TeacherAnnealing(Objective):
  """BAM! (Clark et al. 2019): targets lam*label + (1-lam)*teacher at T=1.

  lam rises linearly from 0 to 1 over the stage (`schedule='linear'`) or
  stays at `fixed` ('fixed'; BAM's non-annealed mix uses 0.5). Unlabelled
  rows use the teacher alone. The loss is the cross-entropy to the mixed
  target (classification, multi-label) or the squared error to the mixed
  target (regression).
  """
  settings_key = "anneal"
  default_settings = dict(schedule="linear", fixed=0.5)

  def validate(self, s):
    check(s.schedule in ("linear", "fixed"), self.owner, "schedule",
          s.schedule, "use 'linear' or 'fixed'")
    check(_nonnegative(s.fixed) and s.fixed <= 1, self.owner, "fixed",
          s.fixed, "it must lie in [0, 1] (the label's share)")

  @property
  def needs(self) -> Needs:
    return Needs(teacher_logits=True)

  def lam(self, ctx) -> jax.Array:
    if self.settings.schedule == "linear":
      return ctx.progress
    return jnp.asarray(self.settings.fixed, jnp.float32)

  def __call__(self, out, batch, tasks, ctx):
    terms, metrics = {}, {}
    lam = self.lam(ctx)
    for task in tasks:
      logits, rows = task_rows(out["logits"][task.name], batch, task)
      mask = rows["mask"]
      labels = rows["labels"][task.name]
      teacher = rows["teacher"][task.name]
      self.supervised(logits, rows, task, metrics)
      if task.kind in SOFTMAX_KINDS:
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


FEATURE_LOSSES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "normalized_l2": losses.normalized_l2, "hint": losses.hint_l2,
    "mse": losses.feature_mse}
FUSIONS = ("none", "concat")
REGRESSORS = ("linear", "conv_bn_relu")  # See `mtkd.models.base.Net`.


def _flatten(x: jax.Array) -> jax.Array:
  return x.reshape(x.shape[0], -1)


def _normalize(x: jax.Array) -> jax.Array:
  x = _flatten(x.astype(jnp.float32))
  return x / jnp.sqrt(jnp.sum(x * x, -1, keepdims=True) + 1e-12)


def feature_targets(teacher_features: Mapping[str, jax.Array],
                    fusion: str) -> dict[str, jax.Array]:
  """`{teacher: [B, D_t]}` -> what the adaptors regress onto.

  'none': one target per teacher. 'concat': one fused target, the
  concatenation of each teacher's L2-normalised features (so no teacher
  dominates by scale), in sorted teacher order.
  """
  if fusion == "none":
    return {t: _flatten(f) for t, f in teacher_features.items()}
  return {"fused": jnp.concatenate(
      [_normalize(teacher_features[t]) for t in sorted(teacher_features)],
      -1)}


class _FeatureMatching(Distill):
  """Shared by the feature objectives: one term `feature/<target>` per
  adaptor, weighted by the `weight` setting."""

  def validate(self, s):
    check(s.loss in FEATURE_LOSSES, self.owner, "loss", s.loss,
          f"use one of {sorted(FEATURE_LOSSES)}")
    check(_nonnegative(s.weight), self.owner, "weight", s.weight,
          "use >= 0")
    for key in ("layer", "teacher_layer"):
      check(isinstance(getattr(s, key), str) and getattr(s, key),
            self.owner, key, getattr(s, key), "name a model layer")

  @property
  def extra_terms(self) -> tuple[str, ...]:
    return tuple(f"feature/{t}" for t in self.feature_targets)

  def term_weights(self) -> dict[str, float]:
    return {n: float(self.settings.weight) for n in self.extra_terms}

  def feature_terms(self, out, batch, terms, metrics):
    if not self.feature_targets:
      raise ValueError(f"{type(self).__name__} has no feature targets; "
                       "bind them with with_feature_targets().")
    fusion = "concat" if self.needs.fuse_teachers else "none"
    targets = feature_targets(batch["teacher_features"], fusion)
    loss_fn = FEATURE_LOSSES[self.settings.loss]
    for t in self.feature_targets:
      loss = loss_fn(out["features"][t], targets[t])
      terms[f"feature/{t}"] = _pair(loss, batch["mask"])
      metrics[f"feature/{t}"] = terms[f"feature/{t}"]
    return terms, metrics


@OBJECTIVES.register("feature")
class FeatureKD(_FeatureMatching):
  """Feature-level cross-task KD (Li & Bilen 2020 style) plus logit KD.

  The student's `layer` activation passes through one learnable linear
  adaptor per target (per teacher, or one for the fused teachers with
  `fusion='concat'`) and is matched to the teacher's `teacher_layer`
  feature with `loss` ('normalized_l2': squared distance of L2-normalised
  vectors; 'hint': FitNets' 0.5*||.||^2; 'mse': its mean over elements,
  as RepDistiller's). Each target is an extra term
  `feature/<target>` weighted by `weight`. With `logits=False` the heads
  learn from labels only (no logit KD).
  """
  settings_key = "feature"
  default_settings = dict(
      layer="representation",          # Student layer fed to the adaptors.
      teacher_layer="representation",  # Teacher layer cached as the target.
      loss="normalized_l2",            # 'hint' (FitNets, 0.5*||.||^2) or
                                       # 'mse' (mean; RepDistiller's hint).
      fusion="none",                   # 'concat': one fused target.
      weight=1.0,                      # Of each feature term.
      logits=True,                     # Also logit KD (else labels only).
      regressor="linear")              # 'conv_bn_relu': RepDistiller's
                                       # ConvReg (FitNets' regressor).

  def validate(self, s):
    super().validate(s)
    check(s.fusion in FUSIONS, self.owner, "fusion", s.fusion,
          f"use one of {list(FUSIONS)}")
    check(s.regressor in REGRESSORS, self.owner, "regressor", s.regressor,
          f"use one of {list(REGRESSORS)}")
    check(isinstance(s.logits, bool), self.owner, "logits", s.logits,
          "use True or False")

  @property
  def needs(self) -> Needs:
    s = self.settings
    return Needs(teacher_logits=s.logits, teacher_layer=s.teacher_layer,
                 student_layer=s.layer, fuse_teachers=s.fusion == "concat",
                 regressor=s.regressor)

  def __call__(self, out, batch, tasks, ctx):
    if self.settings.logits:
      terms, metrics = super().__call__(out, batch, tasks, ctx)
    else:
      terms, metrics = self.label_terms(out, batch, tasks)
    return self.feature_terms(out, batch, terms, metrics)


@OBJECTIVES.register("shared_rep")
class SharedRepresentationKD(_FeatureMatching):
  """Distils into the shared trunk only: one adaptor maps the student's
  `layer` to the teachers' fused `teacher_layer` features; the heads learn
  from labels alone (no logit KD), so teacher knowledge reaches the tasks
  only through the shared trunk."""
  settings_key = "shared_rep"
  default_settings = dict(layer="representation",
                          teacher_layer="representation",
                          loss="normalized_l2", weight=1.0)

  @property
  def needs(self) -> Needs:
    s = self.settings
    return Needs(teacher_layer=s.teacher_layer, student_layer=s.layer,
                 fuse_teachers=True)

  def __call__(self, out, batch, tasks, ctx):
    terms, metrics = self.label_terms(out, batch, tasks)
    return self.feature_terms(out, batch, terms, metrics)


@OBJECTIVES.register("mutual")
class MutualLearning(Objective):
  """Online distillation with no precomputed teacher: a main model and
  `peers` auxiliary peers trained together in one step.

  Model k's loss: label loss + kl_weight * mean over the other models l of
  T^2 KL(stop_grad(p_l) || p_k) (Zhang et al. 2018, at `temperature`);
  the auxiliary peers' losses are weighted by `aux_weight` (lambda):
  L = l(y, f_main) + lambda * l(y, f_aux). `kl_weight=0` is plain deep
  supervision of the peers (the auxiliary-model loss, no mutual KD).
  Unlabelled rows get only the KL terms.
  """
  settings_key = "mutual"
  default_settings = dict(peers=1, temperature=1.0, kl_weight=1.0,
                          aux_weight=1.0)
  kinds = ("classification",)

  def validate(self, s):
    check(isinstance(s.peers, int) and s.peers >= 1, self.owner, "peers",
          s.peers, "use >= 1")
    check(_nonnegative(s.temperature) and s.temperature > 0, self.owner,
          "temperature", s.temperature, "it must be > 0")
    check(_nonnegative(s.kl_weight), self.owner, "kl_weight", s.kl_weight,
          "use >= 0")
    check(_nonnegative(s.aux_weight), self.owner, "aux_weight",
          s.aux_weight, "use >= 0")

  @property
  def needs(self) -> Needs:
    return Needs(peers=self.settings.peers)

  def __call__(self, out, batch, tasks, ctx):
    s = self.settings
    models = (out["logits"], *out["peers"])
    terms, metrics = {}, {}
    mask = batch["mask"]
    for task in tasks:
      total = jnp.zeros_like(mask)
      for k, logits in enumerate(models):
        sup, labelled = self.supervised(logits[task.name], batch, task,
                                        metrics, prefix=f"m{k}/")
        others = [jax.lax.stop_gradient(m[task.name])
                  for j, m in enumerate(models) if j != k]
        kl = jnp.mean(jnp.stack([losses.softmax_kd(
            logits[task.name], o[:, None], s.temperature) for o in others]),
                      0)
        per = sup * labelled + s.kl_weight * kl
        total += (1.0 if k == 0 else s.aux_weight) * per
        metrics[f"m{k}/{task.name}/kl"] = _pair(kl, mask)
      terms[task.name] = _pair(total, mask)
      metrics[f"{task.name}/loss"] = terms[task.name]
    return terms, metrics


def build(name: str, config) -> Objective:
  """The objective `name`, built from its own block of `config` only."""
  cls = OBJECTIVES.get(name)
  return cls(config.get(cls.settings_key) if cls.settings_key else None)

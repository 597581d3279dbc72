"""Training objectives: per-task loss sums and counts, plus metrics.

An objective maps `(logits, batch, tasks)` to `(terms, metrics)`. `logits` is
`{task: [B, C]}`, `batch` carries `labels` (`-1` = no label), `mask` (0 for
padding) and, for distillation, `teacher` logits. `terms[task]` is the pair
`(sum of per-example losses, number of examples it is defined on)`; metrics
are `(sum, count)` pairs too, so averages stay exact when summed over steps,
devices and hosts.

`combine` turns terms into the scalar loss: each task's mean over the
examples it is defined on *in the global batch*, weighted by the task's
weight. Under `pmap` the counts are summed over devices first, so each
device's loss is its exact share of the global loss and summing gradients
over devices gives the gradient of the global-batch loss, as under `jit`.
"""

import dataclasses
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
from jax import lax

from mtkd import losses
from mtkd.registry import Registry

Metrics = dict[str, tuple[jax.Array, jax.Array]]
Terms = dict[str, tuple[jax.Array, jax.Array]]
Objective = Callable[..., tuple[Terms, Metrics]]
OBJECTIVES: Registry = Registry("objective")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """Static per-task settings of an objective."""
  name: str
  num_classes: int
  weight: float = 1.0
  temperature: float = 1.0
  alpha: float = 0.5


def combine(terms: Terms, tasks: tuple["TaskSpec", ...],
            axis_name: str | None = None) -> jax.Array:
  """Sum over tasks of weight * (loss sum / global count)."""
  total = jnp.zeros((), jnp.float32)
  for task in tasks:
    loss_sum, count = terms[task.name]
    if axis_name is not None:
      count = lax.psum(count, axis_name)
    total += task.weight * loss_sum / jnp.maximum(count, 1.0)
  return total


def _accuracy(logits, labels, labelled) -> tuple[jax.Array, jax.Array]:
  return (jnp.sum(losses.correct(logits, labels) * labelled),
          jnp.sum(labelled))


@OBJECTIVES.register("supervised")
def supervised(logits: Mapping[str, jax.Array], batch,
               tasks: tuple[TaskSpec, ...]) -> tuple[Terms, Metrics]:
  """Per task: CE over the labelled examples."""
  terms, metrics = {}, {}
  for task in tasks:
    labels = batch["labels"][task.name]
    labelled = batch["mask"] * (labels >= 0)
    ce = losses.cross_entropy(logits[task.name], labels)
    terms[task.name] = (jnp.sum(ce * labelled), jnp.sum(labelled))
    metrics[f"{task.name}/loss"] = terms[task.name]
    metrics[f"{task.name}/accuracy"] = _accuracy(logits[task.name], labels,
                                                 labelled)
  return terms, metrics


@OBJECTIVES.register("distill")
def distill(logits: Mapping[str, jax.Array], batch,
            tasks: tuple[TaskSpec, ...]) -> tuple[Terms, Metrics]:
  """Per example: alpha*T^2*KL + (1-alpha)*CE if labelled, else T^2*KL.

  Unlabelled examples (the transfer set) learn from the teacher alone. Each
  task's term covers all real (mask=1) examples in the batch.
  """
  terms, metrics = {}, {}
  mask = batch["mask"]
  for task in tasks:
    labels = batch["labels"][task.name]
    labelled = mask * (labels >= 0)
    kd = losses.distillation_kl(logits[task.name],
                                batch["teacher"][task.name], task.temperature)
    ce = losses.cross_entropy(logits[task.name], labels)
    alpha = jnp.where(labels >= 0, task.alpha, 1.0)
    per_example = alpha * kd + (1.0 - alpha) * ce
    terms[task.name] = (jnp.sum(per_example * mask), jnp.sum(mask))
    metrics[f"{task.name}/loss"] = terms[task.name]
    metrics[f"{task.name}/kd"] = (jnp.sum(kd * mask), jnp.sum(mask))
    metrics[f"{task.name}/ce"] = (jnp.sum(ce * labelled), jnp.sum(labelled))
    metrics[f"{task.name}/accuracy"] = _accuracy(logits[task.name], labels,
                                                 labelled)
  return terms, metrics

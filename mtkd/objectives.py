"""Training objectives: per-task losses reduced to one scalar plus metrics.

An objective maps `(logits, batch, tasks)` to `(loss, metrics)`. `logits` is
`{task: [B, C]}`, `batch` carries `labels` (`-1` = no label), `mask` (0 for
padding) and, for distillation, `teacher` logits. Metrics are `(sum, count)`
pairs so that averages stay exact when summed over steps, devices and hosts.

Reduction: each task's loss is the mean over the examples it is defined on,
then tasks are combined with their weights.
"""

import dataclasses
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

from mtkd import losses
from mtkd.registry import Registry

Metrics = dict[str, tuple[jax.Array, jax.Array]]
Objective = Callable[..., tuple[jax.Array, Metrics]]
OBJECTIVES: Registry = Registry("objective")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """Static per-task settings of an objective."""
  name: str
  num_classes: int
  weight: float = 1.0
  temperature: float = 1.0
  alpha: float = 0.5


def _mean(values: jax.Array, weights: jax.Array) -> jax.Array:
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def _accuracy(logits, labels, labelled) -> tuple[jax.Array, jax.Array]:
  return (jnp.sum(losses.correct(logits, labels) * labelled),
          jnp.sum(labelled))


@OBJECTIVES.register("supervised")
def supervised(logits: Mapping[str, jax.Array], batch,
               tasks: tuple[TaskSpec, ...]) -> tuple[jax.Array, Metrics]:
  """Weighted sum over tasks of the CE mean over labelled examples."""
  total, metrics = 0.0, {}
  for task in tasks:
    labels = batch["labels"][task.name]
    labelled = batch["mask"] * (labels >= 0)
    ce = losses.cross_entropy(logits[task.name], labels)
    total += task.weight * _mean(ce, labelled)
    metrics[f"{task.name}/loss"] = (jnp.sum(ce * labelled), jnp.sum(labelled))
    metrics[f"{task.name}/accuracy"] = _accuracy(logits[task.name], labels,
                                                 labelled)
  return total, metrics


@OBJECTIVES.register("distill")
def distill(logits: Mapping[str, jax.Array], batch,
            tasks: tuple[TaskSpec, ...]) -> tuple[jax.Array, Metrics]:
  """Per example: alpha*T^2*KL + (1-alpha)*CE if labelled, else T^2*KL.

  Unlabelled examples (the transfer set) learn from the teacher alone. Each
  task's loss is the mean over all real (mask=1) examples in the batch.
  """
  total, metrics = 0.0, {}
  mask = batch["mask"]
  for task in tasks:
    labels = batch["labels"][task.name]
    labelled = mask * (labels >= 0)
    kd = losses.distillation_kl(logits[task.name],
                                batch["teacher"][task.name], task.temperature)
    ce = losses.cross_entropy(logits[task.name], labels)
    alpha = jnp.where(labels >= 0, task.alpha, 1.0)
    per_example = alpha * kd + (1.0 - alpha) * ce
    total += task.weight * _mean(per_example, mask)
    metrics[f"{task.name}/loss"] = (jnp.sum(per_example * mask), jnp.sum(mask))
    metrics[f"{task.name}/kd"] = (jnp.sum(kd * mask), jnp.sum(mask))
    metrics[f"{task.name}/ce"] = (jnp.sum(ce * labelled), jnp.sum(labelled))
    metrics[f"{task.name}/accuracy"] = _accuracy(logits[task.name], labels,
                                                 labelled)
  return total, metrics

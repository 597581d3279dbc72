"""Sparse cached teachers -> dense teacher logits, inside the step.

A batch from a cache in a non-uniform tail mode (`mtkd.store.sparse`)
carries, per task, `{values, indices, tail}` with a teacher axis: `[B, K,
..., k]`, `[B, K, ..., k]`, `[B, K, ...]`. After the student's forward pass,
`densify` replaces each with dense teacher logits `[B, K, ..., C]` whose
softmax at the task's temperature T is the mode's target distribution, so
every objective reads a sparse teacher as it reads a dense one:

  on the stored classes S:  (1 - m) softmax(values / T)
  elsewhere:                m q_j / sum_{i not in S} q_i   (q = the
                            student's softmax at T, gradient stopped)

m is the stored tail mass (bucket mode; 0 for renormalized and sampled).
Spreading m like the student's own tail makes KL(target || q) over the C
classes equal the KL over the k + 1 bins (S and one "rest" bin), value and
gradient (q - target, times T for the T^2-scaled loss): the tail term
vanishes because both distributions agree within the rest bin. With K
teachers the per-teacher targets are averaged by the losses, as dense ones
are.
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from mtkd.store.sparse import FILL


def _scatter(values: jax.Array, indices: jax.Array, num_classes: int
             ) -> jax.Array:
  """`[..., k]` values added at `[..., k]` class indices -> `[..., C]`."""
  lead, k = values.shape[:-1], values.shape[-1]
  v, i = values.reshape(-1, k), indices.reshape(-1, k)
  rows = jnp.arange(v.shape[0])[:, None]
  dense = jnp.zeros((v.shape[0], num_classes), v.dtype).at[rows, i].add(v)
  return dense.reshape(*lead, num_classes)


def teacher_logits(student_logits: jax.Array, record: Mapping[str, jax.Array],
                   temperature: float) -> jax.Array:
  """Dense `[B, K, ..., C]` teacher logits (see the module docstring) for
  student logits `[B, ..., C]`; constants (gradient stopped)."""
  t = jnp.float32(temperature)
  values = record["values"].astype(jnp.float32)
  mass = record["tail"].astype(jnp.float32)[..., None]
  num_classes = student_logits.shape[-1]
  stored = (values > FILL / 2).astype(jnp.float32)  # Sampled: padding slots.
  head = _scatter((1.0 - mass) * jax.nn.softmax(values / t, axis=-1),
                  record["indices"], num_classes)
  in_s = _scatter(stored, record["indices"], num_classes) > 0
  log_q = jax.nn.log_softmax(
      jax.lax.stop_gradient(student_logits).astype(jnp.float32) / t,
      axis=-1)[:, None]
  log_q = jnp.broadcast_to(log_q, head.shape)
  log_rest = jax.nn.logsumexp(jnp.where(in_s, -jnp.inf, log_q), axis=-1,
                              keepdims=True)
  log_tail = jnp.log(mass) + log_q - log_rest
  log_p = jnp.where(in_s, jnp.log(head),
                    jnp.where(mass > 0, log_tail, -jnp.inf))
  return jax.lax.stop_gradient(
      jnp.where(jnp.isfinite(log_p), t * log_p, FILL))


def is_sparse(entry) -> bool:
  return isinstance(entry, Mapping)


def densify(logits: Mapping[str, jax.Array], teacher: Mapping,
            temperatures: Mapping[str, float]) -> dict:
  """`batch["teacher"]` with every sparse entry made dense."""
  return {task: (teacher_logits(logits[task], entry, temperatures[task])
                 if is_sparse(entry) else entry)
          for task, entry in teacher.items()}

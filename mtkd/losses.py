"""Per-example losses. Every function returns one value per example, `[B]`.

Reductions (masking, batch mean, task weights) live in `mtkd.objectives`, so
each loss here can be tested against a numpy reference on its own.
"""

import jax
import jax.numpy as jnp


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Softmax cross-entropy with integer labels; labels < 0 give 0."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  safe = jnp.maximum(labels, 0)
  nll = -jnp.take_along_axis(logp, safe[:, None], axis=-1)[:, 0]
  return jnp.where(labels >= 0, nll, 0.0)


def distillation_kl(student_logits: jax.Array, teacher_logits: jax.Array,
                    temperature: float | jax.Array) -> jax.Array:
  """T^2 * KL(softmax(teacher / T) || softmax(student / T)), per example.

  The T^2 factor keeps the soft-target gradient magnitude independent of T
  (Hinton et al. 2015, section 2), so alpha means the same at every T. Both
  distributions are computed with log_softmax in float32, which stays finite
  for logits of any magnitude; a teacher probability that underflows to 0
  contributes 0 (the limit of p log p).
  """
  t = jnp.asarray(temperature, jnp.float32)
  log_p_t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / t, axis=-1)
  log_p_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t, axis=-1)
  p_t = jnp.exp(log_p_t)
  kl = jnp.sum(jnp.where(p_t > 0, p_t * (log_p_t - log_p_s), 0.0), axis=-1)
  return t * t * kl


def correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """1.0 where argmax(logits) == label, else 0.0."""
  return (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)

"""Per-example losses. Every function returns one value per example, `[B]`.

Reductions (masking, batch mean, task weights) live in
`mtkd.methods.objectives`, so each loss here can be tested against a numpy
reference on its own (tests/test_losses.py, float64). Each docstring names
the formula and its paper; README.md's Methods section lists them all.

Conventions shared by every function:
- Inputs are cast to float32 first, so fp16/bf16 cached logits are safe.
- Teacher tensors carry a teacher axis: `[B, K, ...]` for K teachers. Class
  distributions are averaged in probability space (at the distillation
  temperature), regression outputs and features by their plain mean.
- KL terms are KL(teacher || student) summed over classes, with `p log p := 0`
  at p = 0 (value and gradient exactly 0), so saturated logits stay finite.
- Gradients flow into every argument; teacher outputs are expected to be
  constants (cached or wrapped in stop_gradient by the caller).
"""

import math

import jax
import jax.numpy as jnp

Scalar = float | jax.Array


def _f32(x: jax.Array) -> jax.Array:
  return jnp.asarray(x).astype(jnp.float32)


def _kl(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
  """KL(p || q) over the last axis from log-probabilities; p log p := 0 at p=0.

  The direct sum p * (log p - log q) carries ~1e-7 absolute float32 error,
  which is all of the value when p ~= q (T^2 KL at T = 1000 is ~1e-6 before
  the T^2). There, with y = E_p[r] - r for r = log p - log q, the exact
  identity KL = log1p(E_p[expm1(y)]) has relative error only, and it also
  cancels any normalisation error in log p and log q. It is used only where
  safe: |y| <= 1 and q puts no real mass where p == 0. Masked entries (p == 0,
  even -inf - -inf) give exactly 0 with a 0 gradient.
  """
  p = jnp.exp(log_p)
  keep = p > 0
  r = jnp.where(keep, log_p - log_q, 0.0)
  direct = jnp.sum(p * r, axis=-1)
  y = jnp.where(keep, direct[..., None] - r, 0.0)
  near = (jnp.all(jnp.abs(y) <= 1.0, axis=-1)
          & jnp.all(keep | (log_q < -50.0), axis=-1))
  fine = jnp.log1p(jnp.sum(p * jnp.expm1(jnp.clip(y, -1.0, 1.0)), axis=-1))
  return jnp.where(near, fine, direct)


def ensemble_log_probs(teacher_logits: jax.Array,
                       temperature: Scalar) -> jax.Array:
  """log(mean_k softmax(z_k / T)): `[B, K, C]` -> `[B, C]`.

  Computed as logsumexp_k(log_softmax) - log K, which is finite for any finite
  logits (no probability is exponentiated and then logged).
  """
  z = _f32(teacher_logits) / _f32(temperature)
  k = teacher_logits.shape[1]
  return jax.nn.logsumexp(jax.nn.log_softmax(z, axis=-1), axis=1) - math.log(k)


def softmax_kd(student_logits: jax.Array, teacher_logits: jax.Array,
               temperature: Scalar) -> jax.Array:
  """T^2 * KL(pbar_T || softmax(z_s / T)), pbar_T = mean_k softmax(z_k / T).

  The T^2 factor keeps the soft-target gradient, T * (p_s - pbar), of the
  same magnitude at every T (Hinton et al. 2015, section 2), so loss weights
  mean the same at every T.
  """
  t = _f32(temperature)
  log_p = ensemble_log_probs(teacher_logits, t)
  log_q = jax.nn.log_softmax(_f32(student_logits) / t, axis=-1)
  return t * t * _kl(log_p, log_q)


def distillation_kl(student_logits: jax.Array, teacher_logits: jax.Array,
                    temperature: Scalar) -> jax.Array:
  """Single-teacher `softmax_kd`; teacher_logits is `[B, C]`."""
  return softmax_kd(student_logits, teacher_logits[:, None], temperature)


def sigmoid_kd(student_logits: jax.Array, teacher_logits: jax.Array,
               temperature: Scalar) -> jax.Array:
  """T^2 * sum_l KL_Bernoulli(qbar_l || sigmoid(z_s,l / T)), `[B, L]` labels.

  qbar = mean_k sigmoid(z_k / T). For one label this equals `softmax_kd` on
  2-class logits [z, 0]. log q and log(1 - q) both come from log_sigmoid, so
  q near 0 or 1 is neither cancelled nor NaN.
  """
  t = _f32(temperature)
  zt, zs = _f32(teacher_logits) / t, _f32(student_logits) / t
  log_k = math.log(teacher_logits.shape[1])
  pos = jax.nn.logsumexp(jax.nn.log_sigmoid(zt), axis=1) - log_k
  neg = jax.nn.logsumexp(jax.nn.log_sigmoid(-zt), axis=1) - log_k
  log_p = jnp.stack([pos, neg], axis=-1)
  log_q = jnp.stack([jax.nn.log_sigmoid(zs), jax.nn.log_sigmoid(-zs)], -1)
  return t * t * jnp.sum(_kl(log_p, log_q), axis=-1)


def regression_kd(student: jax.Array, teacher: jax.Array) -> jax.Array:
  """mean_d (s - mean_k t)^2 for `[B, D]` student, `[B, K, D]` teacher."""
  return jnp.mean((_f32(student) - jnp.mean(_f32(teacher), axis=1)) ** 2, -1)


def cross_entropy(logits: jax.Array, labels: jax.Array,
                  smoothing: float = 0.0) -> jax.Array:
  """Softmax cross-entropy with integer labels; labels < 0 give 0.

  With label smoothing e (Szegedy et al. 2016, as PyTorch's
  `label_smoothing`): the target is (1 - e) onehot + e / C, so the loss is
  (1 - e) NLL + e mean_c(-log p_c).
  """
  logp = jax.nn.log_softmax(_f32(logits), axis=-1)
  safe = jnp.maximum(labels, 0)
  nll = -jnp.take_along_axis(logp, safe[:, None], axis=-1)[:, 0]
  if smoothing:
    nll = (1.0 - smoothing) * nll - smoothing * jnp.mean(logp, axis=-1)
  return jnp.where(labels >= 0, nll, 0.0)


def binary_cross_entropy(logits: jax.Array, labels: jax.Array,
                         smoothing: float = 0.0) -> jax.Array:
  """sum_l sigmoid BCE for `[B, L]` labels in [0, 1]; any label < 0 -> 0.

  A row with a missing label is dropped whole, matching a per-example mask.
  Label smoothing e moves each 0/1 target to e/2 / 1 - e/2.
  """
  x, y = _f32(logits), _f32(labels)
  missing = jnp.any(y < 0, axis=-1)
  y = jnp.where(y < 0, 0.0, y)
  if smoothing:
    y = y * (1.0 - smoothing) + 0.5 * smoothing
  bce = -(y * jax.nn.log_sigmoid(x) + (1.0 - y) * jax.nn.log_sigmoid(-x))
  return jnp.where(missing, 0.0, jnp.sum(bce, axis=-1))


def squared_error(pred: jax.Array, target: jax.Array) -> jax.Array:
  """mean_d (pred - target)^2; a row with any NaN target gives 0.

  NaNs are replaced before subtracting: masking only the result would still
  send 0 * NaN = NaN into the gradient of pred.
  """
  y = _f32(target)
  missing = jnp.isnan(y)
  se = (_f32(pred) - jnp.where(missing, 0.0, y)) ** 2
  return jnp.where(jnp.any(missing, axis=-1), 0.0, jnp.mean(se, axis=-1))


def soft_cross_entropy(student_logits: jax.Array,
                       target_probs: jax.Array) -> jax.Array:
  """-sum_c target_c * log_softmax(z_s)_c for `[B, C]` target distributions."""
  log_q = jax.nn.log_softmax(_f32(student_logits), axis=-1)
  return -jnp.sum(_f32(target_probs) * log_q, axis=-1)


def js_kd(student_logits: jax.Array, teacher_logits: jax.Array,
          temperature: Scalar, beta: Scalar = 0.5) -> jax.Array:
  """T^2 * JS_beta(pbar_T || q_T), the generalised Jensen-Shannon divergence.

  JS_beta(p || q) = beta KL(p || m) + (1 - beta) KL(q || m) with the mixture
  m = beta p + (1 - beta) q (as in GKD, Agarwal et al. 2024); pbar_T is the
  teachers' mean softmax at T, q_T the student's. 0 <= JS_beta <= h(beta),
  the binary entropy of beta (log 2 at beta = 0.5, where it is symmetric).
  log m is a logaddexp of log-probabilities, so no probability is logged
  after underflowing to 0.
  """
  t = _f32(temperature)
  b = _f32(beta)
  log_p = ensemble_log_probs(teacher_logits, t)
  log_q = jax.nn.log_softmax(_f32(student_logits) / t, axis=-1)
  log_m = jnp.logaddexp(jnp.log(b) + log_p, jnp.log1p(-b) + log_q)
  return t * t * (b * _kl(log_p, log_m) + (1.0 - b) * _kl(log_q, log_m))


def annealed_targets(labels: jax.Array, teacher_logits: jax.Array,
                     lam: Scalar) -> jax.Array:
  """BAM targets lam * onehot(y) + (1 - lam) * mean_k softmax(z_k), `[B, C]`.

  A mix of targets at T = 1 (not of losses); use with `soft_cross_entropy`.
  Unlabelled rows (label < 0) get the teacher distribution alone. lam may be
  traced (e.g. step / total_steps).
  """
  p = jnp.exp(ensemble_log_probs(teacher_logits, 1.0))
  lam = _f32(lam)
  onehot = jax.nn.one_hot(jnp.maximum(labels, 0), p.shape[-1])
  mixed = lam * onehot + (1.0 - lam) * p
  return jnp.where((labels >= 0)[:, None], mixed, p)


def annealed_regression_targets(targets: jax.Array, teacher: jax.Array,
                                lam: Scalar) -> jax.Array:
  """lam * y + (1 - lam) * mean_k t, `[B, D]`; rows with a NaN use the teacher.

  The output has no NaN, so the teacher still supervises unlabelled rows.
  """
  y, t = _f32(targets), jnp.mean(_f32(teacher), axis=1)
  lam = _f32(lam)
  missing = jnp.any(jnp.isnan(y), axis=-1, keepdims=True)
  mixed = lam * jnp.where(jnp.isnan(y), 0.0, y) + (1.0 - lam) * t
  return jnp.where(missing, t, mixed)


def _split_target(log_p: jax.Array, is_target: jax.Array
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(log p_t, log(1 - p_t), log of the non-target renormalised distribution).

  The target class is masked with -inf (not a large finite offset), so the
  non-target distribution is exact; `_kl` keeps the masked slot at 0.
  """
  log_pt = jnp.sum(jnp.where(is_target, log_p, 0.0), axis=-1)
  rest = jnp.where(is_target, -jnp.inf, log_p)
  log_rest = jax.nn.logsumexp(rest, axis=-1)
  return log_pt, log_rest, rest - log_rest[:, None]


def dkd_parts(student_logits: jax.Array, teacher_logits: jax.Array,
              target: jax.Array, temperature: Scalar
              ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-example (TCKD, NCKD, p_t of the teacher), all at T and without T^2.

  The teacher distribution is the ensemble pbar_T. Identity (exact):
  KL(pbar_T || p_s) = TCKD + (1 - p_t) * NCKD. Needs C >= 2 and
  0 <= target < C: the caller substitutes the teacher argmax for unlabelled
  rows (a negative target would silently select no class).
  """
  t = _f32(temperature)
  log_p = ensemble_log_probs(teacher_logits, t)
  log_q = jax.nn.log_softmax(_f32(student_logits) / t, axis=-1)
  is_target = jax.nn.one_hot(target, log_p.shape[-1], dtype=bool)
  pt, pr, p_hat = _split_target(log_p, is_target)
  qt, qr, q_hat = _split_target(log_q, is_target)
  tckd = _kl(jnp.stack([pt, pr], -1), jnp.stack([qt, qr], -1))
  nckd = _kl(p_hat, q_hat)
  return tckd, nckd, jnp.exp(pt)


def dkd(student_logits: jax.Array, teacher_logits: jax.Array,
        target: jax.Array, temperature: Scalar, alpha: Scalar,
        beta: Scalar) -> jax.Array:
  """Decoupled KD (Zhao et al. 2022): T^2 * (alpha * TCKD + beta * NCKD).

  alpha = 1, beta = 1 - p_t recovers `softmax_kd`. The epoch warm-up and the
  CE term belong to the objective. See `dkd_parts` for the target contract.
  """
  t = _f32(temperature)
  tckd, nckd, _ = dkd_parts(student_logits, teacher_logits, target, t)
  return t * t * (_f32(alpha) * tckd + _f32(beta) * nckd)


def normalized_l2(student_feat: jax.Array, teacher_feat: jax.Array,
                  eps: float = 1e-12) -> jax.Array:
  """|| s/||s|| - t/||t|| ||^2 over flattened non-batch dims, in [0, 4].

  Norms are sqrt(sum x^2 + eps): a zero feature map normalises to 0 with a
  finite gradient, instead of 0/0.
  """
  def unit(x):
    x = _f32(x).reshape(x.shape[0], -1)
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)
  return jnp.sum((unit(student_feat) - unit(teacher_feat)) ** 2, axis=-1)


def hint_l2(student_feat: jax.Array, teacher_feat: jax.Array) -> jax.Array:
  """FitNets hint: 0.5 * sum over non-batch dims of (s - t)^2.

  RepDistiller/mdistiller instead use MSE (mean over elements) x 100; the two
  differ by a per-layer constant, so the loss weight absorbs it.
  """
  d = _f32(student_feat) - _f32(teacher_feat)
  return 0.5 * jnp.sum(d.reshape(d.shape[0], -1) ** 2, axis=-1)


def feature_mse(student_feat: jax.Array, teacher_feat: jax.Array
                ) -> jax.Array:
  """Mean over non-batch elements of (s - t)^2: RepDistiller's and
  mdistiller's FitNets hint (`MSELoss`, used there x 100)."""
  d = _f32(student_feat) - _f32(teacher_feat)
  return jnp.mean(d.reshape(d.shape[0], -1) ** 2, axis=-1)


def correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """1.0 where argmax(logits) == label, else 0.0."""
  return (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)

"""Losses against an independent float64 numpy reference."""

import inspect
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtkd.methods import losses as losses_module
from tests.references import np_js_kd, np_kd, np_log_softmax

# Every public loss, jitted: eager mode compiles each primitive on its own,
# which makes this file several times slower on CPU. Same semantics.
losses = types.SimpleNamespace(**{
    name: jax.jit(fn)
    for name, fn in inspect.getmembers(losses_module, inspect.isfunction)
    if fn.__module__ == losses_module.__name__ and not name.startswith("_")})


@pytest.mark.parametrize("t", [1.0, 2.0, 4.0, 20.0])
def test_distillation_kl_matches_numpy(t):
  rng = np.random.default_rng(0)
  s, te = rng.normal(size=(2, 16, 10)) * 3
  got = losses.distillation_kl(jnp.asarray(s, jnp.float32),
                               jnp.asarray(te, jnp.float32), t)
  assert got.shape == (16,)
  np.testing.assert_allclose(got, np_kd(s, te, t), rtol=2e-5, atol=1e-6)


def test_t_squared_scaling():
  rng = np.random.default_rng(1)
  s, te = rng.normal(size=(2, 8, 5)).astype(np.float32)
  for t in (2.0, 5.0):
    plain_kl = np.sum(np.exp(np_log_softmax(te / t)) * (
        np_log_softmax(te / t) - np_log_softmax(s / t)), -1)
    np.testing.assert_allclose(losses.distillation_kl(s, te, t),
                               t * t * plain_kl, rtol=2e-5, atol=1e-7)


def test_identical_logits_give_zero():
  x = np.random.default_rng(2).normal(size=(4, 7)).astype(np.float32) * 50
  np.testing.assert_allclose(losses.distillation_kl(x, x, 3.0), 0.0, atol=1e-5)


def test_large_magnitude_logits_are_finite_and_exact():
  s = np.array([[1e4, -1e4, 0.0], [-3e4, 2e4, 1e4]], np.float32)
  te = np.array([[-1e4, 1e4, 0.0], [2e4, 2e4, -3e4]], np.float32)
  got = np.asarray(losses.distillation_kl(s, te, 1.0))
  assert np.isfinite(got).all()
  np.testing.assert_allclose(got, np_kd(s, te, 1.0), rtol=1e-5)


def test_gradient_is_t_times_prob_difference():
  # d/ds [T^2 KL(p_t || softmax(s/T))] = T * (softmax(s/T) - p_t).
  rng = np.random.default_rng(3)
  s, te = rng.normal(size=(2, 6)).astype(np.float32)
  t = 3.0
  g = jax.grad(lambda x: losses.distillation_kl(x[None], te[None], t)[0])(s)
  want = t * (np.exp(np_log_softmax(s / t)) - np.exp(np_log_softmax(te / t)))
  np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-6)


def test_cross_entropy_and_missing_labels():
  rng = np.random.default_rng(4)
  x = rng.normal(size=(5, 4)).astype(np.float32)
  y = np.array([0, 3, -1, 2, 1], np.int32)
  got = np.asarray(losses.cross_entropy(x, y))
  want = -np_log_softmax(x)[np.arange(5), np.maximum(y, 0)]
  want[2] = 0.0
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_correct():
  x = np.array([[0.1, 2.0], [3.0, -1.0]], np.float32)
  np.testing.assert_array_equal(losses.correct(x, np.array([1, 1])), [1, 0])


# ---------------------------------------------------------------------------
# Multi-teacher, multi-label, regression, BAM, DKD and feature losses.
# References below are float64 numpy written from the formulas directly
# (probabilities, not log-space tricks), so they share no code path with JAX.


def np_softmax(x):
  return np.exp(np_log_softmax(x))


def np_sigmoid(x):
  return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def np_log_mean_exp(x, axis):
  x = np.asarray(x, np.float64)
  return np.logaddexp.reduce(x, axis=axis) - np.log(x.shape[axis])


def np_kl(lp, lq):
  """sum p (log p - log q) in float64; p = 0 terms are 0."""
  p = np.exp(lp)
  return np.sum(np.where(p > 0, p * (lp - np.where(p > 0, lq, 0.0)), 0.0), -1)


def np_softmax_kd(s, te, t):
  lp = np_log_mean_exp(np_log_softmax(np.asarray(te, np.float64) / t), 1)
  return t * t * np_kl(lp, np_log_softmax(np.asarray(s, np.float64) / t))


def np_log_sigmoid(x):
  return -np.logaddexp(0.0, -np.asarray(x, np.float64))


def np_sigmoid_kd(s, te, t):
  te, s = np.asarray(te, np.float64) / t, np.asarray(s, np.float64) / t
  lp = np.stack([np_log_mean_exp(np_log_sigmoid(te), 1),
                 np_log_mean_exp(np_log_sigmoid(-te), 1)], -1)
  lq = np.stack([np_log_sigmoid(s), np_log_sigmoid(-s)], -1)
  return t * t * np_kl(lp, lq).sum(-1)


def np_dkd_parts(s, te, y, t):
  p = np_softmax(np.asarray(te, np.float64) / t).mean(1)
  q = np_softmax(np.asarray(s, np.float64) / t)
  rows = np.arange(len(y))
  pt, qt = p[rows, y], q[rows, y]
  tckd = pt * np.log(pt / qt) + (1 - pt) * np.log((1 - pt) / (1 - qt))
  nckd = np.zeros(len(y))
  for i, c in enumerate(y):
    ph = np.delete(p[i], c) / (1 - pt[i])
    qh = np.delete(q[i], c) / (1 - qt[i])
    nckd[i] = np.sum(ph * np.log(ph / qh))
  return tckd, nckd, pt


def rand(seed, *shape, scale=1.0):
  return (np.random.default_rng(seed).normal(size=shape) * scale).astype(
      np.float32)


def test_ensemble_log_probs_matches_numpy():
  te = rand(10, 6, 3, 5, scale=4.0)
  got = losses.ensemble_log_probs(te, 2.0)
  assert got.shape == (6, 5) and got.dtype == jnp.float32
  want = np.log(np_softmax(te / 2.0).mean(1))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("t", [1.0, 4.0])
def test_softmax_kd_matches_numpy(t):
  s, te = rand(11, 8, 10, scale=3.0), rand(12, 8, 3, 10, scale=3.0)
  got = losses.softmax_kd(s, te, t)
  assert got.shape == (8,)
  np.testing.assert_allclose(got, np_softmax_kd(s, te, t), rtol=2e-5,
                             atol=1e-6)


def test_softmax_kd_one_teacher_is_distillation_kl():
  s, te = rand(13, 8, 10, scale=3.0), rand(14, 8, 10, scale=3.0)
  np.testing.assert_array_equal(losses.softmax_kd(s, te[:, None], 3.0),
                                losses.distillation_kl(s, te, 3.0))


def test_identical_teachers_equal_one_teacher():
  s, te = rand(15, 8, 10, scale=3.0), rand(16, 8, 1, 10, scale=3.0)
  many = losses.softmax_kd(s, np.repeat(te, 4, axis=1), 2.0)
  np.testing.assert_allclose(many, losses.softmax_kd(s, te, 2.0), rtol=1e-5,
                             atol=1e-6)
  many = losses.sigmoid_kd(s, np.repeat(te, 4, axis=1), 2.0)
  np.testing.assert_allclose(many, losses.sigmoid_kd(s, te, 2.0), rtol=1e-5,
                             atol=1e-6)


def test_self_kl_is_zero():
  x = rand(17, 8, 10, scale=5.0)
  np.testing.assert_allclose(losses.softmax_kd(x, x[:, None], 2.0), 0.0,
                             atol=1e-5)
  np.testing.assert_allclose(losses.sigmoid_kd(x, x[:, None], 2.0), 0.0,
                             atol=1e-5)


def test_high_temperature_limit():
  # T^2 KL -> ||z_s - z_t||^2 / (2C) for zero-mean rows (Hinton eq. 4).
  s, te = rand(18, 2, 4, 10)
  s, te = s - s.mean(-1, keepdims=True), te - te.mean(-1, keepdims=True)
  limit = np.sum((s.astype(np.float64) - te) ** 2, -1) / 20.0
  got = losses.softmax_kd(s, te[:, None], 1000.0)
  np.testing.assert_allclose(got, limit, rtol=2e-3)
  np.testing.assert_allclose(got, np_softmax_kd(s, te[:, None], 1000.0),
                             rtol=1e-3)
  # Same for the gradient: T (p_s - p_t) -> (z_s - z_t) / C.
  g = jax.grad(lambda x: losses.softmax_kd(x, te[:, None], 1000.0).sum())(s)
  np.testing.assert_allclose(g, (s - te) / 10.0, rtol=2e-3, atol=1e-4)
  # At T=1 the value is far from the limit, so the check above is not vacuous.
  assert np.max(np.abs(losses.softmax_kd(s, te[:, None], 1.0) / limit - 1)) > 0.05


def test_softmax_kd_gradient_with_ensemble():
  s, te = rand(19, 10), rand(20, 3, 10, scale=2.0)
  t = 2.5
  g = jax.grad(lambda x: losses.softmax_kd(x[None], te[None], t)[0])(s)
  want = t * (np_softmax(s / t) - np_softmax(te / t).mean(0))
  np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("t", [1.0, 3.0])
def test_sigmoid_kd_matches_numpy(t):
  s, te = rand(21, 8, 5, scale=3.0), rand(22, 8, 2, 5, scale=3.0)
  got = losses.sigmoid_kd(s, te, t)
  assert got.shape == (8,)
  np.testing.assert_allclose(got, np_sigmoid_kd(s, te, t), rtol=2e-5,
                             atol=1e-6)


def test_sigmoid_kd_one_label_is_two_class_softmax_kd():
  s, te = rand(23, 8, 1, scale=4.0), rand(24, 8, 3, 1, scale=4.0)
  two = lambda z: np.concatenate([z, np.zeros_like(z)], -1)  # noqa: E731
  np.testing.assert_allclose(losses.sigmoid_kd(s, te, 2.0),
                             losses.softmax_kd(two(s), two(te), 2.0),
                             rtol=1e-5, atol=1e-6)


def test_regression_kd_matches_numpy():
  s, te = rand(25, 6, 4), rand(26, 6, 3, 4)
  want = np.mean((s - te.astype(np.float64).mean(1)) ** 2, -1)
  np.testing.assert_allclose(losses.regression_kd(s, te), want, rtol=1e-5)


def test_binary_cross_entropy_and_missing_rows():
  x = rand(27, 5, 3, scale=3.0)
  y = np.array([[1, 0, 1], [0, 0, 0], [1, -1, 0], [0.3, 1, 0], [1, 1, 1]],
               np.float32)
  got = np.asarray(losses.binary_cross_entropy(x, y))
  p = np_sigmoid(x)
  want = -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum(-1)
  want[2] = 0.0
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_squared_error_nan_rows_are_zero_with_finite_gradient():
  pred = rand(28, 4, 3)
  target = rand(29, 4, 3)
  target[1, 2] = np.nan
  got = np.asarray(losses.squared_error(pred, target))
  want = np.mean((pred.astype(np.float64) - target) ** 2, -1)
  want[1] = 0.0
  np.testing.assert_allclose(got, want, rtol=1e-5)
  g = jax.grad(lambda p: losses.squared_error(p, target).sum())(pred)
  want_g = 2 * (pred - target) / 3
  want_g[1] = 0.0
  np.testing.assert_allclose(g, want_g, rtol=1e-5)


def test_soft_cross_entropy_matches_numpy():
  s, p = rand(30, 6, 7, scale=3.0), np_softmax(rand(31, 6, 7))
  want = -np.sum(p * np_log_softmax(s), -1)
  np.testing.assert_allclose(losses.soft_cross_entropy(s, p), want, rtol=1e-5)


def test_annealed_targets_match_numpy_and_are_traceable():
  y = np.array([0, 3, -1, 2], np.int32)
  te = rand(32, 4, 2, 5, scale=2.0)
  got = jax.jit(losses.annealed_targets)(y, te, jnp.float32(0.3))
  p = np_softmax(te).mean(1)
  want = 0.3 * np.eye(5)[np.maximum(y, 0)] + 0.7 * p
  want[2] = p[2]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.sum(got, -1), 1.0, rtol=1e-6)


def test_bam_lam_one_is_cross_entropy():
  s, te = rand(33, 6, 5, scale=2.0), rand(34, 6, 2, 5, scale=2.0)
  y = np.array([0, 1, 2, 3, 4, 1], np.int32)
  got = losses.soft_cross_entropy(s, losses.annealed_targets(y, te, 1.0))
  np.testing.assert_allclose(got, losses.cross_entropy(s, y), rtol=1e-6)


def test_bam_lam_zero_is_kl_up_to_teacher_entropy():
  s, te = rand(35, 6, 5, scale=2.0), rand(36, 6, 2, 5, scale=2.0)
  y = np.array([0, 1, -1, 3, 4, 1], np.int32)

  def bam(x):
    return losses.soft_cross_entropy(x, losses.annealed_targets(y, te, 0.0))

  def kd(x):
    return losses.softmax_kd(x, te, 1.0)

  np.testing.assert_allclose(jax.grad(lambda x: bam(x).sum())(s),
                             jax.grad(lambda x: kd(x).sum())(s),
                             rtol=1e-5, atol=1e-6)
  p = np_softmax(te).mean(1)
  entropy = -np.sum(p * np.log(p), -1)
  assert entropy.min() > 0.1  # The constant is non-trivial.
  np.testing.assert_allclose(bam(s) - kd(s), entropy, rtol=1e-4)


def test_annealed_regression_targets_and_nan_gradients():
  y = rand(37, 4, 3)
  y[2, 0] = np.nan
  te = rand(38, 4, 2, 3)
  got = np.asarray(losses.annealed_regression_targets(y, te, 0.25))
  tm = te.astype(np.float64).mean(1)
  want = 0.25 * y + 0.75 * tm
  want[2] = tm[2]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  pred = rand(39, 4, 3)

  def loss(p, lam):
    return losses.squared_error(
        p, losses.annealed_regression_targets(y, te, lam)).sum()

  g = jax.grad(loss)(pred, 0.25)
  np.testing.assert_allclose(g, 2 * (pred - want) / 3, rtol=1e-5, atol=1e-6)
  g = jax.grad(lambda p: losses.regression_kd(p, te).sum())(pred)
  assert np.isfinite(g).all()


def test_dkd_parts_match_numpy():
  s, te = rand(40, 8, 10, scale=3.0), rand(41, 8, 3, 10, scale=3.0)
  y = np.arange(8, dtype=np.int32) % 10
  for got, want in zip(losses.dkd_parts(s, te, y, 4.0),
                       np_dkd_parts(s, te, y, 4.0), strict=True):
    assert got.shape == (8,)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6)


def test_dkd_identity_and_kd_recovery():
  s, te = rand(42, 8, 10, scale=3.0), rand(43, 8, 2, 10, scale=3.0)
  y = np.array([0, 9, 3, 3, 5, 1, 7, 2], np.int32)
  t = 4.0
  tckd, nckd, pt = losses.dkd_parts(s, te, y, t)
  kd = losses.softmax_kd(s, te, t)
  np.testing.assert_allclose(t * t * (tckd + (1 - pt) * nckd), kd, rtol=1e-4,
                             atol=1e-6)
  np.testing.assert_allclose(losses.dkd(s, te, y, t, 1.0, 1.0 - pt), kd,
                             rtol=1e-4, atol=1e-6)
  # With the default beta=8 it is a different loss.
  assert not np.allclose(losses.dkd(s, te, y, t, 1.0, 8.0), kd, rtol=1e-2)


def test_dkd_gradient_is_finite_with_saturated_teacher():
  s = rand(44, 4, 6, scale=3.0)
  te = np.zeros((4, 1, 6), np.float32)
  te[:, 0, 2] = 1e4  # p_t == 1: no mass left off the target.
  y = np.full(4, 2, np.int32)
  val, g = jax.value_and_grad(
      lambda x: losses.dkd(x, te, y, 1.0, 1.0, 8.0).sum())(s)
  assert np.isfinite(val) and np.isfinite(g).all()


def test_normalized_l2_matches_numpy_and_handles_zeros():
  s, te = rand(45, 3, 4, 4, 2), rand(46, 3, 4, 4, 2)
  fs = s.reshape(3, -1).astype(np.float64)
  ft = te.reshape(3, -1).astype(np.float64)
  unit = lambda f: f / np.linalg.norm(f, axis=-1, keepdims=True)  # noqa: E731
  want = np.sum((unit(fs) - unit(ft)) ** 2, -1)
  np.testing.assert_allclose(losses.normalized_l2(s, te), want, rtol=1e-5)
  # Scale invariant in either argument.
  np.testing.assert_allclose(losses.normalized_l2(7 * s, te / 3), want,
                             rtol=1e-5)
  zero = np.zeros_like(s)
  val, g = jax.value_and_grad(
      lambda x: losses.normalized_l2(x, te).sum())(zero)
  assert np.isfinite(val) and np.isfinite(g).all()
  np.testing.assert_allclose(val, 3.0, rtol=1e-5)  # ||0 - unit||^2 = 1.


def test_hint_l2_matches_numpy():
  s, te = rand(47, 3, 4, 4, 2), rand(48, 3, 4, 4, 2)
  want = 0.5 * np.sum((s.astype(np.float64) - te) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(losses.hint_l2(s, te), want, rtol=1e-5)


def _all_losses(dtype):
  """Every per-example loss on inputs of `dtype`, with float32 outputs."""
  s, te = rand(49, 4, 6, scale=3.0), rand(50, 4, 2, 6, scale=3.0)
  s, te = jnp.asarray(s, dtype), jnp.asarray(te, dtype)
  y = jnp.array([0, 5, -1, 2])
  bits = (te[:, 0] > 0).astype(dtype)
  return {
      "softmax_kd": losses.softmax_kd(s, te, 2.0),
      "distillation_kl": losses.distillation_kl(s, te[:, 0], 2.0),
      "sigmoid_kd": losses.sigmoid_kd(s, te, 2.0),
      "regression_kd": losses.regression_kd(s, te),
      "cross_entropy": losses.cross_entropy(s, y),
      "binary_cross_entropy": losses.binary_cross_entropy(s, bits),
      "squared_error": losses.squared_error(s, te[:, 0]),
      "soft_cross_entropy": losses.soft_cross_entropy(
          s, losses.annealed_targets(y, te, 0.5)),
      "dkd": losses.dkd(s, te, jnp.maximum(y, 0), 4.0, 1.0, 8.0),
      "js_kd": losses.js_kd(s, te, 2.0, 0.3),
      "normalized_l2": losses.normalized_l2(s, te[:, 0]),
      "hint_l2": losses.hint_l2(s, te[:, 0]),
  }


def test_low_precision_inputs_give_float32_outputs():
  ref = _all_losses(jnp.float32)
  for dtype in (jnp.bfloat16, jnp.float16):
    for name, got in _all_losses(dtype).items():
      assert got.dtype == jnp.float32 and got.shape == (4,), name
      assert np.isfinite(got).all(), name
      # Only input rounding differs, not the arithmetic.
      np.testing.assert_allclose(got, ref[name], rtol=0.1, atol=0.05,
                                 err_msg=name)


def test_extreme_logits_are_finite():
  big = np.array([[1e4, -1e4, 0.0, 5e3], [-1e4, 1e4, -1e4, 1e4]], np.float32)
  te = np.stack([big[::-1], -big], axis=1)
  y = np.array([0, 2], np.int32)
  fns = {
      "softmax_kd": lambda x: losses.softmax_kd(x, te, 1.0),
      "sigmoid_kd": lambda x: losses.sigmoid_kd(x, te, 1.0),
      "dkd": lambda x: losses.dkd(x, te, y, 1.0, 1.0, 8.0),
      "js_kd": lambda x: losses.js_kd(x, te, 1.0, 0.5),
      "bce": lambda x: losses.binary_cross_entropy(x, (te[:, 0] > 0) * 1.0),
      "soft_ce": lambda x: losses.soft_cross_entropy(
          x, losses.annealed_targets(y, te, 0.5)),
  }
  for name, fn in fns.items():
    val, g = jax.value_and_grad(lambda x, fn=fn: fn(x).sum())(big)
    assert np.isfinite(val) and np.isfinite(g).all(), name
  np.testing.assert_allclose(losses.softmax_kd(big, te, 1.0),
                             np_softmax_kd(big, te, 1.0), rtol=1e-5)
  np.testing.assert_allclose(losses.sigmoid_kd(big, te, 1.0),
                             np_sigmoid_kd(big, te, 1.0), rtol=1e-5)


@pytest.mark.parametrize("t,beta,k", [(1.0, 0.5, 1), (2.0, 0.1, 2),
                                      (4.0, 0.9, 3)])
def test_js_kd_matches_numpy(t, beta, k):
  rng = np.random.default_rng(7)
  s, te = rng.normal(size=(16, 10)) * 3, rng.normal(size=(16, k, 10)) * 3
  np.testing.assert_allclose(
      losses.js_kd(s.astype(np.float32), te.astype(np.float32), t, beta),
      np_js_kd(s, te, t, beta), rtol=2e-4, atol=1e-6)


def test_js_kd_invariants():
  """Zero at the teacher, symmetric at beta = 0.5, bounded by T^2 times
  the binary entropy of beta, and mirror-symmetric in beta."""
  rng = np.random.default_rng(8)
  a, b = (rng.normal(size=(32, 6)).astype(np.float32) * 4 for _ in range(2))
  np.testing.assert_allclose(losses.js_kd(a, a[:, None], 2.0, 0.3), 0.0,
                             atol=1e-6)
  np.testing.assert_allclose(losses.js_kd(a, b[:, None], 1.0, 0.5),
                             losses.js_kd(b, a[:, None], 1.0, 0.5), rtol=1e-5)
  np.testing.assert_allclose(losses.js_kd(a, b[:, None], 1.0, 0.2),
                             losses.js_kd(b, a[:, None], 1.0, 0.8), rtol=1e-5)
  # Disjoint one-hot-like distributions reach the bound.
  far = np.array([[60.0, -60.0]], np.float32)
  for beta in (0.5, 0.2):
    h = -beta * np.log(beta) - (1 - beta) * np.log(1 - beta)
    got = losses.js_kd(far, -far[:, None], 3.0, beta)
    np.testing.assert_allclose(got, 9.0 * h, rtol=1e-3)
    assert np.all(losses.js_kd(a, b[:, None], 3.0, beta) <= 9.0 * h + 1e-5)

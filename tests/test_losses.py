"""Losses against an independent float64 numpy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtkd import losses


def np_log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def np_kd(student, teacher, t):
  lt, ls = np_log_softmax(teacher / t), np_log_softmax(student / t)
  return t * t * np.sum(np.exp(lt) * (lt - ls), -1)


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

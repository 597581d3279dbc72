"""Independent float64 numpy references for the losses (not a test
module: test files import it; it imports nothing from mtkd)."""

import numpy as np


def np_log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def np_kd(student, teacher, t):
  lt, ls = np_log_softmax(teacher / t), np_log_softmax(student / t)
  return t * t * np.sum(np.exp(lt) * (lt - ls), -1)


def np_js_kd(student, teacher, t, beta):
  """Reference: teachers [B, K, C] averaged in probability space."""
  p = np.exp(np_log_softmax(np.asarray(teacher, np.float64) / t)).mean(1)
  q = np.exp(np_log_softmax(np.asarray(student, np.float64) / t))
  m = beta * p + (1 - beta) * q

  def kl(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
      return np.sum(np.where(a > 0, a * (np.log(a) - np.log(b)), 0.0), -1)
  return t * t * (beta * kl(p, m) + (1 - beta) * kl(q, m))

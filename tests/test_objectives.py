"""Objectives: per-task reductions against a hand-written numpy formula."""

import numpy as np

from mtkd import objectives
from tests.test_losses import np_kd, np_log_softmax


def _batch(rng, b=6, c=(3, 4)):
  logits = {"a": rng.normal(size=(b, c[0])).astype(np.float32),
            "b": rng.normal(size=(b, c[1])).astype(np.float32)}
  batch = {
      "labels": {"a": np.array([0, -1, 2, 1, -1, 0], np.int32),
                 "b": np.array([3, 1, -1, -1, 0, 2], np.int32)},
      "mask": np.array([1, 1, 1, 1, 1, 0], np.float32),
      "teacher": {"a": rng.normal(size=(b, c[0])).astype(np.float32),
                  "b": rng.normal(size=(b, c[1])).astype(np.float32)},
  }
  return logits, batch


TASKS = (objectives.TaskSpec("a", 3, weight=1.0, temperature=2.0, alpha=0.3),
         objectives.TaskSpec("b", 4, weight=0.5, temperature=4.0, alpha=0.9))


def test_distill_matches_formula():
  logits, batch = _batch(np.random.default_rng(0))
  terms, metrics = objectives.distill(logits, batch, TASKS)
  loss = objectives.combine(terms, TASKS)
  want = 0.0
  for spec in TASKS:
    s, t = logits[spec.name], batch["teacher"][spec.name]
    y = batch["labels"][spec.name]
    kd = np_kd(s, t, spec.temperature)
    ce = -np_log_softmax(s)[np.arange(len(y)), np.maximum(y, 0)]
    per = np.where(y >= 0, spec.alpha * kd + (1 - spec.alpha) * ce, kd)
    m = batch["mask"]
    want += spec.weight * np.sum(per * m) / m.sum()
    np.testing.assert_allclose(metrics[f"{spec.name}/loss"][0],
                               np.sum(per * m), rtol=1e-5)
    assert float(metrics[f"{spec.name}/loss"][1]) == 5.0
    labelled = (y >= 0) * m
    assert float(metrics[f"{spec.name}/accuracy"][1]) == labelled.sum()
  np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_supervised_averages_over_labelled_real_examples():
  logits, batch = _batch(np.random.default_rng(1))
  terms, metrics = objectives.supervised(logits, batch, TASKS)
  loss = objectives.combine(terms, TASKS)
  want = 0.0
  for spec in TASKS:
    s, y = logits[spec.name], batch["labels"][spec.name]
    keep = (y >= 0) & (batch["mask"] > 0)
    ce = -np_log_softmax(s[keep])[np.arange(keep.sum()), y[keep]]
    want += spec.weight * ce.mean()
    acc = np.sum(s[keep].argmax(-1) == y[keep])
    assert float(metrics[f"{spec.name}/accuracy"][0]) == acc
  np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_alpha_zero_distill_equals_supervised_on_fully_labelled_batch():
  rng = np.random.default_rng(2)
  logits, batch = _batch(rng)
  batch["labels"] = {k: np.abs(v) for k, v in batch["labels"].items()}
  batch["mask"] = np.ones(6, np.float32)
  tasks = tuple(objectives.TaskSpec(s.name, s.num_classes, s.weight,
                                    s.temperature, alpha=0.0) for s in TASKS)
  a = objectives.combine(objectives.distill(logits, batch, tasks)[0], tasks)
  b = objectives.combine(objectives.supervised(logits, batch, tasks)[0], tasks)
  np.testing.assert_allclose(a, b, rtol=1e-6)

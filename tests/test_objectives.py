"""Objectives: per-term reductions against hand-written numpy formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtkd.errors import UserError
from mtkd.methods import objectives
from mtkd.methods.objectives import OBJECTIVES, Context, TaskSpec
from tests.references import np_js_kd, np_kd, np_log_softmax

TASKS = (TaskSpec("a", 3, weight=1.0, temperature=2.0, alpha=0.3),
         TaskSpec("b", 4, weight=0.5, temperature=4.0, alpha=0.9))


def _batch(rng, b=6, c=(3, 4), k=1):
  logits = {"a": rng.normal(size=(b, c[0])).astype(np.float32),
            "b": rng.normal(size=(b, c[1])).astype(np.float32)}
  batch = {
      "labels": {"a": np.array([0, -1, 2, 1, -1, 0], np.int32),
                 "b": np.array([3, 1, -1, -1, 0, 2], np.int32)},
      "mask": np.array([1, 1, 1, 1, 1, 0], np.float32),
      "teacher": {"a": rng.normal(size=(b, k, c[0])).astype(np.float32),
                  "b": rng.normal(size=(b, k, c[1])).astype(np.float32)},
  }
  return {"logits": logits}, batch


def _ctx(step=0, n=10):
  return Context(jnp.asarray(step, jnp.int32), n)


def _run(name, out, batch, tasks=TASKS, settings=None, step=0,
         feature_targets=()):
  obj = OBJECTIVES.get(name)(settings).with_feature_targets(feature_targets)
  terms, metrics = obj(out, batch, tasks, _ctx(step))
  return obj, terms, metrics


def test_distill_matches_formula():
  out, batch = _batch(np.random.default_rng(0))
  _, terms, metrics = _run("distill", out, batch)
  want = 0.0
  for spec in TASKS:
    s, t = out["logits"][spec.name], batch["teacher"][spec.name][:, 0]
    y = batch["labels"][spec.name]
    kd = np_kd(s, t, spec.temperature)
    ce = -np_log_softmax(s)[np.arange(len(y)), np.maximum(y, 0)]
    per = np.where(y >= 0, spec.alpha * kd + (1 - spec.alpha) * ce, kd)
    m = batch["mask"]
    want += spec.weight * np.sum(per * m) / m.sum()
    np.testing.assert_allclose(terms[spec.name][0], np.sum(per * m),
                               rtol=1e-5)
    assert float(terms[spec.name][1]) == 5.0
    labelled = (y >= 0) * m
    assert float(metrics[f"{spec.name}/accuracy"][1]) == labelled.sum()
  np.testing.assert_allclose(objectives.combine(terms, TASKS), want,
                             rtol=1e-5)


def test_distill_averages_teachers_in_probability_space():
  out, batch = _batch(np.random.default_rng(1), k=2)
  _, terms, _ = _run("distill", out, batch)
  s, t = out["logits"]["a"], batch["teacher"]["a"]
  p_bar = np.exp(np_log_softmax(t / 2.0)).mean(1)
  ls = np_log_softmax(s / 2.0)
  kd = 4.0 * np.sum(p_bar * (np.log(p_bar) - ls), -1)
  y = batch["labels"]["a"]
  ce = -np_log_softmax(s)[np.arange(6), np.maximum(y, 0)]
  per = np.where(y >= 0, 0.3 * kd + 0.7 * ce, kd)
  np.testing.assert_allclose(terms["a"][0], np.sum(per * batch["mask"]),
                             rtol=1e-5)


def test_supervised_averages_over_labelled_real_examples():
  out, batch = _batch(np.random.default_rng(1))
  _, terms, metrics = _run("supervised", out, batch)
  want = 0.0
  for spec in TASKS:
    s, y = out["logits"][spec.name], batch["labels"][spec.name]
    keep = (y >= 0) & (batch["mask"] > 0)
    ce = -np_log_softmax(s[keep])[np.arange(keep.sum()), y[keep]]
    want += spec.weight * ce.mean()
    acc = np.sum(s[keep].argmax(-1) == y[keep])
    assert float(metrics[f"{spec.name}/accuracy"][0]) == acc
  np.testing.assert_allclose(objectives.combine(terms, TASKS), want,
                             rtol=1e-5)


def test_alpha_zero_distill_equals_supervised_on_fully_labelled_batch():
  out, batch = _batch(np.random.default_rng(2))
  batch["labels"] = {k: np.abs(v) for k, v in batch["labels"].items()}
  batch["mask"] = np.ones(6, np.float32)
  tasks = tuple(TaskSpec(s.name, s.num_classes, s.weight, s.temperature,
                         alpha=0.0) for s in TASKS)
  a = objectives.combine(_run("distill", out, batch, tasks)[1], tasks)
  b = objectives.combine(_run("supervised", out, batch, tasks)[1], tasks)
  np.testing.assert_allclose(a, b, rtol=1e-6)


def test_mixed_kinds_in_distill():
  rng = np.random.default_rng(3)
  tasks = (TaskSpec("m", 3, alpha=0.5, temperature=2.0, kind="multilabel"),
           TaskSpec("r", 2, alpha=0.25, kind="regression"))
  s_m, s_r = rng.normal(size=(2, 4, 3)), rng.normal(size=(4, 2))
  t_m, t_r = rng.normal(size=(4, 1, 3)), rng.normal(size=(4, 1, 2))
  y_m = np.array([[1, 0, 1], [-1, -1, -1], [0, 0, 1], [1, 1, 0]], np.int32)
  y_r = np.array([[0.5, 1.0], [np.nan, np.nan], [1.0, -1.0], [0.0, 0.0]],
                 np.float32)
  batch = {"labels": {"m": y_m, "r": y_r}, "mask": np.ones(4, np.float32),
           "teacher": {"m": t_m.astype(np.float32),
                       "r": t_r.astype(np.float32)}}
  out = {"logits": {"m": s_m[0].astype(np.float32),
                    "r": s_r.astype(np.float32)}}
  _, terms, _ = _run("distill", out, batch, tasks)

  def log_sig(x):
    return -np.logaddexp(0, -x)
  z, zt = s_m[0], t_m[:, 0]
  q, lq = 1 / (1 + np.exp(-zt / 2)), log_sig(z / 2)
  kd = 4 * np.sum(q * (np.log(q) - lq) + (1 - q) * (np.log(1 - q)
                                                     - log_sig(-z / 2)), -1)
  bce = -np.sum(y_m * log_sig(z) + (1 - y_m) * log_sig(-z), -1)
  per = np.where(y_m[:, 0] >= 0, 0.5 * kd + 0.5 * bce, kd)
  np.testing.assert_allclose(terms["m"][0], per.sum(), rtol=1e-5)
  kd_r = np.mean((s_r - t_r[:, 0]) ** 2, -1)
  se = np.nan_to_num(np.mean((s_r - y_r) ** 2, -1))
  per_r = np.where(np.isfinite(y_r[:, 0]), 0.25 * kd_r + 0.75 * se, kd_r)
  np.testing.assert_allclose(terms["r"][0], per_r.sum(), rtol=1e-5)


@pytest.mark.parametrize("step", [0, 5, 10])
def test_teacher_annealing_mixes_targets_linearly(step):
  out, batch = _batch(np.random.default_rng(4))
  _, terms, metrics = _run("anneal", out, batch, step=step)
  lam = step / 10
  s, t, y = (out["logits"]["a"], batch["teacher"]["a"][:, 0],
             batch["labels"]["a"])
  p_t = np.exp(np_log_softmax(t))
  onehot = np.eye(3)[np.maximum(y, 0)]
  target = np.where((y >= 0)[:, None], lam * onehot + (1 - lam) * p_t, p_t)
  loss = -np.sum(target * np_log_softmax(s), -1)
  np.testing.assert_allclose(terms["a"][0], np.sum(loss * batch["mask"]),
                             rtol=1e-5)
  assert float(metrics["anneal/lambda"][0]) == pytest.approx(lam)


def test_dkd_ramps_up_and_recovers_kd():
  out, batch = _batch(np.random.default_rng(5))
  cfg = {"warmup_steps": 4}
  tasks = tuple(TaskSpec(s.name, s.num_classes, s.weight, s.temperature,
                         alpha=1.0) for s in TASKS)  # Pure KD terms.
  half = _run("dkd", out, batch, tasks, cfg, step=2)[1]
  full = _run("dkd", out, batch, tasks, cfg, step=4)[1]
  later = _run("dkd", out, batch, tasks, cfg, step=8)[1]
  for t in ("a", "b"):
    np.testing.assert_allclose(half[t][0], 0.5 * full[t][0], rtol=1e-5)
    np.testing.assert_allclose(later[t][0], full[t][0], rtol=1e-6)
  # With beta=8 (not 1 - p_t), DKD differs from plain KD.
  kd = _run("distill", out, batch, tasks)[1]
  assert float(full["a"][0]) != pytest.approx(float(kd["a"][0]), rel=1e-3)


def test_feature_terms_and_shared_rep_drop_logit_kd():
  rng = np.random.default_rng(6)
  out, batch = _batch(rng)
  sf = {"a": rng.normal(size=(6, 5)).astype(np.float32)}
  tf = {"a": rng.normal(size=(6, 5)).astype(np.float32)}
  out["features"] = sf
  batch["teacher_features"] = tf
  obj, terms, _ = _run("feature", out, batch, feature_targets=("a",))
  assert obj.term_names(TASKS) == ("a", "b", "feature/a")
  n = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
  want = np.sum(np.sum((n(sf["a"]) - n(tf["a"])) ** 2, -1) * batch["mask"])
  np.testing.assert_allclose(terms["feature/a"][0], want, rtol=1e-5)
  kd_terms = _run("distill", out, batch)[1]
  np.testing.assert_allclose(terms["a"][0], kd_terms["a"][0], rtol=1e-6)
  # Shared-representation KD: task terms are the label loss only, and the
  # one fused target is the concatenation of normalised teacher features.
  out["features"] = {"fused": n(tf["a"])}
  _, terms, _ = _run("shared_rep", out, batch, feature_targets=("fused",))
  sup = _run("supervised", out, batch)[1]
  np.testing.assert_allclose(terms["a"][0], sup["a"][0], rtol=1e-6)
  np.testing.assert_allclose(terms["feature/fused"][0], 0.0, atol=1e-5)


def test_mutual_learning_gradients_treat_peers_as_fixed():
  rng = np.random.default_rng(7)
  out, batch = _batch(rng)
  peer = {k: rng.normal(size=v.shape).astype(np.float32)
          for k, v in out["logits"].items()}
  obj = OBJECTIVES.get("mutual")(dict(peers=1, temperature=1.0,
                                     kl_weight=1.0, aux_weight=0.5))

  def total(main, aux):
    terms, _ = obj({"logits": main, "peers": (aux,)}, batch, TASKS, _ctx())
    return objectives.combine(terms, TASKS)
  g_main = jax.grad(total)(out["logits"], peer)
  # d/d main = d/d main of main's own loss: CE + KL(stop(aux) || main).
  for spec in TASKS:
    y, m = batch["labels"][spec.name], batch["mask"]
    s, a = out["logits"][spec.name], peer[spec.name]
    p_s, p_a = np.exp(np_log_softmax(s)), np.exp(np_log_softmax(a))
    onehot = np.eye(s.shape[1])[np.maximum(y, 0)] * (y >= 0)[:, None]
    grad = ((p_s - onehot) * (y >= 0)[:, None] + (p_s - p_a)) * m[:, None]
    np.testing.assert_allclose(g_main[spec.name],
                               spec.weight * grad / m.sum(), rtol=1e-4,
                               atol=1e-6)


def test_js_objective_matches_formula_and_checks_its_settings():
  out, batch = _batch(np.random.default_rng(9))
  _, terms, _ = _run("js", out, batch, settings={"beta": 0.3})
  for spec in TASKS:
    s, t = out["logits"][spec.name], batch["teacher"][spec.name]
    y, m = batch["labels"][spec.name], batch["mask"]
    js = np_js_kd(s, t, spec.temperature, 0.3)
    ce = -np_log_softmax(s)[np.arange(len(y)), np.maximum(y, 0)]
    per = np.where(y >= 0, spec.alpha * js + (1 - spec.alpha) * ce, js)
    np.testing.assert_allclose(terms[spec.name][0], np.sum(per * m),
                               rtol=1e-5)
  for bad in (0.0, 1.0, -0.5):
    with pytest.raises(UserError, match=r"config.js.beta"):
      OBJECTIVES.get("js")({"beta": bad})
  with pytest.raises(UserError, match="classification, sequence tasks only"):
    OBJECTIVES.get("js")().check_tasks(
        (TaskSpec("m", 3, kind="multilabel"),), "config.student.stages.s")


def test_dkd_without_warmup_is_full_from_step_0():
  out, batch = _batch(np.random.default_rng(10))
  first = _run("dkd", out, batch, settings={"warmup_steps": 0}, step=0)[1]
  later = _run("dkd", out, batch, settings={"warmup_steps": 0}, step=7)[1]
  ramped = _run("dkd", out, batch, settings={"warmup_steps": 4}, step=0)[1]
  for t in ("a", "b"):
    np.testing.assert_allclose(first[t][0], later[t][0], rtol=1e-6)
    assert float(first[t][0]) != pytest.approx(float(ramped[t][0]))


@pytest.mark.parametrize("name,settings,match", [
    ("anneal", {"schedule": "cosine"}, r"config.anneal.schedule is 'cosine'"),
    ("anneal", {"fixed": 1.5}, r"config.anneal.fixed"),
    ("feature", {"loss": "l1"}, r"config.feature.loss is 'l1'"),
    ("feature", {"fusion": "sum"}, r"config.feature.fusion is 'sum'"),
    ("shared_rep", {"weight": -1.0}, r"config.shared_rep.weight"),
    ("dkd", {"warmup_steps": -3}, r"config.dkd.warmup_steps"),
    ("mutual", {"peers": 0}, r"config.mutual.peers"),
    ("dkd", {"gamma": 1.0}, r"config.dkd has unknown key\(s\) \['gamma'\]"),
])
def test_bad_settings_fail_at_construction(name, settings, match):
  with pytest.raises(UserError, match=match):
    OBJECTIVES.get(name)(settings)


def test_objectives_declare_what_they_read():
  needs = {n: OBJECTIVES.get(n)().needs for n in OBJECTIVES.names()}
  assert not needs["supervised"].teachers and not needs["mutual"].teachers
  assert needs["mutual"].peers == 1
  for n in ("distill", "dkd", "js", "anneal", "feature"):
    assert needs[n].teacher_logits, n
  assert needs["feature"].teacher_layer == "representation"
  assert not needs["feature"].fuse_teachers
  assert OBJECTIVES.get("feature")({"fusion": "concat"}).needs.fuse_teachers
  assert not OBJECTIVES.get("feature")({"logits": False}).needs.teacher_logits
  rep = needs["shared_rep"]
  assert rep.fuse_teachers and rep.teacher_layer and not rep.teacher_logits

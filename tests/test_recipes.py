"""Training recipes: schedules, weight decay that skips biases and norm
scales, clipping, label smoothing, gradient accumulation (= one large
batch), and the parameters' EMA, each against a hand computation."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mtkd import models
from mtkd.errors import UserError
from mtkd.methods import losses, objectives
from mtkd.methods import weighting as weighting_lib
from mtkd.train import optim, placement
from mtkd.train import step as step_lib
from tests.references import np_log_softmax


def _lr(schedule: dict, total: int, spe: float = 1.0):
  lr = optim.learning_rate({"learning_rate": 0.1, "schedule": schedule},
                           total, spe)
  return (lambda s: float(lr(s))) if callable(lr) else (lambda s: lr)


def test_schedules_against_hand_computed_values():
  const = _lr({}, 100)
  assert const(0) == const(99) == 0.1
  # CRD/DKD: x0.1 at epochs 150, 180, 210; 10 steps per epoch.
  ms = _lr({"name": "multistep", "unit": "epochs",
            "boundaries": (150, 180, 210), "factor": 0.1}, 2400, 10)
  for step, want in ((0, 0.1), (1499, 0.1), (1500, 0.01), (1799, 0.01),
                     (1800, 1e-3), (2100, 1e-4), (2399, 1e-4)):
    assert ms(step) == pytest.approx(want), step
  cos = _lr({"name": "warmup_cosine", "warmup": 10, "end_value": 0.0}, 110)
  assert cos(0) == 0.0 and cos(5) == pytest.approx(0.05)
  assert cos(10) == pytest.approx(0.1)
  assert cos(60) == pytest.approx(0.05, abs=1e-6)  # Halfway down.
  assert cos(110) == pytest.approx(0.0, abs=1e-7)
  lin = _lr({"name": "linear", "warmup": 0, "end_value": 0.02}, 100)
  assert lin(0) == pytest.approx(0.1) and lin(50) == pytest.approx(0.06)
  with pytest.raises(UserError, match="boundaries"):
    _lr({"name": "multistep", "boundaries": (20, 10)}, 100)
  with pytest.raises(UserError, match="warmup is 200 steps"):
    _lr({"name": "warmup_cosine", "warmup": 2, "unit": "epochs"}, 150, 100)
  with pytest.raises(UserError, match="unknown key"):
    _lr({"name": "linear", "gamma": 3}, 100)


def _params():
  m = models.build(ml_collections.ConfigDict(
      dict(name="cifar_resnet", depth=8, widths=(2, 2, 2, 2))), {"t": 3})
  return m.init(jax.random.key(0), jnp.zeros((1, 6, 6, 1)))["params"]


def test_weight_decay_reaches_kernels_only():
  params = _params()
  zero = jax.tree.map(jnp.zeros_like, params)
  for name in ("sgd", "adamw"):
    tx = optim.make_optimizer(dict(name=name, learning_rate=0.5,
                                   weight_decay=0.1))
    updates, _ = tx.update(zero, tx.init(params), params)
    flat = jax.tree_util.tree_flatten_with_path(updates)[0]
    for path, u in flat:
      leaf = path[-1].key
      if leaf == "kernel":  # sgd: -lr wd w; adamw: -lr wd w, decoupled.
        np.testing.assert_allclose(
            u, -0.05 * _at(params, path), rtol=1e-5, err_msg=name)
      else:  # Biases, BatchNorm scales and offsets.
        assert leaf in ("bias", "scale") and not np.any(u), (name, path)


def _at(tree, path):
  for k in path:
    tree = tree[k.key]
  return tree


def test_clipping_and_optimizer_arguments():
  params = {"w": jnp.ones((4,))}
  tx = optim.make_optimizer(dict(name="sgd", learning_rate=1.0,
                                 clip_norm=0.5, momentum=0.9, nesterov=True))
  updates, _ = tx.update({"w": jnp.full((4,), 10.0)}, tx.init(params), params)
  # Clipped to norm 0.5 first; nesterov's first update is (1 + m) g.
  np.testing.assert_allclose(np.linalg.norm(updates["w"]), 0.5 * 1.9,
                             rtol=1e-6)
  with pytest.raises(UserError, match="does not take"):
    optim.make_optimizer(dict(name="adam", learning_rate=1.0, momentum=0.9))


def test_label_smoothing_matches_numpy():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(6, 5)).astype(np.float32) * 3
  y = np.array([0, 4, -1, 2, 1, 3], np.int32)
  lp = np_log_softmax(z)
  want = 0.9 * -lp[np.arange(6), np.maximum(y, 0)] + 0.1 * -lp.mean(-1)
  np.testing.assert_allclose(losses.cross_entropy(z, y, 0.1),
                             np.where(y >= 0, want, 0.0), rtol=1e-5)
  bits = np.array([[1, 0], [0, 1]], np.int32)
  zz = z[:2, :2]
  t = bits * 0.8 + 0.1  # e = 0.2.
  ls = -np.logaddexp(0, -zz.astype(np.float64))
  ls_neg = -np.logaddexp(0, zz.astype(np.float64))
  np.testing.assert_allclose(losses.binary_cross_entropy(zz, bits, 0.2),
                             -np.sum(t * ls + (1 - t) * ls_neg, -1),
                             rtol=1e-5)


TASKS = (objectives.TaskSpec("a", 3, temperature=2.0, alpha=0.5),
         objectives.TaskSpec("b", 2, weight=0.5, temperature=4.0, alpha=0.9))


def _one_step(one_device_mesh, batch, accumulate, weighting="fixed",
              steps=1, ema=0.0, objective="distill"):
  model = models.build(ml_collections.ConfigDict(
      dict(name="patch_cnn", channels=(4,), dense=16)), {"a": 3, "b": 2})
  net = models.Net(model)
  tx = optim.make_optimizer(dict(name="sgd", learning_rate=0.1,
                                 momentum=0.9))
  obj = objectives.OBJECTIVES.get(objective)()
  w = weighting_lib.make(weighting, None, ("a", "b"),
                         lambda p: jax.tree.map(lambda _: True, p),
                         lambda p: jax.tree.map(lambda _: True, p),
                         weights={"a": 1.0, "b": 0.5})
  place = placement.Jit(one_device_mesh)

  state = place.init(step_lib.make_init(
      net, tx, (6, 6, 1), lambda p: {"weighting": w.init(p)}, ema > 0),
                     jax.random.key(0))
  step = place.compile(lambda ax: step_lib.make_train_step(
      net, tx, obj, TASKS, w, axis_name=ax, accumulate=accumulate, ema=ema),
                       state)
  history = [jax.device_get(state.params)]
  for _ in range(steps):
    state, metrics = step(state, place.put_batch(batch), jax.random.key(1))
    history.append(jax.device_get(state.params))
  return jax.device_get(state), jax.device_get(metrics), history


@pytest.mark.parametrize("weighting", ["fixed", "pcgrad", "uncertainty"])
def test_accumulation_equals_one_large_batch(one_device_mesh, toy_split,
                                             weighting):
  """4 micro-batches of 4 = one batch of 16: the same update, metrics and
  weighting state, whatever the weighting (it sees the same loss
  function). Task a's labels are partial and the supervised terms count
  labelled rows, so the micro-batches count 2, 3, 3 and 2 rows: averaging
  their means would not give the batch's mean."""
  split = toy_split()
  rng = np.random.default_rng(1)
  from mtkd.data import streams
  batch = streams.Gather(split, split.labels)(np.arange(16))
  batch["teacher"] = {"a": rng.normal(size=(16, 1, 3)).astype(np.float32),
                      "b": rng.normal(size=(16, 1, 2)).astype(np.float32)}
  big = _one_step(one_device_mesh, batch, 1, weighting, steps=2,
                  objective="supervised")
  acc = _one_step(one_device_mesh, batch, 4, weighting, steps=2,
                  objective="supervised")
  for a, b in zip(jax.tree.leaves(big[:2]), jax.tree.leaves(acc[:2]),
                  strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
  with pytest.raises(UserError, match="multiple of the 1 data shard"):
    from mtkd.train import sharding
    sharding.check_batch_size(16, one_device_mesh, "b", accumulate=3)


def test_ema_follows_the_recurrence(one_device_mesh, toy_split):
  split = toy_split()
  from mtkd.data import streams
  batch = streams.Gather(split, split.labels)(np.arange(16))
  batch["teacher"] = {t: np.zeros((16, 1, n), np.float32)
                      for t, n in (("a", 3), ("b", 2))}
  state, _, history = _one_step(one_device_mesh, batch, 1, steps=3, ema=0.8)
  want = history[0]
  for p in history[1:]:
    want = jax.tree.map(lambda e, q: 0.8 * e + 0.2 * q, want, p)
  for a, b in zip(jax.tree.leaves(state.extra["ema"]), jax.tree.leaves(want),
                  strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_recipe_run_end_to_end_and_resumes(tmp_path, run_mtkd):
  """SGD + nesterov, warm-up cosine in epochs, weight decay, clipping,
  label smoothing, accumulation and EMA in one pipeline; the EMA models
  are evaluated as their own rows; a re-run restores every stage."""
  from configs import quickstart
  c = quickstart.get_config("smoke")
  c.data.name = "digits"
  c.teacher.steps = c.student.steps = 10
  c.teacher.model = dict(name="mlp", hidden=(16,))
  c.student.optimizer = dict(
      name="sgd", learning_rate=0.05, momentum=0.9, nesterov=True,
      weight_decay=5e-4, clip_norm=1.0,
      schedule=dict(name="warmup_cosine", unit="epochs", warmup=0.1))
  c.student.label_smoothing, c.student.accumulate = 0.1, 2
  c.student.ema = 0.9
  results = run_mtkd(c, tmp_path)
  assert set(results["digit"]) == {"teacher", "baseline", "baseline_ema",
                                   "student", "student_ema"}
  assert results["digit"]["student_ema"] != results["digit"]["student"]
  assert run_mtkd(c, tmp_path) == results
  c.student.ema = 0.5  # A result-affecting setting: the resume is refused.
  with pytest.raises(UserError, match="student.ema"):
    run_mtkd(c, tmp_path)
  assert dataclasses.fields(objectives.TaskSpec)[-1].name == "label_smoothing"
  assert optax  # Used through make_optimizer.


def test_flip_and_padding_for_the_cifar_recipe():
  from mtkd.data import augment, builtin, datasets
  x = np.arange(2 * 3 * 4 * 1, dtype=np.float32).reshape(2, 3, 4, 1)
  x = np.repeat(x, 32, axis=0)
  out = np.asarray(augment.horizontal_flip()(jnp.asarray(x),
                                             jax.random.key(0)))
  flipped = np.array([np.array_equal(o, a[:, ::-1]) for o, a in zip(
      out, x, strict=True)])
  kept = np.array([np.array_equal(o, a) for o, a in zip(out, x, strict=True)])
  assert np.all(flipped ^ kept) and 0 < flipped.sum() < len(x)
  ds = datasets.pad_images(builtin.digits(None), 12)
  assert ds.train.x.shape[1:] == (12, 12, 1)
  np.testing.assert_array_equal(ds.train.x[:, 2:10, 2:10],
                                builtin.digits(None).train.x)
  assert not ds.train.x[:, :2].any() and not ds.train.x[:, 10:].any()


def test_feature_mse_is_the_mean_over_elements():
  rng = np.random.default_rng(3)
  s, t = rng.normal(size=(2, 4, 4, 3, 5)).astype(np.float32)
  np.testing.assert_allclose(losses.feature_mse(s, t),
                             ((s - t) ** 2).reshape(4, -1).mean(-1),
                             rtol=1e-6)

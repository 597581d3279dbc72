"""Train step purity, sharding invariance, and exact resume of `fit`."""

import os

import jax
import ml_collections
import numpy as np
import pytest

from mtkd import models, objectives, sharding, train
from mtkd.data import datasets, pipeline
from mtkd.errors import UserError
from mtkd.loop import Stage, fit

TASKS = (objectives.TaskSpec("a", 3, temperature=2.0, alpha=0.5),
         objectives.TaskSpec("b", 2, weight=0.5, temperature=4.0, alpha=0.9))


def _data(n=64):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n, 6, 6, 1)).astype(np.float32)
  labels = {"a": rng.integers(0, 3, n).astype(np.int32),
            "b": rng.integers(0, 2, n).astype(np.int32)}
  labels["a"][::3] = -1
  return datasets.Split(x, labels, np.arange(n))


def _batch(split, teacher=True):
  rng = np.random.default_rng(1)
  b = pipeline.Gather(split, split.labels)(np.arange(16))
  if teacher:
    b["teacher"] = {"a": rng.normal(size=(16, 3)).astype(np.float32),
                    "b": rng.normal(size=(16, 2)).astype(np.float32)}
  return b


def _setup(mesh, model_cfg=None):
  model = models.build(ml_collections.ConfigDict(
      model_cfg or dict(name="patch_cnn", channels=(4,), dense=8)),
      {"a": 3, "b": 2})
  tx = train.make_optimizer(ml_collections.ConfigDict(
      dict(name="adam", learning_rate=1e-2)))
  state = train.init_state(model, tx, (6, 6, 1), jax.random.key(0), mesh)
  step = train.compile_train_step(
      train.make_train_step(model, tx, objectives.distill, TASKS), mesh)
  return state, step


def _run(mesh, n_steps=3):
  split = _data()
  state, step = _setup(mesh)
  batch = sharding.put_batch(_batch(split), mesh)
  metrics = None
  for _ in range(n_steps):
    state, metrics = step(state, batch, jax.random.key(1))
  return jax.device_get(state.params), train.metric_means(
      jax.device_get(metrics))


def test_step_is_pure():
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  split = _data()
  state, step = _setup(mesh)
  host_state = jax.device_get(state)
  batch = sharding.put_batch(_batch(split), mesh)
  outs = []
  for _ in range(2):  # State is donated: rebuild it from the host copy.
    s = jax.device_put(host_state, sharding.replicated(mesh))
    new, m = step(s, batch, jax.random.key(7))
    outs.append(jax.device_get((new, m)))
  for x, y in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1]),
                  strict=True):
    np.testing.assert_array_equal(x, y)
  assert int(outs[0][0].step) == 1
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b),
                         host_state.params, outs[0][0].params)
  assert all(jax.tree.leaves(changed))  # Every parameter was updated.


def test_one_device_and_eight_device_mesh_agree():
  assert jax.device_count() == 8
  p1, m1 = _run(sharding.make_mesh(devices=jax.devices()[:1]))
  p8, m8 = _run(sharding.make_mesh())
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  for k in m1:
    np.testing.assert_allclose(m1[k], m8[k], rtol=1e-5, atol=1e-6)


def test_batch_size_must_divide_data_shards():
  with pytest.raises(UserError, match="multiple of the 8 data shard"):
    sharding.check_batch_size(12, sharding.make_mesh(), "batch_size")


def test_mesh_config_errors():
  with pytest.raises(UserError, match="no 'data' axis"):
    sharding.make_mesh([("model", -1)])
  with pytest.raises(UserError, match="does not fit"):
    sharding.make_mesh([("data", 3)])
  mesh = sharding.make_mesh([("data", 4), ("model", -1)])
  assert dict(mesh.shape) == {"data": 4, "model": 2}


class _Interrupt(Exception):
  pass




def _stage(tmp_path, stream, name="s"):
  model = models.build(ml_collections.ConfigDict(
      dict(name="mlp", hidden=(8,))), {"a": 3, "b": 2})
  return Stage(
      name=name, directory=str(tmp_path / name), model=model,
      tx=train.make_optimizer(ml_collections.ConfigDict(
          dict(name="adam", learning_rate=1e-2))),
      objective=objectives.supervised, tasks=TASKS, stream=stream,
      num_steps=10, batch_size=8, seed=3, input_shape=(6, 6, 1),
      config={"lr": 1e-2}, log_every=2, checkpoint_every=3)


def test_fit_resumes_exactly_after_a_crash(tmp_path):
  mesh = sharding.make_mesh()
  split = _data()
  stream = pipeline.train_stream(split, split.labels, 8, seed=0)
  straight = fit(_stage(tmp_path, stream, "straight"), mesh)

  crashed = {"done": False}

  def crash_at_step_7(batch):
    if not crashed["done"] and np.array_equal(batch["ids"], stream[7]["ids"]):
      crashed["done"] = True
      raise _Interrupt
    return batch

  stage = _stage(tmp_path, stream.map(crash_at_step_7), "resumed")
  with pytest.raises(_Interrupt):
    fit(stage, mesh)
  ckpts = sorted(os.listdir(tmp_path / "resumed" / "checkpoints"))
  assert ckpts == ["3", "6"]
  resumed = fit(stage, mesh)  # Resumes from step 6.
  for a, b in zip(jax.tree.leaves(jax.device_get(straight)),
                  jax.tree.leaves(jax.device_get(resumed)), strict=True):
    np.testing.assert_array_equal(a, b)
  # A finished stage is restored, not retrained, and a changed config refused.
  again = fit(stage, mesh)
  assert int(again.step) == 10
  changed = _stage(tmp_path, stream, "resumed")
  changed = Stage(**{**changed.__dict__, "config": {"lr": 1.0}})
  with pytest.raises(UserError, match="differing keys: lr"):
    fit(changed, mesh)


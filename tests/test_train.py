"""Train step purity, sharding invariance, and exact resume of `fit`."""

import os

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mtkd import models, objectives, parallel, sharding, train
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
    b["teacher"] = {"a": rng.normal(size=(16, 1, 3)).astype(np.float32),
                    "b": rng.normal(size=(16, 1, 2)).astype(np.float32)}
  return b


def _setup(strategy, model_cfg=None):
  model = models.build(ml_collections.ConfigDict(
      model_cfg or dict(name="patch_cnn", channels=(4,), dense=64)),
      {"a": 3, "b": 2})
  tx = train.make_optimizer(ml_collections.ConfigDict(
      dict(name="adam", learning_rate=1e-2)))
  net = models.Net(model)
  state = strategy.init(train.make_init(net, tx, (6, 6, 1)),
                        jax.random.key(0))
  step = strategy.compile(lambda axis: train.make_train_step(
      net, tx, objectives.OBJECTIVES.get("distill")(None), TASKS,
      axis_name=axis), state)
  return state, step


def _run(strategy, n_steps=4):
  """n steps on distinct batches; labels are partial, so per-device label
  counts differ and only exact global reductions agree across layouts."""
  split = _data()
  state, step = _setup(strategy)
  state = strategy.to_device(state)
  metrics = None
  for k in range(n_steps):
    batch = _batch(split.take(np.roll(np.arange(64), 16 * k)))
    state, metrics = step(state, strategy.put_batch(batch), jax.random.key(1))
  state = strategy.from_device(state)
  return state, train.metric_means(strategy.metrics_to_host(metrics))


def _mesh(*axes, n=8):
  return sharding.make_mesh(axes or (("data", -1),), jax.devices()[:n])


def test_step_is_pure():
  strategy = parallel.Jit(_mesh(n=1))
  split = _data()
  state, step = _setup(strategy)
  host_state = jax.device_get(state)
  batch = strategy.put_batch(_batch(split))
  outs = []
  for _ in range(2):  # State is donated: rebuild it from the host copy.
    s = jax.device_put(host_state, sharding.replicated(strategy.mesh))
    new, m = step(s, batch, jax.random.key(7))
    outs.append(jax.device_get((new, m)))
  for x, y in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1]),
                  strict=True):
    np.testing.assert_array_equal(x, y)
  assert int(outs[0][0].step) == 1
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b),
                         host_state.params, outs[0][0].params)
  assert all(jax.tree.leaves(changed))  # Every parameter was updated.


@pytest.mark.parametrize("name,make", [
    ("jit8", lambda: parallel.Jit(_mesh())),
    ("pmap8", lambda: parallel.Pmap(_mesh())),
    ("fsdp4x2", lambda: parallel.Jit(_mesh(("data", 4), ("fsdp", 2)),
                                     fsdp_min_size=64)),
])
def test_layouts_match_one_device_jit(name, make):
  assert jax.device_count() == 8
  s1, m1 = _run(parallel.Jit(_mesh(n=1)))
  s2, m2 = _run(make())
  assert int(s2.step) == 4
  for a, b in zip(jax.tree.leaves(jax.device_get(s1)),
                  jax.tree.leaves(jax.device_get(s2)), strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
  assert m1.keys() == m2.keys()
  for k in m1:
    np.testing.assert_allclose(m1[k], m2[k], rtol=2e-5, atol=2e-6, err_msg=k)


def test_fsdp_shards_large_arrays_only():
  strategy = parallel.Jit(_mesh(("data", 2), ("fsdp", 4)), fsdp_min_size=256)
  state, _ = _setup(strategy)
  trunk = state.params["model"]["trunk"]
  dense = trunk["Dense_1"]["kernel"]  # [36, 64]: 2304 >= 256.
  assert dense.sharding.spec == P(None, "fsdp")
  assert dense.addressable_shards[0].data.shape == (36, 16)
  mu = state.opt_state[0].mu["model"]["trunk"]["Dense_1"]["kernel"]
  assert mu.sharding.spec == P(None, "fsdp")  # Optimizer state follows.
  bias = trunk["Dense_1"]["bias"]  # 64 < 256: replicated.
  assert bias.sharding.spec == P()
  assert sharding.data_shards(strategy.mesh) == 8


def test_pmap_rejects_fsdp_mesh():
  with pytest.raises(UserError, match="pmap"):
    parallel.Pmap(_mesh(("data", 4), ("fsdp", 2)))


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
      name=name, directory=str(tmp_path / name), net=models.Net(model),
      tx=train.make_optimizer(ml_collections.ConfigDict(
          dict(name="adam", learning_rate=1e-2))),
      objective=objectives.OBJECTIVES.get("supervised")(None), tasks=TASKS, stream=stream,
      num_steps=10, batch_size=8, seed=3, input_shape=(6, 6, 1),
      config={"lr": 1e-2}, log_every=2, checkpoint_every=3)


def test_fit_resumes_exactly_after_a_crash(tmp_path):
  strategy = parallel.Jit(sharding.make_mesh())
  split = _data()
  stream = pipeline.train_stream(split, split.labels, 8, seed=0)
  straight = fit(_stage(tmp_path, stream, "straight"), strategy)

  crashed = {"done": False}

  def crash_at_step_7(batch):
    if not crashed["done"] and np.array_equal(batch["ids"], stream[7]["ids"]):
      crashed["done"] = True
      raise _Interrupt
    return batch

  stage = _stage(tmp_path, stream.map(crash_at_step_7), "resumed")
  with pytest.raises(_Interrupt):
    fit(stage, strategy)
  ckpts = sorted(os.listdir(tmp_path / "resumed" / "checkpoints"))
  assert ckpts == ["3", "6"]
  resumed = fit(stage, strategy)  # Resumes from step 6.
  for a, b in zip(jax.tree.leaves(jax.device_get(straight)),
                  jax.tree.leaves(jax.device_get(resumed)), strict=True):
    np.testing.assert_array_equal(a, b)
  # A finished stage is restored, not retrained, and a changed config refused.
  again = fit(stage, strategy)
  assert int(again.step) == 10
  changed = _stage(tmp_path, stream, "resumed")
  changed = Stage(**{**changed.__dict__, "config": {"lr": 1.0}})
  with pytest.raises(UserError, match="differing keys: lr"):
    fit(changed, strategy)


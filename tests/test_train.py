"""Train step purity, sharding invariance, and exact resume of `fit`."""

import dataclasses
import json
import os

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mtkd import models
from mtkd.data import streams
from mtkd.errors import UserError
from mtkd.methods import objectives
from mtkd.store import layout
from mtkd.train import optim, placement, sharding
from mtkd.train import step as step_lib
from mtkd.train.loop import TrainJob, fit
from mtkd.train.prefetch import prefetch_to_device

TASKS = (objectives.TaskSpec("a", 3, temperature=2.0, alpha=0.5),
         objectives.TaskSpec("b", 2, weight=0.5, temperature=4.0, alpha=0.9))


def _batch(split, teacher=True, sparse=False):
  rng = np.random.default_rng(1)
  b = streams.Gather(split, split.labels)(np.arange(16))
  if teacher:
    b["teacher"] = {"a": rng.normal(size=(16, 1, 3)).astype(np.float32),
                    "b": rng.normal(size=(16, 1, 2)).astype(np.float32)}
  if sparse:  # Task a as a bucket-mode top-2 triple (mtkd.store.sparse).
    b["teacher"]["a"] = {
        "values": rng.normal(size=(16, 1, 2)).astype(np.float32),
        "indices": np.stack([rng.permutation(3)[:2] for _ in range(16)]
                            )[:, None].astype(np.int32),
        "tail": rng.uniform(0.05, 0.5, (16, 1)).astype(np.float32)}
  return b


def _setup(place, model_cfg=None):
  model = models.build(ml_collections.ConfigDict(
      model_cfg or dict(name="patch_cnn", channels=(4,), dense=64)),
      {"a": 3, "b": 2})
  tx = optim.make_optimizer(ml_collections.ConfigDict(
      dict(name="adam", learning_rate=1e-2)))
  net = models.Net(model)
  state = place.init(step_lib.make_init(net, tx, (6, 6, 1)),
                        jax.random.key(0))
  step = place.compile(lambda axis: step_lib.make_train_step(
      net, tx, objectives.OBJECTIVES.get("distill")(), TASKS,
      axis_name=axis), state)
  return state, step


def _run(place, split, n_steps=4, model_cfg=None, sparse=False):
  """n steps on distinct batches; labels are partial, so per-device label
  counts differ and only exact global reductions agree across layouts."""
  state, step = _setup(place, model_cfg)
  state = place.to_device(state)
  metrics = None
  for k in range(n_steps):
    batch = _batch(split.take(np.roll(np.arange(64), 16 * k)), sparse=sparse)
    state, metrics = step(state, place.put_batch(batch), jax.random.key(1))
  state = place.from_device(state)
  return state, step_lib.metric_means(place.metrics_to_host(metrics))


def _mesh(*axes, n=8):
  return sharding.make_mesh(axes or (("data", -1),), jax.devices()[:n])


def test_step_is_pure(toy_split):
  place = placement.Jit(_mesh(n=1))
  split = toy_split()
  state, step = _setup(place)
  host_state = jax.device_get(state)
  batch = place.put_batch(_batch(split))
  outs = []
  for _ in range(2):  # State is donated: rebuild it from the host copy.
    s = jax.device_put(host_state, sharding.replicated(place.mesh))
    new, m = step(s, batch, jax.random.key(7))
    outs.append(jax.device_get((new, m)))
  for x, y in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1]),
                  strict=True):
    np.testing.assert_array_equal(x, y)
  assert int(outs[0][0].step) == 1
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b),
                         host_state.params, outs[0][0].params)
  assert all(jax.tree.leaves(changed))  # Every parameter was updated.


BATCHNORM = dict(name="cifar_resnet", depth=8, widths=(4, 4, 8, 8))


@pytest.mark.parametrize("model_cfg", [None, BATCHNORM],
                         ids=["patch_cnn", "batchnorm"])
@pytest.mark.parametrize("name,make", [
    ("jit8", lambda: placement.Jit(_mesh())),
    ("pmap8", lambda: placement.Pmap(_mesh())),
    ("fsdp4x2", lambda: placement.Jit(_mesh(("data", 4), ("fsdp", 2)),
                                     fsdp_min_size=64)),
])
def test_layouts_match_one_device_jit(name, make, toy_split, model_cfg):
  """Parameters, optimizer state, metrics and (BatchNorm) running
  statistics agree: under pmap, BatchNorm normalises over the device axis,
  so its statistics are the global batch's, as under jit."""
  assert jax.device_count() == 8
  s1, m1 = _run(placement.Jit(_mesh(n=1)), toy_split(), model_cfg=model_cfg)
  s2, m2 = _run(make(), toy_split(), model_cfg=model_cfg)
  assert int(s2.step) == 4
  assert bool(s1.model_state) == (model_cfg is not None)
  for a, b in zip(jax.tree.leaves(jax.device_get(s1)),
                  jax.tree.leaves(jax.device_get(s2)), strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
  assert m1.keys() == m2.keys()
  for k in m1:
    np.testing.assert_allclose(m1[k], m2[k], rtol=2e-5, atol=2e-6, err_msg=k)


def test_sparse_teacher_pmap_matches_jit(toy_split):
  """A sparse cached teacher (made dense inside the step) gives the same
  update under pmap on 8 devices as under jit on one (and is read: its KD
  loss differs from the dense teacher's it replaced)."""
  s1, m1 = _run(placement.Jit(_mesh(n=1)), toy_split(), sparse=True)
  s2, m2 = _run(placement.Pmap(_mesh()), toy_split(), sparse=True)
  for a, b in zip(jax.tree.leaves(jax.device_get(s1)),
                  jax.tree.leaves(jax.device_get(s2)), strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
  for k in m1:
    np.testing.assert_allclose(m1[k], m2[k], rtol=2e-5, atol=2e-6, err_msg=k)
  assert m1["a/kd"] != pytest.approx(
      _run(placement.Jit(_mesh(n=1)), toy_split())[1]["a/kd"])


def test_fsdp_shards_large_arrays_only():
  place = placement.Jit(_mesh(("data", 2), ("fsdp", 4)), fsdp_min_size=256)
  state, _ = _setup(place)
  trunk = state.params["model"]["trunk"]
  dense = trunk["Dense_1"]["kernel"]  # [36, 64]: 2304 >= 256.
  assert dense.sharding.spec == P(None, "fsdp")
  assert dense.addressable_shards[0].data.shape == (36, 16)
  mu = state.opt_state[0].mu["model"]["trunk"]["Dense_1"]["kernel"]
  assert mu.sharding.spec == P(None, "fsdp")  # Optimizer state follows.
  bias = trunk["Dense_1"]["bias"]  # 64 < 256: replicated.
  assert bias.sharding.spec == P()
  assert sharding.data_shards(place.mesh) == 8


def test_pmap_rejects_fsdp_mesh():
  with pytest.raises(UserError, match="pmap"):
    placement.Pmap(_mesh(("data", 4), ("fsdp", 2)))


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




def _logged(directory):
  with open(layout.metrics(str(directory))) as f:
    return [json.loads(line) for line in f]


def _crash_once_at(stream, step: int):
  """A map fn that raises _Interrupt the first time batch `step` passes."""
  crashed = {"done": False}

  def crash(batch):
    if not crashed["done"] and np.array_equal(batch["ids"],
                                              stream[step]["ids"]):
      crashed["done"] = True
      raise _Interrupt
    return batch
  return crash


@pytest.mark.parametrize("prefetch,model,job", [
    (0, None, {}), (2, None, {}),
    (0, BATCHNORM, dict(accumulate=2, ema=0.9))],
                         ids=["mlp", "mlp-prefetch", "batchnorm-acc-ema"])
def test_fit_resumes_exactly_after_a_crash(tmp_path, prefetch, model, job,
                                           monkeypatch, toy_split, toy_job,
                                           one_device_mesh):
  """Crash at step 7, resume from checkpoint 6: same parameters (and
  BatchNorm statistics, the EMA, with accumulation) and logged metrics as
  a straight run. With `prefetch`, the batches come through
  `prefetch_to_device` and the error is raised in its thread."""
  from mtkd.train import loop
  made = []

  def spy(*args, **kwargs):  # The loop must really go through the thread.
    made.append(args[2])
    return prefetch_to_device(*args, **kwargs)

  monkeypatch.setattr(loop, "prefetch_to_device", spy)
  place = placement.Jit(one_device_mesh)
  split = toy_split()
  stream = streams.train_stream(split, split.labels, 8, seed=0)
  straight = fit(toy_job(tmp_path, stream, "straight", model, **job), place)
  stage = dataclasses.replace(
      toy_job(tmp_path, stream.map(_crash_once_at(stream, 7)), "resumed",
              model, **job),
      prefetch=prefetch)
  with pytest.raises(_Interrupt):
    fit(stage, place)
  ckpts = sorted(os.listdir(tmp_path / "resumed" / "checkpoints"))
  assert ckpts == ["3", "6"]
  resumed = fit(stage, place)  # Resumes from step 6.
  for a, b in zip(jax.tree.leaves(jax.device_get(straight)),
                  jax.tree.leaves(jax.device_get(resumed)), strict=True):
    np.testing.assert_array_equal(a, b)
  assert _logged(tmp_path / "resumed") == _logged(tmp_path / "straight")
  assert made == ([prefetch] * 2 if prefetch else [])  # Crashed + resumed.
  # A finished stage is restored, not retrained, and a changed config refused.
  again = fit(stage, place)
  assert int(again.step) == 10
  changed = toy_job(tmp_path, stream, "resumed", model, **job)
  changed = TrainJob(**{**changed.__dict__, "config": {"lr": 1.0}})
  with pytest.raises(UserError, match="differing keys: lr"):
    fit(changed, place)


@pytest.mark.parametrize("devices", [1, 8])
def test_accumulate_sums_with_separate_resets(devices):
  """loop.accumulate against numpy: the log sums reset every 3 steps, the
  since-save loss every 4, as in the loop; with 8 devices the metrics carry
  pmap's leading device axis."""
  from mtkd.train.loop import accumulate
  rng = np.random.default_rng(0)
  shape = (devices,) if devices > 1 else ()
  steps = [{"loss": (rng.normal(size=shape), np.ones(shape)),
            "a/acc": (rng.normal(size=shape), rng.integers(1, 5, shape))}
           for _ in range(10)]
  place = (jax.pmap(lambda t: t, devices=jax.devices()[:devices])
           if devices > 1 else jax.device_put)
  sums = since = None
  ref_sums = ref_since = None
  for k, m in enumerate(steps):
    sums, since = accumulate(sums, since, place(m))
    ref_sums = m if ref_sums is None else jax.tree.map(np.add, ref_sums, m)
    ref_since = (m["loss"] if ref_since is None
                 else jax.tree.map(np.add, ref_since, m["loss"]))
    for got, want in ((sums, ref_sums), (since, ref_since)):
      jax.tree.map(lambda g, w: np.testing.assert_allclose(
          np.asarray(g), w, rtol=1e-5, atol=1e-6), got, want)
    if k % 3 == 2:
      sums = ref_sums = None
    if k % 4 == 3:
      since = ref_since = None


@pytest.mark.parametrize("cfg, shape", [
    (dict(name="mlp", hidden=(16, 8)), (6, 6, 1)),
    (dict(name="patch_cnn", channels=(4,), dense=16), (6, 6, 1)),
    (dict(name="text_cnn", vocab_size=50, embed_dim=8, channels=8,
          hidden=8), (12,)),
    (dict(name="bag_of_embeddings", vocab_size=50, embed_dim=8, hidden=8),
     (12,)),
    (dict(BATCHNORM), (6, 6, 1)),
    (dict(name="wide_resnet", depth=10, widen=1), (6, 6, 1)),
])
def test_bfloat16_compute_keeps_float32_params_and_logits(cfg, shape):
  """`dtype='bfloat16'` changes the trunk's compute only: same parameter
  tree in float32, float32 logits within bf16 rounding of the float32
  model's on the same parameters, bf16 intermediate activations."""
  f32 = models.build(ml_collections.ConfigDict(cfg), {"a": 3})
  bf16 = models.build(ml_collections.ConfigDict(dict(cfg, dtype="bfloat16")),
                      {"a": 3})
  rng = np.random.default_rng(0)
  x = (rng.integers(0, 60, (4, *shape)).astype(np.float32) if len(shape) == 1
       else rng.normal(size=(4, *shape)).astype(np.float32))
  params = f32.init(jax.random.key(0), x)
  params_bf16 = bf16.init(jax.random.key(0), x)
  assert jax.tree.structure(params) == jax.tree.structure(params_bf16)
  assert {p.dtype for p in jax.tree.leaves(params_bf16)} == {np.dtype("float32")}
  want = f32.apply(params, x)["a"]
  got, blocks = bf16.apply(params, x, with_features=True)
  assert got["a"].dtype == np.float32
  assert {b.dtype for k, b in blocks.items() if k != "representation"} == {
      np.dtype(jax.numpy.bfloat16)}
  np.testing.assert_allclose(got["a"], want, rtol=0.05, atol=0.05)
  assert not np.array_equal(got["a"], want)  # The compute did change.

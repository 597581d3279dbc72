"""Replayed augmented views (`mtkd.data.views`): views are pure functions of
(seed, id, view), the step re-renders bit for bit what the teacher saw at
caching time (jit and pmap), and a view-cache pipeline verifies and resumes
exactly."""

import json

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mtkd.data import augment, streams, views
from mtkd.data.datasets import Split
from mtkd.errors import UserError
from mtkd.train import sharding
from mtkd.train import step as step_lib

AUG = augment.make(ml_collections.ConfigDict(
    {"flip": True, "max_shift": 2, "noise": 0.1}))


def test_views_are_pure_functions_of_seed_id_and_view():
  ids = np.arange(1000, 1400)
  v = views.view_index(3, ids, 5, 8)
  perm = np.random.default_rng(0).permutation(len(ids))
  np.testing.assert_array_equal(views.view_index(3, ids[perm], 5, 8), v[perm])
  assert v.min() == 0 and v.max() == 7
  counts = np.bincount(v, minlength=8)
  assert counts.min() > 25  # 400 draws over 8 views: ~50 each.
  assert (views.view_index(3, ids, 6, 8) != v).mean() > 0.8  # Per epoch.
  assert (views.view_index(4, ids, 5, 8) != v).mean() > 0.8  # Per seed.
  s = views.view_seed(0, ids, v)
  assert s.dtype == np.int32 and (s >= 0).all()
  np.testing.assert_array_equal(views.view_seed(0, ids[perm], v[perm]),
                                s[perm])
  assert len(np.unique(views.view_seed(0, np.repeat(ids, 8), np.tile(
      np.arange(8), len(ids))))) == 8 * len(ids)
  np.testing.assert_array_equal(views.view_ids(ids, v, 8), ids * 8 + v)


def _images(n=16, seed=0):
  return np.random.default_rng(seed).uniform(size=(n, 8, 8, 1)).astype(
      np.float32)


def test_a_view_does_not_depend_on_its_batch():
  x, seeds = _images(), np.arange(16, dtype=np.int32) * 7919
  render = views.renderer(AUG)
  full = render(x, seeds)
  assert not np.array_equal(full, x)
  perm = np.random.default_rng(1).permutation(16)
  np.testing.assert_array_equal(render(x[perm], seeds[perm]), full[perm])
  np.testing.assert_array_equal(render(x[:5], seeds[:5]), full[:5])


def test_the_step_renders_what_the_cache_saw_under_jit_and_pmap():
  """`step_lib.step_inputs` (the step's augmentation) on a batch carrying
  `view_seed` equals the caching stage's renderer bit for bit: jitted on
  one device, sharded over 8 with jit, and under pmap."""
  x = _images(32, 2)
  seeds = views.view_seed(0, np.arange(32), np.arange(32) % 3)
  want = views.renderer(AUG)(x, seeds)
  batch = {"inputs": x, "view_seed": seeds}
  key = jax.random.key(0)
  one = jax.jit(lambda b: step_lib.step_inputs(b, AUG, key))(batch)
  np.testing.assert_array_equal(np.asarray(one), want)
  mesh = sharding.make_mesh(devices=jax.devices()[:8])
  placed = jax.device_put(batch, NamedSharding(mesh, P("data")))
  sharded = jax.jit(lambda b: step_lib.step_inputs(b, AUG, key))(placed)
  np.testing.assert_array_equal(np.asarray(sharded), want)
  split = jax.tree.map(lambda a: a.reshape(8, 4, *a.shape[1:]), batch)
  pmapped = jax.pmap(lambda b: step_lib.step_inputs(b, AUG, key))(split)
  np.testing.assert_array_equal(np.asarray(pmapped).reshape(want.shape), want)


def test_mixup_views_render_the_same_in_the_step_under_jit_and_pmap():
  x, partners = _images(16, 3), _images(16, 4)
  ids, v = np.arange(16), np.arange(16) % 4
  seeds = views.view_seed(1, ids, v)
  lam = views.mix_weight(1, ids, v)
  assert lam.dtype == np.float32 and 0 <= lam.min() and lam.max() < 1
  want = views.renderer(AUG)(x, seeds, partners, lam)
  a, b = views.renderer(AUG)(x, seeds), views.renderer(AUG)(partners, seeds)
  assert not np.allclose(want, a) and not np.allclose(want, b)
  batch = {"inputs": x, "view_seed": seeds, "mix_inputs": partners,
           "mix_weight": lam}
  key = jax.random.key(0)
  got = jax.jit(lambda b: step_lib.step_inputs(b, AUG, key))(batch)
  np.testing.assert_array_equal(np.asarray(got), want)
  split = jax.tree.map(lambda a: a.reshape(8, 2, *a.shape[1:]), batch)
  pmapped = jax.pmap(lambda b: step_lib.step_inputs(b, AUG, key))(split)
  np.testing.assert_array_equal(np.asarray(pmapped).reshape(want.shape), want)
  rows = views.mix_partner(1, ids, v, 10)
  assert rows.min() >= 0 and rows.max() < 10
  np.testing.assert_array_equal(views.mix_partner(1, ids[::-1], v[::-1], 10),
                                rows[::-1])


def test_replay_stream_joins_the_drawn_view():
  split = Split(_images(10), {"t": np.zeros(10, np.int32)},
                np.arange(100, 110))
  seen = []

  def join(view_ids):
    seen.append(view_ids)
    return {"teacher": {"t": view_ids.astype(np.float32)[:, None]}}

  ds = streams.train_stream(split, split.labels, 4, seed=5, join=join,
                            num_views=3, view_seed=9)
  for k in range(6):  # 24 draws over 10 examples: epochs 0, 1 and 2.
    b = ds[k]
    epochs = np.arange(4 * k, 4 * k + 4) // 10
    v = views.view_index(5, b["ids"], epochs, 3)
    np.testing.assert_array_equal(seen[-1], b["ids"] * 3 + v)
    np.testing.assert_array_equal(b["view_seed"],
                                  views.view_seed(9, b["ids"], v))
    np.testing.assert_array_equal(b["teacher"]["t"][:, 0], seen[-1])


def test_augmented_draws_are_functions_of_seed_id_and_epoch():
  """Without a view cache, an augmented stream's batches carry `aug_seed`
  = epoch_seed(seed, id, epoch) (epochs counted by hand here), and the
  step renders each example from it: a draw's augmentation does not depend
  on the batch it lands in, the step, or jit vs pmap."""
  split = Split(_images(10), {"t": np.zeros(10, np.int32)},
                np.arange(100, 110))
  ds = streams.train_stream(split, split.labels, 4, seed=5,
                            augment_seeds=True)
  assert "aug_seed" not in streams.train_stream(split, split.labels, 4,
                                                seed=5)[0]
  got = {}
  for k in range(6):  # 24 draws over 10 examples: epochs 0, 1 and 2.
    b = ds[k]
    epochs = np.arange(4 * k, 4 * k + 4) // 10
    np.testing.assert_array_equal(b["aug_seed"],
                                  views.epoch_seed(5, b["ids"], epochs))
    inputs = np.asarray(jax.jit(lambda b: step_lib.step_inputs(
        b, AUG, jax.random.key(0)))(b))
    pmapped = jax.pmap(lambda b: step_lib.step_inputs(
        b, AUG, jax.random.key(1)))(jax.tree.map(
            lambda a: a.reshape(4, 1, *a.shape[1:]), b))
    np.testing.assert_array_equal(np.asarray(pmapped).reshape(inputs.shape),
                                  inputs)
    for i, e, x in zip(b["ids"], epochs, inputs, strict=True):
      got.setdefault((int(i), int(e)), []).append(x)
  # Each (id, epoch) drawn once; distinct epochs give distinct views.
  assert all(len(v) == 1 for v in got.values())
  assert not np.array_equal(got[(100, 0)][0], got[(100, 1)][0])
  # The same (id, epoch) alone in a batch of one: the same view.
  alone = {"inputs": split.x[:1],
           "aug_seed": views.epoch_seed(5, np.array([100]), np.array([1]))}
  np.testing.assert_array_equal(np.asarray(jax.jit(
      lambda b: step_lib.step_inputs(b, AUG, jax.random.key(9)))(alone))[0],
      got[(100, 1)][0])


def _config(k=2, augment_cfg=None, mixup=False):
  from configs import cached_views
  c = cached_views.get_config(f"smoke,views={k},mixup={mixup}")
  c.student.augment = augment_cfg or dict(max_shift=1, noise=0.05)
  c.teacher.steps = c.student.steps = 20
  c.checkpoint_every = 10
  return c


def test_view_cache_pipeline_verifies_and_resumes_exactly(tmp_path, run_mtkd,
                                                          resumes_exactly):
  from mtkd.stages import verify
  c = _config()
  w = tmp_path / "run"
  run_mtkd(c, w)
  names = {p.name for p in (w / "cache").iterdir()}
  assert names == {"digit", "digit-views2", "parity", "parity-views2"}
  meta = json.load(open(w / "cache" / "digit-views2" / "train" /
                        "metadata.json"))
  n = meta["num_examples"]
  assert meta["views"] == 2 and n % 2 == 0 and "augment" in meta
  assert verify.verify_workdir(c, str(w)) == []
  resumes_exactly(c, w)
  # Another augmentation is refused, never silently re-used.
  other = _config(augment_cfg=dict(max_shift=2, noise=0.05))
  with pytest.raises(UserError, match="augment"):
    run_mtkd(other, w)


def test_mixup_view_cache_verifies(tmp_path, run_mtkd):
  """Function matching from a cache: mixed views cached, replayed, and
  re-derived by `--verify` (partner and weight from (seed, id, view))."""
  from mtkd.stages import verify
  c = _config(mixup=True)
  c.baseline = False
  w = tmp_path / "run"
  results = run_mtkd(c, w)
  assert (w / "cache" / "digit-views2mix" / "train").is_dir()
  assert all(np.isfinite(m["accuracy"]) for r in results.values()
             for m in r.values())
  assert verify.verify_workdir(c, str(w)) == []


@pytest.mark.parametrize("change,match", [
    (dict(mixup=True, views=0), "config.cache.views is 0"),
    (dict(mixup=True), "config.distill.alpha=1.0"),
])
def test_mixup_config_errors(tmp_path, run_mtkd, change, match):
  c = _config()
  for k, v in change.items():
    c.cache[k] = v
  with pytest.raises(UserError, match=match):
    run_mtkd(c, tmp_path / "w")


def test_views_need_an_augmentation(tmp_path, run_mtkd):
  c = _config()
  c.student.augment = dict(max_shift=0, noise=0.0)
  with pytest.raises(UserError, match="config.student.augment"):
    run_mtkd(c, tmp_path / "w")

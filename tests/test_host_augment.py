"""Host-side augmentation (`mtkd.data.host_augment`): each op against an
independent check, draws as pure functions of (seed, id, epoch or view),
the training stream applying it in Grain's threads, and a view cache
rendered on the host that the student replays bit for bit."""

import json

import ml_collections
import numpy as np
import pytest

from mtkd.data import host_augment, streams, views
from mtkd.data.datasets import Split, to_float
from mtkd.errors import UserError


def _cfg(**kw):
  return ml_collections.ConfigDict(dict(
      dict(flip=False, pad_crop=0,
           resized_crop=dict(scale=(0.0, 0.0), ratio=(3 / 4, 4 / 3)),
           randaugment=dict(num_ops=0, magnitude=9)), **kw))


def _images(n=32, h=12, w=10, c=3, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, h, w, c),
                                              dtype=np.uint8)


def test_all_off_is_none_and_bad_settings_are_errors():
  assert host_augment.make(_cfg()) is None
  with pytest.raises(UserError, match="pad_crop"):
    host_augment.make(_cfg(pad_crop=-1))
  with pytest.raises(UserError, match="magnitude"):
    host_augment.make(_cfg(randaugment=dict(num_ops=2, magnitude=31)))
  with pytest.raises(UserError, match="scale"):
    host_augment.make(_cfg(resized_crop=dict(scale=(0.5, 1.5))))
  with pytest.raises(UserError, match="uint8"):
    host_augment.make(_cfg(flip=True))(np.zeros((2, 4, 4, 3), np.float32),
                                       np.arange(2))


def test_pad_crop_is_a_window_of_the_padded_image():
  x, f = _images(), host_augment.make(_cfg(pad_crop=3))
  out = f(x, np.arange(len(x)))
  offsets = set()
  for xi, oi in zip(x, out, strict=True):
    padded = np.pad(xi, ((3, 3), (3, 3), (0, 0)))
    hits = [(i, j) for i in range(7) for j in range(7)
            if np.array_equal(padded[i:i + 12, j:j + 10], oi)]
    assert hits
    offsets.update(hits)
  assert len(offsets) > 10  # The offsets vary over the seeds.


def test_flip_mirrors_about_half():
  x, f = _images(200), host_augment.make(_cfg(flip=True))
  out = f(x, np.arange(200))
  flipped = [np.array_equal(o, xi[:, ::-1]) for o, xi in zip(out, x,
                                                             strict=True)]
  kept = [np.array_equal(o, xi) for o, xi in zip(out, x, strict=True)]
  assert all(a or b for a, b in zip(flipped, kept, strict=True))
  assert 70 < sum(flipped) < 130


def test_resized_crop_boxes_follow_torchvisions_sampling():
  rng = np.random.default_rng(0)
  for _ in range(300):
    top, left, ch, cw = host_augment.resized_crop_box(rng, 40, 30,
                                                      (0.3, 0.9), (0.75, 1.33))
    assert 0 <= top and top + ch <= 40 and 0 <= left and left + cw <= 30
    assert 0.3 * 1200 - 60 <= ch * cw <= 0.9 * 1200 + 60  # Rounding.
    assert 0.7 < cw / ch < 1.4
  # No box fits (ratio far from the image's): the clamped centre crop.
  assert host_augment.resized_crop_box(rng, 10, 100, (0.9, 1.0),
                                       (1.0, 1.0)) == (0, 45, 10, 10)
  f = host_augment.make(_cfg(resized_crop=dict(scale=(0.2, 0.5))))
  out = f(_images(8), np.arange(8))
  assert out.shape == (8, 12, 10, 3) and out.dtype == np.uint8


@pytest.mark.parametrize("channels", [1, 3])
def test_randaugment_changes_images_deterministically(channels):
  x = _images(24, c=channels)
  f = host_augment.make(_cfg(randaugment=dict(num_ops=2, magnitude=15)))
  out = f(x, np.arange(24))
  assert out.shape == x.shape and out.dtype == np.uint8
  assert sum(not np.array_equal(o, xi) for o, xi in zip(out, x,
                                                        strict=True)) > 12
  np.testing.assert_array_equal(f(x, np.arange(24)), out)


def test_draws_depend_on_the_seed_alone():
  f = host_augment.make(_cfg(flip=True, pad_crop=2, randaugment=dict(
      num_ops=1, magnitude=9), resized_crop=dict(scale=(0.5, 1.0))))
  x, seeds = _images(16), np.arange(16) * 7919
  full = f(x, seeds)
  perm = np.random.default_rng(1).permutation(16)
  np.testing.assert_array_equal(f(x[perm], seeds[perm]), full[perm])
  np.testing.assert_array_equal(f(x[3:4], seeds[3:4])[0], full[3])


def test_the_stream_augments_each_draw_from_seed_id_and_epoch():
  x = _images(10)
  split = Split(x, {"t": np.zeros(10, np.int32)}, np.arange(100, 110))
  f = host_augment.make(_cfg(flip=True, pad_crop=2))
  ds = streams.train_stream(split, split.labels, 4, seed=5, host=f)
  for k in range(6):  # Epochs 0, 1 and 2 over 10 examples.
    b = ds[k]
    epochs = np.arange(4 * k, 4 * k + 4) // 10
    rows = b["ids"] - 100
    want = to_float(f(x[rows], views.epoch_seed(5, b["ids"], epochs)))
    np.testing.assert_array_equal(b["inputs"], want)
    assert "aug_seed" not in b  # Nothing for the step to do.


def test_host_view_cache_verifies_and_replays(tmp_path, run_mtkd):
  """Views rendered on the host only (no in-step augmentation): cached,
  re-derived by --verify, replayed by the student's stream."""
  from configs import cached_views
  from mtkd.stages import verify
  rng = np.random.default_rng(0)
  arrays = {}
  for split, n in (("train", 256), ("test", 64)):
    y = rng.integers(0, 4, n)  # The class sets the brightness.
    arrays[f"x_{split}"] = (rng.integers(0, 60, (n, 8, 8, 1)) + 60 * y[
        :, None, None, None]).astype(np.uint8)
    arrays[f"y_{split}_digit"] = y.astype(np.int32)
  np.savez(tmp_path / "data.npz", **arrays)
  c = cached_views.get_config("smoke,views=2")
  c.data.name, c.data.path = "npz", str(tmp_path / "data.npz")
  c.data.max_train = c.data.max_test = 0
  c.data.num_labeled = 64
  c.student.augment = dict(flip=False, max_shift=0, noise=0.0)
  c.student.host_augment.pad_crop = 1
  c.teacher.steps = c.student.steps = 10
  w = tmp_path / "run"
  results = run_mtkd(c, w)
  assert np.isfinite(results["digit"]["student"]["accuracy"])
  meta = json.load(open(w / "cache" / "digit-views2" / "train" /
                        "metadata.json"))
  assert meta["views"] == 2
  assert verify.verify_workdir(c, str(w)) == []
  # Another host augmentation: the cache is refused, not reused.
  c.student.host_augment.pad_crop = 2
  with pytest.raises(UserError, match="augment"):
    run_mtkd(c, w)


@pytest.mark.parametrize("mixup", [False, True])
def test_replayed_views_are_what_the_cache_rendered(mixup):
  """The student's stream + step on a host-augmented view cache give the
  caching stage's inputs (`views.render_rows`) bit for bit."""
  import jax

  from mtkd.train import step as step_lib
  x = _images(10)
  split = Split(x, {"t": np.zeros(10, np.int32)}, np.arange(100, 110))
  f = host_augment.make(_cfg(flip=True, pad_crop=2))
  ds = streams.train_stream(split, split.labels, 4, seed=5,
                            join=lambda vid: {}, num_views=3, view_seed=9,
                            mixup=mixup, host=f)
  render = views.renderer(None)
  for k in range(4):
    b = ds[k]
    epochs = np.arange(4 * k, 4 * k + 4) // 10
    v = views.view_index(5, b["ids"], epochs, 3)
    want = views.render_rows(render, split, b["ids"] - 100, v, 9, mixup, f)
    got = jax.jit(lambda b: step_lib.step_inputs(b, None, jax.random.key(0)))(
        b)
    np.testing.assert_array_equal(np.asarray(got), want)


def _mix(kind, alpha=1.0):
  return host_augment.mix_spec(_cfg(mix=dict(kind=kind, alpha=alpha)))


def test_mix_plans_are_pure_and_cutmix_lam_is_the_kept_area():
  s = _mix("cutmix")
  seeds = np.arange(200) * 31
  plan = host_augment.mix_plan(s, seeds, 50, 12, 10)
  again = host_augment.mix_plan(s, seeds[::-1], 50, 12, 10)
  np.testing.assert_array_equal(again.partner, plan.partner[::-1])
  assert plan.partner.min() >= 0 and plan.partner.max() < 50
  top, left, bh, bw = plan.box.T
  assert (top >= 0).all() and (top + bh <= 12).all() and (left + bw <= 10).all()
  np.testing.assert_allclose(plan.lam, 1 - bh * bw / 120, rtol=1e-6)
  lam = host_augment.mix_plan(_mix("mixup", 0.2), seeds, 50, 1, 1).lam
  assert (lam >= 0).all() and (lam <= 1).all()
  assert np.mean((lam < 0.1) | (lam > 0.9)) > 0.5  # Beta(0.2, 0.2): U-shaped.


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_the_stream_mixes_each_example_with_its_partner(kind):
  x = _images(10)
  labels = {"t": np.arange(10, dtype=np.int32) % 4}
  split = Split(x, labels, np.arange(100, 110))
  ds = streams.train_stream(split, labels, 4, seed=5, mix=_mix(kind))
  for k in range(3):
    b = ds[k]
    epochs = np.arange(4 * k, 4 * k + 4) // 10
    seeds = views.epoch_seed(5, b["ids"], epochs)
    plan = host_augment.mix_plan(_mix(kind), seeds, 10, 12, 10)
    a, p = to_float(x[b["ids"] - 100]), to_float(x[plan.partner])
    if kind == "mixup":
      lam = plan.lam[:, None, None, None]
      np.testing.assert_allclose(b["inputs"], lam * a + (1 - lam) * p,
                                 rtol=1e-6)
    else:
      for i, (top, left, bh, bw) in enumerate(plan.box):
        want = a[i].copy()
        want[top:top + bh, left:left + bw] = p[i, top:top + bh, left:left + bw]
        np.testing.assert_array_equal(b["inputs"][i], want)
    np.testing.assert_array_equal(b["mix_labels"]["t"],
                                  labels["t"][plan.partner])
    np.testing.assert_array_equal(b["label_lam"], plan.lam)


def test_the_label_loss_mixes_both_labels():
  import jax.numpy as jnp

  from mtkd.methods import objectives
  logits = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
  y, y2 = np.array([0, 1, 2, 1]), np.array([2, 1, 0, -1])
  lam = np.array([0.25, 0.5, 1.0, 0.7], np.float32)
  batch = {"labels": {"t": y}, "mix_labels": {"t": y2}, "label_lam": lam,
           "mask": np.ones(4, np.float32)}
  sup, labelled = objectives.OBJECTIVES.get("supervised")().supervised(
      jnp.asarray(logits), batch, objectives.TaskSpec("t", 3), {})
  logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  ce = -logp[np.arange(4), y]
  ce2 = -logp[np.arange(4), np.maximum(y2, 0)]
  np.testing.assert_allclose(np.asarray(sup)[:3],
                             (lam * ce + (1 - lam) * ce2)[:3], rtol=1e-5)
  # A partner without a label leaves its row out of the label loss.
  np.testing.assert_array_equal(np.asarray(labelled), [1, 1, 1, 0])


def test_mix_settings_are_checked_and_a_teacher_trains_with_cutmix(
    tmp_path, run_mtkd):
  from configs import quickstart
  c = quickstart.get_config("smoke")
  c.data.name = "digits"
  c.teacher.steps = c.student.steps = 10
  c.student.host_augment.mix = dict(kind="mixup", alpha=1.0)
  with pytest.raises(UserError, match="cached teacher logits"):
    run_mtkd(c, tmp_path / "a")
  c.student.host_augment.mix = dict(kind="", alpha=1.0)
  c.teacher.host_augment.mix = dict(kind="cutmix", alpha=1.0)
  results = run_mtkd(c, tmp_path / "b")
  assert np.isfinite(results["digit"]["teacher"]["accuracy"])
  c.data.name = "mnist1d"  # Vectors: no boxes to paste.
  with pytest.raises(UserError, match="cutmix pastes image boxes"):
    run_mtkd(c, tmp_path / "c")

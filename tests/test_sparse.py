"""Sparse teacher caches (`mtkd.store.sparse`, `mtkd.train.teacher_targets`):
each tail mode's target against a float64 numpy reference, the bucket
mode's exact k + 1 bin KL, the sampled mode's unbiased gradient, storage,
resume-safe identity and the errors a wrong temperature gets."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from mtkd.errors import UserError
from mtkd.methods import losses
from mtkd.store import cache, sparse
from mtkd.store.layout import CacheKey, Layout
from mtkd.train import teacher_targets
from tests.references import np_log_softmax

RNG = np.random.default_rng(0)
N, C, K = 64, 30, 5


def _logits(n=N, c=C, scale=3.0):
  return (RNG.normal(size=(n, c)) * scale).astype(np.float32)


def _softmax64(x, t=1.0):
  return np.exp(np_log_softmax(np.asarray(x, np.float64) / t))


def _target(tail, teacher, student, k, t, ids=None):
  """The mode's dense target probabilities, computed by mtkd."""
  ids = np.arange(len(teacher)) if ids is None else ids
  parts = sparse.compress(teacher, ids, k, tail, [t])
  rec = jax.tree.map(lambda x: jnp.asarray(x)[:, None],
                     sparse.record(tail, parts, 0, t))
  z = teacher_targets.teacher_logits(jnp.asarray(student), rec, t)[:, 0]
  return np.asarray(jax.nn.softmax(z / t), np.float64), parts


def _reference(tail, teacher, student, k, t):
  """Float64 numpy: the target each mode's formula (README) defines."""
  p, q = _softmax64(teacher, t), _softmax64(student, t)
  top = np.argsort(-teacher, axis=1, kind="stable")[:, :k]
  on_s = np.zeros_like(p, bool)
  np.put_along_axis(on_s, top, True, 1)
  head = np.where(on_s, p, 0.0)
  if tail == "renormalized":
    return head / head.sum(1, keepdims=True)
  mass = 1 - head.sum(1, keepdims=True)  # bucket
  q_tail = np.where(on_s, 0.0, q)
  return head + mass * q_tail / q_tail.sum(1, keepdims=True)


@pytest.mark.parametrize("tail", ["renormalized", "bucket"])
@pytest.mark.parametrize("t", [1.0, 2.0, 4.0])
def test_top_k_targets_match_reference(tail, t):
  teacher, student = _logits(), _logits()
  got, _ = _target(tail, teacher, student, K, t)
  np.testing.assert_allclose(got, _reference(tail, teacher, student, K, t),
                             atol=2e-6, rtol=1e-4)


def test_bucket_kl_is_the_exact_k_plus_one_bin_kl():
  """Value and gradient of mtkd's T^2 KL against the sparse target equal
  the k + 1 bin KL (the bins S and one rest bin) in float64, differentiated
  by central differences."""
  teacher, student, t, k = _logits(8), _logits(8), 2.0, 4
  parts = sparse.compress(teacher, np.arange(8), k, "bucket", [t])
  rec = jax.tree.map(lambda x: jnp.asarray(x)[:, None],
                     sparse.record("bucket", parts, 0, t))

  def mtkd_loss(s):
    z = teacher_targets.teacher_logits(s, rec, t)
    return losses.softmax_kd(s, z, t).sum()

  def bins_kl(s):  # float64 numpy
    p, q = _softmax64(teacher, t), _softmax64(s, t)
    top = np.asarray(parts[1], np.intp)
    p_s, q_s = np.take_along_axis(p, top, 1), np.take_along_axis(q, top, 1)
    p_r, q_r = 1 - p_s.sum(1), 1 - q_s.sum(1)
    return t * t * float(np.sum(np.sum(p_s * np.log(p_s / q_s), 1)
                                + p_r * np.log(p_r / q_r)))

  s64 = student.astype(np.float64)
  assert float(mtkd_loss(jnp.asarray(student))) == pytest.approx(
      bins_kl(s64), rel=1e-4)
  grad = np.asarray(jax.grad(mtkd_loss)(jnp.asarray(student)))
  eps, numeric = 1e-5, np.zeros_like(s64)
  for i in range(s64.shape[0]):
    for j in range(s64.shape[1]):
      d = np.zeros_like(s64)
      d[i, j] = eps
      numeric[i, j] = (bins_kl(s64 + d) - bins_kl(s64 - d)) / (2 * eps)
  np.testing.assert_allclose(grad, numeric, atol=2e-5)


def test_bucket_stores_the_tail_mass_at_each_temperature():
  x = _logits(20)
  vals, idx, *_ = sparse.top_k(x, K)
  mass = sparse.tail_mass(x, idx, [1.0, 3.0])
  for col, t in enumerate((1.0, 3.0)):
    p = _softmax64(x, t)
    want = 1 - np.take_along_axis(p, np.asarray(idx, np.intp), 1).sum(1)
    np.testing.assert_allclose(mass[:, col], want, rtol=1e-5, atol=1e-7)
  assert np.all(mass[:, 1] > mass[:, 0])  # Softer: more mass in the tail.


def test_sampled_target_is_the_draw_frequencies():
  teacher, student, t, k = _logits(), _logits(), 2.0, 16
  got, (idx, counts) = _target("sampled", teacher, student, k, t)
  assert counts.dtype == np.uint16 and np.all(counts.sum(1) == k)
  want = np.zeros((N, C))
  np.add.at(want, (np.arange(N)[:, None].repeat(k, 1), idx.astype(np.intp)),
            counts / k)
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_draws_are_a_pure_function_of_seed_id_and_draw():
  x, ids = _logits(40), np.arange(100, 140)
  full = sparse.sample(x, ids, 8, 2.0)
  perm = RNG.permutation(40)
  part = sparse.sample(x[perm], ids[perm], 8, 2.0)  # Other order, batching.
  for a, b in zip(full, part, strict=True):
    np.testing.assert_array_equal(a[perm], b)
  other_seed = sparse.sample(x, ids, 8, 2.0, seed=1)
  assert not np.array_equal(full[0], other_seed[0])
  # Zero-probability classes are never drawn.
  masked = x.copy()
  masked[:, :10] = -np.inf
  idx, counts = sparse.sample(masked, ids, 8, 1.0)
  assert np.all(idx[counts > 0] >= 10)


def test_draw_frequencies_follow_the_teacher():
  """Chi-square goodness of fit of 200k draws of one row."""
  x, t, k = _logits(1, 12)[0], 1.5, 50
  ids = np.arange(4000)
  idx, counts = sparse.sample(np.tile(x, (4000, 1)), ids, k, t)
  hits = np.bincount(idx.ravel().astype(np.intp), counts.ravel(), 12)
  expected = _softmax64(x[None], t)[0] * 4000 * k
  keep = expected > 5
  chi2 = float(np.sum((hits[keep] - expected[keep])**2 / expected[keep]))
  assert chi2 < 40.0  # p ~ 1e-4 at 11 degrees of freedom.


def test_sampled_kd_gradient_is_unbiased_and_top_k_modes_are_not():
  """Over many independent draws, the mean sampled KD gradient matches the
  full-logit gradient within 4.5 standard errors per coordinate; the
  renormalized target's gradient is far outside that band."""
  teacher, student, t, k, draws = _logits(1, 20), _logits(1, 20), 2.0, 4, 3000
  rows = np.repeat(teacher, draws, 0)
  s = jnp.asarray(np.repeat(student, draws, 0))

  def grads(tail):
    parts = sparse.compress(rows, np.arange(draws), k, tail, [t])
    rec = jax.tree.map(lambda x: jnp.asarray(x)[:, None],
                       sparse.record(tail, parts, 0, t))
    fn = lambda s: losses.softmax_kd(  # noqa: E731
        s, teacher_targets.teacher_logits(s, rec, t), t).sum()
    return np.asarray(jax.grad(fn)(s), np.float64)

  full = np.asarray(jax.grad(lambda s: losses.softmax_kd(
      s, jnp.asarray(teacher)[:, None], t).sum())(jnp.asarray(student)))[0]
  sampled = grads("sampled")
  mean, se = sampled.mean(0), sampled.std(0) / np.sqrt(draws)
  assert np.all(np.abs(mean - full) <= 4.5 * se + 1e-6), (mean, full, se)
  renorm = grads("renormalized").mean(0)
  assert np.max(np.abs(renorm - full) / (se + 1e-6)) > 10


def test_cache_round_trip_in_each_tail_mode(tmp_path):
  x, ids = _logits(9, 12), np.arange(50, 59)
  meta = {"teacher": "t"}
  for tail in ("renormalized", "bucket", "sampled"):
    temps = {"a": [2.0]} if tail == "sampled" else {"a": [1.0, 2.0]}
    d = str(tmp_path / tail)
    cache.build(d, 9, 4, lambda a, b: (ids[a:b], {"a": x[a:b]}), meta,
                "bfloat16", top_k=3, top_k_names=["a"], tail=tail,
                temperatures=temps)
    storage = cache.storage_meta("bfloat16", 3, ["a"], tail, temps)
    c = cache.LogitCache(d, dict(meta, **storage))
    q = ids[[7, 0, 3]]
    rec = c.teacher_rows(q, {"a": 2.0})["a"]
    parts = sparse.compress(x[[7, 0, 3]], q, 3, tail, temps["a"],
                            rounding=_bf16)
    col = temps["a"].index(2.0)
    want = sparse.record(tail, parts, col, 2.0)
    for key in ("values", "indices", "tail"):
      np.testing.assert_array_equal(rec[key], want[key])
    assert c.lookup(q)["a"].shape == (3, 12)
    if tail != "renormalized":
      with pytest.raises(UserError, match=r"T=3.0.*Fix: add 3.0 to "
                         r"config.cache.temperatures"):
        c.teacher_rows(q, {"a": 3.0})
    # Another tail mode or temperature set is refused, never reused.
    other = cache.storage_meta("bfloat16", 3, ["a"], "uniform")
    with pytest.raises(UserError, match="storage mode"):
      cache.LogitCache(d, dict(meta, **other))


def _bf16(v):
  return np.asarray(v, np.float32).astype(ml_dtypes.bfloat16).astype(
      np.float32)


@pytest.mark.parametrize("args,match", [
    (("float32", 4, ["a"], "topk"), "config.cache.tail is 'topk'"),
    (("float32", 0, ["a"], "bucket"), "top_k is 0"),
    (("float32", 4, ["a"], "sampled", {"a": [1.0, 2.0]}), "one temperature"),
    (("float32", 4, ["a"], "bucket", {}), "needs temperatures"),
])
def test_storage_errors_name_the_fix(args, match):
  with pytest.raises(UserError, match=match):
    cache.storage_meta(*args)


def test_uniform_storage_metadata_is_unchanged():
  """Caches written before the tail modes keep matching."""
  assert cache.storage_meta("float16", 5, ["b", "a"]) == {
      "dtype": "float16", "top_k": 5, "top_k_names": ["a", "b"]}


def test_cache_folder_names_round_trip(tmp_path):
  keys = [CacheKey("multi", "train", "", "float32", 8, "bucket", (1.0, 2.5)),
          CacheKey("a-b", "train", "block_1", "bfloat16", 4, "sampled",
                   (2.0,)),
          CacheKey("m", "train", top_k=3, tail="renormalized"),
          CacheKey("m", "test", top_k=3),
          CacheKey("v", "train", views=4),
          CacheKey("v", "train", "", "bfloat16", 8, "bucket", (2.0,), 2,
                   True)]
  layout = Layout(str(tmp_path))
  for k in keys:
    (tmp_path / "cache" / k.name / k.split).mkdir(parents=True)
  assert {k for k, _ in layout.caches()} == set(keys)
  assert keys[0].name == "multi-top8-bucket-T1_2.5"
  assert keys[-1].name == "v-bfloat16-top8-bucket-T2-views2mix"


@pytest.mark.parametrize("tail", ["bucket", "sampled"])
def test_pipeline_verifies_and_resumes_exactly(tmp_path, run_mtkd, tail,
                                               resumes_exactly):
  """A quickstart smoke run with a sparse train cache: the caches live in
  their own folders, `--verify` re-derives what they store, and a student
  resumed from a mid-run checkpoint ends bit-identical."""
  from configs import quickstart
  from mtkd.stages import verify

  c = quickstart.get_config("smoke")
  c.cache.top_k, c.cache.tail = 3, tail
  c.student.steps = c.teacher.steps = 20
  c.checkpoint_every = 10
  w = tmp_path / "run"
  results = run_mtkd(c, w)
  assert {p.name for p in (w / "cache").iterdir()} == {
      f"{t}-top3{s}" for t in ("left", "right")
      for s in ("", f"-{tail}-T2")}
  assert all(np.isfinite(v) for rows in results.values()
             for m in rows.values() for v in m.values())
  assert verify.verify_workdir(c, str(w)) == []
  resumes_exactly(c, w)


@pytest.mark.parametrize("tail", ["uniform", "bucket", "sampled"])
def test_compress_in_blocks_equals_whole(monkeypatch, tail):
  """Large shards are compressed block by block (bounded memory); the
  stored arrays do not depend on the block size."""
  x = (np.random.default_rng(5).normal(size=(50, 9)) * 3).astype(np.float32)
  ids = np.arange(50) * 7
  temps = [2.0] if tail == "sampled" else [1.0, 2.0]
  whole = sparse.compress(x, ids, 3, tail, temps)
  monkeypatch.setattr(sparse, "_ROWS", 7)
  blocked = sparse.compress(x, ids, 3, tail, temps)
  for a, b in zip(whole, blocked, strict=True):
    np.testing.assert_array_equal(a, b)


def test_sampled_cache_with_more_draws_than_classes(tmp_path):
  """k draws with replacement may exceed the class count (a 2-class task
  beside a 10k-word one in one cache): stored and read back whole."""
  x = np.random.default_rng(6).normal(size=(20, 2)).astype(np.float32)
  cache.build(str(tmp_path), 20, 8, lambda a, b: (np.arange(a, b),
                                                  {"t": x[a:b]}),
              {"teacher": "m"}, "float32", top_k=5, top_k_names=["t"],
              tail="sampled", temperatures={"t": [2.0]})
  c = cache.LogitCache(str(tmp_path), {"teacher": "m"})
  rows = c.teacher_rows(np.arange(20), {"t": 2.0})["t"]
  assert rows["indices"].shape == (20, 5)
  p_hat = np.exp(sparse.dense("sampled", c.stored(np.arange(20), "t"), 2,
                              2.0) / 2.0)
  np.testing.assert_allclose(p_hat.sum(1), 1.0, rtol=1e-6)

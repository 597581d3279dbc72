"""Teacher-logit cache: sharded round trip, id join, resumable builds, and
every mismatch detected."""

import json
import os

import ml_dtypes
import numpy as np
import pytest

from mtkd.errors import UserError
from mtkd.stages import teachers
from mtkd.store import cache, sparse

META = {"teacher": "t", "teacher_fingerprint": "abc",
        "dataset_fingerprint": "def", "split": "train"}
IDS = np.array([5, 3, 9, 1, 7, 4, 8])
RNG = np.random.default_rng(0)
LOGITS = {"a": RNG.normal(size=(7, 3)).astype(np.float32),
          "b": RNG.normal(size=(7, 4)).astype(np.float32)}


class Predict:
  """The teacher stand-in: rows [start, stop) of IDS/LOGITS; counts calls."""

  def __init__(self, fail_at: int | None = None):
    self.calls, self.fail_at = [], fail_at

  def __call__(self, start, stop):
    if start == self.fail_at:
      raise KeyboardInterrupt
    self.calls.append((start, stop))
    return IDS[start:stop], {t: x[start:stop] for t, x in LOGITS.items()}


def _build(directory, shard_size=3, dtype="float32", predict=None, **kw):
  cache.build(str(directory), len(IDS), shard_size, predict or Predict(),
              META, dtype, **kw)
  return str(directory)


@pytest.mark.parametrize("in_memory", [True, False])
def test_round_trip_by_id_across_shards(tmp_path, monkeypatch, in_memory):
  """Both read paths: small caches held as one array, larger ones read
  shard by shard from their memory maps (forced here)."""
  if not in_memory:
    monkeypatch.setattr(cache, "IN_MEMORY_BYTES", 0)
  d = _build(tmp_path / "c")
  assert sorted(os.listdir(d)) == ["metadata.json"] + [
      f"shard-0000{i}-of-00003" for i in range(3)]
  c = cache.LogitCache(d, META)
  assert len(c._shards) == (1 if in_memory else 3)
  assert c.meta["num_classes"] == {"a": 3, "b": 4}
  assert c.meta["num_examples"] == 7 and c.meta["dtype"] == "float32"
  query = np.array([7, 5, 8, 7, 1, 9])
  got = c.lookup(query)
  pos = [list(IDS).index(i) for i in query]
  for t in ("a", "b"):
    np.testing.assert_array_equal(got[t], LOGITS[t][pos])
    np.testing.assert_array_equal(c.all_logits(t), LOGITS[t])
  assert not [f for f in os.listdir(d) if ".tmp" in f]


def test_identity_ids_and_float16(tmp_path):
  def predict(start, stop):
    return np.arange(start, stop), {"a": LOGITS["a"][start:stop]}
  cache.build(str(tmp_path), 7, 4, predict, META, "float16")
  c = cache.LogitCache(str(tmp_path), META)
  got = c.lookup(np.array([6, 0]))
  assert got["a"].dtype == np.float32
  np.testing.assert_allclose(got["a"], LOGITS["a"][[6, 0]], rtol=1e-3,
                             atol=1e-3)
  with pytest.raises(UserError, match=r"\[7\]"):
    c.lookup(np.array([7]))


def test_unknown_id_is_an_error(tmp_path):
  c = cache.LogitCache(_build(tmp_path), META)
  with pytest.raises(UserError, match=r"not in the teacher cache"):
    c.lookup(np.array([5, 6]))


@pytest.mark.parametrize("key", ["teacher_fingerprint", "dataset_fingerprint",
                                 "split", "teacher"])
def test_metadata_mismatch_is_named(tmp_path, key):
  d = _build(tmp_path)
  with pytest.raises(UserError, match=key):
    cache.LogitCache(d, dict(META, **{key: "other"}))


def test_size_mismatch(tmp_path):
  d = _build(tmp_path)
  with pytest.raises(UserError, match="num_examples"):
    cache.LogitCache(d, dict(META, num_examples=6))


def test_corruption_and_missing_files(tmp_path):
  d = _build(tmp_path)
  path = os.path.join(d, "shard-00001-of-00003", "logits_a.npy")
  raw = bytearray(open(path, "rb").read())
  raw[-3] ^= 0x10
  open(path, "wb").write(raw)
  with pytest.raises(UserError, match="checksum"):
    cache.LogitCache(d, META)
  os.remove(path)
  with pytest.raises(UserError, match="missing shard-00001-of-00003/logits_a"):
    cache.LogitCache(d, META)


def test_bad_metadata_and_absent_cache(tmp_path):
  with pytest.raises(UserError, match="No teacher cache"):
    cache.LogitCache(str(tmp_path / "none"), META)
  d = _build(tmp_path / "c")
  with open(os.path.join(d, "metadata.json"), "w") as f:
    f.write("{not json")
  with pytest.raises(UserError, match="unreadable"):
    cache.LogitCache(d, META)


def test_refuses_to_overwrite(tmp_path):
  d = _build(tmp_path)
  before = json.load(open(os.path.join(d, "metadata.json")))
  with pytest.raises(UserError, match="Refusing to overwrite"):
    _build(tmp_path)
  assert json.load(open(os.path.join(d, "metadata.json"))) == before


def test_interrupted_build_resumes_shard_by_shard(tmp_path):
  with pytest.raises(KeyboardInterrupt):
    _build(tmp_path, predict=Predict(fail_at=6))  # Dies on the third shard.
  assert cache.read_metadata(str(tmp_path)) is None  # Not usable yet.
  with pytest.raises(UserError, match="No teacher cache"):
    cache.LogitCache(str(tmp_path), META)
  again = Predict()
  _build(tmp_path, predict=again)
  assert again.calls == [(6, 7)]  # Only the missing shard is recomputed.
  c = cache.LogitCache(str(tmp_path), META)
  np.testing.assert_array_equal(c.all_logits("b"), LOGITS["b"])


def test_stale_partial_shards_are_not_mixed(tmp_path):
  with pytest.raises(KeyboardInterrupt):
    _build(tmp_path, predict=Predict(fail_at=3))
  with pytest.raises(UserError, match="teacher_fingerprint='abc'"):
    cache.build(str(tmp_path), 7, 3, Predict(), dict(
        META, teacher_fingerprint="new"), "float32")


def test_each_process_writes_only_its_shards(tmp_path):
  # Process 1 of 2 (shards 1 and 3), then process 0 (0 and 2) finalizes.
  p1 = Predict()
  cache.build(str(tmp_path), 7, 2, p1, META, "float32", process_index=1,
              process_count=2)
  assert sorted(os.listdir(tmp_path)) == ["shard-00001-of-00004",
                                          "shard-00003-of-00004"]
  assert len(p1.calls) == 4  # Computing is collective: every shard.
  cache.build(str(tmp_path), 7, 2, Predict(), META, "float32",
              process_index=0, process_count=2)
  c = cache.LogitCache(str(tmp_path), META)
  np.testing.assert_array_equal(c.all_logits("a"), LOGITS["a"])


def test_teacher_join_routes_tasks(tmp_path):
  c1 = cache.LogitCache(_build(tmp_path / "x"), META)
  other = {"b": np.arange(28, dtype=np.float32).reshape(7, 4)}
  cache.build(str(tmp_path / "y"), 7, 7,
              lambda a, b: (IDS[a:b], {"b": other["b"][a:b]}), META, "float32")
  c2 = cache.LogitCache(str(tmp_path / "y"), META)
  # Task a from teacher t1; task b from the ensemble of t1 and t2.
  join = teachers.CachedJoin({"t1": c1, "t2": c2},
                             {"a": ["t1"], "b": ["t1", "t2"]})
  got = join(np.array([9, 5]))["teacher"]  # Rows 2 and 0.
  assert sorted(got) == ["a", "b"]
  np.testing.assert_array_equal(got["a"], LOGITS["a"][[2, 0]][:, None])
  assert got["b"].shape == (2, 2, 4)  # [B, K, C].
  np.testing.assert_array_equal(got["b"][:, 0], LOGITS["b"][[2, 0]])
  np.testing.assert_array_equal(got["b"][:, 1], other["b"][[2, 0]])


# ------------------------------------------------- bfloat16 and top-k storage


def _peaked(n, c, seed=1, scale=4.0):
  """Logits like a trained teacher's: a few dominant classes per row."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, c)) * scale / 2
  x[np.arange(n), rng.integers(0, c, n)] += scale * 2
  return x.astype(np.float32)


def _softmax(x):
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _kl(p_logits, q_logits):
  p, q = _softmax(p_logits), _softmax(q_logits)
  return np.sum(np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0), -1)


def test_bfloat16_round_trip(tmp_path):
  d = _build(tmp_path, dtype="bfloat16")
  assert cache.read_metadata(d)["dtype"] == "bfloat16"
  raw = np.load(os.path.join(d, "shard-00000-of-00003", "logits_a.npy"))
  assert raw.dtype == np.uint16  # .npy has no bfloat16: its raw bits.
  c = cache.LogitCache(d, dict(META, **cache.storage_meta("bfloat16")))
  query = np.array([8, 5, 1])
  pos = [list(IDS).index(i) for i in query]
  for t in ("a", "b"):
    got = c.lookup(query)[t]
    assert got.dtype == np.float32 and type(got) is np.ndarray
    np.testing.assert_allclose(got, LOGITS[t][pos], rtol=2**-8, atol=0)
    np.testing.assert_array_equal(
        c.all_logits(t), LOGITS[t].astype(ml_dtypes.bfloat16).astype(
            np.float32))


def _rebuilt(x, k):
  vals, idx, _, tail = sparse.top_k(x, k)
  return sparse.expand_uniform(vals, idx, tail, x.shape[1])


def test_top_k_reconstruction_keeps_top_k_and_tail_mass():
  x = _peaked(200, 50)
  p = _softmax(x)
  for k in (1, 5, 20):
    vals, idx, lse, tail = sparse.top_k(x, k)
    assert idx.dtype == np.int16 and vals.shape == (200, k)
    assert lse.shape == tail.shape == (200,)
    assert np.all(np.diff(vals, axis=1) <= 0)  # Descending.
    q = _softmax(sparse.expand_uniform(vals, idx, tail, 50))
    top = idx.astype(np.intp)
    np.testing.assert_allclose(np.take_along_axis(q, top, 1),
                               np.take_along_axis(p, top, 1), rtol=1e-5)
    np.testing.assert_allclose(np.exp(vals - lse[:, None]),
                               np.take_along_axis(p, top, 1), rtol=1e-5)
    tail_p = 1 - np.take_along_axis(p, top, 1).sum(1)
    tail_q = 1 - np.take_along_axis(q, top, 1).sum(1)
    np.testing.assert_allclose(tail_q, tail_p, rtol=1e-4, atol=1e-9)
    mask = np.ones_like(q, bool)
    np.put_along_axis(mask, top, False, 1)
    rest = q[mask].reshape(200, 50 - k)  # Uniform over the tail.
    np.testing.assert_allclose(rest, rest[:, :1].repeat(50 - k, 1),
                               rtol=1e-5)


def test_top_k_equal_to_c_is_dense_and_kl_decreases_in_k():
  x = _peaked(300, 40)
  np.testing.assert_array_equal(_rebuilt(x, 40), x)
  np.testing.assert_array_equal(_rebuilt(x, 99), x)  # k > C: all classes.
  kls = [float(_kl(x, _rebuilt(x, k)).mean())
         for k in (1, 2, 5, 10, 20, 39, 40)]
  assert kls[-1] < 1e-12 and kls[0] > 10 * kls[3] > 0
  assert all(a >= b - 1e-9 for a, b in zip(kls, kls[1:], strict=False)), kls
  assert kls[2] < 0.05  # Small once the bulk of the mass is kept.


def test_top_k_with_tiny_tail_mass_stays_finite():
  x = np.zeros((2, 6), np.float32)
  x[:, 0] = [500.0, 90.0]  # Tail mass e^-500 (0 in float64) and ~e^-90.
  rebuilt = _rebuilt(x, 1)
  assert np.all(np.isfinite(rebuilt))
  np.testing.assert_allclose(rebuilt[:, 1:], 0.0)  # Mean of equal logits.
  np.testing.assert_allclose(_softmax(rebuilt)[:, 0], 1.0)
  assert sparse.top_k(np.zeros((1, 40000)), 3)[1].dtype == np.int32


def test_top_k_cache_round_trip_keeps_features_dense(tmp_path):
  x, feats = _peaked(7, 30), RNG.normal(size=(7, 5)).astype(np.float32)
  def predict(start, stop):
    return IDS[start:stop], {"a": x[start:stop],
                             "feat_trunk": feats[start:stop]}
  cache.build(str(tmp_path), 7, 3, predict, META, "float32", top_k=4,
              top_k_names=["a"])
  storage = cache.storage_meta("float32", 4, ["a"])
  c = cache.LogitCache(str(tmp_path), dict(META, **storage))
  assert c.meta["top_k_names"] == ["a"] and c.meta["top_k"] == 4
  shard = os.listdir(os.path.join(tmp_path, "shard-00000-of-00003"))
  assert "topk_values_a.npy" in shard and "logits_a.npy" not in shard
  query = np.array([8, 5, 9, 1])  # Rows from all three shards.
  pos = [list(IDS).index(i) for i in query]
  got = c.lookup(query)
  np.testing.assert_array_equal(got["feat_trunk"], feats[pos])
  want = _rebuilt(x[pos], 4)
  np.testing.assert_allclose(got["a"], want, rtol=1e-6)
  np.testing.assert_allclose(c.all_logits("a")[pos], want, rtol=1e-6)
  assert got["a"].shape == (4, 30) and got["a"].dtype == np.float32


@pytest.mark.parametrize("written,wanted,key", [
    (("float32", 5), ("float32", 0), "top_k"),
    (("float32", 0), ("float32", 5), "top_k"),
    (("bfloat16", 0), ("float32", 0), "dtype"),
    (("float16", 3), ("bfloat16", 3), "dtype"),
])
def test_refuses_another_storage_mode(tmp_path, written, wanted, key):
  cache.build(str(tmp_path), 7, 3, Predict(), META, written[0],
              top_k=written[1], top_k_names=["a", "b"])
  expected = dict(META, **cache.storage_meta(wanted[0], wanted[1], ["a", "b"]))
  with pytest.raises(UserError, match=f"{key} is .*another storage mode"):
    cache.LogitCache(str(tmp_path), expected)


def test_partial_cache_of_another_mode_is_not_mixed(tmp_path):
  with pytest.raises(KeyboardInterrupt):
    cache.build(str(tmp_path), 7, 3, Predict(fail_at=3), META, "float32",
                top_k=2, top_k_names=["a"])
  with pytest.raises(UserError, match="top_k=2"):
    cache.build(str(tmp_path), 7, 3, Predict(), META, "float32")


def test_bad_storage_arguments(tmp_path):
  with pytest.raises(UserError, match="dtype 'int8'"):
    _build(tmp_path, dtype="int8")
  with pytest.raises(ValueError, match="top_k_names"):
    _build(tmp_path, top_k=3)
  with pytest.raises(ValueError, match="not among the cached arrays"):
    _build(tmp_path, top_k=3, top_k_names=["feat"])


def test_reads_version_2_dense_caches(tmp_path):
  d = _build(tmp_path)
  path = os.path.join(d, "metadata.json")
  meta = json.load(open(path))
  for k in ("top_k", "top_k_names"):
    del meta[k]
  json.dump(dict(meta, format_version=2), open(path, "w"))
  c = cache.LogitCache(d, dict(META, **cache.storage_meta("float32")))
  np.testing.assert_array_equal(c.all_logits("a"), LOGITS["a"])
  json.dump(dict(meta, format_version=99), open(path, "w"))
  with pytest.raises(UserError, match="format version 99"):
    cache.LogitCache(d, META)


def test_layout_names_every_cache_and_reads_the_names_back(tmp_path):
  """Cache folders carry the feature layer and storage mode in their name,
  and `Layout.caches()` (what --verify walks) reads them back."""
  from mtkd.store.layout import CacheKey, Layout
  layout = Layout(str(tmp_path / "run"), str(tmp_path / "teachers_home"))
  keys = [CacheKey("digit", "train"), CacheKey("digit", "test", "block_1"),
          CacheKey("left-eye", "train", dtype="bfloat16"),
          CacheKey("multi_0", "test", "representation", "float16", 20)]
  for k in keys:
    os.makedirs(layout.cache(k))
  assert [k.name for k in keys] == [
      "digit", "digit-feat_block_1", "left-eye-bfloat16",
      "multi_0-feat_representation-float16-top20"]
  assert layout.cache(keys[0]).startswith(str(tmp_path / "teachers_home"))
  found = dict(layout.caches())
  assert sorted(found, key=str) == sorted(keys, key=str)
  assert all(found[k] == layout.cache(k) for k in keys)

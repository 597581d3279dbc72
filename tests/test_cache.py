"""Teacher-logit cache: sharded round trip, id join, resumable builds, and
every mismatch detected."""

import json
import os

import numpy as np
import pytest

from mtkd import cache
from mtkd.errors import UserError

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


def test_round_trip_by_id_across_shards(tmp_path):
  d = _build(tmp_path / "c")
  assert sorted(os.listdir(d)) == ["metadata.json"] + [
      f"shard-0000{i}-of-00003" for i in range(3)]
  c = cache.LogitCache(d, META)
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
  other = {"c": np.arange(14, dtype=np.float32).reshape(7, 2)}
  cache.build(str(tmp_path / "y"), 7, 7,
              lambda a, b: (IDS[a:b], {"c": other["c"][a:b]}), META, "float32")
  c2 = cache.LogitCache(str(tmp_path / "y"), META)
  join = cache.TeacherJoin({"a": c1, "c": c2})
  got = join(np.array([9]))
  assert sorted(got) == ["a", "c"]
  np.testing.assert_array_equal(got["c"], other["c"][[2]])
  np.testing.assert_array_equal(got["a"], LOGITS["a"][[2]])

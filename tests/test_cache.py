"""Teacher-logit cache: round trip, id join, and every mismatch detected."""

import json
import os

import numpy as np
import pytest

from mtkd import cache
from mtkd.errors import UserError

META = {"teacher": "t", "teacher_fingerprint": "abc",
        "dataset_fingerprint": "def", "split": "train"}


def _write(tmp_path, ids=None, dtype="float32"):
  ids = np.array([5, 3, 9, 1, 7]) if ids is None else ids
  rng = np.random.default_rng(0)
  logits = {"a": rng.normal(size=(len(ids), 3)).astype(np.float32),
            "b": rng.normal(size=(len(ids), 4)).astype(np.float32)}
  d = str(tmp_path / "c")
  cache.write(d, ids, logits, META, dtype=dtype)
  return d, ids, logits


def test_round_trip_by_id(tmp_path):
  d, ids, logits = _write(tmp_path)
  c = cache.LogitCache(d, META)
  assert c.meta["num_classes"] == {"a": 3, "b": 4}
  assert c.meta["num_examples"] == 5 and c.meta["dtype"] == "float32"
  query = np.array([7, 5, 7, 1])
  got = c.lookup(query)
  pos = [list(ids).index(i) for i in query]
  for t in ("a", "b"):
    np.testing.assert_array_equal(got[t], logits[t][pos])
  assert not os.path.exists(d + f".tmp-{os.getpid()}")


def test_identity_ids_and_float16(tmp_path):
  d, ids, logits = _write(tmp_path, ids=np.arange(5), dtype="float16")
  got = cache.LogitCache(d, META).lookup(np.array([4, 0]))
  assert got["a"].dtype == np.float32
  np.testing.assert_allclose(got["a"], logits["a"][[4, 0]], rtol=1e-3)
  with pytest.raises(UserError, match=r"\[5\]"):
    cache.LogitCache(d, META).lookup(np.array([5]))


def test_unknown_id_is_an_error(tmp_path):
  d, _, _ = _write(tmp_path)
  with pytest.raises(UserError, match=r"not in the teacher cache"):
    cache.LogitCache(d, META).lookup(np.array([5, 4]))


@pytest.mark.parametrize("key", ["teacher_fingerprint", "dataset_fingerprint",
                                 "split", "teacher"])
def test_metadata_mismatch_is_named(tmp_path, key):
  d, _, _ = _write(tmp_path)
  with pytest.raises(UserError, match=key):
    cache.LogitCache(d, dict(META, **{key: "other"}))


def test_size_mismatch(tmp_path):
  d, _, _ = _write(tmp_path)
  with pytest.raises(UserError, match="num_examples"):
    cache.LogitCache(d, dict(META, num_examples=6))


def test_corruption_and_missing_files(tmp_path):
  d, _, _ = _write(tmp_path)
  path = os.path.join(d, "logits_a.npy")
  raw = bytearray(open(path, "rb").read())
  raw[-3] ^= 0x10
  open(path, "wb").write(raw)
  with pytest.raises(UserError, match="checksum"):
    cache.LogitCache(d, META)
  os.remove(path)
  with pytest.raises(UserError, match="missing logits_a.npy"):
    cache.LogitCache(d, META)


def test_bad_metadata_and_absent_cache(tmp_path):
  with pytest.raises(UserError, match="No teacher cache"):
    cache.LogitCache(str(tmp_path / "none"), META)
  d, _, _ = _write(tmp_path)
  with open(os.path.join(d, "metadata.json"), "w") as f:
    f.write("{not json")
  with pytest.raises(UserError, match="unreadable"):
    cache.LogitCache(d, META)


def test_refuses_to_overwrite(tmp_path):
  d, _, _ = _write(tmp_path)
  before = json.load(open(os.path.join(d, "metadata.json")))
  with pytest.raises(UserError, match="Refusing to overwrite"):
    cache.write(d, np.arange(2), {"a": np.zeros((2, 3))}, META)
  assert json.load(open(os.path.join(d, "metadata.json"))) == before


def test_teacher_join_routes_tasks(tmp_path):
  d1, ids, l1 = _write(tmp_path / "x")
  d2 = str(tmp_path / "y")
  other = {"c": np.arange(10, dtype=np.float32).reshape(5, 2)}
  cache.write(d2, ids, other, META)
  c1, c2 = cache.LogitCache(d1, META), cache.LogitCache(d2, META)
  join = cache.TeacherJoin({"a": c1, "c": c2})
  got = join(np.array([9]))
  assert sorted(got) == ["a", "c"]
  np.testing.assert_array_equal(got["c"], other["c"][[2]])
  np.testing.assert_array_equal(got["a"], l1["a"][[2]])

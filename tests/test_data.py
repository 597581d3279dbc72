"""IDX parser, dataset builders, npz loader, label budget, Grain streams."""


import ml_collections
import numpy as np
import pytest

from mtkd.data import builtin, datasets, idx, streams
from mtkd.errors import UserError


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32,
                                   np.float32, np.float64])
@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, dtype, compress):
  a = (np.arange(2 * 3 * 5) - 7).astype(dtype).reshape(2, 3, 5)
  if dtype == np.uint8:
    a = np.arange(30, dtype=np.uint8).reshape(2, 3, 5)
  path = tmp_path / "a.idx"
  idx.save_idx(path, a, compress=compress)
  b = idx.load_idx(path)
  assert b.dtype == np.dtype(dtype) and b.shape == a.shape
  np.testing.assert_array_equal(a, b)


def test_idx_known_bytes():
  # Hand-built header: uint8 (0x08), 2 dims, sizes 2 and 3.
  data = bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6])
  np.testing.assert_array_equal(idx.parse_idx(data), [[1, 2, 3], [4, 5, 6]])
  # Big-endian int32 (0x0C) vector of one value 258.
  data = bytes([0, 0, 0x0C, 1, 0, 0, 0, 1, 0, 0, 1, 2])
  assert idx.parse_idx(data).tolist() == [258]


def test_idx_rejects_bad_files():
  with pytest.raises(idx.IdxFormatError, match="magic"):
    idx.parse_idx(b"\x01\x00\x08\x01\x00\x00\x00\x01\x05")
  with pytest.raises(idx.IdxFormatError, match="truncated"):
    idx.parse_idx(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]))
  with pytest.raises(idx.IdxFormatError, match="type code"):
    idx.parse_idx(bytes([0, 0, 0x42, 1, 0, 0, 0, 1, 1]))


def _fake_fashion(directory, n_train=12, n_test=6, gz=True):
  rng = np.random.default_rng(0)
  for split, n in (("train", n_train), ("t10k", n_test)):
    x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    y = (np.arange(n) % 10).astype(np.uint8)
    sfx = ".gz" if gz else ""
    idx.save_idx(directory / f"{split}-images-idx3-ubyte{sfx}", x, compress=gz)
    idx.save_idx(directory / f"{split}-labels-idx1-ubyte{sfx}", y, compress=gz)


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_any_directory(tmp_path, gz):
  _fake_fashion(tmp_path, gz=gz)
  ds = datasets.build(ml_collections.ConfigDict(
      dict(name="fashion_mnist", dir=str(tmp_path))))
  assert ds.input_shape == (28, 28, 1) and len(ds.train) == 12
  assert ds.tasks == ("class",)
  np.testing.assert_array_equal(ds.test.labels["class"], np.arange(6) % 10)


def test_missing_fashion_mnist_says_how_to_fix(tmp_path):
  with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
    builtin.find_fashion_mnist(str(tmp_path))


def test_multifashion_overlay_invariants():
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8)
  labels = rng.integers(0, 10, 50)
  x, left, right = builtin.overlay_pairs(images, labels, seed=3)
  assert x.shape == (50, 36, 36, 1)
  q = np.random.default_rng(3).permutation(50)
  a, b = q, np.roll(q, -1)
  assert (a != b).all()
  assert sorted(a) == sorted(b) == list(range(50))  # Each image once per side.
  np.testing.assert_array_equal(left, labels[a])
  np.testing.assert_array_equal(right, labels[b])
  # Independent per-pixel reference for one pair.
  i = 7
  ref = np.zeros((36, 36), np.uint8)
  ref[:28, :28] = images[a[i]]
  ref[8:, 8:] = np.maximum(ref[8:, 8:], images[b[i]])
  np.testing.assert_array_equal(x[i, ..., 0], ref)


def _npz(tmp_path, **arrays):
  path = tmp_path / "d.npz"
  np.savez(path, **arrays)
  return ml_collections.ConfigDict(dict(name="npz", path=str(path)))


def test_npz_discovers_tasks_and_class_counts(tmp_path):
  rng = np.random.default_rng(0)
  cfg = _npz(tmp_path, x_train=rng.normal(size=(20, 7)),
             x_test=rng.normal(size=(5, 7)),
             y_train_color=rng.integers(0, 3, 20), y_test_color=[0, 1, 2, 2, 1],
             y_train_size=rng.integers(0, 5, 20), y_test_size=[4, 0, 0, 1, 1])
  ds = datasets.build(cfg)
  assert ds.tasks == ("color", "size")
  assert ds.num_classes == {"color": 3, "size": 5}
  assert ds.input_shape == (7,)
  np.testing.assert_array_equal(ds.train.ids, np.arange(20))


def test_npz_images_and_ids(tmp_path):
  cfg = _npz(tmp_path, x_train=np.zeros((4, 5, 5, 3)), x_test=np.zeros((2, 5, 5)),
             y_train_t=[0, 1, 0, 1], y_test_t=[1, 0],
             ids_train=[10, 20, 30, 40])
  with pytest.raises(UserError, match="must match"):
    datasets.build(cfg)  # [5,5,3] vs [5,5,1].
  cfg = _npz(tmp_path, x_train=np.zeros((4, 5, 5)), x_test=np.zeros((2, 5, 5)),
             y_train_t=[0, 1, 0, 1], y_test_t=[1, 0],
             ids_train=[10, 20, 30, 40])
  ds = datasets.build(cfg)
  assert ds.input_shape == (5, 5, 1)
  np.testing.assert_array_equal(ds.train.ids, [10, 20, 30, 40])


@pytest.mark.parametrize("arrays,match", [
    (dict(x_train=np.zeros((3, 2)), y_train_t=[0, 1, 0], y_test_t=[0]),
     "missing key.*x_test"),
    (dict(x_train=np.zeros((3, 2)), x_test=np.zeros((1, 2)),
          y_train_t=[0, 1, 0]), "y_test_t"),
    (dict(x_train=np.zeros((3, 2)), x_test=np.zeros((1, 2))),
     "at least one task"),
    (dict(x_train=np.zeros((3, 2)), x_test=np.zeros((1, 2)),
          y_train_t=[0.5, 1, 0], y_test_t=[0]), "must be integers"),
    (dict(x_train=np.zeros((3, 2)), x_test=np.zeros((1, 2)),
          y_train_t=[0, 1, 7], y_test_t=[0], num_classes_t=3), "outside"),
    (dict(x_train=np.array([[0.0, np.nan], [1, 1], [2, 2]]),
          x_test=np.zeros((1, 2)), y_train_t=[0, 1, 0], y_test_t=[0]), "NaN"),
    (dict(x_train=np.zeros((0, 2)), x_test=np.zeros((1, 2)),
          y_train_t=np.zeros(0, int), y_test_t=[0]), "empty"),
    (dict(x_train=np.zeros((3, 2)), x_test=np.zeros((1, 2)),
          y_train_t=[0, 1], y_test_t=[0]), "labels of shape"),
    (dict(x_train=np.zeros((3, 2, 2, 2, 2)), x_test=np.zeros((1, 2, 2, 2, 2)),
          y_train_t=[0, 1, 1], y_test_t=[0]), "expected images"),
    (dict(x_train=np.zeros((3, 2)), x_test=np.zeros((1, 2)),
          y_train_t=[0, 1, 1], y_test_t=[0], ids_train=[1, 1, 2]), "duplicate"),
])
def test_npz_bad_inputs(tmp_path, arrays, match):
  with pytest.raises(UserError, match=match):
    datasets.build(_npz(tmp_path, **arrays))


def test_npz_missing_file_and_object_arrays(tmp_path):
  with pytest.raises(UserError, match="does not exist"):
    datasets.build(ml_collections.ConfigDict(
        dict(name="npz", path=str(tmp_path / "nope.npz"))))
  path = tmp_path / "obj.npz"
  np.savez(path, x_train=np.array([{"a": 1}], dtype=object))
  with pytest.raises(UserError, match="Object arrays"):
    datasets.build(ml_collections.ConfigDict(dict(name="npz", path=str(path))))


def test_digits_and_mnist1d_builders():
  ds = datasets.build(ml_collections.ConfigDict(dict(name="digits")))
  assert ds.tasks == ("digit", "parity") and ds.input_shape == (8, 8, 1)
  np.testing.assert_array_equal(ds.train.labels["parity"],
                                ds.train.labels["digit"] % 2)
  ds = datasets.build(ml_collections.ConfigDict(dict(name="mnist1d")))
  assert ds.input_shape == (40,) and len(ds.train) == 4000


def test_synthetic_builders():
  def build(**c):
    return datasets.build(ml_collections.ConfigDict(c))

  ds = build(name="synthetic_images", synthetic=dict(
      size=8, channels=1, classes=5, num_train=40, num_test=10))
  assert ds.input_shape == (8, 8, 1) and ds.num_classes == {
      "label": 5, "coarse": 3}
  np.testing.assert_array_equal(ds.train.labels["coarse"],
                                ds.train.labels["label"] // 2)
  ds = build(name="synthetic_text", synthetic=dict(length=12, num_train=50))
  ids = ds.train.x.astype(int)
  lengths = (ids != 0).sum(1)  # Tokens are >= 2, so 0 is only padding.
  assert ids.shape == (50, 12) and ids.max() < 64
  np.testing.assert_array_equal(ds.train.labels["long"], lengths > 6)
  counts = np.stack([(ids == t).sum(1) for t in (2, 3, 4, 5)], 1)
  np.testing.assert_array_equal(ds.train.labels["label"], counts.argmax(1))
  with pytest.raises(UserError, match=r"unknown keys \['size'\].*Fix"):
    build(name="synthetic_text", synthetic=dict(size=8))


def test_label_budget():
  m = datasets.label_budget(100, 10, seed=1)
  assert m.sum() == 10
  np.testing.assert_array_equal(m, datasets.label_budget(100, 10, seed=1))
  assert not np.array_equal(m, datasets.label_budget(100, 10, seed=2))
  assert datasets.label_budget(100, -1, 0).all()


def test_fingerprint_sees_every_part():
  s = datasets.Split(np.zeros((4, 2), np.float32), {"t": np.zeros(4, np.int32)},
                     np.arange(4))
  base = s.fingerprint()
  assert base == datasets.Split(s.x.copy(), {"t": s.labels["t"].copy()},
                                s.ids.copy()).fingerprint()
  x = s.x.copy()
  x[2, 1] = 1e-3
  assert datasets.Split(x, s.labels, s.ids).fingerprint() != base
  assert datasets.Split(s.x, {"t": np.array([0, 0, 1, 0])}, s.ids
                        ).fingerprint() != base
  assert datasets.Split(s.x, s.labels, s.ids[::-1].copy()).fingerprint() != base


def _split(n=10):
  return datasets.Split(np.arange(n, dtype=np.float32)[:, None],
                        {"t": (np.arange(n) % 3).astype(np.int32)},
                        np.arange(100, 100 + n))


def test_train_stream_epochs_reshuffle_and_cover_each_row_once():
  split = _split(12)
  ds = streams.train_stream(split, split.labels, batch_size=4, seed=0)
  epochs = [np.concatenate([ds[3 * e + k]["ids"] for k in range(3)])
            for e in range(3)]
  for ids in epochs:
    assert sorted(ids) == list(range(100, 112))
  assert not np.array_equal(epochs[0], epochs[1])
  # Deterministic and random-access: the same batch from a fresh stream.
  again = streams.train_stream(split, split.labels, batch_size=4, seed=0)
  np.testing.assert_array_equal(again[5]["inputs"], ds[5]["inputs"])
  resumed = list(streams.iterate(again, 4, 7))
  for k, b in enumerate(resumed):
    np.testing.assert_array_equal(b["ids"], ds[4 + k]["ids"])
  # Inputs, labels and ids stay aligned.
  b = ds[1]
  np.testing.assert_array_equal(b["inputs"][:, 0] + 100, b["ids"])
  np.testing.assert_array_equal(b["labels"]["t"], (b["ids"] - 100) % 3)


def test_train_stream_subset_rows():
  split = _split(12)
  ds = streams.train_stream(split, split.labels, 2, seed=1,
                             rows=np.array([1, 5, 7]))
  seen = np.concatenate([ds[k]["ids"] for k in range(6)])
  assert set(seen) == {101, 105, 107}


def test_eval_stream_pads_and_masks():
  split = _split(10)
  batches = list(streams.iterate(streams.eval_stream(split, 4)))
  assert [b["inputs"].shape[0] for b in batches] == [4, 4, 4]
  mask = np.concatenate([b["mask"] for b in batches])
  np.testing.assert_array_equal(mask, [1] * 10 + [0, 0])
  ids = np.concatenate([b["ids"] for b in batches])[mask > 0]
  np.testing.assert_array_equal(ids, split.ids)


def test_join_by_id():
  split = _split(8)
  def join(ids):  # A join returns extra batch entries.
    return {"teacher": {"t": np.stack([ids, -ids], 1).astype(np.float32)}}
  ds = streams.train_stream(split, split.labels, 4, seed=0, join=join)
  b = ds[0]
  np.testing.assert_array_equal(b["teacher"]["t"][:, 0], b["ids"])

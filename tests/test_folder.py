"""Image-folder datasets (`config.data.name='folder'`) on PNGs generated
here: labels from class folders, ids stable whatever order files were
written in, errors naming the fix, and a pipeline run end to end."""

import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from mtkd.data import datasets
from mtkd.errors import UserError

CLASSES = ("cat", "dog", "emu")


def _write(root, counts=(12, 6), size=8, seed=0, order=None):
  """Class c's images are bright in channel c: learnable."""
  rng = np.random.default_rng(seed)
  files = []
  for split, n in zip(("train", "test"), counts, strict=True):
    for c, cls in enumerate(CLASSES):
      for i in range(n):
        sub = "nested" if i % 4 == 3 else ""  # Sub-folders are read too.
        files.append((split, cls, sub, f"{i:03d}.png", c))
  order = order if order is not None else range(len(files))
  for j in order:
    split, cls, sub, name, c = files[j]
    d = os.path.join(root, split, cls, sub)
    os.makedirs(d, exist_ok=True)
    x = rng.integers(0, 80, (size, size, 3)).astype(np.uint8)
    x[..., c] += 150
    Image.fromarray(x).save(os.path.join(d, name))
  return root


def _cfg(root, **kw):
  return ml_collections.ConfigDict(dict(name="folder", dir=str(root), **kw))


def test_labels_and_ids_follow_sorted_paths(tmp_path):
  a = _write(tmp_path / "a")
  order = np.random.default_rng(1).permutation(3 * (12 + 6))
  b = _write(tmp_path / "b", order=order)  # Written in another order.
  da, db = datasets.build(_cfg(a)), datasets.build(_cfg(b))
  assert da.num_classes == {"label": 3} and da.input_shape == (8, 8, 3)
  np.testing.assert_array_equal(da.train.ids, np.arange(36))
  np.testing.assert_array_equal(da.train.labels["label"],
                                db.train.labels["label"])
  # Sorted paths: cat/000, cat/001, cat/002, cat/004, ..., cat/nested/003.
  assert da.train.labels["label"].tolist() == [0] * 12 + [1] * 12 + [2] * 12
  means = da.train.x.reshape(36, -1, 3).mean(1)
  assert (means.argmax(1) == da.train.labels["label"]).all()


def test_bad_folders_are_errors_naming_the_fix(tmp_path):
  root = _write(tmp_path / "r")
  with pytest.raises(UserError, match="needs --config.data.dir"):
    datasets.build(_cfg(""))
  with pytest.raises(UserError, match="no train/ folder"):
    datasets.build(_cfg(tmp_path / "r" / "train"))
  bad = tmp_path / "r" / "train" / "dog" / "zz.png"
  bad.write_bytes(b"not a png")
  with pytest.raises(UserError, match=r"zz.png.*on_corrupt='skip'"):
    datasets.build(_cfg(root))
  ds = datasets.build(_cfg(root, on_corrupt="skip"))
  assert len(ds.train) == 36
  bad.unlink()
  Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(
      tmp_path / "r" / "test" / "emu" / "odd.png")
  with pytest.raises(UserError, match="config.data.image_size"):
    datasets.build(_cfg(root))
  assert datasets.build(_cfg(root, image_size=6)).input_shape == (6, 6, 3)
  os.makedirs(tmp_path / "r" / "test" / "yak")
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(
      tmp_path / "r" / "test" / "yak" / "a.png")
  with pytest.raises(UserError, match="yak: a class the train split"):
    datasets.build(_cfg(root, image_size=8))


def test_folder_pipeline_end_to_end(tmp_path, run_mtkd):
  from configs import quickstart
  root = _write(tmp_path / "img", counts=(40, 10))
  c = quickstart.get_config("smoke")
  c.data.name, c.data.dir, c.data.mode = "folder", str(root), "L"
  c.data.num_labeled = 30
  c.teacher.steps = c.student.steps = 10
  c.teacher.model = c.student.model = dict(name="mlp", hidden=(16,))
  results = run_mtkd(c, tmp_path / "w")
  assert set(results) == {"label"}
  assert {"teacher", "baseline", "student"} <= set(results["label"])
  assert results["label"]["student"]["count"] == 30


def test_lazy_folder_reads_the_same_images_per_batch(tmp_path):
  """`data.lazy=True`: the same ids, labels and decoded images, read only
  when indexed; a corrupt file fails when its row is read."""
  from mtkd.data import lazy
  root = _write(tmp_path / "a")
  eager = datasets.build(_cfg(root, image_size=8))
  lz = datasets.build(_cfg(root, image_size=8, lazy=True))
  assert isinstance(lz.train.x, lazy.LazyRows) and lz.input_shape == (8, 8, 3)
  for a, b in ((eager.train, lz.train), (eager.test, lz.test)):
    np.testing.assert_array_equal(b.ids, a.ids)
    np.testing.assert_array_equal(b.labels["label"], a.labels["label"])
    np.testing.assert_array_equal(b.x[np.arange(len(b))], a.x)
  with pytest.raises(UserError, match="image_size"):
    datasets.build(_cfg(root, lazy=True))
  bad = os.path.join(root, "train", "cat", "000.png")  # Sorted row 0.
  with open(bad, "wb") as f:
    f.write(b"not a png")
  lz = datasets.build(_cfg(root, image_size=8, lazy=True))  # Not read yet.
  np.testing.assert_array_equal(lz.train.x[np.array([1, 2])],
                                eager.train.x[1:3])
  with pytest.raises(UserError, match="000.png"):
    lz.train.x[np.array([0])]

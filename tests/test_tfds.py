"""TFDS datasets in ArrayRecord (`config.data.name='tfds'`): a tiny builder
with CIFAR-100's schema (image, fine and coarse ClassLabels) plus an id
field, prepared here without TensorFlow (images handed over as PNG bytes),
read back bit for bit, and run end to end."""

import io
import sys

import ml_collections
import numpy as np
import pytest
from PIL import Image

tfds = pytest.importorskip("tensorflow_datasets")

from mtkd.data import datasets  # noqa: E402
from mtkd.errors import UserError  # noqa: E402

COUNTS = {"train": 96, "test": 32}


def _images(split):
  """uint8 [n, 8, 8, 3] and fine labels; the class sets the brightness."""
  rng = np.random.default_rng(COUNTS[split])
  fine = rng.integers(0, 6, COUNTS[split])
  x = rng.integers(0, 40, (len(fine), 8, 8, 3)).astype(np.uint8)
  return x + (30 * fine).astype(np.uint8)[:, None, None, None], fine


class MtkdTinyCifar(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=(
        tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 3)),
            "label": tfds.features.ClassLabel(num_classes=6),
            "coarse_label": tfds.features.ClassLabel(num_classes=3),
            "id": tfds.features.Scalar(np.int64)})))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {s: self._generate_examples(s) for s in COUNTS}

  def _generate_examples(self, split):
    x, fine = _images(split)
    for i, (img, f) in enumerate(zip(x, fine, strict=True)):
      buf = io.BytesIO()
      Image.fromarray(img).save(buf, format="PNG")  # No TF to encode.
      buf.seek(0)
      yield i, {"image": buf, "label": f, "coarse_label": f // 2,
                "id": 5000 + 7 * i + (split == "test")}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("tfds"))
  MtkdTinyCifar(data_dir=d, file_format="array_record").download_and_prepare()
  return d


def _cfg(data_dir, **kw):
  return ml_collections.ConfigDict(dict(
      dict(name="tfds", tfds_name="mtkd_tiny_cifar", dir=data_dir), **kw))


def test_reads_arrays_labels_and_ids_without_tensorflow(data_dir):
  ds = datasets.build(_cfg(data_dir))
  assert ds.num_classes == {"label": 6, "coarse_label": 3}
  for name, split in (("train", ds.train), ("test", ds.test)):
    # Row order is TFDS's stored (shuffled) order: compare by id.
    x, fine = _images(name)
    i = (split.ids - 5000 - (name == "test")) // 7
    np.testing.assert_array_equal(np.sort(i), np.arange(COUNTS[name]))
    np.testing.assert_array_equal(split.x, x[i])  # PNG: lossless.
    np.testing.assert_array_equal(split.labels["label"], fine[i])
    np.testing.assert_array_equal(split.labels["coarse_label"], fine[i] // 2)
  # Same ids in the same order on every read.
  np.testing.assert_array_equal(datasets.build(_cfg(data_dir)).train.ids,
                                ds.train.ids)
  assert "tensorflow" not in sys.modules


def test_tasks_and_errors(data_dir):
  ds = datasets.build(_cfg(data_dir, tasks={"fine": "label"},
                           id_field="none"))
  assert ds.num_classes == {"fine": 6}
  np.testing.assert_array_equal(ds.train.ids, np.arange(COUNTS["train"]))
  with pytest.raises(UserError, match="tfds build nope"):
    datasets.build(_cfg(data_dir, tfds_name="nope"))
  with pytest.raises(UserError, match="Unknown split"):
    datasets.build(_cfg(data_dir, splits={"test": "validation"}))
  with pytest.raises(UserError, match="no field 'fine_label'"):
    datasets.build(_cfg(data_dir, tasks={"fine": "fine_label"}))
  with pytest.raises(UserError, match="tfds_name"):
    datasets.build(_cfg(data_dir, tfds_name=""))


def test_tfds_pipeline_end_to_end(data_dir, tmp_path, run_mtkd,
                                  tiny_run_config):
  c = tiny_run_config(name="tfds", tfds_name="mtkd_tiny_cifar", dir=data_dir,
                      num_labeled=48)
  results = run_mtkd(c, tmp_path / "w")
  assert set(results) == {"label", "coarse_label"}
  for task in results:
    assert {"teacher", "baseline", "student"} <= set(results[task])


def test_lazy_reading_matches_memory_and_reads_only_this_process_rows(
    data_dir, monkeypatch):
  """`config.data.lazy=True`: the same split (ids, labels, decoded images),
  with images read per batch; a process reads only its share of a batch."""
  from mtkd import distributed
  from mtkd.data import lazy, streams
  eager = datasets.build(_cfg(data_dir, val_size=16))
  lz = datasets.build(_cfg(data_dir, val_size=16, lazy=True))
  assert isinstance(lz.train.x, lazy.LazyRows) and lz.input_shape == (8, 8, 3)
  for a, b in ((eager.train, lz.train), (eager.val, lz.val),
               (eager.test, lz.test)):
    np.testing.assert_array_equal(b.ids, a.ids)
    np.testing.assert_array_equal(b.labels["label"], a.labels["label"])
    np.testing.assert_array_equal(b.x[np.arange(len(b))], a.x)
  read = []
  x = lz.train.x
  counting = lazy.LazyRows(lambda rows: read.append(rows) or x.read(rows),
                           x.row_shape, x.dtype, x.source, x.index)
  split = datasets.Split(counting, lz.train.labels, lz.train.ids)
  # Process 1 of 2: the second half of every global batch.
  monkeypatch.setattr(distributed, "process_rows",
                      lambda n: slice(n // 2, n))
  batch = streams.train_stream(split, split.labels, 8, seed=0)[3]
  assert len(read) == 1 and len(read[0]) == 4
  np.testing.assert_array_equal(batch["ids"], lz.train.ids[
      np.searchsorted(x.index, read[0])])


def test_lazy_pipeline_gives_the_in_memory_results(data_dir, tmp_path,
                                                    run_mtkd, tiny_run_config):
  results = []
  for lazy_read in (False, True):
    c = tiny_run_config(name="tfds", tfds_name="mtkd_tiny_cifar",
                        dir=data_dir, lazy=lazy_read, num_labeled=48)
    results.append(run_mtkd(c, tmp_path / f"w{lazy_read}"))
  assert results[0] == results[1]


class MtkdTinyRenamed(tfds.core.GeneratorBasedBuilder):
  """The same images under another field name ('photo')."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=(
        tfds.features.FeaturesDict({
            "photo": tfds.features.Image(shape=(8, 8, 3)),
            "label": tfds.features.ClassLabel(num_classes=6)})))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {s: self._generate_examples(s) for s in COUNTS}

  def _generate_examples(self, split):
    for i, ex in MtkdTinyCifar._generate_examples(None, split):
      yield i, {"photo": ex["image"], "label": ex["label"]}


def test_lazy_reading_of_another_image_field(tmp_path):
  d = str(tmp_path)
  MtkdTinyRenamed(data_dir=d, file_format="array_record").download_and_prepare()
  cfg = dict(name="tfds", tfds_name="mtkd_tiny_renamed", dir=d,
             input_field="photo")
  eager = datasets.build(ml_collections.ConfigDict(cfg))
  lz = datasets.build(ml_collections.ConfigDict(dict(cfg, lazy=True)))
  np.testing.assert_array_equal(lz.train.x[np.arange(len(lz.train))],
                                eager.train.x)

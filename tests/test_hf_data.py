"""Hugging Face datasets on disk (`config.data.name='hf'`), written here
with pyarrow in the two layouts `datasets` produces: a `save_to_disk`
folder (Arrow stream + dataset_info.json) and Parquet files carrying the
`huggingface` schema metadata. CIFAR-100's schema: an image feature and two
ClassLabel fields."""

import io
import json
import os

import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mtkd.data import datasets
from mtkd.errors import UserError

FEATURES = {
    "img": {"_type": "Image"},
    "fine_label": {"_type": "ClassLabel", "names": [f"f{i}" for i in range(6)]},
    "coarse_label": {"_type": "ClassLabel", "names": ["a", "b", "c"]},
}


def _png(x):
  buf = io.BytesIO()
  Image.fromarray(x).save(buf, format="PNG")
  return buf.getvalue()


def _table(n, seed, with_id=False):
  rng = np.random.default_rng(seed)
  fine = rng.integers(0, 6, n)
  imgs = []
  for f in fine:  # Learnable: the fine class sets the brightness.
    x = rng.integers(0, 40, (8, 8, 3)).astype(np.uint8) + np.uint8(30 * f)
    imgs.append({"bytes": _png(x), "path": None})
  cols = {"img": imgs, "fine_label": fine, "coarse_label": fine // 2}
  if with_id:
    cols["id"] = 1000 + np.arange(n)[::-1]
  return pa.table(cols)


def _save_to_disk(root, counts=(48, 16), with_id=False):
  for split, n, seed in (("train", counts[0], 0), ("test", counts[1], 1)):
    d = os.path.join(root, split)
    os.makedirs(d)
    table = _table(n, seed, with_id)
    with pa.OSFile(os.path.join(d, "data-00000-of-00001.arrow"), "wb") as f:
      with pa.ipc.new_stream(f, table.schema) as w:
        w.write_table(table)
    with open(os.path.join(d, "dataset_info.json"), "w") as f:
      json.dump({"features": FEATURES}, f)
  return root


def _parquet(root, counts=(48, 16)):
  os.makedirs(root)
  meta = {b"huggingface": json.dumps({"info": {"features": FEATURES}})}
  for split, n, seed in (("train", counts[0], 0), ("test", counts[1], 1)):
    table = _table(n, seed)
    pq.write_table(table.replace_schema_metadata(meta),
                   os.path.join(root, f"{split}.parquet"))
  return root


def _cfg(path, **kw):
  return ml_collections.ConfigDict(dict(
      dict(name="hf", path=str(path), input_field="img"), **kw))


def test_both_layouts_load_the_same_data(tmp_path):
  a = datasets.build(_cfg(_save_to_disk(str(tmp_path / "disk"))))
  b = datasets.build(_cfg(_parquet(str(tmp_path / "pq"))))
  assert a.num_classes == b.num_classes == {"fine_label": 6,
                                            "coarse_label": 3}
  assert a.input_shape == (8, 8, 3) and a.train.x.dtype == np.uint8
  np.testing.assert_array_equal(a.train.x, b.train.x)
  np.testing.assert_array_equal(a.train.ids, np.arange(48))
  want = _table(48, 0)
  np.testing.assert_array_equal(a.train.labels["fine_label"],
                                want.column("fine_label").to_numpy())
  np.testing.assert_array_equal(b.test.labels["coarse_label"],
                                _table(16, 1).column("coarse_label").to_numpy())


def test_tasks_ids_and_errors(tmp_path):
  root = _save_to_disk(str(tmp_path / "d"), with_id=True)
  ds = datasets.build(_cfg(root, tasks={"fine": "fine_label"}))
  assert ds.tasks == ("fine",) and ds.num_classes == {"fine": 6}
  np.testing.assert_array_equal(ds.train.ids, 1000 + np.arange(48)[::-1])
  with pytest.raises(UserError, match="no field 'label'"):
    datasets.build(_cfg(root, tasks={"x": "label"}))
  with pytest.raises(UserError, match="no field 'image'.*input_field"):
    datasets.build(_cfg(root, input_field="image"))
  with pytest.raises(UserError, match="save_to_disk"):
    datasets.build(_cfg(tmp_path / "nowhere"))
  os.remove(os.path.join(root, "test", "data-00000-of-00001.arrow"))
  pq.write_table(pa.table({"img": [None], "other": [1]}),
                 os.path.join(root, "test.parquet"))
  with pytest.raises(UserError, match="schemas must match"):
    datasets.build(_cfg(root))


def test_hf_pipeline_end_to_end(tmp_path, run_mtkd, tiny_run_config):
  root = _parquet(str(tmp_path / "pq"), counts=(96, 32))
  c = tiny_run_config(name="hf", path=root, input_field="img",
                      num_labeled=48)
  results = run_mtkd(c, tmp_path / "w")
  assert set(results) == {"fine_label", "coarse_label"}
  for task in results:
    assert {"teacher", "baseline", "student"} <= set(results[task])


def test_corrupt_images_fail_or_are_skipped_and_counted(tmp_path, capsys):
  root = str(tmp_path / "pq")
  os.makedirs(root)
  for split, n, seed in (("train", 48, 0), ("test", 16, 1)):
    table = _table(n, seed, with_id=True).to_pydict()
    table["img"][3] = {"bytes": b"not an image", "path": None}
    pq.write_table(pa.table(table), os.path.join(root, f"{split}.parquet"))
  tasks = {"fine_label": "fine_label"}
  with pytest.raises(UserError, match="row 3 of 'img'.*on_corrupt='skip'"):
    datasets.build(_cfg(root, tasks=tasks))
  ds = datasets.build(_cfg(root, tasks=tasks, on_corrupt="skip"))
  assert "skipped 1 undecodable image(s) of 48" in capsys.readouterr().out
  want = _table(48, 0, with_id=True)
  keep = np.arange(48) != 3  # The other rows keep their ids and labels.
  np.testing.assert_array_equal(ds.train.ids,
                                want.column("id").to_numpy()[keep])
  np.testing.assert_array_equal(ds.train.labels["fine_label"],
                                want.column("fine_label").to_numpy()[keep])


def test_multilabel_task_from_boolean_columns(tmp_path):
  root = str(tmp_path / "pq")
  os.makedirs(root)
  rng = np.random.default_rng(0)
  for split, n in (("train", 20), ("test", 8)):
    cols = {"x": [list(v) for v in rng.normal(size=(n, 3))]}
    flags = rng.random((n, 4)) < 0.5
    cols.update({f"attr_{j}": flags[:, j] for j in range(4)})
    cols["other"] = flags[:, 0].astype(np.int64)
    pq.write_table(pa.table(cols), os.path.join(root, f"{split}.parquet"))
  ds = datasets.build(_cfg(root, input_field="x", tasks={
      "attrs": {"fields": "attr_*", "kind": "multilabel"}, "first": "other"}))
  assert ds.num_classes == {"attrs": 4, "first": 2}
  assert ds.kind("attrs") == "multilabel" and ds.input_shape == (3,)
  np.testing.assert_array_equal(ds.train.labels["attrs"][:, 0],
                                ds.train.labels["first"])
  with pytest.raises(UserError, match="classification task has one"):
    datasets.build(_cfg(root, input_field="x", tasks={"a": {
        "fields": ["attr_0", "attr_1"]}}))
  with pytest.raises(UserError, match="no field 'nope_\\*'"):
    datasets.build(_cfg(root, input_field="x", tasks={"a": {
        "fields": "nope_*", "kind": "multilabel"}}))


@pytest.mark.parametrize("layout", ["disk", "parquet"])
def test_lazy_reading_matches_memory(tmp_path, layout):
  """`data.lazy=True`: images stay in the files (Arrow memory-mapped,
  Parquet row groups) and are decoded per read, equal to the in-memory
  split; labels and ids as before."""
  from mtkd.data import lazy
  root = (_save_to_disk if layout == "disk" else _parquet)(
      str(tmp_path / layout))
  eager = datasets.build(_cfg(root))
  lz = datasets.build(_cfg(root, lazy=True))
  assert isinstance(lz.train.x, lazy.LazyRows)
  assert lz.input_shape == eager.input_shape == (8, 8, 3)
  for a, b in ((eager.train, lz.train), (eager.test, lz.test)):
    np.testing.assert_array_equal(b.ids, a.ids)
    for t in a.labels:
      np.testing.assert_array_equal(b.labels[t], a.labels[t])
    rows = np.array([5, 0, 11, 5])
    np.testing.assert_array_equal(b.x[rows], a.x[rows])
  with pytest.raises(UserError, match="no field 'photo'"):
    datasets.build(_cfg(root, lazy=True, input_field="photo"))

"""Hugging Face datasets on disk: `datasets.save_to_disk` folders and
Parquet files, read with pyarrow (the `datasets` package is not needed).

`config.data.name='hf'`, `config.data.path=DIR`, where DIR holds per split
(`train`, `test`, or the names `config.data.splits` maps them to) either a `save_to_disk` folder `DIR/<split>/` (Arrow
stream files `data-*.arrow`, `dataset_info.json`) or Parquet files
`DIR/<split>.parquet`, `DIR/<split>-*.parquet` or `DIR/<split>/*.parquet`.
Prepare one on a machine with internet, e.g.::

    datasets.load_dataset("cifar100").save_to_disk("DIR")

Fields become tasks as mtkd/data/fields.py says (input field, default
`image`; `config.data.tasks`, default every ClassLabel field; multilabel
tasks from 0/1 columns; ids from `config.data.id_field`, else the row
index in file order, files sorted by name). Class counts come from the
ClassLabel metadata (`dataset_info.json`, or the `huggingface` schema
metadata a Parquet file written by `datasets` carries).
"""

import glob
import json
import os

import numpy as np

from mtkd.data import fields as fields_lib
from mtkd.data.datasets import DATASETS, Dataset
from mtkd.data.lazy import LazyRows
from mtkd.errors import UserError

SPLITS = ("train", "test")
FIX = ("Prepare it on a machine with internet: `datasets.load_dataset(NAME)"
       ".save_to_disk(DIR)`, or write `DIR/train.parquet` and "
       "`DIR/test.parquet`; then --config.data.path=DIR.")


def _files(root: str, split: str) -> tuple[str, list[str]]:
  """('arrow' | 'parquet', the split's files in name order)."""
  arrow = sorted(glob.glob(os.path.join(root, split, "*.arrow")))
  if arrow:
    return "arrow", arrow
  parquet = sorted(set(
      glob.glob(os.path.join(root, f"{split}.parquet"))
      + glob.glob(os.path.join(root, f"{split}-*.parquet"))
      + glob.glob(os.path.join(root, split, "*.parquet"))))
  if parquet:
    return "parquet", parquet
  raise UserError(f"No {split} split in {root!r} (no {split}/*.arrow or "
                  f"{split}*.parquet). {FIX}")


def _features(root: str, split: str, fmt: str, table) -> dict:
  """The `datasets` features metadata, if the data carries it."""
  info = os.path.join(root, split, "dataset_info.json")
  if fmt == "arrow" and os.path.isfile(info):
    with open(info) as f:
      return json.load(f).get("features", {})
  meta = (table.schema.metadata or {}).get(b"huggingface")
  if meta:
    return json.loads(meta).get("info", {}).get("features", {})
  return {}


def read_split(root: str, split: str, skip: str | None = None):
  """(pyarrow Table, features metadata) of one split; Parquet files without
  the column `skip` (read per batch instead: `_lazy_inputs`). Arrow files
  stay memory-mapped (their buffers are the mapped file's pages)."""
  import pyarrow as pa
  import pyarrow.parquet as pq
  fmt, files = _files(root, split)
  if fmt == "arrow":
    tables = []
    for path in files:
      source = pa.memory_map(path)  # Kept open by the table's buffers.
      try:
        tables.append(pa.ipc.open_stream(source).read_all())
      except pa.ArrowInvalid:
        tables.append(pa.ipc.open_file(source).read_all())
  else:
    names = pq.read_schema(files[0]).names
    tables = [pq.read_table(path, columns=[c for c in names if c != skip])
              for path in files]
  try:
    table = pa.concat_tables(tables)
  except pa.ArrowInvalid as e:
    raise UserError(f"The {split} files in {root!r} have different schemas "
                    f"({e}).") from None
  return table, _features(root, split, fmt, tables[0])


def _schema_names(root: str, split: str) -> list[str]:
  """The split's fields, from its first file's schema (nothing read)."""
  import pyarrow as pa
  import pyarrow.parquet as pq
  fmt, files = _files(root, split)
  if fmt == "parquet":
    return pq.read_schema(files[0]).names
  source = pa.memory_map(files[0])
  try:
    return pa.ipc.open_stream(source).schema.names
  except pa.ArrowInvalid:
    return pa.ipc.open_file(source).schema.names


def _class_labels(features: dict) -> dict[str, int]:
  return {name: len(f["names"]) for name, f in features.items()
          if isinstance(f, dict) and f.get("_type") == "ClassLabel"}


@DATASETS.register("hf")
def hf(cfg) -> Dataset:
  root = os.path.expanduser(cfg.get("path", "") or "")
  if not root or not os.path.isdir(root):
    raise UserError(f"config.data.name='hf' needs --config.data.path=DIR, a "
                    f"directory (got {root!r}). {FIX}")
  names = {s: dict(cfg.get("splits") or {}).get(s, s) for s in SPLITS}
  is_lazy = bool(cfg.get("lazy", False))
  fields = {s: _schema_names(root, names[s]) for s in SPLITS}
  input_field = fields_lib.input_field(cfg, fields["train"])
  tables = {s: read_split(root, names[s], input_field if is_lazy else None)
            for s in SPLITS}
  if set(fields["train"]) != set(fields["test"]):
    raise UserError(f"{root!r}: train has fields {sorted(fields['train'])}, "
                    f"test {sorted(fields['test'])}; the splits' schemas "
                    "must match.")
  classes = _class_labels(tables["train"][1])
  tasks = fields_lib.task_fields(cfg, classes, fields["train"], repr(root))
  read = fields_lib.needed(cfg, tasks, fields["train"], inputs=not is_lazy)
  columns = {s: {f: table.column(f).to_pylist() for f in read}
             for s, (table, _) in tables.items()}
  lazy_inputs = {s: _lazy_inputs(cfg, root, names[s], table, input_field)
                 for s, (table, _) in tables.items()} if is_lazy else None
  return fields_lib.assemble(cfg, "hf", columns, classes, tasks,
                             fields["train"], repr(root), lazy_inputs)


def _lazy_inputs(cfg, root: str, split: str, table, field: str) -> LazyRows:
  """A split's image column as `LazyRows`: rows taken from the memory-
  mapped Arrow table, or from the Parquet files' row groups that hold
  them, and decoded (resized to `image_size`) when read."""
  import pyarrow as pa
  import pyarrow.dataset as pads
  fmt, files = _files(root, split)
  size = int(cfg.get("image_size", 0) or 0)
  if fmt == "arrow":
    column = table.column(field)

    def take(rows):
      return column.take(pa.array(rows)).to_pylist()
  else:
    data = pads.dataset(files, format="parquet")

    def take(rows):
      return data.take(pa.array(rows), columns=[field]).column(
          field).to_pylist()

  def read(rows: np.ndarray) -> np.ndarray:
    values = take(np.asarray(rows, np.int64))
    if not all(isinstance(v, dict) and "bytes" in v for v in values):
      raise UserError(f"{root!r}: config.data.lazy=True reads encoded image "
                      f"fields; {field!r} is not one.")
    return np.stack([fields_lib.decode_one(v, size) for v in values])

  first = read(np.zeros(1, np.int64))[0]
  identity = (f"hf:{split}:" + repr([(os.path.basename(f), os.path.getsize(f))
                                     for f in files]) + f":{field}:{size}")
  return LazyRows(read, first.shape, np.dtype(np.uint8), identity,
                  np.arange(len(table)))

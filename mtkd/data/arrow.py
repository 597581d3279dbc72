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

from mtkd.data import fields as fields_lib
from mtkd.data.datasets import DATASETS, Dataset
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


def read_split(root: str, split: str):
  """(pyarrow Table, features metadata) of one split."""
  import pyarrow as pa
  import pyarrow.parquet as pq
  fmt, files = _files(root, split)
  if fmt == "arrow":
    tables = []
    for path in files:
      with pa.memory_map(path) as source:
        try:
          tables.append(pa.ipc.open_stream(source).read_all())
        except pa.ArrowInvalid:
          tables.append(pa.ipc.open_file(source).read_all())
  else:
    tables = [pq.read_table(path) for path in files]
  try:
    table = pa.concat_tables(tables)
  except pa.ArrowInvalid as e:
    raise UserError(f"The {split} files in {root!r} have different schemas "
                    f"({e}).") from None
  return table, _features(root, split, fmt, tables[0])


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
  tables = {s: read_split(root, names[s]) for s in SPLITS}
  fields = {s: t.column_names for s, (t, _) in tables.items()}
  if set(fields["train"]) != set(fields["test"]):
    raise UserError(f"{root!r}: train has fields {sorted(fields['train'])}, "
                    f"test {sorted(fields['test'])}; the splits' schemas "
                    "must match.")
  classes = _class_labels(tables["train"][1])
  tasks = fields_lib.task_fields(cfg, classes, fields["train"], repr(root))
  read = fields_lib.needed(cfg, tasks, fields["train"])
  columns = {s: {f: table.column(f).to_pylist() for f in read}
             for s, (table, _) in tables.items()}
  return fields_lib.assemble(cfg, "hf", columns, classes, tasks,
                             fields["train"], repr(root))

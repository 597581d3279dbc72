"""Hugging Face datasets on disk: `datasets.save_to_disk` folders and
Parquet files, read with pyarrow (the `datasets` package is not needed).

`config.data.name='hf'`, `config.data.path=DIR`, where DIR holds per split
(`train`, `test`) either a `save_to_disk` folder `DIR/<split>/` (Arrow
stream files `data-*.arrow`, `dataset_info.json`) or Parquet files
`DIR/<split>.parquet`, `DIR/<split>-*.parquet` or `DIR/<split>/*.parquet`.
Prepare one on a machine with internet, e.g.::

    datasets.load_dataset("cifar100").save_to_disk("DIR")

Fields become tasks: `config.data.input_field` (default `image`) is the
input (an image feature, `{bytes, path}`, decoded with Pillow; text,
tokenized by `config.data.tokenizer` (mtkd/data/tokenize.py) into
`[max_len]` ids with PAD = 0; or a numeric array); `config.data.tasks = {task: field}` maps tasks to integer
label fields (default: every ClassLabel field, each a task of its name).
Class counts come from the ClassLabel metadata (`dataset_info.json`, or
the `huggingface` schema metadata a Parquet file written by `datasets`
carries), else from the largest label + 1 over both splits. Example ids:
`config.data.id_field` when the data has it (checked unique), else the row
index in file order (files sorted by name), stable across runs.
"""

import glob
import json
import os

import numpy as np

from mtkd.data import fields as fields_lib
from mtkd.data import tokenize
from mtkd.data.datasets import DATASETS, Dataset, Split
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
  input_field = cfg.get("input_field", "image") or "image"
  id_field = cfg.get("id_field", "id") or "id"
  tables = {s: read_split(root, s) for s in SPLITS}
  fields = {s: set(t.column_names) for s, (t, _) in tables.items()}
  if fields["train"] != fields["test"]:
    raise UserError(f"{root!r}: train has fields {sorted(fields['train'])}, "
                    f"test {sorted(fields['test'])}; the splits' schemas "
                    "must match.")
  meta = tables["train"][1]
  tok = None
  if _is_text(tables["train"][0], input_field):
    tok = tokenize.load(cfg.get("tokenizer") or {})
  classes = _class_labels(meta)
  tasks = fields_lib.tasks(cfg, classes, fields["train"], repr(root))
  splits = {}
  for s, (table, _) in tables.items():
    where = f"{root!r} {s} split"
    x = fields_lib.inputs(table.column(input_field).to_pylist(), input_field,
                          where, tok)
    labels = {t: np.asarray(table.column(f).to_numpy(zero_copy_only=False),
                            np.int32) for t, f in tasks.items()}
    ids = (np.asarray(table.column(id_field).to_numpy(), np.int64)
           if id_field in fields[s] else np.arange(len(x), dtype=np.int64))
    splits[s] = Split(x, labels, ids)
  num_classes = {t: classes.get(f) or 1 + int(max(
      splits[s].labels[t].max() for s in SPLITS)) for t, f in tasks.items()}
  if tok is None:
    return Dataset("hf", splits["train"], splits["test"], num_classes)
  return Dataset("hf", splits["train"], splits["test"], num_classes,
                 vocabulary=tok.fingerprint, vocab_size=tok.vocab_size)


def _is_text(table, field: str) -> bool:
  import pyarrow as pa
  if field not in table.column_names:
    return False
  t = table.schema.field(field).type
  return pa.types.is_string(t) or pa.types.is_large_string(t)

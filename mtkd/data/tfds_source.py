"""TFDS datasets prepared on disk in ArrayRecord, read without TensorFlow.

`config.data.name='tfds'`, `config.data.tfds_name=NAME` (e.g. 'cifar100'),
`config.data.dir=DATA_DIR` (TFDS's data_dir; '' = ~/tensorflow_datasets),
`config.data.tfds_splits = {train, test}` (TFDS split names, e.g. CelebA's
test may be 'validation'). Read with `tfds.data_source` (random access over
ArrayRecord; TFDS decodes images with Pillow), so TensorFlow is never
imported. Prepare the data on a machine with internet:

    tfds build NAME --data_dir=DATA_DIR --file_format=array_record

Fields become tasks as for the 'hf' source (mtkd/data/fields.py): the
input field (default `image`; text fields are tokenized), `config.data.
tasks = {task: field}` (default: every ClassLabel feature, its class count
from the feature). Example ids: `config.data.id_field` when the dataset
has it (checked unique), else the row index in TFDS's stored order, which
`tfds build` makes deterministic.
"""

import os

import numpy as np

from mtkd.data import fields as fields_lib
from mtkd.data import tokenize
from mtkd.data.datasets import DATASETS, Dataset, Split
from mtkd.errors import UserError

_CHUNK = 1024  # Rows read per `__getitems__` call.


def _source(name: str, data_dir: str, split: str):
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    raise UserError("config.data.name='tfds' needs tensorflow-datasets "
                    "(pip install tensorflow-datasets; TensorFlow itself is "
                    "not needed).") from None
  fix = (f"Prepare it on a machine with internet: `tfds build {name} "
         f"--data_dir={data_dir} --file_format=array_record`, copy that "
         "folder here and pass --config.data.dir=DIR.")
  try:
    return tfds.data_source(name, data_dir=data_dir, split=split)
  except Exception as e:  # noqa: BLE001 - TFDS raises many kinds; all fatal.
    raise UserError(f"Cannot read TFDS dataset {name!r} split {split!r} from "
                    f"{data_dir!r} ({type(e).__name__}: "
                    f"{str(e).splitlines()[0][:300]}). {fix}") from None


def _class_labels(features) -> dict[str, int]:
  import tensorflow_datasets as tfds
  return {k: int(f.num_classes) for k, f in features.items()
          if isinstance(f, tfds.features.ClassLabel)}


def _read(src, columns: list[str]) -> dict[str, list]:
  out = {c: [] for c in columns}
  for start in range(0, len(src), _CHUNK):
    for row in src.__getitems__(range(start, min(start + _CHUNK, len(src)))):
      for c in columns:
        out[c].append(row[c])
  return out


@DATASETS.register("tfds")
def tfds_dataset(cfg) -> Dataset:
  name = cfg.get("tfds_name", "")
  if not name:
    raise UserError("config.data.name='tfds' needs config.data.tfds_name, "
                    "the TFDS dataset name (e.g. 'cifar100').")
  data_dir = os.path.expanduser(cfg.get("dir", "") or "~/tensorflow_datasets")
  splits_cfg = dict(cfg.get("tfds_splits") or {})
  names = {s: splits_cfg.get(s, s) for s in ("train", "test")}
  sources = {s: _source(name, data_dir, n) for s, n in names.items()}
  features = sources["train"].dataset_info.features
  available = set(features.keys())
  where = f"TFDS dataset {name!r}"
  classes = _class_labels(features)
  tasks = fields_lib.tasks(cfg, classes, available, where)
  input_field = cfg.get("input_field", "image") or "image"
  id_field = cfg.get("id_field", "id") or "id"
  columns = [input_field, *dict.fromkeys(tasks.values())]
  if id_field in available:
    columns.append(id_field)
  tok, splits = None, {}
  for s, src in sources.items():
    if len(src) == 0:
      raise UserError(f"{where} split {names[s]!r} is empty.")
    data = _read(src, columns)
    if tok is None and fields_lib.is_text(data[input_field][0]):
      tok = tokenize.load(cfg.get("tokenizer") or {})
    x = fields_lib.inputs(data[input_field], input_field,
                          f"{where} {names[s]} split", tok)
    labels = {t: np.asarray(data[f], np.int32) for t, f in tasks.items()}
    ids = (np.asarray(data[id_field], np.int64) if id_field in available
           else np.arange(len(x), dtype=np.int64))
    splits[s] = Split(x, labels, ids)
  num_classes = {t: classes.get(f) or 1 + int(max(
      splits[s].labels[t].max() for s in splits)) for t, f in tasks.items()}
  extra = {} if tok is None else dict(vocabulary=tok.fingerprint,
                                      vocab_size=tok.vocab_size)
  return Dataset("tfds", splits["train"], splits["test"], num_classes,
                 **extra)

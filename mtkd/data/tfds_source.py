"""TFDS datasets prepared on disk in ArrayRecord, read without TensorFlow.

`config.data.name='tfds'`, `config.data.tfds_name=NAME` (e.g. 'cifar100'),
`config.data.dir=DATA_DIR` (TFDS's data_dir; '' = ~/tensorflow_datasets),
`config.data.splits = {train, test}` (the TFDS split names read as
mtkd's train and test; e.g. test='validation'). Read with `tfds.data_source` (random access over
ArrayRecord; TFDS decodes images with Pillow), so TensorFlow is never
imported. Prepare the data on a machine with internet:

    tfds build NAME --data_dir=DATA_DIR --file_format=array_record

Fields become tasks as for the 'hf' source (mtkd/data/fields.py): the
input field (default `image`; text fields are tokenized), `config.data.
tasks` (default: every ClassLabel feature, its class count from the
feature; nested features are named `parent/child`, e.g. CelebA's
`attributes/Smiling`). Example ids: `config.data.id_field` when the
dataset has it (CIFAR's string ids hashed), else the row index in TFDS's
stored order, which `tfds build` makes deterministic.
"""

import os

import numpy as np

from mtkd.data import fields as fields_lib
from mtkd.data.datasets import DATASETS, Dataset
from mtkd.data.lazy import LazyRows
from mtkd.errors import UserError

_CHUNK = 1024  # Rows read per `__getitems__` call.


def _source(name: str, data_dir: str, split: str, encoded: str = ""):
  """`tfds.data_source` of a split; the image feature `encoded` (if any)
  is left as its encoded bytes (read lazily, decoded per batch)."""
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
    return tfds.data_source(name, data_dir=data_dir, split=split, decoders=(
        {encoded: tfds.decode.SkipDecoding()} if encoded else None))
  except Exception as e:  # noqa: BLE001 - TFDS raises many kinds; all fatal.
    raise UserError(f"Cannot read TFDS dataset {name!r} split {split!r} from "
                    f"{data_dir!r} ({type(e).__name__}: "
                    f"{str(e).splitlines()[0][:300]}). {fix}") from None


def _flat_features(features, prefix: str = "") -> dict:
  """{'parent/child': feature} over nested FeaturesDicts."""
  import tensorflow_datasets as tfds
  out = {}
  for k, f in features.items():
    if isinstance(f, tfds.features.FeaturesDict):
      out.update(_flat_features(f, f"{prefix}{k}/"))
    else:
      out[f"{prefix}{k}"] = f
  return out


def _flat(row: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in row.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}/"))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _read(src, columns: list[str]) -> dict[str, list]:
  out = {c: [] for c in columns}
  for start in range(0, len(src), _CHUNK):
    for row in src.__getitems__(range(start, min(start + _CHUNK, len(src)))):
      row = _flat(row)
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
  splits_cfg = dict(cfg.get("splits") or {})
  names = {s: splits_cfg.get(s, s) for s in ("train", "test")}
  sources = {s: _source(name, data_dir, n) for s, n in names.items()}
  import tensorflow_datasets as tfds
  features = _flat_features(sources["train"].dataset_info.features)
  classes = {k: int(f.num_classes) for k, f in features.items()
             if isinstance(f, tfds.features.ClassLabel)}
  where = f"TFDS dataset {name!r}"
  available = list(features)
  tasks = fields_lib.task_fields(cfg, classes, available, where)
  is_lazy = bool(cfg.get("lazy", False))
  read = fields_lib.needed(cfg, tasks, available, inputs=not is_lazy)
  columns, lazy_inputs = {}, {}
  for s, src in sources.items():
    if len(src) == 0:
      raise UserError(f"{where} split {names[s]!r} is empty.")
    if is_lazy:  # Labels and ids now; images when a batch needs them.
      field = fields_lib.input_field(cfg, available)
      src = _source(name, data_dir, names[s], encoded=field)
      lazy_inputs[s] = _lazy_images(cfg, src, features, name, names[s])
    columns[s] = _read(src, read)
  return fields_lib.assemble(cfg, "tfds", columns, classes, tasks, available,
                             where, lazy_inputs or None)


def _lazy_images(cfg, src, features, name: str, split: str) -> LazyRows:
  """The split's images as `LazyRows` over an undecoding TFDS source:
  decoded (and resized to `image_size`) with Pillow as rows are read."""
  import tensorflow_datasets as tfds
  field = fields_lib.input_field(cfg, list(features))
  f = features.get(field)
  if not isinstance(f, tfds.features.Image):
    raise UserError(f"config.data.lazy=True reads image fields; {field!r} "
                    f"of TFDS dataset {name!r} is {type(f).__name__}.")
  size = int(cfg.get("image_size", 0) or 0)
  h, w, c = f.shape
  if size:
    h = w = size
  if h is None or w is None:
    raise UserError(f"TFDS dataset {name!r}'s images vary in size; set "
                    "config.data.image_size to read them lazily.")

  def read(rows: np.ndarray) -> np.ndarray:
    out = []
    for row in src.__getitems__([int(r) for r in rows]):
      x = fields_lib.decode_one(row[field], size)
      out.append(x)
    return np.stack(out)

  info = src.dataset_info
  files = sorted((os.path.basename(str(fi.filename)), fi.take, fi.skip)
                 for fi in info.splits[split].file_instructions)
  identity = f"tfds:{name}:{info.version}:{split}:{len(src)}:{files}:{size}"
  return LazyRows(read, (h, w, c), np.dtype(np.uint8), identity,
                  np.arange(len(src)))

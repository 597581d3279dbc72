"""Columns of on-disk datasets (Hugging Face, TFDS) as an mtkd `Dataset`:
shared by the sources, so a field means the same thing in each.

- Input (`config.data.input_field`, default `image`, or `text` for data
  with a `text` field and no `image` one): encoded images
  (`{bytes, path}` dicts, decoded with Pillow), decoded image arrays, text
  (`str`, or UTF-8 `bytes` as TFDS stores it: token ids of
  `config.data.tokenizer`, PAD = 0; with `config.data.pair_field`, text
  pairs such as GLUE's sentence1 / sentence2) or numeric arrays. Images of several
  sizes need `config.data.image_size` = S: each resized to S x S
  (bilinear, as the 'folder' source).
- Tasks (`config.data.tasks`, default: every class-label field, each a
  task of its name): `{task: field}` for a classification task, or
  `{task: {fields, kind: 'multilabel'}}` for 0/1 (or bool) fields stacked
  into one multilabel task; `fields` is a list or a glob over the field
  names (nested TFDS features are named `parent/child`, e.g. CelebA's
  `attributes/*`, kept in the dataset's order). Class counts come from the
  class-label metadata, else the largest label + 1 over both splits.
- Ids (`config.data.id_field`, default `id`) when the data has the field:
  integers as they are, strings (TFDS's CIFAR ids, 'train_16399') as a
  stable 63-bit hash of their UTF-8 bytes; else the row index in the
  source's stored order. Uniqueness is checked by `datasets.validate`.
"""

import dataclasses
import fnmatch
import hashlib
import io
from collections.abc import Mapping, Sequence

import numpy as np

from mtkd.data import tokenize
from mtkd.data.datasets import Dataset, Split
from mtkd.data.lazy import LazyRows
from mtkd.errors import UserError


def is_text(value) -> bool:
  return isinstance(value, str | bytes)


def _decode(item) -> np.ndarray:
  from PIL import Image
  with Image.open(io.BytesIO(item["bytes"])) as im:
    return np.asarray(im)


def decode_one(value, image_size: int = 0) -> np.ndarray:
  """One encoded image (bytes or `{bytes}`) as uint8 [H, W, C], resized
  to `image_size` x `image_size` when it is > 0."""
  x = _decode(value if isinstance(value, dict) else {"bytes": value})
  x = x if x.ndim == 3 else x[..., None]
  return _resize(x, image_size) if image_size else x


def decode_images(column: list, field: str, where: str, on_corrupt: str
                  ) -> list | None:
  """Encoded images (`{bytes, path}`) decoded, None where a row does not
  decode and `on_corrupt='skip'` (else it fails); None for other columns."""
  if not column or not (isinstance(column[0], dict) and "bytes" in column[0]):
    return None
  out = []
  for i, item in enumerate(column):
    try:
      out.append(_decode(item))
    except (OSError, ValueError, TypeError, KeyError) as e:
      if on_corrupt != "skip":
        raise UserError(f"{where}: row {i} of {field!r} is not a decodable "
                        f"image ({type(e).__name__}: {e}). Fix: repair or "
                        "drop it, or set config.data.on_corrupt='skip'."
                        ) from None
      out.append(None)
  return out


def _resize(x: np.ndarray, size: int) -> np.ndarray:
  from PIL import Image
  if x.shape[:2] == (size, size):
    return x
  im = Image.fromarray(x[..., 0] if x.shape[-1] == 1 else x)
  out = np.asarray(im.resize((size, size), Image.BILINEAR))
  return out if out.ndim == 3 else out[..., None]


def _texts(column: list, field: str, where: str) -> list[str]:
  if not all(is_text(t) for t in column):
    raise UserError(f"{where}: field {field!r} mixes text with other "
                    "values (or nulls).")
  return [t.decode("utf-8") if isinstance(t, bytes) else t for t in column]


def inputs(column: list, field: str, where: str, tokenizer=None,
           image_size: int = 0, pairs: list | None = None) -> np.ndarray:
  """The input array of one split's `column` (module docstring); images
  resized to `image_size` x `image_size` (bilinear) when it is > 0; text
  with `pairs` (the pair field's column) encoded as text pairs."""
  first = column[0]
  if is_text(first):
    return tokenizer.encode(_texts(column, field, where), None if pairs is None
                            else _texts(pairs, "pair_field", where))[0]
  if isinstance(first, np.ndarray) and first.ndim >= 2:  # Images.
    out = [x if x.ndim == 3 else x[..., None] for x in column]
    if image_size:
      out = [_resize(x, image_size) for x in out]
    shapes = {x.shape for x in out}
    if len(shapes) > 1:
      raise UserError(f"{where}: images of {field!r} differ in size "
                      f"({sorted(shapes)[:3]}); set config.data.image_size "
                      "to resize them.")
    return np.stack(out)
  try:
    return np.asarray(column, np.float32)
  except (TypeError, ValueError):
    raise UserError(f"{where}: field {field!r} is neither an image feature, "
                    "text nor numeric arrays of one shape.") from None


def input_field(cfg, available: Sequence[str]) -> str:
  """`config.data.input_field`; its default, `image`, reads `text` in a
  text dataset (a `text` field and no `image` one)."""
  field = cfg.get("input_field", "image") or "image"
  if field == "image" and field not in available and "text" in available:
    return "text"
  return field


@dataclasses.dataclass(frozen=True)
class TaskField:
  fields: tuple[str, ...]
  kind: str  # 'classification' (one field) or 'multilabel'.


def task_fields(cfg, classes: Mapping[str, int], available: Sequence[str],
                where: str) -> dict[str, TaskField]:
  """The tasks `cfg.tasks` names (module docstring), fields checked."""
  spec = dict(cfg.get("tasks") or {}) or {name: name for name in classes}
  if not spec:
    raise UserError(f"{where} has no class-label field; name the label "
                    "fields with config.data.tasks = {task: field}.")
  out = {}
  for task, v in spec.items():
    if isinstance(v, str):
      v = {"fields": v}
    v = dict(v)
    kind = v.get("kind", "classification")
    if kind not in ("classification", "multilabel"):
      raise UserError(f"config.data.tasks.{task}.kind is {kind!r}; use "
                      "'classification' or 'multilabel'.")
    patterns = v.get("fields", v.get("field", ""))
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    fields = [f for p in patterns for f in
              ([p] if p in available else fnmatch.filter(available, p))]
    if not fields or len(fields) != len(set(fields)):
      raise UserError(
          f"{where} has no field {patterns[0] if len(patterns) == 1 else patterns!r}"
          f" for task {task!r} (or names one twice); it has "
          f"{sorted(available)}. Fix config.data.tasks.")
    if kind == "classification" and len(fields) != 1:
      raise UserError(f"Task {task!r} names {len(fields)} fields; a "
                      "classification task has one (several 0/1 fields: "
                      "kind='multilabel').")
    out[task] = TaskField(tuple(fields), kind)
  for key, field in (("input_field", input_field(cfg, available)),
                     ("pair_field", cfg.get("pair_field", ""))):
    if field and field not in available:
      raise UserError(f"{where} has no field {field!r}; it has "
                      f"{sorted(available)}. Fix config.data.{key}.")
  return out


def needed(cfg, tasks: Mapping[str, TaskField], available,
           inputs: bool = True) -> list[str]:
  """The fields to read: input (unless not `inputs`), labels, and the id
  field if present."""
  id_field = cfg.get("id_field", "id") or "id"
  out = [input_field(cfg, available)] if inputs else []
  if inputs and cfg.get("pair_field", ""):
    out.append(cfg.pair_field)
  out += [f for t in tasks.values() for f in t.fields]
  if id_field in available:
    out.append(id_field)
  return list(dict.fromkeys(out))


def _ids(values: list, n: int, field: str | None) -> np.ndarray:
  if field is None:
    return np.arange(n, dtype=np.int64)
  if values and isinstance(values[0], str | bytes):
    return np.array([int.from_bytes(hashlib.blake2b(
        v.encode("utf-8") if isinstance(v, str) else v,
        digest_size=8).digest(), "little") >> 1 for v in values], np.int64)
  return np.asarray(values, np.int64)


def _labels(columns: Mapping[str, list], t: TaskField, where: str,
            task: str) -> np.ndarray:
  if t.kind == "classification":
    try:
      return np.asarray(columns[t.fields[0]], np.int32)
    except (TypeError, ValueError):
      raise UserError(f"{where}: field {t.fields[0]!r} of task {task!r} is "
                      "not integer class labels.") from None
  y = np.stack([np.asarray(columns[f]).astype(np.int32) for f in t.fields], 1)
  return y


def assemble(cfg, name: str, columns: Mapping[str, Mapping[str, list]],
             classes: Mapping[str, int], tasks: Mapping[str, TaskField],
             available: Sequence[str], where: str,
             lazy_inputs: Mapping[str, LazyRows] | None = None) -> Dataset:
  """The `Dataset` of per-split `{field: values}` (module docstring);
  `lazy_inputs`: each split's inputs, read on demand (the columns then
  hold no input field)."""
  field = input_field(cfg, available)
  id_field = cfg.get("id_field", "id") or "id"
  first = None if lazy_inputs else columns["train"][field]
  tok = (tokenize.load(cfg.get("tokenizer") or {})
         if first and is_text(first[0]) else None)
  splits = {}
  for s, cols in columns.items():
    at = f"{where} {s} split"
    if lazy_inputs:
      ids = _ids(cols.get(id_field), len(lazy_inputs[s]),
                 id_field if id_field in available else None)
      splits[s] = Split(lazy_inputs[s], {t: _labels(cols, f, at, t)
                                         for t, f in tasks.items()}, ids)
      continue
    decoded = decode_images(cols[field], field, at,
                            cfg.get("on_corrupt", "fail"))
    if decoded is not None:
      keep = [x is not None for x in decoded]
      cols = dict(cols, **{field: decoded})
      if not all(keep):
        print(f"mtkd: warning: {at}: skipped {keep.count(False)} "
              f"undecodable image(s) of {len(keep)} (config.data."
              "on_corrupt='skip').", flush=True)
        if not any(keep):
          raise UserError(f"{at}: no decodable images in {field!r}.")
        cols = {f: [v for v, k in zip(vals, keep, strict=True) if k]
                for f, vals in cols.items()}
    pair = cfg.get("pair_field", "")
    if pair and tok is None:
      raise UserError(f"{at}: config.data.pair_field={pair!r} pairs text "
                      f"fields; {field!r} is not text.")
    x = inputs(cols[field], field, at, tok,
               int(cfg.get("image_size", 0) or 0),
               cols[pair] if pair else None)
    labels = {t: _labels(cols, f, at, t) for t, f in tasks.items()}
    splits[s] = Split(x, labels, _ids(cols.get(id_field), len(x),
                                      id_field if id_field in available
                                      else None))
  num_classes = {
      t: len(f.fields) if f.kind == "multilabel" else (
          classes.get(f.fields[0]) or 1 + int(max(
              sp.labels[t].max() for sp in splits.values())))
      for t, f in tasks.items()}
  kinds = {t: f.kind for t, f in tasks.items() if f.kind != "classification"}
  extra = {} if tok is None else dict(vocabulary=tok.fingerprint,
                                      vocab_size=tok.vocab_size)
  return Dataset(name, splits["train"], splits["test"], num_classes,
                 kinds=kinds, **extra)

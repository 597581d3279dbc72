"""Columns of on-disk datasets (Hugging Face, TFDS) as mtkd inputs and
tasks: shared by the sources so a field means the same thing in each.

Inputs: encoded images (`{bytes, path}` dicts, decoded with Pillow),
decoded image arrays, text (`str`, or UTF-8 `bytes` as TFDS stores it;
token ids of the config's tokenizer, PAD = 0) or numeric arrays. Tasks:
`config.data.tasks = {task: field}`, by default every class-label field.
"""

import io
from collections.abc import Collection, Mapping

import numpy as np

from mtkd.errors import UserError


def is_text(value) -> bool:
  return isinstance(value, str | bytes)


def _decode(item, i: int, field: str, where: str) -> np.ndarray:
  from PIL import Image
  try:
    with Image.open(io.BytesIO(item["bytes"])) as im:
      x = np.asarray(im)
  except (OSError, ValueError, TypeError) as e:
    raise UserError(f"{where}: row {i} of {field!r} is not a decodable "
                    f"image ({type(e).__name__}: {e}).") from None
  return x


def inputs(column: list, field: str, where: str, tokenizer=None
           ) -> np.ndarray:
  """The input array of one split's `column` (module docstring)."""
  first = column[0]
  if is_text(first):
    if not all(is_text(t) for t in column):
      raise UserError(f"{where}: field {field!r} mixes text with other "
                      "values (or nulls).")
    return tokenizer.encode([t.decode("utf-8") if isinstance(t, bytes)
                             else t for t in column])[0]
  if isinstance(first, dict) and "bytes" in first:
    column = [_decode(item, i, field, where) for i, item in enumerate(column)]
    first = column[0]
  if isinstance(first, np.ndarray) and first.ndim >= 2:  # Images.
    out = [x if x.ndim == 3 else x[..., None] for x in column]
    shapes = {x.shape for x in out}
    if len(shapes) > 1:
      raise UserError(f"{where}: images of {field!r} differ in size "
                      f"({sorted(shapes)[:3]}); resize them when preparing "
                      "the data.")
    return np.stack(out)
  try:
    return np.asarray(column, np.float32)
  except (TypeError, ValueError):
    raise UserError(f"{where}: field {field!r} is neither an image feature, "
                    "text nor numeric arrays of one shape.") from None


def tasks(cfg, classes: Mapping[str, int], available: Collection[str],
          where: str) -> dict[str, str]:
  """{task: label field}: `cfg.tasks`, else every class-label field; every
  named field (and the input field) checked present."""
  out = dict(cfg.get("tasks") or {}) or {name: name for name in classes}
  if not out:
    raise UserError(f"{where} has no class-label field; name the label "
                    "fields with config.data.tasks = {task: field}.")
  input_field = cfg.get("input_field", "image") or "image"
  for field in [input_field, *out.values()]:
    if field not in available:
      raise UserError(f"{where} has no field {field!r}; it has "
                      f"{sorted(available)}. Fix config.data."
                      f"{'input_field' if field == input_field else 'tasks'}.")
  return out

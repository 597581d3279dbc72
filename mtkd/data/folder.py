"""Image folders: `root/<split>/<class>/<image>.png|jpg|jpeg`.

`config.data.name='folder'`, `config.data.dir=root`. One classification
task (`config.data.task`, default `label`) whose classes are the class
folders' names in sorted order, the same in every split (a class folder
missing from the test split is fine; one the train split lacks is an
error). Images are decoded with Pillow to uint8 `[H, W, C]` (`mode`:
'RGB' by default, 'L' for grey) and, with `config.data.image_size` = S,
resized to S x S (bilinear); without it every image must share one size.

Example ids: the position of the image's path (relative to the split
folder, '/'-separated) in the sorted order of all the split's paths, so
they are stable across runs and machines and do not depend on the order
the file system lists them in; adding or removing images renumbers them
(the caches then refuse the data: their dataset fingerprint changes).

Unreadable images fail with their path (`config.data.on_corrupt='fail'`,
the default), or are skipped and counted (`'skip'`). Everything is decoded
into memory when the dataset is built, unless `config.data.lazy=True`:
then images stay on disk and each batch's rows are decoded when a process
gathers its share (`mtkd.data.lazy`; needs `image_size`; an unreadable
image fails when it is read).
"""

import os

import numpy as np

from mtkd.data.datasets import DATASETS, Dataset, Split
from mtkd.data.lazy import LazyRows
from mtkd.errors import UserError

EXTENSIONS = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "test")


def _layout_error(root: str, why: str) -> UserError:
  return UserError(
      f"Image folder {root!r}: {why}. Expected {root}/train/<class>/*.png "
      f"and {root}/test/<class>/*.png (or .jpg). Fix --config.data.dir.")


def list_images(split_dir: str) -> tuple[list[str], list[str]]:
  """(sorted relative paths, their class names) under `split_dir`."""
  paths, classes = [], []
  for cls in sorted(os.listdir(split_dir)):
    cdir = os.path.join(split_dir, cls)
    if not os.path.isdir(cdir):
      continue
    for dirpath, _, files in os.walk(cdir):
      for f in files:
        if f.lower().endswith(EXTENSIONS):
          rel = os.path.relpath(os.path.join(dirpath, f), split_dir)
          paths.append(rel.replace(os.sep, "/"))
          classes.append(cls)
  order = np.argsort(paths, kind="stable")
  return [paths[i] for i in order], [classes[i] for i in order]


def _decode(path: str, mode: str, size: int):
  from PIL import Image
  with Image.open(path) as im:
    im = im.convert(mode)
    if size:
      im = im.resize((size, size), Image.BILINEAR)
    x = np.asarray(im, np.uint8)
  return x if x.ndim == 3 else x[..., None]


def lazy_split(split_dir: str, class_index: dict[str, int], task: str,
               mode: str, size: int) -> Split:
  """The split with its images as `LazyRows`: decoded when read."""
  paths, classes = list_images(split_dir)
  for cls in set(classes) - set(class_index):
    raise UserError(f"{split_dir}/{cls}: a class the train split does not "
                    "have. Fix: add it to train, or remove it.")
  if not paths:
    raise UserError(f"No images under {split_dir}.")
  full = [os.path.join(split_dir, p) for p in paths]

  def read(rows: np.ndarray) -> np.ndarray:
    out = []
    for r in rows:
      try:
        out.append(_decode(full[r], mode, size))
      except (OSError, ValueError) as e:
        raise UserError(f"Cannot decode image {full[r]} ({type(e).__name__}:"
                        f" {e}). Fix: replace or delete it (or read the data "
                        "into memory, config.data.lazy=False, with "
                        "on_corrupt='skip').") from None
    return np.stack(out)

  identity = "folder:" + repr([(p, os.path.getsize(f)) for p, f in zip(
      paths, full, strict=True)]) + f":{mode}:{size}"
  channels = 1 if mode == "L" else len(mode)
  x = LazyRows(read, (size, size, channels), np.dtype(np.uint8), identity,
               np.arange(len(paths)))
  return Split(x, {task: np.asarray([class_index[c] for c in classes],
                                    np.int32)},
               np.arange(len(paths), dtype=np.int64))


def load_split(split_dir: str, class_index: dict[str, int], task: str,
               mode: str, size: int, on_corrupt: str) -> tuple[Split, int]:
  """The split (images, the task's labels, ids) and how many images were
  skipped as unreadable."""
  paths, classes = list_images(split_dir)
  xs, ys, ids, skipped = [], [], [], 0
  for i, (rel, cls) in enumerate(zip(paths, classes, strict=True)):
    if cls not in class_index:
      raise UserError(f"{split_dir}/{cls}: a class the train split does not "
                      "have. Fix: add it to train, or remove it.")
    path = os.path.join(split_dir, rel)
    try:
      x = _decode(path, mode, size)
    except (OSError, ValueError) as e:
      if on_corrupt == "skip":
        skipped += 1
        continue
      raise UserError(f"Cannot decode image {path} ({type(e).__name__}: "
                      f"{e}). Fix: replace or delete it, or set "
                      "config.data.on_corrupt='skip'.") from None
    if xs and x.shape != xs[0].shape:
      raise UserError(f"Image {path} is {x.shape[:2]} but "
                      f"{os.path.join(split_dir, paths[0])} is "
                      f"{xs[0].shape[:2]}. Fix: set config.data.image_size "
                      "to resize every image.")
    xs.append(x)
    ys.append(class_index[cls])
    ids.append(i)
  if not xs:
    raise UserError(f"No decodable images under {split_dir}.")
  return Split(np.stack(xs), {task: np.asarray(ys, np.int32)},
               np.asarray(ids, np.int64)), skipped


@DATASETS.register("folder")
def folder(cfg) -> Dataset:
  root = os.path.expanduser(cfg.get("dir", "") or "")
  if not root:
    raise UserError("config.data.name='folder' needs --config.data.dir=ROOT "
                    "(ROOT/train/<class>/*.png, ROOT/test/<class>/*.png).")
  for split in SPLITS:
    if not os.path.isdir(os.path.join(root, split)):
      raise _layout_error(root, f"there is no {split}/ folder")
  on_corrupt = cfg.get("on_corrupt", "fail")
  if on_corrupt not in ("fail", "skip"):
    raise UserError(f"config.data.on_corrupt={on_corrupt!r}: use 'fail' or "
                    "'skip'.")
  names = sorted(set(list_images(os.path.join(root, "train"))[1]))
  if len(names) < 2:
    raise _layout_error(root, f"train/ has {len(names)} class folder(s) "
                        "with images; a task needs at least 2")
  index = {c: i for i, c in enumerate(names)}
  task = cfg.get("task", "label") or "label"
  mode, size = cfg.get("mode", "RGB"), int(cfg.get("image_size", 0) or 0)
  splits = {}
  if cfg.get("lazy", False):
    if not size or on_corrupt != "fail":
      raise UserError("config.data.lazy=True reads images per batch: it "
                      "needs config.data.image_size (their size, unknown "
                      "until read) and on_corrupt='fail'.")
    return Dataset("folder", *(lazy_split(os.path.join(root, name), index,
                                          task, mode, size)
                               for name in SPLITS), {task: len(names)})
  for name in SPLITS:
    splits[name], skipped = load_split(os.path.join(root, name), index,
                                       task, mode, size, on_corrupt)
    if skipped:
      print(f"folder: skipped {skipped} unreadable image(s) in {name}/.")
  if splits["train"].x.shape[1:] != splits["test"].x.shape[1:]:
    raise UserError(f"Image folder {root!r}: train images are "
                    f"{splits['train'].x.shape[1:]}, test images "
                    f"{splits['test'].x.shape[1:]}. Fix: set "
                    "config.data.image_size.")
  return Dataset("folder", splits["train"], splits["test"],
                 {task: len(names)})

"""In-memory multi-task datasets with stable example ids.

Every dataset is a `Dataset` of two `Split`s. A split holds inputs `x`
(`[N, H, W, C]` images or `[N, D]` vectors; uint8 images are scaled to [0, 1]
when batched), one int32 label array per task (-1 marks "no label for this
task"), and unique int64 example ids. The ids are what the teacher-logit cache
is keyed by, so they must not depend on shuffling or on the label budget.

Builders are registered by name (`DATASETS`) in their own modules and take
the `config.data` ConfigDict; `mtkd.data` imports them all.
"""

import dataclasses
from collections.abc import Mapping

import numpy as np

from mtkd.data import lazy
from mtkd.errors import UserError
from mtkd.registry import Registry
from mtkd.store.fingerprint import tree_fingerprint

DATASETS: Registry = Registry("dataset")

@dataclasses.dataclass(frozen=True)
class Split:
  x: np.ndarray
  labels: Mapping[str, np.ndarray]
  ids: np.ndarray
  # Relative sampling weight of each row in training (None: uniform epochs;
  # mixed datasets, `mtkd.data.mix`).
  weights: np.ndarray | None = None

  def __len__(self) -> int:
    return int(self.x.shape[0])

  def take(self, index: np.ndarray | slice) -> "Split":
    return Split(lazy.rows(self.x, index),
                 {t: y[index] for t, y in self.labels.items()},
                 self.ids[index],
                 None if self.weights is None else self.weights[index])

  def fingerprint(self) -> str:
    """Content hash of inputs, labels and ids (order-sensitive); inputs
    read on demand (`lazy.LazyRows`) count by their source's identity."""
    x = self.x.fingerprint() if isinstance(self.x, lazy.LazyRows) else self.x
    return tree_fingerprint({"x": x, "ids": self.ids,
                             "labels": dict(self.labels)})


@dataclasses.dataclass(frozen=True)
class Dataset:
  name: str
  train: Split
  test: Split
  num_classes: Mapping[str, int]  # Output size: classes, labels or dims.
  kinds: Mapping[str, str] = dataclasses.field(default_factory=dict)
  val: Split | None = None  # Held out of train (`config.data.val_size`).
  # Fingerprint of the tokenizer's vocabulary ('' = not text): caches of a
  # sequence or text task record it, so another vocabulary is refused.
  vocabulary: str = ""
  # Token-id table size a text trunk needs (PAD included; 0 = not text):
  # a model's smaller `vocab_size` would read real tokens as UNK.
  vocab_size: int = 0

  def kind(self, task: str) -> str:
    """'classification' (the default), 'multilabel', 'regression' or
    'sequence' (labels [N, L]: a class at each position, -1 = none)."""
    return self.kinds.get(task, "classification")

  @property
  def tasks(self) -> tuple[str, ...]:
    return tuple(self.num_classes)

  @property
  def input_shape(self) -> tuple[int, ...]:
    return tuple(self.train.x.shape[1:])


def _labels_from(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {t: (np.asarray(y, np.float32) if np.issubdtype(
      np.asarray(y).dtype, np.floating) else np.asarray(y, np.int32))
          for t, y in arrays.items()}


def make_split(x, labels, ids=None) -> Split:
  """A `Split` from arrays; ids default to 0..N-1, labels cast by kind."""
  ids = np.arange(len(x), dtype=np.int64) if ids is None else np.asarray(
      ids, np.int64)
  return Split(np.asarray(x), _labels_from(labels), ids)


# ------------------------------------------------------------- validation


def next_tokens(x: np.ndarray) -> np.ndarray:
  """Language-model targets of token ids `[N, L]` (PAD = 0 after each
  text): position i's target is token i + 1, -1 where that is PAD or
  beyond the end."""
  x = np.asarray(x)
  y = np.full(x.shape, -1, np.int32)
  y[:, :-1] = np.where(x[:, 1:] != 0, x[:, 1:], -1)
  return y


def validate(ds: Dataset, source: str) -> None:
  """Checks the invariants every stage relies on; raises UserError."""
  tasks = list(ds.num_classes)
  splits = (("train", ds.train), ("test", ds.test)) + (
      (("val", ds.val),) if ds.val is not None else ())
  for name, split in splits:
    where = f"{source} {name} split"
    if len(split) == 0:
      raise UserError(f"The {where} is empty. Fix the data source or "
                      "config.data.max_train/max_test.")
    if sorted(split.labels) != sorted(tasks):
      raise UserError(f"The {where} has tasks {sorted(split.labels)}, "
                      f"expected {sorted(tasks)}.")
    if split.x.ndim not in (2, 4):
      raise UserError(
          f"The {where} has inputs of shape {split.x.shape}; expected images "
          "[N, H, W, C] (or [N, H, W]) or vectors [N, D].")
    if isinstance(split.x, np.ndarray) and np.issubdtype(
        split.x.dtype, np.floating) and not np.isfinite(split.x).all():
      bad = np.flatnonzero(~np.isfinite(split.x.reshape(len(split), -1)).all(1))
      raise UserError(f"The {where} has NaN or Inf in the inputs of "
                      f"{len(bad)} example(s) (first rows: {bad[:5].tolist()})."
                      " Clean or drop them before training.")
    if split.ids.shape != (len(split),):
      raise UserError(f"The {where} has {split.ids.shape} ids for "
                      f"{len(split)} examples; need one id per example.")
    if len(np.unique(split.ids)) != len(split):
      raise UserError(f"The {where} has duplicate example ids; ids key the "
                      "teacher-logit cache and must be unique.")
    for t in tasks:
      _validate_labels(ds, t, split.labels[t], len(split), where)
  if ds.train.x.shape[1:] != ds.test.x.shape[1:]:
    raise UserError(f"{source}: train inputs have shape {ds.train.x.shape[1:]}"
                    f" but test inputs {ds.test.x.shape[1:]}; they must match.")


def _validate_labels(ds: Dataset, t: str, y: np.ndarray, n: int,
                     where: str) -> None:
  kind, size = ds.kind(t), ds.num_classes[t]
  if kind not in ("classification", "multilabel", "regression", "sequence"):
    raise UserError(f"Task {t!r} has kind {kind!r}; use 'classification', "
                    "'multilabel', 'regression' or 'sequence'.")
  if kind in ("classification", "sequence"):
    shape = (n,) if kind == "classification" else (n, "L")
    if (y.ndim != len(shape) or len(y) != n
        or not np.issubdtype(y.dtype, np.integer)):
      raise UserError(f"Task {t!r} in the {where} has labels of shape "
                      f"{y.shape} and dtype {y.dtype}; a {kind} task needs "
                      f"integer labels of shape {shape} (-1 = none).".replace(
                          "'L'", "L"))
    bad = (y < -1) | (y >= size)
    if bad.any():
      raise UserError(
          f"Task {t!r} in the {where} has {int(bad.sum())} label(s) outside "
          f"[0, {size}) (e.g. {y[bad][:5].tolist()}). Labels must be class "
          "(or vocabulary) indices below the task's size, or -1 for 'none'.")
    if size < 2:
      raise UserError(f"Task {t!r} has {size} class(es); a {kind} task "
                      "needs at least 2.")
  elif kind == "multilabel":
    if y.shape != (n, size) or not np.isin(y, (-1, 0, 1)).all():
      raise UserError(f"Task {t!r} in the {where} must have 0/1 labels of "
                      f"shape ({n}, {size}) (-1 = missing); got {y.shape}.")
  elif y.shape != (n, size) or not np.issubdtype(y.dtype, np.floating):
    raise UserError(f"Task {t!r} in the {where} must have float targets of "
                    f"shape ({n}, {size}) (NaN = missing); got {y.shape} "
                    f"{y.dtype}.")


def build(cfg) -> Dataset:
  """Builds, trims (max_train/max_test, for smoke runs) and validates."""
  if cfg.get("standin"):  # Smoke runs: write the generated stand-in first.
    from mtkd.data import standin
    standin.prepare(cfg.standin)
  ds = DATASETS.get(cfg.name)(cfg)
  # [N, H, W] -> single-channel images [N, H, W, 1].
  ds = dataclasses.replace(ds, **{
      name: dataclasses.replace(split, x=split.x[..., None])
      for name, split in (("train", ds.train), ("test", ds.test))
      if split.x.ndim == 3})
  if cfg.get("pad_to", 0):
    ds = pad_images(ds, int(cfg.pad_to))
  if cfg.get("max_train", 0):
    ds = dataclasses.replace(ds, train=ds.train.take(slice(0, cfg.max_train)))
  if cfg.get("max_test", 0):
    ds = dataclasses.replace(ds, test=ds.test.take(slice(0, cfg.max_test)))
  if cfg.get("val_size", 0):
    ds = hold_out(ds, int(cfg.val_size), int(cfg.get("val_seed", 0)))
  validate(ds, f"dataset {cfg.name!r}")
  return ds


def pad_images(ds: Dataset, size: int) -> Dataset:
  """Images zero-padded (centred) to `size` x `size`, e.g. 28x28
  Fashion-MNIST as 32x32 for the CIFAR recipes."""
  def pad(split: Split) -> Split:
    if isinstance(split.x, lazy.LazyRows):
      raise UserError("config.data.pad_to needs inputs in memory; with "
                      "config.data.lazy=True, resize with image_size.")
    h, w = split.x.shape[1:3]
    if split.x.ndim != 4 or h > size or w > size:
      raise UserError(f"config.data.pad_to={size} needs images of at most "
                      f"{size}x{size}; got inputs {split.x.shape[1:]}.")
    top, left = (size - h) // 2, (size - w) // 2
    return dataclasses.replace(split, x=np.pad(
        split.x, ((0, 0), (top, size - h - top), (left, size - w - left),
                  (0, 0))))
  return dataclasses.replace(ds, train=pad(ds.train), test=pad(ds.test))


def hold_out(ds: Dataset, size: int, seed: int) -> Dataset:
  """`ds` with `size` training examples, a seeded uniform sample, moved to
  a validation split; the rest keep their order (and ids)."""
  n = len(ds.train)
  if not 0 < size < n:
    raise UserError(f"config.data.val_size={size} must lie in (0, {n}): "
                    "the validation split is carved from the training "
                    "split.")
  val = np.zeros(n, bool)
  val[np.random.default_rng(seed).choice(n, size, replace=False)] = True
  return dataclasses.replace(ds, train=ds.train.take(np.flatnonzero(~val)),
                             val=ds.train.take(np.flatnonzero(val)))


def label_budget(n: int, num_labeled: int, seed: int) -> np.ndarray:
  """Boolean mask of the examples whose labels the student may see.

  `num_labeled <= 0` (or >= n) means all. The subset is a seeded uniform
  sample, independent of the training shuffle.
  """
  if num_labeled <= 0 or num_labeled >= n:
    return np.ones(n, bool)
  mask = np.zeros(n, bool)
  mask[np.random.default_rng(seed).choice(n, num_labeled, replace=False)] = True
  return mask


def to_float(x: np.ndarray) -> np.ndarray:
  """Model inputs: uint8 images are scaled to [0, 1], the rest cast."""
  if x.dtype == np.uint8:
    return x.astype(np.float32) * np.float32(1 / 255)
  return x.astype(np.float32, copy=False)


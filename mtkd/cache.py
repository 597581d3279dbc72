"""On-disk cache of teacher logits, keyed by example id.

Layout of one cache (one teacher, one split)::

    <dir>/metadata.json      what the logits are and what produced them
    <dir>/ids.npy            int64 [N] example ids, in the split's order
    <dir>/logits_<task>.npy  [N, C] raw logits (before any temperature)

Why `.npy` read through a memory map: a training batch gathers 128 random
rows; a memory map serves that as one vectorised fancy-index (26 us per batch
at 10 classes, within 5% of in-RAM arrays at 1000 classes) without loading
the whole array first (npz) and without per-record overhead (ArrayRecord,
20-80x slower); see experiments/README.md for the measurements.

Invariants: a cache directory appears only complete (written under a
temporary name, fsynced, then renamed); opening checks every metadata field
the student relies on and each file's sha256; a lookup of an id that the
cache does not hold is an error, never a silently misaligned row.
"""

import hashlib
import json
import os
import shutil
from collections.abc import Mapping

import numpy as np

from mtkd.errors import UserError

FORMAT_VERSION = 1
METADATA = "metadata.json"


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 22), b""):
      h.update(chunk)
  return h.hexdigest()


def _fsync_dir(path: str) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def write(directory: str, ids: np.ndarray, logits: Mapping[str, np.ndarray],
          meta: Mapping, dtype: str = "float32") -> None:
  """Writes a cache atomically; refuses to replace an existing one."""
  if os.path.exists(directory):
    raise UserError(f"Refusing to overwrite the existing teacher cache "
                    f"{directory}. Delete it first if it is really stale.")
  ids = np.asarray(ids, np.int64)
  for task, x in logits.items():
    if x.ndim != 2 or x.shape[0] != len(ids):
      raise ValueError(f"logits for {task!r} have shape {x.shape}, expected "
                       f"[{len(ids)}, C].")
  tmp = f"{directory}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  arrays = {"ids.npy": ids}
  arrays.update({f"logits_{t}.npy": np.asarray(x).astype(dtype)
                 for t, x in logits.items()})
  files = {}
  for name, arr in arrays.items():
    path = os.path.join(tmp, name)
    with open(path, "wb") as f:
      np.save(f, arr, allow_pickle=False)
      f.flush()
      os.fsync(f.fileno())
    files[name] = _sha256(path)
  metadata = dict(meta, format_version=FORMAT_VERSION, num_examples=len(ids),
                  dtype=dtype, tasks=sorted(logits),
                  num_classes={t: int(x.shape[1]) for t, x in logits.items()},
                  logits="raw (before temperature)", files=files)
  with open(os.path.join(tmp, METADATA), "w") as f:
    json.dump(metadata, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  _fsync_dir(tmp)
  os.rename(tmp, directory)
  _fsync_dir(os.path.dirname(os.path.abspath(directory)))


def read_metadata(directory: str) -> dict | None:
  """The metadata of a complete cache, or None if there is none."""
  path = os.path.join(directory, METADATA)
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"Teacher cache metadata {path} is unreadable ({e}). "
                    f"Fix: delete {directory} and re-run to rebuild it.") from None


class LogitCache:
  """A verified, memory-mapped cache; `lookup(ids)` returns rows by id."""

  def __init__(self, directory: str, expected: Mapping, verify: bool = True):
    self.directory = directory
    meta = read_metadata(directory)
    if meta is None:
      raise UserError(f"No teacher cache at {directory}. Fix: run the "
                      "pipeline's caching stage (re-run the same command).")
    fix = (f"Fix: delete {directory} and re-run to rebuild the cache, or "
           "point the config at the teacher and data that produced it.")
    if meta.get("format_version") != FORMAT_VERSION:
      raise UserError(f"Teacher cache {directory} has format version "
                      f"{meta.get('format_version')}, this mtkd reads "
                      f"{FORMAT_VERSION}. {fix}")
    for key, want in expected.items():
      if meta.get(key) != want:
        raise UserError(
            f"Teacher cache {directory} does not match: {key} is "
            f"{meta.get(key)!r} in the cache but {want!r} is expected. {fix}")
    self.meta = meta
    for name, digest in meta["files"].items():
      path = os.path.join(directory, name)
      if not os.path.isfile(path):
        raise UserError(f"Teacher cache {directory} is missing {name}. {fix}")
      if verify and _sha256(path) != digest:
        raise UserError(f"Teacher cache file {path} fails its checksum (it is "
                        f"corrupt or was modified). {fix}")
    self.ids = np.load(os.path.join(directory, "ids.npy"), allow_pickle=False)
    n = meta["num_examples"]
    self.logits = {t: np.load(os.path.join(directory, f"logits_{t}.npy"),
                              mmap_mode="r", allow_pickle=False)
                   for t in meta["tasks"]}
    for t, x in self.logits.items():
      if x.shape != (n, meta["num_classes"][t]) or self.ids.shape != (n,):
        raise UserError(f"Teacher cache {directory}: {t} logits have shape "
                        f"{x.shape}, metadata says ({n}, "
                        f"{meta['num_classes'][t]}). {fix}")
    self._order = np.argsort(self.ids, kind="stable")
    self._sorted = self.ids[self._order]
    self._identity = bool(np.array_equal(self.ids, np.arange(n)))

  def rows(self, ids: np.ndarray) -> np.ndarray:
    """Row of each id; raises if any id is not in the cache."""
    ids = np.asarray(ids, np.int64)
    if self._identity:
      rows = np.clip(ids, 0, len(self.ids) - 1)
    else:
      pos = np.clip(np.searchsorted(self._sorted, ids), 0, len(self.ids) - 1)
      rows = self._order[pos]
    bad = self.ids[rows] != ids
    if bad.any():
      raise UserError(
          f"Example id(s) {ids[bad][:5].tolist()} are not in the teacher cache "
          f"{self.directory}: the cache was built for other data. Fix: delete "
          "the cache and re-run, or use the data it was built from.")
    return rows

  def lookup(self, ids: np.ndarray) -> dict[str, np.ndarray]:
    rows = self.rows(ids)
    # Sorted reads touch the memory map in file order; then undo the sort.
    order = np.argsort(rows, kind="stable")
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return {t: np.asarray(x[rows[order]], np.float32)[inverse]
            for t, x in self.logits.items()}


class TeacherJoin:
  """Joins each batch to its teachers' logits: `{task: cache}` by id."""

  def __init__(self, caches: Mapping[str, LogitCache]):
    groups: dict[int, tuple[LogitCache, list[str]]] = {}
    for task, c in caches.items():
      groups.setdefault(id(c), (c, []))[1].append(task)
    self._groups = list(groups.values())  # One lookup per cache per batch.

  def __call__(self, ids: np.ndarray) -> dict[str, np.ndarray]:
    out = {}
    for c, tasks in self._groups:
      got = c.lookup(ids)
      out.update({t: got[t] for t in tasks})
    return out

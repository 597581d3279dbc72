"""On-disk cache of teacher logits, keyed by example id, in shards.

Layout of one cache (one teacher, one split)::

    <dir>/metadata.json                 written last: the cache is complete
    <dir>/shard-00000-of-00004/
        shard.json                      its examples, producer, file sha256s
        ids.npy                         int64 [n] example ids
        logits_<task>.npy               [n, C] raw logits (before temperature)

Shard i holds a contiguous block of the split's examples. In a multi-process
run every process computes each shard's logits collectively and process
`i % process_count` alone writes shard i; process 0 writes `metadata.json`
once every shard exists. A shard directory appears only complete (written
under a temporary name, fsynced, renamed), so an interrupted caching stage
resumes shard by shard.

Why `.npy` read through a memory map: a training batch gathers 128 random
rows; a memory map serves that as one vectorised fancy-index (12 us per batch
at 10 classes, 0.8x in-RAM speed at 1000 classes) without loading the whole
array first (npz) and without per-record overhead (ArrayRecord, 20-170x
slower); see experiments/README.md for the measurements.

Invariants: opening checks every metadata field the student relies on and
each file's sha256; a lookup of an id that the cache does not hold is an
error, never a silently misaligned row.
"""

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from mtkd.errors import UserError

FORMAT_VERSION = 2
METADATA = "metadata.json"
SHARD_META = "shard.json"


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


def _write_json(path: str, obj) -> None:
  with open(path, "w") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())


def shard_name(index: int, num_shards: int) -> str:
  return f"shard-{index:05d}-of-{num_shards:05d}"


def shard_bounds(n: int, shard_size: int) -> list[tuple[int, int]]:
  """Contiguous `[start, stop)` blocks of at most `shard_size` examples."""
  return [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)] or [
      (0, 0)]


def _fix(directory: str) -> str:
  return (f"Fix: delete {directory} and re-run to rebuild the cache, or "
          "point the config at the teacher and data that produced it.")


def write_shard(directory: str, index: int, num_shards: int, ids: np.ndarray,
                logits: Mapping[str, np.ndarray], producer: Mapping,
                dtype: str = "float32") -> None:
  """Writes one shard atomically; an existing complete shard is kept."""
  final = os.path.join(directory, shard_name(index, num_shards))
  if os.path.isfile(os.path.join(final, SHARD_META)):
    return
  ids = np.asarray(ids, np.int64)
  for task, x in logits.items():
    if x.ndim != 2 or x.shape[0] != len(ids):
      raise ValueError(f"logits for {task!r} have shape {x.shape}, expected "
                       f"[{len(ids)}, C].")
  tmp = f"{final}.tmp-{os.getpid()}"
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
  _write_json(os.path.join(tmp, SHARD_META), dict(
      producer, num_examples=len(ids), files=files,
      num_classes={t: int(x.shape[1]) for t, x in logits.items()}))
  _fsync_dir(tmp)
  os.rename(tmp, final)
  _fsync_dir(directory)


def pending_shards(directory: str, num_shards: int, producer: Mapping
                   ) -> list[int]:
  """Indices of shards still to write; a shard by another producer is an
  error (a stale partial cache must not be mixed with new logits)."""
  todo = []
  for i in range(num_shards):
    path = os.path.join(directory, shard_name(i, num_shards), SHARD_META)
    if not os.path.isfile(path):
      todo.append(i)
      continue
    with open(path) as f:
      meta = json.load(f)
    for key, want in producer.items():
      if meta.get(key) != want:
        raise UserError(
            f"The partial teacher cache {directory} holds shard {i} written "
            f"with {key}={meta.get(key)!r}, but this run has {want!r}. "
            f"{_fix(directory)}")
  return todo


def finalize(directory: str, num_shards: int, meta: Mapping) -> None:
  """Writes metadata.json (process 0, after every shard is written)."""
  shards = []
  for i in range(num_shards):
    name = shard_name(i, num_shards)
    with open(os.path.join(directory, name, SHARD_META)) as f:
      s = json.load(f)
    shards.append({"name": name, "num_examples": s["num_examples"],
                   "files": s["files"]})
  num_classes = json.load(open(os.path.join(
      directory, shards[0]["name"], SHARD_META)))["num_classes"]
  metadata = dict(meta, format_version=FORMAT_VERSION,
                  num_examples=sum(s["num_examples"] for s in shards),
                  tasks=sorted(num_classes), num_classes=num_classes,
                  logits="raw (before temperature)", shards=shards)
  tmp = os.path.join(directory, METADATA + ".tmp")
  _write_json(tmp, metadata)
  os.replace(tmp, os.path.join(directory, METADATA))
  _fsync_dir(directory)


def build(directory: str, num_examples: int, shard_size: int,
          predict: Callable[[int, int], tuple[np.ndarray, dict]],
          meta: Mapping, dtype: str, process_index: int = 0,
          process_count: int = 1,
          barrier: Callable[[str], None] = lambda name: None) -> None:
  """Builds (or finishes) a cache: `predict(start, stop) -> (ids, logits)`.

  Every process calls `predict` for every missing shard (it may be a
  collective computation); process `i % process_count` writes shard i.
  """
  if read_metadata(directory) is not None:
    raise UserError(f"Refusing to overwrite the existing teacher cache "
                    f"{directory}. Delete it first if it is really stale.")
  producer = dict(meta, dtype=dtype)
  bounds = shard_bounds(num_examples, shard_size)
  os.makedirs(directory, exist_ok=True)
  for i in pending_shards(directory, len(bounds), producer):
    ids, logits = predict(*bounds[i])
    if i % process_count == process_index:
      write_shard(directory, i, len(bounds), ids, logits, producer, dtype)
  barrier(f"cache shards written: {directory}")
  if process_index == 0:
    finalize(directory, len(bounds), producer)
  barrier(f"cache finalized: {directory}")


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
                    f"{_fix(directory)}") from None


class LogitCache:
  """A verified, memory-mapped cache; `lookup(ids)` returns rows by id."""

  def __init__(self, directory: str, expected: Mapping, verify: bool = True):
    self.directory = directory
    meta = read_metadata(directory)
    fix = _fix(directory)
    if meta is None:
      raise UserError(f"No teacher cache at {directory}. Fix: run the "
                      "pipeline's caching stage (re-run the same command).")
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
    ids, self._shards = [], []
    for shard in meta["shards"]:
      ids.append(self._open_shard(shard, verify, fix))
    self.ids = np.concatenate(ids)
    self._starts = np.cumsum([0] + [len(i) for i in ids])
    if len(self.ids) != meta["num_examples"]:
      raise UserError(f"Teacher cache {directory} holds {len(self.ids)} "
                      f"examples, its metadata says {meta['num_examples']}. "
                      f"{fix}")
    self._order = np.argsort(self.ids, kind="stable")
    self._sorted = self.ids[self._order]
    self._identity = bool(np.array_equal(self.ids, np.arange(len(self.ids))))

  def _open_shard(self, shard: Mapping, verify: bool, fix: str) -> np.ndarray:
    where = os.path.join(self.directory, shard["name"])
    for name, digest in shard["files"].items():
      path = os.path.join(where, name)
      if not os.path.isfile(path):
        raise UserError(f"Teacher cache {self.directory} is missing "
                        f"{shard['name']}/{name}. {fix}")
      if verify and _sha256(path) != digest:
        raise UserError(f"Teacher cache file {path} fails its checksum (it is "
                        f"corrupt or was modified). {fix}")
    n = shard["num_examples"]
    ids = np.load(os.path.join(where, "ids.npy"), allow_pickle=False)
    logits = {t: np.load(os.path.join(where, f"logits_{t}.npy"),
                         mmap_mode="r", allow_pickle=False)
              for t in self.meta["tasks"]}
    for t, x in logits.items():
      if x.shape != (n, self.meta["num_classes"][t]) or ids.shape != (n,):
        raise UserError(f"Teacher cache {where}: {t} logits have shape "
                        f"{x.shape}, metadata says ({n}, "
                        f"{self.meta['num_classes'][t]}). {fix}")
    self._shards.append(logits)
    return ids

  @property
  def tasks(self) -> Sequence[str]:
    return self.meta["tasks"]

  def rows(self, ids: np.ndarray) -> np.ndarray:
    """Global row of each id; raises if any id is not in the cache."""
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
    shard = np.searchsorted(self._starts, rows, side="right") - 1
    out = {t: np.empty((len(rows), self.meta["num_classes"][t]), np.float32)
           for t in self.tasks}
    for s in np.unique(shard):
      sel = np.flatnonzero(shard == s)
      local = rows[sel] - self._starts[s]
      for t, x in self._shards[s].items():  # Plain gather: fastest measured.
        out[t][sel] = x[local]
    return out

  def all_logits(self, task: str) -> np.ndarray:
    """`[N, C]` float32 logits of `task` in cache order."""
    return np.concatenate([np.asarray(s[task], np.float32)
                           for s in self._shards])


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

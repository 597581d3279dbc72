"""On-disk cache of teacher logits, keyed by example id, in shards.

Layout of one cache (one teacher, one split)::

    <dir>/metadata.json                 written last: the cache is complete
    <dir>/shard-00000-of-00004/
        shard.json                      its examples, producer, file sha256s
        ids.npy                         int64 [n] example ids
        logits_<name>.npy               [n, C] raw logits (before temperature;
                                        [n, L, C] for a sequence task)
        topk_values_<name>.npy          top-k storage instead: [n, k] values,
        topk_indices_<name>.npy         [n, k] class indices (int16/int32),
        lse_<name>.npy                  [n] float32 logsumexp of the row,
        tail_<name>.npy                 [n] float32 logit of the other classes

Arrays are named freely (task logits, or features such as "feat_trunk").
An array with a position axis (`[n, L, C]`, a sequence task) is recorded in
the metadata's `positions` ({name: L}) and stored per token, dense or sparse.
Storage (`build(..., dtype, top_k=, top_k_names=, tail=, temperatures=)`,
recorded in the metadata, see `storage_meta`):

  dtype        float32, float16 or bfloat16 for dense arrays and top-k
               values; bfloat16 is stored as its raw uint16 bits (`.npy` has
               no bfloat16) and widened back on read. Reads are float32.
  top_k        0 = every array dense. Otherwise only the arrays named in
               `top_k_names` (task logits; never features) are kept sparse,
               in the `tail` mode (`mtkd.store.sparse`: uniform,
               renormalized, bucket or sampled). `lookup` gives dense [n, C]
               logits for host-side reads; `teacher_rows` gives what a
               training step reads (dense for uniform, the sparse triple
               otherwise).
  tail_temperatures   {name: [T, ...]}: the temperatures a bucket cache
               stored tail masses for, or the one T a sampled cache drew at.

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
from collections.abc import Callable, Collection, Mapping, Sequence

import ml_dtypes
import numpy as np

from mtkd.errors import UserError
from mtkd.store import sparse

FORMAT_VERSION = 4  # 3 added bfloat16 and top-k, 4 the tail modes.
READABLE_VERSIONS = (2, 3, 4)  # 2: dense float32/float16 only.
DTYPES = ("float32", "float16", "bfloat16")
STORAGE_KEYS = ("dtype", "top_k", "top_k_names", "tail", "tail_temperatures")
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


def storage_meta(dtype: str = "float32", top_k: int = 0,
                 top_k_names: Collection[str] = (), tail: str = "uniform",
                 temperatures: Mapping[str, Sequence[float]] | None = None
                 ) -> dict:
  """The metadata fields that describe how a cache stores its arrays.

  Add them to the `expected` dict of `LogitCache` so that a cache written
  with another storage mode is refused. `temperatures` ({name: [T, ...]})
  is what the bucket mode stores tail masses for and the one T the sampled
  mode draws at. A uniform-tail cache records no tail keys (as before the
  tail modes existed).
  """
  if dtype not in DTYPES:
    raise UserError(f"Teacher cache dtype {dtype!r} is not supported; use one "
                    f"of {list(DTYPES)} (config.cache.dtype).")
  if not isinstance(top_k, int) or top_k < 0:
    raise UserError(f"Teacher cache top_k is {top_k!r}; use 0 (dense) or a "
                    "positive number of classes to keep (config.cache.top_k).")
  if tail not in sparse.TAILS:
    raise UserError(f"config.cache.tail is {tail!r}; use one of "
                    f"{list(sparse.TAILS)}.")
  if tail != "uniform" and not top_k:
    raise UserError(f"config.cache.tail={tail!r} keeps a sparse teacher, but "
                    "config.cache.top_k is 0 (dense). Fix: set "
                    "config.cache.top_k to the number of classes to keep.")
  if top_k and not top_k_names:
    raise ValueError("top_k > 0 needs top_k_names: the (logit) arrays to "
                     "store as top-k; features must stay dense.")
  out = {"dtype": dtype, "top_k": top_k,
         "top_k_names": sorted(top_k_names) if top_k else []}
  if not top_k or tail == "uniform":
    return out
  out["tail"] = tail
  if tail in ("bucket", "sampled"):
    temps = {n: sorted({float(t) for t in (temperatures or {}).get(n, ())})
             for n in sorted(top_k_names)}
    for name, ts in temps.items():
      if not ts or not all(t > 0 for t in ts) or (
          tail == "sampled" and len(ts) != 1):
        raise UserError(
            f"config.cache.tail={tail!r} needs "
            f"{'one temperature' if tail == 'sampled' else 'temperatures'} "
            f"> 0 for {name!r}, got {ts}. Fix: set config.cache.temperatures "
            "(empty = each task's distillation temperature).")
    out["tail_temperatures"] = temps
  return out


def _encode(x: np.ndarray, dtype: str) -> np.ndarray:
  """float array -> what `.npy` stores for `dtype`."""
  if dtype == "bfloat16":  # Round to nearest even, keep the raw bits.
    return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).view(
        np.uint16)
  return np.asarray(x).astype(dtype)


_F16_TABLE: list[np.ndarray] = []


def _decode(raw: np.ndarray, dtype: str) -> np.ndarray:
  """Stored array -> float32 (no copy if it is already float32)."""
  if dtype == "bfloat16":
    return raw.view(ml_dtypes.bfloat16).astype(np.float32)
  if raw.dtype == np.float16:  # A table lookup beats numpy's cast by ~1.4x.
    if not _F16_TABLE:
      _F16_TABLE.append(np.arange(1 << 16).astype(np.uint16).view(
          np.float16).astype(np.float32))
    return np.take(_F16_TABLE[0], raw.view(np.uint16))
  return np.asarray(raw, np.float32)


def _files(name: str, tail: str | None) -> tuple[str, ...]:
  """Files of array `name`: dense (`tail` None) or sparse in mode `tail`."""
  if tail is not None:
    return sparse.files(name, tail)
  return (f"logits_{name}.npy",)


def write_shard(directory: str, index: int, num_shards: int, ids: np.ndarray,
                logits: Mapping[str, np.ndarray], producer: Mapping,
                dtype: str = "float32", top_k: int = 0,
                top_k_names: Collection[str] = (), tail: str = "uniform",
                temperatures: Mapping[str, Sequence[float]] | None = None
                ) -> None:
  """Writes one shard atomically; an existing complete shard is kept.

  Arrays named in `top_k_names` are stored sparse (if top_k > 0) in mode
  `tail`, at `temperatures[name]` for the bucket and sampled modes.
  """
  final = os.path.join(directory, shard_name(index, num_shards))
  if os.path.isfile(os.path.join(final, SHARD_META)):
    return
  ids = np.asarray(ids, np.int64)
  for name, x in logits.items():
    if x.ndim not in (2, 3) or x.shape[0] != len(ids):
      raise ValueError(f"logits for {name!r} have shape {x.shape}, expected "
                       f"[{len(ids)}, C] or [{len(ids)}, L, C].")
  unknown = set(top_k_names) - set(logits) if top_k else set()
  if unknown:
    raise ValueError(f"top_k_names {sorted(unknown)} are not among the "
                     f"cached arrays {sorted(logits)}.")
  tmp = f"{final}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  arrays = {"ids.npy": ids}
  for name, x in logits.items():
    if top_k and name in top_k_names:
      parts = sparse.compress(
          x, ids, top_k, tail, (temperatures or {}).get(name, ()),
          rounding=lambda v: _decode(_encode(v, dtype), dtype))
      if tail != "sampled":  # Values in the storage dtype.
        parts = (_encode(parts[0], dtype), *parts[1:])
      arrays.update(zip(_files(name, tail), parts, strict=True))
    else:
      arrays[_files(name, None)[0]] = _encode(x, dtype)
  files = {}
  for name, arr in arrays.items():
    path = os.path.join(tmp, name)
    with open(path, "wb") as f:
      np.save(f, arr, allow_pickle=False)
      f.flush()
      os.fsync(f.fileno())
    files[name] = _sha256(path)
  positions = {t: int(x.shape[1]) for t, x in logits.items() if x.ndim == 3}
  _write_json(os.path.join(tmp, SHARD_META), dict(
      producer, num_examples=len(ids), files=files,
      num_classes={t: int(x.shape[-1]) for t, x in logits.items()},
      **({"positions": positions} if positions else {})))
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
  with open(os.path.join(directory, shards[0]["name"], SHARD_META)) as f:
    first = json.load(f)
  num_classes = first["num_classes"]
  positions = ({"positions": first["positions"]} if "positions" in first
               else {})
  metadata = dict(meta, format_version=FORMAT_VERSION,
                  num_examples=sum(s["num_examples"] for s in shards),
                  tasks=sorted(num_classes), num_classes=num_classes,
                  **positions,
                  logits="raw (before temperature)", shards=shards)
  tmp = os.path.join(directory, METADATA + ".tmp")
  _write_json(tmp, metadata)
  os.replace(tmp, os.path.join(directory, METADATA))
  _fsync_dir(directory)


def build(directory: str, num_examples: int, shard_size: int,
          predict: Callable[[int, int], tuple[np.ndarray, dict]],
          meta: Mapping, dtype: str, process_index: int = 0,
          process_count: int = 1,
          barrier: Callable[[str], None] = lambda name: None, *,
          top_k: int = 0, top_k_names: Collection[str] = (),
          tail: str = "uniform",
          temperatures: Mapping[str, Sequence[float]] | None = None) -> None:
  """Builds (or finishes) a cache: `predict(start, stop) -> (ids, logits)`.

  Every process calls `predict` for every missing shard (it may be a
  collective computation); process `i % process_count` writes shard i.
  `dtype`, `top_k`, `top_k_names`, `tail` and `temperatures` choose the
  storage (module docstring); only the arrays in `top_k_names` are sparse.
  """
  if read_metadata(directory) is not None:
    raise UserError(f"Refusing to overwrite the existing teacher cache "
                    f"{directory}. Delete it first if it is really stale.")
  storage = storage_meta(dtype, top_k, top_k_names, tail, temperatures)
  clash = {k: meta[k] for k in STORAGE_KEYS if k in meta and
           meta[k] != storage.get(k)}
  if clash:
    raise ValueError(f"meta says {clash} but the storage arguments give "
                     f"{ {k: storage.get(k) for k in clash} }.")
  producer = dict(meta, **storage)
  bounds = shard_bounds(num_examples, shard_size)
  os.makedirs(directory, exist_ok=True)
  for i in pending_shards(directory, len(bounds), producer):
    ids, logits = predict(*bounds[i])
    if i % process_count == process_index:
      write_shard(directory, i, len(bounds), ids, logits, producer, dtype,
                  top_k, storage["top_k_names"], tail,
                  storage.get("tail_temperatures"))
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


# Caches up to this size are held as one array per name (`LogitCache`).
IN_MEMORY_BYTES = 512 << 20

class LogitCache:
  """A verified, memory-mapped cache; `lookup(ids)` returns rows by id."""

  def __init__(self, directory: str, expected: Mapping, verify: bool = True):
    self.directory = directory
    meta = read_metadata(directory)
    fix = _fix(directory)
    if meta is None:
      raise UserError(f"No teacher cache at {directory}. Fix: run the "
                      "pipeline's caching stage (re-run the same command).")
    if meta.get("format_version") not in READABLE_VERSIONS:
      raise UserError(f"Teacher cache {directory} has format version "
                      f"{meta.get('format_version')}, this mtkd reads "
                      f"{list(READABLE_VERSIONS)}. {fix}")
    meta.setdefault("top_k", 0)  # Version 2 caches are dense.
    meta.setdefault("top_k_names", [])
    if "tail" not in expected and any(k in expected for k in STORAGE_KEYS):
      # Expecting a uniform or dense cache (no tail keys) refuses the others.
      expected = {"tail": None, "tail_temperatures": None, **expected}
    for key, want in expected.items():
      if meta.get(key) != want:
        why = (" (it was written with another storage mode: "
               "config.cache.dtype / top_k / tail / temperatures)"
               if key in STORAGE_KEYS else "")
        if key in ("augment", "view_seed"):
          why = (" (its views were rendered with another augmentation: "
                 "config.student.augment / config.cache.view_seed; set them "
                 "back, or delete this cache to render new views)")
        if key == "vocabulary":
          why = (" (the teacher's logits index another tokenizer's "
                 "vocabulary, so token ids would not line up: check "
                 "config.data.vocab_size and the tokenizer)")
        raise UserError(
            f"Teacher cache {directory} does not match: {key} is "
            f"{meta.get(key)!r} in the cache but {want!r} is expected{why}. "
            f"{fix}")
    if meta.get("dtype", "float32") not in DTYPES:
      raise UserError(f"Teacher cache {directory} has dtype "
                      f"{meta.get('dtype')!r}, this mtkd reads {list(DTYPES)}."
                      f" {fix}")
    self.meta = meta
    self._dtype = meta.get("dtype", "float32")
    self._top_k = set(meta["top_k_names"]) if meta["top_k"] else set()
    self.tail = meta.get("tail", "uniform")
    ids, self._shards = [], []
    for shard in meta["shards"]:
      ids.append(self._open_shard(shard, verify, fix))
    self.ids = np.concatenate(ids)
    self._starts = np.cumsum([0] + [len(i) for i in ids])
    self._hold_in_memory()
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
    parts = {}
    for t in self.arrays:
      c, is_top_k = self.meta["num_classes"][t], t in self._top_k
      parts[t] = tuple(np.load(os.path.join(where, f), mmap_mode="r",
                               allow_pickle=False)
                       for f in _files(t, self.tail if is_top_k else None))
      k = sparse.width(self.meta["top_k"], c, self.tail)
      temps = self.meta.get("tail_temperatures", {}).get(t, ())
      lead = (n, *([self.meta["positions"][t]]
                   if t in self.meta.get("positions", {}) else []))
      want = (sparse.shapes(lead, k, self.tail, len(temps)) if is_top_k
              else ((*lead, c),))
      got = tuple(x.shape for x in parts[t])
      if got != want or ids.shape != (n,):
        raise UserError(f"Teacher cache {where}: {t} arrays have shapes "
                        f"{got}, metadata says {want}. {fix}")
    self._shards.append(parts)
    return ids

  def _hold_in_memory(self) -> None:
    """A cache of several shards but at most `IN_MEMORY_BYTES` becomes one
    array per name (read once): a batch is then one gather, not one per
    shard it touches (a K-view cache spreads a batch over ~K times more
    shards: experiments/bench_cache_join.py). Larger caches stay
    memory-mapped."""
    if len(self._shards) < 2 or sum(
        x.nbytes for s in self._shards for p in s.values() for x in p
    ) > IN_MEMORY_BYTES:
      return
    self._shards = [{t: tuple(np.concatenate([s[t][i] for s in self._shards])
                              for i in range(len(parts)))
                     for t, parts in self._shards[0].items()}]
    self._starts = np.array([0, len(self.ids)])

  @property
  def arrays(self) -> Sequence[str]:
    """Names of the cached arrays: task logits and features (`feat_<layer>`).
    (The metadata keeps them under its format's key, `tasks`.)"""
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

  def _decode(self, name: str, parts: Sequence[np.ndarray]) -> np.ndarray:
    if name not in self._top_k:
      return _decode(parts[0], self._dtype)
    if self.tail != "sampled":
      parts = (_decode(parts[0], self._dtype), *parts[1:])
    (t, *_) = self.meta.get("tail_temperatures", {}).get(name, [1.0])
    return sparse.dense(self.tail, parts, self.meta["num_classes"][name], t)

  def _record(self, name: str, parts: Sequence[np.ndarray],
              temperature: float) -> dict[str, np.ndarray]:
    stored = self.meta.get("tail_temperatures", {})
    col = sparse.column(stored, name, temperature)
    if self.tail in ("bucket", "sampled") and col is None:
      raise UserError(
          f"Teacher cache {self.directory} keeps {name!r} in the "
          f"{self.tail!r} tail mode for temperature(s) {stored.get(name)}, "
          f"but the student distils it at T={temperature}. Fix: add "
          f"{temperature} to config.cache.temperatures (a new cache is built "
          "beside this one) or distil at a stored temperature.")
    if self.tail != "sampled":
      parts = (_decode(parts[0], self._dtype), *parts[1:])
    return sparse.record(self.tail, parts, col or 0, temperature)

  def _gather(self, ids: np.ndarray) -> dict[str, list[np.ndarray]]:
    """The stored arrays' rows of `ids`, per name, in their order."""
    rows = self.rows(ids)
    if len(self._shards) == 1:  # Plain gather: fastest measured.
      return {t: [x[rows] for x in parts]
              for t, parts in self._shards[0].items()}
    shard = np.searchsorted(self._starts, rows, side="right") - 1
    gathered = {t: [np.empty((len(rows), *x.shape[1:]), x.dtype)
                    for x in parts] for t, parts in self._shards[0].items()}
    for s in np.unique(shard):
      sel = np.flatnonzero(shard == s)
      local = rows[sel] - self._starts[s]
      for t, parts in self._shards[s].items():
        for out, x in zip(gathered[t], parts, strict=True):
          out[sel] = x[local]
    return gathered

  def lookup(self, ids: np.ndarray) -> dict[str, np.ndarray]:
    """`{name: float32 [n, C] or [n, L, C]}` for the given ids, in order
    (sparse arrays as dense logits: `mtkd.store.sparse.dense`)."""
    return {t: self._decode(t, parts) for t, parts in self._gather(ids).items()}

  def teacher_rows(self, ids: np.ndarray,
                   temperatures: Mapping[str, float]) -> dict:
    """What a training step reads: dense `[n, C]` arrays as `lookup` gives
    them, and for arrays in a non-uniform tail mode the sparse triple
    `{values, indices, tail}` at the array's temperature
    (`mtkd.store.sparse.record`)."""
    out = {}
    for t, parts in self._gather(ids).items():
      if t in self._top_k and self.tail != "uniform":
        out[t] = self._record(t, parts, temperatures[t])
      else:
        out[t] = self._decode(t, parts)
    return out

  def stored(self, ids: np.ndarray, name: str) -> list[np.ndarray]:
    """The stored arrays of sparse `name` (`sparse.files` order) for `ids`,
    top-k values widened to float32."""
    parts = self._gather(ids)[name]
    if self.tail != "sampled":
      parts[0] = _decode(parts[0], self._dtype)
    return parts

  def all_logits(self, task: str) -> np.ndarray:
    """`[N, C]` float32 values of array `task` in cache order."""
    return np.concatenate([self._decode(task, s[task]) for s in self._shards])

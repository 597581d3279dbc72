"""Batch-granularity read speed of on-disk formats for cached teacher logits.

A distillation step needs the logits of B randomly chosen examples (indices
from a shuffled epoch). For N examples with float32 logits [N, C], this script
writes the logits in each format below to a temp dir and times, per format:

  write s      writing the file (best of 3; to the page cache, no fsync)
  B/ex         bytes on disk per example
  open s       warm open: memmap setup, or the full load/decompress that the
               format needs before any row can be read (best of 3)
  cold open s  the same open after the file was evicted from the page cache
               (fsync + posix_fadvise DONTNEED; "cold-ish": a VM host may
               still cache it)
  cold µs/b    mean time per batch over the first epoch of batches read right
               after the cold open (page faults included for memmaps)
  batches/s    warm steady state: num_batches batches, best of 3 repeats
  µs/batch     the same, as time per batch
  vs RAM       batches/s relative to the in-RAM .npy baseline

Each read returns a float32 [B, C] array for the batch's rows, in order.

Formats:
  npy_mmap           np.load(mmap_mode='r'); gather rows in sorted order and
                     scatter them back into batch order
  npy_mmap_unsorted  np.load(mmap_mode='r'); plain arr[idx]
  npy_ram            np.load fully into RAM, then arr[idx] (the baseline)
  npy_fp16_mmap      float16 .npy memmap, sorted gather, cast to float32
  npz                np.savez; must be loaded whole, then arr[idx]
  npz_deflate        np.savez_compressed; loaded whole (+ inflate), arr[idx]
  arrayrecord_zstd   ArrayRecord, one record (raw row bytes) per example,
                     'group_size:1' (Grain's recommendation; zstd:3 default);
                     ArrayRecordDataSource.__getitems__ + np.frombuffer
  arrayrecord_raw    the same with 'group_size:1,uncompressed'

Run (from the repository root):
  .venv/bin/python -m experiments.bench_cache_formats            # N=60000 C=10
  .venv/bin/python -m experiments.bench_cache_formats \\
      --num_examples=20000 --num_classes=1000                   # many classes
  .venv/bin/python -m experiments.bench_cache_formats --smoke    # seconds
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from absl import app, flags, logging

_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 60000, "Examples (N).")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 10, "Classes (C).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Batch size (B).")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 2000,
                                    "Batches timed per warm repeat.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Repeats (the best counts).")
_DIR = flags.DEFINE_string(
    "dir", None, "Where to write the files (default: system temp dir; use a "
    "disk-backed one, tmpfs makes 'cold' meaningless).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the logits and batches.")
_SMOKE = flags.DEFINE_bool(
    "smoke", False, "Tiny sizes (N=2000, 50 batches); finishes in seconds.")

Handle = Any  # whatever a format's open() returns: an array or a data source


@dataclasses.dataclass(frozen=True)
class Format:
  """How to write, open, read a batch from, and close one storage format."""

  name: str
  suffix: str
  write: Callable[[np.ndarray, str], None]
  open: Callable[[str], Handle]
  read: Callable[[Handle, np.ndarray], np.ndarray]
  close: Callable[[Handle], None] = lambda handle: None
  atol: float = 0.0  # tolerance of the read-back check (lossy formats)


@dataclasses.dataclass(frozen=True)
class Result:
  name: str
  bytes_per_example: float
  write_s: float
  open_s: float
  cold_open_s: float | None
  cold_us_per_batch: float | None
  warm_batches_per_s: float


# ----------------------------------------------------------------- readers


def gather_sorted(arr: np.ndarray, idx: np.ndarray) -> np.ndarray:
  """arr[idx] as float32, fetched in ascending row order (memmap friendly)."""
  order = np.argsort(idx, kind="stable")
  out = np.empty((len(idx), arr.shape[1]), np.float32)
  out[order] = arr[idx[order]]
  return out


def gather_plain(arr: np.ndarray, idx: np.ndarray) -> np.ndarray:
  return np.asarray(arr[idx], dtype=np.float32)


def save_npy(dtype: type) -> Callable[[np.ndarray, str], None]:
  def write(logits: np.ndarray, path: str) -> None:
    np.save(path, logits.astype(dtype, copy=False))

  return write


def open_mmap(path: str) -> np.ndarray:
  return np.load(path, mmap_mode="r")


def open_ram(path: str) -> np.ndarray:
  return np.load(path)


def write_npz(logits: np.ndarray, path: str) -> None:
  np.savez(path, logits=logits)


def write_npz_deflate(logits: np.ndarray, path: str) -> None:
  np.savez_compressed(path, logits=logits)


def open_npz(path: str) -> np.ndarray:
  with np.load(path) as npz:
    return npz["logits"]


def arrayrecord_formats(num_classes: int) -> list[Format]:
  """ArrayRecord variants, or [] (with a note) if array_record is missing."""
  try:
    from array_record.python import array_record_data_source as ards
    from array_record.python import array_record_module as arm
  except ImportError as e:
    print(f"array_record not importable ({e}); skipping ArrayRecord.")
    return []

  def writer(options: str) -> Callable[[np.ndarray, str], None]:
    def write(logits: np.ndarray, path: str) -> None:
      w = arm.ArrayRecordWriter(path, options)
      for row in logits:
        w.write(row.tobytes())
      w.close()

    return write

  def open_source(path: str) -> Handle:
    src = ards.ArrayRecordDataSource([path])
    src[0]  # readers open lazily: force it so open time is counted here
    return src

  def read(src: Handle, idx: np.ndarray) -> np.ndarray:
    records: Sequence[bytes] = src.__getitems__(idx.tolist())
    flat = np.frombuffer(b"".join(records), dtype=np.float32)
    return flat.reshape(len(idx), num_classes)

  def close(src: Handle) -> None:
    src.__exit__(None, None, None)

  return [
      Format("arrayrecord_zstd", ".array_record", writer("group_size:1"),
             open_source, read, close),
      Format("arrayrecord_raw", ".array_record",
             writer("group_size:1,uncompressed"), open_source, read, close),
  ]


def all_formats(num_classes: int) -> list[Format]:
  return [
      Format("npy_mmap", ".npy", save_npy(np.float32), open_mmap,
             gather_sorted),
      Format("npy_mmap_unsorted", ".npy", save_npy(np.float32), open_mmap,
             gather_plain),
      Format("npy_ram", ".npy", save_npy(np.float32), open_ram, gather_plain),
      Format("npy_fp16_mmap", ".npy", save_npy(np.float16), open_mmap,
             gather_sorted, atol=1e-2),
      Format("npz", ".npz", write_npz, open_npz, gather_plain),
      Format("npz_deflate", ".npz", write_npz_deflate, open_npz,
             gather_plain),
      *arrayrecord_formats(num_classes),
  ]


# ----------------------------------------------------------------- timing


def best_of(fn: Callable[[], object], repeats: int) -> float:
  """Minimum wall time of `repeats` calls of fn, in seconds."""
  best = math.inf
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t0)
  return best


def evict_from_page_cache(path: str) -> bool:
  """Flushes path and asks the kernel to drop its cached pages."""
  if not hasattr(os, "posix_fadvise"):
    return False
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
  finally:
    os.close(fd)
  return True


def shuffled_epoch_batches(
    num_examples: int, batch_size: int, num_batches: int, seed: int
) -> np.ndarray:
  """[num_batches, batch_size] row indices from back-to-back shuffled epochs."""
  rng = np.random.default_rng(seed)
  need = num_batches * batch_size
  epochs = math.ceil(need / num_examples)
  flat = np.concatenate([rng.permutation(num_examples) for _ in range(epochs)])
  return flat[:need].reshape(num_batches, batch_size)


def read_all(fmt: Format, handle: Handle, batches: np.ndarray) -> None:
  for idx in batches:
    fmt.read(handle, idx)


def measure(fmt: Format, logits: np.ndarray, batches: np.ndarray,
            epoch_batches: int, workdir: str, repeats: int) -> Result:
  path = os.path.join(workdir, fmt.name + fmt.suffix)
  write_s = best_of(lambda: fmt.write(logits, path), repeats)
  size = os.path.getsize(path)

  # Cold-ish: file evicted, fresh open, then the first epoch of batches.
  cold_open_s = cold_us = None
  if evict_from_page_cache(path):
    t0 = time.perf_counter()
    handle = fmt.open(path)
    t1 = time.perf_counter()
    read_all(fmt, handle, batches[:epoch_batches])
    t2 = time.perf_counter()
    fmt.close(handle)
    cold_open_s = t1 - t0
    cold_us = 1e6 * (t2 - t1) / epoch_batches

  def open_close() -> None:
    fmt.close(fmt.open(path))

  open_s = best_of(open_close, repeats)
  handle = fmt.open(path)
  for idx in batches[:4]:  # correctness: same rows, same order, float32
    got = fmt.read(handle, idx)
    assert got.dtype == np.float32 and got.shape == (len(idx), logits.shape[1])
    np.testing.assert_allclose(got, logits[idx], rtol=fmt.atol, atol=fmt.atol)
  read_s = best_of(lambda: read_all(fmt, handle, batches), repeats)
  fmt.close(handle)
  os.remove(path)
  return Result(fmt.name, size / len(logits), write_s, open_s, cold_open_s,
                cold_us, len(batches) / read_s)


# ----------------------------------------------------------------- report


def print_table(results: list[Result], header: str) -> None:
  base = next(r for r in results if r.name == "npy_ram").warm_batches_per_s

  def opt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)

  cols = (f"{'format':<18}{'B/ex':>8}{'write s':>9}{'open s':>9}"
          f"{'cold open s':>12}{'cold µs/b':>10}{'batches/s':>11}"
          f"{'µs/batch':>10}{'vs RAM':>8}")
  print(header)
  print(cols)
  print("-" * len(cols))
  for r in results:
    print(f"{r.name:<18}{r.bytes_per_example:8.1f}{r.write_s:9.4f}"
          f"{r.open_s:9.4f}{opt(r.cold_open_s, '.4f'):>12}"
          f"{opt(r.cold_us_per_batch, '.1f'):>10}"
          f"{r.warm_batches_per_s:11.0f}{1e6 / r.warm_batches_per_s:10.1f}"
          f"{r.warm_batches_per_s / base:8.2f}")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # As mtkd.main: no INFO logs.
  n, num_batches = _NUM_EXAMPLES.value, _NUM_BATCHES.value
  if _SMOKE.value:
    n, num_batches = 2000, 50
  c, b, seed, repeats = (_NUM_CLASSES.value, _BATCH_SIZE.value, _SEED.value,
                         _REPEATS.value)
  logits = np.random.default_rng(seed).normal(size=(n, c))
  logits = logits.astype(np.float32)
  batches = shuffled_epoch_batches(n, b, num_batches, seed + 1)
  epoch_batches = min(len(batches), math.ceil(n / b))

  results = []
  with tempfile.TemporaryDirectory(dir=_DIR.value) as workdir:
    for fmt in all_formats(c):
      results.append(measure(fmt, logits, batches, epoch_batches, workdir,
                             repeats))
  print_table(
      results,
      f"N={n} examples, C={c} classes, float32 out [{b}, {c}]; "
      f"{num_batches} shuffled-epoch batches, best of {repeats}; "
      f"cold = first {epoch_batches} batches after page-cache eviction")


if __name__ == "__main__":
  app.run(main)

"""Read speed of teacher-logit storage formats at batch granularity.

A distillation step needs the logits of B randomly chosen examples. This
measures, side by side in one run, how fast each on-disk format serves such
batches (float32 [B, C] out), plus write time, open time and bytes/example:

  .npy memmap    np.load(mmap_mode='r') + sorted fancy-index gather (mtkd's)
  .npy in RAM    np.load fully, then gather (the in-memory reference)
  .npy fp16 mmap half the bytes, converted to float32 on read
  .npz           np.savez: must be fully loaded before any row is read
  .npz deflate   np.savez_compressed: same, plus decompression
  ArrayRecord    one record per example (Grain's native format)

Run:  python experiments/bench_cache_formats.py            # N=60000, C=10
      python experiments/bench_cache_formats.py --num_examples=20000 --num_classes=1000
      python experiments/bench_cache_formats.py --smoke
Numbers are from a warm page cache (the files were just written), which is
the steady state of a training run whose cache fits in RAM.
"""

import argparse
import os
import tempfile
import time
from collections.abc import Callable

import numpy as np


def _best(fn: Callable[[], object], repeats: int = 3) -> float:
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t0)
  return best


def _gather_sorted(arr: np.ndarray, rows: np.ndarray) -> np.ndarray:
  order = np.argsort(rows)
  out = np.empty((len(rows), arr.shape[1]), np.float32)
  out[order] = arr[rows[order]]
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--num_examples", type=int, default=60000)
  p.add_argument("--num_classes", type=int, default=10)
  p.add_argument("--batch_size", type=int, default=128)
  p.add_argument("--num_batches", type=int, default=2000)
  p.add_argument("--smoke", action="store_true")
  a = p.parse_args()
  if a.smoke:
    a.num_examples, a.num_batches = 2000, 50
  n, c, b = a.num_examples, a.num_classes, a.batch_size
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(n, c)).astype(np.float32)
  batches = [rng.integers(0, n, b) for _ in range(a.num_batches)]
  rows = []

  with tempfile.TemporaryDirectory() as d:
    def path(name):
      return os.path.join(d, name)

    def run(name, write, open_, read):
      w = _best(write, 1)
      size = sum(os.path.getsize(path(f)) for f in os.listdir(d)
                 if f.startswith(name))
      o = _best(open_)
      handle = open_()
      t = _best(lambda: [read(handle, r) for r in batches])
      check = read(handle, batches[0])
      np.testing.assert_allclose(check, logits[batches[0]], rtol=1e-3, atol=1e-3)
      rows.append((name, size / n, w, o, a.num_batches / t,
                   1e6 * t / a.num_batches))
      for f in os.listdir(d):
        os.remove(path(f))

    def npy_write(dtype, name):
      return lambda: np.save(path(name), logits.astype(dtype))

    run("npy_mmap", npy_write(np.float32, "npy_mmap.npy"),
        lambda: np.load(path("npy_mmap.npy"), mmap_mode="r"), _gather_sorted)
    run("npy_ram", npy_write(np.float32, "npy_ram.npy"),
        lambda: np.load(path("npy_ram.npy")), lambda x, r: x[r])
    run("npy_fp16_mmap", npy_write(np.float16, "npy_fp16_mmap.npy"),
        lambda: np.load(path("npy_fp16_mmap.npy"), mmap_mode="r"),
        _gather_sorted)
    run("npz", lambda: np.savez(path("npz.npz"), logits=logits),
        lambda: np.load(path("npz.npz"))["logits"], lambda x, r: x[r])
    run("npz_deflate",
        lambda: np.savez_compressed(path("npz_deflate.npz"), logits=logits),
        lambda: np.load(path("npz_deflate.npz"))["logits"], lambda x, r: x[r])
    try:
      from array_record.python import array_record_data_source as ards
      from array_record.python import array_record_module as arm
    except ImportError:
      print("array_record not installed; skipping ArrayRecord.")
    else:
      def ar_write():
        w = arm.ArrayRecordWriter(path("arrayrecord.ar"), "group_size:1")
        for row in logits:
          w.write(row.tobytes())
        w.close()

      def ar_read(src, r):
        recs = src.__getitems__(list(r))
        return np.frombuffer(b"".join(recs), np.float32).reshape(len(r), c)

      run("arrayrecord", ar_write,
          lambda: ards.ArrayRecordDataSource([path("arrayrecord.ar")]), ar_read)

  base = {r[0]: r for r in rows}["npy_ram"][4]
  print(f"N={n} examples, C={c} classes, batch {b}, {a.num_batches} random "
        "batches, best of 3")
  print(f"{'format':<15}{'bytes/ex':>9}{'write s':>9}{'open s':>9}"
        f"{'batches/s':>11}{'µs/batch':>10}{'vs RAM':>8}")
  for name, bpe, w, o, bps, us in rows:
    print(f"{name:<15}{bpe:9.1f}{w:9.3f}{o:9.4f}{bps:11.0f}{us:10.1f}"
          f"{bps / base:8.2f}")


if __name__ == "__main__":
  main()

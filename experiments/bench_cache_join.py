"""The cache join's cost per batch when a cache spans many shards, side by
side: held as one array per name (caches up to `cache.IN_MEMORY_BYTES`, the
default) vs read shard by shard from the memory maps (the path of larger
caches; `IN_MEMORY_BYTES = 0` forces it).

A K-view cache of the quickstart's 60k examples holds 60k x K rows; a batch
of 128 random examples then touches ~K times more of its 16384-row shards.
Per row count (K = 1, 4, 32): a float32 cache of two 10-class arrays in a
temp dir, `LogitCache.teacher_rows` of 128 random ids, mean over --batches
batches after one warm-up, ms per batch.

Run (from the repository root):
  .venv/bin/python -m experiments.bench_cache_join [--batches=300]
"""

import tempfile
import time
from collections.abc import Sequence

import numpy as np
from absl import app, flags

from mtkd.store import cache

_BATCHES = flags.DEFINE_integer("batches", 300, "Timed batches per row.")
META = {"teacher": "synthetic", "teacher_fingerprint": "-",
        "dataset_fingerprint": "-", "split": "train"}
TASKS = ("left", "right")


def _ms_per_batch(c: cache.LogitCache, batches: int) -> float:
  rng = np.random.default_rng(0)
  ids = [rng.choice(c.ids, 128) for _ in range(batches + 1)]
  temps = {t: 2.0 for t in TASKS}
  c.teacher_rows(ids[0], temps)
  t = time.perf_counter()
  for i in ids[1:]:
    c.teacher_rows(i, temps)
  return 1e3 * (time.perf_counter() - t) / batches


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  print(f"{'rows':>9} {'shards':>7} {'one array':>10} {'by shard':>9} "
        "(ms per batch of 128, both arrays)")
  for k in (1, 4, 32):
    n = 60000 * k
    logits = {t: np.random.default_rng(i).normal(size=(n, 10)).astype(
        np.float32) for i, t in enumerate(TASKS)}
    with tempfile.TemporaryDirectory() as d:
      cache.build(d, n, 16384, lambda a, b, logits=logits: (
          np.arange(a, b), {t: x[a:b] for t, x in logits.items()}),
                  META, "float32")
      meta = dict(META, **cache.storage_meta())
      one = _ms_per_batch(cache.LogitCache(d, meta, verify=False),
                          _BATCHES.value)
      default, cache.IN_MEMORY_BYTES = cache.IN_MEMORY_BYTES, 0
      try:
        mapped = cache.LogitCache(d, meta, verify=False)
        shards = len(mapped._shards)
        by_shard = _ms_per_batch(mapped, _BATCHES.value)
      finally:
        cache.IN_MEMORY_BYTES = default
    print(f"{n:>9} {shards:>7} {one:>10.3f} {by_shard:>9.3f}")


if __name__ == "__main__":
  app.run(main)

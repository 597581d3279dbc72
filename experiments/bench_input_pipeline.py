"""Input pipeline rate vs the jitted step's rate, and the loop's idle time
with and without `mtkd.train.prefetch.prefetch_to_device`, side by side.

Quickstart shapes: 60000 random 36x36x1 uint8 images, 2 tasks x 10 classes,
batch 128; the teacher logits come from a real `LogitCache` (float32, 16384
rows per shard, 4 shards) built in a temp dir and joined by id (the
experiment's join, `bench_common.make_join`), through `streams.train_stream`.
The student is the quickstart MLP (experiments/bench_common.py). Rows, each
timed over --steps batches in the steady state (the first --warmup batches
are not timed), best (fastest) of --repeats runs that interleave the
configurations (the minimum is least affected by other jobs):

  pipeline, ds[k] in one thread      the stream's batches, no threads
  pipeline, iterate()                mtkd's `streams.iterate` (grain, 2
                                     threads, 8 batches prefetched)
  iterate() + put_batch              ... then host -> device (mtkd's
                                     place.put_batch: packed, one
                                     transfer per dtype)
  iterate() + put per array          ... the previous put, one transfer per
                                     batch array
  jitted step alone                  one device batch reused
  metric sums: tree.map(jnp.add)     loop.py's per-step accumulation of the
                                     ~22 metric scalars (one dispatch each)
  metric sums: one jitted add        the same sums as one jitted call
  loop (mtkd now)                    iterate, put, step, metric sums
                                     (`loop.accumulate`: one jitted add)
  loop as before                     the same with mtkd's previous put (one
                                     transfer per batch array) and per-leaf
                                     metric sums
  loop + prefetch_to_device(2)       the same, put in a background thread
  ... synced                         the same two, blocking on each step's
                                     metrics: the host waits for the device
  plain loop (supervised)            the same loop without teacher: no cache
                                     join, 'supervised' objective (the
                                     baseline the cached KD loop is held to)

"idle" is the time the loop body spends waiting for its next device batch
(next() plus put_batch when not prefetched) over the loop's wall time. JAX
dispatches steps asynchronously, so in the unsynced loops the host may
queue steps ahead of the device and "idle" is host-side; in the synced
loops the device idles exactly while the host waits.

Run (from the repository root; ~1.5 min on 2 cores):
  .venv/bin/python -m experiments.bench_input_pipeline
  .venv/bin/python -m experiments.bench_input_pipeline --quick
"""

import tempfile
import time
from collections.abc import Callable, Sequence
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from experiments import bench_common
from mtkd.data import streams
from mtkd.store import cache
from mtkd.train import sharding
from mtkd.train.loop import accumulate
from mtkd.train.prefetch import prefetch_to_device

_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 60000, "Examples.")
_STEPS = flags.DEFINE_integer("steps", 300, "Timed batches per run.")
_WARMUP = flags.DEFINE_integer("warmup", 20,
                               "Untimed batches before the timed ones.")
_REPEATS = flags.DEFINE_integer("repeats", 5,
                                "Interleaved runs (the fastest counts).")
_QUICK = flags.DEFINE_bool("quick", False, "Small sizes.")

META = {"teacher": "synthetic", "teacher_fingerprint": "-",
        "dataset_fingerprint": "-", "split": "train"}


def build_join(directory: str, n: int):
  logits = bench_common.synthetic_logits(n)
  cache.build(directory, n, 16384,
              lambda a, b: (np.arange(a, b), {t: x[a:b]
                                              for t, x in logits.items()}),
              META, "float32")
  c = cache.LogitCache(directory, dict(META, **cache.storage_meta()))
  return bench_common.make_join(c)


class Bench:
  """The timed configurations; each returns (seconds per batch, idle)."""

  def __init__(self, ds, student, step, steps: int, warmup: int):
    self.ds, self.student, self.step = ds, student, step
    self.plain = None  # (ds, step) of the supervised loop, set by main.
    self.steps, self.warmup = steps, warmup
    self.key = jax.random.key(1)
    self.batch = ds[0]
    self.device_batch = student.put(self.batch)
    state = student.fresh_state()
    state, self.metrics = step(state, self.device_batch, self.key)
    self._add = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b))
    jax.block_until_ready(self._add(self.metrics, self.metrics))

  def _timed(self, body: Callable[[int], float], finish: Callable) -> tuple:
    """Runs body(i) for warmup + steps batches; body returns its idle s."""
    for i in range(self.warmup):
      body(i)
    finish()
    idle, t0 = 0.0, time.perf_counter()
    for i in range(self.warmup, self.warmup + self.steps):
      idle += body(i)
    finish()
    total = time.perf_counter() - t0
    return total / self.steps, idle / total

  def one_thread(self):
    def body(i):
      self.ds[i]
      return 0.0

    return self._timed(body, lambda: None)

  def iterate(self, put: bool = False, before: bool = False):
    it = streams.iterate(self.ds, 0, self.warmup + self.steps)
    last = [None]
    put_fn = self.put_dict if before else self.student.put

    def body(i):
      b = next(it)
      last[0] = put_fn(b) if put else b
      return 0.0

    return self._timed(body, lambda: jax.block_until_ready(last))

  def step_only(self):
    state = [self.student.fresh_state()]

    def body(i):
      state[0], _ = self.step(state[0], self.device_batch, self.key)
      return 0.0

    return self._timed(body, lambda: jax.block_until_ready(state))

  def metric_sums(self, jitted: bool):
    sums = [self.metrics]
    add = self._add if jitted else (
        lambda a, b: jax.tree.map(jnp.add, a, b))

    def body(i):
      sums[0] = add(sums[0], self.metrics)
      return 0.0

    return self._timed(body, lambda: jax.block_until_ready(sums))

  def put_dict(self, b):
    """The transfer mtkd made before packing: one array per batch leaf."""
    return sharding.put_batch(b, self.student.place.mesh)

  def loop(self, prefetch: bool, sync: bool, plain: bool = False,
           before: bool = False):
    """The loop.py body: next batch, put, step, metric sums. `before`: as
    mtkd did it before the performance work (a dict put, one array per
    leaf; per-leaf metric sums) instead of a packed put and
    `loop.accumulate`."""
    ds, step = self.plain if plain else (self.ds, self.step)
    source = streams.iterate(ds, 0, self.warmup + self.steps)
    put = self.put_dict if before else self.student.put
    it = prefetch_to_device(source, put, 2) if prefetch else source
    state, sums = [self.student.fresh_state()], [None, None]

    def body(i):
      t0 = time.perf_counter()
      b = next(it)
      if not prefetch:
        b = put(b)
      idle = time.perf_counter() - t0
      state[0], m = step(state[0], b, self.key)
      if before:
        sums[0] = m if sums[0] is None else jax.tree.map(jnp.add, sums[0], m)
        sums[1] = m["loss"] if sums[1] is None else jax.tree.map(
            jnp.add, sums[1], m["loss"])
      else:
        sums[:] = accumulate(sums[0], sums[1], m)
      if sync:
        jax.block_until_ready(m)
      return idle

    try:
      return self._timed(body, lambda: jax.block_until_ready((state, sums)))
    finally:
      if prefetch:
        it.close()


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # As mtkd.main: no INFO logs.
  a = SimpleNamespace(num_examples=_NUM_EXAMPLES.value, steps=_STEPS.value,
                      warmup=_WARMUP.value, repeats=_REPEATS.value)
  if _QUICK.value:
    a.num_examples, a.steps, a.repeats = 20000, 100, 1
  print(bench_common.machine())
  split = bench_common.synthetic_split(a.num_examples)
  student = bench_common.make_student()
  step = bench_common.make_student_step(student, student.fresh_state())
  with tempfile.TemporaryDirectory() as d:
    join = build_join(d, a.num_examples)
    ds = streams.train_stream(split, split.labels, 128, 0, join=join)
    bench = Bench(ds, student, step, a.steps, a.warmup)
    sup = bench_common.make_student(objective="supervised")
    plain_ds = streams.train_stream(split, split.labels, 128, 0)
    plain_step = bench_common.make_student_step(sup, sup.fresh_state())
    jax.block_until_ready(plain_step(sup.fresh_state(), sup.put(plain_ds[0]),
                                     bench.key))
    bench.plain = (plain_ds, plain_step)
    configs = {
        "pipeline, ds[k] in one thread": bench.one_thread,
        "pipeline, iterate() (grain: 2 threads, prefetch 8)": bench.iterate,
        "iterate() + put_batch": lambda: bench.iterate(put=True),
        "iterate() + put per array (mtkd before)": lambda: bench.iterate(
            put=True, before=True),
        "jitted step alone (device batch reused)": bench.step_only,
        "metric sums: tree.map(jnp.add), per step": lambda: bench.metric_sums(
            False),
        "metric sums: one jitted add, per step": lambda: bench.metric_sums(
            True),
        "loop (mtkd now: iterate, put, step, sums)": lambda: bench.loop(
            False, False),
        "loop as before (put per array, per-leaf sums)": lambda: bench.loop(
            False, False, before=True),
        "loop + prefetch_to_device(size=2)": lambda: bench.loop(True, False),
        "loop, synced each step": lambda: bench.loop(False, True),
        "loop + prefetch_to_device, synced each step": lambda: bench.loop(
            True, True),
        "plain loop (supervised, no teacher; mtkd now)": lambda: bench.loop(
            False, False, plain=True),
        "plain loop + prefetch_to_device(size=2)": lambda: bench.loop(
            True, False, plain=True),
    }
    runs = {name: [] for name in configs}
    for _ in range(a.repeats):
      for name, fn in configs.items():
        runs[name].append(fn())
  med = {name: min(rs) for name, rs in runs.items()}  # Fastest run, its idle.
  step_s = med["jitted step alone (device batch reused)"][0]
  rows = []
  for name, (s, idle) in med.items():
    is_loop = "loop" in name
    worst = max(r[0] for r in runs[name])
    rows.append([name, f"{1e3 * s:.2f}", f"{1e3 * worst:.2f}",
                 f"{1 / s:,.0f}", f"{step_s / s:.2f}",
                 f"{100 * idle:.0f} %" if is_loop else ""])
  print(bench_common.table(
      ["configuration", "ms/batch", "slowest run", "batches/s",
       "rate / step rate", "idle"], rows,
      f"batch 128, {a.num_examples} examples, 2 tasks x 10 classes, "
      f"{a.steps} timed batches after {a.warmup}, best of {a.repeats}"))
  loop = med["loop (mtkd now: iterate, put, step, sums)"][0]
  pre = med["loop + prefetch_to_device(size=2)"][0]
  plain = med["plain loop (supervised, no teacher; mtkd now)"][0]
  plain_pre = med["plain loop + prefetch_to_device(size=2)"][0]
  before = med["loop as before (put per array, per-leaf sums)"][0]
  put_old = med["iterate() + put per array (mtkd before)"][0]
  put_new = med["iterate() + put_batch"][0]
  print(f"\nPacked put + one jitted metric add: loop {1e3 * before:.2f} -> "
        f"{1e3 * loop:.2f} ms/batch ({before / loop:.2f}x); iterate + put "
        f"{1e3 * put_old:.2f} -> {1e3 * put_new:.2f} ms/batch.")
  print(f"prefetch_to_device: KD loop {1e3 * loop:.2f} -> {1e3 * pre:.2f} "
        f"ms/batch ({loop / pre:.2f}x), plain loop {1e3 * plain:.2f} -> "
        f"{1e3 * plain_pre:.2f} ({plain / plain_pre:.2f}x). Cached-KD loop "
        f"rate / plain loop rate: {plain / loop:.2f} (no prefetch), "
        f"{plain_pre / pre:.2f} (prefetch). The pipeline with put delivers "
        f"{step_s / med['iterate() + put_batch'][0]:.1f}x the step's rate.\n"
        f"{bench_common.machine()}")


if __name__ == "__main__":
  app.run(main)

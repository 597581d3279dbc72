"""Replayed views' cost in the student's step, side by side with the fixed
cache (experiments/README.md, "Replayed augmented views").

The MultiFashion student of experiments/repro_views.py (MLP 1296 -> 128 ->
2 heads of 10, batch 128, cached-logit KD, random shifts of up to 2 px) on
60k random 36x36 uint8 images with random teacher logits. Per batch,
averaged over --steps batches, after a warm-up:

  fixed      the cache holds one logit row per example; the step shifts
             each example from its (seed, id, epoch) seed (`aug_seed`)
  views_K    a K-view cache: the stream draws each example's view, joins
             its (id, view) logits and sends `view_seed`; the step
             re-renders each example from its own key (`views.render`)
  views_K_mix  the same with mixup views (partner inputs and weights
             gathered on the host, mixed in the step)

for the step alone on one device batch ("step") and for mtkd's loop body
(stream, prefetch, put, step: "loop"). The goal: views >= 0.95x fixed.

Run (from the repository root; idle machine):
  .venv/bin/python -m experiments.bench_views_step [--steps=300 --views=8]
"""

import time
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging

from experiments import bench_common as bc
from mtkd.data import augment, streams

_STEPS = flags.DEFINE_integer("steps", 300, "Batches timed per row.")
_VIEWS = flags.DEFINE_integer("views", 8, "K of the view cache.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timings per row (best kept).")


def _ms(fn, n: int, repeats: int) -> float:
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, 1e3 * (time.perf_counter() - t) / n)
  return best


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  n, steps, k = 60000, _STEPS.value, _VIEWS.value
  rng = np.random.default_rng(0)
  split = bc.synthetic_split(n)
  # Row r of a table: example r // K's view r % K (K = 1: the fixed cache).
  tables = {views: {t: rng.normal(size=(n * views, bc.NUM_CLASSES)).astype(
      np.float32) for t in bc.TASKS} for views in (1, k)}

  def join_of(views):
    def join(ids):  # One teacher per task: [B, 1, C].
      return {"teacher": {t: x[ids][:, None]
                          for t, x in tables[views].items()}}
    return join

  student = bc.make_student()
  shift = augment.make(ml_collections.ConfigDict(dict(max_shift=2)))
  step = bc.make_student_step(student, student.fresh_state(), shift)
  key = jax.random.key(1)
  streams_of = {
      "fixed": streams.train_stream(split, split.labels, 128, 0,
                                    join=join_of(1), augment_seeds=True),
      f"views_{k}": streams.train_stream(split, split.labels, 128, 0,
                                         join=join_of(k), num_views=k),
      f"views_{k}_mix": streams.train_stream(
          split, split.labels, 128, 0, join=join_of(k), num_views=k,
          mixup=True),
  }
  rows = {}
  for name, ds in streams_of.items():
    batch = student.put(ds[0])
    state = student.fresh_state()
    for _ in range(3):  # Compile and warm up this batch structure.
      state, _ = step(state, batch, key)

    def run_steps(batch=batch):
      s = student.fresh_state()
      for _ in range(steps):
        s, _ = step(s, batch, key)
      return s

    def loop(ds=ds):
      s = student.fresh_state()
      for b in streams.iterate(ds, 0, steps):
        s, _ = step(s, student.put(b), key)
      return s

    rows[name] = (_ms(run_steps, steps, _REPEATS.value),
                  _ms(loop, steps, _REPEATS.value))
  print(f"{jax.devices()[0].platform}, batch 128, {steps} batches, best of "
        f"{_REPEATS.value}; ms/batch, and fixed's time over the row's")
  print(f"{'':<14}{'step':>8}{'loop':>8}{'step x':>8}{'loop x':>8}")
  f_step, f_loop = rows["fixed"]
  for name, (s, lp) in rows.items():
    print(f"{name:<14}{s:8.2f}{lp:8.2f}{f_step / s:8.2f}{f_loop / lp:8.2f}")


if __name__ == "__main__":
  app.run(main)

"""Where a small student's training step spends its time, side by side.

Quickstart-sized MLP student (1296 -> 128 -> 2 heads of 10, batch 128,
cached-logit KD objective) on 60k random 36x36 uint8 images with random
teacher logits. Times, per batch, averaged over --steps batches:

  step only      the jitted train step on one device batch, reused
  grain shuffle  gathering a batch through grain's shuffle->repeat->batch
                 (mtkd's first input pipeline)
  epoch shuffle  the same batch contents via mtkd's per-epoch numpy
                 permutation (`streams.train_stream`, current)
  put_batch      host batch -> device arrays
  full loop      mtkd's loop body: prefetching iterator, put, step, metric
                 accumulation

Run (from the repository root):
  .venv/bin/python -m experiments.bench_student_loop [--steps=300]
"""

import time
from collections.abc import Sequence

import grain
import jax
import ml_collections
import numpy as np
from absl import app, flags, logging

from mtkd import models
from mtkd.data import datasets, streams
from mtkd.methods import objectives
from mtkd.train import optim, placement, sharding
from mtkd.train import step as step_lib
from mtkd.train.loop import accumulate

_STEPS = flags.DEFINE_integer("steps", 300, "Batches timed per row.")


def _ms(fn, n):
  t = time.perf_counter()
  out = fn()
  jax.block_until_ready(out)
  return 1e3 * (time.perf_counter() - t) / n


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # As mtkd.main: no INFO logs.
  n, steps, rng = 60000, _STEPS.value, np.random.default_rng(0)
  tasks = ("left", "right")
  split = datasets.Split(
      rng.integers(0, 255, (n, 36, 36, 1), dtype=np.uint8),
      {t: rng.integers(0, 10, n).astype(np.int32) for t in tasks},
      np.arange(n))
  logits = {t: rng.normal(size=(n, 10)).astype(np.float32) for t in tasks}
  def join(ids):  # One teacher per task: stacks [B, 1, C].
    return {"teacher": {t: x[ids][:, None] for t, x in logits.items()}}
  specs = tuple(objectives.TaskSpec(t, 10, temperature=2.0, alpha=0.5)
                for t in tasks)
  model = models.build(ml_collections.ConfigDict(
      dict(name="mlp", hidden=(128,))), {t: 10 for t in tasks})
  tx = optim.make_optimizer(ml_collections.ConfigDict(
      dict(name="adam", learning_rate=1e-3)))
  place = placement.Jit(sharding.make_mesh(devices=jax.devices()[:1]))
  net = models.Net(model)
  init = step_lib.make_init(net, tx, (36, 36, 1))
  def fresh_state():  # The step donates its state: each timing gets its own.
    return place.init(init, jax.random.key(0))
  state = fresh_state()
  distill = objectives.OBJECTIVES.get("distill")()
  step = place.compile(lambda ax: step_lib.make_train_step(
      net, tx, distill, specs, axis_name=ax), state)
  key = jax.random.key(1)
  ds = streams.train_stream(split, split.labels, 128, 0, join=join)
  old = (grain.MapDataset.source(np.arange(n)).shuffle(seed=0).repeat()
         .batch(128, drop_remainder=True)
         .map(streams.Gather(split, split.labels, join)))
  batch = ds[0]
  device_batch = place.put_batch(batch)
  state, _ = step(state, device_batch, key)

  def run_steps():
    s = fresh_state()
    for _ in range(steps):
      s, _ = step(s, device_batch, key)
    return s

  def full_loop():
    s, sums, since = fresh_state(), None, None
    for b in streams.iterate(ds, 0, steps):
      s, m = step(s, place.put_batch(b), key)
      sums, since = accumulate(sums, since, m)
    return s

  rows = {
      "step only": _ms(run_steps, steps),
      "grain shuffle": _ms(lambda: [old[i] for i in range(steps)], steps),
      "epoch shuffle": _ms(lambda: [ds[i] for i in range(steps)], steps),
      "put_batch": _ms(lambda: [place.put_batch(batch)
                                for _ in range(steps)], steps),
      "full loop": _ms(full_loop, steps),
  }
  print(f"{jax.devices()[0].platform}, batch 128, {steps} batches")
  for name, ms in rows.items():
    print(f"{name:<14}{ms:8.2f} ms/batch")
  print(f"grain shuffle / epoch shuffle: "
        f"{rows['grain shuffle'] / rows['epoch shuffle']:.1f}x; "
        f"full loop / step only: {rows['full loop'] / rows['step only']:.2f}x")


if __name__ == "__main__":
  app.run(main)

"""Student step throughput: plain vs cached-logit KD vs online-teacher KD.

The same jitted mtkd step (`train.make_train_step`) with three objectives /
teacher modes, on one device, batch already on the device (input cost is
measured in bench_input_pipeline.py):

  plain    `supervised` objective (labels only)
  cached   `distill`, teacher logits read from the batch (the cache's output)
  online   `distill`, the frozen teachers run inside the step

Targets (issue 7): cached >= 0.95x plain examples/s; online time / cached
time close to the ideal 1 + teacher_forward / student_step, both measured
here. Timings interleave the variants (round robin, median of repeats) so a
busy machine slows them alike.

  .venv/bin/python experiments/bench_kd_step.py [--quick]
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mtkd import models, objectives, parallel, sharding, teachers, train

PAIRS = {  # name: (teacher model, student model)
    "small": (dict(name="patch_cnn", channels=(32, 64), dense=256),
              dict(name="mlp", hidden=(128,))),
    "larger": (dict(name="patch_cnn", channels=(64, 128), dense=512),
               dict(name="mlp", hidden=(1024, 1024))),
}
TASKS = ("left", "right")
SHAPE, BATCH = (36, 36, 1), 128


def _build(pair: str):
  t_cfg, s_cfg = PAIRS[pair]
  classes = {t: 10 for t in TASKS}
  specs = tuple(objectives.TaskSpec(t, 10, temperature=2.0, alpha=0.5)
                for t in TASKS)
  teacher = models.build(ml_collections.ConfigDict(t_cfg), classes)
  t_params = teacher.init(jax.random.key(1), jnp.zeros((1, *SHAPE)))["params"]
  student = models.Net(models.build(ml_collections.ConfigDict(s_cfg), classes))
  tx = train.make_optimizer(ml_collections.ConfigDict(
      dict(name="adam", learning_rate=1e-3)))
  rng = np.random.default_rng(0)
  batch = {"inputs": rng.random((BATCH, *SHAPE), np.float32),
           "labels": {t: rng.integers(0, 10, BATCH).astype(np.int32)
                      for t in TASKS},
           "mask": np.ones(BATCH, np.float32),
           "teacher": {t: rng.normal(size=(BATCH, 1, 10)).astype(np.float32)
                       for t in TASKS}}
  strategy = parallel.Jit(sharding.make_mesh(devices=jax.devices()[:1]))
  online = teachers.online({"t": teacher}, {t: ["t"] for t in TASKS})
  variants = {}
  for name, obj, fn in (("plain", "supervised", None),
                        ("cached", "distill", None),
                        ("online", "distill", online)):
    extra = (lambda p: {"weighting": {}, "teachers": {"t": t_params}}) if fn \
        else (lambda p: {"weighting": {}})
    init = train.make_init(student, tx, SHAPE, extra)
    state = strategy.init(init, jax.random.key(0))
    step = strategy.compile(lambda ax, obj=obj, fn=fn: train.make_train_step(
        student, tx, objectives.OBJECTIVES.get(obj)(None), specs,
        teacher=fn, axis_name=ax), state)
    b = dict(batch)
    if name != "cached":
      b.pop("teacher")
    variants[name] = (step, state, strategy.put_batch(b))
  fwd = jax.jit(lambda p, x: teacher.apply({"params": p}, x))
  x = jax.device_put(batch["inputs"])
  return variants, (fwd, t_params, x)


def _time(fn, steps: int) -> float:
  t0 = time.perf_counter()
  fn(steps)
  return (time.perf_counter() - t0) / steps


def bench(pair: str, steps: int, repeats: int) -> dict:
  variants, (fwd, t_params, x) = _build(pair)
  states = {k: v[1] for k, v in variants.items()}
  key = jax.random.key(1)

  def runner(name):
    step, _, batch = variants[name]

    def run(n):
      s = states[name]
      for _ in range(n):
        s, m = step(s, batch, key)
      jax.block_until_ready(s)
      states[name] = s
    return run

  def teacher_fwd(n):
    for _ in range(n):
      out = fwd(t_params, x)
    jax.block_until_ready(out)

  fns = {k: runner(k) for k in variants} | {"teacher_forward": teacher_fwd}
  for f in fns.values():  # Compile and warm up.
    f(3)
  times = {k: [] for k in fns}
  for _ in range(repeats):
    for k, f in fns.items():
      times[k].append(_time(f, steps))
  return {k: statistics.median(v) for k, v in times.items()}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--quick", action="store_true")
  a = p.parse_args()
  steps, repeats = (20, 3) if a.quick else (100, 5)
  print(f"jax {jax.__version__}, {jax.devices()[0].platform}, batch {BATCH}, "
        f"{steps} steps x {repeats} repeats (median), interleaved.\n")
  print("| pair | plain ex/s | cached ex/s | online ex/s | cached/plain | "
        "teacher fwd ms | student step ms | online/cached time | ideal |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
  for pair in PAIRS:
    t = bench(pair, steps, repeats)
    ideal = 1 + t["teacher_forward"] / t["cached"]
    print(f"| {pair} | {BATCH / t['plain']:,.0f} | {BATCH / t['cached']:,.0f}"
          f" | {BATCH / t['online']:,.0f} | {t['plain'] / t['cached']:.3f} | "
          f"{1e3 * t['teacher_forward']:.2f} | {1e3 * t['cached']:.2f} | "
          f"{t['online'] / t['cached']:.3f} | {ideal:.3f} |", flush=True)


if __name__ == "__main__":
  main()

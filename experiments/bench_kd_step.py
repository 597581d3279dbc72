"""Student step throughput: plain vs cached-logit KD vs online-teacher KD.

The same jitted mtkd step (`step_lib.make_train_step`) with three objectives /
teacher modes, on one device, batch already on the device (input cost is
measured in bench_input_pipeline.py):

  plain    `supervised` objective (labels only)
  cached   `distill`, teacher logits read from the batch (the cache's output)
  online   `distill`, the frozen teachers run inside the step

Targets (issue 7): cached >= 0.95x plain examples/s; online time / cached
time close to the ideal 1 + teacher_forward / student_step, both measured
here ("ideal / measured" >= 0.9: the online step's throughput is within
10 percent of what a teacher forward pass added to the cached step would give).
Timings interleave the variants (round robin, median of repeats) so a busy
machine slows them alike. A second table gives XLA's FLOP count per step,
the rate achieved and, with --peak_tflops, the model FLOPs utilisation.

Run (from the repository root):
  .venv/bin/python -m experiments.bench_kd_step [--quick]
  # GPU (issue 7, pending here): bf16 compute, H100 SXM dense bf16 peak
  .venv/bin/python -m experiments.bench_kd_step --dtype=bfloat16 \\
      --peak_tflops=989
"""

import statistics
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging

from mtkd import models
from mtkd.methods import objectives
from mtkd.stages import teachers
from mtkd.train import optim, placement, sharding
from mtkd.train import step as step_lib

PAIRS = {  # name: (teacher model, student model)
    "small": (dict(name="patch_cnn", channels=(32, 64), dense=256),
              dict(name="mlp", hidden=(128,))),
    "larger": (dict(name="patch_cnn", channels=(64, 128), dense=512),
               dict(name="mlp", hidden=(1024, 1024))),
}
TASKS = ("left", "right")
SHAPE, BATCH = (36, 36, 1), 128

_QUICK = flags.DEFINE_bool("quick", False,
                           "20 steps x 3 repeats instead of 100 x 5.")
_DTYPE = flags.DEFINE_string(
    "dtype", "float32", "Models' compute dtype (bfloat16 on accelerators).")
_PEAK_TFLOPS = flags.DEFINE_float(
    "peak_tflops", 0.0, "The device's peak TFLOP/s at --dtype, for MFU.")


def _flops(jitted, *args) -> float:
  """XLA's FLOP count for one call (nan when the backend gives none)."""
  cost = jitted.lower(*args).compile().cost_analysis()
  if isinstance(cost, list | tuple):  # Older jax: one dict per program.
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", float("nan")))


def _build(pair: str, dtype: str = "float32"):
  t_cfg, s_cfg = (dict(c, dtype=dtype) for c in PAIRS[pair])
  classes = {t: 10 for t in TASKS}
  specs = tuple(objectives.TaskSpec(t, 10, temperature=2.0, alpha=0.5)
                for t in TASKS)
  teacher = models.build(ml_collections.ConfigDict(t_cfg), classes)
  t_params = teacher.init(jax.random.key(1), jnp.zeros((1, *SHAPE)))["params"]
  student = models.Net(models.build(ml_collections.ConfigDict(s_cfg), classes))
  tx = optim.make_optimizer(ml_collections.ConfigDict(
      dict(name="adam", learning_rate=1e-3)))
  rng = np.random.default_rng(0)
  batch = {"inputs": rng.random((BATCH, *SHAPE), np.float32),
           "labels": {t: rng.integers(0, 10, BATCH).astype(np.int32)
                      for t in TASKS},
           "mask": np.ones(BATCH, np.float32),
           "teacher": {t: rng.normal(size=(BATCH, 1, 10)).astype(np.float32)
                       for t in TASKS}}
  place = placement.Jit(sharding.make_mesh(devices=jax.devices()[:1]))
  online = teachers.online({"t": teacher}, {t: ["t"] for t in TASKS})
  variants, flops = {}, {}
  for name, obj, fn in (("plain", "supervised", None),
                        ("cached", "distill", None),
                        ("online", "distill", online)):
    extra = (lambda p: {"weighting": {}, "teachers": {"t": {"params": t_params}}}) if fn \
        else (lambda p: {"weighting": {}})
    init = step_lib.make_init(student, tx, SHAPE, extra)
    state = place.init(init, jax.random.key(0))
    step = place.compile(lambda ax, obj=obj, fn=fn: step_lib.make_train_step(
        student, tx, objectives.OBJECTIVES.get(obj)(), specs,
        teacher=fn, axis_name=ax), state)
    b = dict(batch)
    if name != "cached":
      b.pop("teacher")
    device_batch = place.put_batch(b)
    variants[name] = (step, state, device_batch)
    flops[name] = _flops(step, state, device_batch, jax.random.key(1))
  fwd = jax.jit(lambda p, x: teacher.apply({"params": p}, x))
  x = jax.device_put(batch["inputs"])
  flops["teacher_forward"] = _flops(fwd, t_params, x)
  return variants, (fwd, t_params, x), flops


def _time(fn, steps: int) -> float:
  t0 = time.perf_counter()
  fn(steps)
  return (time.perf_counter() - t0) / steps


def bench(pair: str, steps: int, repeats: int, dtype: str
          ) -> tuple[dict, dict]:
  """(median seconds per call, XLA FLOPs per call) per variant."""
  variants, (fwd, t_params, x), flops = _build(pair, dtype)
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
  return {k: statistics.median(v) for k, v in times.items()}, flops


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # As mtkd.main: no INFO logs.
  dtype, peak_tflops = _DTYPE.value, _PEAK_TFLOPS.value
  steps, repeats = (20, 3) if _QUICK.value else (100, 5)
  print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, batch "
        f"{BATCH}, compute dtype {dtype}, {steps} steps x {repeats} "
        "repeats (median), interleaved.\n")
  results = {pair: bench(pair, steps, repeats, dtype) for pair in PAIRS}
  print("| pair | plain ex/s | cached ex/s | online ex/s | cached/plain | "
        "teacher fwd ms | student step ms | online/cached time | ideal | "
        "ideal / measured |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
  for pair, (t, _) in results.items():
    ideal = 1 + t["teacher_forward"] / t["cached"]
    print(f"| {pair} | {BATCH / t['plain']:,.0f} | {BATCH / t['cached']:,.0f}"
          f" | {BATCH / t['online']:,.0f} | {t['plain'] / t['cached']:.3f} | "
          f"{1e3 * t['teacher_forward']:.2f} | {1e3 * t['cached']:.2f} | "
          f"{t['online'] / t['cached']:.3f} | {ideal:.3f} | "
          f"{ideal / (t['online'] / t['cached']):.2f} |", flush=True)
  print("\nXLA's FLOP count per step (cost analysis) and the rate achieved"
        + (f"; MFU against {peak_tflops:g} peak TFLOP/s" if peak_tflops
           else "; pass --peak_tflops for MFU") + ":\n")
  print("| pair | variant | GFLOP/step | TFLOP/s | MFU |")
  print("|---|---|---:|---:|---:|")
  for pair, (t, flops) in results.items():
    for name in ("plain", "cached", "online"):
      rate = flops[name] / t[name] / 1e12
      mfu = f"{100 * rate / peak_tflops:.1f} %" if peak_tflops else ""
      print(f"| {pair} | {name} | {flops[name] / 1e9:.3f} | {rate:.3f} | "
            f"{mfu} |")


if __name__ == "__main__":
  app.run(main)

"""The student step on 1, 2, 4, 8 fake CPU devices: throughput, compile
time, memory per device, and the loss (same on every mesh).

Each device count runs in its own process with
XLA_FLAGS=--xla_force_host_platform_device_count=n. The quickstart student
(experiments/bench_common.py) is jitted by mtkd's `placement.Jit` over a
('data', n) mesh with NamedShardings (batch split over devices, large parameters
FSDP-sharded), global batch 128 (strong scaling). Per device count:

  compile s      `step.lower(...).compile()`
  examples/s     --steps steps on one device batch, best of --repeats,
                 waiting for each step before the next: with steps queued
                 asynchronously on 2+ fake devices of the loaded 2-core
                 machine, XLA:CPU aborted in an all-reduce rendezvous
                 ("Termination timeout ... of 40 seconds exceeded")
  MiB/device     from `compiled.memory_analysis()` (per device program):
                 arguments + outputs - donated aliases + temporaries
  loss           the loss after --steps steps: equal across meshes up to
                 float rounding, a check that sharding changes nothing

Fake CPU devices share the machine's cores (2 here): this measures the
overhead of partitioning and checks correctness, not speed-up.

Run (from the repository root; ~1 min):
  .venv/bin/python -m experiments.bench_scaling
  .venv/bin/python -m experiments.bench_scaling --quick
"""

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence

from absl import app, flags, logging

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_DEVICES = flags.DEFINE_list("devices", ["1", "2", "4", "8"],
                             "Device counts, one process each.")
_STEPS = flags.DEFINE_integer("steps", 200, "Timed steps per repeat.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Repeats (the best counts).")
_QUICK = flags.DEFINE_bool("quick", False, "Small sizes.")
_WORKER = flags.DEFINE_integer(
    "worker", 0, "Internal: time this many devices in this process and "
    "print the result as JSON.")

NOTE = ("Note: fake CPU devices share the same 2 cores, so this is a "
        "correctness/overhead tool, not a speed-up measurement.")


def worker(n: int, steps: int, repeats: int) -> dict:
  import jax
  import numpy as np

  from experiments import bench_common

  assert jax.device_count() == n, jax.devices()
  student = bench_common.make_student(devices=jax.devices())
  state = student.fresh_state()
  jitted = bench_common.make_student_step(student, state)
  split = bench_common.synthetic_split(128)
  batch = student.put(bench_common.host_batch(
      split, bench_common.synthetic_logits(128), np.arange(128)))
  key = jax.random.key(1)
  t0 = time.perf_counter()
  compiled = jitted.lower(state, batch, key).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  mib = None
  if mem is not None:
    mib = (mem.argument_size_in_bytes + mem.output_size_in_bytes
           - mem.alias_size_in_bytes + mem.temp_size_in_bytes) / 2**20
  state, _ = compiled(state, batch, key)  # Warm-up.
  best, loss = float("inf"), None
  for _ in range(repeats):
    s = student.fresh_state()
    jax.block_until_ready(s)
    t0 = time.perf_counter()
    for _ in range(steps):
      s, m = compiled(s, batch, key)
      jax.block_until_ready(m)  # See the module docstring.
    jax.block_until_ready(s)
    best = min(best, time.perf_counter() - t0)
    loss = float(m["loss"][0] / m["loss"][1])
  return {"devices": n, "compile_s": compile_s, "rate": steps * 128 / best,
          "mib": mib, "temp_mib": None if mem is None
          else mem.temp_size_in_bytes / 2**20, "loss": loss}


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # As mtkd.main: no INFO logs.
  steps, repeats = (50, 1) if _QUICK.value else (_STEPS.value,
                                                 _REPEATS.value)
  if _WORKER.value:
    print(json.dumps(worker(_WORKER.value, steps, repeats)))
    return
  from experiments import bench_common
  print(bench_common.machine())
  print(NOTE)
  rows, base, failed = [], None, False
  for n in (int(x) for x in _DEVICES.value):
    env = dict(os.environ, XLA_FLAGS=(
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_force_host_platform_device_count={n}").strip())
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.bench_scaling", f"--worker={n}",
         f"--steps={steps}", f"--repeats={repeats}"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
      err = [x for x in proc.stderr.strip().splitlines()
             if x.startswith(("F", "E")) or "Error" in x] or ["no output"]
      rows.append([str(n), f"failed: {err[-1][:150]}", "", "", "", "", ""])
      failed = True
      continue
    r = json.loads(lines[-1])
    base = base or r["rate"]
    mib = "n/a" if r["mib"] is None else f"{r['mib']:.2f}"
    temp = "n/a" if r["temp_mib"] is None else f"{r['temp_mib']:.2f}"
    rows.append([str(n), f"{r['compile_s']:.2f}", f"{r['rate']:,.0f}",
                 f"{r['rate'] / base:.2f}", mib, temp, f"{r['loss']:.6f}"])
  print(bench_common.table(
      ["devices", "compile s", "examples/s", "vs 1 device", "MiB/device",
       "of which temp", f"loss after {steps} steps"], rows,
      f"global batch 128, jit + NamedSharding over ('data', n), best of "
      f"{repeats} x {steps} steps"))
  print(NOTE)
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  app.run(main)

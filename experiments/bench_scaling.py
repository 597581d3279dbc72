"""The student step on 1, 2, 4, 8 fake CPU devices: throughput, compile
time, memory per device, and the loss (same on every mesh).

Each device count runs in its own process with
XLA_FLAGS=--xla_force_host_platform_device_count=n. The quickstart student
(experiments/common.py) is jitted by mtkd's `placement.Jit` over a ('data',
n) mesh with NamedShardings (batch split over devices, large parameters
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
  .venv/bin/python experiments/bench_scaling.py
  .venv/bin/python experiments/bench_scaling.py --quick
"""

import argparse
import json
import os
import subprocess
import sys
import time

NOTE = ("Note: fake CPU devices share the same 2 cores, so this is a "
        "correctness/overhead tool, not a speed-up measurement.")


def worker(n: int, steps: int, repeats: int) -> dict:
  import jax
  import numpy as np

  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import common

  assert jax.device_count() == n, jax.devices()
  student = common.make_student(devices=jax.devices())
  state = student.fresh_state()
  jitted = common.make_student_step(student, state)
  split = common.synthetic_split(128)
  batch = student.put(common.host_batch(split, common.synthetic_logits(128),
                                        np.arange(128)))
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


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--devices", default="1,2,4,8")
  p.add_argument("--steps", type=int, default=200)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--quick", action="store_true", help="small sizes")
  p.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
  a = p.parse_args()
  if a.quick:
    a.steps, a.repeats = 50, 1
  if a.worker:
    print(json.dumps(worker(a.worker, a.steps, a.repeats)))
    return
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import common
  print(common.machine())
  print(NOTE)
  rows, base, failed = [], None, False
  for n in (int(x) for x in a.devices.split(",")):
    env = dict(os.environ, XLA_FLAGS=(
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_force_host_platform_device_count={n}").strip())
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), f"--worker={n}",
         f"--steps={a.steps}", f"--repeats={a.repeats}"],
        env=env, capture_output=True, text=True, check=False)
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
  print(common.table(
      ["devices", "compile s", "examples/s", "vs 1 device", "MiB/device",
       "of which temp", f"loss after {a.steps} steps"], rows,
      f"global batch 128, jit + NamedSharding over ('data', n), best of "
      f"{a.repeats} x {a.steps} steps"))
  print(NOTE)
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  main()

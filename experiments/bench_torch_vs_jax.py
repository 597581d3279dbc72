"""The quickstart student's training step in JAX (mtkd) vs PyTorch, on CPU.

Same student (MLP 1296 -> 128 ReLU -> two 10-class heads), same loss (per
task alpha*T^2*KL + (1-alpha)*CE, alpha 0.5, T 2), batch 128, Adam 1e-3,
same synthetic batches (random 36x36x1 images, labels and teacher logits),
same initial parameters (mtkd's init copied into torch). Rows:

  mtkd step (jax.jit)       `step_lib.make_train_step` via
                            experiments/bench_common.py
                            (also computes grad norm, accuracy and loss
                            metrics, a non-finite guard), state donated
  bare JAX step (jax.jit)   the same loss and Adam update only
  PyTorch eager             experiments/torch_reference.py
  PyTorch torch.compile     the same step under torch.compile (inductor)
  ..., 1 thread             the same with torch.set_num_threads(1): torch's
                            2-thread regions suffer most when other jobs
                            share the cores

Each runs in its own process (so one framework's idle thread pool cannot
slow the other) and is timed over --steps steps cycling through 32
prepared batches (data already in device/tensor form), best of --repeats;
the first call (compile) is timed separately. Threads:
torch.set_num_threads(2) (and 1 interop thread); XLA:CPU uses its default
pool, one thread per core (2 here). A check first compares the losses of
the first steps (same init, same data).

Needs torch (`.venv/bin/pip install -r experiments/requirements.txt`);
without it, prints a message and exits 0.

Run (from the repository root; ~1.5 min on 2 cores):
  .venv/bin/python -m experiments.bench_torch_vs_jax
  .venv/bin/python -m experiments.bench_torch_vs_jax --quick
"""

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging

from experiments import bench_common
from mtkd.methods import losses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_STEPS = flags.DEFINE_integer("steps", 400, "Timed steps per repeat.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Repeats (the best counts).")
_QUICK = flags.DEFINE_bool("quick", False, "Small sizes.")
_WORKER = flags.DEFINE_string(
    "worker", None, "Internal: time this implementation (or 'check') in "
    "this process and print the result as JSON.")

NUM_BATCHES, BATCH = 32, 128


def timed(run: Callable[[int], None], steps: int, repeats: int
          ) -> tuple[float, float]:
  """(first call s, best steady examples/s); run(n) does n steps + sync.

  After the first call, one untimed pass over the batches: a jitted step
  may compile again once its inputs are its own outputs, and torch warms
  its allocator and autotuning caches."""
  t0 = time.perf_counter()
  run(1)
  first = time.perf_counter() - t0
  run(NUM_BATCHES)
  best = np.inf
  for _ in range(repeats):
    t0 = time.perf_counter()
    run(steps)
    best = min(best, time.perf_counter() - t0)
  return first, steps * BATCH / best


def jax_mtkd(student, batches, key):
  step = bench_common.make_student_step(student, student.fresh_state())
  device = [student.put(b) for b in batches]
  state = [student.fresh_state()]
  losses_seen = []

  def run(n: int, record: bool = False) -> None:
    for i in range(n):
      state[0], m = step(state[0], device[i % NUM_BATCHES], key)
      if record:
        losses_seen.append(float(m["loss"][0] / m["loss"][1]))
    jax.block_until_ready(state)

  return run, losses_seen


def jax_bare(student, batches):
  """The loss and Adam update alone, on mtkd's model."""
  tx = optax.adam(bench_common.LEARNING_RATE)
  params = student.fresh_state().params

  def loss_fn(params, b):
    out = student.model.apply({"params": params}, b["inputs"])["logits"]
    total = 0.0
    for t in bench_common.TASKS:
      kd = losses.distillation_kl(out[t], b["teacher"][t][:, 0],
                                  bench_common.TEMPERATURE)
      ce = losses.cross_entropy(out[t], b["labels"][t])
      total += jnp.mean(bench_common.ALPHA * kd + (1 - bench_common.ALPHA) * ce)
    return total

  @jax.jit
  def step(params, opt_state, b):
    loss, grads = jax.value_and_grad(loss_fn)(params, b)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  device = [jax.device_put({k: v for k, v in b.items() if k != "ids"})
            for b in batches]
  carry = [params, tx.init(params)]

  def run(n: int) -> None:
    for i in range(n):
      carry[0], carry[1], _ = step(carry[0], carry[1], device[i % NUM_BATCHES])
    jax.block_until_ready(carry)

  return run


def torch_setup(student, batches, threads: int = 2):
  """(make_step(compiled) -> step, tensors) with mtkd's initial params."""
  import torch

  from experiments import torch_reference as ref

  torch.set_num_threads(threads)
  torch.set_num_interop_threads(1)
  tensors = [(torch.from_numpy(b["inputs"]),
              {t: torch.from_numpy(np.ascontiguousarray(x[:, 0]))
               for t, x in b["teacher"].items()},
              {t: torch.from_numpy(y.astype(np.int64))
               for t, y in b["labels"].items()}) for b in batches]
  init = jax.tree.map(np.array, student.fresh_state().params)

  def make(compiled: bool):
    model = ref.Student(
        int(np.prod(bench_common.INPUT_SHAPE)), bench_common.HIDDEN,
        {t: bench_common.NUM_CLASSES for t in bench_common.TASKS})
    ref.load_flax_params(model, init)
    opt = torch.optim.Adam(model.parameters(),
                           lr=bench_common.LEARNING_RATE)
    step = ref.make_step(model, opt, bench_common.TASKS,
                         bench_common.TEMPERATURE, bench_common.ALPHA)
    return torch.compile(step) if compiled else step

  return make, tensors


def worker(name: str, steps: int, repeats: int) -> dict:
  """Times one implementation (run in its own process)."""
  split = bench_common.synthetic_split(NUM_BATCHES * BATCH)
  logits = bench_common.synthetic_logits(NUM_BATCHES * BATCH)
  batches = [bench_common.host_batch(split, logits,
                                     np.arange(i * BATCH, (i + 1) * BATCH))
             for i in range(NUM_BATCHES)]
  student = bench_common.make_student()
  key = jax.random.key(1)
  if name == "check":  # Same init and data: the first losses must agree.
    run, seen = jax_mtkd(student, batches, key)
    run(CHECK_STEPS, record=True)
    make, tensors = torch_setup(student, batches)
    step = make(False)
    theirs = [float(step(*tensors[i])) for i in range(CHECK_STEPS)]
    return {"mtkd": seen, "torch": theirs}
  if name.startswith("PyTorch"):
    make, tensors = torch_setup(student, batches,
                                1 if "1 thread" in name else 2)
    step = make("compile" in name)

    def run(n: int) -> None:
      for i in range(n):
        step(*tensors[i % NUM_BATCHES])
  elif name.startswith("mtkd"):
    run = jax_mtkd(student, batches, key)[0]
  else:
    run = jax_bare(student, batches)
  first, rate = timed(run, steps, repeats)
  return {"first": first, "rate": rate}


IMPLEMENTATIONS = ("mtkd step (jax.jit)", "bare JAX step (jax.jit)",
                   "PyTorch eager", "PyTorch torch.compile",
                   "PyTorch eager, 1 thread", "PyTorch torch.compile, 1 thread")
CHECK_STEPS = 5


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # As mtkd.main: no INFO logs.
  steps, repeats = (100, 1) if _QUICK.value else (_STEPS.value,
                                                  _REPEATS.value)
  if _WORKER.value:
    print(json.dumps(worker(_WORKER.value, steps, repeats)))
    return
  try:
    import torch
  except ImportError:
    print("bench_torch_vs_jax: torch is not installed; skipping. Install "
          "it with `.venv/bin/pip install -r experiments/requirements.txt`.")
    return
  print(f"{bench_common.machine()}; torch {torch.__version__}")

  def spawn(name: str) -> dict | str:
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.bench_torch_vs_jax",
         f"--worker={name}", f"--steps={steps}", f"--repeats={repeats}"],
        cwd=ROOT, capture_output=True, text=True, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
      err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
      return f"failed: {err[:150]}"
    return json.loads(lines[-1])

  check = spawn("check")
  if isinstance(check, str):
    print(f"loss check {check}")
  else:
    diff = max(abs(x - y) for x, y in zip(check["mtkd"], check["torch"],
                                          strict=True))
    print(f"same init and data, losses of the first {CHECK_STEPS} steps: "
          f"mtkd {[round(x, 5) for x in check['mtkd']]}, torch "
          f"{[round(x, 5) for x in check['torch']]}; max |diff| {diff:.1e}")
  results = {name: spawn(name) for name in IMPLEMENTATIONS}
  jax_rate = results[IMPLEMENTATIONS[0]]
  jax_rate = None if isinstance(jax_rate, str) else jax_rate["rate"]
  rows = []
  for name, r in results.items():
    if isinstance(r, str):
      rows.append([name, r, "", "", ""])
      continue
    ratio = f"{jax_rate / r['rate']:.2f}" if jax_rate else ""
    rows.append([name, f"{r['first']:.2f}", f"{r['rate']:,.0f}",
                 f"{1e3 * BATCH / r['rate']:.2f}", ratio])
  print(bench_common.table(
      ["implementation", "first call s", "examples/s", "ms/step",
       "mtkd JAX / this"], rows,
      f"batch {BATCH}, {steps} steps, best of {repeats}, each in its own "
      "process; torch: set_num_threads(2), 1 interop thread; XLA:CPU: its "
      "default pool (2 cores)"))


if __name__ == "__main__":
  app.run(main)

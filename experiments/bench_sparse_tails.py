"""Sparse teacher caches on a 1000-class task: each tail mode at k = 4, 16,
64 and T = 1, 2, 4, against full-logit KD, side by side in one run.

The task and teacher are `bench_cache_storage`'s: 1000 Gaussian classes in
32 dimensions, the teacher's logits the exact (Bayes) class posterior, as
peaked as a trained 1000-class teacher. For each mode the N training
examples are cached through `mtkd.store.cache.build` (bfloat16 values, the
real write path) and the student reads them as mtkd's step does:
`LogitCache.teacher_rows` (the sparse triple at T) and
`mtkd.train.teacher_targets.teacher_logits` (dense target inside the jitted
step), then `losses.softmax_kd` (T^2 KL). The uniform mode is read as
`lookup`'s dense rows, as mtkd feeds it.

Student: softmax regression 32 -> 1000, Adam 1e-2, batch 128, --train_steps
steps in one jitted lax.scan; test accuracy on 10000 fresh examples, mean
± std over --seeds seeds (the same batches for every mode). Bytes per
example are the shard files' sizes on disk (ids excluded), against dense
fp32 (4000 B).

Run (from the repository root):
  .venv/bin/python -m experiments.bench_sparse_tails            # ~6 min
  .venv/bin/python -m experiments.bench_sparse_tails --quick    # ~30 s
"""

import functools
import os
import shutil
import tempfile
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging

from experiments.bench_common import DIM, C, machine, make_task, table
from mtkd.methods import losses
from mtkd.store import cache
from mtkd.train import teacher_targets

_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 20000,
                                     "Training examples cached (N).")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 1500,
                                    "Steps of each student.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per student.")
_KS = flags.DEFINE_list("ks", ["4", "16", "64"], "Top-k / draws per row.")
_TEMPERATURES = flags.DEFINE_list("temperatures", ["1", "2", "4"],
                                  "Distillation temperatures.")
_DIR = flags.DEFINE_string("dir", None, "Where to write the caches.")
_QUICK = flags.DEFINE_bool("quick", False, "Small sizes.")

MODES = ("uniform", "renormalized", "bucket", "sampled")
META = {"teacher": "bayes", "split": "train"}
BATCH, LR = 128, 1e-2


def _bytes(directory: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f))
             for d, _, files in os.walk(directory) for f in files
             if f.endswith(".npy") and f != "ids.npy")


def build(directory: str, logits: np.ndarray, mode: str, k: int,
          temperatures: Sequence[float]) -> cache.LogitCache:
  n = len(logits)
  temps = {"task": [temperatures[0]] if mode == "sampled" else
           list(temperatures)}
  cache.build(directory, n, n, lambda a, b: (np.arange(a, b),
                                            {"task": logits[a:b]}),
              META, "bfloat16", top_k=k, top_k_names=["task"], tail=mode,
              temperatures=temps)
  return cache.LogitCache(directory, {}, verify=False)


def targets(c: cache.LogitCache, mode: str, t: float, n: int):
  """What the step reads for all n rows: dense logits or the triple."""
  ids = np.arange(n)
  if mode == "uniform" or c.meta["top_k"] == 0:
    return c.lookup(ids)["task"]
  return c.teacher_rows(ids, {"task": t})["task"]


@functools.partial(jax.jit, static_argnames=("t",))
def fit(x, teacher, idx, t):
  """Softmax regression distilled from `teacher` (dense [N, C] or the
  sparse triple, gathered by `idx` [steps, B]) at T."""
  tx = optax.adam(LR)
  params = {"w": jnp.zeros((DIM, C)), "b": jnp.zeros((C,))}

  def loss_fn(p, xb, tb):
    s = xb @ p["w"] + p["b"]
    if isinstance(tb, dict):
      z = teacher_targets.teacher_logits(s, jax.tree.map(
          lambda a: a[:, None], tb), t)
    else:
      z = tb[:, None]
    return jnp.mean(losses.softmax_kd(s, z, t))

  def step(carry, ids):
    p, opt = carry
    tb = jax.tree.map(lambda a: a[ids], teacher)
    g = jax.grad(loss_fn)(p, x[ids], tb)
    updates, opt = tx.update(g, opt, p)
    return (optax.apply_updates(p, updates), opt), None

  (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), idx)
  return params


def accuracy(params, xt, yt) -> float:
  pred = np.argmax(xt @ np.asarray(params["w"]) + np.asarray(params["b"]), 1)
  return float(np.mean(pred == yt))


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  n, steps, seeds = _NUM_EXAMPLES.value, _TRAIN_STEPS.value, _SEEDS.value
  ks = [int(k) for k in _KS.value]
  temps = [float(t) for t in _TEMPERATURES.value]
  if _QUICK.value:
    n, steps, seeds, ks = 5000, 300, 1, [16]
  print(machine())
  t0 = time.perf_counter()
  x, y, logits, means = make_task(n, 0)
  xt, yt, teacher_test, _ = make_task(10000, 99, means)
  idx = [np.random.default_rng(s).integers(0, n, (steps, BATCH))
         for s in range(seeds)]
  workdir = tempfile.mkdtemp(dir=_DIR.value)
  accs, sizes = {}, {}
  try:
    for mode in MODES:
      for k in ks:
        d = os.path.join(workdir, f"{mode}-{k}")
        c = build(d, logits, mode, k, temps)
        sizes[mode, k] = _bytes(d) / n
        for t in temps:
          if mode == "sampled" and t != temps[0]:
            shutil.rmtree(d)  # Draws are made at one T: rebuild per T.
            c = build(d, logits, mode, k, [t])
          tb = jax.tree.map(jnp.asarray, targets(c, mode, t, n))
          accs[mode, k, t] = [accuracy(fit(x, tb, i, t), xt, yt) for i in idx]
        shutil.rmtree(d)
    full = jnp.asarray(logits)
    for t in temps:
      accs["full", 0, t] = [accuracy(fit(x, full, i, t), xt, yt) for i in idx]
  finally:
    shutil.rmtree(workdir, ignore_errors=True)

  def cell(mode, k, t):
    a = 100 * np.asarray(accs[mode, k, t])
    gap = a.mean() - 100 * np.mean(accs["full", 0, t])
    return f"{a.mean():.2f} ± {a.std():.2f} ({gap:+.2f})"

  rows = [["full logits (fp32)", "4000", "100", *[cell("full", 0, t)
                                                   for t in temps]]]
  for mode in MODES:
    for k in ks:
      rows.append([f"{mode}, k={k}", f"{sizes[mode, k]:.0f}",
                   f"{100 * sizes[mode, k] / (4 * C):.2f}",
                   *[cell(mode, k, t) for t in temps]])
  bayes = 100 * float(np.mean(teacher_test.argmax(1) == yt))
  print(table(
      ["teacher cache", "B/ex", "% of fp32",
       *[f"test acc % at T={t:g} (vs full)" for t in temps]], rows,
      f"N={n}, C={C}, bf16 values; softmax regression, {steps} steps of "
      f"{BATCH}, mean ± std over {seeds} seeds; teacher (Bayes) test "
      f"accuracy {bayes:.2f} %"))
  print(f"\n{time.perf_counter() - t0:.0f} s; {machine()}")


if __name__ == "__main__":
  app.run(main)

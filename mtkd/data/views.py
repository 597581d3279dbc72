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
"""

from collections.abc import Callable

import jax
import numpy as np

from mtkd.data.augment import Augment
from mtkd.store.sparse import splitmix64

_VIEW, _SEED = 0x5EED_0F_71E7, 0xA06_3E27  # Stream separators.


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


def view_ids(ids: np.ndarray, views: np.ndarray, num_views: int
             ) -> np.ndarray:
  """int64 cache keys of (id, view)."""
  return np.asarray(ids, np.int64) * num_views + np.asarray(views, np.int64)


def augment_views(augment: Augment, x: jax.Array, seeds: jax.Array
                  ) -> jax.Array:
  """Each example augmented with its own key `jax.random.key(seed)`
  (`augment` sees a batch of one)."""
  def one(xi, s):
    return augment(xi[None], jax.random.key(s))[0]
  return jax.vmap(one)(x, seeds)


def renderer(augment: Augment) -> Callable[[np.ndarray, np.ndarray],
                                           np.ndarray]:
  """Host `(inputs float32, seeds) -> augmented inputs`, the caching
  stage's view of what the step computes (the same jitted function)."""
  f = jax.jit(lambda x, s: augment_views(augment, x, s))
  return lambda x, s: np.asarray(f(x, s))

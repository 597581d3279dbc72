"""Grain input streams over in-memory splits.

Training streams are random-access: batch k is a pure function of
(seed, k). Epoch e is a numpy permutation seeded by (seed, e), drawn once per
epoch and cached; batch k holds positions [kB, (k+1)B) of the concatenated
epochs (a batch may straddle two epochs). Because a batch depends only on
its index, resuming at step s is `ds[s:]`, the data position needs no state
of its own, and runs are reproducible. (Grain's own `shuffle` computes each
element's position with a per-element Python call, which cost 6-9 ms per
batch of 128 here: most of a small student's step.)

The gather step turns a batch of row indices into arrays with one vectorised
fancy-index per array (not one Python call per example) and joins the
teacher's cached logits by example id. Batches are global: in a multi-process
run every process computes the same row indices and gathers only its own
contiguous share (`distributed.process_rows`), so no process reads another's
examples.
"""

from collections.abc import Callable, Iterator, Mapping

import grain
import numpy as np

from mtkd import distributed
from mtkd.data import host_augment, views
from mtkd.data.datasets import Split, to_float
from mtkd.data.host_augment import HostAugment

Batch = dict[str, object]
# Maps example ids [B] to extra batch entries (e.g. `teacher`: {task: [B, K,
# C]}, see `mtkd.stages.teachers.CachedJoin`); raises on unknown ids.
JoinFn = Callable[[np.ndarray], Mapping[str, object]]


class Gather:
  """Row indices (and a padding mask) -> batch dict; with `host` (a
  `mtkd.data.host_augment` function) and per-row `seeds`, the rows' raw
  inputs are augmented first."""

  def __init__(self, split: Split, labels: Mapping[str, np.ndarray],
               join: JoinFn | None = None, host: HostAugment | None = None):
    self.split, self.labels, self.join, self.host = split, labels, join, host

  def __call__(self, rows: np.ndarray, mask: np.ndarray | None = None,
               seeds: np.ndarray | None = None) -> Batch:
    rows = np.asarray(rows, np.int64)
    ids = self.split.ids[rows]
    x = self.split.x[rows]
    if self.host is not None and seeds is not None:
      x = self.host(x, seeds)
    batch = {
        "inputs": to_float(x),
        "labels": {t: y[rows] for t, y in self.labels.items()},
        "mask": (np.ones(len(rows), np.float32) if mask is None else mask),
        "ids": ids,
    }
    if self.join is not None:
      batch.update(self.join(ids))
    return batch


class EpochShuffle:
  """Batch index -> row indices: seeded permutation per epoch, no drop.
  With `weights` (one per row), an epoch is len(rows) seeded draws with
  replacement, row i with probability weights[i] / sum(weights): the
  per-task sampling of a mixed dataset, resumable like the permutation."""

  def __init__(self, rows: np.ndarray, batch_size: int, seed: int,
               weights: np.ndarray | None = None):
    self.rows, self.batch_size, self.seed = rows, batch_size, seed
    self.p = None if weights is None else weights / weights.sum()
    self._cache: dict[int, np.ndarray] = {}

  def permutation(self, epoch: int) -> np.ndarray:
    perm = self._cache.get(epoch)
    if perm is None:
      rng = np.random.default_rng([self.seed, epoch])
      perm = (rng.permutation(len(self.rows)) if self.p is None else
              rng.choice(len(self.rows), len(self.rows), p=self.p))
      if len(self._cache) > 4:  # Threads read neighbouring epochs only.
        self._cache.pop(min(self._cache))
      self._cache[epoch] = perm
    return perm

  def __call__(self, k: int) -> np.ndarray:
    n = len(self.rows)
    pos = np.arange(k * self.batch_size, (k + 1) * self.batch_size)
    epochs, offsets = np.divmod(pos, n)
    out = np.empty(self.batch_size, np.int64)
    for e in np.unique(epochs):
      sel = epochs == e
      out[sel] = self.rows[self.permutation(int(e))[offsets[sel]]]
    return out


class _PadThenSlice:
  """Pads a short (last) batch to `size` rows, mask 0 on the padding, and
  keeps this process's share of rows and mask."""

  def __init__(self, size: int):
    self.size = size

  def __call__(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros(self.size, np.float32)
    mask[:len(rows)] = 1.0
    rows = np.concatenate([rows, np.full(self.size - len(rows), rows[0])])
    share = distributed.process_rows(self.size)
    return rows[share], mask[share]


class TrainBatches:
  """Batch index -> this process's share of a training batch.

  With `num_views` K > 0 each example replays one of its K cached views
  (`mtkd.data.views`): the view drawn for (`seed`, id, epoch), the teacher
  join keyed by (id, view), and `view_seed` for the step to re-render the
  view as the cache did. Otherwise the join is keyed by id, and with
  `augment_seeds` each example carries `aug_seed`, a pure function of
  (`seed`, id, epoch) the step renders its augmentation from (so it does
  not depend on the device layout or the step). The gather's host-side
  augmentation (in Grain's threads) uses the same per-example seeds."""

  def __init__(self, shuffle: EpochShuffle, gather: Gather,
               join: JoinFn | None, num_views: int = 0, seed: int = 0,
               view_seed: int = 0, mixup: bool = False,
               augment_seeds: bool = False,
               mix: host_augment.Spec | None = None):
    self.shuffle, self.gather, self.join = shuffle, gather, join
    self.num_views, self.seed, self.view_seed = num_views, seed, view_seed
    self.mixup, self.augment_seeds, self.mix = mixup, augment_seeds, mix

  def __call__(self, k: int) -> Batch:
    b = self.shuffle.batch_size
    epochs = np.arange(k * b, (k + 1) * b) // len(self.shuffle.rows)
    share = distributed.process_rows(b)
    rows, epochs = self.shuffle(k)[share], epochs[share]
    ids = self.gather.split.ids[rows]
    if self.num_views:
      v = views.view_index(self.seed, ids, epochs, self.num_views)
      keys = views.view_keys(self.gather.split, ids, v, self.view_seed,
                             self.mixup, self.gather.host)
      batch = self.gather(rows, seeds=keys["view_seed"])
      batch.update(self.join(views.view_ids(ids, v, self.num_views)))
      batch.update(keys)
      return batch
    seeds = (views.epoch_seed(self.seed, ids, epochs) if self.augment_seeds
             or self.mix is not None or self.gather.host is not None
             else None)  # Not hashed when nothing draws from them.
    batch = self.gather(rows, seeds=seeds)
    if self.mix is not None:
      self._mix(batch, seeds)
    if self.join is not None:
      batch.update(self.join(ids))
    if self.augment_seeds:
      batch["aug_seed"] = seeds
    return batch

  def _mix(self, batch: Batch, seeds: np.ndarray) -> None:
    """Mixup / cutmix with partner rows of the stream (`host_augment`)."""
    shape = self.gather.split.x.shape
    h, w = (shape[1], shape[2]) if len(shape) == 4 else (1, 1)
    plan = host_augment.mix_plan(self.mix, seeds, len(self.shuffle.rows), h,
                                 w)
    other = self.gather(self.shuffle.rows[plan.partner],
                        seeds=seeds.astype(np.int64) + 1)
    batch["inputs"] = host_augment.apply_mix(self.mix, batch["inputs"],
                                             other["inputs"], plan)
    batch["mix_labels"], batch["label_lam"] = other["labels"], plan.lam


def train_stream(split: Split, labels: Mapping[str, np.ndarray],
                 batch_size: int, seed: int, rows: np.ndarray | None = None,
                 join: JoinFn | None = None, num_views: int = 0,
                 view_seed: int = 0, mixup: bool = False,
                 augment_seeds: bool = False,
                 host: HostAugment | None = None,
                 mix: host_augment.Spec | None = None) -> grain.MapDataset:
  """An infinite, seeded, per-epoch reshuffled stream of full batches.

  `batch_size` is global; each process gets its share. `rows` restricts
  sampling to a subset of the split (e.g. labelled examples); `labels` are
  the labels the model may see (-1 = none). With `num_views` K > 0 the
  join reads a view cache; with `augment_seeds` batches carry per-example
  augmentation seeds for the step, and `host` augments the raw inputs in
  the stream, `mix` mixes examples with partners (`TrainBatches`).
  """
  rows = np.arange(len(split)) if rows is None else np.asarray(rows, np.int64)
  shuffle = EpochShuffle(rows, batch_size, seed, None if split.weights is None
                         else np.asarray(split.weights, np.float64)[rows])
  return grain.MapDataset.range(2**62).map(TrainBatches(
      shuffle, Gather(split, labels, host=host), join, num_views, seed,
      view_seed, mixup, augment_seeds, mix))


def eval_stream(split: Split, batch_size: int,
                join: JoinFn | None = None) -> grain.MapDataset:
  """Every example exactly once, in order; the last batch padded, mask 0."""
  gather = Gather(split, split.labels, join)
  return (grain.MapDataset.range(len(split)).batch(batch_size)
          .map(_PadThenSlice(batch_size)).map(lambda rm: gather(*rm)))


def iterate(ds: grain.MapDataset, start: int = 0, stop: int | None = None,
            num_threads: int = 2, prefetch: int = 8) -> Iterator[Batch]:
  """Iterates `ds[start:stop]` with background threads prefetching batches."""
  return iter(ds[start:stop].to_iter_dataset(
      grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)))

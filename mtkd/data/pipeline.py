"""Grain input pipelines over in-memory splits.

Training streams are random-access: batch k is a pure function of
(seed, k), built as `range -> shuffle(seed) -> repeat -> batch -> gather`.
Grain's shuffle before repeat draws a new permutation every epoch. Because a
batch depends only on its index, resuming at step s is `ds[s:]`, the data
position needs no state of its own, and runs are reproducible.

The gather step turns a batch of row indices into arrays with one vectorised
fancy-index per array (not one Python call per example) and joins the
teacher's cached logits by example id.
"""

from collections.abc import Callable, Iterator, Mapping

import grain
import numpy as np

from mtkd.data.datasets import Split, to_float

Batch = dict[str, object]
# Maps example ids [B] to {task: teacher logits [B, C]}; raises on mismatch.
JoinFn = Callable[[np.ndarray], Mapping[str, np.ndarray]]


class Gather:
  """Row indices -> batch dict; pads to `pad_to` rows with mask 0."""

  def __init__(self, split: Split, labels: Mapping[str, np.ndarray],
               join: JoinFn | None = None, pad_to: int = 0):
    self.split, self.labels, self.join, self.pad_to = split, labels, join, pad_to

  def __call__(self, rows: np.ndarray) -> Batch:
    rows = np.asarray(rows, np.int64)
    n = len(rows)
    mask = np.ones(max(n, self.pad_to), np.float32)
    if self.pad_to > n:
      mask[n:] = 0.0
      rows = np.concatenate([rows, np.full(self.pad_to - n, rows[0])])
    ids = self.split.ids[rows]
    batch = {
        "inputs": to_float(self.split.x[rows]),
        "labels": {t: y[rows] for t, y in self.labels.items()},
        "mask": mask,
        "ids": ids,
    }
    if self.join is not None:
      batch["teacher"] = dict(self.join(ids))
    return batch


def train_stream(split: Split, labels: Mapping[str, np.ndarray],
                 batch_size: int, seed: int, rows: np.ndarray | None = None,
                 join: JoinFn | None = None) -> grain.MapDataset:
  """An infinite, seeded, per-epoch reshuffled stream of full batches.

  `rows` restricts sampling to a subset of the split (e.g. labelled
  examples); `labels` are the labels the model may see (-1 = none).
  """
  rows = np.arange(len(split)) if rows is None else np.asarray(rows, np.int64)
  return (grain.MapDataset.source(rows).shuffle(seed=seed).repeat()
          .batch(batch_size, drop_remainder=True)
          .map(Gather(split, labels, join)))


def eval_stream(split: Split, batch_size: int,
                join: JoinFn | None = None) -> grain.MapDataset:
  """Every example exactly once, in order; the last batch padded, mask 0."""
  return (grain.MapDataset.range(len(split)).batch(batch_size)
          .map(Gather(split, split.labels, join, pad_to=batch_size)))


def iterate(ds: grain.MapDataset, start: int = 0, stop: int | None = None,
            num_threads: int = 2, prefetch: int = 8) -> Iterator[Batch]:
  """Iterates `ds[start:stop]` with background threads prefetching batches."""
  return iter(ds[start:stop].to_iter_dataset(
      grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)))

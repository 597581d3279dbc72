"""Several datasets with disjoint tasks as one multi-task dataset (BAM!,
MT-DNN: e.g. several GLUE tasks, each its own dataset).

`config.data.name='mix'`, `config.data.sources = {source: {name, ...}}`:
each source is a `config.data` block of its own (any registered dataset;
`max_train`, `max_test` apply per source). Inputs must share one shape and
tasks must be disjoint. Each example keeps the labels of its own source's
tasks and is unlabelled (-1, NaN for regression) for the others, so every
objective masks and counts per task as it does for partial labels. Ids:
`source index * 2**40 + id`, unique and stable.

Sampling in training (`config.data.sampling`), as a per-row weight: a
source s with n_s training rows is drawn with probability proportional to
n_s ('proportional', a plain shuffle of the union), to 1 ('uniform') or to
n_s ** (1 / T) ('temperature', `config.data.sampling_temperature` T;
MT-DNN / T5 style). Draws are seeded per epoch, so a resumed run replays
them (`mtkd.data.streams.EpochShuffle`).
"""

import ml_collections
import numpy as np

from mtkd.data import datasets, lazy
from mtkd.data.datasets import DATASETS, Dataset, Split
from mtkd.errors import UserError

SAMPLING = ("proportional", "uniform", "temperature")
ID_BITS = 40


def _missing(kind: str, shape: tuple, n: int) -> np.ndarray:
  if kind == "regression":
    return np.full((n, *shape), np.nan, np.float32)
  return np.full((n, *shape), -1, np.int32)


def _concat(parts: list[tuple[int, Split]], tasks: dict, kinds: dict
            ) -> Split:
  """Sources' splits -> one split, labels missing outside their source."""
  if any(isinstance(s.x, lazy.LazyRows) for _, s in parts):
    raise UserError("config.data.name='mix' needs its sources in memory; "
                    "set lazy=False in config.data.sources.")
  x = np.concatenate([s.x for _, s in parts])
  labels = {}
  for t, owner in tasks.items():
    shape = next(s.labels[t].shape[1:] for i, s in parts if i == owner)
    labels[t] = np.concatenate([
        s.labels[t] if i == owner else _missing(
            kinds.get(t, "classification"), shape, len(s))
        for i, s in parts])
  ids = np.concatenate([np.asarray(s.ids, np.int64) + (i << ID_BITS)
                        for i, s in parts])
  return Split(x, labels, ids)


def weights(counts: list[int], sampling: str, temperature: float
            ) -> list[float]:
  """Per-row weight of each source so that source s is drawn with the
  sampling's probability (rows within a source uniformly)."""
  counts = np.asarray(counts, np.float64)
  if sampling == "proportional":
    share = counts
  elif sampling == "uniform":
    share = np.ones_like(counts)
  else:
    share = counts ** (1.0 / temperature)
  return list(share / share.sum() / counts)


@DATASETS.register("mix")
def mix(cfg) -> Dataset:
  sources = dict(cfg.get("sources") or {})
  if len(sources) < 2:
    raise UserError("config.data.name='mix' needs config.data.sources with "
                    "at least two datasets: {source: {name: ..., ...}}.")
  sampling = cfg.get("sampling", "proportional")
  temperature = float(cfg.get("sampling_temperature", 1.0))
  if sampling not in SAMPLING or temperature <= 0:
    raise UserError(f"config.data.sampling={sampling!r} (temperature "
                    f"{temperature}): use one of {list(SAMPLING)}, with "
                    "config.data.sampling_temperature > 0.")
  built, tasks, kinds, num_classes = [], {}, {}, {}
  for i, (name, sub) in enumerate(sorted(sources.items())):
    ds = datasets.build(ml_collections.ConfigDict(dict(sub)))
    for t in ds.tasks:
      if t in tasks:
        raise UserError(f"Task {t!r} is in two sources of config.data."
                        f"sources ({sorted(sources)[tasks[t]]!r} and "
                        f"{name!r}); mixed datasets need disjoint tasks.")
      tasks[t], num_classes[t] = i, ds.num_classes[t]
      kinds[t] = ds.kind(t)
    if built and ds.input_shape != built[0][1].input_shape:
      raise UserError(f"Source {name!r} has inputs {ds.input_shape}, "
                      f"{sorted(sources)[0]!r} has "
                      f"{built[0][1].input_shape}; mixed sources must share "
                      "one input shape.")
    if max(int(ds.train.ids.max()), int(ds.test.ids.max())) >= 1 << ID_BITS:
      raise UserError(f"Source {name!r} has example ids >= 2**{ID_BITS}.")
    built.append((i, ds))
  kinds = {t: k for t, k in kinds.items() if k != "classification"}
  vocabularies = {d.vocabulary for _, d in built}
  if len(vocabularies) > 1:
    raise UserError("The sources of config.data.sources have different "
                    "vocabularies (tokenizers); a mixed run embeds every "
                    "source's token ids in one table: use one tokenizer.")
  train = _concat([(i, d.train) for i, d in built], tasks, kinds)
  test = _concat([(i, d.test) for i, d in built], tasks, kinds)
  w = weights([len(d.train) for _, d in built], sampling, temperature)
  row_weights = np.concatenate([np.full(len(d.train), wi)
                                for wi, (_, d) in zip(w, built, strict=True)])
  if sampling != "proportional":
    train = Split(train.x, train.labels, train.ids, row_weights)
  return Dataset("mix", train, test, num_classes, kinds,
                 vocabulary=vocabularies.pop(),
                 vocab_size=max(d.vocab_size for _, d in built))

"""Inputs read on demand: a split's `x` that never has to fit in memory.

`LazyRows` stands in for an `[N, ...]` input array: it knows its shape and
dtype, and indexing it with rows reads (and decodes) just those rows. The
training and evaluation streams gather batch rows per process, so each
host reads only its own share of every batch; `Split.take` (label budget,
validation hold-out, `max_train`) composes row indices without reading.
Its fingerprint identifies the source (e.g. a TFDS dataset's name,
version, split and files), not its bytes, so building a dataset does not
read every input.
"""

import dataclasses
import hashlib
from collections.abc import Callable

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class LazyRows:
  read: Callable[[np.ndarray], np.ndarray]  # Source rows -> [n, ...] inputs.
  row_shape: tuple[int, ...]
  dtype: np.dtype
  source: str  # Identifies the source's content (see `fingerprint`).
  index: np.ndarray  # Row i of this array is source row index[i].

  @property
  def shape(self) -> tuple[int, ...]:
    return (len(self.index), *self.row_shape)

  @property
  def ndim(self) -> int:
    return 1 + len(self.row_shape)

  def __len__(self) -> int:
    return len(self.index)

  def rows(self, index) -> "LazyRows":
    """These rows, still unread."""
    return dataclasses.replace(self, index=self.index[index])

  def __getitem__(self, index) -> np.ndarray:
    """Reads the rows `index` (an int, slice or integer array)."""
    rows = self.index[index]
    out = np.asarray(self.read(np.atleast_1d(rows)), self.dtype)
    if out.shape[1:] != self.row_shape:
      raise ValueError(f"{self.source}: read rows of {out.shape[1:]}, "
                       f"expected {self.row_shape}.")
    return out if np.ndim(rows) else out[0]

  def fingerprint(self) -> str:
    h = hashlib.sha256(self.source.encode())
    h.update(np.ascontiguousarray(self.index, np.int64).tobytes())
    return h.hexdigest()[:16]


def rows(x, index):
  """`x[index]` for arrays; unread rows for `LazyRows`."""
  return x.rows(index) if isinstance(x, LazyRows) else x[index]

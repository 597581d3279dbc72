"""Batches as one buffer per dtype, for the host -> device transfer.

`jax.device_put` costs a fixed amount per array, more than per byte at
these sizes: a KD batch of two tasks has six arrays (inputs, two label
vectors, the mask, two teacher stacks) but only two dtypes, and sending
two arrays instead of six cut the loop's input + put time from 1.60 to
1.31 ms per batch (experiments/README.md). `pack` concatenates every leaf, flattened to `[B, -1]`, into one
`[B, F]` buffer per dtype on the host; `unpack`, traced inside the step,
slices them back, which XLA turns into free views or fuses into consumers.

`Packed` is a pytree whose children are the buffers and whose static part
is the layout, so a jitted step retraces only when the batch structure,
shapes or dtypes change, as it would for the dict. The leading (batch)
dimension is read from the buffers, so a device's share under `pmap`
(`[B / n, F]`) unpacks the same way.
"""

from typing import NamedTuple

import jax
import numpy as np


class Layout(NamedTuple):
  treedef: object                  # The batch dict's structure.
  dtypes: tuple[str, ...]          # Buffer g holds leaves of dtypes[g].
  # Per leaf, in tree order: (buffer, first column, last column, shape[1:]).
  leaves: tuple[tuple[int, int, int, tuple[int, ...]], ...]


@jax.tree_util.register_pytree_node_class
class Packed:
  """One `[B, F_g]` buffer per dtype g, plus the static layout."""

  def __init__(self, buffers: tuple, layout: Layout):
    self.buffers, self.layout = tuple(buffers), layout

  def tree_flatten(self):
    return self.buffers, self.layout

  @classmethod
  def tree_unflatten(cls, layout, buffers):
    return cls(buffers, layout)

  def unpack(self) -> dict:
    leaves = []
    for g, start, stop, shape in self.layout.leaves:
      buf = self.buffers[g]
      leaves.append(buf[:, start:stop].reshape(buf.shape[0], *shape))
    return jax.tree.unflatten(self.layout.treedef, leaves)


def pack(batch: dict) -> Packed:
  """Host batch (numpy leaves sharing the leading dimension) -> `Packed`."""
  leaves, treedef = jax.tree.flatten(batch)
  leaves = [np.asarray(x) for x in leaves]
  n = leaves[0].shape[0]
  if any(x.ndim == 0 or x.shape[0] != n for x in leaves):
    raise ValueError("pack: every batch array needs the same leading "
                     f"dimension; got {[x.shape for x in leaves]}.")
  dtypes: list[str] = []
  columns: list[list[np.ndarray]] = []
  widths: list[int] = []
  spans = []
  for x in leaves:
    key = x.dtype.str
    if key not in dtypes:
      dtypes.append(key)
      columns.append([])
      widths.append(0)
    g = dtypes.index(key)
    flat = x.reshape(n, -1)
    spans.append((g, widths[g], widths[g] + flat.shape[1], x.shape[1:]))
    widths[g] += flat.shape[1]
    columns[g].append(flat)
  buffers = tuple(cols[0] if len(cols) == 1 else np.concatenate(cols, 1)
                  for cols in columns)
  return Packed(buffers, Layout(treedef, tuple(dtypes), tuple(spans)))


def unpack(batch):
  """`Packed` -> dict; a dict passes through (callers may send either)."""
  return batch.unpack() if isinstance(batch, Packed) else batch

"""Device mesh from config, and placing host batches on it.

The mesh has explicit `Auto` axis types (`jax.make_mesh` would default to
`Explicit`, which changes sharding semantics). Batches are sharded along
their leading dimension over the `data` axis; state is replicated.
"""

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mtkd.errors import UserError

DATA = "data"


def make_mesh(axes: Sequence[Sequence] = ((DATA, -1),),
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh from `[(name, size), ...]`; one size may be -1 (the rest)."""
  devices = list(devices if devices is not None else jax.devices())
  names = [str(a[0]) for a in axes]
  sizes = [int(a[1]) for a in axes]
  if DATA not in names:
    raise UserError(f"config.mesh {list(axes)} has no {DATA!r} axis.")
  if sizes.count(-1) > 1:
    raise UserError(f"config.mesh {list(axes)}: at most one axis may be -1.")
  known = int(np.prod([s for s in sizes if s != -1]))
  if known <= 0 or len(devices) % known:
    raise UserError(f"config.mesh {list(axes)} does not fit {len(devices)} "
                    "device(s); axis sizes must multiply to the device count.")
  sizes = [len(devices) // known if s == -1 else s for s in sizes]
  if int(np.prod(sizes)) != len(devices):
    raise UserError(f"config.mesh {list(axes)} gives {int(np.prod(sizes))} "
                    f"devices but {len(devices)} are available.")
  return Mesh(np.asarray(devices).reshape(sizes), tuple(names),
              axis_types=(AxisType.Auto,) * len(names))


def data_shards(mesh: Mesh) -> int:
  return mesh.shape[DATA]


def check_batch_size(batch_size: int, mesh: Mesh, what: str) -> None:
  n = data_shards(mesh)
  if batch_size <= 0 or batch_size % n:
    raise UserError(
        f"{what}={batch_size} must be a positive multiple of the {n} data "
        f"shard(s) of the device mesh. Fix: set {what} to a multiple of {n}.")


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA))


def put_batch(batch, mesh: Mesh):
  """Host numpy batch -> global arrays sharded over `data` (host-only keys
  such as `ids` are dropped)."""
  sharding = batch_sharding(mesh)
  device_batch = {k: v for k, v in batch.items() if k != "ids"}
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x),
      device_batch)

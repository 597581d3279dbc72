"""Device mesh from config, parameter-sharding rules, and batch placement.

The mesh has explicit `Auto` axis types (`jax.make_mesh` would default to
`Explicit`, which changes sharding semantics). Batches are split along their
leading dimension over every batch axis (`data`, and `fsdp` when present:
FSDP is data parallelism whose parameters are also split). Parameters and
optimizer state are replicated, except that with an `fsdp` axis each array
of at least `fsdp_min_size` elements is split along its largest dimension
that the `fsdp` axis size divides.
"""

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mtkd.errors import UserError

DATA, FSDP = "data", "fsdp"
BATCH_AXES = (DATA, FSDP)


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


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
  return tuple(a for a in BATCH_AXES if a in mesh.axis_names)


def data_shards(mesh: Mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in batch_axes(mesh)]))


def check_batch_size(batch_size: int, mesh: Mesh, what: str,
                     accumulate: int = 1) -> None:
  """Each data shard must get whole rows, and the same number of rows from
  each of `accumulate` micro-batches."""
  n = data_shards(mesh) * max(accumulate, 1)
  if batch_size <= 0 or batch_size % n:
    split = (f" x {accumulate} micro-batches" if accumulate > 1 else "")
    raise UserError(
        f"{what}={batch_size} must be a positive multiple of the "
        f"{data_shards(mesh)} data shard(s) of the device mesh{split}. Fix: "
        f"set {what} to a multiple of {n}.")


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(batch_axes(mesh)))


def param_spec(shape: tuple[int, ...], mesh: Mesh, min_size: int) -> P:
  """FSDP rule: split the largest dimension the `fsdp` axis divides."""
  if FSDP not in mesh.axis_names or int(np.prod(shape)) < min_size:
    return P()
  n = mesh.shape[FSDP]
  dims = [d for d in range(len(shape)) if shape[d] % n == 0]
  if not dims:
    return P()
  best = max(dims, key=lambda d: shape[d])
  return P(*[FSDP if d == best else None for d in range(len(shape))])


def state_shardings(abstract_state, mesh: Mesh, min_size: int):
  """NamedShardings for every leaf of a (train) state by `param_spec`."""
  return jax.tree.map(
      lambda x: NamedSharding(mesh, param_spec(x.shape, mesh, min_size)),
      abstract_state)


HOST_KEYS = ("ids",)  # Batch entries the host keeps (joins, bookkeeping).


def device_part(batch: dict) -> dict:
  return {k: v for k, v in batch.items() if k not in HOST_KEYS}


def put_batch(batch, mesh: Mesh):
  """This process's rows of a batch -> global arrays sharded over the batch
  axes. `batch` is a dict (host-only keys such as `ids` are dropped) or any
  pytree of arrays sharing the leading dimension (`packing.Packed`)."""
  sharding = batch_sharding(mesh)
  device_batch = device_part(batch) if isinstance(batch, dict) else batch
  if jax.process_count() == 1:  # One batched transfer: ~2x faster here.
    return jax.device_put(device_batch, sharding)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x),
      device_batch)

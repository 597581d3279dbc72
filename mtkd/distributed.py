"""Processes: multi-host start-up, barriers, and each process's share.

Every process runs the same command. `jax.distributed.initialize()` without
arguments auto-detects the cluster on Cloud TPU VMs and under SLURM; the
explicit fields are for anything else (and for local multi-process tests).
"""

import jax
from jax.experimental import multihost_utils

from mtkd.errors import UserError


def initialize(cfg) -> None:
  """Calls `jax.distributed.initialize` when the config asks for it."""
  if not cfg.get("distributed", False):
    return
  kwargs = {}
  if cfg.get("coordinator_address"):
    if cfg.get("num_processes", 0) <= 0 or cfg.get("process_id", -1) < 0:
      raise UserError(
          "config.parallel.coordinator_address is set, so num_processes (> 0)"
          " and process_id (>= 0) must be set too.")
    kwargs = dict(coordinator_address=cfg.coordinator_address,
                  num_processes=cfg.num_processes, process_id=cfg.process_id)
  jax.distributed.initialize(**kwargs)


def barrier(name: str) -> None:
  """Waits until every process reaches `name` (no-op in one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def process_rows(n: int) -> slice:
  """This process's contiguous share of a global batch of `n` rows."""
  count, index = jax.process_count(), jax.process_index()
  if n % count:
    raise UserError(f"A batch of {n} rows cannot be split evenly over "
                    f"{count} processes; use a multiple of {count}.")
  per = n // count
  return slice(index * per, (index + 1) * per)

"""Orbax checkpoints: train state plus JSON metadata, saved together.

The one place that touches Orbax, so an API change lands in one file.

Invariants:
- A step directory appears only complete (Orbax writes to a temporary
  directory and renames it), so a process killed mid-save leaves the
  previous checkpoints intact.
- The metadata holds the stage's config (resuming with another config is
  refused by the caller) and a fingerprint of the saved state; a restore
  whose bytes do not hash to it, or that fails to read, is treated as
  corrupt: the step is moved aside to `<dir>/../corrupt_checkpoints/` (never
  deleted) and the previous step is tried.
"""

import json
import os
import shutil
import sys
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from mtkd import distributed
from mtkd.store import layout
from mtkd.store.fingerprint import fully_addressable, tree_fingerprint

FINGERPRINT = "state_fingerprint"


class Checkpointer:
  """Keeps the last `keep` checkpoints of one training stage, plus the one
  with the lowest `loss` metric among those saved with metrics."""

  def __init__(self, directory: str, keep: int = 2):
    self.directory = os.path.abspath(directory)
    self.keep = keep
    self._open()

  def _open(self):
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(self.keep),
        # Ties go to the earlier step, as the loop's own best does.
        checkpoint_managers.BestN(get_metric_fn=lambda m: m["loss"] + 1e-12
                                  * m.get("step", 0),
                                  reverse=True, n=1)])  # Lowest loss.
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(preservation_policy=policy,
                                             create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict, force: bool = False,
           loss: float | None = None):
    """Async save; the state's fingerprint is computed on the host first.

    `loss` (lower is better) ranks checkpoints for keep-best."""
    if fully_addressable(state):  # Multi-host fsdp states are not verified.
      meta = dict(meta, **{FINGERPRINT: tree_fingerprint(state)})
    self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      meta=ocp.args.JsonSave(meta)),
        force=force,
        metrics=None if loss is None else {"loss": loss, "step": step})


  def meta(self, step: int) -> dict:
    return self._manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore())).meta

  def restore(self, step: int, like: Any | None = None) -> tuple[Any, dict]:
    """(state, meta) of one step onto `like`'s layout (None: as saved);
    raises on unreadable or corrupt data."""
    target = None if like is None else jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
        like)
    out = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    want = out.meta.get(FINGERPRINT)
    if want is not None and fully_addressable(out.state):
      got = tree_fingerprint(out.state)
      if got != want:
        raise ValueError(f"state fingerprint {got} != saved {want}")
    return out.state, out.meta

  def check(self, step: int) -> str | None:
    """A description of what is wrong with `step`, or None if it is good."""
    try:
      self.restore(step, None)
    except Exception as e:  # noqa: BLE001 - any failure means unusable.
      return f"{type(e).__name__}: {str(e)[:300]}"
    return None

  def quarantine_unfinished(self) -> None:
    """Moves aside steps whose Orbax metadata is missing or unreadable (a
    kill during finalisation): they can be neither restored nor ranked, so
    retention would otherwise keep them forever."""
    for step in self.all_steps():
      path = os.path.join(self.directory, str(step), "_CHECKPOINT_METADATA")
      try:
        with open(path) as f:
          json.load(f)
      except (OSError, ValueError) as e:
        self._quarantine(step, f"unfinished write ({type(e).__name__})")

  def restore_latest(self, like: Any) -> tuple[int, Any, dict] | None:
    """The newest checkpoint that restores and verifies, or None.

    `like`'s arrays give the shapes, dtypes and shardings to restore onto.
    """
    for step in reversed(self.all_steps()):
      try:
        state, meta = self.restore(step, like)
        return step, state, meta
      except Exception as e:  # noqa: BLE001 - fall back on any failure.
        self._quarantine(step, f"{type(e).__name__}: {str(e)[:300]}")
    return None

  def _quarantine(self, step: int, why: str) -> None:
    dest = os.path.join(layout.corrupt_checkpoints(
        os.path.dirname(self.directory)), f"{step}-{int(time.time())}")
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(dest), exist_ok=True)
      shutil.move(os.path.join(self.directory, str(step)), dest)
    distributed.barrier(f"quarantined {self.directory}/{step}")
    print(f"mtkd: warning: checkpoint {self.directory}/{step} is unusable "
          f"({why}); moved it to {dest} and falling back to the previous one.",
          file=sys.stderr, flush=True)
    self._manager.close()
    self._open()

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for in-flight saves, then releases the manager (idempotent)."""
    if self._manager is not None:
      manager, self._manager = self._manager, None
      manager.wait_until_finished()
      manager.close()

"""Orbax checkpoints: train state plus JSON metadata, saved together.

The one place that touches Orbax, so an API change lands in one file. The
metadata names the stage and holds the stage's config, so resuming with a
different config is refused rather than silently mixed.
"""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from mtkd.errors import UserError


class Checkpointer:
  """Keeps the last `keep` checkpoints of one training stage."""

  def __init__(self, directory: str, keep: int = 2):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: dict, force: bool = False):
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                       force=force)

  def meta(self, step: int) -> dict:
    return self._manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore())).meta

  def restore(self, step: int, like: Any) -> tuple[Any, dict]:
    """Restores onto the shapes, dtypes and shardings of the arrays `like`."""
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
        like)
    try:
      out = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract),
          meta=ocp.args.JsonRestore()))
    except (ValueError, KeyError, FileNotFoundError) as e:
      raise UserError(
          f"Checkpoint {self.directory}/{step} does not match the model in the "
          f"config ({type(e).__name__}: {str(e)[:300]}). Fix: use the config "
          "that wrote it, or a fresh --workdir.") from None
    return out.state, out.meta

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

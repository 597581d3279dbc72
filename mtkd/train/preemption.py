"""Graceful stops: SIGTERM / SIGINT request a checkpoint at the next step
boundary, then a clean exit that says how to resume.

The handler only sets a flag (no I/O in signal context); the training loop
polls it between steps. A second signal while stopping restores the default
behaviour, so a stuck process can still be interrupted.
"""

import signal
import threading

import numpy as np

_requested = threading.Event()
_signal_name = {"value": ""}


class Preempted(Exception):
  """Raised after a stop was requested and the state was checkpointed."""

  def __init__(self, where: str, signal_name: str):
    super().__init__(where)
    self.where, self.signal_name = where, signal_name


def _handler(signum, frame):
  del frame
  _signal_name["value"] = signal.Signals(signum).name
  _requested.set()
  signal.signal(signum, signal.SIG_DFL)


def install() -> None:
  """Installs the handlers (main thread only; a no-op elsewhere)."""
  if threading.current_thread() is threading.main_thread():
    for sig in (signal.SIGTERM, signal.SIGINT):
      signal.signal(sig, _handler)


def requested(sync: bool = False) -> bool:
  """Whether a stop was requested; with `sync`, whether any process got one
  (a collective: every process must call it at the same point)."""
  flag = _requested.is_set()
  if sync:
    import jax
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      flag = bool(np.max(multihost_utils.process_allgather(np.int32(flag))))
  return flag


def signal_name() -> str:
  return _signal_name["value"] or "SIGTERM"


def reset() -> None:
  _requested.clear()
  _signal_name["value"] = ""

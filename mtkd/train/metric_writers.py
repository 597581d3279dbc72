"""Metric logging: JSONL and TensorBoard files, and a console progress line.

Only process 0 writes. clu's writers need TensorFlow, so TensorBoard events
come from tensorboardX behind this small interface.
"""

import json
import os
import sys
import time
from collections.abc import Mapping

import jax

from mtkd.store import layout


class MetricWriter:
  """Appends `{"step": s, **scalars}` lines to metrics.jsonl, and TB events."""

  def __init__(self, logdir: str):
    self.active = jax.process_index() == 0
    self._tb = None
    if not self.active:
      return
    os.makedirs(logdir, exist_ok=True)
    self._jsonl = open(os.path.join(logdir, layout.METRICS), "a")
    from tensorboardX import SummaryWriter  # Heavy import, process 0 only.
    self._tb = SummaryWriter(logdir)

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.active:
      return
    self._jsonl.write(json.dumps({"step": int(step), **{
        k: float(v) for k, v in scalars.items()}}) + "\n")
    self._jsonl.flush()
    for k, v in scalars.items():
      self._tb.add_scalar(k, float(v), int(step))

  def close(self) -> None:
    if self.active:
      self._jsonl.close()
      self._tb.close()


class Progress:
  """A progress line with throughput and ETA; redrawn in place on a TTY."""

  def __init__(self, name: str, total: int, start: int = 0,
               examples_per_step: int = 1, every_s: float = 2.0):
    self.name, self.total, self.start = name, total, start
    self.examples_per_step, self.every_s = examples_per_step, every_s
    self.t0 = self._last = time.perf_counter()
    self.active = jax.process_index() == 0
    self._tty = sys.stderr.isatty()

  def update(self, step: int, extra: str = "", force: bool = False) -> None:
    now = time.perf_counter()
    if not self.active or (now - self._last < self.every_s and not force):
      return
    self._last = now
    done = step - self.start
    rate = done / max(now - self.t0, 1e-9)
    eta = (self.total - step) / rate if rate > 0 else float("inf")
    line = (f"{self.name}: {step}/{self.total} "
            f"({100 * step / max(self.total, 1):3.0f}%) | {rate:.1f} steps/s, "
            f"{rate * self.examples_per_step:.0f} ex/s | "
            f"ETA {_fmt(eta)}{' | ' + extra if extra else ''}")
    end = "" if self._tty and step < self.total else "\n"
    print(("\r" if self._tty else "") + line, end=end, file=sys.stderr,
          flush=True)

  def elapsed(self) -> float:
    return time.perf_counter() - self.t0


def _fmt(seconds: float) -> str:
  if seconds == float("inf"):
    return "?"
  m, s = divmod(int(seconds), 60)
  return f"{m}:{s:02d}"
